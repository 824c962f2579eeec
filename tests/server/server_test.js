// server_test.js MOE REPO_DIR WORK_DIR — moe serve, driven by the official
// OpenAI and Anthropic clients (openai, @anthropic-ai/sdk; NODE_PATH points at
// them) and by raw HTTP for what a client library would not send.
//
// Three servers on free ports (--port 0), all on the bundled models:
//   A  tiny-mixtral, --parallel 4: both APIs, streaming and not, stop strings,
//      max tokens, usage, seeds, a 20-turn conversation, concurrent clients
//   B  tiny-mixtral, --parallel 1, --api-key, --max-body, --ctx 2048: keys, bad
//      requests, a client that disconnects (streaming, waiting in the queue,
//      not streaming), shutdown with a request running
//   C  tiny-qwen-moe (ChatML) and the same with Qwen3's tool-calling template:
//      a conversation where every turn must reuse the whole previous one, tools
//   E  tiny-qwen-next (Qwen3-Next: gated DeltaNet layers with a recurrent
//      state), --parallel 4, and F, the same with nothing cached: a
//      conversation reusing the whole previous turn, the last turn again from a
//      state saved at a prompt's end, answers equal to F's, concurrent clients
// Each server must exit with status 0 on SIGTERM (in the sanitizer build that
// includes LeakSanitizer finding nothing). Nothing here times anything: waits
// poll the server's /metrics until a condition holds.
'use strict';
const { spawn } = require('child_process');
const fs = require('fs');
const http = require('http');
const path = require('path');
// Debian 12's node 18 has no global File, which the clients look for only for uploads
if (typeof File === 'undefined') globalThis.File = require('buffer').File;
const { OpenAI } = require('openai');
const { Anthropic } = require('@anthropic-ai/sdk');

const [MOE, REPO, WORK] = process.argv.slice(2);
const MIXTRAL = path.join(REPO, 'models/tiny-mixtral');
const QWEN = path.join(REPO, 'models/tiny-qwen-moe');
const NEXT = path.join(REPO, 'models/tiny-qwen-next');
const SANITIZED = process.env.MOE_SANITIZE === 'ON' || process.env.MOE_SANITIZE === '1';

let failures = 0, checks = 0;
function check(ok, what, detail) {
  checks++;
  if (!ok) {
    failures++;
    console.log(`FAIL: ${what}${detail !== undefined ? ' — ' + (typeof detail === 'string' ? detail : JSON.stringify(detail)) : ''}`);
  }
  return ok;
}
function eq(a, b, what) { return check(JSON.stringify(a) === JSON.stringify(b), what, { got: a, want: b }); }
const log = (s) => console.log(s);

// ------------------------------------------------------------ servers --

const servers = [];
function startServer(name, args) {
  return new Promise((resolve, reject) => {
    // The AMX path computes 8 or more tokens at once in bf16, another precision than fewer: which
    // requests share a decoding pass, or how much of a prompt a slot's cache covers, would then
    // decide a temperature-0 answer. The server is what is tested here, so the float path, whose
    // results do not depend on the batch (test_seq_batch), serves.
    const env = { ...process.env, MOE_AMX_MIN_TOKENS: '1000000' };
    const p = spawn(MOE, ['serve', ...args, '--port', '0'], { stdio: ['ignore', 'ignore', 'pipe'], env });
    const s = { name, p, stderr: '', port: 0, exited: null };
    servers.push(s);
    p.stderr.on('data', (d) => {
      s.stderr += d;
      const m = !s.port && s.stderr.match(/listening on http:\/\/\S+:(\d+)/);
      if (m) { s.port = +m[1]; resolve(s); }
    });
    p.on('exit', (code, sig) => {
      s.exited = { code, sig };
      if (!s.port) reject(new Error(`${name}: moe serve exited (${code}, ${sig}) before listening:\n${s.stderr}`));
    });
  });
}

async function stopServer(s) {
  if (!s.exited) {
    const done = new Promise((r) => s.p.on('exit', r));
    s.p.kill('SIGTERM');
    await done;
  }
  check(s.exited.code === 0, `${s.name}: moe serve exits with status 0 on SIGTERM`, `${JSON.stringify(s.exited)}\n${s.stderr.slice(-4000)}`);
  check(!/Sanitizer|runtime error/.test(s.stderr), `${s.name}: no sanitizer report`, s.stderr.slice(-4000));
}

// ------------------------------------------------------------ helpers --

// One HTTP request; body a string (sent with Content-Length) or an array of
// strings (sent chunked, with no length). Resolves {status, headers, body, json}.
function raw(port, method, urlPath, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: urlPath, headers }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (data += d));
      res.on('end', () => {
        let json = null;
        try { json = JSON.parse(data); } catch (e) { /* not JSON */ }
        resolve({ status: res.statusCode, headers: res.headers, body: data, json });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    if (Array.isArray(body)) for (const part of body) req.write(part);
    else if (body !== undefined) req.write(body);
    req.end();
  });
}
const postJSON = (port, p, obj, headers = {}) =>
  raw(port, 'POST', p, typeof obj === 'string' ? obj : JSON.stringify(obj), { 'content-type': 'application/json', ...headers });

