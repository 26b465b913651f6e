// Shared pieces of the TLS tests: a PKI made by tools/dev-pki.sh in a temporary directory, an
// io_context per side on its own thread, and bounded waits so a broken handshake fails, not hangs.
#pragma once

#include "platform/tls/tls_context.hpp"
#include "platform/tls/tls_stream.hpp"

#include <doctest/doctest.h>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>

#include <psa/crypto.h>

#include <mbedtls/md.h>
#include <mbedtls/pk.h>
// psa_util.h in mbedTLS 3.6 lacks its own extern "C" guard.
extern "C" {
#include <mbedtls/psa_util.h>
}

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <utility>

namespace vantage::platform::tls::test {

// Generous: under QEMU every ECDSA operation is emulated.
inline constexpr auto kBound = std::chrono::seconds(60);

// ca.crt, collector.*, agent-1.* (vantage://eu-west/fra1/agent-1), agent-2.* (revoked/revoked.crl
// revokes it; crl.pem revokes nothing), and agents whose subjectAltName is wrong: no-uri (a DNS
// name only), two-uris, bad-uri (a space in the PoP), long-uri (a 65-character agent id),
// other-uri (a spiffe:// URI beside a good vantage:// one); other-ca/ holds an unrelated CA with its
// own collector.* and rogue.*.
class Pki {
 public:
  static const Pki& get() {
    static const Pki pki;
    return pki;
  }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }
  std::string other(const std::string& name) const { return (dir_ / "other-ca" / name).string(); }
  const std::filesystem::path& dir() const { return dir_; }
  bool ok() const { return ok_; }

