// NatsCluster: a real NATS JetStream cluster of nats-server processes on loopback for the
// simulator (each with its own config, store directory and log in the work directory), killed
// and restarted by node; plus what its monitoring endpoint and JetStream API say about it.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "bench/fleet/child_process.hpp"

namespace vantage::fleet {

// One replica of a stream as its leader sees it.
struct StreamPeer {
  std::string name;
  bool current = false;
  bool offline = false;
  std::uint64_t lag = 0;
};

// js_GetStreamInfo, as far as the simulator needs it.
struct StreamStatus {
  bool ok = false;
  std::string error;
  std::string leader;  // server_name of the stream's leader
  std::uint64_t messages = 0;
  std::uint64_t first_seq = 0, last_seq = 0;
  std::vector<StreamPeer> replicas;  // the other peers
};

class NatsCluster {
 public:
  NatsCluster(std::filesystem::path binary, std::filesystem::path dir, std::size_t nodes = 3);
  ~NatsCluster();
  NatsCluster(const NatsCluster&) = delete;
  NatsCluster& operator=(const NatsCluster&) = delete;

  // Writes every node's config and starts them all.
  bool start(std::string& error);
  // Until every running node reports the same JetStream meta leader and that leader sees all of
  // its peers current (/jsz), or the timeout. nats-server 2.9 answers the JetStream API with
  // "JetStream system temporarily unavailable" before that.
  bool wait_for_meta_leader(std::chrono::milliseconds timeout, std::string& error);

  std::size_t size() const noexcept { return nodes_.size(); }
  const std::string& name(std::size_t i) const { return nodes_[i].name; }
  // Index of the node with that server_name, or size().
  std::size_t index_of(const std::string& name) const;
  std::string client_url(std::size_t i) const;
  std::vector<std::string> client_urls() const;
  pid_t pid(std::size_t i) const { return nodes_[i].process->pid(); }

  void kill9(std::size_t i);
  // Starts node i again on the same config and store directory.
  bool restart(std::size_t i, std::string& error);
  void stop_all();

  // Meta leader as node i's /jsz names it ("" when it knows none or does not answer).
  std::string meta_leader(std::size_t i) const;
  // The stream through the NATS client (connected to every node, reconnecting across them).
  StreamStatus stream_status(const std::string& stream, std::chrono::milliseconds timeout);

 private:
  struct Node {
    std::string name;
    std::uint16_t client_port = 0, cluster_port = 0, http_port = 0;
    std::filesystem::path config, log, store;
    std::unique_ptr<ChildProcess> process;
  };
  bool start_node(Node& node, std::string& error);
  std::string get(std::size_t i, const std::string& path) const;

  std::filesystem::path binary_, dir_;
  std::vector<Node> nodes_;
  struct Client;
  std::unique_ptr<Client> client_;
};

}  // namespace vantage::fleet
