#include "agent/privacy/pseudonym.hpp"

#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <string_view>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

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

platform::Result<SecretSource> secret_source(std::string_view key_file, const char* credentials_directory) {
  if (!key_file.starts_with(kCredentialPrefix)) {
    return SecretSource{std::filesystem::path(key_file), false};
  }
  const std::string_view name = key_file.substr(kCredentialPrefix.size());
  // Built by appending: GCC 12 at -O3 takes "\"" + std::string + ... for an overlapping copy
  // (-Werror=restrict).
  std::string message(1, '"');
  message.append(key_file).append(1, '"');
  if (name.empty() || name.find('/') != std::string_view::npos || name == "." || name == "..") {
    message.append(": expected credential:NAME, NAME as in LoadCredential=NAME:PATH");
    return platform::Status::error(std::move(message));
  }
  if (credentials_directory == nullptr || *credentials_directory == '\0') {
    message.append(" needs $CREDENTIALS_DIRECTORY, which systemd sets for a unit with LoadCredential=")
        .append(name)
        .append(":PATH; outside systemd give a file path");
    return platform::Status::error(std::move(message));
  }
  return SecretSource{std::filesystem::path(credentials_directory) / std::string(name), true};
}

std::optional<SecretSource> default_secret_source(const char* credentials_directory) {
  if (credentials_directory == nullptr || *credentials_directory == '\0') {
    return std::nullopt;
  }
  SecretSource source{std::filesystem::path(credentials_directory) / std::string(kDefaultCredential), true};
  std::error_code ec;
  if (!std::filesystem::exists(source.file, ec)) {
    return std::nullopt;
  }
  return source;
}

std::string secret_mode_problem(const SecretSource& source, unsigned mode) {
  // A credential's directory is entered by the service's user only, and systemd shows an
  // ACL-granted credential as 0440 (the group bits are the ACL mask): its group may read.
  const unsigned refused = source.credential ? (S_IWGRP | S_IROTH | S_IWOTH) : (S_IRGRP | S_IWGRP | S_IROTH | S_IWOTH);
  const unsigned perms = mode & 07777;
  if ((perms & refused) == 0) {
    return {};
  }
  char octal[8];
  std::snprintf(octal, sizeof(octal), "%04o", perms);
  const bool readable = (perms & refused & (S_IRGRP | S_IROTH)) != 0;
  const std::string name = source.file.string();
  return name + ": the pseudonym secret is " + (readable ? "readable" : "writable") + " by " +
         ((perms & refused & (S_IROTH | S_IWOTH)) != 0 ? "other users" : "its group") + " (mode " + octal +
         "); make it private to the agent's user: chmod 600 " + name +
         " (or deliver it with systemd's LoadCredential=, see the README's Privacy section)";
}

platform::Result<std::shared_ptr<const Secret>> read_secret(const std::filesystem::path& file) {
  return read_secret(SecretSource{file, false});
}

platform::Result<std::shared_ptr<const Secret>> read_secret(const SecretSource& source) {
  const std::string name = source.file.string();
  // O_NONBLOCK: opening a FIFO must not wait for a writer (a regular file ignores the flag).
  const int fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    return platform::Status::error("cannot read " + name + ": " + std::strerror(errno), platform::Errc::kIo);
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return platform::Status::error("cannot read " + name + ": " + std::strerror(errno), platform::Errc::kIo);
  }
  if (!S_ISREG(st.st_mode)) {
    const char* kind = S_ISCHR(st.st_mode)    ? "a character device"
                       : S_ISBLK(st.st_mode)  ? "a block device"
                       : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                       : S_ISDIR(st.st_mode)  ? "a directory"
                                              : "not a file";
    return platform::Status::error(name + ": not a regular file (" + kind +
                                   "); the pseudonym secret is a file of 64 hex digits");
  }
  if (std::string problem = secret_mode_problem(source, static_cast<unsigned>(st.st_mode)); !problem.empty()) {
    return platform::Status::error(std::move(problem));
  }
  const auto too_large = [&name] {
    return platform::Status::error(name + ": larger than a secret file may be (" +
                                   std::to_string(kMaxSecretFileBytes) + " bytes; a secret is 64 hex digits)");
  };
  if (st.st_size > static_cast<off_t>(kMaxSecretFileBytes)) {
    return too_large();
  }
  // One byte more than allowed tells a file that grew since fstat from one that fits.
  std::vector<std::uint8_t> raw(kMaxSecretFileBytes + 1);
  std::size_t got = 0;
  while (got < raw.size()) {
    const ssize_t n = ::read(fd, raw.data() + got, raw.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int error = errno;
      mbedtls_platform_zeroize(raw.data(), raw.size());
      return platform::Status::error("cannot read " + name + ": " + std::strerror(error), platform::Errc::kIo);
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  if (got > kMaxSecretFileBytes) {
    mbedtls_platform_zeroize(raw.data(), raw.size());
    return too_large();
  }
  raw.resize(got);  // shrinks in place: the bytes past got were never written
  const std::filesystem::path& file = source.file;
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
