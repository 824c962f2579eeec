# quantize_synth.cmake — moe synth --bits writes the quantized layout at a
# real model's size (one layer of OLMoE-1B-7B, 64 experts, 4-bit group 64)
# and the engine loads and runs it: moe info reads it as MLX-quantized and
# moe bench generates.
file(REMOVE_RECURSE ${OUT})
execute_process(COMMAND ${MOE} synth --like olmoe-1b-7b --layers 1 --bits 4 -o ${OUT} RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "synth --bits failed: ${err}")
endif()
execute_process(COMMAND ${MOE} info -m ${OUT} RESULT_VARIABLE rc OUTPUT_VARIABLE info ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT info MATCHES "quantization: MLX affine, 4-bit, group size 64" OR NOT info MATCHES "experts: +64, top-8")
  message(FATAL_ERROR "info: ${info} ${err}")
endif()
execute_process(COMMAND ${MOE} bench -m ${OUT} -p 4 -n 2 -r 1 --json RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "\"gen_tps\":[0-9.]+")
  message(FATAL_ERROR "bench: ${out} ${err}")
endif()
file(REMOVE_RECURSE ${OUT})
