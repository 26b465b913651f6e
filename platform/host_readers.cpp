#include "platform/host_readers.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <limits>
#include <system_error>
#include <type_traits>
#include <utility>

namespace vantage::platform {

namespace {

constexpr std::size_t kReadChunk = 16 * 1024;
// /proc/stat on a 1024-CPU host with thousands of interrupt lines stays under 1 MiB; a file
// larger than this is not one the kernel wrote, and reading it whole would let it grow the buffer.
constexpr std::size_t kMaxFileBytes = 4 * 1024 * 1024;
// Bad tokens and names are echoed into errors, which end up in logs: keep them short and printable.
constexpr std::size_t kMaxEcho = 40;

bool is_blank(char c) noexcept { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && is_blank(s.front())) {
    s.remove_prefix(1);
  }
  while (!s.empty() && is_blank(s.back())) {
    s.remove_suffix(1);
  }
  return s;
}

// Next whitespace-separated token of a single line; empty at the end.
std::string_view next_token(std::string_view& rest) noexcept {
  std::size_t start = 0;
  while (start < rest.size() && is_blank(rest[start])) {
    ++start;
  }
  std::size_t end = start;
  while (end < rest.size() && !is_blank(rest[end])) {
    ++end;
  }
  const std::string_view token = rest.substr(start, end - start);
  rest.remove_prefix(end);
  return token;
}

// Splits off the next line (without its '\n'); the last line may lack one.
std::string_view next_line(std::string_view& rest) noexcept {
  const std::size_t nl = rest.find('\n');
  const std::string_view line = rest.substr(0, nl);
  rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
  return line;
}

std::string printable(std::string_view s) {
  std::string out;
  const std::size_t n = std::min(s.size(), kMaxEcho);
  out.reserve(n + 3);
  for (std::size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    out.push_back(c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?');
  }
  if (s.size() > n) {
    out += "...";
  }
  return out;
}

enum class Parse : std::uint8_t { kOk, kMissing, kNotANumber, kOutOfRange };

template <typename T>
Parse parse_number(std::string_view token, T& out) noexcept {
  if (token.empty()) {
    return Parse::kMissing;
  }
  T value{};
  const char* const end = token.data() + token.size();
  const auto [ptr, ec] = std::from_chars(token.data(), end, value);
  if (ec == std::errc::result_out_of_range) {
    return Parse::kOutOfRange;
  }
  if (ec != std::errc{} || ptr != end) {
    return Parse::kNotANumber;
  }
  if constexpr (std::is_floating_point_v<T>) {
    // from_chars accepts "nan" and "inf", which no kernel file contains.
    if (!std::isfinite(value)) {
      return Parse::kNotANumber;
    }
  }
  out = value;
  return Parse::kOk;
}

std::string parse_message(Parse status, std::string_view token) {
  switch (status) {
    case Parse::kOk:
      break;
    case Parse::kMissing:
      return "missing";
    case Parse::kNotANumber:
      return "not a number ('" + printable(token) + "')";
    case Parse::kOutOfRange:
      return "out of range ('" + printable(token) + "')";
  }
  return {};
}

std::string too_few_columns(std::size_t got, std::size_t need, bool at_least) {
  return "too few columns (" + std::to_string(got) + ", need " + (at_least ? "at least " : "") +
         std::to_string(need) + ")";
}

// "cpu12" with prefix "cpu" -> 12. Only plain decimal suffixes count, so "cpufreq" and
// "cpuidle" next to the cpuN directories are skipped.
std::optional<std::uint32_t> numbered(std::string_view name, std::string_view prefix,
                                      std::string_view suffix) {
  if (name.size() <= prefix.size() + suffix.size() || !name.starts_with(prefix) || !name.ends_with(suffix)) {
    return std::nullopt;
  }
  const std::string_view digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  std::uint32_t value = 0;
  if (parse_number(digits, value) != Parse::kOk) {
    return std::nullopt;
  }
  return value;
}

// Numbers N of the entries named prefix + N + suffix in dir, ascending; empty if dir is absent.
std::vector<std::uint32_t> numbered_entries(const std::filesystem::path& dir, std::string_view prefix,
                                            std::string_view suffix) {
  std::vector<std::uint32_t> out;
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  for (; !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (const auto n = numbered(it->path().filename().native(), prefix, suffix)) {
      out.push_back(*n);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Value of a sysfs attribute holding one integer (with its trailing newline).
template <typename T>
std::optional<T> parse_attribute(std::string_view contents, const std::string& file, const char* field,
                                 std::vector<ReadError>& errors) {
  const std::string_view token = trim(contents);
  T value{};
  const Parse status = parse_number(token, value);
  if (status != Parse::kOk) {
    errors.push_back({file, 0, field, parse_message(status, token)});
    return std::nullopt;
  }
  return value;
}

}  // namespace

std::string ReadError::to_string() const {
  std::string out = file;
  if (line != 0) {
    out += ':';
    out += std::to_string(line);
  }
  out += ": ";
  if (!field.empty()) {
    out += field;
    out += ": ";
  }
  out += message;
  return out;
}

HostReader::HostReader(std::filesystem::path root) : root_(std::move(root)) {}

HostReader::Load HostReader::load(const std::string& relative, bool required,
                                  std::vector<ReadError>& errors) {
  size_ = 0;
  const std::string path = (root_ / relative).string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      if (required) {
        errors.push_back({relative, 0, {}, "missing"});
      }
      return Load::kAbsent;
    }
    errors.push_back({relative, 0, {}, "cannot open: " + std::generic_category().message(err)});
    return Load::kFailed;
  }
  // Read to EOF: seq_file-backed /proc files hand out a page or so per read().
  for (;;) {
    if (buffer_.size() - size_ < kReadChunk) {
      buffer_.resize(size_ + kReadChunk);
    }
    const ssize_t n = ::read(fd, buffer_.data() + size_, buffer_.size() - size_);
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) {
        continue;
      }
      ::close(fd);
      size_ = 0;
      errors.push_back({relative, 0, {}, "read failed: " + std::generic_category().message(err)});
      return Load::kFailed;
    }
    if (n == 0) {
      break;
    }
    size_ += static_cast<std::size_t>(n);
    if (size_ > kMaxFileBytes) {
      ::close(fd);
      size_ = 0;
      errors.push_back({relative, 0, {}, "larger than " + std::to_string(kMaxFileBytes) + " bytes"});
      return Load::kFailed;
    }
  }
  ::close(fd);
  // Every file read here holds at least one value and a newline when the kernel writes it.
  if (size_ == 0) {
    errors.push_back({relative, 0, {}, "empty"});
    return Load::kFailed;
  }
  return Load::kOk;
}