  ~Pki() {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

 private:
  Pki() {
    std::string pattern = (std::filesystem::temp_directory_path() / "vantage-tls-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) return;
    dir_ = pattern;
    const std::string script = std::string(VANTAGE_SOURCE_DIR) + "/tools/dev-pki.sh";
    const std::string quiet = " >/dev/null";
    const std::string d = quoted(dir_.string());
    ok_ = std::system(("bash '" + script + "' " + d + " agent-1:eu-west:fra1 agent-2:eu-west:fra2" + quiet).c_str()) ==
              0 &&
          std::system(("bash '" + script + "' --other-ca " + d + " rogue" + quiet).c_str()) == 0 &&
          std::system(("bash '" + script + "' --revoke " + d + quiet).c_str()) == 0 &&
          std::system(("cp " + d + "/crl.pem " + d + "/empty.crl").c_str()) == 0 &&
          std::system(("bash '" + script + "' --revoke " + d + " agent-2" + quiet).c_str()) == 0 &&
          std::system(("mv " + d + "/crl.pem " + d + "/revoked.crl && mv " + d + "/empty.crl " + d + "/crl.pem").c_str()) ==
              0 &&
          issue("no-uri", "DNS:agent.example") && issue("two-uris", "URI:vantage://eu-west/fra1/a,URI:vantage://eu-west/fra1/b") &&
          issue("bad-uri", "URI:vantage://eu-west/fra%201/agent-3") &&
          issue("long-uri", "URI:vantage://eu-west/fra1/" + std::string(65, 'a')) &&
          issue("other-uri", "URI:spiffe://example.org/agent,URI:vantage://eu-west/fra1/agent-4");
  }
  // name.crt/.key: an agent certificate of the CA with this subjectAltName (openssl syntax).
  bool issue(const std::string& name, const std::string& san) const {
    const std::string base = (dir_ / name).string();
    const std::string ca = (dir_ / "ca").string();
    {
      std::ofstream out((dir_ / (name + ".ext")).string());
      out << "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
          << "extendedKeyUsage=clientAuth\nsubjectAltName=" << san << "\n";
    }
    const std::string command =
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out " + quoted(base + ".key") +
        " 2>/dev/null && openssl req -new -key " + quoted(base + ".key") + " -subj /O=Vantage/CN=" + name +
        " -out " + quoted(base + ".csr") + " && openssl x509 -req -in " + quoted(base + ".csr") + " -CA " +
        quoted(ca + ".crt") + " -CAkey " + quoted(ca + ".key") +
        " -sha256 -days 30 -set_serial 0x$(openssl rand -hex 12) -extfile " + quoted(base + ".ext") + " -out " +
        quoted(base + ".crt") + " 2>/dev/null";
    return std::system(command.c_str()) == 0;
  }
  // 'text' for the shell, built in place: GCC 12 at -O3 takes "'" + std::string for an overlapping
  // copy (-Werror=restrict in release builds).
  static std::string quoted(const std::string& text) {
    std::string out(1, '\'');
    out += text;
    out += '\'';
    return out;
  }
  std::filesystem::path dir_;
  bool ok_ = false;
};

// A whole (PEM) file as text; empty when unreadable.
inline std::string read_pem_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A DER CRL of the CA in `dir` (ca.crt, ca.key) that revokes nothing, with this thisUpdate and, if
// next_update_s is non-zero, that nextUpdate (openssl always writes one; a CRL without it is what
// some tests need). Written by hand: a v1 TBSCertList signed with ECDSA-SHA256.
inline bool write_crl(const std::string& dir, const std::string& out, std::int64_t this_update_s,
                      std::int64_t next_update_s) {
  mbedtls_x509_crt ca;
  mbedtls_x509_crt_init(&ca);
  mbedtls_pk_context key;
  mbedtls_pk_init(&key);
  const auto length = [](std::size_t n) {
    std::string l;
    if (n < 128) {
      l.push_back(static_cast<char>(n));
    } else if (n < 256) {
      l = {'\x81', static_cast<char>(n)};
    } else {
      l = {'\x82', static_cast<char>(n >> 8), static_cast<char>(n & 0xff)};
    }
    return l;
  };
  const auto tlv = [&](char tag, const std::string& body) { return std::string(1, tag) + length(body.size()) + body; };
  const auto utc_time = [&](std::int64_t s) {
    const std::time_t t = static_cast<std::time_t>(s);
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    char text[64];
    std::snprintf(text, sizeof text, "%02d%02d%02d%02d%02d%02dZ", tm.tm_year % 100, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec);
    return tlv('\x17', text);
  };
  bool ok = false;
  (void)psa_crypto_init();  // the RNG below is PSA's; initialising twice is harmless
  const std::string ca_pem = read_pem_file(dir + "/ca.crt");
  const std::string key_pem = read_pem_file(dir + "/ca.key");
  if (mbedtls_x509_crt_parse(&ca, reinterpret_cast<const unsigned char*>(ca_pem.c_str()), ca_pem.size() + 1) == 0 &&
      mbedtls_pk_parse_key(&key, reinterpret_cast<const unsigned char*>(key_pem.c_str()), key_pem.size() + 1,
                           nullptr, 0, mbedtls_psa_get_random, MBEDTLS_PSA_RANDOM_STATE) == 0) {
    const std::string algorithm = tlv('\x30', tlv('\x06', "\x2a\x86\x48\xce\x3d\x04\x03\x02"));
    std::string tbs = algorithm + std::string(reinterpret_cast<const char*>(ca.subject_raw.p), ca.subject_raw.len) +
                      utc_time(this_update_s);
    if (next_update_s != 0) tbs += utc_time(next_update_s);
    tbs = tlv('\x30', tbs);
    unsigned char hash[32];
    unsigned char signature[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
    std::size_t signature_length = 0;
    if (mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), reinterpret_cast<const unsigned char*>(tbs.data()),
                   tbs.size(), hash) == 0 &&
        mbedtls_pk_sign(&key, MBEDTLS_MD_SHA256, hash, sizeof hash, signature, sizeof signature, &signature_length,
                        mbedtls_psa_get_random, MBEDTLS_PSA_RANDOM_STATE) == 0) {
      const std::string crl =
          tlv('\x30', tbs + algorithm +
                          tlv('\x03', std::string(1, '\0') +
                                          std::string(reinterpret_cast<const char*>(signature), signature_length)));
      std::ofstream file(out, std::ios::binary | std::ios::trunc);
      file << crl;
      ok = static_cast<bool>(file);
    }
  }
  mbedtls_pk_free(&key);
  mbedtls_x509_crt_free(&ca);
  return ok;
}

inline std::shared_ptr<TlsContext> make_context(TlsRole role, const std::string& ca, const std::string& cert,
                                                const std::string& key, bool allow_tls13 = true) {
  TlsContextOptions options;
  options.role = role;
  options.ca_file = ca;
  options.cert_file = cert;
  options.key_file = key;
  options.allow_tls13 = allow_tls13;
  auto result = TlsContext::create(options);
  INFO(result.error());
  REQUIRE(result);
  return std::move(result).value();
}

inline std::shared_ptr<TlsContext> collector_context() {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  return make_context(TlsRole::kServer, pki.file("ca.crt"), pki.file("collector.crt"),
                      pki.file("collector.key"));
}

inline std::shared_ptr<TlsContext> agent_context(bool allow_tls13 = true) {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  return make_context(TlsRole::kClient, pki.file("ca.crt"), pki.file("agent-1.crt"), pki.file("agent-1.key"),
                      allow_tls13);
}

// One io_context on its own thread: "one io_context thread per stream".
class Loop {
 public:
  Loop() : guard_(asio::make_work_guard(io_)), thread_([this] { io_.run(); }) {}
  ~Loop() {
    guard_.reset();
    io_.stop();
    thread_.join();
  }
  asio::io_context& io() { return io_; }

