// Prometheus metrics: MetricsObserver's counters for retried calls, pages
// and throttles; the server interceptor; and a real scrape over HTTP of a
// user_server process and of a client serving its own metrics.
#include "stubkit/metrics.hpp"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <grpcpp/generic/generic_stub.h>
#include <netinet/in.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdlib>
#include <future>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "process.hpp"
#include "stubkit/channel.hpp"
#include "stubkit/paginate.hpp"
#include "stubkit/retry.hpp"
#include "stubkit/testing/metrics.hpp"
#include "stubkit/user_client.hpp"
#include "support.hpp"

using namespace stubkit_tests;
using grpc::StatusCode;

namespace {

constexpr char kGetUser[] = "myservice.v1.UserService/GetUser";
constexpr char kCreateUser[] = "myservice.v1.UserService/CreateUser";
constexpr char kListUsers[] = "myservice.v1.UserService/ListUsers";

// The samples of a Prometheus text exposition: "name{a=\"b\",...}" -> value,
// with the labels as printed (prometheus-cpp sorts them by name).
std::map<std::string, double> parse(std::string const& text) {
  std::map<std::string, double> samples;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    auto const space = line.rfind(' ');
    if (space == std::string::npos) continue;
    samples[line.substr(0, space)] = std::strtod(line.c_str() + space + 1, nullptr);
  }
  return samples;
}

// The value of sample `name` with exactly `labels` (sorted by name, as
// prometheus-cpp prints them); 0 when absent, as a counter never touched.
double sample(std::map<std::string, double> const& samples, std::string const& name,
              std::map<std::string, std::string> const& labels = {}) {
  std::string key = name;
  if (!labels.empty()) {
    key += '{';
    bool first = true;
    for (auto const& [label, value] : labels) {
      if (!first) key += ',';
      first = false;
      key += label + "=\"" + value + "\"";
    }
    key += '}';
  }
  auto it = samples.find(key);
  return it == samples.end() ? 0 : it->second;
}

std::map<std::string, double> collect(prometheus::Registry const& registry) {
  return parse(prometheus::TextSerializer().Serialize(registry.Collect()));
}

// GET http://127.0.0.1:port/metrics, the body.
std::string http_get_metrics(int port) {
  int const fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  timeval timeout{10, 0};  // a hung exporter fails the test instead of hanging it
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  std::string const request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  REQUIRE(write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size()));
  std::string response;
  char buffer[4096];
  for (ssize_t n; (n = read(fd, buffer, sizeof buffer)) > 0;)
    response.append(buffer, static_cast<std::size_t>(n));
  close(fd);
  REQUIRE_MESSAGE(response.rfind("HTTP/1.", 0) == 0, response.substr(0, 200));
  CHECK(response.find(" 200 ") != std::string::npos);
  auto const body = response.find("\r\n\r\n");
  REQUIRE(body != std::string::npos);
  return response.substr(body + 4);
}

// The server calls whose end was recorded: the sum of the duration
// histograms' counts. A call's server side ends a moment after its client
// has the answer, so tests wait for this to reach what they made.
double server_calls_ended(std::map<std::string, double> const& samples) {
  double sum = 0;
  for (auto const& [series, value] : samples) {
    if (series.rfind("grpc_server_call_duration_seconds_count{", 0) == 0) sum += value;
  }
  return sum;
}

// Options of a stubkit::call counted into `registry`, retried without waits.
stubkit::CallOptions counted(std::shared_ptr<prometheus::Registry> const& registry) {
  stubkit::CallOptions options;
  options.observer = std::make_shared<stubkit::MetricsObserver>(registry);
  options.retry = stubkit::RetryPolicy::standard();
  options.clock.sleep = [](std::chrono::milliseconds) {};
  return options;
}

int port_of(std::string const& url) {
  auto const colon = url.rfind(':');
  return std::atoi(url.c_str() + colon + 1);
}

}  // namespace

