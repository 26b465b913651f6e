// A real IngestServer for collector tests: TLS with the test PKI, listening on 127.0.0.1 (a port
// of the kernel's choosing), serving eu-west, its SQLite store in a directory of its own that
// goes with it.
#pragma once

#include <doctest/doctest.h>

#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <utility>

#include "collector/ingest_server.hpp"
#include "tests/platform/tls/tls_test_support.hpp"

namespace vantage::test {

struct IngestFixture {
  std::filesystem::path dir;
  std::unique_ptr<collector::IngestServer> ingest;
  asio::ip::tcp::endpoint endpoint;

  // `config` carries what the test sets; listen, regions, database, TLS files and io_threads
  // (2) are the fixture's.
  IngestFixture(collector::IngestConfig config, const std::string& name) {
    const auto& pki = platform::tls::test::Pki::get();
    REQUIRE(pki.ok());
    dir = pki.dir() / name;
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    config.listen = {{asio::ip::make_address("127.0.0.1"), 0}};
    config.regions = {"eu-west"};
    config.database = (dir / "store.db").string();
    config.tls.ca_file = pki.file("ca.crt");
    config.tls.cert_file = pki.file("collector.crt");
    config.tls.key_file = pki.file("collector.key");
    config.io_threads = 2;
    ingest = std::make_unique<collector::IngestServer>(std::move(config));
    const auto started = ingest->start();
    INFO(started.message());
    REQUIRE(started);
    endpoint = ingest->local_endpoints().at(0);
  }
  ~IngestFixture() {
    ingest.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
  IngestFixture(const IngestFixture&) = delete;
  IngestFixture& operator=(const IngestFixture&) = delete;
};

}  // namespace vantage::test
