#include "collector/live_view.hpp"

#include <ctime>
#include <string_view>

#include "platform/clock.hpp"
#include "schemas/wire_string.hpp"

namespace vantage::collector {

namespace {

// PSI is absent (negative on the wire) where the kernel lacks it; /proc/pressure gives percent.
std::optional<double> psi_ratio(float v) {
  if (v < 0.0f) return std::nullopt;
  return static_cast<double>(v) / 100.0;
}

// The wire's clock sources by name; a newer agent's is "unknown" (a bounded label set).
const char* clock_source_name(wire::ClockSource source) {
  switch (source) {
    case wire::ClockSource::Unknown:
      return "unknown";
    case wire::ClockSource::Chrony:
      return "chrony";
    case wire::ClockSource::Ntpd:
      return "ntpd";
    case wire::ClockSource::Timesyncd:
      return "timesyncd";
    case wire::ClockSource::Ptp:
      return "ptp";
    case wire::ClockSource::Pps:
      return "pps";
    case wire::ClockSource::Configured:
      return "configured";
  }
  return "unknown";
}

// A newer agent's status is taken as "not measured": no figures shown without a known reason.
OneWayStatus one_way_status(wire::OneWayStatus status) {
  switch (status) {
    case wire::OneWayStatus::Reported:
      return OneWayStatus::kReported;
    case wire::OneWayStatus::Unsynchronised:
      return OneWayStatus::kUnsynchronised;
    case wire::OneWayStatus::BoundTooLarge:
      return OneWayStatus::kBoundTooLarge;
    case wire::OneWayStatus::NotMeasured:
      break;
  }
  return OneWayStatus::kNotMeasured;
}

LiveOneWay live_one_way(const wire::OneWay& w) {
  LiveOneWay o;
  o.status = one_way_status(w.status());
  o.error_bound_ns = w.error_bound_ns();
  o.max_error_fraction = static_cast<double>(w.max_error_fraction());
  o.sender_synchronised = w.sender_synchronised();
  o.reflector_synchronised = w.reflector_synchronised();
  o.sender_error_ns = w.sender_error_ns();
  o.reflector_error_ns = w.reflector_error_ns();
  o.samples = w.samples();
  // Figures only with a status that vouches for them, whatever an agent put beside another one.
  if (o.status == OneWayStatus::kReported) {
    o.forward_min_ns = w.forward_min_ns();
    o.forward_p50_ns = w.forward_p50_ns();
    o.forward_p99_ns = w.forward_p99_ns();
    o.forward_max_ns = w.forward_max_ns();
    o.backward_min_ns = w.backward_min_ns();
    o.backward_p50_ns = w.backward_p50_ns();
    o.backward_p99_ns = w.backward_p99_ns();
    o.backward_max_ns = w.backward_max_ns();
  }
  return o;
}

}  // namespace

const char* to_string(OneWayStatus status) noexcept {
  switch (status) {
    case OneWayStatus::kReported:
      return "reported";
    case OneWayStatus::kUnsynchronised:
      return "unsynchronised";
    case OneWayStatus::kBoundTooLarge:
      return "bound_too_large";
    case OneWayStatus::kNotMeasured:
      break;
  }
  return "not_measured";
}

void LiveView::record(const store::IncomingBatch& in) {
  const wire::Batch& b = *in.batch;
  // The connection's identity wins over the batch's own fields (see IncomingBatch).
  const std::string agent_id(in.agent_id);
  const std::string region(in.filed_region());
  const std::string pop(in.filed_pop());
  const std::int64_t now = in.received_ns != 0 ? in.received_ns : platform::realtime_ns();

  const std::lock_guard lock(mutex_);
  LiveAgent& agent = agents_[agent_id];
  // Seqs compare within one spool incarnation only: a reinstalled agent starts again at 1 under a
  // new one, which takes over once its batches are newer by interval.
  const std::string incarnation = store::incarnation_hex(in.incarnation);
  const bool newest = agent.incarnation.empty() || agent.incarnation == incarnation
                          ? b.seq() >= agent.seq
                          : b.interval_end_ns() >= agent.interval_end_ns;
  agent.agent_id = agent_id;
  agent.region = region;
  agent.pop = pop;
  agent.last_seen_ns = std::max(agent.last_seen_ns, now);
  if (newest) {
    agent.incarnation = incarnation;
    agent.seq = b.seq();
    agent.interval_end_ns = b.interval_end_ns();
    agent.spool_dropped = b.spool_dropped();
    if (const wire::AgentSelf* m = b.self()) {
      agent.self = wire::agent_self_values(*m);
    }
    // A batch without a clock (an older agent, or one downgraded) says nothing about it now.
    agent.clock.reset();
    if (const wire::ClockState* c = b.clock()) {
      agent.clock = LiveClock{.synchronised = c->synchronised(),
                              .estimated_error_ns = c->estimated_error_ns(),
                              .maximum_error_ns = c->maximum_error_ns(),
                              .source = clock_source_name(c->source())};
    }
  }

  if (const auto* latency = b.latency()) {
    for (const wire::LatencySummary* l : *latency) {
      LatencyKey key{region, pop, agent_id, wire::text(l->target()), store::protocol_name(l->protocol())};
      LiveLatency& e = latency_[key];
      if (e.updated_ns != 0 && b.interval_end_ns() < e.interval_end_ns) continue;
      e.region = std::get<0>(key);
      e.pop = std::get<1>(key);
      e.agent_id = std::get<2>(key);
      e.target = std::get<3>(key);
      e.protocol = std::get<4>(key);
      e.interval_end_ns = b.interval_end_ns();
      e.updated_ns = now;
      e.sent = l->sent();
      e.received = l->received();
      e.lost = l->lost();
      const std::uint64_t answered = static_cast<std::uint64_t>(l->received()) + l->lost();
      e.loss_ratio = answered == 0 ? 0.0 : static_cast<double>(l->lost()) / static_cast<double>(answered);
      e.p50_ns = l->p50_ns();
      e.p90_ns = l->p90_ns();
      e.p99_ns = l->p99_ns();
      e.p999_ns = l->p999_ns();
      e.max_ns = l->max_ns();
      e.mean_ns = l->mean_ns();
      e.jitter_mean_ns = l->jitter_mean_ns();
      e.jitter_p99_ns = l->jitter_p99_ns();
      e.unresolved = l->unresolved();
      e.one_way.reset();
      if (const wire::OneWay* w = l->one_way()) e.one_way = live_one_way(*w);
      e.paths.clear();
      if (const auto* paths = l->paths()) {
        for (flatbuffers::uoffset_t i = 0; i < paths->size() && i < kMaxLivePaths; ++i) {
          const wire::PathStats* p = paths->Get(i);
          const std::uint64_t path_answered = static_cast<std::uint64_t>(p->received()) + p->lost();
          e.paths.push_back(LivePath{
              // The position, not the peer's number: a repeated or out-of-range path would be a
              // duplicate or unbounded /metrics series (the store files paths by position too).
              .path = static_cast<std::uint16_t>(i),
              .source_port = p->source_port(),
              .sent = p->sent(),
              .received = p->received(),
              .lost = p->lost(),
              .loss_ratio = path_answered == 0 ? 0.0
                                               : static_cast<double>(p->lost()) / static_cast<double>(path_answered),
              .min_ns = p->min_ns(),
              .mean_ns = p->mean_ns(),
              .max_ns = p->max_ns(),
          });
        }
      }
    }
  }

  if (const auto* load = b.load()) {
    for (const wire::LoadSample* s : *load) {
      LiveLoad& e = load_[LoadKey{region, pop, agent_id}];
      if (e.updated_ns != 0 && s->time_ns() < e.time_ns) continue;
      e.region = region;
      e.pop = pop;
      e.agent_id = agent_id;
      e.time_ns = s->time_ns();
      e.updated_ns = now;
      e.cpu_busy.reset();
      if (const auto* cpus = s->cpus()) {
        for (const wire::CpuUsage* c : *cpus) {
          if (c->cpu() >= 0) continue;
          // Busy = neither idle nor waiting on I/O, as the store computes it.
          e.cpu_busy = 1.0 - static_cast<double>(c->idle()) - static_cast<double>(c->iowait());
        }
      }
      if (const wire::MemoryUsage* m = s->memory()) {
        e.mem_total = m->total_bytes();
        e.mem_available = m->available_bytes();
      } else {
        e.mem_total.reset();
        e.mem_available.reset();
      }
      if (const wire::LoadAverage* la = s->load_average()) {
        e.load1 = static_cast<double>(la->one());
      } else {
        e.load1.reset();
      }
      const wire::Pressure* p = s->pressure();
      e.psi_cpu_some = p ? psi_ratio(p->cpu_some_avg10()) : std::nullopt;
      e.psi_memory_some = p ? psi_ratio(p->memory_some_avg10()) : std::nullopt;
      e.psi_io_some = p ? psi_ratio(p->io_some_avg10()) : std::nullopt;
      if (e.cpu_busy && options_.load_history > 0) {
        if (e.history.size() >= options_.load_history) {
          e.history.erase(
              e.history.begin(),
              e.history.begin() + static_cast<std::ptrdiff_t>(e.history.size() - options_.load_history + 1));
        }
        e.history.push_back({e.time_ns, *e.cpu_busy});
      }
    }
  }

  // Expiry is cheap but not free: at most once a second of collector time.
  if (now - last_forget_ns_ >= 1'000'000'000) forget_locked(now);
}

void LiveView::forget_locked(std::int64_t now_ns) {
  last_forget_ns_ = now_ns;
  const std::int64_t cutoff =
      now_ns - std::chrono::duration_cast<std::chrono::nanoseconds>(options_.forget_after).count();
  std::erase_if(latency_, [&](const auto& kv) { return kv.second.updated_ns < cutoff; });
  std::erase_if(load_, [&](const auto& kv) { return kv.second.updated_ns < cutoff; });
  std::erase_if(agents_, [&](const auto& kv) { return kv.second.last_seen_ns < cutoff; });
}

LiveSnapshot LiveView::snapshot(std::int64_t now_ns) {
  LiveSnapshot s;
  const std::lock_guard lock(mutex_);
  forget_locked(now_ns);
  s.latency.reserve(latency_.size());
  for (const auto& [key, value] : latency_) s.latency.push_back(value);
  s.load.reserve(load_.size());
  for (const auto& [key, value] : load_) s.load.push_back(value);
  s.agents.reserve(agents_.size());
  for (const auto& [key, value] : agents_) s.agents.push_back(value);
  return s;
}

std::size_t LiveView::size() const {
  const std::lock_guard lock(mutex_);
  return latency_.size() + load_.size() + agents_.size();
}

}  // namespace vantage::collector
