// TlsContext construction: good identities load, and every bad file is named in the message.
#include "platform/tls/tls_error.hpp"
#include "tls_test_support.hpp"

#include <doctest/doctest.h>

#include <ctime>
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

namespace vantage::platform::tls::test {

TEST_CASE("identity URIs: vantage://region/pop/agent-id, each component strictly checked") {
  auto good = parse_identity_uri("vantage://eu-central/fra1/fra1-edge-01");
  REQUIRE(good);
  CHECK(good->region == "eu-central");
  CHECK(good->pop == "fra1");
  CHECK(good->agent_id == "fra1-edge-01");
  CHECK(parse_identity_uri("vantage://a/b/C.d_9"));
  const std::string max(64, 'x');
  CHECK(parse_identity_uri("vantage://" + max + "/" + max + "/" + max));

  struct Bad {
    std::string uri;
    const char* why;
  };
  const Bad bad[] = {
      {"", "does not start with vantage://"},
      {"spiffe://eu-central/fra1/a", "does not start with vantage://"},
      {"VANTAGE://eu-central/fra1/a", "does not start with vantage://"},
      {"vantage://eu-central/fra1", "is not vantage://<region>/<pop>/<agent-id>"},
      {"vantage://eu-central", "is not vantage://<region>/<pop>/<agent-id>"},
      {"vantage://eu-central/fra1/a/b", "agent id 'a/b'"},
      {"vantage://eu-central/fra1/", "agent id ''"},
      {"vantage:///fra1/a", "region ''"},
      {"vantage://eu-central//a", "PoP ''"},
      {"vantage://eu central/fra1/a", "region 'eu central'"},
      {"vantage://eu-central/fra1/a%2Fb", "agent id 'a%2Fb'"},
      {"vantage://eu-central/fra1/a?x=1", "agent id 'a?x=1'"},
      {"vantage://eu-central:7443/fra1/a", "region 'eu-central:7443'"},
      {"vantage://user@eu-central/fra1/a", "region 'user@eu-central'"},
      {"vantage://eu-central/.hidden/a", "PoP '.hidden'"},
      {"vantage://eu-central/fra1/-a", "agent id '-a'"},
      {"vantage://eu-central/fra1/a\nforged log line", "agent id 'a\\x0aforged log line'"},
      {"vantage://eu-central/fra1/\xc3\xa9t\xc3\xa9", "agent id '\\xc3\\xa9t\\xc3\\xa9'"},
      {"vantage://eu-central/fra1/" + std::string(65, 'a'), "agent id 'aaaa"},
      {"vantage://eu-central/fra1/" + std::string(300, 'a'), "longer than 204 bytes"},
  };
  for (const Bad& b : bad) {
    CAPTURE(b.uri);
    auto parsed = parse_identity_uri(b.uri);
    REQUIRE_FALSE(parsed);
    CHECK(contains(parsed.error(), b.why));
    // Peer text is escaped: no raw control byte or non-ASCII reaches a log line.
    for (const char ch : parsed.error()) {
      CHECK((ch >= 0x20 && ch < 0x7f));
    }
  }
  CHECK(valid_identity_component("a"));
  CHECK_FALSE(valid_identity_component(""));
  CHECK_FALSE(valid_identity_component(std::string(65, 'a')));
  CHECK_FALSE(valid_identity_component("_a"));
}

TEST_CASE("a reloaded context reads its files again and keeps the ticket keys, or says what is wrong") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  TlsContextOptions options;
  options.role = TlsRole::kServer;
  options.ca_file = pki.file("ca.crt");
  options.cert_file = pki.file("collector.crt");
  options.key_file = pki.file("collector.key");
  auto first = TlsContext::create(options);
  REQUIRE(first);
  CHECK((*first)->certificate_not_after_s() > static_cast<std::int64_t>(std::time(nullptr)));
  CHECK((*first)->crl_next_update_s() == 0);
  CHECK_FALSE((*first)->is_revoked("anything", ""));
  options.crl_file = pki.file("revoked.crl");
  auto second = (*first)->reload(options);
  REQUIRE(second);
  CHECK((*second)->revoked_serials() == 1);
  CHECK((*second)->crl_next_update_s() > static_cast<std::int64_t>(std::time(nullptr)));
  options.key_file = pki.file("agent-1.key");  // not the certificate's key
  auto bad = (*first)->reload(options);
  REQUIRE_FALSE(bad);
  CHECK(contains(bad.error(), "agent-1.key: does not match"));
  CHECK((*first)->revoked_serials() == 0);  // untouched by either reload
}

}  // namespace vantage::platform::tls::test

namespace vantage::platform::tls::test {

TEST_CASE("X.509 times become Unix seconds in 64 bits, past 2038 too") {
  const auto at = [](int year, int mon, int day, int hour, int min, int sec) {
    mbedtls_x509_time t{};
    t.year = year;
    t.mon = mon;
    t.day = day;
    t.hour = hour;
    t.min = min;
    t.sec = sec;
    return unix_seconds(t);
  };
  CHECK(at(1970, 1, 1, 0, 0, 0) == 0);
  CHECK(at(2000, 2, 29, 23, 59, 59) == 951868799);
  CHECK(at(2050, 1, 1, 0, 0, 0) == 2524608000LL);   // beyond a 32-bit time_t (armhf)
  CHECK(at(2050, 6, 15, 12, 34, 56) == 2538909296LL);
  CHECK(at(2100, 3, 1, 0, 0, 0) == 4107542400LL);   // 2100 is not a leap year
}

}  // namespace vantage::platform::tls::test

namespace vantage::platform::tls::test {

TEST_CASE("dev-pki.sh re-run for an existing agent keeps its certificate, or fails when the identity differs") {
  const Pki& pki = Pki::get();
  REQUIRE(pki.ok());
  const std::filesystem::path dir = pki.dir() / "dev-pki-rerun";
  std::filesystem::remove_all(dir);
  const std::string script = "bash '" + std::string(VANTAGE_SOURCE_DIR) + "/tools/dev-pki.sh' '" + dir.string() + "' ";
  const std::string errors = (pki.dir() / "dev-pki-rerun.err").string();
  const auto run = [&](const std::string& spec) {
    return std::system((script + spec + " >/dev/null 2>'" + errors + "'").c_str());
  };
  const auto certificate = [&] { return read_pem_file((dir / "a1.crt").string()); };
  REQUIRE(run("a1:eu-west:fra1") == 0);
  const std::string first = certificate();
  REQUIRE_FALSE(first.empty());
  CHECK(run("a1:eu-west:fra1") == 0);  // the same identity: kept as it is
  CHECK(certificate() == first);
  CHECK(run("a1:eu-west:fra2") != 0);  // another PoP: refused, with the reason, nothing changed
  CHECK(contains(read_pem_file(errors), "a1.crt already exists and binds vantage://eu-west/fra1/a1, not "
                                        "vantage://eu-west/fra2/a1"));
  CHECK(run("a1:ap-south:fra1") != 0);  // another region
  CHECK(certificate() == first);
  std::filesystem::remove_all(dir);
}

}  // namespace vantage::platform::tls::test
