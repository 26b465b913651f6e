// vantage-agent's config file: exact values from good files, exact messages (file:line: key)
// for bad ones, and the reference docs generated from the same key table.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "agent/config.hpp"
#include "platform/utf8_text.hpp"
#include "tests/support/errors_text.hpp"

namespace {

namespace agent = vantage::agent;
using agent::probes::ProbeProtocol;
using namespace std::chrono_literals;

const std::string kDir = VANTAGE_FIXTURES_DIR "/config/";

using vantage::test::errors_text;

}  // namespace

TEST_CASE("agent config: a file with every key loads with exact values") {
  const agent::AgentConfig c = agent::load_config(kDir + "agent_good.toml");
  REQUIRE_MESSAGE(c.options.has_value(), errors_text(c.errors));
  CHECK(c.errors.empty());
  CHECK(c.log_level == vantage::platform::LogLevel::kDebug);
  const agent::AgentOptions& o = *c.options;
  CHECK(o.drain == 2500ms);

  const agent::MeasurementConfig& m = o.measurement;
  CHECK(m.report_interval == 500ms);
  CHECK(m.load_interval == 0ns);
  CHECK(m.host_root == "/tmp/host");
  CHECK_FALSE(m.kernel_timestamps);
  CHECK(m.icmp_mode == agent::probes::IcmpSocketMode::kRaw);
  REQUIRE(m.reflector.has_value());
  CHECK(m.reflector->bind_address == "0.0.0.0");
  CHECK(m.reflector->port == 9627);
  CHECK(m.reflector->rate_limit.rate_per_s == 1000);
  CHECK(m.reflector->rate_limit.burst == 200);
  CHECK_FALSE(m.reflector->kernel_timestamps);

  REQUIRE(m.targets.size() == 4);
  CHECK(m.targets[0].label == "fra1");
  CHECK(m.targets[0].protocol == ProbeProtocol::kUdpEcho);
  CHECK(m.targets[0].address.to_string() == "192.0.2.10");
  CHECK(m.targets[0].port == 8627);
  CHECK(m.targets[0].rate_per_s == doctest::Approx(20));
  CHECK(m.targets[0].timeout == 250500us);
  CHECK(m.targets[0].payload_size == 200);
  CHECK(m.targets[0].dscp == 46);

  CHECK(m.targets[1].label == "[2001:db8::7]:9000");
  CHECK(m.targets[1].address.to_string() == "2001:db8::7");
  CHECK(m.targets[1].port == 9000);
  CHECK(m.targets[1].rate_per_s == doctest::Approx(1));
  CHECK(m.targets[1].timeout == 1s);
  CHECK(m.targets[1].payload_size == 0);
  CHECK(m.targets[1].dscp == 0);

  CHECK(m.targets[2].label == "game");
  CHECK(m.targets[2].protocol == ProbeProtocol::kTcpConnect);
  CHECK(m.targets[2].port == 443);

  // A host name: resolved in the background once measuring, labelled by the name meanwhile.
  CHECK(m.targets[3].protocol == ProbeProtocol::kIcmpEcho);
  CHECK(m.targets[3].host == "localhost");
  CHECK(m.targets[3].port == 0);
  CHECK(m.targets[3].label == "localhost");
  CHECK(m.targets[3].payload_size == 100);

  REQUIRE(o.shipping.has_value());
  const agent::ship::ShipperConfig& s = *o.shipping;
  CHECK(s.identity.agent_id == "ams1-edge-02");
  CHECK(s.identity.region == "eu-west");
  CHECK(s.identity.pop == "ams1");
  CHECK(s.tls.ca_file == "pki/ca.crt");
  CHECK(s.tls.cert_file == "pki/ams1-edge-02.crt");
  CHECK(s.tls.key_file == "pki/ams1-edge-02.key");
  // Own region first, in order; then, as allowed, the other region's.
  REQUIRE(s.collectors.size() == 3);
  CHECK(s.collectors[0].host == "2001:db8::1");
  CHECK(s.collectors[0].port == 7443);
  CHECK(s.collectors[1].host == "192.0.2.5");
  CHECK(s.collectors[1].port == 8443);
  CHECK(s.collectors[2].host == "fra.collector.test");
  CHECK(s.collectors[2].port == 7443);
  CHECK(s.spool.dir == "/tmp/vantage-spool");
  CHECK(s.spool.max_bytes == 64u << 10);
  CHECK(s.spool.max_record_bytes == 32u << 10);
  CHECK(s.spool.segment_bytes == 8u << 10);
  CHECK(s.spool.fsync == agent::ship::SpoolConfig::Fsync::kEveryRecord);
  CHECK(s.capabilities == (agent::ship::kCapabilityHostLoad | agent::ship::kCapabilityUdpEcho |
                           agent::ship::kCapabilityTcpConnect | agent::ship::kCapabilityIcmp |
                           agent::ship::kCapabilityReflector | agent::ship::kCapabilityTargetList));
}

