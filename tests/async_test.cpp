// Async calls (stubkit/async.hpp) beyond the retry table they share with
// stubkit::call (retry_test.cpp): where completions run, cancellation in
// every state, ownership, the coroutine forms (executor-free Task and
// asio), and bad input. Built as C++20, in its own program.
#include "stubkit/async.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "stubkit/testing/mock_user_service.hpp"
#include "support.hpp"

#if defined(STUBKIT_TEST_ASIO)
#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/use_future.hpp>

#include "stubkit/asio.hpp"
#endif

using namespace stubkit_tests;
using grpc::StatusCode;
using myservice::v1::GetUserRequest;
using myservice::v1::User;
using Stub = UserService::Stub;

namespace {

constexpr stubkit::AsyncUnaryMethod<class Stub::async, GetUserRequest, User> kGetUser = &Stub::async::GetUser;

// Records events, from any thread.
struct Recorder : stubkit::Observer {
  std::mutex mu;
  std::vector<std::string> events;
  void on_event(stubkit::Event const& e) override {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back(std::string(stubkit::event_name(e.type)) + " " + std::string(e.source) + " " +
                     std::to_string(e.attempt) + " " + stubkit::code_name(e.code));
  }
  std::vector<std::string> take() {
    std::lock_guard<std::mutex> lock(mu);
    return std::move(events);
  }
};

template <typename T>
T get_within(stubkit::AsyncFuture<T>& future, std::chrono::seconds limit = 30s) {
  REQUIRE(future.wait_for(limit) == std::future_status::ready);
  return future.get();
}

// A policy with long waits, so a cancel surely lands in the wait.
stubkit::CallOptions long_backoff() {
  stubkit::CallOptions options;
  options.retry = stubkit::RetryPolicy::standard();
  options.retry->initial_backoff = 20s;
  options.retry->max_backoff = 20s;
  options.clock.random01 = [] { return 0.99; };
  return options;
}

}  // namespace

