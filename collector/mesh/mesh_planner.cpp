#include "collector/mesh/mesh_planner.hpp"

#include <algorithm>
#include <limits>
#include <tuple>
#include <unordered_map>
#include <utility>

namespace vantage::collector::mesh {

namespace {

constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

// FNV-1a: std::hash differs between standard libraries and builds, and choices must survive a
// collector restart (and an armhf collector) unchanged.
std::uint64_t stable_hash(std::string_view text) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (const char c : text) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::uint64_t mix(std::uint64_t x) {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// Rendezvous score: each prober ranks candidates by its own permutation.
std::uint64_t score(std::uint64_t prober, std::uint64_t candidate) { return mix(prober ^ mix(candidate)); }

bool is_v4(const asio::ip::address& a) { return a.is_v4() || (a.is_v6() && a.to_v6().is_v4_mapped()); }

// What a prober's list holds before de-duplication: rule `rule` gives target agent `target` (a
// slot) of PoP `pop`, or the rule's extra target (target and pop kNone).
struct Contribution {
  std::uint32_t rule = 0;
  std::uint32_t pop = kNone;
  std::uint32_t target = kNone;
  friend bool operator==(const Contribution&, const Contribution&) = default;
  friend bool operator<(const Contribution& a, const Contribution& b) {
    return std::tie(a.rule, a.pop, a.target) < std::tie(b.rule, b.pop, b.target);
  }
};

// A PoP's reflector-holding agent with its id's hash beside it: a selection reads the hashes of a
// whole PoP for every prober, and they would otherwise be a cache miss each.
struct TargetRef {
  std::uint64_t hash = 0;
  std::uint32_t slot = 0;
};

bool list_order(const PlannedTarget& a, const PlannedTarget& b) {
  return std::tie(a.agent_id, a.host, a.port, a.probe.protocol) < std::tie(b.agent_id, b.host, b.port, b.probe.protocol);
}

bool same_key(const PlannedTarget& a, const PlannedTarget& b) {
  return a.host == b.host && a.port == b.port && a.probe.protocol == b.probe.protocol;
}

}  // namespace

struct MeshPlanner::Impl {
  struct Agent {
    bool used = false;
    MeshAgent info;
    std::uint64_t id_hash = 0;
    std::uint32_t pop = kNone;
    bool has_v4 = false;
    bool has_v6 = false;
    TargetListPlan plan;
    std::vector<Contribution> meta;      // parallel to plan.targets: where each entry came from
    std::vector<Contribution> shadowed;  // duplicates of an entry an earlier rule gave
  };
  struct Pop {
    std::string region, name;
    std::uint64_t hash = 0;
    std::vector<std::uint32_t> members;  // agent slots
    std::vector<TargetRef> targets;      // members with reflectors
  };

  MeshRules rules;
  std::uint64_t last_version;
  std::vector<Agent> agents;
  std::vector<std::uint32_t> free_slots;
  std::unordered_map<std::string, std::uint32_t> agent_index;
  std::vector<Pop> pops;
  std::unordered_map<std::string, std::uint32_t> pop_index;  // region '\n' pop
  // "HOST PORT" to the agents announcing it, and extra targets: see find_clash().
  std::unordered_map<std::string, std::uint32_t> endpoint_users;
  std::size_t agent_count = 0;
  std::size_t planned_targets = 0;
  std::uint64_t recomputed_lists = 0;
  // Scratch, kept to spare an allocation per prober.
  std::vector<std::pair<std::uint64_t, std::uint32_t>> ranked;
  std::vector<Contribution> removed, added, before, after;

  Impl(MeshRules r, std::uint64_t first_version) : rules(std::move(r)), last_version(first_version) {
    for (const MeshRule& rule : rules.rules) {
      if (rule.kind == MeshRule::Kind::kExtraTarget) ++endpoint_users[endpoint_key(rule.host, rule.port)];
    }
  }

  std::uint32_t pop_of(const std::string& region, const std::string& name) {
    std::string key = region + '\n' + name;
    const auto it = pop_index.find(key);
    if (it != pop_index.end()) return it->second;
    const auto id = static_cast<std::uint32_t>(pops.size());
    pops.push_back(Pop{region, name, stable_hash(key), {}, {}});
    pop_index.emplace(std::move(key), id);
    return id;
  }

