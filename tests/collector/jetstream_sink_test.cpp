// Tests for JetStreamSink against a real `nats-server -js` on loopback (its own store directory
// and port): subjects, headers and payload as published, de-duplication by Nats-Msg-Id (the batch
// key: agent, spool incarnation and seq), a server
// that is down at start, killed (-9) and restarted mid-run, and an existing stream's settings.
#include <doctest/doctest.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "collector/store/jetstream_sink.hpp"
#include "schemas/frame_codec.hpp"
#include "tests/support/wire_frames.hpp"
#include "vantage/telemetry_generated.h"

extern char** environ;

namespace {

namespace wire = vantage::wire;
using namespace vantage::collector::store;
using namespace vantage::test;
using Clock = std::chrono::steady_clock;

std::string find_nats_server() {
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/bin:/usr/sbin";
  for (std::size_t start = 0; start <= dirs.size();) {
    const std::size_t end = dirs.find(':', start);
    const std::string candidate =
        dirs.substr(start, end == std::string::npos ? std::string::npos : end - start) + "/nats-server";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return {};
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

bool port_open(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

// nats-server -js on 127.0.0.1 with a store directory of its own; killed with SIGKILL.
class NatsServer {
 public:
  NatsServer() : binary_(find_nats_server()), port_(free_port()) {
    char pattern[] = "/tmp/vantage-nats-XXXXXX";
    REQUIRE(::mkdtemp(pattern) != nullptr);
    dir_ = pattern;
  }
  ~NatsServer() {
    kill9();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  NatsServer(const NatsServer&) = delete;
  NatsServer& operator=(const NatsServer&) = delete;

  bool available() const { return !binary_.empty(); }
  std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }

  void start() {
    const std::string port = std::to_string(port_), store = dir_ + "/js";
    std::vector<std::string> args = {binary_, "-js", "-a",  "127.0.0.1", "-p",
                                     port,    "-sd", store, "-l",        dir_ + "/log"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    REQUIRE(::posix_spawn(&pid_, binary_.c_str(), nullptr, nullptr, argv.data(), environ) == 0);
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    while (!port_open(port_)) {
      REQUIRE(Clock::now() < deadline);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  void kill9() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  std::string binary_;
  int port_;
  std::string dir_;
  pid_t pid_ = -1;
};

// A verified frame holding one Batch, as the ingest hands it over. `in` points into `bytes`, so a
// copy would point into the original: move-only (a moved vector keeps its buffer).
struct Frame {
  Bytes bytes;
  IncomingBatch in;
  Frame() = default;
  Frame(const Frame&) = delete;
  Frame& operator=(const Frame&) = delete;
  Frame(Frame&&) = default;
  Frame& operator=(Frame&&) = default;
};

Frame make_frame(const std::string& agent, std::uint64_t seq, const std::string& region = "eu-central") {
  flatbuffers::FlatBufferBuilder fbb;
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency;
  latency.push_back(wire::CreateLatencySummaryDirect(fbb, "t1", wire::Protocol::UdpEcho, 10, 10));
  Frame f;
  f.bytes = finish_batch(
      fbb, wire::CreateBatchDirect(fbb, agent.c_str(), seq, 1'000, 2'000, region.c_str(), "fra1", &latency));
  const wire::Frame* frame = wire::verify_frame(f.bytes);
  REQUIRE(frame != nullptr);
  f.in.batch = frame->message_as_Batch();
  f.in.agent_id = f.in.batch->agent_id()->string_view();
  f.in.region = f.in.batch->region()->string_view();
  f.in.pop = f.in.batch->pop()->string_view();
  f.in.frame = f.bytes;
  return f;
}

std::vector<IncomingBatch> inputs(const std::vector<Frame>& frames) {
  std::vector<IncomingBatch> out;
  for (const Frame& f : frames) out.push_back(f.in);
  return out;
}

JetStreamOptions options_for(const NatsServer& server, const std::string& stream = "TEST") {
  JetStreamOptions o;
  o.servers = {server.url()};
  o.stream = stream;
  o.subject_prefix = "vantage.test";
  o.publish_timeout = std::chrono::milliseconds(2000);
  o.connect_timeout = std::chrono::milliseconds(1000);
  o.reconnect_wait = std::chrono::milliseconds(100);
  return o;
}

// Reads the stream back with a plain connection: message n (1-based) of the stream.
class Reader {
 public:
  explicit Reader(const std::string& url) {
    REQUIRE(natsConnection_ConnectTo(&nc_, url.c_str()) == NATS_OK);
    REQUIRE(natsConnection_JetStream(&js_, nc_, nullptr) == NATS_OK);
  }
  ~Reader() {
    jsCtx_Destroy(js_);
    natsConnection_Destroy(nc_);
  }
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  std::uint64_t count(const std::string& stream) {
    jsStreamInfo* si = nullptr;
    REQUIRE(js_GetStreamInfo(&si, js_, stream.c_str(), nullptr, nullptr) == NATS_OK);
    const std::uint64_t n = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    return n;
  }
  natsMsg* get(const std::string& stream, std::uint64_t seq) {
    natsMsg* m = nullptr;
    REQUIRE(js_GetMsg(&m, js_, stream.c_str(), seq, nullptr, nullptr) == NATS_OK);
    return m;
  }
  jsCtx* js() { return js_; }

 private:
  natsConnection* nc_ = nullptr;
  jsCtx* js_ = nullptr;
};

std::string header(natsMsg* m, const char* key) {
  const char* v = nullptr;
  return natsMsgHeader_Get(m, key, &v) == NATS_OK && v != nullptr ? v : "";
}

#define SKIP_WITHOUT_NATS_SERVER(server)                                                    \
  if (!(server).available()) {                                                              \
    MESSAGE("SKIPPED: nats-server is not installed (toolchains/bootstrap.sh installs it)"); \
    return;                                                                                 \
  }

}  // namespace

TEST_CASE(
    "a group is published with its subject and headers and the frame bytes and a resend is a duplicate") {
  NatsServer server;
  SKIP_WITHOUT_NATS_SERVER(server);
  server.start();
  auto sink = JetStreamSink::connect(options_for(server));
  REQUIRE_MESSAGE(sink, sink.error());
  std::vector<Frame> frames;
  for (std::uint64_t seq = 1; seq <= 3; ++seq) frames.push_back(make_frame("a1", seq));
  frames.push_back(make_frame("a2", 1, "ap-south"));
  auto stored = (*sink)->store(inputs(frames));
  REQUIRE_MESSAGE(stored, stored.error());
  CHECK(*stored == std::vector<StoreOutcome>(4, StoreOutcome::kStored));

  Reader reader(server.url());
  REQUIRE(reader.count("TEST") == 4);
  natsMsg* m = reader.get("TEST", 4);
  CHECK(std::string(natsMsg_GetSubject(m)) == "vantage.test.ap-south");
  CHECK(header(m, "Vantage-Agent") == "a2");
  CHECK(header(m, "Vantage-Region") == "ap-south");
  CHECK(header(m, "Vantage-Pop") == "fra1");
  CHECK(header(m, "Vantage-Seq") == "1");
  CHECK(header(m, "Nats-Msg-Id") == "a2/1");
  const Bytes payload(reinterpret_cast<const std::uint8_t*>(natsMsg_GetData(m)),
                      reinterpret_cast<const std::uint8_t*>(natsMsg_GetData(m)) + natsMsg_GetDataLength(m));
  CHECK(payload == frames[3].bytes);
  CHECK(wire::verify_frame(payload) != nullptr);
  natsMsg_Destroy(m);

  // The same (agent, seq) again, beside a new one: JetStream drops the copy by its Nats-Msg-Id.
  std::vector<Frame> again;
  again.push_back(make_frame("a1", 2));
  again.push_back(make_frame("a1", 4));
  auto second = (*sink)->store(inputs(again));
  REQUIRE_MESSAGE(second, second.error());
  CHECK(*second == std::vector<StoreOutcome>{StoreOutcome::kDuplicate, StoreOutcome::kStored});
  CHECK(reader.count("TEST") == 5);
}

TEST_CASE("the message id is the batch key: the same seq under another incarnation is a new message") {
  NatsServer server;
  SKIP_WITHOUT_NATS_SERVER(server);
  server.start();
  auto sink = JetStreamSink::connect(options_for(server));
  REQUIRE_MESSAGE(sink, sink.error());
  const Incarnation first{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 0, 0, 0, 0, 0, 0, 0x01};
  const Incarnation reinstalled{0xfe, 0xdc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02};
  std::vector<Frame> frames;
  for (const Incarnation& incarnation : {first, reinstalled}) {
    for (std::uint64_t seq = 1; seq <= 2; ++seq) {
      frames.push_back(make_frame("a1", seq));
      frames.back().in.incarnation = incarnation;
    }
  }
  auto stored = (*sink)->store(inputs(frames));
  REQUIRE_MESSAGE(stored, stored.error());
  CHECK(*stored == std::vector<StoreOutcome>(4, StoreOutcome::kStored));

  Reader reader(server.url());
  REQUIRE(reader.count("TEST") == 4);
  natsMsg* m = reader.get("TEST", 3);
  CHECK(header(m, "Vantage-Seq") == "1");
  CHECK(header(m, "Vantage-Incarnation") == "fedc0000000000000000000000000002");
  CHECK(header(m, "Nats-Msg-Id") == "a1/fedc0000000000000000000000000002-1");
  natsMsg_Destroy(m);

  // A resend under the same incarnation is JetStream's duplicate; the legacy incarnation (an
  // agent that sends none) is a key of its own, with the id older collectors gave it.
  std::vector<Frame> again;
  again.push_back(make_frame("a1", 2));
  again.back().in.incarnation = reinstalled;
  again.push_back(make_frame("a1", 2));
  auto second = (*sink)->store(inputs(again));
  REQUIRE_MESSAGE(second, second.error());
  CHECK(*second == std::vector<StoreOutcome>{StoreOutcome::kDuplicate, StoreOutcome::kStored});
  REQUIRE(reader.count("TEST") == 5);
  m = reader.get("TEST", 5);
  CHECK(header(m, "Nats-Msg-Id") == "a1/2");
  CHECK(header(m, "Vantage-Incarnation") == "00000000000000000000000000000000");
  natsMsg_Destroy(m);
}

TEST_CASE("message ids: the legacy form for the all-zero incarnation, distinct forms otherwise") {
  const Incarnation some{0xab, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xcd};
  CHECK(message_id("fra1-edge-01", kLegacyIncarnation, 42) == "fra1-edge-01/42");
  CHECK(message_id("fra1-edge-01", some, 42) == "fra1-edge-01/ab0000000000000000000000000000cd-42");
  // The part after the last '/' tells the forms apart, whatever the agent id holds.
  CHECK(message_id("a/ab0000000000000000000000000000cd", kLegacyIncarnation, 42) !=
        message_id("a", some, 42));
}

TEST_CASE("a server down at start then killed and restarted: bounded failures and then stored again") {
  NatsServer server;
  SKIP_WITHOUT_NATS_SERVER(server);
  // Down at start: the sink is made anyway and fails calls quickly.
  auto sink = JetStreamSink::connect(options_for(server));
  REQUIRE_MESSAGE(sink, sink.error());
  JetStreamSink& s = **sink;
  std::vector<Frame> frames;
  frames.push_back(make_frame("a1", 1));
  auto t0 = Clock::now();
  auto down = s.store(inputs(frames));
  CHECK_FALSE(down);
  CHECK(down.error().find("not connected") != std::string::npos);
  CHECK(Clock::now() - t0 < std::chrono::milliseconds(500));

  server.start();
  auto deadline = Clock::now() + std::chrono::seconds(15);
  for (;;) {
    auto r = s.store(inputs(frames));
    if (r && (*r)[0] == StoreOutcome::kStored) break;
    REQUIRE(Clock::now() < deadline);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }

  // kill -9 mid-run: every call returns within the publish timeout and fails (whole call or
  // each batch); after the restart (same store directory) the old message is still there and
  // new ones are stored.
  server.kill9();
  std::vector<Frame> during;
  during.push_back(make_frame("a1", 2));
  during.push_back(make_frame("a1", 3));
  for (int i = 0; i < 5; ++i) {
    t0 = Clock::now();
    auto failed = s.store(inputs(during));
    CHECK(Clock::now() - t0 < std::chrono::milliseconds(3000));
    if (failed) CHECK(*failed == std::vector<StoreOutcome>(2, StoreOutcome::kFailed));
  }
  server.start();
  deadline = Clock::now() + std::chrono::seconds(15);
  for (;;) {
    auto again = s.store(inputs(during));
    if (again && (*again)[0] != StoreOutcome::kFailed && (*again)[1] != StoreOutcome::kFailed)
      break;
    REQUIRE(Clock::now() < deadline);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  Reader reader(server.url());
  CHECK(reader.count("TEST") == 3);
}

TEST_CASE("an existing stream with other settings is used as it is") {
  NatsServer server;
  SKIP_WITHOUT_NATS_SERVER(server);
  server.start();
  {
    Reader reader(server.url());
    jsStreamConfig config;
    jsStreamConfig_Init(&config);
    const char* subjects[] = {"vantage.test.>", "other.>"};
    config.Name = "OPS";
    config.Subjects = subjects;
    config.SubjectsLen = 2;
    config.Storage = js_MemoryStorage;
    REQUIRE(js_AddStream(nullptr, reader.js(), &config, nullptr, nullptr) == NATS_OK);
  }
  auto sink = JetStreamSink::connect(options_for(server, "OPS"));
  REQUIRE_MESSAGE(sink, sink.error());
  std::vector<Frame> frames;
  frames.push_back(make_frame("a1", 1));
  auto r = (*sink)->store(inputs(frames));
  REQUIRE_MESSAGE(r, r.error());
  CHECK((*r)[0] == StoreOutcome::kStored);
  Reader reader(server.url());
  CHECK(reader.count("OPS") == 1);
}

TEST_CASE("no server URL is a start-up error") {
  JetStreamOptions o;
  auto sink = JetStreamSink::connect(o);
  CHECK_FALSE(sink);
  CHECK(sink.error().find("no NATS server") != std::string::npos);
}
