#include "bench/fleet/nats_cluster.hpp"

#include <httplib.h>
#include <nats/nats.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <thread>

namespace vantage::fleet {

namespace {

// The value of the first "key" at or after `from` in nats-server's (indented) JSON: a string's
// contents or a bare token; npos-safe. The monitoring JSON is the server's own, read in a
// benchmark: a field lookup is all it needs.
std::string json_field(const std::string& text, std::size_t from, const std::string& key,
                       std::size_t* end = nullptr) {
  const std::size_t at = text.find("\"" + key + "\"", from);
  if (at == std::string::npos) return {};
  std::size_t i = at + key.size() + 2;
  while (i < text.size() && (text[i] == ' ' || text[i] == ':' || text[i] == '\n' || text[i] == '\t')) ++i;
  std::string value;
  if (i < text.size() && text[i] == '"') {
    for (++i; i < text.size() && text[i] != '"'; ++i) value += text[i];
  } else {
    for (; i < text.size() && text[i] != ',' && text[i] != '}' && text[i] != '\n'; ++i) value += text[i];
  }
  if (end != nullptr) *end = i;
  return value;
}

}  // namespace

struct NatsCluster::Client {
  natsConnection* connection = nullptr;
  jsCtx* js = nullptr;
  ~Client() {
    if (js != nullptr) jsCtx_Destroy(js);
    if (connection != nullptr) natsConnection_Destroy(connection);
  }
};

NatsCluster::NatsCluster(std::filesystem::path binary, std::filesystem::path dir, std::size_t nodes)
    : binary_(std::move(binary)), dir_(std::move(dir)), nodes_(nodes) {}

NatsCluster::~NatsCluster() {
  client_.reset();
  stop_all();
}

std::size_t NatsCluster::index_of(const std::string& name) const {
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    if (nodes_[i].name == name) return i;
  }
  return nodes_.size();
}

std::string NatsCluster::client_url(std::size_t i) const {
  return "nats://127.0.0.1:" + std::to_string(nodes_[i].client_port);
}

std::vector<std::string> NatsCluster::client_urls() const {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < nodes_.size(); ++i) out.push_back(client_url(i));
  return out;
}

bool NatsCluster::start(std::string& error) {
  std::filesystem::create_directories(dir_);
  std::set<std::uint16_t> taken;
  const auto pick = [&taken]() -> std::uint16_t {
    for (int attempt = 0; attempt < 50; ++attempt) {
      const std::uint16_t p = free_port();
      if (p != 0 && taken.insert(p).second) return p;
    }
    return 0;
  };
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    Node& n = nodes_[i];
    n.name = "n" + std::to_string(i + 1);
    n.client_port = pick();
    n.cluster_port = pick();
    n.http_port = pick();
    if (n.client_port == 0 || n.cluster_port == 0 || n.http_port == 0) {
      error = "no free ports for the NATS cluster";
      return false;
    }
    n.config = dir_ / (n.name + ".conf");
    n.log = dir_ / (n.name + ".log");
    n.store = dir_ / (n.name + "-store");
    n.process = std::make_unique<ChildProcess>();
  }
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    const Node& n = nodes_[i];
    std::ofstream out(n.config, std::ios::trunc);
    out << "# Written by vantage-fleet: node " << i + 1 << " of " << nodes_.size() << " on loopback.\n"
        << "server_name: " << n.name << "\n"
        << "listen: 127.0.0.1:" << n.client_port << "\n"
        << "http: 127.0.0.1:" << n.http_port << "\n"
        << "jetstream {\n  store_dir: \"" << n.store.string() << "\"\n}\n"
        << "cluster {\n  name: vantage-fleet\n  listen: 127.0.0.1:" << n.cluster_port << "\n  routes: [\n";
    for (std::size_t j = 0; j < nodes_.size(); ++j) {
      if (j != i) out << "    nats-route://127.0.0.1:" << nodes_[j].cluster_port << "\n";
    }
    out << "  ]\n}\n";
    out.close();
    if (!out) {
      error = "cannot write " + n.config.string();
      return false;
    }
  }
  for (Node& n : nodes_) {
    if (!start_node(n, error)) return false;
  }
  return true;
}

bool NatsCluster::start_node(Node& node, std::string& error) {
  std::error_code ec;
  const std::uintmax_t from = std::filesystem::exists(node.log, ec) ? std::filesystem::file_size(node.log, ec) : 0;
  if (!node.process->start({binary_.string(), "-c", node.config.string()}, node.log, error)) return false;
  if (!wait_for_log(node.log, from, "Server is ready", *node.process, std::chrono::seconds(30))) {
    error = "nats-server " + node.name + " did not start (see " + node.log.string() + ")";
    node.process->kill_now();
    return false;
  }
  return true;
}