const keys = {}; // port -> the server's API key
async function metrics(port) {
  const r = await raw(port, 'GET', '/metrics', undefined, keys[port] ? { authorization: `Bearer ${keys[port]}` } : {});
  const m = {};
  for (const line of r.body.split('\n')) {
    const mm = line.match(/^([a-z_]+)(\{[^}]*\})? ([-0-9.e+]+)$/);
    if (mm) m[mm[1] + (mm[2] || '')] = Number(mm[3]);
  }
  return m;
}

// Polls /metrics until cond(m) holds; false after `tries` polls 50 ms apart
// (the last metrics are in until.last, for the failure message).
async function until(port, cond, tries = 600) {
  for (let i = 0; i < tries; i++) {
    const m = (until.last = await metrics(port));
    if (cond(m)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}
const lastSeen = () => Object.fromEntries(Object.entries(until.last || {}).filter(([k]) => /cancelled|busy|queue|generation_tokens_total/.test(k)));

const openai = (port, key = 'none') => new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: key, maxRetries: 0, timeout: 600000 });
const anthropic = (port, key = 'none') => new Anthropic({ baseURL: `http://127.0.0.1:${port}`, apiKey: key, maxRetries: 0, timeout: 600000 });

async function chatStream(client, params) {
  const stream = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  let text = '', finish = null, usage = null, chunks = 0, role = null;
  for await (const c of stream) {
    chunks++;
    if (c.usage) usage = c.usage;
    const ch = c.choices[0];
    if (!ch) continue;
    if (ch.delta.role) role = ch.delta.role;
    if (ch.delta.content) text += ch.delta.content;
    if (ch.finish_reason) finish = ch.finish_reason;
  }
  return { text, finish, usage, chunks, role };
}

async function messagesStream(client, params) {
  const stream = await client.messages.create({ ...params, stream: true });
  const events = [];
  let text = '', stop = null, stopSeq = null, usage = null, start = null;
  for await (const e of stream) {
    events.push(e.type);
    if (e.type === 'message_start') start = e.message;
    if (e.type === 'content_block_delta' && e.delta.type === 'text_delta') text += e.delta.text;
    if (e.type === 'message_delta') { stop = e.delta.stop_reason; stopSeq = e.delta.stop_sequence; usage = e.usage; }
  }
  return { text, stop, stopSeq, usage, events, start };
}

const user = (content) => [{ role: 'user', content }];

// ----------------------------------------------------- server A: APIs --

