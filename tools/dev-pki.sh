#!/usr/bin/env bash
# Development PKI for Vantage's mutual TLS: an ECDSA P-256 CA, the collector's server certificate
# and one client certificate per agent (subject CN=<agent-id>, OU=<region>). Not for production.
#
#   tools/dev-pki.sh [--other-ca] OUT_DIR [agent-id[:region] ...]
#
# Re-running keeps every existing file (so certificates stay valid for running processes) and
# only adds what is missing. A second invocation into another directory, or --other-ca (which
# writes a complete, unrelated PKI with the same file names into OUT_DIR/other-ca/), gives a CA
# that the first one does not trust: what refusal tests need.
set -euo pipefail

usage() {
  echo "usage: $0 [--other-ca] OUT_DIR [agent-id[:region] ...]" >&2
  exit 2
}

other_ca=0
if [[ ${1:-} == --other-ca ]]; then
  other_ca=1
  shift
fi
[[ $# -ge 1 ]] || usage
out=$1
shift
[[ $other_ca -eq 1 ]] && out=$out/other-ca

days=825
umask 077
mkdir -p "$out"
log=$(mktemp)
trap 'rm -f "$log" "$out"/*.csr "$out"/*.ext' EXIT

# openssl is chatty on stderr; keep quiet unless it fails.
run() {
  if ! "$@" >"$log" 2>&1; then
    echo "dev-pki: failed: $*" >&2
    cat "$log" >&2
    exit 1
  fi
}

new_key() {
  run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
  chmod 600 "$1"
}

if [[ ! -f $out/ca.crt || ! -f $out/ca.key ]]; then
  new_key "$out/ca.key"
  run openssl req -x509 -new -key "$out/ca.key" -sha256 -days $((days * 2)) \
    -subj "/O=Vantage/CN=Vantage development CA $(openssl rand -hex 4)" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" -out "$out/ca.crt"
  chmod 644 "$out/ca.crt"
  echo "made $out/ca.crt $out/ca.key"
fi

# issue NAME SUBJECT EXTENSIONS...: NAME.key and NAME.crt signed by the CA, unless both exist.
issue() {
  local name=$1 subject=$2
  shift 2
  [[ -f $out/$name.crt && -f $out/$name.key ]] && return 0
  new_key "$out/$name.key"
  run openssl req -new -key "$out/$name.key" -subj "$subject" -out "$out/$name.csr"
  printf '%s\n' "$@" >"$out/$name.ext"
  # 12 random bytes keep the serial positive and well under RFC 5280's 20-octet limit.
  run openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -sha256 \
    -days $days -set_serial "0x$(openssl rand -hex 12)" -extfile "$out/$name.ext" -out "$out/$name.crt"
  chmod 644 "$out/$name.crt"
  rm -f "$out/$name.csr" "$out/$name.ext"
  echo "made $out/$name.crt $out/$name.key"
}

leaf_ext=(
  "basicConstraints=critical,CA:FALSE"
  "keyUsage=critical,digitalSignature"
  "subjectKeyIdentifier=hash"
  "authorityKeyIdentifier=keyid"
)

issue collector "/O=Vantage/CN=vantage-collector" "${leaf_ext[@]}" \
  "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"

for spec in "$@"; do
  agent=${spec%%:*}
  region=
  [[ $spec == *:* ]] && region=${spec#*:}
  # The id becomes a file name and an X.509 subject: keep it to a safe alphabet.
  if [[ ! $agent =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ || ! $region =~ ^[A-Za-z0-9._-]*$ ]]; then
    echo "dev-pki: bad agent spec '$spec' (want agent-id[:region], letters, digits, . _ -)" >&2
    exit 2
  fi
  subject="/O=Vantage"
  [[ -n $region ]] && subject+="/OU=$region"
  subject+="/CN=$agent"
  issue "$agent" "$subject" "${leaf_ext[@]}" "extendedKeyUsage=clientAuth"
done
