// The unit tests' main: process-wide settings the daemons make in their own
// main, then doctest's.
#define DOCTEST_CONFIG_IMPLEMENT
#include <csignal>

#include <doctest/doctest.h>

int main(int argc, char** argv) {
  // As in each daemon's main: splice(2) into a closed socket must give EPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  return doctest::Context(argc, argv).run();
}
