// The frames the agent ships: Hello and Batch through the wire verifier, with and without the
// agent's self-metrics, and the process usage those metrics are read from.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <vector>

#include "agent/process_usage.hpp"
#include "agent/ship/batch_builder.hpp"
#include "platform/clock.hpp"
#include "schemas/frame_codec.hpp"

namespace ship = vantage::agent::ship;
namespace wire = vantage::wire;
using vantage::agent::MeasurementReport;

namespace {

const ship::AgentIdentity kIdentity{"fra1-edge-07", "eu-central", "fra1"};

MeasurementReport empty_report() {
  MeasurementReport r;
  r.wall_start_ns = 1'700'000'000'000'000'000;
  r.wall_end_ns = r.wall_start_ns + 10'000'000'000;
  return r;
}

}  // namespace

TEST_CASE("batch: self-metrics travel field by field, and are absent when not given") {
  ship::SelfMetrics m;
  m.process_start_ns = 1'699'999'000'000'000'000;
  m.config_generation = 4;
  m.rss_bytes = 6'000'000'000ull;  // past 2^32: the field is 64-bit on every architecture
  m.cpu_user_ns = 11;
  m.cpu_system_ns = 12;
  m.probe_ring_dropped = 13;
  m.load_ring_dropped = 14;
  m.spool_records = 15;
  m.spool_bytes = 16;
  m.reconnects = 17;
  m.connect_failures = 18;
  m.tls_failures = 19;
  m.rejected = 20;
  m.spool_errors = 21;
  ship::BatchExtras extras;
  extras.spool_dropped = 9;
  extras.self = m;
  const auto bytes = ship::build_batch_frame(kIdentity, 42, empty_report(), {}, extras);
  const wire::Frame* frame = wire::verify_frame(bytes);
  REQUIRE(frame != nullptr);
  const wire::Batch* b = frame->message_as_Batch();
  REQUIRE(b != nullptr);
  CHECK(b->seq() == 42);
  CHECK(b->spool_dropped() == 9);
  const wire::AgentSelf* s = b->self();
  REQUIRE(s != nullptr);
  CHECK(s->process_start_ns() == m.process_start_ns);
  CHECK(s->config_generation() == 4);
  CHECK(s->rss_bytes() == 6'000'000'000ull);
  CHECK(s->cpu_user_ns() == 11);
  CHECK(s->cpu_system_ns() == 12);
  CHECK(s->probe_ring_dropped() == 13);
  CHECK(s->load_ring_dropped() == 14);
  CHECK(s->spool_records() == 15);
  CHECK(s->spool_bytes() == 16);
  CHECK(s->reconnects() == 17);
  CHECK(s->connect_failures() == 18);
  CHECK(s->tls_failures() == 19);
  CHECK(s->rejected() == 20);
  CHECK(s->spool_errors() == 21);

  const auto plain = ship::build_batch_frame(kIdentity, 43, empty_report(), {}, ship::BatchExtras{});
  const wire::Frame* plain_frame = wire::verify_frame(plain);
  REQUIRE(plain_frame != nullptr);
  REQUIRE(plain_frame->message_as_Batch() != nullptr);
  CHECK(plain_frame->message_as_Batch()->self() == nullptr);
}

TEST_CASE("process usage: a resident set, CPU time that grows with work, a start time in the past") {
  const auto before = vantage::agent::read_process_usage();
  CHECK(before.rss_bytes > 1024 * 1024);  // the test binary alone is larger than a MiB resident
  CHECK(before.rss_bytes < (std::uint64_t{1} << 40));
  // Burn at least 50 ms of CPU; getrusage's resolution is the scheduler tick or better.
  const auto start = std::chrono::steady_clock::now();
  volatile std::uint64_t sink = 0;
  while (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(50)) {
    for (int i = 0; i < 10000; ++i) sink = sink + static_cast<std::uint64_t>(i);
  }
  const auto after = vantage::agent::read_process_usage();
  CHECK(after.cpu_user_ns + after.cpu_system_ns > before.cpu_user_ns + before.cpu_system_ns);
  const std::int64_t started = vantage::agent::process_start_ns();
  CHECK(started > 1'600'000'000'000'000'000);  // after 2020: a real wall-clock reading
  CHECK(started <= vantage::platform::realtime_ns());
}
