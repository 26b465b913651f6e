#!/usr/bin/env bash
# Development PKI for Vantage's mutual TLS: an ECDSA P-256 CA, the collector's server certificate
# and one client certificate per agent. An agent certificate binds the agent's identity in one
# subjectAltName URI, vantage://<region>/<pop>/<agent-id>, which the collector takes as the
# truth (the subject, CN=<agent-id>, OU=<region>, is only display text). Not for production.
#
#   tools/dev-pki.sh [--other-ca] OUT_DIR [agent-id[:region[:pop]] ...]
#       region defaults to eu-central, pop to the agent id.
#   tools/dev-pki.sh --revoke OUT_DIR [agent-id ...]
#       revokes those agents' certificates (kept in OUT_DIR/index.txt) and writes OUT_DIR/crl.pem,
#       the CA's CRL of every certificate revoked so far (valid 365 days; with no agent id it just
#       renews the CRL). The collector loads it with tls.crl / --crl; `systemctl reload` rereads it.
#
# Re-running keeps every existing file (so certificates stay valid for running processes) and
# only adds what is missing; naming an existing agent with another region or PoP than its
# certificate binds fails and says so (remove its .crt and .key to issue it anew). A second invocation into another directory, or --other-ca (which
# writes a complete, unrelated PKI with the same file names into OUT_DIR/other-ca/), gives a CA
# that the first one does not trust: what refusal tests need.
set -euo pipefail

usage() {
  echo "usage: $0 [--other-ca] OUT_DIR [agent-id[:region[:pop]] ...]" >&2
  echo "       $0 --revoke OUT_DIR [agent-id ...]" >&2
  exit 2
}

other_ca=0
revoke=0
if [[ ${1:-} == --other-ca ]]; then
  other_ca=1
  shift
elif [[ ${1:-} == --revoke ]]; then
  revoke=1
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
trap 'rm -f "$log" "$out"/*.csr "$out"/*.ext "$out"/ca.cnf' EXIT

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

# One component of the identity URI: what the collector accepts (1..64 of A-Z a-z 0-9 . _ -,
# starting with a letter or digit).
component_re='^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'

if [[ $revoke -eq 1 ]]; then
  [[ -f $out/ca.crt && -f $out/ca.key ]] || { echo "dev-pki: no CA in $out" >&2; exit 1; }
  touch "$out/index.txt"
  [[ -f $out/crlnumber ]] || echo 1000 >"$out/crlnumber"
  for agent in "$@"; do
    if [[ ! $agent =~ $component_re || ! -f $out/$agent.crt ]]; then
      echo "dev-pki: no certificate $out/$agent.crt to revoke" >&2
      exit 2
    fi
    serial=$(openssl x509 -in "$out/$agent.crt" -noout -serial)
    serial=${serial#serial=}
    grep -q "	$serial	" "$out/index.txt" && continue
    end=$(openssl x509 -in "$out/$agent.crt" -noout -enddate)
    # openssl ca's database: status, expiry, revocation time, serial, file, subject (tab-separated).
    printf 'R\t%s\t%s\t%s\tunknown\t/CN=%s\n' "$(date -u -d "${end#notAfter=}" +%y%m%d%H%M%SZ)" \
      "$(date -u +%y%m%d%H%M%SZ)" "$serial" "$agent" >>"$out/index.txt"
    echo "revoked $out/$agent.crt (serial $serial)"
  done
  printf '%s\n' "[ca]" "default_ca = dev" "[dev]" "database = $out/index.txt" "crlnumber = $out/crlnumber" \
    "default_md = sha256" "default_crl_days = 365" "crl_extensions = crl_ext" \
    "[crl_ext]" "authorityKeyIdentifier = keyid:always" >"$out/ca.cnf"
  run openssl ca -batch -config "$out/ca.cnf" -gencrl -cert "$out/ca.crt" -keyfile "$out/ca.key" \
    -out "$out/crl.pem.new"
  chmod 644 "$out/crl.pem.new"
  mv "$out/crl.pem.new" "$out/crl.pem"  # a reader sees the old CRL or the new one, never half
  echo "made $out/crl.pem"
  exit 0
fi

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
  IFS=: read -r agent region pop extra <<<"$spec"
  region=${region:-eu-central}
  pop=${pop:-$agent}
  # The id becomes a file name, a subject and the URI: keep all three to the collector's alphabet.
  if [[ -n $extra || ! $agent =~ $component_re || ! $region =~ $component_re || ! $pop =~ $component_re ]]; then
    echo "dev-pki: bad agent spec '$spec' (want agent-id[:region[:pop]], each 1..64 letters, digits, . _ -)" >&2
    exit 2
  fi
  uri="vantage://$region/$pop/$agent"
  # An existing certificate is kept, so it must already bind this identity: silently keeping one
  # for another region or PoP would leave the agent refused for a mismatch nobody asked for.
  if [[ -f $out/$agent.crt ]]; then
    bound=$(openssl x509 -in "$out/$agent.crt" -noout -ext subjectAltName 2>/dev/null |
      grep -o 'URI:vantage://[^,[:space:]]*' | head -n 1 || true)
    bound=${bound#URI:}
    if [[ $bound != "$uri" ]]; then
      echo "dev-pki: $out/$agent.crt already exists and binds ${bound:-no vantage:// URI}, not $uri; remove" \
        "$out/$agent.crt and $out/$agent.key to issue it anew (and --revoke the old one first if it was handed out)" >&2
      exit 1
    fi
  fi
  issue "$agent" "/O=Vantage/OU=$region/CN=$agent" "${leaf_ext[@]}" "extendedKeyUsage=clientAuth" \
    "subjectAltName=URI:$uri"
done