ProcStat HostReader::read_proc_stat() {
  static const std::string kFile = "proc/stat";
  // user nice system idle: the columns every kernel has had.
  constexpr std::size_t kMinColumns = 4;

  ProcStat out;
  if (load(kFile, true, out.errors) != Load::kOk) {
    return out;
  }
  bool seen_total = false;
  std::string_view rest = contents();
  for (std::uint32_t line_no = 1; !rest.empty(); ++line_no) {
    std::string_view line = next_line(rest);
    const std::string_view name = next_token(line);
    if (!name.starts_with("cpu")) {
      continue;
    }
    CpuTimes times;
    if (name == "cpu") {
      seen_total = true;
    } else if (const auto n = numbered(name, "cpu", "");
               n && *n <= static_cast<std::uint32_t>(std::numeric_limits<std::int32_t>::max())) {
      times.cpu = static_cast<std::int32_t>(*n);
    } else {
      out.errors.push_back({kFile, line_no, printable(name), "not a CPU name"});
      continue;
    }
    bool ok = true;
    std::size_t columns = 0;
    for (const CpuTimesColumn& column : kCpuTimesColumns) {
      const std::string_view token = next_token(line);
      if (token.empty()) {
        break;
      }
      ++columns;
      const Parse status = parse_number(token, times.*column.member);
      if (status != Parse::kOk) {
        out.errors.push_back(
            {kFile, line_no, std::string(name) + "." + column.name, parse_message(status, token)});
        ok = false;
      }
    }
    if (columns < kMinColumns) {
      out.errors.push_back({kFile, line_no, std::string(name), too_few_columns(columns, kMinColumns, true)});
      ok = false;
    }
    if (!ok) {
      continue;
    }
    if (times.cpu < 0) {
      out.total = times;
    } else {
      out.cpus.push_back(times);
    }
  }
  if (!seen_total) {
    out.errors.push_back({kFile, 0, "cpu", "not found"});
  }
  return out;
}

