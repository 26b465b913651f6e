// Cost of LatencyHistogram (record, percentile, merge, sparse encoding) measured side by
// side with the obvious alternative: raw samples in a reserved std::vector + nth_element;
// then, per distribution, record cost, percentile cost and error against the exact order
// statistic, and the bytes a histogram (and a target's two) occupies.
//
// usage: histogram_bench [values_per_run] [runs (default 5)]
// values_per_run defaults to 50M, or 10M on 32-bit targets where the raw-sample vector
// would otherwise take a large part of the address space.
#include "agent/aggregate/latency_histogram.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace {

using vantage::agent::HistogramSummary;
using vantage::agent::LatencyHistogram;
using vantage::agent::SparseBucket;
using Clock = std::chrono::steady_clock;

constexpr double kRecordLimitNs = 10.0;
constexpr std::size_t kPoolBits = 20;
constexpr std::size_t kPoolSize = std::size_t{1} << kPoolBits;  // 8 MiB of samples
constexpr std::size_t kPoolMask = kPoolSize - 1;

// Forces the compiler to treat the value (or what a pointer refers to) as observed, so
// the measured work cannot be dropped or hoisted out of the timed loop.
template <class T>
inline void keep(const T& value) {
  asm volatile("" : : "r,m"(value) : "memory");
}

double elapsed_ns(Clock::time_point start) {
  return std::chrono::duration<double, std::nano>(Clock::now() - start).count();
}

// Best (smallest) time of `runs` calls to run(), divided by the operations per call.
template <class F>
double best_per_op(int runs, double ops_per_run, F&& run) {
  double best = 0.0;
  for (int i = 0; i < runs; ++i) {
    const double t = run();
    if (i == 0 || t < best) {
      best = t;
    }
  }
  return best / ops_per_run;
}

std::uint64_t clamp_ns(double x) { return static_cast<std::uint64_t>(std::clamp(x, 1e3, 60e9)); }

// Mostly lognormal RTTs around 350 us (a regional network), plus a 2 % Pareto tail
// from 5 ms for queueing and retransmits, capped at the 60 s probe timeout.
std::vector<std::uint64_t> make_rtt_pool() {
  std::mt19937_64 rng(20240611);
  std::lognormal_distribution<double> body(std::log(350e3), 0.6);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<std::uint64_t> pool(kPoolSize);
  for (auto& v : pool) {
    const double x = u(rng) < 0.02 ? 5e6 / std::pow(1.0 - u(rng), 1.0 / 1.3) : body(rng);
    v = clamp_ns(x);
  }
  return pool;
}

struct Distribution {
  const char* name;
  std::vector<std::uint64_t> pool;
};

// The shapes the accuracy tests use, each kPoolSize values.
std::vector<Distribution> make_distributions() {
  std::mt19937_64 rng(20261202);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  auto fill = [&](auto&& draw) {
    std::vector<std::uint64_t> pool(kPoolSize);
    for (auto& v : pool) {
      v = draw();
    }
    return pool;
  };
  std::vector<Distribution> out;
  out.push_back({"uniform 20..24 ms (a path)", fill([&] { return clamp_ns(20e6 + 4e6 * u(rng)); })});
  out.push_back({"uniform 1 us..60 s", fill([&] { return clamp_ns(1e3 + (60e9 - 1e3) * u(rng)); })});
  std::normal_distribution<double> fast(200e3, 20e3);
  std::normal_distribution<double> slow(80e6, 5e6);
  out.push_back({"bimodal 200 us / 80 ms", fill([&] { return clamp_ns(u(rng) < 0.3 ? slow(rng) : fast(rng)); })});
  out.push_back({"Pareto 50 us, alpha 1.2", fill([&] { return clamp_ns(50e3 / std::pow(1.0 - u(rng), 1.0 / 1.2)); })});
  std::lognormal_distribution<double> lognormal(std::log(1e6), 1.5);
  out.push_back({"lognormal 1 ms, sigma 1.5", fill([&] { return clamp_ns(lognormal(rng)); })});
  out.push_back({"RTT mix (lognormal + 2 % tail)", make_rtt_pool()});
  std::vector<std::uint64_t> edges;
  for (std::size_t i = 0; i < LatencyHistogram::kBucketCount; ++i) {
    edges.push_back(LatencyHistogram::bucket_lower(i));
    edges.push_back(LatencyHistogram::bucket_upper(i) - 1);
  }
  std::uniform_int_distribution<std::size_t> pick(0, edges.size() - 1);
  out.push_back({"bucket edges (every lower, upper-1)", fill([&] { return edges[pick(rng)]; })});
  return out;
}

