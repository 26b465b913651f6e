// The mesh planner: full mesh, sampled and extra rules turned into each agent's target list, and
// the incremental updates (a join or leave changes exactly the lists that name the agent).
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "collector/mesh/mesh_planner.hpp"

namespace {

namespace mesh = vantage::collector::mesh;
using vantage::wire::Protocol;

asio::ip::udp::endpoint v4(const std::string& ip, std::uint16_t port = 8627) {
  return {asio::ip::make_address(ip), port};
}

mesh::MeshAgent agent(int n, const std::string& pop, const std::string& region = "eu") {
  return {"agent-" + std::to_string(n), region, pop, {v4("10.0." + std::to_string(n / 250) + "." + std::to_string(n % 250 + 1))}};
}

mesh::MeshRule full_mesh(std::uint32_t per_pop = 0) {
  mesh::MeshRule r;
  r.name = "mesh";
  r.kind = mesh::MeshRule::Kind::kFullMesh;
  r.per_pop = per_pop;
  return r;
}

std::set<std::string> ids(const mesh::TargetListPlan& plan) {
  std::set<std::string> out;
  for (const auto& t : plan.targets) out.insert(t.agent_id);
  return out;
}

// 30 agents, 3 in each of 10 PoPs.
void add_fleet(mesh::MeshPlanner& planner) {
  for (int n = 0; n < 30; ++n) planner.upsert(agent(n, "pop" + std::to_string(n % 10)));
}

bool sorted(const mesh::TargetListPlan& plan) {
  return std::is_sorted(plan.targets.begin(), plan.targets.end(), [](const auto& a, const auto& b) {
    return std::tie(a.agent_id, a.host, a.port, a.probe.protocol) < std::tie(b.agent_id, b.host, b.port, b.probe.protocol);
  });
}

}  // namespace

TEST_CASE("mesh planner: a full mesh of 30 agents in 10 PoPs gives each the 27 agents of the others") {
  mesh::MeshPlanner planner(mesh::MeshRules{{full_mesh()}}, 1000);
  add_fleet(planner);
  CHECK(planner.stats().agents == 30);
  CHECK(planner.stats().pops == 10);
  CHECK(planner.stats().planned_targets == 30 * 27);
  for (int n = 0; n < 30; ++n) {
    const mesh::TargetListPlan* plan = planner.plan("agent-" + std::to_string(n));
    REQUIRE(plan != nullptr);
    CHECK(plan->version > 1000);
    REQUIRE(plan->targets.size() == 27);
    CHECK(sorted(*plan));
    for (const auto& t : plan->targets) {
      CHECK(t.pop != "pop" + std::to_string(n % 10));
      CHECK(t.port == 8627);
      CHECK(t.probe.protocol == Protocol::UdpEcho);
    }
  }
  // The reflector's address as an IP literal, the PoP and the agent named.
  const auto& first = planner.plan("agent-0")->targets.front();
  CHECK(first.agent_id == "agent-1");
  CHECK(first.host == "10.0.0.2");
  CHECK(first.pop == "pop1");
  CHECK(planner.plan("nobody") == nullptr);
}

