#include "platform/tls/tls_context.hpp"

#include "platform/tls/tls_error.hpp"

#include <psa/crypto.h>

#include <mbedtls/gcm.h>
#include <mbedtls/md.h>
#include <mbedtls/oid.h>
#include <mbedtls/platform_time.h>
#include <mbedtls/platform_util.h>
// psa_util.h in mbedTLS 3.6 lacks its own extern "C" guard.
extern "C" {
#include <mbedtls/psa_util.h>
}

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

namespace vantage::platform::tls {
namespace {

// PSA crypto holds process-wide state (key slots, its RNG) that TLS 1.3 and our RNG need; a
// function-local static makes the first initialisation race-free.
int init_psa_once() {
  static const psa_status_t status = psa_crypto_init();
  return status == PSA_SUCCESS ? 0 : MBEDTLS_ERR_SSL_HW_ACCEL_FAILED;
}

std::int64_t wall_seconds() { return static_cast<std::int64_t>(std::time(nullptr)); }

std::string file_error(const std::string& path, int ret) { return path + ": " + describe_mbedtls_error(ret); }

// Where PEM comes from: a file, or text already in memory (`text` non-empty; `name` labels it).
struct PemSource {
  const std::string& name;
  const std::string& text;
};

// Reads the PEM plus the terminating NUL that mbedTLS's PEM parsers need. Our own reader (not
// MBEDTLS_FS_IO) so a missing file says why, e.g. "No such file or directory".
std::string read_pem(const PemSource& source, std::vector<unsigned char>& out) {
  if (!source.text.empty()) {
    out.assign(source.text.begin(), source.text.end());
    out.push_back('\0');
    return {};
  }
  std::ifstream in(source.name, std::ios::binary);
  if (!in) return source.name + ": " + std::strerror(errno);
  out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  if (in.bad()) return source.name + ": read error";
  out.push_back('\0');
  return {};
}

std::string parse_certs(const PemSource& source, mbedtls_x509_crt& chain) {
  std::vector<unsigned char> pem;
  if (std::string error = read_pem(source, pem); !error.empty()) return error;
  const int ret = mbedtls_x509_crt_parse(&chain, pem.data(), pem.size());
  // A positive return counts certificates that failed to parse: a partly broken file is an error.
  if (ret > 0) return source.name + ": " + std::to_string(ret) + " certificate(s) could not be parsed";
  return ret == 0 ? std::string{} : file_error(source.name, ret);
}

std::string parse_key(const PemSource& source, mbedtls_pk_context& key) {
  std::vector<unsigned char> pem;
  if (std::string error = read_pem(source, pem); !error.empty()) return error;
  const int ret = mbedtls_pk_parse_key(&key, pem.data(), pem.size(), nullptr, 0, mbedtls_psa_get_random,
                                       MBEDTLS_PSA_RANDOM_STATE);
  mbedtls_platform_zeroize(pem.data(), pem.size());  // the private key must not linger on the heap
  return ret == 0 ? std::string{} : file_error(source.name, ret);
}

}  // namespace

// The ticket keys of a server context, shared with the contexts reloaded from it.
struct TlsContext::TicketKeys {
  struct Key {
    std::uint32_t id = 0;        // 0: none
    std::int64_t created_s = 0;  // wall clock: key files outlive reboots
    unsigned char key[32] = {};
  };
  std::mutex mutex;  // ticket callbacks run on every server stream's thread
  Key keys[2];       // current, previous
  std::string file;
  std::uint32_t lifetime_s = 0;

