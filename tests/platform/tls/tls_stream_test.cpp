// TlsStream over loopback (IPv4 and IPv6): mutual TLS 1.3, echo in both directions, resumption,
// refusals, garbage and silent peers, and closing at awkward moments. Every wait is bounded.
#include "platform/tls/tls_error.hpp"
#include "tls_test_support.hpp"

#include <doctest/doctest.h>
#include <asio/error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/write.hpp>

#include <array>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

namespace vantage::platform::tls::test {
namespace {

constexpr std::array<const char*, 2> kLoopbacks = {"127.0.0.1", "::1"};

// Echoes everything back until the peer goes away.
void echo(std::shared_ptr<TlsStream> stream, std::shared_ptr<std::vector<char>> buffer) {
  stream->async_read_some(asio::buffer(*buffer), [stream, buffer](std::error_code ec, std::size_t n) {
    if (ec) return;
    stream->async_write(asio::buffer(buffer->data(), n),
                        [stream, buffer](std::error_code write_ec, std::size_t) {
                          if (!write_ec) echo(stream, buffer);
                        });
  });
}

// What the server's peer certificate (or the ticket sealed for it) names: "region/pop/agent".
std::string who(const TlsStream& server) {
  const PeerIdentity& id = server.peer_identity();
  return id.region + "/" + id.pop + "/" + id.agent_id;
}

// Everything the identity holds, also after a resumption from the ticket: agent-1's serial and a
// notAfter in the future.
void check_sealed_identity(const TlsStream& server) {
  const PeerIdentity& id = server.peer_identity();
  CHECK(id.valid());
  CHECK(id.error.empty());
  CHECK(!id.serial.empty());
  CHECK(id.not_after_s > static_cast<std::int64_t>(std::time(nullptr)));
}

struct Connection {
  std::shared_ptr<TlsStream> server;
  std::shared_ptr<TlsStream> client;
  std::error_code server_error;
  std::error_code client_error;
};

Connection handshake(Loop& server_loop, Loop& client_loop, const std::string& addr,
                     std::shared_ptr<TlsContext> server_context, std::shared_ptr<TlsContext> client_context,
                     const std::string& server_name) {
  SocketPair sockets = connect_sockets(server_loop, client_loop, addr);
  Connection c;
  c.server = TlsStream::create(std::move(sockets.server), std::move(server_context));
  c.client = TlsStream::create(std::move(sockets.client), std::move(client_context), server_name);
  auto server_done = start_handshake(server_loop, c.server);
  auto client_done = start_handshake(client_loop, c.client);
  c.server_error = await(server_done);
  c.client_error = await(client_done);
  return c;
}

// A handshake that both sides must complete (by default: collector and agent-1 over IPv4).
Connection connected(Loop& server_loop, Loop& client_loop,
                     std::shared_ptr<TlsContext> server_context = collector_context(),
                     std::shared_ptr<TlsContext> client_context = agent_context(),
                     const std::string& addr = "127.0.0.1", const std::string& server_name = "localhost") {
  Connection c = handshake(server_loop, client_loop, addr, std::move(server_context), std::move(client_context),
                           server_name);
  INFO(c.server_error.message(), " / ", c.client_error.message());
  REQUIRE_FALSE(c.server_error);
  REQUIRE_FALSE(c.client_error);
  return c;
}

// Sends close_notify from the stream; the future has the shutdown's outcome.
std::future<std::error_code> start_shutdown(Loop& loop, const std::shared_ptr<TlsStream>& stream) {
  auto promise = std::make_shared<std::promise<std::error_code>>();
  auto done = promise->get_future();
  loop.run([&] { stream->async_shutdown([promise](std::error_code ec) { promise->set_value(ec); }); });
  return done;
}

// Writes data and reads its echo concurrently (the echo of a large buffer comes back while it
// is still being written, so a half-duplex client would deadlock).
void check_round_trip(Loop& client_loop, const std::shared_ptr<TlsStream>& client, std::size_t size) {
  CAPTURE(size);
  auto data = std::make_shared<std::string>(size, '\0');
  for (std::size_t i = 0; i < size; ++i) (*data)[i] = static_cast<char>('a' + (i * 7 + i / 251) % 26);
  auto read = start_read_exactly(client_loop, client, size);
  auto written = start_write(client_loop, client, data);
  CHECK(await(written) == std::error_code{});
  auto [ec, echoed] = await(read);
  CHECK(ec == std::error_code{});
  CHECK(echoed == *data);
}

void close_all(Loop& server_loop, Loop& client_loop, Connection& c) {
  server_loop.run([&] { c.server->close(); });
  client_loop.run([&] { c.client->close(); });
}

// The side that did not refuse learns of it too: its handshake fails, or (TLS 1.3 client, whose
// handshake is over before the server checks its certificate) its first read does.
void check_peer_sees_failure(Loop& loop, const std::shared_ptr<TlsStream>& stream,
                             std::error_code handshake_error) {
  if (handshake_error) return;
  auto read = start_read_exactly(loop, stream, 1);
  auto [ec, data] = await(read);
  INFO(ec.message());
  CHECK(ec);
  CHECK(data.empty());
}

}  // namespace

TEST_CASE("mutual TLS 1.3 handshake, identities both ways and echo of several sizes") {
  auto server_context = collector_context();
  auto client_context = agent_context();
  for (const std::string addr : kLoopbacks) {
    CAPTURE(addr);
    Loop server_loop, client_loop;
    // The server name is the address itself: the collector certificate carries both loopback IPs.
    Connection c = connected(server_loop, client_loop, server_context, client_context, addr, addr);
    CHECK(c.client->protocol_version() == "TLSv1.3");
    CHECK(c.server->protocol_version() == "TLSv1.3");
    CHECK(c.client->ciphersuite() == c.server->ciphersuite());
    CHECK(c.client->ciphersuite().rfind("TLS1-3-", 0) == 0);
    CHECK(who(*c.server) == "eu-west/fra1/agent-1");
    check_sealed_identity(*c.server);
    CHECK(c.client->peer_common_name() == "vantage-collector");
    CHECK_FALSE(c.server->resumed());
    CHECK_FALSE(c.client->resumed());

    server_loop.run([&] { echo(c.server, std::make_shared<std::vector<char>>(8192)); });
    for (std::size_t size : {std::size_t{1}, std::size_t{1000}, std::size_t{16384}, std::size_t{16385},
                             std::size_t{100000}, std::size_t{300001}}) {
      check_round_trip(client_loop, c.client, size);
    }

    // A clean close: the client says close_notify, the server's pending read ends with eof.
    auto server_read = start_read_exactly(server_loop, c.server, 1);
    server_loop.run([&] { c.server->close(); });  // stop the echo loop first
    (void)await(server_read);
    auto shutdown = start_shutdown(client_loop, c.client);
    (void)await(shutdown);  // the server is gone already: only that it completes matters
  }
}

TEST_CASE("close_notify from the peer ends a read with eof") {
  Loop server_loop, client_loop;
  Connection c = connected(server_loop, client_loop);
  auto read = start_read_exactly(server_loop, c.server, 1);
  auto shutdown = start_shutdown(client_loop, c.client);
  CHECK(await(shutdown) == std::error_code{});
  auto [ec, data] = await(read);
  CHECK(ec == asio::error::eof);
  close_all(server_loop, client_loop, c);
}

TEST_CASE("a reconnect resumes the saved TLS 1.3 session") {
  auto server_context = collector_context();
  auto client_context = agent_context();
  for (const std::string addr : kLoopbacks) {
    CAPTURE(addr);
    client_context->forget_saved_session();
    Loop server_loop, client_loop;
    Connection first = connected(server_loop, client_loop, server_context, client_context, addr);
    CHECK_FALSE(first.client->resumed());
    // TLS 1.3 tickets arrive after the handshake: the client's first read picks them up.
    server_loop.run([&] { echo(first.server, std::make_shared<std::vector<char>>(4096)); });
    check_round_trip(client_loop, first.client, 100);
    CHECK(client_context->has_saved_session());
    close_all(server_loop, client_loop, first);

    Connection second = connected(server_loop, client_loop, server_context, client_context, addr);
    CHECK(second.client->protocol_version() == "TLSv1.3");
    CHECK(second.client->resumed());
    CHECK(second.server->resumed());
    // Identities survive resumption: the client keeps the server certificate with its session,
    // the server remembers which client each of its tickets went to.
    CHECK(second.client->peer_common_name() == "vantage-collector");
    CHECK(who(*second.server) == "eu-west/fra1/agent-1");
    check_sealed_identity(*second.server);
    server_loop.run([&] { echo(second.server, std::make_shared<std::vector<char>>(4096)); });
    check_round_trip(client_loop, second.client, 20000);
    close_all(server_loop, client_loop, second);

    // The ticket issued on a resumed connection resumes again, identity carried along.
    Connection third = connected(server_loop, client_loop, server_context, client_context, addr);
    CHECK(third.client->resumed());
    CHECK(third.server->resumed());
    CHECK(who(*third.server) == "eu-west/fra1/agent-1");
    close_all(server_loop, client_loop, third);
  }
}

TEST_CASE("a ticket the server does not know (collector restarted) means a full handshake") {
  auto client_context = agent_context();
  Loop server_loop, client_loop;
  Connection first = connected(server_loop, client_loop, collector_context(), client_context);
  server_loop.run([&] { echo(first.server, std::make_shared<std::vector<char>>(4096)); });
  check_round_trip(client_loop, first.client, 10);
  REQUIRE(client_context->has_saved_session());
  close_all(server_loop, client_loop, first);

  Connection second = connected(server_loop, client_loop, collector_context(), client_context);
  CHECK_FALSE(second.client->resumed());
  CHECK_FALSE(second.server->resumed());
  CHECK(who(*second.server) == "eu-west/fra1/agent-1");
  close_all(server_loop, client_loop, second);
}

namespace fs = std::filesystem;

TlsContextOptions server_options(const std::string& key_file, std::uint32_t lifetime_s = 3600) {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  TlsContextOptions options;
  options.role = TlsRole::kServer;
  options.ca_file = pki.file("ca.crt");
  options.cert_file = pki.file("collector.crt");
  options.key_file = pki.file("collector.key");
  options.ticket_key_file = key_file;
  options.ticket_lifetime_s = lifetime_s;
  return options;
}

std::shared_ptr<TlsContext> server_with_key_file(const std::string& key_file, std::uint32_t lifetime_s = 3600) {
  auto result = TlsContext::create(server_options(key_file, lifetime_s));
  INFO(result.error());
  REQUIRE(result);
  return std::move(result).value();
}

// Connects, picks up the ticket, closes; whether the handshake resumed and whom the server saw.
std::pair<bool, std::string> connect_once(Loop& server_loop, Loop& client_loop,
                                          const std::shared_ptr<TlsContext>& server_context,
                                          const std::shared_ptr<TlsContext>& client_context) {
  Connection c = connected(server_loop, client_loop, server_context, client_context);
  server_loop.run([&] { echo(c.server, std::make_shared<std::vector<char>>(4096)); });
  check_round_trip(client_loop, c.client, 10);  // picks up the TLS 1.3 ticket
  const bool resumed = c.server->resumed();
  CHECK(c.client->resumed() == resumed);
  std::string who_it_was = who(*c.server);
  close_all(server_loop, client_loop, c);
  return {resumed, who_it_was};
}

TEST_CASE("tickets outlive a server restart that keeps its key file, with the client's identity") {
  const fs::path dir = fs::path(Pki::get().dir()) / "tickets-restart";
  fs::create_directories(dir);
  const std::string key_file = (dir / "ticket-keys").string();
  fs::remove(key_file);
  auto client_context = agent_context();
  Loop server_loop, client_loop;
  {
    auto first_server = server_with_key_file(key_file);
    REQUIRE(fs::exists(key_file));
    CHECK((fs::status(key_file).permissions() & (fs::perms::group_all | fs::perms::others_all)) == fs::perms::none);
    CHECK(connect_once(server_loop, client_loop, first_server, client_context) == std::make_pair(false, std::string("eu-west/fra1/agent-1")));
  }
  // A new process (context) with the same key file accepts the ticket: resumed, identity kept.
  auto second_server = server_with_key_file(key_file);
  CHECK(connect_once(server_loop, client_loop, second_server, client_context) == std::make_pair(true, std::string("eu-west/fra1/agent-1")));
  // Thousands of distinct clients need no server memory: each ticket carries its own identity.
  auto other_client = agent_context();
  CHECK_FALSE(connect_once(server_loop, client_loop, second_server, other_client).first);
  CHECK(connect_once(server_loop, client_loop, second_server, other_client).first);
  CHECK(connect_once(server_loop, client_loop, second_server, client_context).first);

  // Another key file (another collector, or one whose keys were lost) means a full handshake.
  const std::string elsewhere = (dir / "other-keys").string();
  fs::remove(elsewhere);
  auto third_server = server_with_key_file(elsewhere);
  CHECK(connect_once(server_loop, client_loop, third_server, client_context) == std::make_pair(false, std::string("eu-west/fra1/agent-1")));
}

TEST_CASE("a ticket key file that is damaged or readable by others is refused with its name") {
  const fs::path dir = fs::path(Pki::get().dir()) / "tickets-bad";
  fs::create_directories(dir);
  const std::string key_file = (dir / "ticket-keys").string();
  const TlsContextOptions options = server_options(key_file);
  {
    std::ofstream out(key_file, std::ios::trunc);
    out << "not keys";
  }
  fs::permissions(key_file, fs::perms::owner_read | fs::perms::owner_write);
  auto damaged = TlsContext::create(options);
  CHECK_FALSE(damaged);
  CHECK(damaged.error().find(key_file + ": not a ticket key file") == 0);
  fs::remove(key_file);
  REQUIRE(TlsContext::create(options));  // makes a good one
  fs::permissions(key_file, fs::perms::group_read, fs::perm_options::add);
  auto exposed = TlsContext::create(options);
  CHECK_FALSE(exposed);
  CHECK(exposed.error().find("chmod 600") != std::string::npos);
}

TEST_CASE("TLS 1.2 when the client caps it, with ticket resumption and identities kept") {
  auto server_context = collector_context();
  auto client_context = agent_context(/*allow_tls13=*/false);
  Loop server_loop, client_loop;
  Connection first = connected(server_loop, client_loop, server_context, client_context, "::1", "::1");
  CHECK(first.client->protocol_version() == "TLSv1.2");
  CHECK(who(*first.server) == "eu-west/fra1/agent-1");
  CHECK_FALSE(first.server->resumed());
  CHECK(client_context->has_saved_session());
  server_loop.run([&] { echo(first.server, std::make_shared<std::vector<char>>(4096)); });
  check_round_trip(client_loop, first.client, 40000);
  close_all(server_loop, client_loop, first);

  Connection second = connected(server_loop, client_loop, server_context, client_context, "::1", "::1");
  CHECK(second.client->resumed());
  CHECK(second.server->resumed());
  CHECK(who(*second.server) == "eu-west/fra1/agent-1");  // TLS 1.2 tickets keep the certificate
  CHECK(second.client->peer_common_name() == "vantage-collector");
  close_all(server_loop, client_loop, second);
}

// Every refusal, over both loopbacks: a side refuses with an mbedTLS error, the other side errs too.
static void check_refused(const std::shared_ptr<TlsContext>& server_context,
                          const std::shared_ptr<TlsContext>& client_context, const char* server_name,
                          bool client_refuses, int expected) {
  for (const std::string addr : kLoopbacks) {
    CAPTURE(addr);
    Loop server_loop, client_loop;
    Connection c = handshake(server_loop, client_loop, addr, server_context, client_context,
                             server_name == nullptr ? addr : server_name);
    MESSAGE("server: ", c.server_error.message().substr(0, 80),
            " | client: ", c.client_error.message().substr(0, 80));
    const std::error_code refusal = client_refuses ? c.client_error : c.server_error;
    CHECK(refusal.category() == mbedtls_category());
    if (expected != 0) CHECK(refusal == make_mbedtls_error(expected));
    if (client_refuses) {
      check_peer_sees_failure(server_loop, c.server, c.server_error);
    } else {
      check_peer_sees_failure(client_loop, c.client, c.client_error);
    }
    close_all(server_loop, client_loop, c);
  }
}

TEST_CASE("refused: a client without a certificate") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  auto bare = make_context(TlsRole::kClient, pki.file("ca.crt"), "", "");
  check_refused(collector_context(), bare, nullptr, false, 0);
}

