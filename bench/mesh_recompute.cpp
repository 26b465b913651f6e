// Cost of the collector's mesh planner on a large fleet: build the lists of N agents in P PoPs
// (upsert_many, as after a collector restart; --one-by-one: N joins, as Hellos trickle in), then
// time one more agent joining and leaving (the median of several), and count the planner's heap
// bytes (a counting operator new) and the process's VmRSS/VmHWM. The peer is a planner
// that recomputes every list from scratch on each change: its cost is measured here as one list
// built from scratch (an agent without reflectors joining touches only its own list) times N.
//
// usage: mesh_recompute [--agents 10000] [--pops 300] [--regions 10] [--per-pop 1]
//                       [--sample 0] [--trials 9] [--one-by-one]
// Without --agents/--per-pop/--sample it runs the default table: 10,000 agents full mesh with
// per_pop 1, sampled (20 PoPs, per_pop 1), and per_pop 0 (all agents of every PoP) on 1,000
// agents, as 10,000 would hold ~10^8 entries (see the printed bytes per entry).
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <string>
#include <vector>

#include "collector/mesh/mesh_planner.hpp"

// Counting allocator: the planner's live heap bytes are the difference before and after.
namespace {
std::atomic<std::int64_t> g_live_bytes{0};
}  // namespace

void* operator new(std::size_t size) {
  void* p = std::malloc(size == 0 ? 1 : size);
  if (p == nullptr) throw std::bad_alloc();
  g_live_bytes.fetch_add(static_cast<std::int64_t>(malloc_usable_size(p)), std::memory_order_relaxed);
  return p;
}
void* operator new[](std::size_t size) { return operator new(size); }
void operator delete(void* p) noexcept {
  if (p == nullptr) return;
  g_live_bytes.fetch_sub(static_cast<std::int64_t>(malloc_usable_size(p)), std::memory_order_relaxed);
  std::free(p);
}
void operator delete[](void* p) noexcept { operator delete(p); }
void operator delete(void* p, std::size_t) noexcept { operator delete(p); }
void operator delete[](void* p, std::size_t) noexcept { operator delete(p); }

