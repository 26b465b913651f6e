// The collector's ingest against real TLS clients on loopback: the pre-authentication budget
// (a flood from one address leaves room for another's agent), backpressure from a stalled store
// (reading stops at the queue bound and everything arrives afterwards), and the peer that never
// reads its acks. Limits are small so each case runs in seconds.
#include <doctest/doctest.h>

#include <asio/connect.hpp>
#include <asio/write.hpp>

#include <sys/socket.h>

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <thread>

#include "collector/ingest_server.hpp"
#include "collector/store/sqlite_store.hpp"
#include "platform/clock.hpp"
#include "schemas/frame_codec.hpp"
#include "schemas/wire_string.hpp"
#include "tests/platform/tls/tls_test_support.hpp"
#include "tests/support/eventually.hpp"
#include "tests/support/ingest_fixture.hpp"

namespace vantage::collector {
namespace {

namespace fs = std::filesystem;
using platform::tls::test::await;
using platform::tls::test::Loop;
using platform::tls::test::Pki;

std::string frame_bytes(flatbuffers::FlatBufferBuilder& fbb) {
  std::vector<std::uint8_t> out;
  wire::append_frame(out, {fbb.GetBufferPointer(), fbb.GetSize()});
  return {out.begin(), out.end()};
}

std::string hello_frame(const char* agent = "agent-1", const char* pop = "fra1") {
  flatbuffers::FlatBufferBuilder fbb;
  const auto hello = wire::CreateHelloDirect(fbb, 1, agent, "eu-west", pop, "test", "x86_64", 0);
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, wire::Message::Hello, hello.Union()));
  return frame_bytes(fbb);
}

// A batch with `targets` latency summaries (about 60 bytes each).
std::string batch_frame(std::uint64_t seq, int targets = 1, const char* agent = "agent-1", const char* pop = "fra1") {
  flatbuffers::FlatBufferBuilder fbb;
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency;
  for (int i = 0; i < targets; ++i) {
    const std::string target = "10.0.0." + std::to_string(i) + ":7000";
    latency.push_back(wire::CreateLatencySummaryDirect(fbb, target.c_str()));
  }
  // Recent intervals: the store keeps store.retention_days, and older batches are not kept.
  static const std::int64_t start_ns = platform::realtime_ns() - 3'600'000'000'000;
  const std::int64_t end_ns = start_ns + static_cast<std::int64_t>(seq) * 1'000'000'000;
  const auto batch = wire::CreateBatchDirect(fbb, agent, seq, end_ns - 1'000'000'000, end_ns, "eu-west", pop,
                                             &latency);
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, wire::Message::Batch, batch.Union()));
  return frame_bytes(fbb);
}

struct Server : test::IngestFixture {
  using IngestFixture::IngestFixture;
  std::vector<std::uint64_t> seqs() {
    auto store = store::SqliteStore::open((dir / "store.db").string(), {.read_only = true});
    REQUIRE(store);
    auto seqs = store->seqs("agent-1");
    REQUIRE(seqs);
    return *seqs;
  }
};

using test::eventually;

asio::ip::tcp::socket connect_from(asio::io_context& io, const std::string& source,
                                   const asio::ip::tcp::endpoint& to, int receive_buffer = 0) {
  asio::ip::tcp::socket socket(io);
  socket.open(asio::ip::tcp::v4());
  if (receive_buffer > 0) socket.set_option(asio::socket_base::receive_buffer_size(receive_buffer));
  socket.bind({asio::ip::make_address(source), 0});
  socket.connect(to);
  return socket;
}

// An agent: TLS from `source`, Hello, then reads acks into `acks` as they come.
struct Agent {
  Loop loop;
  std::shared_ptr<platform::tls::TlsStream> stream;
  std::mutex mutex;
  std::vector<std::uint64_t> acks;
  std::vector<std::string> refusals;  // the reasons of Rejected acks
  std::error_code read_error;
  bool read_done = false;
  wire::FrameReader reader;
  std::array<std::uint8_t, 4096> chunk{};

  std::shared_ptr<platform::tls::TlsContext> context;  // agent-1's when not set

