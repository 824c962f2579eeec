# The quality of the GPU's approximate paths on trained models: a bundled model
# quantized (moe quantize, BITS), then its perplexity on held-out text through
# the one-token decode kernels (--batch 1) and through whole prompts, on the CPU
# in float32 (MOE_ISA=avx2) and on the GPU with int8-rounded decode inputs (its
# default) and float16 tensor-core prompts. The GPU must land within 0.5% of the CPU
# (measured on an H100 at --batch 1: +0.08% for tiny-qwen-moe at 4 bits, +0.11% for tiny-mixtral
# at 8; whole prompts +0.01%).
# Skipped without a GPU (it prints "no GPU: skipped", ctest's SKIP_REGULAR_EXPRESSION).
# usage: cmake -DMOE=... -DMODEL=... -DBITS=4 -DTEXT=... -DOUT=... -P cuda_ppl.cmake
execute_process(COMMAND ${MOE} info -m ${MODEL} OUTPUT_VARIABLE info)
if(NOT info MATCHES "cuda \\(([1-9][0-9]*) device")
  message("no GPU: skipped")
  return()
endif()
set(q ${OUT}/cuda_ppl_q${BITS})
execute_process(COMMAND ${MOE} quantize -m ${MODEL} -o ${q} --bits ${BITS} --force RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
if(rc)
  message(FATAL_ERROR "moe quantize failed")
endif()
foreach(batch 1 256)
  set(ppl "")
  foreach(dev cpu cuda)
    execute_process(COMMAND ${CMAKE_COMMAND} -E env MOE_ISA=avx2 ${MOE} perplexity -m ${q} -f ${TEXT} --batch ${batch}
                    --device ${dev} OUTPUT_VARIABLE o ERROR_VARIABLE e RESULT_VARIABLE rc)
    if(rc OR NOT "${o}${e}" MATCHES "perplexity ([0-9.]+)")
      message(FATAL_ERROR "perplexity on ${dev} failed: ${o}${e}")
    endif()
    list(APPEND ppl ${CMAKE_MATCH_1})
  endforeach()
  list(GET ppl 0 a)
  list(GET ppl 1 b)
  # cmake has no float math: compare the digits as integers (both printed with 4 decimals)
  string(REGEX REPLACE "\\." "" ai "${a}")
  string(REGEX REPLACE "\\." "" bi "${b}")
  math(EXPR lim "${ai} / 200")
  math(EXPR diff "${bi} - ${ai}")
  if(diff LESS 0)
    math(EXPR diff "0 - ${diff}")
  endif()
  message("${BITS}-bit, --batch ${batch}: cpu ${a}, cuda ${b}")
  if(diff GREATER lim)
    message(FATAL_ERROR "the GPU's perplexity ${b} is more than 0.5% from the CPU's ${a}")
  endif()
endforeach()
