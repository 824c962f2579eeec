# Chat templates (label unit, chat):
#   jinja           the Jinja interpreter and chat layer: constructs, whitespace control,
#                   Python value semantics, error paths and limits (test_jinja.c)
#   chat_templates  moe vs transformers' apply_chat_template on real templates, byte for
#                   byte (fixtures/*.json, made by tools/gen_chat_fixtures.py from
#                   templates/*.json and probes.json)
foreach(t test_jinja test_chat_templates)
  add_executable(${t} ${CMAKE_CURRENT_LIST_DIR}/${t}.c)
  target_link_libraries(${t} PRIVATE moe PkgConfig::JANSSON Threads::Threads m)
  target_include_directories(${t} PRIVATE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR})
endforeach()
add_test(NAME jinja COMMAND test_jinja)
add_test(NAME chat_templates COMMAND test_chat_templates ${CMAKE_CURRENT_LIST_DIR}/fixtures)
set_tests_properties(jinja chat_templates PROPERTIES LABELS "unit;chat")
