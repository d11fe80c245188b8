// user_server: the embedded UserService as a standalone TCP server.
//
// Shows: serving the UserService with health and reflection, and a graceful
// shutdown on SIGINT/SIGTERM (health goes NOT_SERVING, in-flight calls finish).
//
//   user_server [--host H] [--port P] [--preload N] [--token T] [--heartbeat D]
//               [--max-page-size N] [--data PATH [--sync]] [--server-id ID]
//               [--fault-metadata] [--tls-cert FILE --tls-key FILE]
//               [--page-token-key-file FILE] [--metrics-port M]
//               [--tail-latency F:D[:SEED]] [--max-concurrent-streams N]
//
// --port 0 (the default) picks a free port. When ready it prints exactly one
// line "listening on HOST:PORT" (after "metrics on http://HOST:M/metrics"
// with --metrics-port). D is a duration such as 5s or 250ms.
// With --data, users are kept in an append-only journal at PATH: a write is
// in the file before it is acknowledged, so it survives SIGKILL, and page
// tokens are signed with the key in PATH.key (made on first start), so they
// survive a restart. Backends behind one target that should accept each
// other's page tokens share a key with --page-token-key-file.
// --tail-latency makes a slow backend for hedging: a share F of calls
// waits D longer (docs/embedded-server.md).
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "stubkit/testing/embedded_server.hpp"
#if STUBKIT_HAVE_METRICS
#include "stubkit/testing/metrics.hpp"
#endif

