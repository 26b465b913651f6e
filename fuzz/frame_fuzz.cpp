// libFuzzer target: the collector's view of a connection's bytes. The input is split into
// chunks as a network might deliver them, fed to FrameReader, and every verified frame is read
// field by field as ingest reads it. A crash, leak or sanitizer report here is a remote bug.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "schemas/frame_codec.hpp"

namespace {

volatile std::uint64_t sink;

void touch(const flatbuffers::String* s) {
  if (s != nullptr) {
    for (const char c : s->string_view()) sink = sink + static_cast<unsigned char>(c);
  }
}

std::uint64_t bits(double v) {
  std::uint64_t out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}

void walk(const vantage::wire::Frame& frame) {
  using namespace vantage::wire;
  if (const Hello* h = frame.message_as_Hello()) {
    touch(h->agent_id());
    touch(h->region());
    touch(h->pop());
    touch(h->software_version());
    touch(h->arch());
    sink = sink + h->protocol_version() + h->capabilities();
  } else if (const Batch* b = frame.message_as_Batch()) {
    touch(b->agent_id());
    touch(b->region());
    touch(b->pop());
    // Untrusted times: unsigned arithmetic, as ingest must (a signed difference can overflow).
    sink = sink + b->seq() +
           (static_cast<std::uint64_t>(b->interval_end_ns()) -
            static_cast<std::uint64_t>(b->interval_start_ns()));
    if (b->latency() != nullptr) {
      for (const LatencySummary* l : *b->latency()) {
        touch(l->target());
        sink = sink + l->sent() + l->received() + l->lost() + static_cast<std::uint64_t>(l->p99_ns());
        if (l->histogram() != nullptr) {
          for (const HistogramBucket* bucket : *l->histogram())
            sink = sink + bucket->index() + bucket->count();
        }
      }
    }
    if (b->load() != nullptr) {
      for (const LoadSample* s : *b->load()) {
        touch(s->arch());
        if (s->cpus() != nullptr) {
          for (const CpuUsage* c : *s->cpus()) sink = sink + c->freq_khz();
        }
        if (s->memory() != nullptr) sink = sink + s->memory()->total_bytes();
        if (s->net() != nullptr) {
          for (const NetInterface* n : *s->net()) {
            touch(n->name());
            // Untrusted doubles: read their bits, never convert them (NaN or 1e54 to an integer is UB).
            if (n->rates() != nullptr) sink = sink + bits(n->rates()->rx_bytes_per_s());
          }
        }
        if (s->temperatures() != nullptr) {
          for (const Temperature* t : *s->temperatures()) touch(t->sensor());
        }
      }
    }
    if (b->rtt_samples() != nullptr) {
      for (const RttSample* r : *b->rtt_samples()) sink = sink + r->seq();
    }
  } else if (const Ack* a = frame.message_as_Ack()) {
    touch(a->reason());
    sink = sink + a->seq();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) {
    return 0;
  }
  // The first byte picks the chunk size, so the same stream is also tried split at odd places.
  const std::size_t chunk = 1 + data[0] % 97;
  std::span<const std::uint8_t> rest(data + 1, size - 1);
  vantage::wire::FrameReader reader(64 * 1024);
  while (!rest.empty()) {
    const std::size_t n = chunk < rest.size() ? chunk : rest.size();
    reader.feed(rest.first(n));
    rest = rest.subspan(n);
    for (;;) {
      const vantage::wire::FrameStatus status = reader.next();
      if (status == vantage::wire::FrameStatus::kFrame) {
        walk(*reader.frame());
        continue;
      }
      if (status != vantage::wire::FrameStatus::kNeedMore) {
        return 0;  // the collector closes the connection here
      }
      break;
    }
  }
  return 0;
}
