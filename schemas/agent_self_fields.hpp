// The agent's self-metrics (AgentSelf in telemetry.fbs) as ONE field list that every copy expands:
// the agent's builder, the collector's store columns, its live view and /metrics. A new field is
// one line here plus its appended field in telemetry.fbs.
#pragma once

#include <cstddef>
#include <cstdint>

#include "vantage/telemetry_generated.h"

// X(field, C++ type, Prometheus metric, kind (Gauge/Counter), divisor to the metric's unit,
//   label name, label value, help). Fields of one metric are adjacent and differ by the label
//   value; the family's help is its first field's. Order is telemetry.fbs's (store columns).
#define VANTAGE_AGENT_SELF_FIELDS(X)                                                                           \
  X(process_start_ns, std::int64_t, "vantage_agent_start_time_seconds", Gauge, 1e9, "", "",                    \
    "When the agent process started (Unix time).")                                                            \
  X(config_generation, std::uint64_t, "vantage_agent_config_generation", Gauge, 1.0, "", "",                   \
    "1 at start, +1 per reload that took effect.")                                                            \
  X(rss_bytes, std::uint64_t, "vantage_agent_resident_memory_bytes", Gauge, 1.0, "", "",                       \
    "The agent's resident set size.")                                                                         \
  X(cpu_user_ns, std::uint64_t, "vantage_agent_cpu_seconds_total", Counter, 1e9, "mode", "user",               \
    "CPU time the agent process used, by mode.")                                                              \
  X(cpu_system_ns, std::uint64_t, "vantage_agent_cpu_seconds_total", Counter, 1e9, "mode", "system", "")       \
  X(probe_ring_dropped, std::uint64_t, "vantage_agent_ring_dropped_total", Counter, 1.0, "ring", "probe",       \
    "Events the agent lost to a full ring: probe events, load samples.")                                      \
  X(load_ring_dropped, std::uint64_t, "vantage_agent_ring_dropped_total", Counter, 1.0, "ring", "load", "")     \
  X(spool_records, std::uint64_t, "vantage_agent_spool_batches", Gauge, 1.0, "", "",                           \
    "Batches in the agent's spool awaiting an ack.")                                                          \
  X(spool_bytes, std::uint64_t, "vantage_agent_spool_bytes", Gauge, 1.0, "", "", "Their size on the agent's disk.") \
  X(reconnects, std::uint64_t, "vantage_agent_reconnects_total", Counter, 1.0, "", "",                         \
    "Collector sessions the agent established after its first.")                                              \
  X(connect_failures, std::uint64_t, "vantage_agent_connect_failures_total", Counter, 1.0, "", "",             \
    "Collector connections that failed before TLS.")                                                          \
  X(tls_failures, std::uint64_t, "vantage_agent_tls_failures_total", Counter, 1.0, "", "",                     \
    "TLS handshakes with a collector that failed.")                                                           \
  X(rejected, std::uint64_t, "vantage_agent_rejected_total", Counter, 1.0, "", "",                             \
    "Refusals from a collector: a session (identity, region) or a batch, which stays spooled.")               \
  X(spool_errors, std::uint64_t, "vantage_agent_spool_errors_total", Counter, 1.0, "", "",                     \
    "Spool writes, acks and syncs that failed on the agent (I/O error, disk full).")                           \
  X(spool_lost, std::uint64_t, "vantage_agent_spool_lost_total", Counter, 1.0, "", "",                         \
    "Batches the agent's spool could not keep (write failed after dropping older ones, unreadable).")          \
  X(spool_sync_stalls, std::uint64_t, "vantage_agent_spool_sync_stalls_total", Counter, 1.0, "", "",           \
    "Spool fsyncs on the agent that outlasted the shipper's wait (a hung or very slow disk).")

namespace vantage::wire {

// The values of one AgentSelf, as plain members named after the wire fields.
struct AgentSelfValues {
#define VANTAGE_AGENT_SELF_MEMBER(field, type, ...) type field = 0;
  VANTAGE_AGENT_SELF_FIELDS(VANTAGE_AGENT_SELF_MEMBER)
#undef VANTAGE_AGENT_SELF_MEMBER
};

enum class SelfMetricKind : std::uint8_t { Gauge, Counter };

// What the collector needs to know about one field besides its value.
struct AgentSelfField {
  const char* name;         // the wire field, store column and view column
  const char* metric;       // the Prometheus family
  SelfMetricKind kind;
  double divisor;           // value / divisor is the metric's unit (ns to seconds)
  const char* label;        // "" when the family has no label of its own
  const char* label_value;
  const char* help;         // the family's help, on its first field; "" on the others
};

inline constexpr AgentSelfField kAgentSelfFields[] = {
#define VANTAGE_AGENT_SELF_DESCRIPTOR(field, type, metric, kind, divisor, label, label_value, help) \
  {#field, metric, SelfMetricKind::kind, divisor, label, label_value, help},
    VANTAGE_AGENT_SELF_FIELDS(VANTAGE_AGENT_SELF_DESCRIPTOR)
#undef VANTAGE_AGENT_SELF_DESCRIPTOR
};
inline constexpr std::size_t kAgentSelfFieldCount = std::size(kAgentSelfFields);

// Calls f(kAgentSelfFields[i], member) for every field in list order; Values is AgentSelfValues,
// const or not, or a type derived from it.
template <typename Values, typename F>
void for_each_agent_self_field(Values& values, F&& f) {
  std::size_t i = 0;
#define VANTAGE_AGENT_SELF_VISIT(field, ...) f(kAgentSelfFields[i++], values.field);
  VANTAGE_AGENT_SELF_FIELDS(VANTAGE_AGENT_SELF_VISIT)
#undef VANTAGE_AGENT_SELF_VISIT
}

inline AgentSelfValues agent_self_values(const AgentSelf& m) {
  AgentSelfValues v;
#define VANTAGE_AGENT_SELF_READ(field, ...) v.field = m.field();
  VANTAGE_AGENT_SELF_FIELDS(VANTAGE_AGENT_SELF_READ)
#undef VANTAGE_AGENT_SELF_READ
  return v;
}

inline flatbuffers::Offset<AgentSelf> build_agent_self(flatbuffers::FlatBufferBuilder& fbb,
                                                       const AgentSelfValues& v) {
  AgentSelfBuilder b(fbb);
#define VANTAGE_AGENT_SELF_WRITE(field, ...) b.add_##field(v.field);
  VANTAGE_AGENT_SELF_FIELDS(VANTAGE_AGENT_SELF_WRITE)
#undef VANTAGE_AGENT_SELF_WRITE
  return b.Finish();
}

}  // namespace vantage::wire
