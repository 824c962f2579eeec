# moe synth's routing skew (moe_synth_params.skew; label unit).
#   synth_skew   test_synth_skew: test-moe models written at skew 1 (bf16 and
#                4-bit) route Zipf-like, each layer its own favourite; at skew 0
#                evenly; the skew changes no file size; bad skews are refused
add_executable(test_synth_skew ${CMAKE_CURRENT_LIST_DIR}/test_synth_skew.c)
target_link_libraries(test_synth_skew PRIVATE moe m)
target_include_directories(test_synth_skew PRIVATE ${PROJECT_SOURCE_DIR}/include)
add_test(NAME synth_skew COMMAND test_synth_skew ${CMAKE_CURRENT_BINARY_DIR}/synth_skew)
set_tests_properties(synth_skew PROPERTIES LABELS unit)

#   synth_next   test_synth_next: the qwen3_next files of synth test-next (hub
#                and --bits 4) and of moe quantize on the hub one, tensor by
#                tensor (the mlx-community layout: stacked experts, norms
#                shifted by +1 in bf16, conv [C, K, 1], 8-bit routers, mtp.*
#                dropped); the layout of a config with a dense layer
add_executable(test_synth_next ${CMAKE_CURRENT_LIST_DIR}/test_synth_next.c)
target_link_libraries(test_synth_next PRIVATE moe PkgConfig::JANSSON m)
target_include_directories(test_synth_next PRIVATE ${PROJECT_SOURCE_DIR}/include)
add_test(NAME synth_next COMMAND test_synth_next ${CMAKE_CURRENT_BINARY_DIR}/synth_next)
set_tests_properties(synth_next PROPERTIES LABELS unit)
#   cli_synth_next  next.cmake: those models end to end through moe info,
#                generate, bench and logits; the quantized ones' logits near
#                the float model's (8 and 4 bits)
add_test(NAME cli_synth_next COMMAND ${CMAKE_COMMAND} -DMOE=$<TARGET_FILE:moe_cli> -DF32CMP=$<TARGET_FILE:f32cmp>
         -DOUT=${CMAKE_CURRENT_BINARY_DIR}/synth_next_cli -P ${CMAKE_CURRENT_LIST_DIR}/next.cmake)
set_tests_properties(cli_synth_next PROPERTIES LABELS cli)
