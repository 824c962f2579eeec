# install_pkgconfig.cmake — `cmake --install` puts libmoe, moe.h and moe.pc in a
# prefix, and another C program (examples/generate.c) compiles and links
# against them through pkg-config alone, then runs a model.
# cmake -DBUILD=... -DSRC=... -DPREFIX=... -DMODEL=... -P install_pkgconfig.cmake
file(REMOVE_RECURSE ${PREFIX})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD} --prefix ${PREFIX} RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "install failed: ${err}")
endif()
file(GLOB pcdir ${PREFIX}/lib*/pkgconfig ${PREFIX}/lib/*/pkgconfig)
set(ENV{PKG_CONFIG_PATH} "${pcdir}")
execute_process(COMMAND pkg-config --cflags --libs --static moe RESULT_VARIABLE rc OUTPUT_VARIABLE flags ERROR_VARIABLE err
                OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pkg-config does not know moe: ${err}")
endif()
separate_arguments(flags UNIX_COMMAND "${flags}")
# EXTRA: the sanitizer flags when the library itself was built with them
execute_process(COMMAND cc -std=c11 ${EXTRA} ${SRC}/examples/generate.c -o ${PREFIX}/generate ${flags} RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "compiling against the installed library failed: ${err}")
endif()
execute_process(COMMAND ${PREFIX}/generate ${MODEL} 4 1 2 3 RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "^[0-9]+ [0-9]+ [0-9]+ [0-9]+\n$")
  message(FATAL_ERROR "the installed example failed: ${out} ${err}")
endif()
message(STATUS "linked through pkg-config (${flags}); generated: ${out}")
