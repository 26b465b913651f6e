// The mesh's target list on the agent (agent/ship/target_list.hpp): a list is checked whole, merged
// under the configured targets, kept on disk and read back (a torn or corrupt file is ignored with
// a warning), and a TargetList frame reaching the shipper session is handed on while the session
// goes on.
#include <doctest/doctest.h>

#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "agent/ship/shipper_session.hpp"
#include "agent/ship/target_list.hpp"
#include "schemas/frame_codec.hpp"
#include "spool_test_util.hpp"
#include "vantage/telemetry_generated.h"

namespace ship = vantage::agent::ship;
namespace wire = vantage::wire;
using vantage::agent::ProbeTargetSpec;
using vantage::agent::probes::ProbeProtocol;

namespace {

struct Entry {
  std::string host = "192.0.2.10";
  std::uint16_t port = 8627;
  wire::Protocol protocol = wire::Protocol::UdpEcho;
  std::uint32_t interval_ms = 1000;
  std::uint16_t payload_size = 0;
  std::uint8_t dscp = 0;
  std::uint8_t paths = 0;
  std::string pop = "ams1";
  std::string agent_id;  // empty: an extra target, named by its address
};

// A TargetList Frame as the collector builds it (no length prefix).
std::vector<std::uint8_t> list_frame(std::uint64_t version, const std::vector<Entry>& entries) {
  flatbuffers::FlatBufferBuilder fbb;
  std::vector<flatbuffers::Offset<wire::MeshTarget>> targets;
  for (const Entry& e : entries) {
    targets.push_back(wire::CreateMeshTargetDirect(fbb, e.host.c_str(), e.port, e.protocol, e.interval_ms,
                                                   e.payload_size, e.dscp, e.paths, e.pop.c_str(),
                                                   e.agent_id.c_str()));
  }
  const auto list = wire::CreateTargetListDirect(fbb, version, &targets);
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, wire::Message::TargetList, list.Union()));
  return {fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize()};
}

std::string refusal(const std::vector<Entry>& entries, const ship::TargetListLimits& limits = {}) {
  const auto accepted = ship::accept_target_list(list_frame(7, entries), limits);
  REQUIRE_FALSE(accepted.has_value());
  return accepted.error();
}

ProbeTargetSpec local_udp(const std::string& address, std::uint16_t port, const std::string& label = {}) {
  ProbeTargetSpec t;
  t.protocol = ProbeProtocol::kUdpEcho;
  t.address = asio::ip::make_address(address);
  t.port = port;
  t.rate_per_s = 5;
  t.label = label.empty() ? vantage::agent::target_label(t.protocol, t.address, t.port) : label;
  return t;
}

}  // namespace

TEST_CASE("target list: a good list becomes probe targets") {
  Entry v6;
  v6.host = "2001:db8::7";
  v6.interval_ms = 100;
  v6.payload_size = 200;
  v6.dscp = 46;
  v6.paths = 16;
  Entry icmp;
  icmp.host = "game-1.example.net";
  icmp.protocol = wire::Protocol::Icmp;
  icmp.port = 0;
  icmp.agent_id = "";
  Entry tcp;
  tcp.host = "198.51.100.4";
  tcp.protocol = wire::Protocol::TcpConnect;
  tcp.port = 443;
  tcp.interval_ms = 4000;
  Entry agent;  // another agent's reflector: named "POP/AGENT"
  agent.agent_id = "ams1-edge-01";
  const auto frame = list_frame(42, {agent, v6, icmp, tcp});
  const auto accepted = ship::accept_target_list(frame);
  REQUIRE_MESSAGE(accepted.has_value(), accepted.error());
  const ship::AcceptedTargetList& list = accepted.value();
  CHECK(list.version == 42);
  CHECK(list.frame == frame);
  REQUIRE(list.targets.size() == 4);
  CHECK(list.targets[0].spec.label == "ams1/ams1-edge-01");
  CHECK(list.targets[0].spec.rate_per_s == doctest::Approx(1.0));
  CHECK(list.targets[0].paths == 1);
  CHECK(list.targets[0].pop == "ams1");
  CHECK(list.targets[0].agent_id == "ams1-edge-01");
  CHECK(list.targets[1].spec.label == "[2001:db8::7]:8627");
  CHECK(list.targets[1].spec.rate_per_s == doctest::Approx(10.0));
  CHECK(list.targets[1].spec.payload_size == 200);
  CHECK(list.targets[1].spec.dscp == 46);
  CHECK(list.targets[1].paths == 16);
  CHECK(list.targets[1].spec.paths == 16);
  CHECK(list.targets[0].spec.paths == 1);
  CHECK(list.targets[2].spec.protocol == ProbeProtocol::kIcmpEcho);
  CHECK(list.targets[2].spec.host == "game-1.example.net");  // a name: resolved in the background
  CHECK(list.targets[2].spec.label == "game-1.example.net");
  CHECK(list.targets[3].spec.protocol == ProbeProtocol::kTcpConnect);
  CHECK(list.targets[3].spec.rate_per_s == doctest::Approx(0.25));
}

