// The firehose's named peer: VictoriaMetrics on loopback with its own storage, fed the same
// summaries as Influx line protocol over HTTP POST /write by K blocking clients (a minimal
// HTTP/1.1 keep-alive client on Asio; one request = one batch's T lines).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>

#include "bench/fleet/batch_factory.hpp"
#include "bench/fleet/child_process.hpp"

namespace vantage::fleet {

struct VictoriaResult {
  bool ok = false;
  std::string error;
  double window_s = 0.0;
  std::uint64_t requests = 0;   // answered 2xx
  std::uint64_t failed = 0;     // answered otherwise, or the connection failed
  std::uint64_t summaries = 0;  // lines in the 2xx requests
  double cpu_s = 0.0;
  std::uint64_t rss_bytes = 0, hwm_bytes = 0;
  double self_cpu_s = 0.0;
  double request_p50_ms = 0.0, request_p99_ms = 0.0;
};

// Starts binary with storage under work_dir, runs `clients` writers for duration, stops it.
VictoriaResult run_victoria(const std::filesystem::path& binary, const std::filesystem::path& work_dir,
                            const BatchFactory& factory, std::size_t clients, std::chrono::milliseconds duration);

}  // namespace vantage::fleet
