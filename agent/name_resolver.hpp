// Background DNS for the agent's targets and collectors: lookups run on a thread of their own, so a
// slow or dead resolver never blocks a thread the systemd watchdog watches; names that do not
// resolve are retried with bounded, jittered exponential backoff, and resolved ones re-resolved
// periodically so that a moved name is followed.
#pragma once

#include <asio/ip/address.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace vantage::agent {

struct ResolveSchedule {
  // After the n-th failure in a row the next try waits a delay drawn uniformly from
  // [bound / 2, bound], bound = min(retry_max, retry_initial * 2^(n-1)): never a hot loop, never
  // longer than retry_max, and agents that lost DNS together do not retry in step.
  std::chrono::milliseconds retry_initial{1'000};
  std::chrono::milliseconds retry_max{60'000};
  // A resolved name is looked up again this often (jittered the same way, by up to half).
  std::chrono::milliseconds refresh{300'000};
};

// The delay before the next lookup after `failures` failures in a row (0: a success, so the
// refresh period). rng is a splitmix64 state.
std::chrono::milliseconds next_lookup_delay(const ResolveSchedule& schedule, std::uint32_t failures,
                                            std::uint64_t& rng) noexcept;

// One lookup's outcome. `definitive` tells "the name does not exist" (NXDOMAIN, no address) from
// a failure that says nothing about the name (no answer from the server, EAI_AGAIN): on the
// latter a name keeps the address it had.
struct LookupResult {
  std::optional<asio::ip::address> address;  // the first address getaddrinfo returned
  std::vector<asio::ip::address> all;        // every address, in getaddrinfo's order
  std::string error;                         // when there is none: why
  bool definitive = true;
};

// getaddrinfo(host), first address, any family; blocking.
LookupResult system_lookup(const std::string& host);

// The state of one name: what probers and the shipper should use right now.
struct NameState {
  std::optional<asio::ip::address> address;
  std::vector<asio::ip::address> all;  // every address of the latest lookup (a connect tries each)
  std::string error;  // the latest failure, while address is empty
  bool looked_up = false;  // at least one lookup has finished
};

// Threads: one of its own, for every lookup. The callback runs on it, at most one at a time, and
// never after stop() has returned: it should only hand the news on (post to an io_context, set
// an atomic), since lookups wait while it runs.
//
// Stopping never waits for a lookup in progress (getaddrinfo cannot be interrupted, and a dead
// DNS server holds it for the resolver's timeout times its attempts): the thread is detached and
// ends by itself after that lookup, touching only state it shares ownership of.
class NameResolver {
 public:
  using Lookup = std::function<LookupResult(const std::string& host)>;
  // index into the hosts given to the constructor, and the name's new state.
  using OnChange = std::function<void(std::size_t index, const NameState& state)>;

  // Calls on_change whenever a name's address changes (resolved, unresolved, moved), and also
  // when the first lookup of a name fails (so waiters learn the outcome).
  NameResolver(std::vector<std::string> hosts, ResolveSchedule schedule, OnChange on_change,
               Lookup lookup = system_lookup, std::uint64_t seed = 0);
  ~NameResolver();  // stop()

  NameResolver(const NameResolver&) = delete;
  NameResolver& operator=(const NameResolver&) = delete;

  // Starts the thread; every name is looked up at once.
  void start();
  // Looks name index up again soon (its address may have moved: a reload, a failed connect).
  void refresh(std::size_t index);
  // No callback after this returns. Idempotent.
  void stop();

  NameState state(std::size_t index) const;
  std::size_t size() const noexcept { return size_; }

 private:
  struct Shared;
  std::shared_ptr<Shared> shared_;
  std::size_t size_ = 0;
};

}  // namespace vantage::agent