  ~TicketKeys() { mbedtls_platform_zeroize(keys, sizeof keys); }
  // Makes a new current key when there is none or it is a lifetime old (the current one becomes
  // the previous one) and writes the key file. Under mutex.
  std::string rotate_if_due(std::int64_t now_s);
  std::string load_file();
  std::string save_file() const;
  const Key* find(std::uint32_t id) const;
};

TlsContext::TlsContext(TlsRole role, std::shared_ptr<TicketKeys> keys) : role_(role), keys_(std::move(keys)) {
  mbedtls_ssl_config_init(&config_);
  mbedtls_x509_crt_init(&ca_chain_);
  mbedtls_x509_crt_init(&own_cert_);
  mbedtls_pk_init(&own_key_);
  mbedtls_x509_crl_init(&crl_);
  mbedtls_ssl_session_init(&saved_session_);
}

TlsContext::~TlsContext() {
  mbedtls_ssl_session_free(&saved_session_);
  mbedtls_pk_free(&own_key_);
  mbedtls_x509_crl_free(&crl_);
  mbedtls_x509_crt_free(&own_cert_);
  mbedtls_x509_crt_free(&ca_chain_);
  mbedtls_ssl_config_free(&config_);
}

platform::Result<std::shared_ptr<TlsContext>> TlsContext::create(const TlsContextOptions& options) {
  std::shared_ptr<TlsContext> context(new TlsContext(options.role, nullptr));
  if (std::string error = context->load(options); !error.empty()) {
    return platform::Status::error(std::move(error));
  }
  return context;
}

platform::Result<std::shared_ptr<TlsContext>> TlsContext::reload(const TlsContextOptions& options) const {
  std::shared_ptr<TlsContext> context(new TlsContext(role_, keys_));
  if (std::string error = context->load(options); !error.empty()) {
    return platform::Status::error(std::move(error));
  }
  return context;
}

std::string TlsContext::load(const TlsContextOptions& options) {
  const bool server = role_ == TlsRole::kServer;
  if (int ret = init_psa_once(); ret != 0) return "psa_crypto_init: " + describe_mbedtls_error(ret);

  const auto in_memory = [](const std::string& pem, const std::string& file, const std::string& label) {
    return pem.empty() ? file : label;
  };
  const std::string ca_name = in_memory(options.ca_pem, options.ca_file, "<ca>");
  const std::string cert_name = in_memory(options.cert_pem, options.cert_file, "<cert>");
  const std::string key_name = in_memory(options.key_pem, options.key_file, "<key>");
  if (std::string error = parse_certs({ca_name, options.ca_pem}, ca_chain_); !error.empty()) return error;
  for (const mbedtls_x509_crt* ca = &ca_chain_; ca != nullptr; ca = ca->next) {
    if (ca->raw.p != nullptr) ca_sha256_.push_back(sha256_of(ca->raw.p, ca->raw.len));
  }

  const bool has_identity = !cert_name.empty() || !key_name.empty();
  if (server || has_identity) {
    if (cert_name.empty()) return "no certificate file given";
    if (key_name.empty()) return "no key file given";
    if (std::string error = parse_certs({cert_name, options.cert_pem}, own_cert_); !error.empty()) return error;
    if (std::string error = parse_key({key_name, options.key_pem}, own_key_); !error.empty()) return error;
    if (int ret =
            mbedtls_pk_check_pair(&own_cert_.pk, &own_key_, mbedtls_psa_get_random, MBEDTLS_PSA_RANDOM_STATE);
        ret != 0) {
      return key_name + ": does not match " + cert_name + ": " + describe_mbedtls_error(ret);
    }
    certificate_not_after_s_ = unix_seconds(own_cert_.valid_to);
  }
  if (!options.crl_file.empty()) {
    if (std::string error = load_crl(options.crl_file); !error.empty()) return error;
  }

  if (int ret = mbedtls_ssl_config_defaults(&config_, server ? MBEDTLS_SSL_IS_SERVER : MBEDTLS_SSL_IS_CLIENT,
                                            MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
      ret != 0) {
    return "mbedtls_ssl_config_defaults: " + describe_mbedtls_error(ret);
  }
  mbedtls_ssl_conf_rng(&config_, mbedtls_psa_get_random, MBEDTLS_PSA_RANDOM_STATE);
  mbedtls_ssl_conf_min_tls_version(&config_, MBEDTLS_SSL_VERSION_TLS1_2);
  mbedtls_ssl_conf_max_tls_version(
      &config_, options.allow_tls13 ? MBEDTLS_SSL_VERSION_TLS1_3 : MBEDTLS_SSL_VERSION_TLS1_2);
  // Mutual authentication both ways, and only against the pinned CA.
  mbedtls_ssl_conf_authmode(&config_, MBEDTLS_SSL_VERIFY_REQUIRED);
  // With a CRL, mbedTLS checks the peer's certificate against it in every full handshake.
  mbedtls_ssl_conf_ca_chain(&config_, &ca_chain_, has_crl_ ? &crl_ : nullptr);
  if (server || has_identity) {
    if (int ret = mbedtls_ssl_conf_own_cert(&config_, &own_cert_, &own_key_); ret != 0) {
      return cert_name + ": " + describe_mbedtls_error(ret);
    }
  }
  // Every TLS 1.3 handshake does ECDHE, resumptions included (PSK-ephemeral; never plain PSK).
  mbedtls_ssl_conf_tls13_key_exchange_modes(&config_, MBEDTLS_SSL_TLS1_3_KEY_EXCHANGE_MODE_EPHEMERAL |
                                                          MBEDTLS_SSL_TLS1_3_KEY_EXCHANGE_MODE_PSK_EPHEMERAL);

  if (server) {
    if (!keys_) {  // a new server; a reloaded one keeps the keys (and key file) it had
      keys_ = std::make_shared<TicketKeys>();
      keys_->lifetime_s = options.ticket_lifetime_s;
      keys_->file = options.ticket_key_file;
      if (!keys_->file.empty()) {
        if (std::string error = keys_->load_file(); !error.empty()) return error;
      }
    }
    {
      std::lock_guard lock(keys_->mutex);
      if (std::string error = keys_->rotate_if_due(wall_seconds()); !error.empty()) return error;
    }
    chain_limit_s_ = options.ticket_chain_limit_s != 0 ? std::int64_t{options.ticket_chain_limit_s}
                                                       : 4 * std::int64_t{keys_->lifetime_s};
    mbedtls_ssl_conf_session_tickets_cb(&config_, write_ticket, parse_ticket, this);
  } else {
    mbedtls_ssl_conf_session_tickets(&config_, MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
    // Without this a TLS 1.3 client silently drops NewSessionTicket and can never resume; with
    // it, ssl_read returns RECEIVED_NEW_SESSION_TICKET and the stream saves the session.
    mbedtls_ssl_conf_tls13_enable_signal_new_session_tickets(
        &config_, MBEDTLS_SSL_TLS1_3_SIGNAL_NEW_SESSION_TICKETS_ENABLED);
  }
  return {};
}

thread_local PeerIdentity* TlsContext::current_peer_ = nullptr;

namespace {

constexpr unsigned char kKeyFileMagic[4] = {'V', 'T', 'K', '1'};
constexpr std::size_t kKeyRecord = 4 + 8 + 32;                        // id, created, key
constexpr std::size_t kKeyFileSize = sizeof kKeyFileMagic + 2 * kKeyRecord;  // current, previous
constexpr std::size_t kTicketIv = 12;
constexpr std::size_t kTicketTag = 16;
constexpr std::size_t kTicketHeader = 4 + kTicketIv;  // key id, IV: the GCM additional data

void put_le(unsigned char* p, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
std::uint64_t get_le(const unsigned char* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= std::uint64_t{p[i]} << (8 * i);
  return v;
}

// AES-256-GCM in place; false on failure (for decryption: a forged or damaged ticket).
bool seal(const unsigned char* key, const unsigned char* header, unsigned char* data, std::size_t length,
          unsigned char* tag) {
  mbedtls_gcm_context gcm;
  mbedtls_gcm_init(&gcm);
  const bool ok = mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, key, 256) == 0 &&
                  mbedtls_gcm_crypt_and_tag(&gcm, MBEDTLS_GCM_ENCRYPT, length, header + 4, kTicketIv, header,
                                            kTicketHeader, data, data, kTicketTag, tag) == 0;
  mbedtls_gcm_free(&gcm);
  return ok;
}
bool open_sealed(const unsigned char* key, const unsigned char* header, unsigned char* data, std::size_t length,
                 const unsigned char* tag) {
  mbedtls_gcm_context gcm;
  mbedtls_gcm_init(&gcm);
  const bool ok = mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, key, 256) == 0 &&
                  mbedtls_gcm_auth_decrypt(&gcm, length, header + 4, kTicketIv, header, kTicketHeader, tag,
                                           kTicketTag, data, data) == 0;
  mbedtls_gcm_free(&gcm);
  return ok;
}

}  // namespace

std::string TlsContext::TicketKeys::load_file() {
  const std::string& ticket_key_file_ = file;
  const int fd = ::open(ticket_key_file_.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) return {};  // made by the first rotation
    return ticket_key_file_ + ": " + std::strerror(errno);
  }
  struct stat st {};
  unsigned char buffer[kKeyFileSize + 1];
  std::string error;
  if (::fstat(fd, &st) != 0) {
    error = ticket_key_file_ + ": " + std::strerror(errno);
  } else if ((st.st_mode & 077) != 0) {
    error = ticket_key_file_ + ": ticket keys must be readable by their owner only (chmod 600)";
  } else {
    const ssize_t got = ::read(fd, buffer, sizeof buffer);
    if (got != static_cast<ssize_t>(kKeyFileSize) || std::memcmp(buffer, kKeyFileMagic, sizeof kKeyFileMagic) != 0) {
      error = ticket_key_file_ + ": not a ticket key file (" + std::to_string(kKeyFileSize) +
              " bytes starting VTK1); remove it and the collector makes a new one";
    } else {
      for (int i = 0; i < 2; ++i) {
        const unsigned char* record = buffer + sizeof kKeyFileMagic + i * kKeyRecord;
        keys[i].id = static_cast<std::uint32_t>(get_le(record, 4));
        keys[i].created_s = static_cast<std::int64_t>(get_le(record + 4, 8));
        std::memcpy(keys[i].key, record + 12, sizeof keys[i].key);
      }
    }
  }
  mbedtls_platform_zeroize(buffer, sizeof buffer);
  ::close(fd);
  return error;
}

std::string TlsContext::TicketKeys::save_file() const {
  const std::string& ticket_key_file_ = file;
  unsigned char buffer[kKeyFileSize];
  std::memcpy(buffer, kKeyFileMagic, sizeof kKeyFileMagic);
  for (int i = 0; i < 2; ++i) {
    unsigned char* record = buffer + sizeof kKeyFileMagic + i * kKeyRecord;
    put_le(record, keys[i].id, 4);
    put_le(record + 4, static_cast<std::uint64_t>(keys[i].created_s), 8);
    std::memcpy(record + 12, keys[i].key, sizeof keys[i].key);
  }
  // A new file beside the old one, made durable, then renamed over it: a crash leaves either.
  const std::string temporary = ticket_key_file_ + ".new";
  std::string error;
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    error = temporary + ": " + std::strerror(errno);
  } else {
    const bool written = ::write(fd, buffer, sizeof buffer) == static_cast<ssize_t>(sizeof buffer) &&
                         ::fchmod(fd, 0600) == 0 && ::fsync(fd) == 0;
    if (!written) error = temporary + ": " + std::strerror(errno);
    ::close(fd);
    if (error.empty() && ::rename(temporary.c_str(), ticket_key_file_.c_str()) != 0) {
      error = ticket_key_file_ + ": " + std::strerror(errno);
    }
    if (!error.empty()) ::unlink(temporary.c_str());
  }
  mbedtls_platform_zeroize(buffer, sizeof buffer);
  return error;
}

