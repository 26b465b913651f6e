// sd_notify over a real AF_UNIX datagram socket standing in for systemd's, the watchdog
// keep-alive policy, and the required directives of the shipped service units.
#include "platform/sd_notify.hpp"

#include <doctest/doctest.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <string>

#include "platform/clock.hpp"

namespace {

using namespace std::chrono_literals;
using vantage::platform::NotifyOutcome;

// Sets an environment variable for one test and puts the old value back.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) {
      old_ = old;
    }
    if (value != nullptr) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// The service manager's end: a datagram socket bound to a path in a fresh temporary directory
// (short, under /tmp, because sun_path holds 108 bytes) or to an abstract name.
class FakeServiceManager {
 public:
  enum class Kind { kPath, kAbstract };

  explicit FakeServiceManager(Kind kind) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    // A receive timeout so a missing datagram fails the test instead of hanging it.
    timeval timeout{};
    timeout.tv_sec = 5;
    REQUIRE(::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) == 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    socklen_t length = 0;
    if (kind == Kind::kPath) {
      char pattern[] = "/tmp/vantage-sd-XXXXXX";
      REQUIRE(::mkdtemp(pattern) != nullptr);
      dir_ = pattern;
      path_ = dir_ + "/notify";
      std::memcpy(address.sun_path, path_.c_str(), path_.size() + 1);
      length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path_.size() + 1);
      env_value_ = path_;
    } else {
      static int counter = 0;
      const std::string name =
          "vantage-sd-test-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
      address.sun_path[0] = '\0';
      std::memcpy(address.sun_path + 1, name.data(), name.size());
      length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
      env_value_ = "@" + name;
    }
    REQUIRE(::bind(fd_, reinterpret_cast<const sockaddr*>(&address), length) == 0);
  }
  FakeServiceManager(const FakeServiceManager&) = delete;
  FakeServiceManager& operator=(const FakeServiceManager&) = delete;
  ~FakeServiceManager() {
    ::close(fd_);
    if (!path_.empty()) {
      ::unlink(path_.c_str());
      ::rmdir(dir_.c_str());
    }
  }

  [[nodiscard]] const std::string& env_value() const { return env_value_; }

  // The next datagram, or nullopt after the receive timeout (or at once with dont_wait).
  std::optional<std::string> receive(bool dont_wait = false) const {
    char buffer[4096];
    ssize_t n = 0;
    do {
      n = ::recv(fd_, buffer, sizeof buffer, dont_wait ? MSG_DONTWAIT : 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      return std::nullopt;
    }
    return std::string(buffer, static_cast<std::size_t>(n));
  }

 private:
  int fd_ = -1;
  std::string dir_;
  std::string path_;
  std::string env_value_;
};

}  // namespace

