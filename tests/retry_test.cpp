// Retries: policy, backoff, throttle, idempotency and pushback, exercised
// through stubkit::call against the embedded server's fault injection, with
// an injected clock and sleeper so nothing really waits.
#include "stubkit/retry.hpp"

#include <doctest/doctest.h>

#include <limits>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "stubkit/async.hpp"
#include "stubkit/deadline.hpp"
#include "support.hpp"

using namespace stubkit_tests;
using grpc::StatusCode;
using myservice::v1::User;
using Stub = UserService::Stub;

namespace {

// A fake clock that advances only when the retry loop sleeps.
struct FakeTime {
  std::chrono::system_clock::time_point now = std::chrono::system_clock::now();
  std::vector<std::chrono::milliseconds> sleeps;

  stubkit::RetryClock clock(double random01 = 0.5) {
    stubkit::RetryClock c;
    c.now = [this] { return now; };
    c.sleep = [this](std::chrono::milliseconds d) {
      sleeps.push_back(d);
      now += d;
    };
    c.random01 = [random01] { return random01; };
    return c;
  }
};

// The retry rules hold whichever way a call is made: the cases below run
// once through each driver.
template <typename Request>
struct Rpc;
template <>
struct Rpc<myservice::v1::GetUserRequest> {
  static constexpr auto sync = &Stub::GetUser;
  static constexpr stubkit::AsyncUnaryMethod<class Stub::async, myservice::v1::GetUserRequest, User> async =
      &Stub::async::GetUser;
};
template <>
struct Rpc<myservice::v1::CreateUserRequest> {
  static constexpr auto sync = &Stub::CreateUser;
  static constexpr stubkit::AsyncUnaryMethod<class Stub::async, myservice::v1::CreateUserRequest,
                                             myservice::v1::CreateUserResponse>
      async = &Stub::async::CreateUser;
};

// stubkit::call: attempts and sleeps on the caller's thread.
struct BlockingCall {
  template <typename Request>
  static auto call(Stub& stub, Request const& request, stubkit::CallOptions const& options) {
    return stubkit::call(stub, Rpc<Request>::sync, request, options);
  }
};

// stubkit::async_call: attempts on gRPC's callback API; an injected sleeper
// becomes the async call's schedule (it records the wait and goes on at once).
struct AsyncCall {
  template <typename Request>
  static auto call(Stub& stub, Request const& request, stubkit::CallOptions options) {
    if (options.clock.sleep && !options.schedule) {
      options.schedule = [sleep = options.clock.sleep](std::chrono::milliseconds delay,
                                                       std::function<void()> done) {
        sleep(delay);
        done();
      };
    }
    auto future =
        stubkit::async_call(stub, Rpc<Request>::async, request, std::move(options), stubkit::use_future);
    REQUIRE(future.wait_for(60s) == std::future_status::ready);
    return future.get();
  }
};

// A case of the table: its body runs once per driver.
struct Driver {
  char const* name;
  bool async;
  template <typename Request>
  auto call(Stub& stub, Request const& request, stubkit::CallOptions const& options) const {
    return async ? AsyncCall::call(stub, request, options) : BlockingCall::call(stub, request, options);
  }
};
constexpr Driver kDrivers[] = {{"stubkit::call", false}, {"stubkit::async_call", true}};

#define RETRY_CASE_WITH(title, body)        \
  static void body(Driver const& driver);   \
  TEST_CASE(title) {                        \
    for (Driver const& driver : kDrivers) { \
      CAPTURE(driver.name);                 \
      body(driver);                         \
    }                                       \
  }                                         \
  static void body(Driver const& driver)
#define RETRY_CASE(title) RETRY_CASE_WITH(title, DOCTEST_CAT(retry_case_, __LINE__))

stubkit::CallOptions retrying(FakeTime& time, stubkit::RetryReport* report = nullptr) {
  stubkit::CallOptions options;
  options.retry = stubkit::RetryPolicy::standard();
  options.clock = time.clock();
  options.report = report;
  return options;
}

}  // namespace

