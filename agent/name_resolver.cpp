#include "agent/name_resolver.hpp"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <mutex>
#include <thread>

#include "agent/probes/probe_schedule.hpp"
#include "platform/random_seed.hpp"

namespace vantage::agent {

std::chrono::milliseconds next_lookup_delay(const ResolveSchedule& schedule, std::uint32_t failures,
                                            std::uint64_t& rng) noexcept {
  std::int64_t bound = 0;
  if (failures == 0) {
    bound = schedule.refresh.count();
  } else {
    const std::int64_t initial = std::max<std::int64_t>(1, schedule.retry_initial.count());
    const std::int64_t max = std::max<std::int64_t>(initial, schedule.retry_max.count());
    const std::uint32_t exponent = std::min<std::uint32_t>(failures - 1, 40);
    bound = initial > (max >> exponent) ? max : std::min(max, initial << exponent);
  }
  bound = std::max<std::int64_t>(bound, 1);
  // Equal jitter: half fixed, half random, so the delay never collapses towards zero.
  const std::int64_t half = bound / 2;
  const auto extra = static_cast<std::int64_t>(probes::uniform01(rng) * static_cast<double>(bound - half + 1));
  return std::chrono::milliseconds(std::min(bound, half + extra));
}

LookupResult system_lookup(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;  // one entry per address instead of one per socket type
  addrinfo* list = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &list);
  LookupResult r;
  if (rc != 0 || list == nullptr) {
    r.error = rc != 0 ? ::gai_strerror(rc) : "no address";
    // EAI_AGAIN: the server did not answer; EAI_SYSTEM, EAI_MEMORY: this host's trouble.
    r.definitive = rc != EAI_AGAIN && rc != EAI_SYSTEM && rc != EAI_MEMORY;
    if (list != nullptr) ::freeaddrinfo(list);
    return r;
  }
  for (const addrinfo* a = list; a != nullptr; a = a->ai_next) {
    if (a->ai_family == AF_INET && a->ai_addrlen >= sizeof(sockaddr_in)) {
      // Copied out, not cast: sockaddr's alignment is below sockaddr_in's on 32-bit ARM.
      sockaddr_in in{};
      std::memcpy(&in, a->ai_addr, sizeof in);
      asio::ip::address_v4::bytes_type b;
      std::memcpy(b.data(), &in.sin_addr, b.size());
      r.all.emplace_back(asio::ip::address_v4(b));
      continue;
    }
    if (a->ai_family == AF_INET6 && a->ai_addrlen >= sizeof(sockaddr_in6)) {
      sockaddr_in6 in6{};
      std::memcpy(&in6, a->ai_addr, sizeof in6);
      asio::ip::address_v6::bytes_type b;
      std::memcpy(b.data(), &in6.sin6_addr, b.size());
      r.all.emplace_back(asio::ip::address_v6(b, in6.sin6_scope_id));
    }
  }
  ::freeaddrinfo(list);
  if (!r.all.empty()) {
    r.address = r.all.front();
  } else {
    r.error = "no IPv4 or IPv6 address";
  }
  return r;
}

struct NameResolver::Shared {
  struct Entry {
    std::string host;
    NameState state;
    std::uint32_t failures = 0;
    std::chrono::steady_clock::time_point due{};
  };

  ResolveSchedule schedule;
  OnChange on_change;
  Lookup lookup;
  std::uint64_t rng = 0;

  mutable std::mutex mutex;
  std::condition_variable wake;
  std::vector<Entry> entries;
  bool stopped = false;

  void run();
};

void NameResolver::Shared::run() {
  std::unique_lock lock(mutex);
  while (!stopped) {
    // The name due first; equal deadlines in index order.
    std::size_t next = entries.size();
    for (std::size_t i = 0; i < entries.size(); ++i) {
      if (next == entries.size() || entries[i].due < entries[next].due) next = i;
    }
    if (next == entries.size()) {
      wake.wait(lock, [this] { return stopped; });
      break;
    }
    if (std::chrono::steady_clock::now() < entries[next].due) {
      wake.wait_until(lock, entries[next].due);
      continue;  // woken early (stop, refresh) or due: look again
    }
    const std::string host = entries[next].host;
    lock.unlock();
    const LookupResult result = lookup(host);
    lock.lock();
    if (stopped) break;
    Entry& e = entries[next];
    NameState before = e.state;
    if (result.address) {
      e.state.address = result.address;
      e.state.all = result.all;
      e.state.error.clear();
      e.failures = 0;
    } else {
      ++e.failures;
      e.state.error = result.error;
      // A server that did not answer says nothing about the name: keep what it had.
      if (result.definitive) {
        e.state.address.reset();
        e.state.all.clear();
      }
    }
    e.state.looked_up = true;
    e.due = std::chrono::steady_clock::now() + next_lookup_delay(schedule, e.failures, rng);
    const bool changed = before.address != e.state.address || !before.looked_up;
    if (changed && on_change) {
      // Under the lock: stop() cannot return while a callback runs.
      on_change(next, e.state);
    }
  }
}

NameResolver::NameResolver(std::vector<std::string> hosts, ResolveSchedule schedule, OnChange on_change,
                           Lookup lookup, std::uint64_t seed)
    : shared_(std::make_shared<Shared>()), size_(hosts.size()) {
  shared_->schedule = schedule;
  shared_->on_change = std::move(on_change);
  shared_->lookup = std::move(lookup);
  shared_->rng = seed != 0 ? seed : platform::random_seed();
  shared_->entries.reserve(hosts.size());
  for (std::string& h : hosts) {
    shared_->entries.push_back(Shared::Entry{std::move(h), {}, 0, {}});
  }
}

NameResolver::~NameResolver() { stop(); }

void NameResolver::start() {
  if (size_ == 0) return;
  std::shared_ptr<Shared> shared = shared_;
  std::thread([shared] { shared->run(); }).detach();
}

void NameResolver::refresh(std::size_t index) {
  std::lock_guard lock(shared_->mutex);
  if (index < shared_->entries.size()) {
    shared_->entries[index].due = std::chrono::steady_clock::now();
    shared_->wake.notify_all();
  }
}

void NameResolver::stop() {
  std::lock_guard lock(shared_->mutex);
  shared_->stopped = true;
  shared_->wake.notify_all();
}

NameState NameResolver::state(std::size_t index) const {
  std::lock_guard lock(shared_->mutex);
  return index < shared_->entries.size() ? shared_->entries[index].state : NameState{};
}

}  // namespace vantage::agent