std::string TlsContext::TicketKeys::rotate_if_due(std::int64_t now_s) {
  const Key& current = keys[0];
  if (current.id != 0 && now_s - current.created_s < std::int64_t{lifetime_s} && now_s >= current.created_s) {
    return {};
  }
  Key next;
  do {
    if (mbedtls_psa_get_random(MBEDTLS_PSA_RANDOM_STATE, reinterpret_cast<unsigned char*>(&next.id),
                               sizeof next.id) != 0 ||
        mbedtls_psa_get_random(MBEDTLS_PSA_RANDOM_STATE, next.key, sizeof next.key) != 0) {
      return "ticket keys: no randomness";
    }
  } while (next.id == 0 || next.id == current.id);
  next.created_s = now_s;
  keys[1] = keys[0];
  keys[0] = next;
  mbedtls_platform_zeroize(&next, sizeof next);
  return file.empty() ? std::string{} : save_file();
}

const TlsContext::TicketKeys::Key* TlsContext::TicketKeys::find(std::uint32_t id) const {
  for (const Key& key : keys) {
    if (key.id != 0 && key.id == id) return &key;
  }
  return nullptr;
}

namespace {

// The identity at the start of a ticket's sealed part: magic, then agent id, region and PoP (u8
// length each), serial (u8 length), notAfter (i64), issuer name SHA-256 (32), CA certificate
// SHA-256 (32), time of the full handshake (i64). The magic tells it from tickets sealed in an
// earlier format, which are refused (a full handshake follows).
constexpr unsigned char kIdentityMagic[2] = {0xa5, 0x4a};
constexpr std::size_t kHash = 32;
constexpr std::size_t kMaxSerial = 32;  // RFC 5280 allows 20 octets; some CAs use a few more

std::size_t identity_size(const PeerIdentity& peer) {
  return sizeof kIdentityMagic + 1 + peer.agent_id.size() + 1 + peer.region.size() + 1 + peer.pop.size() + 1 +
         peer.serial.size() + 8 + 2 * kHash + 8;
}

void put_hash(unsigned char* p, const std::string& hash) {
  std::memset(p, 0, kHash);
  if (hash.size() == kHash) std::memcpy(p, hash.data(), kHash);
}

unsigned char* put_text(unsigned char* p, const std::string& text) {
  *p++ = static_cast<unsigned char>(text.size());
  std::memcpy(p, text.data(), text.size());
  return p + text.size();
}

// Reads a length-prefixed text of at most `max` bytes; null when it does not fit.
const unsigned char* get_text(const unsigned char* p, const unsigned char* end, std::size_t max, std::string& out) {
  if (p >= end) return nullptr;
  const std::size_t n = *p++;
  if (n > max || n > static_cast<std::size_t>(end - p)) return nullptr;
  out.assign(reinterpret_cast<const char*>(p), n);
  return p + n;
}

}  // namespace