TEST_SUITE("retry") {
  RETRY_CASE("a call succeeds after N UNAVAILABLE, and the server sees the attempt number") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    f.server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE);
    FakeTime time;
    stubkit::RetryReport report;
    auto user = driver.call(*f.stub, get_request("ada"), retrying(time, &report));
    REQUIRE(user.ok());
    CHECK(user->email() == "ada@example.com");
    CHECK(f.server.faults().calls("GetUser") == 3);
    CHECK(report.attempts == 3);
    CHECK(time.sleeps.size() == 2);
    CHECK(f.server.faults().attempt_headers("GetUser") == std::vector<std::string>{"", "1", "2"});
  }

  RETRY_CASE("trailers hold the trailing metadata of the last attempt only") {
    stubkit::testing::EmbeddedServerOptions options;
    options.service.server_id = "backend-2";
    ServerFixture f(options);
    REQUIRE(f.create("ada").ok());
    f.server.faults().fail_next_with_pushback("GetUser", 1, StatusCode::UNAVAILABLE, "10");
    FakeTime time;
    std::multimap<std::string, std::string> trailers{{"stale", "entry"}};
    auto call = retrying(time);
    call.trailers = &trailers;
    REQUIRE(driver.call(*f.stub, get_request("ada"), call).ok());
    CHECK(time.sleeps == std::vector<std::chrono::milliseconds>{10ms});  // the first attempt had pushback
    CHECK(trailers.count("grpc-retry-pushback-ms") == 0);
    CHECK(trailers.count("stale") == 0);
    REQUIRE(trailers.count("stubkit-server-id") == 1);
    CHECK(trailers.find("stubkit-server-id")->second == "backend-2");
  }

  RETRY_CASE("wait_for_ready waits for a backend that is not up yet; without it the call fails at once") {
    int port = 0;
    {
      stubkit::testing::EmbeddedServer probe(tcp_options());
      port = probe.port();
    }
    std::string const address = "127.0.0.1:" + std::to_string(port);
    auto stub = UserService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    stubkit::CallOptions options;
    options.timeout = 10s;
    auto const fail_fast = driver.call(*stub, get_request("ada"), options);
    REQUIRE_FALSE(fail_fast.ok());
    CHECK(fail_fast.error().code() == StatusCode::UNAVAILABLE);

    options.wait_for_ready = true;
    std::unique_ptr<stubkit::testing::EmbeddedServer> late;
    std::thread starter([&] {
      std::this_thread::sleep_for(300ms);
      auto server_options = tcp_options();
      server_options.listen_address = address;
      late = std::make_unique<stubkit::testing::EmbeddedServer>(server_options);
    });
    auto const waited = driver.call(*stub, get_request("ada"), options);
    starter.join();
    REQUIRE_FALSE(waited.ok());
    CHECK(waited.error().code() == StatusCode::NOT_FOUND);  // it reached the late server
  }

  RETRY_CASE("retries stop at max_attempts with the last status") {
    ServerFixture f;
    f.server.faults().fail_next("GetUser", 10, StatusCode::UNAVAILABLE, "still down");
    FakeTime time;
    stubkit::RetryReport report;
    auto options = retrying(time, &report);
    options.retry->max_attempts = 3;
    auto user = driver.call(*f.stub, get_request("ada"), options);
    REQUIRE_FALSE(user.ok());
    CHECK(user.error().is<stubkit::Unavailable>());
    CHECK(user.error().message() == "still down");
    CHECK(f.server.faults().calls("GetUser") == 3);
    CHECK(report.stop_reason == "max_attempts reached");
  }

  RETRY_CASE("codes outside the policy are not retried") {
    ServerFixture f;
    FakeTime time;
    auto user = driver.call(*f.stub, get_request("nobody"), retrying(time));
    CHECK(user.error().is<stubkit::NotFound>());
    CHECK(f.server.faults().calls("GetUser") == 1);
    CHECK(time.sleeps.empty());
  }

  RETRY_CASE("a non-idempotent CreateUser without request_id is attempted exactly once") {
    ServerFixture f;
    f.server.faults().fail_after_next("CreateUser", 1, StatusCode::UNAVAILABLE);
    FakeTime time;
    stubkit::RetryReport report;
    myservice::v1::CreateUserRequest request;
    request.mutable_user()->set_id("ada");
    auto created = driver.call(*f.stub, request, retrying(time, &report));
    CHECK(created.error().is<stubkit::Unavailable>());
    CHECK(f.server.faults().calls("CreateUser") == 1);
    CHECK(report.stop_reason.find("not idempotent") != std::string::npos);
  }

  RETRY_CASE("CreateUser with a request_id is retried after a lost reply and creates no duplicate") {
    ServerFixture f;
    f.server.faults().fail_after_next("CreateUser", 2, StatusCode::UNAVAILABLE);
    FakeTime time;
    myservice::v1::CreateUserRequest request;
    request.mutable_user()->set_display_name("no id: the server assigns one");
    request.set_request_id("req-42");
    auto created = driver.call(*f.stub, request, retrying(time));
    REQUIRE(created.ok());
    CHECK_FALSE(created->user().id().empty());
    CHECK(f.server.faults().calls("CreateUser") == 3);
    CHECK(f.server.service().user_count() == 1);
  }

  RETRY_CASE("the caller can mark a call idempotent, or not") {
    ServerFixture f;
    FakeTime time;
    f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE);
    auto options = retrying(time);
    options.idempotent = false;
    CHECK(driver.call(*f.stub, get_request("x"), options).error().is<stubkit::Unavailable>());
    CHECK(f.server.faults().calls("GetUser") == 1);
  }

  RETRY_CASE("a RetryInfo delay from the server replaces the backoff") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE, "busy", 700ms);
    FakeTime time;
    REQUIRE(driver.call(*f.stub, get_request("ada"), retrying(time)).ok());
    CHECK(time.sleeps == std::vector<std::chrono::milliseconds>{700ms});
  }

  RETRY_CASE("grpc-retry-pushback-ms sets the delay; negative or malformed stops retrying") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    FakeTime time;
    f.server.faults().fail_next_with_pushback("GetUser", 1, StatusCode::UNAVAILABLE, "250");
    REQUIRE(driver.call(*f.stub, get_request("ada"), retrying(time)).ok());
    CHECK(time.sleeps == std::vector<std::chrono::milliseconds>{250ms});

    for (std::string bad : {"-1", "soon", ""}) {
      f.server.faults().fail_next_with_pushback("GetUser", 1, StatusCode::UNAVAILABLE, bad);
      auto const before = f.server.faults().calls("GetUser");
      stubkit::RetryReport report;
      auto user = driver.call(*f.stub, get_request("ada"), retrying(time, &report));
      if (bad.empty()) {  // an empty trailer is no pushback at all: retried
        CHECK(user.ok());
        continue;
      }
      CHECK_MESSAGE(user.error().is<stubkit::Unavailable>(), bad);
      CHECK(f.server.faults().calls("GetUser") == before + 1);
      CHECK(report.stop_reason == "the server asked not to retry");
    }
  }

  RETRY_CASE("hostile pushback and RetryInfo values give bounded waits") {
    using stubkit::kMaxServerRetryDelay;
    auto pushback = [](std::string value) {
      std::multimap<grpc::string_ref, grpc::string_ref> trailers;
      trailers.emplace(stubkit::kPushbackKey, value);
      return stubkit::detail::parse_pushback(trailers);
    };
    CHECK(pushback("250") == 250);
    CHECK(pushback("99999999999999999999999999") == kMaxServerRetryDelay.count());  // no overflow
    CHECK(pushback("-5") == -1);
    CHECK(pushback("1e3") == -1);
    CHECK(pushback("12 ") == -1);

    auto info = [](std::int64_t seconds, std::int32_t nanos) {
      google::rpc::RetryInfo retry;
      retry.mutable_retry_delay()->set_seconds(seconds);
      retry.mutable_retry_delay()->set_nanos(nanos);
      return stubkit::detail::retry_info_delay(
          stubkit::Error(StatusCode::UNAVAILABLE, "busy").with(retry).to_grpc_status());
    };
    CHECK(info(1, 500000000) == 1500ms);
    CHECK(info(std::numeric_limits<std::int64_t>::max(), 999999999) == kMaxServerRetryDelay);
    CHECK(info(std::numeric_limits<std::int64_t>::min(), 0) == 0ms);
    CHECK(info(-1, 999999999) == 0ms);
    CHECK(info(0, -5) == 0ms);
    CHECK(info(0, std::numeric_limits<std::int32_t>::max()) == 999ms);

    // End to end: the server asks for an absurd wait (317 years; gRPC's core
    // itself parses the trailer as a 64-bit number, so longer digit strings
    // do not arrive as sent); the call waits the cap.
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    FakeTime time;
    f.server.faults().fail_next_with_pushback("GetUser", 1, StatusCode::UNAVAILABLE, "9999999999999");
    stubkit::RetryReport capped_report;
    auto capped = driver.call(*f.stub, get_request("ada"), retrying(time, &capped_report));
    REQUIRE_MESSAGE(capped.ok(), capped_report.stop_reason);
    CHECK(time.sleeps == std::vector<std::chrono::milliseconds>{kMaxServerRetryDelay});
    // With a deadline nearer than the cap, the call stops instead of waiting.
    f.server.faults().fail_next_with_pushback("GetUser", 1, StatusCode::UNAVAILABLE, "99999999999999");
    auto options = retrying(time);
    options.timeout = 2s;
    stubkit::RetryReport report;
    options.report = &report;
    CHECK(driver.call(*f.stub, get_request("ada"), options).error().is<stubkit::Unavailable>());
    CHECK(report.stop_reason == "the deadline would pass before the next attempt");
  }

  RETRY_CASE("user callbacks that throw end the call with UNKNOWN naming them") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    FakeTime time;
    f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE);
    auto options = retrying(time);
    options.on_retry = [](stubkit::RetryEvent const&) { throw std::runtime_error("observer broke"); };
    auto user = driver.call(*f.stub, get_request("ada"), options);
    REQUIRE_FALSE(user.ok());
    CHECK(user.error().code() == StatusCode::UNKNOWN);
    CHECK(user.error().message().find("observer broke") != std::string::npos);

    options = retrying(time);
    options.timeout = 1s;
    options.clock.now = []() -> std::chrono::system_clock::time_point { throw std::logic_error("no time"); };
    user = driver.call(*f.stub, get_request("ada"), options);
    REQUIRE_FALSE(user.ok());
    CHECK(user.error().message().find("no time") != std::string::npos);
  }

  TEST_CASE("time arithmetic saturates instead of overflowing") {
    using TimePoint = std::chrono::system_clock::time_point;
    using stubkit::detail::saturating_add;
    using stubkit::detail::time_left;
    auto const now = std::chrono::system_clock::now();
    CHECK(saturating_add(now, 1s) == now + 1s);
    CHECK(saturating_add(now, std::chrono::milliseconds::max()) == TimePoint::max());
    CHECK(saturating_add(TimePoint::max() - 1s, 1h) == TimePoint::max());
    CHECK(saturating_add(TimePoint::min() + 1s, -1h) == TimePoint::min());
    CHECK(saturating_add(now, std::chrono::duration<double>(1e300)) == TimePoint::max());
    CHECK(time_left(now + 2s, now) == 2s);
    CHECK(time_left(now, now + 2s) == TimePoint::duration::zero());
    CHECK(time_left(TimePoint::max(), TimePoint::min() + 1s) == TimePoint::duration::max());

    // A Deadline without one passes on as "none", never as an overflow.
    stubkit::Deadline none;
    auto const passed_on = stubkit::Deadline::after(none.remaining());
    CHECK_FALSE(passed_on.is_set());
    CHECK(none.within(std::chrono::milliseconds::max()).when() == TimePoint::max());
  }

  RETRY_CASE("attempts and sleeps never pass the caller's deadline") {
    ServerFixture f;
    f.server.faults().fail_next("GetUser", 100, StatusCode::UNAVAILABLE);
    FakeTime time;
    stubkit::RetryReport report;
    stubkit::CallOptions options;
    options.timeout = 1000ms;
    options.retry = stubkit::RetryPolicy::standard();
    options.retry->max_attempts = 100;
    options.retry->initial_backoff = 300ms;
    options.clock = time.clock(0.999);  // delays near the cap: 299, 599, 1198, ...
    options.report = &report;
    auto const start = time.now;
    auto user = driver.call(*f.stub, get_request("x"), options);
    CHECK(user.error().is<stubkit::Unavailable>());
    CHECK(time.now - start == 898ms);  // 299 + 599; 1198 more would pass the deadline
    CHECK(report.attempts == 3);
    CHECK(report.stop_reason == "the deadline would pass before the next attempt");
  }

  RETRY_CASE("the per-attempt timeout makes a slow attempt retryable, the overall deadline does not") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    f.server.faults().add_latency("GetUser", 300ms);
    stubkit::CallOptions options;
    options.timeout = 10s;
    options.retry = stubkit::RetryPolicy::standard();
    options.retry->max_attempts = 3;
    options.retry->initial_backoff = 1ms;
    options.retry->per_attempt_timeout = 50ms;
    auto user = driver.call(*f.stub, get_request("ada"), options);
    CHECK(user.error().is<stubkit::DeadlineExceeded>());
    CHECK(f.server.faults().calls("GetUser") == 3);

    stubkit::CallOptions overall;
    overall.timeout = 50ms;
    overall.retry = stubkit::RetryPolicy::standard();
    overall.retry->initial_backoff = 1ms;
    auto again = driver.call(*f.stub, get_request("ada"), overall);
    CHECK(again.error().is<stubkit::DeadlineExceeded>());
    CHECK(f.server.faults().calls("GetUser") == 4);  // one more attempt only
  }

  TEST_CASE("full-jitter backoff stays within its doubling caps") {
    stubkit::RetryPolicy policy;
    policy.initial_backoff = 100ms;
    policy.max_backoff = 1000ms;
    std::vector<std::chrono::milliseconds> caps;
    stubkit::Backoff probe(policy, [] { return 0.0; });
    for (int i = 0; i < 6; ++i) {
      caps.push_back(probe.cap());
      probe.next();
    }
    CHECK(caps == std::vector<std::chrono::milliseconds>{100ms, 200ms, 400ms, 800ms, 1000ms, 1000ms});

    stubkit::Backoff jittered(policy);  // the real PRNG
    for (int i = 0; i < 200; ++i) {
      auto const cap = jittered.cap();
      auto const delay = jittered.next();
      CHECK(delay >= 0ms);
      CHECK(delay <= cap);
    }
    stubkit::Backoff half(policy, [] { return 0.5; });
    CHECK(half.next() == 50ms);
    CHECK(half.next() == 100ms);
  }

  RETRY_CASE("an exhausted retry throttle stops retries until successes refill it") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    auto throttle = std::make_shared<stubkit::RetryThrottle>(4, 1.0);  // retries while tokens > 2
    FakeTime time;
    auto options = retrying(time);
    options.throttle = throttle;
    f.server.faults().fail_next("GetUser", 1000, StatusCode::UNAVAILABLE);
    (void)driver.call(*f.stub, get_request("ada"), options);  // 4 -> 3 -> 2: stops
    CHECK(f.server.faults().calls("GetUser") == 2);
    CHECK_FALSE(throttle->allows_retry());
    (void)driver.call(*f.stub, get_request("ada"), options);  // no retry at all: 2 -> 1
    CHECK(f.server.faults().calls("GetUser") == 3);
    f.server.faults().clear();
    REQUIRE(driver.call(*f.stub, get_request("ada"), options).ok());  // 1 -> 2
    CHECK_FALSE(throttle->allows_retry());
    REQUIRE(driver.call(*f.stub, get_request("ada"), options).ok());  // 2 -> 3
    CHECK(throttle->allows_retry());
  }

  RETRY_CASE("an invalid policy is INVALID_ARGUMENT, and no call is made") {
    ServerFixture f;
    stubkit::CallOptions options;
    options.retry = stubkit::RetryPolicy::standard();
    options.retry->multiplier = 0.5;
    auto user = driver.call(*f.stub, get_request("ada"), options);
    CHECK(user.error().is<stubkit::InvalidArgument>());
    CHECK(user.error().message().find("multiplier") != std::string::npos);
    CHECK(f.server.faults().calls("GetUser") == 0);
  }

  RETRY_CASE("the observer hears of each retry with its delay") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    f.server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE);
    FakeTime time;
    auto options = retrying(time);
    std::vector<int> attempts;
    options.on_retry = [&](stubkit::RetryEvent const& e) {
      attempts.push_back(e.attempt);
      CHECK(e.status.error_code() == StatusCode::UNAVAILABLE);
    };
    REQUIRE(driver.call(*f.stub, get_request("ada"), options).ok());
    CHECK(attempts == std::vector<int>{1, 2});
  }

  TEST_CASE("idempotency comes from the proto option or a request_id") {
    using stubkit::declared_idempotent;
    auto const* get_user = stubkit::find_method("/myservice.v1.UserService/GetUser");
    REQUIRE(get_user != nullptr);
    CHECK(declared_idempotent(get_user));
    CHECK(declared_idempotent(stubkit::find_method("/myservice.v1.UserService/DeleteUser")));
    CHECK_FALSE(declared_idempotent(stubkit::find_method("/myservice.v1.UserService/CreateUser")));
    CHECK(stubkit::find_method("/myservice.v1.UserService/Nope") == nullptr);
    CHECK(stubkit::find_method("garbage") == nullptr);
    myservice::v1::CreateUserRequest request;
    CHECK_FALSE(stubkit::has_idempotency_key(request));
    request.set_request_id("r");
    CHECK(stubkit::has_idempotency_key(request));
    CHECK(stubkit::detail::method_for_types<myservice::v1::UpdateUserRequest, User>()->name() ==
          "UpdateUser");
  }

  RETRY_CASE("a call without a retry policy makes one attempt with the timeout and metadata") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    stubkit::CallOptions options;
    options.timeout = 2s;
    options.metadata = {{"x-trace", "t1"}};
    f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE);
    CHECK(driver.call(*f.stub, get_request("ada"), options).error().is<stubkit::Unavailable>());
    CHECK(driver.call(*f.stub, get_request("ada"), options).ok());
    CHECK(f.server.faults().calls("GetUser") == 2);
  }
}
