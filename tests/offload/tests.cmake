# Expert offloading (labels unit, cli).
#   offload_<model>  test_offload: exact misses bit-identical to a full load at
#                    every capacity; each expert read once per batch; the skip
#                    policy's effect and counts; --expert-mem; a damaged store
#                    gives errors, then is rebuilt; the same from the model's
#                    own files (--store model: several capacities, 1 / 4 I/O
#                    threads, O_DIRECT on / off, no pack written, a model file
#                    truncated under it); auto's choice by free disk
#   cli_offload_*    the flags through the commands; a dense model refused
add_executable(test_offload ${CMAKE_CURRENT_LIST_DIR}/test_offload.c)
target_link_libraries(test_offload PRIVATE moe m)
target_include_directories(test_offload PRIVATE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_SOURCE_DIR})
foreach(fx golden/mixtral-top2 golden/mixtral-fused-experts golden/qwen2moe golden/qwen3moe golden/olmoe
           golden-quant/mixtral-q4-g32 golden-quant/olmoe-mixed-per-expert golden-quant/qwen3moe-q4-g64
           golden/qwen3next golden-quant/qwen3next-q4-g64)
  string(REPLACE "/" "_" case ${fx})
  add_test(NAME offload_${case} COMMAND test_offload ${CMAKE_CURRENT_SOURCE_DIR}/${fx}/model
           ${CMAKE_CURRENT_BINARY_DIR}/offload_cache/${case})
  set_tests_properties(offload_${case} PROPERTIES LABELS unit)
endforeach()
foreach(m tiny-qwen-moe tiny-qwen-next)
  add_test(NAME offload_${m} COMMAND test_offload ${PROJECT_SOURCE_DIR}/models/${m} ${CMAKE_CURRENT_BINARY_DIR}/offload_cache/${m})
  set_tests_properties(offload_${m} PROPERTIES LABELS unit)
endforeach()

cli_fails(offload_dense "status 1: moe: .*expert offloading needs a Mixture-of-Experts model"
  ${expect1} $<TARGET_FILE:moe_cli> generate -m ${bad}/good --tokens 1 --offload)
cli_fails(offload_bad_miss "status 1: moe: --miss: expected exact or skip"
  ${expect1} $<TARGET_FILE:moe_cli> generate -m ${bad}/good --tokens 1 --miss sometimes)
cli_fails(offload_bad_mem "status 1: moe: --expert-mem: expected a size"
  ${expect1} $<TARGET_FILE:moe_cli> perplexity -m ${bad}/good -f x --expert-mem lots)

# the cache's policies on one layer (internal API): LRU / LFU order, decay,
# pinning, a batch wider than the free slots, prefetch accounting
add_executable(test_xcache ${CMAKE_CURRENT_LIST_DIR}/test_xcache.c)
target_link_libraries(test_xcache PRIVATE moe m)
target_include_directories(test_xcache PRIVATE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_SOURCE_DIR})
add_test(NAME xcache COMMAND test_xcache ${CMAKE_CURRENT_SOURCE_DIR}/golden/mixtral-top2/model
         ${CMAKE_CURRENT_BINARY_DIR}/offload_cache/xcache)
set_tests_properties(xcache PROPERTIES LABELS unit)

# the options through generate, logits, perplexity, bench; profiles pinning
add_test(NAME cli_offload COMMAND ${CMAKE_COMMAND} -DMOE=$<TARGET_FILE:moe_cli> -DMODEL=${PROJECT_SOURCE_DIR}/models/tiny-qwen-moe
         -DOTHER=${PROJECT_SOURCE_DIR}/models/tiny-mixtral -DTEXT=${CMAKE_CURRENT_SOURCE_DIR}/bundled/heldout.txt
         -DOUT=${CMAKE_CURRENT_BINARY_DIR}/offload_cli -P ${CMAKE_CURRENT_LIST_DIR}/offload_cli.cmake)
set_tests_properties(cli_offload PROPERTIES LABELS cli)

# memory bounded by the budget: peak RSS of a full load against --expert-mem 16M
# (not under the sanitizers, whose shadow memory is what RSS would measure)
if(NOT MOE_SANITIZE)
  add_test(NAME offload_rss COMMAND ${CMAKE_COMMAND} -DMOE=$<TARGET_FILE:moe_cli> -DOUT=${CMAKE_CURRENT_BINARY_DIR}/offload_rss
           -P ${CMAKE_CURRENT_LIST_DIR}/offload_rss.cmake)
  set_tests_properties(offload_rss PROPERTIES LABELS cli)
endif()