namespace {

constexpr char const* kUsage =
    "usage: user_server [--host H] [--port P] [--preload N] [--token T] [--heartbeat D]\n"
    "                   [--max-page-size N] [--data PATH [--sync]] [--server-id ID]\n"
    "                   [--fault-metadata] [--tls-cert FILE --tls-key FILE]\n"
    "                   [--page-token-key-file FILE] [--metrics-port M]\n"
    "                   [--tail-latency F:D[:SEED]] [--max-concurrent-streams N]\n"
    "  --host H       address to bind (default 127.0.0.1)\n"
    "  --port P       TCP port, 0 picks a free one (default 0)\n"
    "  --preload N    create N users at start if there are none (default 0)\n"
    "  --token T      require 'authorization: Bearer T' on UserService calls\n"
    "  --heartbeat D  WatchUsers heartbeat interval, e.g. 5s or 250ms (default 5s)\n"
    "  --max-page-size N  largest ListUsers page (default 100)\n"
    "  --data PATH    keep users in the journal file PATH (created if missing);\n"
    "                 every write is in it before the reply (default: memory only);\n"
    "                 page tokens are signed with the key in PATH.key, so they\n"
    "                 survive a restart (made on first start)\n"
    "  --sync         with --data, also fdatasync before each reply\n"
    "  --server-id ID send ID in the trailing metadata stubkit-server-id of every reply\n"
    "  --fault-metadata  let clients ask for failures and latency with the request\n"
    "                 header stubkit-fault (see docs/embedded-server.md); testing only\n"
    "  --tls-cert FILE, --tls-key FILE  serve TLS with this PEM certificate chain and key\n"
    "  --page-token-key-file FILE  sign page tokens with the key in FILE (16 to 4096\n"
    "                 bytes, e.g. head -c 32 /dev/urandom > FILE): backends sharing\n"
    "                 it accept each other's tokens (default: PATH.key with --data,\n"
    "                 else a random key per process)\n"
    "  --metrics-port M  serve Prometheus metrics at http://HOST:M/metrics: calls by\n"
    "                 method and status, users stored, watchers (0 picks a free port)\n"
    "  --tail-latency F:D[:SEED]  delay a share F of calls (0 to 1, or 5%) by D more,\n"
    "                 e.g. 0.05:200ms: a slow backend for hedging; SEED (default 1)\n"
    "                 picks which calls, so backends given different seeds are slow\n"
    "                 at different times\n"
    "  --max-concurrent-streams N  calls one client connection may have open at once\n"
    "                 (1 to 1000000; default: no limit)\n";

[[noreturn]] void usage_error(std::string const& message) {
  std::cerr << "user_server: " << message << "\n" << kUsage;
  std::exit(2);
}

struct Flags {
  std::string host = "127.0.0.1";
  int port = 0;
  int preload = 0;
  std::string token;
  std::chrono::milliseconds heartbeat{5000};
  int max_page_size = 100;
  int max_concurrent_streams = 0;  // 0: no limit
  std::string data;
  bool sync = false;
  std::string server_id;
  bool fault_metadata = false;
  std::string tls_cert;
  std::string tls_key;
  std::string page_token_key_file;
  int metrics_port = -1;  // -1: no metrics
  stubkit::testing::FaultInjector::TailLatency tail_latency;
};

std::string read_file(std::string const& flag, std::string const& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream content;
  content << in.rdbuf();
  if (!in || content.str().empty()) usage_error(flag + ": cannot read '" + path + "'");
  return content.str();
}

int parse_int(std::string_view flag, std::string_view text, int min, int max) {
  int value = 0;
  if (!absl::SimpleAtoi(absl::string_view(text.data(), text.size()), &value) || value < min || value > max) {
    usage_error(std::string(flag) + " wants an integer in [" + std::to_string(min) + ", " +
                std::to_string(max) + "], got '" + std::string(text) + "'");
  }
  return value;
}

// --tail-latency F:D[:SEED], e.g. 0.05:200ms or 5%:200ms:7.
stubkit::testing::FaultInjector::TailLatency parse_tail_latency(absl::string_view value) {
  auto bad = [&](std::string const& why) {
    usage_error("--tail-latency wants F:D[:SEED] such as 0.05:200ms (" + why + "), got '" +
                std::string(value) + "'");
  };
  std::vector<absl::string_view> parts = absl::StrSplit(value, ':');
  if (parts.size() < 2 || parts.size() > 3) bad("two or three parts");
  stubkit::testing::FaultInjector::TailLatency tail;
  absl::string_view fraction = parts[0];
  bool const percent = absl::ConsumeSuffix(&fraction, "%");
  if (!absl::SimpleAtod(fraction, &tail.fraction)) bad("F is not a number");
  if (percent) tail.fraction /= 100;
  absl::Duration delay;
  if (!absl::ParseDuration(parts[1], &delay)) bad("D is not a duration");
  tail.delay = absl::ToChronoMilliseconds(delay);
  if (delay > absl::ZeroDuration() && tail.delay.count() == 0) bad("D below 1ms would turn the delay off");
  if (parts.size() == 3 && !absl::SimpleAtoi(parts[2], &tail.seed)) bad("SEED is not a non-negative integer");
  if (auto problem = tail.problem(); !problem.empty()) bad(problem);
  return tail;
}

Flags parse_flags(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    std::string_view const flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (flag == "--sync") {
      flags.sync = true;
      continue;
    }
    if (flag == "--fault-metadata") {
      flags.fault_metadata = true;
      continue;
    }
    if (i + 1 >= argc) usage_error("missing value after " + std::string(flag));
    std::string_view const value = argv[++i];
    if (flag == "--host") {
      flags.host = std::string(value);
    } else if (flag == "--port") {
      flags.port = parse_int(flag, value, 0, 65535);
    } else if (flag == "--preload") {
      flags.preload = parse_int(flag, value, 0, 10'000'000);
    } else if (flag == "--token") {
      if (value.empty()) usage_error("--token must not be empty");
      flags.token = std::string(value);
    } else if (flag == "--data") {
      if (value.empty()) usage_error("--data must not be empty");
      flags.data = std::string(value);
    } else if (flag == "--server-id") {
      if (value.empty()) usage_error("--server-id must not be empty");
      flags.server_id = std::string(value);
    } else if (flag == "--tls-cert") {
      flags.tls_cert = read_file("--tls-cert", std::string(value));
    } else if (flag == "--tls-key") {
      flags.tls_key = read_file("--tls-key", std::string(value));
    } else if (flag == "--page-token-key-file") {
      if (value.empty()) usage_error("--page-token-key-file must not be empty");
      flags.page_token_key_file = std::string(value);
    } else if (flag == "--metrics-port") {
#if STUBKIT_HAVE_METRICS
      flags.metrics_port = parse_int(flag, value, 0, 65535);
#else
      usage_error("--metrics-port: this user_server was built without prometheus-cpp (prometheus-cpp-dev)");
#endif
    } else if (flag == "--tail-latency") {
      flags.tail_latency = parse_tail_latency(absl::string_view(value.data(), value.size()));
    } else if (flag == "--max-concurrent-streams") {
      flags.max_concurrent_streams = parse_int(flag, value, 1, 1'000'000);
    } else if (flag == "--max-page-size") {
      flags.max_page_size = parse_int(flag, value, 1, 1'000'000);
    } else if (flag == "--heartbeat") {
      absl::Duration d;
      if (!absl::ParseDuration(absl::string_view(value.data(), value.size()), &d) ||
          d <= absl::ZeroDuration()) {
        usage_error("--heartbeat wants a positive duration such as 5s or 250ms, got '" + std::string(value) +
                    "'");
      }
      flags.heartbeat = absl::ToChronoMilliseconds(d);
      if (flags.heartbeat.count() == 0) flags.heartbeat = std::chrono::milliseconds(1);
    } else {
      usage_error("unknown flag " + std::string(flag));
    }
  }
  if (flags.sync && flags.data.empty()) usage_error("--sync needs --data");
  if (flags.tls_cert.empty() != flags.tls_key.empty()) usage_error("--tls-cert and --tls-key go together");
  return flags;
}

}  // namespace

