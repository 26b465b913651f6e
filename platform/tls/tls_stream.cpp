#include "platform/tls/tls_stream.hpp"

#include "platform/tls/tls_error.hpp"
#include "platform/tls/peer_identity.hpp"

#include <ctime>

#include <mbedtls/net_sockets.h>
#include <mbedtls/oid.h>
#include <asio/error.hpp>
#include <asio/post.hpp>

#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <climits>
#include <utility>

namespace vantage::platform::tls {
namespace {

bool wants_io(int ret) { return ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE; }

}  // namespace

std::shared_ptr<TlsStream> TlsStream::create(asio::ip::tcp::socket socket,
                                             std::shared_ptr<TlsContext> context,
                                             std::string_view server_name) {
  std::shared_ptr<TlsStream> stream(new TlsStream(std::move(socket), std::move(context)));
  if (stream->setup_error_ == 0 && stream->context_->role() == TlsRole::kClient) {
    // mbedTLS 3.6 refuses to verify a server without a name unless told explicitly (NULL).
    stream->server_name_ = server_name;
    const char* name = stream->server_name_.empty() ? nullptr : stream->server_name_.c_str();
    stream->setup_error_ = mbedtls_ssl_set_hostname(&stream->ssl_, name);
    if (stream->setup_error_ == 0) stream->context_->offer_saved_session(stream->ssl_, stream->server_name_);
  }
  return stream;
}

TlsStream::TlsStream(asio::ip::tcp::socket socket, std::shared_ptr<TlsContext> context)
    : socket_(std::move(socket)), context_(std::move(context)) {
  mbedtls_ssl_init(&ssl_);
  setup_error_ = mbedtls_ssl_setup(&ssl_, context_->config());
  if (setup_error_ != 0) return;
  // The BIO callbacks call send/recv directly; Asio only tells us when to retry.
  std::error_code ec;
  socket_.native_non_blocking(true, ec);
  if (ec) {
    // A blocking socket would stall the io_context thread inside mbedTLS: refuse to start.
    last_errno_ = ec.value();
    setup_error_ = MBEDTLS_ERR_NET_SOCKET_FAILED;
    return;
  }
  mbedtls_ssl_set_bio(&ssl_, this, bio_send, bio_recv, nullptr);
  mbedtls_ssl_set_verify(&ssl_, on_verify, this);
}

TlsStream::~TlsStream() { mbedtls_ssl_free(&ssl_); }

int TlsStream::bio_send(void* self, const unsigned char* data, std::size_t size) {
  auto* stream = static_cast<TlsStream*>(self);
  const std::size_t chunk = size > INT_MAX ? INT_MAX : size;
  for (;;) {
    // MSG_NOSIGNAL: a peer that resets the connection must give EPIPE here, not a SIGPIPE that
    // kills the whole agent.
    const ssize_t sent = ::send(stream->socket_.native_handle(), data, chunk, MSG_NOSIGNAL);
    if (sent >= 0) return static_cast<int>(sent);
    if (errno == EINTR) continue;
    // The socket buffer is full: mbedTLS keeps the record and we call it again once writable.
    if (errno == EAGAIN || errno == EWOULDBLOCK) return MBEDTLS_ERR_SSL_WANT_WRITE;
    stream->last_errno_ = errno;
    return errno == EPIPE || errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_SEND_FAILED;
  }
}

int TlsStream::bio_recv(void* self, unsigned char* data, std::size_t size) {
  auto* stream = static_cast<TlsStream*>(self);
  const std::size_t chunk = size > INT_MAX ? INT_MAX : size;
  for (;;) {
    const ssize_t got = ::recv(stream->socket_.native_handle(), data, chunk, 0);
    if (got >= 0) return static_cast<int>(got);  // 0: the peer closed TCP (mbedTLS: CONN_EOF)
    if (errno == EINTR) continue;
    // Nothing buffered yet: mbedTLS keeps its partial record and we call it again once readable.
    if (errno == EAGAIN || errno == EWOULDBLOCK) return MBEDTLS_ERR_SSL_WANT_READ;
    stream->last_errno_ = errno;
    return errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_RECV_FAILED;
  }
}

int TlsStream::on_verify(void* self, mbedtls_x509_crt* crt, int depth, std::uint32_t* flags) {
  // Called only when the peer sent certificates; a resumed handshake sends none. Depth 0 is the
  // peer's own certificate. The verdict stays mbedTLS's (*flags untouched); the identity is read
  // even from a refused certificate, so the refusal can say whose it was.
  auto* stream = static_cast<TlsStream*>(self);
  stream->verified_peer_ = true;
  try {
    if (depth > stream->chain_top_depth_) {
      stream->chain_top_depth_ = depth;
      stream->chain_top_sha256_ = sha256_of(crt->raw.p, crt->raw.len);
    }
  } catch (...) {
    return MBEDTLS_ERR_X509_ALLOC_FAILED;
  }
  if (depth == 0) {
    try {
      std::string note = std::move(stream->peer_.ticket_refused);
      stream->peer_ = identity_of(*crt);
      stream->peer_.ticket_refused = std::move(note);
      if (stream->chain_top_depth_ > 0) stream->peer_.ca_sha256 = std::move(stream->chain_top_sha256_);
      stream->chain_top_depth_ = -1;
      stream->peer_.verified_at_s = static_cast<std::int64_t>(std::time(nullptr));
      stream->peer_flags_ = *flags;
    } catch (...) {
      return MBEDTLS_ERR_X509_ALLOC_FAILED;  // nothing may throw through mbedTLS
    }
  }
  return 0;
}

// Lets the server's ticket callbacks see this connection's peer identity (see TlsContext).
class TlsStream::TicketPeerScope {
 public:
  explicit TicketPeerScope(PeerIdentity& peer) : previous_(TlsContext::current_peer_) {
    TlsContext::current_peer_ = &peer;
  }
  ~TicketPeerScope() { TlsContext::current_peer_ = previous_; }
  TicketPeerScope(const TicketPeerScope&) = delete;
  TicketPeerScope& operator=(const TicketPeerScope&) = delete;

