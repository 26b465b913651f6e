# Cross toolchain for aarch64 Debian targets: Debian's cross g++ and multiarch libraries; tests run
# under QEMU user-mode with the cross sysroot. Compiler flags live in CMakePresets.json.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
# Target libraries come from the cross sysroot and from multiarch /usr/lib/aarch64-linux-gnu; headers and
# CMake packages that are architecture-independent come from /usr; programs (flatc) from the host.
# SQLite comes from Debian's arm64 .debs that toolchains/bootstrap.sh unpacks into .deps/sysroot-arm64
# (the multiarch package cannot be installed beside the host's); searched first.
if(DEFINED ENV{VANTAGE_DEPS_DIR})
  set(VANTAGE_SQLITE_SYSROOT "$ENV{VANTAGE_DEPS_DIR}/sysroot-arm64")
else()
  set(VANTAGE_SQLITE_SYSROOT "${CMAKE_CURRENT_LIST_DIR}/../.deps/sysroot-arm64")
endif()
# The NATS C client (libnats.so and what it needs) likewise, from .deps/nats-arm64.
get_filename_component(VANTAGE_NATS_SYSROOT "${VANTAGE_SQLITE_SYSROOT}/../nats-arm64" ABSOLUTE)
set(CMAKE_FIND_ROOT_PATH "${VANTAGE_SQLITE_SYSROOT}" "${VANTAGE_NATS_SYSROOT}" /usr/aarch64-linux-gnu /)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
# LD_LIBRARY_PATH (set in the guest by QEMU): the collector's libnats.so.3.4, libssl.so.3, ...
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64-static;-L;/usr/aarch64-linux-gnu;-E;LD_LIBRARY_PATH=${VANTAGE_NATS_SYSROOT}/usr/lib/aarch64-linux-gnu)
