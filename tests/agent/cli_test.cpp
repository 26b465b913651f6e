// vantage-agent's command line and report rendering.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "agent/cli.hpp"
#include "agent/report_format.hpp"

namespace {

namespace agent = vantage::agent;
using agent::parse_args;
using vantage::agent::probes::ProbeProtocol;
using namespace std::chrono_literals;

vantage::platform::Result<agent::AgentOptions> parse(std::vector<std::string_view> args) {
  return parse_args(args);
}

std::string error_of(std::vector<std::string_view> args) {
  const auto p = parse(std::move(args));
  CHECK_FALSE(p.has_value());
  return p.error();
}

}  // namespace

TEST_CASE("cli: targets take the per-target options given before them") {
  const auto p =
      parse({"--once", "2.5", "--json", "--udp", "127.0.0.1", "--rate", "10", "--timeout", "250", "--dscp",
             "46", "--tcp", "[::1]:443", "--size", "200", "--icmp", "::1", "--udp", "ams1=192.0.2.7:9000"});
  REQUIRE_MESSAGE(p.has_value(), p.error());
  const agent::AgentOptions& o = *p;
  CHECK(o.once_seconds == doctest::Approx(2.5));
  CHECK(o.json);
  const auto& t = o.measurement.targets;
  REQUIRE(t.size() == 4);

  CHECK(t[0].protocol == ProbeProtocol::kUdpEcho);
  CHECK(t[0].label == "127.0.0.1:8627");  // the reflector's default port
  CHECK(t[0].rate_per_s == doctest::Approx(1.0));
  CHECK(t[0].timeout == 1s);
  CHECK(t[0].dscp == 0);

  CHECK(t[1].protocol == ProbeProtocol::kTcpConnect);
  CHECK(t[1].label == "[::1]:443");
  CHECK(t[1].address.is_v6());
  CHECK(t[1].rate_per_s == doctest::Approx(10.0));
  CHECK(t[1].timeout == 250ms);
  CHECK(t[1].dscp == 46);
  CHECK(t[1].payload_size == 0);

  CHECK(t[2].protocol == ProbeProtocol::kIcmpEcho);
  CHECK(t[2].label == "::1");
  CHECK(t[2].payload_size == 200);

  CHECK(t[3].label == "ams1");
  CHECK(t[3].address.to_string() == "192.0.2.7");
  CHECK(t[3].port == 9000);

  // A one-shot run does not bind the reflector port unless asked, and reports once.
  CHECK_FALSE(o.measurement.reflector.has_value());
  CHECK(o.measurement.report_interval > 1000h);
}

TEST_CASE("cli: the daemon runs the reflector on [::]:8627 unless told otherwise") {
  auto p = parse({});
  REQUIRE(p.has_value());
  REQUIRE(p->measurement.reflector.has_value());
  CHECK(p->measurement.reflector->bind_address == "::");
  CHECK(p->measurement.reflector->port == 8627);
  CHECK(p->measurement.report_interval == 10s);

  p = parse({"--reflector", "127.0.0.1:9999", "--reflector-rate", "5000", "--once", "1"});
  REQUIRE(p.has_value());
  REQUIRE(p->measurement.reflector.has_value());
  CHECK(p->measurement.reflector->bind_address == "127.0.0.1");
  CHECK(p->measurement.reflector->port == 9999);
  CHECK(p->measurement.reflector->rate_limit.rate_per_s == 5000);
  CHECK(p->measurement.reflector->rate_limit.burst == 1000);

  p = parse({"--no-reflector"});
  REQUIRE(p.has_value());
  CHECK_FALSE(p->measurement.reflector.has_value());

  p = parse({"--no-kernel-timestamps", "--load-interval", "0", "--interval", "5", "--host-root", "/tmp/x"});
  REQUIRE(p.has_value());
  CHECK_FALSE(p->measurement.kernel_timestamps);
  CHECK_FALSE(p->measurement.reflector->kernel_timestamps);
  CHECK(p->measurement.load_interval == 0s);
  CHECK(p->measurement.report_interval == 5s);
  CHECK(p->measurement.host_root == "/tmp/x");
}