TEST_CASE("refused: a client certificate from another CA") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  auto rogue =
      make_context(TlsRole::kClient, pki.file("ca.crt"), pki.other("rogue.crt"), pki.other("rogue.key"));
  check_refused(collector_context(), rogue, nullptr, false, MBEDTLS_ERR_X509_CERT_VERIFY_FAILED);
}

TEST_CASE("refused: a server certificate from another CA") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  auto impostor = make_context(TlsRole::kServer, pki.file("ca.crt"), pki.other("collector.crt"),
                               pki.other("collector.key"));
  check_refused(impostor, agent_context(), nullptr, true, MBEDTLS_ERR_X509_CERT_VERIFY_FAILED);
}

TEST_CASE("refused: a server certificate without the expected name") {
  check_refused(collector_context(), agent_context(), "collector.example", true,
                MBEDTLS_ERR_X509_CERT_VERIFY_FAILED);
}

// The collector's side of a fresh connection whose peer is a bare socket, not TLS: the peer that
// sends garbage, or nothing at all.
struct BarePeer {
  asio::ip::tcp::socket socket;
  std::shared_ptr<TlsStream> server;
};

BarePeer bare_peer(Loop& server_loop, Loop& client_loop, const std::string& addr) {
  SocketPair sockets = connect_sockets(server_loop, client_loop, addr);
  return {std::move(sockets.client), TlsStream::create(std::move(sockets.server), collector_context())};
}

