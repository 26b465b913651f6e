// vantage-collector's config file: exact values from good files, exact messages (file:line: key)
// for bad ones, and the reference docs generated from the same key table.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "collector/config.hpp"
#include "tests/support/errors_text.hpp"

namespace {

namespace collector = vantage::collector;
using namespace std::chrono_literals;

const std::string kDir = VANTAGE_FIXTURES_DIR "/config/";

using vantage::test::errors_text;

}  // namespace

TEST_CASE("collector config: a file with every key loads with exact values") {
  const collector::CollectorConfig c = collector::load_config(kDir + "collector_good.toml");
  REQUIRE_MESSAGE(c.options.has_value(), errors_text(c.errors));
  const collector::IngestConfig& o = *c.options;
  CHECK(c.log_level == vantage::platform::LogLevel::kWarning);
  REQUIRE(o.listen.size() == 2);
  CHECK(o.listen[0].address().to_string() == "127.0.0.1");
  CHECK(o.listen[0].port() == 7443);
  CHECK(o.listen[1].address().to_string() == "::1");
  CHECK(o.listen[1].port() == 8443);
  CHECK(o.regions == std::vector<std::string>{"eu-central", "eu-west"});
  CHECK(o.database == "/tmp/store.db");
  CHECK(o.tls.ca_file == "pki/ca.crt");
  CHECK(o.tls.cert_file == "pki/collector.crt");
  CHECK(o.tls.key_file == "pki/collector.key");
  CHECK(o.io_threads == 3);
  CHECK(o.max_sessions == 10);
  CHECK(o.max_handshakes == 20);
  CHECK(o.max_handshakes_per_source == 5);
  CHECK(o.max_unsent_ack_bytes == 4096);
  CHECK(o.store_queue_bytes == 1048576);
  CHECK(o.retention_days == 7);
  CHECK(o.tls.ticket_key_file == "/tmp/keys");
  CHECK(o.tls.crl_file == "pki/crl.pem");
  CHECK(o.max_frame == 65536);
  CHECK(o.handshake_timeout == 2s);
  CHECK(o.idle_timeout == 30s);
}

TEST_CASE("collector config: keys left out take the command line's defaults") {
  const collector::CollectorConfig c = collector::load_config(kDir + "collector_minimal.toml");
  REQUIRE_MESSAGE(c.options.has_value(), errors_text(c.errors));
  const collector::IngestConfig& o = *c.options;
  const collector::IngestConfig defaults;
  CHECK(c.log_level == vantage::platform::LogLevel::kInfo);
  REQUIRE(o.listen.size() == 1);  // vantage-collector serve's default: one dual-stack listener
  CHECK(o.listen[0].address().to_string() == "::");
  CHECK(o.listen[0].port() == 7443);
  CHECK(o.regions == std::vector<std::string>{"eu-central"});
  CHECK(o.database == "store.db");
  CHECK(o.max_sessions == defaults.max_sessions);
  CHECK(o.max_handshakes == defaults.max_handshakes);
  CHECK(o.store_queue_bytes == defaults.store_queue_bytes);
  CHECK(o.retention_days == 30);
  CHECK(o.tls.ticket_key_file == "ticket-keys");  // beside the database
  CHECK(o.tls.crl_file.empty());                  // no revocation unless configured
  CHECK(o.max_frame == defaults.max_frame);
  CHECK(o.handshake_timeout == defaults.handshake_timeout);
  CHECK(o.idle_timeout == defaults.idle_timeout);
}

TEST_CASE("collector config: every error is reported at once, with file, line and key") {
  const std::string file = kDir + "collector_errors.toml";
  const collector::CollectorConfig c = collector::load_config(file);
  CHECK_FALSE(c.options.has_value());
  const std::string endpoint = "expected \"ADDR:PORT\" (an IP address; IPv6 in brackets)";
  const std::vector<std::string> expected = {
      file + ":2: ingest.listen[0]: " + endpoint + ", got \"7443\"",
      file + ":2: ingest.listen[1]: " + endpoint + ", got \"collector.test:7443\"",
      file + ":3: ingest.regions[2]: duplicate \"eu-central\"",
      file + ":4: ingest.max_sessions: expected an integer in 1..1000000, got 0",
      file + ":5: ingest.max_frame: expected bytes, an integer in 4096..268435456, got 1.5",
      file + ":6: ingest.idle_timeout: unknown key (did you mean 'idle_timeout_ms'?)",
      file + ":8: tls.cert: missing; expected a file path (PEM)",
      file + ":8: tls.key: missing; expected a file path (PEM)",
      file +
          ":12: log.level: expected \"error\", \"warning\", \"notice\", \"info\" or \"debug\", got "
          "\"verbose\"",
      file + ": store.database: missing; expected a file path",
  };
  CHECK(errors_text(c.errors) == errors_text(expected));
}