// Bytes a target's two histograms (RTT and IPDV) hold after an interval of the first n
// values, as TargetStats keeps them: fixed parts plus page buffers.
std::size_t target_bytes(const std::vector<std::uint64_t>& pool, std::size_t n) {
  LatencyHistogram rtt;
  LatencyHistogram ipdv;
  for (std::size_t i = 0; i < n; ++i) {
    rtt.record(pool[i]);
    if (i != 0) {
      ipdv.record(pool[i] > pool[i - 1] ? pool[i] - pool[i - 1] : pool[i - 1] - pool[i]);
    }
  }
  return rtt.memory_bytes() + ipdv.memory_bytes();
}

// The timed recording loops live in their own functions with plain arguments, the way
// a probe loop calls record(), so the figure does not depend on how main's lambdas and
// captures happen to be optimised together.
[[gnu::noinline]] void record_all(LatencyHistogram& h, const std::uint64_t* samples, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    h.record(samples[i & kPoolMask]);
  }
  keep(&h);
}

[[gnu::noinline]] void push_all(std::vector<std::uint64_t>& raw, const std::uint64_t* samples,
                                std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    raw.push_back(samples[i & kPoolMask]);
  }
  keep(raw.data());
}

std::uint64_t exact_percentile(std::vector<std::uint64_t>& samples, double p) {
  const double r = std::ceil(p * static_cast<double>(samples.size()) / 100.0);
  const auto rank = static_cast<std::size_t>(std::clamp(r, 1.0, static_cast<double>(samples.size())));
  const auto nth = samples.begin() + static_cast<std::ptrdiff_t>(rank - 1);
  std::nth_element(samples.begin(), nth, samples.end());
  return *nth;
}

void print_row(const char* what, const char* hist, const char* vec, const char* ratio) {
  std::printf("%-30s %18s %18s %16s\n", what, hist, vec, ratio);
}

}  // namespace

