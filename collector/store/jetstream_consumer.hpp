// Reads batches back from the collector's JetStream stream with a pull consumer: each message's
// frame (in an 8-byte-aligned copy, ready for the Verifier) with the headers the sink set.
// `vantage-collector consume` (collector/cli.cpp) is its command line; with --db it writes them
// into a SQLite store, acking a group only once it is committed.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "collector/store/incoming_batch.hpp"

namespace vantage::collector::store {

struct ConsumerOptions {
  std::vector<std::string> servers;  // nats://host:port
  std::string stream = "VANTAGE";
  std::string durable;             // empty: an ephemeral consumer that starts at the stream's first message
  std::int64_t timeout_ms = 2000;  // connect, API calls and each fetch
};

struct ConsumedMessage {
  std::uint64_t stream_seq = 0;    // 0 when the metadata could not be read
  std::int64_t published_ns = 0;   // when JetStream stored it (wall clock); 0 when unknown
  std::span<const std::uint8_t> frame;
  // The sink's headers; empty when absent (incarnation: a message from a collector older than
  // incarnations, so the legacy one).
  std::string agent, region, pop, seq, incarnation, msg_id;
};

class JetStreamConsumer {
 public:
  // Connects, looks the stream up and subscribes. The error reads "<what>: <NATS status>[ (JetStream
  // error N)]", e.g. "stream VANTAGE: not found (JetStream error 10059)".
  static Result<std::unique_ptr<JetStreamConsumer>> open(const ConsumerOptions& options);
  ~JetStreamConsumer();
  JetStreamConsumer(const JetStreamConsumer&) = delete;
  JetStreamConsumer& operator=(const JetStreamConsumer&) = delete;

  const std::string& subject() const noexcept;  // the stream's first subject
  std::uint64_t messages_at_open() const noexcept;

  enum class Fetched { kMessages, kTimeout, kError };
  // Fetches up to 256 messages and hands each to on_message, then acks it; kTimeout when none
  // came within timeout_ms, kError with error set.
  Fetched fetch(const std::function<void(const ConsumedMessage&)>& on_message, std::string& error);
  // The same for the whole fetched group at once: acked only when on_group returns true (it made
  // them durable); otherwise none is acked and JetStream redelivers them after the consumer's ack
  // wait (to this consumer, or to whoever resumes a durable one).
  Fetched fetch_group(const std::function<bool(std::span<const ConsumedMessage>)>& on_group, std::string& error);
  // A fetched message had no more pending behind it.
  bool caught_up() const noexcept;

  struct State;

 private:
  explicit JetStreamConsumer(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace vantage::collector::store
