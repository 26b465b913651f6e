// Test helper shared by the reflector and prober fixtures: starts a component (Reflector,
// UdpProber, ...) and runs its io_context on a thread of its own; on scope exit stops the
// component and joins the thread, before the component and the io_context it lives on go.
#pragma once

#include <doctest/doctest.h>

#include <asio/io_context.hpp>

#include <thread>

#include "platform/result.hpp"

namespace vantage::agent::probes::test {

// Declare it after the io_context and the component it runs, so it is destroyed first.
template <typename Component>
class StartedOnThread {
 public:
  StartedOnThread(asio::io_context& io, Component& component) : component_(component) {
    const platform::Status started = component_.start();
    REQUIRE_MESSAGE(started, started.message());
    thread_ = std::thread([&io] { io.run(); });
  }
  ~StartedOnThread() {
    component_.stop();
    thread_.join();
  }
  StartedOnThread(const StartedOnThread&) = delete;
  StartedOnThread& operator=(const StartedOnThread&) = delete;

 private:
  Component& component_;
  std::thread thread_;
};

}  // namespace vantage::agent::probes::test
