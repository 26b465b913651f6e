// Wire schema: round trips, the verifier's rejection of damaged buffers, and the schema
// evolution guard (buffers written by the first version, committed under tests/fixtures/).
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "collector/store/incoming_batch.hpp"
#include "tests/support/wire_frames.hpp"
#include "vantage/telemetry_generated.h"

namespace wire = vantage::wire;

namespace {

using vantage::test::Bytes;
using vantage::test::finish_frame;
using vantage::test::verifies;

// The canonical first-version frames. Changing these builders does not change the committed
// fixtures: they are what the old version wrote, and the readers below must keep accepting them.
Bytes build_hello() {
  flatbuffers::FlatBufferBuilder fbb;
  auto hello = wire::CreateHelloDirect(fbb, 1, "fra1-edge-07", "eu-central", "fra1", "0.1.0", "arm64", 0x5);
  return finish_frame(fbb, wire::Message::Hello, hello.Union());
}

Bytes build_batch() {
  flatbuffers::FlatBufferBuilder fbb;
  std::vector<wire::HistogramBucket> buckets{{300, 7}, {301, 90}, {412, 3}};
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency;
  latency.push_back(wire::CreateLatencySummaryDirect(
      fbb, "ams1-edge-02:7801", wire::Protocol::UdpEcho, 100, 97, 3, 1, 2, 0, 1, 2, 1'500'000, 9'800'000,
      2'100'000.5, 310'000.25, 2'000'000, 2'600'000, 9'000'000, 9'800'000, 41'000.0, 250'000,
      wire::TimestampSource::Kernel, 1, &buckets));
  latency.push_back(
      wire::CreateLatencySummaryDirect(fbb, "203.0.113.9:443", wire::Protocol::TcpConnect, 10, 10));

  std::vector<wire::CpuUsage> cpus{{-1, 0.25f, 0.05f, 0.01f, 0.0f, 0.002f, 0.01f, 0.678f, 0},
                                   {0, 0.5f, 0.1f, 0.0f, 0.0f, 0.0f, 0.02f, 0.38f, 1'800'000}};
  wire::MemoryUsage mem(8ull << 30, 5ull << 30, 1ull << 30, 1ull << 30, 4096);
  wire::Pressure psi(1.5f, 0.0f, 0.0f, 0.25f, 0.125f);
  wire::LoadAverage loadavg(0.5f, 0.75f, 1.0f);
  wire::NetRates eth0_rates(1e6, 2e6, 1000, 2000, 0, 0, 0.5, 0);
  std::vector<flatbuffers::Offset<wire::NetInterface>> net{
      wire::CreateNetInterfaceDirect(fbb, "eth0", &eth0_rates)};
  std::vector<flatbuffers::Offset<wire::Temperature>> temps{
      wire::CreateTemperatureDirect(fbb, "thermal_zone0/cpu-thermal", 48.5f)};
  std::vector<flatbuffers::Offset<wire::LoadSample>> load{wire::CreateLoadSampleDirect(
      fbb, 1'790'000'000'000'000'000, "arm64", &cpus, &mem, &psi, &loadavg, &net, &temps)};

  std::vector<wire::RttSample> raw{{0, 41, 5'000'000'000, 2'000'000}, {0, 42, 5'010'000'000, -1}};
  auto batch =
      wire::CreateBatchDirect(fbb, "fra1-edge-07", 4242, 1'790'000'000'000'000'000, 1'790'000'001'000'000'000,
                              "eu-central", "fra1", &latency, &load, &raw);
  return finish_frame(fbb, wire::Message::Batch, batch.Union());
}

Bytes build_ack() {
  flatbuffers::FlatBufferBuilder fbb;
  auto ack = wire::CreateAckDirect(fbb, 4242, wire::AckStatus::Rejected, "region ap-east not served here");
  return finish_frame(fbb, wire::Message::Ack, ack.Union());
}

const wire::Frame* checked_frame(const Bytes& b) {
  REQUIRE(verifies(b));
  return wire::GetFrame(b.data());
}

void check_hello(const Bytes& b) {
  const auto* hello = checked_frame(b)->message_as_Hello();
  REQUIRE(hello != nullptr);
  CHECK(hello->protocol_version() == 1);
  CHECK(hello->agent_id()->str() == "fra1-edge-07");
  CHECK(hello->region()->str() == "eu-central");
  CHECK(hello->pop()->str() == "fra1");
  CHECK(hello->software_version()->str() == "0.1.0");
  CHECK(hello->arch()->str() == "arm64");
  CHECK(hello->capabilities() == 0x5);
}

void check_batch(const Bytes& b) {
  const auto* batch = checked_frame(b)->message_as_Batch();
  REQUIRE(batch != nullptr);
  CHECK(batch->agent_id()->str() == "fra1-edge-07");
  CHECK(batch->seq() == 4242);
  CHECK(batch->interval_end_ns() - batch->interval_start_ns() == 1'000'000'000);
  CHECK(batch->region()->str() == "eu-central");
  REQUIRE(batch->latency()->size() == 2);
  const auto* udp = batch->latency()->Get(0);
  CHECK(udp->target()->str() == "ams1-edge-02:7801");
  CHECK(udp->protocol() == wire::Protocol::UdpEcho);
  CHECK(udp->sent() == 100);
  CHECK(udp->received() == 97);
  CHECK(udp->lost() == 3);
  CHECK(udp->late() == 1);
  CHECK(udp->lost_outbound() == 1);
  CHECK(udp->lost_inbound() == 2);
  CHECK(udp->min_ns() == 1'500'000);
  CHECK(udp->mean_ns() == doctest::Approx(2'100'000.5));
  CHECK(udp->p99_ns() == 9'000'000);
  CHECK(udp->jitter_p99_ns() == 250'000);
  CHECK(udp->timestamp_source() == wire::TimestampSource::Kernel);
  CHECK(udp->histogram_scheme() == 1);
  REQUIRE(udp->histogram()->size() == 3);
  CHECK(udp->histogram()->Get(1)->index() == 301);
  CHECK(udp->histogram()->Get(1)->count() == 90);
  // Fields appended after the first version are absent from its buffers and read as 0.
  CHECK(udp->send_errors() == 0);
  CHECK(udp->unexpected() == 0);
  CHECK(udp->invalid() == 0);
  CHECK(udp->reflector_restarts() == 0);
  CHECK(udp->session_resets() == 0);
  CHECK(udp->ipdv_count() == 0);
  CHECK(udp->histogram_overflow() == 0);
  CHECK(udp->histogram_dropped() == 0);
  CHECK_FALSE(udp->unresolved());  // an agent from before late DNS resolved every target it had
  const auto* tcp = batch->latency()->Get(1);
  CHECK(tcp->protocol() == wire::Protocol::TcpConnect);
  CHECK(tcp->histogram() == nullptr);  // absent vector: the reader must cope
  CHECK(tcp->timestamp_source() == wire::TimestampSource::Userspace);

  REQUIRE(batch->load()->size() == 1);
  const auto* load = batch->load()->Get(0);
  CHECK(load->arch()->str() == "arm64");
  REQUIRE(load->cpus()->size() == 2);
  CHECK(load->cpus()->Get(0)->cpu() == -1);
  CHECK(load->cpus()->Get(1)->freq_khz() == 1'800'000);
  CHECK(load->memory()->available_bytes() == (5ull << 30));
  CHECK(load->pressure()->io_full_avg10() == doctest::Approx(0.125f));
  CHECK(load->load_average()->fifteen() == doctest::Approx(1.0f));
  CHECK(load->net()->Get(0)->name()->str() == "eth0");
  CHECK(load->net()->Get(0)->rates()->tx_bytes_per_s() == doctest::Approx(2e6));
  CHECK(load->temperatures()->Get(0)->celsius() == doctest::Approx(48.5f));

  REQUIRE(batch->rtt_samples()->size() == 2);
  CHECK(batch->rtt_samples()->Get(1)->seq() == 42);
  CHECK(batch->rtt_samples()->Get(1)->rtt_ns() == -1);
}

void check_ack(const Bytes& b) {
  const auto* ack = checked_frame(b)->message_as_Ack();
  REQUIRE(ack != nullptr);
  CHECK(ack->seq() == 4242);
  CHECK(ack->status() == wire::AckStatus::Rejected);
  CHECK(ack->reason()->str() == "region ap-east not served here");
}

std::string fixture_path(const char* name) { return std::string(VANTAGE_FIXTURES_DIR) + "/" + name; }

Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot open fixture " << path);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("frames round-trip through the builder and verifier") {
  check_hello(build_hello());
  check_batch(build_batch());
  check_ack(build_ack());
  CHECK(wire::FrameBufferHasIdentifier(build_batch().data()));
}

TEST_CASE("the verifier rejects every truncation that cuts into a frame's data") {
  // The builder may leave up to 7 bytes of alignment padding at the end of a buffer, which no
  // field references; cutting only those is harmless. Any deeper cut must be rejected.
  const std::pair<Bytes, void (*)(const Bytes&)> frames[] = {
      {build_hello(), check_hello}, {build_batch(), check_batch}, {build_ack(), check_ack}};
  for (const auto& [full, check] : frames) {
    REQUIRE(verifies(full));
    for (std::size_t len = 0; len < full.size(); ++len) {
      const Bytes cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(len));
      if (verifies(cut)) {
        CHECK_MESSAGE(full.size() - len < 8,
                      "prefix of " << len << " of " << full.size() << " bytes accepted");
        check(cut);  // only padding was lost: every field still reads the same
      }
    }
  }
}

TEST_CASE("the verifier rejects structural corruption") {
  const Bytes good = build_batch();

  SUBCASE("root offset past the end") {
    Bytes b = good;
    const auto past = static_cast<std::uint32_t>(b.size() + 16);
    std::memcpy(b.data(), &past, sizeof past);
    CHECK(!verifies(b));
  }
  SUBCASE("wrong file identifier") {
    Bytes b = good;
    b[4] = 'X';
    CHECK(!verifies(b));
  }
  SUBCASE("a string without its terminator") {
    Bytes b = good;
    const std::string needle = "fra1-edge-07";
    auto at = std::search(b.begin(), b.end(), needle.begin(), needle.end());
    REQUIRE(at != b.end());
    at[static_cast<std::ptrdiff_t>(needle.size())] = 'x';  // overwrite the NUL
    CHECK(!verifies(b));
  }
  SUBCASE("a vector length far beyond the buffer") {
    Bytes b = good;
    // The histogram vector's length word precedes its first bucket {300, 7}.
    const std::uint8_t first_bucket[] = {0x2c, 0x01, 0, 0, 7, 0, 0, 0};
    auto at = std::search(b.begin(), b.end(), std::begin(first_bucket), std::end(first_bucket));
    REQUIRE(at != b.end());
    const std::uint32_t huge = 0x7fffffff;
    std::memcpy(&*(at - 4), &huge, sizeof huge);
    CHECK(!verifies(b));
  }
}

TEST_CASE("any single corrupted byte is rejected or reads safely") {
  // The verifier cannot tell a changed number from a real one, but it must stop every corruption
  // that would make a reader touch memory outside the buffer (ASan watches this test).
  const Bytes good = build_batch();
  std::size_t rejected = 0;
  for (std::size_t i = 0; i < good.size(); ++i) {
    for (std::uint8_t value : {std::uint8_t{0x00}, std::uint8_t{0xff}, std::uint8_t{0x80}}) {
      Bytes b = good;
      if (b[i] == value) continue;
      b[i] = value;
      if (!verifies(b)) {
        ++rejected;
        continue;
      }
      const auto* frame = wire::GetFrame(b.data());
      if (const auto* batch = frame->message_as_Batch()) {
        std::uint64_t sink = batch->seq();
        if (batch->agent_id()) sink += batch->agent_id()->size();
        if (batch->latency())
          for (const auto* s : *batch->latency()) {
            if (s->target()) sink += s->target()->size();
            if (s->histogram())
              for (const auto* h : *s->histogram()) sink += h->count();
          }
        if (batch->load())
          for (const auto* l : *batch->load()) {
            if (l->cpus())
              for (const auto* c : *l->cpus()) sink += static_cast<std::uint64_t>(c->cpu());
            if (l->net())
              for (const auto* n : *l->net())
                if (n->name()) sink += n->name()->size();
          }
        if (batch->rtt_samples())
          for (const auto* r : *batch->rtt_samples()) sink += r->seq();
        CHECK(sink != 0xdeadbeefdeadbeefULL);  // keeps the reads alive
      }
    }
  }
  CHECK(rejected > good.size() / 4);  // the verifier is doing real work, not waving things through
}

TEST_CASE("first-version buffers from tests/fixtures are still read") {
  // To regenerate after a deliberate, compatible change of the canonical builders (never to
  // paper over a failure): VANTAGE_WRITE_FIXTURES=1 ./test_unit -tc='*fixtures*'
  if (std::getenv("VANTAGE_WRITE_FIXTURES") != nullptr) {
    for (const auto& [name, bytes] : {std::pair{"telemetry_v1_hello.bin", build_hello()},
                                      std::pair{"telemetry_v1_batch.bin", build_batch()},
                                      std::pair{"telemetry_v1_ack.bin", build_ack()}}) {
      std::ofstream out(fixture_path(name), std::ios::binary | std::ios::trunc);
      out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
      REQUIRE(out.good());
    }
  }
  check_hello(read_file(fixture_path("telemetry_v1_hello.bin")));
  check_batch(read_file(fixture_path("telemetry_v1_batch.bin")));
  check_ack(read_file(fixture_path("telemetry_v1_ack.bin")));
}

TEST_CASE("Hello.incarnation: absent in a first-version Hello (legacy), its 16 bytes when present") {
  const Bytes old_frame = read_file(fixture_path("telemetry_v1_hello.bin"));  // outlives the view below
  const auto* old = checked_frame(old_frame)->message_as_Hello();
  REQUIRE(old != nullptr);
  CHECK(old->incarnation() == nullptr);
  CHECK(vantage::collector::store::incarnation_of(*old) == vantage::collector::store::kLegacyIncarnation);

  const std::array<std::uint8_t, 16> bytes{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0xff};
  flatbuffers::FlatBufferBuilder fbb;
  const wire::Incarnation incarnation(flatbuffers::span<const std::uint8_t, 16>(bytes.data(), 16));
  const auto hello = wire::CreateHelloDirect(fbb, 1, "fra1-edge-07", "eu-central", "fra1", "0.1.0", "arm64", 0,
                                             &incarnation);
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, wire::Message::Hello, hello.Union()));
  const Bytes frame(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
  const auto* read = checked_frame(frame)->message_as_Hello();
  REQUIRE(read != nullptr);
  CHECK(vantage::collector::store::incarnation_of(*read) == bytes);
  CHECK(vantage::collector::store::incarnation_hex(bytes) == "0102030405060708090a0b0c0d0e0fff");
}