async function testApis(port) {
  const oa = openai(port), an = anthropic(port);
  const h = await raw(port, 'GET', '/health');
  eq([h.status, h.json && h.json.status], [200, 'ok'], 'GET /health');
  const models = await oa.models.list();
  eq(models.data.map((m) => m.id), ['tiny-mixtral'], 'GET /v1/models lists the model');

  // chat, whole and streamed, agree at temperature 0
  const q = user('Tell me about the war.');
  const whole = await oa.chat.completions.create({ model: 'tiny-mixtral', messages: q, max_tokens: 16, temperature: 0 });
  const c0 = whole.choices[0];
  check(c0.message.role === 'assistant' && c0.message.content.length > 0, 'chat: an answer', c0);
  eq(c0.finish_reason, 'length', 'chat: max_tokens ends with finish_reason length');
  eq(whole.usage.completion_tokens, 16, 'chat: usage.completion_tokens = max_tokens');
  check(whole.usage.prompt_tokens > 5 && whole.usage.total_tokens === whole.usage.prompt_tokens + 16, 'chat: usage totals', whole.usage);
  const streamed = await chatStream(oa, { model: 'x', messages: q, max_tokens: 16, temperature: 0 });
  eq(streamed.text, c0.message.content, 'chat stream: the same text as the whole answer');
  eq([streamed.finish, streamed.role], ['length', 'assistant'], 'chat stream: role, then finish_reason length');
  check(streamed.usage && streamed.usage.completion_tokens === 16 && streamed.usage.prompt_tokens === whole.usage.prompt_tokens,
    'chat stream: include_usage gives the usage chunk', streamed.usage);
  const mct = await oa.chat.completions.create({ model: 'x', messages: q, max_completion_tokens: 5, temperature: 0 });
  eq(mct.usage.completion_tokens, 5, 'chat: max_completion_tokens');

  // stop strings: cut the known answer at a later word
  const answer = c0.message.content;
  const words = answer.split(' ').filter((w) => w.length > 1);
  const stopWord = words.length > 2 ? words[2] : words[words.length - 1];
  const cut = answer.slice(0, answer.indexOf(stopWord));
  const st = await oa.chat.completions.create({ model: 'x', messages: q, max_tokens: 16, temperature: 0, stop: [stopWord, 'zzzz'] });
  eq([st.choices[0].message.content, st.choices[0].finish_reason], [cut, 'stop'], `chat: stop "${stopWord}" cuts the answer`);
  const sst = await chatStream(oa, { model: 'x', messages: q, max_tokens: 16, temperature: 0, stop: stopWord });
  eq([sst.text, sst.finish], [cut, 'stop'], 'chat stream: stop string');

  // Anthropic messages: same model, same prompt, same text
  const msg = await an.messages.create({ model: 'tiny-mixtral', max_tokens: 16, temperature: 0, messages: q });
  eq(msg.content.map((b) => b.type), ['text'], 'messages: one text block');
  eq(msg.content[0].text, answer, 'messages: the same answer as chat at temperature 0');
  eq([msg.stop_reason, msg.usage.output_tokens], ['max_tokens', 16], 'messages: stop_reason max_tokens, output_tokens');
  eq(msg.usage.input_tokens + msg.usage.cache_read_input_tokens, whole.usage.prompt_tokens, 'messages: input + cache read = the prompt');
  const ms = await messagesStream(an, { model: 'x', max_tokens: 16, temperature: 0, messages: q });
  eq(ms.text, answer, 'messages stream: the same text');
  eq(ms.events.slice(0, 2), ['message_start', 'content_block_start'], 'messages stream: message_start, content_block_start');
  const sse = await postJSON(port, '/v1/messages', { model: 'x', max_tokens: 2, stream: true, messages: q });
  const names = sse.body.split('\n').filter((l) => l.startsWith('event: ')).map((l) => l.slice(7));
  eq(names.slice(0, 2), ['message_start', 'ping'], 'messages stream (raw): a ping follows message_start');
  check(/^text\/event-stream/.test(sse.headers['content-type']), 'messages stream (raw): text/event-stream');
  eq(ms.events.slice(-3), ['content_block_stop', 'message_delta', 'message_stop'], 'messages stream: ends with block stop, message_delta, message_stop');
  eq([ms.stop, ms.usage.output_tokens], ['max_tokens', 16], 'messages stream: stop_reason and usage in message_delta');
  const mstop = await an.messages.create({ model: 'x', max_tokens: 16, temperature: 0, messages: q, stop_sequences: [stopWord] });
  eq([mstop.content[0].text, mstop.stop_reason, mstop.stop_sequence], [cut, 'stop_sequence', stopWord], 'messages: stop_sequences');
  const msst = await messagesStream(an, { model: 'x', max_tokens: 16, temperature: 0, messages: q, stop_sequences: [stopWord] });
  eq([msst.text, msst.stop, msst.stopSeq], [cut, 'stop_sequence', stopWord], 'messages stream: stop_sequences');
  const sys = await an.messages.create({ model: 'x', max_tokens: 4, temperature: 0, system: [{ type: 'text', text: 'Be brief.' }],
    messages: [{ role: 'user', content: [{ type: 'text', text: 'Tell me about the war.' }] }] });
  const sysChat = await oa.chat.completions.create({ model: 'x', max_tokens: 4, temperature: 0,
    messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: [{ type: 'text', text: 'Tell me about the war.' }] }] });
  eq(sys.content[0].text, sysChat.choices[0].message.content, 'system prompt and content blocks/parts: both APIs agree');
  const count = await an.messages.countTokens({ model: 'x', system: 'Be brief.', messages: q });
  eq(count.input_tokens, sysChat.usage.prompt_tokens, 'count_tokens = the prompt tokens of the same conversation');
  const prefill = await an.messages.create({ model: 'x', max_tokens: 6, temperature: 0,
    messages: [...q, { role: 'assistant', content: 'The war' }] });
  check(prefill.content[0].text.length > 0, 'messages: a final assistant turn is continued', prefill.content);

  // completions
  const cp = await oa.completions.create({ model: 'x', prompt: 'The history of the church', max_tokens: 12, temperature: 0 });
  eq([cp.choices[0].finish_reason, cp.usage.completion_tokens], ['length', 12], 'completions: max_tokens');
  let ctext = '', cfin = null;
  for await (const c of await oa.completions.create({ model: 'x', prompt: 'The history of the church', max_tokens: 12, temperature: 0, stream: true })) {
    if (c.choices[0]) { ctext += c.choices[0].text; cfin = c.choices[0].finish_reason || cfin; }
  }
  eq([ctext, cfin], [cp.choices[0].text, 'length'], 'completions stream: the same text');
  const defaults = await oa.completions.create({ model: 'x', prompt: 'The history of the church', temperature: 0 });
  eq(defaults.usage.completion_tokens, 16, 'completions: 16 tokens by default, as OpenAI');

  // seeds: sampling at temperature 1 repeats with the same seed
  const s1 = await oa.chat.completions.create({ model: 'x', messages: q, max_tokens: 12, temperature: 1, seed: 42 });
  const s2 = await oa.chat.completions.create({ model: 'x', messages: q, max_tokens: 12, temperature: 1, seed: 42 });
  eq(s1.choices[0].message.content, s2.choices[0].message.content, 'chat: the same seed samples the same answer');

  // errors through the SDK
  let err = null;
  try { await oa.chat.completions.create({ model: 'x', messages: q, n: 2 }); } catch (e) { err = e; }
  check(err && err.status === 400 && /n must be 1/.test(err.message), 'chat: n = 2 is a 400 through the SDK', err && err.message);
  err = null;
  try { await oa.chat.completions.create({ model: 'x', messages: q, max_tokens: 4,
    tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: {} } } }] }); } catch (e) { err = e; }
  check(err && err.status === 400 && /does not support tools/.test(err.message), 'chat: tools on a template without them is a 400', err && err.message);
  err = null;
  try { await an.messages.create({ model: 'x', max_tokens: 4, messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'AA==' } }] }] }); } catch (e) { err = e; }
  check(err && err.status === 400 && err.error && err.error.error && err.error.error.type === 'invalid_request_error',
    'messages: an image block is a 400 invalid_request_error', err && err.message);
}

