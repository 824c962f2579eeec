# pack_cli.cmake — moe pack end to end on MODEL (a MoE fixture) with its cache
# root in OUT: written, up to date, --check ok; a flipped record byte found by
# --check (exit 1, naming the record); --force; a corrupt header rebuilt; a
# dense model (DENSE) and a missing pack refused. TOOL is test_xstore (flip,
# record).
file(REMOVE_RECURSE ${OUT})
include(${CMAKE_CURRENT_LIST_DIR}/../cli_expect.cmake) # run(), expect()

run(help pack --help)
expect(help 0 "usage: moe pack -m DIR")

run(first pack -m ${MODEL} -o ${OUT})
expect(first 0 "written: .*16 records \\(2 MoE layers x 8 experts\\)")
expect(first 0 "writing: 100.0%")
string(REGEX MATCH "^[^\n]*" pack "${first_out}")
if(NOT pack MATCHES "^${OUT}/model-[0-9a-f]+/experts.pack$" OR NOT EXISTS ${pack})
  message(FATAL_ERROR "the first line is not the pack's path: \"${pack}\"")
endif()

run(again pack -m ${MODEL} -o ${OUT})
expect(again 0 "up to date: ")

run(check pack -m ${MODEL} -o ${OUT} --check --threads 2)
expect(check 0 "check: ok")

# a flipped byte inside the record of layer 1, expert 5
execute_process(COMMAND ${TOOL} record ${pack} ${MODEL} 1 5 OUTPUT_VARIABLE at RESULT_VARIABLE rc)
string(STRIP "${at}" at)
execute_process(COMMAND ${TOOL} flip ${pack} ${at} RESULT_VARIABLE rc2)
if(NOT rc EQUAL 0 OR NOT rc2 EQUAL 0)
  message(FATAL_ERROR "could not flip a byte of record (1, 5): ${rc} ${rc2} at \"${at}\"")
endif()
run(bad pack -m ${MODEL} -o ${OUT} --check)
expect(bad 1 "moe: .*experts.pack: layer 1 expert 5: checksum mismatch")

run(force pack -m ${MODEL} -o ${OUT} --force --check)
expect(force 0 "written: .*check: ok")

# a corrupt header: moe pack says why and rebuilds it
execute_process(COMMAND ${TOOL} flip ${pack} 130)
run(rebuild pack -m ${MODEL} -o ${OUT})
expect(rebuild 0 "corrupt header \\(checksum mismatch\\); rebuilt it")
expect(rebuild 0 "written: ")

run(dense pack -m ${DENSE} -o ${OUT})
expect(dense 1 "^moe: .*no MoE layers")
run(missing pack -m ${MODEL} -o ${OUT}/elsewhere --check)
expect(missing 1 "no expert pack yet")
run(option pack -m ${MODEL} --bogus)
expect(option 1 "pack: unknown option --bogus")
file(REMOVE_RECURSE ${OUT})