TEST_CASE("mesh planner: a join changes exactly the probers of other PoPs and the newcomer, each with a higher version") {
  mesh::MeshPlanner planner(mesh::MeshRules{{full_mesh()}}, 0);
  add_fleet(planner);
  std::vector<std::uint64_t> before;
  std::uint64_t highest = 0;
  for (int n = 0; n < 30; ++n) {
    before.push_back(planner.plan("agent-" + std::to_string(n))->version);
    highest = std::max(highest, before.back());
  }
  const std::vector<std::string> changed = planner.upsert(agent(30, "pop0"));
  std::vector<std::string> expected;
  for (int n = 0; n < 31; ++n) {
    if (n % 10 != 0 || n == 30) expected.push_back("agent-" + std::to_string(n));
  }
  std::sort(expected.begin(), expected.end());
  CHECK(changed == expected);
  for (int n = 0; n < 30; ++n) {
    const mesh::TargetListPlan* plan = planner.plan("agent-" + std::to_string(n));
    CAPTURE(n);
    if (n % 10 == 0) {
      CHECK(plan->version == before[static_cast<std::size_t>(n)]);  // same PoP: untouched
      CHECK(plan->targets.size() == 27);
    } else {
      CHECK(plan->version > highest);
      CHECK(plan->targets.size() == 28);
      CHECK(ids(*plan).count("agent-30") == 1);
      CHECK(sorted(*plan));
    }
  }
  const mesh::TargetListPlan* own = planner.plan("agent-30");
  CHECK(own->version > highest);
  CHECK(own->targets.size() == 27);
  // Versions are distinct across lists: one counter.
  std::set<std::uint64_t> versions;
  for (const auto& id : changed) versions.insert(planner.plan(id)->version);
  CHECK(versions.size() == changed.size());
}

TEST_CASE("mesh planner: a removed agent vanishes from every list") {
  mesh::MeshPlanner planner(mesh::MeshRules{{full_mesh()}}, 0);
  add_fleet(planner);
  const std::vector<std::string> changed = planner.remove("agent-7");
  CHECK(changed.size() == 27);  // the 27 agents of the 9 other PoPs
  CHECK(planner.plan("agent-7") == nullptr);
  CHECK(planner.stats().agents == 29);
  for (int n = 0; n < 30; ++n) {
    if (n == 7) continue;
    const mesh::TargetListPlan* plan = planner.plan("agent-" + std::to_string(n));
    CHECK(ids(*plan).count("agent-7") == 0);
    CHECK(plan->targets.size() == (n % 10 == 7 ? 27u : 26u));
  }
  CHECK(planner.stats().planned_targets == 27 * 26 + 2 * 27);
  CHECK(planner.remove("agent-7").empty());  // unknown now
}

TEST_CASE("mesh planner: an upsert that changes nothing returns nothing and keeps versions") {
  mesh::MeshPlanner planner(mesh::MeshRules{{full_mesh()}}, 0);
  add_fleet(planner);
  const std::uint64_t version = planner.plan("agent-3")->version;
  CHECK(planner.upsert(agent(3, "pop3")).empty());
  CHECK(planner.plan("agent-3")->version == version);
  // A new reflector port in place: the probers' entries follow, the choices stay.
  mesh::MeshAgent moved = agent(3, "pop3");
  moved.reflectors.front().port(9000);
  const std::vector<std::string> changed = planner.upsert(moved);
  CHECK(changed.size() == 27);  // the probers; its own list (same family) is the same
  const auto& targets = planner.plan("agent-0")->targets;
  const auto it = std::find_if(targets.begin(), targets.end(), [](const auto& t) { return t.agent_id == "agent-3"; });
  REQUIRE(it != targets.end());
  CHECK(it->port == 9000);
  // Moving to another PoP: probers of the new PoP drop it, those of the old one take it.
  CHECK(!planner.upsert(agent(3, "pop4")).empty());
  CHECK(ids(*planner.plan("agent-4")).count("agent-3") == 0);
  CHECK(ids(*planner.plan("agent-13")).count("agent-3") == 1);  // pop3 now probes it
  CHECK(planner.plan("agent-3")->targets.size() == 26);  // pop3 has two left, pop4 is its own
}

