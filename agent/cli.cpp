#include "agent/cli.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <asio/ip/address.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <system_error>
#include <tuple>

#include "agent/probes/stamp_packet.hpp"
#include "platform/config_schema.hpp"
#include "platform/log.hpp"
#include "platform/utf8_text.hpp"
#include "schemas/peer_text.hpp"

namespace vantage::agent {

namespace {

using probes::ProbeProtocol;

// A target's NAME, as targets[].name in the config file allows it (agent/config.cpp).
constexpr std::size_t kMaxNameBytes = 64;

template <typename T>
bool parse_number(std::string_view text, T& out) {
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, out);
  return ec == std::errc() && ptr == end && !text.empty();
}

bool parse_seconds(std::string_view text, double& out, bool allow_zero) {
  // from_chars for double: locale-independent, and rejects "1e", "nan" trailing junk.
  double v = 0;
  if (!parse_number(text, v) || !std::isfinite(v) || v < 0 || (!allow_zero && v == 0) || v > 1e7) {
    return false;
  }
  out = v;
  return true;
}

// "host:port", "[v6]:port", or with port optional: "host", "[v6]", "v6".
bool split_host_port(std::string_view text, bool port_required, std::string& host,
                     std::optional<std::uint16_t>& port, std::string& error) {
  std::string_view rest;
  if (!text.empty() && text.front() == '[') {
    const std::size_t close = text.find(']');
    if (close == std::string_view::npos) {
      error = "missing ']' in '" + std::string(text) + "'";
      return false;
    }
    host = std::string(text.substr(1, close - 1));
    rest = text.substr(close + 1);
    if (!rest.empty() && rest.front() != ':') {
      error = "expected ':PORT' after ']' in '" + std::string(text) + "'";
      return false;
    }
  } else {
    const std::size_t colon = text.rfind(':');
    // More than one colon without brackets is a bare IPv6 address.
    if (colon != std::string_view::npos && text.find(':') == colon) {
      host = std::string(text.substr(0, colon));
      rest = text.substr(colon);
    } else {
      host = std::string(text);
    }
  }
  if (!rest.empty()) {
    std::uint16_t p = 0;
    if (!parse_number(rest.substr(1), p) || p == 0) {
      error = "bad port in '" + std::string(text) + "' (expected 1..65535)";
      return false;
    }
    port = p;
  }
  if (host.empty()) {
    error = "missing host in '" + std::string(text) + "'";
    return false;
  }
  if (port_required && !port) {
    error = "missing port in '" + std::string(text) + "' (expected HOST:PORT)";
    return false;
  }
  return true;
}

}  // namespace

