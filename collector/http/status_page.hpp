// The status page: one self-contained HTML document (no external scripts, styles or fonts)
// embedded in the binary, and the JSON (/api/status) it polls: the PoP latency matrix, load per
// PoP with a short history, last-seen per agent.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "collector/ingest_server.hpp"
#include "collector/live_view.hpp"

namespace vantage::collector::http {

std::string_view status_page_html() noexcept;

std::string render_status_json(const LiveSnapshot& view, const IngestCounters& counters, std::int64_t now_ns);

// A JSON string literal (quotes included) with everything RFC 8259 requires escaped.
std::string json_string(std::string_view text);

}  // namespace vantage::collector::http
