// Hedged calls (HedgingPolicy in stubkit::call) against real servers: slow
// backends made with the fault injector's tail latency, failures and
// pushback from its fail_next. Timing margins are wide (a slow attempt
// takes 30 s, a test asserts under 10 s), so a loaded machine slows these
// tests down but does not fail them.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <trompeloeil.hpp>
#include <vector>

#include "stubkit/async.hpp"
#include "stubkit/async_paginate.hpp"
#include "stubkit/channel.hpp"
#include "stubkit/retry.hpp"
#include "stubkit/retry_interceptor.hpp"
#include "stubkit/testing/embedded_server.hpp"
#include "stubkit/testing/mock_user_service.hpp"
#include "support.hpp"

using namespace stubkit_tests;
using grpc::StatusCode;
using myservice::v1::User;
using stubkit::EventType;

namespace {

constexpr char kGetUser[] = "/myservice.v1.UserService/GetUser";

// What the tests read of an event, copied (an Event's views die with the call).
struct Seen {
  EventType type;
  int attempt;
  int attempts;
  int winner;
  StatusCode code;
  std::string reason;
  std::string method;
  std::string peer;
};

struct Recorder final : stubkit::Observer {
  void on_event(stubkit::Event const& e) override {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back({e.type, e.attempt, e.attempts, e.winner, e.code, std::string(e.reason),
                    std::string(e.method), std::string(e.peer)});
  }
  // The events of `type` (of calls of `method` only, when given).
  std::vector<Seen> of(EventType type, std::string const& method = "") {
    std::lock_guard<std::mutex> lock(mu);
    std::vector<Seen> out;
    for (auto const& e : seen) {
      if (e.type == type && (method.empty() || e.method == method)) out.push_back(e);
    }
    return out;
  }
  std::mutex mu;
  std::vector<Seen> seen;
};

// Hedged options with a budget of their own that never runs out, so that
// tests do not share the process's default budget.
stubkit::CallOptions hedged(int max_attempts, std::chrono::milliseconds delay) {
  stubkit::CallOptions options;
  options.hedging = stubkit::HedgingPolicy{};
  options.hedging->max_attempts = max_attempts;
  options.hedging->hedging_delay = delay;
  options.hedging->budget = std::make_shared<stubkit::HedgeBudget>(10.0, 100.0);
  options.timeout = 20s;
  return options;
}

// Every call of `server`'s delayed by `delay` (a slow backend).
void make_slow(stubkit::testing::EmbeddedServer& server, std::chrono::milliseconds delay) {
  server.faults().set_tail_latency({1.0, delay, 1});
}

// Waits (at most 10 s) until every delayed call of `server` ended on the
// server as cancelled; true if they did.
bool slow_calls_cancelled(stubkit::testing::EmbeddedServer& server) {
  auto const until = std::chrono::steady_clock::now() + 10s;
  while (server.service().cancelled_calls() != server.faults().tail_delayed_calls()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// A UserService with one user, u00000001; every call `slow` when given.
struct HedgeFixture : ServerFixture {
  explicit HedgeFixture(std::optional<std::chrono::milliseconds> slow = std::nullopt) {
    server.service().preload(1);
    if (slow) make_slow(server, *slow);
  }
};

// A budget with no hedge left, none earned by calls.
std::shared_ptr<stubkit::HedgeBudget> spent_budget() {
  auto budget = std::make_shared<stubkit::HedgeBudget>(0, 1);
  REQUIRE(budget->try_spend());
  return budget;
}

// The same hedged call, blocking (stubkit::call) or async (async_call):
// each test case runs both ways, as subcases.
enum class Mode { kBlocking, kAsync };
struct Caller {
  Mode mode = Mode::kBlocking;
  stubkit::Result<User> get(UserService::Stub& stub, myservice::v1::GetUserRequest const& request,
                            stubkit::CallOptions const& options) const {
    if (mode == Mode::kBlocking) return stubkit::call(stub, &UserService::Stub::GetUser, request, options);
    return stubkit::async_call(stub, &UserService::Stub::async::GetUser, request, options,
                               stubkit::use_future)
        .get();
  }
  stubkit::Result<myservice::v1::CreateUserResponse> create(UserService::Stub& stub,
                                                            myservice::v1::CreateUserRequest const& request,
                                                            stubkit::CallOptions const& options) const {
    if (mode == Mode::kBlocking) return stubkit::call(stub, &UserService::Stub::CreateUser, request, options);
    return stubkit::async_call(stub, &UserService::Stub::async::CreateUser, request, options,
                               stubkit::use_future)
        .get();
  }
};

// Lists users on `channel` until each of `servers` has served a listing:
// then round robin has every backend connected, and takes them in turn from
// the next call on (before, it picks among those connected so far, maybe
// only one). Listings, so the tests' counts of GetUser stay theirs.
void connect_all(std::shared_ptr<grpc::Channel> const& channel,
                 std::vector<stubkit::testing::EmbeddedServer*> const& servers) {
  auto stub = UserService::NewStub(channel);
  auto const until = std::chrono::steady_clock::now() + 10s;
  auto const unreached = [&] {
    return std::any_of(servers.begin(), servers.end(),
                       [](auto* server) { return server->faults().calls("ListUsers") == 0; });
  };
  while (unreached()) {
    REQUIRE(std::chrono::steady_clock::now() < until);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    myservice::v1::ListUsersResponse page;
    stub->ListUsers(&ctx, myservice::v1::ListUsersRequest{}, &page);
  }
}

// Three backends over TCP (server ids backend-0 to -2) knowing user
// u00000001; once connected, the first answers after 30 s.
struct ThreeBackends {
  ThreeBackends() {
    for (int i = 0; i < 3; ++i) {
      auto options = tcp_options();
      options.service.server_id = "backend-" + std::to_string(i);
      servers.push_back(std::make_unique<stubkit::testing::EmbeddedServer>(options));
      servers.back()->service().preload(1);
      target += (i ? "," : "") + servers.back()->address();
    }
  }
  // Connects `channel` (round robin over `target`) to all three; then the first is slow.
  void connect(std::shared_ptr<grpc::Channel> const& channel) {
    connect_all(channel, {servers[0].get(), servers[1].get(), servers[2].get()});
    make_slow(slow(), 30s);
  }
  stubkit::testing::EmbeddedServer& slow() { return *servers[0]; }
  std::vector<std::unique_ptr<stubkit::testing::EmbeddedServer>> servers;
  std::string target = "ipv4:";  // all three, for round_robin
};

// The stub APIs a call through a hedging channel can come from.
enum class Api { kSync, kCallback, kCompletionQueue };

// One GetUser with `ctx` through `api`; the status the caller sees.
grpc::Status get_via(Api api, UserService::Stub& stub, grpc::ClientContext& ctx,
                     myservice::v1::GetUserRequest const& request, User* user) {
  if (api == Api::kSync) return stub.GetUser(&ctx, request, user);
  if (api == Api::kCallback) {
    // Shared: the gRPC thread may still be inside set_value when get() returns.
    auto status = std::make_shared<std::promise<grpc::Status>>();
    auto answer = status->get_future();
    stub.async()->GetUser(&ctx, &request, user,
                          [status](grpc::Status s) { status->set_value(std::move(s)); });
    return answer.get();
  }
  grpc::CompletionQueue cq;
  grpc::Status status;
  auto rpc = stub.PrepareAsyncGetUser(&ctx, request, &cq);
  rpc->StartCall();
  rpc->Finish(user, &status, &status);
  void* tag = nullptr;
  bool ok = false;
  REQUIRE(cq.Next(&tag, &ok));
  CHECK(tag == &status);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

// A channel's hedging, with a budget of its own that never runs out.
stubkit::RetryInterceptorOptions hedging_channel(int max_attempts, std::chrono::milliseconds delay) {
  stubkit::RetryInterceptorOptions options;
  options.hedging = hedged(max_attempts, delay).hedging;
  return options;
}

// An in-process channel to `server` that hedges with `options`.
std::shared_ptr<grpc::Channel> hedging_to(stubkit::testing::EmbeddedServer& server,
                                          stubkit::RetryInterceptorOptions options) {
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(stubkit::retry_interceptor(std::move(options)));
  return server.channel(std::move(interceptors));
}

// A stub on a channel to `server` that hedges with `options`, observed by `recorder`.
std::unique_ptr<UserService::Stub> observed_hedging(stubkit::testing::EmbeddedServer& server,
                                                    stubkit::RetryInterceptorOptions options,
                                                    std::shared_ptr<Recorder> recorder) {
  options.observer = std::move(recorder);
  return UserService::NewStub(hedging_to(server, std::move(options)));
}

std::string trailer(grpc::ClientContext const& ctx, std::string const& key) {
  auto const& trailers = ctx.GetServerTrailingMetadata();
  auto const it = trailers.find(key);
  return it == trailers.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

TEST_SUITE("hedging") {
  TEST_CASE("the example of docs/hedging.md: a slow server's answer is beaten by a hedge") {
    HedgeFixture fixture;
    // Half the calls take 30 s. Seed 16 draws S.S.S.S.SS..S...S..S (S: slow)
    // for the first 20 calls to arrive: never three slow in a row, so one of
    // each call's three attempts is fast.
    fixture.server.faults().set_tail_latency({0.5, 30s, 16});
    auto& stub = fixture.stub;
    auto const request = get_request("u00000001");
    auto const budget = std::make_shared<stubkit::HedgeBudget>();  // hedges: 10% of calls, plus 10
    for (int i = 0; i < 4; ++i) {
      auto const start = std::chrono::steady_clock::now();
      stubkit::CallOptions options;
      options.timeout = 2s;
      options.hedging = stubkit::HedgingPolicy{};  // 3 attempts at most, UNAVAILABLE is not fatal
      options.hedging->hedging_delay = 20ms;       // about the method's p95 latency
      options.hedging->budget = budget;            // one per backend or client
      stubkit::RetryReport report;
      options.report = &report;
      stubkit::Result<User> user = stubkit::call(*stub, &UserService::Stub::GetUser, request, options);
      // report.attempts: how many were sent; report.winner: whose answer this is
      REQUIRE(user.ok());
      CHECK(seconds_since(start) < 2);
      CHECK(report.winner >= 1);
    }
    CHECK(fixture.server.faults().tail_delayed_calls() >= 4);
    CHECK(slow_calls_cancelled(fixture.server));
  }

  TEST_CASE("the async example of docs/hedging.md: the same, with a callback") {
    HedgeFixture fixture;
    fixture.server.faults().set_tail_latency({0.5, 30s, 16});  // the first attempt is slow, the second not
    auto& stub = fixture.stub;
    auto const request = get_request("u00000001");
    stubkit::CallOptions options;
    options.timeout = 2s;
    options.hedging = stubkit::HedgingPolicy{};
    // Two attempts: with a third, a machine slow enough to keep the fast
    // second one past the delay (sanitizers, load) would send it, and the
    // third draw is slow.
    options.hedging->max_attempts = 2;
    options.hedging->hedging_delay = 20ms;
    options.hedging->budget = std::make_shared<stubkit::HedgeBudget>();
    std::promise<stubkit::Result<User>> answer;
    auto const start = std::chrono::steady_clock::now();
    stubkit::AsyncHandle handle = stubkit::async_call(
        *stub, &UserService::Stub::async::GetUser, request, options,
        [&answer](stubkit::Result<User> user) { answer.set_value(std::move(user)); });  // the first answer
    auto user = answer.get_future().get();
    REQUIRE(user.ok());
    CHECK(seconds_since(start) < 2);
    for (int i = 0; i < 500 && !handle.done(); ++i) std::this_thread::sleep_for(2ms);
    CHECK(handle.done());
    CHECK(fixture.server.faults().tail_delayed_calls() == 1);
    CHECK(slow_calls_cancelled(fixture.server));
  }

  TEST_CASE("with one of three backends slow, hedged calls finish at the speed of the fast ones") {
    Caller caller;
    SUBCASE("blocking") { caller.mode = Mode::kBlocking; }
    SUBCASE("async_call") { caller.mode = Mode::kAsync; }
    ThreeBackends backends;
    auto& slow = backends.slow();
    auto const& target = backends.target;
    auto channel = stubkit::make_channel(target);  // round_robin over the three
    backends.connect(channel);
    auto stub = UserService::NewStub(channel);
    auto recorder = std::make_shared<Recorder>();

    int hedged_calls = 0;
    // 12 calls, and more until one reached the slow backend (a slow attempt
    // that a hedge's answer cancelled before the server began it is not counted).
    int calls = 0;
    for (; calls < 12 || (calls < 60 && slow.faults().tail_delayed_calls() == 0); ++calls) {
      stubkit::RetryReport report;
      std::multimap<std::string, std::string> trailers;
      auto options = hedged(3, 20ms);
      options.report = &report;
      options.trailers = &trailers;
      options.observer = recorder;
      auto const start = std::chrono::steady_clock::now();
      auto user = caller.get(*stub, get_request("u00000001"), options);
      REQUIRE(user.ok());
      CHECK(user->id() == "u00000001");
      CHECK(seconds_since(start) < 10);  // a slow attempt alone takes 30 s
      CHECK(report.winner >= 1);
      CHECK(report.winner <= report.attempts);
      CHECK(report.stop_reason.empty());
      // The trailers are the winner's: a fast backend's, never the slow one's.
      auto const answered = trailers.find("stubkit-server-id");
      REQUIRE(answered != trailers.end());
      CHECK(answered->second != "backend-0");
      if (report.attempts > 1) ++hedged_calls;
    }
    // Round robin sent some attempts to the slow backend; the calls of those
    // were answered by a hedge, and the slow attempts were cancelled on the
    // server, not left running for 30 s.
    CHECK(slow.faults().tail_delayed_calls() >= 1);
    CHECK(hedged_calls >= 1);
    CHECK(slow_calls_cancelled(slow));
    // The observer heard of every hedge, and of each call's winner.
    auto const ends = recorder->of(EventType::kCallEnd);
    REQUIRE(static_cast<int>(ends.size()) == calls);
    int hedges_told = 0;
    for (auto const& end : ends) {
      CHECK(end.winner >= 1);
      hedges_told += end.attempts - 1;
    }
    // Every call's winner was fast, so at most attempts - 1 of its attempts were slow.
    CHECK(slow.faults().tail_delayed_calls() <= hedges_told);
    CHECK(static_cast<int>(recorder->of(EventType::kHedge).size()) == hedges_told);
    for (auto const& hedge : recorder->of(EventType::kHedge)) {
      CHECK(hedge.attempt >= 2);
      CHECK(hedge.reason == "no answer within hedging_delay");
    }
  }

  TEST_CASE("a call that is not idempotent is never hedged; a request_id makes it hedgeable") {
    Caller caller;
    SUBCASE("blocking") { caller.mode = Mode::kBlocking; }
    SUBCASE("async_call") { caller.mode = Mode::kAsync; }
    ServerFixture fixture;
    make_slow(fixture.server, 300ms);
    auto recorder = std::make_shared<Recorder>();
    stubkit::RetryReport report;
    auto options = hedged(3, 10ms);
    options.report = &report;
    options.observer = recorder;
    auto const start = std::chrono::steady_clock::now();
    auto created = caller.create(*fixture.stub, create_user_request("alan"), options);
    REQUIRE(created.ok());
    CHECK(seconds_since(start) >= 0.25);  // it waited for its one slow attempt
    CHECK(report.attempts == 1);
    CHECK(report.winner == 1);
    CHECK(fixture.server.faults().calls("CreateUser") == 1);
    CHECK(recorder->of(EventType::kHedge).empty());

    // With a request_id the server deduplicates: hedges are safe and sent.
    report = {};
    auto again = caller.create(*fixture.stub, create_user_request("grace", "req-grace-1"), options);
    REQUIRE(again.ok());
    CHECK(again->user().id() == "grace");
    CHECK(report.attempts == 3);
    CHECK(fixture.server.faults().calls("CreateUser") == 4);
    CHECK(fixture.server.service().user_count() == 2);
  }

  TEST_CASE("a non-fatal failure sends the next attempt at once; a fatal one ends the call") {
    Caller caller;
    SUBCASE("blocking") { caller.mode = Mode::kBlocking; }
    SUBCASE("async_call") { caller.mode = Mode::kAsync; }
    HedgeFixture fixture;
    auto& faults = fixture.server.faults();
    auto recorder = std::make_shared<Recorder>();
    stubkit::RetryReport report;
    auto options = hedged(3, 30s);  // no hedge would be sent for its delay
    options.report = &report;
    options.observer = recorder;

    faults.fail_next("GetUser", 1, StatusCode::UNAVAILABLE, "backend restarting");
    auto const start = std::chrono::steady_clock::now();
    auto user = caller.get(*fixture.stub, get_request("u00000001"), options);
    REQUIRE(user.ok());
    CHECK(seconds_since(start) < 10);
    CHECK(report.attempts == 2);
    CHECK(report.winner == 2);
    auto const hedges = recorder->of(EventType::kHedge);
    REQUIRE(hedges.size() == 1);
    CHECK(hedges[0].attempt == 2);
    CHECK(hedges[0].reason == "attempt 1 failed with UNAVAILABLE");
    auto const ends = recorder->of(EventType::kCallEnd);
    REQUIRE(ends.size() == 1);
    CHECK(ends[0].winner == 2);
    CHECK(ends[0].attempts == 2);

    // Every attempt fails non-fatally: the last failure is the result.
    faults.fail_next("GetUser", 5, StatusCode::UNAVAILABLE, "down");
    auto down = caller.get(*fixture.stub, get_request("u00000001"), options);
    REQUIRE_FALSE(down.ok());
    CHECK(down.error().code() == StatusCode::UNAVAILABLE);
    CHECK(report.attempts == 3);
    CHECK(report.winner == 3);
    CHECK(report.stop_reason == "max_attempts reached");
    faults.clear();

    // NOT_FOUND is fatal: no hedge, whatever the delay.
    auto missing = caller.get(*fixture.stub, get_request("nobody"), options);
    REQUIRE_FALSE(missing.ok());
    CHECK(missing.error().code() == StatusCode::NOT_FOUND);
    CHECK(report.attempts == 1);
    CHECK(report.stop_reason == "status NOT_FOUND is fatal for hedging");
  }

  TEST_CASE("a fatal status from a hedge ends the call and cancels the slow attempt") {
    Caller caller;
    SUBCASE("blocking") { caller.mode = Mode::kBlocking; }
    SUBCASE("async_call") { caller.mode = Mode::kAsync; }
    // Backend 0 is slow; backend 1 knows no user, so its answer, NOT_FOUND,
    // is fatal. Round robin alternates, so some calls try the slow one first.
    stubkit::testing::EmbeddedServer slow(tcp_options());
    stubkit::testing::EmbeddedServer empty(tcp_options());
    slow.service().preload(1);
    auto channel = stubkit::make_channel("ipv4:" + slow.address() + "," + empty.address());
    connect_all(channel, {&slow, &empty});
    make_slow(slow, 30s);
    auto stub = UserService::NewStub(channel);
    // 4 calls, and more until one reached the slow backend: round robin picks
    // among the backends connected at the time, and a slow attempt cancelled
    // before the server began it is not counted.
    for (int calls = 0; calls < 4 || (calls < 40 && slow.faults().tail_delayed_calls() == 0); ++calls) {
      stubkit::RetryReport report;
      auto options = hedged(2, 20ms);
      options.report = &report;
      auto const start = std::chrono::steady_clock::now();
      auto user = caller.get(*stub, get_request("u00000001"), options);
      REQUIRE_FALSE(user.ok());
      CHECK(user.error().code() == StatusCode::NOT_FOUND);
      CHECK(seconds_since(start) < 10);
      CHECK(report.winner == report.attempts);  // the attempt that reached the empty backend
      CHECK(report.stop_reason == "status NOT_FOUND is fatal for hedging");
    }
    CHECK(slow.faults().tail_delayed_calls() >= 1);
    CHECK(slow_calls_cancelled(slow));
  }

  TEST_CASE("server pushback delays the next attempt, or stops hedging") {
    Caller caller;
    SUBCASE("blocking") { caller.mode = Mode::kBlocking; }
    SUBCASE("async_call") { caller.mode = Mode::kAsync; }
    HedgeFixture fixture;
    auto& faults = fixture.server.faults();
    stubkit::RetryReport report;
    auto options = hedged(3, 30s);
    options.report = &report;

    faults.fail_next_with_pushback("GetUser", 1, StatusCode::UNAVAILABLE, "-1");
    auto refused = caller.get(*fixture.stub, get_request("u00000001"), options);
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().code() == StatusCode::UNAVAILABLE);
    CHECK(report.attempts == 1);
    CHECK(report.stop_reason == "the server asked not to retry");

    faults.fail_next_with_pushback("GetUser", 1, StatusCode::UNAVAILABLE, "200");
    auto const start = std::chrono::steady_clock::now();
    auto user = caller.get(*fixture.stub, get_request("u00000001"), options);
    REQUIRE_MESSAGE(user.ok(), user.error().to_string()
                                   << " after " << report.attempts << " attempts: " << report.stop_reason);
    CHECK(seconds_since(start) >= 0.19);
    CHECK(seconds_since(start) < 10);
    CHECK(report.attempts == 2);
    CHECK(report.winner == 2);
  }

  TEST_CASE("hedges count against the retry throttle, and a closed throttle sends none") {
    Caller caller;
    SUBCASE("blocking") { caller.mode = Mode::kBlocking; }
    SUBCASE("async_call") { caller.mode = Mode::kAsync; }
    HedgeFixture fixture;
    auto throttle = std::make_shared<stubkit::RetryThrottle>(10, 0.5);
    stubkit::RetryReport report;
    auto options = hedged(3, 30s);
    options.report = &report;
    options.throttle = throttle;

    // Two non-fatal failures take a token each; the success gives half back.
    fixture.server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE);
    REQUIRE(caller.get(*fixture.stub, get_request("u00000001"), options).ok());
    CHECK(report.attempts == 3);
    CHECK(throttle->tokens() == doctest::Approx(8.5));

    // Closed (at half or below): a slow call gets no hedge.
    while (throttle->allows_retry()) throttle->on_retryable_failure();
    make_slow(fixture.server, 200ms);
    options.hedging->hedging_delay = 10ms;
    auto user = caller.get(*fixture.stub, get_request("u00000001"), options);
    REQUIRE(user.ok());
    CHECK(report.attempts == 1);
    CHECK(fixture.server.faults().tail_delayed_calls() == 1);
  }

  TEST_CASE("the call's deadline ends every attempt") {
    Caller caller;
    SUBCASE("blocking") { caller.mode = Mode::kBlocking; }
    SUBCASE("async_call") { caller.mode = Mode::kAsync; }
    HedgeFixture fixture(30s);
    stubkit::RetryReport report;
    auto options = hedged(3, 50ms);
    options.timeout = 400ms;
    options.report = &report;
    auto const start = std::chrono::steady_clock::now();
    auto user = caller.get(*fixture.stub, get_request("u00000001"), options);
    REQUIRE_FALSE(user.ok());
    CHECK(user.error().code() == StatusCode::DEADLINE_EXCEEDED);
    CHECK(seconds_since(start) < 10);
    CHECK(report.attempts >= 2);  // 3 unless the machine stalled for 300 ms
    CHECK(report.attempts <= 3);
    // None is left running on the server.
    CHECK(fixture.server.faults().tail_delayed_calls() <= report.attempts);
    CHECK(slow_calls_cancelled(fixture.server));
  }

  TEST_CASE("unusable hedging options are refused before any attempt") {
    Caller caller;
    SUBCASE("blocking") { caller.mode = Mode::kBlocking; }
    SUBCASE("async_call") { caller.mode = Mode::kAsync; }
    ServerFixture fixture;
    auto refused = [&](stubkit::CallOptions const& options) {
      auto user = caller.get(*fixture.stub, get_request("u00000001"), options);
      REQUIRE_FALSE(user.ok());
      CHECK(user.error().code() == StatusCode::INVALID_ARGUMENT);
      return user.error().message();
    };
    CHECK(refused(hedged(1, 10ms)) == "invalid HedgingPolicy: max_attempts must be from 2 to 5, got 1");
    CHECK(refused(hedged(6, 10ms)) == "invalid HedgingPolicy: max_attempts must be from 2 to 5, got 6");
    CHECK(refused(hedged(2, -1ms)) == "invalid HedgingPolicy: hedging_delay must not be negative");
    auto ok_is_not_a_failure = hedged(2, 10ms);
    ok_is_not_a_failure.hedging->non_fatal_codes.push_back(StatusCode::OK);
    CHECK(refused(ok_is_not_a_failure) == "invalid HedgingPolicy: non_fatal_codes must not hold OK");
    auto both = hedged(2, 10ms);
    both.retry = stubkit::RetryPolicy::standard();
    CHECK(refused(both).find("set retry or hedging, not both") != std::string::npos);
    CHECK(fixture.server.faults().calls("GetUser") == 0);
  }

  TEST_CASE("an attempt that throws ends the call with UNKNOWN, not the process") {
    using trompeloeil::_;
    stubkit::testing::MockUserServiceStub stub;
    REQUIRE_CALL(stub, GetUser(_, _, _)).THROW(std::runtime_error("mock failure")).TIMES(2);
    auto options = hedged(2, 0ms);  // both attempts at once
    options.hedging->non_fatal_codes = {StatusCode::UNKNOWN};
    stubkit::RetryReport report;
    options.report = &report;
    auto user = stubkit::call(stub, &UserService::StubInterface::GetUser, get_request("u00000001"), options);
    REQUIRE_FALSE(user.ok());
    CHECK(user.error().code() == StatusCode::UNKNOWN);
    CHECK(user.error().message().find("mock failure") != std::string::npos);
    CHECK(report.attempts == 2);
  }

  TEST_CASE("a clock that throws ends the call with UNKNOWN and cancels its attempts") {
    Caller caller;
    SUBCASE("blocking") { caller.mode = Mode::kBlocking; }
    SUBCASE("async_call") { caller.mode = Mode::kAsync; }
    HedgeFixture fixture(30s);
    stubkit::RetryReport report;
    auto options = hedged(3, 10ms);
    options.timeout = 0ms;
    options.deadline = std::chrono::system_clock::now() + 20s;
    options.clock.now = []() -> std::chrono::system_clock::time_point {
      throw std::runtime_error("clock broke");
    };
    options.report = &report;
    auto const start = std::chrono::steady_clock::now();
    auto user = caller.get(*fixture.stub, get_request("u00000001"), options);
    REQUIRE_FALSE(user.ok());
    CHECK(user.error().code() == StatusCode::UNKNOWN);
    CHECK(user.error().message().find("clock broke") != std::string::npos);
    CHECK(seconds_since(start) < 10);
    CHECK(report.attempts == 1);  // the clock is read before the first hedge
    CHECK(slow_calls_cancelled(fixture.server));
  }

  TEST_CASE("a hedging budget bounds the hedges of many calls; failures do not spend it") {
    Caller caller;
    SUBCASE("blocking") { caller.mode = Mode::kBlocking; }
    SUBCASE("async_call") { caller.mode = Mode::kAsync; }
    HedgeFixture fixture;
    make_slow(fixture.server, 100ms);  // every call slow: each would want hedges
    auto const budget = std::make_shared<stubkit::HedgeBudget>(0.5, 2);
    int sent = 0;
    for (int i = 0; i < 6; ++i) {
      stubkit::RetryReport report;
      auto options = hedged(3, 10ms);
      options.hedging->budget = budget;
      options.report = &report;
      REQUIRE(caller.get(*fixture.stub, get_request("u00000001"), options).ok());
      sent += report.attempts;
      if (report.attempts == 1) CHECK(report.stop_reason.empty());  // it succeeded, budget or not
    }
    // 2 saved up, and half a hedge per call: 2 + 6 * 0.5 = 5 hedges at most.
    CHECK(sent - 6 <= 5);
    CHECK(sent - 6 >= 2);
    CHECK(budget->tokens() < 1);

    // A spent budget still lets an attempt replace a failed one.
    fixture.server.faults().set_tail_latency({});
    fixture.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE);
    stubkit::RetryReport report;
    auto options = hedged(3, 10ms);
    options.hedging->budget = spent_budget();
    options.report = &report;
    REQUIRE(caller.get(*fixture.stub, get_request("u00000001"), options).ok());
    CHECK(report.attempts == 2);
  }

  TEST_CASE("a spent budget leaves a slow call unhedged") {
    Caller caller;
    SUBCASE("blocking") { caller.mode = Mode::kBlocking; }
    SUBCASE("async_call") { caller.mode = Mode::kAsync; }
    HedgeFixture fixture(30s);
    stubkit::RetryReport report;
    auto options = hedged(3, 10ms);
    options.timeout = 300ms;
    options.hedging->budget = spent_budget();
    options.report = &report;
    auto user = caller.get(*fixture.stub, get_request("u00000001"), options);
    REQUIRE_FALSE(user.ok());
    CHECK(user.error().code() == StatusCode::DEADLINE_EXCEEDED);
    CHECK(report.attempts == 1);
    CHECK(report.stop_reason == "status DEADLINE_EXCEEDED is fatal for hedging");
  }

  TEST_CASE("cancelling an async hedged call ends every attempt, on the server too") {
    HedgeFixture fixture(30s);
    stubkit::RetryReport report;
    auto options = hedged(3, 10ms);
    options.report = &report;
    auto const start = std::chrono::steady_clock::now();
    auto future = stubkit::async_call(*fixture.stub, &UserService::Stub::async::GetUser,
                                      get_request("u00000001"), options, stubkit::use_future);
    // All three attempts reach the server, then the caller cancels.
    for (int i = 0; i < 1000 && fixture.server.faults().calls("GetUser") < 3; ++i)
      std::this_thread::sleep_for(5ms);
    REQUIRE(fixture.server.faults().calls("GetUser") == 3);
    future.handle().cancel();
    auto user = future.get();
    REQUIRE_FALSE(user.ok());
    CHECK(user.error().code() == StatusCode::CANCELLED);
    CHECK(seconds_since(start) < 10);
    CHECK(report.attempts == 3);
    CHECK(report.winner == 0);
    CHECK(report.stop_reason == "cancelled");
    CHECK(future.handle().done());
    CHECK(slow_calls_cancelled(fixture.server));
  }

  TEST_CASE("an async listing's page calls hedge with its call options") {
    HedgeFixture fixture;
    fixture.server.service().preload(3);  // 4 users: two pages of 2, and the last page's check
    // Seed 16: the 1st, 3rd, 5th... call to arrive is slow (30 s): each
    // page's first attempt is slow, its hedge fast.
    fixture.server.faults().set_tail_latency({0.5, 30s, 16});
    stubkit::PaginateOptions paging;
    paging.page_size = 2;
    auto const start = std::chrono::steady_clock::now();
    auto items = stubkit::async_paginate(*fixture.stub, &UserService::Stub::async::ListUsers,
                                         myservice::v1::ListUsersRequest{}, paging, hedged(2, 20ms));
    int listed = 0;
    while (auto item = items.next(stubkit::use_future).get()) {
      REQUIRE(item->ok());
      ++listed;
    }
    CHECK(listed == 4);
    CHECK(seconds_since(start) < 10);
    CHECK(fixture.server.faults().tail_delayed_calls() >= 2);
    CHECK(slow_calls_cancelled(fixture.server));
  }

  TEST_CASE("many async hedged calls at once, some cancelled: each completes once") {
    HedgeFixture fixture;
    // A third of the calls take 200 ms; hedges 5 ms apart race them.
    fixture.server.faults().set_tail_latency({0.3, 200ms, 7});
    int const calls = 200;
    std::atomic<int> completed{0};
    std::atomic<int> succeeded{0};
    std::atomic<int> cancelled{0};
    std::vector<std::atomic<int>> completions(calls);
    std::vector<stubkit::AsyncHandle> handles;
    for (int i = 0; i < calls; ++i) {
      auto options = hedged(3, 5ms);
      handles.push_back(stubkit::async_call(*fixture.stub, &UserService::Stub::async::GetUser,
                                            get_request("u00000001"), options,
                                            [&, i](stubkit::Result<User> user) {
                                              ++completions[static_cast<std::size_t>(i)];
                                              if (user.ok()) ++succeeded;
                                              if (!user.ok() && user.error().code() == StatusCode::CANCELLED)
                                                ++cancelled;
                                              ++completed;
                                            }));
      if (i % 4 == 3) handles[static_cast<std::size_t>(i - 1)].cancel();  // one call in four, in flight
    }
    for (int i = 0; i < 2000 && completed < calls; ++i) std::this_thread::sleep_for(5ms);
    REQUIRE(completed == calls);
    for (auto const& handle : handles) {
      for (int i = 0; i < 500 && !handle.done(); ++i) std::this_thread::sleep_for(2ms);
      CHECK(handle.done());
    }
    for (auto const& n : completions) CHECK(n == 1);
    CHECK(succeeded + cancelled == calls);  // nothing else fails
    CHECK(succeeded >= calls * 3 / 4 - 1);  // every call not cancelled succeeds (some cancelled ones too)
  }
  // The same hedging as a channel's policy (the retry interceptor), for
  // plain generated stubs, whichever stub API makes the call.
  TEST_CASE(
      "a hedging channel: with one of three backends slow, calls finish at the speed of the fast ones") {
    Api api = Api::kSync;
    SUBCASE("sync") { api = Api::kSync; }
    SUBCASE("callback") { api = Api::kCallback; }
    SUBCASE("completion queue") { api = Api::kCompletionQueue; }
    ThreeBackends backends;
    auto& slow = backends.slow();
    auto const& target = backends.target;
    auto recorder = std::make_shared<Recorder>();
    stubkit::ChannelOptions channel_options;
    channel_options.retry = hedging_channel(3, 20ms);
    channel_options.retry->observer = recorder;
    auto channel = stubkit::make_channel(target, channel_options);
    backends.connect(channel);
    auto stub = UserService::NewStub(channel);

    // 12 calls, and more until one reached the slow backend (a slow attempt
    // that a hedge's answer cancelled before the server began it is not counted).
    int calls = 0;
    for (; calls < 12 || (calls < 60 && slow.faults().tail_delayed_calls() == 0); ++calls) {
      grpc::ClientContext ctx;
      User user;
      auto const start = std::chrono::steady_clock::now();
      grpc::Status const status = get_via(api, *stub, ctx, get_request("u00000001"), &user);
      REQUIRE_MESSAGE(status.ok(), status.error_message());
      CHECK(user.id() == "u00000001");
      CHECK(seconds_since(start) < 10);  // a slow attempt alone takes 30 s
      // The caller's context holds the winner's trailers: never the slow backend's.
      std::string const answered = trailer(ctx, "stubkit-server-id");
      CHECK(answered.rfind("backend-", 0) == 0);
      CHECK(answered != "backend-0");
    }
    CHECK(slow.faults().tail_delayed_calls() >= 1);
    CHECK(slow_calls_cancelled(slow));
    // (The channel's observer also saw the listings of connect().)
    auto const ends = recorder->of(EventType::kCallEnd, kGetUser);
    REQUIRE(static_cast<int>(ends.size()) == calls);
    int hedges_told = 0;
    for (auto const& end : ends) {
      CHECK(end.code == StatusCode::OK);
      CHECK(end.winner >= 1);
      CHECK(end.winner <= end.attempts);
      CHECK(end.peer.rfind("ipv4:127.0.0.1:", 0) == 0);  // who answered
      CHECK(end.peer.find(":" + std::to_string(slow.port())) == std::string::npos);
      hedges_told += end.attempts - 1;
    }
    CHECK(hedges_told >= slow.faults().tail_delayed_calls());
    CHECK(static_cast<int>(recorder->of(EventType::kHedge, kGetUser).size()) == hedges_told);
  }

  TEST_CASE("a hedging channel hedges only calls that are safe to repeat") {
    HedgeFixture fixture;
    make_slow(fixture.server, 1s);
    auto stub = UserService::NewStub(hedging_to(fixture.server, hedging_channel(3, 10ms)));
    grpc::ClientContext plain;
    myservice::v1::CreateUserResponse created;
    REQUIRE(stub->CreateUser(&plain, create_user_request("alan"), &created).ok());
    CHECK(fixture.server.faults().calls("CreateUser") == 1);

    // A request_id makes it safe: the server deduplicates the hedges.
    grpc::ClientContext keyed;
    REQUIRE(stub->CreateUser(&keyed, create_user_request("grace", "req-grace-1"), &created).ok());
    CHECK(created.user().id() == "grace");
    CHECK(fixture.server.faults().calls("CreateUser") == 4);
    CHECK(fixture.server.service().user_count() == 3);  // u00000001, alan, grace
    // Each hedge says how many attempts went before it.
    CHECK(fixture.server.faults().attempt_headers("CreateUser") ==
          std::vector<std::string>{"", "", "1", "2"});
  }

  TEST_CASE("a hedging channel: per-call controls, failures and their details reach the caller") {
    HedgeFixture fixture;
    auto& faults = fixture.server.faults();
    auto options = hedging_channel(3, 30s);
    options.throttle = nullptr;  // this case fails many attempts on purpose
    auto stub = UserService::NewStub(hedging_to(fixture.server, options));
    User user;

    // A non-fatal failure sends the next attempt at once.
    faults.fail_next("GetUser", 1, StatusCode::UNAVAILABLE, "backend restarting");
    grpc::ClientContext retried;
    auto const start = std::chrono::steady_clock::now();
    REQUIRE(stub->GetUser(&retried, get_request("u00000001"), &user).ok());
    CHECK(seconds_since(start) < 10);
    CHECK(faults.calls("GetUser") == 2);

    // A fatal status ends the call with the server's own status.
    grpc::ClientContext missing;
    grpc::Status const not_found = stub->GetUser(&missing, get_request("nobody"), &user);
    CHECK(not_found.error_code() == StatusCode::NOT_FOUND);
    CHECK(not_found.error_message().find("nobody") != std::string::npos);
    auto const info = stubkit::Error::from(not_found).details<google::rpc::ResourceInfo>();
    REQUIRE(info);  // its google.rpc details came through
    CHECK(info->resource_name() == "nobody");
    CHECK(faults.calls("GetUser") == 3);

    // Every attempt fails: the last failure is the result.
    faults.fail_next("GetUser", 5, StatusCode::UNAVAILABLE, "down");
    grpc::ClientContext down;
    CHECK(stub->GetUser(&down, get_request("u00000001"), &user).error_code() == StatusCode::UNAVAILABLE);
    CHECK(faults.calls("GetUser") == 6);
    faults.clear();

    // set_max_attempts bounds the attempts; 1 or disable_retries: one attempt.
    faults.fail_next("GetUser", 5, StatusCode::UNAVAILABLE, "down");
    grpc::ClientContext two;
    stubkit::set_max_attempts(two, 2);
    CHECK(stub->GetUser(&two, get_request("u00000001"), &user).error_code() == StatusCode::UNAVAILABLE);
    CHECK(faults.calls("GetUser") == 8);
    grpc::ClientContext one;
    stubkit::set_max_attempts(one, 1);
    CHECK(stub->GetUser(&one, get_request("u00000001"), &user).error_code() == StatusCode::UNAVAILABLE);
    CHECK(faults.calls("GetUser") == 9);
    grpc::ClientContext off;
    stubkit::disable_retries(off);
    CHECK(stub->GetUser(&off, get_request("u00000001"), &user).error_code() == StatusCode::UNAVAILABLE);
    CHECK(faults.calls("GetUser") == 10);
    faults.clear();

    // A typo in the control is refused before anything is sent.
    grpc::ClientContext typo;
    typo.AddMetadata(stubkit::kRetryControlKey, "attempts=two");
    CHECK(stub->GetUser(&typo, get_request("u00000001"), &user).error_code() == StatusCode::INVALID_ARGUMENT);
    CHECK(faults.calls("GetUser") == 10);
  }

  TEST_CASE("a hedging channel: the caller's cancel and deadline end every attempt, on the server too") {
    Api api = Api::kSync;
    SUBCASE("sync") { api = Api::kSync; }
    SUBCASE("callback") { api = Api::kCallback; }
    SUBCASE("completion queue") { api = Api::kCompletionQueue; }
    HedgeFixture fixture(30s);
    auto recorder = std::make_shared<Recorder>();
    auto stub = observed_hedging(fixture.server, hedging_channel(3, 10ms), recorder);

    grpc::ClientContext ctx;
    User user;
    auto const start = std::chrono::steady_clock::now();
    auto call = std::async(std::launch::async,
                           [&] { return get_via(api, *stub, ctx, get_request("u00000001"), &user); });
    for (int i = 0; i < 1000 && fixture.server.faults().calls("GetUser") < 3; ++i)
      std::this_thread::sleep_for(5ms);
    REQUIRE(fixture.server.faults().calls("GetUser") == 3);
    ctx.TryCancel();
    CHECK(call.get().error_code() == StatusCode::CANCELLED);
    CHECK(seconds_since(start) < 10);
    CHECK(slow_calls_cancelled(fixture.server));
    auto const ends = recorder->of(EventType::kCallEnd);
    REQUIRE(ends.size() == 1);
    CHECK(ends[0].attempts == 3);
    CHECK(ends[0].winner == 0);
    CHECK(ends[0].code == StatusCode::CANCELLED);

    grpc::ClientContext timed;
    timed.set_deadline(std::chrono::system_clock::now() + 400ms);
    auto const timed_start = std::chrono::steady_clock::now();
    CHECK(get_via(api, *stub, timed, get_request("u00000001"), &user).error_code() ==
          StatusCode::DEADLINE_EXCEEDED);
    CHECK(seconds_since(timed_start) < 10);
    CHECK(fixture.server.faults().calls("GetUser") >= 5);  // 6 unless the machine stalled for 380 ms
    CHECK(fixture.server.faults().calls("GetUser") <= 6);
    CHECK(slow_calls_cancelled(fixture.server));
  }

  TEST_CASE("a hedging channel: a cancel while the server's pushback holds the next attempt ends the call") {
    Api api = Api::kSync;
    SUBCASE("sync") { api = Api::kSync; }
    SUBCASE("callback") { api = Api::kCallback; }
    HedgeFixture fixture;
    fixture.server.faults().fail_next_with_pushback("GetUser", 1, StatusCode::UNAVAILABLE, "30000");
    auto recorder = std::make_shared<Recorder>();
    auto stub = observed_hedging(fixture.server, hedging_channel(3, 30s), recorder);
    grpc::ClientContext ctx;
    User user;
    auto call = std::async(std::launch::async,
                           [&] { return get_via(api, *stub, ctx, get_request("u00000001"), &user); });
    // The first attempt failed; the next waits out the server's 30 s, with no attempt in flight.
    for (int i = 0; i < 1000 && recorder->of(EventType::kAttemptEnd).empty(); ++i)
      std::this_thread::sleep_for(5ms);
    REQUIRE(recorder->of(EventType::kAttemptEnd).size() == 1);
    auto const start = std::chrono::steady_clock::now();
    ctx.TryCancel();
    CHECK(call.get().error_code() == StatusCode::CANCELLED);
    CHECK(seconds_since(start) < 10);
    CHECK(fixture.server.faults().calls("GetUser") == 1);
    auto const ends = recorder->of(EventType::kCallEnd);
    REQUIRE(ends.size() == 1);
    CHECK(ends[0].attempts == 1);
    CHECK(ends[0].code == StatusCode::CANCELLED);
  }

  TEST_CASE("a hedging channel: a closed throttle sends no hedge; unusable policies are refused") {
    HedgeFixture fixture;
    make_slow(fixture.server, 200ms);
    auto options = hedging_channel(3, 10ms);
    options.throttle = std::make_shared<stubkit::RetryThrottle>(10, 0.5);
    while (options.throttle->allows_retry()) options.throttle->on_retryable_failure();
    auto stub = UserService::NewStub(hedging_to(fixture.server, options));
    grpc::ClientContext ctx;
    User user;
    REQUIRE(stub->GetUser(&ctx, get_request("u00000001"), &user).ok());
    CHECK(fixture.server.faults().calls("GetUser") == 1);
    // The same call with the throttle open is hedged.
    auto open = UserService::NewStub(hedging_to(fixture.server, hedging_channel(3, 10ms)));
    grpc::ClientContext hedged_ctx;
    REQUIRE(open->GetUser(&hedged_ctx, get_request("u00000001"), &user).ok());
    CHECK(fixture.server.faults().calls("GetUser") == 4);

    auto refused = [](int max_attempts, std::chrono::milliseconds delay) {
      try {
        stubkit::retry_interceptor(hedging_channel(max_attempts, delay));
      } catch (std::invalid_argument const& e) {
        return std::string(e.what());
      }
      return std::string("accepted");
    };
    CHECK(refused(1, 10ms) ==
          "stubkit::retry_interceptor: invalid HedgingPolicy: max_attempts must be from 2 to 5, got 1");
    CHECK(refused(2, -1ms) ==
          "stubkit::retry_interceptor: invalid HedgingPolicy: hedging_delay must not be negative");
    stubkit::ChannelOptions bad;
    bad.retry = hedging_channel(6, 10ms);
    CHECK_THROWS_AS(stubkit::make_channel("localhost:1", bad), std::invalid_argument);
  }

  TEST_CASE("many hedged callback calls through a hedging channel, some cancelled: each completes once") {
    HedgeFixture fixture;
    fixture.server.faults().set_tail_latency({0.3, 200ms, 7});
    auto stub = UserService::NewStub(hedging_to(fixture.server, hedging_channel(3, 5ms)));
    int const calls = 200;
    struct Call {
      grpc::ClientContext ctx;
      myservice::v1::GetUserRequest request = get_request("u00000001");
      User user;
      std::atomic<int> completions{0};
      grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
    };
    std::vector<std::unique_ptr<Call>> in_flight;
    std::atomic<int> completed{0};
    for (int i = 0; i < calls; ++i) {
      in_flight.push_back(std::make_unique<Call>());
      Call& call = *in_flight.back();
      stub->async()->GetUser(&call.ctx, &call.request, &call.user, [&call, &completed](grpc::Status status) {
        call.code = status.error_code();
        ++call.completions;
        ++completed;
      });
      if (i % 4 == 3) in_flight[static_cast<std::size_t>(i - 1)]->ctx.TryCancel();
    }
    for (int i = 0; i < 2000 && completed < calls; ++i) std::this_thread::sleep_for(5ms);
    REQUIRE(completed == calls);
    int succeeded = 0;
    int cancelled = 0;
    for (auto const& call : in_flight) {
      CHECK(call->completions == 1);
      if (call->code == StatusCode::OK) {
        ++succeeded;
        CHECK(call->user.id() == "u00000001");
      }
      if (call->code == StatusCode::CANCELLED) ++cancelled;
    }
    CHECK(succeeded + cancelled == calls);
    CHECK(succeeded >= calls * 3 / 4 - 1);
  }
}
