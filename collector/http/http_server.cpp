#include "collector/http/http_server.hpp"

// The only translation unit that includes cpp-httplib (header-only, plain HTTP: no TLS, zlib or
// brotli). Its stock pool would be a thread per core with an unbounded queue; BoundedPool below
// replaces it. poll(), not select(): with select() httplib answers 500 to every socket numbered
// FD_SETSIZE (1024) or above, which is every HTTP connection once ~1,000 agents are connected.
#define CPPHTTPLIB_THREAD_POOL_COUNT 2
#define CPPHTTPLIB_USE_POLL
#include <httplib.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include "collector/http/metrics.hpp"
#include "collector/http/pop_matrix.hpp"
#include "collector/http/prometheus_text.hpp"
#include "collector/http/status_page.hpp"
#include "platform/clock.hpp"
#include "platform/log.hpp"

namespace vantage::collector::http {

namespace {

struct Counters {
  std::atomic<std::uint64_t> requests{0}, refused_methods{0}, oversized{0}, expired{0}, shed{0};
};

// Set on the thread that runs a connection: the request was refused (its body, if any, was never
// read), so the connection ends after the answer instead of parsing that body as a next request.
thread_local bool t_close_after_response = false;
// Set while BoundedPool runs a connection on the accept thread only to close it.
thread_local bool t_shed = false;
// When the connection being run was accepted (monotonic ns): its lifetime counts from then, so
// time spent queued behind busy workers is part of it.
thread_local std::int64_t t_accepted_ns = 0;

// Range requests are ignored (RFC 9110 lets a server answer the whole representation): httplib
// would otherwise copy the body once per range, and one header of ~4,000 "-," ranges would turn a
// scrape into gigabytes. ConnectionStream already hides "Range:" lines; this is the second guard.
void ignore_ranges(httplib::Request& req) { req.ranges.clear(); }

bool served_method(const std::string& method) { return method == "GET" || method == "HEAD"; }

void refuse_method(httplib::Response& res) {
  res.status = 405;
  res.set_header("Allow", "GET, HEAD");
  res.set_content("method not allowed: this server serves GET and HEAD only\n", "text/plain");
  t_close_after_response = true;
}

// A connection's socket as httplib reads and writes it, cut off at a byte budget and a deadline
// (httplib 0.11 by itself grows a request line without bound and reads any body it is sent).
// One per connection, so bytes read ahead of one request are the next request's, not lost.
class ConnectionStream final : public httplib::Stream {
 public:
  ConnectionStream(socket_t sock, const HttpLimits& limits, std::int64_t deadline_ns, Counters& counters,
                   const std::atomic<bool>& stopping)
      : sock_(sock),
        read_timeout_s_(static_cast<time_t>(limits.read_timeout.count())),
        write_timeout_s_(static_cast<time_t>(limits.write_timeout.count())),
        budget_(limits.connection_bytes),
        deadline_ns_(deadline_ns),
        counters_(counters),
        stopping_(stopping) {}

