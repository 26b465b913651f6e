#!/usr/bin/env bash
# The README's configuration reference is what the binaries print: the key tables that parse and
# check the files also document them, and this fails when the two drift apart.
# Arguments: README path, then the agent's command, "--", the collector's command.
set -euo pipefail
readme=$1; shift
agent=() collector=()
while [ "$1" != "--" ]; do agent+=("$1"); shift; done
shift
collector=("$@")
check() {
  local name=$1; shift
  local expected
  expected=$("$@" --config-reference)
  local actual
  actual=$(awk -v tag="<!-- generated: $name --config-reference -->" '
    $0 == tag { inside = 1; next }
    inside && $0 == "<!-- end generated -->" { exit }
    inside { print }' "$readme")
  if [ "$expected" != "$actual" ]; then
    echo "README's $name configuration reference differs from '$name --config-reference':"
    diff <(echo "$expected") <(echo "$actual") || true
    exit 1
  fi
  echo "$name: README matches ($(echo "$expected" | wc -l) lines)"
}
check vantage-agent "${agent[@]}"
check vantage-collector "${collector[@]}"
