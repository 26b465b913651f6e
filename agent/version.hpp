// What an agent reports about its own build: version, architecture and the TLS library inside it.
#pragma once

#include <string>

namespace vantage::agent {

inline constexpr const char* kVersion = VANTAGE_VERSION;  // project(VERSION) in CMakeLists.txt

// "vantage-agent 0.1.0 (arm64, Mbed TLS 3.6.6, TLS 1.3+1.2)"
std::string version_line();

// The mbedTLS version linked in, as MMNNPP00 (mbedtls_version_get_number()).
unsigned tls_library_version_number();

// True when the linked mbedTLS was built with TLS 1.3 support.
bool tls13_compiled_in();

}  // namespace vantage::agent