TEST_SUITE("async") {
  TEST_CASE("the callback runs once, on a gRPC thread, with the typed result and the observer's events") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE);
    auto recorder = std::make_shared<Recorder>();
    stubkit::CallOptions options;
    options.retry = stubkit::RetryPolicy::standard();
    options.retry->initial_backoff = 1ms;
    options.observer = recorder;
    stubkit::RetryReport report;
    options.report = &report;
    std::promise<std::thread::id> ran_on;
    std::atomic<int> runs{0};
    std::string email;
    auto handle =
        stubkit::async_call(*f.stub, kGetUser, get_request("ada"), options, [&](stubkit::Result<User> user) {
          email = user.ok() ? user->email() : user.error().message();
          ++runs;
          ran_on.set_value(std::this_thread::get_id());
        });
    auto ran = ran_on.get_future();
    REQUIRE(ran.wait_for(30s) == std::future_status::ready);
    CHECK(ran.get() != std::this_thread::get_id());
    CHECK(email == "ada@example.com");
    CHECK(handle.done());
    handle.cancel();  // after completion: nothing
    std::this_thread::sleep_for(20ms);
    CHECK(runs == 1);
    CHECK(report.attempts == 2);
    CHECK(report.last_status.ok());
    CHECK(recorder->take() == std::vector<std::string>{"call.start async 0 OK", "attempt.start async 1 OK",
                                                       "attempt.end async 1 UNAVAILABLE",
                                                       "retry async 1 UNAVAILABLE",
                                                       "attempt.start async 2 OK", "attempt.end async 2 OK",
                                                       "call.end async 0 OK"});
  }

  TEST_CASE("cancel during an attempt ends the call at once with CANCELLED, and the server sees it") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    f.server.faults().add_latency("GetUser", 20s);
    auto options = long_backoff();
    stubkit::RetryReport report;
    options.report = &report;
    auto future = stubkit::async_call(*f.stub, kGetUser, get_request("ada"), options, stubkit::use_future);
    while (f.server.faults().calls("GetUser") == 0) std::this_thread::sleep_for(1ms);
    auto const start = std::chrono::steady_clock::now();
    future.cancel();
    auto user = get_within(future, 10s);
    CHECK(std::chrono::steady_clock::now() - start < 5s);
    REQUIRE_FALSE(user.ok());
    CHECK(user.error().code() == StatusCode::CANCELLED);
    CHECK(report.attempts == 1);
    CHECK(report.stop_reason == "cancelled");
    for (int i = 0; i < 500 && f.server.service().cancelled_calls() == 0; ++i)
      std::this_thread::sleep_for(10ms);
    CHECK(f.server.service().cancelled_calls() == 1);
  }

  TEST_CASE("cancel during the backoff wait ends the call at once; no further attempt is made") {
    ServerFixture f;
    f.server.faults().fail_next("GetUser", 10, StatusCode::UNAVAILABLE);
    auto options = long_backoff();
    std::atomic<int> retries{0};
    options.on_retry = [&](stubkit::RetryEvent const&) { ++retries; };
    auto future = stubkit::async_call(*f.stub, kGetUser, get_request("ada"), options, stubkit::use_future);
    while (retries == 0) std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(20ms);  // into the 19.8 s wait
    auto const start = std::chrono::steady_clock::now();
    future.cancel();
    auto user = get_within(future, 10s);
    CHECK(std::chrono::steady_clock::now() - start < 5s);
    CHECK(user.error().code() == StatusCode::CANCELLED);
    CHECK(user.error().message().find("backoff") != std::string::npos);
    CHECK(f.server.faults().calls("GetUser") == 1);
  }

  TEST_CASE("cancel while the caller's schedule holds the wait ends the call; its late done() does nothing") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE);
    stubkit::CallOptions options;
    options.retry = stubkit::RetryPolicy::standard();
    std::mutex mu;
    std::function<void()> held;
    options.schedule = [&](std::chrono::milliseconds, std::function<void()> done) {
      std::lock_guard<std::mutex> lock(mu);
      held = std::move(done);
    };
    std::atomic<int> runs{0};
    std::promise<stubkit::Result<User>> result;
    auto handle =
        stubkit::async_call(*f.stub, kGetUser, get_request("ada"), options, [&](stubkit::Result<User> user) {
          ++runs;
          result.set_value(std::move(user));
        });
    auto has_held = [&] {
      std::lock_guard<std::mutex> lock(mu);
      return static_cast<bool>(held);
    };
    while (!has_held()) std::this_thread::sleep_for(1ms);
    handle.cancel();
    auto user = result.get_future().get();
    CHECK(user.error().code() == StatusCode::CANCELLED);
    held();  // the scheduler wakes the call late
    std::this_thread::sleep_for(20ms);
    CHECK(runs == 1);
    CHECK(f.server.faults().calls("GetUser") == 1);
  }

  TEST_CASE("a schedule's done counts once; dropped uncalled, or throwing first, it ends the call") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    auto retried = [&](std::function<void(std::chrono::milliseconds, std::function<void()>)> schedule) {
      f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE);
      stubkit::CallOptions options;
      options.retry = stubkit::RetryPolicy::standard();
      options.schedule = std::move(schedule);
      stubkit::RetryReport report;
      options.report = &report;
      std::atomic<int> runs{0};
      std::promise<stubkit::Result<User>> result;
      stubkit::async_call(*f.stub, kGetUser, get_request("ada"), options, [&](stubkit::Result<User> user) {
        if (++runs == 1) result.set_value(std::move(user));
      });
      auto future = result.get_future();
      REQUIRE(future.wait_for(30s) == std::future_status::ready);
      std::this_thread::sleep_for(20ms);  // a second completion would land here
      CHECK(runs == 1);
      return std::make_pair(future.get(), report);
    };
    // done twice: the second does nothing.
    auto [twice, twice_report] = retried([](std::chrono::milliseconds, std::function<void()> done) {
      done();
      done();
    });
    CHECK(twice.ok());
    CHECK(twice_report.attempts == 2);
    // done, then a throw: the call goes on (the exception is reported on stderr).
    auto [then_threw, threw_report] = retried([](std::chrono::milliseconds, std::function<void()> done) {
      done();
      throw std::runtime_error("schedule broke after done");
    });
    CHECK(then_threw.ok());
    CHECK(threw_report.attempts == 2);
    // A throw before done: the call ends, naming the exception.
    auto [threw, threw_first_report] = retried(
        [](std::chrono::milliseconds, std::function<void()>) { throw std::runtime_error("no timers left"); });
    REQUIRE_FALSE(threw.ok());
    CHECK(threw.error().code() == StatusCode::UNKNOWN);
    CHECK(threw.error().message().find("no timers left") != std::string::npos);
    CHECK(threw_first_report.stop_reason == "the retry schedule threw");
    // done dropped without a call: the call ends instead of waiting forever.
    auto [dropped, dropped_report] = retried([](std::chrono::milliseconds, std::function<void()>) {});
    REQUIRE_FALSE(dropped.ok());
    CHECK(dropped.error().code() == StatusCode::UNKNOWN);
    CHECK(dropped.error().message().find("dropped") != std::string::npos);
    CHECK(dropped_report.attempts == 1);
  }

  TEST_CASE("a cancel from the call's own on_retry ends it before another attempt") {
    ServerFixture f;
    f.server.faults().fail_next("GetUser", 5, StatusCode::UNAVAILABLE);
    stubkit::CallOptions options;
    options.retry = stubkit::RetryPolicy::standard();
    options.retry->initial_backoff = 1ms;
    auto handle = std::make_shared<stubkit::AsyncHandle>();
    std::promise<void> handle_set;
    auto ready = handle_set.get_future().share();
    options.on_retry = [handle, ready](stubkit::RetryEvent const&) {
      ready.wait();
      handle->cancel();  // on the gRPC thread that decided to retry
    };
    std::promise<stubkit::Result<User>> result;
    *handle = stubkit::async_call(*f.stub, kGetUser, get_request("ada"), options,
                                  [&](stubkit::Result<User> user) { result.set_value(std::move(user)); });
    handle_set.set_value();
    auto future = result.get_future();
    REQUIRE(future.wait_for(30s) == std::future_status::ready);
    CHECK(future.get().error().code() == StatusCode::CANCELLED);
    CHECK(f.server.faults().calls("GetUser") == 1);
  }

  TEST_CASE("a stop token cancels the call; one already stopped means no attempt at all") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    std::stop_source stopped;
    stopped.request_stop();
    auto future = stubkit::async_call(*f.stub, kGetUser, get_request("ada"), {}, stopped.get_token(),
                                      stubkit::use_future);
    auto user = get_within(future);
    CHECK(user.error().code() == StatusCode::CANCELLED);
    CHECK(f.server.faults().calls("GetUser") == 0);

    f.server.faults().add_latency("GetUser", 20s);
    std::stop_source source;
    auto pending = stubkit::async_call(*f.stub, kGetUser, get_request("ada"), {}, source.get_token(),
                                       stubkit::use_future);
    while (f.server.faults().calls("GetUser") == 0) std::this_thread::sleep_for(1ms);
    source.request_stop();
    CHECK(get_within(pending, 10s).error().code() == StatusCode::CANCELLED);

    // A token that is never stopped changes nothing.
    f.server.faults().clear();
    f.server.faults().add_latency("GetUser", 0ms);
    std::stop_source idle;
    auto fine =
        stubkit::async_call(*f.stub, kGetUser, get_request("ada"), {}, idle.get_token(), stubkit::use_future);
    CHECK(get_within(fine).ok());
  }

  TEST_CASE("bad input ends the call inline with a clear error, and no call is made") {
    ServerFixture f;
    stubkit::CallOptions options;
    options.retry = stubkit::RetryPolicy::standard();
    options.retry->max_attempts = 0;
    auto future = stubkit::async_call(*f.stub, kGetUser, get_request("ada"), options, stubkit::use_future);
    REQUIRE(future.wait_for(0s) == std::future_status::ready);
    auto user = future.get();
    CHECK(user.error().code() == StatusCode::INVALID_ARGUMENT);
    CHECK(user.error().message().find("max_attempts") != std::string::npos);
    CHECK(future.handle().done());
    CHECK(f.server.faults().calls("GetUser") == 0);

    // A hedging policy it cannot use, or with retries: refused the same way.
    stubkit::CallOptions hedged;
    hedged.hedging = stubkit::HedgingPolicy{};
    hedged.hedging->max_attempts = 1;
    auto bad_policy = stubkit::async_call(*f.stub, kGetUser, get_request("ada"), hedged, stubkit::use_future);
    REQUIRE(bad_policy.wait_for(0s) == std::future_status::ready);
    auto refused = bad_policy.get();
    CHECK(refused.error().code() == StatusCode::INVALID_ARGUMENT);
    CHECK(refused.error().message().find("invalid HedgingPolicy") == 0);
    hedged.hedging->max_attempts = 2;
    hedged.retry = stubkit::RetryPolicy::standard();
    auto both = stubkit::async_call(*f.stub, kGetUser, get_request("ada"), hedged, stubkit::use_future).get();
    CHECK(both.error().code() == StatusCode::INVALID_ARGUMENT);
    CHECK(f.server.faults().calls("GetUser") == 0);

    // A StubInterface mock has no callback API unless its async() is mocked.
    stubkit::testing::MockUserServiceStub mock;
    auto no_api = stubkit::async_call(mock, &UserService::StubInterface::async_interface::GetUser,
                                      get_request("ada"), {}, stubkit::use_future);
    auto failed = get_within(no_api);
    CHECK(failed.error().code() == StatusCode::FAILED_PRECONDITION);
    CHECK(failed.error().message().find("callback API") != std::string::npos);
  }

  TEST_CASE("a completion that throws does not take the process down") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    std::promise<void> thrown;
    stubkit::async_call(*f.stub, kGetUser, get_request("ada"), {}, [&](stubkit::Result<User>) {
      thrown.set_value();
      throw std::runtime_error("completion broke");
    });
    thrown.get_future().get();
    // The process is alive and calls still work.
    auto again = stubkit::async_call(*f.stub, kGetUser, get_request("ada"), {}, stubkit::use_future);
    CHECK(get_within(again).ok());
  }

  TEST_CASE("stub and channel can be dropped the moment the call completed, over TCP") {
    stubkit::testing::EmbeddedServer server(tcp_options());
    for (int i = 0; i < 50; ++i) {
      auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(server.port()),
                                         grpc::InsecureChannelCredentials());
      auto stub = UserService::NewStub(channel);
      auto future = stubkit::async_call(*stub, kGetUser, get_request("nobody"), {}, stubkit::use_future);
      channel.reset();
      auto user = get_within(future);
      stub.reset();  // the last reference to the channel, right after the completion ran
      CHECK(user.error().code() == StatusCode::NOT_FOUND);
    }
  }

  TEST_CASE("a deadline bounds attempts and waits of an async call") {
    ServerFixture f;
    f.server.faults().add_latency("GetUser", 20s);
    stubkit::CallOptions options;
    options.timeout = 100ms;
    options.retry = stubkit::RetryPolicy::standard();
    auto future = stubkit::async_call(*f.stub, kGetUser, get_request("ada"), options, stubkit::use_future);
    CHECK(get_within(future, 10s).error().code() == StatusCode::DEADLINE_EXCEEDED);
  }
}

