// Log lines as journald receives them on stderr: priority prefixes, level filtering, and the
// rate limit on identical lines (suppression, the summary line, bounded table eviction).
#include "platform/log.hpp"
#include "platform/utf8_text.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <chrono>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using vantage::platform::log;
using vantage::platform::LogLevel;

// Points stderr at a pipe for the lifetime of the object; take() restores stderr and returns
// what was written. Tests keep their output well under the pipe's 64 KiB so writes never block.
class StderrCapture {
 public:
  StderrCapture() {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    read_fd_ = fds[0];
    saved_ = ::dup(STDERR_FILENO);
    REQUIRE(saved_ >= 0);
    REQUIRE(::dup2(fds[1], STDERR_FILENO) == STDERR_FILENO);
    ::close(fds[1]);
  }
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;
  ~StderrCapture() {
    restore();
    ::close(read_fd_);
  }

  std::string take() {
    restore();  // closes the last write end, so read() ends at EOF
    std::string out;
    char buffer[4096];
    ssize_t n = 0;
    while ((n = ::read(read_fd_, buffer, sizeof buffer)) > 0) {
      out.append(buffer, static_cast<std::size_t>(n));
    }
    return out;
  }

 private:
  void restore() {
    if (saved_ >= 0) {
      ::dup2(saved_, STDERR_FILENO);
      ::close(saved_);
      saved_ = -1;
    }
  }

  int read_fd_ = -1;
  int saved_ = -1;
};

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    lines.push_back(line);
  }
  return lines;
}

// Reports (and discards) suppressions left over from earlier tests, then sets this test's limit.
void start(unsigned burst, std::chrono::milliseconds window) {
  {
    StderrCapture discard;
    vantage::platform::set_log_rate_limit(1, 0ms);
    vantage::platform::flush_log_suppressions();
  }
  vantage::platform::set_log_identity("vtest");
  vantage::platform::set_log_level(LogLevel::kDebug);
  vantage::platform::set_log_rate_limit(burst, window);
}

void finish() {
  vantage::platform::set_log_level(LogLevel::kInfo);
  vantage::platform::set_log_rate_limit(10, 10s);
  vantage::platform::set_log_identity("vantage");
}

}  // namespace