TEST_CASE("mesh planner: per_pop picks a stable subset of each PoP") {
  mesh::MeshPlanner planner(mesh::MeshRules{{full_mesh(1)}}, 0);
  add_fleet(planner);
  const std::vector<mesh::PlannedTarget> before = planner.plan("agent-0")->targets;
  REQUIRE(before.size() == 9);
  std::set<std::string> pops;
  for (const auto& t : before) pops.insert(t.pop);
  CHECK(pops.size() == 9);
  // A join changes a prober's choice only where the newcomer ranks first: never every list.
  const std::vector<std::string> changed = planner.upsert(agent(30, "pop5"));
  CHECK(changed.size() < 28);
  CHECK(std::count(changed.begin(), changed.end(), "agent-30") == 1);
  for (int n = 0; n < 30; ++n) {
    const auto& targets = planner.plan("agent-" + std::to_string(n))->targets;
    const bool has_new = ids(*planner.plan("agent-" + std::to_string(n))).count("agent-30") == 1;
    const bool listed = std::count(changed.begin(), changed.end(), "agent-" + std::to_string(n)) == 1;
    CHECK(has_new == listed);
    CHECK(targets.size() == 9);
  }
  // The same choice again for the same fleet, whatever the order agents arrived in.
  mesh::MeshPlanner other(mesh::MeshRules{{full_mesh(1)}}, 0);
  other.upsert(agent(30, "pop5"));
  for (int n = 29; n >= 0; --n) other.upsert(agent(n, "pop" + std::to_string(n % 10)));
  for (int n = 0; n < 31; ++n) {
    const std::string id = "agent-" + std::to_string(n);
    CHECK(planner.plan(id)->targets == other.plan(id)->targets);
  }
  // Leaving returns the choice to what it was.
  planner.remove("agent-30");
  CHECK(planner.plan("agent-0")->targets == before);
}

TEST_CASE("mesh planner: region rules and extra targets, the first rule winning a duplicate") {
  mesh::MeshRule same = full_mesh();
  same.name = "same";
  same.to_same_region = true;
  mesh::MeshRule other = full_mesh(1);
  other.name = "other";
  other.to_other_regions = true;
  other.probe.interval_ms = 5000;
  mesh::MeshRule game;
  game.name = "game";
  game.kind = mesh::MeshRule::Kind::kExtraTarget;
  game.from_region = "eu";
  game.host = "game.example.net";
  game.port = 27015;
  game.probe.protocol = Protocol::TcpConnect;
  mesh::MeshRule again = game;  // the same (host, port, protocol): the first rule's settings stay
  again.name = "again";
  again.from_region.clear();
  again.probe.dscp = 46;
  mesh::MeshPlanner planner(mesh::MeshRules{{same, other, game, again}}, 0);
  planner.upsert({"a1", "eu", "fra", {v4("10.0.0.1")}});
  planner.upsert({"a2", "eu", "ams", {v4("10.0.0.2")}});
  planner.upsert({"b1", "us", "nyc", {v4("10.1.0.1")}});
  planner.upsert({"b2", "us", "nyc", {v4("10.1.0.2")}});
  planner.upsert({"b3", "us", "sfo", {v4("10.1.0.3")}});

  const auto& a1 = planner.plan("a1")->targets;
  REQUIRE(a1.size() == 4);  // game, a2, one of nyc, sfo
  CHECK(a1[0].agent_id.empty());
  CHECK(a1[0].host == "game.example.net");
  CHECK(a1[0].port == 27015);
  CHECK(a1[0].probe.protocol == Protocol::TcpConnect);
  CHECK(a1[0].probe.dscp == 0);  // rule "game", not "again"
  CHECK(a1[0].pop.empty());
  CHECK(a1[1].agent_id == "a2");
  CHECK(a1[1].probe.interval_ms == 1000);
  CHECK((a1[2].agent_id == "b1" || a1[2].agent_id == "b2"));
  CHECK(a1[2].probe.interval_ms == 5000);
  CHECK(a1[3].agent_id == "b3");

  const auto& b1 = planner.plan("b1")->targets;
  REQUIRE(b1.size() == 4);  // "again" only (not in eu), b3, one of fra, one of ams
  CHECK(b1[0].host == "game.example.net");
  CHECK(b1[0].probe.dscp == 46);
  CHECK(ids(*planner.plan("b1")) == std::set<std::string>{"", "a1", "a2", "b3"});
}

