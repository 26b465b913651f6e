// jetstream: the steady fleet against two stateless collectors publishing into a real 3-node NATS
// JetStream cluster (stream replicas 3); one node is killed (-9) mid-run and restarted on its
// store; afterwards the whole stream is read back with `vantage-collector consume` and every
// (agent, incarnation, seq) the fleet saw acked must be in it exactly once.
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <thread>
#include <unordered_map>

#include "bench/fleet/fleet_run.hpp"
#include "bench/fleet/nats_cluster.hpp"
#include "bench/fleet/scenarios.hpp"
#include "bench/fleet/steady_phase.hpp"

namespace vantage::fleet {

using Clock = std::chrono::steady_clock;

namespace {

std::string find_nats_server(const Options& options) {
  if (options.has("nats-server")) return options.text("nats-server");
  if (const char* path = std::getenv("PATH"); path != nullptr) {
    std::string p = path;
    for (std::size_t start = 0; start <= p.size();) {
      const std::size_t end = std::min(p.find(':', start), p.size());
      const std::filesystem::path candidate = std::filesystem::path(p.substr(start, end - start)) / "nats-server";
      if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
      start = end + 1;
    }
  }
  // Debian installs it in /usr/sbin, which a user's PATH may lack.
  for (const char* c : {"/usr/sbin/nats-server", "/usr/bin/nats-server"}) {
    if (::access(c, X_OK) == 0) return c;
  }
  return {};
}

// Lines of a file containing `needle`.
std::uint64_t count_lines(const std::filesystem::path& path, const std::string& needle) {
  std::ifstream in(path);
  std::string line;
  std::uint64_t n = 0;
  while (std::getline(in, line)) n += line.find(needle) != std::string::npos ? 1 : 0;
  return n;
}

// The value after " key=" in a `consume` line, up to the next space.
std::string field(const std::string& line, const std::string& key) {
  const std::string k = " " + key + "=";
  const std::size_t at = line.find(k);
  if (at == std::string::npos) return {};
  const std::size_t from = at + k.size();
  return line.substr(from, line.find(' ', from) - from);
}

// What the fault injection saw, on the steady phase's ticks (every 250 ms).
struct Outage {
  bool enabled = false;
  double kill_at_s = 40, down_s = 15;
  std::string which = "leader";  // "leader", or a node number
  std::size_t node = 0;
  std::string node_name;
  bool was_leader = false;
  std::string leader_before, leader_after;
  double killed_s = NAN, restarted_s = NAN;
  double new_leader_s = NAN;      // after the kill: the stream answers with a leader again
  double caught_up_s = NAN;       // after the restart: the node is a current replica again
  double first_retry_s = NAN;     // after the kill: first RetryLater seen by the fleet
  double last_retry_s = NAN;      // after the kill: last tick on which RetryLater grew
  std::uint64_t retry_before = 0, disconnects_before = 0, acked_before = 0;
  std::uint64_t retry_at_end = 0;
  std::uint64_t max_unacked = 0;  // the fleet's unacked batches, peak after the kill
  std::string error;
};

}  // namespace

int run_jetstream(const Options& options) {
  FleetRun run(options, "jetstream");
  const auto [agents, targets, interval_s, duration_s] = FleetShape{.duration_s = 120}.read(options);
  const std::string stream = options.text("stream", "VANTAGE");
  const std::size_t collector_count = std::max<std::size_t>(options.count("collectors", 2), 1);
  Outage outage;
  outage.which = options.text("kill-node", "leader");
  outage.enabled = outage.which != "none";
  outage.kill_at_s = options.number("kill-node-at-s", 40);
  outage.down_s = options.number("down-s", 15);
  std::string error;

  const std::string nats_binary = find_nats_server(options);
  if (nats_binary.empty()) {
    std::fprintf(stderr, "vantage-fleet: nats-server not found (--nats-server PATH)\n");
    return 2;
  }
  if (!run.prepare_work_dir(error)) {
    std::fprintf(stderr, "vantage-fleet: %s\n", error.c_str());
    return 2;
  }
  // Declared after run: stopped before run removes the work directory.
  auto cluster = std::make_unique<NatsCluster>(nats_binary, run.work_dir / "nats", 3);
  const auto cluster_start = Clock::now();
  std::fprintf(stderr, "vantage-fleet: starting a 3-node NATS JetStream cluster (%s)\n", nats_binary.c_str());
  if (!cluster->start(error) || !cluster->wait_for_meta_leader(std::chrono::seconds(30), error)) {
    std::fprintf(stderr, "vantage-fleet: %s\n", error.c_str());
    return 2;
  }
  const double meta_s = std::chrono::duration<double>(Clock::now() - cluster_start).count();
  const std::string meta_leader = cluster->meta_leader(0);

  std::string servers;
  for (const std::string& u : cluster->client_urls()) servers += (servers.empty() ? "" : ", ") + ("\"" + u + "\"");
  run.collector_count = collector_count;
  run.collector_lines = {
      "store.sink = \"jetstream\"",
      "jetstream.servers = [" + servers + "]",
      "jetstream.stream = \"" + stream + "\"",
      "jetstream.replicas = 3",
  };
  if (!run.setup(agents, targets, error)) return setup_failed(error);
  Report& report = run.report;
  report.section("NATS JetStream cluster (3 nodes on loopback, " + nats_binary + ")");
  report.number("nats_nodes", static_cast<double>(cluster->size()), "nats-server nodes");
  report.number("nats_meta_leader_s", meta_s, "start until all nodes agree on a meta leader", "s", 2);
  report.text("nats_meta_leader", meta_leader, "meta leader");
  report.number("collectors", static_cast<double>(run.collectors.size()), "collectors (agents round-robin)");
  const StreamStatus initial = cluster->stream_status(stream, std::chrono::seconds(5));
  report.text("stream_leader_at_start", initial.ok ? initial.leader : initial.error,
              "stream " + stream + ": leader once the collectors started");

  Fleet& fleet = run.make_fleet(std::chrono::nanoseconds(static_cast<std::int64_t>(interval_s * 1e9)));

  // The fault: on the tick at kill_at_s, kill a node (the stream's leader by default); restart it
  // down_s later; follow the stream's leadership and the restarted replica until it is current.
  const auto tick = [&](double t, const FleetStats& now) {
    if (!outage.enabled) return;
    if (std::isnan(outage.killed_s) && t >= outage.kill_at_s) {
      const StreamStatus before = cluster->stream_status(stream, std::chrono::seconds(2));
      outage.leader_before = before.ok ? before.leader : "?";
      std::size_t node = 1;
      if (outage.which == "leader") {
        node = before.ok ? cluster->index_of(before.leader) : cluster->size();
        if (node >= cluster->size()) node = 1;
      } else {
        node = static_cast<std::size_t>(std::max(1.0, std::atof(outage.which.c_str()))) - 1;
        node = std::min(node, cluster->size() - 1);
      }
      outage.node = node;
      outage.node_name = cluster->name(node);
      outage.was_leader = outage.node_name == outage.leader_before;
      outage.retry_before = now.retry_later;
      outage.disconnects_before = now.disconnects;
      outage.acked_before = now.batches_acked;
      outage.retry_at_end = now.retry_later;
      cluster->kill9(node);
      outage.killed_s = t;
      std::fprintf(stderr, "vantage-fleet: %.1f s: killed nats-server %s (-9)%s\n", t, outage.node_name.c_str(),
                   outage.was_leader ? ", the stream's leader" : "");
      return;
    }
    if (std::isnan(outage.killed_s)) return;
    const double since_kill = t - outage.killed_s;
    if (now.retry_later > outage.retry_at_end) {
      if (std::isnan(outage.first_retry_s)) outage.first_retry_s = since_kill;
      outage.last_retry_s = since_kill;
    }
    outage.retry_at_end = now.retry_later;
    outage.max_unacked = std::max(outage.max_unacked, now.unacked_now);
    if (std::isnan(outage.restarted_s) && since_kill >= outage.down_s) {
      std::string e;
      if (!cluster->restart(outage.node, e)) {
        outage.error = e;
        std::fprintf(stderr, "vantage-fleet: %s\n", e.c_str());
      }
      outage.restarted_s = t;
      std::fprintf(stderr, "vantage-fleet: %.1f s: restarted nats-server %s\n", t, outage.node_name.c_str());
      return;
    }
    const bool want_leader = std::isnan(outage.new_leader_s);
    const bool want_caught_up = !std::isnan(outage.restarted_s) && std::isnan(outage.caught_up_s);
    if (!want_leader && !want_caught_up) return;
    const StreamStatus st = cluster->stream_status(stream, std::chrono::milliseconds(1000));
    if (!st.ok || st.leader.empty()) return;
    if (want_leader && (!outage.was_leader || st.leader != outage.node_name)) {
      outage.new_leader_s = since_kill;
      outage.leader_after = st.leader;
    }
    if (want_caught_up) {
      bool current = st.leader == outage.node_name;
      for (const StreamPeer& p : st.replicas) {
        if (p.name == outage.node_name) current = p.current && !p.offline;
      }
      if (current) outage.caught_up_s = t - outage.restarted_s;
    }
  };
  SteadyResult result = run_steady_phase(run, fleet, agents, interval_s, duration_s, tick);
  if (outage.enabled && !std::isnan(outage.killed_s) && std::isnan(outage.restarted_s)) {
    // The run ended within down_s of the kill: restart now, so the stream is whole for the check.
    cluster->restart(outage.node, outage.error);
    outage.restarted_s = duration_s;
  }

  // Per collector, over the steady window's end (RSS) and the whole run (CPU).
  report.section("collectors, one by one (at the end of the window)");
  for (std::size_t k = 0; k < run.collectors.size(); ++k) {
    const ProcessSample s = sample_process(run.collectors[k]->pid());
    const std::string key = "collector" + std::to_string(k + 1) + "_";
    report.number(key + "cpu_s", s.cpu_s, "collector " + std::to_string(k + 1) + ": CPU since start", "s", 2);
    report.number(key + "rss_bytes", static_cast<double>(s.rss_bytes),
                  "collector " + std::to_string(k + 1) + ": RSS (" + format_bytes(s.rss_bytes) + ")", "bytes");
    report.number(key + "hwm_bytes", static_cast<double>(s.hwm_bytes),
                  "collector " + std::to_string(k + 1) + ": peak RSS (" + format_bytes(s.hwm_bytes) + ")", "bytes");
  }

  const std::vector<AgentRecord> records = fleet.records();
  fleet.shutdown();
  bool collectors_clean = true;
  for (std::size_t k = 0; k < run.collectors.size(); ++k) {
    const auto status = run.collectors[k]->stop();
    report.number("collector" + std::to_string(k + 1) + "_exit", status ? *status : -1,
                  "collector " + std::to_string(k + 1) + ": exit status after SIGTERM (-1: killed)");
    collectors_clean = collectors_clean && status && *status == 0;
  }

  if (outage.enabled) {
    report.section("node kill (-9) and restart");
    if (std::isnan(outage.killed_s)) {
      report.text("kill_error", "the window ended before --kill-node-at-s", "not killed");
    } else {
      report.text("killed_node", outage.node_name, "node killed");
      report.flag("killed_stream_leader", outage.was_leader, "it led the stream (leader before: " + outage.leader_before + ")");
      report.number("killed_at_s", outage.killed_s, "killed at (into the window)", "s", 1);
      report.number("restarted_at_s", outage.restarted_s, "restarted at", "s", 1);
      report.text("stream_leader_after", outage.leader_after, "stream leader after the kill");
      report.number("new_leader_s", outage.new_leader_s, "kill -> stream answers with a live leader", "s", 2);
      report.number("retry_later_after_kill", static_cast<double>(outage.retry_at_end - outage.retry_before),
                    "RetryLater acks after the kill");
      report.number("first_retry_later_s", outage.first_retry_s, "kill -> first RetryLater", "s", 2);
      report.number("last_retry_later_s", outage.last_retry_s, "kill -> last RetryLater (publishes failing until)",
                    "s", 2);
      report.number("max_unacked_after_kill", static_cast<double>(outage.max_unacked),
                    "fleet's unacked batches, peak after the kill");
      report.number("caught_up_s", outage.caught_up_s, "restart -> node a current replica of the stream", "s", 2);
      if (!outage.error.empty()) report.text("restart_error", outage.error, "restart error");
    }
  }
  report.section("collector logs (all collectors)");
  std::uint64_t disc = 0, reconn = 0, not_acked = 0;
  for (const auto& c : run.collectors) {
    disc += count_lines(c->log_path(), "JetStream: disconnected");
    reconn += count_lines(c->log_path(), "JetStream: reconnected");
    not_acked += count_lines(c->log_path(), "batches not acked");
  }
  report.number("log_nats_disconnects", static_cast<double>(disc), "'JetStream: disconnected' lines");
  report.number("log_nats_reconnects", static_cast<double>(reconn), "'JetStream: reconnected' lines");
  report.number("log_groups_not_acked", static_cast<double>(not_acked), "'batches not acked' warnings (store groups)");

  // Read back: wait until every replica is current (reading works through any node, but the
  // count is then final), then the whole stream with the project's own consumer.
  StreamStatus final_status;
  const auto settle_deadline = Clock::now() + std::chrono::seconds(60);
  for (;;) {
    final_status = cluster->stream_status(stream, std::chrono::seconds(2));
    bool all_current = final_status.ok && !final_status.leader.empty();
    for (const StreamPeer& p : final_status.replicas) all_current = all_current && p.current && !p.offline;
    if (all_current || Clock::now() >= settle_deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  const std::filesystem::path consume_out = run.work_dir / "consume.txt";
  std::error_code ec;
  std::filesystem::remove(consume_out, ec);
  std::vector<std::string> argv = {options.text("collector"), "consume", "--stream", stream, "--timeout", "10000"};
  for (const std::string& u : cluster->client_urls()) {
    argv.push_back("--jetstream");
    argv.push_back(u);
  }
  const auto read_start = Clock::now();
  ChildProcess consumer;
  int consume_status = -1;
  if (consumer.start(argv, consume_out, error)) {
    const auto deadline = Clock::now() + std::chrono::minutes(10);
    int st = 0;
    while (!consumer.exited(&st) && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (consumer.running()) {
      consumer.kill_now();
    } else {
      consume_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
  }
  const double read_s = std::chrono::duration<double>(Clock::now() - read_start).count();
  std::unordered_map<std::string, std::vector<collector::store::BatchKey>> keys;
  std::uint64_t lines = 0, invalid = 0;
  {
    std::ifstream in(consume_out);
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("stream_seq=", 0) != 0) continue;
      ++lines;
      const std::string agent = field(line, "agent"), seq = field(line, "seq");
      const auto incarnation = collector::store::parse_incarnation_hex(field(line, "incarnation"));
      if (agent.empty() || seq.empty() || !incarnation) {
        ++invalid;
        continue;
      }
      keys[agent].push_back({*incarnation, std::strtoull(seq.c_str(), nullptr, 10)});
    }
  }
  StoreCheck check;
  std::uint64_t fleet_messages = 0;
  for (const AgentRecord& r : records) {
    auto it = keys.find(r.agent_id);
    const std::vector<collector::store::BatchKey> k =
        it == keys.end() ? std::vector<collector::store::BatchKey>{} : std::move(it->second);
    fleet_messages += k.size();
    check_agent_keys(r, k, check);
  }
  const bool read_complete = final_status.ok && consume_status == 0 && lines == final_status.messages;

  report.section("stream check (vantage-collector consume, after SIGTERM)");
  report.text("stream_leader_at_end", final_status.ok ? final_status.leader : final_status.error, "stream leader");
  report.number("stream_messages", static_cast<double>(final_status.messages), "messages in the stream");
  report.number("stream_read", static_cast<double>(lines), "batches read back");
  report.number("stream_read_s", read_s, "read back in", "s", 1);
  report.number("consume_exit", consume_status, "consume exit status");
  report.number("stream_fleet_messages", static_cast<double>(fleet_messages), "messages for the fleet's agents");
  report.number("stream_acked", static_cast<double>(check.acked), "batches acked to the fleet");
  report.number("stream_missing", static_cast<double>(check.missing), "acked but missing (lost)");
  report.number("stream_duplicates", static_cast<double>(check.duplicates), "in the stream more than once");
  report.number("stream_unacked_stored", static_cast<double>(check.unacked_stored),
                "in the stream but never acked (in flight at a failure or the end)");
  report.number("stream_foreign", static_cast<double>(check.foreign), "under an incarnation never sent");
  if (invalid > 0) report.number("stream_unparsed", static_cast<double>(invalid), "lines not understood");

  const bool ok = result.all_connected && result.drained && read_complete && check.missing == 0 &&
                  check.duplicates == 0 && check.foreign == 0 && invalid == 0 && collectors_clean &&
                  (!outage.enabled || (!std::isnan(outage.killed_s) && outage.error.empty()));
  report.section("verdict");
  report.flag("ok", ok,
              "every agent connected, drained, the stream read whole, every acked batch in it exactly once");
  report.print();
  return ok ? 0 : 1;
}

}  // namespace vantage::fleet
