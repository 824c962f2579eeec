# json_ints.cmake — shared by the CLI test scripts.
# out = the JSON integer array obj[key], joined with sep
function(json_ints obj key sep out)
  string(JSON n LENGTH "${obj}" ${key})
  math(EXPR last "${n} - 1")
  set(v "")
  foreach(i RANGE ${last})
    string(JSON t GET "${obj}" ${key} ${i})
    list(APPEND v ${t})
  endforeach()
  list(JOIN v "${sep}" v)
  set(${out} "${v}" PARENT_SCOPE)
endfunction()
