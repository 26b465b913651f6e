// The peer-text rules on whole messages: every string of a Hello and of a Batch (ids, region,
// PoP, version, arch, targets, interface and sensor names) is checked, and the reason names the
// field and shows its value escaped.
#include "schemas/peer_text.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace {

using vantage::platform::TextFault;
namespace wire = vantage::wire;

struct HelloText {
  std::string agent_id = "a1", region = "eu-central", pop = "fra1", version = "1.4.0", arch = "amd64";
};

std::vector<std::uint8_t> hello_buffer(const HelloText& h) {
  flatbuffers::FlatBufferBuilder fbb;
  const auto hello = wire::CreateHello(fbb, 1, fbb.CreateString(h.agent_id), fbb.CreateString(h.region),
                                       fbb.CreateString(h.pop), fbb.CreateString(h.version),
                                       fbb.CreateString(h.arch));
  fbb.Finish(hello);
  return {fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize()};
}

struct BatchText {
  std::string agent_id = "a1", region = "eu-central", pop = "fra1";
  std::vector<std::string> targets = {"fra1-edge", "192.0.2.1:8627"};
  std::string load_arch = "amd64";
  std::vector<std::string> interfaces = {"lo", "eth0"};
  std::vector<std::string> sensors = {"thermal_zone0/x86_pkg_temp"};
};

std::vector<std::uint8_t> batch_buffer(const BatchText& b) {
  flatbuffers::FlatBufferBuilder fbb;
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency;
  for (const std::string& t : b.targets) {
    latency.push_back(wire::CreateLatencySummary(fbb, fbb.CreateString(t)));
  }
  std::vector<flatbuffers::Offset<wire::NetInterface>> net;
  for (const std::string& n : b.interfaces) net.push_back(wire::CreateNetInterface(fbb, fbb.CreateString(n)));
  std::vector<flatbuffers::Offset<wire::Temperature>> temperatures;
  for (const std::string& n : b.sensors) temperatures.push_back(wire::CreateTemperature(fbb, fbb.CreateString(n), 40.0f));
  const auto load = wire::CreateLoadSample(fbb, 0, fbb.CreateString(b.load_arch), 0, nullptr, nullptr, nullptr,
                                           fbb.CreateVector(net), fbb.CreateVector(temperatures));
  std::vector<flatbuffers::Offset<wire::LoadSample>> loads{load};
  const auto batch = wire::CreateBatch(fbb, fbb.CreateString(b.agent_id), 7, 0, 0, fbb.CreateString(b.region),
                                       fbb.CreateString(b.pop), fbb.CreateVector(latency), fbb.CreateVector(loads));
  fbb.Finish(batch);
  return {fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize()};
}

std::optional<wire::PeerTextFault> check(const HelloText& h) {
  const auto buffer = hello_buffer(h);
  return wire::check_hello_text(*flatbuffers::GetRoot<wire::Hello>(buffer.data()));
}

std::optional<wire::PeerTextFault> check(const BatchText& b) {
  const auto buffer = batch_buffer(b);
  return wire::check_batch_text(*flatbuffers::GetRoot<wire::Batch>(buffer.data()));
}

}  // namespace

TEST_CASE("peer text: a plain Hello and Batch pass, and so do hostile but valid names") {
  CHECK_FALSE(check(HelloText{}));
  CHECK_FALSE(check(BatchText{}));
  BatchText b;
  b.targets = {"\"quoted\"", "</script><img src=x onerror=alert(1)>", "\xe2\x80\x8f\xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d",
               "a\xe2\x80\xae" "evil", "\xf0\x9f\x9a\x80-rocket", std::string(128, 't')};
  CHECK_FALSE(check(b));
}

