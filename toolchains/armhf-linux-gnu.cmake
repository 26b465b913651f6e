# The armhf presets' toolchain: toolchains/cross-linux-gnu.cmake for Debian's armhf (its names in arches.env).
set(VANTAGE_TARGET_ARCH armhf)
include("${CMAKE_CURRENT_LIST_DIR}/cross-linux-gnu.cmake")
