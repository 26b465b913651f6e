#include "agent/privacy/pseudonym.hpp"

#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string_view>

namespace vantage::agent::privacy {

namespace {

constexpr std::string_view kContext = "vantage-pseudonym-v1";

std::array<std::uint8_t, 32> hmac_sha256(const std::uint8_t* key, std::size_t key_size,
                                         const std::uint8_t* data, std::size_t size) {
  std::array<std::uint8_t, 32> out{};
  // SHA-256 is compiled in (platform/mbedtls/mbedtls_config.h); with valid arguments this
  // cannot fail, so a failure is a build mistake.
  [[maybe_unused]] const int rc =
      mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), key, key_size, data, size, out.data());
  assert(rc == 0);
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Zeroes every bit of the address bytes after the first `bits`.
template <std::size_t N>
void keep_prefix(std::array<unsigned char, N>& b, unsigned bits) noexcept {
  for (std::size_t i = 0; i < N; ++i) {
    const unsigned keep = bits > 8 * i ? std::min(8u, bits - 8 * static_cast<unsigned>(i)) : 0;
    b[i] = static_cast<unsigned char>(b[i] & (keep == 0 ? 0 : 0xff << (8 - keep)));
  }
}

}  // namespace

Secret::~Secret() { mbedtls_platform_zeroize(bytes_.data(), bytes_.size()); }

platform::Result<std::shared_ptr<const Secret>> read_secret(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    return platform::Status::error(std::string("cannot read ") + file.string() + ": " + std::strerror(errno),
                                   platform::Errc::kIo);
  }
  std::vector<std::uint8_t> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) {
    mbedtls_platform_zeroize(raw.data(), raw.size());
    return platform::Status::error("cannot read " + file.string(), platform::Errc::kIo);
  }
  std::size_t text_size = raw.size();
  while (text_size > 0 && (raw[text_size - 1] == '\n' || raw[text_size - 1] == '\r')) --text_size;
  const bool hex = text_size > 0 && text_size % 2 == 0 &&
                   std::all_of(raw.begin(), raw.begin() + static_cast<std::ptrdiff_t>(text_size),
                               [](std::uint8_t c) { return hex_value(static_cast<char>(c)) >= 0; });
  std::vector<std::uint8_t> bytes;
  if (hex) {
    bytes.reserve(text_size / 2);
    for (std::size_t i = 0; i < text_size; i += 2) {
      bytes.push_back(static_cast<std::uint8_t>(hex_value(static_cast<char>(raw[i])) * 16 +
                                                hex_value(static_cast<char>(raw[i + 1]))));
    }
    mbedtls_platform_zeroize(raw.data(), raw.size());
  } else {
    bytes = std::move(raw);
  }
  if (bytes.size() < kMinSecretBytes) {
    const std::size_t size = bytes.size();
    mbedtls_platform_zeroize(bytes.data(), bytes.size());
    return platform::Status::error(file.string() + ": the secret is " + std::to_string(size) + " bytes, at least " +
                                   std::to_string(kMinSecretBytes) + " are needed (e.g. 64 hex digits)");
  }
  return std::shared_ptr<const Secret>(std::make_shared<const Secret>(std::move(bytes)));
}

std::uint64_t epoch_of(std::int64_t unix_seconds, std::chrono::seconds rotation) noexcept {
  const std::int64_t r = std::max<std::int64_t>(1, rotation.count());
  return unix_seconds <= 0 ? 0 : static_cast<std::uint64_t>(unix_seconds / r);
}

std::array<std::uint8_t, 32> epoch_key(const Secret& secret, std::uint64_t epoch) {
  std::array<std::uint8_t, kContext.size() + 8> message{};
  std::memcpy(message.data(), kContext.data(), kContext.size());
  for (int i = 0; i < 8; ++i) {
    message[kContext.size() + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(epoch >> (56 - 8 * i));
  }
  return hmac_sha256(secret.bytes().data(), secret.bytes().size(), message.data(), message.size());
}

std::array<std::uint8_t, 32> address_digest(const std::array<std::uint8_t, 32>& key_epoch,
                                            const asio::ip::address& address, std::uint8_t ip_protocol,
                                            std::uint16_t port) {
  std::array<std::uint8_t, 16 + 3> message{};
  std::size_t n = 0;
  if (address.is_v4()) {
    const auto b = address.to_v4().to_bytes();
    std::copy(b.begin(), b.end(), message.begin());
    n = b.size();
  } else {
    const auto b = address.to_v6().to_bytes();
    std::copy(b.begin(), b.end(), message.begin());
    n = b.size();
  }
  message[n++] = ip_protocol;
  message[n++] = static_cast<std::uint8_t>(port >> 8);
  message[n++] = static_cast<std::uint8_t>(port & 0xff);
  auto out = hmac_sha256(key_epoch.data(), key_epoch.size(), message.data(), n);
  mbedtls_platform_zeroize(message.data(), message.size());
  return out;
}

std::string prefix_label(const asio::ip::address& address, std::uint16_t port, unsigned prefix_v4,
                         unsigned prefix_v6) {
  asio::ip::address a = address;
  if (a.is_v6() && a.to_v6().is_v4_mapped()) {
    a = asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  }
  std::string text;
  if (a.is_v4()) {
    const unsigned bits = std::min(prefix_v4, 32u);
    auto b = a.to_v4().to_bytes();
    keep_prefix(b, bits);
    text = asio::ip::address_v4(b).to_string() + "/" + std::to_string(bits);
    return port != 0 ? text + ":" + std::to_string(port) : text;
  }
  const unsigned bits = std::min(prefix_v6, 128u);
  auto b = a.to_v6().to_bytes();
  keep_prefix(b, bits);
  // The scope id (a link-local address's interface) is the host's, not the client's: dropped.
  text = asio::ip::address_v6(b).to_string() + "/" + std::to_string(bits);
  return port != 0 ? "[" + text + "]:" + std::to_string(port) : text;
}

Pseudonymiser::Pseudonymiser(PrivacyConfig config) : config_(std::move(config)) {}

Pseudonymiser::~Pseudonymiser() { mbedtls_platform_zeroize(key_.data(), key_.size()); }

std::string Pseudonymiser::label(const asio::ip::address& address, std::uint8_t ip_protocol,
                                 std::uint16_t port, std::int64_t unix_seconds) {
  if (config_.mode == PseudonymMode::kPrefix) {
    return prefix_label(address, port, config_.prefix_v4, config_.prefix_v6);
  }
  assert(config_.secret);
  const std::uint64_t epoch = epoch_of(unix_seconds, config_.rotation);
  if (epoch_ != epoch) {
    mbedtls_platform_zeroize(key_.data(), key_.size());
    key_ = epoch_key(*config_.secret, epoch);
    epoch_ = epoch;
  }
  auto digest = address_digest(key_, address, ip_protocol, port);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string label = "anon:k" + std::to_string(epoch) + ":";
  const std::size_t n = std::clamp<std::size_t>(config_.digest_bytes, 1, digest.size());
  for (std::size_t i = 0; i < n; ++i) {
    label += kHex[digest[i] >> 4];
    label += kHex[digest[i] & 0xf];
  }
  mbedtls_platform_zeroize(digest.data(), digest.size());
  return label;
}

}  // namespace vantage::agent::privacy