// Only new tokens are processed: in a `turns`-turn conversation each turn
// finds the previous prompt (strict: and the previous answer) in its slot's
// cache, /metrics counts the same processed tokens as usage, and memory does
// not grow with the turns. Returns the conversation and each turn's usage.
async function testTurns(port, turns, strict, label) {
  const oa = openai(port);
  const topics = ['the war', 'the church', 'the city', 'the election', 'the river', 'the school', 'the music', 'the farm'];
  const before = await metrics(port);
  const msgs = [], usages = [];
  let rss5 = 0;
  for (let t = 0; t < turns; t++) {
    msgs.push({ role: 'user', content: `Tell me more about ${topics[t % topics.length]}.` });
    const r = await oa.chat.completions.create({ model: 'x', messages: msgs, max_tokens: 8, temperature: 0 });
    usages.push(r.usage);
    msgs.push({ role: 'assistant', content: r.choices[0].message.content });
    if (t === 4) rss5 = (await metrics(port)).process_resident_memory_bytes;
  }
  const after = await metrics(port);
  let processed = 0, sent = 0, minimum = true, whole = true;
  usages.forEach((u, t) => {
    const cached = u.prompt_tokens_details.cached_tokens;
    processed += u.prompt_tokens - cached;
    sent += u.prompt_tokens;
    if (t === 0) return;
    const prev = usages[t - 1];
    if (cached < prev.prompt_tokens) minimum = false;
    if (cached < prev.prompt_tokens + prev.completion_tokens - 1) whole = false;
  });
  check(minimum, `${label}: every turn finds the previous prompt in the cache`, usages);
  if (strict) check(whole, `${label}: every turn finds the previous prompt and answer in the cache`, usages);
  check(processed < sent / 3, `${label}: ${processed} prompt tokens processed of ${sent} sent`);
  eq(after.moe_prompt_tokens_processed_total - before.moe_prompt_tokens_processed_total, processed,
    `${label}: /metrics counts the same processed tokens as usage`);
  const rss = after.process_resident_memory_bytes;
  if (!SANITIZED) check(rss - rss5 < 8 << 20, `${label}: memory flat from turn 5 to turn ${turns}`, { rss5, rss });
  return { msgs, usages };
}

// A hybrid model's cache (tiny-qwen-next: 3 of 4 layers gated DeltaNet) is a
// recurrent state, which cannot be cut back to any position: a turn that
// extends the previous answer continues from where the slot stopped, and one
// that does not goes back to a state saved at an earlier prompt's end. Either
// way the answers must be those of a server with nothing cached (F, given the
// conversations longest first: each later prompt is a prefix of one it has
// run, with no state saved inside it, so nothing can be reused).
async function testHybridTurns(port, freshPort, turns) {
  const label = `tiny-qwen-next, ${turns} turns`;
  const { msgs, usages } = await testTurns(port, turns, true, label);
  const answers = msgs.filter((m) => m.role === 'assistant').map((m) => m.content);
  check(usages.slice(1).every((u) => u.prompt_tokens_details.cached_tokens > 0), `${label}: every later turn reports cached tokens`, usages);
  // the last turn again: its prompt is in the slot, and the state saved at its end
  // kept the logits, so nothing is evaluated again
  const again = await openai(port).chat.completions.create({ model: 'x', messages: msgs.slice(0, -1), max_tokens: 8, temperature: 0 });
  const cached = again.usage.prompt_tokens_details.cached_tokens;
  eq(again.choices[0].message.content, answers[turns - 1], `${label}: the last turn asked again gives the same answer`);
  check(cached === usages[turns - 1].prompt_tokens,
    `${label}: the last turn asked again resumes from the state (and logits) saved at its prompt's end`,
    { cached, prompt: usages[turns - 1].prompt_tokens });
  log(`${label}: prompt/cached tokens per turn ${usages.map((u) => `${u.prompt_tokens}/${u.prompt_tokens_details.cached_tokens}`).join(' ')}; ` +
      `the last turn again ${again.usage.prompt_tokens}/${cached}`);
  const fresh = [], freshCached = [];
  for (let t = turns - 1; t >= 0; t--) {
    const r = await openai(freshPort).chat.completions.create({ model: 'x', messages: msgs.slice(0, 2 * t + 1), max_tokens: 8, temperature: 0 });
    fresh[t] = r.choices[0].message.content;
    freshCached[t] = r.usage.prompt_tokens_details.cached_tokens;
  }
  eq(freshCached, answers.map(() => 0), `${label}: the server with nothing cached reuses nothing`);
  eq(fresh, answers, `${label}: every answer equals the one computed with nothing cached`);
}

