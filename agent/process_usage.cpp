#include "agent/process_usage.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <charconv>

#include "platform/clock.hpp"

namespace vantage::agent {

namespace {

std::uint64_t timeval_ns(const timeval& tv) noexcept {
  return static_cast<std::uint64_t>(tv.tv_sec) * 1'000'000'000u +
         static_cast<std::uint64_t>(tv.tv_usec) * 1'000u;
}

// Read during static initialisation, before main: as close to the process start as this code gets.
const std::int64_t g_process_start_ns = platform::realtime_ns();

}  // namespace

ProcessUsage read_process_usage() noexcept {
  ProcessUsage u;
  rusage ru{};
  if (::getrusage(RUSAGE_SELF, &ru) == 0) {
    u.cpu_user_ns = timeval_ns(ru.ru_utime);
    u.cpu_system_ns = timeval_ns(ru.ru_stime);
  }
  // statm: "size resident shared text lib data dt", in pages. One read(2), no allocation.
  const int fd = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char buf[128];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    ::close(fd);
    if (n > 0) {
      const char* p = buf;
      const char* end = buf + n;
      while (p < end && *p != ' ') ++p;  // skip size
      std::uint64_t pages = 0;
      if (p < end && std::from_chars(p + 1, end, pages).ec == std::errc{}) {
        const long page = ::sysconf(_SC_PAGESIZE);
        u.rss_bytes = pages * static_cast<std::uint64_t>(page > 0 ? page : 4096);
      }
    }
  }
  return u;
}

std::int64_t process_start_ns() noexcept { return g_process_start_ns; }

}  // namespace vantage::agent