TEST_CASE("mesh planner: a duplicate hidden by an earlier rule takes over when that entry goes") {
  mesh::MeshRule first = full_mesh();
  first.to_pop = "ams";
  first.probe.dscp = 10;
  mesh::MeshRule second = full_mesh();
  second.probe.dscp = 20;
  mesh::MeshPlanner planner(mesh::MeshRules{{first, second}}, 0);
  planner.upsert({"a", "eu", "fra", {v4("10.0.0.1")}});
  planner.upsert({"b", "eu", "ams", {v4("10.0.0.2")}});
  planner.upsert({"c", "eu", "ams", {v4("10.0.0.3")}});
  REQUIRE(planner.plan("a")->targets.size() == 2);
  CHECK(planner.plan("a")->targets[0].probe.dscp == 10);
  // b moves to a PoP only the second rule reaches: a keeps it, now with that rule's settings.
  planner.upsert({"b", "eu", "lon", {v4("10.0.0.2")}});
  REQUIRE(planner.plan("a")->targets.size() == 2);
  CHECK(planner.plan("a")->targets[0].agent_id == "b");
  CHECK(planner.plan("a")->targets[0].probe.dscp == 20);
  CHECK(planner.plan("a")->targets[1].probe.dscp == 10);
}

TEST_CASE("mesh planner: sampled PoPs are stable and a new PoP displaces at most one") {
  mesh::MeshRule r;
  r.name = "sampled";
  r.kind = mesh::MeshRule::Kind::kSampled;
  r.sample = 3;
  r.per_pop = 1;
  mesh::MeshPlanner planner(mesh::MeshRules{{r}}, 0);
  for (int n = 0; n < 60; ++n) planner.upsert(agent(n, "pop" + std::to_string(n % 20)));
  auto pops_of = [&](const std::string& id) {
    std::set<std::string> out;
    for (const auto& t : planner.plan(id)->targets) out.insert(t.pop);
    return out;
  };
  std::vector<std::set<std::string>> before;
  for (int n = 0; n < 60; ++n) {
    before.push_back(pops_of("agent-" + std::to_string(n)));
    CHECK(before.back().size() == 3);
    CHECK(before.back().count("pop" + std::to_string(n % 20)) == 0);
  }
  const std::vector<std::string> changed = planner.upsert(agent(60, "pop-new"));
  CHECK(changed.size() < 61);
  int displaced = 0;
  for (int n = 0; n < 60; ++n) {
    const std::set<std::string> now = pops_of("agent-" + std::to_string(n));
    CHECK(now.size() == 3);
    std::vector<std::string> lost;
    std::set_difference(before[static_cast<std::size_t>(n)].begin(), before[static_cast<std::size_t>(n)].end(),
                        now.begin(), now.end(), std::back_inserter(lost));
    CHECK(lost.size() <= 1);
    if (!lost.empty()) {
      ++displaced;
      CHECK(now.count("pop-new") == 1);
    }
  }
  CHECK(displaced > 0);  // 60 probers, each takes the new PoP with probability 3/21
  // The PoP leaving restores every choice.
  planner.remove("agent-60");
  for (int n = 0; n < 60; ++n) CHECK(pops_of("agent-" + std::to_string(n)) == before[static_cast<std::size_t>(n)]);
}