MemInfo HostReader::read_meminfo() {
  static const std::string kFile = "proc/meminfo";
  struct Key {
    std::string_view name;
    std::optional<std::uint64_t> MemInfo::*member;
  };
  static constexpr std::array<Key, 5> kKeys{{{"MemTotal", &MemInfo::total_bytes},
                                             {"MemAvailable", &MemInfo::available_bytes},
                                             {"SwapTotal", &MemInfo::swap_total_bytes},
                                             {"SwapFree", &MemInfo::swap_free_bytes},
                                             {"Dirty", &MemInfo::dirty_bytes}}};

  MemInfo out;
  if (load(kFile, true, out.errors) != Load::kOk) {
    return out;
  }
  std::array<bool, kKeys.size()> seen{};
  std::string_view rest = contents();
  for (std::uint32_t line_no = 1; !rest.empty(); ++line_no) {
    const std::string_view line = next_line(rest);
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) {
      continue;
    }
    const std::string_view name = line.substr(0, colon);
    const auto key = std::find_if(kKeys.begin(), kKeys.end(), [&](const Key& k) { return k.name == name; });
    if (key == kKeys.end()) {
      continue;
    }
    seen[static_cast<std::size_t>(key - kKeys.begin())] = true;
    std::string_view values = line.substr(colon + 1);
    const std::string_view token = next_token(values);
    const std::string_view unit = next_token(values);
    std::uint64_t value = 0;
    const Parse status = parse_number(token, value);
    if (status != Parse::kOk) {
      out.errors.push_back({kFile, line_no, std::string(name), parse_message(status, token)});
      continue;
    }
    // Every size in meminfo is printed in kB (KiB); a line without a unit is a plain count.
    if (unit == "kB") {
      if (value > std::numeric_limits<std::uint64_t>::max() / 1024) {
        out.errors.push_back(
            {kFile, line_no, std::string(name), "out of range ('" + printable(token) + " kB')"});
        continue;
      }
      value *= 1024;
    } else if (!unit.empty()) {
      out.errors.push_back({kFile, line_no, std::string(name), "unknown unit ('" + printable(unit) + "')"});
      continue;
    }
    out.*(key->member) = value;
  }
  for (std::size_t i = 0; i < kKeys.size(); ++i) {
    if (!seen[i]) {
      out.errors.push_back({kFile, 0, std::string(kKeys[i].name), "not found"});
    }
  }
  return out;
}

NetDev HostReader::read_net_dev() {
  static const std::string kFile = "proc/net/dev";
  // The kernel has printed these 16 columns since Linux 2.2; a shorter line is a damaged one.
  static constexpr std::array<const char*, 16> kColumns{
      "rx_bytes",      "rx_packets",   "rx_errors",  "rx_drops",     "rx_fifo",   "rx_frame",
      "rx_compressed", "rx_multicast", "tx_bytes",   "tx_packets",   "tx_errors", "tx_drops",
      "tx_fifo",       "tx_colls",     "tx_carrier", "tx_compressed"};
  constexpr std::size_t kHeaderLines = 2;

  NetDev out;
  if (load(kFile, true, out.errors) != Load::kOk) {
    return out;
  }
  std::string_view rest = contents();
  for (std::uint32_t line_no = 1; !rest.empty(); ++line_no) {
    const std::string_view line = next_line(rest);
    if (line_no <= kHeaderLines || trim(line).empty()) {
      continue;
    }
    // Counters are printed right after the colon with no space once they outgrow their column
    // ("eth0:285266451"), and names cannot contain ':' (the kernel refuses them), so the last
    // colon is the separator.
    const std::size_t colon = line.rfind(':');
    if (colon == std::string_view::npos) {
      out.errors.push_back({kFile, line_no, {}, "no ':' after the interface name"});
      continue;
    }
    const std::string_view name = trim(line.substr(0, colon));
    if (name.empty()) {
      out.errors.push_back({kFile, line_no, {}, "empty interface name"});
      continue;
    }
    const std::string label = printable(name);
    std::array<std::uint64_t, kColumns.size()> values{};
    std::string_view numbers = line.substr(colon + 1);
    std::size_t columns = 0;
    bool ok = true;
    for (; columns < kColumns.size(); ++columns) {
      const std::string_view token = next_token(numbers);
      if (token.empty()) {
        break;
      }
      const Parse status = parse_number(token, values[columns]);
      if (status != Parse::kOk) {
        out.errors.push_back({kFile, line_no, label + "." + kColumns[columns], parse_message(status, token)});
        ok = false;
      }
    }
    if (columns < kColumns.size()) {
      out.errors.push_back({kFile, line_no, label, too_few_columns(columns, kColumns.size(), false)});
      ok = false;
    }
    if (!ok) {
      continue;
    }
    NetDevCounters counters;
    counters.name = std::string(name);
    counters.rx_bytes = values[0];
    counters.rx_packets = values[1];
    counters.rx_errors = values[2];
    counters.rx_drops = values[3];
    counters.tx_bytes = values[8];
    counters.tx_packets = values[9];
    counters.tx_errors = values[10];
    counters.tx_drops = values[11];
    out.interfaces.push_back(std::move(counters));
  }
  // A second pass: load() reuses the buffer the lines above point into.
  for (NetDevCounters& counters : out.interfaces) {
    // The name becomes a path component: never let file contents walk out of sys/class/net.
    if (counters.name.find('/') != std::string::npos || counters.name == "." || counters.name == "..") {
      out.errors.push_back({kFile, 0, printable(counters.name), "not a valid interface name"});
      continue;
    }
    const std::string file = "sys/class/net/" + counters.name + "/ifindex";
    // Absent without sysfs (some containers): interfaces are then matched by name.
    if (load(file, false, out.errors) == Load::kOk) {
      const auto ifindex = parse_attribute<std::int64_t>(contents(), file, "ifindex", out.errors);
      if (ifindex && *ifindex > 0) {
        counters.ifindex = *ifindex;
      } else if (ifindex) {
        out.errors.push_back({file, 0, "ifindex", "not positive ('" + std::to_string(*ifindex) + "')"});
      }
    }
  }
  return out;
}

