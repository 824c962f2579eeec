# profile_cli.cmake — moe profile end to end on MODEL (a MoE model with a
# tokenizer) over the first 600 tokens of TEXT, in OUT: the profile it writes
# reads back as MODEL's, counting the tokens it reported (TOOL is test_profile,
# `check`); a second run writes the same file; a dense model (DENSE), a missing
# text and an unwritable output exit 1 with their message.
file(REMOVE_RECURSE ${OUT})
file(MAKE_DIRECTORY ${OUT})
include(${CMAKE_CURRENT_LIST_DIR}/../cli_expect.cmake) # run(), expect()

run(help profile --help)
expect(help 0 "usage: moe profile .*-f TEXT -o FILE")

set(args -m ${MODEL} -f ${TEXT} --ctx 128 --max-tokens 600 -t 2)
run(first profile ${args} -o ${OUT}/p.json)
expect(first 0 "profiled ([0-9]+) tokens \\(5 windows of up to 128\\)")
expect(first 0 "hottest 16 of 64 experts.*layer  0 .*layer  3 .*wrote ${OUT}/p.json")
expect(first 0 "profile: [0-9]+ of [0-9]+ tokens, [0-9]+ tok/s")
string(REGEX MATCH "profiled ([0-9]+) tokens" _ "${first_out}")
set(tokens ${CMAKE_MATCH_1})
if(tokens LESS 600 OR tokens GREATER 605)
  message(FATAL_ERROR "profiled ${tokens} tokens: expected 600 and a BOS per window at most")
endif()
execute_process(COMMAND ${TOOL} check ${OUT}/p.json ${MODEL} ${tokens} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the profile does not check: ${out}${err}")
endif()

run(second profile ${args} -o ${OUT}/q.json)
expect(second 0 "wrote")
file(SHA256 ${OUT}/p.json h1)
file(SHA256 ${OUT}/q.json h2)
if(NOT h1 STREQUAL h2)
  message(FATAL_ERROR "two runs over the same text wrote different profiles")
endif()

run(dense profile -m ${DENSE} -f ${TEXT} -o ${OUT}/d.json)
expect(dense 1 "^moe: profile: .* is a dense mistral model: it has no experts to profile\n$")
run(missing profile -m ${MODEL} -f ${OUT}/no-such.txt -o ${OUT}/m.json)
expect(missing 1 "^moe: .*no-such.txt: cannot read\n$")
run(unwritable profile ${args} -o ${OUT}/no/dir/p.json)
expect(unwritable 1 "moe: .*no/dir/p.json.tmp: cannot create: No such file")
run(no_out profile -m ${MODEL} -f ${TEXT})
expect(no_out 1 "^moe: profile: -f TEXT and -o FILE are required")
foreach(f d.json m.json)
  if(EXISTS ${OUT}/${f})
    message(FATAL_ERROR "a failed run left ${f}")
  endif()
endforeach()
