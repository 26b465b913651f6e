#include "platform/tls/tls_context.hpp"

#include "platform/tls/tls_error.hpp"

#include <psa/crypto.h>

#include <mbedtls/platform_util.h>
// psa_util.h in mbedTLS 3.6 lacks its own extern "C" guard.
extern "C" {
#include <mbedtls/psa_util.h>
}

#include <cerrno>
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
  mbedtls_ssl_ticket_init(&tickets_);
  mbedtls_ssl_session_init(&saved_session_);
}

TlsContext::~TlsContext() {
  mbedtls_ssl_session_free(&saved_session_);
  mbedtls_ssl_ticket_free(&tickets_);
  mbedtls_pk_free(&own_key_);
  mbedtls_x509_crt_free(&own_cert_);
  mbedtls_x509_crt_free(&ca_chain_);
  mbedtls_ssl_config_free(&config_);
}

TlsContextResult TlsContext::create(const TlsContextOptions& options) {
  std::shared_ptr<TlsContext> context(new TlsContext(options.role));
  if (std::string error = context->load(options); !error.empty()) return {nullptr, std::move(error)};
  return {std::move(context), {}};
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
    if (int ret = mbedtls_ssl_ticket_setup(&tickets_, mbedtls_psa_get_random, MBEDTLS_PSA_RANDOM_STATE,
                                           MBEDTLS_CIPHER_AES_256_GCM, options.ticket_lifetime_s);
        ret != 0) {
      return "mbedtls_ssl_ticket_setup: " + describe_mbedtls_error(ret);
    }
    max_remembered_ = options.max_remembered_tickets;
    // mbedTLS accepts a ticket for up to two lifetimes (current and previous key).
    ticket_lifetime_ = std::chrono::seconds(2 * std::chrono::seconds::rep{options.ticket_lifetime_s});
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

int TlsContext::write_ticket(void* self, const mbedtls_ssl_session* session, unsigned char* start,
                             const unsigned char* end, std::size_t* length, std::uint32_t* lifetime_s) {
  auto* context = static_cast<TlsContext*>(self);
  const int ret = mbedtls_ssl_ticket_write(&context->tickets_, session, start, end, length, lifetime_s);
  // Without a known identity the ticket is still issued, but parse_ticket will refuse it.
  if (ret != 0 || current_peer_ == nullptr || current_peer_->common_name.empty()) return ret;
  try {  // nothing may throw through mbedTLS
    std::string key(reinterpret_cast<const char*>(start), *length);
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard lock(context->tickets_mutex_);
    auto& order = context->remembered_order_;
    auto& remembered = context->remembered_;
    // Drop expired tickets and, when full, the oldest: a client whose ticket was dropped just
    // does a full handshake next time.
    while (!order.empty()) {
      const auto oldest = remembered.find(order.front());
      if (oldest != remembered.end() && remembered.size() < context->max_remembered_ &&
          oldest->second.expires > now) {
        break;
      }
      if (oldest != remembered.end()) remembered.erase(oldest);
      order.pop_front();
    }
    if (context->max_remembered_ == 0) return 0;
    order.push_back(key);
    context->remembered_[std::move(key)] = {*current_peer_, now + context->ticket_lifetime_};
  } catch (...) {
    return MBEDTLS_ERR_SSL_ALLOC_FAILED;
  }
  return 0;
}

int TlsContext::parse_ticket(void* self, mbedtls_ssl_session* session, unsigned char* ticket,
                             std::size_t length) {
  auto* context = static_cast<TlsContext*>(self);
  PeerIdentity peer;
  try {
    // Look up before parsing: mbedtls_ssl_ticket_parse decrypts the buffer in place.
    const std::string key(reinterpret_cast<const char*>(ticket), length);
    std::lock_guard lock(context->tickets_mutex_);
    const auto found = context->remembered_.find(key);
    if (found == context->remembered_.end() || found->second.expires <= std::chrono::steady_clock::now()) {
      return MBEDTLS_ERR_SSL_INVALID_MAC;  // "not ours": mbedTLS falls back to a full handshake
    }
    peer = found->second.peer;
  } catch (...) {
    return MBEDTLS_ERR_SSL_ALLOC_FAILED;
  }
  const int ret = mbedtls_ssl_ticket_parse(&context->tickets_, session, ticket, length);
  if (ret == 0 && current_peer_ != nullptr) *current_peer_ = std::move(peer);
  return ret;
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