TEST_SUITE("sd_notify") {
  TEST_CASE("ready, status, watchdog and stopping arrive as exact datagrams") {
    const FakeServiceManager manager(FakeServiceManager::Kind::kPath);
    const ScopedEnv env("NOTIFY_SOCKET", manager.env_value().c_str());

    CHECK(vantage::platform::sd_notify_ready().sent());
    CHECK(manager.receive() == "READY=1");
    CHECK(vantage::platform::sd_notify_status("probing 12 targets").sent());
    CHECK(manager.receive() == "STATUS=probing 12 targets");
    CHECK(vantage::platform::sd_notify_watchdog().sent());
    CHECK(manager.receive() == "WATCHDOG=1");
    CHECK(vantage::platform::sd_notify_stopping().sent());
    CHECK(manager.receive() == "STOPPING=1");
    CHECK(vantage::platform::sd_notify("STATUS=a\nERRNO=5").sent());
    CHECK(manager.receive() == "STATUS=a\nERRNO=5");
    CHECK_FALSE(manager.receive(true).has_value());
  }

  TEST_CASE("reloading carries MONOTONIC_USEC from CLOCK_MONOTONIC") {
    const FakeServiceManager manager(FakeServiceManager::Kind::kPath);
    const ScopedEnv env("NOTIFY_SOCKET", manager.env_value().c_str());

    const long long before = vantage::platform::monotonic_ns() / 1000;
    REQUIRE(vantage::platform::sd_notify_reloading().sent());
    const long long after = vantage::platform::monotonic_ns() / 1000;
    const auto datagram = manager.receive();
    REQUIRE(datagram.has_value());
    const std::string prefix = "RELOADING=1\nMONOTONIC_USEC=";
    REQUIRE(datagram->rfind(prefix, 0) == 0);
    const std::string digits = datagram->substr(prefix.size());
    REQUIRE(!digits.empty());
    CHECK(digits.find_first_not_of("0123456789") == std::string::npos);
    const long long stamp = std::stoll(digits);
    CHECK(stamp >= before);
    CHECK(stamp <= after);
  }

  TEST_CASE("an abstract socket name is reached through the leading at sign") {
    const FakeServiceManager manager(FakeServiceManager::Kind::kAbstract);
    const ScopedEnv env("NOTIFY_SOCKET", manager.env_value().c_str());

    CHECK(vantage::platform::sd_notify_ready().sent());
    CHECK(manager.receive() == "READY=1");
  }

  TEST_CASE("status text cannot smuggle in another assignment") {
    const FakeServiceManager manager(FakeServiceManager::Kind::kPath);
    const ScopedEnv env("NOTIFY_SOCKET", manager.env_value().c_str());

    CHECK(vantage::platform::sd_notify_status("peer said\nREADY=1\r").sent());
    CHECK(manager.receive() == "STATUS=peer said READY=1 ");
    const std::string long_text(1000, 'x');
    CHECK(vantage::platform::sd_notify_status(long_text).sent());
    const auto datagram = manager.receive();
    REQUIRE(datagram.has_value());
    CHECK(datagram->size() == 256);
    CHECK(datagram->rfind("STATUS=xxx", 0) == 0);
  }

  TEST_CASE("without NOTIFY_SOCKET every call is a no-op") {
    {
      const ScopedEnv env("NOTIFY_SOCKET", nullptr);
      CHECK(vantage::platform::sd_notify_ready().outcome == NotifyOutcome::kNotUnderSystemd);
      CHECK(vantage::platform::sd_notify_watchdog().outcome == NotifyOutcome::kNotUnderSystemd);
      CHECK(vantage::platform::sd_notify_reloading().outcome == NotifyOutcome::kNotUnderSystemd);
      CHECK_FALSE(vantage::platform::sd_notify_stopping().sent());
    }
    {
      const ScopedEnv env("NOTIFY_SOCKET", "");
      CHECK(vantage::platform::sd_notify_ready().outcome == NotifyOutcome::kNotUnderSystemd);
    }
  }

  TEST_CASE("bad addresses and missing listeners are reported, not thrown") {
    {
      const ScopedEnv env("NOTIFY_SOCKET", "relative/notify");
      CHECK(vantage::platform::sd_notify_ready().outcome == NotifyOutcome::kBadAddress);
    }
    {
      const std::string too_long = "/" + std::string(sizeof(sockaddr_un::sun_path), 'a');
      const ScopedEnv env("NOTIFY_SOCKET", too_long.c_str());
      CHECK(vantage::platform::sd_notify_ready().outcome == NotifyOutcome::kBadAddress);
    }
    {
      const ScopedEnv env("NOTIFY_SOCKET", "@");
      CHECK(vantage::platform::sd_notify_ready().outcome == NotifyOutcome::kBadAddress);
    }
    {
      const ScopedEnv env("NOTIFY_SOCKET", "/nonexistent-vantage-dir/notify");
      const auto result = vantage::platform::sd_notify_ready();
      CHECK(result.outcome == NotifyOutcome::kSocketError);
      CHECK(result.error == ENOENT);
      CHECK(std::string(result.describe()).size() > 0);
    }
  }

  TEST_CASE("watchdog_interval reads WATCHDOG_USEC and honours WATCHDOG_PID") {
    const std::string own_pid = std::to_string(::getpid());
    const std::string other_pid = std::to_string(::getpid() + 1);
    {
      const ScopedEnv usec("WATCHDOG_USEC", nullptr);
      const ScopedEnv pid("WATCHDOG_PID", nullptr);
      CHECK_FALSE(vantage::platform::watchdog_interval().has_value());
    }
    {
      const ScopedEnv usec("WATCHDOG_USEC", "30000000");
      const ScopedEnv pid("WATCHDOG_PID", nullptr);
      CHECK(vantage::platform::watchdog_interval() == std::chrono::microseconds(30s));
    }
    {
      const ScopedEnv usec("WATCHDOG_USEC", "30000000");
      const ScopedEnv pid("WATCHDOG_PID", own_pid.c_str());
      CHECK(vantage::platform::watchdog_interval() == std::chrono::microseconds(30s));
    }
    {
      // Inherited from a parent that systemd watches: not ours to keep alive.
      const ScopedEnv usec("WATCHDOG_USEC", "30000000");
      const ScopedEnv pid("WATCHDOG_PID", other_pid.c_str());
      CHECK_FALSE(vantage::platform::watchdog_interval().has_value());
    }
    for (const char* bad : {"0", "", "abc", "12x", "-5", " 5", "99999999999999999999999"}) {
      CAPTURE(bad);
      const ScopedEnv usec("WATCHDOG_USEC", bad);
      const ScopedEnv pid("WATCHDOG_PID", nullptr);
      CHECK_FALSE(vantage::platform::watchdog_interval().has_value());
    }
    {
      const ScopedEnv usec("WATCHDOG_USEC", "1000");
      const ScopedEnv pid("WATCHDOG_PID", "12ab");
      CHECK_FALSE(vantage::platform::watchdog_interval().has_value());
    }
  }

  TEST_CASE("Watchdog kicks every half interval and only while healthy") {
    const FakeServiceManager manager(FakeServiceManager::Kind::kPath);
    const ScopedEnv env("NOTIFY_SOCKET", manager.env_value().c_str());
    vantage::platform::Watchdog watchdog(std::chrono::microseconds(1s));
    CHECK(watchdog.kick_period() == std::chrono::microseconds(250ms));

    // Time is passed in, so the policy is checked without sleeping.
    const auto t0 = vantage::platform::Watchdog::Clock::time_point(1000s);
    int sent = 0;
    auto kick = [&](std::chrono::milliseconds at, bool healthy) {
      const bool kicked = watchdog.kick_if_healthy(healthy, t0 + at);
      sent += kicked ? 1 : 0;
      return kicked;
    };
    CHECK(kick(0ms, true));  // the first healthy tick goes out at once
    CHECK_FALSE(kick(250ms, true));
    CHECK_FALSE(kick(499ms, true));
    CHECK(kick(500ms, true));
    CHECK_FALSE(kick(750ms, true));
    // Stalled: no keep-alive, however long, so systemd's timeout can fire.
    CHECK_FALSE(kick(1000ms, false));
    CHECK_FALSE(kick(1250ms, false));
    CHECK_FALSE(kick(1500ms, false));
    // Progress again: the next tick kicks straight away.
    CHECK(kick(1750ms, true));
    CHECK_FALSE(kick(2000ms, true));
    CHECK(kick(2250ms, true));

    for (int i = 0; i < sent; ++i) {
      CHECK(manager.receive() == "WATCHDOG=1");
    }
    CHECK_FALSE(manager.receive(true).has_value());
  }

  TEST_CASE("Watchdog outside systemd sends nothing and does not count a kick") {
    const ScopedEnv env("NOTIFY_SOCKET", nullptr);
    vantage::platform::Watchdog watchdog(std::chrono::microseconds(1s));
    CHECK_FALSE(watchdog.kick_if_healthy(true));
  }
}

