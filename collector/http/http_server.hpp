// The collector's HTTP side on its own port(s): /metrics (Prometheus), / (the status page) and
// /api/status (its JSON). Served by cpp-httplib; reads the live view and the ingest's counters,
// never the store.
#pragma once

#include <asio/ip/tcp.hpp>

#include <memory>
#include <string>
#include <vector>

#include "collector/ingest_server.hpp"
#include "collector/live_view.hpp"

namespace vantage::collector::http {

struct HttpConfig {
  std::vector<asio::ip::tcp::endpoint> listen;  // empty: no HTTP
};

// Threads: one accept thread per listener and a small worker pool each (requests are short and
// rare: a scrape every few seconds, a browser every two).
class HttpServer {
 public:
  HttpServer(HttpConfig config, LiveView& view, const IngestServer& ingest);
  ~HttpServer();  // stop()

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds every listener; the error names the address at fault.
  // On failure the message names the address or port at fault.
  [[nodiscard]] platform::Status start();
  void stop();

  // Bound endpoints (port 0 resolved), valid after start().
  std::vector<asio::ip::tcp::endpoint> local_endpoints() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vantage::collector::http
