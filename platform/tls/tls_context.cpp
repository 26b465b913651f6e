#include "platform/tls/tls_context.hpp"

#include "platform/tls/tls_error.hpp"

#include <psa/crypto.h>

#include <mbedtls/gcm.h>
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

TlsContext::TlsContext(TlsRole role) : role_(role) {
  mbedtls_ssl_config_init(&config_);
  mbedtls_x509_crt_init(&ca_chain_);
  mbedtls_x509_crt_init(&own_cert_);
  mbedtls_pk_init(&own_key_);
  mbedtls_ssl_session_init(&saved_session_);
}

TlsContext::~TlsContext() {
  mbedtls_ssl_session_free(&saved_session_);
  mbedtls_platform_zeroize(keys_, sizeof keys_);
  mbedtls_pk_free(&own_key_);
  mbedtls_x509_crt_free(&own_cert_);
  mbedtls_x509_crt_free(&ca_chain_);
  mbedtls_ssl_config_free(&config_);
}

platform::Result<std::shared_ptr<TlsContext>> TlsContext::create(const TlsContextOptions& options) {
  std::shared_ptr<TlsContext> context(new TlsContext(options.role));
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
  mbedtls_ssl_conf_ca_chain(&config_, &ca_chain_, nullptr);
  if (server || has_identity) {
    if (int ret = mbedtls_ssl_conf_own_cert(&config_, &own_cert_, &own_key_); ret != 0) {
      return cert_name + ": " + describe_mbedtls_error(ret);
    }
  }
  // Every TLS 1.3 handshake does ECDHE, resumptions included (PSK-ephemeral; never plain PSK).
  mbedtls_ssl_conf_tls13_key_exchange_modes(&config_, MBEDTLS_SSL_TLS1_3_KEY_EXCHANGE_MODE_EPHEMERAL |
                                                          MBEDTLS_SSL_TLS1_3_KEY_EXCHANGE_MODE_PSK_EPHEMERAL);

  if (server) {
    ticket_lifetime_s_ = options.ticket_lifetime_s;
    ticket_key_file_ = options.ticket_key_file;
    if (!ticket_key_file_.empty()) {
      if (std::string error = load_key_file(); !error.empty()) return error;
    }
    if (std::string error = rotate_keys_if_due(wall_seconds()); !error.empty()) return error;
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

std::string TlsContext::load_key_file() {
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
        keys_[i].id = static_cast<std::uint32_t>(get_le(record, 4));
        keys_[i].created_s = static_cast<std::int64_t>(get_le(record + 4, 8));
        std::memcpy(keys_[i].key, record + 12, sizeof keys_[i].key);
      }
    }
  }
  mbedtls_platform_zeroize(buffer, sizeof buffer);
  ::close(fd);
  return error;
}

