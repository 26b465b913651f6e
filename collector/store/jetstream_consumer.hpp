// `vantage-collector consume`: reads batches back from the JetStream stream with a pull
// consumer, verifies each frame like the ingest does and prints one line per batch.
#pragma once

#include <cstdio>
#include <span>
#include <string_view>

namespace vantage::collector::store {

// The arguments after "consume"; returns the exit status (0: every message verified, 1: a
// message failed verification or NATS failed, 2: usage).
int consume_command(std::span<const std::string_view> args, std::FILE* out);

inline constexpr const char* kConsumeUsage =
    "       vantage-collector consume --jetstream URL [--jetstream URL ...] [--stream NAME] [--durable "
    "NAME]\n"
    "                                 [--follow] [--timeout MS]\n";

}  // namespace vantage::collector::store