namespace {

const std::string kShipping =
    "[identity]\nagent_id = \"fra1-edge-07\"\nregion = \"eu-central\"\npop = \"fra1\"\n"
    "[tls]\nca = \"ca.crt\"\ncert = \"a.crt\"\nkey = \"a.key\"\n"
    "[[collectors]]\nregion = \"eu-central\"\naddresses = [\"127.0.0.1:7443\"]\n";

}  // namespace

TEST_CASE("agent config: the mesh's target lists are taken unless mesh.accept is false") {
  const agent::AgentConfig on = agent::parse_config(kShipping, "mesh.toml");
  REQUIRE_MESSAGE(on.options.has_value(), errors_text(on.errors));
  CHECK((on.options->shipping->capabilities & agent::ship::kCapabilityTargetList) != 0);
  const agent::AgentConfig off = agent::parse_config(kShipping + "[mesh]\naccept = false\n", "mesh.toml");
  REQUIRE_MESSAGE(off.options.has_value(), errors_text(off.errors));
  CHECK((off.options->shipping->capabilities & agent::ship::kCapabilityTargetList) == 0);
}

TEST_CASE("agent config: reflector.announce, else a specific reflector.bind, is announced in Hello") {
  // The default bind "::" is a wildcard: nothing to announce.
  const agent::AgentConfig wildcard = agent::parse_config(kShipping, "a.toml");
  REQUIRE_MESSAGE(wildcard.options.has_value(), errors_text(wildcard.errors));
  CHECK(wildcard.options->shipping->reflectors.empty());

  const agent::AgentConfig bound =
      agent::parse_config(kShipping + "[reflector]\nbind = \"192.0.2.1\"\nport = 9000\n", "a.toml");
  REQUIRE_MESSAGE(bound.options.has_value(), errors_text(bound.errors));
  REQUIRE(bound.options->shipping->reflectors.size() == 1);
  CHECK(bound.options->shipping->reflectors[0].address().to_string() == "192.0.2.1");
  CHECK(bound.options->shipping->reflectors[0].port() == 9000);

  const agent::AgentConfig announced = agent::parse_config(
      kShipping + "[reflector]\nannounce = [\"198.51.100.7:8627\", \"[2001:db8::7]:8627\"]\n", "a.toml");
  REQUIRE_MESSAGE(announced.options.has_value(), errors_text(announced.errors));
  REQUIRE(announced.options->shipping->reflectors.size() == 2);
  CHECK(announced.options->shipping->reflectors[0].address().to_string() == "198.51.100.7");
  CHECK(announced.options->shipping->reflectors[1].address().to_string() == "2001:db8::7");

  const agent::AgentConfig off = agent::parse_config(
      kShipping + "[reflector]\nenabled = false\nannounce = [\"198.51.100.7:8627\"]\n", "a.toml");
  REQUIRE_MESSAGE(off.options.has_value(), errors_text(off.errors));
  CHECK(off.options->shipping->reflectors.empty());  // no reflector, nothing to announce

  for (const std::string bad : {"\"reflector.example:8627\"", "\"192.0.2.1\"", "\"0.0.0.0:8627\"",
                                "\"2001:db8::7:8627\""}) {
    CAPTURE(bad);
    const agent::AgentConfig c = agent::parse_config(kShipping + "[reflector]\nannounce = [" + bad + "]\n", "a.toml");
    REQUIRE(c.errors.size() == 1);
    CHECK(c.errors[0].find("reflector.announce") != std::string::npos);
  }
}

