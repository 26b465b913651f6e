// Test helper shared by the reflector and prober tests: a started Reflector whose io_context
// runs on its own thread, stopped and joined on scope exit.
#pragma once

#include <doctest/doctest.h>

#include <asio/io_context.hpp>
#include <asio/ip/address.hpp>
#include <asio/ip/udp.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "agent/probes/reflector.hpp"
#include "tests/agent/probes/started_on_thread.hpp"

namespace vantage::agent::probes::test {

using asio::ip::udp;

// A started Reflector whose io_context runs on its own thread, stopped and joined on scope exit.
class RunningReflector {
 public:
  explicit RunningReflector(ReflectorConfig config) : reflector_(io_, std::move(config)) {}

  Reflector& operator*() { return reflector_; }
  Reflector* operator->() { return &reflector_; }
  udp::endpoint endpoint() const { return reflector_.local_endpoint(); }

  // The reflector's port at the given loopback address.
  udp::endpoint target(const std::string& address) {
    return udp::endpoint(asio::ip::make_address(address), reflector_.local_endpoint().port());
  }

  // Counters once the reflector has read `received` datagrams and finished handling them (or
  // after a long timeout). A reply can reach the test before the reflector counts it as sent.
  ReflectorCounters counters_after(std::uint64_t received,
                                   std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const ReflectorCounters c = reflector_.counters();
      const std::uint64_t handled = c.replied + c.dropped_short + c.dropped_malformed + c.dropped_foreign +
                                    c.dropped_rate_limited + c.send_errors;
      if ((c.received >= received && handled >= received) || std::chrono::steady_clock::now() >= deadline) {
        return c;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

 private:
  asio::io_context io_;
  Reflector reflector_;
  StartedOnThread<Reflector> started_{io_, reflector_};
};

}  // namespace vantage::agent::probes::test
