// Renders a MeasurementReport for people (a fixed-width table) and for scripts (one JSON
// object per report), as vantage-agent --once prints them.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "agent/measurement.hpp"

namespace vantage::agent {

std::string format_table(const MeasurementReport& report, const std::vector<ProbeTargetSpec>& targets);

// One line, no trailing newline. Times in ns; ratios 0..1. Schema in the README.
std::string format_json(const MeasurementReport& report, const std::vector<ProbeTargetSpec>& targets);

// The same text written to `file` a target or a line at a time, never held whole in memory.
void write_table(std::FILE* file, const MeasurementReport& report, const std::vector<ProbeTargetSpec>& targets);
void write_json(std::FILE* file, const MeasurementReport& report, const std::vector<ProbeTargetSpec>& targets);

}  // namespace vantage::agent