TEST_CASE("mesh planner: IPv4 and IPv6 reflectors, the prober's own family first") {
  mesh::MeshPlanner planner(mesh::MeshRules{{full_mesh()}}, 0);
  const asio::ip::udp::endpoint mapped{asio::ip::make_address("::ffff:192.0.2.9"), 8627};
  planner.upsert({"dual", "eu", "fra", {v4("2001:db8::1", 8700), v4("192.0.2.1", 8701)}});
  planner.upsert({"v4", "eu", "ams", {mapped}});
  planner.upsert({"v6", "eu", "lon", {v4("2001:db8::3")}});
  planner.upsert({"none", "eu", "par", {}});

  const auto& v4_list = planner.plan("v4")->targets;
  REQUIRE(v4_list.size() == 2);
  CHECK(v4_list[0].agent_id == "dual");
  CHECK(v4_list[0].host == "192.0.2.1");  // its own family, though listed second
  CHECK(v4_list[0].port == 8701);
  CHECK(v4_list[1].host == "2001:db8::3");  // nothing better: the target's first

  const auto& v6_list = planner.plan("v6")->targets;
  REQUIRE(v6_list.size() == 2);
  CHECK(v6_list[0].host == "2001:db8::1");
  CHECK(v6_list[0].port == 8700);
  CHECK(v6_list[1].host == "192.0.2.9");  // a v4-mapped reflector is probed over IPv4

  // Without reflectors: probes everyone (each target's first reflector), probed by no one.
  const auto& none = planner.plan("none")->targets;
  REQUIRE(none.size() == 3);
  CHECK(none[0].host == "2001:db8::1");
  for (const char* id : {"dual", "v4", "v6"}) CHECK(ids(*planner.plan(id)).count("none") == 0);
  // Its joining touched no one else; gaining a reflector makes it a target.
  CHECK(planner.upsert({"none", "eu", "par", {v4("192.0.2.4")}}) ==
        std::vector<std::string>{"dual", "none", "v4", "v6"});  // three probers, and its own list
  CHECK(ids(*planner.plan("v4")).count("none") == 1);
  CHECK(planner.plan("none")->targets[0].host == "192.0.2.1");  // now an IPv4 prober
}

TEST_CASE("mesh planner: agents without reflectors are never targets and touch only their own list") {
  mesh::MeshPlanner planner(mesh::MeshRules{{full_mesh()}}, 0);
  add_fleet(planner);
  const std::vector<std::string> changed = planner.upsert({"quiet", "eu", "pop0", {}});
  CHECK(changed == std::vector<std::string>{"quiet"});
  CHECK(planner.plan("quiet")->targets.size() == 27);
  CHECK(planner.remove("quiet").empty());
  // A PoP of agents without reflectors is no PoP to probe.
  planner.upsert({"q1", "eu", "empty", {}});
  CHECK(planner.plan("agent-0")->targets.size() == 27);
}

namespace {

// Random joins, moves and leaves; then every list must equal the one a planner given only the
// final fleet computes.
void check_random_sequence(bool shared) {
  mesh::MeshRule near = full_mesh(2);
  near.to_same_region = true;
  near.probe.dscp = 1;
  mesh::MeshRule far;
  far.kind = mesh::MeshRule::Kind::kSampled;
  far.sample = 2;
  far.per_pop = 1;
  far.to_other_regions = true;
  far.probe.dscp = 2;
  mesh::MeshRule all = full_mesh(1);  // duplicates of the two above, hidden while they hold
  all.probe.dscp = 3;
  mesh::MeshRule extra;
  extra.kind = mesh::MeshRule::Kind::kExtraTarget;
  extra.from_pop = "p1";
  extra.host = "10.9.9.9";
  extra.port = 8627;
  const mesh::MeshRules rules{{near, far, all, extra}};
  // Shared: agents announce addresses from a small pool, so lists hold duplicates to resolve.
  CAPTURE(shared);
  mesh::MeshPlanner planner(rules, 0);
  std::map<std::string, mesh::MeshAgent> fleet;
  std::uint64_t state = 12345;
  auto next = [&](std::uint64_t n) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (state >> 33) % n;
  };
  std::uint64_t last_version = 0;
  for (int step = 0; step < 400; ++step) {
    const std::string id = "a" + std::to_string(next(40));
    std::vector<std::string> changed;
    if (next(4) == 0) {
      changed = planner.remove(id);
      fleet.erase(id);
    } else {
      mesh::MeshAgent a{id, "r" + std::to_string(next(3)), "", {}};
      a.pop = "p" + std::to_string(next(8));
      if (next(5) != 0) a.reflectors.push_back(v4("10.0.0." + std::to_string(shared ? next(6) + 1 : std::stoul(id.substr(1)) + 1), static_cast<std::uint16_t>(8000 + next(3))));
      changed = planner.upsert(a);
      fleet[id] = a;
    }
    for (const std::string& c : changed) {
      CHECK(planner.plan(c)->version > last_version);
    }
    for (const std::string& c : changed) last_version = std::max(last_version, planner.plan(c)->version);
  }
  // The fresh plan in one batch: every list rebuilt once.
  mesh::MeshPlanner fresh(rules, 0);
  std::vector<mesh::MeshAgent> batch;
  for (const auto& entry : fleet) batch.push_back(entry.second);
  CHECK(fresh.upsert_many(batch).size() == fleet.size());
  CHECK(planner.stats().agents == fleet.size());
  CHECK(planner.stats().planned_targets == fresh.stats().planned_targets);
  for (const auto& entry : fleet) {
    const std::string& id = entry.first;
    CAPTURE(id);
    REQUIRE(planner.plan(id) != nullptr);
    CHECK(planner.plan(id)->targets == fresh.plan(id)->targets);
  }
}

}  // namespace

