#include <doctest/doctest.h>

#include "agent/version.hpp"

using namespace vantage::agent;

TEST_CASE("the agent links mbedTLS 3.6 LTS with TLS 1.3") {
  const unsigned v = tls_library_version_number();
  CHECK(v >= 0x03060000u);
  CHECK(v < 0x03070000u);
  CHECK(tls13_compiled_in());
  CHECK(version_line().find("Mbed TLS 3.6.") != std::string::npos);
}