TEST_CASE("cli: --stamp-reflector runs the STAMP reflector there, off by default") {
  auto p = parse({});
  REQUIRE(p.has_value());
  CHECK_FALSE(p->measurement.stamp_reflector.has_value());

  p = parse({"--stamp-reflector", "[::1]:862", "--no-kernel-timestamps", "--once", "1"});
  REQUIRE(p.has_value());
  REQUIRE(p->measurement.stamp_reflector.has_value());
  CHECK(p->measurement.stamp_reflector->bind_address == "::1");
  CHECK(p->measurement.stamp_reflector->port == 862);
  CHECK_FALSE(p->measurement.stamp_reflector->kernel_timestamps);
  CHECK_FALSE(p->measurement.reflector.has_value());  // --once: the echo reflector only when asked

  CHECK(error_of({"--stamp-reflector", "example.net:862"}).find("--stamp-reflector") != std::string::npos);
  CHECK(error_of({"--stamp-reflector"}).find("--stamp-reflector: expected ADDR:PORT") != std::string::npos);
}

TEST_CASE("cli: every bad argument is named in a one-line error") {
  CHECK(error_of({"--bogus"}).find("--bogus") != std::string::npos);
  CHECK(error_of({"--once"}).find("--once") != std::string::npos);
  CHECK(error_of({"--once", "0"}).find("--once") != std::string::npos);
  CHECK(error_of({"--once", "-3"}).find("--once") != std::string::npos);
  CHECK(error_of({"--once", "1x"}).find("--once") != std::string::npos);
  CHECK(error_of({"--interval", "nan"}).find("--interval") != std::string::npos);
  CHECK(error_of({"--rate", "0"}).find("--rate") != std::string::npos);
  CHECK(error_of({"--rate", "5000"}).find("--rate") != std::string::npos);
  CHECK(error_of({"--timeout", "abc"}).find("--timeout") != std::string::npos);
  CHECK(error_of({"--dscp", "64"}).find("--dscp") != std::string::npos);
  CHECK(error_of({"--tcp", "127.0.0.1"}).find("missing port") != std::string::npos);
  CHECK(error_of({"--udp", "127.0.0.1:0"}).find("bad port") != std::string::npos);
  CHECK(error_of({"--udp", "127.0.0.1:70000"}).find("bad port") != std::string::npos);
  CHECK(error_of({"--udp", "[::1"}).find("']'") != std::string::npos);
  CHECK(error_of({"--icmp", "127.0.0.1:80"}).find("no port") != std::string::npos);
  CHECK(error_of({"--udp", ":8627"}).find("missing host") != std::string::npos);
  CHECK(error_of({"--udp", "pop 2:8627"}).find("neither an IP address nor a host name") != std::string::npos);
  CHECK(error_of({"--client", "--privacy-mode", "prefix", "--udp", "player.example"}) ==
        "--udp: a --client target: takes an IP address, not a name");
  CHECK(error_of({"--reflector", "example:80"}).find("not an IP address") != std::string::npos);
  CHECK(error_of({"--udp", "=127.0.0.1"}).find("empty name") != std::string::npos);
  CHECK(error_of({"--icmp-socket", "tcp"}).find("auto, dgram or raw") != std::string::npos);
  CHECK(error_of({"--reflector-rate", "0"}).find("--reflector-rate") != std::string::npos);
  for (const std::string& e : {error_of({"--bogus"}), error_of({"--rate", "x"})}) {
    CHECK(e.find('\n') == std::string::npos);
  }
}

TEST_CASE("cli: names the collector would refuse are errors, shown escaped") {
  CHECK(error_of({"--udp", "a\nb=127.0.0.1"}) == "--udp: NAME \"a\\nb\": control character U+000A at byte 1");
  CHECK(error_of({"--udp", "\xff=127.0.0.1"}) == "--udp: NAME \"\\xFF\": invalid UTF-8 at byte 0");
  CHECK(error_of({"--tcp", "a b=127.0.0.1:80"}) == "--tcp: NAME \"a b\": contains a space");
  CHECK(error_of({"--udp", std::string(65, 'n') + "=127.0.0.1"}).ends_with(": 65 bytes, over the limit of 64"));
  const std::vector<std::string_view> shipping = {"--collector", "127.0.0.1:7443", "--ca", "ca", "--cert", "c",
                                                  "--key", "k"};
  auto with = [&](std::string_view id, std::string_view region, std::string_view pop) {
    std::vector<std::string_view> args = shipping;
    for (std::string_view a : {std::string_view("--agent-id"), id, std::string_view("--region"), region,
                               std::string_view("--pop"), pop}) {
      args.push_back(a);
    }
    return args;
  };
  CHECK(error_of(with("a1\x1b[2J", "eu", "fra1")) == "--agent-id \"a1\\x1B[2J\": control character U+001B at byte 2");
  CHECK(error_of(with("a1", "eu\xc0\xaf", "fra1")) == "--region \"eu\\xC0\\xAF\": invalid UTF-8 at byte 2");
  CHECK(error_of(with("a1", "eu", std::string(65, 'p'))).starts_with("--pop \"ppp"));
  // Hostile to a careless page but valid: accepted.
  CHECK(parse({"--udp", "\"q\"</script>\xe2\x80\x8f\xf0\x9f\x9a\x80=127.0.0.1"}).has_value());
}

