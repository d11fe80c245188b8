// What every example shares: its command line, and the server its calls go
// to, an embedded UserService of its own or a running one.
//
//   example [--target HOST:PORT] [--token T] [--tls-ca FILE [--tls-server-name N]]
//
// Without --target an example starts the embedded UserService on a loopback
// port (with a bearer token when --token is given) and calls it through the
// same channel code it would use for a real server. Faults are asked for
// with the stubkit-fault request header, which the embedded server honours;
// a real server honours it only when started with `user_server
// --fault-metadata`, and ignores it otherwise.
//
// `--help` prints usage and exits 0; an unknown or incomplete argument is
// refused with exit status 2 and one line on stderr, never ignored.
#ifndef STUBKIT_EXAMPLES_EXAMPLE_HPP
#define STUBKIT_EXAMPLES_EXAMPLE_HPP

#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "stubkit/channel.hpp"
#include "stubkit/testing/embedded_server.hpp"

namespace example {

struct Flags {
  std::string target;           ///< empty: an embedded server
  std::string token;            ///< bearer token to send (and, embedded, to require)
  std::string tls_ca;           ///< PEM roots to trust: TLS on when set
  std::string tls_server_name;  ///< name expected in the server's certificate
  bool remote() const { return !target.empty(); }
};

/// Parses the common flags. `shows` is one line on what the example shows;
/// `remote` says what a running server needs for it (flags of user_server).
inline Flags parse(int argc, char** argv, char const* name, char const* shows, char const* remote) {
  auto usage = [&] {
    return std::string("usage: ") + name +
           " [--target HOST:PORT] [--token T] [--tls-ca FILE [--tls-server-name N]]";
  };
  auto refuse = [&](std::string const& why) {
    std::cerr << name << ": " << why << " (" << usage() << ")\n";
    std::exit(2);
  };
  Flags flags;
  std::string ca_file;
  for (int i = 1; i < argc; ++i) {
    std::string_view const arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << usage() << "\n"
                << "  " << shows << ".\n"
                << "  Without --target it starts an embedded UserService of its own. Against a\n"
                << "  running server: " << remote << ".\n"
                << "  --token T          send 'authorization: Bearer T'\n"
                << "  --tls-ca FILE      use TLS, trusting the PEM certificates in FILE\n"
                << "  --tls-server-name N  expect N in the server's certificate\n";
      std::exit(0);
    }
    bool const known =
        arg == "--target" || arg == "--token" || arg == "--tls-ca" || arg == "--tls-server-name";
    if (!known) refuse("unknown argument '" + std::string(arg) + "'");
    if (i + 1 >= argc || argv[i + 1][0] == '\0') refuse(std::string(arg) + " needs a value");
    std::string const value = argv[++i];
    if (arg == "--target") flags.target = value;
    if (arg == "--token") flags.token = value;
    if (arg == "--tls-ca") ca_file = value;
    if (arg == "--tls-server-name") flags.tls_server_name = value;
  }
  if (!ca_file.empty()) {
    std::ifstream in(ca_file, std::ios::binary);
    std::stringstream pem;
    pem << in.rdbuf();
    if (!in || pem.str().empty()) refuse("--tls-ca: cannot read '" + ca_file + "'");
    flags.tls_ca = pem.str();
  }
  if (!flags.tls_server_name.empty() && flags.tls_ca.empty()) refuse("--tls-server-name needs --tls-ca");
  if (!flags.tls_ca.empty() && !flags.remote()) refuse("--tls-ca needs --target");
  return flags;
}

/// The servers an example talks to: `count` embedded UserServices on
/// loopback (each preloaded with `preload` users, answering with the
/// trailer stubkit-server-id "backend-1"...), or the --target. `configure`
/// may change the embedded servers' options before they start.
class Servers {
 public:
  explicit Servers(Flags flags, int preload = 0, int count = 1,
                   std::function<void(stubkit::testing::EmbeddedServerOptions&)> const& configure = {})
      : flags_(std::move(flags)) {
    if (flags_.remote()) {
      target_ = flags_.target;
      return;
    }
    for (int i = 0; i < count; ++i) {
      stubkit::testing::EmbeddedServerOptions options;
      options.listen_address = "127.0.0.1:0";
      options.service.token = flags_.token;
      options.service.fault_metadata = true;
      options.service.server_id = "backend-" + std::to_string(i + 1);
      if (configure) configure(options);
      embedded_.push_back(std::make_unique<stubkit::testing::EmbeddedServer>(options));
      embedded_.back()->service().preload(preload);
      target_ += (i == 0 ? "" : ",") + embedded_.back()->address();
    }
    if (count > 1) target_ = "ipv4:" + target_;
  }

  bool remote() const { return flags_.remote(); }
  std::string const& target() const { return target_; }

  /// Embedded server `i`; only when !remote().
  stubkit::testing::EmbeddedServer& embedded(std::size_t i = 0) { return *embedded_.at(i); }
  std::size_t embedded_count() const { return embedded_.size(); }

  /// A channel to the server(s) with `options`, plus the token and TLS of
  /// the command line.
  std::shared_ptr<grpc::Channel> channel(stubkit::ChannelOptions options = {}) const {
    if (!flags_.token.empty()) options.bearer_token = flags_.token;
    if (!flags_.tls_ca.empty()) {
      stubkit::TlsOptions tls;
      tls.root_certificates = flags_.tls_ca;
      tls.server_name_override = flags_.tls_server_name;
      options.tls = tls;
    }
    try {
      return stubkit::make_channel(target_, options);
    } catch (std::invalid_argument const& e) {  // e.g. a token over plaintext to another host
      std::cerr << e.what() << "\n";
      std::exit(2);
    }
  }

  /// "the embedded UserService" or "the UserService at HOST:PORT".
  std::string describe() const {
    return remote() ? "the UserService at " + target_ : "an embedded UserService on " + target_;
  }

 private:
  Flags flags_;
  std::string target_;
  std::vector<std::unique_ptr<stubkit::testing::EmbeddedServer>> embedded_;
};

/// A short tag unique to this run, for ids that must be new on a server
/// that has seen earlier runs.
inline std::string run_tag() {
  std::random_device random;
  std::string tag;
  for (int i = 0; i < 6; ++i) tag += "0123456789abcdef"[random() % 16];
  return tag;
}

}  // namespace example

#endif  // STUBKIT_EXAMPLES_EXAMPLE_HPP