TEST_CASE("agent config: an empty file gives the command line's defaults") {
  const agent::AgentConfig c = agent::load_config(kDir + "agent_minimal.toml");
  REQUIRE_MESSAGE(c.options.has_value(), errors_text(c.errors));
  const agent::AgentOptions cli = agent::parse_args({}).value();
  const agent::AgentOptions& o = *c.options;
  CHECK(c.log_level == vantage::platform::LogLevel::kInfo);
  CHECK(o.drain == cli.drain);
  CHECK_FALSE(o.shipping.has_value());
  CHECK(o.measurement.targets.empty());
  CHECK(o.measurement.report_interval == cli.measurement.report_interval);
  CHECK(o.measurement.load_interval == cli.measurement.load_interval);
  CHECK(o.measurement.host_root == cli.measurement.host_root);
  CHECK(o.measurement.kernel_timestamps == cli.measurement.kernel_timestamps);
  CHECK(o.measurement.icmp_mode == cli.measurement.icmp_mode);
  REQUIRE(o.measurement.reflector.has_value());
  CHECK(o.measurement.reflector->bind_address == cli.measurement.reflector->bind_address);
  CHECK(o.measurement.reflector->port == cli.measurement.reflector->port);
  CHECK(o.measurement.reflector->rate_limit.rate_per_s == cli.measurement.reflector->rate_limit.rate_per_s);
  CHECK(o.measurement.reflector->rate_limit.burst == cli.measurement.reflector->rate_limit.burst);
}

TEST_CASE("agent config: every error is reported at once, with file, line and key") {
  const std::string file = kDir + "agent_errors.toml";
  const agent::AgentConfig c = agent::load_config(file);
  CHECK_FALSE(c.options.has_value());
  const std::vector<std::string> expected = {
      // required because collectors are set; the [identity] table's line
      file +
          ":1: identity.region: missing; expected a name without spaces (1..64 characters) (required when "
          "collectors are set)",
      // wrong value for the kind
      file + ":2: identity.agent_id: expected a name without spaces (1..64 characters), got \"fra1 edge\"",
      // one element of a list
      file +
          ":7: collectors[0].addresses[1]: expected \"HOST:PORT\" (a name or an IP address; IPv6 in "
          "brackets), "
          "got \"collector.test\"",
      // out of range
      file + ":10: delivery.drain: expected seconds in [0, 10000000], got -1",
      // unknown key
      file + ":11: delivery.retries: unknown key",
      // wrong type
      file + ":17: targets[0].rate: expected a number in (0, 1000], got \"fast\"",
      file + ":20: targets[1].name: duplicate name \"ams1\" (targets[0], line 14)",
      file + ":21: targets[1].protocol: expected \"udp\", \"tcp\", \"icmp\" or \"stamp\", got \"sctp\"",
      file + ":23: targets[1].dscp: expected an integer in 0..63, got 64",
      // unknown key inside a target, with a suggestion
      file + ":24: targets[1].rat: unknown key (did you mean 'rate'?)",
      // missing, conditionally (a tcp target needs a port) and always (a target's protocol and host)
      file + ":26: targets[2].port: missing; expected an integer in 1..65535 (a tcp target needs a port)",
      file + ":33: targets[3].port: an icmp target has no port",
      file + ":35: targets[4].protocol: missing; expected \"udp\", \"tcp\", \"icmp\" or \"stamp\"",
      file + ":35: targets[4].host: missing; expected an IP address or a host name",
      file + ":40: reflector.enabled: expected true or false, got \"yes\"",
      file + ":42: measurment: unknown key (did you mean 'measurement'?)",
      file + ": tls.ca: missing; expected a file path (PEM) (required when collectors are set)",
      file + ": tls.cert: missing; expected a file path (PEM) (required when collectors are set)",
      file + ": tls.key: missing; expected a file path (PEM) (required when collectors are set)",
  };
  CHECK(errors_text(c.errors) == errors_text(expected));
}

