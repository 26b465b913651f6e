#include "agent/measurement.hpp"

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>

#include <algorithm>
#include <bit>
#include <atomic>
#include <stop_token>
#include <thread>
#include <utility>

#include "platform/clock.hpp"
#include "platform/enum_names.hpp"
#include "platform/log.hpp"
#include "platform/random_seed.hpp"
#include "platform/doorbell.hpp"
#include "platform/spsc_ring.hpp"

namespace vantage::agent {

namespace {

using probes::ProbeProtocol;

// The aggregator's heartbeat period: it wakes at least this often even with nothing queued.
constexpr std::int64_t kAggregatorHeartbeatNs = 1'000'000'000;

// About two seconds of events (a probe sent and its reply: two), a power of two within
// [1024, most]: the doorbell at half capacity wakes the aggregator about once a second, and
// the other half absorbs a second of its lateness (a report being written or shipped).
std::size_t event_ring_size(const MeasurementConfig& c) {
  double per_second = 0;
  for (const ProbeTargetSpec& t : c.targets) per_second += 2.0 * 2.0 * t.rate_per_s;
  const double wanted = std::min(per_second, static_cast<double>(c.event_ring_capacity));
  return std::min(std::max<std::size_t>(1024, std::bit_ceil(static_cast<std::size_t>(wanted))),
                  std::max<std::size_t>(1, c.event_ring_capacity));
}

// The agent's slot grid: the configured slot, lowered for the fastest target, at a random phase.
probes::SlotGrid slot_grid(const MeasurementConfig& c) {
  probes::SlotGrid grid = probes::SlotGrid{.slot_ns = c.probe_slot.count(), .phase_ns = 0}.for_targets(c.targets);
  grid.phase_ns = static_cast<std::int64_t>(platform::random_seed() % static_cast<std::uint64_t>(grid.slot_ns));
  return grid;
}

// Probes tracked per target: twice the mean number sent within one timeout (the shortest
// jittered gap is half the mean, so no more than that can still be answered), plus a margin, so
// a slot is never reused while its probe could still be answered. Replies cannot be reordered
// further back than the probes still in flight. 32 slots (1 KiB) for a target probed once a
// second with a 1 s timeout; the window is most of a target's memory at low rates.
std::uint32_t window_for(const ProbeTargetSpec& t) {
  const double in_flight = t.rate_per_s * std::chrono::duration<double>(t.timeout).count();
  const double wanted = std::min(2.0 * in_flight + 16.0, double{aggregate::TargetStatsConfig::kMaxWindow});
  return static_cast<std::uint32_t>(wanted);
}

}  // namespace

const char* protocol_name(ProbeProtocol protocol) noexcept {
  static constexpr const char* kNames[] = {"udp", "tcp", "icmp", "stamp"};
  static_assert(platform::enum_table_covers<ProbeProtocol, ProbeProtocol::kStamp>(kNames));
  return platform::enum_name(protocol, kNames);
}

std::string target_label(ProbeProtocol protocol, const asio::ip::address& address, std::uint16_t port) {
  const std::string host = address.to_string();
  if (protocol == ProbeProtocol::kIcmpEcho) {
    return host;
  }
  return (address.is_v6() ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string target_label(ProbeProtocol protocol, const std::string& host, std::uint16_t port) {
  if (protocol == ProbeProtocol::kIcmpEcho) {
    return host;
  }
  return host + ":" + std::to_string(port);
}

const char* unprobeable_address(const asio::ip::address& address) noexcept {
  asio::ip::address a = address;
  if (a.is_v6() && a.to_v6().is_v4_mapped()) {
    a = asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  }
  if (a.is_unspecified()) return "the unspecified address";
  if (a.is_multicast()) return "a multicast address";
  if (a.is_v4() && a.to_v4() == asio::ip::address_v4::broadcast()) return "the broadcast address";
  return nullptr;
}

std::string client_label(privacy::Pseudonymiser& pseudonymiser, const ProbeTargetSpec& target,
                         std::int64_t unix_seconds) {
  // IANA protocol numbers: the digest is the fleet's, not this build's enum.
  const std::uint8_t ip_protocol = target.protocol == ProbeProtocol::kUdpEcho ||
                                           target.protocol == ProbeProtocol::kStamp
                                       ? 17
                                   : target.protocol == ProbeProtocol::kTcpConnect ? 6
                                   : target.address.is_v6()                        ? 58
                                                                                   : 1;
  const std::uint16_t port = target.protocol == ProbeProtocol::kIcmpEcho ? 0 : target.port;
  return pseudonymiser.label(target.address, ip_protocol, port, unix_seconds);
}

std::string client_label_now(const privacy::PrivacyConfig& privacy, const ProbeTargetSpec& target) {
  privacy::Pseudonymiser pseudonymiser(privacy);
  return client_label(pseudonymiser, target, platform::realtime_ns() / 1'000'000'000);
}

const std::string& report_label(const MeasurementReport& report, std::span<const ProbeTargetSpec> targets,
                                std::size_t i) {
  return i < report.labels.size() ? report.labels[i] : targets[i].label;
}

struct Measurement::Impl {
  explicit Impl(const MeasurementConfig& c)
      : config(c),
        events(event_ring_size(c), &doorbell),
        loads(16),
        probe_io(ASIO_CONCURRENCY_HINT_UNSAFE_IO),
        probe_work(probe_io.get_executor()),
        reflector_work(reflector_io.get_executor()) {}

  const MeasurementConfig& config;
  ReportSink sink;

  platform::Doorbell doorbell;  // the aggregator sleeps on it; the event ring rings it
  probes::EventRing events;     // producer: probe_thread
  platform::SpscRing<HostLoadRecord> loads;       // producer: sampler_thread
  std::atomic<std::uint64_t> loads_dropped{0};

  // Only probe_thread touches the probers' sockets and timers (start() runs before it exists):
  // no per-descriptor locking. Posts from other threads (name changes, stop) still lock.
  asio::io_context probe_io;
  asio::io_context reflector_io;
  asio::executor_work_guard<asio::io_context::executor_type> probe_work;
  asio::executor_work_guard<asio::io_context::executor_type> reflector_work;
  std::unique_ptr<probes::UdpProber> udp;
  std::unique_ptr<probes::TcpProber> tcp;
  std::unique_ptr<probes::IcmpProber> icmp;
  std::unique_ptr<probes::Reflector> reflector;
  std::unique_ptr<probes::StampReflector> stamp_reflector;
  std::unique_ptr<privacy::Pseudonymiser> pseudonymiser;  // used by the aggregator thread only

  // Target names: the resolver's name i is target name_targets[i]; prober_position[t] is target
  // t's place in its prober's list. unresolved[t] is set by the resolver's callback and read by
  // the aggregator when it closes an interval.
  std::unique_ptr<NameResolver> resolver;
  std::vector<std::size_t> name_targets;
  std::vector<std::size_t> prober_position;
  // Per target: the SSID its STAMP probes carry (0 for other protocols), for its summaries.
  std::vector<std::uint16_t> stamp_ssids;
  std::unique_ptr<std::atomic<bool>[]> unresolved;
  std::vector<std::optional<asio::ip::address>> name_addresses;  // the resolver's thread only

  std::thread probe_thread;
  std::thread reflector_thread;
  std::jthread sampler_thread;
  std::jthread aggregator_thread;
  std::atomic<bool> final_report{false};
  std::atomic<std::int64_t> heartbeat_ns{0};

  // Owned by the aggregator thread once it runs.
  std::vector<aggregate::TargetStats> stats;
  std::vector<HostLoadRecord> pending_loads;
  std::int64_t interval_start_ns = 0;

  platform::Status open_probers();
  void on_name(std::size_t name, const NameState& state);
  void run_sampler(std::stop_token stop);
  void run_aggregator(std::stop_token stop);
  std::size_t drain();
  void emit(std::int64_t now_ns, bool final);
  void stop_probe_thread();
  void stop_reflector_thread();
};

platform::Status Measurement::Impl::open_probers() {
  probes::UdpProberConfig udp_config;
  udp_config.sender_id = config.sender_id != 0 ? config.sender_id : platform::random_seed();
  udp_config.kernel_timestamps = config.kernel_timestamps;
  probes::TcpProberConfig tcp_config;
  probes::IcmpProberConfig icmp_config;
  const probes::SlotGrid grid = slot_grid(config);
  udp_config.grid = grid;
  tcp_config.grid = grid;
  icmp_config.grid = grid;
  icmp_config.mode = config.icmp_mode;
  icmp_config.kernel_timestamps = config.kernel_timestamps;

  prober_position.assign(config.targets.size(), 0);
  stamp_ssids.assign(config.targets.size(), 0);
  for (std::size_t i = 0; i < config.targets.size(); ++i) {
    const ProbeTargetSpec& t = config.targets[i];
    const auto index = static_cast<std::uint32_t>(i);
    // A name starts without an address: the resolver gives it one (set_address) once it has one.
    const bool resolved = t.host.empty();
    switch (t.protocol) {
      case ProbeProtocol::kUdpEcho:
      case ProbeProtocol::kStamp: {
        const bool stamp = t.protocol == ProbeProtocol::kStamp;
        const std::size_t default_size = stamp ? probes::stamp::base_size(t.stamp.mode()) : probes::kDefaultProbeSize;
        prober_position[i] = udp_config.targets.size();
        probes::StampSenderOptions stamp_options = t.stamp;
        if (stamp && stamp_options.ssid == 0) stamp_options.ssid = probes::stamp_ssid(udp_config.sender_id, index);
        if (stamp) stamp_ssids[i] = stamp_options.ssid;
        udp_config.targets.push_back(probes::UdpProbeTarget{
            .endpoint = {t.address, t.port},
            .index = index,
            .rate_per_s = t.rate_per_s,
            .payload_size = t.payload_size != 0 ? t.payload_size : default_size,
            .dscp = t.dscp,
            .timeout = t.timeout,
            .count = 0,
            .resolved = resolved,
            .paths = stamp ? 1 : std::clamp<std::uint32_t>(t.paths, 1, ProbeTargetSpec::kMaxPaths),
            .format = stamp ? probes::UdpProbeFormat::kStamp : probes::UdpProbeFormat::kVantageEcho,
            .stamp = stamp_options,
        });
        break;
      }
      case ProbeProtocol::kTcpConnect:
        prober_position[i] = tcp_config.targets.size();
        tcp_config.targets.push_back(probes::TcpTarget{
            .target = index,
            .endpoint = {t.address, t.port},
            .rate_per_s = t.rate_per_s,
            .timeout = t.timeout,
            .dscp = t.dscp,
            .resolved = resolved,
        });
        break;
      case ProbeProtocol::kIcmpEcho:
        prober_position[i] = icmp_config.targets.size();
        icmp_config.targets.push_back(probes::IcmpTarget{
            .target = index,
            .address = t.address,
            .rate_per_s = t.rate_per_s,
            .timeout = t.timeout,
            .payload_size = t.payload_size != 0 ? t.payload_size : 56,
            .dscp = t.dscp,
            .resolved = resolved,
        });
        break;
    }
  }

  if (!udp_config.targets.empty()) {
    udp = std::make_unique<probes::UdpProber>(probe_io, std::move(udp_config), events);
    if (const platform::Status s = udp->start(); !s) {
      return platform::Status::error("UDP echo prober: " + s.message(), s.code());
    }
  }
  if (!tcp_config.targets.empty()) {
    tcp = std::make_unique<probes::TcpProber>(probe_io, std::move(tcp_config), events);
    if (const platform::Status s = tcp->start(); !s) {
      return platform::Status::error("TCP connect prober: " + s.message(), s.code());
    }
  }
  if (!icmp_config.targets.empty()) {
    icmp = std::make_unique<probes::IcmpProber>(probe_io, std::move(icmp_config), events);
    if (const platform::Status s = icmp->start(); !s) {
      return platform::Status::error("ICMP prober: " + s.message(), s.code());
    }
  }
  return platform::Status();
}

void Measurement::Impl::on_name(std::size_t name, const NameState& answer) {
  const std::size_t i = name_targets[name];
  const ProbeTargetSpec& t = config.targets[i];
  // An answer that is no address to probe (a sinkhole's 0.0.0.0) leaves the target unresolved:
  // probing it would measure this host, or nothing, under the target's label.
  NameState state = answer;
  if (state.address) {
    if (const char* why = unprobeable_address(*state.address)) {
      state.error = "answered " + state.address->to_string() + ", " + why + ", not one to probe";
      state.address.reset();
    }
  }
  std::optional<asio::ip::address>& known = name_addresses[name];
  // Once per change: resolved, unresolved, moved (a name's first failure counts as a change).
  if (state.address && !known) {
    platform::log(platform::LogLevel::kInfo, "target %s: %s resolves to %s", t.label.c_str(), t.host.c_str(),
                  state.address->to_string().c_str());
  } else if (state.address && known && *state.address != *known) {
    platform::log(platform::LogLevel::kInfo, "target %s: %s now resolves to %s (was %s)", t.label.c_str(),
                  t.host.c_str(), state.address->to_string().c_str(), known->to_string().c_str());
  } else if (!state.address && known) {
    platform::log(platform::LogLevel::kWarning,
                  "target %s: %s no longer resolves (%s; was %s); reported unresolved until it does",
                  t.label.c_str(), t.host.c_str(), state.error.c_str(), known->to_string().c_str());
  } else if (!state.address) {
    platform::log(platform::LogLevel::kWarning, "target %s: %s does not resolve (%s); reported unresolved until it does",
                  t.label.c_str(), t.host.c_str(), state.error.c_str());
  }
  known = state.address;
  if (state.address) {
    // Replies are matched to targets by address and port: two targets there cannot be told apart.
    for (std::size_t j = 0; j < config.targets.size(); ++j) {
      const ProbeTargetSpec& other = config.targets[j];
      if (j == i || other.protocol != t.protocol || other.port != t.port) continue;
      const auto n = std::find(name_targets.begin(), name_targets.end(), j);
      const std::optional<asio::ip::address> there =
          other.host.empty() ? std::optional(other.address)
          : n != name_targets.end() ? name_addresses[static_cast<std::size_t>(n - name_targets.begin())]
                                    : std::nullopt;
      if (there == state.address) {
        platform::log(platform::LogLevel::kWarning,
                      "target %s: %s resolves to the address target %s probes too; their replies cannot be "
                      "told apart",
                      t.label.c_str(), t.host.c_str(), other.label.c_str());
      }
    }
  }
  // The prober has the last word: an address its socket cannot serve (IPv6 where no IPv6 socket
  // opens) leaves the target unresolved too. Its verdicts run on the probe thread in the order
  // of the changes, so the latest stands; one per change, so this logs once per change too.
  const std::optional<asio::ip::address> address = state.address;
  // The verdict callback keeps the address as text only (a captured optional<address> trips
  // GCC 12's -Wmaybe-uninitialized at -O1).
  const std::string shown_address = address ? address->to_string() : std::string();
  auto applied = [this, i, shown_address](bool probed) {
    unresolved[i].store(!probed, std::memory_order_relaxed);
    if (!shown_address.empty() && !probed) {
      const ProbeTargetSpec& target = config.targets[i];
      platform::log(platform::LogLevel::kWarning,
                    "target %s: %s resolves to %s, which the %s prober cannot probe (its socket for that "
                    "family does not open; counted as a send error); reported unresolved",
                    target.label.c_str(), target.host.c_str(), shown_address.c_str(),
                    protocol_name(target.protocol));
    }
  };
  const std::size_t position = prober_position[i];
  switch (t.protocol) {
    case ProbeProtocol::kUdpEcho:
    case ProbeProtocol::kStamp:
      if (udp) return udp->set_address(position, address, std::move(applied));
      break;
    case ProbeProtocol::kTcpConnect:
      if (tcp) return tcp->set_address(position, address, std::move(applied));
      break;
    case ProbeProtocol::kIcmpEcho:
      if (icmp) return icmp->set_address(position, address, std::move(applied));
      break;
  }
  unresolved[i].store(!address.has_value(), std::memory_order_relaxed);  // no prober (not started)
}

void Measurement::Impl::run_sampler(std::stop_token stop) {
  samplers::HostSampler sampler(config.host_root);
  platform::Doorbell sleep;  // never rung: a stoppable sleep
  const std::int64_t period = config.load_interval.count();
  std::int64_t next = platform::monotonic_ns();
  // The first call only takes the baseline snapshot.
  (void)sampler.sample(next);
  while (!stop.stop_requested()) {
    next += period;
    sleep.wait_until(stop, next);
    if (stop.stop_requested()) {
      break;
    }
    const std::int64_t now = platform::monotonic_ns();
    // After a stall (suspend, a starved thread) sample on from now instead of catching up.
    if (now - next > period) {
      next = now;
    }
    const samplers::HostLoad* load = sampler.sample(now);
    if (load == nullptr) {
      continue;
    }
    HostLoadRecord record;
    record.wall_time_ns = platform::realtime_ns();
    record.load = *load;
    record.errors.assign(sampler.errors().begin(), sampler.errors().end());
    if (!loads.try_push(std::move(record))) {
      loads_dropped.fetch_add(1, std::memory_order_relaxed);
    }
    // The aggregator sleeps up to its heartbeat: a fast sampler wakes it before the ring fills.
    if (loads.size_approx() >= loads.capacity() / 2) {
      doorbell.ring();
    }
  }
}

std::size_t Measurement::Impl::drain() {
  std::size_t n = events.drain(
      [this](probes::ProbeEvent&& e) {
        // Indices come from our own config; anything else would be a prober bug, not input.
        if (e.target < stats.size()) {
          stats[e.target].on_event(e);
        }
      },
      events.capacity());
  n += loads.drain([this](HostLoadRecord&& r) { pending_loads.push_back(std::move(r)); }, loads.capacity());
  return n;
}

void Measurement::Impl::emit(std::int64_t now_ns, bool final) {
  MeasurementReport report;
  report.start_ns = interval_start_ns;
  report.end_ns = now_ns;
  const std::int64_t wall_offset = platform::realtime_ns() - platform::monotonic_ns();
  report.wall_start_ns = interval_start_ns + wall_offset;
  report.wall_end_ns = now_ns + wall_offset;
  report.final = final;
  report.targets.reserve(stats.size());
  for (aggregate::TargetStats& s : stats) {
    report.targets.push_back(s.close_interval(now_ns));
  }
  for (std::size_t i = 0; i < report.targets.size() && udp; ++i) {
    for (aggregate::PathSummary& p : report.targets[i].paths) {
      p.source_port = udp->path_source_port(prober_position[i], p.path);
    }
  }
  report.labels.reserve(config.targets.size());
  for (const ProbeTargetSpec& t : config.targets) {
    report.labels.push_back(t.client && pseudonymiser
                                ? client_label(*pseudonymiser, t, report.wall_start_ns / 1'000'000'000)
                                : t.label);
  }
  report.unresolved.reserve(config.targets.size());
  for (std::size_t i = 0; i < config.targets.size(); ++i) {
    report.unresolved.push_back(unresolved[i].load(std::memory_order_relaxed) ? 1 : 0);
  }
  report.loads = std::move(pending_loads);
  pending_loads.clear();
  if (udp) report.counters.udp = udp->counters();
  if (tcp) report.counters.tcp = tcp->counters();
  if (icmp) report.counters.icmp = icmp->counters();
  if (reflector) report.counters.reflector = reflector->counters();
  if (stamp_reflector) report.counters.stamp_reflector = stamp_reflector->counters();
  report.counters.loads_dropped = loads_dropped.load(std::memory_order_relaxed);
  interval_start_ns = now_ns;
  if (sink) {
    sink(std::move(report));
  }
}

void Measurement::Impl::run_aggregator(std::stop_token stop) {
  const std::int64_t interval = config.report_interval.count();
  std::int64_t next_close = interval_start_ns + interval;
  while (!stop.stop_requested()) {
    drain();
    const std::int64_t now = platform::monotonic_ns();
    heartbeat_ns.store(now, std::memory_order_relaxed);
    if (now >= next_close) {
      emit(now, false);
      next_close += interval;
      if (next_close <= now) {
        next_close = now + interval;
      }
    }
    // Woken early by the event ring when half of it is queued.
    doorbell.wait_until(stop, std::min(next_close, now + kAggregatorHeartbeatNs));
  }
  if (final_report.load(std::memory_order_acquire)) {
    // finish() joined every producer first, so this drain sees every event there will be.
    drain();
    emit(platform::monotonic_ns(), true);
  }
}

void Measurement::Impl::stop_probe_thread() {
  if (udp) udp->stop();
  if (tcp) tcp->stop();
  if (icmp) icmp->stop();
  // The probers leave the io_context without work once their stops have run; run() returns.
  probe_work.reset();
  if (probe_thread.joinable()) {
    probe_thread.join();
  }
}

void Measurement::Impl::stop_reflector_thread() {
  if (reflector) reflector->stop();
  if (stamp_reflector) stamp_reflector->stop();
  reflector_work.reset();
  if (reflector_thread.joinable()) {
    reflector_thread.join();
  }
}

Measurement::Measurement(MeasurementConfig config) : config_(std::move(config)) {}

Measurement::~Measurement() { stop(); }

platform::Status Measurement::start(ReportSink sink) {
  if (impl_) {
    return platform::Status::error("measurement already started");
  }
  if (config_.report_interval <= std::chrono::nanoseconds::zero() ||
      config_.load_interval < std::chrono::nanoseconds::zero() || config_.event_ring_capacity == 0) {
    return platform::Status::error("report interval must be > 0, load interval >= 0, event ring capacity > 0");
  }
  for (const ProbeTargetSpec& t : config_.targets) {
    if (t.timeout <= std::chrono::nanoseconds::zero() || !(t.rate_per_s > 0.0)) {
      return platform::Status::error("target " + t.label + ": rate and timeout must be > 0");
    }
    if (t.client && (!config_.privacy ||
                     (config_.privacy->mode == privacy::PseudonymMode::kHmac && !config_.privacy->secret))) {
      // Its label may still be its address: named by position only.
      return platform::Status::error("target " + std::to_string(&t - config_.targets.data() + 1) +
                                     " is a client target but no pseudonym key is set");
    }
  }

  // Before the reflectors start: their first replies carry the configured state.
  platform::ClockStateCell::instance().assume(config_.assume_clock);
  auto impl = std::make_unique<Impl>(config_);
  impl->sink = std::move(sink);
  if (config_.privacy) {
    impl->pseudonymiser = std::make_unique<privacy::Pseudonymiser>(*config_.privacy);
    const privacy::PrivacyConfig& p = *config_.privacy;
    if (p.mode == privacy::PseudonymMode::kPrefix &&
        (p.prefix_v4 > privacy::kMaxSafePrefixV4 || p.prefix_v6 > privacy::kMaxSafePrefixV6)) {
      platform::log(platform::LogLevel::kWarning,
                    "privacy: prefix mode keeps %u of 32 IPv4 and %u of 128 IPv6 bits of client addresses "
                    "(privacy.allow_long_prefix): such labels are close to the addresses themselves",
                    p.prefix_v4, p.prefix_v6);
    }
  }
  impl->unresolved = std::make_unique<std::atomic<bool>[]>(config_.targets.size());
  std::vector<std::string> names;
  for (std::size_t i = 0; i < config_.targets.size(); ++i) {
    const bool name = !config_.targets[i].host.empty();
    impl->unresolved[i].store(name, std::memory_order_relaxed);
    if (name) {
      impl->name_targets.push_back(i);
      names.push_back(config_.targets[i].host);
    }
  }
  impl->name_addresses.assign(names.size(), std::nullopt);
  if (config_.reflector) {
    impl->reflector = std::make_unique<probes::Reflector>(impl->reflector_io, *config_.reflector);
    if (const platform::Status s = impl->reflector->start(); !s) {
      return platform::Status::error("reflector on " + config_.reflector->bind_address + " port " +
                                         std::to_string(config_.reflector->port) + ": " + s.message(),
                                     s.code());
    }
  }
  if (config_.stamp_reflector) {
    impl->stamp_reflector = std::make_unique<probes::StampReflector>(impl->reflector_io, *config_.stamp_reflector);
    if (const platform::Status s = impl->stamp_reflector->start(); !s) {
      // The Vantage reflector may have started: its posted close completes here.
      impl->stop_reflector_thread();
      impl->reflector_io.run();
      return platform::Status::error("STAMP reflector on " + config_.stamp_reflector->bind_address + " port " +
                                         std::to_string(config_.stamp_reflector->port) + ": " + s.message(),
                                     s.code());
    }
  }
  if (platform::Status r = impl->open_probers(); !r) {
    // Whatever did start posts its close; running the io_contexts here completes that.
    impl->stop_probe_thread();
    impl->probe_io.run();
    impl->stop_reflector_thread();
    impl->reflector_io.run();
    return r;
  }

  impl->stats.reserve(config_.targets.size());
  const std::int64_t now = platform::monotonic_ns();
  for (std::size_t i = 0; i < config_.targets.size(); ++i) {
    const ProbeTargetSpec& t = config_.targets[i];
    impl->stats.emplace_back(
        aggregate::TargetStatsConfig{
            .protocol = t.protocol,
            .timeout_ns = t.timeout.count(),
            .window = window_for(t),
            // Only the UDP prober spreads probes over paths (TCP and ICMP probe one).
            .paths = t.protocol == ProbeProtocol::kUdpEcho ? t.paths : 1,
            .max_error_fraction = config_.max_error_fraction,
            .stamp_ssid = i < impl->stamp_ssids.size() ? impl->stamp_ssids[i] : std::uint16_t{0}},
        now);
  }
  impl->interval_start_ns = now;

  Impl* p = impl.get();
  impl->probe_thread = std::thread([p] { p->probe_io.run(); });
  if (impl->reflector || impl->stamp_reflector) {
    impl->reflector_thread = std::thread([p] { p->reflector_io.run(); });
  }
  if (config_.load_interval > std::chrono::nanoseconds::zero()) {
    impl->sampler_thread = std::jthread([p](std::stop_token stop) { p->run_sampler(stop); });
  }
  impl->aggregator_thread = std::jthread([p](std::stop_token stop) { p->run_aggregator(stop); });
  if (!names.empty()) {
    // Last: its callbacks post to the probers, which run by now.
    impl->resolver = std::make_unique<NameResolver>(
        std::move(names), config_.resolve, [p](std::size_t name, const NameState& state) { p->on_name(name, state); },
        config_.lookup ? config_.lookup : NameResolver::Lookup(system_lookup));
    impl->resolver->start();
  }
  impl_ = std::move(impl);
  return platform::Status();
}

void Measurement::finish() {
  if (!impl_) {
    return;
  }
  Impl& impl = *impl_;
  if (impl.resolver) impl.resolver->stop();  // no address changes while the probes wind down
  if (impl.udp) impl.udp->stop_sending();
  if (impl.tcp) impl.tcp->stop_sending();
  if (impl.icmp) impl.icmp->stop_sending();
  std::chrono::nanoseconds longest{0};
  for (const ProbeTargetSpec& t : config_.targets) {
    longest = std::max(longest, t.timeout);
  }
  if (longest > std::chrono::nanoseconds::zero()) {
    // Every probe is now answered or past its timeout; the margin lets a reply read at the
    // deadline reach the ring.
    std::this_thread::sleep_for(longest + std::chrono::milliseconds(50));
  }
  if (impl.sampler_thread.joinable()) {
    impl.sampler_thread.request_stop();
    impl.sampler_thread.join();
  }
  impl.stop_probe_thread();
  impl.final_report.store(true, std::memory_order_release);
  impl.aggregator_thread.request_stop();
  impl.aggregator_thread.join();
  impl.stop_reflector_thread();
  impl_.reset();
}

void Measurement::stop() {
  if (!impl_) {
    return;
  }
  Impl& impl = *impl_;
  if (impl.resolver) impl.resolver->stop();
  if (impl.sampler_thread.joinable()) {
    impl.sampler_thread.request_stop();
    impl.sampler_thread.join();
  }
  impl.stop_probe_thread();
  impl.aggregator_thread.request_stop();
  impl.aggregator_thread.join();
  impl.stop_reflector_thread();
  impl_.reset();
}

std::int64_t Measurement::aggregator_heartbeat_ns() const noexcept {
  return impl_ ? impl_->heartbeat_ns.load(std::memory_order_relaxed) : 0;
}

std::size_t Measurement::unresolved_targets() const noexcept {
  std::size_t n = 0;
  if (impl_) {
    for (std::size_t i = 0; i < config_.targets.size(); ++i) {
      n += impl_->unresolved[i].load(std::memory_order_relaxed) ? 1 : 0;
    }
  }
  return n;
}

std::optional<asio::ip::udp::endpoint> Measurement::reflector_endpoint() const {
  if (!impl_ || !impl_->reflector) {
    return std::nullopt;
  }
  return impl_->reflector->local_endpoint();
}

std::optional<asio::ip::udp::endpoint> Measurement::stamp_reflector_endpoint() const {
  if (!impl_ || !impl_->stamp_reflector) {
    return std::nullopt;
  }
  return impl_->stamp_reflector->local_endpoint();
}

}  // namespace vantage::agent
