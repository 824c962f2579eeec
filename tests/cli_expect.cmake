# cli_expect.cmake — helpers for the scripts (cmake -P) that drive the moe
# command end to end; include() it after setting MOE to the command.

# run(<name> args...): runs moe with args; sets <name>_rc, <name>_out, <name>_err
macro(run name)
  execute_process(COMMAND ${MOE} ${ARGN} RESULT_VARIABLE ${name}_rc OUTPUT_VARIABLE ${name}_out ERROR_VARIABLE ${name}_err)
endmacro()
# expect(<name> rc regex-on-stdout+stderr)
function(expect name rc regex)
  if(NOT "${${name}_rc}" STREQUAL "${rc}" OR NOT "${${name}_out}${${name}_err}" MATCHES "${regex}")
    message(FATAL_ERROR "${name}: exit ${${name}_rc} (expected ${rc}), output not matching \"${regex}\":\n"
                        "${${name}_out}\n${${name}_err}")
  endif()
endfunction()