namespace {

stubkit::Task<int> fan_out(Stub& stub, int calls) {
  std::vector<stubkit::Awaitable<stubkit::Result<User>>> pending;
  pending.reserve(static_cast<std::size_t>(calls));
  for (int i = 0; i < calls; ++i) {
    pending.push_back(stubkit::async_call(stub, kGetUser, get_request("user-" + std::to_string(i % 10)), {},
                                          stubkit::use_awaitable));
  }
  int found = 0;
  for (auto& call : pending) {
    stubkit::Result<User> user = co_await call;
    if (user.ok()) ++found;
  }
  co_return found;
}

// Awaits a call that cannot have completed yet (the server holds it).
stubkit::Task<std::thread::id> resumed_on(Stub& stub) {
  auto user = co_await stubkit::async_call(stub, kGetUser, get_request("user-1"), {}, stubkit::use_awaitable);
  co_return user.ok() ? std::this_thread::get_id() : std::thread::id();
}

stubkit::Task<void> fails() {
  co_await std::suspend_never{};
  throw std::runtime_error("inside the task");
}

stubkit::Task<std::string> nested(Stub& stub) {
  auto user = co_await stubkit::async_call(stub, kGetUser, get_request("user-1"), {}, stubkit::use_awaitable);
  co_return user.ok() ? user->email() : user.error().message();
}

stubkit::Task<std::string> outer(Stub& stub) {
  std::string email = co_await nested(stub);
  co_return "<" + email + ">";
}

}  // namespace

