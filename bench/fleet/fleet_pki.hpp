// FleetPki: the fleet simulator's certificates, minted in-process with mbedTLS x509write: one
// ECDSA P-256 CA, the collector's server certificate and a client certificate per agent, laid
// out as tools/dev-pki.sh issues them (O=Vantage, OU=<region>, CN=<agent-id>, and the identity
// the collector checks: subjectAltName URI vantage://<region>/<pop>/<agent-id>).
#pragma once

#include <mbedtls/pk.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

namespace vantage::fleet {

struct CertAndKey {
  std::string cert_pem;
  std::string key_pem;
};

class FleetPki {
 public:
  // shared_agent_key: every agent certificate certifies one key pair (signing only, fast);
  // otherwise each agent gets its own P-256 key (a key generation more per certificate).
  static std::unique_ptr<FleetPki> create(bool shared_agent_key, std::string& error);
  ~FleetPki();
  FleetPki(const FleetPki&) = delete;
  FleetPki& operator=(const FleetPki&) = delete;

  const std::string& ca_pem() const noexcept { return ca_pem_; }
  // serverAuth, SAN DNS:localhost, IP:127.0.0.1, IP:::1.
  const CertAndKey& server() const noexcept { return server_; }
  // clientAuth, subject O=Vantage, OU=<region>, CN=<agent_id>, SAN URI
  // vantage://<region>/<pop>/<agent_id>. Not thread-safe (one minting thread). Empty cert_pem on
  // error (error set).
  CertAndKey mint_agent(const std::string& agent_id, const std::string& region, const std::string& pop,
                        std::string& error);
  // ca.crt, collector.crt, collector.key in dir (the collector reads files).
  bool write_collector_files(const std::filesystem::path& dir, std::string& error) const;

 private:
  FleetPki();
  // identity_uri: an agent's SAN URI (empty for the CA and the server).
  std::string issue(mbedtls_pk_context& subject_key, const std::string& subject, bool server, std::string& pem,
                    const std::string& identity_uri = {});

  mbedtls_pk_context ca_key_;
  mbedtls_pk_context agent_key_;  // the shared agent key (when shared)
  bool shared_agent_key_ = true;
  std::string ca_subject_;
  std::string ca_pem_;
  std::string agent_key_pem_;
  CertAndKey server_;
  std::uint64_t serial_ = 0;
  std::uint64_t serial_prefix_ = 0;
};

}  // namespace vantage::fleet
