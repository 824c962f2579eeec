# moe serve (label server).
#   server_clients  fetch_clients.sh: the npm clients `openai` and
#                   `@anthropic-ai/sdk` into a cache, linked into the build tree
#   server_sdk      server_test.js: moe serve on the bundled models, driven by
#                   those clients and by raw HTTP (both APIs, streaming, stop
#                   strings, usage, KV reuse over 20 turns, concurrent clients,
#                   disconnects, bad requests and keys, clean shutdown; one
#                   server with its experts offloaded, its cache in /metrics)
#   server_parse    the request parsers and tool-call parser on their own
# Both node tests are skipped (exit 77, with the reason) only when node/npm are
# not installed.
set(SERVER_CLIENTS ${CMAKE_CURRENT_BINARY_DIR}/server_clients)
add_test(NAME server_clients COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/fetch_clients.sh ${SERVER_CLIENTS})
set_tests_properties(server_clients PROPERTIES LABELS server FIXTURES_SETUP server_clients SKIP_RETURN_CODE 77 TIMEOUT 600)
add_test(NAME server_sdk COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/run.sh $<TARGET_FILE:moe_cli> ${PROJECT_SOURCE_DIR}
         ${SERVER_CLIENTS} ${CMAKE_CURRENT_BINARY_DIR}/server_work)
set_tests_properties(server_sdk PROPERTIES LABELS server FIXTURES_REQUIRED server_clients SKIP_RETURN_CODE 77 TIMEOUT 600
                     ENVIRONMENT "MOE_SANITIZE=${MOE_SANITIZE}")

# the parsers and writers alone: request bodies, tool calls, both APIs' streams
add_executable(test_server_parse ${CMAKE_CURRENT_LIST_DIR}/test_server_parse.c ${PROJECT_SOURCE_DIR}/src/server/request.c
               ${PROJECT_SOURCE_DIR}/src/server/openai.c ${PROJECT_SOURCE_DIR}/src/server/anthropic.c
               ${PROJECT_SOURCE_DIR}/src/server/sse.c ${PROJECT_SOURCE_DIR}/src/server/toolcall.c)
target_link_libraries(test_server_parse PRIVATE moe PkgConfig::JANSSON)
add_test(NAME server_parse COMMAND test_server_parse)
set_tests_properties(server_parse PROPERTIES LABELS "unit;server")

# batched decoding (moe_seq_eval_pending, how the server runs its slots) against decoding alone
add_executable(test_seq_batch ${CMAKE_CURRENT_LIST_DIR}/test_seq_batch.c)
target_link_libraries(test_seq_batch PRIVATE moe m)
target_include_directories(test_seq_batch PRIVATE ${PROJECT_SOURCE_DIR}/include)
# (tiny-qwen-next: every sequence of the batch carries its own recurrent state through one pass)
foreach(m tiny-mixtral tiny-qwen-moe tiny-qwen-next)
  add_test(NAME seq_batch_${m} COMMAND test_seq_batch ${PROJECT_SOURCE_DIR}/models/${m})
  set_tests_properties(seq_batch_${m} PROPERTIES LABELS "unit;server" ENVIRONMENT "MOE_AMX_MIN_TOKENS=1000000")
endforeach()
