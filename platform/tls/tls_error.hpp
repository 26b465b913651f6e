// mbedTLS return codes as std::error_code, so TLS failures travel like any other I/O error.
#pragma once

#include <string>
#include <system_error>

namespace vantage::platform::tls {

// The category of mbedTLS return codes. The value is the (negative) mbedTLS code itself and
// message() reads "-0xNNNN: <mbedtls_strerror text>", the form mbedTLS's own programs print.
const std::error_category& mbedtls_category() noexcept;

// Wraps an mbedTLS return code; 0 (success) gives an empty error_code.
std::error_code make_mbedtls_error(int ret) noexcept;

// "-0xNNNN: <text>" for an mbedTLS return code.
std::string describe_mbedtls_error(int ret);

}  // namespace vantage::platform::tls
