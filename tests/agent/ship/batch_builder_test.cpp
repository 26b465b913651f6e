// The frames the agent ships: Hello and Batch through the wire verifier, with and without the
// agent's self-metrics, and the process usage those metrics are read from.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <type_traits>
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

TEST_CASE("batch: the clock state travels when given, and is absent otherwise") {
  ship::BatchExtras extras;
  extras.clock = vantage::platform::ClockState{true, 25'000, 75'000, vantage::platform::ClockSource::kChrony};
  const auto bytes = ship::build_batch_frame(kIdentity, 1, empty_report(), {}, extras);
  const wire::Frame* frame = wire::verify_frame(bytes);
  REQUIRE(frame != nullptr);
  REQUIRE(frame->message_as_Batch() != nullptr);
  const wire::ClockState* clock = frame->message_as_Batch()->clock();
  REQUIRE(clock != nullptr);
  CHECK(clock->synchronised());
  CHECK(clock->estimated_error_ns() == 25'000);
  CHECK(clock->maximum_error_ns() == 75'000);
  CHECK(clock->source() == wire::ClockSource::Chrony);
  const auto plain = ship::build_batch_frame(kIdentity, 2, empty_report(), {}, ship::BatchExtras{});
  REQUIRE(wire::verify_frame(plain) != nullptr);
  CHECK(wire::verify_frame(plain)->message_as_Batch()->clock() == nullptr);
}

TEST_CASE("batch: self-metrics travel field by field, and are absent when not given") {
  // Every field distinct (11, 12, ... in list order), one past 2^32: a swapped or narrowed field shows.
  ship::SelfMetrics m;
  std::uint64_t next = 11;
  wire::for_each_agent_self_field(m, [&next](const wire::AgentSelfField&, auto& v) {
    v = static_cast<std::remove_reference_t<decltype(v)>>(next++);
  });
  m.process_start_ns = 1'699'999'000'000'000'000;
  m.rss_bytes = 6'000'000'000ull;  // past 2^32: the field is 64-bit on every architecture
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
  const wire::AgentSelfValues read = wire::agent_self_values(*s);
  std::vector<std::int64_t> sent;
  wire::for_each_agent_self_field(m, [&sent](const wire::AgentSelfField&, auto v) {
    sent.push_back(static_cast<std::int64_t>(v));
  });
  std::size_t k = 0;
  wire::for_each_agent_self_field(read, [&](const wire::AgentSelfField& f, auto v) {
    CAPTURE(f.name);
    CHECK(static_cast<std::int64_t>(v) == sent[k++]);
  });
  CHECK(s->rss_bytes() == 6'000'000'000ull);
  CHECK(s->spool_errors() == m.spool_errors);

  const auto plain = ship::build_batch_frame(kIdentity, 43, empty_report(), {}, ship::BatchExtras{});
  const wire::Frame* plain_frame = wire::verify_frame(plain);
  REQUIRE(plain_frame != nullptr);
  REQUIRE(plain_frame->message_as_Batch() != nullptr);
  CHECK(plain_frame->message_as_Batch()->self() == nullptr);
}

TEST_CASE("batch: one builder reused for batch after batch writes the bytes a fresh one does") {
  // Labels of 8 KiB on 40 targets: a frame past the builder's kept capacity, given back after.
  MeasurementReport big = empty_report();
  std::vector<vantage::agent::ProbeTargetSpec> big_targets(40);
  big.targets.resize(big_targets.size());
  for (std::size_t i = 0; i < big_targets.size(); ++i) {
    big_targets[i].label = std::string(8192, static_cast<char>('a' + i % 26));
    big.targets[i].sent = i;
  }
  MeasurementReport small = empty_report();
  std::vector<vantage::agent::ProbeTargetSpec> small_targets(1);
  small_targets[0].label = "198.51.100.1:8627";
  small.targets.resize(1);
  small.targets[0].sent = 10;
  small.targets[0].received = 9;
  small.loads.resize(1);

  ship::BatchFrameBuilder builder;
  struct Step {
    const MeasurementReport* report;
    const std::vector<vantage::agent::ProbeTargetSpec>* targets;
  };
  std::uint64_t seq = 1;
  for (const Step step : {Step{&small, &small_targets}, Step{&small, &small_targets}, Step{&big, &big_targets},
                          Step{&small, &small_targets}, Step{&big, &big_targets}}) {
    CAPTURE(seq);
    ship::BatchExtras extras;
    extras.spool_dropped = seq;
    const auto span = builder.build(kIdentity, seq, *step.report, *step.targets, extras);
    const std::vector<std::uint8_t> reused(span.begin(), span.end());
    const auto fresh = ship::build_batch_frame(kIdentity, seq, *step.report, *step.targets, extras);
    CHECK(reused == fresh);
    const wire::Frame* frame = wire::verify_frame(reused);
    REQUIRE(frame != nullptr);
    REQUIRE(frame->message_as_Batch() != nullptr);
    CHECK(frame->message_as_Batch()->seq() == seq);
    CHECK(frame->message_as_Batch()->latency()->size() == step.targets->size());
    if (step.report == &big) {
      CHECK(reused.size() > ship::BatchFrameBuilder::kKeptBytes);
    }
    ++seq;
  }
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
