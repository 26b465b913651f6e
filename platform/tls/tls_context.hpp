// TlsContext: the mbedTLS configuration shared by every TLS connection of one role (the agent's
// client side or the collector's server side): pinned CA, own certificate and key, RNG, tickets.
#pragma once

#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

namespace vantage::platform::tls {

enum class TlsRole { kClient, kServer };

struct TlsContextOptions {
  TlsRole role = TlsRole::kClient;
  // The only CA whose certificates are accepted from peers (PEM). System roots are never used.
  std::string ca_file;
  // Own certificate (PEM, leaf first) and its private key. Both are required for a server. A
  // client may leave both empty: it then presents no certificate, which a Vantage server refuses
  // (useful only to test exactly that).
  std::string cert_file;
  std::string key_file;
  // TLS 1.3 is preferred; false caps the connection at TLS 1.2 (the minimum either way).
  bool allow_tls13 = true;
  // Server: how long a session ticket stays valid. The ticket key rotates every lifetime and the
  // previous key is kept, so a ticket works for one to two lifetimes. Long enough to make the
  // agent's reconnects after network blips cheap; short because a leaked ticket key lets its
  // holder decrypt TLS 1.2 resumptions made under it (TLS 1.3 resumes with ECDHE, so it keeps
  // forward secrecy). Tickets die with the process: its keys exist only in memory.
  std::uint32_t ticket_lifetime_s = 6 * 3600;
};

class TlsContext;

// Either a context or a message that names the file at fault and the mbedTLS error, e.g.
// "agent.key: -0x3D00: PK - Invalid key tag or value".
struct TlsContextResult {
  std::shared_ptr<TlsContext> context;
  std::string error;
  explicit operator bool() const noexcept { return context != nullptr; }
};

class TlsContext {
 public:
  [[nodiscard]] static TlsContextResult create(const TlsContextOptions& options);

  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  TlsRole role() const noexcept { return role_; }
  const mbedtls_ssl_config* config() const noexcept { return &config_; }

  // Client: the session (ticket) saved from the latest connection is offered on the next
  // handshake to the same server name, so a reconnect skips certificate exchange and
  // verification. (mbedTLS fails a TLS 1.3 handshake outright when the names differ.)
  bool has_saved_session() const;
  void forget_saved_session();
  // Called by TlsStream: export the connection's session after it got a ticket; offer the
  // saved one before a handshake. Safe from any thread.
  void save_session(const mbedtls_ssl_context& ssl, const std::string& server_name);
  void offer_saved_session(mbedtls_ssl_context& ssl, const std::string& server_name) const;

 private:
  explicit TlsContext(TlsRole role);
  std::string load(const TlsContextOptions& options);

  TlsRole role_;
  mbedtls_ssl_config config_;
  mbedtls_x509_crt ca_chain_;
  mbedtls_x509_crt own_cert_;
  mbedtls_pk_context own_key_;
  mbedtls_ssl_ticket_context tickets_;

  mutable std::mutex session_mutex_;  // streams on different threads share the saved session
  mbedtls_ssl_session saved_session_;
  std::string saved_session_name_;  // the server name it was made with
  bool has_saved_session_ = false;
};

}  // namespace vantage::platform::tls
