// Throughput and round-trip latency of SpscRing against boost::lockfree::spsc_queue and
// moodycamel::ReaderWriterQueue, each checked for loss/reordering while it is timed.
//
// Usage: ring_bench [--items N] [--reps N] [--rtt-iters N] [--batch N]
//                   [--payload 16|8] [--cpus P,C] [--only SUBSTRING]
//
// NDEBUG is forced for this file: ReaderWriterQueue runs re-entrancy checks on every
// operation in debug builds, and a release build is the fair comparison. SpscRing and
// boost::lockfree have no assertions on these paths, so they are unaffected.
#ifndef NDEBUG
#define NDEBUG
#endif

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <readerwriterqueue.h>
#include <boost/lockfree/spsc_queue.hpp>

#include "platform/spsc_ring.hpp"

namespace {

using vantage::platform::SpscRing;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kCapacity = 65536;
constexpr std::size_t kMaxBatch = 1024;

struct Config {
  std::uint64_t items = 50'000'000;
  std::uint64_t rtt_iters = 200'000;
  int reps = 5;
  std::size_t batch = 64;
  int payload_bytes = 16;
  int producer_cpu = -1;  // -1: unpinned
  int consumer_cpu = -1;
  bool yield_when_blocked = false;
  std::string only;  // run only queues whose label contains this
};

// Realistic payload: a raw RTT sample is a sequence/id plus a timestamp.
struct Sample16 {
  std::uint64_t seq;
  std::int64_t t;
};

template <typename T>
T make_item(std::uint64_t seq) {
  if constexpr (std::is_same_v<T, Sample16>) {
    return Sample16{seq, static_cast<std::int64_t>(seq) * 3};
  } else {
    return T{seq};
  }
}

template <typename T>
bool item_ok(const T& item, std::uint64_t expected) {
  if constexpr (std::is_same_v<T, Sample16>) {
    return item.seq == expected && item.t == static_cast<std::int64_t>(expected) * 3;
  } else {
    return item == expected;
  }
}

// ---- adapters: one verb set per queue, each mapped to the peer's fastest API ----

template <typename T>
class RingQueue {
 public:
  explicit RingQueue(std::size_t capacity) : ring_(capacity) {}
  bool push(const T& item) { return ring_.try_push(item); }
  bool pop(T& item) { return ring_.try_pop(item); }
  std::size_t push_n(const T* items, std::size_t n) { return ring_.try_push_n(items, n); }
  std::size_t pop_n(T* out, std::size_t max) { return ring_.try_pop_n(out, max); }

 private:
  SpscRing<T> ring_;
};

template <typename T>
class BoostRuntimeQueue {
 public:
  explicit BoostRuntimeQueue(std::size_t capacity) : queue_(capacity) {}
  bool push(const T& item) { return queue_.push(item); }
  bool pop(T& item) { return queue_.pop(item); }
  std::size_t push_n(const T* items, std::size_t n) { return queue_.push(items, n); }
  std::size_t pop_n(T* out, std::size_t max) { return queue_.pop(out, max); }

 private:
  boost::lockfree::spsc_queue<T> queue_;
};

// Compile-time capacity lets boost fold the index wrap against a constant and keeps
// the buffer inside the object.
template <typename T>
class BoostFixedQueue {
 public:
  explicit BoostFixedQueue(std::size_t /*capacity: always kCapacity*/) {}
  bool push(const T& item) { return queue_.push(item); }
  bool pop(T& item) { return queue_.pop(item); }
  std::size_t push_n(const T* items, std::size_t n) { return queue_.push(items, n); }
  std::size_t pop_n(T* out, std::size_t max) { return queue_.pop(out, max); }

 private:
  boost::lockfree::spsc_queue<T, boost::lockfree::capacity<kCapacity>> queue_;
};

// Pre-sized and used only through try_enqueue, so it never allocates while timed.
// With kBlock == kCapacity the queue is a single block holding kCapacity - 1 items.
template <typename T, std::size_t kBlock>
class MoodyQueue {
 public:
  explicit MoodyQueue(std::size_t capacity) : queue_(kBlock >= capacity ? capacity - 1 : capacity) {}
  bool push(const T& item) { return queue_.try_enqueue(item); }
  bool pop(T& item) { return queue_.try_dequeue(item); }