TEST_CASE("garbage instead of a ClientHello fails the server handshake cleanly") {
  for (const std::string addr : kLoopbacks) {
    CAPTURE(addr);
    Loop server_loop, client_loop;
    BarePeer peer = bare_peer(server_loop, client_loop, addr);
    auto handshake_done = start_handshake(server_loop, peer.server);
    const std::string garbage = "GET / HTTP/1.1\r\nHost: collector\r\n\r\n" + std::string(3000, '\x17');
    asio::write(peer.socket, asio::buffer(garbage));
    const std::error_code ec = await(handshake_done);
    INFO(ec.message());
    CHECK(ec.category() == mbedtls_category());
    // The server closed: the raw peer reads eof (after any alert bytes), not a hang.
    std::array<char, 256> sink{};
    std::error_code read_ec;
    while (!read_ec) peer.socket.read_some(asio::buffer(sink), read_ec);
    CHECK((read_ec == asio::error::eof || read_ec == asio::error::connection_reset));
  }
}

TEST_CASE("a silent peer: the caller's timer closes the stream and the handshake is aborted") {
  for (const std::string addr : kLoopbacks) {
    CAPTURE(addr);
    Loop server_loop, client_loop;
    BarePeer peer = bare_peer(server_loop, client_loop, addr);
    auto timer = std::make_shared<asio::steady_timer>(server_loop.io());
    const auto started = std::chrono::steady_clock::now();
    auto handshake_done = start_handshake(server_loop, peer.server);
    server_loop.run([&] {
      timer->expires_after(std::chrono::milliseconds(200));
      timer->async_wait([server = peer.server, timer](std::error_code ec) {
        if (!ec) server->close();
      });
    });
    CHECK(await(handshake_done) == asio::error::operation_aborted);
    CHECK(std::chrono::steady_clock::now() - started >= std::chrono::milliseconds(200));
  }
}