void NatsCluster::kill9(std::size_t i) { nodes_[i].process->kill_now(); }

bool NatsCluster::restart(std::size_t i, std::string& error) { return start_node(nodes_[i], error); }

void NatsCluster::stop_all() {
  for (Node& n : nodes_) {
    if (n.process) n.process->stop(SIGTERM, std::chrono::seconds(10));
  }
}

std::string NatsCluster::get(std::size_t i, const std::string& path) const {
  httplib::Client http("127.0.0.1", nodes_[i].http_port);
  http.set_connection_timeout(std::chrono::seconds(1));
  http.set_read_timeout(std::chrono::seconds(2));
  const auto response = http.Get(path);
  return response && response->status == 200 ? response->body : std::string();
}

std::string NatsCluster::meta_leader(std::size_t i) const {
  const std::string jsz = get(i, "/jsz");
  const std::size_t meta = jsz.find("\"meta_cluster\"");
  return meta == std::string::npos ? std::string() : json_field(jsz, meta, "leader");
}

bool NatsCluster::wait_for_meta_leader(std::chrono::milliseconds timeout, std::string& error) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string seen;
  while (std::chrono::steady_clock::now() < deadline) {
    std::string leader;
    bool agree = true;
    for (std::size_t i = 0; i < nodes_.size() && agree; ++i) {
      const std::string l = meta_leader(i);
      agree = !l.empty() && (leader.empty() || l == leader);
      leader = l;
    }
    seen = leader;
    if (agree) {
      // The leader's view: every other peer current.
      const std::size_t li = index_of(leader);
      const std::string jsz = li < nodes_.size() ? get(li, "/jsz") : std::string();
      std::size_t at = jsz.find("\"meta_cluster\""), current = 0;
      while (at != std::string::npos) {
        std::size_t end = 0;
        const std::string v = json_field(jsz, at, "current", &end);
        if (v.empty()) break;
        if (v == "true") ++current;
        at = end;
      }
      if (current + 1 >= nodes_.size()) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  error = "the NATS cluster has no JetStream meta leader that all nodes agree on (last seen: '" + seen +
          "'; see " + (dir_ / "n1.log").string() + ")";
  return false;
}

StreamStatus NatsCluster::stream_status(const std::string& stream, std::chrono::milliseconds timeout) {
  StreamStatus out;
  if (!client_) {
    auto c = std::make_unique<Client>();
    natsOptions* opts = nullptr;
    natsStatus s = natsOptions_Create(&opts);
    const std::vector<std::string> urls = client_urls();
    std::vector<const char*> raw;
    for (const auto& u : urls) raw.push_back(u.c_str());
    if (s == NATS_OK) s = natsOptions_SetServers(opts, raw.data(), static_cast<int>(raw.size()));
    if (s == NATS_OK) s = natsOptions_SetName(opts, "vantage-fleet");
    if (s == NATS_OK) s = natsOptions_SetTimeout(opts, timeout.count());
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 200);
    if (s == NATS_OK) s = natsConnection_Connect(&c->connection, opts);
    natsOptions_Destroy(opts);
    if (s == NATS_OK) s = natsConnection_JetStream(&c->js, c->connection, nullptr);
    if (s != NATS_OK) {
      out.error = std::string("NATS connect: ") + natsStatus_GetText(s);
      return out;
    }
    client_ = std::move(c);
  }
  jsOptions o;
  jsOptions_Init(&o);
  o.Wait = timeout.count();
  jsStreamInfo* info = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  const natsStatus s = js_GetStreamInfo(&info, client_->js, stream.c_str(), &o, &code);
  if (s != NATS_OK) {
    out.error = std::string("stream info: ") + natsStatus_GetText(s) +
                (code != 0 ? " (JetStream error " + std::to_string(static_cast<int>(code)) + ")" : "");
    return out;
  }
  out.ok = true;
  out.messages = info->State.Msgs;
  out.first_seq = info->State.FirstSeq;
  out.last_seq = info->State.LastSeq;
  if (info->Cluster != nullptr) {
    if (info->Cluster->Leader != nullptr) out.leader = info->Cluster->Leader;
    for (int i = 0; i < info->Cluster->ReplicasLen; ++i) {
      const jsPeerInfo* p = info->Cluster->Replicas[i];
      out.replicas.push_back({p->Name != nullptr ? p->Name : "", p->Current, p->Offline, p->Lag});
    }
  }
  jsStreamInfo_Destroy(info);
  return out;
}

}  // namespace vantage::fleet
