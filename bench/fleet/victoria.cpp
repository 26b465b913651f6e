#include "bench/fleet/victoria.hpp"

#include <asio/connect.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/read.hpp>
#include <asio/read_until.hpp>
#include <asio/streambuf.hpp>
#include <asio/write.hpp>

#include <atomic>
#include <csignal>
#include <istream>
#include <mutex>
#include <thread>
#include <vector>

#include "agent/aggregate/latency_histogram.hpp"
#include "platform/clock.hpp"

namespace vantage::fleet {
namespace {

using Clock = std::chrono::steady_clock;

// One keep-alive HTTP/1.1 connection, blocking. Returns the status code, 0 on a broken connection.
class HttpConnection {
 public:
  HttpConnection(asio::io_context& io, asio::ip::tcp::endpoint endpoint) : socket_(io), endpoint_(endpoint) {}

  int request(const std::string& method, const std::string& path, const std::string& body) {
    std::error_code ec;
    if (!socket_.is_open()) {
      socket_.connect(endpoint_, ec);
      if (ec) {
        socket_.close(ec);
        return 0;
      }
      socket_.set_option(asio::ip::tcp::no_delay(true), ec);
    }
    std::string head = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " +
                       std::to_string(body.size()) + "\r\n\r\n";
    const std::array<asio::const_buffer, 2> buffers{asio::buffer(head), asio::buffer(body)};
    asio::write(socket_, buffers, ec);
    if (!ec) asio::read_until(socket_, in_, "\r\n\r\n", ec);
    if (ec) return broken();
    std::istream stream(&in_);
    std::string version;
    int status = 0;
    stream >> version >> status;
    std::string line;
    std::getline(stream, line);
    std::size_t length = 0;
    while (std::getline(stream, line) && line != "\r") {
      if (line.size() > 15 && (line.rfind("Content-Length:", 0) == 0 || line.rfind("content-length:", 0) == 0)) {
        length = std::stoul(line.substr(15));
      }
    }
    if (in_.size() < length) asio::read(socket_, in_, asio::transfer_exactly(length - in_.size()), ec);
    if (ec) return broken();
    in_.consume(length);
    return status;
  }

 private:
  int broken() {
    std::error_code ignored;
    socket_.close(ignored);
    in_.consume(in_.size());
    return 0;
  }
  asio::ip::tcp::socket socket_;
  asio::ip::tcp::endpoint endpoint_;
  asio::streambuf in_;
};

}  // namespace

VictoriaResult run_victoria(const std::filesystem::path& binary, const std::filesystem::path& work_dir,
                            const BatchFactory& factory, std::size_t clients, std::chrono::milliseconds duration) {
  VictoriaResult r;
  const auto dir = work_dir / "victoria-metrics";
  std::filesystem::create_directories(dir);
  const std::uint16_t port = free_port();
  ChildProcess vm;
  const std::string listen = "127.0.0.1:" + std::to_string(port);
  if (!vm.start({binary.string(), "-storageDataPath=" + (dir / "data").string(), "-httpListenAddr=" + listen,
                 "-retentionPeriod=100y", "-loggerLevel=WARN"},
                dir / "victoria-metrics.log", r.error)) {
    return r;
  }
  asio::io_context io;
  const asio::ip::tcp::endpoint endpoint(asio::ip::make_address_v4("127.0.0.1"), port);
  {
    HttpConnection probe(io, endpoint);
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    while (probe.request("GET", "/health", {}) != 200) {
      if (Clock::now() > deadline || vm.exited()) {
        r.error = "VictoriaMetrics did not answer /health (see " + (dir / "victoria-metrics.log").string() + ")";
        return r;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> summaries{0};  // read at the window's end, not after the joins
  std::mutex merge_mutex;
  agent::LatencyHistogram latency;
  std::vector<std::thread> threads;
  const ProcessSample start = sample_process(vm.pid());
  const double self_start = self_cpu_s();
  const auto t0 = Clock::now();
  for (std::size_t c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      asio::io_context own;
      HttpConnection http(own, endpoint);
      AgentIdentity agent{"agent-" + std::to_string(c), "eu-central", "pop000", static_cast<std::uint32_t>(c)};
      agent::LatencyHistogram h;
      std::uint64_t ok = 0, failed = 0, lines = 0;
      std::string body;
      std::int64_t end_ns = platform::realtime_ns() - 86'400'000'000'000;
      while (!stop.load(std::memory_order_relaxed)) {
        body.clear();
        end_ns += 10'000'000;  // each batch a new interval, as the agent's are
        factory.append_influx_lines(body, agent, end_ns);
        const std::int64_t sent = platform::monotonic_ns();
        const int status = http.request("POST", "/write", body);
        if (status >= 200 && status < 300) {
          ++ok;
          lines += factory.targets();
          summaries.fetch_add(factory.targets(), std::memory_order_relaxed);
          h.record_signed(platform::monotonic_ns() - sent);
        } else {
          ++failed;
          if (status == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
      }
      std::lock_guard lock(merge_mutex);
      r.requests += ok;
      r.failed += failed;
      (void)lines;
      // Both sides record with LatencyHistogram::kScheme: the merge cannot be refused.
      static_cast<void>(latency.merge(h));
    });
  }
  std::this_thread::sleep_for(duration);
  const ProcessSample end = sample_process(vm.pid());
  const double self_end = self_cpu_s();
  r.window_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const std::uint64_t in_window = summaries.load();
  stop = true;
  for (auto& t : threads) t.join();
  r.summaries = in_window;
  r.cpu_s = end.cpu_s - start.cpu_s;
  r.rss_bytes = end.rss_bytes;
  r.hwm_bytes = end.hwm_bytes;
  r.self_cpu_s = self_end - self_start;
  r.request_p50_ms = static_cast<double>(latency.percentile(50)) / 1e6;
  r.request_p99_ms = static_cast<double>(latency.percentile(99)) / 1e6;
  vm.stop(SIGTERM, std::chrono::seconds(30));
  r.ok = true;
  return r;
}

}  // namespace vantage::fleet
