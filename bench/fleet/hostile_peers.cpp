#include "bench/fleet/hostile_peers.hpp"

#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <mbedtls/ssl.h>
#include <asio/io_context.hpp>
#include <asio/signal_set.hpp>
#include <asio/steady_timer.hpp>
#include <asio/write.hpp>

#include <array>
#include <cstdio>
#include <memory>
#include <random>
#include <sstream>

#include "platform/tls/tls_stream.hpp"

namespace vantage::fleet {
namespace {

enum Kind : std::size_t { kHalfOpen, kSlow, kNonReader, kGarbage, kKinds };
const char* const kKindNames[kKinds] = {"half_open", "slow", "non_reader", "garbage"};

struct Counters {
  std::array<std::uint64_t, kKinds> opened{}, closed{}, failed{};
  std::uint64_t non_reader_sessions = 0;
  std::uint64_t non_reader_batches = 0;
};

struct Env {
  asio::io_context io{1};
  HostileConfig config;
  const BatchFactory* factory = nullptr;
  Counters counters;
  std::mt19937_64 rng{std::random_device{}()};
};

asio::ip::address_v4 v4(unsigned a, unsigned b, unsigned c, unsigned d) {
  return asio::ip::address_v4(asio::ip::address_v4::bytes_type{static_cast<unsigned char>(a), static_cast<unsigned char>(b),
                                                                static_cast<unsigned char>(c), static_cast<unsigned char>(d)});
}

// One misbehaving connection, opened again whenever it ends.
class Peer : public std::enable_shared_from_this<Peer> {
 public:
  Peer(Env& env, Kind kind, asio::ip::address_v4 source, std::size_t index)
      : env_(env), kind_(kind), source_(source), index_(index), timer_(env.io), tick_(env.io) {}

  void open() {
    const std::uint64_t gen = ++gen_;
    std::error_code ec;
    socket_ = socket_from(env_.io, source_, ec);
    if (ec) {
      ++env_.counters.failed[kind_];
      reopen_later(1.0);
      return;
    }
    socket_->async_connect(env_.config.collector, [self = shared_from_this(), gen](std::error_code cec) {
      if (gen != self->gen_) return;
      if (cec) {
        ++self->env_.counters.failed[self->kind_];
        self->reopen_later(1.0);
        return;
      }
      ++self->env_.counters.opened[self->kind_];
      self->on_connected(gen);
    });
  }

 private:
  void on_connected(std::uint64_t gen) {
    switch (kind_) {
      case kHalfOpen: {
        static const std::uint8_t kHandshakeRecord = 0x16;  // the first byte of a TLS handshake record
        send_raw(gen, asio::buffer(&kHandshakeRecord, 1));
        read_until_closed(gen);
        break;
      }
      case kSlow:
        position_ = 0;
        trickle(gen);
        read_until_closed(gen);
        break;
      case kGarbage: {
        garbage_.resize(512);
        for (auto& b : garbage_) b = static_cast<std::uint8_t>(env_.rng());
        if ((env_.rng() & 1) != 0) {
          // Half of them look like a TLS record header with an absurd length.
          garbage_[0] = 0x16;
          garbage_[1] = 0x03;
          garbage_[2] = 0x01;
        }
        send_raw(gen, asio::buffer(garbage_));
        read_until_closed(gen);
        break;
      }
      case kNonReader:
        start_tls(gen);
        break;
      case kKinds:
        break;
    }
  }

  void send_raw(std::uint64_t gen, asio::const_buffer buffer) {
    asio::async_write(*socket_, buffer, [self = shared_from_this(), gen](std::error_code ec, std::size_t) {
      if (ec && gen == self->gen_) self->ended(gen);
    });
  }

  void trickle(std::uint64_t gen) {
    const auto& hello = env_.config.client_hello;
    if (position_ >= hello.size()) return;
    send_raw(gen, asio::buffer(&hello[position_++], 1));
    tick_.expires_after(std::chrono::milliseconds(static_cast<std::int64_t>(env_.config.slow_byte_s * 1000)));
    tick_.async_wait([self = shared_from_this(), gen](std::error_code ec) {
      if (!ec && gen == self->gen_) self->trickle(gen);
    });
  }

