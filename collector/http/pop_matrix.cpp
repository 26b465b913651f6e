#include "collector/http/pop_matrix.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "platform/json_writer.hpp"
#include "platform/utf8_text.hpp"

namespace vantage::collector::http {

namespace {

int protocol_rank(std::string_view protocol) {
  if (protocol == "udp_echo") return 0;
  if (protocol == "stamp") return 1;
  if (protocol == "tcp_connect") return 2;
  if (protocol == "icmp") return 3;
  return 9;
}
constexpr int kKnownProtocolRank = 3;

// How little a one-way status lets the figures be trusted: the pair shows its agents' worst.
int distrust(OneWayStatus s) {
  switch (s) {
    case OneWayStatus::kNotMeasured:
      return 0;
    case OneWayStatus::kReported:
      return 1;
    case OneWayStatus::kBoundTooLarge:
      return 2;
    case OneWayStatus::kUnsynchronised:
      return 3;
  }
  return 0;
}

// A pair's one-way figures from its agents' summaries.
struct OneWayMerge {
  std::optional<OneWayStatus> status;
  bool sender_unsynchronised = false, reflector_unsynchronised = false;
  double error_bound_ms = 0.0;
  std::vector<double> forward_p50s, backward_p50s;
  double forward_p99 = 0.0, backward_p99 = 0.0;
  void add(const LiveOneWay& w) {
    if (!status || distrust(w.status) > distrust(*status)) status = w.status;
    error_bound_ms = std::max(error_bound_ms, static_cast<double>(w.error_bound_ns) / 1e6);
    if (w.status == OneWayStatus::kNotMeasured) return;  // nothing said about the clocks either
    sender_unsynchronised |= !w.sender_synchronised;
    reflector_unsynchronised |= !w.reflector_synchronised;
    if (w.status != OneWayStatus::kReported) return;
    forward_p50s.push_back(static_cast<double>(w.forward_p50_ns) / 1e6);
    backward_p50s.push_back(static_cast<double>(w.backward_p50_ns) / 1e6);
    forward_p99 = std::max(forward_p99, static_cast<double>(w.forward_p99_ns) / 1e6);
    backward_p99 = std::max(backward_p99, static_cast<double>(w.backward_p99_ns) / 1e6);
  }
};

// Rounded to a fixed resolution, then written as the shortest text that reads back: "48.312"
// rather than printf's digits, and several times faster for 90,000 pairs.
// Dividing by the scale (an exact integer) gives the double nearest the decimal, whose shortest
// text is that decimal; multiplying by 0.001 would not.
double rounded(double v, double scale) { return std::round(v * scale) / scale; }
constexpr double kMicrosPerMs = 1e3;  // millisecond figures to the microsecond
constexpr double kMillionths = 1e6;   // ratios to the millionth

double median(std::vector<double>& v) {
  if (v.empty()) return 0.0;
  const auto mid = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  if (v.size() % 2 == 1) return *mid;
  const double upper = *mid;
  return (*std::max_element(v.begin(), mid) + upper) / 2.0;
}

// Every figure a (PoP, target) pair merges from several agents' intervals.
struct Merge {
  std::vector<double> p50s;
  double p99 = 0.0;
  std::uint64_t sent = 0, received = 0, lost = 0;
  void add(std::int64_t p50_ns, std::int64_t p99_ns, std::uint64_t s, std::uint64_t r, std::uint64_t l) {
    sent += s;
    received += r;
    lost += l;
    if (r > 0) {  // an interval with no reply has no RTT to merge
      p50s.push_back(static_cast<double>(p50_ns) / 1e6);
      p99 = std::max(p99, static_cast<double>(p99_ns) / 1e6);
    }
  }
  double loss() const {
    return received + lost == 0 ? 0.0 : static_cast<double>(lost) / static_cast<double>(received + lost);
  }
};

// The column a target fills: a mesh target ("POP/AGENT", another agent's reflector) its PoP's,
// any other target its own name. Only a known PoP before the slash folds: a target name is the
// agent operator's free text, and a '/' in it (a URL, a markup tag) names no PoP.
std::string_view column_of(std::string_view target, const std::unordered_set<std::string_view>& pops) {
  const std::size_t slash = target.find('/');
  if (slash == std::string_view::npos || slash == 0) return target;
  const std::string_view pop = target.substr(0, slash);
  return pops.contains(pop) ? pop : target;
}

}  // namespace

PopMatrix build_pop_matrix(const LiveSnapshot& view, std::int64_t now_ns) {
  PopMatrix m;
  // Hashed while collecting (three names per entry of a 90,000-entry view), sorted once after.
  std::unordered_set<std::string_view> name_set, source_set, agent_set;
  for (const LiveLatency& l : view.latency) source_set.insert(l.pop);
  for (const LiveAgent& a : view.agents) source_set.insert(a.pop);
  for (const LiveLatency& l : view.latency) {
    name_set.insert(column_of(l.target, source_set));
    agent_set.insert(l.agent_id);
  }
  name_set.insert(source_set.begin(), source_set.end());
  const auto sorted = [](const std::unordered_set<std::string_view>& set) {
    std::vector<std::string_view> v(set.begin(), set.end());
    std::sort(v.begin(), v.end());
    return v;
  };
  std::unordered_map<std::string_view, std::uint32_t> name_index, agent_index;
  for (const std::string_view n : sorted(name_set)) {
    name_index.emplace(n, static_cast<std::uint32_t>(m.pops.size()));
    m.pops.emplace_back(n);
  }
  for (const std::string_view s : sorted(source_set)) m.rows.push_back(name_index.at(s));
  for (const std::string_view a : sorted(agent_set)) {
    agent_index.emplace(a, static_cast<std::uint32_t>(m.agent_ids.size()));
    m.agent_ids.emplace_back(a);
  }
  // (src << 32 | dst) -> the pair's entries; sorted keys give the cells in src, dst order.
  std::unordered_map<std::uint64_t, std::vector<const LiveLatency*>> pairs;
  pairs.reserve(view.latency.size());
  for (const LiveLatency& l : view.latency) {
    const std::uint64_t key = std::uint64_t{name_index.at(l.pop)} << 32 | name_index.at(column_of(l.target, source_set));
    pairs[key].push_back(&l);
  }
  std::vector<std::uint64_t> keys;
  keys.reserve(pairs.size());
  for (const auto& kv : pairs) keys.push_back(kv.first);
  std::sort(keys.begin(), keys.end());
  m.cells.reserve(keys.size());
  for (const std::uint64_t key : keys) {
    const auto& entries = pairs.at(key);
    int best = 99;
    for (const LiveLatency* l : entries) best = std::min(best, protocol_rank(l->protocol));
    PopMatrixCell c;
    c.src = static_cast<std::uint32_t>(key >> 32);
    c.dst = static_cast<std::uint32_t>(key & 0xffffffffu);
    c.unresolved = true;
    Merge merge;
    OneWayMerge one_way;
    std::int64_t newest = 0;
    std::string_view first_agent;
    for (const LiveLatency* l : entries) {
      if (protocol_rank(l->protocol) != best) continue;
      // Unknown protocols all rank alike: the first one's name stands for the cell.
      if (c.protocol.empty()) c.protocol = l->protocol;
      if (l->protocol != c.protocol) continue;
      ++c.agents;
      if (first_agent.empty() || l->agent_id < first_agent) first_agent = l->agent_id;
      newest = std::max(newest, l->interval_end_ns);
      if (l->unresolved) continue;
      c.unresolved = false;
      merge.add(l->p50_ns, l->p99_ns, l->sent, l->received, l->lost);
      if (l->one_way) one_way.add(*l->one_way);
    }
    c.first_agent = agent_index.at(first_agent);
    c.p50_ms = median(merge.p50s);
    c.p99_ms = merge.p99;
    c.sent = merge.sent;
    c.received = merge.received;
    c.lost = merge.lost;
    c.loss = merge.loss();
    c.age_s = static_cast<double>(now_ns - newest) / 1e9;
    if (one_way.status) {
      c.one_way_status = static_cast<int>(*one_way.status);
      c.sender_unsynchronised = one_way.sender_unsynchronised;
      c.reflector_unsynchronised = one_way.reflector_unsynchronised;
      c.one_way_error_bound_ms = one_way.error_bound_ms;
      if (*one_way.status == OneWayStatus::kReported) {
        c.forward_p50_ms = median(one_way.forward_p50s);
        c.forward_p99_ms = one_way.forward_p99;
        c.backward_p50_ms = median(one_way.backward_p50s);
        c.backward_p99_ms = one_way.backward_p99;
      }
    }
    m.cells.push_back(std::move(c));
  }
  return m;
}

std::string render_matrix_json(const PopMatrix& m, std::int64_t now_ns) {
  // kHtmlSafe: names from agents never close a script element.
  platform::JsonWriter j({.escape = platform::JsonEscape::kHtmlSafe, .double_digits = 0});
  std::vector<std::string> protocols;
  std::unordered_map<std::string_view, std::uint32_t> protocol_index;
  for (const PopMatrixCell& c : m.cells) {
    if (protocol_index.emplace(c.protocol, static_cast<std::uint32_t>(protocols.size())).second) {
      protocols.push_back(c.protocol);
    }
  }
  const auto column = [&](std::string_view key, const auto& get) {
    j.key(key);
    j.begin_array();
    for (const PopMatrixCell& c : m.cells) j.value(get(c));
    j.end_array();
  };
  const auto names = [&](std::string_view key, const std::vector<std::string>& list) {
    j.key(key);
    j.begin_array();
    for (const std::string& n : list) j.value(n);
    j.end_array();
  };
  j.begin_object();
  j.field("now_ms", static_cast<double>(now_ns / 1'000'000));
  names("pops", m.pops);
  j.key("rows");
  j.begin_array();
  for (const std::uint32_t r : m.rows) j.value(r);
  j.end_array();
  names("agent_ids", m.agent_ids);
  names("protocols", protocols);
  j.field("count", static_cast<std::uint64_t>(m.cells.size()));
  column("src", [](const PopMatrixCell& c) { return c.src; });
  column("dst", [](const PopMatrixCell& c) { return c.dst; });
  column("p50_ms", [](const PopMatrixCell& c) { return rounded(c.p50_ms, kMicrosPerMs); });
  column("p99_ms", [](const PopMatrixCell& c) { return rounded(c.p99_ms, kMicrosPerMs); });
  column("loss", [](const PopMatrixCell& c) { return rounded(c.loss, kMillionths); });
  column("sent", [](const PopMatrixCell& c) { return c.sent; });
  column("samples", [](const PopMatrixCell& c) { return c.received; });
  column("agents", [](const PopMatrixCell& c) { return c.agents; });
  column("agent", [](const PopMatrixCell& c) { return c.first_agent; });
  column("protocol", [&](const PopMatrixCell& c) { return protocol_index.at(c.protocol); });
  column("unresolved", [](const PopMatrixCell& c) { return std::uint32_t{c.unresolved}; });
  column("age_s", [](const PopMatrixCell& c) { return rounded(c.age_s, kMicrosPerMs); });
  // One-way delay, only once some agent sends it (a fleet without it pays nothing): one_way_status
  // indexes one_way_statuses (-1: not carried), one_way_unsync has bit 1 for the agent's clock and
  // bit 2 for the reflector's when either was not synchronised; the figures are 0 unless reported.
  if (std::any_of(m.cells.begin(), m.cells.end(), [](const PopMatrixCell& c) { return c.one_way_status >= 0; })) {
    j.key("one_way_statuses");
    j.begin_array();
    for (std::size_t i = 0; i < kOneWayStatusCount; ++i) j.value(to_string(static_cast<OneWayStatus>(i)));
    j.end_array();
    column("one_way_status", [](const PopMatrixCell& c) { return static_cast<std::int32_t>(c.one_way_status); });
    column("one_way_unsync", [](const PopMatrixCell& c) {
      return std::uint32_t{c.sender_unsynchronised} | std::uint32_t{c.reflector_unsynchronised} << 1;
    });
    column("one_way_error_bound_ms", [](const PopMatrixCell& c) { return rounded(c.one_way_error_bound_ms, kMicrosPerMs); });
    column("forward_p50_ms", [](const PopMatrixCell& c) { return rounded(c.forward_p50_ms, kMicrosPerMs); });
    column("forward_p99_ms", [](const PopMatrixCell& c) { return rounded(c.forward_p99_ms, kMicrosPerMs); });
    column("backward_p50_ms", [](const PopMatrixCell& c) { return rounded(c.backward_p50_ms, kMicrosPerMs); });
    column("backward_p99_ms", [](const PopMatrixCell& c) { return rounded(c.backward_p99_ms, kMicrosPerMs); });
  }
  j.end_object();
  return j.take();
}

PairRequestOrError parse_pair_request(const std::multimap<std::string, std::string>& params, std::int64_t now_ns) {
  constexpr std::size_t kMaxName = 256;
  // Unix seconds up to 2100: ns stay far from int64's end.
  constexpr std::int64_t kMaxTimeS = 4'102'444'800;
  PairRequestOrError out;
  const auto fail = [&out](std::string why) {
    out.error = std::move(why);
    return out;
  };
  PairRequest r;
  bool has_since = false, has_until = false;
  for (const auto& [key, value] : params) {
    if (params.count(key) > 1) return fail("parameter '" + key + "' given more than once");
    if (key == "from" || key == "to") {
      if (value.empty()) return fail(key + ": empty");
      if (const auto verdict = platform::check_text(value, kMaxName); !verdict) {
        return fail(key + ": " + platform::describe(verdict, kMaxName));
      }
      (key == "from" ? r.from : r.to) = value;
    } else if (key == "since" || key == "until") {
      std::int64_t v = -1;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
      if (ec != std::errc() || end != value.data() + value.size() || v < 0 || v > kMaxTimeS) {
        return fail(key + ": expected Unix seconds (an integer from 0 to " + std::to_string(kMaxTimeS) + ")");
      }
      (key == "since" ? r.since_s : r.until_s) = v;
      (key == "since" ? has_since : has_until) = true;
    } else if (key == "protocol") {
      if (protocol_rank(value) > kKnownProtocolRank) {
        return fail("protocol: expected udp_echo, stamp, tcp_connect or icmp");
      }
      r.protocol = value;
    } else {
      return fail("unknown parameter (from, to, since, until and protocol are known)");
    }
  }
  if (r.from.empty() || r.to.empty()) return fail("from and to are required");
  if (!has_until) r.until_s = now_ns / 1'000'000'000 + 1;  // the interval ending now is included
  if (!has_since) r.since_s = std::max<std::int64_t>(0, r.until_s - 3600);
  if (r.until_s <= r.since_s) return fail("until must be after since");
  if (r.until_s - r.since_s > kMaxPairRangeS) {
    return fail("the range is longer than " + std::to_string(kMaxPairRangeS) + " s");
  }
  out.request = std::move(r);
  return out;
}

struct PairSteps::Impl {
  struct Step {
    Merge merge;
    std::vector<std::uint32_t> agents;  // indices from agent_index, sorted
  };
  PairRequest request;
  std::int64_t step_s = 1;
  std::unordered_map<std::string, std::uint32_t> agent_index;  // agent id: 0, 1, ... as first seen
  std::set<std::string, std::less<>> protocols;  // of every interval added
  // By protocol (the request's, or each while none is asked for), then step index: at most
  // kMaxPairPoints steps each.
  std::map<std::string, std::map<std::int64_t, Step>, std::less<>> steps;

