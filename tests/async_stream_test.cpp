// Async streams (stubkit/async_stream.hpp) against the embedded server:
// WatchUsers read one next() at a time (flow control, filters, the final
// status, deadline, cancellation in every form), BulkCreateUsers written
// with write()/finish() (per-item failures, a broken stream, cancel, drop
// before and after finish), misuse, and both coroutine forms.
#include "stubkit/async_stream.hpp"

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
#include "stubkit/user_client.hpp"
#include "support.hpp"

#if defined(STUBKIT_TEST_ASIO)
#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/use_future.hpp>

#include "stubkit/asio.hpp"
#endif

using namespace stubkit_tests;
using grpc::StatusCode;
using myservice::v1::BulkResp;
using myservice::v1::CreateUserRequest;
using myservice::v1::UserEvent;
using myservice::v1::WatchUsersRequest;

namespace {

using AsyncApi = class UserService::Stub::async;
constexpr stubkit::AsyncReadMethod<AsyncApi, WatchUsersRequest, UserEvent> kWatch = &AsyncApi::WatchUsers;
constexpr stubkit::AsyncWriteMethod<AsyncApi, CreateUserRequest, BulkResp> kBulk = &AsyncApi::BulkCreateUsers;

bool not_heartbeat(UserEvent const& e) { return e.type() != "heartbeat"; }

void wait_for_streams(stubkit::testing::EmbeddedServer& server, int n) {
  for (int i = 0; i < 1000 && server.service().open_streams() != n; ++i) std::this_thread::sleep_for(5ms);
  REQUIRE(server.service().open_streams() == n);
}

void wait_done(stubkit::AsyncHandle const& handle) {
  for (int i = 0; i < 1000 && !handle.done(); ++i) std::this_thread::sleep_for(5ms);
  REQUIRE(handle.done());
}

// "created a", "!CANCELLED", "end": what a next() gave, for comparisons.
std::string brief(std::optional<stubkit::Result<UserEvent>> const& element) {
  if (!element) return "end";
  if (!*element) return "!" + stubkit::code_name(element->error().code());
  return (*element)->type() + " " + (*element)->user().id();
}

CreateUserRequest create_request(std::string const& id, std::size_t padding = 0) {
  CreateUserRequest request;
  request.mutable_user()->set_id(id);
  request.mutable_user()->set_email(id + "@example.com");
  request.mutable_user()->set_display_name(std::string(padding, 'x'));
  return request;
}

// Counts stream events of each kind.
struct StreamEvents final : stubkit::Observer {
  void on_event(stubkit::Event const& e) override {
    std::lock_guard<std::mutex> lock(mu);
    if (e.type == stubkit::EventType::kStreamOpen) ++opened;
    if (e.type == stubkit::EventType::kStreamEnd) {
      ++ended;
      items = e.items;
      code = e.code;
    }
  }
  std::mutex mu;
  int opened = 0, ended = 0;
  std::int64_t items = -1;
  StatusCode code = StatusCode::UNKNOWN;
};

#if defined(STUBKIT_HAS_COROUTINES)
// Reads `n` change events in a coroutine with no executor; `handle` tells
// when the stream, cancelled as it goes, is finished with the stub.
stubkit::Task<std::vector<std::string>> watch_in_task(UserService::Stub& stub, int n,
                                                      stubkit::AsyncHandle* handle) {
  auto events = stubkit::async_read_stream(stub, kWatch, WatchUsersRequest{}, {}, &not_heartbeat);
  *handle = events.handle();
  std::vector<std::string> seen;
  while (auto event = co_await events.next()) {
    seen.push_back(brief(event));
    if (!*event || static_cast<int>(seen.size()) == n) break;
  }
  co_return seen;
}

// Writes the ids through BulkCreateUsers in a coroutine; the response.
stubkit::Task<stubkit::Result<BulkResp>> bulk_in_task(UserService::Stub& stub, std::vector<std::string> ids) {
  auto bulk = stubkit::async_write_stream(stub, kBulk);
  for (auto const& id : ids) {
    if (!co_await bulk.write(create_request(id))) break;
  }
  co_return co_await bulk.finish();
}
#endif

}  // namespace