TEST_CASE("report: table and JSON carry the counts and RTTs, and null for a silent target") {
  agent::MeasurementReport report;
  report.start_ns = 1'000'000'000;
  report.end_ns = 3'000'000'000;
  report.wall_start_ns = 1'790'000'000'000'000'000;
  report.wall_end_ns = report.wall_start_ns + 2'000'000'000;
  report.final = true;
  std::vector<agent::ProbeTargetSpec> targets(2);
  targets[0].label = "198.51.100.1:8627";
  targets[0].protocol = ProbeProtocol::kUdpEcho;
  targets[1].label = "a\"b";
  targets[1].protocol = ProbeProtocol::kTcpConnect;
  report.targets.resize(2);
  auto& s = report.targets[0];
  s.sent = 100;
  s.received = 97;
  s.lost = 3;
  s.lost_outbound = 2;
  s.lost_inbound = 1;
  s.p50_ns = 20'125'000;
  s.max_ns = 25'000'000;
  report.targets[1].sent = 4;
  report.targets[1].send_errors = 4;
  report.loads.resize(2);
  report.loads[1].wall_time_ns = report.wall_start_ns + 1'000'000'000;

  const std::string json = agent::format_json(report, targets);
  CHECK(json.find('\n') == std::string::npos);
  CHECK(json.find("\"target\":\"198.51.100.1:8627\"") != std::string::npos);
  CHECK(json.find("\"sent\":100,\"received\":97,\"lost\":3") != std::string::npos);
  CHECK(json.find("\"lost_outbound\":2,\"lost_inbound\":1") != std::string::npos);
  CHECK(json.find("\"p50\":20125000") != std::string::npos);
  CHECK(json.find("\"target\":\"a\\\"b\"") != std::string::npos);  // escaped
  CHECK(json.find("\"rtt_ns\":null") != std::string::npos);        // the TCP target had no reply
  CHECK(json.find("\"final\":true") != std::string::npos);

  const std::string table = agent::format_table(report, targets);
  CHECK(table.find("2.0 s from") != std::string::npos);
  CHECK(table.find("198.51.100.1:8627") != std::string::npos);
  CHECK(table.find("20.125") != std::string::npos);
  CHECK(table.find("lost out/in/unknown 2/1/0") != std::string::npos);
  CHECK(table.find("send errors 4") != std::string::npos);

  // What the agent prints goes out a piece at a time, and reads the same.
  auto written = [&](auto write) {
    char* buffer = nullptr;
    std::size_t size = 0;
    std::FILE* file = ::open_memstream(&buffer, &size);
    REQUIRE(file != nullptr);
    write(file);
    std::fclose(file);
    std::string text(buffer, size);
    std::free(buffer);
    return text;
  };
  CHECK(written([&](std::FILE* f) { agent::write_json(f, report, targets); }) == json);
  CHECK(written([&](std::FILE* f) { agent::write_table(f, report, targets); }) == table);
}