  bool is_readable() const override { return buffered() || wait_readable(read_timeout_s_); }
  // Waits for bytes in short slices, so a stop() ends the wait (and the connection) at once.
  bool wait_readable(time_t timeout_s) const {
    const std::int64_t until = platform::monotonic_ns() + static_cast<std::int64_t>(timeout_s) * 1'000'000'000;
    while (!stopping_.load(std::memory_order_relaxed) && platform::monotonic_ns() < until) {
      if (httplib::detail::select_read(sock_, 0, 100'000) != 0) return true;  // readable, or an error to read
    }
    return false;
  }
  bool is_writable() const override { return httplib::detail::select_write(sock_, write_timeout_s_, 0) > 0; }
  ssize_t read(char* ptr, std::size_t size) override {
    if (!buffered()) {
      if (expired()) return -1;
      if (budget_ == 0) {
        if (!cut_) counters_.oversized.fetch_add(1, std::memory_order_relaxed);
        cut_ = true;
        return -1;
      }
      if (!is_readable()) return -1;  // the read timeout passed
      const ssize_t n = httplib::detail::read_socket(sock_, buffer_, std::min(sizeof buffer_, budget_), 0);
      if (n <= 0) return n;
      budget_ -= static_cast<std::size_t>(n);
      offset_ = 0;
      length_ = static_cast<std::size_t>(n);
      defuse_range_headers();
    }
    const std::size_t n = std::min(size, length_ - offset_);
    std::memcpy(ptr, buffer_ + offset_, n);
    offset_ += n;
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char* ptr, std::size_t size) override {
    if (expired() || !is_writable()) return -1;
    return httplib::detail::send_socket(sock_, ptr, size, MSG_NOSIGNAL);
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    httplib::detail::get_remote_ip_and_port(sock_, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    httplib::detail::get_local_ip_and_port(sock_, ip, port);
  }
  socket_t socket() const override { return sock_; }

  bool buffered() const noexcept { return offset_ < length_; }

  // httplib parses a Range header with a backtracking std::regex before any handler runs: one
  // header of a few thousand ranges recurses deep enough to overflow a worker's stack (seen under
  // AddressSanitizer at 6 KB). The colon of every "Range:" header is overwritten as the bytes
  // arrive, so httplib skips that line as malformed and the regex never sees it. A match may span
  // reads; its last byte, the one changed, is always in the buffer at hand. (Bytes of a body are
  // scanned too: this server reads no body it uses.)
  void defuse_range_headers() noexcept {
    static constexpr char kPattern[] = "\nrange:";
    for (std::size_t i = 0; i < length_; ++i) {
      const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(buffer_[i])));
      if (c == kPattern[range_match_]) {
        if (++range_match_ == sizeof kPattern - 1) {
          buffer_[i] = '_';
          range_match_ = 0;
        }
      } else {
        range_match_ = c == '\n' ? 1 : 0;
      }
    }
  }
  bool cut() const noexcept { return cut_; }
  bool expired() {
    if (platform::monotonic_ns() < deadline_ns_) return false;
    if (!cut_) counters_.expired.fetch_add(1, std::memory_order_relaxed);
    cut_ = true;
    return true;
  }

 private:
  socket_t sock_;
  time_t read_timeout_s_, write_timeout_s_;
  std::size_t budget_;
  std::int64_t deadline_ns_;
  Counters& counters_;
  const std::atomic<bool>& stopping_;
  char buffer_[4096];
  std::size_t offset_ = 0, length_ = 0;
  std::size_t range_match_ = 0;  // bytes of "\nrange:" matched so far
  bool cut_ = false;
};

// httplib's Server with each connection read through a ConnectionStream. process_and_close_socket
// is httplib's per-connection entry point (a private virtual, which a derived class may override);
// the keep-alive loop follows httplib's own (detail::process_server_socket_core).
class BoundedServer final : public httplib::Server {
 public:
  BoundedServer(const HttpLimits& limits, Counters& counters, const std::atomic<bool>& stopping)
      : limits_(limits), counters_(counters), stopping_(stopping) {}

 private:
  bool process_and_close_socket(socket_t sock) override {
    bool ok = false;
    if (!t_shed) {
      ConnectionStream stream(
          sock, limits_,
          t_accepted_ns +
              std::chrono::duration_cast<std::chrono::nanoseconds>(limits_.connection_lifetime).count(),
          counters_, stopping_);
      const auto keep_alive_s = static_cast<time_t>(limits_.keep_alive_timeout.count());
      for (std::size_t left = limits_.keep_alive_max_requests;
           left > 0 && !stopping_.load(std::memory_order_relaxed) && !stream.expired() &&
           (stream.buffered() || stream.wait_readable(keep_alive_s));
           --left) {
        bool peer_asked_close = false;
        t_close_after_response = false;
        ok = process_request(stream, left == 1, peer_asked_close, ignore_ranges);
        if (!ok || peer_asked_close || t_close_after_response || stream.cut()) break;
      }
    }
    httplib::detail::shutdown_socket(sock);
    httplib::detail::close_socket(sock);
    return ok;
  }

  const HttpLimits& limits_;
  Counters& counters_;
  const std::atomic<bool>& stopping_;
};

// A fixed pool with a bound on connections accepted and not yet finished: past it, a new
// connection is closed on the accept thread without a read, so a flood holds neither memory nor
// file descriptors beyond the bound (the ingest shares the process's descriptor limit).
class BoundedPool final : public httplib::TaskQueue {
 public:
  BoundedPool(std::size_t threads, std::size_t max_connections, Counters& counters)
      : max_connections_(max_connections), counters_(counters) {
    for (std::size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { work(); });
  }
  ~BoundedPool() override = default;

  void enqueue(std::function<void()> fn) override {
    {
      std::lock_guard lock(mutex_);
      if (!shutdown_ && jobs_.size() + busy_ < max_connections_) {
        jobs_.push_back([fn = std::move(fn), accepted = platform::monotonic_ns()] {
          t_accepted_ns = accepted;
          fn();
        });
        cv_.notify_one();
        return;
      }
    }
    counters_.shed.fetch_add(1, std::memory_order_relaxed);
    shed(fn);
  }