TEST_CASE("mesh planner: after any sequence of joins, moves and leaves the lists equal a fresh plan's") {
  check_random_sequence(false);
  check_random_sequence(true);
}

TEST_CASE("mesh planner: many agents at once end as one by one, each changed list named once") {
  mesh::MeshPlanner one(mesh::MeshRules{{full_mesh(1)}}, 0);
  mesh::MeshPlanner many(mesh::MeshRules{{full_mesh(1)}}, 0);
  std::vector<mesh::MeshAgent> fleet;
  for (int n = 0; n < 30; ++n) fleet.push_back(agent(n, "pop" + std::to_string(n % 10)));
  for (const auto& a : fleet) one.upsert(a);
  CHECK(many.upsert_many(fleet).size() == 30);
  // A second batch, large enough to rebuild everything: a move, a join and an unchanged agent.
  std::vector<mesh::MeshAgent> batch = {agent(3, "pop4"), agent(30, "pop5"), agent(31, "pop6"), agent(32, "pop7"),
                                        agent(33, "pop8"), agent(7, "pop7")};
  std::set<std::string> changed_one;
  for (const auto& a : batch) {
    for (const std::string& id : one.upsert(a)) changed_one.insert(id);
  }
  std::vector<std::uint64_t> before;
  for (int n = 0; n < 30; ++n) before.push_back(many.plan("agent-" + std::to_string(n))->version);
  const std::vector<std::string> changed_many = many.upsert_many(batch);
  CHECK(std::is_sorted(changed_many.begin(), changed_many.end()));
  for (const std::string& id : changed_many) CHECK(changed_one.count(id) == 1);
  for (int n = 0; n < 34; ++n) {
    const std::string id = "agent-" + std::to_string(n);
    CAPTURE(id);
    CHECK(one.plan(id)->targets == many.plan(id)->targets);
  }
  int unchanged = 0;
  for (int n = 0; n < 30; ++n) {
    const std::string id = "agent-" + std::to_string(n);
    const bool listed = std::binary_search(changed_many.begin(), changed_many.end(), id);
    CHECK(listed == (many.plan(id)->version != before[static_cast<std::size_t>(n)]));
    unchanged += listed ? 0 : 1;
  }
  CHECK(unchanged > 0);  // not every list: only those whose content changed got a version
  // A small batch takes the one-by-one path: the same answer.
  CHECK(many.upsert_many({agent(34, "pop9")}) == one.upsert(agent(34, "pop9")));
}