  std::error_code connect(const std::string& source, const asio::ip::tcp::endpoint& to, int receive_buffer = 0) {
    if (!context) context = platform::tls::test::agent_context();
    stream = platform::tls::TlsStream::create(connect_from(loop.io(), source, to, receive_buffer), context,
                                              "localhost");
    auto handshake = platform::tls::test::start_handshake(loop, stream);
    return await(handshake);
  }
  std::error_code send(std::string bytes) {
    auto written = platform::tls::test::start_write(loop, stream, std::make_shared<const std::string>(std::move(bytes)));
    return await(written);
  }
  void start_reading() {
    asio::post(loop.io(), [this] { read_next(); });
  }
  void read_next() {
    stream->async_read_some(asio::buffer(chunk), [this](std::error_code ec, std::size_t n) {
      std::lock_guard lock(mutex);
      if (ec) {
        read_error = ec;
        read_done = true;
        return;
      }
      reader.feed({chunk.data(), n});
      while (reader.next() == wire::FrameStatus::kFrame) {
        if (const wire::Ack* ack = reader.frame()->message_as_Ack()) {
          if (ack->status() == wire::AckStatus::Stored) acks.push_back(ack->seq());
          if (ack->status() == wire::AckStatus::Rejected) refusals.push_back(wire::text(ack->reason()));
        }
      }
      read_next();
    });
  }
  std::size_t ack_count() {
    std::lock_guard lock(mutex);
    return acks.size();
  }
  bool closed() {
    std::lock_guard lock(mutex);
    return read_done;
  }
  ~Agent() {
    if (stream) loop.run([this] { stream->close(); });
  }
};

}  // namespace

TEST_CASE("a flood of half-open connections from one address does not lock out another's agent") {
  IngestConfig config;
  config.max_handshakes = 64;
  config.max_handshakes_per_source = 16;
  config.evict_after = std::chrono::milliseconds(500);
  config.handshake_timeout = std::chrono::seconds(30);  // the flood stays for the whole test
  Server server(config, "flood");

  // 300 connections from 127.0.0.2, each sending the first byte of a ClientHello, then nothing.
  // A connect the kernel resets (the 4-tuple of an earlier run still in TIME_WAIT) is a flooder
  // less: the refusals are counted against those that connected.
  Loop flood_loop;
  std::vector<asio::ip::tcp::socket> flood;
  for (int i = 0; i < 300; ++i) {
    try {
      flood.push_back(connect_from(flood_loop.io(), "127.0.0.2", server.endpoint));
    } catch (const std::system_error& e) {
      MESSAGE("a flood connect failed: " << e.what());
      continue;
    }
    const std::uint8_t first = 0x16;
    std::error_code ignored;
    asio::write(flood.back(), asio::buffer(&first, 1), ignored);
  }
  REQUIRE(flood.size() >= 290);
  CHECK(eventually([&] {
    const IngestCounters c = server.ingest->counters();
    return c.rejects[static_cast<std::size_t>(Reject::kSourceLimit)] >= flood.size() - 16;
  }));
  {
    const IngestCounters c = server.ingest->counters();
    CHECK(c.handshakes_in_progress <= 16);
  }

  // An agent from another address gets in, and its batches are stored and acked.
  Agent agent;
  REQUIRE_FALSE(agent.connect("127.0.0.3", server.endpoint));
  agent.start_reading();
  REQUIRE_FALSE(agent.send(hello_frame()));
  for (std::uint64_t seq = 1; seq <= 5; ++seq) REQUIRE_FALSE(agent.send(batch_frame(seq)));
  CHECK(eventually([&] { return agent.ack_count() == 5; }));
  const std::vector<std::uint64_t> first_five{1, 2, 3, 4, 5};
  CHECK(server.seqs() == first_five);

  // A second wave from many addresses fills the whole budget; handshakes that have waited for
  // their peer for evict_after make way for newcomers, oldest first, and an agent still gets in.
  std::vector<asio::ip::tcp::socket> wave;
  for (int i = 0; i < 100; ++i) {
    try {
      wave.push_back(connect_from(flood_loop.io(), "127.0.1." + std::to_string(1 + i % 20), server.endpoint));
    } catch (const std::system_error& e) {
      MESSAGE("a wave connect failed: " << e.what());
    }
  }
  CHECK(eventually([&] {
    const IngestCounters c = server.ingest->counters();
    return c.rejects[static_cast<std::size_t>(Reject::kEvicted)] +
               c.rejects[static_cast<std::size_t>(Reject::kHandshakeLimit)] >
           0;
  }));
  // Once the wave has waited evict_after for its silent peers, the oldest make way.
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  Agent late;
  REQUIRE_FALSE(late.connect("127.0.0.4", server.endpoint));
  late.start_reading();
  REQUIRE_FALSE(late.send(hello_frame()));
  REQUIRE_FALSE(late.send(batch_frame(6)));
  CHECK(eventually([&] { return late.ack_count() == 1; }));
  CHECK(server.ingest->counters().handshakes_in_progress <= 64);
  flood_loop.run([&] {
    flood.clear();
    wave.clear();
  });
}