TEST_SUITE("async") {
  TEST_CASE("coroutines without an executor: a fan-out of 1000 calls in flight at once, and nested tasks") {
    ServerFixture f;
    for (int i = 0; i < 10; ++i) REQUIRE(f.create("user-" + std::to_string(i)).ok());
    CHECK(stubkit::sync_wait(fan_out(*f.stub, 1000)) == 1000);
    CHECK(f.server.faults().calls("GetUser") == 1000);
    f.server.faults().add_latency("GetUser", 100ms);
    auto const thread = stubkit::sync_wait(resumed_on(*f.stub));
    CHECK(thread != std::thread::id());
    CHECK(thread != std::this_thread::get_id());  // on a gRPC thread, as documented
    f.server.faults().add_latency("GetUser", 0ms);
    CHECK(stubkit::sync_wait(outer(*f.stub)) == "<user-1@example.com>");
    CHECK_THROWS_WITH(stubkit::sync_wait(fails()), "inside the task");
  }

  TEST_CASE("a coroutine destroyed while it awaits a call is never resumed, and its call is cancelled") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    f.server.faults().add_latency("GetUser", 300ms);
    std::atomic<bool> resumed{false};
    // A bare coroutine, started by hand and destroyed while it is suspended.
    struct Bare {
      struct promise_type {
        Bare get_return_object() { return Bare{std::coroutine_handle<promise_type>::from_promise(*this)}; }
        std::suspend_always initial_suspend() noexcept { return {}; }
        std::suspend_always final_suspend() noexcept { return {}; }
        void return_void() {}
        void unhandled_exception() { std::terminate(); }
      };
      std::coroutine_handle<promise_type> coroutine;
    };
    auto body = [](Stub& stub, std::atomic<bool>& flag, stubkit::CallOptions options) -> Bare {
      auto user =
          co_await stubkit::async_call(stub, kGetUser, get_request("ada"), options, stubkit::use_awaitable);
      flag = true;
    };
    auto ends = std::make_shared<CallEnds>();
    stubkit::CallOptions options;
    options.observer = ends;
    Bare bare = body(*f.stub, resumed, options);
    bare.coroutine.resume();  // runs to the co_await and suspends there
    while (f.server.faults().calls("GetUser") == 0) std::this_thread::sleep_for(1ms);
    bare.coroutine.destroy();  // the Awaitable in its frame goes with it
    for (int i = 0; i < 500 && f.server.service().cancelled_calls() == 0; ++i)
      std::this_thread::sleep_for(10ms);
    CHECK(f.server.service().cancelled_calls() == 1);
    CHECK(ends->wait_for(1));            // the call has completed: the stub may go
    std::this_thread::sleep_for(400ms);  // past the server's latency: a resume would have run by now
    CHECK_FALSE(resumed);
  }

  TEST_CASE("dropping an Awaitable that was never awaited cancels its call") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    f.server.faults().add_latency("GetUser", 20s);
    auto ends = std::make_shared<CallEnds>();
    stubkit::CallOptions options;
    options.observer = ends;
    {
      auto call = stubkit::async_call(*f.stub, kGetUser, get_request("ada"), options, stubkit::use_awaitable);
      while (f.server.faults().calls("GetUser") == 0) std::this_thread::sleep_for(1ms);
    }
    for (int i = 0; i < 500 && f.server.service().cancelled_calls() == 0; ++i)
      std::this_thread::sleep_for(10ms);
    CHECK(f.server.service().cancelled_calls() == 1);
    CHECK(ends->wait_for(1));  // the call has completed: the stub may go
  }
}

