#include "agent/config.hpp"

#include <asio/ip/address.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <string_view>
#include <tuple>

#include "platform/utf8_text.hpp"
#include "schemas/peer_text.hpp"

namespace vantage::agent {

namespace {

namespace cfg = platform::config;
using cfg::kAlways;
using cfg::Kind;
using cfg::Value;
using probes::ProbeProtocol;

constexpr std::string_view kWithCollectors = "when collectors are set";

struct TargetDraft {
  std::string key;  // "targets[2]"
  std::uint32_t line = 0;
  std::string name;
  std::uint32_t name_line = 0;
  std::string protocol;
  std::string host;
  std::uint32_t host_line = 0;
  std::optional<std::uint16_t> port;
  std::uint32_t port_line = 0;
  double rate_per_s = 1.0;
  double timeout_ms = 1000.0;
  std::size_t size = 0;
  std::uint8_t dscp = 0;
  std::uint32_t paths = 1;
  std::uint32_t paths_line = 0;
  bool client = false;
  std::uint32_t client_line = 0;
  std::uint32_t size_line = 0;
  // STAMP: set keys are refused on other protocols, at their line.
  std::optional<std::uint16_t> ssid;
  std::uint32_t ssid_line = 0;
  std::string stamp_key;
  std::uint32_t stamp_key_line = 0;
  std::string stamp_key_file;
  std::uint32_t stamp_key_file_line = 0;
  std::optional<probes::stamp::TimestampFormat> timestamp_format;
  std::uint32_t timestamp_format_line = 0;
  std::optional<probes::StampStatefulReflector> stateful_reflector;
  std::uint32_t stateful_reflector_line = 0;
};

struct StampKeyDraft {
  std::string key;  // "stamp_reflector.keys[1]"
  std::uint32_t line = 0;
  std::vector<std::string> peers;
  std::uint32_t peers_line = 0;
  std::string hex;
  std::uint32_t hex_line = 0;
  std::string file;
  std::uint32_t file_line = 0;
};

struct CollectorsDraft {
  std::string key;  // "collectors[0]"
  std::uint32_t line = 0;
  std::string region;
  std::uint32_t region_line = 0;
  std::vector<std::string> addresses;
};

// What the file says, on top of the command line's defaults; lines are kept where a check
// across keys may need to point at them.
struct Draft {
  AgentOptions options;
  ship::ShipperConfig ship;
  std::vector<TargetDraft> targets;
  std::vector<CollectorsDraft> collectors;
  bool allow_cross_region = false;
  bool reflector_enabled = true;
  std::vector<asio::ip::udp::endpoint> announce;
  bool accept_target_lists = true;
  std::optional<std::uint32_t> reflector_rate;
  bool stamp_enabled = false;
  probes::StampReflectorConfig stamp;
  std::vector<StampKeyDraft> stamp_keys;
  std::optional<std::uint64_t> spool_max_kb;
  std::string clock_assume = "kernel";
  std::uint32_t clock_assume_line = 0;
  std::optional<double> clock_error_us;
  std::uint32_t clock_error_line = 0;
  platform::LogLevel log_level = platform::LogLevel::kInfo;
  privacy::PrivacyConfig privacy;
  std::string key_file;
  std::uint32_t key_file_line = 0;
  std::uint32_t prefix_v4_line = 0;
  std::uint32_t prefix_v6_line = 0;
  bool privacy_ok = true;  // false: the key file is set but unusable (reported already)
};

std::chrono::nanoseconds seconds_to_ns(double seconds) {
  return std::chrono::nanoseconds(std::llround(seconds * 1e9));
}

// The collector's rule for a target (schemas/peer_text.hpp), so what the file accepts is never
// refused on the wire, within the names' own 64 bytes and without spaces (labels in tables).
bool target_name(const Value& v) {
  constexpr std::size_t kMaxBytes = 64;
  static_assert(kMaxBytes <= wire::max_bytes(wire::PeerText::kTarget));
  return cfg::non_empty_text(v) && platform::check_text(v.text(), kMaxBytes) &&
         v.text().find(' ') == std::string::npos;
}

// identity.* take a cfg::token (printable ASCII without spaces, at most 64 bytes): what the
// collector takes for each of them, so a Hello or Batch never carries one it refuses.
static_assert(wire::max_bytes(wire::PeerText::kAgentId) >= 64 && wire::max_bytes(wire::PeerText::kRegion) >= 64 &&
              wire::max_bytes(wire::PeerText::kPop) >= 64);

bool announce_value(const Value& v) { return v.is_text() && parse_announce(v.text()).has_value(); }

// Each element of a list of address prefixes.
bool prefix_value(const Value& v) { return v.is_text() && probes::AddressPrefix::parse(v.text()).has_value(); }

bool fsync_value(const Value& v) {
  return v.is_text() ? v.text() == "every" : cfg::integer_in<1, 3'600'000>(v);
}

// The one table: parsing, validation and the reference docs all come from it.
const cfg::Key<Draft> kKeys[] = {
    {"identity.agent_id", Kind::kString, "", kWithCollectors, "a name without spaces (1..64 characters)",
     "This agent's id; must equal the agent id its certificate binds (tls.cert).", cfg::token,
     [](Draft& d, const Value& v) { d.ship.identity.agent_id = v.text(); }},
    {"identity.region", Kind::kString, "", kWithCollectors, "a name without spaces (1..64 characters)",
     "The region this agent's data belongs to (data residency), e.g. eu-central; must equal the region its "
     "certificate binds.", cfg::token,
     [](Draft& d, const Value& v) { d.ship.identity.region = v.text(); }},
    {"identity.pop", Kind::kString, "", kWithCollectors, "a name without spaces (1..64 characters)",
     "The PoP this agent runs in, e.g. fra1; must equal the PoP its certificate binds.", cfg::token,
     [](Draft& d, const Value& v) { d.ship.identity.pop = v.text(); }},

    {"collectors[]", Kind::kTableArray, "", "", "an array of tables ([[collectors]])",
     "The collectors of one region. Reports ship to those of identity.region, in order, failing over to the "
     "next; other regions' come after them only with delivery.allow_cross_region. Without any, nothing is "
     "shipped.",
     nullptr,
     [](Draft& d, const Value& v) {
       d.collectors.emplace_back();
       d.collectors.back().key = v.key;
       d.collectors.back().line = v.line;
     }},
    {"collectors[].region", Kind::kString, "", kAlways, "a name without spaces (1..64 characters)",
     "The region these collectors serve.", cfg::token,
     [](Draft& d, const Value& v) {
       d.collectors.back().region = v.text();
       d.collectors.back().region_line = v.line;
     }},
    {"collectors[].addresses", Kind::kStringList, "", kAlways,
     "\"HOST:PORT\" (a name or an IP address; IPv6 in brackets)",
     "Tried in this order; after a failure the next one, wrapping around.", cfg::host_port,
     [](Draft& d, const Value& v) { d.collectors.back().addresses = v.strings(); }},

    {"delivery.allow_cross_region", Kind::kBoolean, "false", "", "true or false",
     "Fall back to other regions' collectors when all of this region's fail. Off by default: it sends "
     "this region's data to another region.",
     nullptr, [](Draft& d, const Value& v) { d.allow_cross_region = v.boolean(); }},
    {"delivery.drain", Kind::kNumber, "5", "", "seconds in [0, 10000000]",
     "On stop, how long to wait for the collector to ack what is spooled.", cfg::number_in<0, 10'000'000>,
     [](Draft& d, const Value& v) {
       d.options.drain = std::chrono::milliseconds(std::llround(v.number() * 1e3));
     }},

    {"tls.ca", Kind::kString, "", kWithCollectors, "a file path (PEM)",
     "The only CA whose collector certificates are trusted.", cfg::non_empty_text,
     [](Draft& d, const Value& v) { d.ship.tls.ca_file = v.text(); }},
    {"tls.cert", Kind::kString, "", kWithCollectors, "a file path (PEM)",
     "This agent's certificate (leaf first); its subjectAltName URI vantage://<region>/<pop>/<agent-id> binds "
     "the identity.* values.", cfg::non_empty_text,
     [](Draft& d, const Value& v) { d.ship.tls.cert_file = v.text(); }},
    {"tls.key", Kind::kString, "", kWithCollectors, "a file path (PEM)", "The private key of tls.cert.",
     cfg::non_empty_text, [](Draft& d, const Value& v) { d.ship.tls.key_file = v.text(); }},

    {"spool.dir", Kind::kString, "\"/var/lib/vantage-agent/spool\"", "", "a directory path",
     "Where batches wait for their ack; created if missing.", cfg::non_empty_text,
     [](Draft& d, const Value& v) { d.ship.spool.dir = v.text(); }},
    {"spool.max_kb", Kind::kInteger, "65536", "", "KiB, an integer in 16..1073741824",
     "The spool's bound; when full, the oldest batches are dropped (and counted).",
     cfg::integer_in<16, std::int64_t{1} << 30>,
     [](Draft& d, const Value& v) { d.spool_max_kb = static_cast<std::uint64_t>(v.integer()); }},
    {"spool.fsync", Kind::kStringOrInteger, "1000", "", "\"every\" or milliseconds in 1..3600000",
     "Sync each batch to disk before sending it, or every so many milliseconds.", fsync_value,
     [](Draft& d, const Value& v) {
       if (v.is_text()) {
         d.ship.spool.fsync = ship::SpoolConfig::Fsync::kEveryRecord;
       } else {
         d.ship.spool.fsync = ship::SpoolConfig::Fsync::kInterval;
         d.ship.spool.fsync_interval = std::chrono::milliseconds(v.integer());
       }
     }},

    {"targets[]", Kind::kTableArray, "", "", "an array of tables ([[targets]])", "What this agent probes.",
     nullptr,
     [](Draft& d, const Value& v) {
       d.targets.emplace_back();
       d.targets.back().key = v.key;
       d.targets.back().line = v.line;
     }},
    {"targets[].name", Kind::kString, "", "", "a name without spaces or control characters (UTF-8, 1..64 bytes)",
     "The target's label in reports; unique. Default: its address, e.g. 192.0.2.1:8627.", target_name,
     [](Draft& d, const Value& v) {
       d.targets.back().name = v.text();
       d.targets.back().name_line = v.line;
     }},
    {"targets[].protocol", Kind::kString, "", kAlways, "\"udp\", \"tcp\", \"icmp\" or \"stamp\"",
     "UDP echo against a Vantage reflector, TCP connect time, ICMP echo, or STAMP (RFC 8762) against any STAMP "
     "or TWAMP-Light reflector (a router, another agent's stamp_reflector).",
     [](const Value& v) {
       return cfg::one_of(v, {"udp", "tcp", "icmp", "stamp"});
     },
     [](Draft& d, const Value& v) { d.targets.back().protocol = v.text(); }},
    // Checked with the whole target (build_targets), once `client` is known: a client's host
    // is personal data and no error may show it.
    {"targets[].host", Kind::kString, "", kAlways, "an IP address or a host name",
     "A name is resolved in the background (the first address): the agent starts while it does not "
     "resolve, reports the target unresolved (not lost), retries with backoff and follows the name "
     "when its address changes. A client target takes an IP address. Without a name, the label (the host, "
     "with :port for udp and tcp) must fit in 128 bytes.",
     nullptr,
     [](Draft& d, const Value& v) {
       d.targets.back().host = v.text();
       d.targets.back().host_line = v.line;
     }},
    {"targets[].port", Kind::kInteger, "8627", "", "an integer in 1..65535",
     "UDP: the reflector's port (default 8627); STAMP: the reflector's port (default 862); TCP: required; ICMP: "
     "not allowed.",
     cfg::integer_in<1, 65535>,
     [](Draft& d, const Value& v) {
       d.targets.back().port = static_cast<std::uint16_t>(v.integer());
       d.targets.back().port_line = v.line;
     }},
    {"targets[].rate", Kind::kNumber, "1", "", "a number in (0, 1000]", "Probes per second.",
     cfg::number_above_at_most<0, 1000>,
     [](Draft& d, const Value& v) { d.targets.back().rate_per_s = v.number(); }},
    {"targets[].timeout_ms", Kind::kNumber, "1000", "", "a number in (0, 60000]",
     "A reply later than this many milliseconds counts as lost.", cfg::number_above_at_most<0, 60'000>,
     [](Draft& d, const Value& v) { d.targets.back().timeout_ms = v.number(); }},
    {"targets[].size", Kind::kInteger, "", "", "bytes, an integer in 1..8972",
     "UDP/ICMP/STAMP payload size. Default: 104 for UDP (the probe header and the clock extension that one-way "
     "delay needs; 64 at least), 56 for ICMP, 44 for STAMP (112 with a key; more is sent as an Extra Padding "
     "TLV).",
     cfg::integer_in<1, 8972>,
     [](Draft& d, const Value& v) {
       d.targets.back().size = static_cast<std::size_t>(v.integer());
       d.targets.back().size_line = v.line;
     }},
    {"targets[].dscp", Kind::kInteger, "0", "", "an integer in 0..63", "DSCP of the probes.",
     cfg::integer_in<0, 63>,
     [](Draft& d, const Value& v) { d.targets.back().dscp = static_cast<std::uint8_t>(v.integer()); }},
    {"targets[].paths", Kind::kInteger, "1", "", "an integer in 1..64; above 1 for udp only",
     "ECMP paths: UDP probes rotate over this many source ports (and IPv6 flow labels), so a "
     "multipath network spreads them over its routes, and reports carry loss and RTT per path.",
     cfg::integer_in<1, 64>,
     [](Draft& d, const Value& v) {
       d.targets.back().paths = static_cast<std::uint32_t>(v.integer());
       d.targets.back().paths_line = v.line;
     }},
    {"targets[].client", Kind::kBoolean, "false", "", "true or false",
     "A client's (player's) address, personal data: reports, batches and logs show only its pseudonym "
     "(see [privacy]), never the address; such a target takes no name.",
     nullptr,
     [](Draft& d, const Value& v) {
       d.targets.back().client = v.boolean();
       d.targets.back().client_line = v.line;
     }},

    {"targets[].ssid", Kind::kInteger, "", "", "an integer in 1..65535; stamp only",
     "The STAMP Session-Sender Identifier (RFC 8972) the reflector keys its session on. Default: derived from "
     "the agent and the target's position.",
     cfg::integer_in<1, 65535>,
     [](Draft& d, const Value& v) {
       d.targets.back().ssid = static_cast<std::uint16_t>(v.integer());
       d.targets.back().ssid_line = v.line;
     }},
    {"targets[].key", Kind::kString, "", "", "32..128 hex digits (16..64 bytes); stamp only",
     "STAMP authenticated mode: the HMAC-SHA-256 key shared with the reflector (or key_file: at most one of the "
     "two). Without either, unauthenticated mode.",
     nullptr,
     [](Draft& d, const Value& v) {
       d.targets.back().stamp_key = v.text();
       d.targets.back().stamp_key_line = v.line;
     }},
    {"targets[].key_file", Kind::kString, "", "", "a file path; stamp only",
     "A file holding the STAMP key's hex digits, readable by the agent's user only (mode 0600 or 0400).",
     cfg::non_empty_text,
     [](Draft& d, const Value& v) {
       d.targets.back().stamp_key_file = v.text();
       d.targets.back().stamp_key_file_line = v.line;
     }},
    {"targets[].timestamp_format", Kind::kString, "\"ntp\"", "", "\"ntp\" or \"ptp\"; stamp only",
     "The STAMP packets' timestamps: NTP (seconds since 1900 and a binary fraction) or PTPv2 truncated.",
     [](const Value& v) { return cfg::one_of(v, {"ntp", "ptp"}); },
     [](Draft& d, const Value& v) {
       d.targets.back().timestamp_format =
           v.text() == "ptp" ? probes::stamp::TimestampFormat::kPtp : probes::stamp::TimestampFormat::kNtp;
       d.targets.back().timestamp_format_line = v.line;
     }},
    {"targets[].stateful_reflector", Kind::kStringOrBoolean, "\"auto\"", "", "\"auto\", true or false; stamp only",
     "Whether the reflector numbers its replies per session (RFC 8762 stateful), which splits loss into "
     "outbound and inbound. \"auto\": assumed once a reply's sequence number differs from the probe's.",
     [](const Value& v) { return !v.is_text() || v.text() == "auto"; },
     [](Draft& d, const Value& v) {
       d.targets.back().stateful_reflector = v.is_text()   ? probes::StampStatefulReflector::kAuto
                                             : v.boolean() ? probes::StampStatefulReflector::kYes
                                                           : probes::StampStatefulReflector::kNo;
       d.targets.back().stateful_reflector_line = v.line;
     }},

    {"reflector.enabled", Kind::kBoolean, "true", "", "true or false",
     "Answer peers' UDP echo probes (the other end of their udp targets).", nullptr,
     [](Draft& d, const Value& v) { d.reflector_enabled = v.boolean(); }},
    {"reflector.bind", Kind::kString, "\"::\"", "", "an IP address",
     "The address to listen on; \"::\" serves IPv4 and IPv6.", cfg::ip_address,
     [](Draft& d, const Value& v) { d.options.measurement.reflector->bind_address = v.text(); }},
    {"reflector.port", Kind::kInteger, "8627", "", "an integer in 1..65535", "The UDP port to listen on.",
     cfg::integer_in<1, 65535>,
     [](Draft& d, const Value& v) {
       d.options.measurement.reflector->port = static_cast<std::uint16_t>(v.integer());
     }},
    {"reflector.announce", Kind::kStringList, "", "", "\"ADDR:PORT\" (an IP address; IPv6 in brackets)",
     "Where peers reach this reflector (IPv4 and IPv6, e.g. a public address in front of reflector.bind), told "
     "to the collector in Hello so the mesh points other agents at it. Default: reflector.bind with "
     "reflector.port, unless bind is a wildcard (then nothing is announced).",
     announce_value,
     [](Draft& d, const Value& v) {
       d.announce.clear();
       for (const std::string& text : v.strings()) {
         if (const auto endpoint = parse_announce(text)) d.announce.push_back(*endpoint);
       }
     }},
    {"mesh.accept", Kind::kBoolean, "true", "", "true or false",
     "Take the target lists the collector makes from its mesh rules (merged with targets[], which always win; "
     "the last one is kept in spool.dir as target-list.vnt). false: probe only targets[].",
     nullptr, [](Draft& d, const Value& v) { d.accept_target_lists = v.boolean(); }},
    {"reflector.rate", Kind::kInteger, "100", "", "an integer in 1..1000000",
     "Probes per second answered per source address; the rest are dropped (and counted).",
     cfg::integer_in<1, 1'000'000>,
     [](Draft& d, const Value& v) { d.reflector_rate = static_cast<std::uint32_t>(v.integer()); }},

    {"stamp_reflector.enabled", Kind::kBoolean, "false", "", "true or false",
     "Answer STAMP (RFC 8762) and TWAMP-Light session-senders, e.g. routers measuring towards this agent.",
     nullptr, [](Draft& d, const Value& v) { d.stamp_enabled = v.boolean(); }},
    {"stamp_reflector.bind", Kind::kString, "\"::\"", "", "an IP address",
     "The address to listen on; \"::\" serves IPv4 and IPv6.", cfg::ip_address,
     [](Draft& d, const Value& v) { d.stamp.bind_address = v.text(); }},
    {"stamp_reflector.port", Kind::kInteger, "862", "", "an integer in 1..65535",
     "The UDP port to listen on (862, the STAMP port: below 1024, the unit grants CAP_NET_BIND_SERVICE).",
     cfg::integer_in<1, 65535>, [](Draft& d, const Value& v) { d.stamp.port = static_cast<std::uint16_t>(v.integer()); }},
    {"stamp_reflector.stateful", Kind::kBoolean, "true", "", "true or false",
     "Number replies per session (source address, port and SSID) from 0, so senders tell outbound from "
     "inbound loss; false: echo the sender's sequence number.",
     nullptr, [](Draft& d, const Value& v) { d.stamp.stateful = v.boolean(); }},
    {"stamp_reflector.timestamp_format", Kind::kString, "\"ntp\"", "", "\"ntp\" or \"ptp\"",
     "The replies' timestamps: NTP (seconds since 1900 and a binary fraction) or PTPv2 truncated.",
     [](const Value& v) { return cfg::one_of(v, {"ntp", "ptp"}); },
     [](Draft& d, const Value& v) {
       d.stamp.timestamp_format =
           v.text() == "ptp" ? probes::stamp::TimestampFormat::kPtp : probes::stamp::TimestampFormat::kNtp;
     }},
    {"stamp_reflector.rate_per_s", Kind::kInteger, "100", "", "an integer in 1..1000000",
     "Packets per second answered per source address; the rest are dropped (and counted).",
     cfg::integer_in<1, 1'000'000>,
     [](Draft& d, const Value& v) { d.stamp.rate_limit.rate_per_s = static_cast<std::uint32_t>(v.integer()); }},
    {"stamp_reflector.burst", Kind::kInteger, "20", "", "an integer in 1..1000000",
     "Packets a source may send back to back above its rate.", cfg::integer_in<1, 1'000'000>,
     [](Draft& d, const Value& v) { d.stamp.rate_limit.burst = static_cast<std::uint32_t>(v.integer()); }},
    {"stamp_reflector.unauthenticated", Kind::kBoolean, "true", "", "true or false",
     "Answer unauthenticated packets from sources no keys[].peers covers; false: only keyed peers are answered.",
     nullptr, [](Draft& d, const Value& v) { d.stamp.unauthenticated = v.boolean(); }},
    {"stamp_reflector.keys[]", Kind::kTableArray, "", "", "an array of tables ([[stamp_reflector.keys]])",
     "Authenticated mode (HMAC-SHA-256): sources in peers must sign with key, anything else from them is "
     "dropped (and counted). The first table whose peers cover a source applies.",
     nullptr,
     [](Draft& d, const Value& v) {
       d.stamp_keys.emplace_back();
       d.stamp_keys.back().key = v.key;
       d.stamp_keys.back().line = v.line;
     }},
    {"stamp_reflector.keys[].peers", Kind::kStringList, "", kAlways, "an address prefix, e.g. \"192.0.2.0/24\" or \"::1/128\"",
     "The sources this key applies to.", prefix_value,
     [](Draft& d, const Value& v) {
       d.stamp_keys.back().peers = v.strings();
       d.stamp_keys.back().peers_line = v.line;
     }},
    {"stamp_reflector.keys[].key", Kind::kString, "", "", "32..128 hex digits (16..64 bytes)",
     "The shared HMAC key (or key_file: exactly one of the two).", nullptr,
     [](Draft& d, const Value& v) {
       d.stamp_keys.back().hex = v.text();
       d.stamp_keys.back().hex_line = v.line;
     }},
    {"stamp_reflector.keys[].key_file", Kind::kString, "", "", "a file path",
     "A file holding the key's hex digits, readable by the agent's user only (mode 0600 or 0400).",
     cfg::non_empty_text,
     [](Draft& d, const Value& v) {
       d.stamp_keys.back().file = v.text();
       d.stamp_keys.back().file_line = v.line;
     }},

    {"measurement.report_interval", Kind::kNumber, "10", "", "seconds in (0, 10000000]",
     "One report (and one batch to the collector) per interval.", cfg::number_above_at_most<0, 10'000'000>,
     [](Draft& d, const Value& v) { d.options.measurement.report_interval = seconds_to_ns(v.number()); }},
    {"measurement.load_interval", Kind::kNumber, "1", "", "seconds in [0, 10000000]",
     "Host load sampling period; 0 turns the sampler off.", cfg::number_in<0, 10'000'000>,
     [](Draft& d, const Value& v) { d.options.measurement.load_interval = seconds_to_ns(v.number()); }},
    {"measurement.probe_slot_ms", Kind::kNumber, "20", "", "milliseconds in (0, 100]",
     "Probes are sent on a grid of this period (randomly phased per start; lowered to a quarter of the "
     "shortest probe interval, and to hold 64 probes on average): one wakeup per slot for all probes due in it. Shorter: sends closer to "
     "their jittered deadlines, more wakeups.",
     cfg::number_above_at_most<0, 100>,
     [](Draft& d, const Value& v) {
       d.options.measurement.probe_slot = std::chrono::nanoseconds(std::llround(v.number() * 1e6));
     }},
    {"measurement.host_root", Kind::kString, "\"/\"", "", "a directory path",
     "Read /proc and /sys under this directory (a container's view of its host).", cfg::non_empty_text,
     [](Draft& d, const Value& v) { d.options.measurement.host_root = v.text(); }},
    {"measurement.dns_retry_max", Kind::kNumber, "60", "", "seconds in [1, 3600]",
     "A name (target or collector) that does not resolve is retried after 1 s, then twice as long each "
     "time (jittered), never waiting longer than this.",
     cfg::number_in<1, 3600>,
     [](Draft& d, const Value& v) {
       d.options.measurement.resolve.retry_max = std::chrono::milliseconds(std::llround(v.number() * 1e3));
     }},
    {"measurement.dns_refresh", Kind::kNumber, "300", "", "seconds in [1, 86400]",
     "A name that resolves is looked up again this often (jittered), so probes and the shipper follow it "
     "when its address changes; a reload looks every name up at once.",
     cfg::number_in<1, 86'400>,
     [](Draft& d, const Value& v) {
       d.options.measurement.resolve.refresh = std::chrono::milliseconds(std::llround(v.number() * 1e3));
     }},
    {"measurement.kernel_timestamps", Kind::kBoolean, "true", "", "true or false",
     "Take receive times from the kernel where the socket allows; false: in user space.", nullptr,
     [](Draft& d, const Value& v) { d.options.measurement.kernel_timestamps = v.boolean(); }},
    {"measurement.icmp_socket", Kind::kString, "\"auto\"", "", "\"auto\", \"dgram\" or \"raw\"",
     "ICMP socket kind: dgram needs net.ipv4.ping_group_range, raw needs CAP_NET_RAW; auto tries both.",
     [](const Value& v) {
       return cfg::one_of(v, {"auto", "dgram", "raw"});
     },
     [](Draft& d, const Value& v) {
       d.options.measurement.icmp_mode = v.text() == "dgram" ? probes::IcmpSocketMode::kDgram
                                         : v.text() == "raw" ? probes::IcmpSocketMode::kRaw
                                                             : probes::IcmpSocketMode::kAuto;
     }},

    {"clock.assume", Kind::kString, "\"kernel\"", "", "\"kernel\", \"synchronised\" or \"unsynchronised\"",
     "The clock state one-way delay is gated on, and that batches and reflector replies carry: the kernel's "
     "(adjtimex), or assumed, for a host whose clock daemon (e.g. ptp4l with phc2sys) does not maintain the "
     "kernel's flags, and for tests.",
     [](const Value& v) {
       return cfg::one_of(v, {"kernel", "synchronised", "unsynchronised"});
     },
     [](Draft& d, const Value& v) {
       d.clock_assume = v.text();
       d.clock_assume_line = v.line;
     }},
    {"clock.assume_error_us", Kind::kNumber, "", "when assume is \"synchronised\"", "microseconds in [0, 16000000]",
     "The clock's maximum error under an assumed state: what the Error Estimate of this agent's packets says.",
     cfg::number_in<0, 16'000'000>,
     [](Draft& d, const Value& v) {
       d.clock_error_us = v.number();
       d.clock_error_line = v.line;
     }},
    {"clock.max_error_fraction", Kind::kNumber, "0.1", "", "a number in (0, 1]",
     "One-way delay is reported only when both clocks are synchronised and the combined error bound of both "
     "ends is below this fraction of the smaller one-way median; otherwise the summary says why and carries "
     "RTT only.",
     cfg::number_above_at_most<0, 1>,
     [](Draft& d, const Value& v) { d.options.measurement.max_error_fraction = v.number(); }},

    {"privacy.mode", Kind::kString, "\"hmac\"", "", "\"hmac\" or \"prefix\"",
     "How client targets are labelled: a keyed HMAC-SHA256 digest that rotates (anon:k<epoch>:<hex>), or "
     "their network prefix (203.0.113.0/24:443).",
     [](const Value& v) {
       return cfg::one_of(v, {"hmac", "prefix"});
     },
     [](Draft& d, const Value& v) {
       d.privacy.mode = v.text() == "prefix" ? privacy::PseudonymMode::kPrefix : privacy::PseudonymMode::kHmac;
     }},
    {"privacy.key_file", Kind::kString, "", "when a target is a client and mode is \"hmac\"",
     "a file path (a secret of at least 32 bytes), or \"credential:NAME\"",
     "The fleet's shared secret: 64 (or more) hex digits, or at least 32 raw bytes, in a file only the "
     "agent's user may read (mode 0600 or 0400; at most 4096 bytes). \"credential:NAME\" reads "
     "$CREDENTIALS_DIRECTORY/NAME (systemd's LoadCredential=NAME:PATH); without key_file, the credential "
     "privacy-key is used when systemd delivers one. Agents with the same secret give a client the same "
     "pseudonym.",
     cfg::non_empty_text,
     [](Draft& d, const Value& v) {
       d.key_file = v.text();
       d.key_file_line = v.line;
     }},
    {"privacy.rotation", Kind::kInteger, "86400", "", "seconds, an integer in 1..31622400",
     "The HMAC key changes every so many seconds (epochs of Unix time): pseudonyms change with it.",
     cfg::integer_in<1, 31'622'400>,
     [](Draft& d, const Value& v) { d.privacy.rotation = std::chrono::seconds(v.integer()); }},
    {"privacy.prefix_v4", Kind::kInteger, "24", "", "an integer in 0..32",
     "prefix mode: the IPv4 prefix length kept; above 24 only with allow_long_prefix.", cfg::integer_in<0, 32>,
     [](Draft& d, const Value& v) {
       d.privacy.prefix_v4 = static_cast<unsigned>(v.integer());
       d.prefix_v4_line = v.line;
     }},
    {"privacy.prefix_v6", Kind::kInteger, "48", "", "an integer in 0..128",
     "prefix mode: the IPv6 prefix length kept; above 48 only with allow_long_prefix.", cfg::integer_in<0, 128>,
     [](Draft& d, const Value& v) {
       d.privacy.prefix_v6 = static_cast<unsigned>(v.integer());
       d.prefix_v6_line = v.line;
     }},
    {"privacy.allow_long_prefix", Kind::kBoolean, "false", "", "true or false",
     "prefix mode: allow prefix_v4 above 24 and prefix_v6 above 48, which keep (nearly) the whole client "
     "address, so barely a pseudonym; a warning is logged at each start.",
     nullptr, [](Draft& d, const Value& v) { d.privacy.allow_long_prefix = v.boolean(); }},
    {"privacy.digest_bytes", Kind::kInteger, "12", "", "an integer in 8..32",
     "hmac mode: how many bytes of the digest the pseudonym keeps (twice as many hex digits).",
     cfg::integer_in<8, 32>,
     [](Draft& d, const Value& v) { d.privacy.digest_bytes = static_cast<std::size_t>(v.integer()); }},

    cfg::log_level_key<Draft>(),
};

ProbeProtocol protocol_of(std::string_view name) {
  return name == "tcp"     ? ProbeProtocol::kTcpConnect
         : name == "icmp"  ? ProbeProtocol::kIcmpEcho
         : name == "stamp" ? ProbeProtocol::kStamp
                           : ProbeProtocol::kUdpEcho;
}

// A target's STAMP keys: refused on other protocols (each at its line), else read into options.
bool build_stamp_options(const TargetDraft& t, ProbeProtocol protocol, probes::StampSenderOptions& options,
                         cfg::Diagnostics& diagnostics) {
  bool ok = true;
  if (protocol != ProbeProtocol::kStamp) {
    for (const auto& [set, line, name] :
         {std::tuple{t.ssid.has_value(), t.ssid_line, ".ssid"},
          std::tuple{!t.stamp_key.empty(), t.stamp_key_line, ".key"},
          std::tuple{!t.stamp_key_file.empty(), t.stamp_key_file_line, ".key_file"},
          std::tuple{t.timestamp_format.has_value(), t.timestamp_format_line, ".timestamp_format"},
          std::tuple{t.stateful_reflector.has_value(), t.stateful_reflector_line, ".stateful_reflector"}}) {
      if (set) {
        diagnostics.error(line, t.key + name, "only a stamp target takes it");
        ok = false;
      }
    }
    return ok;
  }
  options.ssid = t.ssid.value_or(0);
  options.timestamp_format = t.timestamp_format.value_or(probes::stamp::TimestampFormat::kNtp);
  options.stateful_reflector = t.stateful_reflector.value_or(probes::StampStatefulReflector::kAuto);
  if (!t.stamp_key.empty() && !t.stamp_key_file.empty()) {
    diagnostics.error(t.stamp_key_file_line, t.key + ".key_file", "expected at most one of key and key_file");
    return false;
  }
  if (!t.stamp_key.empty() || !t.stamp_key_file.empty()) {
    // The error never shows the key's digits.
    auto key = t.stamp_key.empty() ? read_stamp_key_file(t.stamp_key_file) : stamp_key_from_hex(t.stamp_key);
    if (!key) {
      const bool file = t.stamp_key.empty();
      diagnostics.error(file ? t.stamp_key_file_line : t.stamp_key_line, t.key + (file ? ".key_file" : ".key"),
                        key.error());
      return false;
    }
    options.key = std::move(key).value();
  }
  const std::size_t base = probes::stamp::base_size(options.mode());
  if (t.size != 0 && t.size < base) {
    diagnostics.error(t.size_line, t.key + ".size",
                      "a STAMP packet " + std::string(options.key.empty() ? "" : "with a key ") + "is at least " +
                          std::to_string(base) + " bytes, got " + std::to_string(t.size));
    return false;
  }
  return true;
}


void build_targets(Draft& d, cfg::Diagnostics& diagnostics) {
  // Reports and the store key a target by its label: two alike would be one series. Names are
  // checked first, whether or not the rest of their target is valid.
  std::map<std::string, const TargetDraft*> labels;
  for (const TargetDraft& t : d.targets) {
    if (t.name.empty()) continue;
    if (const auto [it, inserted] = labels.emplace(t.name, &t); !inserted) {
      diagnostics.error(t.name_line, t.key + ".name",
                        "duplicate name \"" + t.name + "\" (" + it->second->key + ", line " +
                            std::to_string(it->second->name_line) + ")");
    }
  }
  for (const TargetDraft& t : d.targets) {
    if (t.protocol.empty() || t.host_line == 0) continue;  // reported already
    const ProbeProtocol protocol = protocol_of(t.protocol);
    bool ok = true;
    if (protocol == ProbeProtocol::kTcpConnect && !t.port) {
      diagnostics.missing(t.key + ".port", "an integer in 1..65535 (a tcp target needs a port)");
      ok = false;
    }
    if (protocol == ProbeProtocol::kIcmpEcho && t.port) {
      diagnostics.error(t.port_line, t.key + ".port", "an icmp target has no port");
      ok = false;
    }
    if (protocol != ProbeProtocol::kUdpEcho && t.paths > 1) {
      diagnostics.error(t.paths_line, t.key + ".paths", "only a udp target spreads over several paths");
      ok = false;
    }
    if (t.client && !t.name.empty()) {
      diagnostics.error(t.name_line, t.key + ".name",
                        "a client target is labelled by its pseudonym and takes no name");
      ok = false;
    }
    if (!cfg::host(cfg::Value{t.host, t.key + ".host", t.host_line})) {
      diagnostics.error(
          t.host_line, t.key + ".host",
          t.client ? std::string("expected an IP address or a host name (not shown: a client's address)")
                   : "expected an IP address or a host name, got " + cfg::quote_value(t.host));
      continue;
    }
    // A name is resolved in the background once the agent runs (and followed when it moves),
    // so one that does not resolve yet stops nothing; a client's address must be an address.
    std::error_code literal_error;
    const asio::ip::address literal = asio::ip::make_address(t.host, literal_error);
    if (literal_error && t.client) {
      diagnostics.error(t.host_line, t.key + ".host",
                        "a client target takes an IP address, not a name (not shown: a client's address)");
      ok = false;
    }
    if (t.client && !d.privacy_ok) ok = false;  // no usable key: reported once, by build_privacy
    ProbeTargetSpec spec;
    if (!build_stamp_options(t, protocol, spec.stamp, diagnostics)) ok = false;
    if (!ok) continue;
    spec.protocol = protocol;
    if (literal_error) {
      spec.host = t.host;
    } else {
      spec.address = literal;
    }
    spec.port = protocol == ProbeProtocol::kUdpEcho      ? t.port.value_or(probes::kDefaultReflectorPort)
                : protocol == ProbeProtocol::kStamp      ? t.port.value_or(probes::stamp::kDefaultPort)
                : protocol == ProbeProtocol::kTcpConnect ? *t.port
                                                         : 0;
    spec.rate_per_s = t.rate_per_s;
    spec.timeout = std::chrono::nanoseconds(std::llround(t.timeout_ms * 1e6));
    spec.payload_size = t.size;
    spec.dscp = t.dscp;
    spec.paths = t.paths;
    spec.client = t.client;
    spec.label = t.client         ? client_label_now(d.privacy, spec)
                 : !t.name.empty() ? t.name
                 : spec.host.empty() ? target_label(protocol, spec.address, spec.port)
                                     : target_label(protocol, spec.host, spec.port);
    // The label travels in every batch: one the collector refuses (a long host name with its
    // port) would get every batch refused, and the agent retries a refused batch first.
    if (!t.client) {
      if (const auto fault = wire::check_peer_text("label", spec.label, wire::PeerText::kTarget)) {
        diagnostics.error(t.host_line, t.key + ".host",
                          "the target's " + fault->reason + " (the collector's bound for a target); set " +
                              t.key + ".name");
        continue;
      }
    }
    if (t.name.empty()) {
      if (const auto [it, inserted] = labels.emplace(spec.label, &t); !inserted) {
        const TargetDraft& first = *it->second;
        diagnostics.error(t.line, t.key,
                          "label \"" + spec.label + "\" is already used by " + first.key + " (line " +
                              std::to_string(first.line) + "); give one of them a name");
        continue;
      }
    }
    d.options.measurement.targets.push_back(std::move(spec));
  }
}

// Reads the secret (a key_file must be readable whether or not a target needs it yet) and
// requires one when a client target is to be labelled by HMAC.
void build_privacy(Draft& d, cfg::Diagnostics& diagnostics) {
  const bool prefix = d.privacy.mode == privacy::PseudonymMode::kPrefix;
  if (prefix && !d.privacy.allow_long_prefix) {
    // A /32 (or /128) "prefix" is the address itself: refused unless explicitly allowed.
    if (d.privacy.prefix_v4 > privacy::kMaxSafePrefixV4) {
      diagnostics.error(d.prefix_v4_line, "privacy.prefix_v4",
                        std::to_string(d.privacy.prefix_v4) + " keeps more than " +
                            std::to_string(privacy::kMaxSafePrefixV4) +
                            " bits of a client's IPv4 address; at most 24, or set privacy.allow_long_prefix = true");
      d.privacy_ok = false;
    }
    if (d.privacy.prefix_v6 > privacy::kMaxSafePrefixV6) {
      diagnostics.error(d.prefix_v6_line, "privacy.prefix_v6",
                        std::to_string(d.privacy.prefix_v6) + " keeps more than " +
                            std::to_string(privacy::kMaxSafePrefixV6) +
                            " bits of a client's IPv6 address; at most 48, or set privacy.allow_long_prefix = true");
      d.privacy_ok = false;
    }
  }
  const char* credentials = std::getenv("CREDENTIALS_DIRECTORY");
  std::optional<privacy::SecretSource> source;
  if (!d.key_file.empty()) {
    if (auto s = privacy::secret_source(d.key_file, credentials)) {
      source = std::move(s).value();
    } else {
      diagnostics.error(d.key_file_line, "privacy.key_file", s.error());
      d.privacy_ok = false;
    }
  } else if (!prefix) {
    // Under systemd with LoadCredential=privacy-key:PATH, no key_file is needed.
    source = privacy::default_secret_source(credentials);
  }
  if (source) {
    if (auto secret = privacy::read_secret(*source)) {
      d.privacy.secret = std::move(secret).value();
    } else {
      diagnostics.error(d.key_file_line, "privacy.key_file", secret.error());
      d.privacy_ok = false;
    }
  }
  if (prefix || source || diagnostics.has("privacy.key_file")) {
    return;
  }
  for (const TargetDraft& t : d.targets) {
    if (!t.client) continue;
    diagnostics.error(t.client_line, "privacy.key_file",
                      "missing; expected a file path (a secret of at least 32 bytes) (" + t.key +
                          " is a client target and privacy.mode is \"hmac\")");
    d.privacy_ok = false;
    return;
  }
}

void build_stamp_reflector(Draft& d, cfg::Diagnostics& diagnostics) {
  for (const StampKeyDraft& k : d.stamp_keys) {
    probes::StampKey key;
    for (const std::string& p : k.peers) key.peers.push_back(*probes::AddressPrefix::parse(p));
    if (k.hex.empty() == k.file.empty()) {
      diagnostics.error(k.hex.empty() ? k.line : k.file_line, k.key + ".key",
                        "expected exactly one of key and key_file");
      continue;
    }
    auto bytes = k.hex.empty() ? read_stamp_key_file(k.file) : stamp_key_from_hex(k.hex);
    if (!bytes) {
      diagnostics.error(k.hex.empty() ? k.file_line : k.hex_line, k.key + (k.hex.empty() ? ".key_file" : ".key"),
                        bytes.error());
      continue;
    }
    key.key = std::move(bytes).value();
    d.stamp.keys.push_back(std::move(key));
  }
}

// [clock] assume: a synchronised clock needs its error stated (a bound of 0 would pass any gate).
void build_clock(Draft& d, cfg::Diagnostics& diagnostics) {
  if (d.clock_assume == "kernel") {
    if (d.clock_error_us) {
      diagnostics.error(d.clock_error_line, "clock.assume_error_us",
                        "only with clock.assume \"synchronised\" or \"unsynchronised\" (the kernel states its own)");
    }
    return;
  }
  const bool synchronised = d.clock_assume == "synchronised";
  if (synchronised && !d.clock_error_us) {
    diagnostics.error(d.clock_assume_line, "clock.assume_error_us",
                      "missing; expected microseconds in [0, 16000000] (clock.assume is \"synchronised\")");
    return;
  }
  const auto error_ns = static_cast<std::int64_t>(std::llround(d.clock_error_us.value_or(0.0) * 1e3));
  d.options.measurement.assume_clock =
      platform::ClockState{synchronised, error_ns, error_ns, platform::ClockSource::kConfigured};
}

void build_shipping(Draft& d, cfg::Diagnostics& diagnostics) {
  if (d.collectors.empty()) return;
  ship::ShipperConfig& shipping = d.ship;
  bool complete = true;
  for (const auto& [key, value] :
       {std::pair{"identity.agent_id", &shipping.identity.agent_id},
        std::pair{"identity.region", &shipping.identity.region},
        std::pair{"identity.pop", &shipping.identity.pop}, std::pair{"tls.ca", &shipping.tls.ca_file},
        std::pair{"tls.cert", &shipping.tls.cert_file}, std::pair{"tls.key", &shipping.tls.key_file}}) {
    if (value->empty()) {
      complete = false;
      if (diagnostics.has(key)) continue;  // there, with a bad value: reported as that
      for (const auto& k : kKeys) {
        if (k.path == key) {
          diagnostics.missing(key, std::string(k.expected) + " (required " + std::string(k.required) + ")");
        }
      }
    }
  }
  std::map<std::string, const CollectorsDraft*> regions;
  for (const CollectorsDraft& c : d.collectors) {
    if (c.region.empty()) continue;
    if (const auto [it, inserted] = regions.emplace(c.region, &c); !inserted) {
      diagnostics.error(c.region_line, c.key + ".region",
                        "duplicate region \"" + c.region + "\" (" + it->second->key + ", line " +
                            std::to_string(it->second->region_line) + ")");
    }
  }
  if (!complete) return;
  const auto own = regions.find(shipping.identity.region);
  if (own == regions.end()) {
    diagnostics.error(
        d.collectors.front().line, "collectors",
        "no [[collectors]] for this agent's region \"" + shipping.identity.region + "\" (identity.region)");
    return;
  }
  auto add = [&](const CollectorsDraft& c) {
    for (const std::string& text : c.addresses) {
      ship::CollectorAddress address;
      (void)cfg::split_host_port(text, address.host, address.port);  // checked by the table
      shipping.collectors.push_back(std::move(address));
    }
  };
  add(*own->second);
  if (d.allow_cross_region) {
    for (const CollectorsDraft& c : d.collectors) {
      if (c.region != shipping.identity.region) add(c);
    }
  }
}

}  // namespace

std::vector<platform::config::KeyInfo> config_keys() {
  return cfg::key_infos(std::span<const cfg::Key<Draft>>(kKeys));
}

std::string config_reference_markdown() { return cfg::render_markdown(config_keys()); }

// The file, or with `text` set that text under the file's name.
static AgentConfig load_config(const std::filesystem::path& file, std::optional<std::string_view> text) {
  Draft d;
  // The command line with no arguments is the default configuration.
  d.options = parse_args({}).value();
  d.ship.spool.dir = "/var/lib/vantage-agent/spool";
  cfg::Diagnostics diagnostics(file.string());
  cfg::load(file, std::span<const cfg::Key<Draft>>(kKeys), d, diagnostics, text);
  build_privacy(d, diagnostics);
  build_targets(d, diagnostics);
  build_shipping(d, diagnostics);
  build_clock(d, diagnostics);
  build_stamp_reflector(d, diagnostics);

  AgentConfig result;
  result.log_level = d.log_level;
  if (!diagnostics.empty()) {
    result.errors = diagnostics.errors();
    return result;
  }
  MeasurementConfig& m = d.options.measurement;
  if (std::any_of(m.targets.begin(), m.targets.end(), [](const ProbeTargetSpec& t) { return t.client; })) {
    m.privacy = d.privacy;
  }
  if (!d.reflector_enabled) {
    m.reflector.reset();
  } else {
    m.reflector->kernel_timestamps = m.kernel_timestamps;
    if (d.reflector_rate) {
      m.reflector->rate_limit = reflector_rate_limit(*d.reflector_rate);
    }
  }
  if (d.stamp_enabled) {
    d.stamp.kernel_timestamps = m.kernel_timestamps;
    m.stamp_reflector = std::move(d.stamp);
  }
  ship::ShipperConfig& shipping = d.ship;
  if (d.spool_max_kb) {
    set_spool_bound(shipping.spool, *d.spool_max_kb);
  }
  if (!shipping.collectors.empty()) {
    shipping.capabilities = capabilities_for(m, d.accept_target_lists);
    shipping.reflectors = announced_reflectors(m, d.announce);
    shipping.resolve = m.resolve;  // one schedule for every name the agent resolves
    d.options.shipping = std::move(shipping);
  }
  result.options = std::move(d.options);
  return result;
}

AgentConfig load_config(const std::filesystem::path& file) { return load_config(file, std::nullopt); }

AgentConfig parse_config(std::string_view text, const std::string& name) { return load_config(name, text); }

}  // namespace vantage::agent