// Several clients at once (more than the slots: some wait in the queue) get
// exactly the answers each gets alone.
async function testConcurrent(port, label = 'concurrent') {
  const prompts = ['Tell me about the war.', 'What did the committee decide?', 'Describe the old house.',
    'Who won the game?', 'Where is the river?', 'Why did they leave the city?', 'The president said', 'How was the harvest?'];
  const oa = openai(port), an = anthropic(port);
  const kinds = ['chat', 'chat-stream', 'messages', 'messages-stream'];
  const run = async (p, kind) => {
    const params = { model: 'x', max_tokens: 24, temperature: 0 };
    if (kind === 'chat') return (await oa.chat.completions.create({ ...params, messages: user(p) })).choices[0].message.content;
    if (kind === 'chat-stream') return (await chatStream(oa, { ...params, messages: user(p) })).text;
    if (kind === 'messages') return (await an.messages.create({ ...params, messages: user(p) })).content[0].text;
    return (await messagesStream(an, { ...params, messages: user(p) })).text;
  };
  const alone = [];
  for (const p of prompts) alone.push(await run(p, 'chat'));
  const m0 = await metrics(port);
  const together = await Promise.all(prompts.map((p, i) => run(p, kinds[i % kinds.length])));
  const m1 = await metrics(port);
  log(`${label}: ${m1.moe_generation_tokens_total - m0.moe_generation_tokens_total} tokens in ` +
      `${m1.moe_decode_rounds_total - m0.moe_decode_rounds_total} decoding passes`);
  for (let i = 0; i < prompts.length; i++)
    eq(together[i], alone[i], `${label}: client ${i} (${kinds[i % kinds.length]}) gets its single-client answer`);
  check(await until(port, (m) => m.moe_slots_busy === 0 && m.moe_queue_depth === 0), `${label}: all slots free afterwards`);
}

// ------------------------------------------------- server B: robustness --

