#include "agent/version.hpp"

#include <mbedtls/version.h>

#include "platform/arch.hpp"

namespace vantage::agent {

std::string version_line() {
  char tls[32] = {};
  mbedtls_version_get_string_full(tls);
  std::string line = "vantage-agent ";
  line += kVersion;
  line += " (";
  line += platform::kArchName;
  line += ", ";
  line += tls;
  line += tls13_compiled_in() ? ", TLS 1.3+1.2)" : ", TLS 1.2)";
  return line;
}

unsigned tls_library_version_number() { return mbedtls_version_get_number(); }

bool tls13_compiled_in() { return mbedtls_version_check_feature("MBEDTLS_SSL_PROTO_TLS1_3") == 0; }

}  // namespace vantage::agent
