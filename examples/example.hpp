// The command line of the examples that run only against their own
// embedded UserService (they inject faults and read its counters, which a
// remote server does not offer; quickstart is the one that takes --target).
// `--help` prints what the example shows and exits 0; any other argument is
// refused with exit status 2 and one line on stderr, never silently ignored.
//
//   int main(int argc, char** argv) {
//     example::embedded_only(argc, argv, "pagination", "listing, bounding and resuming a listing");
#ifndef STUBKIT_EXAMPLES_EXAMPLE_ARGS_HPP
#define STUBKIT_EXAMPLES_EXAMPLE_ARGS_HPP

#include <cstdlib>
#include <iostream>
#include <string_view>

namespace example {

inline void embedded_only(int argc, char** argv, char const* name, char const* shows) {
  for (int i = 1; i < argc; ++i) {
    std::string_view const arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << "usage: " << name << "\n"
                << "  " << shows << ".\n"
                << "  Runs against an embedded, in-process UserService of its own (it injects faults\n"
                << "  and reads the server's counters), so it takes no --target; to call a running\n"
                << "  server, see: quickstart --target HOST:PORT [--token T]\n";
      std::exit(0);
    }
    std::cerr << name << ": unknown argument '" << arg << "' (it takes none; see " << name << " --help)\n";
    std::exit(2);
  }
}

}  // namespace example

#endif  // STUBKIT_EXAMPLES_EXAMPLE_ARGS_HPP