TEST_CASE("report: one-way figures when reported, else the reason, with the error bound") {
  agent::MeasurementReport report;
  report.end_ns = 1'000'000'000;
  std::vector<agent::ProbeTargetSpec> targets(3);
  targets[0].label = "reported:8627";
  targets[1].label = "unsync:862";
  targets[1].protocol = ProbeProtocol::kStamp;
  targets[2].label = "tcp:80";
  targets[2].protocol = ProbeProtocol::kTcpConnect;
  report.targets.resize(3);
  for (auto& s : report.targets) {
    s.sent = 10;
    s.received = 10;
  }
  auto& w = report.targets[0].one_way;
  w.status = agent::aggregate::OneWayStatus::kReported;
  w.samples = 10;
  w.error_bound_ns = 100'000;
  w.forward_p50_ns = 30'250'000;
  w.backward_p50_ns = 5'125'000;
  auto& u = report.targets[1].one_way;
  u.status = agent::aggregate::OneWayStatus::kUnsynchronised;
  u.samples = 10;
  u.error_bound_ns = 2'000'000;

  const std::string json = agent::format_json(report, targets);
  CHECK(json.find("\"one_way\":{\"status\":\"reported\",\"samples\":10,\"error_bound_ns\":100000") !=
        std::string::npos);
  CHECK(json.find("\"forward_ns\":{\"min\":0,\"p50\":30250000") != std::string::npos);
  CHECK(json.find("\"backward_ns\":{\"min\":0,\"p50\":5125000") != std::string::npos);
  CHECK(json.find("\"status\":\"unsynchronised\",\"samples\":10,\"error_bound_ns\":2000000") != std::string::npos);
  CHECK(json.find("\"forward_ns\"") == json.rfind("\"forward_ns\""));  // only the reported target has figures
  CHECK(std::string_view(json).substr(json.find("tcp:80")).find("one_way") == std::string_view::npos);

  const std::string table = agent::format_table(report, targets);
  CHECK(table.find("one-way p50 fwd/back 30.250/5.125 (error bound 0.100)") != std::string::npos);
  CHECK(table.find("one-way unsynchronised (error bound 2.000)") != std::string::npos);
}

TEST_CASE("cli: a host name whose label the collector would refuse is an error, unless the target has a name") {
  // The label of a target without NAME= is HOST (icmp) or HOST:PORT: over the collector's 128
  // bytes it would get every batch refused.
  const std::string host = std::string(60, 'a') + "." + std::string(60, 'b') + ".net";
  REQUIRE(host.size() == 125);
  const std::string udp = host + ":8627";
  const std::string tcp = host + ":443";
  const std::string shown = "\"" + std::string(40, 'a') + "...\"";
  CHECK(error_of({"--udp", host}) ==
        "--udp: label " + shown + ": 130 bytes, over the limit of 128; give it a shorter NAME=");
  CHECK(error_of({"--tcp", tcp}) ==
        "--tcp: label " + shown + ": 129 bytes, over the limit of 128; give it a shorter NAME=");
  const std::string long_icmp = std::string(200, 'c') + ".net";
  CHECK(error_of({"--icmp", long_icmp}).ends_with(": 204 bytes, over the limit of 128; give it a shorter NAME="));
  // The same host labelled by a name, or an icmp label of 125 bytes: accepted.
  const std::string named = "pop9=" + udp;
  const auto p = parse({"--udp", named, "--icmp", host});
  REQUIRE_MESSAGE(p.has_value(), p.error());
  REQUIRE(p->measurement.targets.size() == 2);
  CHECK(p->measurement.targets[0].label == "pop9");
  CHECK(p->measurement.targets[0].host == host);
  CHECK(p->measurement.targets[1].label == host);
}

TEST_CASE("cli: --paths applies to the UDP targets that follow, TCP and ICMP probe one path") {
  const auto p = parse({"--once", "1", "--udp", "127.0.0.1", "--paths", "16", "--udp", "127.0.0.2", "--tcp",
                        "127.0.0.3:443", "--icmp", "127.0.0.4"});
  REQUIRE(p);
  const auto& t = p->measurement.targets;
  REQUIRE(t.size() == 4);
  CHECK(t[0].paths == 1);
  CHECK(t[1].paths == 16);
  CHECK(t[2].paths == 1);
  CHECK(t[3].paths == 1);
  CHECK(error_of({"--paths", "0"}).find("--paths") != std::string::npos);
  CHECK(error_of({"--paths", "65"}).find("--paths") != std::string::npos);
}