TEST_CASE("agent config: names the collector would refuse are errors with file, line and key") {
  const std::string file = kDir + "agent_hostile_names.toml";
  const agent::AgentConfig c = agent::load_config(file);
  CHECK_FALSE(c.options.has_value());
  const std::string token = "expected a name without spaces (1..64 characters), got ";
  const std::string name = "expected a name without spaces or control characters (UTF-8, 1..64 bytes), got ";
  const std::vector<std::string> expected = {
      file + ":2: identity.agent_id: " + token + "\"fra1-edge\\u000a<3>forged line\"",
      file + ":3: identity.region: " + token + "\"eu-central\\u0085\"",
      file + ":4: identity.pop: " + token + "\"fra1\\u202e\"",
      file + ":7: targets[0].name: " + name + "\"ams1\\u0000\"",
      file + ":12: targets[1].name: " + name + "\"rtt\\u0085next\"",
      // 61 + 4 bytes: over the bound by the emoji's last bytes (the value shown is cut).
      file + ":17: targets[2].name: " + name + "\"" + std::string(56, 'a') + "...",
      file + ":22: targets[3].name: " + name + "\"esc\\u001b[2J\"",
      file + ":27: targets[4].name: " + name + "\"two words\"",
  };
  CHECK(errors_text(c.errors) == errors_text(expected));
  // No error line carries a raw control character: each is one line of the log, as written.
  for (const std::string& e : c.errors) CHECK(vantage::platform::check_text(e, e.size()));
}

TEST_CASE("agent config: a syntax error reports the parser's line and column") {
  const std::string file = kDir + "agent_syntax.toml";
  const agent::AgentConfig c = agent::load_config(file);
  CHECK_FALSE(c.options.has_value());
  REQUIRE(c.errors.size() == 1);
  CHECK(c.errors[0].starts_with(file + ":3:10: "));
}

TEST_CASE("agent config: shipping needs the identity and the TLS files") {
  const std::string file = kDir + "agent_shipping_incomplete.toml";
  const agent::AgentConfig c = agent::load_config(file);
  CHECK_FALSE(c.options.has_value());
  const std::string tail = "(required when collectors are set)";
  const std::vector<std::string> expected = {
      file + ":1: identity.region: missing; expected a name without spaces (1..64 characters) " + tail,
      file + ":1: identity.pop: missing; expected a name without spaces (1..64 characters) " + tail,
      file + ":8: tls.cert: missing; expected a file path (PEM) " + tail,
      file + ":8: tls.key: missing; expected a file path (PEM) " + tail,
  };
  CHECK(errors_text(c.errors) == errors_text(expected));
}

TEST_CASE("agent config: collectors of the agent's own region are required, one entry per region") {
  const std::string file = kDir + "agent_no_own_region.toml";
  const agent::AgentConfig c = agent::load_config(file);
  CHECK_FALSE(c.options.has_value());
  const std::vector<std::string> expected = {
      file + ":11: collectors: no [[collectors]] for this agent's region \"eu-central\" (identity.region)",
      file + ":16: collectors[1].region: duplicate region \"eu-west\" (collectors[0], line 12)",
      file + ":21: collectors[2].addresses: expected a non-empty list, got []",
  };
  CHECK(errors_text(c.errors) == errors_text(expected));
}

TEST_CASE("agent config: a file that cannot be opened") {
  const agent::AgentConfig c = agent::load_config(kDir + "no-such-file.toml");
  CHECK_FALSE(c.options.has_value());
  REQUIRE(c.errors.size() == 1);
  CHECK(c.errors[0] == kDir + "no-such-file.toml: cannot open: No such file or directory");
}