int TlsContext::write_ticket(void* self, const mbedtls_ssl_session* session, unsigned char* start,
                             const unsigned char* end, std::size_t* length, std::uint32_t* lifetime_s) {
  auto* context = static_cast<TlsContext*>(self);
  *length = 0;
  const std::size_t room = static_cast<std::size_t>(end - start);
  // A peer without a valid identity is refused by the session anyway; its ticket seals an empty
  // identity, which parse_ticket never resumes. (Failing here would fail the handshake.)
  const PeerIdentity empty;
  const PeerIdentity& peer = current_peer_ != nullptr && current_peer_->valid() &&
                                     current_peer_->serial.size() <= kMaxSerial &&
                                     current_peer_->ca_sha256.size() == kHash && current_peer_->verified_at_s > 0
                                 ? *current_peer_
                                 : empty;
  const std::size_t identity = identity_size(peer);
  if (room < kTicketHeader + identity + kTicketTag) return MBEDTLS_ERR_SSL_BUFFER_TOO_SMALL;
  unsigned char* plain = start + kTicketHeader;
  unsigned char* p = plain;
  std::memcpy(p, kIdentityMagic, sizeof kIdentityMagic);
  p += sizeof kIdentityMagic;
  p = put_text(p, peer.agent_id);
  p = put_text(p, peer.region);
  p = put_text(p, peer.pop);
  p = put_text(p, peer.serial);
  put_le(p, static_cast<std::uint64_t>(peer.not_after_s), 8);
  p += 8;
  put_hash(p, peer.issuer_sha256);
  p += kHash;
  put_hash(p, peer.ca_sha256);
  p += kHash;
  // A resumption's peer carries the time of the full handshake its chain started with: re-sealing
  // it (never "now") is what bounds the chain.
  put_le(p, static_cast<std::uint64_t>(peer.verified_at_s), 8);
  std::size_t saved = 0;
  if (int ret = mbedtls_ssl_session_save(session, plain + identity, room - kTicketHeader - identity - kTicketTag,
                                         &saved);
      ret != 0) {
    return ret;
  }
  const std::size_t sealed = identity + saved;
  TicketKeys& keys = *context->keys_;
  std::lock_guard lock(keys.mutex);
  // A failed key-file write keeps the new key in memory: tickets still work until a restart.
  (void)keys.rotate_if_due(wall_seconds());
  const TicketKeys::Key& key = keys.keys[0];
  put_le(start, key.id, 4);
  if (mbedtls_psa_get_random(MBEDTLS_PSA_RANDOM_STATE, start + 4, kTicketIv) != 0) {
    return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
  }
  if (!seal(key.key, start, plain, sealed, plain + sealed)) return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
  *length = kTicketHeader + sealed + kTicketTag;
  *lifetime_s = keys.lifetime_s;
  return 0;
}

