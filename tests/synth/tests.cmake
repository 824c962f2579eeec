# moe synth's routing skew (moe_synth_params.skew; label unit).
#   synth_skew   test_synth_skew: test-moe models written at skew 1 (bf16 and
#                4-bit) route Zipf-like, each layer its own favourite; at skew 0
#                evenly; the skew changes no file size; bad skews are refused
add_executable(test_synth_skew ${CMAKE_CURRENT_LIST_DIR}/test_synth_skew.c)
target_link_libraries(test_synth_skew PRIVATE moe m)
target_include_directories(test_synth_skew PRIVATE ${PROJECT_SOURCE_DIR}/include)
add_test(NAME synth_skew COMMAND test_synth_skew ${CMAKE_CURRENT_BINARY_DIR}/synth_skew)
set_tests_properties(synth_skew PROPERTIES LABELS unit)
