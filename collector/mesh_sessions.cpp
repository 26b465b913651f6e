#include "collector/mesh_sessions.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>

#include "collector/mesh/mesh_planner.hpp"
#include "platform/log.hpp"
#include "schemas/frame_codec.hpp"

namespace vantage::collector {

namespace {

using Clock = std::chrono::steady_clock;

struct HelloEvent {
  std::string agent_id, region, pop;
  MeshHello hello;
  std::uint64_t connection = 0;
  ListSender send;
};
struct RunningEvent {
  std::string agent_id;
  std::uint64_t connection = 0;
  std::uint64_t version = 0;
};
struct GoneEvent {
  std::string agent_id;
  std::uint64_t connection = 0;
};
using Event = std::variant<HelloEvent, RunningEvent, GoneEvent>;

}  // namespace

MeshHello mesh_hello_of(const wire::Hello& hello) {
  MeshHello out;
  out.target_list_version = hello.target_list_version();
  out.accepts_lists = (hello.capabilities() & wire::kCapabilityTargetList) != 0;
  const auto* reflectors = hello.reflectors();
  if (reflectors == nullptr) return out;
  for (const wire::ReflectorAddress* r : *reflectors) {
    if (out.reflectors.size() >= kMaxReflectors) break;
    if (r == nullptr || r->port() == 0) continue;
    asio::ip::address_v6::bytes_type bytes{};
    std::memcpy(bytes.data(), r->ip()->Data(), bytes.size());
    const asio::ip::address_v6 v6(bytes);
    asio::ip::address address = v6;
    if (v6.is_v4_mapped()) {
      const asio::ip::address_v4 v4 = asio::ip::make_address_v4(asio::ip::v4_mapped, v6);
      if (v4.is_unspecified() || v4.is_multicast() || v4 == asio::ip::address_v4::broadcast()) continue;
      address = v4;
    } else if (v6.is_unspecified() || v6.is_multicast()) {
      continue;
    }
    const asio::ip::udp::endpoint endpoint(address, r->port());
    if (std::find(out.reflectors.begin(), out.reflectors.end(), endpoint) == out.reflectors.end()) {
      out.reflectors.push_back(endpoint);
    }
  }
  return out;
}

// The agent's bound on a list's targets (agent/ship/target_list.hpp).
constexpr std::size_t kMaxListTargets = 20'000;

std::vector<std::uint8_t> target_list_frame(const mesh::TargetListPlan& plan) {
  flatbuffers::FlatBufferBuilder fbb(256 + plan.targets.size() * 96);
  std::vector<flatbuffers::Offset<wire::MeshTarget>> targets;
  targets.reserve(plan.targets.size());
  for (const mesh::PlannedTarget& t : plan.targets) {
    targets.push_back(wire::CreateMeshTargetDirect(
        fbb, t.host.c_str(), t.port, t.probe.protocol, t.probe.interval_ms, t.probe.payload_size, t.probe.dscp,
        t.probe.paths, t.pop.empty() ? nullptr : t.pop.c_str(), t.agent_id.empty() ? nullptr : t.agent_id.c_str()));
  }
  const auto list = wire::CreateTargetListDirect(fbb, plan.version, &targets);
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, wire::Message::TargetList, list.Union()));
  std::vector<std::uint8_t> out;
  out.reserve(fbb.GetSize() + 4);
  wire::append_frame(out, {fbb.GetBufferPointer(), fbb.GetSize()});
  return out;
}

struct MeshSessions::Impl {
  // An agent the mesh knows: connected, or gone for less than forget_after. Mesh thread only.
  struct Entry {
    std::string region, pop;
    std::uint64_t connection = 0;  // the newest connection's id
    bool connected = false;
    bool accepts_lists = false;
    bool in_planner = false;
    ListSender send;
    std::uint64_t sent = 0;
    std::uint64_t running = 0;
    Clock::time_point forget_at{};  // while disconnected
  };

  Impl(std::shared_ptr<const mesh::MeshRules> r, std::chrono::milliseconds f, std::uint64_t first_version)
      : rules(std::move(r)), forget_after(f), planner(*rules, first_version) {}

