// What every sink takes and gives back: a verified batch with the identity its connection
// authenticated, and per batch whether it is now durable. Sink-neutral: nothing here knows SQLite.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "platform/result.hpp"
#include "schemas/wire_string.hpp"
#include "vantage/telemetry_generated.h"

namespace vantage::collector::store {

struct IncomingBatch {
  const vantage::wire::Batch* batch = nullptr;  // passed the FlatBuffers Verifier; not null
  // Identity from the connection (client certificate / Hello), not from the batch's own fields:
  // that is what the collector authenticated. An empty region or pop falls back to the batch's.
  std::string_view agent_id;
  std::string_view region;
  std::string_view pop;
  std::string_view arch;              // from Hello; empty keeps the stored value
  std::string_view software_version;  // from Hello; empty keeps the stored value
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
  kDuplicate,  // (agent, seq) was already stored: ack it as stored, nothing written
  kFailed,     // not stored (a sink that stores batches one by one): the agent retries it
};

// Every sink and store call answers with the project's one result type: a value, or a Status
// whose message names the database or server and the library's own message.
using platform::Result;

// The protocol as every view of the data names it: "udp_echo", "tcp_connect", "icmp"; a newer
// agent's protocol is "unknown" (stored and labelled, not lost). The index is the store's code.
inline constexpr const char* kProtocolNames[] = {"udp_echo", "tcp_connect", "icmp", "unknown"};

inline std::uint8_t protocol_code(wire::Protocol p) noexcept {
  switch (p) {
    case wire::Protocol::UdpEcho:
      return 0;
    case wire::Protocol::TcpConnect:
      return 1;
    case wire::Protocol::Icmp:
      return 2;
  }
  return 3;
}

inline const char* protocol_name(wire::Protocol p) noexcept { return kProtocolNames[protocol_code(p)]; }

}  // namespace vantage::collector::store