 private:
  PeerIdentity* previous_;
};

std::error_code TlsStream::error_from(int ret) const {
  if (ret == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) return asio::error::eof;
  if ((ret == MBEDTLS_ERR_NET_SEND_FAILED || ret == MBEDTLS_ERR_NET_RECV_FAILED ||
       ret == MBEDTLS_ERR_NET_CONN_RESET || ret == MBEDTLS_ERR_NET_SOCKET_FAILED) &&
      last_errno_ != 0) {
    return {last_errno_, std::system_category()};
  }
  return make_mbedtls_error(ret);
}

template <typename... Args>
void TlsStream::complete(std::function<void(Args...)> handler, std::type_identity_t<Args>... args) {
  // Never from inside the initiating call, so a handler may start the next operation freely.
  asio::post(socket_.get_executor(),
             [handler = std::move(handler), args...]() mutable { handler(std::move(args)...); });
}

void TlsStream::wait_then(int ret, Continuation next) {
  // WANT_READ/WANT_WRITE name what the *socket* must become, not the operation: a TLS 1.3 write
  // may need to read (post-handshake messages) and a read may need to flush an alert.
  const auto what =
      ret == MBEDTLS_ERR_SSL_WANT_READ ? asio::socket_base::wait_read : asio::socket_base::wait_write;
  socket_.async_wait(what, [self = shared_from_this(), next = std::move(next)](std::error_code ec) {
    next(self->closed_ ? asio::error::operation_aborted : ec);
  });
}

void TlsStream::async_handshake(Handler handler) {
  if (setup_error_ != 0) return complete(std::move(handler), error_from(setup_error_));
  handshake_step(std::move(handler));
}

void TlsStream::handshake_step(Handler handler) {
  if (closed_) return complete<std::error_code>(std::move(handler), asio::error::operation_aborted);
  TicketPeerScope scope(peer_);
  int ret = mbedtls_ssl_handshake(&ssl_);
  while (ret == MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET) {
    context_->save_session(ssl_, server_name_);
    ret = mbedtls_ssl_handshake(&ssl_);
  }
  if (wants_io(ret)) {
    const bool waiting_for_peer = ret == MBEDTLS_ERR_SSL_WANT_READ;
    if (waiting_for_peer && handshake_observer_) handshake_observer_(true);
    return wait_then(ret, [this, waiting_for_peer, handler = std::move(handler)](std::error_code ec) mutable {
      if (waiting_for_peer && handshake_observer_) handshake_observer_(false);
      if (ec) return complete(std::move(handler), ec);
      handshake_step(std::move(handler));
    });
  }
  if (ret == 0) {
    resumed_ = !verified_peer_;
    // TLS 1.2 tickets arrive inside the handshake; TLS 1.3 ones later (see read_step), and
    // exporting a ticketless TLS 1.3 session now would only displace a good saved one.
    if (mbedtls_ssl_get_version_number(&ssl_) == MBEDTLS_SSL_VERSION_TLS1_2)
      context_->save_session(ssl_, server_name_);
  }
  complete(std::move(handler), error_from(ret));
}

void TlsStream::async_read_some(asio::mutable_buffer buffer, IoHandler handler) {
  if (buffer.size() == 0 && !closed_)
    return complete<std::error_code, std::size_t>(std::move(handler), {}, 0);
  read_step(buffer, std::move(handler));
}

void TlsStream::read_step(asio::mutable_buffer buffer, IoHandler handler) {
  std::error_code ec;
  const std::size_t n = read_available(buffer, ec);
  if (ec == asio::error::would_block) {
    return wait_then(read_wants_, [this, buffer, handler = std::move(handler)](std::error_code wait_ec) mutable {
      if (wait_ec) return complete<std::error_code, std::size_t>(std::move(handler), wait_ec, 0);
      read_step(buffer, std::move(handler));
    });
  }
  complete<std::error_code, std::size_t>(std::move(handler), ec, n);
}

std::size_t TlsStream::read_available(asio::mutable_buffer buffer, std::error_code& ec) {
  // A TLS 1.3 server may send tickets at any time; each one replaces the saved session.
  ec = {};
  if (closed_) {
    ec = asio::error::operation_aborted;
    return 0;
  }
  TicketPeerScope scope(peer_);
  int ret;
  while ((ret = mbedtls_ssl_read(&ssl_, static_cast<unsigned char*>(buffer.data()), buffer.size())) ==
         MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET) {
    context_->save_session(ssl_, server_name_);
  }
  if (ret > 0) {
    read_wants_ = MBEDTLS_ERR_SSL_WANT_READ;
    return static_cast<std::size_t>(ret);
  }
  if (wants_io(ret)) {
    read_wants_ = ret;
    ec = asio::error::would_block;
    return 0;
  }
  ec = error_from(ret == 0 ? MBEDTLS_ERR_SSL_CONN_EOF : ret);
  return 0;
}

void TlsStream::async_wait_read(Handler handler) {
  if (closed_) return complete<std::error_code>(std::move(handler), asio::error::operation_aborted);
  // Decrypted bytes (or a whole record) already buffered inside mbedTLS: the socket may never
  // become readable again for them.
  if (mbedtls_ssl_check_pending(&ssl_) != 0) return complete<std::error_code>(std::move(handler), {});
  wait_then(read_wants_, [handler = std::move(handler)](std::error_code ec) mutable { handler(ec); });
}

void TlsStream::async_write(asio::const_buffer buffer, IoHandler handler) {
  write_step(buffer, 0, std::move(handler));
}

void TlsStream::write_step(asio::const_buffer buffer, std::size_t done, IoHandler handler) {
  const auto* data = static_cast<const unsigned char*>(buffer.data());
  TicketPeerScope scope(peer_);
  while (done < buffer.size()) {
    if (closed_) {
      return complete<std::error_code, std::size_t>(std::move(handler), asio::error::operation_aborted, done);
    }
    // After WANT_WRITE mbedTLS must be called again with the same data: the record is already
    // encrypted in its buffer. `done` only moves on a positive return, so that holds.
    const int ret = mbedtls_ssl_write(&ssl_, data + done, buffer.size() - done);
    if (ret > 0) {
      done += static_cast<std::size_t>(ret);
    } else if (ret == MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET) {
      context_->save_session(ssl_, server_name_);
    } else if (wants_io(ret)) {
      return wait_then(ret, [this, buffer, done, handler = std::move(handler)](std::error_code ec) mutable {
        if (ec) return complete<std::error_code, std::size_t>(std::move(handler), ec, done);
        write_step(buffer, done, std::move(handler));
      });
    } else {
      return complete<std::error_code, std::size_t>(std::move(handler), error_from(ret), done);
    }
  }
  complete<std::error_code, std::size_t>(std::move(handler), {}, done);
}

void TlsStream::async_shutdown(Handler handler) { shutdown_step(std::move(handler)); }

void TlsStream::shutdown_step(Handler handler) {
  if (closed_) return complete<std::error_code>(std::move(handler), asio::error::operation_aborted);
  const int ret = mbedtls_ssl_close_notify(&ssl_);
  if (wants_io(ret)) {
    return wait_then(ret, [this, handler = std::move(handler)](std::error_code ec) mutable {
      if (ec) return complete(std::move(handler), ec);
      shutdown_step(std::move(handler));
    });
  }
  close();
  // The peer may already be gone; the alert is a courtesy, closing is what matters.
  complete(std::move(handler), ret == MBEDTLS_ERR_NET_CONN_RESET ? std::error_code{} : error_from(ret));
}

void TlsStream::async_linger(Handler handler) {
  if (closed_) return complete<std::error_code>(std::move(handler), asio::error::operation_aborted);
  // The alert is a courtesy: one that does not fit the socket's buffer now is not waited for.
  (void)mbedtls_ssl_close_notify(&ssl_);
  std::error_code ignored;
  socket_.shutdown(asio::socket_base::shutdown_send, ignored);
  discard_step(std::move(handler));
}

void TlsStream::discard_step(Handler handler) {
  if (closed_) return complete<std::error_code>(std::move(handler), asio::error::operation_aborted);
  std::array<unsigned char, 4096> scratch;
  // A bounded number of reads per wake-up: a peer that keeps sending does not hold the thread.
  for (int reads = 0; reads < 16; ++reads) {
    const int got = bio_recv(this, scratch.data(), scratch.size());
    if (got > 0) continue;
    if (got == MBEDTLS_ERR_SSL_WANT_READ) break;
    close();
    return complete(std::move(handler), got == 0 ? std::error_code{} : error_from(got));
  }
  wait_then(MBEDTLS_ERR_SSL_WANT_READ, [this, handler = std::move(handler)](std::error_code ec) mutable {
    if (!ec) return discard_step(std::move(handler));
    close();
    complete(std::move(handler), ec);
  });
}

void TlsStream::close() noexcept {
  if (closed_) return;
  closed_ = true;
  std::error_code ignored;
  socket_.close(ignored);  // cancels pending waits: their continuations see operation_aborted
}

std::string TlsStream::peer_common_name() const {
  // A resuming client has the server certificate in its saved session; a resuming TLS 1.3 server
  // has no certificate at all (the identity came from the ticket).
  const mbedtls_x509_crt* peer = mbedtls_ssl_get_peer_cert(&ssl_);
  if (peer == nullptr) return {};
  for (const mbedtls_x509_name* name = &peer->subject; name != nullptr; name = name->next) {
    if (name->oid.p != nullptr && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &name->oid) == 0) {
      return std::string(reinterpret_cast<const char*>(name->val.p), name->val.len);
    }
  }
  return {};
}

std::string_view TlsStream::protocol_version() const { return mbedtls_ssl_get_version(&ssl_); }

std::string_view TlsStream::ciphersuite() const {
  const char* name = mbedtls_ssl_get_ciphersuite(&ssl_);
  return name == nullptr ? std::string_view{} : name;
}

}  // namespace vantage::platform::tls