TEST_CASE("closing at any point completes pending operations with operation_aborted") {
  Loop server_loop, client_loop;
  Connection c = connected(server_loop, client_loop);

  // A read and a large write pending together (nobody reads on the server), then close.
  auto read = start_read_exactly(client_loop, c.client, 1);
  auto written = start_write(client_loop, c.client, std::make_shared<std::string>(8 << 20, 'x'));
  client_loop.run([&] { c.client->close(); });
  CHECK(await(read).first == asio::error::operation_aborted);
  CHECK(await(written) == asio::error::operation_aborted);

  // Anything started after close() is aborted too, and close() is idempotent.
  auto again = start_handshake(client_loop, c.client);
  CHECK(await(again) == asio::error::operation_aborted);
  client_loop.run([&] { c.client->close(); });

  // Dropping every reference while an operation is pending: the operation keeps the stream alive
  // until it completes (here: when the peer goes away), and only then is the stream freed.
  Connection d = connected(server_loop, client_loop);
  auto orphan_read = start_read_exactly(server_loop, d.server, 1);
  std::weak_ptr<TlsStream> orphan = d.server;
  d.server.reset();
  CHECK(orphan_read.wait_for(std::chrono::milliseconds(100)) == std::future_status::timeout);
  client_loop.run([&] { d.client->close(); });
  CHECK(await(orphan_read).first);
  CHECK(server_loop.run([&] { return orphan.expired(); }));
}

}  // namespace vantage::platform::tls::test