  void shutdown() override {
    {
      std::lock_guard lock(mutex_);
      shutdown_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
    // Connections still queued are closed unread.
    for (auto& fn : jobs_) shed(fn);
    jobs_.clear();
  }

 private:
  static void shed(const std::function<void()>& fn) {
    t_shed = true;
    fn();  // BoundedServer::process_and_close_socket: closes the socket at once
    t_shed = false;
  }

  void work() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [this] { return shutdown_ || !jobs_.empty(); });
        if (shutdown_) return;
        fn = std::move(jobs_.front());
        jobs_.pop_front();
        ++busy_;
      }
      fn();
      std::lock_guard lock(mutex_);
      --busy_;
    }
  }

  const std::size_t max_connections_;
  Counters& counters_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;  // guarded by mutex_
  std::size_t busy_ = 0;                    // guarded by mutex_
  bool shutdown_ = false;                   // guarded by mutex_
  std::vector<std::thread> threads_;
};

}  // namespace

struct HttpServer::Impl {
  HttpConfig config;
  LiveView& view;
  const IngestServer& ingest;
  Counters counters;
  std::atomic<bool> stopping{false};
  struct Listener {
    std::unique_ptr<BoundedServer> server;
    std::thread thread;
    asio::ip::tcp::endpoint bound;
  };
  std::vector<Listener> listeners;

  // /api/pair's read-only connection, opened at its first use; one request at a time uses it.
  std::mutex store_mutex;
  std::optional<store::SqliteStore> store;  // guarded by store_mutex

  Impl(HttpConfig c, LiveView& v, const IngestServer& i) : config(std::move(c)), view(v), ingest(i) {}

  // The drill-down's JSON: the store's intervals go into steps as they are read, never held.
  platform::Result<std::string> pair_json(const PairRequest& r) {
    if (config.database.empty()) {
      return platform::Status::error("no SQLite store: the drill-down reads one", platform::Errc::kUnsupported);
    }
    const std::lock_guard lock(store_mutex);
    if (!store) {
      auto opened = store::SqliteStore::open(config.database, {.read_only = true,
                                                                .busy_timeout_ms = 5000,
                                                                .retention_days = 30,
                                                                .cache_kib = 8 * 1024,
                                                                .wall_clock_ns = nullptr});
      if (!opened) return opened.status();
      store.emplace(std::move(*opened));
    }
    PairSteps steps(r);
    const platform::Status read =
        store->pair_history({.agent_id = {}, .pop = r.from, .target = r.to, .protocol = r.protocol,
                             .from_ns = r.since_s * 1'000'000'000, .to_ns = r.until_s * 1'000'000'000},
                            [&steps](const store::PairPoint& p) { steps.add(p); });
    if (!read) {
      store.reset();  // reopened next time: the file may have been replaced
      return read;
    }
    return steps.render_json();
  }

  HttpCounters snapshot() const {
    HttpCounters c;
    c.requests = counters.requests.load(std::memory_order_relaxed);
    c.refused_methods = counters.refused_methods.load(std::memory_order_relaxed);
    c.oversized = counters.oversized.load(std::memory_order_relaxed);
    c.expired = counters.expired.load(std::memory_order_relaxed);
    c.shed_connections = counters.shed.load(std::memory_order_relaxed);
    return c;
  }

  std::string http_metrics() const {
    const HttpCounters c = snapshot();
    PrometheusText out;
    using Type = PrometheusText::Type;
    out.family("vantage_collector_http_requests_total", Type::kCounter, "HTTP requests answered.");
    out.sample("vantage_collector_http_requests_total", {}, static_cast<double>(c.requests));
    out.family("vantage_collector_http_refused_total", Type::kCounter,
               "HTTP connections or requests refused by a limit, by limit.");
    const std::pair<const char*, std::uint64_t> refused[] = {{"method", c.refused_methods},
                                                             {"connection_bytes", c.oversized},
                                                             {"connection_lifetime", c.expired},
                                                             {"max_connections", c.shed_connections}};
    for (const auto& [limit, n] : refused) {
      out.sample("vantage_collector_http_refused_total", {{"limit", limit}}, static_cast<double>(n));
    }
    return out.take();
  }

