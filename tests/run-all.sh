#!/usr/bin/env bash
# `make test`: the unit suite natively under ASan+UBSan, the concurrency tests under TSan, and the
# whole unit suite cross-built for each cross architecture of toolchains/arches.env (aarch64,
# armhf) and run under QEMU user-mode, and each libFuzzer target for a bounded time from its
# committed corpus (each of those a workflow preset: `cmake --workflow --preset aarch64` runs one
# alone), the demo, and the Debian packages (`make deb`, then tests/packaging/deb_test.sh), and
# those packages on emulated arm64, armhf and amd64 machines (`make system-test`,
# tests/vm/run.sh). Prints how many tests ran in each configuration; exits non-zero if any
# configuration failed to build or pass. VANTAGE_TEST_STAGES="demo deb" runs only those stages
# (asan-ubsan tsan aarch64 armhf fuzz demo deb system); logs go to build/test-logs/.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The cross stages, one per architecture toolchains/arches.env lists: preset and qemu-user name.
# shellcheck source=toolchains/arches.env
source toolchains/arches.env
stages=("asan-ubsan|native (ASan+UBSan)" "tsan|native (TSan, concurrency)")
for a in $cross_arches; do
  preset=${a}_preset qemu=${a}_qemu
  stages+=("${!preset}|qemu-${!qemu}")
done
stages+=(
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
# error shown there, if this one failed). Each build is its own process group: when the system
# stage starts they are on its critical path and get the run's own priority back (on a machine
# busy with other work a nice-19 build would hardly run at all), and a stop ends all of each.
image_pids=()
for s in "${stages[@]}"; do
  [ "${s%%|*}" = system ] || continue
  read -r -a vm_arches <<<"${VANTAGE_VM_ARCHES:-$cross_arches $native_arch}"
  for a in "${vm_arches[@]}"; do
    setsid nice -n 19 tests/vm/build-image.sh "$a" >"$logs/vm-image-$a.log" 2>&1 &
    image_pids+=($!)
  done
done
stop_image_builds() {
  local p
  for p in "${image_pids[@]}"; do kill -- "-$p" 2>/dev/null || true; done
  for p in "${image_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
prioritise_image_builds() {
  local p
  for p in "${image_pids[@]}"; do renice -n "$(nice)" -g "$p" >/dev/null 2>&1 || true; done
}
trap stop_image_builds EXIT
trap 'exit 130' INT TERM

summary=() failures=()
total_pass=0 total_fail=0 bad=0

# stage LABEL COMMAND...: one stage of the summary. COMMAND's exit status says whether it passed;
# it may set counts ("PASSED FAILED", else 1 0 or 0 1 by that status) or note (a summary line
# such as "build FAILED" in place of counts and totals).
stage() {
  local label=$1 start=$SECONDS rc passed failed
  shift
  counts='' note=''
  echo "=== $label"
  "$@"
  rc=$?
  if [ -n "$note" ]; then
    summary+=("$(printf '  %-30s %s' "$label" "$note")"); bad=1; return
  fi
  read -r passed failed <<<"${counts:-$((rc == 0)) $((rc != 0))}"
  total_pass=$((total_pass + passed)) total_fail=$((total_fail + failed))
  ((rc != 0)) && bad=1
  summary+=("$(printf '  %-30s %4d passed, %d failed  (%ds)' "$label" "$passed" "$failed" $((SECONDS - start)))")
}

# logged NAME SHOW FAIL_LINES COMMAND...: COMMAND with its output in $logs/NAME.log; then the
# log's lines that SHOW matches (an extended regex; a number: that many last lines), or on
# failure its last FAIL_LINES lines.
logged() {
  local log=$logs/$1.log show=$2 fail_lines=$3
  shift 3
  if ! "$@" >"$log" 2>&1; then
    tail -n "$fail_lines" "$log"
    return 1
  fi
  if [[ $show =~ ^[0-9]+$ ]]; then tail -n "$show" "$log"; else grep -E "$show" "$log"; fi
  return 0
}

# failure_lines LOG: each failed test's name in a ctest log, then the first lines of its output
# (outputOnFailure) that say what failed, cut to 300 characters.
failure_lines() {
  awk '
    / Test +#[0-9]+: .*\*\*\*(Failed|Timeout|Exception)/ {
      name = $0; sub(/^.*Test +#[0-9]+: /, "", name); sub(/ \.+.*$/, "", name)
      print name; block = 1; shown = 0; next
    }
    /^ *[0-9]+\/[0-9]+ Test +#|^ +Start +[0-9]+: / { block = 0 }
    block && shown < 8 && /FAIL|ERROR|[Ee]rror|Assertion|assert|timed out/ { print "    " substr($0, 1, 300); shown++ }
  ' "$1" | head -n 60
}

debs() { packaging/build-debs.sh && tests/packaging/deb_test.sh; }

# ctest_stage PRESET: its workflow (CMakePresets.json: configure, build, test), the test step
# shown as it runs; counts from ctest's last line, or the step that failed.
ctest_stage() {
  local preset=$1 log=$logs/$1.log rc step line total failed
  cmake --workflow --preset "$preset" 2>&1 | tee "$log" | sed -un '/^Executing workflow step [0-9]* of [0-9]*: test preset/,$p'
  rc=${PIPESTATUS[0]}
  step=$(sed -n 's/^Executing workflow step [0-9]* of [0-9]*: \([a-z]*\) preset.*/\1/p' "$log" | tail -n 1)
  if [ "$rc" -ne 0 ] && [ "$step" != test ]; then
    if [ "$step" = build ]; then
      grep -E -A12 '^FAILED|error:' "$log" | head -n 80
      tail -n 5 "$log"
    else
      cat "$log"
    fi
    note="${step:-configure} FAILED"
    return 1
  fi
  line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1)
  total=$(sed -nE 's/.*out of ([0-9]+).*/\1/p' <<<"$line")
  failed=$(sed -nE 's/.*passed, ([0-9]+) tests? failed.*/\1/p' <<<"$line")
  total=${total:-0} failed=${failed:-0}
  if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
  counts="$((total > failed ? total - failed : 0)) $failed"
  # What each failed test said: repeated after the summary, where a long log's tail still shows it.
  while IFS= read -r line; do failures+=("  $preset: $line"); done < <(failure_lines "$log")
  ((rc == 0 && total > 0))
}

for s in "${stages[@]}"; do
  name=${s%%|*} label=${s#*|}
  case $name in
    demo) stage "$label" logged demo 12 60 env DURATION=15 tests/demo.sh ;;
    deb) stage "$label" logged deb '^make deb:|^deb_test:' 60 debs ;;
    system) prioritise_image_builds; stage "$label" logged system '^system-test:|^system_test: (passed|FAILED)|^=== |^\|' 150 tests/vm/run.sh ;;
    *) stage "$label" ctest_stage "$name" ;;
  esac
done

echo
echo "=== make test summary"
printf '%s\n' "${summary[@]}"
echo "$total_pass passed, $total_fail failed"
if ((${#failures[@]})); then
  echo "=== failed tests"
  printf '%s\n' "${failures[@]}"
fi
exit "$bad"
