// vantage-agent: the edge daemon's entry point.
#include <signal.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "agent/cli.hpp"
#include "agent/measurement.hpp"
#include "agent/report_format.hpp"
#include "agent/version.hpp"

namespace {

using vantage::agent::MeasurementReport;

// Waits for SIGINT or SIGTERM, or until the timeout. The signals are blocked in every thread
// (the mask is set before any starts), so sigtimedwait is the only place they land.
bool wait_for_signal(const sigset_t& signals, std::chrono::nanoseconds timeout) {
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(timeout);
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(seconds.count());
  ts.tv_nsec = static_cast<long>((timeout - seconds).count());
  for (;;) {
    const int s = ::sigtimedwait(&signals, nullptr, &ts);
    if (s > 0) {
      return true;
    }
    if (errno != EINTR) {
      return false;  // EAGAIN: the timeout passed
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  vantage::agent::ParsedArgs parsed = vantage::agent::parse_args(args);
  if (!parsed.options) {
    std::fprintf(stderr, "vantage-agent: %s\n%s", parsed.error.c_str(), vantage::agent::usage_text());
    return 2;
  }
  const vantage::agent::AgentOptions& options = *parsed.options;
  if (options.show_version) {
    std::puts(vantage::agent::version_line().c_str());
    return 0;
  }
  if (options.show_help) {
    std::fputs(vantage::agent::usage_text(), stdout);
    return 0;
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  vantage::agent::Measurement measurement(options.measurement);
  const auto& targets = measurement.config().targets;
  const bool json = options.json;
  auto sink = [&targets, json](MeasurementReport&& report) {
    const std::string text = json ? vantage::agent::format_json(report, targets) + "\n"
                                  : vantage::agent::format_table(report, targets) + "\n";
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  };
  const vantage::agent::MeasurementStartResult started = measurement.start(sink);
  if (!started.ok()) {
    std::fprintf(stderr, "vantage-agent: %s\n", started.message.c_str());
    return 1;
  }
  if (const auto endpoint = measurement.reflector_endpoint()) {
    std::fprintf(stderr, "vantage-agent: reflector listening on %s port %u\n",
                 endpoint->address().to_string().c_str(), static_cast<unsigned>(endpoint->port()));
  }

  if (options.once_seconds) {
    const auto duration = std::chrono::nanoseconds(static_cast<std::int64_t>(*options.once_seconds * 1e9));
    // An interrupt ends the run early but still prints what was measured.
    (void)wait_for_signal(signals, duration);
  } else {
    while (!wait_for_signal(signals, std::chrono::hours(1))) {
    }
  }
  measurement.finish();
  return 0;
}