TEST_CASE("agent config: the example file loads and the reference covers the whole table") {
  // Unknown keys are errors, so a clean load proves every key the example uses is in the table.
  const agent::AgentConfig c =
      agent::load_config(VANTAGE_FIXTURES_DIR "/../../packaging/examples/agent.toml");
  REQUIRE_MESSAGE(c.options.has_value(), errors_text(c.errors));
  REQUIRE(c.options->shipping.has_value());
  CHECK(c.options->shipping->identity.pop == "fra1");
  CHECK(c.options->shipping->identity.region == "eu-central");
  CHECK(c.options->shipping->collectors.size() == 2);  // eu-west stays out: cross-region is off
  CHECK(c.options->measurement.targets.size() == 4);

  const std::string doc = agent::config_reference_markdown();
  CHECK(doc.starts_with("| key | value | default | description |\n|---|---|---|---|\n"));
  const auto keys = agent::config_keys();
  CHECK(keys.size() == 67);
  std::istringstream rows(doc);
  std::string row;
  std::set<std::string> documented;
  std::getline(rows, row);
  std::getline(rows, row);
  while (std::getline(rows, row)) {
    const auto open = row.find('`');
    documented.insert(row.substr(open + 1, row.find('`', open + 1) - open - 1));
  }
  CHECK(documented.size() == keys.size());
  for (const auto& k : keys) {
    CAPTURE(k.path);
    CHECK(documented.count(std::string(k.path)) == 1);
    CHECK_FALSE(k.description.empty());
    CHECK_FALSE(k.expected.empty());
  }
  CHECK(doc.find("| `targets[].rate` | a number in (0, 1000] | `1` | Probes per second. |\n") !=
        std::string::npos);
  CHECK(doc.find("| `tls.ca` | a file path (PEM) | required when collectors are set |") != std::string::npos);
}

TEST_CASE("agent config: names that do not resolve stop nothing, and are not looked up while loading") {
  // Target and collector names: loading never waits for DNS, and the agent starts with them.
  const std::string file = kDir + "agent_unresolvable.toml";
  const agent::AgentConfig c = agent::load_config(file);
  REQUIRE_MESSAGE(c.options.has_value(), errors_text(c.errors));
  const agent::MeasurementConfig& m = c.options->measurement;
  REQUIRE(m.targets.size() == 2);
  CHECK(m.targets[0].host == "no-such-host.invalid");
  CHECK(m.targets[0].label == "no-such-host.invalid:8627");
  CHECK(m.targets[1].host == "pop2.invalid");
  CHECK(m.targets[1].label == "pop2");
  CHECK(m.resolve.retry_max == 5s);
  CHECK(m.resolve.refresh == 30s);
  REQUIRE(c.options->shipping.has_value());
  CHECK(c.options->shipping->collectors.at(0).host == "collector.invalid");
  CHECK(c.options->shipping->resolve.retry_max == 5s);
}

TEST_CASE("agent config: a host name whose label the collector would refuse is an error with file, line and key") {
  // The label of a target without a name is its host (icmp) or host:port: the collector refuses
  // one over 128 bytes, and would refuse every batch carrying it.
  const std::string file = kDir + "agent_long_host.toml";
  const agent::AgentConfig c = agent::load_config(file);
  CHECK_FALSE(c.options.has_value());
  const std::string a40(40, 'a');
  const std::string tail = " (the collector's bound for a target); set ";
  const std::vector<std::string> expected = {
      // 125 bytes + ":8627" (the default port) and + ":443"
      file + ":5: targets[0].host: the target's label \"" + a40 + "...\": 130 bytes, over the limit of 128" +
          tail + "targets[0].name",
      file + ":9: targets[1].host: the target's label \"" + a40 + "...\": 129 bytes, over the limit of 128" +
          tail + "targets[1].name",
      // icmp: the label is the host alone, so 125 bytes pass and 253 do not
      file + ":18: targets[3].host: the target's label \"" + std::string(40, 'c') +
          "...\": 253 bytes, over the limit of 128" + tail + "targets[3].name",
      // targets[4] has the same long host and a name: accepted
  };
  CHECK(errors_text(c.errors) == errors_text(expected));
}