TEST_CASE("target list: a repeated target is probed once") {
  Entry mapped;
  mapped.host = "::ffff:192.0.2.10";  // the same IPv4 address, written as IPv6
  const auto accepted = ship::accept_target_list(list_frame(3, {Entry{}, Entry{}, mapped}));
  REQUIRE(accepted.has_value());
  CHECK(accepted.value().targets.size() == 1);
  CHECK(accepted.value().duplicates == 2);
}

TEST_CASE("target list: a bad string refuses the whole list and names the field") {
  Entry bad_pop;
  bad_pop.pop = "fra\n1";
  CHECK(refusal({Entry{}, bad_pop}) == "TargetList.targets[1].pop \"fra\\n1\": control character U+000A at byte 3");
  Entry bad_agent;
  bad_agent.agent_id = std::string(65, 'a');
  CHECK(refusal({bad_agent}).starts_with("TargetList.targets[0].agent_id"));
  Entry bad_utf8;
  bad_utf8.host = "\xff\xfe";
  CHECK(refusal({bad_utf8}).starts_with("TargetList.targets[0].host"));
  Entry long_host;
  long_host.host = std::string(129, 'a');
  CHECK(refusal({long_host}).starts_with("TargetList.targets[0].host"));
}

TEST_CASE("target list: a host must be an IP address or a DNS name that can be probed") {
  for (const std::string host : {"", "a b", "-bad.example", "bad-.example", "a..b", "x/y", "0.0.0.0", "::",
                                 "224.0.0.1", "255.255.255.255"}) {
    CAPTURE(host);
    Entry e;
    e.host = host;
    CHECK(refusal({e}).starts_with("TargetList.targets[0].host"));
  }
}

TEST_CASE("target list: protocol, port, interval, size, DSCP and paths are bounded") {
  Entry e;
  e.protocol = static_cast<wire::Protocol>(9);
  CHECK(refusal({e}) == "TargetList.targets[0].protocol: unknown protocol 9");
  e = Entry{};
  e.port = 0;
  CHECK(refusal({e}) == "TargetList.targets[0].port: 0 (expected 1..65535)");
  e = Entry{};
  e.protocol = wire::Protocol::Icmp;
  CHECK(refusal({e}) == "TargetList.targets[0].port: an ICMP target has no port (got 8627)");
  e = Entry{};
  e.interval_ms = 0;  // faster than the config's 1000 probes per second
  CHECK(refusal({e}) == "TargetList.targets[0].interval_ms: 0 (expected 1..3600000)");
  e.interval_ms = 3'600'001;
  CHECK(refusal({e}).starts_with("TargetList.targets[0].interval_ms"));
  e = Entry{};
  e.payload_size = 9000;
  CHECK(refusal({e}) == "TargetList.targets[0].payload_size: 9000 (expected 0..8972)");
  e = Entry{};
  e.dscp = 64;
  CHECK(refusal({e}) == "TargetList.targets[0].dscp: 64 (expected 0..63)");
  e = Entry{};
  e.paths = 65;
  CHECK(refusal({e}) == "TargetList.targets[0].paths: 65 (expected 1..64)");
}

