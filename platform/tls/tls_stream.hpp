// TlsStream: one mutually authenticated TLS connection, mbedTLS driven by Asio on the stream's
// io_context thread through non-blocking BIO callbacks on the socket's file descriptor.
#pragma once

#include "platform/tls/tls_context.hpp"

#include <mbedtls/ssl.h>
#include <asio/buffer.hpp>
#include <asio/ip/tcp.hpp>

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

namespace vantage::platform::tls {

// Always held by std::shared_ptr: every pending operation keeps the stream alive, so closing or
// dropping it mid-operation is safe. All calls (close() included) belong on the io_context
// thread that runs the socket; handlers are always invoked through that io_context, never from
// inside the initiating call. At most one operation of each kind may be pending; a read and a
// write may be pending together. Errors are mbedTLS codes (mbedtls_category()), system errors
// from the socket, asio::error::eof for a clean close by the peer, and
// asio::error::operation_aborted once close() has been called. Handlers are std::function, so
// they must be copyable.
class TlsStream : public std::enable_shared_from_this<TlsStream> {
 public:
  using Handler = std::function<void(std::error_code)>;
  using IoHandler = std::function<void(std::error_code, std::size_t)>;

  // server_name (client only): the DNS name or IP address the server certificate must carry
  // (subjectAltName). Empty skips the name check and trusts any certificate of the pinned CA.
  [[nodiscard]] static std::shared_ptr<TlsStream> create(asio::ip::tcp::socket socket,
                                                         std::shared_ptr<TlsContext> context,
                                                         std::string_view server_name = {});
  ~TlsStream();
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  asio::ip::tcp::socket& socket() noexcept { return socket_; }

  // The caller bounds the handshake with its own timer and calls close() when it fires.
  void async_handshake(Handler handler);
  // Called (on the stream's thread) with true when the handshake starts waiting for bytes from
  // the peer and with false when they came: a server tells a stalled peer from one that waits
  // for the server's own CPU. Set before async_handshake.
  void set_handshake_observer(std::function<void(bool waiting_for_peer)> observer) {
    handshake_observer_ = std::move(observer);
  }
  // Completes with at least one byte, or an error.
  void async_read_some(asio::mutable_buffer buffer, IoHandler handler);
  // Reads what TLS can give now without waiting: returns n > 0 bytes; or 0 with ec set to
  // asio::error::would_block (wait with async_wait_read(), then call again), or another error as
  // async_read_some reports it. With async_wait_read() this lets a server read into one scratch
  // buffer per thread instead of keeping a buffer per idle connection.
  std::size_t read_available(asio::mutable_buffer buffer, std::error_code& ec);
  // Completes when read_available() can make progress: the socket became readable (or writable,
  // when TLS must flush an alert or a post-handshake message first), or TLS already holds
  // decrypted bytes. At most one pending, and not together with async_read_some().
  void async_wait_read(Handler handler);
  // Completes when all of buffer is written (or on error, with the count written so far).
  void async_write(asio::const_buffer buffer, IoHandler handler);
  // Sends close_notify, then closes the socket.
  void async_shutdown(Handler handler);
  // Once the last frame is written: sends close_notify and a FIN, then reads and discards what the
  // peer still sends until it closes its side, and closes. Closing at once with the peer's bytes
  // unread makes the kernel send a reset, and a peer that meets the reset (writing its next
  // frame) before reading may never see that last frame. Completes with no error on the peer's
  // close; the caller bounds the wait with its own timer and calls close() when it fires.
  void async_linger(Handler handler);
  // Closes the socket now; pending handlers complete with operation_aborted. Idempotent.
  void close() noexcept;

  // Server, after a handshake: who the peer's certificate names (agent id, region, PoP, serial,
  // expiry, or why it names nobody usable), also on a resumed connection (from the ticket its
  // certificate was verified for). After a failed handshake: what the refused certificate named.
  const PeerIdentity& peer_identity() const noexcept { return peer_; }
  // mbedTLS's verification flags for the peer's certificate (MBEDTLS_X509_BADCERT_*), e.g.
  // REVOKED after a failed handshake; 0 when none was verified.
  std::uint32_t peer_verify_flags() const noexcept { return peer_flags_; }
  // The subject CN of the peer certificate this side holds (a client: the server's, also when
  // resumed); empty when it holds none. Display only: identity is peer_identity().
  std::string peer_common_name() const;
  // True when the handshake resumed a session (no certificates exchanged or verified).
  bool resumed() const noexcept { return resumed_; }
  // "TLSv1.3" / "TLSv1.2" and mbedTLS's ciphersuite name (e.g. "TLS1-3-AES-256-GCM-SHA384"),
  // once the handshake is done.
  std::string_view protocol_version() const;
  std::string_view ciphersuite() const;

 private:
  TlsStream(asio::ip::tcp::socket socket, std::shared_ptr<TlsContext> context);
  class TicketPeerScope;
  using Continuation = std::function<void(std::error_code)>;

  void handshake_step(Handler handler);
  void read_step(asio::mutable_buffer buffer, IoHandler handler);
  void write_step(asio::const_buffer buffer, std::size_t done, IoHandler handler);
  void shutdown_step(Handler handler);
  void discard_step(Handler handler);
  // ret is WANT_READ or WANT_WRITE: wait for the socket to get there, then continue.
  void wait_then(int ret, Continuation next);
  std::error_code error_from(int ret) const;
  template <typename... Args>
  void complete(std::function<void(Args...)> handler, std::type_identity_t<Args>... args);

  static int bio_send(void* self, const unsigned char* data, std::size_t size);
  static int bio_recv(void* self, unsigned char* data, std::size_t size);
  static int on_verify(void* self, mbedtls_x509_crt* crt, int depth, std::uint32_t* flags);

  asio::ip::tcp::socket socket_;
  std::shared_ptr<TlsContext> context_;  // the ssl context points into its config
  std::string server_name_;              // client: the name the server must carry
  mbedtls_ssl_context ssl_;
  int setup_error_ = 0;
  int last_errno_ = 0;  // why the BIO failed, reported instead of a generic NET_*_FAILED
  bool closed_ = false;
  bool verified_peer_ = false;  // a certificate was verified during this handshake
  // SHA-256 of the top of the chain being verified (mbedTLS calls on_verify from the top down), the
  // CA it ends in, and its depth; moved into peer_ at depth 0.
  std::string chain_top_sha256_;
  int chain_top_depth_ = -1;
  PeerIdentity peer_;           // from that certificate, or from the ticket of a resumption
  std::uint32_t peer_flags_ = 0;
  bool resumed_ = false;
  int read_wants_ = MBEDTLS_ERR_SSL_WANT_READ;  // what read_available() last waited for
  std::function<void(bool)> handshake_observer_;
};

}  // namespace vantage::platform::tls
