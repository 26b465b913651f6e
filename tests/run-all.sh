#!/usr/bin/env bash
# `make test`: the unit suite natively under ASan+UBSan, the concurrency tests under TSan, and the
# whole unit suite cross-built for aarch64 and armhf and run under QEMU user-mode, and each
# libFuzzer target for a bounded time from its committed corpus, the demo, and the Debian packages
# (`make deb`, then tests/packaging/deb_test.sh), and those packages on emulated arm64, armhf and
# amd64 machines (`make system-test`, tests/vm/run.sh). Prints how many
# tests ran in each configuration; exits non-zero if any configuration failed to build or pass.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

stages=(
  "asan-ubsan|native (ASan+UBSan)"
  "tsan|native (TSan, concurrency)"
  "aarch64|qemu-aarch64"
  "armhf|qemu-arm"
  "fuzz|libFuzzer (clang-14)"
  "demo|make demo DURATION=15"
  "deb|make deb + packaging test"
  "system|make system-test (QEMU)"
)
if [ -n "${VANTAGE_TEST_STAGES:-}" ]; then
  read -r -a only <<<"$VANTAGE_TEST_STAGES"
  filtered=()
  for s in "${stages[@]}"; do
    for o in "${only[@]}"; do [ "${s%%|*}" = "$o" ] && filtered+=("$s"); done
  done
  stages=("${filtered[@]}")
fi

logs=build/test-logs
mkdir -p "$logs"

# The system stage's machine images (tests/vm/build-image.sh) need no build output: they start
# now, in the background at the lowest CPU priority, so their downloads and emulated package
# setup fill the time the earlier stages leave a core idle. The system stage then finds them in
# the cache, or waits on the image lock for a build still running (and builds again, with its
# error shown there, if this one failed).
image_pids=()
for s in "${stages[@]}"; do
  [ "${s%%|*}" = system ] || continue
  read -r -a vm_arches <<<"${VANTAGE_VM_ARCHES:-arm64 armhf amd64}"
  for a in "${vm_arches[@]}"; do
    nice -n 19 tests/vm/build-image.sh "$a" >"$logs/vm-image-$a.log" 2>&1 &
    image_pids+=($!)
  done
done
stop_image_builds() {
  local p
  for p in "${image_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${image_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop_image_builds EXIT
trap 'exit 130' INT TERM

summary=()
total_pass=0 total_fail=0 bad=0

for s in "${stages[@]}"; do
  preset=${s%%|*} label=${s#*|}
  if [ "$preset" = demo ]; then
    echo "=== $label"
    start=$SECONDS
    if DURATION=15 tests/demo.sh >"$logs/demo.log" 2>&1; then
      tail -n 12 "$logs/demo.log"
      summary+=("$(printf '  %-30s %4d passed, %d failed  (%ds)' "$label" 1 0 $((SECONDS - start)))")
      total_pass=$((total_pass + 1))
    else
      tail -n 60 "$logs/demo.log"
      summary+=("$(printf '  %-30s %4d passed, %d failed  (%ds)' "$label" 0 1 $((SECONDS - start)))")
      total_fail=$((total_fail + 1)) bad=1
    fi
    continue
  fi
  if [ "$preset" = deb ]; then
    echo "=== $label"
    start=$SECONDS
    if packaging/build-debs.sh >"$logs/deb.log" 2>&1 && tests/packaging/deb_test.sh >>"$logs/deb.log" 2>&1; then
      grep -E '^make deb:|^deb_test:' "$logs/deb.log"
      summary+=("$(printf '  %-30s %4d passed, %d failed  (%ds)' "$label" 1 0 $((SECONDS - start)))")
      total_pass=$((total_pass + 1))
    else
      tail -n 60 "$logs/deb.log"
      summary+=("$(printf '  %-30s %4d passed, %d failed  (%ds)' "$label" 0 1 $((SECONDS - start)))")
      total_fail=$((total_fail + 1)) bad=1
    fi
    continue
  fi
  if [ "$preset" = system ]; then
    echo "=== $label"
    start=$SECONDS
    if tests/vm/run.sh >"$logs/system.log" 2>&1; then
      grep -E '^system-test:|^system_test: (passed|FAILED)|^=== |^\|' "$logs/system.log"
      summary+=("$(printf '  %-30s %4d passed, %d failed  (%ds)' "$label" 1 0 $((SECONDS - start)))")
      total_pass=$((total_pass + 1))
    else
      tail -n 150 "$logs/system.log"
      summary+=("$(printf '  %-30s %4d passed, %d failed  (%ds)' "$label" 0 1 $((SECONDS - start)))")
      total_fail=$((total_fail + 1)) bad=1
    fi
    continue
  fi
  echo "=== $label: configure and build (preset $preset)"
  start=$SECONDS
  if ! cmake --preset "$preset" >"$logs/$preset.configure.log" 2>&1; then
    cat "$logs/$preset.configure.log"
    summary+=("$(printf '  %-30s configure FAILED' "$label")"); bad=1; continue
  fi
  if ! cmake --build --preset "$preset" >"$logs/$preset.build.log" 2>&1; then
    grep -E -A12 '^FAILED|error:' "$logs/$preset.build.log" | head -n 80
    tail -n 5 "$logs/$preset.build.log"
    summary+=("$(printf '  %-30s build FAILED' "$label")"); bad=1; continue
  fi
  echo "=== $label: test"
  ctest --preset "$preset" 2>&1 | tee "$logs/$preset.test.log"
  rc=${PIPESTATUS[0]}
  line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$logs/$preset.test.log" | tail -n 1)
  total=$(sed -nE 's/.*out of ([0-9]+).*/\1/p' <<<"$line")
  failed=$(sed -nE 's/.*passed, ([0-9]+) tests? failed.*/\1/p' <<<"$line")
  total=${total:-0} failed=${failed:-0}
  if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
  passed=$((total > failed ? total - failed : 0))
  total_pass=$((total_pass + passed)) total_fail=$((total_fail + failed))
  ((rc != 0 || total == 0)) && bad=1
  summary+=("$(printf '  %-30s %4d passed, %d failed  (%ds)' "$label" "$passed" "$failed" $((SECONDS - start)))")
done

echo
echo "=== make test summary"
printf '%s\n' "${summary[@]}"
echo "$total_pass passed, $total_fail failed"
exit "$bad"