TEST_CASE("agent config: targets[].paths, 1..64 and above 1 for udp only") {
  const std::string file = (std::filesystem::temp_directory_path() / "vantage-agent-paths-test.toml").string();
  {
    std::ofstream out(file);
    out << "[[targets]]\nname = \"a\"\nprotocol = \"udp\"\nhost = \"192.0.2.1\"\npaths = 16\n"     // 1-5
        << "[[targets]]\nname = \"b\"\nprotocol = \"tcp\"\nhost = \"192.0.2.2\"\nport = 443\n"   // 6-10
        << "paths = 2\n"                                                                       // 11
        << "[[targets]]\nname = \"c\"\nprotocol = \"udp\"\nhost = \"192.0.2.3\"\npaths = 65\n";  // 12-16
  }
  const agent::AgentConfig bad = agent::load_config(file);
  CHECK_FALSE(bad.options.has_value());
  const std::vector<std::string> expected = {
      file + ":11: targets[1].paths: only a udp target spreads over several paths",
      file + ":16: targets[2].paths: expected an integer in 1..64; above 1 for udp only, got 65",
  };
  CHECK(errors_text(bad.errors) == errors_text(expected));
  {
    std::ofstream out(file);
    out << "[[targets]]\nname = \"a\"\nprotocol = \"udp\"\nhost = \"192.0.2.1\"\npaths = 16\n"
        << "[[targets]]\nname = \"b\"\nprotocol = \"icmp\"\nhost = \"192.0.2.2\"\n";
  }
  const agent::AgentConfig good = agent::load_config(file);
  REQUIRE_MESSAGE(good.options.has_value(), errors_text(good.errors));
  REQUIRE(good.options->measurement.targets.size() == 2);
  CHECK(good.options->measurement.targets[0].paths == 16);
  CHECK(good.options->measurement.targets[1].paths == 1);
  std::filesystem::remove(file);
}

TEST_CASE("agent config: stamp targets take ssid, key or key_file, timestamp_format and stateful_reflector") {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "vantage-agent-stamp-test";
  std::filesystem::create_directories(dir);
  const std::string file = (dir / "agent.toml").string();
  const std::string key_file = (dir / "stamp.key").string();
  {
    std::ofstream key(key_file);
    key << "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
  }
  std::filesystem::permissions(key_file, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write,
                               std::filesystem::perm_options::replace);
  {
    std::ofstream out(file);
    out << "[[targets]]\nprotocol = \"stamp\"\nhost = \"192.0.2.1\"\n"                                  // 1-3
        << "[[targets]]\nprotocol = \"stamp\"\nhost = \"192.0.2.2\"\nport = 4000\nssid = 77\n"         // 4-8
        << "key = \"000102030405060708090a0b0c0d0e0f\"\ntimestamp_format = \"ptp\"\n"                  // 9-10
        << "stateful_reflector = true\nsize = 200\n"                                                  // 11-12
        << "[[targets]]\nprotocol = \"stamp\"\nhost = \"192.0.2.3\"\nkey_file = \"" << key_file << "\"\n"  // 13-16
        << "stateful_reflector = false\n";                                                            // 17
  }
  const agent::AgentConfig good = agent::load_config(file);
  REQUIRE_MESSAGE(good.options.has_value(), errors_text(good.errors));
  const auto& t = good.options->measurement.targets;
  REQUIRE(t.size() == 3);
  CHECK(t[0].protocol == ProbeProtocol::kStamp);
  CHECK(t[0].label == "192.0.2.1:862");
  CHECK(t[0].port == 862);
  CHECK(t[0].stamp.ssid == 0);
  CHECK(t[0].stamp.key.empty());
  CHECK(t[0].stamp.timestamp_format == agent::probes::stamp::TimestampFormat::kNtp);
  CHECK(t[0].stamp.stateful_reflector == agent::probes::StampStatefulReflector::kAuto);
  CHECK(t[1].port == 4000);
  CHECK(t[1].stamp.ssid == 77);
  REQUIRE(t[1].stamp.key.size() == 16);
  CHECK(t[1].stamp.key[15] == std::byte{0x0f});
  CHECK(t[1].stamp.timestamp_format == agent::probes::stamp::TimestampFormat::kPtp);
  CHECK(t[1].stamp.stateful_reflector == agent::probes::StampStatefulReflector::kYes);
  CHECK(t[1].payload_size == 200);
  CHECK(t[2].stamp.key.size() == 32);
  CHECK(t[2].stamp.stateful_reflector == agent::probes::StampStatefulReflector::kNo);

  {
    std::ofstream out(file);
    out << "[[targets]]\nprotocol = \"udp\"\nhost = \"192.0.2.1\"\nssid = 5\n"                         // 1-4
        << "[[targets]]\nprotocol = \"stamp\"\nhost = \"192.0.2.2\"\nkey = \"abcd\"\n"                   // 5-8
        << "[[targets]]\nprotocol = \"stamp\"\nhost = \"192.0.2.3\"\nsize = 43\n"                        // 9-12
        << "[[targets]]\nprotocol = \"stamp\"\nhost = \"192.0.2.4\"\nstateful_reflector = \"yes\"\n"     // 13-16
        << "[[targets]]\nprotocol = \"stamp\"\nhost = \"192.0.2.5\"\nssid = 0\n"                         // 17-20
        << "[[targets]]\nprotocol = \"stamp\"\nhost = \"192.0.2.6\"\nkey_file = \"" << key_file << "\"\n"  // 21-24
        << "size = 100\n"                                                                             // 25
        << "[[targets]]\nprotocol = \"stamp\"\nhost = \"192.0.2.7\"\npaths = 2\n";                       // 26-29
  }
  const agent::AgentConfig bad = agent::load_config(file);
  CHECK_FALSE(bad.options.has_value());
  const std::vector<std::string> expected = {
      file + ":4: targets[0].ssid: only a stamp target takes it",
      file + ":8: targets[1].key: expected 32..128 hex digits (16..64 bytes), got 4 characters",
      file + ":12: targets[2].size: a STAMP packet is at least 44 bytes, got 43",
      file + ":16: targets[3].stateful_reflector: expected \"auto\", true or false; stamp only, got \"yes\"",
      file + ":20: targets[4].ssid: expected an integer in 1..65535; stamp only, got 0",
      file + ":25: targets[5].size: a STAMP packet with a key is at least 112 bytes, got 100",
      file + ":29: targets[6].paths: only a udp target spreads over several paths",
  };
  CHECK(errors_text(bad.errors) == errors_text(expected));
  std::filesystem::remove_all(dir);
}