namespace {

// The unit's assignments as key -> values (a key may repeat, e.g. SystemCallFilter=).
std::multimap<std::string, std::string> read_unit(const std::string& name) {
  std::ifstream in(std::string(VANTAGE_SYSTEMD_UNITS_DIR) + "/" + name);
  REQUIRE(in.good());
  std::multimap<std::string, std::string> entries;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#' || line[0] == ';' || line[0] == '[') {
      continue;
    }
    const auto equals = line.find('=');
    REQUIRE(equals != std::string::npos);
    entries.emplace(line.substr(0, equals), line.substr(equals + 1));
  }
  return entries;
}

bool has(const std::multimap<std::string, std::string>& unit, const std::string& key,
         const std::string& value) {
  const auto [first, last] = unit.equal_range(key);
  for (auto it = first; it != last; ++it) {
    if (it->second == value) {
      return true;
    }
  }
  return false;
}

void check_common(const std::multimap<std::string, std::string>& unit) {
  for (const auto& [key, value] : std::map<std::string, std::string>{
           {"Type", "notify"},
           {"NotifyAccess", "main"},
           {"WatchdogSec", "30"},
           {"Restart", "on-failure"},
           {"RestartSec", "2"},
           {"DynamicUser", "yes"},
           {"ConfigurationDirectory", "vantage"},
           {"ExecReload", "/bin/sh -c 'kill -HUP $MAINPID'"},
           {"TimeoutStopSec", "30"},
           {"ProtectSystem", "strict"},
           {"ProtectHome", "yes"},
           {"PrivateTmp", "yes"},
           {"NoNewPrivileges", "yes"},
           {"RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"},
           {"SystemCallFilter", "@system-service"},
           {"SystemCallArchitectures", "native"},
           {"LockPersonality", "yes"},
           {"RestrictRealtime", "yes"},
           {"ProtectKernelTunables", "yes"},
           {"ProtectKernelModules", "yes"},
           {"ProtectKernelLogs", "yes"},
           {"ProtectControlGroups", "yes"},
           {"RestrictNamespaces", "yes"},
           {"ProtectClock", "yes"},
           {"ProtectHostname", "yes"},
           {"WantedBy", "multi-user.target"},
       }) {
    CAPTURE(key);
    CAPTURE(value);
    CHECK(has(unit, key, value));
  }
}

}  // namespace