ProcPressure HostReader::read_pressure() {
  struct Resource {
    const char* file;
    PressureFile ProcPressure::*member;
  };
  static constexpr std::array<Resource, 3> kResources{{{"proc/pressure/cpu", &ProcPressure::cpu},
                                                       {"proc/pressure/memory", &ProcPressure::memory},
                                                       {"proc/pressure/io", &ProcPressure::io}}};
  static constexpr std::array<std::string_view, 4> kKeys{"avg10", "avg60", "avg300", "total"};

  ProcPressure out;
  for (const Resource& resource : kResources) {
    const std::string file = resource.file;
    PressureFile& target = out.*resource.member;
    const Load status = load(file, false, out.errors);
    if (status == Load::kAbsent) {
      continue;
    }
    target.present = true;
    if (status != Load::kOk) {
      continue;
    }
    bool seen_some = false;
    std::string_view rest = contents();
    for (std::uint32_t line_no = 1; !rest.empty(); ++line_no) {
      std::string_view line = next_line(rest);
      const std::string_view kind = next_token(line);
      std::optional<PressureLine>* slot = nullptr;
      if (kind == "some") {
        slot = &target.some;
        seen_some = true;
      } else if (kind == "full") {
        slot = &target.full;
      } else {
        continue;
      }
      PressureLine values;
      std::array<bool, kKeys.size()> seen{};
      bool ok = true;
      for (std::string_view token = next_token(line); !token.empty(); token = next_token(line)) {
        const std::size_t eq = token.find('=');
        const auto key = std::find(kKeys.begin(), kKeys.end(), token.substr(0, eq));
        if (eq == std::string_view::npos || key == kKeys.end()) {
          continue;  // keys a later kernel may add
        }
        const auto index = static_cast<std::size_t>(key - kKeys.begin());
        seen[index] = true;
        const std::string_view value = token.substr(eq + 1);
        Parse parsed = Parse::kOk;
        switch (index) {
          case 0:
            parsed = parse_number(value, values.avg10);
            break;
          case 1:
            parsed = parse_number(value, values.avg60);
            break;
          case 2:
            parsed = parse_number(value, values.avg300);
            break;
          default:
            parsed = parse_number(value, values.total_us);
            break;
        }
        if (parsed != Parse::kOk) {
          out.errors.push_back(
              {file, line_no, std::string(kind) + "." + std::string(*key), parse_message(parsed, value)});
          ok = false;
        }
      }
      for (std::size_t i = 0; i < kKeys.size(); ++i) {
        if (!seen[i]) {
          out.errors.push_back({file, line_no, std::string(kind) + "." + std::string(kKeys[i]), "missing"});
          ok = false;
        }
      }
      if (ok) {
        *slot = values;
      }
    }
    if (!seen_some) {
      out.errors.push_back({file, 0, "some", "not found"});
    }
  }
  return out;
}