  // Runs fn on the loop thread and waits for its result.
  template <typename Fn>
  auto run(Fn fn) -> decltype(fn()) {
    std::packaged_task<decltype(fn())()> task(std::move(fn));
    auto result = task.get_future();
    asio::post(io_, [&task] { task(); });
    REQUIRE(result.wait_for(kBound) == std::future_status::ready);
    return result.get();
  }

 private:
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::thread thread_;
};

template <typename T>
T await(std::future<T>& future) {
  REQUIRE(future.wait_for(kBound) == std::future_status::ready);
  return future.get();
}

// A connected TCP pair over addr, each socket on its loop.
struct SocketPair {
  asio::ip::tcp::socket server;
  asio::ip::tcp::socket client;
};

inline SocketPair connect_sockets(Loop& server_loop, Loop& client_loop, const std::string& addr) {
  asio::ip::tcp::acceptor acceptor(server_loop.io(), {asio::ip::make_address(addr), 0});
  asio::ip::tcp::socket client(client_loop.io());
  client.connect(acceptor.local_endpoint());
  asio::ip::tcp::socket server(server_loop.io());
  acceptor.accept(server);
  return {std::move(server), std::move(client)};
}

// Starts a handshake on the stream's loop. A side whose handshake fails closes at once, as a
// real caller would, so its peer sees the failure instead of waiting for the next flight.
inline std::future<std::error_code> start_handshake(Loop& loop, std::shared_ptr<TlsStream> stream) {
  auto promise = std::make_shared<std::promise<std::error_code>>();
  auto future = promise->get_future();
  asio::post(loop.io(), [stream, promise] {
    stream->async_handshake([stream, promise](std::error_code ec) {
      if (ec) stream->close();
      promise->set_value(ec);
    });
  });
  return future;
}

// Reads until count bytes arrived or an error; the error (if any) and the bytes.
inline std::future<std::pair<std::error_code, std::string>> start_read_exactly(
    Loop& loop, std::shared_ptr<TlsStream> stream, std::size_t count) {
  struct State {
    std::shared_ptr<TlsStream> stream;
    std::size_t count;
    std::string data;
    std::array<char, 4096> chunk{};
    std::promise<std::pair<std::error_code, std::string>> done;
    void next(const std::shared_ptr<State>& self) {
      if (data.size() >= count) return done.set_value({{}, std::move(data)});
      stream->async_read_some(asio::buffer(chunk), [self](std::error_code ec, std::size_t n) {
        self->data.append(self->chunk.data(), n);
        if (ec) return self->done.set_value({ec, std::move(self->data)});
        self->next(self);
      });
    }
  };
  auto state = std::make_shared<State>();
  state->stream = std::move(stream);
  state->count = count;
  auto future = state->done.get_future();
  asio::post(loop.io(), [state] { state->next(state); });
  return future;
}

inline std::future<std::error_code> start_write(Loop& loop, std::shared_ptr<TlsStream> stream,
                                                std::shared_ptr<const std::string> data) {
  auto promise = std::make_shared<std::promise<std::error_code>>();
  auto future = promise->get_future();
  asio::post(loop.io(), [stream, data, promise] {
    stream->async_write(asio::buffer(*data), [data, promise](std::error_code ec, std::size_t n) {
      if (!ec && n != data->size()) ec = std::make_error_code(std::errc::io_error);
      promise->set_value(ec);
    });
  });
  return future;
}

}  // namespace vantage::platform::tls::test
