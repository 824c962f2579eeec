# Tests of MLX affine quantization and `moe quantize` / `moe synth --bits`
# (included from tests/CMakeLists.txt). Labels:
#   unit    quantize_unit (hand-worked groups, packing, layout), quantize_lib
#           (moe_quantize on generated models: errors, --force, casts, shards),
#           quantize_ref (byte for byte against tests/quant-ref, a PyTorch
#           restatement of MLX's algorithm)
#   golden  quantize_golden_<case>: `moe quantize` on tests/golden-quant/<case>/input
#           equals <case>/model byte for byte (every case whose golden.json has "quantize")
#   cli     the command's errors, fused = per-expert experts, synth --bits
moe_test(test_quantize)
set(QDIR ${CMAKE_CURRENT_BINARY_DIR}/quantize)
file(MAKE_DIRECTORY ${QDIR})
add_test(NAME quantize_unit COMMAND test_quantize)
add_test(NAME quantize_lib COMMAND test_quantize lib ${QDIR}/lib)
set_tests_properties(quantize_unit quantize_lib PROPERTIES LABELS unit)
if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/quant-ref/affine.safetensors)
  add_test(NAME quantize_ref COMMAND test_quantize ref ${CMAKE_CURRENT_SOURCE_DIR}/quant-ref/affine.safetensors)
  set_tests_properties(quantize_ref PROPERTIES LABELS "unit;golden")
endif()

set(QRUN ${CMAKE_COMMAND} -DMOE=$<TARGET_FILE:moe_cli> -DTESTQ=$<TARGET_FILE:test_quantize>)
file(GLOB qcases LIST_DIRECTORIES true CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/golden-quant/*/golden.json)
foreach(g ${qcases})
  file(READ ${g} gj)
  string(JSON q ERROR_VARIABLE no_q GET "${gj}" quantize)
  if(no_q)
    continue()
  endif()
  get_filename_component(dir ${g} DIRECTORY)
  get_filename_component(case ${dir} NAME)
  add_test(NAME quantize_golden_${case} COMMAND ${QRUN} -DCASE=${dir} -DOUT=${QDIR}/${case} -P ${CMAKE_CURRENT_SOURCE_DIR}/quantize_golden.cmake)
  set_tests_properties(quantize_golden_${case} PROPERTIES LABELS "golden;cli")
endforeach()

# the same Mixtral with experts one by one in 5 shards, and fused (transformers 5): the same quantized model
add_test(NAME quantize_fused COMMAND ${QRUN} -DA=${CMAKE_CURRENT_SOURCE_DIR}/golden/mixtral-top2/model
         -DB=${CMAKE_CURRENT_SOURCE_DIR}/golden/mixtral-fused-experts/model -DOUT=${QDIR}/fused
         -P ${CMAKE_CURRENT_SOURCE_DIR}/quantize_same.cmake)
set_tests_properties(quantize_fused PROPERTIES LABELS cli)

# the command on bad input: exit status 1 and a message
set(qgold ${CMAKE_CURRENT_SOURCE_DIR}/golden-quant/mistral-q4-g64-tied)
cli_fails(quantize_bits "status 1: moe: quantize: 7 bits in groups of 64 is not supported"
  ${expect1} $<TARGET_FILE:moe_cli> quantize -m ${qgold}/input -o ${QDIR}/never --bits 7)
cli_fails(quantize_group "status 1: moe: quantize: 4 bits in groups of 100 is not supported"
  ${expect1} $<TARGET_FILE:moe_cli> quantize -m ${qgold}/input -o ${QDIR}/never --group-size 100)
cli_fails(quantize_args "status 1: moe: quantize: -m and -o are required"
  ${expect1} $<TARGET_FILE:moe_cli> quantize -m ${qgold}/input)
cli_fails(quantize_option "status 1: moe: quantize: unknown option --bogus"
  ${expect1} $<TARGET_FILE:moe_cli> quantize -m ${qgold}/input -o ${QDIR}/never --bogus)
cli_fails(quantize_requantize "status 1: moe: .*/model: already quantized"
  ${expect1} $<TARGET_FILE:moe_cli> quantize -m ${qgold}/model -o ${QDIR}/never)
cli_fails(quantize_no_input "status 1: moe: /nonexistent/config.json: cannot open"
  ${expect1} $<TARGET_FILE:moe_cli> quantize -m /nonexistent -o ${QDIR}/never)
add_test(NAME cli_quantize_help COMMAND moe_cli quantize --help)
set_tests_properties(cli_quantize_help PROPERTIES LABELS cli PASS_REGULAR_EXPRESSION "usage: moe quantize -m IN -o OUT")

# moe synth --bits: the same layout with random values, loadable at full size
add_test(NAME cli_synth_bits COMMAND ${QRUN} -DOUT=${QDIR}/synth -P ${CMAKE_CURRENT_SOURCE_DIR}/quantize_synth.cmake)
set_tests_properties(cli_synth_bits PROPERTIES LABELS cli)
cli_fails(synth_bad_bits "status 1: moe: synth: 7 bits in groups of 64 is not supported"
  ${expect1} $<TARGET_FILE:moe_cli> synth --like mistral-7b --bits 7 -o ${QDIR}/never)
