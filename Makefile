# The front door: `make demo` and `make test`. Everything here is a thin call into
# toolchains/bootstrap.sh (packages, mbedTLS source) and the CMake presets.
.PHONY: all bootstrap build demo test bench deb clean

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

# Debian packages for amd64, arm64 and armhf in build/deb/ (presets deb-amd64, deb-arm64, deb-armhf).
deb: bootstrap
	@packaging/build-debs.sh

clean:
	rm -rf build