int TlsContext::parse_ticket(void* self, mbedtls_ssl_session* session, unsigned char* ticket,
                             std::size_t length) {
  auto* context = static_cast<TlsContext*>(self);
  if (length < kTicketHeader + sizeof kIdentityMagic + kTicketTag) return MBEDTLS_ERR_SSL_INVALID_MAC;
  unsigned char* plain = ticket + kTicketHeader;
  const std::size_t sealed = length - kTicketHeader - kTicketTag;
  TicketKeys& keys = *context->keys_;
  {
    std::lock_guard lock(keys.mutex);
    (void)keys.rotate_if_due(wall_seconds());
    const TicketKeys::Key* key = keys.find(static_cast<std::uint32_t>(get_le(ticket, 4)));
    // An unknown key (rotated out, another server's, or a forgery): mbedTLS falls back to a full
    // handshake.
    if (key == nullptr) return MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED;
    if (!open_sealed(key->key, ticket, plain, sealed, plain + sealed)) return MBEDTLS_ERR_SSL_INVALID_MAC;
  }
  // No identity (or the old format): never resumed.
  if (std::memcmp(plain, kIdentityMagic, sizeof kIdentityMagic) != 0) return MBEDTLS_ERR_SSL_INVALID_MAC;
  PeerIdentity peer;
  const unsigned char* end = plain + sealed;
  const unsigned char* p = plain + sizeof kIdentityMagic;
  try {  // nothing may throw through mbedTLS
    p = get_text(p, end, kMaxIdentityComponent, peer.agent_id);
    if (p != nullptr) p = get_text(p, end, kMaxIdentityComponent, peer.region);
    if (p != nullptr) p = get_text(p, end, kMaxIdentityComponent, peer.pop);
    if (p != nullptr) p = get_text(p, end, kMaxSerial, peer.serial);
  } catch (...) {
    return MBEDTLS_ERR_SSL_ALLOC_FAILED;
  }
  if (p == nullptr || end - p < static_cast<std::ptrdiff_t>(8 + 2 * kHash + 8) ||
      !valid_identity_component(peer.agent_id)) {
    return MBEDTLS_ERR_SSL_INVALID_MAC;
  }
  try {
    peer.not_after_s = static_cast<std::int64_t>(get_le(p, 8));
    p += 8;
    peer.issuer_sha256.assign(reinterpret_cast<const char*>(p), kHash);
    p += kHash;
    peer.ca_sha256.assign(reinterpret_cast<const char*>(p), kHash);
    p += kHash;
    peer.verified_at_s = static_cast<std::int64_t>(get_le(p, 8));
    p += 8;
  } catch (...) {
    return MBEDTLS_ERR_SSL_ALLOC_FAILED;
  }
  // Sealed for a certificate that has expired since, whose CA is no longer trusted, that the CRL
  // now revokes, or verified too long ago: the peer must show a certificate again (and one that
  // is revoked or of a removed CA then fails the full handshake).
  const std::int64_t now = wall_seconds();
  const char* refused = nullptr;
  if (peer.not_after_s <= now) refused = "its certificate has expired";
  if (peer.verified_at_s <= 0 || peer.verified_at_s > now + 300 || now - peer.verified_at_s > context->chain_limit_s_) {
    refused = "its certificate was last verified too long ago";
  }
  if (!context->trusts_ca(peer.ca_sha256)) refused = "its CA is no longer trusted";
  if (context->is_revoked(peer)) refused = "its certificate is revoked";
  if (refused != nullptr) {
    if (current_peer_ != nullptr) {
      try {
        current_peer_->ticket_refused = "a session ticket of agent " + peer.agent_id + " (serial " +
                                        peer.serial_hex() + ") was refused: " + refused;
      } catch (...) {
      }
    }
    return MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED;
  }
  if (int ret = mbedtls_ssl_session_load(session, p, static_cast<std::size_t>(end - p)); ret != 0) return ret;
  // As mbedtls_ssl_ticket_parse does: the session's own creation time (CLOCK_BOOTTIME, so a
  // ticket outlives a restart of the process but not a reboot) bounds its age.
  mbedtls_ms_time_t created = 0;
  if (int ret = mbedtls_ssl_session_get_ticket_creation_time(session, &created); ret != 0) return ret;
  const mbedtls_ms_time_t age = mbedtls_ms_time() - created;
  if (age < 0 || age > mbedtls_ms_time_t{keys.lifetime_s} * 1000) {
    return MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED;
  }
  if (current_peer_ != nullptr) {
    try {
      std::string note = std::move(current_peer_->ticket_refused);
      *current_peer_ = std::move(peer);
      current_peer_->ticket_refused = std::move(note);
    } catch (...) {
      return MBEDTLS_ERR_SSL_ALLOC_FAILED;
    }
  }
  return 0;
}