TEST_SUITE("systemd units") {
  TEST_CASE("vantage-agent.service has the required directives") {
    const auto unit = read_unit("vantage-agent.service");
    check_common(unit);
    CHECK(has(unit, "ExecStart", "/usr/bin/vantage-agent --config /etc/vantage/agent.toml"));
    CHECK(has(unit, "StateDirectory", "vantage-agent"));
    CHECK(has(unit, "CapabilityBoundingSet", "CAP_NET_RAW CAP_NET_BIND_SERVICE"));
    CHECK(has(unit, "AmbientCapabilities", "CAP_NET_RAW CAP_NET_BIND_SERVICE"));
    CHECK(has(unit, "MemoryMax", "256M"));
    CHECK(unit.count("CapabilityBoundingSet") == 1);
  }

  TEST_CASE("vantage-collector.service has the required directives and no capabilities") {
    const auto unit = read_unit("vantage-collector.service");
    check_common(unit);
    const auto exec = unit.find("ExecStart");
    REQUIRE(exec != unit.end());
    CHECK(exec->second.rfind("/usr/bin/vantage-collector ", 0) == 0);
    CHECK(has(unit, "StateDirectory", "vantage-collector"));
    CHECK(has(unit, "CapabilityBoundingSet", ""));
    CHECK(unit.count("CapabilityBoundingSet") == 1);
    CHECK_FALSE(has(unit, "AmbientCapabilities", "CAP_NET_RAW"));
    CHECK(has(unit, "MemoryMax", "1G"));
  }
}