async function testBadRequests(port, key) {
  const auth = { authorization: `Bearer ${key}` };
  const oaErr = (r) => r.json && r.json.error && typeof r.json.error.message === 'string' && 'type' in r.json.error &&
    'param' in r.json.error && 'code' in r.json.error;
  const anErr = (r, type) => r.json && r.json.type === 'error' && r.json.error && r.json.error.type === type &&
    typeof r.json.error.message === 'string';
  const chat = { model: 'x', messages: user('Hello.'), max_tokens: 2 };
  const msg = { model: 'x', messages: user('Hello.'), max_tokens: 2 };

  // keys
  let r = await postJSON(port, '/v1/chat/completions', chat);
  check(r.status === 401 && oaErr(r) && r.json.error.code === 'invalid_api_key', 'no key: 401 with an OpenAI error', r.body);
  r = await postJSON(port, '/v1/chat/completions', chat, { authorization: 'Bearer wrong' });
  check(r.status === 401 && oaErr(r), 'wrong Bearer key: 401', r.body);
  r = await postJSON(port, '/v1/messages', msg, { 'x-api-key': 'wrong' });
  check(r.status === 401 && anErr(r, 'authentication_error'), 'wrong x-api-key: 401 with an Anthropic error', r.body);
  r = await raw(port, 'GET', '/v1/models', undefined, { 'x-api-key': key.slice(0, -1) });
  check(r.status === 401, 'a key one character short: 401', r.body);
  r = await raw(port, 'GET', '/health');
  eq(r.status, 200, '/health needs no key');
  let e = null;
  try { await openai(port, 'wrong').chat.completions.create(chat); } catch (x) { e = x; }
  check(e && e.status === 401, 'OpenAI SDK with a wrong key: AuthenticationError', e && e.message);
  e = null;
  try { await anthropic(port, 'wrong').messages.create(msg); } catch (x) { e = x; }
  check(e && e.status === 401, 'Anthropic SDK with a wrong key: AuthenticationError', e && e.message);
  const ok1 = await openai(port, key).chat.completions.create(chat);
  eq(ok1.usage.completion_tokens, 2, 'the right key as Bearer (OpenAI SDK): served');
  const ok2 = await anthropic(port, key).messages.create(msg);
  eq(ok2.usage.output_tokens, 2, 'the right key as x-api-key (Anthropic SDK): served');

  // routes and methods
  r = await raw(port, 'GET', '/v1/nothing', undefined, auth);
  check(r.status === 404 && oaErr(r), 'unknown path: 404', r.body);
  r = await raw(port, 'GET', '/v1/chat/completions', undefined, auth);
  check(r.status === 405 && oaErr(r), 'GET on a POST endpoint: 405', r.body);
  r = await raw(port, 'GET', '/v1/models/tiny-mixtral', undefined, auth);
  eq([r.status, r.json && r.json.id], [200, 'tiny-mixtral'], 'GET /v1/models/{id}');

  // bodies: each API's own error object, never a crash
  const bad = [
    ['/v1/chat/completions', '{"model": "x", "messages": [', 'malformed JSON'],
    ['/v1/chat/completions', '[1, 2]', 'a body that is not an object'],
    ['/v1/chat/completions', { model: 'x' }, 'messages missing', 'messages'],
    ['/v1/chat/completions', { model: 'x', messages: 'hi' }, 'messages of the wrong type', 'messages'],
    ['/v1/chat/completions', { model: 'x', messages: [] }, 'no messages', 'messages'],
    ['/v1/chat/completions', { model: 'x', messages: [{ role: 'wizard', content: 'hi' }] }, 'an unknown role', 'messages[0]'],
    ['/v1/chat/completions', { model: 'x', messages: [{ role: 'user' }] }, 'content missing', 'messages[0]'],
    ['/v1/chat/completions', { model: 'x', messages: [{ role: 'user', content: 5 }] }, 'content a number', 'messages[0].content'],
    ['/v1/chat/completions', { ...chat, max_tokens: 'ten' }, 'max_tokens a string', 'max_tokens'],
    ['/v1/chat/completions', { ...chat, max_tokens: 0 }, 'max_tokens 0', 'max_tokens'],
    ['/v1/chat/completions', { ...chat, temperature: 5 }, 'temperature out of range', 'temperature'],
    ['/v1/chat/completions', { ...chat, stream: 'yes' }, 'stream not a boolean', 'stream'],
    ['/v1/chat/completions', { ...chat, stop: [1] }, 'stop not strings', 'stop'],
    ['/v1/chat/completions', { ...chat, stop: '' }, 'an empty stop string', 'stop'],
    ['/v1/chat/completions', { ...chat, n: 3 }, 'n = 3', 'n'],
    ['/v1/chat/completions', { ...chat, logprobs: true }, 'logprobs', 'logprobs'],
    ['/v1/chat/completions', { model: 'x', messages: [{ role: 'assistant', content: 'hi' }, { role: 'assistant', content: 'hi' }] },
      'a conversation the template refuses', 'messages'],
    ['/v1/chat/completions', { model: 'x', messages: user('war '.repeat(3000)) }, 'a prompt longer than the context', 'messages'],
    ['/v1/completions', { model: 'x' }, 'prompt missing', 'prompt'],
    ['/v1/completions', { model: 'x', prompt: [1, 'a'] }, 'prompt of mixed types', 'prompt'],
    ['/v1/completions', { model: 'x', prompt: [1, 999999] }, 'a token id outside the vocabulary', 'prompt'],
  ];
  for (const [p, body, what, param] of bad) {
    r = await postJSON(port, p, body, auth);
    check(r.status === 400 && oaErr(r), `${what}: 400 with an OpenAI error`, r.body);
    if (param) eq(r.json && r.json.error && r.json.error.param, param, `${what}: param names the field`);
  }
  r = await postJSON(port, '/v1/chat/completions', { model: 'x', messages: user('war '.repeat(3000)) }, auth);
  eq(r.json && r.json.error.code, 'context_length_exceeded', 'a prompt longer than the context: code context_length_exceeded');
  r = await raw(port, 'POST', '/v1/chat/completions', Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]), auth);
  check(r.status === 400 && oaErr(r), 'invalid UTF-8: 400', r.body);
  const badAn = [
    ['{"model": "x",', 'malformed JSON'],
    [{ model: 'x', messages: user('hi') }, 'max_tokens missing'],
    [{ messages: user('hi'), max_tokens: 2 }, 'model missing'],
    [{ model: 'x', max_tokens: 2 }, 'messages missing'],
    [{ model: 'x', max_tokens: 2, messages: [{ role: 'system', content: 'hi' }] }, 'a system role in messages'],
    [{ model: 'x', max_tokens: 2, messages: [{ role: 'user', content: [{ type: 'text' }] }] }, 'a text block without text'],
    [{ model: 'x', max_tokens: 2, messages: user('hi'), temperature: 1.5 }, 'temperature above 1'],
    [{ model: 'x', max_tokens: 2, messages: user('hi'), stop_sequences: 'x' }, 'stop_sequences not an array'],
    [{ model: 'x', max_tokens: 2, messages: user('war '.repeat(3000)) }, 'a prompt longer than the context'],
  ];
  for (const [body, what] of badAn) {
    r = await postJSON(port, '/v1/messages', body, auth);
    check(r.status === 400 && anErr(r, 'invalid_request_error'), `messages, ${what}: 400 invalid_request_error`, r.body);
  }
  r = await postJSON(port, '/v1/messages/count_tokens', { model: 'x', messages: 'hi' }, auth);
  check(r.status === 400 && anErr(r, 'invalid_request_error'), 'count_tokens with bad messages: 400', r.body);

  // bodies over --max-body (64K): refused on the length, or while reading a chunked one
  const big = JSON.stringify({ model: 'x', messages: user('a'.repeat(70000)) });
  r = await postJSON(port, '/v1/chat/completions', big, auth);
  check(r.status === 413 && oaErr(r), 'a body over --max-body: 413 (OpenAI)', r.body.slice(0, 300));
  r = await postJSON(port, '/v1/messages', big, auth);
  check(r.status === 413 && anErr(r, 'request_too_large'), 'a body over --max-body: 413 request_too_large (Anthropic)', r.body.slice(0, 300));
  r = await raw(port, 'POST', '/v1/chat/completions', [big.slice(0, 40000), big.slice(40000)], { ...auth, 'content-type': 'application/json' });
  check(r.status === 413 && oaErr(r), 'a chunked body over --max-body: 413', r.body.slice(0, 300));
  const after = await openai(port, key).chat.completions.create(chat);
  eq(after.usage.completion_tokens, 2, 'after all the bad requests the server still serves');
}

