# next.cmake — the qwen3_next models of moe synth and moe quantize run end to
# end (test-next: 3 gated DeltaNet layers, then gated attention; 32 experts):
# the hub model and synth --bits 4 load (moe info), generate and bench; moe
# quantize of the hub model at 8 bits gives every position's logits of a
# 32-token prompt within 0.02 of the float model's, at 4 bits within 0.2
# (logits of RMS ~0.16 on this shape; measured: 0.005 and 0.07, and over
# seeds 0-3 of 64 random tokens 0.007 and 0.067 at most). Variables: MOE,
# F32CMP, OUT (a scratch directory).
include(${CMAKE_CURRENT_LIST_DIR}/../cli_expect.cmake)
file(REMOVE_RECURSE ${OUT})
file(MAKE_DIRECTORY ${OUT})
set(tokens 5,77,301,12,9,480,33,2,150,64,7,211,399,18,42,256,3,88,501,120,6,19,333,71,14,260,97,11,448,25,170,61)

run(synth synth --like test-next -o ${OUT}/hub)
expect(synth 0 "wrote")
run(synth_bits synth --like test-next --bits 4 -o ${OUT}/bits)
expect(synth_bits 0 "wrote")
foreach(m hub bits)
  run(info info -m ${OUT}/${m})
  expect(info 0 "family: +qwen3_next.*experts: +32, top-4, width 64, with a shared expert")
  run(gen generate -m ${OUT}/${m} --tokens ${tokens} -n 8 --temp 0 --ignore-eos)
  expect(gen 0 "^[0-9]+( [0-9]+)+.*generation: 8 tokens")
endforeach()
run(info info -m ${OUT}/bits)
expect(info 0 "quantization: MLX affine, 4-bit, group size 64")
run(bench bench -m ${OUT}/hub -p 8 -n 4 -r 1 --json)
expect(bench 0 "\"gen_tps\":[0-9.]+")

run(ref logits -m ${OUT}/hub --tokens ${tokens} --all -o ${OUT}/float.f32)
expect(ref 0 "")
foreach(case "8;0.02" "4;0.2")
  list(GET case 0 bits)
  list(GET case 1 atol)
  run(quantize quantize -m ${OUT}/hub -o ${OUT}/q${bits} --bits ${bits})
  expect(quantize 0 "wrote")
  run(logits logits -m ${OUT}/q${bits} --tokens ${tokens} --all -o ${OUT}/q${bits}.f32)
  expect(logits 0 "")
  execute_process(COMMAND ${F32CMP} ${OUT}/q${bits}.f32 ${OUT}/float.f32 ${atol} RESULT_VARIABLE rc OUTPUT_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${bits}-bit logits vs float: ${out}")
  endif()
  message(STATUS "${bits}-bit: ${out}")
endforeach()
file(REMOVE_RECURSE ${OUT})