namespace vantage::platform::tls::test {
namespace {

std::shared_ptr<TlsContext> server_with_crl(const std::string& key_file, const std::string& crl) {
  TlsContextOptions options = server_options(key_file);
  options.crl_file = crl;
  auto result = TlsContext::create(options);
  INFO(result.error());
  REQUIRE(result);
  return std::move(result).value();
}

std::shared_ptr<TlsContext> agent_2_context() {
  const Pki& pki = Pki::get();
  return make_context(TlsRole::kClient, pki.file("ca.crt"), pki.file("agent-2.crt"), pki.file("agent-2.key"));
}

}  // namespace

TEST_CASE("the server reads agent id, region and PoP from the certificate's vantage:// URI") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  struct Case {
    const char* name;
    const char* identity;  // region/pop/agent, or empty when refused
    const char* error;     // part of PeerIdentity::error
  };
  const Case cases[] = {
      {"agent-2", "eu-west/fra2/agent-2", ""},
      {"other-uri", "eu-west/fra1/agent-4", ""},  // a URI of another scheme beside it is ignored
      {"no-uri", "//", "no vantage://<region>/<pop>/<agent-id> URI"},
      {"two-uris", "//", "has 2 vantage:// URIs"},
      {"bad-uri", "//", "PoP 'fra%201' is not 1..64 characters"},
      {"long-uri", "//", "agent id 'aaaa"},
  };
  auto server_context = collector_context();
  for (const Case& c : cases) {
    CAPTURE(c.name);
    auto client_context =
        make_context(TlsRole::kClient, pki.file("ca.crt"), pki.file(std::string(c.name) + ".crt"),
                     pki.file(std::string(c.name) + ".key"));
    Loop server_loop, client_loop;
    // The handshake itself succeeds: the certificate is the CA's. The session refuses it, with
    // the reason, which only an authenticated peer may learn.
    Connection conn = connected(server_loop, client_loop, server_context, client_context);
    const PeerIdentity& id = conn.server->peer_identity();
    CHECK(who(*conn.server) == c.identity);
    CHECK(id.valid() == (*c.error == '\0'));
    CHECK(id.error.find(c.error) != std::string::npos);
    CHECK_FALSE(id.serial.empty());
    close_all(server_loop, client_loop, conn);
  }
}

