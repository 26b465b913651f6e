# Script mode: cmake -DINPUT=FILE -DOUTPUT=FILE.inc -P cmake/EmbedFile.cmake
# Writes INPUT's bytes as a C++ string literal (adjacent pieces of \xNN escapes, so any byte is
# allowed) for a source file to #include, as C23's #embed would, with nothing but CMake. The
# output is rewritten only when it changes, so that its includer is not recompiled for nothing.
if(NOT INPUT OR NOT OUTPUT)
  message(FATAL_ERROR "usage: cmake -DINPUT=FILE -DOUTPUT=FILE.inc -P EmbedFile.cmake")
endif()
file(READ "${INPUT}" hex HEX)
string(REGEX REPLACE "(..)" "\\\\x\\1" escaped "${hex}")
get_filename_component(name "${INPUT}" NAME)
set(text "// Generated from ${name} by cmake/EmbedFile.cmake: do not edit.\n    \"\"\n")
string(LENGTH "${escaped}" length)
set(line_length 128)  # 32 bytes a line
foreach(offset RANGE 0 ${length} ${line_length})
  string(SUBSTRING "${escaped}" ${offset} ${line_length} piece)
  if(NOT piece STREQUAL "")
    string(APPEND text "    \"${piece}\"\n")
  endif()
endforeach()
file(WRITE "${OUTPUT}.tmp" "${text}")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUTPUT}.tmp")
