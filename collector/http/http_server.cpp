#include "collector/http/http_server.hpp"

// The only translation unit that includes cpp-httplib (header-only, plain HTTP: no TLS, zlib or
// brotli). Its default pool has a thread per core and at least eight; two serve this load.
#define CPPHTTPLIB_THREAD_POOL_COUNT 2
#include <httplib.h>

#include <chrono>
#include <thread>

#include "collector/http/metrics.hpp"
#include "collector/http/prometheus_text.hpp"
#include "collector/http/status_page.hpp"
#include "platform/clock.hpp"

namespace vantage::collector::http {

struct HttpServer::Impl {
  HttpConfig config;
  LiveView& view;
  const IngestServer& ingest;
  struct Listener {
    std::unique_ptr<httplib::Server> server;
    std::thread thread;
    asio::ip::tcp::endpoint bound;
  };
  std::vector<Listener> listeners;

  Impl(HttpConfig c, LiveView& v, const IngestServer& i) : config(std::move(c)), view(v), ingest(i) {}

  void routes(httplib::Server& s) {
    s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      const std::int64_t now = platform::realtime_ns();
      res.set_content(render_metrics(view.snapshot(now), ingest.counters(), ingest.sink_name(), now),
                      kPrometheusContentType);
    });
    s.Get("/api/status", [this](const httplib::Request&, httplib::Response& res) {
      const std::int64_t now = platform::realtime_ns();
      res.set_header("Cache-Control", "no-store");
      res.set_content(render_status_json(view.snapshot(now), ingest.counters(), now), "application/json");
    });
    s.Get("/", [](const httplib::Request&, httplib::Response& res) {
      const std::string_view page = status_page_html();
      res.set_header("Content-Security-Policy",
                     "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                     "connect-src 'self'; img-src 'self' data:");
      res.set_content(page.data(), page.size(), "text/html; charset=utf-8");
    });
  }
};

HttpServer::HttpServer(HttpConfig config, LiveView& view, const IngestServer& ingest)
    : impl_(std::make_unique<Impl>(std::move(config), view, ingest)) {}

HttpServer::~HttpServer() { stop(); }

platform::Status HttpServer::start() {
  for (const auto& endpoint : impl_->config.listen) {
    Impl::Listener l;
    l.server = std::make_unique<httplib::Server>();
    l.server->new_task_queue = [] { return new httplib::ThreadPool(CPPHTTPLIB_THREAD_POOL_COUNT); };
    impl_->routes(*l.server);
    const std::string host = endpoint.address().to_string();
    int port = endpoint.port();
    bool bound = false;
    if (port == 0) {
      port = l.server->bind_to_any_port(host);
      bound = port > 0;
    } else {
      bound = l.server->bind_to_port(host, port);
    }
    if (!bound) {
      stop();
      const std::string shown = endpoint.address().is_v6() ? "[" + host + "]" : host;
      return platform::Status::error("http: cannot listen on " + shown + ":" + std::to_string(endpoint.port()) +
                                         " (address in use, or not an address of this host)",
                                     platform::Errc::kIo);
    }
    l.bound = asio::ip::tcp::endpoint(endpoint.address(), static_cast<std::uint16_t>(port));
    httplib::Server* server = l.server.get();
    l.thread = std::thread([server] { server->listen_after_bind(); });
    impl_->listeners.push_back(std::move(l));
    // httplib's stop() does nothing until the accept loop runs, so a stop() right after start()
    // would leave the thread running; wait for the loop (it starts at once).
    for (int i = 0; i < 5000 && !server->is_running(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  return platform::Status();
}

void HttpServer::stop() {
  for (auto& l : impl_->listeners) l.server->stop();
  for (auto& l : impl_->listeners) {
    if (l.thread.joinable()) l.thread.join();
  }
  impl_->listeners.clear();
}

std::vector<asio::ip::tcp::endpoint> HttpServer::local_endpoints() const {
  std::vector<asio::ip::tcp::endpoint> out;
  for (const auto& l : impl_->listeners) out.push_back(l.bound);
  return out;
}

}  // namespace vantage::collector::http