TEST_CASE("peer text: every Hello string is checked, with the field in the reason") {
  HelloText h;
  h.agent_id = "a1\nforged: line";
  auto fault = check(h);
  REQUIRE(fault);
  CHECK(fault->fault == TextFault::kControlCharacter);
  CHECK(fault->reason == "Hello.agent_id \"a1\\nforged: line\": control character U+000A at byte 2");
  h = {};
  h.region = "eu\xff";
  fault = check(h);
  REQUIRE(fault);
  CHECK(fault->fault == TextFault::kInvalidUtf8);
  CHECK(fault->reason == "Hello.region \"eu\\xFF\": invalid UTF-8 at byte 2");
  h = {};
  h.pop = std::string(65, 'p');
  fault = check(h);
  REQUIRE(fault);
  CHECK(fault->fault == TextFault::kTooLong);
  CHECK(fault->reason.find("Hello.pop \"pppp") == 0);
  CHECK(fault->reason.find("...\": 65 bytes, over the limit of 64") != std::string::npos);
  h = {};
  h.version = "1.0\x1b[2J";
  CHECK(check(h)->reason.starts_with("Hello.software_version"));
  h = {};
  h.arch = std::string(33, 'x');
  CHECK(check(h)->reason.starts_with("Hello.arch"));
}

TEST_CASE("peer text: every Batch string is checked, down to sensor names") {
  BatchText b;
  b.agent_id = "a\x7f";
  CHECK(check(b)->reason.starts_with("Batch.agent_id"));
  b = {};
  b.region = "\xc0\xaf";
  CHECK(check(b)->reason.starts_with("Batch.region"));
  b = {};
  b.pop = "\xc2\x85";
  CHECK(check(b)->fault == TextFault::kControlCharacter);
  b = {};
  b.targets[1] = "x\xed\xa0\x80";  // a surrogate
  auto fault = check(b);
  REQUIRE(fault);
  CHECK(fault->fault == TextFault::kInvalidUtf8);
  CHECK(fault->reason == "Batch.latency[1].target \"x\\xED\\xA0\\x80\": invalid UTF-8 at byte 1");
  b = {};
  b.targets[0] = std::string(129, 't');
  CHECK(check(b)->fault == TextFault::kTooLong);
  b = {};
  b.load_arch = "amd\t64";
  CHECK(check(b)->reason.starts_with("Batch.load[0].arch"));
  b = {};
  b.interfaces[1] = "eth\r0";
  CHECK(check(b)->reason.starts_with("Batch.load[0].net[1].name \"eth\\r0\""));
  b = {};
  b.sensors[0] = "zone\xf4\x90\x80\x80";
  CHECK(check(b)->reason.starts_with("Batch.load[0].temperatures[0].sensor"));
}

TEST_CASE("peer text: the bounds per kind") {
  CHECK(wire::max_bytes(wire::PeerText::kAgentId) == 64);
  CHECK(wire::max_bytes(wire::PeerText::kArch) == 32);
  CHECK(wire::max_bytes(wire::PeerText::kTarget) == 128);
  CHECK_FALSE(wire::check_peer_text("x", std::string(64, 'a'), wire::PeerText::kRegion));
  CHECK(wire::check_peer_text("x", std::string(65, 'a'), wire::PeerText::kRegion));
}

TEST_CASE("peer text: to_peer_text keeps good names and makes any other pass") {
  CHECK(wire::to_peer_text("eth0", wire::PeerText::kInterface) == "eth0");
  CHECK(wire::to_peer_text("\xe2\x80\x8fwlan", wire::PeerText::kInterface) == "\xe2\x80\x8fwlan");
  CHECK(wire::to_peer_text("eth\x01\xff", wire::PeerText::kInterface) == "eth\\x01\\xFF");
  for (const std::string& hostile :
       {std::string(200, '\xff'), std::string(300, '\n'), std::string(100, 'a') + "\x1b", std::string(129, 's')}) {
    for (const wire::PeerText kind : {wire::PeerText::kInterface, wire::PeerText::kSensor, wire::PeerText::kArch}) {
      const std::string made = wire::to_peer_text(hostile, kind);
      CHECK(vantage::platform::check_text(made, wire::max_bytes(kind)));
    }
  }
}
