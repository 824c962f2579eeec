# cli_golden.cmake — the moe command end to end against one fixture:
# `moe logits --all` equals transformers' logits within ATOL, and
# `moe generate --temp 0` prints transformers' greedy continuation.
# cmake -DMOE=... -DF32CMP=... -DFIXTURE=... -DOUT=... -DATOL=... -P cli_golden.cmake
include(${CMAKE_CURRENT_LIST_DIR}/json_ints.cmake)

file(READ "${FIXTURE}/golden.json" G)
string(JSON seq GET "${G}" sequences 1)
json_ints("${seq}" tokens "," toks)
string(JSON lf GET "${seq}" logits)
execute_process(COMMAND ${MOE} logits -m ${FIXTURE}/model --tokens ${toks} --all -o ${OUT} -t 2 RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "moe logits failed: ${err}")
endif()
execute_process(COMMAND ${F32CMP} ${OUT} ${FIXTURE}/${lf} ${ATOL} RESULT_VARIABLE rc OUTPUT_VARIABLE o)
message(STATUS "logits: ${o}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "logits differ from transformers: ${o}")
endif()

string(JSON gr GET "${G}" greedy)
json_ints("${gr}" prompt "," p)
json_ints("${gr}" tokens " " want)
string(JSON n LENGTH "${gr}" tokens)
execute_process(COMMAND ${MOE} generate -m ${FIXTURE}/model --tokens ${p} -n ${n} --temp 0 --ignore-eos
                RESULT_VARIABLE rc OUTPUT_VARIABLE got ERROR_VARIABLE err OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT rc EQUAL 0 OR NOT got STREQUAL want)
  message(FATAL_ERROR "moe generate: got '${got}', want '${want}' (${err})")
endif()
if(NOT err MATCHES "generation: ${n} tokens, [0-9.]+ tok/s")
  message(FATAL_ERROR "moe generate did not report speeds on stderr: ${err}")
endif()
message(STATUS "greedy: ${got}")