TEST_CASE("a CRL refuses the certificates it revokes at the handshake, and only those") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  auto server = server_with_crl("", pki.file("revoked.crl"));
  CHECK(server->revoked_serials() == 1);
  CHECK(server->crl_next_update_s() > static_cast<std::int64_t>(std::time(nullptr)));
  check_refused(server, agent_2_context(), nullptr, false, MBEDTLS_ERR_X509_CERT_VERIFY_FAILED);
  Loop server_loop, client_loop;
  Connection c = handshake(server_loop, client_loop, "127.0.0.1", server, agent_2_context(), "localhost");
  CHECK((c.server->peer_verify_flags() & MBEDTLS_X509_BADCERT_REVOKED) != 0);
  CHECK(who(*c.server) == "eu-west/fra2/agent-2");  // whose certificate it was, for the log
  close_all(server_loop, client_loop, c);
  Connection good = connected(server_loop, client_loop, server, agent_context());
  CHECK(good.server->peer_verify_flags() == 0);
  close_all(server_loop, client_loop, good);
}

TEST_CASE("a CRL that is not the CA's, or is unreadable, is refused with its name") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  const fs::path dir = fs::path(pki.dir()) / "bad-crl";
  fs::create_directories(dir);
  TlsContextOptions options = server_options("");
  options.crl_file = (dir / "missing.pem").string();
  auto missing = TlsContext::create(options);
  REQUIRE_FALSE(missing);
  CHECK(missing.error().find("missing.pem: No such file") != std::string::npos);
  // A CRL of the other CA: parsed fine, but not signed by ours.
  const std::string other = (fs::path(pki.dir()) / "other-ca").string();
  REQUIRE(std::system(("bash '" + std::string(VANTAGE_SOURCE_DIR) + "/tools/dev-pki.sh' --revoke '" + other +
                       "' >/dev/null").c_str()) == 0);
  options.crl_file = other + "/crl.pem";
  auto foreign = TlsContext::create(options);
  REQUIRE_FALSE(foreign);
  CHECK(foreign.error().find("not issued and signed by the CA") != std::string::npos);
  options.crl_file = pki.file("ca.crt");  // a certificate, not a CRL
  auto garbage = TlsContext::create(options);
  REQUIRE_FALSE(garbage);
  CHECK(garbage.error().find("ca.crt: -0x") != std::string::npos);
}

TEST_CASE("a ticket sealed for a certificate revoked since is refused: a full handshake follows, and fails") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  const fs::path dir = fs::path(pki.dir()) / "tickets-revoked";
  fs::create_directories(dir);
  const std::string key_file = (dir / "ticket-keys").string();
  fs::remove(key_file);
  auto client = agent_2_context();
  Loop server_loop, client_loop;
  auto before = server_with_crl(key_file, pki.file("crl.pem"));  // revokes nothing
  CHECK(connect_once(server_loop, client_loop, before, client).first == false);
  CHECK(connect_once(server_loop, client_loop, before, client) == std::make_pair(true, std::string("eu-west/fra2/agent-2")));
  CHECK(client->has_saved_session());

  // A reload with the CRL that revokes agent-2: same ticket keys, so the ticket still opens, but
  // the serial sealed in it is now revoked.
  TlsContextOptions options = server_options(key_file);
  options.crl_file = pki.file("revoked.crl");
  auto reloaded = before->reload(options);
  INFO(reloaded.error());
  REQUIRE(reloaded);
  auto after = std::move(reloaded).value();
  CHECK(after->is_revoked(std::string("x"), std::string()) == false);
  Connection c = handshake(server_loop, client_loop, "127.0.0.1", after, client, "localhost");
  CHECK(c.server_error == make_mbedtls_error(MBEDTLS_ERR_X509_CERT_VERIFY_FAILED));
  CHECK_FALSE(c.server->resumed());
  CHECK(c.server->peer_identity().ticket_refused.find("agent-2") != std::string::npos);
  CHECK(c.server->peer_identity().ticket_refused.find("revoked") != std::string::npos);
  CHECK((c.server->peer_verify_flags() & MBEDTLS_X509_BADCERT_REVOKED) != 0);
  close_all(server_loop, client_loop, c);

  // agent-1's ticket, from before the reload, still resumes under the reloaded context.
  auto good = agent_context();
  CHECK_FALSE(connect_once(server_loop, client_loop, before, good).first);
  CHECK(connect_once(server_loop, client_loop, after, good) == std::make_pair(true, std::string("eu-west/fra1/agent-1")));
}


