// The spool's sync worker: one request at a time, handed over under a mutex.
#include "agent/ship/spool_syncer.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <mutex>

namespace vantage::agent::ship {

struct SpoolSyncer::Shared {
  enum class State { kIdle, kQueued, kRunning, kDone };

  explicit Shared(std::shared_ptr<SpoolFiles> f) : files(std::move(f)) {}

  std::shared_ptr<SpoolFiles> files;
  mutable std::mutex mutex;
  std::condition_variable cv;
  State state = State::kIdle;
  bool stop = false;
  int fd = -1;  // the worker's duplicate, closed by the worker
  bool data_only = false;
  int result = 0;
  bool stalled = false;  // the current request outlasted its wait; its result awaits collect()
  std::chrono::steady_clock::time_point started{};
  std::uint64_t stalls = 0;

  void run() {
    std::unique_lock lock(mutex);
    for (;;) {
      cv.wait(lock, [this] { return stop || state == State::kQueued; });
      if (state != State::kQueued) return;  // stopping and idle
      if (stop) {
        ::close(fd);
        state = State::kIdle;
        return;
      }
      state = State::kRunning;
      const int my_fd = fd;
      const bool my_data_only = data_only;
      lock.unlock();
      int err = 0;
      while (files->sync(my_fd, my_data_only) != 0) {
        if (errno != EINTR) {
          err = errno;
          break;
        }
      }
      ::close(my_fd);
      lock.lock();
      result = err;
      state = State::kDone;
      cv.notify_all();
      if (stop) return;
    }
  }
};

SpoolSyncer::SpoolSyncer(std::shared_ptr<SpoolFiles> files) : shared_(std::make_shared<Shared>(std::move(files))) {}

SpoolSyncer::~SpoolSyncer() {
  if (!worker_.joinable()) return;
  bool stuck = false;
  {
    std::lock_guard lock(shared_->mutex);
    shared_->stop = true;
    stuck = shared_->state == Shared::State::kRunning;
  }
  shared_->cv.notify_all();
  // A worker inside a hung sync may never return: it owns a reference to everything it touches.
  if (stuck) {
    worker_.detach();
  } else {
    worker_.join();
  }
}

namespace {

// Waits for pred, at most wait (negative: no bound).
template <typename Pred>
bool wait_bounded(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, std::chrono::milliseconds wait,
                  Pred pred) {
  if (wait.count() < 0) {
    cv.wait(lock, pred);
    return true;
  }
  return cv.wait_for(lock, wait, pred);
}

}  // namespace

int SpoolSyncer::sync(int fd, bool data_only, std::chrono::milliseconds wait) {
  Shared& s = *shared_;
  std::unique_lock lock(s.mutex);
  if (s.stalled || s.state == Shared::State::kQueued || s.state == Shared::State::kRunning) return kPending;
  s.state = Shared::State::kIdle;
  const int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return errno;
  if (!worker_.joinable()) {
    worker_ = std::thread([shared = shared_] { shared->run(); });
  }
  s.fd = dup;
  s.data_only = data_only;
  s.state = Shared::State::kQueued;
  s.started = std::chrono::steady_clock::now();
  s.cv.notify_all();
  if (!wait_bounded(s.cv, lock, wait, [&s] { return s.state == Shared::State::kDone; })) {
    s.stalled = true;
    ++s.stalls;
    return kPending;
  }
  s.state = Shared::State::kIdle;
  return s.result;
}

bool SpoolSyncer::outstanding() const {
  std::lock_guard lock(shared_->mutex);
  return shared_->stalled;
}

int SpoolSyncer::collect(std::chrono::milliseconds wait) {
  Shared& s = *shared_;
  std::unique_lock lock(s.mutex);
  if (!s.stalled) return 0;
  if (!wait_bounded(s.cv, lock, wait, [&s] { return s.state == Shared::State::kDone; })) return kPending;
  s.stalled = false;
  s.state = Shared::State::kIdle;
  return s.result;
}

std::uint64_t SpoolSyncer::stalls() const {
  std::lock_guard lock(shared_->mutex);
  return shared_->stalls;
}

std::chrono::milliseconds SpoolSyncer::stalled_for() const {
  std::lock_guard lock(shared_->mutex);
  const Shared& s = *shared_;
  if (!s.stalled || (s.state != Shared::State::kQueued && s.state != Shared::State::kRunning)) {
    return std::chrono::milliseconds(0);
  }
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - s.started);
}

}  // namespace vantage::agent::ship
