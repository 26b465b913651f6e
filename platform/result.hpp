// The one result convention of every fallible start, open, parse and store call: a Status (an
// error code and a message for people) or a Result<T> (a value or that Status). In both, `true`
// means success, everywhere.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <utility>

namespace vantage::platform {

// What kind of failure, for callers that branch on it; the message says the rest.
enum class Errc : int {
  kOk = 0,
  kInvalid,      // bad input: a config value, a malformed file or frame
  kIo,           // the OS said no: open, read, write, bind, fsync
  kUnavailable,  // a peer or service is not there yet; trying again later may work
  kExhausted,    // a limit was reached: queue, disk, descriptors
  kUnsupported,  // this host or build cannot do it
  kInternal,     // a library reported something that should not happen
};

class [[nodiscard]] Status {
 public:
  // Success. (No static ok(): `s.ok()` would compile on an instance and always be true.)
  Status() = default;
  static Status error(std::string message, Errc code = Errc::kInvalid) {
    assert(code != Errc::kOk);
    Status s;
    s.code_ = code;
    s.message_ = std::move(message);
    return s;
  }

  explicit operator bool() const noexcept { return code_ == Errc::kOk; }
  [[nodiscard]] Errc code() const noexcept { return code_; }
  // Empty on success.
  [[nodiscard]] const std::string& message() const noexcept { return message_; }

 private:
  Errc code_ = Errc::kOk;
  std::string message_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit, as `return value;` reads
  Result(Status status) : status_(std::move(status)) {  // NOLINT: implicit, as `return error;`
    assert(!status_ && "a Result made from a Status is an error");
  }
  static Result error(std::string message, Errc code = Errc::kInvalid) {
    return Result(Status::error(std::move(message), code));
  }

  explicit operator bool() const noexcept { return value_.has_value(); }
  [[nodiscard]] bool has_value() const noexcept { return value_.has_value(); }

  T& value() & { assert(value_); return *value_; }
  const T& value() const& { assert(value_); return *value_; }
  T&& value() && { assert(value_); return std::move(*value_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  [[nodiscard]] const Status& status() const noexcept { return status_; }
  [[nodiscard]] const std::string& error() const noexcept { return status_.message(); }
  [[nodiscard]] Errc code() const noexcept { return status_.code(); }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace vantage::platform
