// The collector's JetStream sink: each verified batch frame is published to a NATS JetStream
// stream (subject <prefix>.<region>) and counts as stored only once JetStream acked it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "collector/store/batch_sink.hpp"

namespace vantage::collector::store {

struct JetStreamOptions {
  std::vector<std::string> servers;  // nats://host:port; the client reconnects across them
  std::string stream = "VANTAGE";
  std::string subject_prefix = "vantage.telemetry";  // batches go to <prefix>.<region>
  // How long store() waits for all PubAcks of a group; what is not acked by then fails (the
  // agents resend, and the Nats-Msg-Id makes that safe within the duplicate window).
  std::chrono::milliseconds publish_timeout{5000};
  std::chrono::milliseconds connect_timeout{2000};      // per server and attempt, and API calls
  std::chrono::milliseconds reconnect_wait{250};        // between rounds over the server list
  std::chrono::milliseconds duplicate_window{120'000};  // of a stream this sink creates
  int replicas = 1;                                     // of a stream this sink creates
  std::string client_name = "vantage-collector";
};

// Headers on every message (besides the frame bytes as the payload).
inline constexpr const char* kHeaderAgent = "Vantage-Agent";
inline constexpr const char* kHeaderRegion = "Vantage-Region";
inline constexpr const char* kHeaderPop = "Vantage-Pop";
inline constexpr const char* kHeaderSeq = "Vantage-Seq";
inline constexpr const char* kHeaderMsgId = "Nats-Msg-Id";  // "<agent>/<seq>": JetStream de-dup

// Threads: store() on the ingest's store thread; the NATS client runs its own threads for the
// socket, reconnects and acks, which only touch state under the sink's mutex.
class JetStreamSink final : public BatchSink {
 public:
  // Starts the connection; a server that is down is not an error (the client keeps trying and
  // store() fails batches until it is up). Bad options (no server, a malformed URL) are.
  static Result<std::unique_ptr<JetStreamSink>> connect(const JetStreamOptions& options);

  ~JetStreamSink() override;
  JetStreamSink(const JetStreamSink&) = delete;
  JetStreamSink& operator=(const JetStreamSink&) = delete;

  // Publishes the whole group asynchronously and waits (at most publish_timeout) for the acks:
  // kStored per new message, kDuplicate when JetStream already had its Nats-Msg-Id, kFailed for
  // an error or a missing ack. An error for the whole call when nothing could be published (not
  // connected, the stream unavailable).
  Result<std::vector<StoreOutcome>> store(std::span<const IncomingBatch> batches) override;
  const char* name() const noexcept override { return "jetstream"; }

  // "<prefix>.<region>"
  std::string subject(std::string_view region) const;

  struct State;

 private:
  explicit JetStreamSink(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace vantage::collector::store