  std::uint32_t agent(const std::string& name) {
    return agent_index.try_emplace(name, static_cast<std::uint32_t>(agent_index.size())).first->second;
  }
};

PairSteps::PairSteps(PairRequest request) : impl_(std::make_unique<Impl>()) {
  const std::int64_t range = request.until_s - request.since_s;
  impl_->step_s = std::max<std::int64_t>(1, (range + kMaxPairPoints - 1) / kMaxPairPoints);
  impl_->request = std::move(request);
}

PairSteps::~PairSteps() = default;

void PairSteps::add(const store::PairPoint& p) {
  const PairRequest& r = impl_->request;
  impl_->protocols.insert(p.protocol);
  if (!r.protocol.empty() && p.protocol != r.protocol) return;
  const std::int64_t end_s = p.interval_end_ns / 1'000'000'000;
  if (end_s < r.since_s || end_s >= r.until_s) return;
  Impl::Step& step = impl_->steps[p.protocol][(end_s - r.since_s) / impl_->step_s];
  step.merge.add(p.p50_ns, p.p99_ns, p.sent, p.received, p.lost);
  const std::uint32_t agent = impl_->agent(p.agent_id);
  const auto at = std::lower_bound(step.agents.begin(), step.agents.end(), agent);
  if (at == step.agents.end() || *at != agent) step.agents.insert(at, agent);
}

std::string PairSteps::render_json() {
  const PairRequest& request = impl_->request;
  std::string_view protocol = request.protocol;
  if (protocol.empty()) {
    for (const std::string& p : impl_->protocols) {
      if (protocol.empty() || protocol_rank(p) < protocol_rank(protocol)) protocol = p;
    }
  }
  std::map<std::int64_t, Impl::Step> none;
  const auto chosen = impl_->steps.find(protocol);
  auto& steps = chosen == impl_->steps.end() ? none : chosen->second;
  const std::int64_t step_s = impl_->step_s;
  platform::JsonWriter j({.escape = platform::JsonEscape::kHtmlSafe, .double_digits = 0});
  j.begin_object();
  j.field("from", request.from);
  j.field("to", request.to);
  j.field("protocol", protocol);
  j.key("protocols");
  j.begin_array();
  for (const std::string& p : impl_->protocols) j.value(p);
  j.end_array();
  j.field("since", request.since_s);
  j.field("until", request.until_s);
  j.field("step_s", step_s);
  j.field("count", static_cast<std::uint64_t>(steps.size()));
  const auto column = [&](std::string_view key, const auto& get) {
    j.key(key);
    j.begin_array();
    for (auto& [index, step] : steps) j.value(get(index, step));
    j.end_array();
  };
  using Step = Impl::Step;
  // t: the step's start, Unix seconds (with 1 s steps, the second the interval ended in).
  column("t", [&](std::int64_t index, const Step&) { return request.since_s + index * step_s; });
  column("p50_ms", [](std::int64_t, Step& b) { return rounded(median(b.merge.p50s), kMicrosPerMs); });
  column("p99_ms", [](std::int64_t, const Step& b) { return rounded(b.merge.p99, kMicrosPerMs); });
  column("loss", [](std::int64_t, const Step& b) { return rounded(b.merge.loss(), kMillionths); });
  column("sent", [](std::int64_t, const Step& b) { return b.merge.sent; });
  column("samples", [](std::int64_t, const Step& b) { return b.merge.received; });
  column("agents", [](std::int64_t, const Step& b) { return static_cast<std::uint64_t>(b.agents.size()); });
  j.end_object();
  return j.take();
}

std::string render_pair_json(const PairRequest& request, std::span<const store::PairPoint> points) {
  PairSteps steps(request);
  for (const store::PairPoint& p : points) steps.add(p);
  return steps.render_json();
}

}  // namespace vantage::collector::http
