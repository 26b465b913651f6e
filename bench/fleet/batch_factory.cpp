#include "bench/fleet/batch_factory.hpp"

#include <algorithm>
#include <cmath>
#include <random>

#include "agent/aggregate/latency_histogram.hpp"
#include "platform/arch.hpp"
#include "schemas/frame_codec.hpp"

namespace vantage::fleet {
namespace {

// A plausible interval of one UDP echo target: 10 probes/s over 10 s, RTTs around a base of
// 1..80 ms with a log-normal-ish spread, kept to shapes whose histogram has 20..60 non-empty
// buckets (with scheme 2's 256 sub-buckets an octave, the narrower spreads) so rows keep the
// size the store figures were measured with.
SummaryShape make_shape(std::mt19937_64& rng) {
  std::uniform_real_distribution<double> base_ms(1.0, 80.0);
  std::uniform_real_distribution<double> spread(0.04, 0.25);
  std::uniform_int_distribution<int> loss(0, 3);
  for (;;) {
    agent::LatencyHistogram h;
    const double base = base_ms(rng) * 1e6;
    std::lognormal_distribution<double> jitter(0.0, spread(rng));
    const std::uint32_t sent = 100;
    const auto lost = static_cast<std::uint32_t>(loss(rng));
    std::vector<double> rtts;
    for (std::uint32_t i = 0; i < sent - lost; ++i) {
      const double rtt = base * jitter(rng);
      rtts.push_back(rtt);
      h.record(static_cast<std::uint64_t>(rtt));
    }
    const std::size_t nonzero = h.nonzero_buckets();
    if (nonzero < 20 || nonzero > 60) continue;
    SummaryShape s;
    s.sent = sent;
    s.received = static_cast<std::uint32_t>(h.count());
    s.lost = lost;
    s.reordered = loss(rng) == 0 ? 1 : 0;
    s.min_ns = static_cast<std::int64_t>(h.min());
    s.max_ns = static_cast<std::int64_t>(h.max());
    s.mean_ns = h.mean();
    s.stddev_ns = h.stddev();
    s.p50_ns = static_cast<std::int64_t>(h.percentile(50));
    s.p90_ns = static_cast<std::int64_t>(h.percentile(90));
    s.p99_ns = static_cast<std::int64_t>(h.percentile(99));
    s.p999_ns = static_cast<std::int64_t>(h.percentile(99.9));
    double ipdv_sum = 0.0;
    std::vector<double> ipdv;
    for (std::size_t i = 1; i < rtts.size(); ++i) ipdv.push_back(std::fabs(rtts[i] - rtts[i - 1]));
    for (double d : ipdv) ipdv_sum += d;
    std::sort(ipdv.begin(), ipdv.end());
    s.ipdv_count = static_cast<std::uint32_t>(ipdv.size());
    s.jitter_mean_ns = ipdv.empty() ? 0.0 : ipdv_sum / static_cast<double>(ipdv.size());
    s.jitter_p99_ns = ipdv.empty() ? 0 : static_cast<std::int64_t>(ipdv[(ipdv.size() * 99) / 100]);
    h.for_each_nonzero([&s](const agent::SparseBucket& b) { s.buckets.emplace_back(b.index, b.count); });
    return s;
  }
}

std::vector<std::uint8_t> finish(flatbuffers::FlatBufferBuilder& fbb, wire::Message type,
                                 flatbuffers::Offset<void> message) {
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, type, message));
  std::vector<std::uint8_t> out;
  out.reserve(fbb.GetSize() + wire::kFrameLengthSize);
  wire::append_frame(out, {fbb.GetBufferPointer(), fbb.GetSize()});
  return out;
}

}  // namespace

BatchFactory::BatchFactory(std::size_t targets, std::uint32_t fleet_size, std::uint64_t seed, std::size_t pool)
    : targets_(targets), fleet_size_(std::max<std::uint32_t>(fleet_size, 2)) {
  std::mt19937_64 rng(seed);
  pool_.reserve(pool);
  for (std::size_t i = 0; i < pool; ++i) pool_.push_back(make_shape(rng));
}

