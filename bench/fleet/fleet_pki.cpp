#include "bench/fleet/fleet_pki.hpp"

#include <mbedtls/asn1.h>
#include <mbedtls/ecp.h>
#include <mbedtls/oid.h>
#include <mbedtls/x509_crt.h>
#include <psa/crypto.h>
// psa_util.h in mbedTLS 3.6 lacks its own extern "C" guard.
extern "C" {
#include <mbedtls/psa_util.h>
}

#include <array>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <vector>

#include "platform/tls/tls_error.hpp"

namespace vantage::fleet {
namespace {

using platform::tls::describe_mbedtls_error;

std::string fail(const char* what, int ret) { return std::string(what) + ": " + describe_mbedtls_error(ret); }

// X.509 validity as mbedTLS wants it: "YYYYMMDDhhmmss", UTC.
std::string utc_stamp(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::array<char, 16> out{};
  std::strftime(out.data(), out.size(), "%Y%m%d%H%M%S", &tm);
  return out.data();
}

int new_p256_key(mbedtls_pk_context& key) {
  int ret = mbedtls_pk_setup(&key, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
  if (ret != 0) return ret;
  return mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(key), mbedtls_psa_get_random,
                             MBEDTLS_PSA_RANDOM_STATE);
}

std::string key_pem(mbedtls_pk_context& key) {
  std::vector<unsigned char> buffer(1024);
  if (mbedtls_pk_write_key_pem(&key, buffer.data(), buffer.size()) != 0) return {};
  return reinterpret_cast<const char*>(buffer.data());
}

// Owns an mbedtls_x509write_cert for one issue() call.
struct CertWriter {
  mbedtls_x509write_cert crt;
  CertWriter() { mbedtls_x509write_crt_init(&crt); }
  ~CertWriter() { mbedtls_x509write_crt_free(&crt); }
  CertWriter(const CertWriter&) = delete;
  CertWriter& operator=(const CertWriter&) = delete;
};

bool write_file(const std::filesystem::path& path, const std::string& text, std::string& error) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) {
    error = "cannot write " + path.string();
    return false;
  }
  return true;
}

}  // namespace

FleetPki::FleetPki() {
  mbedtls_pk_init(&ca_key_);
  mbedtls_pk_init(&agent_key_);
}

FleetPki::~FleetPki() {
  mbedtls_pk_free(&agent_key_);
  mbedtls_pk_free(&ca_key_);
}

std::unique_ptr<FleetPki> FleetPki::create(bool shared_agent_key, std::string& error) {
  if (psa_crypto_init() != PSA_SUCCESS) {
    error = "psa_crypto_init failed";
    return nullptr;
  }
  std::unique_ptr<FleetPki> pki(new FleetPki());
  pki->shared_agent_key_ = shared_agent_key;
  std::array<unsigned char, 8> random{};
  if (mbedtls_psa_get_random(MBEDTLS_PSA_RANDOM_STATE, random.data(), random.size()) != 0) {
    error = "no randomness";
    return nullptr;
  }
  for (unsigned char b : random) pki->serial_prefix_ = (pki->serial_prefix_ << 8) | b;
  pki->serial_prefix_ &= 0x7fffffffffffffffULL;  // a positive serial
  char ca_name[64];
  std::snprintf(ca_name, sizeof ca_name, "O=Vantage,CN=Vantage fleet simulator CA %08x",
                static_cast<unsigned>(pki->serial_prefix_ & 0xffffffffu));
  pki->ca_subject_ = ca_name;
  if (int ret = new_p256_key(pki->ca_key_); ret != 0) {
    error = fail("CA key", ret);
    return nullptr;
  }
  error = pki->issue(pki->ca_key_, pki->ca_subject_, false, pki->ca_pem_);
  if (!error.empty()) return nullptr;

  mbedtls_pk_context server_key;
  mbedtls_pk_init(&server_key);
  if (int ret = new_p256_key(server_key); ret != 0) {
    mbedtls_pk_free(&server_key);
    error = fail("server key", ret);
    return nullptr;
  }
  error = pki->issue(server_key, "O=Vantage,CN=vantage-collector", true, pki->server_.cert_pem);
  pki->server_.key_pem = key_pem(server_key);
  mbedtls_pk_free(&server_key);
  if (!error.empty()) return nullptr;

  if (shared_agent_key) {
    if (int ret = new_p256_key(pki->agent_key_); ret != 0) {
      error = fail("agent key", ret);
      return nullptr;
    }
    pki->agent_key_pem_ = key_pem(pki->agent_key_);
  }
  return pki;
}

