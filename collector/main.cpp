// vantage-collector: `serve` ingests agents' telemetry over mutual TLS into SQLite or JetStream;
// the other commands (query, consume, --version) are in cli.cpp.
#include <signal.h>

#include <charconv>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "collector/cli.hpp"
#include "collector/config.hpp"
#include "collector/http/http_server.hpp"
#include "collector/ingest_server.hpp"
#include "collector/live_view.hpp"
#include "collector/store/jetstream_sink.hpp"
#include "platform/log.hpp"
#include "platform/sd_notify.hpp"

namespace {

using vantage::collector::IngestConfig;
using vantage::collector::IngestServer;

bool parse_endpoint(std::string_view text, asio::ip::tcp::endpoint& out) {
  std::string host;
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find("]:");
    if (close == std::string_view::npos) return false;
    host = std::string(text.substr(1, close - 1));
    port = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return false;
    host = std::string(text.substr(0, colon));
    port = text.substr(colon + 1);
  }
  unsigned p = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (ec != std::errc() || end != port.data() + port.size() || p > 65535) return false;
  std::error_code aec;
  const auto address = asio::ip::make_address(host, aec);
  if (aec) return false;
  out = asio::ip::tcp::endpoint(address, static_cast<std::uint16_t>(p));
  return true;
}