namespace {

// The concatenation of PEM files, e.g. a CA bundle.
std::string bundle(const fs::path& out, std::initializer_list<std::string> files) {
  std::ofstream file(out, std::ios::binary | std::ios::trunc);
  for (const std::string& name : files) {
    std::ifstream in(name, std::ios::binary);
    file << in.rdbuf();
  }
  return out.string();
}

std::shared_ptr<TlsContext> reloaded(const std::shared_ptr<TlsContext>& from, const TlsContextOptions& options) {
  auto result = from->reload(options);
  INFO(result.error());
  REQUIRE(result);
  return std::move(result).value();
}

}  // namespace

TEST_CASE("a ticket is refused once a reload removed the CA its certificate was verified against") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  const fs::path dir = fs::path(pki.dir()) / "tickets-ca-removed";
  fs::create_directories(dir);
  const std::string key_file = (dir / "ticket-keys").string();
  fs::remove(key_file);
  auto client = agent_context();
  Loop server_loop, client_loop;
  auto before = server_with_key_file(key_file);
  CHECK_FALSE(connect_once(server_loop, client_loop, before, client).first);
  // Both CAs: ours is still there, so the ticket resumes (and a fresh one is issued).
  TlsContextOptions options = server_options(key_file);
  options.ca_file = bundle(dir / "both.crt", {pki.other("ca.crt"), pki.file("ca.crt")});
  auto both = reloaded(before, options);
  CHECK(connect_once(server_loop, client_loop, both, client) == std::make_pair(true, std::string("eu-west/fra1/agent-1")));
  // Ours removed: the ticket opens (same keys) but its CA is gone; the full handshake then fails.
  options.ca_file = pki.other("ca.crt");
  auto other_only = reloaded(both, options);
  Connection c = handshake(server_loop, client_loop, "127.0.0.1", other_only, client, "localhost");
  CHECK(c.server_error);
  CHECK_FALSE(c.server->resumed());
  CHECK(c.server->peer_identity().ticket_refused.find("CA is no longer trusted") != std::string::npos);
  close_all(server_loop, client_loop, c);
}

TEST_CASE("a chain of resumptions keeps the time of its full handshake and ends after the chain limit") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  const fs::path dir = fs::path(pki.dir()) / "tickets-chain";
  fs::create_directories(dir);
  const std::string key_file = (dir / "ticket-keys").string();
  fs::remove(key_file);
  auto client = agent_context();
  Loop server_loop, client_loop;
  auto server = server_with_key_file(key_file);
  const auto now = [] { return static_cast<std::int64_t>(std::time(nullptr)); };

  Connection full = connected(server_loop, client_loop, server, client);
  server_loop.run([&] { echo(full.server, std::make_shared<std::vector<char>>(4096)); });
  check_round_trip(client_loop, full.client, 10);
  const std::int64_t verified_at = full.server->peer_identity().verified_at_s;
  CHECK(verified_at > 0);
  CHECK(verified_at <= now());
  CHECK(full.server->peer_identity().ca_sha256.size() == 32);
  close_all(server_loop, client_loop, full);

  // Each resumption re-seals the time of the full handshake, never its own.
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  for (int i = 0; i < 2; ++i) {
    Connection resumed = connected(server_loop, client_loop, server, client);
    server_loop.run([&] { echo(resumed.server, std::make_shared<std::vector<char>>(4096)); });
    check_round_trip(client_loop, resumed.client, 10);
    CHECK(resumed.server->resumed());
    CHECK(resumed.server->peer_identity().verified_at_s == verified_at);
    CHECK(resumed.server->peer_identity().ca_sha256.size() == 32);
    close_all(server_loop, client_loop, resumed);
  }

  // A limit shorter than the chain's age: the ticket (fresh, well within its lifetime) is refused
  // and the full handshake that follows verifies the certificate again.
  TlsContextOptions options = server_options(key_file);
  options.ticket_chain_limit_s = 1;  // the chain is at least 2 s old (whole seconds)
  auto strict = reloaded(server, options);
  Connection again = connected(server_loop, client_loop, strict, client);
  CHECK_FALSE(again.server->resumed());
  CHECK(again.server->peer_identity().ticket_refused.find("last verified too long ago") != std::string::npos);
  CHECK(again.server->peer_identity().verified_at_s >= verified_at + 2);
  close_all(server_loop, client_loop, again);
}

