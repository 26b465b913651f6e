// The prober tests' view of a prober's output: the event ring and everything left in it.
#pragma once

#include <vector>

#include "agent/probes/probe_event.hpp"
#include "agent/probes/event_ring.hpp"

namespace vantage::agent::probes::test {

using EventRing = probes::EventRing;

// Pops every event the ring holds, oldest first (the test thread is the ring's consumer).
inline std::vector<ProbeEvent> drain_events(EventRing& ring) {
  std::vector<ProbeEvent> events;
  ProbeEvent e;
  while (ring.try_pop(e)) {
    events.push_back(e);
  }
  return events;
}

}  // namespace vantage::agent::probes::test
