#include "collector/http/status_page.hpp"

#include <algorithm>
#include <optional>
#include <string>

#include "platform/json_writer.hpp"

namespace vantage::collector::http {

namespace {

// The page is collector/http/status_page.html; the build embeds its bytes (cmake/EmbedFile.cmake
// writes them as the string literal in status_page.html.inc). Rows of the matrix are the measuring
// agents' PoPs, columns the targets' names (named after the PoP they reach in a fleet that probes
// itself); colour is RTT on a log scale from 1 ms (green) to 300 ms (red); a cell with loss gets a
// red corner and its loss percentage.
constexpr char kPageText[] =
#include "status_page.html.inc"
    ;
constexpr std::string_view kPage{kPageText, sizeof kPageText - 1};

}  // namespace

std::string_view status_page_html() noexcept { return kPage; }

std::string json_string(std::string_view text) {
  return platform::json_string(text, platform::JsonEscape::kHtmlSafe);
}

namespace {

double ms(std::int64_t ns) { return static_cast<double>(ns) / 1e6; }

// Why a pair's one-way figures are absent or not to be trusted, for the page's marker and tooltip;
// empty when reported.
std::string one_way_reason(const LiveOneWay& w) {
  switch (w.status) {
    case OneWayStatus::kReported:
      return {};
    case OneWayStatus::kUnsynchronised:
      if (!w.sender_synchronised && !w.reflector_synchronised) return "neither clock is synchronised";
      if (!w.sender_synchronised) return "the agent's clock is not synchronised";
      if (!w.reflector_synchronised) return "the reflector's clock is not synchronised";
      return "a clock was not synchronised during the interval";
    case OneWayStatus::kBoundTooLarge:
      return "the clocks' error bound is not below the allowed fraction of the delay";
    case OneWayStatus::kNotMeasured:
      break;
  }
  return "not measured (no reply carried both ends' timestamps)";
}

}  // namespace

std::string render_status_json(const LiveSnapshot& view, const IngestCounters& counters,
                               std::int64_t now_ns) {
  // kHtmlSafe: names from agents never close a script element if the JSON is ever inlined.
  platform::JsonWriter j({.escape = platform::JsonEscape::kHtmlSafe});
  const auto field_or_null = [&j](std::string_view key, const auto& v) {
    j.key(key);
    if (v) {
      j.value(*v);
    } else {
      j.null();
    }
  };
  // counters.mesh.versions is sorted by agent id.
  const auto& versions = counters.mesh.versions;
  const auto find_versions = [&versions](const std::string& agent_id) -> const MeshAgentVersions* {
    const auto found = std::lower_bound(versions.begin(), versions.end(), agent_id,
                                        [](const MeshAgentVersions& v, const std::string& id) { return v.agent_id < id; });
    return found != versions.end() && found->agent_id == agent_id ? &*found : nullptr;
  };
  j.begin_object();
  j.field("now_ms", static_cast<double>(now_ns / 1'000'000));
  j.key("cells");
  j.begin_array();
  for (const LiveLatency& l : view.latency) {
    j.begin_object();
    j.field("src", l.pop);
    j.field("dst", l.target);
    j.field("agent", l.agent_id);
    j.field("region", l.region);
    j.field("protocol", l.protocol);
    j.field("p50_ms", static_cast<double>(l.p50_ns) / 1e6);
    j.field("p99_ms", static_cast<double>(l.p99_ns) / 1e6);
    j.field("jitter_ms", l.jitter_mean_ns / 1e6);
    j.field("loss", l.loss_ratio);
    j.field("sent", l.sent);
    j.field("lost", l.lost);
    j.field("unresolved", l.unresolved);  // the agent has no address for this target's name
    j.field("age_s", static_cast<double>(now_ns - l.interval_end_ns) / 1e9);
    // null: the summary carried no one-way delay (an older agent, or a protocol without it).
    j.key("one_way");
    if (l.one_way) {
      const LiveOneWay& w = *l.one_way;
      j.begin_object();
      j.field("status", to_string(w.status));
      j.field("trusted", w.status == OneWayStatus::kReported);
      j.field("reason", one_way_reason(w));
      j.field("error_bound_ms", ms(w.error_bound_ns));
      j.field("max_error_fraction", w.max_error_fraction);
      j.field("sender_synchronised", w.sender_synchronised);
      j.field("reflector_synchronised", w.reflector_synchronised);
      j.field("samples", w.samples);
      if (w.status == OneWayStatus::kReported) {
        j.field("forward_p50_ms", ms(w.forward_p50_ns));
        j.field("forward_p99_ms", ms(w.forward_p99_ns));
        j.field("backward_p50_ms", ms(w.backward_p50_ns));
        j.field("backward_p99_ms", ms(w.backward_p99_ns));
        j.field("forward_min_ms", ms(w.forward_min_ns));
        j.field("forward_max_ms", ms(w.forward_max_ns));
        j.field("backward_min_ms", ms(w.backward_min_ns));
        j.field("backward_max_ms", ms(w.backward_max_ns));
      }
      j.end_object();
    } else {
      j.null();
    }
    j.end_object();
  }
  j.end_array();
  j.key("load");
  j.begin_array();
  for (const LiveLoad& l : view.load) {
    j.begin_object();
    j.field("pop", l.pop);
    j.field("agent", l.agent_id);
    field_or_null("cpu_busy", l.cpu_busy);
    field_or_null("load1", l.load1);
    field_or_null("mem_used", l.mem_total && l.mem_available && *l.mem_total > 0
                                  ? std::optional(1.0 - static_cast<double>(*l.mem_available) /
                                                            static_cast<double>(*l.mem_total))
                                  : std::nullopt);
    j.key("history");
    j.begin_array();
    for (const LoadPoint& point : l.history) {
      j.begin_array();
      j.value(static_cast<double>(point.time_ns / 1'000'000));
      j.value(point.cpu_busy);
      j.end_array();
    }
    j.end_array();
    j.end_object();
  }
  j.end_array();
  j.key("agents");
  j.begin_array();
  for (const LiveAgent& a : view.agents) {
    j.begin_object();
    j.field("agent", a.agent_id);
    j.field("region", a.region);
    j.field("pop", a.pop);
    j.field("incarnation", a.incarnation);  // names the agent's spool: seq counts within it
    j.field("seq", a.seq);
    j.field("age_s", static_cast<double>(now_ns - a.last_seen_ns) / 1e9);
    field_or_null("rss_bytes", a.self ? std::optional(a.self->rss_bytes) : std::nullopt);
    field_or_null("spool_batches", a.self ? std::optional(a.self->spool_records) : std::nullopt);
    field_or_null("reconnects", a.self ? std::optional(a.self->reconnects) : std::nullopt);
    // Every self-metric by its wire name, from the one field list: a new field appears here
    // without an edit.
    j.key("self");
    if (a.self) {
      j.begin_object();
      wire::for_each_agent_self_field(*a.self, [&](const wire::AgentSelfField& f, const auto& v) { j.field(f.name, v); });
      j.end_object();
    } else {
      j.null();
    }
    // The agent's clock as of its newest batch (null: the agent does not send it).
    j.key("clock");
    if (a.clock) {
      j.begin_object();
      j.field("synchronised", a.clock->synchronised);
      j.field("estimated_error_ms", ms(a.clock->estimated_error_ns));
      j.field("maximum_error_ms", ms(a.clock->maximum_error_ns));
      j.field("source", a.clock->source);
      j.end_object();
    } else {
      j.null();
    }
    // The mesh's view of its target list (null without a mesh or when the mesh does not know it).
    const MeshAgentVersions* mesh_versions = find_versions(a.agent_id);
    field_or_null("target_list_version", mesh_versions ? std::optional(mesh_versions->running) : std::nullopt);
    field_or_null("target_list_planned_version",
                  mesh_versions && mesh_versions->planned != 0 ? std::optional(mesh_versions->planned) : std::nullopt);
    field_or_null("target_list_stale", mesh_versions ? std::optional(mesh_versions->stale()) : std::nullopt);
    j.end_object();
  }
  j.end_array();
  // The mesh (null when not configured): every agent it knows, connected or not yet forgotten,
  // with the list version planned for it, last sent and reported running.
  j.key("mesh");
  if (counters.mesh.enabled) {
    const MeshCounters& m = counters.mesh;
    j.begin_object();
    j.field("agents", m.agents);
    j.field("pops", m.pops);
    j.field("planned_targets", m.planned_targets);
    j.field("lists_recomputed", m.lists_recomputed);
    j.field("lists_sent", m.lists_sent);
    j.field("agents_stale", m.agents_stale);
    j.key("versions");
    j.begin_array();
    for (const MeshAgentVersions& v : versions) {
      j.begin_object();
      j.field("agent", v.agent_id);
      j.field("region", v.region);
      j.field("pop", v.pop);
      j.field("running", v.running);
      j.field("planned", v.planned);
      j.field("sent", v.sent);
      j.field("connected", v.connected);
      j.field("accepts_lists", v.accepts_lists);
      j.field("stale", v.stale());
      j.end_object();
    }
    j.end_array();
    j.end_object();
  } else {
    j.null();
  }
  j.key("collector");
  j.begin_object();
  j.field("connections_open", counters.connections_open);
  j.field("batches_stored", counters.batches_stored);
  j.end_object();
  j.end_object();
  return j.take();
}

}  // namespace vantage::collector::http