TEST_CASE("cli: --announce and --no-mesh shape the Hello the agent sends") {
  const std::vector<std::string_view> shipping = {"--collector", "127.0.0.1:7443", "--agent-id", "a",
                                                  "--region",    "r",              "--pop",      "p",
                                                  "--ca",        "ca",             "--cert",     "c",
                                                  "--key",       "k"};
  auto with = [&](std::vector<std::string_view> more) {
    more.insert(more.end(), shipping.begin(), shipping.end());
    return parse(std::move(more));
  };
  const auto plain = with({});
  REQUIRE(plain.has_value());
  CHECK((plain.value().shipping->capabilities & agent::ship::kCapabilityTargetList) != 0);
  CHECK(plain.value().shipping->reflectors.empty());  // [::]:8627 is a wildcard

  const auto announced = with({"--announce", "192.0.2.1:8627", "--announce", "[2001:db8::1]:9000"});
  REQUIRE(announced.has_value());
  const auto& reflectors = announced.value().shipping->reflectors;
  REQUIRE(reflectors.size() == 2);
  CHECK(reflectors[0].address().to_string() == "192.0.2.1");
  CHECK(reflectors[1].address().to_string() == "2001:db8::1");
  CHECK(reflectors[1].port() == 9000);

  const auto bound = with({"--reflector", "127.0.0.5:8700"});
  REQUIRE(bound.has_value());
  REQUIRE(bound.value().shipping->reflectors.size() == 1);
  CHECK(bound.value().shipping->reflectors[0].port() == 8700);

  const auto off = with({"--no-mesh"});
  REQUIRE(off.has_value());
  CHECK((off.value().shipping->capabilities & agent::ship::kCapabilityTargetList) == 0);

  CHECK(error_of({"--announce", "host.example:8627"}).find("--announce") != std::string::npos);
  CHECK(error_of({"--announce", "192.0.2.1"}).find("--announce") != std::string::npos);
  CHECK(error_of({"--announce"}).find("--announce") != std::string::npos);
}

TEST_CASE("cli: --stamp targets take port 862 by default and the key of the --stamp-key before them") {
  char dir_template[] = "/tmp/vantage-stamp-key-XXXXXX";
  REQUIRE(mkdtemp(dir_template) != nullptr);
  const std::string key_file = std::string(dir_template) + "/key";
  FILE* f = std::fopen(key_file.c_str(), "w");
  REQUIRE(f != nullptr);
  std::fputs("00112233445566778899aabbccddeeff\n", f);
  std::fclose(f);
  REQUIRE(chmod(key_file.c_str(), 0600) == 0);

  const auto p = parse({"--stamp", "127.0.0.1", "--stamp-key", key_file, "--stamp", "rtr=[::1]:4000", "--size",
                        "200", "--stamp-key", "none", "--stamp", "192.0.2.9"});
  REQUIRE_MESSAGE(p.has_value(), p.error());
  const auto& t = p->measurement.targets;
  REQUIRE(t.size() == 3);
  CHECK(t[0].protocol == ProbeProtocol::kStamp);
  CHECK(t[0].label == "127.0.0.1:862");
  CHECK(t[0].port == 862);
  CHECK(t[0].stamp.key.empty());
  CHECK(t[1].label == "rtr");
  CHECK(t[1].port == 4000);
  REQUIRE(t[1].stamp.key.size() == 16);
  CHECK(t[1].stamp.key[15] == std::byte{0xff});
  CHECK(t[1].paths == 1);
  CHECK(t[2].stamp.key.empty());
  CHECK(t[2].payload_size == 200);

  CHECK(error_of({"--size", "43", "--stamp", "127.0.0.1"}).find("44-byte") != std::string::npos);
  CHECK(error_of({"--stamp-key", key_file, "--size", "100", "--stamp", "127.0.0.1"}).find("112-byte") !=
        std::string::npos);
  REQUIRE(chmod(key_file.c_str(), 0644) == 0);
  CHECK(error_of({"--stamp-key", key_file}).find("chmod 600") != std::string::npos);
  f = std::fopen(key_file.c_str(), "w");
  std::fputs("0011\n", f);
  std::fclose(f);
  REQUIRE(chmod(key_file.c_str(), 0600) == 0);
  CHECK(error_of({"--stamp-key", key_file}).find("hex digits") != std::string::npos);
  std::remove(key_file.c_str());
  std::remove(dir_template);
  CHECK(agent::protocol_name(ProbeProtocol::kStamp) == std::string_view("stamp"));
}
