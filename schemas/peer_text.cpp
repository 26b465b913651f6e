#include "schemas/peer_text.hpp"

#include "platform/log.hpp"
#include "schemas/wire_string.hpp"

namespace vantage::wire {

namespace {

// Enough of a bad value to recognise it, never enough to flood a log line or an Ack.
constexpr std::size_t kShownBytes = 40;

std::string indexed(std::string_view vector, std::size_t i, std::string_view field) {
  std::string out(vector);
  out += '[';
  out += std::to_string(i);
  out += "].";
  out += field;
  return out;
}

}  // namespace

std::string to_peer_text(std::string_view text, PeerText kind) {
  const std::size_t bound = max_bytes(kind);
  if (platform::check_text(text, bound)) return std::string(text);
  // An escape is at most 4 bytes per input byte (\xNN), plus "..." when cut: this always fits.
  return platform::escape_for_log(text, (bound - 3) / 4);
}

std::optional<PeerTextFault> check_peer_text(std::string_view field, std::string_view text, PeerText kind) {
  const std::size_t bound = max_bytes(kind);
  const platform::TextVerdict verdict = platform::check_text(text, bound);
  if (verdict) return std::nullopt;
  PeerTextFault fault;
  fault.fault = verdict.fault;
  fault.reason = std::string(field) + " \"" + platform::escape_for_log(text, kShownBytes) +
                 "\": " + platform::describe(verdict, bound);
  return fault;
}

std::optional<PeerTextFault> check_hello_text(const Hello& hello) {
  const struct {
    const char* field;
    const flatbuffers::String* text;
    PeerText kind;
  } fields[] = {
      {"Hello.agent_id", hello.agent_id(), PeerText::kAgentId},
      {"Hello.region", hello.region(), PeerText::kRegion},
      {"Hello.pop", hello.pop(), PeerText::kPop},
      {"Hello.software_version", hello.software_version(), PeerText::kSoftwareVersion},
      {"Hello.arch", hello.arch(), PeerText::kArch},
  };
  for (const auto& f : fields) {
    if (auto fault = check_peer_text(f.field, str(f.text), f.kind)) return fault;
  }
  return std::nullopt;
}

std::optional<PeerTextFault> check_batch_text(const Batch& batch) {
  const struct {
    const char* field;
    const flatbuffers::String* text;
    PeerText kind;
  } fields[] = {
      {"Batch.agent_id", batch.agent_id(), PeerText::kAgentId},
      {"Batch.region", batch.region(), PeerText::kRegion},
      {"Batch.pop", batch.pop(), PeerText::kPop},
  };
  for (const auto& f : fields) {
    if (auto fault = check_peer_text(f.field, str(f.text), f.kind)) return fault;
  }
  // Field names are built only for a value that fails: a good batch costs one scan per string.
  if (const auto* latency = batch.latency()) {
    for (flatbuffers::uoffset_t i = 0; i < latency->size(); ++i) {
      const std::string_view target = str(latency->Get(i)->target());
      if (platform::check_text(target, max_bytes(PeerText::kTarget))) continue;
      return check_peer_text(indexed("Batch.latency", i, "target"), target, PeerText::kTarget);
    }
  }
  if (const auto* load = batch.load()) {
    for (flatbuffers::uoffset_t i = 0; i < load->size(); ++i) {
      const LoadSample* sample = load->Get(i);
      const std::string_view arch = str(sample->arch());
      if (!platform::check_text(arch, max_bytes(PeerText::kArch))) {
        return check_peer_text(indexed("Batch.load", i, "arch"), arch, PeerText::kArch);
      }
      if (const auto* net = sample->net()) {
        for (flatbuffers::uoffset_t k = 0; k < net->size(); ++k) {
          const std::string_view name = str(net->Get(k)->name());
          if (platform::check_text(name, max_bytes(PeerText::kInterface))) continue;
          return check_peer_text(indexed("Batch.load", i, "net") + "[" + std::to_string(k) + "].name", name,
                                 PeerText::kInterface);
        }
      }
      if (const auto* temperatures = sample->temperatures()) {
        for (flatbuffers::uoffset_t k = 0; k < temperatures->size(); ++k) {
          const std::string_view sensor = str(temperatures->Get(k)->sensor());
          if (platform::check_text(sensor, max_bytes(PeerText::kSensor))) continue;
          return check_peer_text(indexed("Batch.load", i, "temperatures") + "[" + std::to_string(k) + "].sensor",
                                 sensor, PeerText::kSensor);
        }
      }
    }
  }
  return std::nullopt;
}

}  // namespace vantage::wire