bool TlsContext::trusts_ca(std::string_view ca_sha256) const noexcept {
  if (ca_sha256.size() != kHash) return false;
  return std::find(ca_sha256_.begin(), ca_sha256_.end(), ca_sha256) != ca_sha256_.end();
}

bool TlsContext::is_revoked(std::string_view serial, std::string_view issuer_sha256) const noexcept {
  if (!has_crl_) return false;
  std::size_t index = 0;
  for (const mbedtls_x509_crl* crl = &crl_; crl != nullptr; crl = crl->next, ++index) {
    if (index >= crl_issuer_sha256_.size() || crl_issuer_sha256_[index] != issuer_sha256) continue;
    for (const mbedtls_x509_crl_entry* entry = &crl->entry; entry != nullptr; entry = entry->next) {
      if (entry->serial.p != nullptr && entry->serial.len == serial.size() &&
          std::memcmp(entry->serial.p, serial.data(), serial.size()) == 0) {
        return true;
      }
    }
  }
  return false;
}

namespace {

// True when `crl` was issued and signed by `ca` (mbedTLS checks this itself in handshakes; the
// revocation checks on resumption and after a reload rely on the CRL directly, so it is checked
// once here, as x509_crt_verifycrl does).
bool signed_by(const mbedtls_x509_crl& crl, const mbedtls_x509_crt& ca) {
  if (crl.issuer_raw.len != ca.subject_raw.len ||
      std::memcmp(crl.issuer_raw.p, ca.subject_raw.p, crl.issuer_raw.len) != 0) {
    return false;
  }
  if (mbedtls_x509_crt_check_key_usage(&ca, MBEDTLS_X509_KU_CRL_SIGN) != 0) return false;
  const mbedtls_md_info_t* md = mbedtls_md_info_from_type(crl.MBEDTLS_PRIVATE(sig_md));
  if (md == nullptr) return false;
  unsigned char hash[MBEDTLS_MD_MAX_SIZE];
  if (mbedtls_md(md, crl.tbs.p, crl.tbs.len, hash) != 0) return false;
  // The private fields are how mbedTLS's own x509_crt_verifycrl reads the signature; the key is
  // taken non-const by the API but only read.
  return mbedtls_pk_verify_ext(crl.MBEDTLS_PRIVATE(sig_pk), crl.MBEDTLS_PRIVATE(sig_opts), const_cast<mbedtls_pk_context*>(&ca.pk),
                               crl.MBEDTLS_PRIVATE(sig_md), hash, mbedtls_md_get_size(md),
                               crl.MBEDTLS_PRIVATE(sig).p, crl.MBEDTLS_PRIVATE(sig).len) == 0;
}

}  // namespace

