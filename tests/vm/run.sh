#!/usr/bin/env bash
# `make system-test`: the agent's .deb on emulated arm64, armhf and amd64 machines (see
# tests/vm/system_test.py). Builds the packages first if build/deb lacks any, then proves the
# test can fail: one architecture ($VANTAGE_VM_NEGATIVE_ARCH, default the native one, the fastest
# to boot) without the host collector must end in missing batches and a non-zero exit; then the
# real run for every architecture ($VANTAGE_VM_ARCHES, default all of toolchains/arches.env).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1

# shellcheck source=toolchains/arches.env
source toolchains/arches.env
read -r -a arches <<<"${VANTAGE_VM_ARCHES:-$cross_arches $native_arch}"
negative=${VANTAGE_VM_NEGATIVE_ARCH:-$native_arch}
logs=build/test-logs
mkdir -p "$logs"

missing=0
# The host's agent and collector are the native packages' binaries.
for a in "${arches[@]}" "$native_arch"; do
  ls build/deb/vantage-agent_*_"$a".deb >/dev/null 2>&1 || missing=1
done
ls build/deb/vantage-collector_*_"$native_arch".deb >/dev/null 2>&1 || missing=1
if ((missing)); then
  echo "system-test: building the packages (make deb)"
  nice -n 19 packaging/build-debs.sh || exit 1
fi

# The run without a collector goes beside the real one (its own host processes, ports and store):
# its guest spends most of its time waiting for an ack that cannot come.
args=()
for a in "${arches[@]}"; do args+=(--arch "$a"); done
start=$SECONDS
neg_pid=
if [ "$negative" != none ]; then
  tests/vm/system_test.py --no-collector --arch "$negative" --ack-timeout 20 >"$logs/system-negative.log" 2>&1 &
  neg_pid=$!
fi
tests/vm/system_test.py "${args[@]}"
rc=$?
if [ -n "$neg_pid" ]; then
  wait "$neg_pid"
  neg_rc=$?
  if [ "$neg_rc" -ne 1 ] || ! grep -q 'FAIL store batches: 0 batches from vm-.*missing batches' "$logs/system-negative.log"; then
    cat "$logs/system-negative.log"
    echo "system-test: without a collector the $negative run should fail with missing batches (exit $neg_rc)" >&2
    rc=1
  else
    echo "system-test: without the host collector the $negative run fails as it must: $(grep -m1 'FAIL store batches' "$logs/system-negative.log" | sed 's/^ *//') (exit 1)"
  fi
fi
echo "system-test: $( ((rc == 0)) && echo passed || echo FAILED) in $((SECONDS - start))s"
exit "$rc"