  static bool from_matches(const MeshRule& r, const Pop& p) {
    return (r.from_region.empty() || r.from_region == p.region) && (r.from_pop.empty() || r.from_pop == p.name);
  }

  bool to_matches(const MeshRule& r, std::uint32_t prober_pop, std::uint32_t q) const {
    if (q == prober_pop) return false;
    const Pop& from = pops[prober_pop];
    const Pop& to = pops[q];
    if (r.to_same_region && to.region != from.region) return false;
    if (r.to_other_regions && to.region == from.region) return false;
    if (!r.to_region.empty() && to.region != r.to_region) return false;
    return r.to_pop.empty() || r.to_pop == to.name;
  }

  // The `per_pop` agents of PoP q that prober p takes under rule i (all of them for 0).
  void select_in_pop(const Agent& p, std::uint32_t i, std::uint32_t q, std::vector<Contribution>& out) {
    select_among(p, i, q, pops[q].targets, out);
  }
  // The same among `targets` (PoP q's reflectors before a change, to know what p held).
  void select_among(const Agent& p, std::uint32_t i, std::uint32_t q, const std::vector<TargetRef>& targets,
                    std::vector<Contribution>& out) {
    const std::uint32_t per_pop = rules.rules[i].per_pop;
    if (per_pop == 0 || per_pop >= targets.size()) {
      for (const TargetRef& t : targets) out.push_back({i, q, t.slot});
      return;
    }
    if (per_pop == 1) {
      std::uint32_t best = targets.front().slot;
      std::uint64_t best_score = score(p.id_hash, targets.front().hash);
      for (const TargetRef& t : targets) {
        const std::uint64_t s = score(p.id_hash, t.hash);
        if (s < best_score) {
          best_score = s;
          best = t.slot;
        }
      }
      out.push_back({i, q, best});
      return;
    }
    ranked.clear();
    for (const TargetRef& t : targets) ranked.emplace_back(score(p.id_hash, t.hash), t.slot);
    std::nth_element(ranked.begin(), ranked.begin() + per_pop, ranked.end());
    for (std::uint32_t k = 0; k < per_pop; ++k) out.push_back({i, q, ranked[k].second});
  }

  // A kSampled rule's PoPs for prober p: the `sample` lowest scores among the PoPs it matches
  // that have a reflector, sorted.
  std::vector<std::uint32_t> sample_pops(const Agent& p, std::uint32_t i) {
    const MeshRule& r = rules.rules[i];
    ranked.clear();
    for (std::uint32_t q = 0; q < pops.size(); ++q) {
      if (!pops[q].targets.empty() && to_matches(r, p.pop, q)) ranked.emplace_back(score(p.id_hash, pops[q].hash), q);
    }
    const std::size_t n = std::min<std::size_t>(r.sample, ranked.size());
    std::nth_element(ranked.begin(), ranked.begin() + static_cast<std::ptrdiff_t>(n), ranked.end());
    std::vector<std::uint32_t> chosen;
    chosen.reserve(n);
    for (std::size_t k = 0; k < n; ++k) chosen.push_back(ranked[k].second);
    std::sort(chosen.begin(), chosen.end());
    return chosen;
  }

  std::vector<Contribution> all_contributions(const Agent& p) {
    std::vector<Contribution> out;
    for (std::uint32_t i = 0; i < rules.rules.size(); ++i) {
      const MeshRule& r = rules.rules[i];
      if (!from_matches(r, pops[p.pop])) continue;
      switch (r.kind) {
        case MeshRule::Kind::kExtraTarget:
          out.push_back({i, kNone, kNone});
          break;
        case MeshRule::Kind::kFullMesh:
          for (std::uint32_t q = 0; q < pops.size(); ++q) {
            if (!pops[q].targets.empty() && to_matches(r, p.pop, q)) select_in_pop(p, i, q, out);
          }
          break;
        case MeshRule::Kind::kSampled:
          for (const std::uint32_t q : sample_pops(p, i)) select_in_pop(p, i, q, out);
          break;
      }
    }
    return out;
  }