const char* usage_text() noexcept {
  return "usage: vantage-agent [options] [targets]\n"
         "       vantage-agent --config FILE [--check-config]\n"
         "       vantage-agent --version | --config-reference\n"
         "  --config FILE         the daemon's settings from a TOML file (nothing else on the line)\n"
         "  --check-config        with --config: check the file, print what is wrong, exit\n"
         "  --config-reference    print every config key with its type, default and meaning\n"
         "  --version             print version, architecture and TLS library, then exit\n"
         "  --once SECONDS        measure for SECONDS, print one report, exit\n"
         "  --json                reports as JSON, one object per line\n"
         "  --interval SECONDS    report every SECONDS (default 10; with --once only at the end)\n"
         "targets (repeatable; the per-target options apply to the targets that follow them):\n"
         "  --udp [NAME=]HOST[:PORT]  UDP echo against a Vantage reflector (default port 8627)\n"
         "  --tcp [NAME=]HOST:PORT    TCP connect time\n"
         "  --icmp [NAME=]HOST        ICMP echo (ping socket or CAP_NET_RAW)\n"
         "  --stamp [NAME=]HOST[:PORT]  STAMP (RFC 8762) against any STAMP or TWAMP-Light reflector\n"
         "                        (default port 862)\n"
         "                        NAME labels the target in reports (default: the address)\n"
         "  --rate N              probes per second (default 1)\n"
         "  --timeout MS          a reply later than this is lost (default 1000)\n"
         "  --size BYTES          UDP/ICMP/STAMP payload bytes (default 104 UDP: 64 + the clock\n"
         "                        extension for one-way delay; 56 ICMP; 44 STAMP or 112 with\n"
         "                        --stamp-key)\n"
         "  --stamp-key FILE      the STAMP targets that follow are authenticated with the HMAC key in\n"
         "                        FILE (hex, 16..64 bytes, mode 0600); --stamp-key none ends that\n"
         "  --dscp N              DSCP 0..63 (default 0)\n"
         "  --paths K             ECMP paths 1..64 of the UDP targets that follow: source ports they\n"
         "                        rotate over, loss and RTT reported per path (default 1)\n"
         "  --client              the targets that follow are clients' (players') addresses: reports,\n"
         "                        batches and logs show only their pseudonym (--no-client ends that)\n"
         "client pseudonyms (see the README's Privacy section):\n"
         "  --privacy-key FILE    the fleet's secret (at least 32 bytes, e.g. 64 hex digits; mode 0600),\n"
         "                        or credential:NAME ($CREDENTIALS_DIRECTORY/NAME; default privacy-key)\n"
         "  --privacy-mode hmac|prefix  keyed HMAC-SHA256 digest (default) or the /24 (/48) prefix\n"
         "  --privacy-rotation SECONDS  the HMAC key changes every SECONDS (default 86400)\n"
         "shipping (all of these, with at least one --collector, turn it on):\n"
         "  --collector HOST:PORT a collector of this agent's region; repeat for failover\n"
         "  --agent-id ID --region NAME --pop NAME   this agent's identity (ID = its certificate's CN)\n"
         "  --ca FILE --cert FILE --key FILE         the CA to trust, this agent's certificate and key\n"
         "  --spool DIR           disk spool (default /var/lib/vantage-agent/spool)\n"
         "  --spool-max-kb N      spool bound in KiB (default 65536); the oldest batches go first\n"
         "  --fsync every|MS      fsync each batch, or every MS milliseconds (default 1000)\n"
         "  --drain SECONDS       on stop, wait this long for acks (default 5)\n"
         "  --reconnect-max SECONDS  longest reconnect backoff (default 30; full jitter below it)\n"
         "  --no-mesh             refuse the collector's target lists (the mesh); default: take them\n"
         "other:\n"
         "  --reflector ADDR:PORT answer peers' probes there (default [::]:8627; off with --once)\n"
         "  --no-reflector        answer nobody's probes\n"
         "  --stamp-reflector ADDR:PORT  answer STAMP and TWAMP-Light senders there (e.g. [::]:862)\n"
         "  --reflector-rate N    probes per second answered per source address (default 100)\n"
         "  --announce ADDR:PORT  where peers reach this reflector, told to the collector for the mesh\n"
         "                        (repeatable, IPv4 and IPv6; default: --reflector's address unless a wildcard)\n"
         "  --load-interval SECONDS  host load sampling period (default 1; 0 turns it off)\n"
         "  --probe-slot MS          send probes on a grid of this period (default 20)\n"
         "  --host-root PATH      read /proc and /sys under PATH instead of /\n"
         "  --icmp-socket auto|dgram|raw  ICMP socket kind (default auto)\n"
         "  --no-kernel-timestamps  take receive times in user space\n";
}

probes::TokenBucketConfig reflector_rate_limit(std::uint32_t rate_per_s) {
  return {.rate_per_s = rate_per_s,
          .burst = std::max<std::uint32_t>(probes::TokenBucketConfig{}.burst, rate_per_s / 5)};
}

void set_spool_bound(ship::SpoolConfig& spool, std::uint64_t kib) {
  spool.max_bytes = kib << 10;
  spool.max_record_bytes =
      static_cast<std::uint32_t>(std::min<std::uint64_t>(spool.max_record_bytes, spool.max_bytes / 2));
  spool.segment_bytes =
      std::min<std::uint64_t>(spool.segment_bytes, std::max<std::uint64_t>(spool.max_bytes / 8, 4 << 10));
}

std::uint64_t capabilities_for(const MeasurementConfig& measurement, bool accept_target_lists) {
  std::uint64_t capabilities = ship::kCapabilityHostLoad;
  if (accept_target_lists) capabilities |= ship::kCapabilityTargetList;
  for (const ProbeTargetSpec& t : measurement.targets) {
    // STAMP has no capability bit of its own (yet).
    capabilities |= t.protocol == ProbeProtocol::kUdpEcho      ? ship::kCapabilityUdpEcho
                    : t.protocol == ProbeProtocol::kTcpConnect ? ship::kCapabilityTcpConnect
                    : t.protocol == ProbeProtocol::kIcmpEcho   ? ship::kCapabilityIcmp
                                                               : 0;
  }
  if (measurement.reflector) capabilities |= ship::kCapabilityReflector;
  return capabilities;
}

