// TlsContext construction: good identities load, and every bad file is named in the message.
#include "platform/tls/tls_error.hpp"
#include "tls_test_support.hpp"

#include <doctest/doctest.h>

#include <fstream>

namespace vantage::platform::tls::test {
namespace {

vantage::platform::Result<std::shared_ptr<TlsContext>> try_create(TlsRole role, const std::string& ca, const std::string& cert,
                            const std::string& key) {
  TlsContextOptions options;
  options.role = role;
  options.ca_file = ca;
  options.cert_file = cert;
  options.key_file = key;
  return TlsContext::create(options);
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("mbedTLS errors read like mbedTLS's own programs print them") {
  CHECK(make_mbedtls_error(0) == std::error_code{});
  const std::error_code ec = make_mbedtls_error(-0x3D00);
  CHECK(ec.category() == mbedtls_category());
  CHECK(ec.message() == "-0x3D00: PK - Invalid key tag or value");
  CHECK(contains(make_mbedtls_error(-0x2700).message(), "-0x2700: X509 - Certificate verification failed"));
}

TEST_CASE("contexts load the development PKI for both roles") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  auto server =
      try_create(TlsRole::kServer, pki.file("ca.crt"), pki.file("collector.crt"), pki.file("collector.key"));
  CHECK_MESSAGE(server, server.error());
  auto client =
      try_create(TlsRole::kClient, pki.file("ca.crt"), pki.file("agent-1.crt"), pki.file("agent-1.key"));
  CHECK_MESSAGE(client, client.error());
  CHECK_FALSE((*client)->has_saved_session());
  // A client may go without a certificate (a server then refuses it); a server may not.
  CHECK(try_create(TlsRole::kClient, pki.file("ca.crt"), "", ""));
  auto bare_server = try_create(TlsRole::kServer, pki.file("ca.crt"), "", "");
  CHECK_FALSE(bare_server);
  CHECK(contains(bare_server.error(), "no certificate file"));
}

TEST_CASE("factory errors name the file and the mbedTLS error") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());

  SUBCASE("missing CA file") {
    const std::string missing = pki.file("no-such-ca.crt");
    auto result = try_create(TlsRole::kClient, missing, pki.file("agent-1.crt"), pki.file("agent-1.key"));
    REQUIRE_FALSE(result);
    CHECK(result.error() == missing + ": No such file or directory");
  }
  SUBCASE("missing key file") {
    const std::string missing = pki.file("no-such.key");
    auto result = try_create(TlsRole::kClient, pki.file("ca.crt"), pki.file("agent-1.crt"), missing);
    REQUIRE_FALSE(result);
    CHECK(result.error() == missing + ": No such file or directory");
  }
  SUBCASE("corrupt key") {
    const std::string corrupt = pki.file("corrupt.key");
    {
      std::ofstream out(corrupt);
      out << "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"
             "-----END PRIVATE KEY-----\n";
    }
    auto result = try_create(TlsRole::kClient, pki.file("ca.crt"), pki.file("agent-1.crt"), corrupt);
    REQUIRE_FALSE(result);
    INFO(result.error());
    CHECK(result.error().rfind(corrupt + ": -0x", 0) == 0);
  }
  SUBCASE("garbage instead of a certificate") {
    const std::string garbage = pki.file("garbage.crt");
    {
      std::ofstream out(garbage);
      out << "not a certificate\n";
    }
    auto result = try_create(TlsRole::kServer, pki.file("ca.crt"), garbage, pki.file("collector.key"));
    REQUIRE_FALSE(result);
    INFO(result.error());
    CHECK(result.error().rfind(garbage + ": ", 0) == 0);
  }
  SUBCASE("certificate and key that do not belong together") {
    auto result =
        try_create(TlsRole::kClient, pki.file("ca.crt"), pki.file("agent-1.crt"), pki.file("collector.key"));
    REQUIRE_FALSE(result);
    INFO(result.error());
    CHECK(result.error().rfind(
              pki.file("collector.key") + ": does not match " + pki.file("agent-1.crt") + ": -0x", 0) == 0);
  }
}

}  // namespace vantage::platform::tls::test
