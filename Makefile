# The front door: `make demo` and `make test`. Everything here is a thin call into
# toolchains/bootstrap.sh (packages, mbedTLS source) and the CMake presets.
.PHONY: all bootstrap build demo test bench deb system-test clean

all: build

bootstrap:
	@toolchains/bootstrap.sh

build: bootstrap
	@cmake --preset release >/dev/null
	@cmake --build --preset release

demo: bootstrap
	@tests/demo.sh

test: bootstrap
	@tests/run-all.sh

bench: bootstrap
	@cmake --preset bench >/dev/null
	@cmake --build --preset bench
	@bench/run.sh build/bench/bench

# Debian packages for amd64, arm64 and armhf in build/deb/ (build and package presets deb-amd64,
# deb-arm64, deb-armhf: the daemons of the release, aarch64 and armhf builds).
deb: bootstrap
	@packaging/build-debs.sh

# The .deb on emulated arm64, armhf and amd64 machines under qemu-system (tests/vm/; images cached
# in build/vm-cache or $VANTAGE_VM_CACHE). Builds the packages first if build/deb lacks them.
system-test: bootstrap
	@tests/vm/run.sh

clean:
	rm -rf build
