// Client-address pseudonyms: the HMAC-SHA256 derivation against vectors computed independently,
// rotation, prefix truncation at the edges, the config file's and command line's client
// settings, and frames built for a client target that carry neither form of its address.
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "agent/config.hpp"
#include "agent/measurement.hpp"
#include "agent/privacy/pseudonym.hpp"
#include "agent/report_format.hpp"
#include "agent/ship/batch_builder.hpp"
#include "tests/support/errors_text.hpp"

namespace {

namespace agent = vantage::agent;
namespace privacy = vantage::agent::privacy;
using agent::probes::ProbeProtocol;
using namespace std::chrono_literals;

std::string hex(const std::array<std::uint8_t, 32>& bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  for (const std::uint8_t b : bytes) {
    s += kHex[b >> 4];
    s += kHex[b & 0xf];
  }
  return s;
}

// A scratch directory removed at the end of the test.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    char name[] = "/tmp/vantage-privacy-XXXXXX";
    path = ::mkdtemp(name);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  // Private to its owner (0600), as a secret file must be.
  std::string write(const std::string& name, const std::string& text,
                    std::filesystem::perms perms = std::filesystem::perms::owner_read |
                                                   std::filesystem::perms::owner_write) const {
    const std::filesystem::path p = path / name;
    std::ofstream(p, std::ios::binary) << text;
    std::filesystem::permissions(p, perms);
    return p.string();
  }
};

// The secret 00 01 02 ... 1f, as the hex file the vectors below were computed with.
std::string secret_hex() {
  std::string s;
  char b[3];
  for (int i = 0; i < 32; ++i) {
    std::snprintf(b, sizeof b, "%02x", i);
    s += b;
  }
  return s;
}

std::shared_ptr<const privacy::Secret> test_secret() {
  std::vector<std::uint8_t> bytes(32);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::uint8_t>(i);
  return std::make_shared<const privacy::Secret>(std::move(bytes));
}

privacy::PrivacyConfig hmac_config(std::chrono::seconds rotation, std::size_t digest_bytes = 12) {
  privacy::PrivacyConfig c;
  c.mode = privacy::PseudonymMode::kHmac;
  c.secret = test_secret();
  c.rotation = rotation;
  c.digest_bytes = digest_bytes;
  return c;
}

using vantage::test::errors_text;

}  // namespace

// Expected values computed once with Python's hmac module (independent of mbedTLS):
//   s = bytes(range(32))
//   ek = lambda e: hmac.new(s, b'vantage-pseudonym-v1' + struct.pack('>Q', e), hashlib.sha256).digest()
//   d = lambda e, a, fam, proto, port: hmac.new(ek(e), socket.inet_pton(fam, a) + bytes([proto])
//                                               + struct.pack('>H', port), hashlib.sha256).hexdigest()
TEST_CASE("pseudonym: HMAC-SHA256 epoch keys and digests match an independent computation") {
  const auto secret = test_secret();
  CHECK(hex(privacy::epoch_key(*secret, 0)) ==
        "d2b14f7c082fdea62ee3c68673f3b0e22fc164bcf02c0c9b1f71cde3dbf017c1");
  const auto key = privacy::epoch_key(*secret, 20000);
  CHECK(hex(key) == "8e9a2487be0b790b782aff0aba3604cb597fbf4a92cb397322213af190ea1ce1");
  const auto v4 = asio::ip::make_address("203.0.113.7");
  const auto v6 = asio::ip::make_address("2001:db8:1::7");
  CHECK(hex(privacy::address_digest(key, v4, 17, 443)) ==
        "fded929c10c6cf6e875e12a26d133d177eab244a4e7ed3c19051719e3f49325d");
  CHECK(hex(privacy::address_digest(key, v4, 6, 443)) ==
        "d6a3ba2671bf5fbdf016df9d329cd422c56a895bc5d86fad9e74ce0f2ecb6833");
  CHECK(hex(privacy::address_digest(key, v6, 6, 443)) ==
        "7524e79231a8e0af20eaf573ec7ff48993cf484bc08569ab0261cf4e70950170");
  CHECK(hex(privacy::address_digest(key, v6, 58, 0)) ==
        "297f4b999f3453e2c60ddd63da672d26de0e13729658fcf2eeb0813716990db1");

  // The label: the epoch, then digest_bytes of the digest in hex.
  privacy::Pseudonymiser p(hmac_config(86400s));
  const std::int64_t in_epoch_20000 = 20000LL * 86400 + 12345;
  CHECK(p.label(v4, 17, 443, in_epoch_20000) == "anon:k20000:fded929c10c6cf6e875e12a2");
  privacy::Pseudonymiser short_digest(hmac_config(86400s, 8));
  CHECK(short_digest.label(v4, 17, 443, in_epoch_20000) == "anon:k20000:fded929c10c6cf6e");
  privacy::Pseudonymiser full(hmac_config(86400s, 32));
  CHECK(full.label(v6, 58, 0, in_epoch_20000) ==
        "anon:k20000:297f4b999f3453e2c60ddd63da672d26de0e13729658fcf2eeb0813716990db1");
}

