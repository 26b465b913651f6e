#include "platform/result.hpp"

#include <doctest/doctest.h>

#include <memory>
#include <string>

using vantage::platform::Errc;
using vantage::platform::Result;
using vantage::platform::Status;

TEST_CASE("result: a default Status is success and true") {
  const Status s;
  CHECK(static_cast<bool>(s));
  CHECK(s.code() == Errc::kOk);
  CHECK(s.message().empty());
}

TEST_CASE("result: an error Status is false and keeps its code and message") {
  const Status s = Status::error("open /var/lib/x: Permission denied", Errc::kIo);
  CHECK_FALSE(static_cast<bool>(s));
  CHECK(s.code() == Errc::kIo);
  CHECK(s.message() == "open /var/lib/x: Permission denied");
}

TEST_CASE("result: Result holds a value (true) or an error (false), never both") {
  Result<std::string> good = std::string("value");
  REQUIRE(good);
  CHECK(*good == "value");
  CHECK(good->size() == 5);
  CHECK(good.error().empty());

  const Result<int> bad = Result<int>::error("frame too large", Errc::kExhausted);
  CHECK_FALSE(bad);
  CHECK_FALSE(bad.has_value());
  CHECK(bad.code() == Errc::kExhausted);
  CHECK(bad.error() == "frame too large");

  const Result<int> from_status = Status::error("bad key");
  CHECK_FALSE(from_status);
  CHECK(from_status.code() == Errc::kInvalid);
}

TEST_CASE("result: a move-only value moves out") {
  Result<std::unique_ptr<int>> r = std::make_unique<int>(7);
  REQUIRE(r);
  const std::unique_ptr<int> p = std::move(r).value();
  CHECK(*p == 7);
}