std::string TlsContext::load_crl(const std::string& file) {
  const std::string empty;
  std::vector<unsigned char> pem;
  if (std::string error = read_pem({file, empty}, pem); !error.empty()) return error;
  // PEM needs the terminating NUL read_pem adds; DER must be given without it.
  const bool is_pem = std::string_view(reinterpret_cast<const char*>(pem.data()), pem.size()).find("-----BEGIN") !=
                      std::string_view::npos;
  const int ret = mbedtls_x509_crl_parse(&crl_, pem.data(), is_pem ? pem.size() : pem.size() - 1);
  if (ret != 0) return file_error(file, ret);
  has_crl_ = true;
  const std::int64_t now = wall_seconds();
  int index = 0;
  for (const mbedtls_x509_crl* crl = &crl_; crl != nullptr; crl = crl->next, ++index) {
    const std::string which = file + (crl == &crl_ && crl->next == nullptr ? "" : " (CRL " + std::to_string(index + 1) + ")");
    bool issued = false;
    for (const mbedtls_x509_crt* ca = &ca_chain_; ca != nullptr && !issued; ca = ca->next) {
      issued = ca->raw.p != nullptr && signed_by(*crl, *ca);
    }
    if (!issued) return which + ": not issued and signed by the CA of tls.ca";
    // mbedTLS 3.6 takes a CRL without nextUpdate as expired and would fail every full handshake.
    if (crl->next_update.year == 0) {
      return which + ": has no nextUpdate, which every handshake would treat as expired; issue a CRL with one";
    }
    const std::int64_t next = unix_seconds(crl->next_update);
    // mbedTLS fails every full handshake against a CRL past its nextUpdate: never load one.
    if (next <= now) return which + ": past its nextUpdate; issue a fresh CRL";
    if (crl_next_update_s_ == 0 || next < crl_next_update_s_) crl_next_update_s_ = next;
    crl_issuer_sha256_.push_back(sha256_of(crl->issuer_raw.p, crl->issuer_raw.len));
    // mbedTLS fails every full handshake against a CRL whose thisUpdate is ahead of this clock.
    if (unix_seconds(crl->this_update) > now) {
      return which + ": its thisUpdate is in the future (clock skew with the CA?); reload again later";
    }
    for (const mbedtls_x509_crl_entry* entry = &crl->entry; entry != nullptr; entry = entry->next) {
      if (entry->serial.p != nullptr) ++revoked_serials_;
    }
  }
  return {};
}

