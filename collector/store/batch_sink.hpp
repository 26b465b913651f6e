// Where the collector's verified batches go: the embedded SQLite store, or a JetStream stream
// for fleets that outgrow one machine. The ingest acks an agent's batch only after its sink
// reported it durable.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "collector/store/incoming_batch.hpp"

namespace vantage::collector::store {

// Threads: the ingest's store thread alone calls store() and last_commit_ns(); name() from any
// thread.
class BatchSink {
 public:
  virtual ~BatchSink() = default;

  // Makes the batches durable and returns one outcome per batch, in order. An error fails the
  // whole call (nothing to ack; every agent is told to retry later); an outcome of kFailed fails
  // that batch alone.
  virtual Result<std::vector<StoreOutcome>> store(std::span<const IncomingBatch> batches) = 0;

  // "sqlite", "jetstream": the label of the sink's latency in the collector's metrics.
  virtual const char* name() const noexcept = 0;

  // How long the durable write of the last store() call took, for a sink that measures it apart
  // from the rest of the call (SQLite: its COMMIT); empty: the caller times the whole call.
  virtual std::optional<std::int64_t> last_commit_ns() const noexcept { return std::nullopt; }
};

}  // namespace vantage::collector::store
