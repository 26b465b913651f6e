#include "collector/cli.hpp"

#include <mbedtls/version.h>
#include <signal.h>

#include <atomic>
#include <charconv>
#include <cinttypes>
#include <cstdint>
#include <ctime>
#include <string>
#include <vector>

#include "collector/store/jetstream_consumer.hpp"
#include "collector/store/sqlite_store.hpp"
#include "platform/arch.hpp"
#include "platform/clock.hpp"
#include "schemas/frame_codec.hpp"
#include "schemas/wire_string.hpp"

namespace vantage::collector {

namespace {

constexpr const char* kUsage =
    "usage: vantage-collector serve --db FILE --region NAME [--region NAME ...] --ca FILE --cert FILE --key "
    "FILE\n"
    "                               [--listen ADDR:PORT ...] [--max-sessions N] [--max-frame BYTES]\n"
    "                               [--handshake-timeout MS] [--idle-timeout MS] [--http ADDR:PORT ...]\n"
    "                               [--ticket-keys FILE] (default: ticket-keys beside --db)\n"
    "                               [--retention-days N] (default 30; 0 keeps everything)\n"
    "       vantage-collector serve --jetstream URL [--jetstream URL ...] [--stream NAME] (instead of --db)\n"
    "       vantage-collector serve --config FILE [--check-config]\n"
    "       vantage-collector query --db FILE\n"
    "       vantage-collector consume --jetstream URL [--stream NAME] [--durable NAME] [--follow]\n"
    "       vantage-collector --version | --config-reference\n"
    "  serve   accept agents over mutual TLS (default listen [::]:7443, IPv4 and IPv6) and store their\n"
    "          batches; SIGINT/SIGTERM stop it; --http serves /metrics and the status page\n"
    "  query   print the latest latency per agent and target, the latest load per PoP, and the agents\n"
    "  consume read batches back from a JetStream stream, verify them, print one line per batch\n";

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

std::string iso_time(std::int64_t ns) {
  const std::time_t seconds = static_cast<std::time_t>(ns / 1'000'000'000);
  std::tm tm{};
  ::gmtime_r(&seconds, &tm);
  char buffer[40];
  const std::size_t n = std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buffer + n, sizeof buffer - n, ".%03dZ", static_cast<int>((ns / 1'000'000) % 1000));
  return buffer;
}

}  // namespace

const char* usage_text() noexcept { return kUsage; }

void print_version(std::FILE* out) {
  char tls[32] = {};
  mbedtls_version_get_string_full(tls);
  std::fprintf(out, "vantage-collector %s (%.*s, %s, SQLite %s)\n", VANTAGE_VERSION,
               static_cast<int>(platform::kArchName.size()), platform::kArchName.data(), tls,
               store::SqliteStore::library_version());
}

namespace {

std::string ago(std::int64_t wall_ns) {
  const std::int64_t now_ns = platform::realtime_ns();
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.1fs", static_cast<double>(now_ns - wall_ns) / 1e9);
  return buffer;
}

}  // namespace

int query_command(const std::string& db_path) {
  auto opened = vantage::collector::store::SqliteStore::open(db_path, {.read_only = true});
  if (!opened) {
    std::fprintf(stderr, "vantage-collector: %s\n", opened.error().c_str());
    return 1;
  }
  auto& db = *opened;
  auto latency = db.latest_latency();
  auto load = db.latest_load_per_pop();
  auto agents = db.agents();
  for (const auto* error : {&latency.error(), &load.error(), &agents.error()}) {
    if (!error->empty()) {
      std::fprintf(stderr, "vantage-collector: %s\n", error->c_str());
      return 1;
    }
  }
  std::printf("latest latency (RTT in ms)\n%-10s %-16s %-28s %-5s %7s %7s %8s %8s %8s %9s %8s\n", "POP",
              "AGENT", "TARGET", "PROTO", "SENT", "RECV", "LOSS%", "P50", "P99", "JITTER", "AGE");
  for (const auto& l : *latency) {
    std::printf("%-10s %-16s %-28s %-5s %7u %7u %8.2f %8.3f %8.3f %9.3f %8s\n", l.pop.c_str(),
                l.agent_id.c_str(), l.target.c_str(), l.protocol.c_str(), l.sent, l.received,
                100.0 * l.loss_ratio, static_cast<double>(l.p50_ns) / 1e6,
                static_cast<double>(l.p99_ns) / 1e6, l.jitter_mean_ns / 1e6, ago(l.interval_end_ns).c_str());
  }
  std::printf("\nlatest load per PoP\n%-10s %-16s %7s %10s %10s %7s %8s\n", "POP", "AGENT", "CPU%",
              "MEM_AVAIL", "MEM_TOTAL", "LOAD1", "AGE");
  for (const auto& l : *load) {
    std::printf("%-10s %-16s %7.1f %9.2fG %9.2fG %7.2f %8s\n", l.pop.c_str(), l.agent_id.c_str(),
                100.0 * l.cpu_busy.value_or(0),
                static_cast<double>(l.mem_available.value_or(0)) / 1073741824.0,
                static_cast<double>(l.mem_total.value_or(0)) / 1073741824.0, l.load1.value_or(0),
                ago(l.time_ns).c_str());
  }
  std::printf("\nagents\n%-16s %-12s %-10s %10s %10s %10s\n", "AGENT", "REGION", "POP", "BATCHES", "MAX_SEQ",
              "LAST_SEEN");
  for (const auto& a : *agents) {
    std::printf("%-16s %-12s %-10s %10" PRId64 " %10" PRIu64 " %10s\n", a.agent_id.c_str(), a.region.c_str(),
                a.pop.c_str(), a.batch_count, a.max_seq, ago(a.last_seen_ns).c_str());
  }
  std::printf(
      "\nagent health (newest batch with self-metrics)\n%-16s %5s %9s %9s %6s %8s %8s %6s %6s %6s %6s\n",
      "AGENT", "GEN", "RSS", "CPU_S", "UP", "SPOOL", "SP_DROP", "RING_D", "RECONN", "CONN_F", "TLS_F");
  for (const auto& a : *agents) {
    if (!a.self) continue;
    const auto& m = *a.self;
    std::printf("%-16s %5" PRIu64 " %8.1fM %9.2f %6s %8" PRIu64 " %8" PRIu64 " %6" PRIu64 " %6" PRIu64
                " %6" PRIu64 " %6" PRIu64 "\n",
                a.agent_id.c_str(), m.config_generation, static_cast<double>(m.rss_bytes) / 1048576.0,
                static_cast<double>(m.cpu_user_ns + m.cpu_system_ns) / 1e9, ago(m.process_start_ns).c_str(),
                m.spool_records, a.spool_dropped, m.probe_ring_dropped + m.load_ring_dropped, m.reconnects,
                m.connect_failures, m.tls_failures);
  }
  return 0;
}

int consume_command(std::span<const std::string_view> args, std::FILE* out) {
  store::ConsumerOptions options;
  bool follow = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string_view arg = args[i];
    if (arg == "--follow") {
      follow = true;
      continue;
    }
    if (i + 1 >= args.size()) {
      std::fprintf(stderr, "vantage-collector consume: %.*s needs a value\n", static_cast<int>(arg.size()),
                   arg.data());
      return 2;
    }
    const std::string_view value = args[++i];
    if (arg == "--jetstream") {
      options.servers.emplace_back(value);
    } else if (arg == "--stream") {
      options.stream = value;
    } else if (arg == "--durable") {
      options.durable = value;
    } else if (arg == "--timeout") {
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), options.timeout_ms);
      if (ec != std::errc() || end != value.data() + value.size() || options.timeout_ms <= 0) {
        std::fprintf(stderr, "vantage-collector consume: --timeout: expected milliseconds\n");
        return 2;
      }
    } else {
      std::fprintf(stderr, "vantage-collector consume: unknown argument '%.*s'\n",
                   static_cast<int>(arg.size()), arg.data());
      return 2;
    }
  }
  if (options.servers.empty()) {
    std::fprintf(stderr, "vantage-collector consume: --jetstream URL is required\n");
    return 2;
  }
  auto opened = store::JetStreamConsumer::open(options);
  if (!opened) {
    std::fprintf(stderr, "vantage-collector consume: %s\n", opened.error().c_str());
    return 1;
  }
  store::JetStreamConsumer& consumer = **opened;

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  std::uint64_t read = 0, bad = 0;
  const bool empty = consumer.messages_at_open() == 0 && options.durable.empty();
  const auto print = [&](const store::ConsumedMessage& m) {
    ++read;
    const wire::Frame* frame = wire::verify_frame(m.frame);
    const wire::Batch* batch = frame != nullptr ? frame->message_as_Batch() : nullptr;
    if (batch == nullptr) {
      ++bad;
      std::fprintf(out, "stream_seq=%" PRIu64 " INVALID frame (%zu bytes, Nats-Msg-Id %s)\n", m.stream_seq,
                   m.frame.size(), m.msg_id.c_str());
      return;
    }
    const std::string agent = wire::text(batch->agent_id());
    if (m.agent != agent || m.seq != std::to_string(batch->seq())) {
      ++bad;
      std::fprintf(stderr,
                   "vantage-collector consume: stream seq %" PRIu64
                   ": headers say %s/%s, the frame %s/%" PRIu64 "\n",
                   m.stream_seq, m.agent.c_str(), m.seq.c_str(), agent.c_str(), batch->seq());
    }
    std::fprintf(out,
                 "stream_seq=%" PRIu64 " agent=%s region=%s pop=%s seq=%" PRIu64
                 " interval=%s+%.3fs latency=%u load=%u\n",
                 m.stream_seq, agent.c_str(), m.region.c_str(), m.pop.c_str(), batch->seq(),
                 iso_time(batch->interval_start_ns()).c_str(),
                 static_cast<double>(batch->interval_end_ns() - batch->interval_start_ns()) / 1e9,
                 batch->latency() != nullptr ? batch->latency()->size() : 0u,
                 batch->load() != nullptr ? batch->load()->size() : 0u);
  };
  while (!g_stop && (follow || !(empty || consumer.caught_up()))) {
    std::string error;
    const auto fetched = consumer.fetch(print, error);
    if (fetched == store::JetStreamConsumer::Fetched::kTimeout) {
      if (!follow) break;  // nothing more within the timeout: caught up
      continue;
    }
    if (fetched == store::JetStreamConsumer::Fetched::kError) {
      std::fprintf(stderr, "vantage-collector consume: %s\n", error.c_str());
      return 1;
    }
    std::fflush(out);
  }
  std::fprintf(stderr, "vantage-collector consume: %" PRIu64 " batches from stream %s (%s)%s\n", read,
               options.stream.c_str(), consumer.subject().c_str(),
               bad > 0 ? (", " + std::to_string(bad) + " failed verification").c_str() : "");
  return bad > 0 ? 1 : 0;
}

}  // namespace vantage::collector