TEST_CASE("collector config: an empty file names every required key") {
  const std::string file = kDir + "collector_empty.toml";
  const collector::CollectorConfig c = collector::load_config(file);
  CHECK_FALSE(c.options.has_value());
  const std::vector<std::string> expected = {
      file + ": ingest.regions: missing; expected a name without spaces (1..64 characters)",
      file + ": tls.ca: missing; expected a file path (PEM)",
      file + ": tls.cert: missing; expected a file path (PEM)",
      file + ": tls.key: missing; expected a file path (PEM)",
      // Required with the SQLite sink only, so checked after the table's own keys.
      file + ": store.database: missing; expected a file path",
  };
  CHECK(errors_text(c.errors) == errors_text(expected));
}

TEST_CASE("collector config: the example file loads and the reference covers the whole table") {
  const collector::CollectorConfig c =
      collector::load_config(VANTAGE_FIXTURES_DIR "/../../packaging/examples/collector.toml");
  REQUIRE_MESSAGE(c.options.has_value(), errors_text(c.errors));
  CHECK(c.options->regions == std::vector<std::string>{"eu-central"});
  // The example serves HTTP on loopback only: the status page and /metrics are not for the world.
  REQUIRE(c.http_listen.size() == 1);
  CHECK(c.http_listen[0].address().is_loopback());
  const std::string doc = collector::config_reference_markdown();
  for (const auto& k : collector::config_keys()) {
    CAPTURE(k.path);
    CHECK(doc.find("| `" + std::string(k.path) + "` | ") != std::string::npos);
  }
  CHECK(doc.find("| `ingest.listen` | list, each \"ADDR:PORT\" (an IP address; IPv6 in brackets) | "
                 "`[\"[::]:7443\"]` |") != std::string::npos);
}

TEST_CASE("collector config: the JetStream sink needs servers and no database") {
  const collector::CollectorConfig c = collector::load_config(kDir + "collector_jetstream.toml");
  REQUIRE_MESSAGE(c.options.has_value(), errors_text(c.errors));
  REQUIRE(c.jetstream.has_value());
  CHECK(c.options->database.empty());
  CHECK(c.jetstream->servers == std::vector<std::string>{"nats://127.0.0.1:4222", "nats://10.0.0.2:4222"});
  CHECK(c.jetstream->stream == "TELEMETRY");
  CHECK(c.jetstream->subject_prefix == "vantage.telemetry");
  CHECK(c.jetstream->publish_timeout == std::chrono::milliseconds(2500));
  CHECK(c.jetstream->replicas == 3);

  const std::string bad = kDir + "collector_jetstream_bad.toml";
  const collector::CollectorConfig b = collector::load_config(bad);
  CHECK_FALSE(b.options.has_value());
  const std::string text = errors_text(b.errors);
  CHECK(text.find("jetstream.subject_prefix") != std::string::npos);
  CHECK(text.find("jetstream.servers: missing") != std::string::npos);
  CHECK(text.find("store.database") == std::string::npos);
}

