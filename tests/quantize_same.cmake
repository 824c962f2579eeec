# quantize_same.cmake — two layouts of one float model (A and B) quantize to
# the same bytes: every tensor and the config equal (test_quantize compare).
file(REMOVE_RECURSE ${OUT})
foreach(x A B)
  execute_process(COMMAND ${MOE} quantize -m ${${x}} -o ${OUT}/${x} --bits 4 --group-size 32 RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "moe quantize ${${x}} failed (${rc}): ${err}")
  endif()
endforeach()
execute_process(COMMAND ${TESTQ} compare ${OUT}/A ${OUT}/B RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${A} and ${B} quantize differently:\n${err}${out}")
endif()
file(REMOVE_RECURSE ${OUT})