int main(int argc, char** argv) {
  Flags const flags = parse_flags(argc, argv);

  // Block the shutdown signals before gRPC starts its threads, then wait for
  // them on this thread: no work in a signal handler.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  stubkit::testing::EmbeddedServerOptions options;
  options.listen_address = flags.host + ":" + std::to_string(flags.port);
  options.service.token = flags.token;
  options.service.heartbeat_interval = flags.heartbeat;
  options.service.max_page_size = flags.max_page_size;
  options.service.data_path = flags.data;
  options.service.sync_data = flags.sync;
  options.service.server_id = flags.server_id;
  options.service.fault_metadata = flags.fault_metadata;
  options.service.tail_latency = flags.tail_latency;
  options.max_concurrent_streams = flags.max_concurrent_streams;
  options.service.page_token_key_file = flags.page_token_key_file;
  if (!flags.tls_cert.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({flags.tls_key, flags.tls_cert});
    options.credentials = grpc::SslServerCredentials(ssl);
  }
  options.service.warn = [](std::string const& message) { std::cerr << "user_server: " << message << "\n"; };
#if STUBKIT_HAVE_METRICS
  // Declared before the server: the exporter serves while the server
  // runs; the service's gauges are unwatched before the server goes.
  std::optional<stubkit::MetricsServer> metrics;
  std::optional<stubkit::testing::ServerMetrics> server_metrics;
#endif
  std::optional<stubkit::testing::EmbeddedServer> server;
  try {
#if STUBKIT_HAVE_METRICS
    if (flags.metrics_port >= 0) {
      metrics.emplace(flags.host + ":" + std::to_string(flags.metrics_port));
      server_metrics.emplace(*metrics, options);
    }
#endif
    server.emplace(options);
  } catch (std::exception const& e) {
    std::cerr << "user_server: " << e.what() << "\n";
    return 1;
  }
  if (server->service().user_count() == 0) server->service().preload(flags.preload);
#if STUBKIT_HAVE_METRICS
  if (metrics) {
    server_metrics->watch(&server->service());
    std::cout << "metrics on http://" << flags.host << ":" << metrics->port() << "/metrics" << std::endl;
  }
#endif
  std::cout << "listening on " << server->address() << std::endl;

  int received = 0;
  sigwait(&signals, &received);
  std::cerr << "user_server: " << (received == SIGINT ? "SIGINT" : "SIGTERM") << ", shutting down\n";
  server->shutdown(std::chrono::seconds(5));
#if STUBKIT_HAVE_METRICS
  if (server_metrics) server_metrics->watch(nullptr);  // no scrape reads the service from here on
#endif
  return 0;
}
