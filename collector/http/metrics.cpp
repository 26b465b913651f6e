#include "collector/http/metrics.hpp"

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "collector/http/prometheus_text.hpp"

namespace vantage::collector::http {

namespace {

using Type = PrometheusText::Type;

constexpr double kNs = 1e9;

double seconds(std::int64_t ns) { return static_cast<double>(ns) / kNs; }
double num(std::uint64_t v) { return static_cast<double>(v); }

Labels latency_labels(const LiveLatency& l) {
  return {{"region", l.region},
          {"pop", l.pop},
          {"agent", l.agent_id},
          {"target", l.target},
          {"protocol", l.protocol}};
}

template <typename Row>
Labels agent_labels(const Row& r) {
  return {{"region", r.region}, {"pop", r.pop}, {"agent", r.agent_id}};
}

// One gauge or counter family over a list of rows; rows for which value() has nothing are skipped.
template <typename Row, typename LabelsOf, typename ValueOf>
void family(PrometheusText& out, std::string_view name, Type type, std::string_view help,
            const std::vector<Row>& rows, LabelsOf labels_of, ValueOf value_of) {
  out.family(name, type, help);
  for (const Row& r : rows) {
    const std::optional<double> v = value_of(r);
    if (v) out.sample(name, labels_of(r), *v);
  }
}

// The vantage_path_* families: one sample per path of each multi-path target's newest interval.
void path_families(PrometheusText& out, const std::vector<LiveLatency>& lat) {
  struct PathFamily {
    const char* name;
    const char* help;
    double (*value)(const LivePath&);
  };
  static constexpr PathFamily kPathFamilies[] = {
      {"vantage_path_probes_sent", "Probes sent over one ECMP path (source port) in the newest interval.",
       [](const LivePath& p) { return num(p.sent); }},
      {"vantage_path_probes_lost", "Probes lost over one ECMP path in the newest interval.",
       [](const LivePath& p) { return num(p.lost); }},
      {"vantage_path_loss_ratio", "lost / (received + lost) of one ECMP path in the newest interval.",
       [](const LivePath& p) { return p.loss_ratio; }},
      {"vantage_path_rtt_mean_seconds", "Mean round trip of one ECMP path in the newest interval.",
       [](const LivePath& p) { return seconds(p.mean_ns); }},
  };
  for (const PathFamily& f : kPathFamilies) {
    out.family(f.name, Type::kGauge, f.help);
    for (const LiveLatency& l : lat) {
      for (const LivePath& p : l.paths) {
        // Labels hold views: the path's text must outlive the sample.
        const std::string path = std::to_string(p.path);
        Labels labels = latency_labels(l);
        labels.emplace_back("path", path);
        out.sample(f.name, labels, f.value(p));
      }
    }
  }
}

// One-way delay per target whose summary carried it (agents that know it send it for every UDP
// echo and STAMP target): the status always, the error bound always (it explains a
// bound_too_large), the delays only when reported.
void one_way_families(PrometheusText& out, const std::vector<LiveLatency>& lat) {
  out.family("vantage_one_way_delay_seconds", Type::kSummary,
             "One-way delay quantiles per direction (forward: agent to target, backward: target to agent) in the "
             "newest interval; only when both clocks were synchronised and the error bound small enough.");
  for (const LiveLatency& l : lat) {
    if (!l.one_way || l.one_way->status != OneWayStatus::kReported) continue;
    const LiveOneWay& w = *l.one_way;
    const std::tuple<const char*, const char*, std::int64_t> quantiles[] = {
        {"forward", "0.5", w.forward_p50_ns},
        {"forward", "0.99", w.forward_p99_ns},
        {"backward", "0.5", w.backward_p50_ns},
        {"backward", "0.99", w.backward_p99_ns}};
    for (const auto& [direction, q, ns] : quantiles) {
      Labels labels = latency_labels(l);
      labels.emplace_back("direction", direction);
      labels.emplace_back("quantile", q);
      out.sample("vantage_one_way_delay_seconds", labels, seconds(ns));
    }
  }
  out.family("vantage_one_way_error_bound_seconds", Type::kGauge,
             "Combined clock error bound (agent plus reflector error estimates) the one-way decision used.");
  for (const LiveLatency& l : lat) {
    if (l.one_way) out.sample("vantage_one_way_error_bound_seconds", latency_labels(l), seconds(l.one_way->error_bound_ns));
  }
  // Every status as its own sample, 1 for the current one: four series a target at most, and a
  // change of status is a change of value, not a series that appears and goes stale.
  out.family("vantage_one_way_status", Type::kGauge,
             "1 for the one-way delay status of the newest interval (reported, unsynchronised: a clock not "
             "synchronised, bound_too_large: error bound not below the configured fraction of the delay, "
             "not_measured), 0 for the others.");
  for (const LiveLatency& l : lat) {
    if (!l.one_way) continue;
    for (std::size_t i = 0; i < kOneWayStatusCount; ++i) {
      const auto status = static_cast<OneWayStatus>(i);
      Labels labels = latency_labels(l);
      labels.emplace_back("status", to_string(status));
      out.sample("vantage_one_way_status", labels, l.one_way->status == status ? 1.0 : 0.0);
    }
  }
}

}  // namespace

std::string render_metrics(const LiveSnapshot& view, const IngestCounters& c, const char* sink_name,
                           std::int64_t now_ns) {
  PrometheusText out;
  const auto& lat = view.latency;

  // Latency per (region, pop, agent, target, protocol), from the newest interval.
  // A summary: the only type whose samples may carry a quantile label (a gauge with one fails
  // promtool). Quantiles only, no _sum/_count: the interval's probe counts are their own families.
  out.family("vantage_rtt_seconds", Type::kSummary,
             "Round-trip time quantiles in the newest reporting interval (reflector dwell time removed).");
  for (const LiveLatency& l : lat) {
    const std::pair<const char*, std::int64_t> quantiles[] = {
        {"0.5", l.p50_ns}, {"0.9", l.p90_ns}, {"0.99", l.p99_ns}, {"0.999", l.p999_ns}};
    for (const auto& [q, ns] : quantiles) {
      Labels labels = latency_labels(l);
      labels.emplace_back("quantile", q);
      out.sample("vantage_rtt_seconds", labels, seconds(ns));
    }
  }
  const auto opt = [](double v) { return std::optional<double>(v); };
  family(out, "vantage_rtt_max_seconds", Type::kGauge, "Largest round trip in the newest interval.", lat,
         latency_labels, [&](const LiveLatency& l) { return opt(seconds(l.max_ns)); });
  family(out, "vantage_rtt_mean_seconds", Type::kGauge, "Mean round trip in the newest interval.", lat,
         latency_labels, [&](const LiveLatency& l) { return opt(l.mean_ns / kNs); });
  family(out, "vantage_jitter_mean_seconds", Type::kGauge,
         "Mean absolute IP delay variation (RFC 3393) in the newest interval.", lat, latency_labels,
         [&](const LiveLatency& l) { return opt(l.jitter_mean_ns / kNs); });
  family(out, "vantage_jitter_p99_seconds", Type::kGauge, "99th percentile of the IP delay variation.", lat,
         latency_labels, [&](const LiveLatency& l) { return opt(seconds(l.jitter_p99_ns)); });
  family(out, "vantage_probes_sent", Type::kGauge, "Probes sent in the newest interval.", lat, latency_labels,
         [&](const LiveLatency& l) { return opt(l.sent); });
  family(out, "vantage_probes_received", Type::kGauge, "Probes answered in time in the newest interval.", lat,
         latency_labels, [&](const LiveLatency& l) { return opt(l.received); });
  family(out, "vantage_probes_lost", Type::kGauge, "Probes lost in the newest interval.", lat, latency_labels,
         [&](const LiveLatency& l) { return opt(l.lost); });
  family(out, "vantage_loss_ratio", Type::kGauge, "lost / (received + lost) in the newest interval.", lat,
         latency_labels, [&](const LiveLatency& l) { return opt(l.loss_ratio); });
  family(out, "vantage_target_unresolved", Type::kGauge,
         "1 when the agent could not resolve the target's name in the newest interval (so it was not "
         "probed: no RTT, and no loss either).",
         lat, latency_labels, [&](const LiveLatency& l) { return opt(l.unresolved ? 1.0 : 0.0); });
  family(out, "vantage_latency_age_seconds", Type::kGauge,
         "Seconds since the end of the newest interval (collector clock minus agent clock).", lat,
         latency_labels, [&](const LiveLatency& l) { return opt(seconds(now_ns - l.interval_end_ns)); });

  // Per ECMP path, only for targets probed over several (at most 64 paths a target, the agent's
  // bound): the path label multiplies a target's series by its path count, so one-path targets
  // stay out.
  path_families(out, lat);
  one_way_families(out, lat);

  // Host load per (region, pop, agent).
  const auto& load = view.load;
  const auto labels_of_load = [](const LiveLoad& r) { return agent_labels(r); };
  const auto u64 = [](const std::optional<std::uint64_t>& v) {
    return v ? std::optional<double>(num(*v)) : std::nullopt;
  };
  family(out, "vantage_host_cpu_busy_ratio", Type::kGauge, "CPU busy (not idle, not iowait), all CPUs, 0..1.",
         load, labels_of_load, [](const LiveLoad& r) { return r.cpu_busy; });
  family(out, "vantage_host_memory_total_bytes", Type::kGauge, "Host memory.", load, labels_of_load,
         [&](const LiveLoad& r) { return u64(r.mem_total); });
  family(out, "vantage_host_memory_available_bytes", Type::kGauge, "Host memory available (MemAvailable).",
         load, labels_of_load, [&](const LiveLoad& r) { return u64(r.mem_available); });
  family(out, "vantage_host_load1", Type::kGauge, "One-minute load average.", load, labels_of_load,
         [](const LiveLoad& r) { return r.load1; });
  family(out, "vantage_host_pressure_cpu_some_ratio", Type::kGauge,
         "PSI: share of the last 10 s some task waited for CPU (absent without PSI).", load, labels_of_load,
         [](const LiveLoad& r) { return r.psi_cpu_some; });
  family(out, "vantage_host_pressure_memory_some_ratio", Type::kGauge,
         "PSI: share of the last 10 s some task waited for memory (absent without PSI).", load,
         labels_of_load, [](const LiveLoad& r) { return r.psi_memory_some; });
  family(out, "vantage_host_pressure_io_some_ratio", Type::kGauge,
         "PSI: share of the last 10 s some task waited for I/O (absent without PSI).", load, labels_of_load,
         [](const LiveLoad& r) { return r.psi_io_some; });
  family(out, "vantage_host_load_age_seconds", Type::kGauge,
         "Seconds since the newest load sample was taken.", load, labels_of_load,
         [&](const LiveLoad& r) { return opt(seconds(now_ns - r.time_ns)); });

  // Agents: last seen and their self-metrics.
  const auto& agents = view.agents;
  const auto labels_of_agent = [](const LiveAgent& r) { return agent_labels(r); };
  family(out, "vantage_agent_last_seen_timestamp_seconds", Type::kGauge,
         "When the collector stored the agent's newest batch (Unix time).", agents, labels_of_agent,
         [&](const LiveAgent& a) { return opt(seconds(a.last_seen_ns)); });
  family(out, "vantage_agent_batch_seq", Type::kGauge, "Sequence number of the agent's newest batch.", agents,
         labels_of_agent, [&](const LiveAgent& a) { return opt(num(a.seq)); });
  family(out, "vantage_agent_spool_dropped_total", Type::kCounter,
         "Batches the agent's spool dropped unacked to stay within its bound.", agents, labels_of_agent,
         [&](const LiveAgent& a) { return opt(num(a.spool_dropped)); });
  // The agent's clock (absent for agents that do not send it): whether its one-way figures and
  // those of the agents probing it can be trusted.
  family(out, "vantage_agent_clock_synchronised", Type::kGauge,
         "1 when the agent's kernel declared its clock synchronised (adjtimex) at its newest batch.", agents,
         labels_of_agent, [&](const LiveAgent& a) {
           return a.clock ? opt(a.clock->synchronised ? 1.0 : 0.0) : std::optional<double>();
         });
  out.family("vantage_agent_clock_error_seconds", Type::kGauge,
             "The agent's clock error as its kernel estimates it (kind=estimated) and bounds it (kind=maximum).");
  for (const LiveAgent& a : agents) {
    if (!a.clock) continue;
    for (const auto& [kind, ns] : {std::pair{"estimated", a.clock->estimated_error_ns},
                                   std::pair{"maximum", a.clock->maximum_error_ns}}) {
      Labels l = agent_labels(a);
      l.emplace_back("kind", kind);
      out.sample("vantage_agent_clock_error_seconds", l, seconds(ns));
    }
  }
  out.family("vantage_agent_clock_source_info", Type::kGauge,
             "1, labelled with what keeps the agent's clock (chrony, ntpd, timesyncd, ptp, pps, configured, unknown).");
  for (const LiveAgent& a : agents) {
    if (!a.clock) continue;
    Labels l = agent_labels(a);
    l.emplace_back("source", a.clock->source);
    out.sample("vantage_agent_clock_source_info", l, 1.0);
  }

  // Self-metrics: a family per metric of schemas/agent_self_fields.hpp; the fields of one family
  // are its samples, told apart by their label.
  const auto& fields = wire::kAgentSelfFields;
  std::vector<std::array<double, wire::kAgentSelfFieldCount>> self_values(agents.size());
  for (std::size_t i = 0; i < agents.size(); ++i) {
    if (!agents[i].self) continue;
    std::size_t f = 0;
    wire::for_each_agent_self_field(*agents[i].self, [&](const wire::AgentSelfField& field, auto v) {
      self_values[i][f++] = static_cast<double>(v) / field.divisor;
    });
  }
  for (std::size_t first = 0, end = 0; first < std::size(fields); first = end) {
    for (end = first + 1;
         end < std::size(fields) && std::string_view(fields[end].metric) == fields[first].metric;) {
      ++end;
    }
    out.family(fields[first].metric,
               fields[first].kind == wire::SelfMetricKind::Counter ? Type::kCounter : Type::kGauge,
               fields[first].help);
    for (std::size_t i = 0; i < agents.size(); ++i) {
      if (!agents[i].self) continue;
      for (std::size_t f = first; f < end; ++f) {
        Labels l = agent_labels(agents[i]);
        if (*fields[f].label != '\0') l.emplace_back(fields[f].label, fields[f].label_value);
        out.sample(fields[f].metric, l, self_values[i][f]);
      }
    }
  }

  // The collector itself.
  const auto counter = [&](std::string_view name, Type type, std::string_view help, double v) {
    out.family(name, type, help);
    out.sample(name, {}, v);
  };
  // The collector's own counters and gauges, one sample each.
  struct CollectorFamily {
    const char* name;
    Type type;
    const char* help;
    std::uint64_t IngestCounters::*value;
  };
  static constexpr CollectorFamily kCollectorFamilies[] = {
      {"vantage_collector_connections_open", Type::kGauge, "Agent connections open now.",
       &IngestCounters::connections_open},
      {"vantage_collector_connections_accepted_total", Type::kCounter, "Agent connections accepted.",
       &IngestCounters::connections_accepted},
      {"vantage_collector_handshakes_total", Type::kCounter, "TLS handshakes completed.",
       &IngestCounters::handshakes},
      {"vantage_collector_handshakes_resumed_total", Type::kCounter,
       "Of those, handshakes that resumed a session ticket (no certificate exchange).",
       &IngestCounters::resumed_handshakes},
      {"vantage_collector_handshakes_in_progress", Type::kGauge,
       "Unauthenticated connections in their TLS handshake (the pre-authentication budget).",
       &IngestCounters::handshakes_in_progress},
      {"vantage_collector_sessions_open", Type::kGauge, "Authenticated agent sessions open now.",
       &IngestCounters::sessions_open},
      {"vantage_collector_store_queue_bytes", Type::kGauge, "Batches waiting for the store, in bytes.",
       &IngestCounters::store_queue_bytes},
      {"vantage_collector_store_queue_peak_bytes", Type::kGauge,
       "The most the store queue held since start (bounded by store.queue_bytes plus one read).",
       &IngestCounters::store_queue_peak_bytes},
      {"vantage_collector_read_pauses_total", Type::kCounter,
       "Times a connection stopped reading because the store queue was full (backpressure).",
       &IngestCounters::read_pauses},
      {"vantage_collector_frames_total", Type::kCounter, "Frames received and verified.",
       &IngestCounters::frames},
      {"vantage_collector_batches_stored_total", Type::kCounter, "Batches newly stored by the sink.",
       &IngestCounters::batches_stored},
      {"vantage_collector_batches_duplicate_total", Type::kCounter,
       "Batches already stored (resent by an agent): acked, not stored again.",
       &IngestCounters::batches_duplicate},
      {"vantage_collector_batches_failed_total", Type::kCounter,
       "Batches the sink failed; their agents retry them.", &IngestCounters::batches_failed},
      {"vantage_collector_acks_sent_total", Type::kCounter, "Acks sent to agents.",
       &IngestCounters::acks_sent},
      {"vantage_collector_commits_total", Type::kCounter, "Sink store calls (SQLite: transactions).",
       &IngestCounters::commits},
  };
  for (const CollectorFamily& f : kCollectorFamilies) counter(f.name, f.type, f.help, num(c.*f.value));
  out.family("vantage_collector_rejects_total", Type::kCounter, "Connections or frames refused, by reason.");
  for (std::size_t i = 0; i < static_cast<std::size_t>(Reject::kCount); ++i) {
    out.sample("vantage_collector_rejects_total", {{"reason", to_string(static_cast<Reject>(i))}},
               num(c.rejects[i]));
  }
  out.family("vantage_collector_sink_latency_seconds", Type::kHistogram,
             "Each sink store call, from hand-over to durable.");
  out.histogram("vantage_collector_sink_latency_seconds", {{"sink", sink_name}}, kSinkLatencyBounds,
                c.sink_latency_buckets, c.sink_latency_sum_s);
  // TLS material and the certificates it has seen (absent while unknown).
  counter("vantage_collector_tls_reloads_total", Type::kCounter,
          "Reloads of the TLS certificate, key, CA and CRL (SIGHUP) that took effect.", num(c.tls_reloads));
  counter("vantage_collector_tls_reload_failures_total", Type::kCounter,
          "Reloads that failed (a file unreadable or invalid); the previous material stayed in use.",
          num(c.tls_reload_failures));
  const auto timestamp = [&](std::string_view name, std::string_view help, std::int64_t s) {
    if (s != 0) counter(name, Type::kGauge, help, static_cast<double>(s));
  };
  timestamp("vantage_collector_certificate_expiry_timestamp_seconds",
            "notAfter of the collector's own TLS certificate (Unix time), as last loaded.",
            c.certificate_not_after_s);
  timestamp("vantage_collector_agent_certificate_earliest_expiry_timestamp_seconds",
            "Earliest notAfter (Unix time) among the agent certificates of the sessions open now "
            "(refused identities excluded).",
            c.agent_certificate_earliest_not_after_s);
  timestamp("vantage_collector_crl_next_update_timestamp_seconds",
            "nextUpdate of the loaded CRL (Unix time): renew and reload before it, or full handshakes fail.",
            c.crl_next_update_s);
  if (c.crl_next_update_s != 0 || c.crl_revoked_serials != 0) {
    counter("vantage_collector_crl_revoked_certificates", Type::kGauge,
            "Certificate serials the loaded CRL revokes.", num(c.crl_revoked_serials));
  }
  counter("vantage_collector_live_view_agents", Type::kGauge,
          "Agents in the live view (seen within forget_after).", num(agents.size()));

  // The mesh: only when configured. Per agent, the same (region, pop, agent) labels as the other
  // per-agent families.
  if (c.mesh.enabled) {
    const MeshCounters& m = c.mesh;
    counter("vantage_mesh_agents", Type::kGauge,
            "Agents in the mesh (connected, or gone for less than mesh.forget_after).", num(m.agents));
    counter("vantage_mesh_pops", Type::kGauge, "PoPs with an agent in the mesh.", num(m.pops));
    counter("vantage_mesh_planned_targets", Type::kGauge, "Targets over all agents' planned lists.",
            num(m.planned_targets));
    counter("vantage_mesh_lists_recomputed_total", Type::kCounter,
            "Target lists the planner rebuilt because an agent joined, changed or left.", num(m.lists_recomputed));
    counter("vantage_mesh_lists_sent_total", Type::kCounter, "Target lists handed to agents' sessions.",
            num(m.lists_sent));
    counter("vantage_mesh_lists_replaced_total", Type::kCounter,
            "Target lists replaced unsent by a newer one (the agent was not reading).", num(m.lists_replaced));
    counter("vantage_mesh_agents_stale", Type::kGauge,
            "Agents that take target lists and report running a version other than the planned one.",
            num(m.agents_stale));
    const auto& versions = m.versions;
    const auto labels_of_versions = [](const MeshAgentVersions& v) { return agent_labels(v); };
    family(out, "vantage_agent_target_list_version", Type::kGauge,
           "Version of the collector-made target list the agent reports running (0: none).", versions,
           labels_of_versions, [&](const MeshAgentVersions& v) { return opt(num(v.running)); });
    family(out, "vantage_agent_target_list_planned_version", Type::kGauge,
           "Version of the agent's current list in the mesh (absent when it is not in the planner).", versions,
           labels_of_versions, [&](const MeshAgentVersions& v) {
             return v.planned != 0 ? opt(num(v.planned)) : std::optional<double>();
           });
    family(out, "vantage_agent_target_list_stale", Type::kGauge,
           "1 when the agent takes target lists and runs a version other than the planned one.", versions,
           labels_of_versions, [&](const MeshAgentVersions& v) {
             return v.accepts_lists ? opt(v.stale() ? 1.0 : 0.0) : std::optional<double>();
           });
  }
  return out.take();
}

}  // namespace vantage::collector::http