TEST_CASE("a CRL of another trusted CA that lists the same serial does not revoke the certificate") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  const fs::path dir = fs::path(pki.dir()) / "crl-issuer";
  fs::create_directories(dir);
  // The other CA's CRL revoking a serial equal to agent-1's (dev-pki.sh takes the serial from the
  // certificate file it is given).
  const fs::path twin = dir / "twin-ca";
  fs::create_directories(twin);
  fs::copy_file(pki.other("ca.crt"), twin / "ca.crt", fs::copy_options::overwrite_existing);
  fs::copy_file(pki.other("ca.key"), twin / "ca.key", fs::copy_options::overwrite_existing);
  fs::copy_file(pki.file("agent-1.crt"), twin / "twin.crt", fs::copy_options::overwrite_existing);
  REQUIRE(std::system(("bash '" + std::string(VANTAGE_SOURCE_DIR) + "/tools/dev-pki.sh' --revoke '" +
                       twin.string() + "' twin >/dev/null").c_str()) == 0);
  const std::string key_file = (dir / "ticket-keys").string();
  fs::remove(key_file);
  TlsContextOptions options = server_options(key_file);
  options.ca_file = bundle(dir / "both.crt", {pki.file("ca.crt"), pki.other("ca.crt")});
  options.crl_file = bundle(dir / "crls.pem", {pki.file("revoked.crl"), (twin / "crl.pem").string()});
  auto created = TlsContext::create(options);
  INFO(created.error());
  REQUIRE(created);
  auto server = std::move(created).value();
  CHECK(server->revoked_serials() == 2);
  auto client = agent_context();
  Loop server_loop, client_loop;
  Connection c = connected(server_loop, client_loop, server, client);
  server_loop.run([&] { echo(c.server, std::make_shared<std::vector<char>>(4096)); });
  check_round_trip(client_loop, c.client, 10);  // picks up the TLS 1.3 ticket
  const PeerIdentity id = c.server->peer_identity();
  close_all(server_loop, client_loop, c);
  CHECK(id.issuer_sha256.size() == 32);
  CHECK_FALSE(server->is_revoked(id));
  // The same serial from the other CA is what that CRL revokes.
  mbedtls_x509_crt other_ca;
  mbedtls_x509_crt_init(&other_ca);
  const std::string other_pem = read_pem_file(pki.other("ca.crt"));
  REQUIRE(mbedtls_x509_crt_parse(&other_ca, reinterpret_cast<const unsigned char*>(other_pem.c_str()),
                                 other_pem.size() + 1) == 0);
  const std::string other_issuer = sha256_of(other_ca.subject_raw.p, other_ca.subject_raw.len);
  mbedtls_x509_crt_free(&other_ca);
  CHECK(server->is_revoked(id.serial, other_issuer));
  // Its ticket resumes: the serial is listed only by a CRL of an issuer that is not agent-1's.
  CHECK(connect_once(server_loop, client_loop, server, client) == std::make_pair(true, std::string("eu-west/fra1/agent-1")));
  // agent-2, which our own CRL revokes, is still refused.
  check_refused(server, agent_2_context(), nullptr, false, MBEDTLS_ERR_X509_CERT_VERIFY_FAILED);
}

TEST_CASE("a CRL without nextUpdate is refused at load, saying why") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  const fs::path dir = fs::path(pki.dir()) / "crl-no-next-update";
  fs::create_directories(dir);
  const std::int64_t now = static_cast<std::int64_t>(std::time(nullptr));
  const std::string without = (dir / "without.crl").string();
  const std::string with = (dir / "with.crl").string();
  REQUIRE(write_crl(pki.dir().string(), without, now - 60, 0));
  REQUIRE(write_crl(pki.dir().string(), with, now - 60, now + 3600));
  TlsContextOptions options = server_options("");
  options.crl_file = with;  // the same CRL with a nextUpdate loads: the hand-made DER is sound
  auto good = TlsContext::create(options);
  INFO(good.error());
  CHECK(good);
  options.crl_file = without;
  auto bad = TlsContext::create(options);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().find("without.crl: has no nextUpdate") != std::string::npos);
}

}  // namespace vantage::platform::tls::test
