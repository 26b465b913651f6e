# Cross toolchain for armhf Debian targets: Debian's cross g++ and multiarch libraries; tests run
# under QEMU user-mode with the cross sysroot. Compiler flags live in CMakePresets.json.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7l)
set(CMAKE_C_COMPILER arm-linux-gnueabihf-gcc)
set(CMAKE_CXX_COMPILER arm-linux-gnueabihf-g++)
set(CMAKE_LIBRARY_ARCHITECTURE arm-linux-gnueabihf)
# Target libraries come from the cross sysroot and from multiarch /usr/lib/arm-linux-gnueabihf; headers and
# CMake packages that are architecture-independent come from /usr; programs (flatc) from the host.
# SQLite comes from Debian's armhf .debs that toolchains/bootstrap.sh unpacks into .deps/sysroot-armhf
# (the multiarch package cannot be installed beside the host's); searched first.
if(DEFINED ENV{VANTAGE_DEPS_DIR})
  set(VANTAGE_SQLITE_SYSROOT "$ENV{VANTAGE_DEPS_DIR}/sysroot-armhf")
else()
  set(VANTAGE_SQLITE_SYSROOT "${CMAKE_CURRENT_LIST_DIR}/../.deps/sysroot-armhf")
endif()
# The NATS C client (libnats.so and what it needs) likewise, from .deps/nats-armhf.
get_filename_component(VANTAGE_NATS_SYSROOT "${VANTAGE_SQLITE_SYSROOT}/../nats-armhf" ABSOLUTE)
set(CMAKE_FIND_ROOT_PATH "${VANTAGE_SQLITE_SYSROOT}" "${VANTAGE_NATS_SYSROOT}" /usr/arm-linux-gnueabihf /)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
# LD_LIBRARY_PATH (set in the guest by QEMU): the collector's libnats.so.3.4, libssl.so.3, ...
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-arm-static;-L;/usr/arm-linux-gnueabihf;-E;LD_LIBRARY_PATH=${VANTAGE_NATS_SYSROOT}/usr/lib/arm-linux-gnueabihf)
