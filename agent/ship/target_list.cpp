#include "agent/ship/target_list.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <asio/ip/address.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <set>
#include <system_error>
#include <tuple>

#include "agent/ship/crc32c.hpp"
#include "platform/log.hpp"
#include "schemas/frame_codec.hpp"
#include "schemas/peer_text.hpp"
#include "schemas/wire_string.hpp"

namespace vantage::agent::ship {

namespace {

using probes::ProbeProtocol;

// File layout: magic, payload length (u32 LE), CRC32C of the payload (u32 LE), then the Frame.
constexpr std::array<char, 8> kMagic = {'V', 'N', 'T', 'L', 'I', 'S', 'T', '1'};
constexpr std::size_t kHeaderBytes = kMagic.size() + 8;
constexpr const char* kTmpName = "target-list.tmp";

void put_u32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

std::uint32_t get_u32(const std::uint8_t* p) {
  return static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
         static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
}

// RFC 1123 host name: dot-separated labels of letters, digits and hyphens (underscores too, as
// some internal zones have them), none empty, longer than 63 or starting or ending with a hyphen.
bool dns_name(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.size() > 253) return false;
  std::size_t start = 0;
  while (start <= name.size()) {
    const std::size_t dot = std::min(name.find('.', start), name.size());
    const std::string_view label = name.substr(start, dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return false;
    for (const char c : label) {
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                      c == '_';
      if (!ok) return false;
    }
    start = dot + 1;
  }
  return true;
}

std::string where(std::size_t i, const char* field) {
  return "TargetList.targets[" + std::to_string(i) + "]." + field;
}

platform::Status fault(std::size_t i, const char* field, const std::string& why) {
  return platform::Status::error(where(i, field) + ": " + why);
}

platform::Status check_text(std::size_t i, const char* field, const flatbuffers::String* s, wire::PeerText kind) {
  if (auto f = wire::check_peer_text(where(i, field), wire::str(s), kind)) {
    return platform::Status::error(f->reason);
  }
  return platform::Status();
}

// A target's identity for "local wins" and duplicates: the same protocol to the same host
// (address, or name as given) and port.
using TargetKey = std::tuple<ProbeProtocol, std::string, std::uint16_t>;

TargetKey key_of(const ProbeTargetSpec& t) {
  std::string host = t.host;
  if (host.empty()) {
    // An IPv4-mapped IPv6 address probes the IPv4 one.
    asio::ip::address a = t.address;
    if (a.is_v6() && a.to_v6().is_v4_mapped()) a = asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
    host = a.to_string();
  }
  return {t.protocol, std::move(host), t.protocol == ProbeProtocol::kIcmpEcho ? std::uint16_t{0} : t.port};
}

}  // namespace

platform::Result<AcceptedTargetList> accept_target_list(std::span<const std::uint8_t> frame,
                                                        const TargetListLimits& limits) {
  const wire::Frame* root = wire::verify_frame(frame);
  if (root == nullptr) return platform::Status::error("not a verifiable Frame");
  const wire::TargetList* list = root->message_as_TargetList();
  if (list == nullptr) return platform::Status::error("the Frame holds no TargetList");
  AcceptedTargetList out;
  out.version = list->version();
  if (out.version == 0) return platform::Status::error("TargetList.version is 0 (0 means no list)");
  const auto* targets = list->targets();
  const std::size_t n = targets == nullptr ? 0 : targets->size();
  if (n > limits.max_targets) {
    return platform::Status::error("TargetList holds " + std::to_string(n) + " targets, more than " +
                                   std::to_string(limits.max_targets));
  }
  out.targets.reserve(n);
  std::set<TargetKey> seen;
  for (std::size_t i = 0; i < n; ++i) {
    const wire::MeshTarget* t = targets->Get(static_cast<flatbuffers::uoffset_t>(i));
    if (t == nullptr) return fault(i, "", "missing");
    for (const auto& [field, text, kind] :
         {std::tuple{"host", t->host(), wire::PeerText::kTarget}, std::tuple{"pop", t->pop(), wire::PeerText::kPop},
          std::tuple{"agent_id", t->agent_id(), wire::PeerText::kAgentId}}) {
      if (platform::Status st = check_text(i, field, text, kind); !st) return st;
    }
    MeshTargetSpec m;
    ProbeTargetSpec& spec = m.spec;
    switch (t->protocol()) {
      case wire::Protocol::UdpEcho:
        spec.protocol = ProbeProtocol::kUdpEcho;
        break;
      case wire::Protocol::TcpConnect:
        spec.protocol = ProbeProtocol::kTcpConnect;
        break;
      case wire::Protocol::Icmp:
        spec.protocol = ProbeProtocol::kIcmpEcho;
        break;
      default:
        return fault(i, "protocol", "unknown protocol " + std::to_string(static_cast<unsigned>(t->protocol())));
    }
    const std::string host = wire::text(t->host());
    std::error_code literal_error;
    const asio::ip::address literal = asio::ip::make_address(host, literal_error);
    if (!literal_error) {
      if (const char* why = unprobeable_address(literal)) return fault(i, "host", "\"" + host + "\" is " + why);
      spec.address = literal;
    } else if (dns_name(host)) {
      spec.host = host;  // resolved in the background, as a configured name is
    } else {
      return fault(i, "host", "\"" + platform::escape_for_log(host, 40) + "\" is neither an IP address nor a host name");
    }
    if (spec.protocol == ProbeProtocol::kIcmpEcho) {
      if (t->port() != 0) return fault(i, "port", "an ICMP target has no port (got " + std::to_string(t->port()) + ")");
    } else if (t->port() == 0) {
      return fault(i, "port", "0 (expected 1..65535)");
    }
    spec.port = t->port();
    if (t->interval_ms() < limits.min_interval_ms || t->interval_ms() > limits.max_interval_ms) {
      return fault(i, "interval_ms",
                   std::to_string(t->interval_ms()) + " (expected " + std::to_string(limits.min_interval_ms) + ".." +
                       std::to_string(limits.max_interval_ms) + ")");
    }
    spec.rate_per_s = 1000.0 / static_cast<double>(t->interval_ms());
    if (t->payload_size() > limits.max_payload_size) {
      return fault(i, "payload_size",
                   std::to_string(t->payload_size()) + " (expected 0.." + std::to_string(limits.max_payload_size) + ")");
    }
    spec.payload_size = t->payload_size();
    if (t->dscp() > 63) return fault(i, "dscp", std::to_string(t->dscp()) + " (expected 0..63)");
    spec.dscp = t->dscp();
    if (t->paths() > limits.max_paths) {
      return fault(i, "paths", std::to_string(t->paths()) + " (expected 1.." + std::to_string(limits.max_paths) + ")");
    }
    m.paths = std::max<std::uint8_t>(t->paths(), 1);
    // TCP and ICMP probe one path (the probers' rule for configured targets too).
    spec.paths = spec.protocol == ProbeProtocol::kUdpEcho ? m.paths : 1;
    m.pop = wire::text(t->pop());
    m.agent_id = wire::text(t->agent_id());
    // Another agent's reflector is named "POP/AGENT": one series per agent, filed under its PoP in
    // the matrix and /api/pair; an extra target (or names too long together) by its address.
    if (!m.pop.empty() && !m.agent_id.empty() &&
        m.pop.size() + 1 + m.agent_id.size() <= wire::max_bytes(wire::PeerText::kTarget)) {
      spec.label = m.pop + "/" + m.agent_id;
    } else {
      spec.label = spec.host.empty() ? target_label(spec.protocol, spec.address, spec.port)
                                     : target_label(spec.protocol, spec.host, spec.port);
    }
    if (auto f = wire::check_peer_text(where(i, "host") + " as a label", spec.label, wire::PeerText::kTarget)) {
      return platform::Status::error(f->reason);
    }
    if (!seen.insert(key_of(spec)).second) {
      ++out.duplicates;  // the collector's repeat: one series, probed once
      continue;
    }
    out.targets.push_back(std::move(m));
  }
  out.frame.assign(frame.begin(), frame.end());
  return out;
}

platform::Status save_target_list(const std::filesystem::path& dir, std::span<const std::uint8_t> frame) {
  std::vector<std::uint8_t> bytes;
  bytes.reserve(kHeaderBytes + frame.size());
  bytes.insert(bytes.end(), kMagic.begin(), kMagic.end());
  put_u32(bytes, static_cast<std::uint32_t>(frame.size()));
  put_u32(bytes, crc32c(std::as_bytes(frame)));
  bytes.insert(bytes.end(), frame.begin(), frame.end());

  const std::filesystem::path tmp = dir / kTmpName;
  const std::filesystem::path final_path = dir / kTargetListFileName;
  auto sys_error = [](const std::string& what, const std::filesystem::path& p) {
    return platform::Status::error(p.string() + ": " + what + ": " + std::strerror(errno));
  };
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return sys_error("cannot create", tmp);
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const platform::Status st = sys_error("cannot write", tmp);
      ::close(fd);
      ::unlink(tmp.c_str());
      return st;
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const platform::Status st = sys_error("cannot sync", tmp);
    ::close(fd);
    ::unlink(tmp.c_str());
    return st;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
    const platform::Status st = sys_error("cannot rename into place", final_path);
    ::unlink(tmp.c_str());
    return st;
  }
  // The rename is durable only once the directory is.
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return sys_error("cannot open", dir);
  const int synced = ::fsync(dir_fd);
  const int err = errno;
  ::close(dir_fd);
  if (synced != 0) {
    errno = err;
    return sys_error("cannot sync", dir);
  }
  return platform::Status();
}