bool TlsContext::has_saved_session() const {
  std::lock_guard lock(session_mutex_);
  return has_saved_session_;
}

void TlsContext::forget_saved_session() {
  std::lock_guard lock(session_mutex_);
  mbedtls_ssl_session_free(&saved_session_);
  mbedtls_ssl_session_init(&saved_session_);
  has_saved_session_ = false;
}

void TlsContext::save_session(const mbedtls_ssl_context& ssl, const std::string& server_name) {
  if (role_ != TlsRole::kClient) return;
  mbedtls_ssl_session session;
  mbedtls_ssl_session_init(&session);
  if (mbedtls_ssl_get_session(&ssl, &session) != 0) {
    mbedtls_ssl_session_free(&session);
    return;
  }
  std::lock_guard lock(session_mutex_);
  mbedtls_ssl_session_free(&saved_session_);
  saved_session_ = session;  // takes over the heap parts (ticket, peer certificate)
  saved_session_name_ = server_name;
  has_saved_session_ = true;
}

void TlsContext::offer_saved_session(mbedtls_ssl_context& ssl, const std::string& server_name) const {
  if (role_ != TlsRole::kClient) return;
  std::lock_guard lock(session_mutex_);
  // A failure (e.g. an expired ticket) just means a full handshake.
  if (has_saved_session_ && saved_session_name_ == server_name)
    (void)mbedtls_ssl_set_session(&ssl, &saved_session_);
}

}  // namespace vantage::platform::tls