TEST_SUITE("async_stream") {
  TEST_CASE("a server stream, one next() at a time: every change event in order, heartbeats filtered") {
    ServerFixture f;
    auto observer = std::make_shared<StreamEvents>();
    stubkit::StreamOptions options;
    options.observer = observer;
    auto events = stubkit::async_read_stream(*f.stub, kWatch, WatchUsersRequest{}, options, &not_heartbeat);
    wait_for_streams(f.server, 1);
    for (int i = 0; i < 20; ++i) REQUIRE(f.create("user" + std::to_string(i)).ok());
    std::vector<std::string> seen;
    for (int i = 0; i < 20; ++i) seen.push_back(brief(events.next(stubkit::use_future).get()));
    for (int i = 0; i < 20; ++i) CHECK(seen[i] == "created user" + std::to_string(i));
    f.server.service().begin_shutdown();  // the server ends its watch streams with OK: the end
    CHECK(brief(events.next(stubkit::use_future).get()) == "end");
    CHECK(brief(events.next(stubkit::use_future).get()) == "end");
    wait_done(events.handle());
    std::lock_guard<std::mutex> lock(observer->mu);
    CHECK(observer->opened == 1);
    CHECK(observer->ended == 1);
    CHECK(observer->items == 21);  // messages received: the 20 events and the opening heartbeat
    CHECK(observer->code == StatusCode::OK);
  }

  TEST_CASE("flow control: with nobody asking, the reader holds two messages and reads no more") {
    ServerFixture f;
    std::atomic<int> read{0};  // events read: the filter sees each message read
    auto events =
        stubkit::async_read_stream(*f.stub, kWatch, WatchUsersRequest{}, {}, [&](UserEvent const& e) {
          if (!not_heartbeat(e)) return false;
          ++read;
          return true;
        });
    wait_for_streams(f.server, 1);
    for (int i = 0; i < 50; ++i) REQUIRE(f.create("user" + std::to_string(i)).ok());
    for (int i = 0; i < 1000 && read.load() < 2; ++i) std::this_thread::sleep_for(2ms);
    // The absence of further reads can only be seen by waiting: 200 ms is
    // ages for 48 messages already sent by the server.
    std::this_thread::sleep_for(200ms);
    CHECK(read.load() == 2);
    for (int i = 0; i < 50; ++i) {
      REQUIRE(brief(events.next(stubkit::use_future).get()) == "created user" + std::to_string(i));
    }
    CHECK(read.load() >= 50);
    events.cancel();
    wait_done(events.handle());  // the stub must stay until then
  }

  TEST_CASE("the stream's error is its last element, then the end; a deadline ends it on time") {
    ServerFixture f;
    f.server.faults().fail_next("WatchUsers", 1, StatusCode::PERMISSION_DENIED, "not yours");
    auto denied = stubkit::async_read_stream(*f.stub, kWatch, WatchUsersRequest{});
    auto first = denied.next(stubkit::use_future).get();
    REQUIRE(first);
    REQUIRE_FALSE(*first);
    CHECK(first->error().is<stubkit::PermissionDenied>());
    CHECK(first->error().message() == "not yours");
    CHECK(brief(denied.next(stubkit::use_future).get()) == "end");
    wait_done(denied.handle());

    stubkit::StreamOptions options;
    options.deadline = stubkit::Deadline::after(100ms);
    auto timed = stubkit::async_read_stream(*f.stub, kWatch, WatchUsersRequest{}, options, &not_heartbeat);
    auto const start = std::chrono::steady_clock::now();
    CHECK(brief(timed.next(stubkit::use_future).get()) == "!DEADLINE_EXCEEDED");
    CHECK(std::chrono::steady_clock::now() - start < 5s);
    wait_done(timed.handle());
  }

  TEST_CASE("cancel: a pending next() ends with CANCELLED at once, the server stream closes") {
    ServerFixture f;
    auto events = stubkit::async_read_stream(*f.stub, kWatch, WatchUsersRequest{}, {}, &not_heartbeat);
    auto next = events.next(stubkit::use_future);
    wait_for_streams(f.server, 1);
    CHECK_FALSE(events.handle().done());
    next.cancel();  // a pending next()'s handle cancels the stream
    REQUIRE(next.wait_for(10s) == std::future_status::ready);
    CHECK(brief(next.get()) == "!CANCELLED");
    CHECK(brief(events.next(stubkit::use_future).get()) == "end");
    wait_for_streams(f.server, 0);
    wait_done(events.handle());
  }

  TEST_CASE("cancel with messages at hand drops them and says so; after an OK end the end stays") {
    ServerFixture f;
    auto events = stubkit::async_read_stream(*f.stub, kWatch, WatchUsersRequest{}, {}, &not_heartbeat);
    wait_for_streams(f.server, 1);
    REQUIRE(f.create("a").ok());
    REQUIRE(f.create("b").ok());
    CHECK(brief(events.next(stubkit::use_future).get()) == "created a");
    events.cancel();
    CHECK(brief(events.next(stubkit::use_future).get()) == "!CANCELLED");
    CHECK(brief(events.next(stubkit::use_future).get()) == "end");

    auto ended = stubkit::async_read_stream(*f.stub, kWatch, WatchUsersRequest{}, {}, &not_heartbeat);
    wait_for_streams(f.server, 1);
    f.server.service().begin_shutdown();
    CHECK(brief(ended.next(stubkit::use_future).get()) == "end");
    ended.cancel();
    CHECK(brief(ended.next(stubkit::use_future).get()) == "end");
    wait_done(events.handle());
    wait_done(ended.handle());
  }

  TEST_CASE("dropping a stream, or a stop token, cancels it; the handle outlives the stream") {
    ServerFixture f;
    stubkit::AsyncHandle handle;
    {
      auto events = stubkit::async_read_stream(*f.stub, kWatch, WatchUsersRequest{});
      handle = events.handle();
      wait_for_streams(f.server, 1);
    }
    wait_for_streams(f.server, 0);
    wait_done(handle);

    std::stop_source stop;
    auto events = stubkit::async_read_stream(*f.stub, kWatch, WatchUsersRequest{}, {}, &not_heartbeat);
    events.cancel_on(stop.get_token());
    auto next = events.next(stubkit::use_future);
    wait_for_streams(f.server, 1);
    stop.request_stop();
    REQUIRE(next.wait_for(10s) == std::future_status::ready);
    CHECK(brief(next.get()) == "!CANCELLED");
    wait_done(events.handle());
  }

  TEST_CASE("bad input and misuse: a filter that throws, a second pending next(), a stub without the API") {
    ServerFixture f;
    auto events =
        stubkit::async_read_stream(*f.stub, kWatch, WatchUsersRequest{}, {}, [](UserEvent const& e) -> bool {
          if (e.type() == "created") throw std::runtime_error("filter bug");
          return false;  // heartbeats
        });
    auto first = events.next(stubkit::use_future);
    CHECK_THROWS_AS(events.next(stubkit::use_future), std::logic_error);  // the first is pending
    wait_for_streams(f.server, 1);
    REQUIRE(f.create("a").ok());
    auto element = first.get();
    REQUIRE(element);
    REQUIRE_FALSE(*element);
    CHECK(element->error().code() == StatusCode::UNKNOWN);
    CHECK(element->error().message().find("filter bug") != std::string::npos);
    CHECK(brief(events.next(stubkit::use_future).get()) == "end");
    wait_for_streams(f.server, 0);  // the call was cancelled, not left open
    wait_done(events.handle());

    auto mock = std::make_unique<stubkit::testing::MockUserServiceStub>();  // async() is null
    auto none = stubkit::async_read_stream(*mock, &UserService::StubInterface::async_interface::WatchUsers,
                                           WatchUsersRequest{});
    CHECK(none.handle().done());
    auto failed = none.next(stubkit::use_future).get();
    REQUIRE(failed);
    CHECK(failed->error().code() == StatusCode::FAILED_PRECONDITION);
    CHECK_FALSE(none.next(stubkit::use_future).get());
  }

  TEST_CASE("a client stream: each write() then finish() gives the response with per-item failures") {
    ServerFixture f;
    REQUIRE(f.create("taken").ok());
    auto observer = std::make_shared<StreamEvents>();
    stubkit::StreamOptions options;
    options.observer = observer;
    auto bulk = stubkit::async_write_stream(*f.stub, kBulk, options);
    for (std::string id : {"a", "taken", "b", "bad id"}) {
      REQUIRE(bulk.write(create_request(id), stubkit::use_future).get());
    }
    auto response = bulk.finish(stubkit::use_future).get();
    REQUIRE(response.ok());
    CHECK(response->created() == 2);
    auto failures = stubkit::UserClient::bulk_failures(*response);
    REQUIRE(failures.size() == 2);
    CHECK(failures[0].first == 1);
    CHECK(failures[0].second.is<stubkit::AlreadyExists>());
    CHECK(failures[1].first == 3);
    CHECK(failures[1].second.is<stubkit::InvalidArgument>());
    CHECK(bulk.handle().done());
    // After finish(): a write gives false, a second finish() FAILED_PRECONDITION.
    CHECK_FALSE(bulk.write(create_request("c"), stubkit::use_future).get());
    CHECK(bulk.finish(stubkit::use_future).get().error().is<stubkit::FailedPrecondition>());
    std::lock_guard<std::mutex> lock(observer->mu);
    CHECK(observer->opened == 1);
    CHECK(observer->ended == 1);
    CHECK(observer->items == 4);
  }

  TEST_CASE("a refused client stream: finish() gives the status that ended it; writes after it give false") {
    ServerFixture f;
    f.server.faults().fail_next("BulkCreateUsers", 1, StatusCode::PERMISSION_DENIED, "no bulk for you");
    auto bulk = stubkit::async_write_stream(*f.stub, kBulk);
    // Whether these get through depends on when the refusal reaches the
    // client (gRPC's in-process transport may accept them all): either way
    // finish() tells.
    for (int i = 0; i < 5; ++i)
      (void)bulk.write(create_request("u" + std::to_string(i)), stubkit::use_future).get();
    auto response = bulk.finish(stubkit::use_future).get();
    REQUIRE_FALSE(response.ok());
    CHECK(response.error().is<stubkit::PermissionDenied>());
    CHECK(response.error().message() == "no bulk for you");
    CHECK_FALSE(bulk.write(create_request("late"), stubkit::use_future).get());
    CHECK(bulk.handle().done());
    stubkit::UserClient client(f.server.channel());
    CHECK_FALSE(client.get_user("u0")->has_value());
  }

  TEST_CASE("flow control and cancel: a write the server does not read stays pending; cancel ends it") {
    ServerFixture f;
    f.server.faults().add_latency("BulkCreateUsers", 20s);  // the server reads nothing meanwhile
    auto bulk = stubkit::async_write_stream(*f.stub, kBulk);
    // 3 MiB: more than HTTP/2's flow-control windows let through unread.
    auto write = bulk.write(create_request("big", 3 << 20), stubkit::use_future);
    while (f.server.faults().calls("BulkCreateUsers") == 0) std::this_thread::sleep_for(1ms);
    CHECK(write.wait_for(100ms) == std::future_status::timeout);
    CHECK_THROWS_AS(bulk.write(create_request("b"), stubkit::use_future), std::logic_error);
    CHECK_THROWS_AS(bulk.finish(stubkit::use_future), std::logic_error);
    CHECK_FALSE(bulk.handle().done());
    auto const start = std::chrono::steady_clock::now();
    write.cancel();  // a pending write's handle cancels the stream
    REQUIRE(write.wait_for(10s) == std::future_status::ready);
    CHECK(std::chrono::steady_clock::now() - start < 5s);
    CHECK_FALSE(write.get());
    CHECK(bulk.finish(stubkit::use_future).get().error().is<stubkit::Cancelled>());
    wait_done(bulk.handle());
    for (int i = 0; i < 500 && f.server.service().cancelled_calls() == 0; ++i)
      std::this_thread::sleep_for(10ms);
    CHECK(f.server.service().cancelled_calls() == 1);
  }

  TEST_CASE(
      "dropping a writer before finish() cancels it, nothing created; after finish() the call completes") {
    ServerFixture f;
    stubkit::AsyncHandle handle;
    {
      auto bulk = stubkit::async_write_stream(*f.stub, kBulk);
      REQUIRE(bulk.write(create_request("dropped"), stubkit::use_future).get());
      handle = bulk.handle();
    }
    wait_done(handle);
    for (int i = 0; i < 500 && f.server.faults().calls("BulkCreateUsers") == 0; ++i)
      std::this_thread::sleep_for(2ms);
    std::promise<stubkit::Result<BulkResp>> result;
    {
      auto bulk = stubkit::async_write_stream(*f.stub, kBulk);
      REQUIRE(bulk.write(create_request("kept"), stubkit::use_future).get());
      handle = bulk.finish([&](stubkit::Result<BulkResp> r) { result.set_value(std::move(r)); });
    }
    auto response = result.get_future().get();
    REQUIRE(response.ok());
    CHECK(response->created() == 1);
    wait_done(handle);
    stubkit::UserClient client(f.server.channel());
    CHECK_FALSE(client.get_user("dropped")->has_value());
    CHECK(client.get_user("kept")->has_value());
  }

  TEST_CASE("a stop token cancels a writer; a stub without the API fails its writer at once") {
    ServerFixture f;
    std::stop_source stop;
    auto bulk = stubkit::async_write_stream(*f.stub, kBulk);
    bulk.cancel_on(stop.get_token());
    REQUIRE(bulk.write(create_request("a"), stubkit::use_future).get());
    stop.request_stop();
    CHECK_FALSE(bulk.write(create_request("b"), stubkit::use_future).get());
    CHECK(bulk.finish(stubkit::use_future).get().error().is<stubkit::Cancelled>());
    wait_done(bulk.handle());

    auto mock = std::make_unique<stubkit::testing::MockUserServiceStub>();
    auto none =
        stubkit::async_write_stream(*mock, &UserService::StubInterface::async_interface::BulkCreateUsers);
    CHECK(none.handle().done());
    CHECK_FALSE(none.write(create_request("a"), stubkit::use_future).get());
    CHECK(none.finish(stubkit::use_future).get().error().is<stubkit::FailedPrecondition>());
  }

  TEST_CASE("the async resumable watch reconnects after dropped streams, losing and repeating nothing") {
    ServerFixture f;
    f.server.faults().close_stream_after("WatchUsers", 2);  // every connection dies after 2 messages
    auto observer = std::make_shared<StreamEvents>();
    stubkit::ResumableWatchOptions options;
    options.schedule = [](std::chrono::milliseconds, std::function<void()> done) { done(); };
    options.policy.max_attempts = 5;
    options.observer = observer;
    auto events = stubkit::async_watch_users(*f.stub, options);
    auto first = events.next(stubkit::use_future);
    wait_for_streams(f.server, 1);
    for (int i = 0; i < 10; ++i) REQUIRE(f.create("user" + std::to_string(i)).ok());
    std::vector<std::string> seen{brief(first.get())};
    while (seen.size() < 10) seen.push_back(brief(events.next(stubkit::use_future).get()));
    for (int i = 0; i < 10; ++i) CHECK(seen[i] == "created user" + std::to_string(i));
    events.cancel();
    CHECK(brief(events.next(stubkit::use_future).get()) == "!CANCELLED");
    wait_done(events.handle());
    std::lock_guard<std::mutex> lock(observer->mu);
    CHECK(observer->opened > 2);  // stream.open per connection
    CHECK(observer->ended == 1);
    CHECK(observer->items == 10);
  }

  TEST_CASE("the async resumable watch sends its metadata with every connection, from after_sequence") {
    stubkit::testing::EmbeddedServerOptions server_options;
    server_options.service.fault_metadata = true;
    ServerFixture f(server_options);
    for (int i = 0; i < 10; ++i) REQUIRE(f.create("user" + std::to_string(i)).ok());
    auto observer = std::make_shared<StreamEvents>();
    stubkit::ResumableWatchOptions options;
    options.schedule = [](std::chrono::milliseconds, std::function<void()> done) { done(); };
    options.policy.max_attempts = 5;
    options.metadata.emplace_back("stubkit-fault", "close-stream-after=1");
    options.after_sequence = 1;  // replay events 2..10
    options.observer = observer;
    auto events = stubkit::async_watch_users(*f.stub, options);
    for (int i = 1; i < 10; ++i) {
      CHECK(brief(events.next(stubkit::use_future).get()) == "created user" + std::to_string(i));
    }
    events.cancel();
    wait_done(events.handle());
    std::lock_guard<std::mutex> lock(observer->mu);
    // One event per connection: the fault reached each (a 10th may have opened before the cancel).
    CHECK(observer->opened >= 9);
    CHECK(observer->opened <= 10);
  }

  TEST_CASE("the async resumable watch gives up after max_attempts failed connections, with their status") {
    ServerFixture f;
    f.server.faults().fail_next("WatchUsers", 100, StatusCode::UNAVAILABLE, "down");
    std::vector<std::chrono::milliseconds> waits;
    stubkit::ResumableWatchOptions options;
    options.schedule = [&](std::chrono::milliseconds delay, std::function<void()> done) {
      waits.push_back(delay);
      done();
    };
    options.policy.max_attempts = 3;
    auto events = stubkit::async_watch_users(*f.stub, options);
    CHECK(brief(events.next(stubkit::use_future).get()) == "!UNAVAILABLE");
    CHECK(brief(events.next(stubkit::use_future).get()) == "end");
    CHECK(f.server.faults().calls("WatchUsers") == 3);
    CHECK(waits.size() == 2);
    wait_done(events.handle());

    // A code the policy does not retry ends it at once.
    f.server.faults().clear();
    f.server.faults().fail_next("WatchUsers", 1, StatusCode::PERMISSION_DENIED, "not yours");
    auto denied = stubkit::async_watch_users(*f.stub, options);
    CHECK(brief(denied.next(stubkit::use_future).get()) == "!PERMISSION_DENIED");
    CHECK(waits.size() == 2);
    wait_done(denied.handle());
  }

  TEST_CASE("the async resumable watch waits on an alarm; a cancel during the wait ends it at once") {
    ServerFixture f;
    f.server.faults().fail_next("WatchUsers", 100, StatusCode::UNAVAILABLE, "down");
    stubkit::ResumableWatchOptions options;
    options.policy.initial_backoff = 10s;
    options.policy.max_backoff = 10s;
    options.clock.random01 = [] { return 0.99; };  // a wait of about 10 s
    auto events = stubkit::async_watch_users(*f.stub, options);
    auto next = events.next(stubkit::use_future);
    while (f.server.faults().calls("WatchUsers") == 0) std::this_thread::sleep_for(1ms);
    CHECK(next.wait_for(200ms) == std::future_status::timeout);  // waiting, not reconnecting
    CHECK(f.server.faults().calls("WatchUsers") == 1);
    auto const start = std::chrono::steady_clock::now();
    events.cancel();
    REQUIRE(next.wait_for(5s) == std::future_status::ready);
    CHECK(brief(next.get()) == "!CANCELLED");
    wait_done(events.handle());
    CHECK(std::chrono::steady_clock::now() - start < 5s);
    CHECK(f.server.faults().calls("WatchUsers") == 1);
  }

  TEST_CASE("a resume schedule that drops its done ends the watch with UNKNOWN instead of hanging it") {
    ServerFixture f;
    f.server.faults().fail_next("WatchUsers", 1, StatusCode::UNAVAILABLE, "down");
    stubkit::ResumableWatchOptions options;
    options.schedule = [](std::chrono::milliseconds, std::function<void()>) {};  // drops it
    auto events = stubkit::async_watch_users(*f.stub, options);
    auto element = events.next(stubkit::use_future);
    REQUIRE(element.wait_for(10s) == std::future_status::ready);
    auto got = element.get();
    REQUIRE(got);
    CHECK(got->error().code() == StatusCode::UNKNOWN);
    CHECK(got->error().message().find("dropped its `done`") != std::string::npos);
    CHECK(brief(events.next(stubkit::use_future).get()) == "end");
    wait_done(events.handle());
    CHECK(f.server.faults().calls("WatchUsers") == 1);
  }

  TEST_CASE("the async resumable watch refuses an unusable policy and a stub without the callback API") {
    ServerFixture f;
    stubkit::ResumableWatchOptions options;
    options.policy.max_attempts = 0;
    auto bad = stubkit::async_watch_users(*f.stub, options);
    CHECK(bad.handle().done());
    auto element = bad.next(stubkit::use_future).get();
    REQUIRE(element);
    CHECK(element->error().code() == StatusCode::INVALID_ARGUMENT);
    CHECK(f.server.faults().calls("WatchUsers") == 0);

    stubkit::testing::MockUserServiceStub mock;
    auto none = stubkit::async_watch_users(mock, {});
    CHECK(brief(none.next(stubkit::use_future).get()) == "!FAILED_PRECONDITION");
    CHECK(brief(none.next(stubkit::use_future).get()) == "end");
  }

#if defined(STUBKIT_HAS_COROUTINES)
  TEST_CASE("coroutines without an executor: co_await each event, each write and the response") {
    ServerFixture f;
    std::thread writer([&] {
      wait_for_streams(f.server, 1);
      for (auto id : {"a", "b", "c"}) REQUIRE(f.create(id).ok());
    });
    stubkit::AsyncHandle handle;
    auto seen = stubkit::sync_wait(watch_in_task(*f.stub, 3, &handle));
    writer.join();
    wait_done(handle);  // the stub must stay until then
    CHECK(seen == std::vector<std::string>{"created a", "created b", "created c"});

    auto response = stubkit::sync_wait(bulk_in_task(*f.stub, {"d", "e", "a"}));
    REQUIRE(response.ok());
    CHECK(response->created() == 2);
    CHECK(response->failures_size() == 1);
  }
#endif
}

