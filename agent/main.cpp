// vantage-agent: the edge daemon's entry point.
#include <cstdio>
#include <cstring>

#include "agent/version.hpp"

namespace {

void print_usage(std::FILE* out) {
  std::fputs(
      "usage: vantage-agent [--version] [--help]\n"
      "  --version  print version, architecture and TLS library, then exit\n",
      out);
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--version") == 0) {
      std::puts(vantage::agent::version_line().c_str());
      return 0;
    }
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      print_usage(stdout);
      return 0;
    }
    std::fprintf(stderr, "vantage-agent: unknown argument '%s'\n", argv[i]);
    print_usage(stderr);
    return 2;
  }
  std::fputs("vantage-agent: the measuring daemon is not built yet; try --version\n", stderr);
  return 2;
}
