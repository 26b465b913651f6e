// What every sink takes and gives back: a verified batch with the identity its connection
// authenticated, and per batch whether it is now durable. Sink-neutral: nothing here knows SQLite.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "platform/result.hpp"
#include "schemas/wire_string.hpp"
#include "vantage/telemetry_generated.h"

namespace vantage::collector::store {

// The agent's spool incarnation from its Hello (wire::Incarnation): with the agent and the seq it
// identifies a batch, so a reinstalled agent whose seq starts again at 1 ships new batches, not
// duplicates. All zero is the legacy incarnation: what an agent that sends none gets, keyed by
// (agent, seq) as before incarnations existed.
using Incarnation = std::array<std::uint8_t, 16>;
inline constexpr Incarnation kLegacyIncarnation{};

inline Incarnation incarnation_of(const wire::Hello& hello) {
  Incarnation out{};
  if (const wire::Incarnation* i = hello.incarnation()) {
    for (std::size_t k = 0; k < out.size(); ++k) out[k] = i->bytes()->Get(static_cast<flatbuffers::uoffset_t>(k));
  }
  return out;
}

// 32 lowercase hex digits, byte 0 first: how logs, headers, the CLI and the status JSON show it.
inline std::string incarnation_hex(const Incarnation& incarnation) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(2 * incarnation.size(), '0');
  for (std::size_t k = 0; k < incarnation.size(); ++k) {
    out[2 * k] = kDigits[incarnation[k] >> 4];
    out[2 * k + 1] = kDigits[incarnation[k] & 0xf];
  }
  return out;
}

// The inverse of incarnation_hex (either case); empty for anything but 32 hex digits.
inline std::optional<Incarnation> parse_incarnation_hex(std::string_view hex) {
  if (hex.size() != 2 * Incarnation{}.size()) return std::nullopt;
  const auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  Incarnation out{};
  for (std::size_t k = 0; k < out.size(); ++k) {
    const int hi = nibble(hex[2 * k]), lo = nibble(hex[2 * k + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[k] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return out;
}

struct IncomingBatch {
  const vantage::wire::Batch* batch = nullptr;  // passed the FlatBuffers Verifier; not null
  // Identity from the connection (client certificate / Hello), not from the batch's own fields:
  // that is what the collector authenticated. An empty region or pop falls back to the batch's.
  std::string_view agent_id;
  std::string_view region;
  std::string_view pop;
  std::string_view arch;              // from Hello; empty keeps the stored value
  std::string_view software_version;  // from Hello; empty keeps the stored value
  Incarnation incarnation{};          // from Hello; with agent_id and the batch's seq, the batch key
  std::int64_t received_ns = 0;       // collector wall clock
  // The verified Frame (without its length prefix) that holds `batch`, for sinks that forward
  // the bytes as they arrived (JetStream); SQLite stores fields and ignores it.
  std::span<const std::uint8_t> frame;

  // The region and PoP the batch is filed under: the connection's, else the batch's own.
  std::string_view filed_region() const { return region.empty() ? wire::str(batch->region()) : region; }
  std::string_view filed_pop() const { return pop.empty() ? wire::str(batch->pop()) : pop; }
};

enum class StoreOutcome : std::uint8_t {
  kStored,     // committed by this call
  kDuplicate,  // (agent, incarnation, seq) was already stored: ack it as stored, nothing written
  kFailed,     // not stored (a sink that stores batches one by one): the agent retries it
};

// Every sink and store call answers with the project's one result type: a value, or a Status
// whose message names the database or server and the library's own message.
using platform::Result;

// The protocol as every view of the data names it: "udp_echo", "tcp_connect", "icmp", "stamp"; a
// newer agent's protocol is "unknown" (stored and labelled, not lost). The index is the store's
// code.
inline constexpr const char* kProtocolNames[] = {"udp_echo", "tcp_connect", "icmp", "stamp", "unknown"};

inline std::uint8_t protocol_code(wire::Protocol p) noexcept {
  switch (p) {
    case wire::Protocol::UdpEcho:
      return 0;
    case wire::Protocol::TcpConnect:
      return 1;
    case wire::Protocol::Icmp:
      return 2;
    case wire::Protocol::Stamp:
      return 3;
  }
  return 4;
}

inline const char* protocol_name(wire::Protocol p) noexcept { return kProtocolNames[protocol_code(p)]; }

}  // namespace vantage::collector::store