// Unix seconds as "2026-12-02T14:00:00Z".
std::string utc_text(std::int64_t seconds) {
  const std::time_t t = static_cast<std::time_t>(seconds);
  std::tm tm{};
  char text[32] = "?";
  if (gmtime_r(&t, &tm) != nullptr) std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  vantage::platform::set_log_identity("vantage-collector");
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::fputs(vantage::collector::usage_text(), args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  if (args.size() == 1 && args[0] == "--version") {
    vantage::collector::print_version(stdout);
    return 0;
  }
  if (args.size() == 1 && args[0] == "--config-reference") {
    std::fputs(vantage::collector::config_reference_markdown().c_str(), stdout);
    return 0;
  }
  const std::string_view command = args[0];
  if (command == "consume") {
    return vantage::collector::consume_command(std::span(args).subspan(1), stdout);
  }
  if (command != "serve" && command != "query") {
    std::fprintf(stderr, "vantage-collector: unknown command '%.*s'\n%s", static_cast<int>(command.size()),
                 command.data(), vantage::collector::usage_text());
    return 2;
  }
  IngestConfig config;
  vantage::collector::store::JetStreamOptions jetstream;  // used when it has servers
  std::vector<asio::ip::tcp::endpoint> http_listen;       // --http / [http] listen: /metrics, status page
  std::chrono::seconds http_forget_after{3600};
  // serve --config FILE [--check-config]: the settings come from TOML, nothing else is mixed in.
  std::optional<std::string> config_path;
  bool check_only = false;
  for (std::size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--config" && i + 1 < args.size()) config_path = std::string(args[++i]);
    if (args[i] == "--check-config") check_only = true;
  }
  if (command == "serve" && (config_path || check_only)) {
    if (!config_path || args.size() != (check_only ? 4u : 3u)) {
      std::fprintf(stderr,
                   "vantage-collector: serve --config FILE [--check-config] takes no other arguments\n");
      return 2;
    }
    vantage::collector::CollectorConfig loaded = vantage::collector::load_config(*config_path);
    for (const std::string& e : loaded.errors) {
      vantage::platform::log(vantage::platform::LogLevel::kError, "%s", e.c_str());
    }
    if (!loaded.options) {
      return 1;
    }
    if (check_only) {
      std::printf("%s: ok\n", config_path->c_str());
      return 0;
    }
    vantage::platform::set_log_level(loaded.log_level);
    config = std::move(*loaded.options);
    if (loaded.jetstream) jetstream = *loaded.jetstream;
    http_listen = std::move(loaded.http_listen);
    http_forget_after = loaded.http_forget_after;
    if (!loaded.mesh.empty()) {
      config.mesh_rules = std::make_shared<const vantage::collector::mesh::MeshRules>(std::move(loaded.mesh));
    }
    config.mesh_forget_after = loaded.mesh_forget_after;
  }
  for (std::size_t i = 1; i < args.size() && !config_path; ++i) {
    const std::string_view arg = args[i];
    if (i + 1 >= args.size()) {
      std::fprintf(stderr, "vantage-collector: %.*s needs a value\n%s", static_cast<int>(arg.size()),
                   arg.data(), vantage::collector::usage_text());
      return 2;
    }
    const std::string value(args[++i]);
    if (arg == "--db") {
      config.database = value;
    } else if (arg == "--jetstream" && command == "serve") {
      jetstream.servers.push_back(value);
    } else if (arg == "--stream" && command == "serve") {
      jetstream.stream = value;
    } else if (arg == "--region") {
      config.regions.push_back(value);
    } else if (arg == "--ca") {
      config.tls.ca_file = value;
    } else if (arg == "--cert") {
      config.tls.cert_file = value;
    } else if (arg == "--crl") {
      config.tls.crl_file = value;
    } else if (arg == "--ticket-keys") {
      config.tls.ticket_key_file = value;
    } else if (arg == "--key") {
      config.tls.key_file = value;
    } else if (arg == "--http" || arg == "--listen") {
      asio::ip::tcp::endpoint endpoint;
      if (!parse_endpoint(value, endpoint)) {
        std::fprintf(stderr, "vantage-collector: %.*s: expected ADDR:PORT or [V6ADDR]:PORT, not '%s'\n",
                     static_cast<int>(arg.size()), arg.data(), value.c_str());
        return 2;
      }
      (arg == "--http" ? http_listen : config.listen).push_back(endpoint);
    } else if (arg == "--retention-days") {
      int days = -1;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), days);
      if (ec != std::errc() || end != value.data() + value.size() || days < 0 || days > 36'500) {
        std::fprintf(stderr, "vantage-collector: --retention-days: expected 0..36500, not '%s'\n", value.c_str());
        return 2;
      }
      config.retention_days = days;
    } else if (arg == "--max-sessions" || arg == "--handshake-timeout" || arg == "--idle-timeout" ||
               arg == "--max-frame") {
      std::uint64_t n = 0;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (ec != std::errc() || end != value.data() + value.size() || n == 0 || n > 0xffffffffu) {
        std::fprintf(stderr, "vantage-collector: %.*s: expected a positive number, not '%s'\n",
                     static_cast<int>(arg.size()), arg.data(), value.c_str());
        return 2;
      }
      if (arg == "--max-sessions") config.max_sessions = n;
      if (arg == "--handshake-timeout") config.handshake_timeout = std::chrono::milliseconds(n);
      if (arg == "--idle-timeout") config.idle_timeout = std::chrono::milliseconds(n);
      if (arg == "--max-frame") config.max_frame = static_cast<std::uint32_t>(n);
    } else {
      std::fprintf(stderr, "vantage-collector: unknown argument '%.*s'\n%s", static_cast<int>(arg.size()),
                   arg.data(), vantage::collector::usage_text());
      return 2;
    }
  }
  if (config.database.empty() && (command != "serve" || jetstream.servers.empty())) {
    std::fprintf(stderr, "vantage-collector: --db (or, for serve, --jetstream) is required\n");
    return 2;
  }
  if (command == "query") {
    return vantage::collector::query_command(config.database);
  }
  if (!config_path && config.tls.ticket_key_file.empty() && jetstream.servers.empty()) {
    config.tls.ticket_key_file = vantage::collector::default_ticket_key_file(config.database);
  }
  if (config.listen.empty()) {
    config.listen.emplace_back(asio::ip::address_v6::any(), 7443);
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);  // `systemctl reload`: reread the TLS material
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // The HTTP side reads a live view fed on the store thread as batches become durable.
  vantage::collector::LiveView live_view({.forget_after = http_forget_after});
  if (!http_listen.empty()) {
    config.on_stored = [&live_view](const vantage::collector::store::IncomingBatch& b) {
      live_view.record(b);
    };
  }
  // store.sink = "jetstream" / --jetstream: batches go to the stream, nothing to SQLite.
  std::string store_text = config.database;
  if (!jetstream.servers.empty()) {
    auto sink = vantage::collector::store::JetStreamSink::connect(jetstream);
    if (!sink) {
      vantage::platform::log(vantage::platform::LogLevel::kError, "%s", sink.error().c_str());
      return 1;
    }
    config.sink = std::move(*sink);
    store_text = "JetStream stream " + jetstream.stream + " (" + jetstream.subject_prefix + ".<region>)";
  }
  IngestServer server(config);
  if (const auto started = server.start(); !started) {
    vantage::platform::log(vantage::platform::LogLevel::kError, "%s", started.message().c_str());
    return 1;
  }
  for (const auto& e : server.local_endpoints()) {
    vantage::platform::log(vantage::platform::LogLevel::kInfo, "listening on %s port %u, store %s",
                           e.address().to_string().c_str(), static_cast<unsigned>(e.port()),
                           store_text.c_str());
  }
  vantage::collector::http::HttpConfig http_config;  // the limits keep their defaults
  http_config.listen = http_listen;
  if (jetstream.servers.empty()) http_config.database = config.database;  // /api/pair
  vantage::collector::http::HttpServer http(http_config, live_view, server);
  if (const auto started = http.start(); !started) {
    vantage::platform::log(vantage::platform::LogLevel::kError, "%s", started.message().c_str());
    server.stop();
    return 1;
  }
  for (const auto& e : http.local_endpoints()) {
    vantage::platform::log(vantage::platform::LogLevel::kInfo, "http on %s port %u (/metrics, /)",
                           e.address().to_string().c_str(), static_cast<unsigned>(e.port()));
  }
  vantage::platform::sd_notify_ready();
  // The loop pings the watchdog while the store thread keeps committing or has nothing queued
  // and STATUS carries the connection and batch counts.
  const auto interval = vantage::platform::watchdog_interval();
  std::optional<vantage::platform::Watchdog> watchdog;
  timespec tick{1, 0};
  if (interval) {
    watchdog.emplace(*interval);
    const auto period = std::chrono::duration_cast<std::chrono::nanoseconds>(watchdog->kick_period());
    if (period < std::chrono::seconds(1)) tick = timespec{0, static_cast<long>(period.count())};
  }
  for (;;) {
    const auto c = server.counters();
    if (watchdog) watchdog->kick_if_healthy(server.healthy());
    vantage::platform::sd_notify_status(std::to_string(c.connections_open) + " connections, " +
                                        std::to_string(c.batches_stored) + " batches stored, " +
                                        std::to_string(c.batches_duplicate) + " duplicates, " +
                                        std::to_string(c.commits) + " commits");
    vantage::platform::flush_log_suppressions();
    const int signal = sigtimedwait(&signals, nullptr, &tick);
    if (signal == SIGHUP) {
      vantage::platform::sd_notify_reloading();
      if (const auto reloaded = server.reload_tls(); !reloaded) {
        vantage::platform::log(vantage::platform::LogLevel::kError, "%s", reloaded.message().c_str());
      } else {
        const auto now = server.counters();
        vantage::platform::log(vantage::platform::LogLevel::kNotice,
                               "reloaded TLS material: certificate valid until %s, CRL %s (%llu revoked serials)",
                               utc_text(now.certificate_not_after_s).c_str(),
                               config.tls.crl_file.empty() ? "none" : config.tls.crl_file.c_str(),
                               static_cast<unsigned long long>(now.crl_revoked_serials));
      }
      vantage::platform::sd_notify_ready();
    }
    if (signal == SIGINT || signal == SIGTERM) {
      vantage::platform::log(vantage::platform::LogLevel::kInfo, "stopping (%s)", strsignal(signal));
      vantage::platform::sd_notify_stopping();
      http.stop();
      server.stop();
      return 0;
    }
  }
}