#if defined(STUBKIT_TEST_ASIO)
namespace {

asio::awaitable<std::vector<std::string>> asio_watch(UserService::Stub& stub, int n,
                                                     std::thread::id const* me, bool* same,
                                                     stubkit::AsyncHandle* handle) {
  auto events = stubkit::async_read_stream(stub, kWatch, WatchUsersRequest{}, {}, &not_heartbeat);
  *handle = events.handle();
  std::vector<std::string> seen;
  *same = true;
  while (auto event = co_await events.next(asio::use_awaitable)) {
    if (std::this_thread::get_id() != *me) *same = false;
    seen.push_back(brief(event));
    if (static_cast<int>(seen.size()) == n) break;
  }
  co_return seen;
}

asio::awaitable<void> asio_cancelled_write(UserService::Stub& stub, asio::cancellation_signal& signal,
                                           std::optional<bool>* wrote, std::string* finished,
                                           stubkit::AsyncHandle* handle) {
  auto bulk = stubkit::async_write_stream(stub, kBulk);
  *handle = bulk.handle();
  *wrote = co_await bulk.write(create_request("big", 3 << 20),
                               asio::bind_cancellation_slot(signal.slot(), asio::use_awaitable));
  auto result = co_await bulk.finish(asio::use_awaitable);
  *finished = result ? "ok" : stubkit::code_name(result.error().code());
}

}  // namespace

