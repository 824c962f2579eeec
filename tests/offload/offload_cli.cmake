# offload_cli.cmake — the offloading options through the commands on
# models/tiny-qwen-moe: a profile pins experts (generate --profile --stats),
# the same flags on logits, perplexity, bench (its JSON says how it was
# offloaded), a profile of another model refused, a warm start preloads.
# -DMOE= -DMODEL= -DOTHER= (another MoE model) -DTEXT= -DOUT=
include(${CMAKE_CURRENT_LIST_DIR}/../cli_expect.cmake)
file(REMOVE_RECURSE ${OUT})
file(MAKE_DIRECTORY ${OUT})
set(cache --cache-dir ${OUT}/cache)
file(READ ${TEXT} head LIMIT 4000)
file(WRITE ${OUT}/text.txt "${head}")
set(TEXT ${OUT}/text.txt)

run(prof profile -m ${MODEL} -f ${TEXT} -o ${OUT}/prof.json --ctx 128 --max-tokens 300)
expect(prof 0 "")
run(pinned generate -m ${MODEL} --tokens 1,2,3,4,5 -n 4 --capacity 8 --profile ${OUT}/prof.json ${cache} --stats --no-warm)
expect(pinned 0 "8 of 64 experts per MoE layer in memory .*4 pinned")
expect(pinned 0 "\ntotal +[0-9]+ +[0-9]+ +0 ")
run(pin2 generate -m ${MODEL} --tokens 1,2,3 -n 2 --capacity 8 --profile ${OUT}/prof.json --pin 7 ${cache} --no-warm)
expect(pin2 0 "7 pinned")

run(logits logits -m ${MODEL} --tokens 1,2,3 -o ${OUT}/l.f32 --capacity 2 --miss skip --evict lru ${cache} --stats)
expect(logits 0 "expert cache: skip misses, LRU eviction")
run(ppl perplexity -m ${MODEL} -f ${TEXT} --ctx 64 --capacity 4 --no-prefetch ${cache} --no-warm)
expect(ppl 0 "perplexity [0-9.]+ over")
run(bench bench -m ${MODEL} -p 8 -n 4 -r 1 --json --expert-mem 2M ${cache})
expect(bench 0 "\"offload\":{\"capacity\":[0-9]+,\"n_experts\":64")

# warm start: the run above saved what it held; the next load reads it back
run(warm generate -m ${MODEL} --tokens 1,2,3 -n 2 --expert-mem 2M ${cache})
expect(warm 0 "experts preloaded in")

run(other profile -m ${OTHER} -f ${TEXT} -o ${OUT}/other.json --ctx 32 --max-tokens 40)
expect(other 0 "")
run(wrong generate -m ${MODEL} --tokens 1,2 -n 1 --capacity 8 --profile ${OUT}/other.json ${cache})
expect(wrong 1 "^moe: .*other.json: ")
run(bad_pin generate -m ${MODEL} --tokens 1,2 -n 1 --capacity 8 --pin x ${cache})
expect(bad_pin 1 "--pin: expected an integer")
