#include <cstdio>

#include "bench/fleet/scenarios.hpp"

namespace vantage::fleet {

int run_hostile(const Options&) {
  std::fprintf(stderr, "vantage-fleet: hostile: not implemented yet\n");
  return 2;
}

}  // namespace vantage::fleet