std::optional<AcceptedTargetList> load_target_list(const std::filesystem::path& dir,
                                                   std::vector<std::string>& warnings,
                                                   const TargetListLimits& limits) {
  const std::filesystem::path path = dir / kTargetListFileName;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno != ENOENT) warnings.push_back(path.string() + ": cannot open: " + std::strerror(errno) + "; ignored");
    return std::nullopt;
  }
  // At most a header and the largest frame the collector may send.
  constexpr std::size_t kMaxBytes = kHeaderBytes + wire::kDefaultMaxFrame;
  std::vector<std::uint8_t> bytes;
  std::array<std::uint8_t, 65536> chunk{};
  bool too_large = false;
  for (;;) {
    const ssize_t n = ::read(fd, chunk.data(), chunk.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      warnings.push_back(path.string() + ": cannot read: " + std::strerror(errno) + "; ignored");
      ::close(fd);
      return std::nullopt;
    }
    if (n == 0) break;
    if (bytes.size() + static_cast<std::size_t>(n) > kMaxBytes) {
      too_large = true;
      break;
    }
    bytes.insert(bytes.end(), chunk.begin(), chunk.begin() + n);
  }
  ::close(fd);
  auto ignored = [&](const std::string& why) -> std::optional<AcceptedTargetList> {
    warnings.push_back(path.string() + ": " + why + "; ignored, starting without a mesh list");
    return std::nullopt;
  };
  if (too_large) return ignored("larger than any target list");
  if (bytes.size() < kHeaderBytes || !std::equal(kMagic.begin(), kMagic.end(), bytes.begin())) {
    return ignored("not a target list file (" + std::to_string(bytes.size()) + " bytes, bad header)");
  }
  const std::uint32_t length = get_u32(bytes.data() + kMagic.size());
  const std::uint32_t crc = get_u32(bytes.data() + kMagic.size() + 4);
  if (bytes.size() - kHeaderBytes != length) {
    return ignored("torn: " + std::to_string(bytes.size() - kHeaderBytes) + " bytes of a " +
                   std::to_string(length) + "-byte list");
  }
  // The FlatBuffers verifier wants the buffer aligned: a vector's data is, the offset 16 keeps it.
  const std::span<const std::uint8_t> frame(bytes.data() + kHeaderBytes, length);
  if (crc32c(std::as_bytes(frame)) != crc) return ignored("CRC mismatch (corrupt)");
  auto accepted = accept_target_list(frame, limits);
  if (!accepted) return ignored(accepted.error());
  return std::move(accepted).value();
}

