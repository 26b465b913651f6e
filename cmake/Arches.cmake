# toolchains/arches.env, the one list of target architectures, as CMake variables: each NAME=VALUE
# line becomes VANTAGE_ARCH_<NAME> (VANTAGE_ARCH_arm64_triplet, ...), and VANTAGE_ARCHES lists them
# all, the native one first. Included by toolchains/cross-linux-gnu.cmake and by the top-level
# CMakeLists.txt, where the compiler is known and VANTAGE_DEB_ARCH names the architecture built for
# (Debian's name, not the build host's; empty for one the file does not list).
file(STRINGS "${CMAKE_CURRENT_LIST_DIR}/../toolchains/arches.env" _vantage_arch_lines REGEX "^[a-z0-9_]+=")
foreach(_line IN LISTS _vantage_arch_lines)
  string(REGEX MATCH "^([a-z0-9_]+)=\"?([^\"]*)\"?$" _ "${_line}")
  set(VANTAGE_ARCH_${CMAKE_MATCH_1} "${CMAKE_MATCH_2}")
endforeach()
separate_arguments(VANTAGE_ARCHES UNIX_COMMAND "${VANTAGE_ARCH_native_arch} ${VANTAGE_ARCH_cross_arches}")

if(CMAKE_LIBRARY_ARCHITECTURE OR CMAKE_SYSTEM_PROCESSOR)
  set(VANTAGE_DEB_ARCH "")
  # The multiarch triplet says it best (a toolchain file sets it, the native compiler reports it);
  # the processor where a compiler reports none.
  foreach(_arch IN LISTS VANTAGE_ARCHES)
    if(CMAKE_LIBRARY_ARCHITECTURE STREQUAL VANTAGE_ARCH_${_arch}_triplet)
      set(VANTAGE_DEB_ARCH ${_arch})
      break()
    elseif(NOT CMAKE_LIBRARY_ARCHITECTURE AND CMAKE_SYSTEM_PROCESSOR STREQUAL VANTAGE_ARCH_${_arch}_processor)
      set(VANTAGE_DEB_ARCH ${_arch})
      break()
    endif()
  endforeach()
endif()
