#include "collector/cli.hpp"

#include <mbedtls/version.h>
#include <signal.h>

#include <atomic>
#include <charconv>
#include <cinttypes>
#include <cstdint>
#include <ctime>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "collector/store/jetstream_consumer.hpp"
#include "collector/store/sqlite_store.hpp"
#include "platform/arch.hpp"
#include "platform/clock.hpp"
#include "platform/log.hpp"
#include "schemas/frame_codec.hpp"
#include "schemas/peer_text.hpp"
#include "schemas/wire_string.hpp"

namespace vantage::collector {

namespace {

constexpr const char* kUsage =
    "usage: vantage-collector serve --db FILE --region NAME [--region NAME ...] --ca FILE --cert FILE --key "
    "FILE\n"
    "                               [--listen ADDR:PORT ...] [--max-sessions N] [--max-frame BYTES]\n"
    "                               [--handshake-timeout MS] [--idle-timeout MS] [--http ADDR:PORT ...]\n"
    "                               [--ticket-keys FILE] (default: ticket-keys beside --db)\n"
    "                               [--crl FILE] (the CA's revocation list; SIGHUP rereads it)\n"
    "                               [--retention-days N] (default 30; 0 keeps everything)\n"
    "       vantage-collector serve --jetstream URL [--jetstream URL ...] [--stream NAME] (instead of --db)\n"
    "       vantage-collector serve --config FILE [--check-config]\n"
    "       vantage-collector query --db FILE\n"
    "       vantage-collector consume --jetstream URL [--stream NAME] [--durable NAME] [--follow] [--db FILE]\n"
    "       vantage-collector --version | --config-reference\n"
    "  serve   accept agents over mutual TLS (default listen [::]:7443, IPv4 and IPv6) and store their\n"
    "          batches; SIGINT/SIGTERM stop it; SIGHUP rereads the TLS certificate, key, CA\n"
    "          and CRL; --http serves /metrics and the status page\n"
    "  query   print the latest latency per agent and target, the latest load per PoP, and the agents\n"
    "  consume read batches back from a JetStream stream, verify them, print one line per batch;\n"
    "          --db FILE also stores them there (once each by agent, incarnation and seq)\n";

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

// Names from the store or the stream were a peer's (and an older collector stored them
// unchecked): printed escaped, so none can move the terminal's cursor or forge a line.
std::string shown(std::string_view name) { return platform::escape_for_log(name, 64); }

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
  // ONE-WAY: forward/backward p50 when reported, else why not ("-": the agent sent none).
  std::printf("latest latency (RTT in ms)\n%-10s %-16s %-28s %-5s %7s %7s %8s %8s %8s %9s %8s  %s\n", "POP",
              "AGENT", "TARGET", "PROTO", "SENT", "RECV", "LOSS%", "P50", "P99", "JITTER", "AGE", "ONE-WAY");
  for (const auto& l : *latency) {
    std::string one_way = "-";
    if (l.one_way_status) {
      static constexpr const char* kStatus[] = {"not_measured", "reported", "unsynchronised", "bound_too_large"};
      char figures[64];
      std::snprintf(figures, sizeof figures, "%.3f/%.3f", static_cast<double>(l.forward_p50_ns) / 1e6,
                    static_cast<double>(l.backward_p50_ns) / 1e6);
      one_way = *l.one_way_status == 1 ? figures
                : *l.one_way_status >= 0 && *l.one_way_status < 4 ? kStatus[*l.one_way_status]
                                                                   : "unknown";
    }
    std::printf("%-10s %-16s %-28s %-5s %7u %7u %8.2f %8.3f %8.3f %9.3f %8s  %s\n", shown(l.pop).c_str(),
                shown(l.agent_id).c_str(), shown(l.target).c_str(), l.protocol.c_str(), l.sent, l.received,
                100.0 * l.loss_ratio, static_cast<double>(l.p50_ns) / 1e6,
                static_cast<double>(l.p99_ns) / 1e6, l.jitter_mean_ns / 1e6, ago(l.interval_end_ns).c_str(),
                one_way.c_str());
  }
  std::printf("\nlatest load per PoP\n%-10s %-16s %7s %10s %10s %7s %8s\n", "POP", "AGENT", "CPU%",
              "MEM_AVAIL", "MEM_TOTAL", "LOAD1", "AGE");
  for (const auto& l : *load) {
    std::printf("%-10s %-16s %7.1f %9.2fG %9.2fG %7.2f %8s\n", shown(l.pop).c_str(), shown(l.agent_id).c_str(),
                100.0 * l.cpu_busy.value_or(0),
                static_cast<double>(l.mem_available.value_or(0)) / 1073741824.0,
                static_cast<double>(l.mem_total.value_or(0)) / 1073741824.0, l.load1.value_or(0),
                ago(l.time_ns).c_str());
  }
  // MAX_SEQ is of INCARNATION, the agent's newest spool incarnation (all zero: an agent that sends
  // none); a reinstalled agent starts again at 1 under a new one.
  std::printf("\nagents\n%-16s %-12s %-10s %10s %10s %10s  %s\n", "AGENT", "REGION", "POP", "BATCHES", "MAX_SEQ",
              "LAST_SEEN", "INCARNATION");
  for (const auto& a : *agents) {
    std::printf("%-16s %-12s %-10s %10" PRId64 " %10" PRIu64 " %10s  %s\n", shown(a.agent_id).c_str(),
                shown(a.region).c_str(), shown(a.pop).c_str(), a.batch_count, a.max_seq, ago(a.last_seen_ns).c_str(), a.incarnation.c_str());
  }
  std::printf(
      "\nagent health (newest batch with self-metrics)\n%-16s %5s %9s %9s %6s %8s %8s %6s %6s %6s %6s\n",
      "AGENT", "GEN", "RSS", "CPU_S", "UP", "SPOOL", "SP_DROP", "RING_D", "RECONN", "CONN_F", "TLS_F");
  for (const auto& a : *agents) {
    if (!a.self) continue;
    const auto& m = *a.self;
    std::printf("%-16s %5" PRIu64 " %8.1fM %9.2f %6s %8" PRIu64 " %8" PRIu64 " %6" PRIu64 " %6" PRIu64
                " %6" PRIu64 " %6" PRIu64 "\n",
                shown(a.agent_id).c_str(), m.config_generation, static_cast<double>(m.rss_bytes) / 1048576.0,
                static_cast<double>(m.cpu_user_ns + m.cpu_system_ns) / 1e9, ago(m.process_start_ns).c_str(),
                m.spool_records, a.spool_dropped, m.probe_ring_dropped + m.load_ring_dropped, m.reconnects,
                m.connect_failures, m.tls_failures);
  }
  return 0;
}

int consume_command(std::span<const std::string_view> args, std::FILE* out) {
  store::ConsumerOptions options;
  bool follow = false;
  std::string db_path;
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
    } else if (arg == "--db") {
      db_path = value;
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
  // With --db the stream is written into a SQLite store: a message is acked only once the group
  // it came in is committed, and the store's batch key drops every copy of a batch that JetStream
  // kept twice (a resend from beyond the duplicate window): exactly once in the store.
  std::optional<store::SqliteStore> db;
  if (!db_path.empty()) {
    auto opened_db = store::SqliteStore::open(db_path);
    if (!opened_db) {
      std::fprintf(stderr, "vantage-collector consume: %s\n", opened_db.error().c_str());
      return 1;
    }
    db.emplace(std::move(*opened_db));
  }

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  std::uint64_t read = 0, bad = 0, stored = 0, duplicates = 0;
  std::string store_error;
  const bool empty = consumer.messages_at_open() == 0 && options.durable.empty();
  // Verifies and prints a group; with --db stores it and says per line whether it was new.
  const auto handle = [&](std::span<const store::ConsumedMessage> group) {
    std::vector<store::IncomingBatch> batches;
    std::vector<std::size_t> line_of;  // batches[i] is group[line_of[i]]
    std::vector<std::string> lines(group.size());
    for (std::size_t i = 0; i < group.size(); ++i) {
      const store::ConsumedMessage& m = group[i];
      ++read;
      const wire::Frame* frame = wire::verify_frame(m.frame);
      const wire::Batch* batch = frame != nullptr ? frame->message_as_Batch() : nullptr;
      // No header: a message from a collector older than incarnations, the legacy incarnation.
      const auto incarnation =
          m.incarnation.empty() ? std::optional(store::kLegacyIncarnation) : store::parse_incarnation_hex(m.incarnation);
      if (batch == nullptr || !incarnation) {
        ++bad;
        std::fprintf(out, "stream_seq=%" PRIu64 " INVALID %s (%zu bytes, Nats-Msg-Id %s)\n", m.stream_seq,
                     batch == nullptr ? "frame" : "incarnation header", m.frame.size(), shown(m.msg_id).c_str());
        continue;
      }
      // The strings rules the ingest applies, again: a message from an older collector (or from
      // anyone who may publish to the stream) is printed as invalid, never stored.
      std::optional<wire::PeerTextFault> fault = wire::check_batch_text(*batch);
      for (const auto& [field, value, kind] :
           {std::tuple{"header Vantage-Agent", &m.agent, wire::PeerText::kAgentId},
            std::tuple{"header Vantage-Region", &m.region, wire::PeerText::kRegion},
            std::tuple{"header Vantage-Pop", &m.pop, wire::PeerText::kPop}}) {
        if (!fault) fault = wire::check_peer_text(field, *value, kind);
      }
      if (fault) {
        ++bad;
        std::fprintf(out, "stream_seq=%" PRIu64 " INVALID strings: %s\n", m.stream_seq, fault->reason.c_str());
        continue;
      }
      const std::string agent = wire::text(batch->agent_id());
      const bool mismatch = m.agent != agent || m.seq != std::to_string(batch->seq());
      if (mismatch) {
        ++bad;
        std::fprintf(stderr,
                     "vantage-collector consume: stream seq %" PRIu64
                     ": headers say %s/%s, the frame %s/%" PRIu64 "\n",
                     m.stream_seq, shown(m.agent).c_str(), shown(m.seq).c_str(), shown(agent).c_str(), batch->seq());
      }
      char line[512];
      std::snprintf(line, sizeof line,
                    "stream_seq=%" PRIu64 " agent=%s region=%s pop=%s seq=%" PRIu64
                    " interval=%s+%.3fs latency=%u load=%u incarnation=%s",
                    m.stream_seq, shown(agent).c_str(), shown(m.region).c_str(), shown(m.pop).c_str(), batch->seq(),
                    iso_time(batch->interval_start_ns()).c_str(),
                    static_cast<double>(batch->interval_end_ns() - batch->interval_start_ns()) / 1e9,
                    batch->latency() != nullptr ? batch->latency()->size() : 0u,
                    batch->load() != nullptr ? batch->load()->size() : 0u,
                    store::incarnation_hex(*incarnation).c_str());
      lines[i] = line;
      if (mismatch) continue;  // printed, never stored under a name its frame contradicts
      store::IncomingBatch in;
      in.batch = batch;
      // The identity the publishing collector authenticated travels in the headers.
      in.agent_id = m.agent;
      in.region = m.region;
      in.pop = m.pop;
      in.incarnation = *incarnation;
      in.received_ns = m.published_ns != 0 ? m.published_ns : platform::realtime_ns();
      in.frame = m.frame;
      batches.push_back(in);
      line_of.push_back(i);
    }
    if (db && !batches.empty()) {
      auto outcomes = db->store(batches);
      if (!outcomes) {
        store_error = outcomes.error();
        return false;  // nothing acked: redelivered to whoever consumes next
      }
      for (std::size_t k = 0; k < outcomes->size(); ++k) {
        const bool dup = (*outcomes)[k] == store::StoreOutcome::kDuplicate;
        (dup ? duplicates : stored) += 1;
        lines[line_of[k]] += dup ? " store=duplicate" : " store=stored";
      }
    }
    for (const std::string& line : lines) {
      if (!line.empty()) std::fprintf(out, "%s\n", line.c_str());
    }
    return true;
  };
  while (!g_stop && (follow || !(empty || consumer.caught_up()))) {
    std::string error;
    const auto fetched = consumer.fetch_group(handle, error);
    if (!store_error.empty()) {
      std::fprintf(stderr, "vantage-collector consume: %s (the group stays unacked)\n", store_error.c_str());
      return 1;
    }
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
  std::fprintf(stderr, "vantage-collector consume: %" PRIu64 " batches from stream %s (%s)%s%s\n", read,
               options.stream.c_str(), consumer.subject().c_str(),
               bad > 0 ? (", " + std::to_string(bad) + " failed verification").c_str() : "",
               db ? (", " + std::to_string(stored) + " stored in " + db_path + ", " + std::to_string(duplicates) +
                     " already there")
                        .c_str()
                  : "");
  return bad > 0 ? 1 : 0;
}

}  // namespace vantage::collector
