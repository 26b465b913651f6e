// TlsContext: the mbedTLS configuration shared by every TLS connection of one role (the agent's
// client side or the collector's server side): pinned CA, own certificate and key, RNG, tickets.
#pragma once

#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "platform/result.hpp"
#include "platform/tls/peer_identity.hpp"

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
  // PEM text in memory instead of the files above (each used when non-empty; errors then name
  // "<ca>", "<cert>" or "<key>"): programs that mint their own certificates, such as the fleet
  // simulator, need no file per identity.
  std::string ca_pem;
  std::string cert_pem;
  std::string key_pem;
  // TLS 1.3 is preferred; false caps the connection at TLS 1.2 (the minimum either way).
  bool allow_tls13 = true;
  // Server: how long a session ticket stays valid. The ticket key rotates every lifetime and the
  // previous key is kept, so a key lives at most two lifetimes and a ticket at most one. Long
  // enough to make the agents' reconnects cheap; short because a leaked ticket key lets its
  // holder decrypt TLS 1.2 resumptions made under it (TLS 1.3 resumes with ECDHE, so it keeps
  // forward secrecy).
  std::uint32_t ticket_lifetime_s = 6 * 3600;
  // Server: where the ticket keys live (created mode 0600 if missing, rewritten on rotation), so
  // tickets outlive a restart and a whole fleet reconnecting to a restarted collector resumes
  // instead of doing full handshakes. Empty: the keys exist in memory only and die with the
  // process.
  std::string ticket_key_file;
  // Server: how long a chain of resumptions may go on after the full handshake that verified the
  // certificate. mbedTLS issues a fresh ticket on every resumption and each carries the time of
  // that first handshake, so an agent that resumes within every lifetime still does a full
  // handshake (certificate, CA and CRL checked anew) at least this often. 0: four ticket
  // lifetimes (24 h with the default lifetime).
  std::uint32_t ticket_chain_limit_s = 0;
  // Server: a certificate revocation list of the CA (PEM or DER; several CRLs may be concatenated).
  // Every CRL in it must be issued and signed by the CA, have a nextUpdate (mbedTLS 3.6 takes a
  // CRL without one as expired) and not be past it. A CRL revokes only its issuer's serials. A revoked
  // agent certificate fails the full handshake, and a session ticket sealed for one is refused
  // (the agent must then do a full handshake, which fails). Empty: no revocation.
  std::string crl_file;
};

class TlsContext;

// Either a context or a message that names the file at fault and the mbedTLS error, e.g.
// "agent.key: -0x3D00: PK - Invalid key tag or value".
class TlsContext {
 public:
  // The context, or one line naming what is wrong (a file and mbedTLS's error).
  [[nodiscard]] static platform::Result<std::shared_ptr<TlsContext>> create(const TlsContextOptions& options);
  // A new context from options (files read again) that shares this one's session-ticket keys, so
  // tickets issued before stay valid: what a reload makes. This context is unchanged and keeps
  // serving the connections made with it.
  [[nodiscard]] platform::Result<std::shared_ptr<TlsContext>> reload(const TlsContextOptions& options) const;

  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  TlsRole role() const noexcept { return role_; }
  const mbedtls_ssl_config* config() const noexcept { return &config_; }

  // True when a CRL of the certificate's issuer lists its serial (raw bytes, as
  // PeerIdentity::serial; issuer_sha256 as PeerIdentity's): serials are unique per issuer only.
  bool is_revoked(std::string_view serial, std::string_view issuer_sha256) const noexcept;
  bool is_revoked(const PeerIdentity& peer) const noexcept { return is_revoked(peer.serial, peer.issuer_sha256); }
  // True when the CA certificate with this SHA-256 (of its DER) is among the trusted ones.
  bool trusts_ca(std::string_view ca_sha256) const noexcept;
  // Unix time: the own certificate's notAfter (0: none), the CRL's nextUpdate (0: no CRL, or none
  // given in it; the earliest of several), the number of serials the CRL revokes.
  std::int64_t certificate_not_after_s() const noexcept { return certificate_not_after_s_; }
  std::int64_t crl_next_update_s() const noexcept { return crl_next_update_s_; }
  std::size_t revoked_serials() const noexcept { return revoked_serials_; }

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
  friend class TlsStream;
  struct TicketKeys;
  TlsContext(TlsRole role, std::shared_ptr<TicketKeys> keys);
  std::string load(const TlsContextOptions& options);
  std::string load_crl(const std::string& file);

  // mbedTLS's TLS 1.3 sessions do not carry the client certificate, so a resuming client would
  // be anonymous to the server. Our tickets therefore seal the client's identity together with
  // the session: AES-256-GCM under the current ticket key, [key id u32][IV 12][ciphertext of
  // (identity: magic, agent id, region, PoP, serial, notAfter; mbedtls_ssl_session_save
  // bytes)][tag 16], the identity also holding the SHA-256 of the certificate's issuer name and of
  // the CA certificate it was verified against, and the time of that full handshake. A ticket
  // without an identity, under an unknown key, older than its lifetime, whose chain of
  // resumptions started more than ticket_chain_limit_s ago, whose CA is no longer in the CA file,
  // or whose certificate has expired or is revoked by the current CRL is refused: the client does
  // a full handshake. Stateless, so any number of agents resume, also after the server restarts
  // with its key file.
  static int write_ticket(void* self, const mbedtls_ssl_session* session, unsigned char* start,
                          const unsigned char* end, std::size_t* length, std::uint32_t* lifetime_s);
  static int parse_ticket(void* self, mbedtls_ssl_session* session, unsigned char* ticket,
                          std::size_t length);
  // TlsStream points this at its connection's identity while it calls into mbedTLS, so the
  // ticket callbacks (which mbedTLS calls on that thread without the ssl context) can read
  // it when issuing a ticket and fill it in when accepting one.
  static thread_local PeerIdentity* current_peer_;

  TlsRole role_;
  mbedtls_ssl_config config_;
  mbedtls_x509_crt ca_chain_;
  mbedtls_x509_crt own_cert_;
  mbedtls_pk_context own_key_;
  mbedtls_x509_crl crl_;
  bool has_crl_ = false;
  std::int64_t certificate_not_after_s_ = 0;
  std::int64_t crl_next_update_s_ = 0;
  std::size_t revoked_serials_ = 0;
  std::vector<std::string> crl_issuer_sha256_;  // of each CRL in crl_'s list, in order
  std::vector<std::string> ca_sha256_;          // of each certificate in ca_chain_
  std::int64_t chain_limit_s_ = 0;

  // The session-ticket keys, shared by a server context and those reloaded from it.
  std::shared_ptr<TicketKeys> keys_;

  mutable std::mutex session_mutex_;  // streams on different threads share the saved session
  mbedtls_ssl_session saved_session_;
  std::string saved_session_name_;  // the server name it was made with
  bool has_saved_session_ = false;
};

}  // namespace vantage::platform::tls
