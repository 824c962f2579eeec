# quantize_golden.cmake — `moe quantize` on CASE/input with golden.json's
# "quantize" bits and group size writes what CASE/model holds: every tensor
# byte for byte (test_quantize compare), and the config's quantization entries.
file(READ ${CASE}/golden.json gj)
string(JSON bits GET "${gj}" quantize bits)
string(JSON group GET "${gj}" quantize group_size)
file(REMOVE_RECURSE ${OUT})
execute_process(COMMAND ${MOE} quantize -m ${CASE}/input -o ${OUT} --bits ${bits} --group-size ${group}
                RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "moe quantize failed (${rc}): ${err}")
endif()
execute_process(COMMAND ${TESTQ} compare ${OUT} ${CASE}/model RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${OUT} differs from ${CASE}/model:\n${err}${out}")
endif()
file(REMOVE_RECURSE ${OUT})
