// serve_load.js — load for moe serve: C clients, each sending requests one
// after another for S seconds; prints requests/s, generated tokens/s, and the
// latency of a request (mean, p50, p90). Node's http module only (no packages).
//
//   node bench/serve_load.js --port 8080 --clients 4 --seconds 20 --max-tokens 64 [--chat] [--key KEY]
//
// Each request has its own prompt (a counter and random words), so prompts
// are processed, not found in a slot's cache. /v1/completions by default (any
// model); --chat uses /v1/chat/completions (the model needs a chat template).
'use strict';
const http = require('http');

const arg = (name, def) => {
  const i = process.argv.indexOf('--' + name);
  return i < 0 ? def : process.argv[i + 1];
};
const port = +arg('port', 8080), clients = +arg('clients', 1), seconds = +arg('seconds', 20);
const maxTokens = +arg('max-tokens', 64), key = arg('key', null), chat = process.argv.includes('--chat');
const words = ['the', 'history', 'of', 'war', 'church', 'city', 'river', 'music', 'school', 'farm', 'election', 'said'];
const agent = new http.Agent({ keepAlive: true, maxSockets: clients });

let counter = 0;
function prompt() {
  let p = `Request ${counter++}:`;
  for (let i = 0; i < 12; i++) p += ' ' + words[Math.floor(Math.random() * words.length)];
  return p;
}

function request() {
  const body = chat
    ? { model: 'x', messages: [{ role: 'user', content: prompt() }], max_tokens: maxTokens, temperature: 0.8 }
    : { model: 'x', prompt: prompt(), max_tokens: maxTokens, temperature: 0.8 };
  const data = JSON.stringify(body);
  const headers = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) };
  if (key) headers.authorization = `Bearer ${key}`;
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', agent,
      path: chat ? '/v1/chat/completions' : '/v1/completions', headers }, (res) => {
      let s = '';
      res.on('data', (d) => (s += d));
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode}: ${s}`));
        const u = JSON.parse(s).usage;
        resolve({ tokens: u.completion_tokens, seconds: Number(process.hrtime.bigint() - t0) / 1e9 });
      });
    });
    req.on('error', reject);
    req.end(data);
  });
}

async function main() {
  const end = Date.now() + seconds * 1000;
  const lat = [];
  let tokens = 0;
  const t0 = Date.now();
  await Promise.all(Array.from({ length: clients }, async () => {
    while (Date.now() < end) {
      const r = await request();
      tokens += r.tokens;
      lat.push(r.seconds);
    }
  }));
  const wall = (Date.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  const q = (f) => lat[Math.min(lat.length - 1, Math.floor(f * lat.length))];
  const mean = lat.reduce((a, b) => a + b, 0) / lat.length;
  console.log(JSON.stringify({ clients, requests: lat.length, seconds: +wall.toFixed(2),
    requests_per_s: +(lat.length / wall).toFixed(2), tokens_per_s: +(tokens / wall).toFixed(1),
    latency_mean_s: +mean.toFixed(3), latency_p50_s: +q(0.5).toFixed(3), latency_p90_s: +q(0.9).toFixed(3) }));
  agent.destroy();
}

main().catch((e) => { console.error(e.message); process.exit(1); });