TEST_SUITE("async_stream") {
  TEST_CASE("asio: co_await each event on the caller's executor") {
    ServerFixture f;
    asio::io_context io;
    std::thread::id me = std::this_thread::get_id();
    bool same = false;
    stubkit::AsyncHandle handle;
    auto seen = asio::co_spawn(io, asio_watch(*f.stub, 3, &me, &same, &handle), asio::use_future);
    std::thread writer([&] {
      wait_for_streams(f.server, 1);
      for (auto id : {"a", "b", "c"}) REQUIRE(f.create(id).ok());
    });
    io.run();
    writer.join();
    REQUIRE(seen.wait_for(0s) == std::future_status::ready);
    CHECK(seen.get() == std::vector<std::string>{"created a", "created b", "created c"});
    CHECK(same);
    wait_done(handle);
  }

  TEST_CASE("asio: a cancellation slot cancels a pending write") {
    ServerFixture f;
    f.server.faults().add_latency("BulkCreateUsers", 20s);
    asio::io_context io;
    asio::cancellation_signal signal;
    std::optional<bool> wrote;
    std::string finished;
    stubkit::AsyncHandle handle;
    asio::co_spawn(io, asio_cancelled_write(*f.stub, signal, &wrote, &finished, &handle), asio::detached);
    std::thread emitter([&] {
      while (f.server.faults().calls("BulkCreateUsers") == 0) std::this_thread::sleep_for(1ms);
      asio::post(io, [&] { signal.emit(asio::cancellation_type::terminal); });
    });
    io.run();
    emitter.join();
    REQUIRE(wrote);
    CHECK_FALSE(*wrote);
    CHECK(finished == "CANCELLED");
    wait_done(handle);
  }
}
#endif