  void read_until_closed(std::uint64_t gen) {
    socket_->async_read_some(asio::buffer(buffer_), [self = shared_from_this(), gen](std::error_code ec, std::size_t) {
      if (gen != self->gen_) return;
      if (ec) {
        self->ended(gen);
      } else {
        self->read_until_closed(gen);
      }
    });
  }

  void start_tls(std::uint64_t gen) {
    const AgentSetup& setup = env_.config.non_readers[index_];
    stream_ = platform::tls::TlsStream::create(std::move(*socket_), setup.tls, env_.config.server_name);
    socket_.reset();
    stream_->async_handshake([self = shared_from_this(), gen](std::error_code ec) {
      if (gen != self->gen_) return;
      if (ec) {
        self->ended(gen);
        return;
      }
      ++self->env_.counters.non_reader_sessions;
      self->write_frame(gen, std::make_shared<std::vector<std::uint8_t>>(
                                 self->env_.factory->hello_frame(self->env_.config.non_readers[self->index_].identity)));
    });
  }

  // Never reads: the acks pile up in the collector's send path.
  void write_frame(std::uint64_t gen, std::shared_ptr<std::vector<std::uint8_t>> frame) {
    stream_->async_write(asio::buffer(*frame), [self = shared_from_this(), gen, frame](std::error_code ec, std::size_t) {
      if (gen != self->gen_) return;
      if (ec) {
        self->ended(gen);
        return;
      }
      self->tick_.expires_after(
          std::chrono::milliseconds(static_cast<std::int64_t>(self->env_.config.non_reader_interval_s * 1000)));
      self->tick_.async_wait([self, gen](std::error_code tec) {
        if (tec || gen != self->gen_) return;
        const AgentIdentity& id = self->env_.config.non_readers[self->index_].identity;
        const std::int64_t now = platform::realtime_ns();
        ++self->env_.counters.non_reader_batches;
        self->write_frame(gen, std::make_shared<std::vector<std::uint8_t>>(
                                   self->env_.factory->batch_frame(id, ++self->seq_, now - 10'000'000'000, now)));
      });
    });
  }

  void ended(std::uint64_t gen) {
    if (gen != gen_) return;
    ++env_.counters.closed[kind_];
    ++gen_;
    tick_.cancel();
    std::error_code ignored;
    if (socket_) socket_->close(ignored);
    socket_.reset();
    if (stream_) {
      stream_->close();
      stream_.reset();
    }
    reopen_later(kind_ == kGarbage ? env_.config.garbage_pause_s : 1.0);
  }

  void reopen_later(double seconds) {
    std::uniform_real_distribution<double> jitter(0.5, 1.5);
    timer_.expires_after(std::chrono::milliseconds(static_cast<std::int64_t>(seconds * jitter(env_.rng) * 1000)));
    timer_.async_wait([self = shared_from_this()](std::error_code ec) {
      if (!ec) self->open();
    });
  }

  Env& env_;
  Kind kind_;
  asio::ip::address_v4 source_;
  std::size_t index_;
  asio::steady_timer timer_, tick_;
  std::unique_ptr<asio::ip::tcp::socket> socket_;
  std::shared_ptr<platform::tls::TlsStream> stream_;
  std::array<std::uint8_t, 256> buffer_{};
  std::vector<std::uint8_t> garbage_;
  std::size_t position_ = 0;
  std::uint64_t gen_ = 0;
  std::uint64_t seq_ = 0;
};

std::string run_child(HostileConfig config, const BatchFactory& factory) {
  Env env;
  env.config = std::move(config);
  env.factory = &factory;
  std::vector<std::shared_ptr<Peer>> peers;
  const auto add = [&](Kind kind, asio::ip::address_v4 source, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) peers.push_back(std::make_shared<Peer>(env, kind, source, i));
  };
  add(kHalfOpen, v4(127, 0, 0, 200), env.config.half_open_main);
  for (std::size_t s = 0; s < env.config.sources; ++s) add(kHalfOpen, v4(127, 0, 1, 1 + static_cast<unsigned>(s % 254)), env.config.half_open_per_source);
  add(kSlow, v4(127, 0, 0, 201), env.config.slow);
  add(kNonReader, v4(127, 0, 0, 202), env.config.non_readers.size());
  add(kGarbage, v4(127, 0, 0, 203), env.config.garbage);
  // Spread the first opens over a second so the accept queue is not the only thing tested.
  std::size_t i = 0;
  for (auto& p : peers) {
    auto timer = std::make_shared<asio::steady_timer>(env.io, std::chrono::microseconds(1'000'000 * i++ / peers.size()));
    timer->async_wait([p, timer](std::error_code) { p->open(); });
  }
  asio::signal_set signals(env.io, SIGTERM);
  signals.async_wait([&env](std::error_code, int) { env.io.stop(); });
  env.io.run();
  std::ostringstream out;
  const Counters& c = env.counters;
  for (std::size_t k = 0; k < kKinds; ++k) {
    out << kKindNames[k] << "_opened=" << c.opened[k] << "\n"
        << kKindNames[k] << "_closed_by_collector=" << c.closed[k] << "\n"
        << kKindNames[k] << "_connect_failed=" << c.failed[k] << "\n";
  }
  out << "non_reader_sessions=" << c.non_reader_sessions << "\nnon_reader_batches=" << c.non_reader_batches << "\n";
  return out.str();
}

int capture_send(void* out, const unsigned char* data, std::size_t size) {
  static_cast<std::vector<std::uint8_t>*>(out)->insert(static_cast<std::vector<std::uint8_t>*>(out)->end(), data, data + size);
  return static_cast<int>(size);
}

int no_receive(void*, unsigned char*, std::size_t) { return MBEDTLS_ERR_SSL_WANT_READ; }

}  // namespace

std::vector<std::uint8_t> make_client_hello(const platform::tls::TlsContext& context, const std::string& server_name) {
  std::vector<std::uint8_t> out;
  mbedtls_ssl_context ssl;
  mbedtls_ssl_init(&ssl);
  if (mbedtls_ssl_setup(&ssl, context.config()) == 0 && mbedtls_ssl_set_hostname(&ssl, server_name.c_str()) == 0) {
    mbedtls_ssl_set_bio(&ssl, &out, capture_send, no_receive, nullptr);
    (void)mbedtls_ssl_handshake(&ssl);  // stops at WANT_READ once the ClientHello is out
  }
  mbedtls_ssl_free(&ssl);
  return out;
}

bool HostileChild::start(HostileConfig config, const BatchFactory& factory, std::string& error) {
  int fds[2];
  if (::pipe(fds) != 0) {
    error = "pipe failed";
    return false;
  }
  std::fflush(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    error = "fork failed";
    return false;
  }
  if (pid == 0) {
    ::close(fds[0]);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);
    std::string report;
    try {
      report = run_child(std::move(config), factory);
    } catch (...) {
      report = "child_error=1\n";
    }
    const char* p = report.data();
    std::size_t left = report.size();
    while (left > 0) {
      const ssize_t n = ::write(fds[1], p, left);
      if (n <= 0) break;
      p += n;
      left -= static_cast<std::size_t>(n);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  pid_ = pid;
  pipe_fd_ = fds[0];
  return true;
}

std::map<std::string, std::uint64_t> HostileChild::stop() {
  std::map<std::string, std::uint64_t> out;
  if (pid_ <= 0) return out;
  ::kill(pid_, SIGTERM);
  std::string text;
  std::array<char, 4096> buffer{};
  for (;;) {
    pollfd p{pipe_fd_, POLLIN, 0};
    if (::poll(&p, 1, 30'000) <= 0) break;
    const ssize_t n = ::read(pipe_fd_, buffer.data(), buffer.size());
    if (n <= 0) break;
    text.append(buffer.data(), static_cast<std::size_t>(n));
  }
  ::close(pipe_fd_);
  pipe_fd_ = -1;
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq != std::string::npos) out[line.substr(0, eq)] = std::stoull(line.substr(eq + 1));
  }
  return out;
}

HostileChild::~HostileChild() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  if (pipe_fd_ >= 0) ::close(pipe_fd_);
}

}  // namespace vantage::fleet
