// Runs the spool's fsyncs on a worker thread and waits for each only a bounded time, so a hung
// disk cannot block the thread that owns the spool (the shipper's, whose health feeds the watchdog).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>

#include "agent/ship/spool_files.hpp"

namespace vantage::agent::ship {

class SpoolSyncer {
 public:
  static constexpr int kPending = -1;

  // files must outlive every sync it runs: the worker keeps the shared_ptr, also once detached.
  explicit SpoolSyncer(std::shared_ptr<SpoolFiles> files);
  // Joins the worker, or leaves it to finish on its own when it is stuck in a sync.
  ~SpoolSyncer();
  SpoolSyncer(const SpoolSyncer&) = delete;
  SpoolSyncer& operator=(const SpoolSyncer&) = delete;

  // 0, an errno, or kPending: the sync did not return within wait (a negative wait: no bound),
  // or an earlier one that did is not collected yet (then nothing new is started: one hung sync
  // holds one thread). A sync that outlasted its wait goes on, and its result is kept for
  // collect(): a slow disk's syncs still count, and an error is never lost to a later sync that
  // returns 0. The worker syncs a duplicate of fd, so the caller may close its own at once.
  int sync(int fd, bool data_only, std::chrono::milliseconds wait);
  // A sync that outlasted its wait and whose result nobody has collected yet.
  [[nodiscard]] bool outstanding() const;
  // Waits up to wait (negative: no bound) for that sync: its result (once), or kPending.
  int collect(std::chrono::milliseconds wait);

  [[nodiscard]] std::uint64_t stalls() const;  // syncs that outlasted their wait
  // How long the sync that outlasted its wait has been running; zero when none is.
  [[nodiscard]] std::chrono::milliseconds stalled_for() const;

 private:
  struct Shared;
  std::shared_ptr<Shared> shared_;
  std::thread worker_;
};

}  // namespace vantage::agent::ship