TEST_CASE("a stalled store stops reading at the queue bound and everything is stored afterwards") {
  const fs::path pause = fs::temp_directory_path() / ("vantage-pause-" + std::to_string(::getpid()));
  { std::ofstream(pause.string()) << "paused"; }
  ::setenv("VANTAGE_COLLECTOR_STORE_PAUSE_FILE", pause.c_str(), 1);
  IngestConfig config;
  config.store_queue_bytes = 64 * 1024;
  config.max_pending_per_connection = 100'000;  // the queue bound, not this, must stop reading
  Server server(config, "backpressure");
  ::unsetenv("VANTAGE_COLLECTOR_STORE_PAUSE_FILE");

  // ~3 KiB per batch: 400 batches are about 20 times the queue bound.
  constexpr std::uint64_t kBatches = 400;
  std::string all = hello_frame();
  for (std::uint64_t seq = 1; seq <= kBatches; ++seq) all += batch_frame(seq, 50);
  Agent agent;
  REQUIRE_FALSE(agent.connect("127.0.0.5", server.endpoint));
  agent.start_reading();
  auto written = platform::tls::test::start_write(agent.loop, agent.stream, std::make_shared<const std::string>(all));
  CHECK(eventually([&] { return server.ingest->counters().read_pauses > 0; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  {
    const IngestCounters c = server.ingest->counters();
    // The bound plus what one connection had already read when it found the queue full: one
    // TLS record's worth of frames.
    CHECK(c.store_queue_peak_bytes <= config.store_queue_bytes + 20 * 1024);
    CHECK(c.batches_stored == 0);
    CHECK(agent.ack_count() == 0);
  }
  fs::remove(pause);
  CHECK(await(written) == std::error_code{});
  CHECK(eventually([&] { return agent.ack_count() == kBatches; }));
  const std::vector<std::uint64_t> stored = server.seqs();
  CHECK(stored.size() == kBatches);
  CHECK(server.ingest->counters().store_queue_peak_bytes <= config.store_queue_bytes + 20 * 1024);
}

TEST_CASE("a peer that sends batches but never reads its acks is closed") {
  IngestConfig config;
  config.max_unsent_ack_bytes = 1024;
  config.max_pending_per_connection = 100'000;
  Server server(config, "slow-reader");
  Agent agent;
  REQUIRE_FALSE(agent.connect("127.0.0.6", server.endpoint, /*receive_buffer=*/1024));
  // Never reads: the collector's acks back up in its socket, then in its queue.
  REQUIRE_FALSE(agent.send(hello_frame()));
  std::string chunk;
  std::uint64_t seq = 0;
  bool closed = false;
  for (int round = 0; round < 200 && !closed; ++round) {
    chunk.clear();
    for (int i = 0; i < 50; ++i) chunk += batch_frame(++seq);
    closed = static_cast<bool>(agent.send(chunk));
    closed = closed || server.ingest->counters().rejects[static_cast<std::size_t>(Reject::kSlowReader)] > 0;
  }
  CHECK(eventually([&] {
    return server.ingest->counters().rejects[static_cast<std::size_t>(Reject::kSlowReader)] == 1;
  }));
  // The closed peer's batches that were stored stay stored; nothing else is disturbed.
  CHECK(server.ingest->counters().sessions_open <= 1);
  Agent other;
  REQUIRE_FALSE(other.connect("127.0.0.7", server.endpoint));
}

TEST_CASE("a refused agent reads the refusal, though its next batches were never read: no reset") {
  Server server(IngestConfig{}, "refused-linger");
  Agent agent;
  REQUIRE_FALSE(agent.connect("127.0.0.8", server.endpoint));
  // A Hello for another agent than the certificate's is refused; the batches written behind it,
  // each its own TLS record, are never read by the collector. Closing on them would reset the
  // connection, and a reset can reach the agent before it reads the refusal.
  REQUIRE_FALSE(agent.send(hello_frame("agent-2")));
  for (std::uint64_t seq = 1; seq <= 8; ++seq) REQUIRE_FALSE(agent.send(batch_frame(seq, 40)));
  // Written after the refusal was sent, too: the collector drains until the agent closes.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK_FALSE(agent.send(batch_frame(9, 40)));
  agent.start_reading();
  REQUIRE(eventually([&] { return agent.closed(); }));
  std::lock_guard lock(agent.mutex);
  REQUIRE(agent.refusals.size() == 1);
  CHECK(agent.refusals[0].find("agent-2") != std::string::npos);
  // close_notify then FIN: the read ends as a clean close, not a reset.
  INFO(agent.read_error.message());
  CHECK(agent.read_error == asio::error::eof);
  CHECK(server.seqs().empty());
}

TEST_CASE("200 agents refused at once each read their refusal and a clean close") {
  Server server(IngestConfig{}, "refused-linger-200");
  constexpr int kAgents = 200;
  std::vector<std::unique_ptr<Agent>> agents;
  for (int i = 0; i < kAgents; ++i) {
    agents.push_back(std::make_unique<Agent>());
    REQUIRE_FALSE(agents.back()->connect("127.0.1." + std::to_string(1 + i % 50), server.endpoint));
  }
  // Every one is refused with batches unread behind its Hello, all lingering together.
  for (auto& agent : agents) {
    REQUIRE_FALSE(agent->send(hello_frame("agent-2")));
    for (std::uint64_t seq = 1; seq <= 3; ++seq) REQUIRE_FALSE(agent->send(batch_frame(seq, 40)));
  }
  for (auto& agent : agents) agent->start_reading();
  for (auto& agent : agents) {
    REQUIRE(eventually([&] { return agent->closed(); }));
    std::lock_guard lock(agent->mutex);
    CHECK(agent->refusals.size() == 1);
    INFO(agent->read_error.message());
    CHECK(agent->read_error == asio::error::eof);
  }
  CHECK(server.seqs().empty());
  // Once the agents close, so does every lingering connection.
  agents.clear();
  CHECK(eventually([&] { return server.ingest->counters().connections_open == 0; }));
  CHECK(server.ingest->counters().sessions_open == 0);
}

TEST_CASE("a TLS reload closes the sessions its CRL revokes, keeps the others, and a failed one changes nothing") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  const fs::path crl_dir = pki.dir() / "reload-crl";
  fs::create_directories(crl_dir);
  const fs::path crl = crl_dir / "crl.pem";
  fs::copy_file(pki.file("crl.pem"), crl, fs::copy_options::overwrite_existing);  // revokes nothing
  IngestConfig config;
  config.tls.crl_file = crl.string();
  Server server(std::move(config), "reload");
  CHECK(server.ingest->counters().crl_revoked_serials == 0);
  CHECK(server.ingest->counters().certificate_not_after_s > static_cast<std::int64_t>(std::time(nullptr)));

  Agent good;
  REQUIRE_FALSE(good.connect("127.0.0.1", server.endpoint));
  good.start_reading();
  REQUIRE_FALSE(good.send(hello_frame() + batch_frame(1)));
  Agent revoked;
  revoked.context = platform::tls::test::make_context(platform::tls::TlsRole::kClient, pki.file("ca.crt"),
                                                      pki.file("agent-2.crt"), pki.file("agent-2.key"));
  REQUIRE_FALSE(revoked.connect("127.0.0.1", server.endpoint));
  revoked.start_reading();
  REQUIRE_FALSE(revoked.send(hello_frame("agent-2", "fra2") + batch_frame(1, 1, "agent-2", "fra2")));
  REQUIRE(eventually([&] { return good.ack_count() == 1 && revoked.ack_count() == 1; }));
  CHECK(server.ingest->counters().agent_certificate_earliest_not_after_s > 0);

  // The new CRL revokes agent-2: its session is refused and closed, agent-1's goes on.
  fs::copy_file(pki.file("revoked.crl"), crl, fs::copy_options::overwrite_existing);
  const auto reloaded = server.ingest->reload_tls();
  INFO(reloaded.message());
  REQUIRE(reloaded);
  CHECK(eventually([&] { return revoked.closed(); }));
  IngestCounters c = server.ingest->counters();
  CHECK(c.tls_reloads == 1);
  CHECK(c.crl_revoked_serials == 1);
  CHECK(c.rejects[static_cast<std::size_t>(Reject::kRevoked)] == 1);
  REQUIRE_FALSE(good.send(batch_frame(2)));
  CHECK(eventually([&] { return good.ack_count() == 2; }));
  CHECK_FALSE(good.closed());

  // An unreadable CRL: the reload fails, is counted, and the previous material stays.
  std::ofstream(crl, std::ios::trunc) << "not a CRL\n";
  const auto failed = server.ingest->reload_tls();
  REQUIRE_FALSE(failed);
  CHECK(failed.message().find("stay in use") != std::string::npos);
  CHECK(failed.message().find(crl.string()) != std::string::npos);
  c = server.ingest->counters();
  CHECK(c.tls_reload_failures == 1);
  CHECK(c.tls_reloads == 1);
  CHECK(c.crl_revoked_serials == 1);
  REQUIRE_FALSE(good.send(batch_frame(3)));
  CHECK(eventually([&] { return good.ack_count() == 3; }));

  // agent-2 cannot come back: its new handshake is refused as revoked (a TLS 1.3 client learns it
  // at its first read).
  Agent again;
  again.context = revoked.context;
  (void)again.connect("127.0.0.1", server.endpoint);
  CHECK(eventually([&] {
    return server.ingest->counters().rejects[static_cast<std::size_t>(Reject::kRevoked)] == 2;
  }));
  CHECK(server.seqs() == std::vector<std::uint64_t>{1, 2, 3});
  fs::remove_all(crl_dir);
}

namespace {

// `name`.crt/.key in `dir`: an agent certificate of the test CA for vantage://eu-west/fra1/<name>
// whose notAfter is `seconds` from now (openssl ca, which alone takes an exact end date).
bool issue_short_lived(const fs::path& dir, const std::string& name, int seconds) {
  const Pki& pki = Pki::get();
  fs::create_directories(dir);
  {
    std::ofstream cnf(dir / "ca.cnf");
    cnf << "[ca]\ndefault_ca=d\n[d]\ndatabase=" << (dir / "index.txt").string() << "\nserial="
        << (dir / "serial").string() << "\nnew_certs_dir=" << dir.string()
        << "\ndefault_md=sha256\npolicy=p\nunique_subject=no\n[p]\ncommonName=supplied\n[ext]\n"
        << "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
        << "subjectAltName=URI:vantage://eu-west/fra1/" << name << "\n";
  }
  std::ofstream(dir / "index.txt", std::ios::trunc);
  std::ofstream(dir / "serial", std::ios::trunc) << "1000\n";
  std::string d(1, '\'');  // built in place: GCC 12 -O3 misreads "'" + std::string (-Wrestrict)
  d += dir.string();
  d += '\'';
  const std::string command =
      "cd " + d + " && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out " + name +
      ".key 2>/dev/null && openssl req -new -key " + name + ".key -subj /O=Vantage/CN=" + name + " -out " + name +
      ".csr && openssl ca -batch -config ca.cnf -cert '" + pki.file("ca.crt") + "' -keyfile '" + pki.file("ca.key") +
      "' -in " + name + ".csr -out " + name + ".crt -extensions ext -notext -enddate $(date -u -d '+" +
      std::to_string(seconds) + " seconds' +%y%m%d%H%M%SZ) >/dev/null 2>&1";
  return std::system(command.c_str()) == 0;
}

std::int64_t not_after_of(const std::string& cert) {
  auto context = platform::tls::test::make_context(platform::tls::TlsRole::kClient, Pki::get().file("ca.crt"),
                                                   cert, cert.substr(0, cert.size() - 4) + ".key");
  return context->certificate_not_after_s();
}

}  // namespace

TEST_CASE("the earliest agent-certificate expiry is over the sessions open now, and goes back up") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  Server server(IngestConfig{}, "earliest");
  CHECK(server.ingest->counters().agent_certificate_earliest_not_after_s == 0);
  const std::int64_t agent_1 = not_after_of(pki.file("agent-1.crt"));
  const std::int64_t agent_4 = not_after_of(pki.file("other-uri.crt"));  // 30 days: earlier
  REQUIRE(agent_4 < agent_1);

  Agent one;
  REQUIRE_FALSE(one.connect("127.0.0.1", server.endpoint));
  one.start_reading();
  REQUIRE_FALSE(one.send(hello_frame() + batch_frame(1)));
  REQUIRE(eventually([&] { return one.ack_count() == 1; }));
  CHECK(server.ingest->counters().agent_certificate_earliest_not_after_s == agent_1);
  {
    Agent four;
    four.context = platform::tls::test::make_context(platform::tls::TlsRole::kClient, pki.file("ca.crt"),
                                                     pki.file("other-uri.crt"), pki.file("other-uri.key"));
    REQUIRE_FALSE(four.connect("127.0.0.1", server.endpoint));
    four.start_reading();
    REQUIRE_FALSE(four.send(hello_frame("agent-4") + batch_frame(1, 1, "agent-4")));
    REQUIRE(eventually([&] { return four.ack_count() == 1; }));
    CHECK(server.ingest->counters().agent_certificate_earliest_not_after_s == agent_4);
  }
  // agent-4 left: the earliest is agent-1's again.
  CHECK(eventually([&] { return server.ingest->counters().agent_certificate_earliest_not_after_s == agent_1; }));
  // A certificate without a usable identity is refused and never counts.
  {
    Agent nobody;
    nobody.context = platform::tls::test::make_context(platform::tls::TlsRole::kClient, pki.file("ca.crt"),
                                                       pki.file("no-uri.crt"), pki.file("no-uri.key"));
    (void)nobody.connect("127.0.0.1", server.endpoint);
    CHECK(eventually([&] {
      return server.ingest->counters().rejects[static_cast<std::size_t>(Reject::kCertificate)] == 1;
    }));
    CHECK(server.ingest->counters().agent_certificate_earliest_not_after_s == agent_1);
  }
}

TEST_CASE("a CRL past its nextUpdate fails handshakes under its own reason, crl_expired") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  const fs::path crl_dir = pki.dir() / "crl-expiring-files";
  fs::create_directories(crl_dir);
  const std::int64_t now = static_cast<std::int64_t>(std::time(nullptr));
  const std::string crl = (crl_dir / "crl.der").string();
  // Long enough for the server to load it first, also under emulation.
  REQUIRE(platform::tls::test::write_crl(pki.dir().string(), crl, now - 60, now + 8));
  IngestConfig config;
  config.tls.crl_file = crl;
  Server server(std::move(config), "crl-expiring");
  // Wait until the CRL is past its nextUpdate (whole seconds, so one more).
  while (static_cast<std::int64_t>(std::time(nullptr)) <= now + 9) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  Agent agent;
  (void)agent.connect("127.0.0.1", server.endpoint);
  CHECK(eventually([&] {
    return server.ingest->counters().rejects[static_cast<std::size_t>(Reject::kCrlExpired)] == 1;
  }));
  CHECK(server.ingest->counters().rejects[static_cast<std::size_t>(Reject::kHandshake)] == 0);
  CHECK(server.ingest->counters().sessions_open == 0);
  fs::remove_all(crl_dir);
}