// Inputs the config fuzzers found: toml++ 3.3 aborts (debug) or has undefined behaviour on them.
TEST_CASE("collector config: what toml++ 3.3 mishandles is a syntax error, non-ASCII in strings loads") {
  struct Case {
    std::string text;
    std::string error;
  };
  const std::string kNonAscii =
      ": a non-ASCII character outside a string or comment (or right after a backslash in a string)";
  const std::vector<Case> cases{
      {"[ingest]\n[!x]\n", "collector.toml:2:2: "},
      {"[[[ingest]]]\n", "collector.toml:1:3: "},
      {"[ingest]\npop \xc7\x9atries = 3\n", "collector.toml:2:5" + kNonAscii},
      {"[tls]\nca = \"\"\"\\\n  \xc2\xa7/ca.crt\"\"\"\n", "collector.toml:3:3" + kNonAscii},
      {"[ingest]\nmax_frame = 1\"\xc2\xa7\"\n", "collector.toml:2:15" + kNonAscii},
      {"[tls]\nca = \"\"\"\\\xef\xb5\xbf\"\"\"\n", "collector.toml:2:10" + kNonAscii},
      {"[tls]\nca = \"\"\"\\  \xc2\xa7\"\"\"\n", "collector.toml:2:12" + kNonAscii},
      // toml++ prints a long array over several lines: shown as one.
      {"[ingest]\nregions = [\"eu-west\"]\nmax_sessions = [\"" + std::string(70, 'a') + "\", \"b\"]\n",
       "collector.toml:3: ingest.max_sessions: expected an integer in 1..1000000, got [ 'aaaa"},
      // toml++ quotes the line break it stopped at: escaped, so the error stays one line.
      {"[ingest]\nio_threads = tru\n",
       "collector.toml:2:17: Error while parsing boolean: expected 'true', saw 'tru\\u000a'"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.text);
    const collector::CollectorConfig r = collector::parse_config(c.text, "collector.toml");
    CHECK_FALSE(r.options.has_value());
    REQUIRE_FALSE(r.errors.empty());
    CHECK_MESSAGE(r.errors[0].starts_with(c.error), r.errors[0]);  // then the keys it did not get to
    for (const std::string& e : r.errors) CHECK(e.find('\n') == std::string::npos);
  }
  const collector::CollectorConfig ok = collector::parse_config(
      "# caf\xc3\xa9\n[ingest]\nregions = [\"eu-west\"] # \xc3\xbc\n[store]\ndatabase = "
      "\"/var/lib/caf\xc3\xa9/s.db\"\n"
      "[tls]\nca = \"\"\"\n\xc2\xa7\"\"\"\ncert = '''c\xc3\xa9'''\nkey = 'k'\n",
      "collector.toml");
  REQUIRE_MESSAGE(ok.options.has_value(), errors_text(ok.errors));
  CHECK(ok.options->database == "/var/lib/caf\xc3\xa9/s.db");
  CHECK(ok.options->tls.ca_file == "\xc2\xa7");
  CHECK(ok.options->tls.cert_file == "c\xc3\xa9");
}

namespace {

const std::string kMinimal =
    "[ingest]\nregions = [\"eu-central\"]\n[store]\ndatabase = \"store.db\"\n"
    "[tls]\nca = \"ca.crt\"\ncert = \"collector.crt\"\nkey = \"collector.key\"\n";  // 8 lines

}  // namespace

TEST_CASE("collector config: [mesh] rules load in order with their settings") {
  const collector::CollectorConfig ok = collector::parse_config(kMinimal + R"(
[mesh]
forget_after_s = 5
[[mesh.rules]]
name = "region"
to_region = "same"
interval_ms = 100
[[mesh.rules]]
name = "far"
kind = "sampled"
from_region = "eu-central"
from_pop = "fra1"
to_region = "other"
sample = 20
per_pop = 2
protocol = "icmp"
size = 100
dscp = 46
paths = 16
[[mesh.rules]]
name = "game"
kind = "extra"
host = "game.example.net"
port = 27015
protocol = "tcp"
[[mesh.rules]]
name = "reflector"
kind = "extra"
host = "192.0.2.7"
[[mesh.rules]]
name = "lon"
to_region = "eu-west"
to_pop = "lon1"
)",
                                                                "collector.toml");
  REQUIRE_MESSAGE(ok.options.has_value(), errors_text(ok.errors));
  CHECK(ok.mesh_forget_after == 5s);
  using Kind = collector::mesh::MeshRule::Kind;
  using vantage::wire::Protocol;
  const auto& rules = ok.mesh.rules;
  REQUIRE(rules.size() == 5);
  CHECK(rules[0].name == "region");
  CHECK(rules[0].kind == Kind::kFullMesh);
  CHECK(rules[0].to_same_region);
  CHECK_FALSE(rules[0].to_other_regions);
  CHECK(rules[0].to_region.empty());
  CHECK(rules[0].per_pop == 0);  // every agent of every PoP
  CHECK(rules[0].probe.interval_ms == 100);
  CHECK(rules[0].probe.protocol == Protocol::UdpEcho);
  CHECK(rules[0].probe.paths == 1);
  CHECK(rules[0].probe.payload_size == 0);

  CHECK(rules[1].kind == Kind::kSampled);
  CHECK(rules[1].from_region == "eu-central");
  CHECK(rules[1].from_pop == "fra1");
  CHECK(rules[1].to_other_regions);
  CHECK(rules[1].sample == 20);
  CHECK(rules[1].per_pop == 2);
  CHECK(rules[1].probe.protocol == Protocol::Icmp);
  CHECK(rules[1].probe.payload_size == 100);
  CHECK(rules[1].probe.dscp == 46);
  CHECK(rules[1].probe.paths == 16);
  CHECK(rules[1].probe.interval_ms == 1000);

  CHECK(rules[2].kind == Kind::kExtraTarget);
  CHECK(rules[2].host == "game.example.net");
  CHECK(rules[2].port == 27015);
  CHECK(rules[2].probe.protocol == Protocol::TcpConnect);
  CHECK(rules[3].port == 8627);  // udp: a reflector's default port

  CHECK(rules[4].to_region == "eu-west");
  CHECK(rules[4].to_pop == "lon1");
  CHECK_FALSE(rules[4].to_same_region);
}

