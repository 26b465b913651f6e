// The collector's HTTP side on its own port(s): /metrics (Prometheus), / (the status page),
// /api/status and /api/matrix (its JSON) and /api/pair (a PoP pair's drill-down). Served by
// cpp-httplib; reads the live view and the ingest's counters, and only /api/pair reads the store
// (on a read-only connection of its own, so the store thread's writes never wait for a browser).
#pragma once

#include <asio/ip/tcp.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "collector/ingest_server.hpp"
#include "collector/live_view.hpp"

namespace vantage::collector::http {

// Every request is a peer's: its size, its time and the connections it holds are bounded, so no
// client (a scraper gone wrong, a 1 GiB POST, a slowloris) can take memory, threads or file
// descriptors from the ingest. Defaults suit a scrape every few seconds and a browser or two.
struct HttpLimits {
  // Bytes a connection may send in all (request lines, headers, and any body): past it the
  // connection is closed. Requests are GETs of a few hundred bytes.
  std::size_t connection_bytes = 256u << 10;
  // httplib's own bound on a request body it would read (none of the routes takes one).
  std::size_t payload_max_length = 4u << 10;
  // A connection is closed this long after it was accepted, whatever it is doing.
  std::chrono::milliseconds connection_lifetime{30'000};
  // Each read and write, and the wait for the next request on a kept-alive connection.
  std::chrono::seconds read_timeout{5}, write_timeout{5}, keep_alive_timeout{5};
  std::size_t keep_alive_max_requests = 10;
  // Worker threads per listener, and connections accepted but not yet finished (queued or
  // served); a connection past that is closed at once, unread.
  std::size_t threads = 2;
  std::size_t max_connections = 64;
};

struct HttpConfig {
  std::vector<asio::ip::tcp::endpoint> listen;  // empty: no HTTP
  std::string database;                         // the SQLite store /api/pair reads; empty: none
  HttpLimits limits;
};

// What the limits did, across listeners.
struct HttpCounters {
  std::uint64_t requests = 0;
  std::uint64_t refused_methods = 0;    // answered 405 without reading a body
  std::uint64_t oversized = 0;          // connections closed at connection_bytes
  std::uint64_t expired = 0;            // connections closed at connection_lifetime
  std::uint64_t shed_connections = 0;   // closed unread at max_connections
};

// Threads: one accept thread per listener and a small bounded worker pool each.
class HttpServer {
 public:
  HttpServer(HttpConfig config, LiveView& view, const IngestServer& ingest);
  ~HttpServer();  // stop()

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds every listener; on failure the message names the address or port at fault.
  [[nodiscard]] platform::Status start();
  void stop();

  // Bound endpoints (port 0 resolved), valid after start().
  std::vector<asio::ip::tcp::endpoint> local_endpoints() const;
  HttpCounters counters() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vantage::collector::http
