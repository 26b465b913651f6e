# The x86_64 presets' toolchain: toolchains/cross-linux-gnu.cmake for Debian's amd64 (its names in arches.env).
set(VANTAGE_TARGET_ARCH amd64)
include("${CMAKE_CURRENT_LIST_DIR}/cross-linux-gnu.cmake")
