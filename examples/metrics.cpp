// metrics: Prometheus metrics of a client's calls, and of the server's.
//
// Shows: a MetricsServer serving /metrics over HTTP, a MetricsObserver made
// the default observer (one line: every call stubkit makes is counted), the
// server side counted by ServerMetricsInterceptorFactory (what
// `user_server --metrics-port` does), and the samples a scrape returns.
// Needs prometheus-cpp (Debian: prometheus-cpp-dev).
//
// Faults are asked of the server with the stubkit-fault request header, so
// the same code runs against the embedded server and against
// `user_server --preload 30 --fault-metadata --metrics-port 9465`.
//
//   metrics [--target HOST:PORT] [--token T]
#include "stubkit/metrics.hpp"

#include <prometheus/text_serializer.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include "example.hpp"
#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/paginate.hpp"
#include "stubkit/testing/metrics.hpp"
#include "stubkit/user_client.hpp"

using myservice::v1::UserService;
using namespace std::chrono_literals;

// The samples of `registry` whose line starts with one of `prefixes`, as
// /metrics serves them.
void print(prometheus::Registry const& registry, std::initializer_list<char const*> prefixes) {
  std::istringstream text(prometheus::TextSerializer().Serialize(registry.Collect()));
  for (std::string line; std::getline(text, line);) {
    for (char const* prefix : prefixes) {
      if (line.rfind(prefix, 0) == 0) std::cout << "  " << line << "\n";
    }
  }
}

// The value of the sample printed as `series` ("name{labels}"), 0 if none.
double value(prometheus::Registry const& registry, std::string const& series) {
  std::istringstream text(prometheus::TextSerializer().Serialize(registry.Collect()));
  for (std::string line; std::getline(text, line);) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return 0;
}

int main(int argc, char** argv) {
  auto const flags = example::parse(argc, argv, "metrics", "Prometheus metrics of client and server",
                                    "user_server --preload 30 --fault-metadata --metrics-port 9465");

  // The client's metrics: served on a free port, fed by every call.
  stubkit::MetricsServer client_metrics("127.0.0.1:0");
  stubkit::set_default_observer(std::make_shared<stubkit::MetricsObserver>(client_metrics.registry()));
  std::cout << "client metrics on http://127.0.0.1:" << client_metrics.port() << "/metrics\n";

  // The embedded server's metrics, as user_server --metrics-port serves them.
  std::optional<stubkit::MetricsServer> server_metrics;
  std::optional<stubkit::testing::ServerMetrics> server_side;
  example::Servers servers(flags, /*preload=*/30, 1, [&](stubkit::testing::EmbeddedServerOptions& options) {
    server_metrics.emplace("127.0.0.1:0");
    server_side.emplace(*server_metrics, options);
  });
  if (server_side) {
    server_side->watch(&servers.embedded().service());
    std::cout << "server metrics on http://127.0.0.1:" << server_metrics->port() << "/metrics\n";
  }

  stubkit::ChannelOptions channel_options;
  channel_options.retry = stubkit::RetryInterceptorOptions{};
  auto stub = UserService::NewStub(servers.channel(channel_options));
  myservice::v1::GetUserRequest request;
  myservice::v1::User user;
  bool ok = true;
  for (int i = 0; i < 5; ++i) {  // found
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    if (i == 0) ctx.AddMetadata("stubkit-fault", "code=UNAVAILABLE,attempts=1");  // one retry
    request.set_id("u0000000" + std::to_string(i + 1));
    ok = stub->GetUser(&ctx, request, &user).ok() && ok;
  }
  for (int i = 0; i < 2; ++i) {  // not found
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    request.set_id("nobody-" + example::run_tag());
    ok = stub->GetUser(&ctx, request, &user).error_code() == grpc::StatusCode::NOT_FOUND && ok;
  }
  stubkit::PaginateOptions paging;
  paging.page_size = 10;
  paging.max_items = 25;
  auto users =
      stubkit::paginate(*stub, &UserService::Stub::ListUsers, myservice::v1::ListUsersRequest(), paging)
          .collect();
  ok = ok && users.ok() && users->size() == 25;

  std::cout << "client, after 7 GetUser (1 retried, 2 not found) and a listing of 3 pages:\n";
  print(*client_metrics.registry(),
        {"grpc_client_attempt_started_total", "grpc_client_call_duration_seconds_count",
         "stubkit_client_retries_total", "stubkit_client_pages_total", "stubkit_client_page_items_total"});
  std::string const get_user = "{grpc_method=\"myservice.v1.UserService/GetUser\",";
  ok = ok && value(*client_metrics.registry(), "grpc_client_call_duration_seconds_count" + get_user +
                                                   "grpc_status=\"OK\",stubkit_source=\"channel\"}") == 5;
  ok = ok && value(*client_metrics.registry(),
                   "grpc_client_attempt_started_total" + get_user + "stubkit_source=\"channel\"}") == 8;
  if (server_metrics) {
    // A call's server side ends a moment after its client has the answer.
    std::string const server_ok =
        "grpc_server_call_duration_seconds_count" + get_user + "grpc_status=\"OK\"}";
    for (int i = 0; i < 200 && value(*server_metrics->registry(), server_ok) < 5; ++i) {
      std::this_thread::sleep_for(10ms);
    }
    std::cout << "server:\n";
    print(*server_metrics->registry(), {"grpc_server_call_duration_seconds_count"});
    // The retried call's first attempt failed on the server too: 8 GetUser there.
    ok = ok && value(*server_metrics->registry(),
                     "grpc_server_call_duration_seconds_count" + get_user + "grpc_status=\"OK\"}") == 5;
  }
  stubkit::set_default_observer(nullptr);
  if (server_side) server_side->watch(nullptr);  // before the embedded server goes
  return ok ? 0 : 1;
}
