// PeerIdentity: who an agent certificate says its holder is: agent id, region and PoP from one
// subjectAltName URI vantage://<region>/<pop>/<agent-id>, plus its serial and expiry.
#pragma once

#include <mbedtls/x509_crt.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "platform/result.hpp"

namespace vantage::platform::tls {

// A subjectAltName URI (RFC 5280 uniformResourceIdentifier) rather than subject fields: one field,
// machine-parsed with no free-text ambiguity (subject CN/OU are display text, with escaping and
// ordering quirks), the way SPIFFE binds workload identity. Scheme and every component are checked
// strictly; nothing in it is ever percent-decoded.
inline constexpr std::string_view kIdentityScheme = "vantage://";
inline constexpr std::size_t kMaxIdentityComponent = 64;

struct PeerIdentity {
  std::string agent_id;
  std::string region;
  std::string pop;
  std::string serial;            // the certificate's serial number, raw (DER INTEGER content)
  std::int64_t not_after_s = 0;  // the certificate's notAfter, Unix time
  // SHA-256 of the certificate's issuer name (DER), so a CRL's serials are matched only against
  // certificates of that CRL's issuer, and SHA-256 of the CA certificate (DER) that the chain was
  // verified up to, so a ticket stops resuming once that CA is no longer trusted. 32 raw bytes
  // each; ca_sha256 is empty until a handshake verified the chain.
  std::string issuer_sha256;
  std::string ca_sha256;
  // Unix time of the full handshake that last verified this certificate; resumptions carry it on,
  // so a chain of resumptions has a bounded age (see TlsContextOptions::ticket_chain_limit_s).
  std::int64_t verified_at_s = 0;
  // Non-empty when the certificate names no usable identity: why (e.g. "no vantage:// URI in
  // subjectAltName"). Safe to log: peer bytes in it are escaped.
  std::string error;
  // Server: why a session ticket the peer offered was refused (its certificate revoked or expired
  // since, its CA no longer trusted, or its chain of resumptions too old); the handshake then went
  // on as a full one. Empty when none was. Not proof of who offered it: tickets can be replayed.
  std::string ticket_refused;

  bool valid() const noexcept { return error.empty() && !agent_id.empty(); }
  // The serial as colon-less lower-case hex, as `openssl x509 -serial` prints it (upper-case there).
  std::string serial_hex() const;
};

// agent id, region or PoP: 1..64 characters of [A-Za-z0-9._-], the first a letter or digit.
bool valid_identity_component(std::string_view text) noexcept;

struct UriIdentity {
  std::string region, pop, agent_id;
};
// "vantage://eu-central/fra1/fra1-edge-01" -> {eu-central, fra1, fra1-edge-01}; otherwise one
// line saying what is wrong (peer text in it escaped).
platform::Result<UriIdentity> parse_identity_uri(std::string_view uri);

// The identity of a parsed certificate: exactly one vantage:// URI among its subjectAltNames (other
// URIs and name types are ignored), its serial and notAfter. Never fails: problems go to `error`.
PeerIdentity identity_of(const mbedtls_x509_crt& crt);

// An X.509 time (UTC) as Unix seconds, computed in 64 bits (never through a 32-bit time_t, so a
// date past 2038 is right on armhf too).
std::int64_t unix_seconds(const mbedtls_x509_time& time) noexcept;

// SHA-256 of `der` as 32 raw bytes (empty if hashing failed).
std::string sha256_of(const unsigned char* der, std::size_t length);

}  // namespace vantage::platform::tls