// subject == ca_subject_ issues the self-signed CA; otherwise a leaf signed by the CA.
std::string FleetPki::issue(mbedtls_pk_context& subject_key, const std::string& subject, bool server,
                            std::string& pem, const std::string& identity_uri) {
  const bool is_ca = subject == ca_subject_;
  CertWriter w;
  mbedtls_x509write_crt_set_version(&w.crt, MBEDTLS_X509_CRT_VERSION_3);
  mbedtls_x509write_crt_set_md_alg(&w.crt, MBEDTLS_MD_SHA256);
  mbedtls_x509write_crt_set_subject_key(&w.crt, &subject_key);
  mbedtls_x509write_crt_set_issuer_key(&w.crt, &ca_key_);
  std::array<unsigned char, 12> serial{};
  const std::uint64_t n = ++serial_;
  for (int i = 0; i < 4; ++i) serial[static_cast<std::size_t>(i)] = static_cast<unsigned char>(serial_prefix_ >> (56 - 8 * i));
  for (int i = 0; i < 8; ++i) serial[static_cast<std::size_t>(4 + i)] = static_cast<unsigned char>(n >> (56 - 8 * i));
  int ret = mbedtls_x509write_crt_set_serial_raw(&w.crt, serial.data(), serial.size());
  const std::time_t now = std::time(nullptr);
  if (ret == 0) {
    ret = mbedtls_x509write_crt_set_validity(&w.crt, utc_stamp(now - 86400).c_str(),
                                             utc_stamp(now + (is_ca ? 60 : 30) * 86400).c_str());
  }
  if (ret == 0) ret = mbedtls_x509write_crt_set_subject_name(&w.crt, subject.c_str());
  if (ret == 0) ret = mbedtls_x509write_crt_set_issuer_name(&w.crt, ca_subject_.c_str());
  if (ret == 0) ret = mbedtls_x509write_crt_set_basic_constraints(&w.crt, is_ca ? 1 : 0, is_ca ? 0 : -1);
  if (ret == 0) {
    ret = mbedtls_x509write_crt_set_key_usage(
        &w.crt, is_ca ? MBEDTLS_X509_KU_KEY_CERT_SIGN | MBEDTLS_X509_KU_CRL_SIGN : MBEDTLS_X509_KU_DIGITAL_SIGNATURE);
  }
  mbedtls_asn1_sequence eku{};
  if (ret == 0 && !is_ca) {
    const char* oid = server ? MBEDTLS_OID_SERVER_AUTH : MBEDTLS_OID_CLIENT_AUTH;
    eku.buf.tag = MBEDTLS_ASN1_OID;
    eku.buf.p = reinterpret_cast<unsigned char*>(const_cast<char*>(oid));
    eku.buf.len = MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH);
    ret = mbedtls_x509write_crt_set_ext_key_usage(&w.crt, &eku);
  }
  if (ret == 0 && server) {
    // DNS:localhost, IP:127.0.0.1, IP:::1, as tools/dev-pki.sh issues the collector's.
    static const char kLocalhost[] = "localhost";
    std::array<unsigned char, 4> v4{127, 0, 0, 1};
    std::array<unsigned char, 16> v6{};
    v6[15] = 1;
    std::array<mbedtls_x509_san_list, 3> san{};
    san[0].node.type = MBEDTLS_X509_SAN_DNS_NAME;
    san[0].node.san.unstructured_name.p = reinterpret_cast<unsigned char*>(const_cast<char*>(kLocalhost));
    san[0].node.san.unstructured_name.len = sizeof kLocalhost - 1;
    san[1].node.type = MBEDTLS_X509_SAN_IP_ADDRESS;
    san[1].node.san.unstructured_name.p = v4.data();
    san[1].node.san.unstructured_name.len = v4.size();
    san[2].node.type = MBEDTLS_X509_SAN_IP_ADDRESS;
    san[2].node.san.unstructured_name.p = v6.data();
    san[2].node.san.unstructured_name.len = v6.size();
    san[0].next = &san[1];
    san[1].next = &san[2];
    ret = mbedtls_x509write_crt_set_subject_alternative_name(&w.crt, san.data());
  }
  if (ret == 0 && !identity_uri.empty()) {
    mbedtls_x509_san_list uri{};
    uri.node.type = MBEDTLS_X509_SAN_UNIFORM_RESOURCE_IDENTIFIER;
    uri.node.san.unstructured_name.p = reinterpret_cast<unsigned char*>(const_cast<char*>(identity_uri.data()));
    uri.node.san.unstructured_name.len = identity_uri.size();
    ret = mbedtls_x509write_crt_set_subject_alternative_name(&w.crt, &uri);
  }
  if (ret != 0) return fail("certificate fields", ret);
  std::array<unsigned char, 4096> buffer{};
  ret = mbedtls_x509write_crt_pem(&w.crt, buffer.data(), buffer.size(), mbedtls_psa_get_random,
                                  MBEDTLS_PSA_RANDOM_STATE);
  if (ret != 0) return fail("signing a certificate", ret);
  pem = reinterpret_cast<const char*>(buffer.data());
  return {};
}

CertAndKey FleetPki::mint_agent(const std::string& agent_id, const std::string& region, const std::string& pop,
                                std::string& error) {
  CertAndKey out;
  const std::string subject = "O=Vantage,OU=" + region + ",CN=" + agent_id;
  const std::string uri = "vantage://" + region + "/" + pop + "/" + agent_id;
  if (shared_agent_key_) {
    error = issue(agent_key_, subject, false, out.cert_pem, uri);
    if (error.empty()) out.key_pem = agent_key_pem_;
    return out;
  }
  mbedtls_pk_context key;
  mbedtls_pk_init(&key);
  if (int ret = new_p256_key(key); ret != 0) {
    error = fail("agent key", ret);
  } else {
    error = issue(key, subject, false, out.cert_pem, uri);
    out.key_pem = key_pem(key);
  }
  mbedtls_pk_free(&key);
  if (!error.empty()) out = {};
  return out;
}

bool FleetPki::write_collector_files(const std::filesystem::path& dir, std::string& error) const {
  return write_file(dir / "ca.crt", ca_pem_, error) && write_file(dir / "collector.crt", server_.cert_pem, error) &&
         write_file(dir / "collector.key", server_.key_pem, error);
}

}  // namespace vantage::fleet
