# The cross toolchain for every architecture of toolchains/arches.env: Debian's cross g++ and
# multiarch libraries; tests run under QEMU user mode with the cross sysroot. VANTAGE_TARGET_ARCH
# (Debian's name) picks the architecture: each preset's toolchain file (aarch64-linux-gnu.cmake,
# armhf-linux-gnu.cmake, x86_64-linux-gnu.cmake) sets it and includes this one, or pass it as a
# cache variable. The triplet, processor and QEMU name come from arches.env; compiler flags live
# in CMakePresets.json.
if(NOT VANTAGE_TARGET_ARCH)
  message(FATAL_ERROR "toolchains/cross-linux-gnu.cmake: set VANTAGE_TARGET_ARCH (arm64, armhf, amd64)")
endif()
# try_compile projects read this file again: a cache variable must reach them too.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES VANTAGE_TARGET_ARCH)
include("${CMAKE_CURRENT_LIST_DIR}/../cmake/Arches.cmake")
set(_vantage_triplet "${VANTAGE_ARCH_${VANTAGE_TARGET_ARCH}_triplet}")
if(NOT _vantage_triplet)
  message(FATAL_ERROR "toolchains/cross-linux-gnu.cmake: '${VANTAGE_TARGET_ARCH}' is not in toolchains/arches.env")
endif()

set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR "${VANTAGE_ARCH_${VANTAGE_TARGET_ARCH}_processor}")
set(CMAKE_C_COMPILER ${_vantage_triplet}-gcc)
set(CMAKE_CXX_COMPILER ${_vantage_triplet}-g++)
set(CMAKE_LIBRARY_ARCHITECTURE ${_vantage_triplet})
# Target libraries come from the cross sysroot and from multiarch /usr/lib/<triplet>; headers and
# CMake packages that are architecture-independent come from /usr; programs (flatc) from the host.
# SQLite comes from Debian's .debs of the architecture that toolchains/bootstrap.sh unpacks into
# .deps/sysroot-<arch> (the multiarch package cannot be installed beside the host's); searched first.
# The NATS C client (libnats.so and what it needs) likewise, from .deps/nats-<arch>.
if(DEFINED ENV{VANTAGE_DEPS_DIR})
  get_filename_component(_vantage_deps "$ENV{VANTAGE_DEPS_DIR}" ABSOLUTE)
else()
  get_filename_component(_vantage_deps "${CMAKE_CURRENT_LIST_DIR}/../.deps" ABSOLUTE)
endif()
set(VANTAGE_SQLITE_SYSROOT "${_vantage_deps}/sysroot-${VANTAGE_TARGET_ARCH}")
set(VANTAGE_NATS_SYSROOT "${_vantage_deps}/nats-${VANTAGE_TARGET_ARCH}")
set(CMAKE_FIND_ROOT_PATH "${VANTAGE_SQLITE_SYSROOT}" "${VANTAGE_NATS_SYSROOT}" /usr/${_vantage_triplet} /)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
# LD_LIBRARY_PATH (set in the guest by QEMU): the collector's libnats.so.3.4, libssl.so.3, ...
set(CMAKE_CROSSCOMPILING_EMULATOR
    qemu-${VANTAGE_ARCH_${VANTAGE_TARGET_ARCH}_qemu}-static;-L;/usr/${_vantage_triplet};-E;LD_LIBRARY_PATH=${VANTAGE_NATS_SYSROOT}/usr/lib/${_vantage_triplet})