TEST_CASE("target list: too many targets, version 0, or not a TargetList are refused") {
  ship::TargetListLimits limits;
  limits.max_targets = 3;
  std::vector<Entry> four(4);
  for (std::size_t i = 0; i < four.size(); ++i) four[i].host = "192.0.2." + std::to_string(i + 1);
  CHECK(refusal(four, limits) == "TargetList holds 4 targets, more than 3");
  CHECK(ship::accept_target_list(list_frame(7, {four[0], four[1], four[2]}), limits).has_value());
  // The default bound is 20,000.
  std::vector<Entry> many(20'001);
  for (std::size_t i = 0; i < many.size(); ++i) {
    many[i].host = "10." + std::to_string(i / 65536) + "." + std::to_string(i / 256 % 256) + "." +
                   std::to_string(i % 256);
  }
  CHECK(refusal(many) == "TargetList holds 20001 targets, more than 20000");

  const auto zero = ship::accept_target_list(list_frame(0, {Entry{}}));
  REQUIRE_FALSE(zero.has_value());
  CHECK(zero.error() == "TargetList.version is 0 (0 means no list)");
  std::vector<std::uint8_t> garbage(64, 0x5a);
  CHECK_FALSE(ship::accept_target_list(garbage).has_value());
  flatbuffers::FlatBufferBuilder fbb;
  wire::AckBuilder ack(fbb);
  ack.add_seq(1);
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, wire::Message::Ack, ack.Finish().Union()));
  const auto not_list = ship::accept_target_list({fbb.GetBufferPointer(), fbb.GetSize()});
  REQUIRE_FALSE(not_list.has_value());
  CHECK(not_list.error() == "the Frame holds no TargetList");
}

TEST_CASE("target list: local targets win the merge and are never removed") {
  Entry same_key;  // 192.0.2.10:8627 over UDP, also configured locally
  Entry same_label;
  same_label.host = "192.0.2.20";
  Entry tcp_same_address;  // another protocol and port to a local address: a different target
  tcp_same_address.protocol = wire::Protocol::TcpConnect;
  tcp_same_address.port = 443;
  Entry fresh;
  fresh.host = "203.0.113.9";
  const auto accepted = ship::accept_target_list(list_frame(5, {same_key, same_label, tcp_same_address, fresh}));
  REQUIRE(accepted.has_value());
  const std::vector<ProbeTargetSpec> local = {local_udp("192.0.2.10", 8627),
                                              local_udp("198.51.100.1", 9000, "192.0.2.20:8627")};
  const ship::MergedTargets merged = ship::merge_targets(local, &accepted.value());
  CHECK(merged.from_mesh == 2);
  CHECK(merged.shadowed == 2);
  REQUIRE(merged.targets.size() == 4);
  CHECK(merged.targets[0].rate_per_s == 5);  // the local one, with its own settings
  CHECK(merged.targets[1].label == "192.0.2.20:8627");
  CHECK(merged.targets[1].port == 9000);
  CHECK(merged.targets[2].protocol == ProbeProtocol::kTcpConnect);
  CHECK(merged.targets[3].label == "203.0.113.9:8627");

  // An empty list leaves exactly the local targets.
  const auto empty = ship::accept_target_list(list_frame(6, {}));
  REQUIRE(empty.has_value());
  const ship::MergedTargets alone = ship::merge_targets(local, &empty.value());
  CHECK(alone.from_mesh == 0);
  CHECK(ship::same_targets(alone.targets, local));
  CHECK(ship::same_targets(ship::merge_targets(local, nullptr).targets, local));
  CHECK_FALSE(ship::same_targets(merged.targets, local));
}

