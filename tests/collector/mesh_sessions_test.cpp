// The mesh over real TLS sessions on loopback: agents that announce reflectors and take lists get
// the other PoPs' reflectors, a newcomer changes everyone's list, an agent without the capability
// gets no TargetList, a disconnected agent leaves the lists only after forget_after, a peer that
// never reads holds at most two lists in the collector, and 200 agents in 20 PoPs connecting at
// once all end with the right list.
#include <doctest/doctest.h>

#include <sys/socket.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "collector/ingest_server.hpp"
#include "collector/mesh/mesh_planner.hpp"
#include "collector/mesh_sessions.hpp"
#include "platform/clock.hpp"
#include "schemas/frame_codec.hpp"
#include "tests/platform/tls/tls_test_support.hpp"
#include "tests/support/eventually.hpp"
#include "tests/support/ingest_fixture.hpp"

namespace vantage::collector {
namespace {

namespace fs = std::filesystem;
using platform::tls::test::await;
using platform::tls::test::Loop;
using platform::tls::test::Pki;

constexpr int kPops = 20;
constexpr int kPerPop = 10;

std::string pop_name(int pop) { return "p" + std::to_string(100 + pop).substr(1); }
std::string agent_name(int pop, int i) { return pop_name(pop) + "-a" + std::to_string(i); }
// Each agent's one reflector: 127.1.<pop>.<i + 1>, port 7000 + pop.
asio::ip::udp::endpoint reflector_of(int pop, int i) {
  return {asio::ip::make_address_v4("127.1." + std::to_string(pop) + "." + std::to_string(i + 1)),
          static_cast<std::uint16_t>(7000 + pop)};
}

// Certificates for kPops x kPerPop agents (vantage://eu-west/<pop>/<agent>), one key for all,
// made once for the whole file.
const fs::path& agent_pki() {
  static const fs::path dir = [] {
    const Pki& pki = Pki::get();
    REQUIRE(pki.ok());
    const fs::path d = pki.dir() / "mesh-agents";
    fs::create_directories(d);
    std::string script = "set -e; cd '" + d.string() + "'; openssl genpkey -algorithm EC -pkeyopt "
                         "ec_paramgen_curve:P-256 -out agent.key 2>/dev/null; ";
    for (int p = 0; p < kPops; ++p) {
      for (int i = 0; i < kPerPop; ++i) {
        const std::string name = agent_name(p, i);
        std::ofstream(d / (name + ".ext")) << "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                           << "extendedKeyUsage=clientAuth\nsubjectAltName=URI:vantage://eu-west/"
                                           << pop_name(p) << "/" << name << "\n";
        script += "openssl req -new -key agent.key -subj /O=Vantage/CN=" + name + " -out " + name +
                  ".csr; openssl x509 -req -in " + name + ".csr -CA '" + pki.file("ca.crt") + "' -CAkey '" +
                  pki.file("ca.key") + "' -sha256 -days 30 -set_serial 0x$(openssl rand -hex 12) -extfile " + name +
                  ".ext -out " + name + ".crt 2>/dev/null; ";
      }
    }
    REQUIRE(std::system(("bash -c \"" + script + "\"").c_str()) == 0);
    return d;
  }();
  return dir;
}

std::shared_ptr<mesh::MeshRules> full_mesh() {
  auto rules = std::make_shared<mesh::MeshRules>();
  mesh::MeshRule rule;
  rule.name = "full";
  rule.kind = mesh::MeshRule::Kind::kFullMesh;
  rules->rules.push_back(rule);
  return rules;
}

// The ingest fixture with what hundreds of agents from one address need, and a full mesh unless
// the test gives its rules.
IngestConfig mesh_config(IngestConfig config) {
  config.max_handshakes_per_source = 1024;  // every test agent comes from 127.0.0.1
  // Hundreds of handshakes on one client thread take long on a slow (or sanitized) build.
  config.handshake_timeout = std::chrono::minutes(5);
  config.idle_timeout = std::chrono::minutes(10);
  if (!config.mesh_rules) config.mesh_rules = full_mesh();
  return config;
}

struct Server : test::IngestFixture {
  Server(IngestConfig config, const std::string& name) : IngestFixture(mesh_config(std::move(config)), name) {}
  MeshCounters mesh() const { return ingest->counters().mesh; }
};

using test::eventually;

std::string frame_bytes(flatbuffers::FlatBufferBuilder& fbb) {
  std::vector<std::uint8_t> out;
  wire::append_frame(out, {fbb.GetBufferPointer(), fbb.GetSize()});
  return {out.begin(), out.end()};
}

// (agent id, host, port) of one list entry.
using Entry = std::tuple<std::string, std::string, std::uint16_t>;

// What a full mesh gives `pop`'s agents: every connected agent of another PoP.
std::set<Entry> expected_list(int pop, const std::vector<std::pair<int, int>>& members) {
  std::set<Entry> out;
  for (const auto& [p, i] : members) {
    if (p == pop) continue;
    const auto r = reflector_of(p, i);
    out.emplace(agent_name(p, i), r.address().to_string(), r.port());
  }
  return out;
}

// A test agent on a shared loop: TLS, Hello (with its reflector and the capability unless told
// otherwise), then, once reading, records every TargetList.
struct MeshClient {
  // What the reads found; the read handlers hold it, so it outlives a read completing late.
  struct Received {
    std::mutex mutex;
    std::size_t lists = 0;
    std::uint64_t version = 0;
    std::set<Entry> targets;
    bool read_done = false;
    wire::FrameReader reader;
    std::array<std::uint8_t, 4096> chunk{};
  };
  Loop& loop;
  int pop, index;
  std::shared_ptr<platform::tls::TlsStream> stream;
  std::shared_ptr<Received> received = std::make_shared<Received>();