TEST_CASE("collector config: no [mesh] means no rules and the default forget_after") {
  const collector::CollectorConfig c = collector::parse_config(kMinimal, "collector.toml");
  REQUIRE_MESSAGE(c.options.has_value(), errors_text(c.errors));
  CHECK(c.mesh.empty());
  CHECK(c.mesh_forget_after == 60s);
}

TEST_CASE("collector config: bad [mesh] lines name the file, line and key") {
  const collector::CollectorConfig c = collector::parse_config(kMinimal + R"([mesh]
forget_after_s = 0
[[mesh.rules]]
name = "a"
kind = "ring"
paths = 65
[[mesh.rules]]
name = "a"
kind = "sampled"
protocol = "tcp"
[[mesh.rules]]
name = "x"
kind = "extra"
protocol = "icmp"
port = 7
per_pop = 1
[[mesh.rules]]
kind = "full-mesh"
host = "192.0.2.1"
dscp = 64
interval_ms = 0
[[mesh.rules]]
name = "t"
kind = "extra"
protocol = "tcp"
host = "bad host"
)",
                                                               "collector.toml");
  CHECK_FALSE(c.options.has_value());
  const std::vector<std::string> expected = {
      "collector.toml:10: mesh.forget_after_s: expected seconds, an integer in 1..86400, got 0",
      "collector.toml:13: mesh.rules[0].kind: expected \"full-mesh\", \"sampled\" or \"extra\", got \"ring\"",
      "collector.toml:14: mesh.rules[0].paths: expected an integer in 1..64, got 65",
      "collector.toml:15: mesh.rules[1].sample: missing; expected an integer in 1..100000 (required when kind = "
      "\"sampled\")",
      "collector.toml:16: mesh.rules[1].name: duplicate \"a\" (mesh.rules[0], line 12)",
      "collector.toml:18: mesh.rules[1].protocol: \"tcp\" needs kind = \"extra\" (a reflector answers UDP echo and "
      "ICMP)",
      "collector.toml:19: mesh.rules[2].host: missing; expected an IP address or a host name (required when kind = "
      "\"extra\")",
      "collector.toml:23: mesh.rules[2].port: not allowed with protocol = \"icmp\"",
      "collector.toml:24: mesh.rules[2].per_pop: not allowed with kind = \"extra\"",
      "collector.toml:25: mesh.rules[3].name: missing; expected a name without spaces (1..64 characters)",
      "collector.toml:27: mesh.rules[3].host: not allowed with kind = \"full-mesh\" (agents announce their "
      "reflectors)",
      "collector.toml:28: mesh.rules[3].dscp: expected an integer in 0..63, got 64",
      "collector.toml:29: mesh.rules[3].interval_ms: expected milliseconds, an integer in 1..3600000, got 0",
      "collector.toml:30: mesh.rules[4].port: missing; expected an integer in 1..65535 (required when protocol = "
      "\"tcp\")",
      "collector.toml:34: mesh.rules[4].host: expected an IP address or a host name, got \"bad host\"",
  };
  CHECK(errors_text(c.errors) == errors_text(expected));
}
