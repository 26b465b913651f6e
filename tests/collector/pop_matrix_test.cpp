// The status page's matrix and drill-down without sockets: PoP pairs merged from several agents and
// protocols, the compact JSON, /api/pair's parameter checks and its grouping into steps.
#include <doctest/doctest.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "collector/http/pop_matrix.hpp"

namespace {

using namespace vantage;
using namespace vantage::collector;
using namespace vantage::collector::http;

constexpr std::int64_t kNow = 1'700'000'000'000'000'000;
constexpr std::int64_t kMs = 1'000'000;

LiveLatency cell(const std::string& pop, const std::string& agent, const std::string& target,
                 const std::string& protocol, std::int64_t p50_ms, std::int64_t p99_ms, std::uint32_t received,
                 std::uint32_t lost) {
  LiveLatency l;
  l.region = "eu";
  l.pop = pop;
  l.agent_id = agent;
  l.target = target;
  l.protocol = protocol;
  l.interval_end_ns = kNow - 2'000'000'000;
  l.sent = received + lost;
  l.received = received;
  l.lost = lost;
  l.p50_ns = p50_ms * kMs;
  l.p99_ns = p99_ms * kMs;
  return l;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::multimap<std::string, std::string> params(std::initializer_list<std::pair<const std::string, std::string>> list) {
  return std::multimap<std::string, std::string>(list);
}

}  // namespace

TEST_CASE("a PoP pair merges its agents under the preferred protocol: counts summed, median p50, highest p99") {
  LiveSnapshot view;
  view.latency = {cell("ams", "ams-1", "fra", "udp_echo", 10, 30, 98, 2),
                  cell("ams", "ams-2", "fra", "udp_echo", 20, 50, 100, 0),
                  cell("ams", "ams-3", "fra", "udp_echo", 40, 45, 50, 0),
                  cell("ams", "ams-1", "fra", "icmp", 1, 1, 10, 0),  // UDP echo wins
                  cell("fra", "fra-1", "ams", "icmp", 7, 9, 10, 0)};
  LiveLatency unresolved = cell("fra", "fra-1", "gone.example", "udp_echo", 0, 0, 0, 0);
  unresolved.unresolved = true;
  view.latency.push_back(unresolved);
  LiveAgent quiet;  // an agent without figures still has its PoP as a row
  quiet.pop = "sin";
  quiet.agent_id = "sin-1";
  view.agents = {quiet};

  const PopMatrix m = build_pop_matrix(view, kNow);
  CHECK(m.pops == std::vector<std::string>{"ams", "fra", "gone.example", "sin"});
  CHECK(m.rows == std::vector<std::uint32_t>{0, 1, 3});
  CHECK(m.agent_ids == std::vector<std::string>{"ams-1", "ams-2", "ams-3", "fra-1"});
  REQUIRE(m.cells.size() == 3);
  const PopMatrixCell& a = m.cells[0];  // ams -> fra
  CHECK(a.src == 0);
  CHECK(a.dst == 1);
  CHECK(a.protocol == "udp_echo");
  CHECK(a.agents == 3);
  CHECK(m.agent_ids[a.first_agent] == "ams-1");
  CHECK(a.p50_ms == doctest::Approx(20.0));
  CHECK(a.p99_ms == doctest::Approx(50.0));
  CHECK(a.sent == 250);
  CHECK(a.received == 248);
  CHECK(a.loss == doctest::Approx(2.0 / 250.0));
  CHECK(a.age_s == doctest::Approx(2.0));
  CHECK(m.cells[1].protocol == "icmp");  // fra -> ams: only ICMP
  CHECK(m.cells[1].p50_ms == doctest::Approx(7.0));
  CHECK(m.cells[2].unresolved);
  CHECK(m.cells[2].p50_ms == 0.0);

  const std::string json = render_matrix_json(m, kNow);
  CHECK(contains(json, R"("pops":["ams","fra","gone.example","sin"],"rows":[0,1,3],)"));
  CHECK(contains(json, R"("protocols":["udp_echo","icmp"],"count":3,"src":[0,1,1],"dst":[1,0,2],)"));
  CHECK(contains(json, R"("p50_ms":[20,7,0],"p99_ms":[50,9,0],"loss":[0.008,0,0],)"));
  CHECK(contains(json, R"("agents":[3,1,1],"agent":[0,3,3],"protocol":[0,1,0],"unresolved":[0,0,1],)"));
}

TEST_CASE("the matrix JSON escapes names so that they never close a script element") {
  LiveSnapshot view;
  view.latency = {cell("a\"</script>", "x<y", "\xe2\x80\xae" "b", "udp_echo", 5, 6, 1, 0)};
  const std::string json = render_matrix_json(build_pop_matrix(view, kNow), kNow);
  CHECK_FALSE(contains(json, "<"));
  CHECK(contains(json, R"("a\"\u003c/script>")"));
}

TEST_CASE("a mesh target POP/AGENT files under its PoP, a slash in any other target's name does not") {
  LiveSnapshot view;
  view.latency = {cell("ams", "ams-1", "fra/fra-1", "udp_echo", 10, 12, 10, 0),
                  cell("ams", "ams-1", "fra/fra-2", "udp_echo", 20, 22, 10, 0),
                  cell("fra", "fra-1", "ams/ams-1", "udp_echo", 10, 12, 10, 0),
                  cell("ams", "ams-1", "<img/src=x>", "udp_echo", 5, 6, 10, 0),
                  cell("ams", "ams-1", "cdn.example/edge", "udp_echo", 5, 6, 10, 0)};
  const PopMatrix m = build_pop_matrix(view, kNow);
  CHECK(m.pops == std::vector<std::string>{"<img/src=x>", "ams", "cdn.example/edge", "fra"});
  REQUIRE(m.cells.size() == 4);
  CHECK(m.cells[0].dst == 0);  // ams -> the markup-named target, whole
  CHECK(m.cells[1].dst == 2);  // ams -> cdn.example/edge, whole
  CHECK(m.cells[2].dst == 3);  // ams -> fra: both fra agents
  CHECK(m.cells[2].agents == 2);  // entries merged: one per fra agent probed
  CHECK(m.cells[2].sent == 20);
  CHECK(m.cells[3].src == 3);  // fra -> ams
  CHECK(m.cells[3].dst == 1);
}

TEST_CASE("an empty live view is an empty matrix") {
  const std::string json = render_matrix_json(build_pop_matrix({}, kNow), kNow);
  CHECK(contains(json, R"("pops":[],"rows":[],"agent_ids":[],"protocols":[],"count":0,"src":[],)"));
}

TEST_CASE("/api/pair parameters: defaults to the last hour, and each bad one is refused with a reason") {
  const std::int64_t now_s = kNow / 1'000'000'000;
  auto r = parse_pair_request(params({{"from", "ams"}, {"to", "fra"}}), kNow);
  REQUIRE(r.request);
  CHECK(r.request->from == "ams");
  CHECK(r.request->to == "fra");
  CHECK(r.request->until_s == now_s + 1);
  CHECK(r.request->since_s == now_s + 1 - 3600);
  CHECK(r.request->protocol.empty());

  r = parse_pair_request(params({{"from", "ams"}, {"to", "fra"}, {"since", "100"}, {"until", "200"},
                                 {"protocol", "icmp"}}),
                         kNow);
  REQUIRE(r.request);
  CHECK(r.request->since_s == 100);
  CHECK(r.request->until_s == 200);
  CHECK(r.request->protocol == "icmp");
  r = parse_pair_request(params({{"from", "ams"}, {"to", "fra"}, {"until", "5000"}}), kNow);
  REQUIRE(r.request);
  CHECK(r.request->since_s == 1400);

  const std::vector<std::multimap<std::string, std::string>> bad = {
      params({{"from", "ams"}}),
      params({{"to", "fra"}}),
      params({{"from", ""}, {"to", "fra"}}),
      params({{"from", "ams"}, {"to", "fra"}, {"since", "x"}}),
      params({{"from", "ams"}, {"to", "fra"}, {"since", "-1"}}),
      params({{"from", "ams"}, {"to", "fra"}, {"since", "12abc"}}),
      params({{"from", "ams"}, {"to", "fra"}, {"until", "99999999999999999999"}}),
      params({{"from", "ams"}, {"to", "fra"}, {"since", "200"}, {"until", "200"}}),
      params({{"from", "ams"}, {"to", "fra"}, {"since", "0"}, {"until", "604801"}}),
      params({{"from", "ams"}, {"to", "fra"}, {"protocol", "smtp"}}),
      params({{"from", "ams"}, {"to", "fra"}, {"limit", "1"}}),
      params({{"from", "ams"}, {"from", "sin"}, {"to", "fra"}}),
      params({{"from", "a\nb"}, {"to", "fra"}}),
      params({{"from", "\xc3\x28"}, {"to", "fra"}}),
      params({{"from", std::string(257, 'a')}, {"to", "fra"}}),
  };
  for (const auto& p : bad) {
    const auto refused = parse_pair_request(p, kNow);
    CAPTURE(refused.error);
    CHECK_FALSE(refused.request);
    CHECK_FALSE(refused.error.empty());
  }
  CHECK(parse_pair_request(params({{"from", "ams"}, {"to", "fra"}, {"since", "0"}, {"until", "604800"}}), kNow).request);
}

TEST_CASE("a drill-down groups the store's intervals into steps under the preferred protocol") {
  const auto point = [](const char* agent, const char* protocol, std::int64_t end_s, std::int64_t p50_ms,
                        std::uint32_t received, std::uint32_t lost) {
    store::PairPoint p;
    p.agent_id = agent;
    p.protocol = protocol;
    p.interval_end_ns = end_s * 1'000'000'000 + 500'000'000;
    p.interval_start_ns = p.interval_end_ns - 1'000'000'000;
    p.sent = received + lost;
    p.received = received;
    p.lost = lost;
    p.p50_ns = p50_ms * kMs;
    p.p99_ns = 2 * p50_ms * kMs;
    return p;
  };
  const std::vector<store::PairPoint> points = {
      point("a1", "udp_echo", 1000, 10, 9, 1), point("a2", "udp_echo", 1000, 30, 10, 0),
      point("a1", "icmp", 1000, 1, 10, 0),     point("a1", "udp_echo", 1001, 12, 10, 0),
      point("a1", "udp_echo", 4599, 11, 0, 10),  // no reply: loss only
  };
  PairRequest r{.from = "ams", .to = "<fra>", .protocol = "", .since_s = 1000, .until_s = 4600};
  std::string json = render_pair_json(r, points);
  CHECK(contains(json, R"("from":"ams","to":"\u003cfra>","protocol":"udp_echo","protocols":["icmp","udp_echo"],)"));
  CHECK(contains(json, R"("since":1000,"until":4600,"step_s":1,"count":3,"t":[1000,1001,4599],)"));
  CHECK(contains(json, R"("p50_ms":[20,12,0],"p99_ms":[60,24,0],"loss":[0.05,0,1],)"));
  CHECK(contains(json, R"("sent":[20,10,10],"samples":[19,10,0],"agents":[2,1,1]})"));

  // Two hours: 2 s steps, so at most kMaxPairPoints points.
  r.until_s = 1000 + 7200;
  json = render_pair_json(r, points);
  CHECK(contains(json, R"("step_s":2,"count":2,"t":[1000,4598],)"));
  CHECK(contains(json, R"("sent":[30,10],)"));

  r.protocol = "icmp";
  json = render_pair_json(r, points);
  CHECK(contains(json, R"("protocol":"icmp",)"));
  CHECK(contains(json, R"("count":1,"t":[1000],"p50_ms":[1],)"));

  json = render_pair_json(r, {});
  CHECK(contains(json, R"("protocol":"icmp","protocols":[],)"));
  CHECK(contains(json, R"("count":0,"t":[],)"));
}

TEST_CASE("a PoP pair's one-way delay: the least trustworthy agent's status marks it, figures only when reported") {
  const auto one_way = [](OneWayStatus status, std::int64_t fwd_ms, std::int64_t bwd_ms) {
    LiveOneWay w;
    w.status = status;
    w.error_bound_ns = 100'000;
    w.sender_synchronised = status != OneWayStatus::kUnsynchronised;
    w.reflector_synchronised = true;
    if (status == OneWayStatus::kReported) {
      w.forward_p50_ns = fwd_ms * kMs;
      w.forward_p99_ns = (fwd_ms + 2) * kMs;
      w.backward_p50_ns = bwd_ms * kMs;
      w.backward_p99_ns = (bwd_ms + 1) * kMs;
    }
    return w;
  };
  LiveSnapshot view;
  // ams -> fra: two agents reported; fra -> ams: one reported, one unsynchronised; STAMP to a
  // router beside ICMP to it: STAMP is preferred; sin -> fra: an older agent, no one-way at all.
  LiveLatency a1 = cell("ams", "ams-1", "fra", "udp_echo", 35, 40, 10, 0);
  a1.one_way = one_way(OneWayStatus::kReported, 30, 5);
  LiveLatency a2 = cell("ams", "ams-2", "fra", "udp_echo", 36, 42, 10, 0);
  a2.one_way = one_way(OneWayStatus::kReported, 32, 6);
  a2.one_way->error_bound_ns = 300'000;
  LiveLatency f1 = cell("fra", "fra-1", "ams", "udp_echo", 35, 40, 10, 0);
  f1.one_way = one_way(OneWayStatus::kReported, 5, 30);
  LiveLatency f2 = cell("fra", "fra-2", "ams", "udp_echo", 35, 40, 10, 0);
  f2.one_way = one_way(OneWayStatus::kUnsynchronised, 0, 0);
  LiveLatency r1 = cell("fra", "fra-1", "router", "stamp", 2, 3, 10, 0);
  r1.one_way = one_way(OneWayStatus::kBoundTooLarge, 0, 0);
  view.latency = {a1, a2, f1, f2, r1, cell("fra", "fra-1", "router", "icmp", 1, 1, 10, 0),
                  cell("sin", "sin-1", "fra", "udp_echo", 150, 160, 10, 0)};
  const PopMatrix m = build_pop_matrix(view, kNow);
  REQUIRE(m.cells.size() == 4);  // ams->fra, fra->ams, fra->router, sin->fra
  const PopMatrixCell& ams_fra = m.cells[0];
  CHECK(ams_fra.one_way_status == static_cast<int>(OneWayStatus::kReported));
  CHECK(ams_fra.forward_p50_ms == doctest::Approx(31.0));  // the median of 30 and 32
  CHECK(ams_fra.forward_p99_ms == doctest::Approx(34.0));  // the highest
  CHECK(ams_fra.backward_p50_ms == doctest::Approx(5.5));
  CHECK(ams_fra.backward_p99_ms == doctest::Approx(7.0));
  CHECK(ams_fra.one_way_error_bound_ms == doctest::Approx(0.3));
  const PopMatrixCell& fra_ams = m.cells[1];
  CHECK(fra_ams.one_way_status == static_cast<int>(OneWayStatus::kUnsynchronised));
  CHECK(fra_ams.sender_unsynchronised);
  CHECK_FALSE(fra_ams.reflector_unsynchronised);
  CHECK(fra_ams.forward_p50_ms == 0.0);
  const PopMatrixCell& router = m.cells[2];
  CHECK(router.protocol == "stamp");
  CHECK(router.one_way_status == static_cast<int>(OneWayStatus::kBoundTooLarge));
  CHECK(m.cells[3].one_way_status == -1);

  const std::string json = render_matrix_json(m, kNow);
  CHECK(contains(json, R"("protocols":["udp_echo","stamp"],)"));
  CHECK(contains(json, R"("one_way_statuses":["not_measured","reported","unsynchronised","bound_too_large"],)"
                       R"("one_way_status":[1,2,3,-1],"one_way_unsync":[0,1,0,0],)"
                       R"("one_way_error_bound_ms":[0.3,0.1,0.1,0],"forward_p50_ms":[31,0,0,0],)"
                       R"("forward_p99_ms":[34,0,0,0],"backward_p50_ms":[5.5,0,0,0],"backward_p99_ms":[7,0,0,0]})"));

  // A fleet where no agent sends one-way delay: none of its columns.
  LiveSnapshot old;
  old.latency = {cell("sin", "sin-1", "fra", "udp_echo", 150, 160, 10, 0)};
  CHECK_FALSE(contains(render_matrix_json(build_pop_matrix(old, kNow), kNow), "one_way"));
  // /api/pair takes stamp as a protocol.
  CHECK(parse_pair_request(params({{"from", "fra"}, {"to", "router"}, {"protocol", "stamp"}}), kNow).request);
}