// A client that goes away cancels its request and frees the only slot.
async function testDisconnect(port, key) {
  const oa = openai(port, key);
  // greedy, this prompt runs on until the context (2048) is full: it is still running when the client goes
  const long = { model: 'x', messages: user('Tell me a very long story about the war.'), max_tokens: 100000, temperature: 0 };
  const cancelled = async () => (await metrics(port)).moe_requests_cancelled_total;
  let n0 = await cancelled();

  // streaming: stop reading after the first piece of text
  const stream = await oa.chat.completions.create({ ...long, stream: true });
  for await (const c of stream) if (c.choices[0] && c.choices[0].delta.content) break; // leaving the loop aborts the request
  check(await until(port, (m) => m.moe_requests_cancelled_total === n0 + 1 && m.moe_slots_busy === 0),
    'a stream whose client goes away is cancelled and its slot freed', lastSeen());
  const next = await oa.chat.completions.create({ model: 'x', messages: user('Hello.'), max_tokens: 3 });
  eq(next.usage.completion_tokens, 3, 'after the disconnect the next request is served');

  // a request waiting in the queue, then the one holding the slot
  n0 = await cancelled();
  const holder = await oa.chat.completions.create({ ...long, stream: true });
  const it = holder[Symbol.asyncIterator]();
  await it.next();
  const ac = new AbortController();
  // long too: whether the server sees it go while queued or just after it took the slot, it is cancelled
  const queued = oa.chat.completions.create({ ...long }, { signal: ac.signal }).catch((x) => x);
  check(await until(port, (m) => m.moe_queue_depth === 1), 'the second request waits in the queue', lastSeen());
  ac.abort();
  await queued;
  await it.return();
  check(await until(port, (m) => m.moe_requests_cancelled_total === n0 + 2 && m.moe_slots_busy === 0 && m.moe_queue_depth === 0),
    'a queued request and the running one, both gone: both cancelled, the slot free', lastSeen());
  const next2 = await oa.chat.completions.create({ model: 'x', messages: user('Hello.'), max_tokens: 3 });
  eq(next2.usage.completion_tokens, 3, 'then the next request is served');

  // not streaming: the client closes while the answer is being generated
  n0 = await cancelled();
  const ac2 = new AbortController();
  const whole = oa.chat.completions.create({ ...long }, { signal: ac2.signal }).catch((x) => x);
  check(await until(port, (m) => m.moe_slots_busy === 1 && m.moe_generation_tokens_total > 0), 'a long whole answer is being generated');
  ac2.abort();
  await whole;
  check(await until(port, (m) => m.moe_requests_cancelled_total === n0 + 1 && m.moe_slots_busy === 0),
    'a whole answer whose client goes away is cancelled', lastSeen());
}

// SIGTERM with a request running: the stream ends, the server exits cleanly.
async function testShutdown(s, key) {
  const oa = openai(s.port, key);
  const stream = await oa.chat.completions.create({ model: 'x', messages: user('Tell me a long story.'), max_tokens: 100000,
    temperature: 0, stream: true });
  const it = stream[Symbol.asyncIterator]();
  await it.next();
  s.p.kill('SIGTERM');
  let ended = false;
  try { for (;;) { const x = await it.next(); if (x.done) break; } ended = true; } catch (e) { ended = true; }
  check(ended, 'a stream running at SIGTERM ends');
}

// ------------------------------------------------ server C: ChatML, tools --

function toolModel() {
  const dir = path.join(WORK, 'tiny-qwen-moe-tools');
  fs.mkdirSync(dir, { recursive: true });
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'generation_config.json']) {
    const link = path.join(dir, f);
    try { fs.unlinkSync(link); } catch (e) { /* not there */ }
    fs.symlinkSync(path.join(QWEN, f), link);
  }
  const tc = JSON.parse(fs.readFileSync(path.join(QWEN, 'tokenizer_config.json'), 'utf8'));
  tc.chat_template = JSON.parse(fs.readFileSync(path.join(REPO, 'tests/jinja/templates/npm-qwen3.json'), 'utf8')).chat_template;
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(tc));
  return dir;
}

