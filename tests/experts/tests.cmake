# The expert store (src/experts/xstore.c) and moe pack (labels unit, cli).
#   xstore_checksum     xs_checksum: every flipped bit seen, lengths, word order
#   xstore_pack_<case>  every fixture (and tiny-qwen-moe) packed, opened, and every record read
#                       back equal to the model's own expert weights; dense fixtures refused
#   xstore_stale        config.json, a shard's mtime or size changed: stale, rebuilt; else kept
#   xstore_corrupt      truncated, longer, flipped and altered header fields, a flipped record
#                       byte, a pack truncated after it was opened
#   xstore_shm          a pack on /dev/shm (tmpfs), with and without O_DIRECT
#   xstore_errors       cannot create, a failing write, a second writer, dense models, the
#                       cache directory, moe_pack
#   cli_pack            moe pack: written, up to date, --check ok / a bad record, --force, a
#                       corrupt pack rebuilt, a dense model refused
add_executable(test_xstore ${CMAKE_CURRENT_LIST_DIR}/test_xstore.c)
target_link_libraries(test_xstore PRIVATE moe PkgConfig::JANSSON m Threads::Threads)
target_include_directories(test_xstore PRIVATE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR})

set(xs_out ${CMAKE_CURRENT_BINARY_DIR}/xstore)
set(xs_quant ${CMAKE_CURRENT_SOURCE_DIR}/golden-quant/mixtral-q4-g32/model)
set(xs_dense ${CMAKE_CURRENT_SOURCE_DIR}/golden/mistral-gqa2-swa/model)

add_test(NAME xstore_checksum COMMAND test_xstore checksum)
file(GLOB xs_fixtures LIST_DIRECTORIES true ${CMAKE_CURRENT_SOURCE_DIR}/golden/* ${CMAKE_CURRENT_SOURCE_DIR}/golden-quant/*)
set(xs_tests xstore_checksum)
foreach(dir ${xs_fixtures} ${PROJECT_SOURCE_DIR}/models/tiny-qwen-moe)
  get_filename_component(case ${dir} NAME)
  set(model ${dir}/model)
  if(NOT EXISTS ${model}/config.json)
    set(model ${dir})
  endif()
  if(EXISTS ${model}/config.json)
    add_test(NAME xstore_pack_${case} COMMAND test_xstore pack ${xs_out}/pack_${case} ${model})
    list(APPEND xs_tests xstore_pack_${case})
  endif()
endforeach()
add_test(NAME xstore_stale COMMAND test_xstore stale ${xs_out}/stale ${CMAKE_CURRENT_SOURCE_DIR}/golden/mixtral-top2/model)
add_test(NAME xstore_corrupt COMMAND test_xstore corrupt ${xs_out}/corrupt ${xs_quant})
add_test(NAME xstore_shm COMMAND test_xstore shm ${CMAKE_CURRENT_SOURCE_DIR}/golden-quant/olmoe-mixed-per-expert/model)
add_test(NAME xstore_errors COMMAND test_xstore errors ${xs_out}/errors ${xs_quant} ${xs_dense})
list(APPEND xs_tests xstore_stale xstore_corrupt xstore_shm xstore_errors)
set_tests_properties(${xs_tests} PROPERTIES LABELS unit)

add_test(NAME cli_pack COMMAND ${CMAKE_COMMAND} -DMOE=$<TARGET_FILE:moe_cli> -DTOOL=$<TARGET_FILE:test_xstore>
         -DMODEL=${xs_quant} -DDENSE=${xs_dense} -DOUT=${xs_out}/cli -P ${CMAKE_CURRENT_LIST_DIR}/pack_cli.cmake)
set_tests_properties(cli_pack PROPERTIES LABELS cli)