  void routes(httplib::Server& s) {
    const HttpLimits& limits = config.limits;
    s.set_payload_max_length(limits.payload_max_length);
    s.set_read_timeout(static_cast<time_t>(limits.read_timeout.count()));
    s.set_write_timeout(static_cast<time_t>(limits.write_timeout.count()));
    s.set_keep_alive_timeout(static_cast<time_t>(limits.keep_alive_timeout.count()));
    s.set_keep_alive_max_count(limits.keep_alive_max_requests);
    // Methods other than GET and HEAD are refused before their body is read: when the client
    // asks first (Expect: 100-continue), and otherwise before routing, which would read it.
    s.set_expect_100_continue_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (served_method(req.method)) return 100;
      counters.refused_methods.fetch_add(1, std::memory_order_relaxed);
      refuse_method(res);
      return 405;
    });
    s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      counters.requests.fetch_add(1, std::memory_order_relaxed);
      if (served_method(req.method)) return httplib::Server::HandlerResponse::Unhandled;
      counters.refused_methods.fetch_add(1, std::memory_order_relaxed);
      refuse_method(res);
      return httplib::Server::HandlerResponse::Handled;
    });
    s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      const std::int64_t now = platform::realtime_ns();
      res.set_content(render_metrics(view.snapshot(now), ingest.counters(), ingest.sink_name(), now) +
                          http_metrics(),
                      kPrometheusContentType);
    });
    s.Get("/api/status", [this](const httplib::Request& req, httplib::Response& res) {
      const std::int64_t now = platform::realtime_ns();
      res.set_header("Cache-Control", "no-store");
      res.set_header("X-Content-Type-Options", "nosniff");
      LiveSnapshot snapshot = view.snapshot(now);
      // ?cells=0: the page polls this for the agents and load, and takes the matrix from
      // /api/matrix (the cells of 300 PoPs are ~20 MB here).
      if (req.get_param_value("cells") == "0") snapshot.latency.clear();
      res.set_content(render_status_json(snapshot, ingest.counters(), now), "application/json");
    });
    s.Get("/api/matrix", [this](const httplib::Request&, httplib::Response& res) {
      const std::int64_t now = platform::realtime_ns();
      res.set_header("Cache-Control", "no-store");
      res.set_header("X-Content-Type-Options", "nosniff");
      res.set_content(render_matrix_json(build_pop_matrix(view.snapshot(now), now), now), "application/json");
    });
    s.Get("/api/pair", [this](const httplib::Request& req, httplib::Response& res) {
      res.set_header("Cache-Control", "no-store");
      res.set_header("X-Content-Type-Options", "nosniff");
      const auto error = [&res](int status, std::string_view why) {
        res.status = status;
        res.set_content("{\"error\":" + json_string(why) + "}\n", "application/json");
      };
      const PairRequestOrError parsed = parse_pair_request(req.params, platform::realtime_ns());
      if (!parsed.request) return error(400, parsed.error);
      const PairRequest& r = *parsed.request;
      auto json = pair_json(r);
      if (!json) return error(json.code() == platform::Errc::kUnsupported ? 404 : 503, json.error());
      res.set_content(std::move(*json), "application/json");
    });
    s.Get("/", [](const httplib::Request&, httplib::Response& res) {
      const std::string_view page = status_page_html();
      res.set_header("Content-Security-Policy",
                     "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                     "connect-src 'self'; img-src 'self' data:");
      res.set_header("X-Content-Type-Options", "nosniff");
      res.set_content(page.data(), page.size(), "text/html; charset=utf-8");
    });
  }
};

HttpServer::HttpServer(HttpConfig config, LiveView& view, const IngestServer& ingest)
    : impl_(std::make_unique<Impl>(std::move(config), view, ingest)) {}

HttpServer::~HttpServer() { stop(); }

platform::Status HttpServer::start() {
  impl_->stopping.store(false);
  for (const auto& endpoint : impl_->config.listen) {
    Impl::Listener l;
    l.server = std::make_unique<BoundedServer>(impl_->config.limits, impl_->counters, impl_->stopping);
    const HttpLimits& limits = impl_->config.limits;
    Counters& counters = impl_->counters;
    l.server->new_task_queue = [&limits, &counters] {
      return new BoundedPool(std::max<std::size_t>(limits.threads, 1), std::max<std::size_t>(limits.max_connections, 1),
                             counters);
    };
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
    if (!endpoint.address().is_loopback()) {
      // Said once at start: an operator's choice, but not one to make by accident.
      platform::log(platform::LogLevel::kNotice,
                    "http: %s:%d is reachable beyond this host; /metrics and the status page have no "
                    "authentication (a loopback address or a management network keeps them private)",
                    endpoint.address().is_v6() ? ("[" + host + "]").c_str() : host.c_str(), port);
    }
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
  // Connections being served end at their next read or keep-alive wait, not after a timeout.
  impl_->stopping.store(true);
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

HttpCounters HttpServer::counters() const { return impl_->snapshot(); }

}  // namespace vantage::collector::http