std::vector<asio::ip::udp::endpoint> announced_reflectors(const MeasurementConfig& measurement,
                                                          std::vector<asio::ip::udp::endpoint> given) {
  if (!measurement.reflector) return {};
  if (!given.empty()) return given;
  std::error_code ec;
  const asio::ip::address bound = asio::ip::make_address(measurement.reflector->bind_address, ec);
  // A wildcard says nothing about where peers reach this host: announced only when given.
  if (ec || bound.is_unspecified() || measurement.reflector->port == 0) return {};
  return {asio::ip::udp::endpoint(bound, measurement.reflector->port)};
}

std::optional<asio::ip::udp::endpoint> parse_announce(std::string_view text) {
  std::string host;
  std::optional<std::uint16_t> port;
  std::string error;
  if (!split_host_port(text, true, host, port, error)) return std::nullopt;
  std::error_code ec;
  const asio::ip::address address = asio::ip::make_address(host, ec);
  if (ec || address.is_unspecified() || address.is_multicast()) return std::nullopt;
  return asio::ip::udp::endpoint(address, *port);
}

std::string set_client_labels(MeasurementConfig& measurement, privacy::PrivacyConfig privacy,
                              const std::string& key_file) {
  const bool any_client = std::any_of(measurement.targets.begin(), measurement.targets.end(),
                                      [](const ProbeTargetSpec& t) { return t.client; });
  const char* credentials = std::getenv("CREDENTIALS_DIRECTORY");
  std::optional<privacy::SecretSource> source;
  if (!key_file.empty()) {
    // A key given is checked whether or not a target needs it yet, as the config file does.
    auto s = privacy::secret_source(key_file, credentials);
    if (!s) {
      return "--privacy-key: " + s.error();
    }
    source = std::move(s).value();
  } else if (any_client && privacy.mode == privacy::PseudonymMode::kHmac) {
    source = privacy::default_secret_source(credentials);
  }
  if (source) {
    auto secret = privacy::read_secret(*source);
    if (!secret) {
      return "--privacy-key: " + secret.error();
    }
    privacy.secret = std::move(secret).value();
  }
  if (!any_client) {
    return {};
  }
  if (privacy.mode == privacy::PseudonymMode::kHmac && !privacy.secret) {
    return "--client targets need --privacy-key FILE (or --privacy-mode prefix)";
  }
  for (ProbeTargetSpec& t : measurement.targets) {
    if (t.client) t.label = client_label_now(privacy, t);
  }
  measurement.privacy = std::move(privacy);
  return {};
}