int main(int argc, char** argv) {
  constexpr std::size_t kDefaultValues = sizeof(void*) >= 8 ? 50'000'000 : 10'000'000;
  const unsigned long long requested = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : kDefaultValues;
  const int runs = argc > 2 ? std::atoi(argv[2]) : 5;
  if (requested == 0 || requested > SIZE_MAX / sizeof(std::uint64_t) || runs <= 0) {
    std::fprintf(stderr, "usage: %s [values_per_run] [runs]\n", argv[0]);
    return 2;
  }
  const auto n = static_cast<std::size_t>(requested);
  const double values = static_cast<double>(n);
  const std::vector<std::uint64_t> pool = make_rtt_pool();
  const std::uint64_t* const samples = pool.data();

  static LatencyHistogram hist;
  const double hist_record_ns = best_per_op(runs, values, [&] {
    hist.reset();
    const auto start = Clock::now();
    record_all(hist, samples, n);
    return elapsed_ns(start);
  });

  // nth_element reorders the samples, so each query is timed right after a fresh
  // recording run rather than on data an earlier query already partitioned.
  std::vector<std::uint64_t> raw;
  raw.reserve(n);
  double vec_record_ns = 0.0;
  std::uint64_t exact_p99 = 0;
  auto time_vec_query = [&](double p) {
    return best_per_op(runs, 1.0, [&] {
      raw.clear();
      const auto record_start = Clock::now();
      push_all(raw, samples, n);
      const double record_ns = elapsed_ns(record_start) / values;
      if (vec_record_ns == 0.0 || record_ns < vec_record_ns) {
        vec_record_ns = record_ns;
      }
      const auto start = Clock::now();
      const std::uint64_t value = exact_percentile(raw, p);
      keep(value);
      const double query_ns = elapsed_ns(start);
      if (p == 99.0) {
        exact_p99 = value;
      }
      return query_ns;
    });
  };
  const double vec_p50_ns = time_vec_query(50.0);
  const double vec_p99_ns = time_vec_query(99.0);

  // percentile() is out of line and opaque here, so repeating it cannot be folded away.
  constexpr int kQueries = 20'000;
  auto time_hist_query = [&](double p) {
    return best_per_op(runs, kQueries, [&] {
      const auto start = Clock::now();
      for (int i = 0; i < kQueries; ++i) {
        keep(&hist);
        keep(hist.percentile(p));
      }
      return elapsed_ns(start);
    });
  };
  const double hist_p99_ns = time_hist_query(99.0);
  const double hist_p50_ns = time_hist_query(50.0);
  const std::uint64_t hist_p99 = hist.percentile(99.0);

  // Merge, sparse encoding and decoding, on a histogram of the whole pool.
  LatencyHistogram part;
  for (std::uint64_t v : pool) {
    part.record(v);
  }
  constexpr int kOps = 10'000;
  LatencyHistogram merged;
  const double merge_ns = best_per_op(runs, kOps, [&] {
    merged = part;
    const auto start = Clock::now();
    for (int i = 0; i < kOps; ++i) {
      keep(&part);
      static_cast<void>(merged.merge(part));
    }
    keep(&merged);
    return elapsed_ns(start);
  });
  if (merged.dropped() != 0) {
    std::fprintf(stderr, "merge benchmark saturated a bucket; timing is not the fast path\n");
    return 1;
  }

  const double to_sparse_ns = best_per_op(runs, kOps, [&] {
    const auto start = Clock::now();
    for (int i = 0; i < kOps; ++i) {
      keep(&part);
      const std::vector<SparseBucket> encoded = part.to_sparse();
      keep(encoded.data());
    }
    return elapsed_ns(start);
  });

  static std::array<SparseBucket, LatencyHistogram::kBucketCount> fixed;
  const double for_each_ns = best_per_op(runs, kOps, [&] {
    const auto start = Clock::now();
    for (int i = 0; i < kOps; ++i) {
      keep(&part);
      std::size_t used = 0;
      part.for_each_nonzero([&](SparseBucket b) { fixed[used++] = b; });
      keep(used);
      keep(&fixed);
    }
    return elapsed_ns(start);
  });

  const std::vector<SparseBucket> sparse = part.to_sparse();
  const HistogramSummary summary = part.summary();
  const double from_sparse_ns = best_per_op(runs, kOps, [&] {
    const auto start = Clock::now();
    for (int i = 0; i < kOps; ++i) {
      keep(&summary);
      keep(sparse.data());
      const auto decoded = LatencyHistogram::from_sparse(summary, sparse);
      keep(&decoded);
    }
    return elapsed_ns(start);
  });

  char a[64];
  char b[64];
  char c[64];
  std::printf("%zu values per run, best of %d runs each, %zu distinct pre-generated RTTs\n", n, runs,
              kPoolSize);
  std::printf("histogram p99 %llu ns, exact p99 %llu ns (error %.3f %%)\n\n",
              static_cast<unsigned long long>(hist_p99), static_cast<unsigned long long>(exact_p99),
              100.0 * std::fabs(static_cast<double>(hist_p99) - static_cast<double>(exact_p99)) /
                  static_cast<double>(exact_p99));
  print_row("operation", "LatencyHistogram", "std::vector", "histogram/vector");
  std::snprintf(a, sizeof a, "%.2f ns", hist_record_ns);
  std::snprintf(b, sizeof b, "%.2f ns", vec_record_ns);
  std::snprintf(c, sizeof c, "%.2fx", hist_record_ns / vec_record_ns);
  print_row("record, per value", a, b, c);
  std::snprintf(a, sizeof a, "%.0f ns", hist_p50_ns);
  std::snprintf(b, sizeof b, "%.3f ms", vec_p50_ns / 1e6);
  std::snprintf(c, sizeof c, "%.2gx", hist_p50_ns / vec_p50_ns);
  print_row("p50 query", a, b, c);
  std::snprintf(a, sizeof a, "%.0f ns", hist_p99_ns);
  std::snprintf(b, sizeof b, "%.3f ms", vec_p99_ns / 1e6);
  std::snprintf(c, sizeof c, "%.2gx", hist_p99_ns / vec_p99_ns);
  print_row("p99 query", a, b, c);
  std::snprintf(a, sizeof a, "%zu B", hist.memory_bytes());
  std::snprintf(b, sizeof b, "%zu B", n * sizeof(std::uint64_t));
  std::snprintf(c, sizeof c, "%.2gx",
                static_cast<double>(hist.memory_bytes()) / static_cast<double>(n * sizeof(std::uint64_t)));
  print_row("state size", a, b, c);
  std::snprintf(a, sizeof a, "%.0f ns", merge_ns);
  print_row("merge", a, "-", "-");
  std::snprintf(a, sizeof a, "%.0f ns", to_sparse_ns);
  print_row("to_sparse", a, "-", "-");
  std::snprintf(a, sizeof a, "%.0f ns", for_each_ns);
  print_row("for_each_nonzero", a, "-", "-");
  std::snprintf(a, sizeof a, "%.0f ns", from_sparse_ns);
  print_row("from_sparse", a, "-", "-");
  std::printf("(sparse form of the pool histogram: %zu non-zero buckets)\n\n", sparse.size());

  // Per distribution: the same record loop and queries, the worst error of p50/p90/p99/p99.9
  // against the exact order statistic of the same values, and memory.
  std::printf("scheme %u: %zu sub-buckets an octave, error bound %.3f %%, %zu-byte pages of %zu counters, "
              "%zu-byte fixed part\n",
              unsigned{LatencyHistogram::kScheme}, LatencyHistogram::kSubBuckets,
              100.0 * LatencyHistogram::kLayout.max_relative_error(),
              LatencyHistogram::kPageSize * sizeof(std::uint32_t), LatencyHistogram::kPageSize,
              sizeof(LatencyHistogram));
  std::printf("%-36s %9s %9s %9s %11s %6s %9s %22s\n", "distribution", "record", "p50", "p99", "max error",
              "pages", "bytes", "target bytes @10/100/1k");
  // Shorter runs, three times as many: on a shared machine the best of many short runs is
  // the one that was not preempted, which is the cost of the code rather than of the neighbours.
  const std::size_t dist_values = std::min<std::size_t>(n, 4 * kPoolSize);
  const int dist_runs = 3 * runs;
  double worst_record_ns = hist_record_ns;
  for (Distribution& d : make_distributions()) {
    LatencyHistogram h;
    const double record_ns = best_per_op(dist_runs, static_cast<double>(dist_values), [&] {
      h.reset();
      const auto start = Clock::now();
      record_all(h, d.pool.data(), dist_values);
      return elapsed_ns(start);
    });
    worst_record_ns = std::max(worst_record_ns, record_ns);
    auto query = [&](double p) {
      return best_per_op(dist_runs, kQueries, [&] {
        const auto start = Clock::now();
        for (int i = 0; i < kQueries; ++i) {
          keep(&h);
          keep(h.percentile(p));
        }
        return elapsed_ns(start);
      });
    };
    const double p50_ns = query(50.0);
    const double p99_ns = query(99.0);
    // Error against the pool itself, recorded once.
    LatencyHistogram once;
    for (std::uint64_t v : d.pool) {
      once.record(v);
    }
    std::vector<std::uint64_t> sorted = d.pool;
    std::sort(sorted.begin(), sorted.end());
    double worst = 0.0;
    for (double p : {50.0, 90.0, 99.0, 99.9}) {
      const double r = std::ceil(p * static_cast<double>(sorted.size()) / 100.0);
      const auto exact = static_cast<double>(sorted[static_cast<std::size_t>(r) - 1]);
      worst = std::max(worst, std::fabs(static_cast<double>(once.percentile(p)) - exact) / exact);
    }
    char per_target[64];
    std::snprintf(per_target, sizeof per_target, "%zu/%zu/%zu", target_bytes(d.pool, 10),
                  target_bytes(d.pool, 100), target_bytes(d.pool, 1000));
    std::printf("%-36s %6.2f ns %6.0f ns %6.0f ns %9.4f %% %6zu %9zu %22s\n", d.name, record_ns, p50_ns, p99_ns,
                100.0 * worst, once.pages(), once.memory_bytes(), per_target);
  }
  std::printf("(record: best of %d runs of %zu values; error, pages and bytes over the %zu-value pool; "
              "target bytes: RTT + IPDV histograms after an interval of 10, 100, 1000 samples)\n\n",
              dist_runs, dist_values, kPoolSize);

  std::printf("histogram record: %.2f ns/value, worst distribution %.2f ns (limit %.0f ns)%s\n", hist_record_ns,
              worst_record_ns, kRecordLimitNs, worst_record_ns <= kRecordLimitNs ? "" : "  EXCEEDED");
  std::printf("std::vector push_back: %.2f ns/value\n", vec_record_ns);
  std::printf("ratio record vs std::vector push_back: %.2fx\n", hist_record_ns / vec_record_ns);
  std::printf("ratio p99 query vs std::nth_element: %.2gx\n", hist_p99_ns / vec_p99_ns);
  return 0;
}
