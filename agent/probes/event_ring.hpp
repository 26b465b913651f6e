// The ring the probers hand their events to the aggregator through: an SpscRing that rings the
// aggregator's doorbell every time half its capacity has been pushed, so the aggregator sleeps
// until there is a useful amount to drain instead of polling.
#pragma once

#include <cstddef>

#include "agent/probes/probe_event.hpp"
#include "platform/doorbell.hpp"
#include "platform/spsc_ring.hpp"

namespace vantage::agent::probes {

// Producer: the probe thread (try_push). Consumer: everything SpscRing offers.
class EventRing : public platform::SpscRing<ProbeEvent> {
 public:
  // Without a doorbell it is a plain ring (the prober tests drain it themselves).
  explicit EventRing(std::size_t capacity, platform::Doorbell* doorbell = nullptr)
      : platform::SpscRing<ProbeEvent>(capacity), doorbell_(doorbell), wake_every_(this->capacity() / 2 + 1) {}

  // Hides SpscRing's: the count is the producer's own (no load of the consumer's index), so a
  // ring may come early after the consumer drained on its own; never late by more than half a
  // ring. A full ring rings too: the consumer is behind.
  [[nodiscard]] bool try_push(const ProbeEvent& event) noexcept {
    const bool pushed = platform::SpscRing<ProbeEvent>::try_push(event);
    if (doorbell_ != nullptr && (!pushed || ++since_ring_ >= wake_every_)) {
      since_ring_ = 0;
      doorbell_->ring();
    }
    return pushed;
  }

 private:
  platform::Doorbell* doorbell_;
  std::size_t wake_every_;
  std::size_t since_ring_ = 0;  // producer's
};

}  // namespace vantage::agent::probes
