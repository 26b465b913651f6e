// vantage-agent: the edge daemon's entry point.
#include <signal.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "agent/cli.hpp"
#include "agent/measurement.hpp"
#include "agent/report_format.hpp"
#include "agent/version.hpp"
#include "platform/log.hpp"

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
  vantage::platform::set_log_identity("vantage-agent");
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

  std::unique_ptr<vantage::agent::ship::Shipper> shipper;
  if (options.shipping) {
    auto opened = vantage::agent::ship::Shipper::open(*options.shipping);
    for (const std::string& warning : opened.warnings) {
      vantage::platform::log(vantage::platform::LogLevel::kWarning, "spool: %s", warning.c_str());
    }
    if (!opened.shipper) {
      std::fprintf(stderr, "vantage-agent: %s\n", opened.error.c_str());
      return 1;
    }
    shipper = std::move(opened.shipper);
    shipper->start();
  }

  vantage::agent::Measurement measurement(options.measurement);
  const auto& targets = measurement.config().targets;
  const bool json = options.json;
  // Without a collector the reports go to stdout; with one, to the spool (and stdout for --once).
  const bool print = !shipper || options.once_seconds.has_value();
  auto* ship = shipper.get();
  auto sink = [&targets, json, print, ship](MeasurementReport&& report) {
    if (print) {
      const std::string text = json ? vantage::agent::format_json(report, targets) + "\n"
                                    : vantage::agent::format_table(report, targets) + "\n";
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    }
    if (ship != nullptr) {
      ship->submit(std::move(report), targets);
    }
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
  if (shipper) {
    shipper->stop(options.drain);
    const auto c = shipper->counters();
    vantage::platform::log(vantage::platform::LogLevel::kInfo,
                           "stopped: %llu batches spooled, acked through %llu, %llu still spooled",
                           static_cast<unsigned long long>(c.batches_spooled),
                           static_cast<unsigned long long>(c.acked_seq),
                           static_cast<unsigned long long>(c.spool.records));
  }
  return 0;
}
