#!/usr/bin/env bash
# chat_interrupt.sh MOE MODEL WORKDIR — Ctrl-C (SIGINT) during `moe chat`
# stops the answer being generated, not the program: the chat goes on to the
# next turn and ends normally at end of input. The model samples at a high
# temperature with no token limit, so an answer runs until interrupted; if one
# ends by itself before the signal lands, the test tries another seed.
set -u
moe=$1 model=$2 dir=$3
mkdir -p "$dir"
fifo=$dir/chat.in out=$dir/chat.out err=$dir/chat.err
for seed in 1 2 3 4 5; do
  rm -f "$fifo"
  mkfifo "$fifo"
  "$moe" chat -m "$model" -n 1000000 --temp 1.5 --top-k 0 --top-p 1 --min-p 0 --seed "$seed" <"$fifo" >"$out" 2>"$err" &
  pid=$!
  exec 3>"$fifo"
  echo "Tell me a very long story about the war." >&3
  for _ in $(seq 200); do [ "$(wc -c <"$out")" -gt 60 ] && break; sleep 0.05; done
  kill -INT "$pid" 2>/dev/null
  sleep 0.5
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "FAIL: moe chat exited on Ctrl-C:"; cat "$err"; exit 1
  fi
  before=$(wc -c <"$out")
  echo "Thanks." >&3
  for _ in $(seq 200); do [ "$(wc -c <"$out")" -gt $((before + 60)) ] && break; sleep 0.05; done
  kill -INT "$pid" 2>/dev/null   # stops the second answer, or cancels the empty prompt line
  sleep 0.3
  exec 3>&-                      # end of input ends the chat
  wait "$pid"
  rc=$?
  if [ "$rc" -ne 0 ]; then echo "FAIL: exit status $rc"; cat "$err"; exit 1; fi
  if ! grep -q "\[stopped\]" "$out"; then echo "seed $seed: the first answer ended before the signal; again"; continue; fi
  turns=$(grep -c "prompt tokens" "$err")
  if [ "$turns" -lt 2 ]; then echo "FAIL: the chat did not go on to a second turn"; cat "$err"; exit 1; fi
  first=$(grep -m1 -o "[0-9]* answer tokens" "$err" | grep -o "^[0-9]*")
  echo "ok: the first answer stopped after $first tokens, the chat went on ($turns turns) and ended with status 0"
  exit 0
done
echo "FAIL: no answer was still running when the signal came, in 5 tries"
exit 1
