# offload_cli.cmake — the offloading options through the commands on
# models/tiny-qwen-moe: a profile pins experts (generate --profile --stats),
# the same flags on logits, perplexity, bench (its JSON says how it was
# offloaded), a profile of another model refused, a warm start preloads;
# --store model / auto / pack (below).
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
expect(pinned 0 "8 of 64 experts per MoE layer in host memory .*4 pinned")
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
# the host tier is a GPU's: asked for on the CPU it is refused; a bad value too
run(host_cpu generate -m ${MODEL} --tokens 1,2 -n 1 --capacity 8 --host-experts on --device cpu ${cache})
expect(host_cpu 1 "--host-experts on: the host tier is for a GPU's expert cache")
run(host_bad generate -m ${MODEL} --tokens 1,2 -n 1 --host-experts maybe ${cache})
expect(host_bad 1 "--host-experts: expected auto, on or off")

# --store: the model's own files through generate and bench (no pack made in
# their cache directory); auto takes the pack while the disk has room, the
# model's files (saying why) when $MOE_TEST_FREE_BYTES says it has none, and
# a pack already there whatever the room; pack with no room is an error
set(mcache --cache-dir ${OUT}/model-cache)
run(st_gen generate -m ${MODEL} --tokens 1,2,3,4 -n 4 --capacity 4 --store model ${mcache} --stats)
expect(st_gen 0 "experts read from the model's files in .*expert cache: exact misses, LFU eviction, experts read from the model's files")
run(st_bench bench -m ${MODEL} -p 8 -n 4 -r 1 --json --expert-mem 2M --store model ${mcache})
expect(st_bench 0 "\"store\":\"model\",\"store_built\":0")
file(GLOB packs ${OUT}/model-cache/*/experts.pack)
file(GLOB states ${OUT}/model-cache/*/cache-state.json)
if(packs OR NOT states)
  message(FATAL_ERROR "--store model: packs [${packs}] written, warm state [${states}]")
endif()
run(st_warm generate -m ${MODEL} --tokens 1,2,3 -n 2 --expert-mem 2M --store model ${mcache})
expect(st_warm 0 "experts preloaded in")

set(acache --cache-dir ${OUT}/auto-cache)
set(ENV{MOE_TEST_FREE_BYTES} 1000)
run(st_none bench -m ${MODEL} -p 8 -n 4 -r 1 --json --capacity 4 --store auto ${acache})
expect(st_none 0 "\"store\":\"model\"")
expect(st_none 0 "offload: not enough disk for an expert pack \\(needs [0-9.]+ GB, 0.0 GB free\\): reading experts from the model's files\n")
run(st_pack_none generate -m ${MODEL} --tokens 1,2 -n 1 --capacity 4 --store pack ${acache})
expect(st_pack_none 1 "^moe: .*experts.pack: the expert pack needs .* but only 1000 bytes|^moe: .*experts.pack: the expert pack needs .* but only 0.0 MB")
unset(ENV{MOE_TEST_FREE_BYTES})
run(st_room bench -m ${MODEL} -p 8 -n 4 -r 1 --json --capacity 4 ${acache})
expect(st_room 0 "\"store\":\"pack\",\"store_built\":1")
set(ENV{MOE_TEST_FREE_BYTES} 0)
run(st_kept bench -m ${MODEL} -p 8 -n 4 -r 1 --json --capacity 4 ${acache})
expect(st_kept 0 "\"store\":\"pack\",\"store_built\":0")
unset(ENV{MOE_TEST_FREE_BYTES})
run(st_bad generate -m ${MODEL} --tokens 1,2 -n 1 --store disk ${acache})
expect(st_bad 1 "--store: expected auto, pack or model")
