// The SQLite store as a BatchSink (one transaction, so one fsync, per store() call), for callers
// that need no more of SQLite than that: they do not include the store's header.
#pragma once

#include <memory>
#include <string>

#include "collector/store/batch_sink.hpp"

namespace vantage::collector::store {

// Opens (creating or migrating) the database at path; retention_days as OpenOptions has it.
Result<std::unique_ptr<BatchSink>> open_sqlite_sink(const std::string& path, int retention_days);

}  // namespace vantage::collector::store
