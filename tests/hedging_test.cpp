// Hedged calls (HedgingPolicy in stubkit::call) against real servers: slow
// backends made with the fault injector's tail latency, failures and
// pushback from its fail_next. Timing margins are wide (a slow attempt
// takes 30 s, a test asserts under 10 s), so a loaded machine slows these
// tests down but does not fail them.
#include <doctest/doctest.h>

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
};

struct Recorder final : stubkit::Observer {
  void on_event(stubkit::Event const& e) override {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back({e.type, e.attempt, e.attempts, e.winner, e.code, std::string(e.reason)});
  }
  std::vector<Seen> of(EventType type) {
    std::lock_guard<std::mutex> lock(mu);
    std::vector<Seen> out;
    for (auto const& e : seen) {
      if (e.type == type) out.push_back(e);
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
    std::vector<std::unique_ptr<stubkit::testing::EmbeddedServer>> servers;
    std::string target = "ipv4:";
    for (int i = 0; i < 3; ++i) {
      auto options = tcp_options();
      options.service.server_id = "backend-" + std::to_string(i);
      servers.push_back(std::make_unique<stubkit::testing::EmbeddedServer>(options));
      servers.back()->service().preload(1);
      target += (i ? "," : "") + servers.back()->address();
    }
    auto& slow = *servers[0];
    make_slow(slow, 30s);
    auto channel = stubkit::make_channel(target);  // round_robin over the three
    REQUIRE(stubkit::wait_until_serving(*channel, "myservice.v1.UserService", 5s).ok());
    auto stub = UserService::NewStub(channel);
    auto recorder = std::make_shared<Recorder>();

    int hedged_calls = 0;
    for (int i = 0; i < 12; ++i) {
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
    // Round robin sent some attempts to the slow backend; each of those calls
    // was answered by a hedge, and the slow attempt was cancelled on the
    // server, not left running for 30 s.
    CHECK(slow.faults().tail_delayed_calls() >= 1);
    CHECK(hedged_calls >= slow.faults().tail_delayed_calls());
    CHECK(slow_calls_cancelled(slow));
    // The observer heard of every hedge, and of each call's winner.
    auto const ends = recorder->of(EventType::kCallEnd);
    REQUIRE(ends.size() == 12);
    int hedges_told = 0;
    for (auto const& end : ends) {
      CHECK(end.winner >= 1);
      hedges_told += end.attempts - 1;
    }
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
    make_slow(slow, 30s);
    auto channel = stubkit::make_channel("ipv4:" + slow.address() + "," + empty.address());
    REQUIRE(stubkit::wait_until_serving(*channel, "myservice.v1.UserService", 5s).ok());
    auto stub = UserService::NewStub(channel);
    for (int i = 0; i < 4; ++i) {
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
}