TEST_CASE("agent config: [stamp_reflector] and its keys, with file, line and key in errors") {
  const agent::AgentConfig good = agent::parse_config(
      "[stamp_reflector]\nenabled = true\nbind = \"127.0.0.1\"\nport = 8862\nstateful = false\n"
      "timestamp_format = \"ptp\"\nrate_per_s = 50\nburst = 7\nunauthenticated = false\n"
      "[[stamp_reflector.keys]]\npeers = [\"127.0.0.0/8\", \"::1/128\"]\n"
      "key = \"000102030405060708090a0b0c0d0e0f\"\n",
      "stamp.toml");
  REQUIRE_MESSAGE(good.options.has_value(), errors_text(good.errors));
  REQUIRE(good.options->measurement.stamp_reflector.has_value());
  const agent::probes::StampReflectorConfig& s = *good.options->measurement.stamp_reflector;
  CHECK(s.bind_address == "127.0.0.1");
  CHECK(s.port == 8862);
  CHECK_FALSE(s.stateful);
  CHECK(s.timestamp_format == agent::probes::stamp::TimestampFormat::kPtp);
  CHECK(s.rate_limit.rate_per_s == 50);
  CHECK(s.rate_limit.burst == 7);
  CHECK_FALSE(s.unauthenticated);
  REQUIRE(s.keys.size() == 1);
  CHECK(s.keys[0].peers.size() == 2);
  CHECK(s.keys[0].key.size() == 16);

  // Off unless enabled; on, the defaults.
  CHECK_FALSE(agent::parse_config("", "empty.toml").options->measurement.stamp_reflector.has_value());
  const agent::AgentConfig on = agent::parse_config("[stamp_reflector]\nenabled = true\n", "on.toml");
  REQUIRE(on.options->measurement.stamp_reflector.has_value());
  CHECK(on.options->measurement.stamp_reflector->port == 862);
  CHECK(on.options->measurement.stamp_reflector->bind_address == "::");
  CHECK(on.options->measurement.stamp_reflector->stateful);
  CHECK(on.options->measurement.stamp_reflector->unauthenticated);

  const agent::AgentConfig bad = agent::parse_config(
      "[stamp_reflector]\nenabled = true\ntimestamp_format = \"utc\"\n"  // 1-3
      "[[stamp_reflector.keys]]\npeers = [\"10.0.0.0/33\"]\nkey = \"abc\"\n"  // 4-6
      "[[stamp_reflector.keys]]\npeers = [\"::1\"]\n",                        // 7-8
      "bad.toml");
  REQUIRE_FALSE(bad.options.has_value());
  const std::string errors = errors_text(bad.errors);
  CAPTURE(errors);
  CHECK(errors.find("bad.toml:3: stamp_reflector.timestamp_format: expected \"ntp\" or \"ptp\"") != std::string::npos);
  CHECK(errors.find("bad.toml:5: stamp_reflector.keys[0].peers[0]: expected") != std::string::npos);
  CHECK(errors.find("bad.toml:6: stamp_reflector.keys[0].key: expected 32..128 hex digits") != std::string::npos);
  CHECK(errors.find("bad.toml:7: stamp_reflector.keys[1].key: expected exactly one of key and key_file") !=
        std::string::npos);
  CHECK(errors.find("abc") == std::string::npos);  // no key digits in errors
}

