#include "agent/ship/batch_builder.hpp"

#include "agent/aggregate/target_stats.hpp"
#include "agent/samplers/host_sampler.hpp"
#include "agent/version.hpp"
#include "platform/arch.hpp"
#include "vantage/telemetry_generated.h"

namespace vantage::agent::ship {

namespace {

std::vector<std::uint8_t> finish(flatbuffers::FlatBufferBuilder& fbb, wire::Message type,
                                 flatbuffers::Offset<void> message) {
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, type, message));
  return std::vector<std::uint8_t>(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
}

}  // namespace

std::vector<std::uint8_t> build_hello_frame(const AgentIdentity& identity, std::uint64_t capabilities,
                                            const std::array<std::uint8_t, 16>& incarnation,
                                            std::span<const asio::ip::udp::endpoint> reflectors,
                                            std::uint64_t target_list_version) {
  flatbuffers::FlatBufferBuilder fbb(256);
  const std::string arch(platform::kArchName);
  const wire::Incarnation wire_incarnation(flatbuffers::span<const std::uint8_t, 16>(incarnation.data(), 16));
  const bool legacy = incarnation == std::array<std::uint8_t, 16>{};
  std::vector<wire::ReflectorAddress> announced;
  announced.reserve(reflectors.size());
  for (const asio::ip::udp::endpoint& e : reflectors) {
    const asio::ip::address a = e.address();
    const asio::ip::address_v6::bytes_type ip =
        a.is_v4() ? asio::ip::make_address_v6(asio::ip::v4_mapped, a.to_v4()).to_bytes() : a.to_v6().to_bytes();
    announced.emplace_back(flatbuffers::span<const std::uint8_t, 16>(ip.data(), 16), e.port());
  }
  const auto hello = wire::CreateHelloDirect(fbb, 1, identity.agent_id.c_str(), identity.region.c_str(),
                                             identity.pop.c_str(), kVersion, arch.c_str(), capabilities,
                                             legacy ? nullptr : &wire_incarnation,
                                             announced.empty() ? nullptr : &announced, target_list_version);
  return finish(fbb, wire::Message::Hello, hello.Union());
}

std::span<const std::uint8_t> BatchFrameBuilder::build(const AgentIdentity& identity, std::uint64_t seq,
                                                       const MeasurementReport& report,
                                                       std::span<const ProbeTargetSpec> targets,
                                                       const BatchExtras& extras) {
  if (last_size_ > kKeptBytes) {
    fbb_.Reset();  // frees the buffer: the next batch grows one of its own size
  } else {
    fbb_.Clear();  // keeps the buffer's capacity for the next batch
  }
  flatbuffers::FlatBufferBuilder& fbb = fbb_;
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency;
  latency.reserve(report.targets.size());
  for (std::size_t i = 0; i < report.targets.size() && i < targets.size(); ++i) {
    latency.push_back(aggregate::build_latency_summary(
        fbb, report_label(report, targets, i), report.targets[i],
        i < report.unresolved.size() && report.unresolved[i] != 0));
  }
  std::vector<flatbuffers::Offset<wire::LoadSample>> load;
  load.reserve(report.loads.size());
  for (const HostLoadRecord& r : report.loads) {
    load.push_back(samplers::build_load_sample(fbb, r.load, r.wall_time_ns));
  }
  const auto agent_id = fbb.CreateString(identity.agent_id);
  const auto region = fbb.CreateString(identity.region);
  const auto pop = fbb.CreateString(identity.pop);
  const auto latency_vector = fbb.CreateVector(latency);
  const auto load_vector = fbb.CreateVector(load);
  flatbuffers::Offset<wire::AgentSelf> self;
  if (extras.self) {
    // The field list's members, plus the mesh's list version (the agent's alone to fill in).
    wire::AgentSelfBuilder sb(fbb);
#define VANTAGE_AGENT_SELF_WRITE(field, ...) sb.add_##field(extras.self->field);
    VANTAGE_AGENT_SELF_FIELDS(VANTAGE_AGENT_SELF_WRITE)
#undef VANTAGE_AGENT_SELF_WRITE
    sb.add_target_list_version(extras.target_list_version);
    self = sb.Finish();
  }
  flatbuffers::Offset<wire::ClockState> clock;
  if (extras.clock) {
    static_assert(static_cast<int>(wire::ClockSource::Configured) == static_cast<int>(platform::ClockSource::kConfigured));
    clock = wire::CreateClockState(fbb, extras.clock->synchronised, extras.clock->estimated_error_ns,
                                   extras.clock->maximum_error_ns, static_cast<wire::ClockSource>(extras.clock->source));
  }
  wire::BatchBuilder b(fbb);
  b.add_agent_id(agent_id);
  b.add_seq(seq);
  b.add_interval_start_ns(report.wall_start_ns);
  b.add_interval_end_ns(report.wall_end_ns);
  b.add_region(region);
  b.add_pop(pop);
  b.add_latency(latency_vector);
  b.add_load(load_vector);
  b.add_spool_dropped(extras.spool_dropped);
  if (extras.self) {
    b.add_self(self);
  }
  if (extras.clock) {
    b.add_clock(clock);
  }
  const auto batch = b.Finish();
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, wire::Message::Batch, batch.Union()));
  last_size_ = fbb.GetSize();
  return {fbb.GetBufferPointer(), fbb.GetSize()};
}

std::vector<std::uint8_t> build_batch_frame(const AgentIdentity& identity, std::uint64_t seq,
                                            const MeasurementReport& report,
                                            std::span<const ProbeTargetSpec> targets,
                                            const BatchExtras& extras) {
  BatchFrameBuilder builder;
  const std::span<const std::uint8_t> frame = builder.build(identity, seq, report, targets, extras);
  return {frame.begin(), frame.end()};
}

}  // namespace vantage::agent::ship