TEST_SUITE("metrics") {
  TEST_CASE("a retried stubkit::call counts its attempts, retries and one call") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    auto registry = std::make_shared<prometheus::Registry>();
    stubkit::CallOptions options = counted(registry);
    f.server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE, "backend down");
    auto result = stubkit::call(*f.stub, &UserService::Stub::GetUser, get_request("ada"), options);
    REQUIRE(result.ok());
    auto not_found = stubkit::call(*f.stub, &UserService::Stub::GetUser, get_request("nobody"), options);
    REQUIRE(not_found.error().code() == StatusCode::NOT_FOUND);

    auto const s = collect(*registry);
    CHECK(sample(s, "grpc_client_attempt_started_total",
                 {{"grpc_method", kGetUser}, {"stubkit_source", "call"}}) == 4);
    CHECK(sample(s, "grpc_client_attempt_duration_seconds_count",
                 {{"grpc_method", kGetUser}, {"grpc_status", "UNAVAILABLE"}, {"stubkit_source", "call"}}) ==
          2);
    CHECK(sample(s, "grpc_client_call_duration_seconds_count",
                 {{"grpc_method", kGetUser}, {"grpc_status", "OK"}, {"stubkit_source", "call"}}) == 1);
    CHECK(sample(s, "grpc_client_call_duration_seconds_count",
                 {{"grpc_method", kGetUser}, {"grpc_status", "NOT_FOUND"}, {"stubkit_source", "call"}}) == 1);
    CHECK(sample(s, "stubkit_client_retries_total",
                 {{"grpc_method", kGetUser}, {"grpc_status", "UNAVAILABLE"}, {"stubkit_source", "call"}}) ==
          2);
    CHECK(sample(s, "stubkit_client_give_ups_total",
                 {{"grpc_method", kGetUser},
                  {"reason", "status NOT_FOUND is not retryable"},
                  {"stubkit_source", "call"}}) == 1);
    // Durations land in buckets: the +Inf bucket holds every call.
    std::string const bucket = "grpc_client_call_duration_seconds_bucket{grpc_method=\"" +
                               std::string(kGetUser) + "\",grpc_status=\"OK\",stubkit_source=\"call\",le=";
    CHECK(s.at(bucket + "\"+Inf\"}") == 1);
    CHECK(s.at(bucket + "\"1e-05\"}") == 0);
  }

  TEST_CASE("pages, items and stream ends are counted") {
    ServerFixture f;
    for (int i = 0; i < 5; ++i) REQUIRE(f.create("u" + std::to_string(i)).ok());
    auto registry = std::make_shared<prometheus::Registry>();
    auto observer = std::make_shared<stubkit::MetricsObserver>(registry);
    stubkit::PaginateOptions options;
    options.page_size = 2;
    options.observer = observer;
    int items = 0;
    for (auto const& user : stubkit::paginate(*f.stub, &UserService::Stub::ListUsers, {}, options)) {
      REQUIRE(user.ok());
      ++items;
    }
    CHECK(items == 5);
    auto const s = collect(*registry);
    CHECK(sample(s, "stubkit_client_pages_total",
                 {{"grpc_method", kListUsers}, {"grpc_status", "OK"}, {"stubkit_source", "paginate"}}) == 3);
    CHECK(sample(s, "stubkit_client_page_items_total",
                 {{"grpc_method", kListUsers}, {"stubkit_source", "paginate"}}) == 5);
  }

  TEST_CASE("a retry throttle closing and opening again is counted") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    auto registry = std::make_shared<prometheus::Registry>();
    stubkit::CallOptions options = counted(registry);
    options.retry->max_attempts = 2;
    options.throttle = std::make_shared<stubkit::RetryThrottle>(4, 1.0);  // refuses below 2 tokens
    // Two attempts fail (4 -> 2 tokens: refusing), then one not retried.
    f.server.faults().fail_next("GetUser", 3, StatusCode::UNAVAILABLE);
    for (int i = 0; i < 2; ++i) {
      REQUIRE(
          stubkit::call(*f.stub, &UserService::Stub::GetUser, get_request("ada"), options).error().code() ==
          StatusCode::UNAVAILABLE);
    }
    REQUIRE_FALSE(options.throttle->allows_retry());
    for (int i = 0; i < 4; ++i) {
      REQUIRE(stubkit::call(*f.stub, &UserService::Stub::GetUser, get_request("ada"), options).ok());
    }
    REQUIRE(options.throttle->allows_retry());
    auto const s = collect(*registry);
    CHECK(sample(s, "stubkit_client_retry_throttle_changes_total", {{"state", "refusing"}}) == 1);
    CHECK(sample(s, "stubkit_client_retry_throttle_changes_total", {{"state", "allowing"}}) == 1);
  }

  TEST_CASE("bad options are refused with a clear error") {
    auto registry = std::make_shared<prometheus::Registry>();
    stubkit::MetricsOptions options;
    options.latency_buckets = {0.1, 0.1};
    CHECK_THROWS_WITH_AS(stubkit::MetricsObserver(registry, options),
                         "MetricsOptions::latency_buckets must rise strictly", std::invalid_argument);
    CHECK_THROWS_WITH_AS(stubkit::ServerMetricsInterceptorFactory(registry, options),
                         "MetricsOptions::latency_buckets must rise strictly", std::invalid_argument);
    CHECK_THROWS_AS(stubkit::MetricsObserver(nullptr), std::invalid_argument);
    CHECK_THROWS_AS(stubkit::ServerMetricsInterceptorFactory(nullptr), std::invalid_argument);
    stubkit::MetricsServer first("127.0.0.1:0");
    std::string const taken = "127.0.0.1:" + std::to_string(first.port());
    try {
      stubkit::MetricsServer second(taken);
      FAIL("a second server on " << taken << " started");
    } catch (std::runtime_error const& e) {
      CHECK(std::string(e.what()).find("cannot serve metrics on " + taken) == 0);
    }
  }

  TEST_CASE("the server interceptor counts calls by how they ended, unknown methods as other") {
    auto registry = std::make_shared<prometheus::Registry>();
    auto options = tcp_options();
    options.interceptors.push_back(std::make_shared<stubkit::ServerMetricsInterceptorFactory>(registry));
    ServerFixture f(options);
    REQUIRE(f.create("ada").ok());
    REQUIRE(f.create("ada").error_code() == StatusCode::ALREADY_EXISTS);
    myservice::v1::User user;
    REQUIRE(f.stub->GetUser(context().get(), get_request("ada"), &user).ok());
    REQUIRE(f.stub->GetUser(context().get(), get_request("nobody"), &user).error_code() ==
            StatusCode::NOT_FOUND);
    // Calls the client leaves while the handler still works: it finishes
    // them and sends OK, which nobody gets.
    f.server.faults().add_latency("GetUser", std::chrono::milliseconds(300));
    REQUIRE(f.stub->GetUser(context(std::chrono::milliseconds(50)).get(), get_request("ada"), &user)
                .error_code() == StatusCode::DEADLINE_EXCEEDED);
    {
      auto ctx = context();
      std::thread cancel([&ctx] {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        ctx->TryCancel();
      });
      CHECK(f.stub->GetUser(ctx.get(), get_request("ada"), &user).error_code() == StatusCode::CANCELLED);
      cancel.join();
    }
    f.server.faults().clear();
    // Any name a client makes up counts as "other": no new series per name.
    grpc::GenericStub generic(f.server.channel());
    for (int i = 0; i < 3; ++i) {
      grpc::ClientContext ctx;
      grpc::Slice empty("");
      grpc::ByteBuffer request(&empty, 1), response;  // an empty message (a default ByteBuffer is none)
      std::promise<grpc::Status> done;
      generic.UnaryCall(&ctx, "/made.Up/Method" + std::to_string(i), grpc::StubOptions(), &request, &response,
                        [&done](grpc::Status status) { done.set_value(status); });
      CHECK(done.get_future().get().error_code() == StatusCode::UNIMPLEMENTED);
    }
    // 4 GetUser, 2 CreateUser, 3 made up: wait until the server ended all.
    std::map<std::string, double> s = collect(*registry);
    for (int i = 0; i < 500 && server_calls_ended(s) < 9; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      s = collect(*registry);
    }
    CHECK(server_calls_ended(s) == 9);
    CHECK(sample(s, "grpc_server_call_duration_seconds_count",
                 {{"grpc_method", kGetUser}, {"grpc_status", "CANCELLED"}}) == 1);
    CHECK(sample(s, "grpc_server_call_duration_seconds_count",
                 {{"grpc_method", kGetUser}, {"grpc_status", "DEADLINE_EXCEEDED"}}) == 1);
    CHECK(sample(s, "grpc_server_call_started_total", {{"grpc_method", kGetUser}}) == 4);
    CHECK(sample(s, "grpc_server_call_started_total", {{"grpc_method", kCreateUser}}) == 2);
    CHECK(sample(s, "grpc_server_call_duration_seconds_count",
                 {{"grpc_method", kGetUser}, {"grpc_status", "OK"}}) == 1);
    CHECK(sample(s, "grpc_server_call_duration_seconds_count",
                 {{"grpc_method", kGetUser}, {"grpc_status", "NOT_FOUND"}}) == 1);
    CHECK(sample(s, "grpc_server_call_duration_seconds_count",
                 {{"grpc_method", kCreateUser}, {"grpc_status", "OK"}}) == 1);
    CHECK(sample(s, "grpc_server_call_duration_seconds_count",
                 {{"grpc_method", kCreateUser}, {"grpc_status", "ALREADY_EXISTS"}}) == 1);
    CHECK(sample(s, "grpc_server_call_started_total", {{"grpc_method", "other"}}) == 3);
    CHECK(sample(s, "grpc_server_call_duration_seconds_count",
                 {{"grpc_method", "other"}, {"grpc_status", "UNIMPLEMENTED"}}) == 3);
    for (auto const& [series, value] : s) CHECK_MESSAGE(series.find("made.Up") == std::string::npos, series);
  }

  TEST_CASE("a real scrape: user_server's and the client's /metrics equal what was done") {
    char const* user_server = std::getenv("STUBKIT_USER_SERVER");
    REQUIRE_MESSAGE(user_server != nullptr, "the test suite sets STUBKIT_USER_SERVER");
    Process server({user_server, "--metrics-port", "0", "--preload", "4", "--heartbeat", "1h"});
    std::string const metrics_line = server.read_line();
    REQUIRE_MESSAGE(metrics_line.rfind("metrics on http://127.0.0.1:", 0) == 0, metrics_line);
    int const server_port = port_of(metrics_line.substr(0, metrics_line.rfind('/')));
    std::string const address = start_user_server(server);
    REQUIRE(!address.empty());

    // The client serves its own metrics, counted by the channel's observer.
    stubkit::MetricsServer client_metrics("127.0.0.1:0");
    stubkit::ChannelOptions options;
    options.observer = std::make_shared<stubkit::MetricsObserver>(client_metrics.registry());
    auto stub = UserService::NewStub(stubkit::make_channel(address, options));

    int const found = 7, missing = 3, created = 2;
    for (int i = 0; i < created; ++i) {
      myservice::v1::CreateUserRequest request;
      request.mutable_user()->set_id("made" + std::to_string(i));
      request.mutable_user()->set_email("made" + std::to_string(i) + "@example.com");
      myservice::v1::CreateUserResponse response;
      REQUIRE(stub->CreateUser(context().get(), request, &response).ok());
    }
    myservice::v1::User user;
    for (int i = 0; i < found; ++i) REQUIRE(stub->GetUser(context().get(), get_request("made0"), &user).ok());
    for (int i = 0; i < missing; ++i) {
      REQUIRE(stub->GetUser(context().get(), get_request("nobody"), &user).error_code() ==
              StatusCode::NOT_FOUND);
    }
    // One watcher open while the server is scraped.
    auto watch_ctx = context(std::chrono::seconds(30));
    auto watch = stub->WatchUsers(watch_ctx.get(), {});
    myservice::v1::UserEvent first;
    REQUIRE(watch->Read(&first));  // the heartbeat at start: the stream is open

    auto const client = parse(http_get_metrics(client_metrics.port()));
    auto served = parse(http_get_metrics(server_port));
    double const made = found + missing + created;
    for (int i = 0; i < 500 && server_calls_ended(served) < made; ++i) {  // the watch is still open
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      served = parse(http_get_metrics(server_port));
    }
    CHECK(server_calls_ended(served) == made);
    for (auto const& [method, code, count] : std::vector<std::tuple<std::string, std::string, int>>{
             {kGetUser, "OK", found}, {kGetUser, "NOT_FOUND", missing}, {kCreateUser, "OK", created}}) {
      CAPTURE(method);
      CAPTURE(code);
      CHECK(sample(client, "grpc_client_call_duration_seconds_count",
                   {{"grpc_method", method}, {"grpc_status", code}, {"stubkit_source", "channel"}}) == count);
      CHECK(sample(served, "grpc_server_call_duration_seconds_count",
                   {{"grpc_method", method}, {"grpc_status", code}}) == count);
    }
    CHECK(sample(client, "grpc_client_attempt_started_total",
                 {{"grpc_method", kGetUser}, {"stubkit_source", "channel"}}) == found + missing);
    CHECK(sample(served, "grpc_server_call_started_total", {{"grpc_method", kGetUser}}) == found + missing);
    CHECK(sample(served, "stubkit_server_users") == 4 + created);
    CHECK(sample(served, "stubkit_server_watchers") == 1);

    watch_ctx->TryCancel();
    while (watch->Read(&first)) {
    }
    CHECK(watch->Finish().error_code() == StatusCode::CANCELLED);
    for (int i = 0; i < 200 && sample(parse(http_get_metrics(server_port)), "stubkit_server_watchers") != 0;
         ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    CHECK(sample(parse(http_get_metrics(server_port)), "stubkit_server_watchers") == 0);
  }
}