  MeshClient(Loop& l, int p, int i) : loop(l), pop(p), index(i) {}
  ~MeshClient() { close(); }

  std::string name() const { return agent_name(pop, index); }

  std::future<std::error_code> connect(const asio::ip::tcp::endpoint& to, int receive_buffer = 0) {
    const fs::path& d = agent_pki();
    auto context = platform::tls::test::make_context(platform::tls::TlsRole::kClient, Pki::get().file("ca.crt"),
                                                     (d / (name() + ".crt")).string(), (d / "agent.key").string());
    asio::ip::tcp::socket socket(loop.io());
    socket.open(asio::ip::tcp::v4());
    if (receive_buffer > 0) socket.set_option(asio::socket_base::receive_buffer_size(receive_buffer));
    socket.connect(to);
    stream = platform::tls::TlsStream::create(std::move(socket), context, "localhost");
    return platform::tls::test::start_handshake(loop, stream);
  }
  std::future<std::error_code> hello(bool capable = true, std::uint64_t list_version = 0) {
    flatbuffers::FlatBufferBuilder fbb;
    std::vector<wire::ReflectorAddress> reflectors;
    if (capable) {
      const auto v6 = asio::ip::make_address_v6(asio::ip::v4_mapped, reflector_of(pop, index).address().to_v4());
      const auto bytes = v6.to_bytes();
      reflectors.emplace_back(flatbuffers::span<const std::uint8_t, 16>(bytes.data(), 16),
                              reflector_of(pop, index).port());
      // Ignored: unspecified and multicast.
      reflectors.emplace_back(flatbuffers::span<const std::uint8_t, 16>(asio::ip::address_v6().to_bytes().data(), 16),
                              7000);
      reflectors.emplace_back(
          flatbuffers::span<const std::uint8_t, 16>(asio::ip::make_address_v6("ff02::1").to_bytes().data(), 16), 7000);
    }
    const std::string agent = name(), p = pop_name(pop);
    const auto h = wire::CreateHelloDirect(fbb, 1, agent.c_str(), "eu-west", p.c_str(), "test", "x86_64",
                                           capable ? wire::kCapabilityTargetList : 0, nullptr,
                                           capable ? &reflectors : nullptr, list_version);
    wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, wire::Message::Hello, h.Union()));
    return platform::tls::test::start_write(loop, stream, std::make_shared<const std::string>(frame_bytes(fbb)));
  }
  // A batch whose AgentSelf reports running `list_version`.
  std::future<std::error_code> batch(std::uint64_t seq, std::uint64_t list_version) {
    flatbuffers::FlatBufferBuilder fbb;
    wire::AgentSelfBuilder self_builder(fbb);
    self_builder.add_target_list_version(list_version);
    const auto self = self_builder.Finish();
    const std::string agent = name(), p = pop_name(pop);
    const std::int64_t end_ns = platform::realtime_ns();
    const auto b = wire::CreateBatchDirect(fbb, agent.c_str(), seq, end_ns - 1'000'000'000, end_ns, "eu-west",
                                           p.c_str(), nullptr, nullptr, nullptr, 0, self);
    wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, wire::Message::Batch, b.Union()));
    return platform::tls::test::start_write(loop, stream, std::make_shared<const std::string>(frame_bytes(fbb)));
  }
  void start_reading() {
    asio::post(loop.io(), [stream = stream, received = received] { read_next(stream, received); });
  }
  static void read_next(const std::shared_ptr<platform::tls::TlsStream>& stream, const std::shared_ptr<Received>& r) {
    stream->async_read_some(asio::buffer(r->chunk), [stream, r](std::error_code ec, std::size_t n) {
      {
        std::lock_guard lock(r->mutex);
        if (ec) {
          r->read_done = true;
          return;
        }
        r->reader.feed({r->chunk.data(), n});
        while (r->reader.next() == wire::FrameStatus::kFrame) {
          const wire::TargetList* list = r->reader.frame()->message_as_TargetList();
          if (list == nullptr) continue;
          ++r->lists;
          r->version = list->version();
          r->targets.clear();
          if (list->targets() != nullptr) {
            for (const wire::MeshTarget* t : *list->targets()) {
              r->targets.emplace(t->agent_id() ? t->agent_id()->str() : "", t->host() ? t->host()->str() : "",
                                 t->port());
            }
          }
        }
      }
      read_next(stream, r);
    });
  }
  bool has(const std::set<Entry>& want) {
    std::lock_guard lock(received->mutex);
    return received->lists > 0 && received->targets == want;
  }
  std::size_t list_count() {
    std::lock_guard lock(received->mutex);
    return received->lists;
  }
  std::uint64_t list_version() {
    std::lock_guard lock(received->mutex);
    return received->version;
  }
  void close() {
    if (!stream) return;
    loop.run([stream = stream] { stream->close(); });
    stream.reset();
  }
};