  PlannedTarget materialise(const Agent& p, const Contribution& c) const {
    const MeshRule& r = rules.rules[c.rule];
    PlannedTarget t;
    t.probe = r.probe;
    if (c.target == kNone) {
      t.host = r.host;
      t.port = r.port;
      return t;
    }
    const Agent& target = agents[c.target];
    const asio::ip::udp::endpoint* chosen = &target.info.reflectors.front();
    for (const asio::ip::udp::endpoint& e : target.info.reflectors) {
      if (is_v4(e.address()) ? p.has_v4 : p.has_v6) {
        chosen = &e;
        break;
      }
    }
    // A v4-mapped address is announced as IPv6 on the wire but probed as IPv4.
    t.host = host_text(*chosen);
    t.port = chosen->port();
    t.pop = pops[c.pop].name;
    t.agent_id = target.info.agent_id;
    return t;
  }

  std::uint64_t next_version() { return ++last_version; }

  // The entries of one agent (or, for "", the extra targets) in a list sorted by agent id.
  static std::pair<std::size_t, std::size_t> entries_of(const Agent& p, const std::string& agent_id) {
    const auto& v = p.plan.targets;
    const auto lo = std::lower_bound(v.begin(), v.end(), agent_id,
                                     [](const PlannedTarget& t, const std::string& id) { return t.agent_id < id; });
    auto hi = lo;
    while (hi != v.end() && hi->agent_id == agent_id) ++hi;
    return {static_cast<std::size_t>(lo - v.begin()), static_cast<std::size_t>(hi - v.begin())};
  }

  std::vector<Contribution>::iterator find_entry(Agent& p, const Contribution& c) {
    if (c.target == kNone) return std::find(p.meta.begin(), p.meta.end(), c);
    const auto [lo, hi] = entries_of(p, agents[c.target].info.agent_id);
    for (std::size_t k = lo; k < hi; ++k) {
      if (p.meta[k] == c) return p.meta.begin() + static_cast<std::ptrdiff_t>(k);
    }
    return p.meta.end();
  }

  // The entry of p's list with t's (host, port, protocol), or the list's size. Only an address
  // that two announcers share (agents behind one NAT, an extra target on a reflector) can be held
  // by another agent's entry; otherwise only t's own agent's entries need a look.
  std::size_t find_clash(const Agent& p, const PlannedTarget& t) const {
    const auto& v = p.plan.targets;
    std::size_t lo = 0, hi = v.size();
    const auto users = endpoint_users.find(endpoint_key(t.host, t.port));
    if (users == endpoint_users.end() || users->second <= 1) std::tie(lo, hi) = entries_of(p, t.agent_id);
    for (std::size_t k = lo; k < hi; ++k) {
      if (same_key(v[k], t)) return k;
    }
    return v.size();
  }

  static std::string endpoint_key(const std::string& host, std::uint16_t port) {
    return host + ' ' + std::to_string(port);
  }

  static std::string host_text(const asio::ip::udp::endpoint& e) {
    asio::ip::address address = e.address();
    if (address.is_v6() && address.to_v6().is_v4_mapped()) {
      address = asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6());
    }
    return address.to_string();
  }

  void count_endpoints(const MeshAgent& a, int delta) {
    for (const asio::ip::udp::endpoint& e : a.reflectors) {
      const std::string key = endpoint_key(host_text(e), e.port());
      if (delta > 0) {
        ++endpoint_users[key];
      } else if (const auto it = endpoint_users.find(key); it != endpoint_users.end() && --it->second == 0) {
        endpoint_users.erase(it);
      }
    }
  }

