# The aarch64 presets' toolchain: toolchains/cross-linux-gnu.cmake for Debian's arm64 (its names in arches.env).
set(VANTAGE_TARGET_ARCH arm64)
include("${CMAKE_CURRENT_LIST_DIR}/cross-linux-gnu.cmake")
