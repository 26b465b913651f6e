// vantage-collector's commands besides `serve`: the usage text, --version, `query` (what the
// SQLite store holds) and `consume` (batches read back from the JetStream stream, and with --db
// written into a SQLite store).
#pragma once

#include <cstdio>
#include <span>
#include <string>
#include <string_view>

namespace vantage::collector {

const char* usage_text() noexcept;

// "vantage-collector VERSION (ARCH, mbed TLS VERSION, SQLite VERSION)"
void print_version(std::FILE* out);

// Prints the latest latency per agent and target, the latest load per PoP, the agents and their
// health to stdout, reading the database read-only; returns the exit status.
int query_command(const std::string& db_path);

// The arguments after "consume"; returns the exit status (0: every message verified, 1: a
// message failed verification or NATS failed, 2: usage).
int consume_command(std::span<const std::string_view> args, std::FILE* out);

}  // namespace vantage::collector