TEST_CASE("target list: kept on disk, read back, a torn or corrupt file ignored with a warning") {
  spool_test::TempDir dir("/dev/shm");
  std::vector<std::string> warnings;
  CHECK_FALSE(ship::load_target_list(dir.path(), warnings).has_value());  // none yet: no warning
  CHECK(warnings.empty());

  Entry second;
  second.host = "2001:db8::1";
  const auto frame = list_frame(9, {Entry{}, second});
  REQUIRE(ship::save_target_list(dir.path(), frame));
  const std::filesystem::path file = dir.path() / ship::kTargetListFileName;
  CHECK_FALSE(std::filesystem::exists(dir.path() / "target-list.tmp"));
  const auto loaded = ship::load_target_list(dir.path(), warnings);
  REQUIRE(loaded.has_value());
  CHECK(warnings.empty());
  CHECK(loaded->version == 9);
  CHECK(loaded->targets.size() == 2);
  CHECK(loaded->frame == frame);

  // A newer list replaces it whole.
  REQUIRE(ship::save_target_list(dir.path(), list_frame(10, {second})));
  CHECK(ship::load_target_list(dir.path(), warnings)->version == 10);

  const auto size = std::filesystem::file_size(file);
  SUBCASE("torn") {
    std::filesystem::resize_file(file, size - 5);
    CHECK_FALSE(ship::load_target_list(dir.path(), warnings).has_value());
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0].find("torn") != std::string::npos);
    CHECK(warnings[0].find("ignored") != std::string::npos);
  }
  SUBCASE("a flipped byte") {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size - 3));
    f.put('\x7f');
    f.close();
    CHECK_FALSE(ship::load_target_list(dir.path(), warnings).has_value());
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0].find("CRC mismatch") != std::string::npos);
  }
  SUBCASE("not a list file") {
    std::ofstream(file, std::ios::trunc) << "hello";
    CHECK_FALSE(ship::load_target_list(dir.path(), warnings).has_value());
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0].find("bad header") != std::string::npos);
  }
  SUBCASE("a list the limits now refuse") {
    ship::TargetListLimits limits;
    limits.max_targets = 0;
    CHECK_FALSE(ship::load_target_list(dir.path(), warnings, limits).has_value());
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0].find("more than 0") != std::string::npos);
  }
}

namespace {

// Just enough transport for one session: the writes it asks for and the timers it arms.
class RecordingIo final : public ship::SessionIo {
 public:
  std::vector<std::vector<std::uint8_t>> writes;
  int closes = 0;
  void connect(const ship::CollectorAddress&) override {}
  void write(std::span<const std::uint8_t> bytes) override { writes.emplace_back(bytes.begin(), bytes.end()); }
  void close() override { ++closes; }
  void arm_timer(ship::SessionTimer, ship::SessionClock::time_point) override {}
  void cancel_timer(ship::SessionTimer) override {}
};

struct SessionHarness {
  explicit SessionHarness(const std::function<void(ship::ShipperConfig&)>& tweak = {}) {
    config.identity = {"fra1-edge-07", "eu-central", "fra1"};
    config.collectors = {{"127.0.0.1", 7443, ""}};
    config.capabilities = ship::kCapabilityUdpEcho | ship::kCapabilityTargetList;
    config.spool.dir = dir.path();
    config.reflectors = {asio::ip::udp::endpoint(asio::ip::make_address("192.0.2.1"), 8627),
                         asio::ip::udp::endpoint(asio::ip::make_address("2001:db8::1"), 8628)};
    config.target_list_version = 4;
    config.on_target_list = [this](ship::AcceptedTargetList list) { received.push_back(std::move(list)); };
    if (tweak) tweak(config);
    std::vector<std::string> warnings;
    auto spool = ship::Spool::open(config.spool, warnings);
    REQUIRE(spool.has_value());
    session = std::make_unique<ship::ShipperSession>(config, std::move(spool).value(), io,
                                                     [] { return ship::SessionClock::time_point{}; }, 1);
    session->start();
    session->on_connected();
    session->on_session("TLSv1.3", false);
  }

  void send(const std::vector<std::uint8_t>& flatbuffer) {
    std::vector<std::uint8_t> bytes;
    wire::append_frame(bytes, flatbuffer);
    session->on_bytes(bytes);
  }