std::string BatchFactory::target_name(const AgentIdentity& agent, std::size_t t) const {
  // Other agents of the fleet, as the mesh would pair them; past the fleet's size, more addresses.
  const std::uint64_t peer = (agent.index + 1 + t) % (std::uint64_t{fleet_size_} + targets_);
  char name[32];
  std::snprintf(name, sizeof name, "10.%u.%u.%u:8627", static_cast<unsigned>((peer >> 16) & 255),
                static_cast<unsigned>((peer >> 8) & 255), static_cast<unsigned>(peer & 255));
  return name;
}

const SummaryShape& BatchFactory::shape(const AgentIdentity& agent, std::size_t t) const {
  return pool_[(agent.index * 7919u + t * 104729u) % pool_.size()];
}

std::vector<std::uint8_t> BatchFactory::hello_frame(const AgentIdentity& agent) const {
  flatbuffers::FlatBufferBuilder fbb(256);
  const std::string arch(platform::kArchName);
  // Capabilities as a UDP-echo agent with host load and a reflector announces them.
  const std::uint64_t capabilities = (1u << 0) | (1u << 3) | (1u << 4);
  const wire::Incarnation incarnation(flatbuffers::span<const std::uint8_t, 16>(agent.incarnation.data(), 16));
  const bool legacy = agent.incarnation == std::array<std::uint8_t, 16>{};
  const auto hello = wire::CreateHelloDirect(fbb, 1, agent.agent_id.c_str(), agent.region.c_str(),
                                             agent.pop.c_str(), VANTAGE_VERSION, arch.c_str(), capabilities,
                                             legacy ? nullptr : &incarnation);
  return finish(fbb, wire::Message::Hello, hello.Union());
}