  std::shared_ptr<const mesh::MeshRules> rules;
  std::chrono::milliseconds forget_after;
  mesh::MeshPlanner planner;  // mesh thread only

  mutable std::mutex mutex;  // events, stopping
  std::condition_variable cv;
  std::vector<Event> events;
  bool stopping = false;
  std::thread thread;

  // Mesh thread only.
  std::unordered_map<std::string, Entry> entries;
  std::multimap<Clock::time_point, std::pair<std::string, std::uint64_t>> forgets;  // (agent, connection)
  std::unordered_set<std::string> dirty;  // lists to send this round
  // This round's upserts, applied together (a reconnect storm rebuilds every list once, not once
  // per agent); flushed before anything else changes the planner, so the order holds.
  std::vector<mesh::MeshAgent> upserts;
  std::uint64_t lists_sent = 0;

  mutable std::mutex counters_mutex;
  MeshCounters published;
  std::uint64_t lists_replaced = 0;  // under counters_mutex

  void queue(Event event) {
    {
      std::lock_guard lock(mutex);
      if (stopping) return;
      events.push_back(std::move(event));
    }
    cv.notify_one();
  }

  void mark(const std::vector<std::string>& changed) { dirty.insert(changed.begin(), changed.end()); }

  void flush_upserts() {
    if (upserts.empty()) return;
    mark(planner.upsert_many(upserts));
    upserts.clear();
  }

  void apply(HelloEvent& e) {
    Entry& entry = entries[e.agent_id];
    entry.region = e.region;
    entry.pop = e.pop;
    entry.connection = e.connection;
    entry.connected = true;
    entry.accepts_lists = e.hello.accepts_lists;
    entry.send = std::move(e.send);
    // What the agent holds now: it gets a list only when the plan's differs.
    entry.sent = e.hello.target_list_version;
    entry.running = e.hello.target_list_version;
    entry.forget_at = {};
    // An agent that neither takes lists nor answers probes has no place in the mesh.
    if (entry.accepts_lists || !e.hello.reflectors.empty()) {
      upserts.push_back({e.agent_id, e.region, e.pop, std::move(e.hello.reflectors)});
      entry.in_planner = true;
      dirty.insert(e.agent_id);
    } else if (entry.in_planner) {
      flush_upserts();
      mark(planner.remove(e.agent_id));
      entry.in_planner = false;
    }
  }

  void apply(const RunningEvent& e) {
    const auto found = entries.find(e.agent_id);
    if (found != entries.end() && found->second.connection == e.connection) found->second.running = e.version;
  }

  void apply(const GoneEvent& e) {
    const auto found = entries.find(e.agent_id);
    if (found == entries.end() || found->second.connection != e.connection || !found->second.connected) return;
    Entry& entry = found->second;
    entry.connected = false;
    entry.send = nullptr;
    entry.forget_at = Clock::now() + forget_after;
    forgets.emplace(entry.forget_at, std::make_pair(e.agent_id, e.connection));
  }

  // Agents gone for forget_after leave the planner; their probers get lists without them.
  void forget_due(Clock::time_point now) {
    while (!forgets.empty() && forgets.begin()->first <= now) {
      const auto [agent_id, connection] = forgets.begin()->second;
      forgets.erase(forgets.begin());
      const auto found = entries.find(agent_id);
      if (found == entries.end() || found->second.connected || found->second.connection != connection) continue;
      if (found->second.in_planner) mark(planner.remove(agent_id));
      entries.erase(found);
      dirty.erase(agent_id);
    }
  }

  void send_dirty() {
    for (const std::string& agent_id : dirty) {
      const auto found = entries.find(agent_id);
      if (found == entries.end()) continue;
      Entry& entry = found->second;
      if (!entry.connected || !entry.accepts_lists || !entry.send) continue;
      const mesh::TargetListPlan* plan = planner.plan(agent_id);
      if (plan == nullptr || plan->version == entry.sent) continue;
      std::vector<std::uint8_t> frame = target_list_frame(*plan);
      entry.sent = plan->version;
      // An agent refuses a list past these bounds, and closes its session on a frame past its
      // limit: that session would come back with its old version and get the same frame again.
      // Not sent, the agent keeps its list and shows as stale.
      if (plan->targets.size() > kMaxListTargets || frame.size() > wire::kDefaultMaxFrame) {
        platform::log(platform::LogLevel::kWarning,
                      "mesh: target list v%llu for %s has %zu targets (%zu bytes), more than an agent takes; not sent",
                      static_cast<unsigned long long>(plan->version), platform::escape_for_log(agent_id).c_str(),
                      plan->targets.size(), frame.size());
        continue;
      }
      entry.send(std::move(frame), plan->version);
      ++lists_sent;
    }
    dirty.clear();
  }

