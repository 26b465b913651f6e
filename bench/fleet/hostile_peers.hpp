// HostilePeers: connections that misbehave towards the collector, run in a forked child so
// their file descriptors do not count against the steady fleet's (20,000 per process here):
// half-open TCP (one byte of a TLS record header, then nothing), slow handshakes (a real
// ClientHello a byte every few seconds), authenticated peers that send batches and never read
// their acks, and garbage. Every closed connection is opened again until the child is stopped.
#pragma once

#include <sys/types.h>

#include <asio/ip/tcp.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "bench/fleet/batch_factory.hpp"
#include "bench/fleet/fleet.hpp"

namespace vantage::fleet {

struct HostileConfig {
  asio::ip::tcp::endpoint collector;
  std::size_t half_open_main = 5000;      // from 127.0.0.200
  std::size_t half_open_per_source = 500;  // from each of 127.0.1.1 .. 127.0.1.S
  std::size_t sources = 10;
  std::size_t slow = 50;  // from 127.0.0.201
  double slow_byte_s = 2.0;
  std::vector<AgentSetup> non_readers;  // from 127.0.0.202, each its own certificate
  double non_reader_interval_s = 0.1;
  std::size_t garbage = 20;  // from 127.0.0.203
  double garbage_pause_s = 0.2;
  std::vector<std::uint8_t> client_hello;  // what the slow peers trickle
  std::string server_name = "127.0.0.1";
};

// The bytes of a TLS ClientHello as the given client context would send it first.
std::vector<std::uint8_t> make_client_hello(const platform::tls::TlsContext& context, const std::string& server_name);

class HostileChild {
 public:
  // Forks; the child runs the peers until stop(). factory outlives nothing in the parent: the
  // child has its own copy of the address space.
  bool start(HostileConfig config, const BatchFactory& factory, std::string& error);
  // SIGTERM, then the child's counters ("name" -> value) as it reported them.
  std::map<std::string, std::uint64_t> stop();
  ~HostileChild();

 private:
  pid_t pid_ = -1;
  int pipe_fd_ = -1;
};

}  // namespace vantage::fleet