TEST_CASE("agent config: [clock] assumes a state or takes the kernel's, and sets the one-way gate") {
  const agent::AgentConfig kernel = agent::parse_config("", "empty.toml");
  REQUIRE(kernel.options.has_value());
  CHECK_FALSE(kernel.options->measurement.assume_clock.has_value());
  CHECK(kernel.options->measurement.max_error_fraction == doctest::Approx(0.1));

  const agent::AgentConfig sync = agent::parse_config(
      "[clock]\nassume = \"synchronised\"\nassume_error_us = 50\nmax_error_fraction = 0.25\n", "clock.toml");
  REQUIRE_MESSAGE(sync.options.has_value(), errors_text(sync.errors));
  REQUIRE(sync.options->measurement.assume_clock.has_value());
  const vantage::platform::ClockState& s = *sync.options->measurement.assume_clock;
  CHECK(s.synchronised);
  CHECK(s.estimated_error_ns == 50'000);
  CHECK(s.maximum_error_ns == 50'000);
  CHECK(s.source == vantage::platform::ClockSource::kConfigured);
  CHECK(sync.options->measurement.max_error_fraction == doctest::Approx(0.25));

  const agent::AgentConfig unsync = agent::parse_config("[clock]\nassume = \"unsynchronised\"\n", "u.toml");
  REQUIRE_MESSAGE(unsync.options.has_value(), errors_text(unsync.errors));
  REQUIRE(unsync.options->measurement.assume_clock.has_value());
  CHECK_FALSE(unsync.options->measurement.assume_clock->synchronised);

  const auto errors = [](const char* text) {
    const agent::AgentConfig c = agent::parse_config(text, "bad.toml");
    CHECK_FALSE(c.options.has_value());
    return errors_text(c.errors);
  };
  CHECK(errors("[clock]\nassume = \"synchronised\"\n") ==
        "bad.toml:2: clock.assume_error_us: missing; expected microseconds in [0, 16000000] (clock.assume is "
        "\"synchronised\")\n");
  CHECK(errors("[clock]\nassume_error_us = 5\n").find("bad.toml:2: clock.assume_error_us: only with clock.assume") !=
        std::string::npos);
  CHECK(errors("[clock]\nassume = \"ptp\"\n").find("bad.toml:2: clock.assume: expected") != std::string::npos);
  CHECK(errors("[clock]\nmax_error_fraction = 0\n").find("bad.toml:2: clock.max_error_fraction: expected") !=
        std::string::npos);
  CHECK(errors("[clock]\nassume = \"synchronised\"\nassume_error_us = -1\n")
            .find("bad.toml:3: clock.assume_error_us: expected") != std::string::npos);
}
