#include "collector/config.hpp"

#include <map>
#include <set>
#include <span>
#include <string_view>

namespace vantage::collector {

namespace {

namespace cfg = platform::config;
using cfg::kAlways;
using cfg::Kind;
using cfg::Value;

// A [[mesh.rules]] element as read, with the lines its cross-key checks report on.
struct RuleDraft {
  mesh::MeshRule rule;
  std::string key;  // "mesh.rules[1]"
  std::uint32_t line = 0;
  std::string kind = "full-mesh";
  std::string protocol = "udp";
  std::string to_region;
  std::uint32_t name_line = 0, host_line = 0, port_line = 0, sample_line = 0, per_pop_line = 0,
                protocol_line = 0, to_line = 0;
  bool has_port = false;
};

struct Draft {
  IngestConfig config;
  platform::LogLevel log_level = platform::LogLevel::kInfo;
  std::string sink = "sqlite";
  store::JetStreamOptions jetstream;
  std::vector<asio::ip::tcp::endpoint> http_listen;
  std::chrono::seconds http_forget_after{3600};
  std::vector<RuleDraft> rules;
  std::chrono::seconds mesh_forget_after{60};
};

RuleDraft& rule(Draft& d) { return d.rules.back(); }

// Listeners bind, so they take addresses, not names.
bool endpoint(const Value& v) {
  std::string host;
  std::uint16_t port = 0;
  return v.is_text() && cfg::split_host_port(v.text(), host, port) && cfg::ip_address(Value{host, {}, 0});
}

asio::ip::tcp::endpoint to_endpoint(const std::string& text) {
  std::string host;
  std::uint16_t port = 0;
  (void)cfg::split_host_port(text, host, port);  // checked by the table
  return {asio::ip::make_address(host), port};
}

// NATS server URLs as the client takes them.
bool nats_url(const Value& v) {
  return v.is_text() && v.text().rfind("nats://", 0) == 0 && v.text().size() > 7 &&
         v.text().find_first_of(" \t,") == std::string::npos;
}

// NATS subjects are dot-separated tokens; '*' and '>' are wildcards, never part of a name.
bool subject_prefix(const Value& v) {
  if (!v.is_text() || v.text().empty() || v.text().front() == '.' || v.text().back() == '.') return false;
  return v.text().find_first_of(" \t*>") == std::string::npos && v.text().find("..") == std::string::npos;
}
bool stream_name(const Value& v) {
  return cfg::token(v) && v.text().find_first_of(".*>/\\") == std::string::npos;
}

// Duplicates would fail at bind time (listen) or hide a typo (regions): report them here.
void unique(const Value& v, cfg::Diagnostics& diagnostics) {
  std::set<std::string_view> seen;
  for (std::size_t i = 0; i < v.strings().size(); ++i) {
    if (!seen.insert(v.strings()[i]).second) {
      diagnostics.error(v.line, v.key + "[" + std::to_string(i) + "]",
                        "duplicate \"" + v.strings()[i] + "\"");
    }
  }
}

// The one table: parsing, validation and the reference docs all come from it.
const cfg::Key<Draft> kKeys[] = {
    {"ingest.listen", Kind::kStringList, "[\"[::]:7443\"]", "",
     "\"ADDR:PORT\" (an IP address; IPv6 in brackets)",
     "One listener each; \"[::]:PORT\" serves IPv4 and IPv6.", endpoint,
     [](Draft& d, const Value& v) {
       d.config.listen.clear();
       for (const std::string& text : v.strings()) d.config.listen.push_back(to_endpoint(text));
     }},
    {"ingest.regions", Kind::kStringList, "", kAlways, "a name without spaces (1..64 characters)",
     "The regions served (data residency): an agent of any other region is refused.", cfg::token,
     [](Draft& d, const Value& v) { d.config.regions = v.strings(); }},
    {"ingest.io_threads", Kind::kInteger, "0", "", "an integer in 0..256",
     "Threads for sockets, TLS and frame checks; 0: one per core.", cfg::integer_in<0, 256>,
     [](Draft& d, const Value& v) { d.config.io_threads = static_cast<std::size_t>(v.integer()); }},
    {"ingest.max_sessions", Kind::kInteger, "20000", "", "an integer in 1..1000000",
     "Authenticated agent sessions; beyond this an agent is told to retry later (and counted). The "
     "open-file limit is raised to fit; where it cannot be, the cap is lowered with a warning.",
     cfg::integer_in<1, 1'000'000>,
     [](Draft& d, const Value& v) { d.config.max_sessions = static_cast<std::size_t>(v.integer()); }},
    {"ingest.max_handshakes", Kind::kInteger, "1024", "", "an integer in 1..100000",
     "TLS handshakes in progress (unauthenticated connections). When full, the oldest one that has "
     "waited 2 s for its peer is closed, otherwise the newcomer.", cfg::integer_in<1, 100'000>,
     [](Draft& d, const Value& v) { d.config.max_handshakes = static_cast<std::size_t>(v.integer()); }},
    {"ingest.max_handshakes_per_source", Kind::kInteger, "64", "", "an integer in 1..100000",
     "TLS handshakes in progress from one IP address; more from it are closed at once.",
     cfg::integer_in<1, 100'000>,
     [](Draft& d, const Value& v) { d.config.max_handshakes_per_source = static_cast<std::size_t>(v.integer()); }},
    {"ingest.max_unsent_ack_bytes", Kind::kInteger, "65536", "", "bytes, an integer in 1024..16777216",
     "Acks a peer has not read yet; a peer past this (it sends but never reads) is closed.",
     cfg::integer_in<1024, 16'777'216>,
     [](Draft& d, const Value& v) { d.config.max_unsent_ack_bytes = static_cast<std::size_t>(v.integer()); }},
    {"ingest.max_frame", Kind::kInteger, "4194304", "", "bytes, an integer in 4096..268435456",
     "A frame announcing more than this closes its connection before anything is buffered.",
     cfg::integer_in<4096, 268'435'456>,
     [](Draft& d, const Value& v) { d.config.max_frame = static_cast<std::uint32_t>(v.integer()); }},
    {"ingest.handshake_timeout_ms", Kind::kInteger, "10000", "", "milliseconds, an integer in 1..3600000",
     "A TLS handshake not done by then (counted from accept) is closed.", cfg::integer_in<1, 3'600'000>,
     [](Draft& d, const Value& v) { d.config.handshake_timeout = std::chrono::milliseconds(v.integer()); }},
    {"ingest.idle_timeout_ms", Kind::kInteger, "120000", "", "milliseconds, an integer in 1..86400000",
     "A connection silent this long is closed; keep it well above the agents' report interval.",
     cfg::integer_in<1, 86'400'000>,
     [](Draft& d, const Value& v) { d.config.idle_timeout = std::chrono::milliseconds(v.integer()); }},

    {"store.sink", Kind::kString, "\"sqlite\"", "", "\"sqlite\" or \"jetstream\"",
     "Where batches go: the SQLite file store.database, or the NATS JetStream stream of [jetstream] "
     "(stateless collectors for scale-out). Agents are acked only once the sink has the batch.",
     [](const Value& v) {
       return cfg::one_of(v, {"sqlite", "jetstream"});
     },
     [](Draft& d, const Value& v) { d.sink = v.text(); }},
    {"store.retention_days", Kind::kInteger, "30", "", "days, an integer in 0..36500",
     "SQLite: data older than this is dropped, a whole day's partition at a time (checked every "
     "minute while ingest runs); 0 keeps everything.", cfg::integer_in<0, 36'500>,
     [](Draft& d, const Value& v) { d.config.retention_days = static_cast<int>(v.integer()); }},
    {"store.queue_bytes", Kind::kInteger, "67108864", "", "bytes, an integer in 65536..4294967295",
     "Batches waiting for the store, in bytes. At the bound the collector stops reading from agents "
     "(they keep spooling) until the store catches up.", cfg::integer_in<65'536, 4'294'967'295>,
     [](Draft& d, const Value& v) { d.config.store_queue_bytes = static_cast<std::size_t>(v.integer()); }},
    {"store.database", Kind::kString, "", "when store.sink = \"sqlite\"", "a file path",
     "The SQLite database; created if missing.", cfg::non_empty_text,
     [](Draft& d, const Value& v) { d.config.database = v.text(); }},

    {"jetstream.servers", Kind::kStringList, "", "when store.sink = \"jetstream\"", "\"nats://HOST:PORT\"",
     "NATS servers of the JetStream cluster; the collector reconnects across them.", nats_url,
     [](Draft& d, const Value& v) { d.jetstream.servers = v.strings(); }},
    {"jetstream.stream", Kind::kString, "\"VANTAGE\"", "", "a name without spaces, dots or wildcards",
     "The stream; created (file storage) if missing, used as it is if it exists.", stream_name,
     [](Draft& d, const Value& v) { d.jetstream.stream = v.text(); }},
    {"jetstream.subject_prefix", Kind::kString, "\"vantage.telemetry\"", "",
     "NATS subject tokens without wildcards", "Batches go to PREFIX.REGION; a created stream takes PREFIX.>.",
     subject_prefix, [](Draft& d, const Value& v) { d.jetstream.subject_prefix = v.text(); }},
    {"jetstream.publish_timeout_ms", Kind::kInteger, "5000", "", "milliseconds, an integer in 100..60000",
     "How long a group of batches waits for JetStream's acks; unacked batches are retried by their agents.",
     cfg::integer_in<100, 60'000>,
     [](Draft& d, const Value& v) { d.jetstream.publish_timeout = std::chrono::milliseconds(v.integer()); }},
    {"jetstream.replicas", Kind::kInteger, "1", "", "an integer in 1..5",
     "Replicas of a stream the collector creates (a cluster of at least as many servers).",
     cfg::integer_in<1, 5>,
     [](Draft& d, const Value& v) { d.jetstream.replicas = static_cast<int>(v.integer()); }},
    {"jetstream.duplicate_window_s", Kind::kInteger, "600", "", "seconds, an integer in 1..86400",
     "De-duplication window (by Nats-Msg-Id = AGENT/INCARNATION-SEQ) of a stream the collector creates; "
     "about 250 bytes of nats-server memory per batch inside it. consume --db dedupes at any distance.",
     cfg::integer_in<1, 86'400>,
     [](Draft& d, const Value& v) { d.jetstream.duplicate_window = std::chrono::seconds(v.integer()); }},

    {"tls.ca", Kind::kString, "", kAlways, "a file path (PEM)",
     "The only CA whose agent certificates are trusted.", cfg::non_empty_text,
     [](Draft& d, const Value& v) { d.config.tls.ca_file = v.text(); }},
    {"tls.cert", Kind::kString, "", kAlways, "a file path (PEM)",
     "The collector's certificate (leaf first); its subjectAltName names what agents connect to.",
     cfg::non_empty_text, [](Draft& d, const Value& v) { d.config.tls.cert_file = v.text(); }},
    {"tls.key", Kind::kString, "", kAlways, "a file path (PEM)", "The private key of tls.cert.",
     cfg::non_empty_text, [](Draft& d, const Value& v) { d.config.tls.key_file = v.text(); }},
    {"tls.crl", Kind::kString, "", "", "a file path (PEM or DER)",
     "The CA's certificate revocation list: a revoked agent certificate is refused at the handshake "
     "and on resumption. It must be signed by tls.ca and not past its nextUpdate. `systemctl reload` "
     "(SIGHUP) rereads it with tls.cert, tls.key and tls.ca; sessions it revokes are closed.",
     cfg::non_empty_text, [](Draft& d, const Value& v) { d.config.tls.crl_file = v.text(); }},

    {"tls.ticket_keys", Kind::kString, "", "", "a file path",
     "Session-ticket keys (made mode 0600 if missing, rotated every 6 h), so agents resume their TLS "
     "sessions after a collector restart. Default: ticket-keys beside store.database; with JetStream "
     "and no path, keys live in memory and a restart means full handshakes.",
     cfg::non_empty_text, [](Draft& d, const Value& v) { d.config.tls.ticket_key_file = v.text(); }},

    {"http.listen", Kind::kStringList, "[]", "", "\"ADDR:PORT\" (an IP address; IPv6 in brackets)",
     "Serve /metrics (Prometheus), the status page (/) and /api/status here; empty: no HTTP.", endpoint,
     [](Draft& d, const Value& v) {
       d.http_listen.clear();
       for (const std::string& text : v.strings()) d.http_listen.push_back(to_endpoint(text));
     }},
    {"http.forget_after", Kind::kInteger, "3600", "", "seconds, an integer in 10..604800",
     "An agent, target or PoP not heard from for this long leaves /metrics and the status page.",
     cfg::integer_in<10, 604'800>,
     [](Draft& d, const Value& v) { d.http_forget_after = std::chrono::seconds(v.integer()); }},

    {"mesh.forget_after_s", Kind::kInteger, "60", "", "seconds, an integer in 1..86400",
     "An agent disconnected this long leaves the mesh: its own list goes and no list names it any more "
     "(until then the others keep probing it, so a reconnect changes nothing).",
     cfg::integer_in<1, 86'400>,
     [](Draft& d, const Value& v) { d.mesh_forget_after = std::chrono::seconds(v.integer()); }},
    {"mesh.rules[]", Kind::kTableArray, "", "", "an array of tables ([[mesh.rules]])",
     "Who probes whom, turned into each connected agent's target list (agents announce their reflectors "
     "when they connect; an agent without any probes others and is probed by none). Rules apply in order: "
     "when two give an agent the same (host, port, protocol), the first one's settings stay. Without "
     "rules, no lists are sent.",
     nullptr,
     [](Draft& d, const Value& v) {
       d.rules.emplace_back();
       rule(d).key = v.key;
       rule(d).line = v.line;
     }},
    {"mesh.rules[].name", Kind::kString, "", kAlways, "a name without spaces (1..64 characters)",
     "The rule's name in errors and /metrics; unique.", cfg::token,
     [](Draft& d, const Value& v) {
       rule(d).rule.name = v.text();
       rule(d).name_line = v.line;
     }},
    {"mesh.rules[].kind", Kind::kString, "\"full-mesh\"", "", "\"full-mesh\", \"sampled\" or \"extra\"",
     "full-mesh: each matching agent probes per_pop agents of every other PoP that to_* matches; sampled: "
     "the same over `sample` of those PoPs, each agent its own stable choice; extra: each matching agent "
     "probes host:port.",
     [](const Value& v) {
       return cfg::one_of(v, {"full-mesh", "sampled", "extra"});
     },
     [](Draft& d, const Value& v) { rule(d).kind = v.text(); }},
    {"mesh.rules[].from_region", Kind::kString, "", "", "a name without spaces (1..64 characters)",
     "Only agents of this region probe; default: any.", cfg::token,
     [](Draft& d, const Value& v) { rule(d).rule.from_region = v.text(); }},
    {"mesh.rules[].from_pop", Kind::kString, "", "", "a name without spaces (1..64 characters)",
     "Only agents of this PoP probe; default: any.", cfg::token,
     [](Draft& d, const Value& v) { rule(d).rule.from_pop = v.text(); }},
    {"mesh.rules[].to_region", Kind::kString, "", "", "\"same\", \"other\" or a region name",
     "full-mesh and sampled: PoPs of the prober's own region, of the other regions, or of this one; "
     "default: any. A prober never probes its own PoP.", cfg::token,
     [](Draft& d, const Value& v) {
       rule(d).to_region = v.text();
       rule(d).to_line = v.line;
     }},
    {"mesh.rules[].to_pop", Kind::kString, "", "", "a name without spaces (1..64 characters)",
     "full-mesh and sampled: only this PoP; default: any.", cfg::token,
     [](Draft& d, const Value& v) {
       rule(d).rule.to_pop = v.text();
       rule(d).to_line = v.line;
     }},
    {"mesh.rules[].per_pop", Kind::kInteger, "0", "", "an integer in 0..100000",
     "full-mesh and sampled: agents probed in each target PoP, 0 for all of them. Each prober takes its "
     "own stable choice (a rendezvous hash), so a join changes only the lists it ranks first in.",
     cfg::integer_in<0, 100'000>,
     [](Draft& d, const Value& v) {
       rule(d).rule.per_pop = static_cast<std::uint32_t>(v.integer());
       rule(d).per_pop_line = v.line;
     }},
    {"mesh.rules[].sample", Kind::kInteger, "", "when kind = \"sampled\"", "an integer in 1..100000",
     "sampled: PoPs each prober takes (a rendezvous hash, so a new PoP displaces at most one).",
     cfg::integer_in<1, 100'000>,
     [](Draft& d, const Value& v) {
       rule(d).rule.sample = static_cast<std::uint32_t>(v.integer());
       rule(d).sample_line = v.line;
     }},
    {"mesh.rules[].host", Kind::kString, "", "when kind = \"extra\"", "an IP address or a host name",
     "extra: the target (a game server, a router).", cfg::host,
     [](Draft& d, const Value& v) {
       rule(d).rule.host = v.text();
       rule(d).host_line = v.line;
     }},
    {"mesh.rules[].port", Kind::kInteger, "8627", "", "an integer in 1..65535",
     "extra: the target's port (udp: a Vantage reflector's, default 8627; tcp: required; icmp: not allowed). "
     "full-mesh and sampled probe the port each agent announces.",
     cfg::integer_in<1, 65535>,
     [](Draft& d, const Value& v) {
       rule(d).rule.port = static_cast<std::uint16_t>(v.integer());
       rule(d).port_line = v.line;
       rule(d).has_port = true;
     }},
    {"mesh.rules[].protocol", Kind::kString, "\"udp\"", "", "\"udp\", \"icmp\" or \"tcp\"",
     "UDP echo against a Vantage reflector, ICMP echo, or TCP connect time (extra only).",
     [](const Value& v) {
       return cfg::one_of(v, {"udp", "icmp", "tcp"});
     },
     [](Draft& d, const Value& v) {
       rule(d).protocol = v.text();
       rule(d).protocol_line = v.line;
     }},
    {"mesh.rules[].interval_ms", Kind::kInteger, "1000", "", "milliseconds, an integer in 1..3600000",
     "Time between two probes to one target (1000: one per second).", cfg::integer_in<1, 3'600'000>,
     [](Draft& d, const Value& v) { rule(d).rule.probe.interval_ms = static_cast<std::uint32_t>(v.integer()); }},
    {"mesh.rules[].size", Kind::kInteger, "", "", "bytes, an integer in 1..8972",
     "UDP/ICMP payload size. Default: the agent's (64 for UDP, 56 for ICMP).", cfg::integer_in<1, 8972>,
     [](Draft& d, const Value& v) { rule(d).rule.probe.payload_size = static_cast<std::uint16_t>(v.integer()); }},
    {"mesh.rules[].dscp", Kind::kInteger, "0", "", "an integer in 0..63", "DSCP of the probes.",
     cfg::integer_in<0, 63>,
     [](Draft& d, const Value& v) { rule(d).rule.probe.dscp = static_cast<std::uint8_t>(v.integer()); }},
    {"mesh.rules[].paths", Kind::kInteger, "1", "", "an integer in 1..64",
     "ECMP paths: probes to one target rotate over this many source ports (and IPv6 flow labels).",
     cfg::integer_in<1, 64>,
     [](Draft& d, const Value& v) { rule(d).rule.probe.paths = static_cast<std::uint8_t>(v.integer()); }},

    cfg::log_level_key<Draft>(),
};

// The rules' cross-key checks (what one key alone cannot say), then the planner's form.
void build_mesh(Draft& d, cfg::Diagnostics& diagnostics, mesh::MeshRules& out) {
  std::map<std::string, const RuleDraft*> names;
  for (RuleDraft& r : d.rules) {
    const std::string& key = r.key;
    bool ok = true;
    auto fail = [&](std::uint32_t line, const std::string& which, const std::string& message) {
      diagnostics.error(line, key + "." + which, message);
      ok = false;
    };
    if (!r.rule.name.empty()) {
      if (const auto [it, inserted] = names.emplace(r.rule.name, &r); !inserted) {
        fail(r.name_line, "name",
             "duplicate \"" + r.rule.name + "\" (" + it->second->key + ", line " + std::to_string(it->second->name_line) + ")");
      }
    } else if (!diagnostics.has(key + ".name")) {
      ok = false;  // reported missing by the table
    }
    using RuleKind = mesh::MeshRule::Kind;
    r.rule.kind = r.kind == "extra" ? RuleKind::kExtraTarget : r.kind == "sampled" ? RuleKind::kSampled : RuleKind::kFullMesh;
    r.rule.probe.protocol = r.protocol == "tcp"    ? wire::Protocol::TcpConnect
                            : r.protocol == "icmp" ? wire::Protocol::Icmp
                                                   : wire::Protocol::UdpEcho;
    const std::string kind_text = "kind = \"" + r.kind + "\"";
    if (r.rule.kind == RuleKind::kExtraTarget) {
      if (r.rule.host.empty() && !diagnostics.has(key + ".host")) {
        diagnostics.missing(key + ".host", "an IP address or a host name (required when kind = \"extra\")");
        ok = false;
      }
      if (r.protocol == "tcp" && !r.has_port && !diagnostics.has(key + ".port")) {
        diagnostics.missing(key + ".port", "an integer in 1..65535 (required when protocol = \"tcp\")");
        ok = false;
      }
      if (r.protocol == "icmp" && r.has_port) fail(r.port_line, "port", "not allowed with protocol = \"icmp\"");
      if (r.protocol == "udp" && !r.has_port) r.rule.port = 8627;
      if (r.sample_line != 0) fail(r.sample_line, "sample", "not allowed with " + kind_text);
      if (r.per_pop_line != 0) fail(r.per_pop_line, "per_pop", "not allowed with " + kind_text);
      if (r.to_line != 0) fail(r.to_line, r.rule.to_pop.empty() ? "to_region" : "to_pop", "not allowed with " + kind_text);
    } else {
      if (r.host_line != 0) fail(r.host_line, "host", "not allowed with " + kind_text + " (agents announce their reflectors)");
      if (r.has_port) fail(r.port_line, "port", "not allowed with " + kind_text + " (agents announce their reflectors)");
      if (r.protocol == "tcp") {
        fail(r.protocol_line, "protocol", "\"tcp\" needs kind = \"extra\" (a reflector answers UDP echo and ICMP)");
      }
      if (r.rule.kind == RuleKind::kSampled && r.rule.sample == 0 && !diagnostics.has(key + ".sample")) {
        diagnostics.missing(key + ".sample", "an integer in 1..100000 (required when kind = \"sampled\")");
        ok = false;
      }
      if (r.rule.kind == RuleKind::kFullMesh && r.sample_line != 0) fail(r.sample_line, "sample", "not allowed with " + kind_text);
    }
    if (r.to_region == "same") {
      r.rule.to_same_region = true;
    } else if (r.to_region == "other") {
      r.rule.to_other_regions = true;
    } else {
      r.rule.to_region = r.to_region;
    }
    if (ok) out.rules.push_back(r.rule);
  }
}

}  // namespace

std::string default_ticket_key_file(const std::string& database) {
  return (std::filesystem::path(database).parent_path() / "ticket-keys").string();
}

std::vector<platform::config::KeyInfo> config_keys() {
  return cfg::key_infos(std::span<const cfg::Key<Draft>>(kKeys));
}

std::string config_reference_markdown() { return cfg::render_markdown(config_keys()); }

// The file, or with `text` set that text under the file's name.
static CollectorConfig load_config(const std::filesystem::path& file, std::optional<std::string_view> text) {
  Draft d;
  // The command line's default listener; the file's ingest.listen replaces it.
  d.config.listen.emplace_back(asio::ip::address_v6::any(), 7443);
  cfg::Diagnostics diagnostics(file.string());
  // The duplicate checks need the raw lists with their lines; the table's apply stores them.
  const std::vector<cfg::KeyInfo> infos = cfg::key_infos(std::span<const cfg::Key<Draft>>(kKeys));
  const cfg::Visitor apply = [&](std::size_t i, const Value& v) {
    if (infos[i].kind == Kind::kStringList) unique(v, diagnostics);
    kKeys[i].apply(d, v);
  };
  if (text) {
    cfg::parse_text(*text, infos, apply, diagnostics);
  } else {
    cfg::parse_file(file, infos, apply, diagnostics);
  }
  // The store's conditional keys: a database for SQLite, servers for JetStream.
  if (d.sink == "sqlite" && d.config.database.empty() && !diagnostics.has("store.database")) {
    diagnostics.missing("store.database", "a file path");
  }
  if (d.sink == "jetstream" && d.jetstream.servers.empty() && !diagnostics.has("jetstream.servers")) {
    diagnostics.missing("jetstream.servers", "\"nats://HOST:PORT\"");
  }
  mesh::MeshRules rules;
  build_mesh(d, diagnostics, rules);
  if (d.config.tls.ticket_key_file.empty() && d.sink == "sqlite" && !d.config.database.empty()) {
    d.config.tls.ticket_key_file = default_ticket_key_file(d.config.database);
  }
  CollectorConfig result;
  result.log_level = d.log_level;
  if (d.sink == "jetstream") result.jetstream = d.jetstream;
  result.http_listen = std::move(d.http_listen);
  result.http_forget_after = d.http_forget_after;
  result.mesh = std::move(rules);
  result.mesh_forget_after = d.mesh_forget_after;
  if (!diagnostics.empty()) {
    result.errors = diagnostics.errors();
    return result;
  }
  result.options = std::move(d.config);
  return result;
}

CollectorConfig load_config(const std::filesystem::path& file) { return load_config(file, std::nullopt); }

CollectorConfig parse_config(std::string_view text, const std::string& name) { return load_config(name, text); }

}  // namespace vantage::collector
