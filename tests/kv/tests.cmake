# The quantized KV cache (moe_seq_params.kv_bits; labels unit, golden, cli).
#   kv              test_kv: store, SIMD kernels vs scalar, attention over quantized
#                   caches vs the float reference and the quantization's bound, and
#                   on two fixtures (sliding window + head_dim 16; head_dim 24):
#                   the cache is smaller, logits move a little, reset/truncate work
#   golden_kv8_*    every fixture against transformers with an 8-bit KV cache
#   cli_kv_bits     an unsupported --kv-bits is refused with the library's message
add_executable(test_kv ${CMAKE_CURRENT_LIST_DIR}/test_kv.c)
target_link_libraries(test_kv PRIVATE moe m)
target_include_directories(test_kv PRIVATE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR})
add_test(NAME kv COMMAND test_kv ${CMAKE_CURRENT_SOURCE_DIR}/golden/mistral-gqa2-swa/model
         ${CMAKE_CURRENT_SOURCE_DIR}/golden/qwen3moe/model)
set_tests_properties(kv PROPERTIES LABELS unit)

# Tolerance of the 8-bit runs. Each cached element is off by at most half a step,
# step = range / (2^8 - 1) of its group: an RMS of range / (255 sqrt 12), ~1.15/255
# of a head's spread. The logits move by that relative amount times the model's
# gain: ~2 where only values are perturbed (the one-token sequences), up to 14 on
# these random fixtures once keys act through the softmax over 29 tokens (measured).
# So: RMS error <= 16/255 of the reference's RMS; max error <= 4x that relative to
# max |logit| (one position moves more where a MoE router's top-k choice flips);
# greedy tokens identical up to the first step whose top-2 gap is within twice the
# RMS bound. (test_golden.c, tol().)
file(GLOB kv_fixtures LIST_DIRECTORIES true ${CMAKE_CURRENT_SOURCE_DIR}/golden/*)
foreach(dir ${kv_fixtures})
  if(EXISTS ${dir}/golden.json)
    get_filename_component(case ${dir} NAME)
    add_test(NAME golden_kv8_${case} COMMAND test_golden ${dir} 0.0627 8)
    set_tests_properties(golden_kv8_${case} PROPERTIES LABELS golden)
  endif()
endforeach()

cli_fails(kv_bits "status 1: moe: kv_bits 5 is not supported"
  ${expect1} $<TARGET_FILE:moe_cli> generate -m ${bad}/good --tokens 1 --kv-bits 5)
