// vantage-fleet: load-tests vantage-collector with a simulated fleet of agents on loopback.
#include <csignal>
#include <cstdio>
#include <string>

#include "bench/fleet/options.hpp"
#include "bench/fleet/scenarios.hpp"

namespace {

const char* kUsage =
    "usage: vantage-fleet SCENARIO --collector PATH [options]\n"
    "  steady   --agents N --interval-s I --targets T --duration-s D [--max-p99-ms MS]\n"
    "  firehose --agents K --targets T --duration-s D [--window W] [--victoria PATH | --no-victoria]\n"
    "  storm    --agents N [--targets T]\n"
    "  hostile  --agents N --half-open-per-source H --sources S [--half-open-main H0] [--slow C]\n"
    "           [--non-readers C] [--garbage C] --interval-s I --duration-s D\n"
    "  jetstream --agents N --interval-s I --targets T --duration-s D [--nats-server PATH]\n"
    "           [--kill-node leader|none|1..3 (leader)] [--kill-node-at-s S (40)] [--down-s S (15)]\n"
    "           [--collectors C (2)] [--stream NAME (VANTAGE)]\n"
    "common: --io-threads N (2) --per-source N (agents per 127.0.0.X, 100) --ramp-s S\n"
    "        --collector-config-extra 'key = value' (repeatable) --collector-log-level LEVEL\n"
    "        --work-dir DIR --keep-work-dir --per-agent-keys\n";

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string scenario = argv[1];
  vantage::fleet::Options options;
  std::string error;
  if (!options.parse(argc, argv, 2, error)) {
    std::fprintf(stderr, "vantage-fleet: %s\n%s", error.c_str(), kUsage);
    return 2;
  }
  int rc = 2;
  try {
    if (scenario == "steady") {
      rc = vantage::fleet::run_steady(options);
    } else if (scenario == "firehose") {
      rc = vantage::fleet::run_firehose(options);
    } else if (scenario == "storm") {
      rc = vantage::fleet::run_storm(options);
    } else if (scenario == "hostile") {
      rc = vantage::fleet::run_hostile(options);
    } else if (scenario == "jetstream") {
      rc = vantage::fleet::run_jetstream(options);
    } else {
      std::fprintf(stderr, "vantage-fleet: unknown scenario '%s'\n%s", scenario.c_str(), kUsage);
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vantage-fleet: %s\n", e.what());
    return 2;
  }
  for (const std::string& name : options.unused()) {
    std::fprintf(stderr, "vantage-fleet: warning: option --%s was not used by %s\n", name.c_str(), scenario.c_str());
  }
  return rc;
}