  spool_test::TempDir dir{"/dev/shm"};
  ship::ShipperConfig config;
  RecordingIo io;
  std::vector<ship::AcceptedTargetList> received;
  std::unique_ptr<ship::ShipperSession> session;
};

}  // namespace

TEST_CASE("target list: Hello announces the reflectors, the list version and the capability") {
  SessionHarness h;
  REQUIRE(h.io.writes.size() == 1);
  wire::FrameReader reader;
  reader.feed(h.io.writes[0]);
  REQUIRE(reader.next() == wire::FrameStatus::kFrame);
  const wire::Hello* hello = reader.frame()->message_as_Hello();
  REQUIRE(hello != nullptr);
  CHECK((hello->capabilities() & wire::kCapabilityTargetList) != 0);
  CHECK(hello->target_list_version() == 4);
  REQUIRE(hello->reflectors() != nullptr);
  REQUIRE(hello->reflectors()->size() == 2);
  const wire::ReflectorAddress* v4 = hello->reflectors()->Get(0);
  const std::array<std::uint8_t, 16> mapped = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1};
  CHECK(std::equal(mapped.begin(), mapped.end(), v4->ip()->begin()));
  CHECK(v4->port() == 8627);
  const wire::ReflectorAddress* v6 = hello->reflectors()->Get(1);
  CHECK(asio::ip::make_address_v6("2001:db8::1").to_bytes()[0] == v6->ip()->Get(0));
  CHECK(v6->ip()->Get(15) == 1);
  CHECK(v6->port() == 8628);
}

TEST_CASE("target list: the session hands a good list on and refuses a bad one without closing") {
  SessionHarness h;
  const auto frame = list_frame(12, {Entry{}});
  h.send(frame);
  REQUIRE(h.received.size() == 1);
  CHECK(h.received[0].version == 12);
  CHECK(h.received[0].frame == frame);
  CHECK(h.session->counters().target_lists_accepted == 1);

  Entry bad;
  bad.pop = "a\tb";
  h.send(list_frame(13, {bad}));
  CHECK(h.received.size() == 1);
  const auto c = h.session->counters();
  CHECK(c.target_lists_refused == 1);
  CHECK(c.last_target_list_error.starts_with("TargetList.targets[0].pop"));
  CHECK(c.connected);  // the session goes on
  CHECK(h.io.closes == 0);

  // An Ack after it is still read.
  flatbuffers::FlatBufferBuilder fbb;
  wire::AckBuilder ack(fbb);
  ack.add_seq(0);
  ack.add_status(wire::AckStatus::Stored);
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, wire::Message::Ack, ack.Finish().Union()));
  h.send({fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize()});
  CHECK(h.session->counters().connected);
}

TEST_CASE("target list: an agent that refuses lists does not take one") {
  SessionHarness h([](ship::ShipperConfig& c) { c.capabilities &= ~ship::kCapabilityTargetList; });
  h.send(list_frame(12, {Entry{}}));
  CHECK(h.received.empty());
  CHECK(h.session->counters().target_lists_refused == 1);
  CHECK(h.session->counters().connected);
}

TEST_CASE("target list: each batch carries the list version its interval ran") {
  SessionHarness h;
  vantage::agent::MeasurementReport r;
  r.wall_start_ns = 1'700'000'000'000'000'000;
  r.wall_end_ns = r.wall_start_ns + 1'000'000'000;
  h.session->submit(r, {}, 12);
  h.session->on_write_done();  // the Hello: the batch goes next
  REQUIRE(h.io.writes.size() == 2);
  wire::FrameReader reader;
  reader.feed(h.io.writes[1]);
  REQUIRE(reader.next() == wire::FrameStatus::kFrame);
  const wire::Batch* batch = reader.frame()->message_as_Batch();
  REQUIRE(batch != nullptr);
  REQUIRE(batch->self() != nullptr);
  CHECK(batch->self()->target_list_version() == 12);
}
