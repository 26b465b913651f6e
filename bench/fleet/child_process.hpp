// ChildProcess: a program the simulator starts and measures (vantage-collector, VictoriaMetrics):
// spawn with stdout and stderr appended to a log file, signal, reap; plus what /proc says about
// a process's CPU time and memory.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace vantage::fleet {

// CPU time (user + system) and memory of one process, from /proc/PID/stat and /proc/PID/status.
struct ProcessSample {
  double cpu_s = 0.0;
  std::uint64_t rss_bytes = 0;  // VmRSS
  std::uint64_t hwm_bytes = 0;  // VmHWM: the peak RSS so far
  bool ok = false;
};
ProcessSample sample_process(pid_t pid);
// This process's own CPU time (getrusage).
double self_cpu_s();
// Raises RLIMIT_NOFILE's soft limit to its hard limit; returns the new soft limit.
std::uint64_t raise_fd_limit();

class ChildProcess {
 public:
  ChildProcess() = default;
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // argv[0] is the program path. Output appended to log_path. The child dies with the simulator.
  bool start(const std::vector<std::string>& argv, const std::filesystem::path& log_path, std::string& error);
  pid_t pid() const noexcept { return pid_; }
  bool running() const noexcept { return pid_ > 0; }
  // Signals, then waits up to timeout for the exit (SIGKILL after that); the exit status or
  // nullopt when it had to be killed. kill_now: SIGKILL and reap.
  std::optional<int> stop(int signal, std::chrono::milliseconds timeout);
  void kill_now();
  // Non-blocking: true (and the status) if the child has exited.
  bool exited(int* status = nullptr);

 private:
  pid_t pid_ = -1;
};

// Waits until the log file has a line containing `needle` at or after byte `from`, or the
// process exits, or the timeout passes.
bool wait_for_log(const std::filesystem::path& log, std::uintmax_t from, const std::string& needle,
                  ChildProcess& process, std::chrono::milliseconds timeout);

// A TCP port on loopback below the ephemeral range that nothing holds right now.
std::uint16_t free_port();

}  // namespace vantage::fleet
