#include "collector/store/sqlite_sink.hpp"

#include <utility>

#include "collector/store/sqlite_store.hpp"

namespace vantage::collector::store {

namespace {

class SqliteSink final : public BatchSink {
 public:
  explicit SqliteSink(SqliteStore store) : store_(std::move(store)) {}
  Result<std::vector<StoreOutcome>> store(std::span<const IncomingBatch> batches) override {
    return store_.store(batches);
  }
  const char* name() const noexcept override { return "sqlite"; }
  std::optional<std::int64_t> last_commit_ns() const noexcept override { return store_.last_commit_ns(); }

 private:
  SqliteStore store_;
};

}  // namespace

Result<std::unique_ptr<BatchSink>> open_sqlite_sink(const std::string& path, int retention_days) {
  OpenOptions options;
  options.retention_days = retention_days;
  auto opened = SqliteStore::open(path, options);
  if (!opened) return opened.status();
  return std::unique_ptr<BatchSink>(std::make_unique<SqliteSink>(std::move(*opened)));
}

}  // namespace vantage::collector::store
