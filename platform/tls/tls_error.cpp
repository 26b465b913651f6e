#include "platform/tls/tls_error.hpp"

#include <mbedtls/error.h>

#include <array>
#include <cstdio>

namespace vantage::platform::tls {
namespace {

class MbedtlsCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "mbedtls"; }
  std::string message(int ret) const override { return describe_mbedtls_error(ret); }
};

}  // namespace

const std::error_category& mbedtls_category() noexcept {
  static const MbedtlsCategory category;
  return category;
}

std::error_code make_mbedtls_error(int ret) noexcept {
  return ret == 0 ? std::error_code{} : std::error_code{ret, mbedtls_category()};
}

std::string describe_mbedtls_error(int ret) {
  // Some texts (e.g. CERTIFICATE_VERIFICATION_WITHOUT_HOSTNAME) run to well over a kilobyte.
  std::array<char, 2048> text{};
  mbedtls_strerror(ret, text.data(), text.size());
  std::array<char, 16> code{};
  const unsigned magnitude = ret < 0 ? 0u - static_cast<unsigned>(ret) : static_cast<unsigned>(ret);
  std::snprintf(code.data(), code.size(), "%s0x%04X", ret < 0 ? "-" : "", magnitude);
  return std::string(code.data()) + ": " + text.data();
}

}  // namespace vantage::platform::tls