MergedTargets merge_targets(const std::vector<ProbeTargetSpec>& local, const AcceptedTargetList* mesh) {
  MergedTargets out;
  out.targets = local;
  if (mesh == nullptr) return out;
  std::set<TargetKey> keys;
  std::set<std::string> labels;
  for (const ProbeTargetSpec& t : local) {
    keys.insert(key_of(t));
    labels.insert(t.label);
  }
  out.targets.reserve(local.size() + mesh->targets.size());
  for (const MeshTargetSpec& m : mesh->targets) {
    if (keys.count(key_of(m.spec)) != 0 || labels.count(m.spec.label) != 0) {
      ++out.shadowed;
      continue;
    }
    out.targets.push_back(m.spec);
    ++out.from_mesh;
  }
  return out;
}

bool same_targets(const std::vector<ProbeTargetSpec>& a, const std::vector<ProbeTargetSpec>& b) {
  auto same = [](const ProbeTargetSpec& x, const ProbeTargetSpec& y) {
    return x.label == y.label && x.protocol == y.protocol && x.host == y.host && x.address == y.address &&
           x.port == y.port && x.rate_per_s == y.rate_per_s && x.timeout == y.timeout &&
           x.payload_size == y.payload_size && x.dscp == y.dscp && x.client == y.client && x.paths == y.paths;
  };
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), same);
}

}  // namespace vantage::agent::ship