platform::Result<AgentOptions> parse_args(const std::vector<std::string_view>& args) {
  AgentOptions o;
  double rate = 1.0;
  double timeout_ms = 1000.0;
  std::size_t size = 0;
  std::uint8_t dscp = 0;
  std::uint32_t paths = 1;
  bool client = false;
  std::vector<std::byte> stamp_key;
  privacy::PrivacyConfig privacy;
  std::string privacy_key;
  std::optional<probes::ReflectorConfig> reflector = probes::ReflectorConfig{};
  bool reflector_explicit = false;
  std::optional<std::uint32_t> reflector_rate;
  ship::ShipperConfig ship;
  ship.spool.dir = "/var/lib/vantage-agent/spool";
  std::vector<asio::ip::udp::endpoint> announce;
  bool accept_target_lists = true;

  auto fail = [](std::string message) { return platform::Result<AgentOptions>::error(std::move(message)); };

  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string_view arg = args[i];
    auto value = [&](std::string_view& out) {
      if (i + 1 >= args.size()) {
        return false;
      }
      out = args[++i];
      return true;
    };
    std::string_view v;
    std::string error;

    if (arg == "--version") {
      o.show_version = true;
    } else if (arg == "--help" || arg == "-h") {
      o.show_help = true;
    } else if (arg == "--json") {
      o.json = true;
    } else if (arg == "--client" || arg == "--no-client") {
      client = arg == "--client";
    } else if (arg == "--privacy-key") {
      if (!value(v) || v.empty()) {
        return fail("--privacy-key: expected a file");
      }
      privacy_key = std::string(v);
    } else if (arg == "--privacy-mode") {
      if (!value(v) || (v != "hmac" && v != "prefix")) {
        return fail("--privacy-mode: expected hmac or prefix");
      }
      privacy.mode = v == "hmac" ? privacy::PseudonymMode::kHmac : privacy::PseudonymMode::kPrefix;
    } else if (arg == "--privacy-rotation") {
      std::int64_t seconds = 0;
      if (!value(v) || !parse_number(v, seconds) || seconds < 1 || seconds > 31'622'400) {
        return fail("--privacy-rotation: expected whole seconds in 1..31622400");
      }
      privacy.rotation = std::chrono::seconds(seconds);
    } else if (arg == "--no-reflector") {
      reflector.reset();
      reflector_explicit = true;
    } else if (arg == "--no-kernel-timestamps") {
      o.measurement.kernel_timestamps = false;
      if (reflector) reflector->kernel_timestamps = false;
    } else if (arg == "--once" || arg == "--interval" || arg == "--load-interval") {
      double seconds = 0;
      if (!value(v) || !parse_seconds(v, seconds, arg == "--load-interval")) {
        return fail(std::string(arg) + ": expected a number of seconds" +
                    (arg == "--load-interval" ? " (0 turns sampling off)" : " > 0"));
      }
      const auto ns = std::chrono::nanoseconds(std::llround(seconds * 1e9));
      if (arg == "--once") {
        o.once_seconds = seconds;
      } else if (arg == "--interval") {
        o.measurement.report_interval = ns;
        o.explicit_interval = true;
      } else {
        o.measurement.load_interval = ns;
      }
    } else if (arg == "--probe-slot") {
      double ms = 0;
      if (!value(v) || !parse_number(v, ms) || !(ms > 0.0) || ms > 100.0) {
        return fail("--probe-slot: expected milliseconds in (0, 100]");
      }
      o.measurement.probe_slot = std::chrono::nanoseconds(std::llround(ms * 1e6));
    } else if (arg == "--rate") {
      if (!value(v) || !parse_number(v, rate) || !(rate > 0.0) || rate > 1000.0) {
        return fail("--rate: expected probes per second in (0, 1000]");
      }
    } else if (arg == "--timeout") {
      if (!value(v) || !parse_number(v, timeout_ms) || !(timeout_ms > 0.0) || timeout_ms > 60000.0) {
        return fail("--timeout: expected milliseconds in (0, 60000]");
      }
    } else if (arg == "--size") {
      if (!value(v) || !parse_number(v, size) || size == 0) {
        return fail("--size: expected a payload size in bytes");
      }
    } else if (arg == "--dscp") {
      unsigned d = 0;
      if (!value(v) || !parse_number(v, d) || d > 63) {
        return fail("--dscp: expected 0..63");
      }
      dscp = static_cast<std::uint8_t>(d);
    } else if (arg == "--paths") {
      unsigned k = 0;
      if (!value(v) || !parse_number(v, k) || k < 1 || k > ProbeTargetSpec::kMaxPaths) {
        return fail("--paths: expected 1..64");
      }
      paths = k;
    } else if (arg == "--stamp-key") {
      if (!value(v) || v.empty()) {
        return fail("--stamp-key: expected a file (or none)");
      }
      if (v == "none") {
        stamp_key.clear();
      } else {
        auto key = read_stamp_key_file(std::string(v));
        if (!key) return fail("--stamp-key: " + key.error());
        stamp_key = std::move(key).value();
      }
    } else if (arg == "--host-root") {
      if (!value(v) || v.empty()) {
        return fail("--host-root: expected a directory");
      }
      o.measurement.host_root = std::string(v);
    } else if (arg == "--icmp-socket") {
      if (!value(v)) {
        return fail("--icmp-socket: expected auto, dgram or raw");
      }
      if (v == "auto") {
        o.measurement.icmp_mode = probes::IcmpSocketMode::kAuto;
      } else if (v == "dgram") {
        o.measurement.icmp_mode = probes::IcmpSocketMode::kDgram;
      } else if (v == "raw") {
        o.measurement.icmp_mode = probes::IcmpSocketMode::kRaw;
      } else {
        return fail("--icmp-socket: expected auto, dgram or raw, not '" + std::string(v) + "'");
      }
    } else if (arg == "--reflector" || arg == "--stamp-reflector") {
      const std::string flag(arg);
      std::string host;
      std::optional<std::uint16_t> port;
      if (!value(v)) {
        return fail(flag + ": expected ADDR:PORT");
      }
      if (!split_host_port(v, true, host, port, error)) {
        return fail(flag + ": " + error);
      }
      std::error_code ec;
      (void)asio::ip::make_address(host, ec);
      if (ec) {
        return fail(flag + ": '" + host + "' is not an IP address");
      }
      if (flag == "--stamp-reflector") {
        o.measurement.stamp_reflector = probes::StampReflectorConfig{};
        o.measurement.stamp_reflector->bind_address = host;
        o.measurement.stamp_reflector->port = *port;
        continue;
      }
      const bool kernel = !reflector || reflector->kernel_timestamps;
      reflector = probes::ReflectorConfig{};
      reflector->bind_address = host;
      reflector->port = *port;
      reflector->kernel_timestamps = kernel && o.measurement.kernel_timestamps;
      reflector_explicit = true;
    } else if (arg == "--announce") {
      if (!value(v)) {
        return fail("--announce: expected ADDR:PORT");
      }
      const auto endpoint = parse_announce(v);
      if (!endpoint) {
        return fail("--announce: expected ADDR:PORT with an IP address (IPv6 in brackets), not '" + std::string(v) +
                    "'");
      }
      announce.push_back(*endpoint);
    } else if (arg == "--no-mesh") {
      accept_target_lists = false;
    } else if (arg == "--reflector-rate") {
      std::uint32_t r = 0;
      if (!value(v) || !parse_number(v, r) || r == 0 || r > 1'000'000) {
        return fail("--reflector-rate: expected probes per second in 1..1000000");
      }
      reflector_rate = r;
    } else if (arg == "--collector") {
      std::string host;
      std::optional<std::uint16_t> port;
      if (!value(v) || !split_host_port(v, true, host, port, error)) {
        return fail("--collector: " + (error.empty() ? std::string("expected HOST:PORT") : error));
      }
      ship.collectors.push_back(ship::CollectorAddress{.host = host, .port = *port, .server_name = {}});
    } else if (arg == "--agent-id" || arg == "--region" || arg == "--pop" || arg == "--ca" ||
               arg == "--cert" || arg == "--key" || arg == "--spool") {
      if (!value(v) || v.empty()) {
        return fail(std::string(arg) + ": expected a value");
      }
      const std::string text(v);
      if (arg == "--agent-id") ship.identity.agent_id = text;
      if (arg == "--region") ship.identity.region = text;
      if (arg == "--pop") ship.identity.pop = text;
      if (arg == "--ca") ship.tls.ca_file = text;
      if (arg == "--cert") ship.tls.cert_file = text;
      if (arg == "--key") ship.tls.key_file = text;
      if (arg == "--spool") ship.spool.dir = text;
    } else if (arg == "--spool-max-kb") {
      std::uint64_t kb = 0;
      if (!value(v) || !parse_number(v, kb) || kb < 16 || kb > (std::uint64_t{1} << 30)) {
        return fail("--spool-max-kb: expected KiB, at least 16");
      }
      set_spool_bound(ship.spool, kb);
    } else if (arg == "--fsync") {
      std::uint32_t ms = 0;
      if (!value(v)) {
        return fail("--fsync: expected 'every' or milliseconds");
      }
      if (v == "every") {
        ship.spool.fsync = ship::SpoolConfig::Fsync::kEveryRecord;
      } else if (parse_number(v, ms) && ms > 0) {
        ship.spool.fsync = ship::SpoolConfig::Fsync::kInterval;
        ship.spool.fsync_interval = std::chrono::milliseconds(ms);
      } else {
        return fail("--fsync: expected 'every' or milliseconds > 0");
      }
    } else if (arg == "--reconnect-max") {
      double seconds = 0;
      if (!value(v) || !parse_seconds(v, seconds, false)) {
        return fail("--reconnect-max: expected seconds > 0");
      }
      ship.backoff_max = std::chrono::milliseconds(std::max<long long>(1, std::llround(seconds * 1e3)));
      ship.backoff_initial = std::min(ship.backoff_initial, ship.backoff_max);
    } else if (arg == "--drain") {
      double seconds = 0;
      if (!value(v) || !parse_seconds(v, seconds, true)) {
        return fail("--drain: expected seconds");
      }
      o.drain = std::chrono::milliseconds(std::llround(seconds * 1e3));
    } else if (arg == "--udp" || arg == "--tcp" || arg == "--icmp" || arg == "--stamp") {
      const ProbeProtocol protocol = arg == "--udp"    ? ProbeProtocol::kUdpEcho
                                     : arg == "--tcp"  ? ProbeProtocol::kTcpConnect
                                     : arg == "--icmp" ? ProbeProtocol::kIcmpEcho
                                                       : ProbeProtocol::kStamp;
      if (!value(v)) {
        return fail(std::string(arg) + ": expected a target");
      }
      // A client's address is personal data: errors about it say what is wrong, not what it was.
      auto fail_target = [&](std::string message, std::string_view client_message) {
        return fail(std::string(arg) + ": " +
                    (client ? "a --client target: " + std::string(client_message) : std::move(message)));
      };
      // NAME=HOST:PORT labels the target (a PoP name reads better than an address).
      std::string name;
      if (const std::size_t eq = v.find('='); eq != std::string_view::npos) {
        name = std::string(v.substr(0, eq));
        v = v.substr(eq + 1);
        if (name.empty()) {
          return fail(std::string(arg) + ": empty name before '='");
        }
        // The config file's rule for names (and the collector's for targets): it would refuse a
        // batch carrying one that breaks it.
        if (const auto verdict = platform::check_text(name, kMaxNameBytes); !verdict || name.find(' ') != std::string::npos) {
          return fail(std::string(arg) + ": NAME \"" + platform::escape_for_log(name, 40) + "\": " +
                      (verdict ? std::string("contains a space") : platform::describe(verdict, kMaxNameBytes)));
        }
        if (client) {
          return fail(std::string(arg) + ": a --client target is labelled by its pseudonym, not NAME=");
        }
      }
      std::string host;
      std::optional<std::uint16_t> port;
      if (!split_host_port(v, protocol == ProbeProtocol::kTcpConnect, host, port, error)) {
        return fail_target(error, "expected HOST:PORT (a port in 1..65535; IPv6 in brackets)");
      }
      if (protocol == ProbeProtocol::kIcmpEcho && port) {
        return fail_target("ICMP has no port ('" + std::string(v) + "')", "ICMP has no port");
      }
      // A name is resolved in the background once measuring starts (see ProbeTargetSpec::host).
      std::error_code literal_error;
      const asio::ip::address literal = asio::ip::make_address(host, literal_error);
      if (literal_error && client) {
        return fail_target("", "takes an IP address, not a name");
      }
      if (literal_error && !platform::config::host(platform::config::Value{host, std::string(arg), 0})) {
        return fail_target("'" + host + "' is neither an IP address nor a host name", "");
      }
      ProbeTargetSpec t;
      t.protocol = protocol;
      if (literal_error) {
        t.host = host;
      } else {
        t.address = literal;
      }
      t.port = protocol == ProbeProtocol::kUdpEcho ? port.value_or(probes::kDefaultReflectorPort)
               : protocol == ProbeProtocol::kStamp ? port.value_or(probes::stamp::kDefaultPort)
                                                   : port.value_or(0);
      t.label = !name.empty()     ? name
                : t.host.empty() ? target_label(protocol, t.address, t.port)
                                 : target_label(protocol, t.host, t.port);
      // The label travels in every batch: one the collector refuses (a long host name with its
      // port) would get every batch refused, and the agent retries a refused batch first.
      if (!client) {
        if (const auto fault = wire::check_peer_text("label", t.label, wire::PeerText::kTarget)) {
          return fail(std::string(arg) + ": " + fault->reason + "; give it a shorter NAME=");
        }
      }
      t.rate_per_s = rate;
      t.timeout = std::chrono::nanoseconds(std::llround(timeout_ms * 1e6));
      t.payload_size = size;
      t.dscp = dscp;
      t.paths = protocol == ProbeProtocol::kUdpEcho ? paths : 1;  // TCP, ICMP and STAMP probe one path
      t.client = client;
      if (protocol == ProbeProtocol::kStamp) {
        t.stamp.key = stamp_key;
        if (size != 0 && size < probes::stamp::base_size(t.stamp.mode())) {
          return fail(std::string(arg) + ": --size " + std::to_string(size) + " is below STAMP's " +
                      std::to_string(probes::stamp::base_size(t.stamp.mode())) + "-byte packet");
        }
      }
      o.measurement.targets.push_back(std::move(t));
    } else {
      return fail("unknown argument '" + std::string(arg) + "'");
    }
  }

  // A one-shot run is a client: it binds the reflector port only when asked to.
  if (o.once_seconds && !reflector_explicit) {
    reflector.reset();
  }
  if (reflector && reflector_rate) {
    reflector->rate_limit = reflector_rate_limit(*reflector_rate);
  }
  o.measurement.reflector = reflector;
  if (o.measurement.stamp_reflector) {
    o.measurement.stamp_reflector->kernel_timestamps = o.measurement.kernel_timestamps;
  }
  if (const std::string error = set_client_labels(o.measurement, std::move(privacy), privacy_key);
      !error.empty()) {
    return fail(error);
  }
  if (!ship.collectors.empty()) {
    for (const auto& [name, value, kind] :
         {std::tuple{"--agent-id", &ship.identity.agent_id, wire::PeerText::kAgentId},
          std::tuple{"--region", &ship.identity.region, wire::PeerText::kRegion},
          std::tuple{"--pop", &ship.identity.pop, wire::PeerText::kPop}}) {
      if (const auto fault = wire::check_peer_text(name, *value, kind)) return fail(fault->reason);
    }
    for (const auto& [name, value] :
         {std::pair{"--agent-id", &ship.identity.agent_id}, std::pair{"--region", &ship.identity.region},
          std::pair{"--pop", &ship.identity.pop}, std::pair{"--ca", &ship.tls.ca_file},
          std::pair{"--cert", &ship.tls.cert_file}, std::pair{"--key", &ship.tls.key_file}}) {
      if (value->empty()) {
        return fail(std::string("shipping to a collector needs ") + name);
      }
    }
    ship.capabilities = capabilities_for(o.measurement, accept_target_lists);
    ship.reflectors = announced_reflectors(o.measurement, std::move(announce));
    o.shipping = std::move(ship);
  }
  if (o.once_seconds && !o.explicit_interval) {
    // One report at the end; finish() closes it.
    o.measurement.report_interval = std::chrono::hours(24 * 365);
  }
  return o;
}

