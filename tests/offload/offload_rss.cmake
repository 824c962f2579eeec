# offload_rss.cmake — memory stays within the budget: a synthetic OLMoE layer
# (64 experts of 3.5 MB at 4 bits, 226 MB of experts in a 336 MB model) run
# through moe bench fully mapped and offloaded with --expert-mem 16M (4 experts
# resident). A 32-token prompt touches nearly every expert, so the full load's
# peak RSS holds them all; the offloaded one may hold the non-expert weights,
# 16 MB of slots and working memory, and must come in at least 120 MB lower.
# -DMOE= -DOUT=
include(${CMAKE_CURRENT_LIST_DIR}/../cli_expect.cmake)
file(REMOVE_RECURSE ${OUT})
file(MAKE_DIRECTORY ${OUT})
run(synth synth --like olmoe-1b-7b --layers 1 --bits 4 -o ${OUT}/model)
expect(synth 0 "wrote")
run(full bench -m ${OUT}/model -p 32 -n 4 -r 1 --json --no-offload)
expect(full 0 "\"peak_rss_mb\":")
run(off bench -m ${OUT}/model -p 32 -n 4 -r 1 --json --expert-mem 16M --cache-dir ${OUT}/cache)
expect(off 0 "\"offload\":{\"capacity\":4,")
string(REGEX MATCH "\"peak_rss_mb\":([0-9.]+)" _ "${full_out}")
set(rss_full ${CMAKE_MATCH_1})
string(REGEX MATCH "\"peak_rss_mb\":([0-9.]+)" _ "${off_out}")
set(rss_off ${CMAKE_MATCH_1})
string(REGEX REPLACE "\\..*" "" rss_full_int "${rss_full}")
string(REGEX REPLACE "\\..*" "" rss_off_int "${rss_off}")
math(EXPR lim "${rss_full_int} - 120" OUTPUT_FORMAT DECIMAL)
if(NOT rss_off_int LESS lim)
  message(FATAL_ERROR "offloaded peak RSS ${rss_off} MB, full load ${rss_full} MB: expected at most ${lim} MB")
endif()
message(STATUS "peak RSS: full load ${rss_full} MB, offloaded (16M of experts) ${rss_off} MB")
file(REMOVE_RECURSE ${OUT})