// Connects and says Hello for every client at once, then starts reading.
void join_all(std::vector<std::unique_ptr<MeshClient>>& clients, const asio::ip::tcp::endpoint& to,
              std::size_t from = 0) {
  std::vector<std::future<std::error_code>> handshakes;
  for (std::size_t i = from; i < clients.size(); ++i) handshakes.push_back(clients[i]->connect(to));
  for (auto& h : handshakes) REQUIRE_FALSE(await(h));
  std::vector<std::future<std::error_code>> hellos;
  for (std::size_t i = from; i < clients.size(); ++i) hellos.push_back(clients[i]->hello());
  for (auto& h : hellos) REQUIRE_FALSE(await(h));
  for (std::size_t i = from; i < clients.size(); ++i) clients[i]->start_reading();
}

// Into `m`: keep `m` alive while the answer is used.
const MeshAgentVersions* find(const MeshCounters& m, const std::string& agent) {
  for (const MeshAgentVersions& v : m.versions) {
    if (v.agent_id == agent) return &v;
  }
  return nullptr;
}

}  // namespace

TEST_CASE("a Hello's reflectors: valid ones kept (v4-mapped as IPv4), unspecified, multicast and port 0 dropped, at most 8") {
  flatbuffers::FlatBufferBuilder fbb;
  std::vector<wire::ReflectorAddress> reflectors;
  const auto add = [&](const char* ip, std::uint16_t port) {
    const auto bytes = asio::ip::make_address_v6(ip).to_bytes();
    reflectors.emplace_back(flatbuffers::span<const std::uint8_t, 16>(bytes.data(), 16), port);
  };
  add("::ffff:192.0.2.1", 7000);
  add("2001:db8::1", 7000);
  add("::", 7000);
  add("::ffff:0.0.0.0", 7000);
  add("ff02::1", 7000);
  add("::ffff:224.0.0.1", 7000);
  add("::ffff:255.255.255.255", 7000);
  add("2001:db8::2", 0);
  add("2001:db8::1", 7000);  // a repeat
  for (int i = 3; i < 20; ++i) add(("2001:db8::" + std::to_string(i)).c_str(), 7000);
  const auto h = wire::CreateHelloDirect(fbb, 1, "a", "r", "p", "v", "x", wire::kCapabilityTargetList | 1u, nullptr,
                                         &reflectors, 42);
  fbb.Finish(h);
  const wire::Hello* hello = flatbuffers::GetRoot<wire::Hello>(fbb.GetBufferPointer());
  const MeshHello m = mesh_hello_of(*hello);
  CHECK(m.accepts_lists);
  CHECK(m.target_list_version == 42);
  REQUIRE(m.reflectors.size() == kMaxReflectors);
  CHECK(m.reflectors[0] == asio::ip::udp::endpoint(asio::ip::make_address("192.0.2.1"), 7000));
  CHECK(m.reflectors[1] == asio::ip::udp::endpoint(asio::ip::make_address("2001:db8::1"), 7000));
  CHECK(m.reflectors[2] == asio::ip::udp::endpoint(asio::ip::make_address("2001:db8::3"), 7000));

  flatbuffers::FlatBufferBuilder old;
  old.Finish(wire::CreateHelloDirect(old, 1, "a", "r", "p", "v", "x", 0));
  const MeshHello none = mesh_hello_of(*flatbuffers::GetRoot<wire::Hello>(old.GetBufferPointer()));
  CHECK_FALSE(none.accepts_lists);
  CHECK(none.reflectors.empty());
  CHECK(none.target_list_version == 0);
}

