// Bounded waiting for tests that watch another thread or process: the bound is generous (the
// machine may be busy, the build sanitized or emulated) and only a failing test waits it out.
#pragma once

#include <chrono>
#include <thread>

namespace vantage::test {

// True once predicate() holds, polled every 20 ms; its last answer when `bound` has passed.
template <typename Predicate>
bool eventually(Predicate&& predicate, std::chrono::milliseconds bound = std::chrono::seconds(90)) {
  const auto deadline = std::chrono::steady_clock::now() + bound;
  while (std::chrono::steady_clock::now() < deadline) {
    if (predicate()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return predicate();
}

}  // namespace vantage::test
