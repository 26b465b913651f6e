#include "agent/report_format.hpp"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <map>
#include <string_view>

#include "platform/json_writer.hpp"

namespace vantage::agent {

namespace {

using aggregate::IntervalSummary;

std::string printf_string(const char* format, auto... args) {
  char buffer[256];
  const int n = std::snprintf(buffer, sizeof buffer, format, args...);
  return std::string(buffer,
                     n < 0 ? 0 : std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buffer - 1));
}

std::string utc_time(std::int64_t wall_ns) {
  const std::time_t seconds = static_cast<std::time_t>(wall_ns / 1'000'000'000);
  std::tm tm{};
  ::gmtime_r(&seconds, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buffer;
}

std::string ms(double ns) { return printf_string("%.3f", ns / 1e6); }
std::string ms(std::uint64_t ns) { return ms(static_cast<double>(ns)); }

// Mean of the total-CPU busy share and the other figures over the samples of the report.
struct LoadDigest {
  std::size_t samples = 0;
  double busy = 0, user = 0, system = 0, iowait = 0, steal = 0;
  const samplers::HostLoad* last = nullptr;
};

LoadDigest digest(const MeasurementReport& report) {
  LoadDigest d;
  for (const HostLoadRecord& r : report.loads) {
    d.last = &r.load;
    if (r.load.cpus.empty() || r.load.cpus.front().cpu != -1) {
      continue;
    }
    const samplers::CpuUsage& c = r.load.cpus.front();
    ++d.samples;
    d.busy += 1.0 - c.idle - c.iowait;
    d.user += c.user;
    d.system += c.system;
    d.iowait += c.iowait;
    d.steal += c.steal;
  }
  if (d.samples > 0) {
    const double n = static_cast<double>(d.samples);
    d.busy /= n, d.user /= n, d.system /= n, d.iowait /= n, d.steal /= n;
  }
  return d;
}

using platform::JsonWriter;

void write_rtt(JsonWriter& j, const IntervalSummary& s) {
  j.begin_object();
  j.field("min", s.min_ns);
  j.field("p50", s.p50_ns);
  j.field("p90", s.p90_ns);
  j.field("p99", s.p99_ns);
  j.field("p999", s.p999_ns);
  j.field("max", s.max_ns);
  j.field("mean", s.mean_ns);
  j.field("stddev", s.stddev_ns);
  j.end_object();
}

// One-way delay: the status and the error bound always, the figures only when reported.
void write_one_way(JsonWriter& j, const aggregate::OneWaySummary& w) {
  j.begin_object();
  j.field("status", aggregate::to_string(w.status));
  j.field("samples", w.samples);
  j.field("error_bound_ns", w.error_bound_ns);
  j.field("max_error_fraction", w.max_error_fraction);
  j.field("sender_synchronised", w.sender_synchronised);
  j.field("reflector_synchronised", w.reflector_synchronised);
  j.field("sender_error_ns", w.sender_error_ns);
  j.field("reflector_error_ns", w.reflector_error_ns);
  if (w.status == aggregate::OneWayStatus::kReported) {
    const auto quantiles = [&j](std::string_view name, std::uint64_t min, std::uint64_t p50, std::uint64_t p90,
                                std::uint64_t p99, std::uint64_t max) {
      j.key(name);
      j.begin_object();
      j.field("min", min);
      j.field("p50", p50);
      j.field("p90", p90);
      j.field("p99", p99);
      j.field("max", max);
      j.end_object();
    };
    quantiles("forward_ns", w.forward_min_ns, w.forward_p50_ns, w.forward_p90_ns, w.forward_p99_ns,
              w.forward_max_ns);
    quantiles("backward_ns", w.backward_min_ns, w.backward_p50_ns, w.backward_p90_ns, w.backward_p99_ns,
              w.backward_max_ns);
  }
  j.end_object();
}

// UDP echo and STAMP: a reflector answers, and its stamps and counters give one-way delay and
// loss direction.
bool answered_by_reflector(probes::ProbeProtocol protocol) {
  return protocol == probes::ProbeProtocol::kUdpEcho || protocol == probes::ProbeProtocol::kStamp;
}

void write_target(JsonWriter& j, const ProbeTargetSpec& spec, const std::string& label,
                  const IntervalSummary& s, bool unresolved) {
  j.begin_object();
  j.field("target", label);
  j.field("protocol", protocol_name(spec.protocol));
  // Its name had no address: not probed, so nothing sent and nothing lost.
  j.field("unresolved", unresolved);
  j.field("sent", s.sent);
  j.field("received", s.received);
  j.field("lost", s.lost);
  j.field("late", s.late);
  j.field("reordered", s.reordered);
  j.field("duplicates", s.duplicates);
  if (answered_by_reflector(spec.protocol)) {
    j.field("lost_outbound", s.lost_outbound);
    j.field("lost_inbound", s.lost_inbound);
    j.field("reflector_restarts", s.reflector_restarts);
    j.field("session_resets", s.session_resets);
  }
  j.field("send_errors", s.send_errors);
  j.field("unexpected", s.unexpected);
  j.field("invalid", s.invalid);
  j.field("loss_ratio", s.sent > 0 ? static_cast<double>(s.lost) / static_cast<double>(s.sent) : 0.0);
  // No reply, no RTT: null rather than zeros a script could take for a measurement.
  j.key("rtt_ns");
  if (s.received == 0) {
    j.value(std::nan(""));
  } else {
    write_rtt(j, s);
  }
  j.key("jitter_ns");
  j.begin_object();
  j.field("samples", s.ipdv_count);
  j.field("mean", s.jitter_mean_ns);
  j.field("p99", s.jitter_p99_ns);
  j.end_object();
  j.field("timestamps", s.timestamp_source == aggregate::TimestampSource::kKernel ? "kernel" : "userspace");
  if (answered_by_reflector(spec.protocol)) {
    j.key("one_way");
    write_one_way(j, s.one_way);
  }
  if (!s.paths.empty()) {
    // Compact: one array per path, [path, source_port, sent, received, lost, min, mean, max] (ns).
    j.key("paths");
    j.begin_array();
    for (const aggregate::PathSummary& p : s.paths) {
      j.begin_array();
      j.value(std::uint64_t{p.path});
      j.value(std::uint64_t{p.source_port});
      j.value(p.sent);
      j.value(p.received);
      j.value(p.lost);
      j.value(p.min_ns);
      j.value(p.mean_ns);
      j.value(p.max_ns);
      j.end_array();
    }
    j.end_array();
  }
  j.end_object();
}

void write_load(JsonWriter& j, const HostLoadRecord& r) {
  const samplers::HostLoad& l = r.load;
  j.begin_object();
  j.field("time_ns", r.wall_time_ns);
  j.field("interval_ns", l.interval_ns);
  j.key("cpus");
  j.begin_array();
  for (const samplers::CpuUsage& c : l.cpus) {
    j.begin_object();
    j.field("cpu", c.cpu);
    j.field("user", c.user);
    j.field("system", c.system);
    j.field("iowait", c.iowait);
    j.field("steal", c.steal);
    j.field("irq", c.irq);
    j.field("softirq", c.softirq);
    j.field("idle", c.idle);
    j.field("freq_khz", c.freq_khz);
    j.end_object();
  }
  j.end_array();
  j.key("memory");
  j.begin_object();
  j.field("total_bytes", l.memory.total_bytes);
  j.field("available_bytes", l.memory.available_bytes);
  j.field("swap_total_bytes", l.memory.swap_total_bytes);
  j.field("swap_free_bytes", l.memory.swap_free_bytes);
  j.field("dirty_bytes", l.memory.dirty_bytes);
  j.end_object();
  // Absent figures (no PSI, no loadavg) are null rather than a sentinel.
  auto present = [](double v) { return v < 0 ? std::nan("") : v; };
  j.key("pressure");
  j.begin_object();
  j.field("cpu_some_avg10", present(l.pressure.cpu_some_avg10));
  j.field("memory_some_avg10", present(l.pressure.memory_some_avg10));
  j.field("memory_full_avg10", present(l.pressure.memory_full_avg10));
  j.field("io_some_avg10", present(l.pressure.io_some_avg10));
  j.field("io_full_avg10", present(l.pressure.io_full_avg10));
  j.end_object();
  j.key("load_average");
  j.begin_array();
  j.value(present(l.load_average.one));
  j.value(present(l.load_average.five));
  j.value(present(l.load_average.fifteen));
  j.end_array();
  j.key("net");
  j.begin_array();
  for (const samplers::NetInterface& n : l.net) {
    j.begin_object();
    j.field("name", n.name);
    j.field("rx_bytes_per_s", n.rates.rx_bytes_per_s);
    j.field("tx_bytes_per_s", n.rates.tx_bytes_per_s);
    j.field("rx_packets_per_s", n.rates.rx_packets_per_s);
    j.field("tx_packets_per_s", n.rates.tx_packets_per_s);
    j.field("rx_errors_per_s", n.rates.rx_errors_per_s);
    j.field("tx_errors_per_s", n.rates.tx_errors_per_s);
    j.field("rx_drops_per_s", n.rates.rx_drops_per_s);
    j.field("tx_drops_per_s", n.rates.tx_drops_per_s);
    j.end_object();
  }
  j.end_array();
  j.key("temperatures");
  j.begin_array();
  for (const samplers::Temperature& t : l.temperatures) {
    j.begin_object();
    j.field("sensor", t.sensor);
    j.field("celsius", t.celsius);
    j.end_object();
  }
  j.end_array();
  j.key("errors");
  j.begin_array();
  for (const platform::ReadError& e : r.errors) {
    j.value(e.to_string());
  }
  j.end_array();
  j.end_object();
}

// Writes the report in pieces (a target, a load sample at a time) to sink(std::string_view), so
// that a report of many targets and samples is never held whole as text.
template <typename Sink>
void json_report(const MeasurementReport& report, const std::vector<ProbeTargetSpec>& targets, Sink&& sink) {
  JsonWriter j({.double_digits = 9});
  j.begin_object();
  j.field("start_ns", report.wall_start_ns);
  j.field("end_ns", report.wall_end_ns);
  j.field("final", report.final);
  j.key("targets");
  j.begin_array();
  for (std::size_t i = 0; i < report.targets.size() && i < targets.size(); ++i) {
    write_target(j, targets[i], report_label(report, targets, i), report.targets[i],
                 i < report.unresolved.size() && report.unresolved[i] != 0);
    j.drain(sink);
  }
  j.end_array();
  j.key("load");
  j.begin_array();
  for (const HostLoadRecord& r : report.loads) {
    write_load(j, r);
    j.drain(sink);
  }
  j.end_array();
  const MeasurementCounters& c = report.counters;
  j.key("agent");
  j.begin_object();
  j.field("events_dropped", c.udp.events_dropped + c.tcp.ring_full + c.icmp.ring_full);
  j.field("loads_dropped", c.loads_dropped);
  j.key("reflector");
  j.begin_object();
  j.field("received", c.reflector.received);
  j.field("replied", c.reflector.replied);
  j.field("dropped_short", c.reflector.dropped_short);
  j.field("dropped_malformed", c.reflector.dropped_malformed);
  j.field("dropped_foreign", c.reflector.dropped_foreign);
  j.field("dropped_rate_limited", c.reflector.dropped_rate_limited);
  j.field("send_errors", c.reflector.send_errors);
  j.end_object();
  j.key("stamp_reflector");
  j.begin_object();
  j.field("received", c.stamp_reflector.received);
  j.field("replied", c.stamp_reflector.replied);
  j.field("dropped_short", c.stamp_reflector.dropped_short);
  j.field("dropped_malformed", c.stamp_reflector.dropped_malformed);
  j.field("dropped_auth", c.stamp_reflector.dropped_auth);
  j.field("dropped_rate_limited", c.stamp_reflector.dropped_rate_limited);
  j.field("send_errors", c.stamp_reflector.send_errors);
  j.field("tlvs_unrecognised", c.stamp_reflector.tlvs_unrecognised);
  j.field("tlvs_malformed", c.stamp_reflector.tlvs_malformed);
  j.end_object();
  j.end_object();
  j.end_object();
  j.drain(sink);
}

// Writes the table a line (or a few) at a time to sink(std::string_view).
template <typename Sink>
void table_report(const MeasurementReport& report, const std::vector<ProbeTargetSpec>& targets, Sink&& sink) {
  std::string out;
  auto flush = [&out, &sink] {
    sink(std::string_view(out));
    out.clear();
  };
  const double seconds = static_cast<double>(report.end_ns - report.start_ns) / 1e9;
  out += printf_string("%.1f s from ", seconds) + utc_time(report.wall_start_ns) + "; RTT in ms\n";
  if (!report.targets.empty()) {
    out += printf_string("%-28s %-4s %7s %7s %6s %5s %5s %5s %8s %8s %8s %8s %8s %8s %8s %8s %-6s\n",
                         "TARGET", "PROT", "SENT", "RECV", "LOST", "LATE", "DUP", "REORD", "MIN", "P50",
                         "P90", "P99", "MAX", "MEAN", "STDDEV", "JITTER", "STAMPS");
  }
  for (std::size_t i = 0; i < report.targets.size() && i < targets.size(); ++i) {
    const IntervalSummary& s = report.targets[i];
    out +=
        printf_string("%-28s %-4s %7" PRIu64 " %7" PRIu64 " %6" PRIu64 " %5" PRIu64 " %5" PRIu64 " %5" PRIu64,
                      report_label(report, targets, i).c_str(), protocol_name(targets[i].protocol), s.sent,
                      s.received, s.lost, s.late, s.duplicates, s.reordered);
    if (s.received > 0) {
      out += printf_string(" %8s %8s %8s %8s %8s %8s %8s %8s", ms(s.min_ns).c_str(), ms(s.p50_ns).c_str(),
                           ms(s.p90_ns).c_str(), ms(s.p99_ns).c_str(), ms(s.max_ns).c_str(),
                           ms(s.mean_ns).c_str(), ms(s.stddev_ns).c_str(), ms(s.jitter_mean_ns).c_str());
    } else {
      out += printf_string(" %8s %8s %8s %8s %8s %8s %8s %8s", "-", "-", "-", "-", "-", "-", "-", "-");
    }
    out += s.timestamp_source == aggregate::TimestampSource::kKernel ? " kernel" : " user";
    std::string notes;
    if (answered_by_reflector(targets[i].protocol) && s.lost > 0) {
      notes += printf_string(" lost out/in/unknown %" PRIu64 "/%" PRIu64 "/%" PRIu64, s.lost_outbound,
                             s.lost_inbound, s.lost - std::min(s.lost, s.lost_outbound + s.lost_inbound));
    }
    if (i < report.unresolved.size() && report.unresolved[i] != 0) {
      notes += " unresolved: " + targets[i].host + " has no address (not probed, not loss)";
    }
    if (const aggregate::OneWaySummary& w = s.one_way; answered_by_reflector(targets[i].protocol) && w.samples > 0) {
      if (w.status == aggregate::OneWayStatus::kReported) {
        notes += " one-way p50 fwd/back " + ms(w.forward_p50_ns) + "/" + ms(w.backward_p50_ns);
      } else {
        notes += std::string(" one-way ") + aggregate::to_string(w.status);
      }
      notes += " (error bound " + ms(static_cast<double>(w.error_bound_ns)) + ")";
    }
    if (s.send_errors > 0) notes += printf_string(" send errors %" PRIu64, s.send_errors);
    if (s.reflector_restarts > 0)
      notes += printf_string(" reflector restarts %" PRIu64, s.reflector_restarts);
    if (!s.paths.empty()) {
      // Only the paths that lost anything, as path:lost/sent; the rest is the target's own line.
      std::string lossy;
      for (const aggregate::PathSummary& p : s.paths) {
        if (p.lost > 0) lossy += printf_string(" %u:%" PRIu64 "/%" PRIu64, unsigned{p.path}, p.lost, p.sent);
      }
      notes += printf_string(" %zu paths", s.paths.size());
      if (!lossy.empty()) notes += ", lossy (path:lost/sent)" + lossy;
    }
    if (!notes.empty()) out += " " + notes;
    out += '\n';
    flush();
  }

  const LoadDigest d = digest(report);
  if (d.last != nullptr) {
    const samplers::HostLoad& l = *d.last;
    out += printf_string(
        "host: %zu samples; cpu busy %.1f%% (user %.1f, system %.1f, iowait %.1f, steal %.1f)",
        report.loads.size(), 100 * d.busy, 100 * d.user, 100 * d.system, 100 * d.iowait, 100 * d.steal);
    if (l.memory.total_bytes > 0) {
      out += printf_string("; memory available %.2f of %.2f GiB",
                           static_cast<double>(l.memory.available_bytes) / 1073741824.0,
                           static_cast<double>(l.memory.total_bytes) / 1073741824.0);
    }
    if (l.load_average.one >= 0) {
      out += printf_string("; load %.2f %.2f %.2f", l.load_average.one, l.load_average.five,
                           l.load_average.fifteen);
    }
    if (l.pressure.cpu_some_avg10 >= 0) {
      out += printf_string("; pressure cpu %.2f%% io %.2f%% memory %.2f%%", l.pressure.cpu_some_avg10,
                           l.pressure.io_some_avg10, l.pressure.memory_some_avg10);
    }
    out += '\n';
    for (const samplers::Temperature& t : l.temperatures) {
      out += printf_string("  temperature %s %.1f C\n", t.sensor.c_str(), t.celsius);
    }
    std::map<std::string, std::size_t> errors;
    for (const HostLoadRecord& r : report.loads) {
      for (const platform::ReadError& e : r.errors) {
        ++errors[e.to_string()];
      }
    }
    for (const auto& [message, count] : errors) {
      out += "  could not read " + message + (count > 1 ? printf_string(" (%zu samples)", count) : "") + "\n";
    }
  }
  const probes::ReflectorCounters& rc = report.counters.reflector;
  if (rc.received > 0) {
    out += printf_string("reflector: %" PRIu64 " probes received, %" PRIu64 " answered, %" PRIu64
                         " rate-limited, %" PRIu64 " malformed or foreign\n",
                         rc.received, rc.replied, rc.dropped_rate_limited,
                         rc.dropped_short + rc.dropped_malformed + rc.dropped_foreign);
  }
  const probes::StampReflectorCounters& sc = report.counters.stamp_reflector;
  if (sc.received > 0) {
    out += printf_string("stamp reflector: received=%" PRIu64 " replied=%" PRIu64 " authenticated=%" PRIu64
                         " dropped_short=%" PRIu64 " dropped_malformed=%" PRIu64 " dropped_auth=%" PRIu64
                         " dropped_rate_limited=%" PRIu64 " send_errors=%" PRIu64 "\n",
                         sc.received, sc.replied, sc.replied_authenticated, sc.dropped_short, sc.dropped_malformed,
                         sc.dropped_auth, sc.dropped_rate_limited, sc.send_errors);
  }
  flush();
}

auto appender(std::string& out) {
  return [&out](std::string_view s) { out += s; };
}

auto file_writer(std::FILE* file) {
  return [file](std::string_view s) { std::fwrite(s.data(), 1, s.size(), file); };
}

}  // namespace

std::string format_json(const MeasurementReport& report, const std::vector<ProbeTargetSpec>& targets) {
  std::string out;
  json_report(report, targets, appender(out));
  return out;
}

void write_json(std::FILE* file, const MeasurementReport& report, const std::vector<ProbeTargetSpec>& targets) {
  json_report(report, targets, file_writer(file));
}

std::string format_table(const MeasurementReport& report, const std::vector<ProbeTargetSpec>& targets) {
  std::string out;
  table_report(report, targets, appender(out));
  return out;
}

void write_table(std::FILE* file, const MeasurementReport& report, const std::vector<ProbeTargetSpec>& targets) {
  table_report(report, targets, file_writer(file));
}

}  // namespace vantage::agent
