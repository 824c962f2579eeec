# Expert profiles: the routing counts, the profile file (src/experts/xprofile.c),
# moe profile (labels unit, cli).
#   profile_counts   on a qwen2_moe fixture with a dense layer and on tiny-qwen-moe
#                    (profile_counts_tiny-qwen-next: the same on the hybrid model):
#                    one token picks top_k distinct experts, N tokens sum to N x top_k
#                    per MoE layer, dense and out-of-range layers refused, reset zeroes,
#                    the same tokens count the same; moe_profile_write reads back equal
#   profile_format   xp_write -> xp_read; malformed files each refused with their
#                    message; xp_check_model against other shapes; xp_hottest; the
#                    example in docs/PROFILE.md
#   cli_profile      moe profile on tiny-qwen-moe (the first 600 tokens of the heldout
#                    text): a valid profile of the model, the same on a second run;
#                    a dense model, a missing text, an unwritable output refused
add_executable(test_profile ${CMAKE_CURRENT_LIST_DIR}/test_profile.c)
target_link_libraries(test_profile PRIVATE moe m)
target_include_directories(test_profile PRIVATE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR})

set(prof_out ${CMAKE_CURRENT_BINARY_DIR}/profile)
file(MAKE_DIRECTORY ${prof_out})
add_test(NAME profile_counts COMMAND test_profile counts ${prof_out} ${CMAKE_CURRENT_SOURCE_DIR}/golden/qwen2moe/model
         ${PROJECT_SOURCE_DIR}/models/tiny-qwen-moe)
add_test(NAME profile_format COMMAND test_profile format ${prof_out} ${PROJECT_SOURCE_DIR}/docs/PROFILE.md)
set_tests_properties(profile_counts profile_format PROPERTIES LABELS unit)
# With the float path only: the AMX path computes 8 or more tokens at once in
# bf16, so 1 + 28 tokens and 29 at once differ in precision, and through the
# DeltaNet layers' recurrent state enough to flip a routing choice.
add_test(NAME profile_counts_tiny-qwen-next COMMAND test_profile counts ${prof_out} ${PROJECT_SOURCE_DIR}/models/tiny-qwen-next)
set_tests_properties(profile_counts_tiny-qwen-next PROPERTIES LABELS unit ENVIRONMENT "MOE_AMX_MIN_TOKENS=1000000")

add_test(NAME cli_profile COMMAND ${CMAKE_COMMAND} -DMOE=$<TARGET_FILE:moe_cli> -DTOOL=$<TARGET_FILE:test_profile>
         -DMODEL=${PROJECT_SOURCE_DIR}/models/tiny-qwen-moe -DDENSE=${CMAKE_CURRENT_SOURCE_DIR}/golden/mistral-gqa2-swa/model
         -DTEXT=${CMAKE_CURRENT_SOURCE_DIR}/bundled/heldout.txt -DOUT=${prof_out}/cli -P ${CMAKE_CURRENT_LIST_DIR}/profile_cli.cmake)
set_tests_properties(cli_profile PROPERTIES LABELS cli)