  // The whole list from scratch: for an agent that is new or whose own PoP or reflectors changed.
  bool rebuild(std::uint32_t slot, bool is_new) {
    Agent& p = agents[slot];
    std::vector<Contribution> contributions = all_contributions(p);
    std::vector<std::pair<PlannedTarget, Contribution>> entries;
    entries.reserve(contributions.size());
    for (const Contribution& c : contributions) entries.emplace_back(materialise(p, c), c);
    // De-duplicate on (host, port, protocol), the earliest rule winning (then the lowest agent
    // id, for agents that announce one address, e.g. behind one NAT).
    std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
      return std::tie(a.first.host, a.first.port, a.first.probe.protocol, a.second.rule, a.first.agent_id) <
             std::tie(b.first.host, b.first.port, b.first.probe.protocol, b.second.rule, b.first.agent_id);
    });
    std::vector<std::pair<PlannedTarget, Contribution>> winners;
    std::vector<Contribution> shadowed;
    for (auto& e : entries) {
      if (!winners.empty() && same_key(winners.back().first, e.first)) {
        shadowed.push_back(e.second);
      } else {
        winners.push_back(std::move(e));
      }
    }
    std::sort(winners.begin(), winners.end(), [](const auto& a, const auto& b) { return list_order(a.first, b.first); });
    std::vector<PlannedTarget> targets;
    std::vector<Contribution> meta;
    targets.reserve(winners.size());
    meta.reserve(winners.size());
    for (auto& w : winners) {
      targets.push_back(std::move(w.first));
      meta.push_back(w.second);
    }
    ++recomputed_lists;
    p.meta = std::move(meta);
    p.shadowed = std::move(shadowed);
    if (!is_new && targets == p.plan.targets) return false;
    planned_targets = planned_targets - p.plan.targets.size() + targets.size();
    p.plan.targets = std::move(targets);
    p.plan.version = next_version();
    return true;
  }

  // What prober p holds from rule i in PoP q, before de-duplication.
  static void existing(const Agent& p, std::uint32_t i, std::uint32_t q, std::vector<Contribution>& out) {
    for (const Contribution& c : p.meta) {
      if (c.rule == i && c.pop == q) out.push_back(c);
    }
    for (const Contribution& c : p.shadowed) {
      if (c.rule == i && c.pop == q) out.push_back(c);
    }
  }

  // Prober p's list patched for a change in PoPs `changed` (the one or two PoPs an agent left or
  // joined as a target; `old_targets` their reflectors before it): what p held there and holds
  // now are two selections in O(PoP size) each, and only a prober whose choice differs pays
  // O(list size) to apply it. `moved`: a target agent whose reflectors changed in place, so its
  // entries are rewritten even when the choices stay.
  bool patch(std::uint32_t slot, const std::vector<std::uint32_t>& changed,
             const std::vector<std::vector<TargetRef>>& old_targets, bool eligibility_changed, std::uint32_t moved) {
    Agent& p = agents[slot];
    removed.clear();
    added.clear();
    before.clear();
    after.clear();
    auto compare = [&](bool force) {
      std::sort(before.begin(), before.end());
      std::sort(after.begin(), after.end());
      const bool touches_moved =
          force && std::any_of(before.begin(), before.end(), [&](const Contribution& c) { return c.target == moved; });
      if (before != after || touches_moved) {
        removed.insert(removed.end(), before.begin(), before.end());
        added.insert(added.end(), after.begin(), after.end());
      }
      before.clear();
      after.clear();
    };
    for (std::uint32_t i = 0; i < rules.rules.size(); ++i) {
      const MeshRule& r = rules.rules[i];
      if (r.kind == MeshRule::Kind::kExtraTarget || !from_matches(r, pops[p.pop])) continue;
      if (r.kind == MeshRule::Kind::kFullMesh) {
        for (std::size_t k = 0; k < changed.size(); ++k) {
          const std::uint32_t q = changed[k];
          if (!to_matches(r, p.pop, q)) continue;
          if (moved == kNone) {
            select_among(p, i, q, old_targets[k], before);
          } else {
            existing(p, i, q, before);
          }
          select_in_pop(p, i, q, after);
          compare(moved != kNone);
        }
        continue;
      }
      // kSampled: the chosen PoPs change only when a PoP gains its first reflector or loses its last.
      if (!eligibility_changed) {
        // The same PoPs: only a changed PoP that p holds can change (and p holds few).
        for (const std::uint32_t q : changed) {
          existing(p, i, q, before);
          if (!before.empty() || moved != kNone) select_in_pop(p, i, q, after);
          if (before.empty()) after.clear();
          compare(moved != kNone);
        }
        continue;
      }
      std::vector<std::uint32_t> held;
      for (const auto* list : {&p.meta, &p.shadowed}) {
        for (const Contribution& c : *list) {
          if (c.rule == i) held.push_back(c.pop);
        }
      }
      std::sort(held.begin(), held.end());
      held.erase(std::unique(held.begin(), held.end()), held.end());
      const std::vector<std::uint32_t> chosen = sample_pops(p, i);
      std::vector<std::uint32_t> check = changed;
      check.insert(check.end(), held.begin(), held.end());
      check.insert(check.end(), chosen.begin(), chosen.end());
      std::sort(check.begin(), check.end());
      check.erase(std::unique(check.begin(), check.end()), check.end());
      for (const std::uint32_t q : check) {
        existing(p, i, q, before);
        if (std::binary_search(chosen.begin(), chosen.end(), q) && !pops[q].targets.empty()) {
          select_in_pop(p, i, q, after);
        }
        compare(moved != kNone);
      }
    }
    ++recomputed_lists;
    if (removed.empty() && added.empty()) return false;

    std::vector<PlannedTarget> gone, came;
    auto insert_exposed = [&](PlannedTarget t, const Contribution& c) {
      // Grown by an eighth, not doubled: a join adds one entry to thousands of full lists, and
      // doubling would double their memory for it.
      if (p.plan.targets.size() == p.plan.targets.capacity()) {
        const std::size_t room = p.plan.targets.size() + p.plan.targets.size() / 8 + 4;
        p.plan.targets.reserve(room);
        p.meta.reserve(room);
      }
      const auto at = std::lower_bound(p.plan.targets.begin(), p.plan.targets.end(), t, list_order);
      const auto index = at - p.plan.targets.begin();
      came.push_back(t);
      p.plan.targets.insert(at, std::move(t));
      p.meta.insert(p.meta.begin() + index, c);
    };
    for (const Contribution& c : removed) {
      const auto it = find_entry(p, c);
      if (it == p.meta.end()) {
        const auto s = std::find(p.shadowed.begin(), p.shadowed.end(), c);
        if (s != p.shadowed.end()) p.shadowed.erase(s);
        continue;
      }
      const auto index = it - p.meta.begin();
      PlannedTarget old = std::move(p.plan.targets[static_cast<std::size_t>(index)]);
      p.plan.targets.erase(p.plan.targets.begin() + index);
      p.meta.erase(it);
      // A duplicate an earlier rule's entry hid takes its place: the earliest rule among them.
      std::size_t best = p.shadowed.size();
      PlannedTarget best_target;
      for (std::size_t k = 0; k < p.shadowed.size(); ++k) {
        const Contribution& s = p.shadowed[k];
        if (std::find(removed.begin(), removed.end(), s) != removed.end()) continue;
        PlannedTarget t = materialise(p, s);
        if (same_key(t, old) &&
            (best == p.shadowed.size() ||
             std::tie(s.rule, t.agent_id) < std::tie(p.shadowed[best].rule, best_target.agent_id))) {
          best = k;
          best_target = std::move(t);
        }
      }
      gone.push_back(std::move(old));
      if (best != p.shadowed.size()) {
        const Contribution s = p.shadowed[best];
        p.shadowed.erase(p.shadowed.begin() + static_cast<std::ptrdiff_t>(best));
        insert_exposed(std::move(best_target), s);
      }
    }
    for (const Contribution& c : added) {
      PlannedTarget t = materialise(p, c);
      const std::size_t clash = find_clash(p, t);
      if (clash == p.plan.targets.size()) {
        insert_exposed(std::move(t), c);
      } else if (std::tie(p.meta[clash].rule, p.plan.targets[clash].agent_id) < std::tie(c.rule, t.agent_id)) {
        p.shadowed.push_back(c);
      } else {
        p.shadowed.push_back(p.meta[clash]);
        gone.push_back(std::move(p.plan.targets[clash]));
        p.plan.targets.erase(p.plan.targets.begin() + static_cast<std::ptrdiff_t>(clash));
        p.meta.erase(p.meta.begin() + static_cast<std::ptrdiff_t>(clash));
        insert_exposed(std::move(t), c);
      }
    }
    planned_targets = planned_targets + came.size() - gone.size();
    std::sort(gone.begin(), gone.end(), list_order);
    std::sort(came.begin(), came.end(), list_order);
    if (gone == came) return false;  // e.g. a reflector moved and came back as it was
    p.plan.version = next_version();
    return true;
  }

  // Every prober whose rules reach one of `changed`, patched; ids of the changed lists appended.
  void patch_probers(const std::vector<std::uint32_t>& changed, const std::vector<std::vector<TargetRef>>& old_targets,
                     bool eligibility_changed, std::uint32_t moved, std::uint32_t skip, std::vector<std::string>& out) {
    if (changed.empty()) return;
    for (std::uint32_t pp = 0; pp < pops.size(); ++pp) {
      if (pops[pp].members.empty()) continue;
      bool reaches = false;
      for (const MeshRule& r : rules.rules) {
        if (r.kind == MeshRule::Kind::kExtraTarget || !from_matches(r, pops[pp])) continue;
        for (const std::uint32_t q : changed) reaches = reaches || to_matches(r, pp, q);
      }
      if (!reaches) continue;
      for (const std::uint32_t slot : pops[pp].members) {
        if (slot != skip && patch(slot, changed, old_targets, eligibility_changed, moved)) out.push_back(agents[slot].info.agent_id);
      }
    }
  }

  static void erase_target(std::vector<TargetRef>& v, std::uint32_t slot) {
    const auto it = std::find_if(v.begin(), v.end(), [&](const TargetRef& t) { return t.slot == slot; });
    if (it != v.end()) v.erase(it);
  }
  static void erase_value(std::vector<std::uint32_t>& v, std::uint32_t x) {
    const auto it = std::find(v.begin(), v.end(), x);
    if (it != v.end()) v.erase(it);
  }

  std::vector<std::string> upsert(const MeshAgent& agent) {
    std::vector<std::string> out;
    (void)apply(agent, false, out);
    std::sort(out.begin(), out.end());
    return out;
  }

  // Many agents at once (a collector's start, when the whole fleet reconnects): past a fraction
  // of the fleet, one rebuild of every list beats patching every list once per agent.
  std::vector<std::string> upsert_many(const std::vector<MeshAgent>& batch) {
    std::vector<std::string> out;
    if (batch.size() * 8 < agent_count + batch.size()) {
      for (const MeshAgent& a : batch) (void)apply(a, false, out);
    } else {
      std::vector<std::uint32_t> fresh;
      bool any = false;
      for (const MeshAgent& a : batch) {
        const std::size_t known = agent_index.size();
        if (apply(a, true, out)) any = true;
        if (agent_index.size() != known) fresh.push_back(agent_index.find(a.agent_id)->second);
      }
      std::sort(fresh.begin(), fresh.end());
      for (std::uint32_t slot = 0; any && slot < agents.size(); ++slot) {
        if (agents[slot].used && rebuild(slot, std::binary_search(fresh.begin(), fresh.end(), slot))) {
          out.push_back(agents[slot].info.agent_id);
        }
      }
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
  }

  // One agent into the indexes; unless `bulk` (the caller rebuilds every list), the lists it
  // changes are patched and named in `out`. False: nothing changed.
  bool apply(const MeshAgent& agent, bool bulk, std::vector<std::string>& out) {
    auto found = agent_index.find(agent.agent_id);
    const bool is_new = found == agent_index.end();
    std::uint32_t slot = 0;
    std::uint32_t old_pop = kNone;
    bool was_target = false;
    if (is_new) {
      if (free_slots.empty()) {
        slot = static_cast<std::uint32_t>(agents.size());
        agents.emplace_back();
      } else {
        slot = free_slots.back();
        free_slots.pop_back();
      }
      agent_index.emplace(agent.agent_id, slot);
      ++agent_count;
    } else {
      slot = found->second;
      const MeshAgent& old = agents[slot].info;
      if (old.region == agent.region && old.pop == agent.pop && old.reflectors == agent.reflectors) return false;
      old_pop = agents[slot].pop;
      was_target = !old.reflectors.empty();
    }
    const std::uint32_t new_pop = pop_of(agent.region, agent.pop);
    const bool is_target = !agent.reflectors.empty();
    const bool reflectors_changed = !is_new && agents[slot].info.reflectors != agent.reflectors;
    if (!is_new) count_endpoints(agents[slot].info, -1);
    count_endpoints(agent, +1);
    {
      Agent& a = agents[slot];
      a.used = true;
      a.info = agent;
      a.id_hash = stable_hash(agent.agent_id);
      a.has_v4 = std::any_of(agent.reflectors.begin(), agent.reflectors.end(), [](const auto& e) { return is_v4(e.address()); });
      a.has_v6 = std::any_of(agent.reflectors.begin(), agent.reflectors.end(), [](const auto& e) { return !is_v4(e.address()); });
      a.pop = new_pop;
    }
    std::vector<std::uint32_t> changed;
    if (old_pop != kNone && was_target) changed.push_back(old_pop);
    if (is_target && (changed.empty() || changed.front() != new_pop)) changed.push_back(new_pop);
    // A PoP gaining its first reflector or losing its last changes kSampled rules' choices.
    std::vector<std::vector<TargetRef>> old_targets;
    for (const std::uint32_t q : changed) old_targets.push_back(pops[q].targets);
    if (old_pop != kNone) {
      erase_value(pops[old_pop].members, slot);
      if (was_target) erase_target(pops[old_pop].targets, slot);
    }
    pops[new_pop].members.push_back(slot);
    if (is_target) pops[new_pop].targets.push_back({agents[slot].id_hash, slot});
    bool eligibility_changed = false;
    for (std::size_t k = 0; k < changed.size(); ++k) {
      eligibility_changed = eligibility_changed || old_targets[k].empty() != pops[changed[k]].targets.empty();
    }
    if (bulk) return true;
    // In the same PoP with other reflectors: probers keep their choices but rewrite the entries.
    const std::uint32_t moved = reflectors_changed && old_pop == new_pop && was_target && is_target ? slot : kNone;
    patch_probers(changed, old_targets, eligibility_changed, moved, slot, out);
    if (rebuild(slot, is_new)) out.push_back(agent.agent_id);
    return true;
  }

  std::vector<std::string> remove(std::string_view agent_id) {
    std::vector<std::string> out;
    const auto found = agent_index.find(std::string(agent_id));
    if (found == agent_index.end()) return out;
    const std::uint32_t slot = found->second;
    Agent& a = agents[slot];
    const std::uint32_t pop = a.pop;
    count_endpoints(a.info, -1);
    erase_value(pops[pop].members, slot);
    std::vector<std::uint32_t> changed;
    std::vector<std::vector<TargetRef>> old_targets;
    bool eligibility_changed = false;
    if (!a.info.reflectors.empty()) {
      changed.push_back(pop);
      old_targets.push_back(pops[pop].targets);
      erase_target(pops[pop].targets, slot);
      eligibility_changed = pops[pop].targets.empty();
    }
    patch_probers(changed, old_targets, eligibility_changed, kNone, slot, out);
    Agent& gone = agents[slot];  // patch_probers does not reallocate, but be explicit
    planned_targets -= gone.plan.targets.size();
    gone = Agent{};
    agent_index.erase(found);
    free_slots.push_back(slot);
    --agent_count;
    std::sort(out.begin(), out.end());
    return out;
  }
};

MeshPlanner::MeshPlanner(MeshRules rules, std::uint64_t first_version)
    : impl_(std::make_unique<Impl>(std::move(rules), first_version)) {}

MeshPlanner::~MeshPlanner() = default;

std::vector<std::string> MeshPlanner::upsert(const MeshAgent& agent) { return impl_->upsert(agent); }

std::vector<std::string> MeshPlanner::upsert_many(const std::vector<MeshAgent>& agents) {
  return impl_->upsert_many(agents);
}

std::vector<std::string> MeshPlanner::remove(std::string_view agent_id) { return impl_->remove(agent_id); }

const TargetListPlan* MeshPlanner::plan(std::string_view agent_id) const {
  const auto it = impl_->agent_index.find(std::string(agent_id));
  return it == impl_->agent_index.end() ? nullptr : &impl_->agents[it->second].plan;
}

PlannerStats MeshPlanner::stats() const {
  PlannerStats s;
  s.agents = impl_->agent_count;
  for (const auto& p : impl_->pops) s.pops += p.members.empty() ? 0 : 1;
  s.planned_targets = impl_->planned_targets;
  s.recomputed_lists = impl_->recomputed_lists;
  return s;
}

}  // namespace vantage::collector::mesh