TEST_CASE("agents get the other PoPs' reflectors, a newcomer changes their lists, an agent without the capability gets none") {
  IngestConfig config;
  config.mesh_forget_after = std::chrono::minutes(10);
  Server server(config, "mesh-basic");
  Loop loop;

  // The old agent first: once the mesh knows it, every later list is built with it present.
  MeshClient old(loop, 0, 9);
  {
    auto h = old.connect(server.endpoint);
    REQUIRE_FALSE(await(h));
    auto hello = old.hello(false);
    REQUIRE_FALSE(await(hello));
  }
  old.start_reading();
  REQUIRE(eventually([&] {
    const MeshCounters m = server.mesh();
    return find(m, old.name()) != nullptr;
  }));

  std::vector<std::unique_ptr<MeshClient>> clients;
  std::vector<std::pair<int, int>> members;
  for (int p = 0; p < 2; ++p) {
    for (int i = 0; i < 2; ++i) {
      clients.push_back(std::make_unique<MeshClient>(loop, p, i));
      members.emplace_back(p, i);
    }
  }
  join_all(clients, server.endpoint);
  for (auto& c : clients) {
    INFO(c->name());
    CHECK(eventually([&] { return c->has(expected_list(c->pop, members)); }));
  }
  std::map<std::string, std::uint64_t> versions;
  for (auto& c : clients) versions[c->name()] = c->list_version();

  // A newcomer in a third PoP: everyone's list gains it, with a higher version; it gets all four.
  clients.push_back(std::make_unique<MeshClient>(loop, 2, 0));
  members.emplace_back(2, 0);
  join_all(clients, server.endpoint, clients.size() - 1);
  for (auto& c : clients) {
    INFO(c->name());
    CHECK(eventually([&] { return c->has(expected_list(c->pop, members)); }));
    if (versions.count(c->name())) CHECK(c->list_version() > versions[c->name()]);
  }
  CHECK(expected_list(2, members).size() == 4);

  // One agent reports running its list: it is the only one not stale (the others' batches never
  // said so; their Hellos said 0).
  {
    auto b = clients[0]->batch(1, clients[0]->list_version());
    REQUIRE_FALSE(await(b));
  }
  CHECK(eventually([&] {
    const MeshCounters m = server.mesh();
    const MeshAgentVersions* v = find(m, clients[0]->name());
    return v != nullptr && v->running == clients[0]->list_version() && !v->stale() && m.agents_stale == 4;
  }));
  const MeshCounters m = server.mesh();
  CHECK(m.enabled);
  CHECK(m.agents == 5);  // the old agent, with neither capability nor reflector, is not in the mesh
  CHECK(m.pops == 3);
  for (auto& c : clients) {
    const MeshAgentVersions* v = find(m, c->name());
    REQUIRE(v != nullptr);
    CHECK(v->connected);
    CHECK(v->accepts_lists);
    CHECK(v->planned == c->list_version());
    CHECK(v->sent == v->planned);
  }
  const MeshAgentVersions* o = find(m, old.name());
  REQUIRE(o != nullptr);
  CHECK_FALSE(o->accepts_lists);
  CHECK(o->planned == 0);
  CHECK_FALSE(o->stale());
  CHECK(old.list_count() == 0);
  CHECK(m.lists_sent >= 9);
}