TEST_CASE("pseudonym: the same secret gives the same label within an epoch, another after rotation") {
  const auto v4 = asio::ip::make_address("203.0.113.7");
  privacy::Pseudonymiser a(hmac_config(3600s));
  privacy::Pseudonymiser b(hmac_config(3600s));
  const std::int64_t t = 1'700'000'000;  // epoch 472222 starts at 1699999200
  CHECK(privacy::epoch_of(t, 3600s) == 472222);
  const std::string first = a.label(v4, 17, 443, t);
  CHECK(first.starts_with("anon:k472222:"));
  CHECK(b.label(v4, 17, 443, t + 1000) == first);                // another agent, same epoch
  const std::string next = a.label(v4, 17, 443, 1'700'002'800);  // the next epoch's first second
  CHECK(next.starts_with("anon:k472223:"));
  CHECK(next != first);
  CHECK(a.label(v4, 17, 443, t) == first);  // back again: the key is derived, not drawn
  // Port and protocol enter the digest.
  CHECK(a.label(v4, 17, 444, t) != first);
  CHECK(a.label(v4, 6, 443, t) != first);
  // Another secret, another pseudonym.
  std::vector<std::uint8_t> other(32, 0x5a);
  privacy::PrivacyConfig other_config = hmac_config(3600s);
  other_config.secret = std::make_shared<const privacy::Secret>(other);
  privacy::Pseudonymiser c(other_config);
  CHECK(c.label(v4, 17, 443, t) != first);
}

TEST_CASE("pseudonym: prefix mode keeps the network, v4 and v6, at the edge lengths") {
  const auto v4 = asio::ip::make_address("203.0.113.77");
  const auto v6 = asio::ip::make_address("2001:db8:1:2:3:4:5:6");
  CHECK(privacy::prefix_label(v4, 443, 24, 48) == "203.0.113.0/24:443");
  CHECK(privacy::prefix_label(v4, 0, 24, 48) == "203.0.113.0/24");
  CHECK(privacy::prefix_label(v4, 0, 0, 48) == "0.0.0.0/0");
  CHECK(privacy::prefix_label(v4, 0, 32, 48) == "203.0.113.77/32");
  CHECK(privacy::prefix_label(v4, 0, 20, 48) == "203.0.112.0/20");
  CHECK(privacy::prefix_label(v4, 0, 1, 48) == "128.0.0.0/1");
  CHECK(privacy::prefix_label(v6, 0, 24, 48) == "2001:db8:1::/48");
  CHECK(privacy::prefix_label(v6, 443, 24, 48) == "[2001:db8:1::/48]:443");
  CHECK(privacy::prefix_label(v6, 0, 24, 0) == "::/0");
  CHECK(privacy::prefix_label(v6, 0, 24, 128) == "2001:db8:1:2:3:4:5:6/128");
  CHECK(privacy::prefix_label(v6, 0, 24, 52) == "2001:db8:1::/52");
  CHECK(privacy::prefix_label(v6, 0, 24, 68) == "2001:db8:1:2::/68");
  CHECK(privacy::prefix_label(asio::ip::make_address("2001:db8:1:2:f003::1"), 0, 24, 68) ==
        "2001:db8:1:2:f000::/68");
  // An IPv4-mapped address is an IPv4 client.
  CHECK(privacy::prefix_label(asio::ip::make_address("::ffff:203.0.113.77"), 0, 24, 48) == "203.0.113.0/24");
  privacy::PrivacyConfig prefix16;
  prefix16.mode = privacy::PseudonymMode::kPrefix;
  prefix16.prefix_v4 = 16;
  privacy::Pseudonymiser p(prefix16);
  CHECK(p.label(v4, 17, 8627, 0) == "203.0.0.0/16:8627");
}

TEST_CASE("pseudonym: secret files, hex or raw, at least 32 bytes") {
  TempDir dir;
  const auto hex_secret = privacy::read_secret(dir.write("hex", secret_hex() + "\n"));
  REQUIRE_MESSAGE(hex_secret, hex_secret.error());
  CHECK((*hex_secret)->bytes() == test_secret()->bytes());
  const auto raw = privacy::read_secret(dir.write("raw", std::string(40, 'x')));
  REQUIRE_MESSAGE(raw, raw.error());
  CHECK((*raw)->bytes().size() == 40);
  const auto short_secret = privacy::read_secret(dir.write("short", std::string(62, 'a')));  // 31 bytes of hex
  CHECK_FALSE(short_secret);
  CHECK(short_secret.code() == vantage::platform::Errc::kInvalid);
  CHECK(short_secret.error() == (dir.path / "short").string() +
                                    ": the secret is 31 bytes, at least 32 are needed (e.g. 64 hex digits)");
  const auto missing = privacy::read_secret(dir.path / "missing");
  CHECK_FALSE(missing);
  CHECK(missing.code() == vantage::platform::Errc::kIo);
  CHECK(missing.error() == "cannot read " + (dir.path / "missing").string() + ": No such file or directory");
}

TEST_CASE("pseudonym: a secret that is not a private regular file of bounded size is refused at once") {
  using std::filesystem::perms;
  TempDir dir;
  // A device would be read without end: refused by its type before any read.
  const auto zero = privacy::read_secret(std::filesystem::path("/dev/zero"));
  REQUIRE_FALSE(zero);
  CHECK(zero.error() ==
        "/dev/zero: not a regular file (a character device); the pseudonym secret is a file of 64 hex digits");
  // A FIFO without a writer: open must not wait for one.
  const std::string fifo = (dir.path / "fifo").string();
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const auto from_fifo = privacy::read_secret(std::filesystem::path(fifo));
  REQUIRE_FALSE(from_fifo);
  CHECK(from_fifo.error().find("not a regular file (a FIFO)") != std::string::npos);
  CHECK(privacy::read_secret(dir.path).error().find("(a directory)") != std::string::npos);
  // The command line reads a key given whether or not a client target needs it: at once.
  CHECK(agent::parse_args({"--privacy-key", "/dev/zero", "--udp", "192.0.2.1"}).error() ==
        "--privacy-key: /dev/zero: not a regular file (a character device); the pseudonym secret is a file of "
        "64 hex digits");

  // Readable by the group or by others: the error names the file, its mode and the fix.
  const std::string shared = dir.write("shared.hex", secret_hex(), perms::owner_read | perms::owner_write |
                                                                        perms::group_read | perms::others_read);
  CHECK(privacy::read_secret(std::filesystem::path(shared)).error() ==
        shared + ": the pseudonym secret is readable by other users (mode 0644); make it private to the agent's "
                 "user: chmod 600 " + shared +
            " (or deliver it with systemd's LoadCredential=, see the README's Privacy section)");
  const std::string group = dir.write("group.hex", secret_hex(), perms::owner_read | perms::group_read);
  CHECK(privacy::read_secret(std::filesystem::path(group)).error().find("readable by its group (mode 0440)") !=
        std::string::npos);
  const std::string group_w = dir.write("group_w.hex", secret_hex(), perms::owner_read | perms::group_write);
  CHECK(privacy::read_secret(std::filesystem::path(group_w)).error().find("writable by its group (mode 0420)") !=
        std::string::npos);
  CHECK(privacy::read_secret(std::filesystem::path(dir.write("ro.hex", secret_hex(), perms::owner_read))));
  // systemd shows an ACL-granted credential as 0440; others may still never read it.
  CHECK(privacy::secret_mode_problem({group, true}, 0440).empty());
  CHECK(privacy::secret_mode_problem({group, true}, 0400).empty());
  CHECK_FALSE(privacy::secret_mode_problem({group, true}, 0444).empty());
  CHECK_FALSE(privacy::secret_mode_problem({group, true}, 0460).empty());
  CHECK_FALSE(privacy::secret_mode_problem({group, false}, 0440).empty());
  CHECK(privacy::secret_mode_problem({group, false}, 0700).empty());

  // Bounded: one byte over the limit is refused before it is read; the limit itself is fine.
  const std::string big = dir.write("big", std::string(privacy::kMaxSecretFileBytes + 1, 'x'));
  CHECK(privacy::read_secret(std::filesystem::path(big)).error() ==
        big + ": larger than a secret file may be (4096 bytes; a secret is 64 hex digits)");
  const auto largest = privacy::read_secret(
      std::filesystem::path(dir.write("largest", std::string(privacy::kMaxSecretFileBytes, 'x'))));
  REQUIRE_MESSAGE(largest, largest.error());
  CHECK((*largest)->bytes().size() == privacy::kMaxSecretFileBytes);
}

TEST_CASE("pseudonym: credential:NAME reads the key systemd delivered under $CREDENTIALS_DIRECTORY") {
  using std::filesystem::perms;
  TempDir dir;
  const auto source = privacy::secret_source("credential:privacy-key", dir.path.c_str());
  REQUIRE_MESSAGE(source, source.error());
  CHECK(source->file == dir.path / "privacy-key");
  CHECK(source->credential);
  const auto plain = privacy::secret_source("/etc/vantage/privacy.key", dir.path.c_str());
  REQUIRE(plain);
  CHECK(plain->file == "/etc/vantage/privacy.key");
  CHECK_FALSE(plain->credential);
  CHECK(privacy::secret_source("credential:privacy-key", nullptr).error() ==
        "\"credential:privacy-key\" needs $CREDENTIALS_DIRECTORY, which systemd sets for a unit with "
        "LoadCredential=privacy-key:PATH; outside systemd give a file path");
  CHECK_FALSE(privacy::secret_source("credential:../etc/shadow", dir.path.c_str()));
  CHECK_FALSE(privacy::secret_source("credential:", dir.path.c_str()));

  // The default: only when the directory holds privacy-key.
  CHECK_FALSE(privacy::default_secret_source(nullptr));
  CHECK_FALSE(privacy::default_secret_source(dir.path.c_str()));
  dir.write("privacy-key", secret_hex(), perms::owner_read | perms::group_read);  // 0440, as systemd may
  const auto found = privacy::default_secret_source(dir.path.c_str());
  REQUIRE(found);
  const auto secret = privacy::read_secret(*found);
  REQUIRE_MESSAGE(secret, secret.error());
  CHECK((*secret)->bytes() == test_secret()->bytes());
  // The same file named as a plain path is refused for its group bit.
  CHECK_FALSE(privacy::read_secret(dir.path / "privacy-key"));

  // The config file and the command line take the credential form and the default.
  ::setenv("CREDENTIALS_DIRECTORY", dir.path.c_str(), 1);
  const std::string file = dir.write("credential.toml",
                                     "[privacy]\n"
                                     "key_file = \"credential:privacy-key\"\n"
                                     "[[targets]]\n"
                                     "protocol = \"udp\"\n"
                                     "host = \"203.0.113.7\"\n"
                                     "client = true\n");
  const agent::AgentConfig c = agent::load_config(file);
  REQUIRE_MESSAGE(c.options.has_value(), errors_text(c.errors));
  REQUIRE(c.options->measurement.privacy);
  CHECK(c.options->measurement.privacy->secret->bytes() == test_secret()->bytes());
  const std::string implicit = dir.write("implicit.toml",
                                         "[[targets]]\n"
                                         "protocol = \"udp\"\n"
                                         "host = \"203.0.113.7\"\n"
                                         "client = true\n");
  const agent::AgentConfig d = agent::load_config(implicit);
  REQUIRE_MESSAGE(d.options.has_value(), errors_text(d.errors));
  CHECK(d.options->measurement.privacy->secret->bytes() == test_secret()->bytes());
  const auto cli = agent::parse_args({"--client", "--udp", "203.0.113.7"});
  REQUIRE_MESSAGE(cli, cli.error());
  CHECK(cli->measurement.privacy->secret->bytes() == test_secret()->bytes());
  ::unsetenv("CREDENTIALS_DIRECTORY");
  const agent::AgentConfig e = agent::load_config(file);
  CHECK(errors_text(e.errors) ==
        file + ":2: privacy.key_file: \"credential:privacy-key\" needs $CREDENTIALS_DIRECTORY, which systemd "
               "sets for a unit with LoadCredential=privacy-key:PATH; outside systemd give a file path\n");
}

TEST_CASE("agent config: prefix lengths that keep the whole address are refused unless allowed") {
  TempDir dir;
  const std::string long_prefix = dir.write("long.toml",
                                            "[privacy]\n"
                                            "mode = \"prefix\"\n"
                                            "prefix_v4 = 32\n"
                                            "prefix_v6 = 49\n");
  const agent::AgentConfig e = agent::load_config(long_prefix);
  CHECK_FALSE(e.options.has_value());
  CHECK(errors_text(e.errors) ==
        long_prefix + ":3: privacy.prefix_v4: 32 keeps more than 24 bits of a client's IPv4 address; at most 24, "
                      "or set privacy.allow_long_prefix = true\n" +
            long_prefix + ":4: privacy.prefix_v6: 49 keeps more than 48 bits of a client's IPv6 address; at most "
                          "48, or set privacy.allow_long_prefix = true\n");
  // The limits themselves are fine, and hmac mode does not look at the prefix lengths.
  const std::string edge = dir.write("edge.toml",
                                     "[privacy]\n"
                                     "mode = \"prefix\"\n"
                                     "prefix_v4 = 24\n"
                                     "prefix_v6 = 48\n");
  CHECK(agent::load_config(edge).options.has_value());
  const std::string allowed = dir.write("allowed.toml",
                                        "[privacy]\n"
                                        "mode = \"prefix\"\n"
                                        "prefix_v4 = 32\n"
                                        "allow_long_prefix = true\n"
                                        "[[targets]]\n"
                                        "protocol = \"icmp\"\n"
                                        "host = \"203.0.113.7\"\n"
                                        "client = true\n");
  const agent::AgentConfig a = agent::load_config(allowed);
  REQUIRE_MESSAGE(a.options.has_value(), errors_text(a.errors));
  CHECK(a.options->measurement.targets[0].label == "203.0.113.7/32");
  CHECK(a.options->measurement.privacy->allow_long_prefix);
}

TEST_CASE(
    "agent config: client targets and [privacy], with file:line:key errors that do not echo the address") {
  TempDir dir;
  const std::string key = dir.write("secret.hex", secret_hex() + "\n");
  const std::string good = dir.write("good.toml",
                                     "[privacy]\n"
                                     "key_file = \"" +
                                         key +
                                         "\"\n"
                                         "rotation = 3600\n"
                                         "digest_bytes = 16\n"
                                         "\n"
                                         "[[targets]]\n"
                                         "protocol = \"udp\"\n"
                                         "host = \"203.0.113.7\"\n"
                                         "port = 443\n"
                                         "client = true\n"
                                         "\n"
                                         "[[targets]]\n"
                                         "protocol = \"tcp\"\n"
                                         "host = \"192.0.2.1\"\n"
                                         "port = 443\n");
  const agent::AgentConfig c = agent::load_config(good);
  REQUIRE_MESSAGE(c.options.has_value(), errors_text(c.errors));
  const agent::MeasurementConfig& m = c.options->measurement;
  REQUIRE(m.targets.size() == 2);
  CHECK(m.targets[0].client);
  CHECK(m.targets[0].label.starts_with("anon:k"));
  CHECK(m.targets[0].label.size() == std::string("anon:k").size() +
                                         std::to_string(privacy::epoch_of(std::time(nullptr), 3600s)).size() +
                                         1 + 32);
  CHECK(m.targets[0].address.to_string() == "203.0.113.7");  // the prober still needs it
  CHECK_FALSE(m.targets[1].client);
  CHECK(m.targets[1].label == "192.0.2.1:443");
  REQUIRE(m.privacy.has_value());
  CHECK(m.privacy->rotation == 3600s);
  CHECK(m.privacy->digest_bytes == 16);
  REQUIRE(m.privacy->secret);
  CHECK(m.privacy->secret->bytes() == test_secret()->bytes());

  const std::string prefix = dir.write("prefix.toml",
                                       "[privacy]\n"
                                       "mode = \"prefix\"\n"
                                       "prefix_v4 = 16\n"
                                       "[[targets]]\n"
                                       "protocol = \"icmp\"\n"
                                       "host = \"203.0.113.7\"\n"
                                       "client = true\n");
  const agent::AgentConfig p = agent::load_config(prefix);
  REQUIRE_MESSAGE(p.options.has_value(), errors_text(p.errors));
  CHECK(p.options->measurement.targets[0].label == "203.0.0.0/16");

  // hmac without a key: named at the client target's line.
  const std::string no_key = dir.write("no_key.toml",
                                       "[[targets]]\n"
                                       "protocol = \"udp\"\n"
                                       "host = \"203.0.113.7\"\n"
                                       "client = true\n");
  const agent::AgentConfig e1 = agent::load_config(no_key);
  CHECK_FALSE(e1.options.has_value());
  CHECK(errors_text(e1.errors) ==
        no_key +
            ":4: privacy.key_file: missing; expected a file path (a secret of at least 32 bytes) "
            "(targets[0] is a client target and privacy.mode is \"hmac\")\n");

  const std::string bad = dir.write("bad.toml",
                                    "[privacy]\n"
                                    "key_file = \"" +
                                        (dir.path / "nope").string() +
                                        "\"\n"
                                        "mode = \"sha1\"\n"
                                        "prefix_v6 = 129\n"
                                        "digest_bytes = 4\n"
                                        "rotation = 0\n"
                                        "[[targets]]\n"
                                        "name = \"player\"\n"
                                        "protocol = \"udp\"\n"
                                        "host = \"203.0.113.7\"\n"
                                        "client = true\n"
                                        "[[targets]]\n"
                                        "protocol = \"udp\"\n"
                                        "host = \"no-such-client.invalid\"\n"
                                        "client = true\n"
                                        "[[targets]]\n"
                                        "protocol = \"udp\"\n"
                                        "host = \"127.0.0.1\"\n"
                                        "client = \"yes\"\n");
  const agent::AgentConfig e2 = agent::load_config(bad);
  CHECK_FALSE(e2.options.has_value());
  const std::vector<std::string> expected = {
      bad + ":2: privacy.key_file: cannot read " + (dir.path / "nope").string() +
          ": No such file or directory",
      bad + ":3: privacy.mode: expected \"hmac\" or \"prefix\", got \"sha1\"",
      bad + ":4: privacy.prefix_v6: expected an integer in 0..128, got 129",
      bad + ":5: privacy.digest_bytes: expected an integer in 8..32, got 4",
      bad + ":6: privacy.rotation: expected seconds, an integer in 1..31622400, got 0",
      bad + ":8: targets[0].name: a client target is labelled by its pseudonym and takes no name",
      bad + ":14: targets[1].host: a client target takes an IP address, not a name (not shown: a client's address)",
      bad + ":19: targets[2].client: expected true or false, got \"yes\"",
  };
  CHECK(errors_text(e2.errors) == errors_text(expected));
  for (const std::string& e : e2.errors) {
    CHECK(e.find("203.0.113.7") == std::string::npos);
    CHECK(e.find("no-such-client") == std::string::npos);
  }
}

TEST_CASE("agent config: a malformed host is shown for a server target and never for a client target") {
  TempDir dir;
  const std::string key = dir.write("secret.hex", secret_hex());
  const std::string file = dir.write("hosts.toml",
                                     "[privacy]\n"
                                     "key_file = \"" +
                                         key +
                                         "\"\n"
                                         "[[targets]]\n"
                                         "protocol = \"udp\"\n"
                                         "client = true\n"
                                         "host = \"203.0.113.7 \\\"x\\\"\"\n"
                                         "[[targets]]\n"
                                         "protocol = \"udp\"\n"
                                         "host = \"\"\n"
                                         "client = true\n"
                                         "[[targets]]\n"
                                         "protocol = \"udp\"\n"
                                         "host = \"pop 2\\n\"\n");
  const agent::AgentConfig c = agent::load_config(file);
  CHECK_FALSE(c.options.has_value());
  const std::vector<std::string> expected = {
      file + ":6: targets[0].host: expected an IP address or a host name (not shown: a client's address)",
      file + ":9: targets[1].host: expected an IP address or a host name (not shown: a client's address)",
      // A server's name is shown, escaped so that it cannot start a line of its own.
      file + ":13: targets[2].host: expected an IP address or a host name, got \"pop 2\\u000a\"",
  };
  CHECK(errors_text(c.errors) == errors_text(expected));
  for (const std::string& e : c.errors) CHECK(e.find("203.0.113") == std::string::npos);
}

TEST_CASE("cli: --client targets are labelled by their pseudonym and errors do not repeat the address") {
  TempDir dir;
  const std::string key = dir.write("secret.hex", secret_hex());
  const auto a = agent::parse_args({"--udp", "192.0.2.1", "--privacy-key", key, "--client", "--udp",
                                    "203.0.113.7:443", "--no-client", "--tcp", "192.0.2.2:443"});
  REQUIRE_MESSAGE(a.has_value(), a.error());
  const auto& t = a->measurement.targets;
  REQUIRE(t.size() == 3);
  CHECK_FALSE(t[0].client);
  CHECK(t[0].label == "192.0.2.1:8627");
  CHECK(t[1].client);
  CHECK(t[1].label.starts_with("anon:k"));
  CHECK_FALSE(t[2].client);
  CHECK(t[2].label == "192.0.2.2:443");
  REQUIRE(a->measurement.privacy.has_value());

  const auto prefix =
      agent::parse_args({"--privacy-mode", "prefix", "--client", "--tcp", "[2001:db8:1::7]:443"});
  REQUIRE_MESSAGE(prefix.has_value(), prefix.error());
  CHECK(prefix->measurement.targets[0].label == "[2001:db8:1::/48]:443");

  CHECK(agent::parse_args({"--client", "--udp", "203.0.113.7"}).error() ==
        "--client targets need --privacy-key FILE (or --privacy-mode prefix)");
  CHECK(agent::parse_args({"--client", "--tcp", "203.0.113.7"}).error() ==
        "--tcp: a --client target: expected HOST:PORT (a port in 1..65535; IPv6 in brackets)");
  CHECK(agent::parse_args({"--client", "--udp", "p=203.0.113.7"}).error() ==
        "--udp: a --client target is labelled by its pseudonym, not NAME=");
  CHECK(agent::parse_args({"--privacy-mode", "sha1"}).error() == "--privacy-mode: expected hmac or prefix");
  CHECK(agent::parse_args({"--privacy-key", (dir.path / "none").string(), "--client", "--udp", "203.0.113.7"})
            .error() ==
        "--privacy-key: cannot read " + (dir.path / "none").string() + ": No such file or directory");
}

TEST_CASE("pipeline: frames, JSON and tables for a client target carry its pseudonym, never its address") {
  // A client that never answers (nothing listens there), at a distinctive loopback address.
  const auto client = asio::ip::make_address("127.31.41.59");
  agent::MeasurementConfig config;
  config.load_interval = 0s;
  config.report_interval = 200ms;
  config.privacy = hmac_config(86400s);
  agent::ProbeTargetSpec t;
  t.protocol = ProbeProtocol::kUdpEcho;
  t.address = client;
  t.port = 9;
  t.rate_per_s = 20;
  t.timeout = 50ms;
  t.client = true;
  t.label = agent::client_label_now(*config.privacy, t);
  config.targets.push_back(t);

  std::mutex mutex;
  std::vector<agent::MeasurementReport> reports;
  agent::Measurement m(config);
  const auto started = m.start([&](agent::MeasurementReport&& r) {
    std::lock_guard lock(mutex);
    reports.push_back(std::move(r));
  });
  REQUIRE_MESSAGE(started, started.message());
  std::this_thread::sleep_for(500ms);
  m.finish();
  REQUIRE_FALSE(reports.empty());

  const std::string text = "127.31.41.59";
  const std::string bytes = {'\x7f', '\x1f', '\x29', '\x3b'};
  for (const agent::MeasurementReport& r : reports) {
    REQUIRE(r.labels.size() == 1);
    privacy::Pseudonymiser p(*config.privacy);
    const std::string expected = agent::client_label(p, config.targets[0], r.wall_start_ns / 1'000'000'000);
    CHECK(r.labels[0] == expected);
    const std::vector<std::uint8_t> frame = agent::ship::build_batch_frame(
        {.agent_id = "a1", .region = "eu", .pop = "fra1"}, 1, r, config.targets, agent::ship::BatchExtras{});
    const std::string f(frame.begin(), frame.end());
    CHECK(f.find(expected) != std::string::npos);
    CHECK(f.find(text) == std::string::npos);
    CHECK(f.find(bytes) == std::string::npos);
    for (const std::string& out :
         {agent::format_json(r, config.targets), agent::format_table(r, config.targets)}) {
      CHECK(out.find(expected) != std::string::npos);
      CHECK(out.find(text) == std::string::npos);
    }
  }
  std::uint64_t sent = 0;
  for (const agent::MeasurementReport& r : reports) sent += r.targets[0].sent;
  CHECK(sent > 0);
}