std::string TlsContext::save_key_file() const {
  unsigned char buffer[kKeyFileSize];
  std::memcpy(buffer, kKeyFileMagic, sizeof kKeyFileMagic);
  for (int i = 0; i < 2; ++i) {
    unsigned char* record = buffer + sizeof kKeyFileMagic + i * kKeyRecord;
    put_le(record, keys_[i].id, 4);
    put_le(record + 4, static_cast<std::uint64_t>(keys_[i].created_s), 8);
    std::memcpy(record + 12, keys_[i].key, sizeof keys_[i].key);
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

std::string TlsContext::rotate_keys_if_due(std::int64_t now_s) {
  const TicketKey& current = keys_[0];
  if (current.id != 0 && now_s - current.created_s < std::int64_t{ticket_lifetime_s_} && now_s >= current.created_s) {
    return {};
  }
  TicketKey next;
  do {
    if (mbedtls_psa_get_random(MBEDTLS_PSA_RANDOM_STATE, reinterpret_cast<unsigned char*>(&next.id),
                               sizeof next.id) != 0 ||
        mbedtls_psa_get_random(MBEDTLS_PSA_RANDOM_STATE, next.key, sizeof next.key) != 0) {
      return "ticket keys: no randomness";
    }
  } while (next.id == 0 || next.id == current.id);
  next.created_s = now_s;
  keys_[1] = keys_[0];
  keys_[0] = next;
  mbedtls_platform_zeroize(&next, sizeof next);
  return ticket_key_file_.empty() ? std::string{} : save_key_file();
}

const TlsContext::TicketKey* TlsContext::find_key(std::uint32_t id) const {
  for (const TicketKey& key : keys_) {
    if (key.id != 0 && key.id == id) return &key;
  }
  return nullptr;
}

int TlsContext::write_ticket(void* self, const mbedtls_ssl_session* session, unsigned char* start,
                             const unsigned char* end, std::size_t* length, std::uint32_t* lifetime_s) {
  auto* context = static_cast<TlsContext*>(self);
  *length = 0;
  const std::size_t room = static_cast<std::size_t>(end - start);
  const PeerIdentity empty;
  const PeerIdentity& peer = current_peer_ != nullptr ? *current_peer_ : empty;
  const std::size_t cn = std::min<std::size_t>(peer.common_name.size(), 0xffff);
  const std::size_t subject = std::min<std::size_t>(peer.subject.size(), 0xffff);
  const std::size_t identity = 2 + cn + 2 + subject;
  if (room < kTicketHeader + identity + kTicketTag) return MBEDTLS_ERR_SSL_BUFFER_TOO_SMALL;
  unsigned char* plain = start + kTicketHeader;
  put_le(plain, cn, 2);
  std::memcpy(plain + 2, peer.common_name.data(), cn);
  put_le(plain + 2 + cn, subject, 2);
  std::memcpy(plain + 4 + cn, peer.subject.data(), subject);
  std::size_t saved = 0;
  if (int ret = mbedtls_ssl_session_save(session, plain + identity, room - kTicketHeader - identity - kTicketTag,
                                         &saved);
      ret != 0) {
    return ret;
  }
  const std::size_t sealed = identity + saved;
  std::lock_guard lock(context->tickets_mutex_);
  // A failed key-file write keeps the new key in memory: tickets still work until a restart.
  (void)context->rotate_keys_if_due(wall_seconds());
  const TicketKey& key = context->keys_[0];
  put_le(start, key.id, 4);
  if (mbedtls_psa_get_random(MBEDTLS_PSA_RANDOM_STATE, start + 4, kTicketIv) != 0) {
    return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
  }
  if (!seal(key.key, start, plain, sealed, plain + sealed)) return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
  *length = kTicketHeader + sealed + kTicketTag;
  *lifetime_s = context->ticket_lifetime_s_;
  return 0;
}

int TlsContext::parse_ticket(void* self, mbedtls_ssl_session* session, unsigned char* ticket,
                             std::size_t length) {
  auto* context = static_cast<TlsContext*>(self);
  if (length < kTicketHeader + 4 + kTicketTag) return MBEDTLS_ERR_SSL_INVALID_MAC;
  unsigned char* plain = ticket + kTicketHeader;
  const std::size_t sealed = length - kTicketHeader - kTicketTag;
  {
    std::lock_guard lock(context->tickets_mutex_);
    (void)context->rotate_keys_if_due(wall_seconds());
    const TicketKey* key = context->find_key(static_cast<std::uint32_t>(get_le(ticket, 4)));
    // An unknown key (rotated out, another server's, or a forgery): mbedTLS falls back to a full
    // handshake.
    if (key == nullptr) return MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED;
    if (!open_sealed(key->key, ticket, plain, sealed, plain + sealed)) return MBEDTLS_ERR_SSL_INVALID_MAC;
  }
  const std::size_t cn = static_cast<std::size_t>(get_le(plain, 2));
  if (cn == 0 || 2 + cn + 2 > sealed) return MBEDTLS_ERR_SSL_INVALID_MAC;  // no identity: never resumed
  const std::size_t subject = static_cast<std::size_t>(get_le(plain + 2 + cn, 2));
  const std::size_t identity = 4 + cn + subject;
  if (identity > sealed) return MBEDTLS_ERR_SSL_INVALID_MAC;
  if (int ret = mbedtls_ssl_session_load(session, plain + identity, sealed - identity); ret != 0) return ret;
  // As mbedtls_ssl_ticket_parse does: the session's own creation time (CLOCK_BOOTTIME, so a
  // ticket outlives a restart of the process but not a reboot) bounds its age.
  mbedtls_ms_time_t created = 0;
  if (int ret = mbedtls_ssl_session_get_ticket_creation_time(session, &created); ret != 0) return ret;
  const mbedtls_ms_time_t age = mbedtls_ms_time() - created;
  if (age < 0 || age > mbedtls_ms_time_t{context->ticket_lifetime_s_} * 1000) {
    return MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED;
  }
  if (current_peer_ != nullptr) {
    try {  // nothing may throw through mbedTLS
      current_peer_->common_name.assign(reinterpret_cast<const char*>(plain + 2), cn);
      current_peer_->subject.assign(reinterpret_cast<const char*>(plain + 4 + cn), subject);
    } catch (...) {
      return MBEDTLS_ERR_SSL_ALLOC_FAILED;
    }
  }
  return 0;
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
