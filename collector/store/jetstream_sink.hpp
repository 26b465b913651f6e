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

// See JetStreamOptions::duplicate_window and the README ("JetStream: what is guaranteed").
inline constexpr std::chrono::milliseconds kDefaultDuplicateWindow{10 * 60 * 1000};

struct JetStreamOptions {
  std::vector<std::string> servers;  // nats://host:port; the client reconnects across them
  std::string stream = "VANTAGE";
  std::string subject_prefix = "vantage.telemetry";  // batches go to <prefix>.<region>
  // How long store() waits for all PubAcks of a group; what is not acked by then fails (the
  // agents resend: the Nats-Msg-Id drops that within the duplicate window, the consumer's
  // store drops it at any distance, see the README's JetStream guarantee).
  std::chrono::milliseconds publish_timeout{5000};
  std::chrono::milliseconds connect_timeout{2000};      // per server and attempt, and API calls
  std::chrono::milliseconds reconnect_wait{250};        // between rounds over the server list
  // Of a stream this sink creates. JetStream keeps one entry per message id published within the
  // window (about 100 bytes each plus the id), so one hour at 10,000 batches/s is ~4.3 GB; with
  // the store deduping on the batch key the window only trims duplicates out of the stream.
  std::chrono::milliseconds duplicate_window{kDefaultDuplicateWindow};
  int replicas = 1;                                     // of a stream this sink creates
  std::string client_name = "vantage-collector";
};

// Headers on every message (besides the frame bytes as the payload).
inline constexpr const char* kHeaderAgent = "Vantage-Agent";
inline constexpr const char* kHeaderRegion = "Vantage-Region";
inline constexpr const char* kHeaderPop = "Vantage-Pop";
inline constexpr const char* kHeaderSeq = "Vantage-Seq";
inline constexpr const char* kHeaderIncarnation = "Vantage-Incarnation";  // 32 hex digits
inline constexpr const char* kHeaderMsgId = "Nats-Msg-Id";  // see message_id(): JetStream de-dup

// The Nats-Msg-Id of a batch, its key: "<agent>/<incarnation hex>-<seq>", or "<agent>/<seq>" for
// the legacy incarnation (as before incarnations, so messages from older collectors dedupe with
// it). Unambiguous: the part after the last '/' is digits alone only for the legacy form.
std::string message_id(std::string_view agent, const Incarnation& incarnation, std::uint64_t seq);

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
