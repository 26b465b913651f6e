#include "platform/tls/peer_identity.hpp"

#include <mbedtls/md.h>
#include <mbedtls/x509.h>

namespace vantage::platform::tls {

namespace {

// Printable ASCII as is (but for the quote and backslash these messages use), everything else as
// \xNN, at most `limit` bytes: a certificate's URI is ASCII, so anything else is shown byte by byte.
std::string shown(std::string_view text, std::size_t limit = 96) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  const std::size_t n = text.size() < limit ? text.size() : limit;
  out.reserve(n + 8);
  for (std::size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out.push_back(static_cast<char>(c));
    } else {
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  if (n < text.size()) out += "...";
  return out;
}

bool component_char(char c) noexcept {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == '-';
}

bool alnum(char c) noexcept { return component_char(c) && c != '.' && c != '_' && c != '-'; }

// Built in place: GCC 12's -O3 misreads "'" + std::string + "'" as an overlapping copy (-Wrestrict).
std::string quoted(std::string_view text) {
  std::string out(1, '\'');
  out += shown(text);
  out += '\'';
  return out;
}

// A SAN URI's scheme, compared without case (RFC 3986 schemes are case-insensitive).
bool has_identity_scheme(std::string_view uri) noexcept {
  constexpr std::string_view scheme = "vantage:";
  if (uri.size() < scheme.size()) return false;
  for (std::size_t i = 0; i < scheme.size(); ++i) {
    char c = uri[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != scheme[i]) return false;
  }
  return true;
}

}  // namespace

bool valid_identity_component(std::string_view text) noexcept {
  if (text.empty() || text.size() > kMaxIdentityComponent || !alnum(text.front())) return false;
  for (char c : text) {
    if (!component_char(c)) return false;
  }
  return true;
}

platform::Result<UriIdentity> parse_identity_uri(std::string_view uri) {
  constexpr std::size_t kMaxUri = kIdentityScheme.size() + 3 * kMaxIdentityComponent + 2;
  if (uri.size() > kMaxUri) {
    return platform::Status::error("identity URI longer than " + std::to_string(kMaxUri) + " bytes");
  }
  if (uri.substr(0, kIdentityScheme.size()) != kIdentityScheme) {
    return platform::Status::error("identity URI " + quoted(uri) + " does not start with vantage://");
  }
  std::string_view rest = uri.substr(kIdentityScheme.size());
  std::string_view parts[3];
  static constexpr const char* kNames[] = {"region", "PoP", "agent id"};
  for (int i = 0; i < 3; ++i) {
    const std::size_t slash = i < 2 ? rest.find('/') : std::string_view::npos;
    if (i < 2 && slash == std::string_view::npos) {
      return platform::Status::error("identity URI " + quoted(uri) +
                                     " is not vantage://<region>/<pop>/<agent-id>");
    }
    parts[i] = rest.substr(0, slash);
    rest = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1);
    if (!valid_identity_component(parts[i])) {
      return platform::Status::error("identity URI " + quoted(uri) + ": " + kNames[i] + " " + quoted(parts[i]) +
                                     " is not 1.." + std::to_string(kMaxIdentityComponent) +
                                     " characters of A-Z a-z 0-9 . _ - starting with a letter or digit");
    }
  }
  return UriIdentity{std::string(parts[0]), std::string(parts[1]), std::string(parts[2])};
}

std::string PeerIdentity::serial_hex() const {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(serial.size() * 2);
  for (char byte : serial) {
    const auto c = static_cast<unsigned char>(byte);
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

std::int64_t unix_seconds(const mbedtls_x509_time& t) noexcept {
  // Days from 1970-01-01 to the civil date (Howard Hinnant's days_from_civil), all in int64: the
  // proleptic Gregorian calendar, March-based years so the leap day ends a year.
  const std::int64_t year = std::int64_t{t.year} - (t.mon <= 2 ? 1 : 0);
  const std::int64_t era = (year >= 0 ? year : year - 399) / 400;
  const std::int64_t year_of_era = year - era * 400;
  const std::int64_t month = t.mon > 2 ? t.mon - 3 : t.mon + 9;
  const std::int64_t day_of_year = (153 * month + 2) / 5 + t.day - 1;
  const std::int64_t day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
  const std::int64_t days = era * 146097 + day_of_era - 719468;
  return days * 86400 + std::int64_t{t.hour} * 3600 + std::int64_t{t.min} * 60 + t.sec;
}

std::string sha256_of(const unsigned char* der, std::size_t length) {
  unsigned char hash[32];
  const mbedtls_md_info_t* md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
  if (md == nullptr || der == nullptr || mbedtls_md(md, der, length, hash) != 0) return {};
  return std::string(reinterpret_cast<const char*>(hash), sizeof hash);
}

PeerIdentity identity_of(const mbedtls_x509_crt& crt) {
  PeerIdentity peer;
  peer.serial.assign(reinterpret_cast<const char*>(crt.serial.p), crt.serial.len);
  peer.not_after_s = unix_seconds(crt.valid_to);
  peer.issuer_sha256 = sha256_of(crt.issuer_raw.p, crt.issuer_raw.len);
  int found = 0;
  std::string first_error;
  UriIdentity identity;
  for (const mbedtls_x509_sequence* entry = &crt.subject_alt_names; entry != nullptr; entry = entry->next) {
    if (entry->buf.p == nullptr) continue;
    mbedtls_x509_subject_alternative_name san{};
    const int ret = mbedtls_x509_parse_subject_alt_name(&entry->buf, &san);
    if (ret == 0 && san.type == MBEDTLS_X509_SAN_UNIFORM_RESOURCE_IDENTIFIER) {
      const std::string_view uri(reinterpret_cast<const char*>(san.san.unstructured_name.p),
                                 san.san.unstructured_name.len);
      if (has_identity_scheme(uri)) {
        ++found;
        auto parsed = parse_identity_uri(uri);
        if (parsed) {
          identity = std::move(*parsed);
        } else if (first_error.empty()) {
          first_error = parsed.error();
        }
      }
    }
    mbedtls_x509_free_subject_alt_name(&san);
  }
  if (found == 0) {
    peer.error = "the certificate has no vantage://<region>/<pop>/<agent-id> URI in its subjectAltName";
  } else if (found > 1) {
    peer.error = "the certificate has " + std::to_string(found) +
                 " vantage:// URIs in its subjectAltName; exactly one is allowed";
  } else if (!first_error.empty()) {
    peer.error = "the certificate's " + first_error;
  } else {
    peer.agent_id = std::move(identity.agent_id);
    peer.region = std::move(identity.region);
    peer.pop = std::move(identity.pop);
  }
  return peer;
}

}  // namespace vantage::platform::tls