 private:
  moodycamel::ReaderWriterQueue<T, kBlock> queue_;
};

template <typename Q, typename T>
concept HasBatch = requires(Q q, T* p, const T* cp, std::size_t n) {
  q.push_n(cp, n);
  q.pop_n(p, n);
};

// ---- threads ----

void pin_current_thread(int cpu) {
  if (cpu < 0) {
    return;
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (const int rc = pthread_setaffinity_np(pthread_self(), sizeof(set), &set); rc != 0) {
    std::fprintf(stderr, "warning: pinning to CPU %d failed: %s\n", cpu, std::strerror(rc));
  }
}

// Both threads spin identically for every queue; yielding only when the two threads
// might share one CPU, where spinning would burn the other side's time slice. A spin
// pauses (x86 PAUSE, ARM YIELD) as any real spin-wait does: without it the side that
// finds the queue empty or full re-reads the other core's index line back-to-back and
// slows the side that is doing work, which measures the polling loop, not the queue.
inline void blocked(const Config& cfg) {
  if (cfg.yield_when_blocked) {
    std::this_thread::yield();
    return;
  }
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  asm volatile("yield" ::: "memory");
#endif
}

[[noreturn]] void fail(const char* what, const std::string& queue, std::uint64_t at) {
  std::fprintf(stderr, "FATAL: %s lost/reordered/corrupted items (%s, first at %llu)\n", queue.c_str(), what,
               static_cast<unsigned long long>(at));
  std::exit(1);
}

// Runs producer and consumer on their pinned CPUs, starting both together; returns
// seconds from the producer's first push to the consumer's last pop.
template <typename ProducerFn, typename ConsumerFn>
double run_pair(const Config& cfg, ProducerFn&& producer_fn, ConsumerFn&& consumer_fn) {
  std::atomic<int> ready{0};
  Clock::time_point start;
  Clock::time_point stop;
  auto wait_for_peer = [&] {
    ready.fetch_add(1);
    while (ready.load() < 2) {
      blocked(cfg);
    }
  };
  std::thread consumer([&] {
    pin_current_thread(cfg.consumer_cpu);
    wait_for_peer();
    consumer_fn();
    stop = Clock::now();
  });
  std::thread producer([&] {
    pin_current_thread(cfg.producer_cpu);
    wait_for_peer();
    start = Clock::now();
    producer_fn();
  });
  producer.join();
  consumer.join();
  return std::chrono::duration<double>(stop - start).count();
}

template <typename Q, typename T>
double throughput_single(const Config& cfg, const std::string& name) {
  auto queue = std::make_unique<Q>(kCapacity);
  const std::uint64_t n = cfg.items;
  std::uint64_t first_bad = ~std::uint64_t{0};
  const double seconds = run_pair(
      cfg,
      [&] {
        for (std::uint64_t i = 0; i < n; ++i) {
          const T item = make_item<T>(i);
          while (!queue->push(item)) {
            blocked(cfg);
          }
        }
      },
      [&] {
        T item{};
        for (std::uint64_t expected = 0; expected < n;) {
          if (!queue->pop(item)) {
            blocked(cfg);
            continue;
          }
          if (!item_ok(item, expected) && first_bad == ~std::uint64_t{0}) {
            first_bad = expected;
          }
          ++expected;
        }
      });
  if (first_bad != ~std::uint64_t{0}) {
    fail("single", name, first_bad);
  }
  return seconds;
}

template <typename Q, typename T>
double throughput_batch(const Config& cfg, const std::string& name) {
  auto queue = std::make_unique<Q>(kCapacity);
  const std::uint64_t n = cfg.items;
  const std::size_t batch = cfg.batch;
  std::uint64_t first_bad = ~std::uint64_t{0};
  const double seconds = run_pair(
      cfg,
      [&] {
        std::array<T, kMaxBatch> buffer{};
        for (std::uint64_t i = 0; i < n;) {
          const std::size_t count = static_cast<std::size_t>(std::min<std::uint64_t>(batch, n - i));
          for (std::size_t k = 0; k < count; ++k) {
            buffer[k] = make_item<T>(i + k);
          }
          for (std::size_t done = 0; done < count;) {
            const std::size_t pushed = queue->push_n(buffer.data() + done, count - done);
            if (pushed == 0) {
              blocked(cfg);
            }
            done += pushed;
          }
          i += count;
        }
      },
      [&] {
        std::array<T, kMaxBatch> buffer{};
        for (std::uint64_t expected = 0; expected < n;) {
          const std::size_t got = queue->pop_n(buffer.data(), batch);
          if (got == 0) {
            blocked(cfg);
            continue;
          }
          for (std::size_t k = 0; k < got; ++k) {
            if (!item_ok(buffer[k], expected + k) && first_bad == ~std::uint64_t{0}) {
              first_bad = expected + k;
            }
          }
          expected += got;
        }
      });
  if (first_bad != ~std::uint64_t{0}) {
    fail("batch", name, first_bad);
  }
  return seconds;
}

struct RoundTrip {
  double p50_ns;
  double p99_ns;
};

// Ping-pong through two queues, one item in flight, so each iteration is a cache-line
// round trip in each direction. Each iteration is timed on its own and percentiles are
// reported: a mean would be dominated by the rare iterations during which the host
// descheduled one of the two vCPUs.
template <typename Q, typename T>
RoundTrip round_trip(const Config& cfg, const std::string& name) {
  auto ping = std::make_unique<Q>(kCapacity);
  auto pong = std::make_unique<Q>(kCapacity);
  const std::uint64_t n = cfg.rtt_iters;
  std::vector<double> rtt_ns(n);
  std::uint64_t first_bad = ~std::uint64_t{0};
  run_pair(
      cfg,
      [&] {
        T item{};
        Clock::time_point previous = Clock::now();
        for (std::uint64_t i = 0; i < n; ++i) {
          while (!ping->push(make_item<T>(i))) {
            blocked(cfg);
          }
          while (!pong->pop(item)) {
            blocked(cfg);
          }
          const Clock::time_point now = Clock::now();
          rtt_ns[i] = std::chrono::duration<double, std::nano>(now - previous).count();
          previous = now;
          if (!item_ok(item, i) && first_bad == ~std::uint64_t{0}) {
            first_bad = i;
          }
        }
      },
      [&] {
        T item{};
        for (std::uint64_t i = 0; i < n; ++i) {
          while (!ping->pop(item)) {
            blocked(cfg);
          }
          while (!pong->push(item)) {
            blocked(cfg);
          }
        }
      });
  if (first_bad != ~std::uint64_t{0}) {
    fail("rtt", name, first_bad);
  }
  std::sort(rtt_ns.begin(), rtt_ns.end());
  return {rtt_ns[n / 2], rtt_ns[n * 99 / 100]};
}

// ---- reporting ----

// One benchmark configuration and its per-repetition results. `cost` is lower-is-better:
// seconds for throughput runs, median round-trip ns for latency runs.
struct Measurement {
  std::string mode;    // "single", "batch", "rtt"
  std::string queue;   // family plus configuration
  std::string family;  // ratios compare against each family's fastest configuration
  std::function<RoundTrip()> run;
  std::vector<double> cost;
  std::vector<double> p99_ns;

  double best() const { return *std::min_element(cost.begin(), cost.end()); }
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t mid = values.size() / 2;
  return values.size() % 2 == 1 ? values[mid] : (values[mid - 1] + values[mid]) / 2;
}

template <typename T>
void add_queues(std::vector<Measurement>& out, const Config& cfg) {
  auto add = [&]<typename Q>(const std::string& family, const std::string& variant) {
    const std::string label = variant.empty() ? family : family + " " + variant;
    if (label.find(cfg.only) == std::string::npos) {
      return;
    }
    out.push_back({"single",
                   label,
                   family,
                   [&cfg, label] {
                     return RoundTrip{throughput_single<Q, T>(cfg, label), 0};
                   },
                   {},
                   {}});
    if constexpr (HasBatch<Q, T>) {
      out.push_back({"batch",
                     label,
                     family,
                     [&cfg, label] {
                       return RoundTrip{throughput_batch<Q, T>(cfg, label), 0};
                     },
                     {},
                     {}});
    }
    if (cfg.rtt_iters > 0) {
      out.push_back({"rtt", label, family, [&cfg, label] { return round_trip<Q, T>(cfg, label); }, {}, {}});
    }
  };
  add.template operator()<RingQueue<T>>("SpscRing", "");
  add.template operator()<BoostRuntimeQueue<T>>("boost::lockfree::spsc_queue", "[runtime capacity]");
  add.template operator()<BoostFixedQueue<T>>("boost::lockfree::spsc_queue", "[capacity<65536>]");
  add.template operator()<MoodyQueue<T, 512>>("moodycamel::ReaderWriterQueue", "[block 512]");
  add.template operator()<MoodyQueue<T, kCapacity>>("moodycamel::ReaderWriterQueue", "[one 65536 block]");
}

const Measurement* fastest_in_family(const std::vector<Measurement>& all, const std::string& mode,
                                     const std::string& family) {
  const Measurement* best = nullptr;
  for (const Measurement& m : all) {
    if (m.mode == mode && m.family == family && (best == nullptr || m.best() < best->best())) {
      best = &m;
    }
  }
  return best;
}

template <typename T>
void run_all(const Config& cfg) {
  std::vector<Measurement> all;
  add_queues<T>(all, cfg);

  // Repetitions are the outer loop and the starting queue rotates, so slow drifts in
  // the host (frequency, noisy neighbours, vCPU placement) spread over every queue
  // instead of penalising whichever happened to run during them.
  for (int rep = 0; rep < cfg.reps; ++rep) {
    for (std::size_t k = 0; k < all.size(); ++k) {
      Measurement& m = all[(k + static_cast<std::size_t>(rep)) % all.size()];
      const RoundTrip result = m.run();
      m.cost.push_back(result.p50_ns);
      m.p99_ns.push_back(result.p99_ns);
    }
    std::fprintf(stderr, "rep %d/%d done\n", rep + 1, cfg.reps);
  }

  const double items = static_cast<double>(cfg.items);
  const std::string batch_mode = "batch" + std::to_string(cfg.batch);
  std::printf("%-8s %-50s %13s %9s %15s\n", "mode", "queue", "best Mitem/s", "ns/item", "median Mitem/s");
  for (const Measurement& m : all) {
    if (m.mode != "rtt") {
      std::printf("%-8s %-50s %13.1f %9.2f %15.1f\n", m.mode == "batch" ? batch_mode.c_str() : "single",
                  m.queue.c_str(), items / m.best() / 1e6, m.best() / items * 1e9,
                  items / median(m.cost) / 1e6);
    }
  }
  if (cfg.rtt_iters > 0) {
    std::printf("\n%-8s %-50s %13s %9s %15s\n", "mode", "queue", "best p50 ns", "p99 ns", "median p50 ns");
    for (const Measurement& m : all) {
      if (m.mode == "rtt") {
        std::printf("%-8s %-50s %13.0f %9.0f %15.0f\n", "rtt", m.queue.c_str(), m.best(), median(m.p99_ns),
                    median(m.cost));
      }
    }
  }

  // "ratio" compares best-of-reps figures; "paired" takes, per repetition, peer cost over
  // SpscRing cost from runs made moments apart, and reports the median, which is the
  // steadier figure on a noisy host. Above 1 means SpscRing is faster (more items/s or
  // a shorter round trip). Each peer is represented by its fastest configuration.
  const std::array<std::string, 2> peers{"boost::lockfree::spsc_queue", "moodycamel::ReaderWriterQueue"};
  const std::array<const char*, 3> modes{"single", "batch", "rtt"};
  std::printf("\n");
  for (const char* mode : modes) {
    for (const std::string& peer : peers) {
      if (const Measurement* other = fastest_in_family(all, mode, peer); other != nullptr) {
        std::printf("fastest %s config for %s: %s\n", peer.c_str(), mode, other->queue.c_str());
      }
    }
  }
  std::printf("(moodycamel::ReaderWriterQueue has no bulk API, so batch compares with boost only)\n");
  std::vector<std::string> paired_lines;
  for (const char* mode : modes) {
    const Measurement* ring = fastest_in_family(all, mode, "SpscRing");
    for (const std::string& peer : peers) {
      const Measurement* other = fastest_in_family(all, mode, peer);
      if (ring == nullptr || other == nullptr) {
        continue;
      }
      std::printf("ratio SpscRing/%s %s: %.2fx\n", peer.c_str(), mode, other->best() / ring->best());
      std::vector<double> per_rep;
      for (std::size_t r = 0; r < ring->cost.size(); ++r) {
        per_rep.push_back(other->cost[r] / ring->cost[r]);
      }
      char line[256];
      std::snprintf(line, sizeof(line), "paired SpscRing/%s %s: median %.2fx (min %.2fx, max %.2fx)",
                    peer.c_str(), mode, median(per_rep), *std::min_element(per_rep.begin(), per_rep.end()),
                    *std::max_element(per_rep.begin(), per_rep.end()));
      paired_lines.emplace_back(line);
    }
  }
  for (const std::string& line : paired_lines) {
    std::printf("%s\n", line.c_str());
  }
}

// ---- command line ----

std::vector<int> allowed_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &set)) {
        cpus.push_back(cpu);
      }
    }
  }
  return cpus;
}

