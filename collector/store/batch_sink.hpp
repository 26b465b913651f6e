// Where the collector's verified batches go: the embedded SQLite store, or a JetStream stream
// for fleets that outgrow one machine. The ingest acks an agent's batch only after its sink
// reported it durable.
#pragma once

#include <span>
#include <vector>

#include "collector/store/sqlite_store.hpp"

namespace vantage::collector::store {

// Threads: the ingest's store thread alone calls store(); name() from any thread.
class BatchSink {
 public:
  virtual ~BatchSink() = default;

  // Makes the batches durable and returns one outcome per batch, in order. An error fails the
  // whole call (nothing to ack; every agent is told to retry later); an outcome of kFailed fails
  // that batch alone.
  virtual Result<std::vector<StoreOutcome>> store(std::span<const IncomingBatch> batches) = 0;

  // "sqlite", "jetstream": the label of the sink's latency in the collector's metrics.
  virtual const char* name() const noexcept = 0;
};

// The SQLite store as a sink: one transaction (one fsync) per call.
class SqliteSink final : public BatchSink {
 public:
  explicit SqliteSink(SqliteStore store) : store_(std::move(store)) {}
  Result<std::vector<StoreOutcome>> store(std::span<const IncomingBatch> batches) override {
    return store_.store(batches);
  }
  const char* name() const noexcept override { return "sqlite"; }
  SqliteStore& sqlite() noexcept { return store_; }

 private:
  SqliteStore store_;
};

}  // namespace vantage::collector::store