TEST_CASE("a disconnected agent stays in the lists until forget_after, a reconnect within it changes nothing") {
  SUBCASE("a reconnect within forget_after") {
    IngestConfig config;
    config.mesh_forget_after = std::chrono::minutes(10);
    Server server(config, "mesh-reconnect");
    Loop loop;
    std::vector<std::unique_ptr<MeshClient>> clients;
    std::vector<std::pair<int, int>> members{{0, 0}, {1, 0}, {2, 0}};
    for (const auto& [p, i] : members) clients.push_back(std::make_unique<MeshClient>(loop, p, i));
    join_all(clients, server.endpoint);
    for (auto& c : clients) CHECK(eventually([&] { return c->has(expected_list(c->pop, members)); }));
    // Quiet: every list planned has been sent (the counters are published with the lists).
    REQUIRE(eventually([&] {
      const MeshCounters m = server.mesh();
      return m.versions.size() == 3 && std::all_of(m.versions.begin(), m.versions.end(), [](const auto& v) {
               return v.sent == v.planned;
             });
    }));
    const std::uint64_t sent = server.mesh().lists_sent;
    const std::uint64_t version = clients[2]->list_version();

    clients[2]->close();
    REQUIRE(eventually([&] {
      const MeshCounters m = server.mesh();
      const MeshAgentVersions* v = find(m, clients[2]->name());
      return v != nullptr && !v->connected;
    }));
    clients[2] = std::make_unique<MeshClient>(loop, 2, 0);
    {
      auto h = clients[2]->connect(server.endpoint);
      REQUIRE_FALSE(await(h));
      auto hello = clients[2]->hello(true, version);  // it still runs its list
      REQUIRE_FALSE(await(hello));
    }
    clients[2]->start_reading();
    REQUIRE(eventually([&] {
      const MeshCounters m = server.mesh();
      const MeshAgentVersions* v = find(m, clients[2]->name());
      return v != nullptr && v->connected;
    }));
    // Its Hello named the current version: nothing was sent, to it or to the others.
    CHECK(server.mesh().lists_sent == sent);
    CHECK(clients[2]->list_count() == 0);
    CHECK(server.mesh().agents == 3);
  }
  SUBCASE("forgotten after forget_after") {
    IngestConfig config;
    config.mesh_forget_after = std::chrono::milliseconds(200);
    Server server(config, "mesh-forget");
    Loop loop;
    std::vector<std::unique_ptr<MeshClient>> clients;
    std::vector<std::pair<int, int>> members{{0, 0}, {1, 0}, {2, 0}};
    for (const auto& [p, i] : members) clients.push_back(std::make_unique<MeshClient>(loop, p, i));
    join_all(clients, server.endpoint);
    for (auto& c : clients) CHECK(eventually([&] { return c->has(expected_list(c->pop, members)); }));

    clients[2]->close();
    members.pop_back();
    for (int i = 0; i < 2; ++i) {
      CHECK(eventually([&] { return clients[i]->has(expected_list(clients[i]->pop, members)); }));
    }
    CHECK(eventually([&] {
      const MeshCounters m = server.mesh();
      return m.agents == 2 && find(m, clients[2]->name()) == nullptr;
    }));
  }
}