[[noreturn]] void usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [--items N] [--reps N] [--rtt-iters N (0 = skip)] [--batch N]\n"
               "          [--payload 16|8] [--cpus PRODUCER,CONSUMER] [--only SUBSTRING]\n",
               argv0);
  std::exit(2);
}

std::uint64_t parse_number(const char* text, const char* argv0) {
  char* end = nullptr;
  const unsigned long long value = std::strtoull(text, &end, 10);
  if (end == text || *end != '\0') {
    usage(argv0);
  }
  return value;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  bool cpus_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--items" && has_value) {
      cfg.items = parse_number(argv[++i], argv[0]);
    } else if (arg == "--reps" && has_value) {
      cfg.reps = static_cast<int>(parse_number(argv[++i], argv[0]));
    } else if (arg == "--rtt-iters" && has_value) {
      cfg.rtt_iters = parse_number(argv[++i], argv[0]);
    } else if (arg == "--batch" && has_value) {
      cfg.batch = static_cast<std::size_t>(parse_number(argv[++i], argv[0]));
    } else if (arg == "--payload" && has_value) {
      cfg.payload_bytes = static_cast<int>(parse_number(argv[++i], argv[0]));
    } else if (arg == "--only" && has_value) {
      cfg.only = argv[++i];
    } else if (arg == "--cpus" && has_value) {
      if (std::sscanf(argv[++i], "%d,%d", &cfg.producer_cpu, &cfg.consumer_cpu) != 2) {
        usage(argv[0]);
      }
      cpus_given = true;
    } else {
      usage(argv[0]);
    }
  }
  if (cfg.items == 0 || cfg.reps <= 0 || cfg.batch == 0 || cfg.batch > kMaxBatch ||
      (cfg.payload_bytes != 16 && cfg.payload_bytes != 8)) {
    usage(argv[0]);
  }

  if (!cpus_given) {
    const std::vector<int> cpus = allowed_cpus();
    if (cpus.size() >= 2) {
      cfg.producer_cpu = cpus[0];
      cfg.consumer_cpu = cpus[1];
    } else {
      std::fprintf(stderr,
                   "warning: fewer than 2 CPUs available; running unpinned and yielding when "
                   "blocked, so figures are not representative\n");
      cfg.yield_when_blocked = true;
    }
  }

  std::printf(
      "payload %s (%d bytes), capacity %zu, %llu items, batch %zu, %llu RTT iterations, "
      "best of %d, producer CPU %d, consumer CPU %d\n\n",
      cfg.payload_bytes == 16 ? "{uint64 seq; int64 t}" : "uint64", cfg.payload_bytes, kCapacity,
      static_cast<unsigned long long>(cfg.items), cfg.batch, static_cast<unsigned long long>(cfg.rtt_iters),
      cfg.reps, cfg.producer_cpu, cfg.consumer_cpu);
  if (cfg.payload_bytes == 16) {
    run_all<Sample16>(cfg);
  } else {
    run_all<std::uint64_t>(cfg);
  }
  return 0;
}