LoadAvg HostReader::read_loadavg() {
  static const std::string kFile = "proc/loadavg";
  static constexpr std::array<std::pair<const char*, std::optional<double> LoadAvg::*>, 3> kFields{
      {{"one", &LoadAvg::one}, {"five", &LoadAvg::five}, {"fifteen", &LoadAvg::fifteen}}};

  LoadAvg out;
  if (load(kFile, true, out.errors) != Load::kOk) {
    return out;
  }
  std::string_view rest = contents();
  std::string_view line = next_line(rest);
  for (const auto& [name, member] : kFields) {
    const std::string_view token = next_token(line);
    double value = 0.0;
    const Parse status = parse_number(token, value);
    if (status != Parse::kOk) {
      out.errors.push_back({kFile, 1, name, parse_message(status, token)});
      continue;
    }
    out.*member = value;
  }
  return out;
}

std::string HostReader::named(std::string base, const std::string& name_file, std::vector<ReadError>& errors) {
  if (load(name_file, true, errors) == Load::kOk) {
    base += '/';
    base += printable(trim(contents()));
  }
  return base;
}

void HostReader::read_temperature(const std::string& file, std::string sensor, Temperatures& out) {
  // Millidegrees Celsius, signed: sensors outdoors read below zero.
  if (load(file, true, out.errors) == Load::kOk) {
    if (const auto milli = parse_attribute<std::int64_t>(contents(), file, "temp", out.errors)) {
      out.readings.push_back({std::move(sensor), static_cast<double>(*milli) / 1000.0});
    }
  }
}

void HostReader::read_thermal_zones(Temperatures& out) {
  for (const std::uint32_t zone : numbered_entries(root_ / "sys/class/thermal", "thermal_zone", "")) {
    const std::string dir = "sys/class/thermal/thermal_zone" + std::to_string(zone);
    std::string sensor = named("thermal_zone" + std::to_string(zone), dir + "/type", out.errors);
    read_temperature(dir + "/temp", std::move(sensor), out);
  }
}

void HostReader::read_hwmon(Temperatures& out) {
  for (const std::uint32_t chip : numbered_entries(root_ / "sys/class/hwmon", "hwmon", "")) {
    const std::string dir = "sys/class/hwmon/hwmon" + std::to_string(chip);
    const std::string prefix = named("hwmon" + std::to_string(chip), dir + "/name", out.errors);
    for (const std::uint32_t input : numbered_entries(root_ / dir, "temp", "_input")) {
      const std::string attribute = dir + "/temp" + std::to_string(input);
      std::string sensor = prefix + '/';
      // The label, where the driver has one, is what the operator knows the sensor by.
      if (load(attribute + "_label", false, out.errors) == Load::kOk && !trim(contents()).empty()) {
        sensor += printable(trim(contents()));
      } else {
        sensor += "temp" + std::to_string(input);
      }
      read_temperature(attribute + "_input", std::move(sensor), out);
    }
  }
}

Temperatures HostReader::read_temperatures() {
  Temperatures out;
  read_thermal_zones(out);
  read_hwmon(out);
  return out;
}

CpuFrequencies HostReader::read_cpu_frequencies() {
  CpuFrequencies out;
  for (const std::uint32_t cpu : numbered_entries(root_ / "sys/devices/system/cpu", "cpu", "")) {
    if (cpu > static_cast<std::uint32_t>(std::numeric_limits<std::int32_t>::max())) {
      continue;
    }
    const std::string file = "sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/cpufreq/scaling_cur_freq";
    if (load(file, false, out.errors) != Load::kOk) {
      continue;
    }
    if (const auto khz = parse_attribute<std::uint32_t>(contents(), file, "scaling_cur_freq", out.errors)) {
      out.cpus.push_back({static_cast<std::int32_t>(cpu), *khz});
    }
  }
  return out;
}

HostSnapshot HostReader::read_snapshot() {
  HostSnapshot snapshot;
  snapshot.stat = read_proc_stat();
  snapshot.memory = read_meminfo();
  snapshot.net = read_net_dev();
  snapshot.pressure = read_pressure();
  snapshot.load_average = read_loadavg();
  snapshot.temperatures = read_temperatures();
  snapshot.frequencies = read_cpu_frequencies();
  for (const auto* part :
       {&snapshot.stat.errors, &snapshot.memory.errors, &snapshot.net.errors, &snapshot.pressure.errors,
        &snapshot.load_average.errors, &snapshot.temperatures.errors, &snapshot.frequencies.errors}) {
    snapshot.errors.insert(snapshot.errors.end(), part->begin(), part->end());
  }
  return snapshot;
}

}  // namespace vantage::platform