TEST_CASE("a session whose certificate passes its notAfter is closed by the periodic sweep") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  const fs::path dir = pki.dir() / "short-lived";
  // Long enough for the handshake, Hello and a batch before it expires, also under emulation.
  REQUIRE(issue_short_lived(dir, "short", 25));
  const std::string cert = (dir / "short.crt").string();
  const std::int64_t not_after = not_after_of(cert);
  IngestConfig config;
  config.refusal_summary_period = std::chrono::milliseconds(200);  // the sweep runs with it
  Server server(std::move(config), "short-lived-server");
  Agent agent;
  agent.context = platform::tls::test::make_context(platform::tls::TlsRole::kClient, pki.file("ca.crt"), cert,
                                                    (dir / "short.key").string());
  REQUIRE_FALSE(agent.connect("127.0.0.1", server.endpoint));
  agent.start_reading();
  REQUIRE_FALSE(agent.send(hello_frame("short") + batch_frame(1, 1, "short")));
  REQUIRE(eventually([&] { return agent.ack_count() == 1; }));
  CHECK(eventually([&] { return agent.closed(); }, std::chrono::seconds(90)));
  CHECK(static_cast<std::int64_t>(std::time(nullptr)) >= not_after);  // not before its time
  CHECK(server.ingest->counters().rejects[static_cast<std::size_t>(Reject::kCertificateExpired)] == 1);
  fs::remove_all(dir);
}

}  // namespace vantage::collector
