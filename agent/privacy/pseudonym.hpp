// Client-address pseudonyms: a client (player) target's address is replaced on the agent by a
// keyed HMAC-SHA256 digest that rotates with an epoch, or by its network prefix, before any
// report, batch or log line can carry it (GDPR: client IPs are personal data).
#pragma once

#include <asio/ip/address.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.hpp"

namespace vantage::agent::privacy {

enum class PseudonymMode : std::uint8_t {
  kHmac,    // anon:k<epoch>:<hex digest>
  kPrefix,  // 203.0.113.0/24:443
};

// The fleet-wide secret, wiped (mbedtls_platform_zeroize) when the last holder lets go. Shared
// rather than copied so options that are copied around do not scatter the key through memory.
class Secret {
 public:
  explicit Secret(std::vector<std::uint8_t> bytes) : bytes_(std::move(bytes)) {}
  ~Secret();
  Secret(const Secret&) = delete;
  Secret& operator=(const Secret&) = delete;
  const std::vector<std::uint8_t>& bytes() const noexcept { return bytes_; }

 private:
  std::vector<std::uint8_t> bytes_;
};

inline constexpr std::size_t kMinSecretBytes = 32;
// A secret file larger than this is refused before it is read: a key is 64 hex digits, and a
// path to a device or a log file by mistake must not make the agent read without end.
inline constexpr std::size_t kMaxSecretFileBytes = 4096;
// Prefix lengths above these keep (nearly) the whole address: refused unless the config says
// privacy.allow_long_prefix (the command line: --privacy-allow-long-prefix).
inline constexpr unsigned kMaxSafePrefixV4 = 24;
inline constexpr unsigned kMaxSafePrefixV6 = 48;

// "credential:NAME" names a file systemd delivered with LoadCredential=NAME:PATH, found under
// $CREDENTIALS_DIRECTORY; kDefaultCredential is looked for there when no key file is given.
inline constexpr std::string_view kCredentialPrefix = "credential:";
inline constexpr std::string_view kDefaultCredential = "privacy-key";

// Where a secret comes from: a plain file, or a credential (whose directory only the service's
// user can enter, so systemd's 0440 for an ACL-granted credential is not a leak).
struct SecretSource {
  std::filesystem::path file;
  bool credential = false;
};

// key_file as configured: a path, or "credential:NAME" resolved against credentials_directory
// (the value of $CREDENTIALS_DIRECTORY, nullptr when unset: then an error says so).
platform::Result<SecretSource> secret_source(std::string_view key_file, const char* credentials_directory);
// With no key file configured: the credential kDefaultCredential when credentials_directory
// holds one, else nothing.
std::optional<SecretSource> default_secret_source(const char* credentials_directory);

// Why a secret file with this mode may not be used ("" when it may): group- or world-readable
// plain files are refused, and any file others can read; names the file, its mode and the fix.
std::string secret_mode_problem(const SecretSource& source, unsigned mode);

struct PrivacyConfig {
  PseudonymMode mode = PseudonymMode::kHmac;
  std::shared_ptr<const Secret> secret;  // required in kHmac mode
  std::chrono::seconds rotation{86400};  // the epoch length
  unsigned prefix_v4 = 24;               // 0..32
  unsigned prefix_v6 = 48;               // 0..128
  std::size_t digest_bytes = 12;         // 8..32
  // Prefix lengths above kMaxSafePrefixV4/V6 were explicitly allowed: a warning at each start.
  bool allow_long_prefix = false;
};

// Reads a secret file: a file of only hex digits (optionally ending in a newline) is decoded,
// anything else is used byte for byte. At least kMinSecretBytes after decoding. Refused at once
// (never read) when it is not a regular file (/dev/zero, a FIFO), larger than
// kMaxSecretFileBytes, or readable by others (secret_mode_problem). An error's message names no
// secret bytes.
platform::Result<std::shared_ptr<const Secret>> read_secret(const SecretSource& source);
platform::Result<std::shared_ptr<const Secret>> read_secret(const std::filesystem::path& file);

// floor(unix_seconds / rotation); times before 1970 are epoch 0.
std::uint64_t epoch_of(std::int64_t unix_seconds, std::chrono::seconds rotation) noexcept;

// key_epoch = HMAC-SHA256(secret, "vantage-pseudonym-v1" || epoch as 8 bytes big-endian).
std::array<std::uint8_t, 32> epoch_key(const Secret& secret, std::uint64_t epoch);

// The IP protocol number that enters the digest: 17 UDP, 6 TCP, 1 ICMP (58 ICMPv6).
// digest = HMAC-SHA256(key_epoch, address bytes (4 or 16) || ip_protocol || port big-endian).
std::array<std::uint8_t, 32> address_digest(const std::array<std::uint8_t, 32>& key_epoch,
                                            const asio::ip::address& address, std::uint8_t ip_protocol,
                                            std::uint16_t port);

// "203.0.113.0/24", "2001:db8:1::/48"; with a port (non-zero): "203.0.113.0/24:443",
// "[2001:db8:1::/48]:443". An IPv4-mapped IPv6 address is treated as IPv4.
std::string prefix_label(const asio::ip::address& address, std::uint16_t port, unsigned prefix_v4,
                         unsigned prefix_v6);

// Makes the labels; keeps the current epoch's key, so it belongs to one thread (the aggregator).
class Pseudonymiser {
 public:
  explicit Pseudonymiser(PrivacyConfig config);
  ~Pseudonymiser();
  Pseudonymiser(const Pseudonymiser&) = delete;
  Pseudonymiser& operator=(const Pseudonymiser&) = delete;

  // The label of a client target at unix_seconds: "anon:k20000:0123abcd..." or a prefix.
  // port 0 (ICMP) adds none in prefix mode.
  std::string label(const asio::ip::address& address, std::uint8_t ip_protocol, std::uint16_t port,
                    std::int64_t unix_seconds);

  const PrivacyConfig& config() const noexcept { return config_; }

 private:
  PrivacyConfig config_;
  std::optional<std::uint64_t> epoch_;
  std::array<std::uint8_t, 32> key_{};
};

}  // namespace vantage::agent::privacy
