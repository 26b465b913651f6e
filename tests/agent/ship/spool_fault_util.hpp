// A SpoolFiles that fails on demand: the Nth call of one kind (or of any kind) fails with an errno,
// writes or reads only part of what it was asked to, blocks until released (a hung fsync), or
// takes a while and then succeeds or fails (a slow disk).
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cerrno>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/ship/spool_files.hpp"

namespace spool_test {

using vantage::agent::ship::kSpoolOpCount;
using vantage::agent::ship::SpoolFiles;
using vantage::agent::ship::SpoolOp;

// kDelay: the call takes `delay`, then fails with err (0: it succeeds).
enum class FaultAction { kErrno, kShort, kBlock, kDelay };

struct Fault {
  std::optional<SpoolOp> op;  // nullopt: a call of any kind
  std::uint64_t nth = 1;      // the Nth such call after arm() (1 = the next one)
  FaultAction action = FaultAction::kErrno;
  int err = EIO;
  std::uint64_t count = 1;  // how many such calls in a row, from the Nth; kForever: until clear()
  std::chrono::milliseconds delay{0};  // kDelay
};
inline constexpr std::uint64_t kForever = std::numeric_limits<std::uint64_t>::max();

class FaultySpoolFiles final : public SpoolFiles {
 public:
  // Replaces the faults and restarts the call counts.
  void arm(std::vector<Fault> faults) {
    std::lock_guard lock(mutex_);
    faults_ = std::move(faults);
    calls_ = {};
    any_calls_ = 0;
  }
  void clear() {
    {
      std::lock_guard lock(mutex_);
      faults_.clear();
      released_ = true;
    }
    cv_.notify_all();
  }
  // Lets blocked calls (and later kBlock hits) go on.
  void release() { clear(); }
  std::uint64_t injected() const {
    std::lock_guard lock(mutex_);
    return injected_;
  }
  std::uint64_t calls(SpoolOp op) const {
    std::lock_guard lock(mutex_);
    return calls_[static_cast<std::size_t>(op)];
  }
  bool blocked() const {
    std::lock_guard lock(mutex_);
    return blocked_ > 0;
  }

  int create_directories(const std::filesystem::path& dir) override {
    if (fail(SpoolOp::kMkdir)) return -1;
    return SpoolFiles::create_directories(dir);
  }
  int open(const char* path, int flags, mode_t mode) override {
    if (fail(SpoolOp::kOpen)) return -1;
    return SpoolFiles::open(path, flags, mode);
  }
  int openat(int dir_fd, const char* name, int flags, mode_t mode) override {
    if (fail(SpoolOp::kOpen)) return -1;
    return SpoolFiles::openat(dir_fd, name, flags, mode);
  }
  int list(const std::filesystem::path& dir, std::vector<std::string>& names) override {
    if (fail(SpoolOp::kList)) return -1;
    return SpoolFiles::list(dir, names);
  }
  int size(int fd, std::uint64_t& bytes) override {
    if (fail(SpoolOp::kStat)) return -1;
    return SpoolFiles::size(fd, bytes);
  }
  ssize_t pread(int fd, void* buf, std::size_t n, std::uint64_t offset) override {
    bool partial = false;
    if (fail(SpoolOp::kRead, &partial)) return -1;
    return SpoolFiles::pread(fd, buf, partial && n > 1 ? n / 2 : n, offset);
  }
  ssize_t pwritev(int fd, const iovec* iov, int iovcnt, std::uint64_t offset) override {
    bool partial = false;
    if (fail(SpoolOp::kWrite, &partial)) return -1;
    if (!partial) return SpoolFiles::pwritev(fd, iov, iovcnt, offset);
    // Half of what was asked, as a kernel that ran out of room mid-write would.
    std::size_t total = 0;
    for (int i = 0; i < iovcnt; ++i) total += iov[i].iov_len;
    std::size_t left = total > 1 ? total / 2 : total;
    std::vector<iovec> cut;
    for (int i = 0; i < iovcnt && left > 0; ++i) {
      const std::size_t take = std::min(left, iov[i].iov_len);
      cut.push_back(iovec{iov[i].iov_base, take});
      left -= take;
    }
    return SpoolFiles::pwritev(fd, cut.data(), static_cast<int>(cut.size()), offset);
  }
  int sync(int fd, bool data_only) override {
    if (fail(SpoolOp::kSync)) return -1;
    return SpoolFiles::sync(fd, data_only);
  }
  int renameat(int dir_fd, const char* from, const char* to) override {
    if (fail(SpoolOp::kRename)) return -1;
    return SpoolFiles::renameat(dir_fd, from, to);
  }
  int unlinkat(int dir_fd, const char* name) override {
    if (fail(SpoolOp::kUnlink)) return -1;
    return SpoolFiles::unlinkat(dir_fd, name);
  }
  int ftruncate(int fd, std::uint64_t length) override {
    if (fail(SpoolOp::kTruncate)) return -1;
    return SpoolFiles::ftruncate(fd, length);
  }

 private:
  // True: fail this call (errno set). partial: do only part of it (reads and writes).
  bool fail(SpoolOp op, bool* partial = nullptr) {
    std::unique_lock lock(mutex_);
    const std::uint64_t n = ++calls_[static_cast<std::size_t>(op)];
    const std::uint64_t any = ++any_calls_;
    for (const Fault& f : faults_) {
      const std::uint64_t k = f.op ? (*f.op == op ? n : 0) : any;
      if (k == 0 || k < f.nth || (f.count != kForever && k - f.nth >= f.count)) continue;
      ++injected_;
      switch (f.action) {
        case FaultAction::kErrno:
          errno = f.err;
          return true;
        case FaultAction::kShort:
          if (partial == nullptr) continue;  // only reads and writes can be short
          *partial = true;
          return false;
        case FaultAction::kBlock:
          released_ = false;
          ++blocked_;
          cv_.wait(lock, [this] { return released_; });
          --blocked_;
          return false;
        case FaultAction::kDelay: {
          const Fault hit = f;  // faults_ may be replaced while this call sleeps
          lock.unlock();
          std::this_thread::sleep_for(hit.delay);
          if (hit.err == 0) return false;
          errno = hit.err;
          return true;
        }
      }
    }
    return false;
  }

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<Fault> faults_;
  std::array<std::uint64_t, kSpoolOpCount> calls_{};
  std::uint64_t any_calls_ = 0;
  std::uint64_t injected_ = 0;
  int blocked_ = 0;
  bool released_ = true;
};

}  // namespace spool_test