std::vector<std::uint8_t> BatchFactory::batch_frame(const AgentIdentity& agent, std::uint64_t seq,
                                                    std::int64_t start_ns, std::int64_t end_ns) const {
  thread_local flatbuffers::FlatBufferBuilder fbb(64 * 1024);
  fbb.Clear();
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency;
  latency.reserve(targets_);
  std::vector<wire::HistogramBucket> buckets;
  for (std::size_t t = 0; t < targets_; ++t) {
    const SummaryShape& s = shape(agent, t);
    const auto target = fbb.CreateString(target_name(agent, t));
    buckets.clear();
    for (const auto& [index, count] : s.buckets) buckets.emplace_back(index, count);
    const auto histogram = fbb.CreateVectorOfStructs(buckets);
    latency.push_back(wire::CreateLatencySummary(
        fbb, target, wire::Protocol::UdpEcho, s.sent, s.received, s.lost, s.late, s.reordered, s.duplicates,
        s.lost / 2, s.lost - s.lost / 2, s.min_ns, s.max_ns, s.mean_ns, s.stddev_ns, s.p50_ns, s.p90_ns,
        s.p99_ns, s.p999_ns, s.jitter_mean_ns, s.jitter_p99_ns, wire::TimestampSource::Kernel,
        agent::LatencyHistogram::kScheme, histogram, 0, 0, 0, 0, 0, s.ipdv_count, 0, 0));
  }
  // One host load sample, as the sampler reports it once per interval.
  std::vector<wire::CpuUsage> cpus;
  cpus.emplace_back(-1, 0.12f, 0.05f, 0.01f, 0.0f, 0.0f, 0.01f, 0.81f, 0u);
  for (std::int16_t c = 0; c < 4; ++c) cpus.emplace_back(c, 0.1f + 0.02f * c, 0.05f, 0.01f, 0.0f, 0.0f, 0.01f, 0.83f - 0.02f * c, 2400000u);
  const wire::MemoryUsage memory(8ull << 30, 5ull << 30, 1ull << 30, 1ull << 30, 16ull << 20);
  const wire::Pressure pressure(1.5f, 0.0f, 0.0f, 0.2f, 0.1f);
  const wire::LoadAverage load_average(0.4f, 0.35f, 0.3f);
  const wire::NetRates rates(125000.0, 98000.0, 900.0, 850.0, 0.0, 0.0, 0.0, 0.0);
  const auto net = std::vector<flatbuffers::Offset<wire::NetInterface>>{
      wire::CreateNetInterface(fbb, fbb.CreateString("eth0"), &rates)};
  const auto temps = std::vector<flatbuffers::Offset<wire::Temperature>>{
      wire::CreateTemperature(fbb, fbb.CreateString("thermal_zone0/x86_pkg_temp"), 48.0f)};
  const auto load_sample = wire::CreateLoadSample(fbb, end_ns, fbb.CreateString(std::string(platform::kArchName)),
                                                  fbb.CreateVectorOfStructs(cpus), &memory, &pressure,
                                                  &load_average, fbb.CreateVector(net), fbb.CreateVector(temps));
  const std::vector<flatbuffers::Offset<wire::LoadSample>> loads{load_sample};
  const auto self = wire::CreateAgentSelf(fbb, start_ns - 3'600'000'000'000, 1, 6u << 20, seq * 2'000'000,
                                          seq * 500'000, 0, 0, 0, 0, 0, 0, 0, 0);
  const auto agent_id = fbb.CreateString(agent.agent_id);
  const auto region = fbb.CreateString(agent.region);
  const auto pop = fbb.CreateString(agent.pop);
  const auto latency_vector = fbb.CreateVector(latency);
  const auto load_vector = fbb.CreateVector(loads);
  wire::BatchBuilder b(fbb);
  b.add_agent_id(agent_id);
  b.add_seq(seq);
  b.add_interval_start_ns(start_ns);
  b.add_interval_end_ns(end_ns);
  b.add_region(region);
  b.add_pop(pop);
  b.add_latency(latency_vector);
  b.add_load(load_vector);
  b.add_spool_dropped(0);
  b.add_self(self);
  return finish(fbb, wire::Message::Batch, b.Finish().Union());
}

void BatchFactory::append_influx_lines(std::string& out, const AgentIdentity& agent, std::int64_t end_ns) const {
  char line[1024];
  for (std::size_t t = 0; t < targets_; ++t) {
    const SummaryShape& s = shape(agent, t);
    const int n = std::snprintf(
        line, sizeof line,
        "vantage_rtt,agent=%s,target=%s,pop=%s,protocol=udp_echo sent=%ui,received=%ui,lost=%ui,late=%ui,"
        "reordered=%ui,duplicates=%ui,lost_outbound=%ui,lost_inbound=%ui,min_ns=%lldi,max_ns=%lldi,"
        "mean_ns=%.1f,stddev_ns=%.1f,p50_ns=%lldi,p90_ns=%lldi,p99_ns=%lldi,p999_ns=%lldi,"
        "jitter_mean_ns=%.1f,jitter_p99_ns=%lldi,ipdv_count=%ui %lld\n",
        agent.agent_id.c_str(), target_name(agent, t).c_str(), agent.pop.c_str(), s.sent, s.received, s.lost,
        s.late, s.reordered, s.duplicates, s.lost / 2, s.lost - s.lost / 2, static_cast<long long>(s.min_ns),
        static_cast<long long>(s.max_ns), s.mean_ns, s.stddev_ns, static_cast<long long>(s.p50_ns),
        static_cast<long long>(s.p90_ns), static_cast<long long>(s.p99_ns), static_cast<long long>(s.p999_ns),
        s.jitter_mean_ns, static_cast<long long>(s.jitter_p99_ns), s.ipdv_count, static_cast<long long>(end_ns));
    if (n > 0) out.append(line, static_cast<std::size_t>(std::min<int>(n, sizeof line - 1)));
  }
}

std::pair<std::size_t, std::size_t> BatchFactory::bucket_range() const {
  std::size_t lo = SIZE_MAX, hi = 0;
  for (const SummaryShape& s : pool_) {
    lo = std::min(lo, s.buckets.size());
    hi = std::max(hi, s.buckets.size());
  }
  return {lo, hi};
}

}  // namespace vantage::fleet