platform::Result<std::vector<std::byte>> stamp_key_from_hex(std::string_view hex) {
  using R = platform::Result<std::vector<std::byte>>;
  const auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  // A literal: GCC 12's -O3 misreads a chain of "..." + std::string as an overlapping copy
  // (-Wrestrict, the cross builds).
  static_assert(probes::stamp::kMinKeySize == 16 && probes::stamp::kMaxKeySize == 64);
  const std::string expected = "expected 32..128 hex digits (16..64 bytes)";
  if (hex.size() % 2 != 0 || hex.size() < 2 * probes::stamp::kMinKeySize ||
      hex.size() > 2 * probes::stamp::kMaxKeySize) {
    return R::error(expected + ", got " + std::to_string(hex.size()) + " characters");
  }
  std::vector<std::byte> key(hex.size() / 2);
  for (std::size_t i = 0; i < key.size(); ++i) {
    const int hi = digit(hex[2 * i]);
    const int lo = digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return R::error(expected + ", got a character that is not one");
    key[i] = std::byte(static_cast<std::uint8_t>(hi << 4 | lo));
  }
  return key;
}

platform::Result<std::vector<std::byte>> read_stamp_key_file(const std::string& file) {
  using R = platform::Result<std::vector<std::byte>>;
  constexpr std::size_t kMaxBytes = 4096;
  // O_NONBLOCK: opening a FIFO must not wait for a writer (a regular file ignores the flag).
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return R::error("cannot open " + file + ": " + std::strerror(errno), platform::Errc::kIo);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return R::error(file + ": not a regular file");
  if ((st.st_mode & (S_IRGRP | S_IWGRP | S_IROTH | S_IWOTH)) != 0) {
    return R::error(file + ": the STAMP key is readable or writable by other users; chmod 600 " + file);
  }
  std::string text(kMaxBytes + 1, '\0');
  std::size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return R::error("cannot read " + file + ": " + std::strerror(errno), platform::Errc::kIo);
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  if (got > kMaxBytes) return R::error(file + ": larger than " + std::to_string(kMaxBytes) + " bytes");
  text.resize(got);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  auto key = stamp_key_from_hex(text);
  std::fill(text.begin(), text.end(), '\0');
  if (!key) return R::error(file + ": " + key.error());
  return key;
}

}  // namespace vantage::agent