namespace {

namespace mesh = vantage::collector::mesh;
using Clock = std::chrono::steady_clock;

struct Scenario {
  int agents = 10'000;
  int pops = 300;
  int regions = 10;
  std::uint32_t per_pop = 1;
  std::uint32_t sample = 0;  // 0: full mesh
  int trials = 9;
  bool one_by_one = false;
};

// /proc/self/status in KiB.
long status_kib(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::size_t n = std::strlen(key);
  while (std::getline(in, line)) {
    if (line.compare(0, n, key) == 0) return std::strtol(line.c_str() + n + 1, nullptr, 10);
  }
  return -1;
}

std::string pop_name(int q) { return "pop-" + std::to_string(q); }

mesh::MeshAgent make_agent(const Scenario& s, int n, const std::string& id, int pop) {
  mesh::MeshAgent a;
  a.agent_id = id;
  a.pop = pop_name(pop);
  a.region = "region-" + std::to_string(pop % s.regions);
  const std::string ip = "10." + std::to_string((n >> 16) & 255) + "." + std::to_string((n >> 8) & 255) + "." +
                         std::to_string(n & 255);
  a.reflectors.emplace_back(asio::ip::make_address(ip), 8627);
  return a;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

void run(const Scenario& s) {
  mesh::MeshRule rule;
  rule.name = "bench";
  rule.kind = s.sample == 0 ? mesh::MeshRule::Kind::kFullMesh : mesh::MeshRule::Kind::kSampled;
  rule.sample = s.sample;
  rule.per_pop = s.per_pop;
  const long rss_before = status_kib("VmRSS:");
  const std::int64_t heap_before = g_live_bytes.load();
  auto planner = std::make_unique<mesh::MeshPlanner>(mesh::MeshRules{{rule}}, 0);
  std::vector<mesh::MeshAgent> fleet;
  for (int n = 0; n < s.agents; ++n) {
    fleet.push_back(make_agent(s, n, "edge-" + pop_name(n % s.pops) + "-" + std::to_string(n / s.pops), n % s.pops));
  }
  const Clock::time_point build_start = Clock::now();
  if (s.one_by_one) {
    for (const mesh::MeshAgent& a : fleet) planner->upsert(a);
  } else {
    planner->upsert_many(fleet);
  }
  const double build_ms = ms_since(build_start);
  fleet.clear();
  fleet.shrink_to_fit();
  const std::int64_t heap = g_live_bytes.load() - heap_before;
  const long rss = status_kib("VmRSS:") - rss_before;
  const mesh::PlannerStats stats = planner->stats();

  std::vector<double> join_ms, leave_ms, own_ms;
  std::vector<double> joined_changed, left_changed;
  const std::uint64_t recomputed_before = planner->stats().recomputed_lists;
  for (int t = 0; t < s.trials; ++t) {
    const int pop = (t * 97 + 13) % s.pops;
    const std::string id = "edge-joining-" + std::to_string(t);
    const mesh::MeshAgent a = make_agent(s, s.agents + t, id, pop);
    Clock::time_point start = Clock::now();
    const std::size_t joined = planner->upsert(a).size();
    join_ms.push_back(ms_since(start));
    start = Clock::now();
    const std::size_t left = planner->remove(id).size();
    leave_ms.push_back(ms_since(start));
    joined_changed.push_back(static_cast<double>(joined));
    left_changed.push_back(static_cast<double>(left));
    // The peer's unit: one list from scratch (no reflectors: no other list is touched).
    mesh::MeshAgent quiet = a;
    quiet.reflectors.clear();
    start = Clock::now();
    planner->upsert(quiet);
    own_ms.push_back(ms_since(start));
    planner->remove(id);
  }
  const double patched = static_cast<double>(planner->stats().recomputed_lists - recomputed_before) / s.trials;

  char kind[48];
  if (s.sample == 0) {
    std::snprintf(kind, sizeof kind, "full mesh, per_pop %u", s.per_pop);
  } else {
    std::snprintf(kind, sizeof kind, "sampled %u PoPs, per_pop %u", s.sample, s.per_pop);
  }
  std::printf("\n%d agents, %d PoPs, %d regions, %s\n", s.agents, s.pops, s.regions, kind);
  std::printf("  lists' entries          %zu (%.1f per agent)\n", stats.planned_targets,
              static_cast<double>(stats.planned_targets) / s.agents);
  std::printf("  planner heap            %.1f MiB (%.0f bytes per entry), VmRSS +%.1f MiB, VmHWM %.1f MiB\n",
              static_cast<double>(heap) / (1 << 20),
              stats.planned_targets ? static_cast<double>(heap) / static_cast<double>(stats.planned_targets) : 0.0,
              static_cast<double>(rss) / 1024, static_cast<double>(status_kib("VmHWM:")) / 1024);
  std::printf("  build                   %.0f ms (%s)\n", build_ms,
              s.one_by_one ? "one upsert per agent" : "one upsert_many of the fleet");
  std::printf("  one join                %.3f ms median (min %.3f, max %.3f), %.0f lists changed\n", median(join_ms),
              *std::min_element(join_ms.begin(), join_ms.end()), *std::max_element(join_ms.begin(), join_ms.end()),
              median(joined_changed));
  std::printf("  one leave               %.3f ms median (min %.3f, max %.3f), %.0f lists changed\n", median(leave_ms),
              *std::min_element(leave_ms.begin(), leave_ms.end()), *std::max_element(leave_ms.begin(), leave_ms.end()),
              median(left_changed));
  std::printf("  probers examined        %.0f per join+leave+own-list round\n", patched);
  std::printf("  peer: every list from scratch: %.3f ms per list x %d = %.0f ms per change\n", median(own_ms),
              s.agents, median(own_ms) * s.agents);
}

bool flag(int argc, char** argv, int& i, const char* name, long& value) {
  if (std::strcmp(argv[i], name) != 0 || i + 1 >= argc) return false;
  value = std::strtol(argv[++i], nullptr, 10);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Scenario s;
  bool custom = false;
  for (int i = 1; i < argc; ++i) {
    long v = 0;
    if (flag(argc, argv, i, "--agents", v)) {
      s.agents = static_cast<int>(v);
      custom = true;
    } else if (flag(argc, argv, i, "--pops", v)) {
      s.pops = static_cast<int>(v);
    } else if (flag(argc, argv, i, "--regions", v)) {
      s.regions = static_cast<int>(v);
    } else if (flag(argc, argv, i, "--per-pop", v)) {
      s.per_pop = static_cast<std::uint32_t>(v);
      custom = true;
    } else if (flag(argc, argv, i, "--sample", v)) {
      s.sample = static_cast<std::uint32_t>(v);
      custom = true;
    } else if (std::strcmp(argv[i], "--one-by-one") == 0) {
      s.one_by_one = true;
    } else if (flag(argc, argv, i, "--trials", v)) {
      s.trials = static_cast<int>(std::max(1L, v));
    } else {
      std::fprintf(stderr,
                   "usage: mesh_recompute [--agents N] [--pops P] [--regions R] [--per-pop K] [--sample S] "
                   "[--trials T] [--one-by-one]\n");
      return 2;
    }
  }
  if (s.agents < 1 || s.pops < 2 || s.regions < 1) {
    std::fprintf(stderr, "mesh_recompute: need at least 1 agent, 2 PoPs and 1 region\n");
    return 2;
  }
  std::printf("mesh planner: time of one agent joining and leaving, and the planner's memory\n");
  if (custom) {
    run(s);
    return 0;
  }
  run(s);  // 10,000 agents, 300 PoPs, per_pop 1
  Scenario sampled = s;
  sampled.sample = 20;
  run(sampled);
  Scenario all = s;
  all.agents = 1'000;
  all.per_pop = 0;
  run(all);
  return 0;
}