TEST_CASE("a peer that never reads holds at most two target lists in the collector, then gets the newest") {
  IngestConfig config;
  Server server(config, "mesh-slow-reader");
  Loop loop;
  // p00-a0 reads nothing; its receive buffer is small, so the collector's writes to it stall.
  MeshClient stuck(loop, 0, 0);
  {
    auto h = stuck.connect(server.endpoint, 4096);
    REQUIRE_FALSE(await(h));
    auto hello = stuck.hello();
    REQUIRE_FALSE(await(hello));
  }
  REQUIRE(eventually([&] { return server.mesh().lists_sent == 1; }));

  // 100 agents join one at a time (each join its own round): every join is a new list for it,
  // about 90 bytes a target, 450 KiB in all, far past the socket buffers.
  std::vector<std::unique_ptr<MeshClient>> clients;
  std::vector<std::pair<int, int>> members{{0, 0}};
  for (int p = 1; p <= 10; ++p) {
    for (int i = 0; i < kPerPop; ++i) {
      clients.push_back(std::make_unique<MeshClient>(loop, p, i));
      members.emplace_back(p, i);
      const std::uint64_t before = server.mesh().lists_sent;
      join_all(clients, server.endpoint, clients.size() - 1);
      REQUIRE(eventually([&] { return server.mesh().lists_sent >= before + 2; }));
    }
  }
  const MeshCounters m = server.mesh();
  CHECK(m.lists_replaced > 0);
  const MeshAgentVersions* v = find(m, stuck.name());
  REQUIRE(v != nullptr);
  CHECK(v->connected);  // not closed as a slow reader: lists are replaced, not piled up

  // Reading at last: the newest list arrives, and far fewer than the 101 made for it.
  stuck.start_reading();
  CHECK(eventually([&] { return stuck.has(expected_list(0, members)); }));
  CHECK(stuck.list_version() == v->planned);
  CHECK(stuck.list_count() < 101);
  MESSAGE("lists received by the stalled reader: " << stuck.list_count() << " of 101; replaced unsent: "
                                                   << m.lists_replaced);
}

TEST_CASE("a round's Hellos reach the planner together: 400 joins at once build each list once") {
  // Queued before the thread starts, all 400 Hellos make one round, as a reconnect storm does
  // while the mesh thread is busy. One join at a time would patch every other PoP's lists per join.
  MeshSessions sessions(full_mesh(), std::chrono::minutes(1), 1);
  std::mutex mutex;
  std::map<std::string, std::pair<int, std::uint64_t>> got;  // agent: lists received, last version
  for (int i = 0; i < 400; ++i) {
    const std::string id = "agent-" + std::to_string(i);
    MeshHello hello;
    hello.accepts_lists = true;
    hello.reflectors = {{asio::ip::address_v4(0x7f000001u + static_cast<std::uint32_t>(i)), 9000}};
    sessions.hello(id, "eu-west", "pop-" + std::to_string(i % 20), std::move(hello), static_cast<std::uint64_t>(i) + 1,
                   [&mutex, &got, id](std::vector<std::uint8_t>, std::uint64_t version) {
                     const std::lock_guard lock(mutex);
                     auto& [lists, last] = got[id];
                     ++lists;
                     last = version;
                   });
  }
  sessions.start();
  REQUIRE(eventually([&] { return sessions.counters().lists_sent == 400; }));
  const MeshCounters c = sessions.counters();
  CHECK(c.agents == 400);
  CHECK(c.pops == 20);
  CHECK(c.planned_targets == 400 * 380);
  CHECK(c.lists_recomputed == 400);
  const std::lock_guard lock(mutex);
  REQUIRE(got.size() == 400);
  for (const auto& [id, received] : got) {
    CAPTURE(id);
    CHECK(received.first == 1);
  }
  sessions.stop();
}

TEST_CASE("200 agents in 20 PoPs connecting at once all get the other PoPs' 190 reflectors") {
  IngestConfig config;
  Server server(config, "mesh-scale");
  Loop loop;
  std::vector<std::unique_ptr<MeshClient>> clients;
  std::vector<std::pair<int, int>> members;
  for (int p = 0; p < kPops; ++p) {
    for (int i = 0; i < kPerPop; ++i) {
      clients.push_back(std::make_unique<MeshClient>(loop, p, i));
      members.emplace_back(p, i);
    }
  }
  join_all(clients, server.endpoint);
  std::vector<std::set<Entry>> want;
  for (int p = 0; p < kPops; ++p) want.push_back(expected_list(p, members));
  CHECK(want[0].size() == 190);
  for (auto& c : clients) {
    INFO(c->name());
    CHECK(eventually([&] { return c->has(want[static_cast<std::size_t>(c->pop)]); }));
  }
  const MeshCounters m = server.mesh();
  CHECK(m.agents == 200);
  CHECK(m.pops == 20);
  CHECK(m.planned_targets == 200 * 190);
  for (const MeshAgentVersions& v : m.versions) CHECK(v.sent == v.planned);
  MESSAGE("200 agents: lists recomputed " << m.lists_recomputed << ", sent " << m.lists_sent << ", replaced "
                                          << m.lists_replaced);
}

}  // namespace vantage::collector