async function testTools(port) {
  const oa = openai(port), an = anthropic(port);
  const tools = [{ type: 'function', function: { name: 'get_weather', description: 'The weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
  const q = user('What is the weather in Paris?');
  const plain = await oa.chat.completions.create({ model: 'x', messages: q, max_tokens: 4, temperature: 0 });
  const withTools = await oa.chat.completions.create({ model: 'x', messages: q, tools, max_tokens: 4, temperature: 0 });
  check(withTools.usage.prompt_tokens > plain.usage.prompt_tokens + 20, 'tools: the template shows them to the model',
    [plain.usage, withTools.usage]);
  const none = await oa.chat.completions.create({ model: 'x', messages: q, tools, tool_choice: 'none', max_tokens: 4, temperature: 0 });
  eq(none.usage.prompt_tokens, plain.usage.prompt_tokens, 'tools: tool_choice none hides them');
  const history = [...q,
    { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
    { role: 'tool', tool_call_id: 'call_1', content: 'Sunny, 21 C' }];
  const after = await oa.chat.completions.create({ model: 'x', messages: history, tools, max_tokens: 4, temperature: 0 });
  check(after.usage.prompt_tokens > withTools.usage.prompt_tokens && ['stop', 'length', 'tool_calls'].includes(after.choices[0].finish_reason),
    'tools: an assistant tool call and the tool result render', after.usage);
  const atools = [{ name: 'get_weather', description: 'The weather in a city',
    input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } }];
  const an1 = await an.messages.create({ model: 'x', max_tokens: 4, temperature: 0, tools: atools, messages: [...q,
    { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_1', name: 'get_weather', input: { city: 'Paris' } }] },
    { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: 'Sunny, 21 C' }] }] });
  eq(an1.usage.input_tokens + an1.usage.cache_read_input_tokens, after.usage.prompt_tokens,
    'tools: the same exchange through tool_use/tool_result blocks renders the same prompt');
}

// ----------------------------------------------------------------- main --

async function main() {
  fs.mkdirSync(WORK, { recursive: true });
  const key = 'sk-test-' + process.pid;
  const A = await startServer('A', ['-m', MIXTRAL, '--parallel', '4', '--ctx', '1024']);
  log(`server A on port ${A.port}`);
  await testApis(A.port);
  await testTurns(A.port, 20, false, 'tiny-mixtral, 20 turns');
  await testConcurrent(A.port);
  await stopServer(A);

  const B = await startServer('B', ['-m', MIXTRAL, '--parallel', '1', '--api-key', key, '--max-body', '64K', '--ctx', '2048']);
  keys[B.port] = key;
  log(`server B on port ${B.port}`);
  await testBadRequests(B.port, key);
  await testDisconnect(B.port, key);
  await testShutdown(B, key);
  await stopServer(B);

  // C serves with its experts offloaded (16 of 64 per layer resident, exact): the same
  // answers as a full load, and /metrics shows the expert cache at work
  const C = await startServer('C', ['-m', QWEN, '--parallel', '2', '--capacity', '16', '--cache-dir', path.join(WORK, 'experts')]);
  log(`server C on port ${C.port}`);
  await testTurns(C.port, 20, true, 'tiny-qwen-moe offloaded, 20 turns');
  const mc = await metrics(C.port);
  const used = mc['moe_expert_hits_total{layer="all"}'] + mc['moe_expert_misses_total{layer="all"}'];
  check(mc.moe_expert_capacity === 64 && used > 0 && mc['moe_expert_read_bytes_total{layer="all"}'] > 0 &&
        mc['moe_expert_hits_total{layer="0"}'] !== undefined,
        'offloaded: /metrics shows the expert cache (capacity, hits + misses, bytes read, per layer)',
        Object.fromEntries(Object.entries(mc).filter(([k]) => k.startsWith('moe_expert'))));
  await stopServer(C);
  const D = await startServer('D', ['-m', toolModel(), '--parallel', '1', '--model-name', 'qwen-tools']);
  await testTools(D.port);
  await stopServer(D);

  // E: a hybrid model; concurrent clients decode in one pass, each slot with its own recurrent state
  const E = await startServer('E', ['-m', NEXT, '--parallel', '4']);
  const F = await startServer('F', ['-m', NEXT, '--parallel', '1']);
  log(`servers E, F (tiny-qwen-next) on ports ${E.port}, ${F.port}`);
  await testHybridTurns(E.port, F.port, 10);
  await testConcurrent(E.port, 'tiny-qwen-next concurrent');
  await stopServer(E);
  await stopServer(F);
}

main().then(() => {
  console.log(`${checks - failures} of ${checks} checks passed`);
  process.exit(failures ? 1 : 0);
}).catch((e) => {
  console.log(`FAIL: ${e && e.stack ? e.stack : e}`);
  for (const s of servers) {
    if (!s.exited) s.p.kill('SIGKILL');
    console.log(`--- ${s.name} stderr:\n${s.stderr.slice(-3000)}`);
  }
  process.exit(1);
});