TEST_SUITE("log") {
  TEST_CASE("each level carries its sd-daemon priority prefix") {
    start(0, 10s);
    StderrCapture capture;
    log(LogLevel::kError, "e %d", 1);
    log(LogLevel::kWarning, "w %s", "x");
    log(LogLevel::kNotice, "n");
    log(LogLevel::kInfo, "i");
    log(LogLevel::kDebug, "d");
    vantage::platform::set_log_level(LogLevel::kWarning);
    log(LogLevel::kNotice, "filtered");
    log(LogLevel::kWarning, "kept");
    CHECK(capture.take() ==
          "<3>vtest: e 1\n<4>vtest: w x\n<5>vtest: n\n<6>vtest: i\n<7>vtest: d\n<4>vtest: kept\n");
    finish();
  }

  TEST_CASE("a long line is cut, not split, and still ends in a newline") {
    start(0, 10s);
    StderrCapture capture;
    const std::string long_text(5000, 'y');
    log(LogLevel::kInfo, "%s", long_text.c_str());
    const std::string out = capture.take();
    CHECK(out.size() == 1024);
    CHECK(out.rfind("<6>vtest: yyy", 0) == 0);
    CHECK(out.back() == '\n');
    CHECK(lines_of(out).size() == 1);
    finish();
  }

  TEST_CASE("identical lines beyond the burst are suppressed, then counted in one line") {
    start(3, 500ms);
    StderrCapture capture;
    for (int i = 0; i < 10; ++i) {
      log(LogLevel::kWarning, "collector %s: %s", "10.0.0.1:7443", "connection refused");
    }
    log(LogLevel::kInfo, "something else");
    // Nothing is reported before the window ends.
    vantage::platform::flush_log_suppressions();
    std::this_thread::sleep_for(600ms);
    vantage::platform::flush_log_suppressions();
    // A new window: the line is written again.
    log(LogLevel::kWarning, "collector %s: %s", "10.0.0.1:7443", "connection refused");
    const auto lines = lines_of(capture.take());
    REQUIRE(lines.size() == 6);
    CHECK(lines[0] == "<4>vtest: collector 10.0.0.1:7443: connection refused");
    CHECK(lines[1] == lines[0]);
    CHECK(lines[2] == lines[0]);
    CHECK(lines[3] == "<6>vtest: something else");
    CHECK(lines[4] == "<4>vtest: suppressed 7 repeats of: collector 10.0.0.1:7443: connection refused");
    CHECK(lines[5] == lines[0]);
    finish();
  }

  TEST_CASE("the summary comes before the next copy when the line recurs after the window") {
    start(1, 300ms);
    StderrCapture capture;
    log(LogLevel::kError, "disk full");
    log(LogLevel::kError, "disk full");
    log(LogLevel::kError, "disk full");
    std::this_thread::sleep_for(400ms);
    log(LogLevel::kError, "disk full");
    const auto lines = lines_of(capture.take());
    REQUIRE(lines.size() == 3);
    CHECK(lines[0] == "<3>vtest: disk full");
    CHECK(lines[1] == "<4>vtest: suppressed 2 repeats of: disk full");
    CHECK(lines[2] == "<3>vtest: disk full");
    finish();
  }

  TEST_CASE("different messages, or one text at two levels, are not suppressed") {
    start(2, 10s);
    StderrCapture capture;
    for (int i = 0; i < 20; ++i) {
      log(LogLevel::kNotice, "peer %d closed", i);
    }
    log(LogLevel::kNotice, "same text");
    log(LogLevel::kNotice, "same text");
    log(LogLevel::kWarning, "same text");
    log(LogLevel::kWarning, "same text");
    CHECK(lines_of(capture.take()).size() == 24);
    finish();
  }

  TEST_CASE("the fixed table evicts old lines and still reports every suppression") {
    start(1, 300ms);
    StderrCapture capture;
    // Far more distinct lines than table slots, each repeated once: every repeat is suppressed
    // and must show up in some summary, either on eviction or when the window ends.
    constexpr int kDistinct = 300;
    for (int i = 0; i < kDistinct; ++i) {
      log(LogLevel::kInfo, "target %d unreachable", i);
      log(LogLevel::kInfo, "target %d unreachable", i);
    }
    std::this_thread::sleep_for(400ms);
    vantage::platform::flush_log_suppressions();
    int written = 0;
    int reported = 0;
    for (const std::string& line : lines_of(capture.take())) {
      if (line.rfind("<4>vtest: suppressed 1 repeats of: target ", 0) == 0) {
        ++reported;
      } else if (line.rfind("<6>vtest: target ", 0) == 0) {
        ++written;
      } else {
        FAIL("unexpected line: " << line);
      }
    }
    CHECK(written == kDistinct);
    CHECK(reported == kDistinct);
    finish();
  }

  TEST_CASE("a cut line never ends inside a UTF-8 character") {
    start(0, 10s);
    StderrCapture capture;
    // "<6>vtest: " is 10 bytes: 1013 bytes of text fit, so the fourth byte of an emoji would be cut.
    const std::string text = std::string(1011, 'y') + "\xf0\x9f\x98\x80tail";
    log(LogLevel::kInfo, "%s", text.c_str());
    const std::string out = capture.take();
    CHECK(out == "<6>vtest: " + std::string(1011, 'y') + "\n");
    finish();
  }

  TEST_CASE("escape_for_log keeps valid text and escapes what could forge or hide a line") {
    using vantage::platform::escape_for_log;
    CHECK(escape_for_log("fra1-edge-01") == "fra1-edge-01");
    CHECK(escape_for_log("Z\xc3\xbcrich \xf0\x9f\x9a\x80 \"q\" </script>") == "Z\xc3\xbcrich \xf0\x9f\x9a\x80 \"q\" </script>");
    CHECK(escape_for_log("a\nfake: line\r\t") == "a\\nfake: line\\r\\t");
    CHECK(escape_for_log("back\\slash") == "back\\\\slash");
    CHECK(escape_for_log(std::string_view("nul\0esc\x1b[31m", 12)) == "nul\\x00esc\\x1B[31m");
    CHECK(escape_for_log("del\x7f c1\xc2\x85") == "del\\x7F c1\\xC2\\x85");
    CHECK(escape_for_log("bad\xff\xc0\xaf\xed\xa0\x80") == "bad\\xFF\\xC0\\xAF\\xED\\xA0\\x80");
    CHECK(escape_for_log("rtl\xe2\x80\xae evil \xe2\x80\x8f") == "rtl\\u{202E} evil \\u{200F}");
    CHECK(escape_for_log("ls\xe2\x80\xa8ps") == "ls\\u{2028}ps");
    // Bounded: the input is cut (never inside a character) and marked.
    CHECK(escape_for_log(std::string(1000, 'a'), 10) == std::string(10, 'a') + "...");
    CHECK(escape_for_log("abcdefghi\xf0\x9f\x98\x80", 11) == "abcdefghi...");
    // Whatever the input, the output is printable ASCII or valid UTF-8 without controls.
    std::string every_byte;
    for (int b = 0; b < 256; ++b) every_byte += static_cast<char>(b);
    const std::string out = escape_for_log(every_byte, 1024);
    for (const char c : out) {
      CHECK(static_cast<unsigned char>(c) >= 0x20);
      CHECK(c != 0x7f);
    }
    CHECK(vantage::platform::check_text(out, out.size()));
  }

  TEST_CASE("parse_log_level accepts the five names in any case") {
    using vantage::platform::parse_log_level;
    CHECK(parse_log_level("debug") == LogLevel::kDebug);
    CHECK(parse_log_level("info") == LogLevel::kInfo);
    CHECK(parse_log_level("notice") == LogLevel::kNotice);
    CHECK(parse_log_level("warning") == LogLevel::kWarning);
    CHECK(parse_log_level("error") == LogLevel::kError);
    CHECK(parse_log_level("WARNING") == LogLevel::kWarning);
    CHECK(parse_log_level("Info") == LogLevel::kInfo);
    for (const char* bad : {"", "warn", "err", "informational", "debug ", "7", "errors"}) {
      CAPTURE(bad);
      CHECK_FALSE(parse_log_level(bad).has_value());
    }
  }
}