#if defined(STUBKIT_TEST_ASIO)
namespace {

asio::awaitable<std::string> asio_get(Stub& stub, std::thread::id* resumed_on) {
  auto user = co_await stubkit::async_call(stub, kGetUser, get_request("ada"), {}, asio::use_awaitable);
  *resumed_on = std::this_thread::get_id();
  co_return user.ok() ? user->email() : user.error().message();
}

asio::awaitable<void> asio_cancelled(Stub& stub, asio::cancellation_signal& signal,
                                     stubkit::Result<User>* out) {
  *out = co_await stubkit::async_call(stub, kGetUser, get_request("ada"), {},
                                      asio::bind_cancellation_slot(signal.slot(), asio::use_awaitable));
}

}  // namespace

TEST_SUITE("async") {
  TEST_CASE("asio: co_await resumes on the caller's executor; run() waits for the call") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    asio::io_context io;
    std::thread::id resumed_on;
    std::future<std::string> email = asio::co_spawn(io, asio_get(*f.stub, &resumed_on), asio::use_future);
    io.run();  // returns only once the coroutine is done: the call keeps the context busy
    REQUIRE(email.wait_for(0s) == std::future_status::ready);
    CHECK(email.get() == "ada@example.com");
    CHECK(resumed_on == std::this_thread::get_id());

    // asio::use_future as the token.
    auto future = stubkit::async_call(*f.stub, kGetUser, get_request("ada"), {}, asio::use_future);
    REQUIRE(future.wait_for(30s) == std::future_status::ready);
    CHECK(future.get().ok());
  }

  TEST_CASE(
      "asio: a lambda bound to an executor and a slot goes through asio: run there, cancelled by the slot") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    f.server.faults().add_latency("GetUser", 20s);
    asio::io_context io;
    asio::cancellation_signal signal;
    std::thread::id ran_on;
    stubkit::Result<User> result = stubkit::Error(StatusCode::UNKNOWN, "not run");
    stubkit::async_call(
        *f.stub, kGetUser, get_request("ada"), {},
        asio::bind_executor(io, asio::bind_cancellation_slot(signal.slot(), [&](stubkit::Result<User> user) {
                              ran_on = std::this_thread::get_id();
                              result = std::move(user);
                            })));
    std::thread emitter([&] {
      while (f.server.faults().calls("GetUser") == 0) std::this_thread::sleep_for(1ms);
      asio::post(io, [&] { signal.emit(asio::cancellation_type::terminal); });
    });
    io.run();  // the call is outstanding work: run() waits for it
    emitter.join();
    CHECK(result.error().code() == StatusCode::CANCELLED);
    CHECK(ran_on == std::this_thread::get_id());
  }

  TEST_CASE("asio: a cancellation slot cancels the call in flight") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    f.server.faults().add_latency("GetUser", 20s);
    asio::io_context io;
    asio::cancellation_signal signal;
    stubkit::Result<User> result = stubkit::Error(StatusCode::UNKNOWN, "not run");
    asio::co_spawn(io, asio_cancelled(*f.stub, signal, &result), asio::detached);
    asio::steady_timer poll(io);
    std::function<void()> wait_for_call = [&] {
      if (f.server.faults().calls("GetUser") > 0) {
        signal.emit(asio::cancellation_type::terminal);
        return;
      }
      poll.expires_after(1ms);
      poll.async_wait([&](std::error_code) { wait_for_call(); });
    };
    asio::post(io, wait_for_call);
    auto const start = std::chrono::steady_clock::now();
    io.run();
    CHECK(std::chrono::steady_clock::now() - start < 10s);
    CHECK(result.error().code() == StatusCode::CANCELLED);
    for (int i = 0; i < 500 && f.server.service().cancelled_calls() == 0; ++i)
      std::this_thread::sleep_for(10ms);
    CHECK(f.server.service().cancelled_calls() == 1);
  }
}
#endif