  void publish() {
    MeshCounters c;
    c.enabled = true;
    const mesh::PlannerStats stats = planner.stats();
    c.agents = stats.agents;
    c.pops = stats.pops;
    c.planned_targets = stats.planned_targets;
    c.lists_recomputed = stats.recomputed_lists;
    c.lists_sent = lists_sent;
    c.versions.reserve(entries.size());
    for (const auto& [agent_id, entry] : entries) {
      MeshAgentVersions v;
      v.agent_id = agent_id;
      v.region = entry.region;
      v.pop = entry.pop;
      const mesh::TargetListPlan* plan = entry.in_planner ? planner.plan(agent_id) : nullptr;
      v.planned = plan != nullptr ? plan->version : 0;
      v.sent = entry.sent;
      v.running = entry.running;
      v.connected = entry.connected;
      v.accepts_lists = entry.accepts_lists;
      if (v.stale()) ++c.agents_stale;
      c.versions.push_back(std::move(v));
    }
    std::sort(c.versions.begin(), c.versions.end(),
              [](const MeshAgentVersions& a, const MeshAgentVersions& b) { return a.agent_id < b.agent_id; });
    std::lock_guard lock(counters_mutex);
    c.lists_replaced = lists_replaced;
    published = std::move(c);
  }

  void run() {
    std::vector<Event> round;
    for (;;) {
      {
        std::unique_lock lock(mutex);
        const auto ready = [this] { return stopping || !events.empty(); };
        if (forgets.empty()) {
          cv.wait(lock, ready);
        } else {
          cv.wait_until(lock, forgets.begin()->first, ready);
        }
        if (stopping) return;
        round.swap(events);
      }
      for (Event& event : round) std::visit([this](auto& e) { apply(e); }, event);
      round.clear();
      flush_upserts();
      forget_due(Clock::now());
      send_dirty();
      publish();
    }
  }
};

MeshSessions::MeshSessions(std::shared_ptr<const mesh::MeshRules> rules, std::chrono::milliseconds forget_after,
                           std::uint64_t first_version)
    : impl_(std::make_unique<Impl>(std::move(rules), forget_after, first_version)) {
  std::lock_guard lock(impl_->counters_mutex);
  impl_->published.enabled = true;
}

MeshSessions::~MeshSessions() { stop(); }

void MeshSessions::start() {
  if (impl_->thread.joinable()) return;
  impl_->thread = std::thread([impl = impl_.get()] { impl->run(); });
}

void MeshSessions::stop() {
  {
    std::lock_guard lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->cv.notify_one();
  if (impl_->thread.joinable()) impl_->thread.join();
}

void MeshSessions::hello(std::string agent_id, std::string region, std::string pop, MeshHello hello,
                         std::uint64_t connection, ListSender send) {
  impl_->queue(HelloEvent{std::move(agent_id), std::move(region), std::move(pop), std::move(hello), connection,
                          std::move(send)});
}

void MeshSessions::running(std::string agent_id, std::uint64_t connection, std::uint64_t version) {
  impl_->queue(RunningEvent{std::move(agent_id), connection, version});
}

void MeshSessions::gone(std::string agent_id, std::uint64_t connection) {
  impl_->queue(GoneEvent{std::move(agent_id), connection});
}

void MeshSessions::count_replaced() {
  std::lock_guard lock(impl_->counters_mutex);
  ++impl_->lists_replaced;
  ++impl_->published.lists_replaced;
}

MeshCounters MeshSessions::counters() const {
  std::lock_guard lock(impl_->counters_mutex);
  return impl_->published;
}

}  // namespace vantage::collector
