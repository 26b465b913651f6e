// The collector's /metrics: the live view's newest figures per PoP, agent and target, and the
// ingest's own counters, as Prometheus text (families listed in the README, "Operators' view").
#pragma once

#include <cstdint>
#include <string>

#include "collector/ingest_server.hpp"
#include "collector/live_view.hpp"

namespace vantage::collector::http {

std::string render_metrics(const LiveSnapshot& view, const IngestCounters& counters, const char* sink_name,
                           std::int64_t now_ns);

}  // namespace vantage::collector::http
