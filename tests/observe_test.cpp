// Observability: the events of stubkit::call, the retry interceptor,
// paginate, the stream helpers and the resumable watch, the log lines of
// LogObserver, and observers that misbehave.
#include "stubkit/observe.hpp"

#include <doctest/doctest.h>

#include <future>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "stubkit/channel.hpp"
#include "stubkit/paginate.hpp"
#include "stubkit/retry.hpp"
#include "stubkit/retry_interceptor.hpp"
#include "stubkit/stream.hpp"
#include "stubkit/user_client.hpp"
#include "support.hpp"

using namespace stubkit_tests;
using grpc::StatusCode;
using myservice::v1::User;
using myservice::v1::UserEvent;
using stubkit::Event;
using stubkit::EventType;
using Stub = UserService::Stub;

namespace {

constexpr char kGetUser[] = "/myservice.v1.UserService/GetUser";

// An event with its strings copied (an Event's views die with on_event).
struct Seen {
  EventType type;
  std::string source, method, message, peer, reason;
  int attempt, attempts;
  StatusCode code;
  std::chrono::milliseconds delay;
  std::chrono::nanoseconds latency;
  bool retries_allowed, has_next_page;
  std::int64_t page, items, sequence;

  explicit Seen(Event const& e)
      : type(e.type),
        source(e.source),
        method(e.method),
        message(e.message),
        peer(e.peer),
        reason(e.reason),
        attempt(e.attempt),
        attempts(e.attempts),
        code(e.code),
        delay(e.delay),
        latency(e.latency),
        retries_allowed(e.retries_allowed),
        has_next_page(e.has_next_page),
        page(e.page),
        items(e.items),
        sequence(e.sequence) {}

  // "retry 2 UNAVAILABLE": what a sequence check compares.
  std::string brief() const {
    std::string s = stubkit::event_name(type);
    if (attempt > 0) s += " " + std::to_string(attempt);
    bool const has_code = type == EventType::kCallEnd || type == EventType::kAttemptEnd ||
                          type == EventType::kRetry || type == EventType::kGiveUp ||
                          type == EventType::kStreamEnd || type == EventType::kStreamResume ||
                          type == EventType::kPage;
    if (has_code) s += " " + stubkit::code_name(code);
    return s;
  }
};

// Keeps every event it hears, from any thread.
struct Recorder final : stubkit::Observer {
  void on_event(Event const& e) override {
    std::lock_guard<std::mutex> lock(mu);
    seen.emplace_back(e);
  }
  std::vector<Seen> events(std::string const& source = "") {
    std::lock_guard<std::mutex> lock(mu);
    std::vector<Seen> out;
    for (auto const& e : seen) {
      if (source.empty() || e.source == source) out.push_back(e);
    }
    return out;
  }
  std::vector<std::string> briefs(std::string const& source = "") {
    std::vector<std::string> out;
    for (auto const& e : events(source)) out.push_back(e.brief());
    return out;
  }
  std::vector<Seen> of(EventType type, std::string const& source = "") {
    std::vector<Seen> out;
    for (auto const& e : events(source)) {
      if (e.type == type) out.push_back(e);
    }
    return out;
  }

  std::mutex mu;
  std::vector<Seen> seen;
};

// Throws on every event.
struct Broken final : stubkit::Observer {
  void on_event(Event const&) override { throw std::runtime_error("observer bug"); }
};

// A retry clock that records its waits instead of waiting.
struct NoWaits {
  std::mutex mu;
  std::vector<std::chrono::milliseconds> waits;
  stubkit::RetryClock clock() {
    stubkit::RetryClock c;
    c.sleep = [this](std::chrono::milliseconds d) {
      std::lock_guard<std::mutex> lock(mu);
      waits.push_back(d);
    };
    c.random01 = [] { return 0.5; };
    return c;
  }
};

stubkit::CallOptions retrying(NoWaits& waits, std::shared_ptr<stubkit::Observer> observer) {
  stubkit::CallOptions options;
  options.retry = stubkit::RetryPolicy::standard();
  options.clock = waits.clock();
  options.observer = std::move(observer);
  return options;
}

// Interceptor options whose waits are recorded and skipped.
stubkit::RetryInterceptorOptions interceptor_options(NoWaits& waits,
                                                     std::shared_ptr<stubkit::Observer> observer) {
  stubkit::RetryInterceptorOptions options;
  options.schedule = [&waits](std::chrono::milliseconds delay, std::function<void()> done) {
    {
      std::lock_guard<std::mutex> lock(waits.mu);
      waits.waits.push_back(delay);
    }
    done();
  };
  options.clock.random01 = [] { return 0.5; };
  options.observer = std::move(observer);
  return options;
}

std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> just(
    std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface> factory) {
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> list;
  list.push_back(std::move(factory));
  return list;
}

// A LogObserver whose lines are kept.
struct Logged {
  explicit Logged(stubkit::LogOptions options = no_timestamps()) {
    options.sink = [this](std::string_view line) {
      std::lock_guard<std::mutex> lock(mu);
      lines.emplace_back(line);
    };
    observer = std::make_shared<stubkit::LogObserver>(options);
  }
  static stubkit::LogOptions no_timestamps() {
    stubkit::LogOptions options;
    options.timestamps = false;
    return options;
  }
  std::mutex mu;
  std::vector<std::string> lines;
  std::shared_ptr<stubkit::LogObserver> observer;
};

// The default observer for one test case; none again afterwards.
struct DefaultObserver {
  explicit DefaultObserver(std::shared_ptr<stubkit::Observer> observer) {
    stubkit::set_default_observer(std::move(observer));
  }
  ~DefaultObserver() { stubkit::set_default_observer(nullptr); }
};

std::vector<std::string> const kRetriedTwice = {
    "call.start",          "attempt.start 1", "attempt.end 1 UNAVAILABLE",
    "retry 1 UNAVAILABLE", "attempt.start 2", "attempt.end 2 UNAVAILABLE",
    "retry 2 UNAVAILABLE", "attempt.start 3", "attempt.end 3 OK",
    "call.end OK"};

// The events of a GetUser that failed twice with UNAVAILABLE, then worked.
void check_retried_twice(Recorder& recorder, NoWaits& waits, std::string const& source) {
  CHECK(recorder.briefs() == kRetriedTwice);
  for (auto const& e : recorder.events()) {
    CHECK(e.source == source);
    CHECK(e.method == kGetUser);
  }
  auto const retries = recorder.of(EventType::kRetry);
  REQUIRE(retries.size() == 2);
  REQUIRE(waits.waits.size() == 2);
  CHECK(retries[0].delay == waits.waits[0]);  // the wait announced is the wait made
  CHECK(retries[1].delay == waits.waits[1]);
  auto const end = recorder.of(EventType::kCallEnd).at(0);
  CHECK(end.attempts == 3);
  CHECK(end.delay == waits.waits[0] + waits.waits[1]);
}

std::vector<std::string> const kOneAttempt = {"call.start", "attempt.start 1", "attempt.end 1 OK",
                                              "call.end OK"};

}  // namespace

TEST_SUITE("observe") {
  TEST_CASE("a retried stubkit::call reports its call, attempts and waits in order") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    f.server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE, "backend down");
    auto recorder = std::make_shared<Recorder>();
    NoWaits waits;
    auto user = stubkit::call(*f.stub, &Stub::GetUser, get_request("ada"), retrying(waits, recorder));
    REQUIRE(user.ok());
    check_retried_twice(*recorder, waits, "call");
    CHECK(recorder->of(EventType::kRetry).at(0).message == "backend down");
    auto const end = recorder->of(EventType::kCallEnd).at(0);
    CHECK(end.latency >= recorder->of(EventType::kAttemptEnd).at(2).latency);
  }

  TEST_CASE("a call that gives up says why, for each way of giving up") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    auto recorder = std::make_shared<Recorder>();
    NoWaits waits;
    auto options = retrying(waits, recorder);
    std::string expected;
    SUBCASE("attempts run out") {
      options.retry->max_attempts = 2;
      f.server.faults().fail_next("GetUser", 5, StatusCode::UNAVAILABLE);
      expected = "max_attempts reached";
    }
    SUBCASE("a code that is not retryable") {
      f.server.faults().fail_next("GetUser", 1, StatusCode::PERMISSION_DENIED);
      expected = "status PERMISSION_DENIED is not retryable";
    }
    SUBCASE("a call that is not idempotent") {
      options.idempotent = false;
      f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE);
      expected = "the call is not idempotent and has no idempotency key";
    }
    SUBCASE("the throttle is closed") {
      options.throttle = std::make_shared<stubkit::RetryThrottle>(2, 0.1);  // closes at the first failure
      f.server.faults().fail_next("GetUser", 5, StatusCode::UNAVAILABLE);
      expected = "the retry throttle is closed";
    }
    auto user = stubkit::call(*f.stub, &Stub::GetUser, get_request("ada"), options);
    REQUIRE_FALSE(user.ok());
    auto const give_ups = recorder->of(EventType::kGiveUp);
    REQUIRE(give_ups.size() == 1);
    CHECK(give_ups[0].reason == expected);
    CHECK(give_ups[0].code == user.error().code());
    auto const end = recorder->of(EventType::kCallEnd);
    REQUIRE(end.size() == 1);
    CHECK(end[0].code == user.error().code());
    CHECK(end[0].attempts == static_cast<int>(recorder->of(EventType::kAttemptStart).size()));
    CHECK(recorder->events().back().type == EventType::kCallEnd);
  }

  TEST_CASE("the throttle reports closing and opening once each") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    auto recorder = std::make_shared<Recorder>();
    NoWaits waits;
    auto options = retrying(waits, recorder);
    options.throttle = std::make_shared<stubkit::RetryThrottle>(4, 1.0);  // retries while tokens > 2
    f.server.faults().fail_next("GetUser", 3, StatusCode::UNAVAILABLE);
    (void)stubkit::call(*f.stub, &Stub::GetUser, get_request("ada"), options);          // 4 -> 3 -> 2: closed
    (void)stubkit::call(*f.stub, &Stub::GetUser, get_request("ada"), options);          // 2 -> 1
    REQUIRE(stubkit::call(*f.stub, &Stub::GetUser, get_request("ada"), options).ok());  // 1 -> 2
    REQUIRE(stubkit::call(*f.stub, &Stub::GetUser, get_request("ada"), options).ok());  // 2 -> 3: open
    auto const changes = recorder->of(EventType::kThrottle);
    REQUIRE(changes.size() == 2);
    CHECK_FALSE(changes[0].retries_allowed);
    CHECK(changes[1].retries_allowed);
    CHECK(changes[0].method == kGetUser);
  }

  TEST_CASE("the retry interceptor reports the same sequence for a plain stub call") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    auto recorder = std::make_shared<Recorder>();
    NoWaits waits;
    auto stub = UserService::NewStub(
        f.server.channel(just(stubkit::retry_interceptor(interceptor_options(waits, recorder)))));
    f.server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE, "backend down");
    auto ctx = context();
    auto const request = get_request("ada");
    User user;
    grpc::Status status;
    SUBCASE("sync API") { status = stub->GetUser(ctx.get(), request, &user); }
    SUBCASE("callback API") {
      std::promise<grpc::Status> done;
      stub->async()->GetUser(ctx.get(), &request, &user,
                             [&](grpc::Status s) { done.set_value(std::move(s)); });
      auto future = done.get_future();
      REQUIRE(future.wait_for(20s) == std::future_status::ready);
      status = future.get();
    }
    REQUIRE_MESSAGE(status.ok(), status.error_message());
    CHECK(user.id() == "ada");
    check_retried_twice(*recorder, waits, "channel");
  }

  TEST_CASE("attempts over TCP name the peer that answered") {
    stubkit::testing::EmbeddedServer server(tcp_options());
    auto recorder = std::make_shared<Recorder>();
    stubkit::ChannelOptions options;
    options.observer = recorder;
    auto stub = UserService::NewStub(stubkit::make_channel(server.address(), options));
    User user;
    auto status = stub->GetUser(context().get(), get_request("nobody"), &user);
    CHECK(status.error_code() == StatusCode::NOT_FOUND);
    CHECK(recorder->briefs() == std::vector<std::string>{"call.start", "attempt.start 1",
                                                         "attempt.end 1 NOT_FOUND", "call.end NOT_FOUND"});
    auto const end = recorder->of(EventType::kAttemptEnd).at(0);
    CHECK(end.peer.find("127.0.0.1") != std::string::npos);
  }

  TEST_CASE("make_channel with a retry policy reports retries, and calls it passes through once") {
    stubkit::testing::EmbeddedServer server(tcp_options());
    auto recorder = std::make_shared<Recorder>();
    NoWaits waits;
    stubkit::ChannelOptions options;
    options.retry = interceptor_options(waits, nullptr);
    options.observer = recorder;
    auto stub = UserService::NewStub(stubkit::make_channel(server.address(), options));
    myservice::v1::CreateUserRequest create;
    create.mutable_user()->set_id("ada");
    create.mutable_user()->set_email("ada@example.com");
    myservice::v1::CreateUserResponse created;
    // No request_id: not retried, only observed.
    REQUIRE(stub->CreateUser(context().get(), create, &created).ok());
    CHECK(recorder->briefs() == kOneAttempt);
    server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE);
    recorder->seen.clear();
    User user;
    REQUIRE(stub->GetUser(context().get(), get_request("ada"), &user).ok());
    CHECK(recorder->briefs() == kRetriedTwice);
  }

  TEST_CASE("streams on an observed channel are reported as one call") {
    ServerFixture f;
    auto recorder = std::make_shared<Recorder>();
    auto stub = UserService::NewStub(f.server.channel(just(stubkit::observe_interceptor(recorder))));
    auto writer = stubkit::write_stream(*stub, &Stub::BulkCreateUsers);
    for (std::string id : {"a", "b"}) {
      myservice::v1::CreateUserRequest request;
      request.mutable_user()->set_id(id);
      request.mutable_user()->set_email(id + "@example.com");
      REQUIRE(writer.write(request));
    }
    REQUIRE(writer.finish().ok());
    CHECK(recorder->briefs("channel") == kOneAttempt);
    CHECK(recorder->events("channel").at(0).method == "/myservice.v1.UserService/BulkCreateUsers");
  }

  TEST_CASE("the default observer hears calls that have none of their own") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    auto recorder = std::make_shared<Recorder>();
    auto own = std::make_shared<Recorder>();
    {
      DefaultObserver scope(recorder);
      REQUIRE(stubkit::call(*f.stub, &Stub::GetUser, get_request("ada")).ok());
      CHECK(recorder->briefs() == kOneAttempt);
      stubkit::CallOptions options;
      options.observer = own;
      REQUIRE(stubkit::call(*f.stub, &Stub::GetUser, get_request("ada"), options).ok());
      CHECK(own->briefs() == kOneAttempt);
      CHECK(recorder->briefs().size() == kOneAttempt.size());  // not told of the call with its own
      // A channel made before the default was set hears it for calls after.
      User user;
      auto stub = UserService::NewStub(f.server.channel(just(stubkit::observe_interceptor())));
      REQUIRE(stub->GetUser(context().get(), get_request("ada"), &user).ok());
      CHECK(recorder->briefs("channel") == kOneAttempt);
    }
    CHECK(stubkit::default_observer() == nullptr);
    REQUIRE(stubkit::call(*f.stub, &Stub::GetUser, get_request("ada")).ok());
    CHECK(recorder->events().size() == 2 * kOneAttempt.size());
  }

  TEST_CASE("paginate reports each page: number, items, whether another follows") {
    ServerFixture f;
    for (int i = 0; i < 25; ++i) REQUIRE(f.create("user" + std::to_string(100 + i)).ok());
    auto recorder = std::make_shared<Recorder>();
    stubkit::PaginateOptions options;
    options.page_size = 10;
    options.observer = recorder;
    SUBCASE("fetched in turn") {}
    SUBCASE("prefetched") { options.prefetch = true; }
    std::size_t items = 0;
    for (auto& user :
         stubkit::paginate(*f.stub, &Stub::ListUsers, myservice::v1::ListUsersRequest(), options)) {
      REQUIRE(user.ok());
      ++items;
    }
    CHECK(items == 25);
    auto const pages = recorder->of(EventType::kPage, "paginate");
    REQUIRE(pages.size() == 3);
    for (int i = 0; i < 3; ++i) {
      CHECK(pages[i].page == i + 1);
      CHECK(pages[i].items == (i < 2 ? 10 : 5));
      CHECK(pages[i].has_next_page == (i < 2));
      CHECK(pages[i].code == StatusCode::OK);
      CHECK(pages[i].method == "/myservice.v1.UserService/ListUsers");
    }
  }

  TEST_CASE("a page that fails is reported with its status") {
    ServerFixture f;
    for (int i = 0; i < 5; ++i) REQUIRE(f.create("user" + std::to_string(i)).ok());
    auto recorder = std::make_shared<Recorder>();
    stubkit::PaginateOptions options;
    options.page_size = 2;
    options.observer = recorder;
    auto pages =
        stubkit::paginate_pages(*f.stub, &Stub::ListUsers, myservice::v1::ListUsersRequest(), options);
    auto it = pages.begin();
    REQUIRE(it != pages.end());
    REQUIRE(it->ok());
    f.server.faults().fail_next("ListUsers", 1, StatusCode::UNAVAILABLE, "gone");
    ++it;
    REQUIRE(it != pages.end());
    REQUIRE_FALSE(it->ok());
    auto const events = recorder->of(EventType::kPage);
    REQUIRE(events.size() == 2);
    CHECK(events[1].page == 2);
    CHECK(events[1].code == StatusCode::UNAVAILABLE);
    CHECK(events[1].message == "gone");
    CHECK(events[1].items == 0);
  }

  TEST_CASE("stream helpers report open and end, with the messages counted") {
    ServerFixture f;
    auto recorder = std::make_shared<Recorder>();
    stubkit::StreamOptions options;
    options.observer = recorder;
    options.deadline = stubkit::Deadline::after(10s);
    SUBCASE("a client stream counts what it wrote") {
      auto writer = stubkit::write_stream(*f.stub, &Stub::BulkCreateUsers, options);
      for (std::string id : {"a", "b", "c"}) {
        myservice::v1::CreateUserRequest request;
        request.mutable_user()->set_id(id);
        REQUIRE(writer.write(request));
      }
      REQUIRE(writer.finish().ok());
      CHECK(recorder->briefs() == std::vector<std::string>{"stream.open", "stream.end OK"});
      CHECK(recorder->events().at(1).items == 3);
      CHECK(recorder->events().at(0).method == "/myservice.v1.UserService/BulkCreateUsers");
    }
    SUBCASE("a server stream dropped early ends CANCELLED, counting what it read") {
      for (int i = 0; i < 3; ++i) REQUIRE(f.create("user" + std::to_string(i)).ok());
      myservice::v1::WatchUsersRequest request;
      request.set_after_sequence(1);  // replays events 2 and 3
      {
        auto events = stubkit::read_stream(*f.stub, &Stub::WatchUsers, request, options,
                                           [](UserEvent const& e) { return e.type() != "heartbeat"; });
        int read = 0;
        for (auto& event : events) {
          REQUIRE(event.ok());
          if (++read == 2) break;
        }
      }
      CHECK(recorder->briefs() == std::vector<std::string>{"stream.open", "stream.end CANCELLED"});
      CHECK(recorder->events().at(1).items >= 2);
    }
    SUBCASE("a server stream that fails ends with its status") {
      f.server.faults().fail_next("WatchUsers", 1, StatusCode::UNAVAILABLE, "down");
      for (auto& event :
           stubkit::read_stream(*f.stub, &Stub::WatchUsers, myservice::v1::WatchUsersRequest(), options)) {
        CHECK_FALSE(event.ok());
      }
      CHECK(recorder->briefs() == std::vector<std::string>{"stream.open", "stream.end UNAVAILABLE"});
      CHECK(recorder->events().at(1).message == "down");
    }
  }

  TEST_CASE("a stream keeps its observer alive after its options are gone") {
    ServerFixture f;
    std::vector<std::string> seen;  // the observer below is owned by the options only
    auto open = [&] {
      stubkit::StreamOptions options;
      options.observer =
          stubkit::observer_from([&seen](Event const& e) { seen.emplace_back(stubkit::event_name(e.type)); });
      return stubkit::write_stream(*f.stub, &Stub::BulkCreateUsers, options);
    };
    auto writer = open();
    myservice::v1::CreateUserRequest request;
    request.mutable_user()->set_id("a");
    REQUIRE(writer.write(request));
    REQUIRE(writer.finish().ok());
    CHECK(seen == std::vector<std::string>{"stream.open", "stream.end"});
  }

  TEST_CASE("a prefetched page dropped unread is not reported") {
    ServerFixture f;
    for (int i = 0; i < 5; ++i) REQUIRE(f.create("user" + std::to_string(i)).ok());
    f.server.faults().add_latency("ListUsers", 300ms);  // the prefetch is still in flight when dropped
    auto recorder = std::make_shared<Recorder>();
    stubkit::PaginateOptions options;
    options.page_size = 2;
    options.prefetch = true;
    options.observer = recorder;
    {
      auto users = stubkit::paginate(*f.stub, &Stub::ListUsers, myservice::v1::ListUsersRequest(), options);
      REQUIRE(users.begin() != users.end());
    }
    auto const pages = recorder->of(EventType::kPage);
    REQUIRE(pages.size() == 1);
    CHECK(pages[0].page == 1);
  }

  TEST_CASE("a resumable watch cancelled before it connects reports nothing") {
    ServerFixture f;
    stubkit::UserClient client(f.server.channel());
    auto recorder = std::make_shared<Recorder>();
    stubkit::ResumableWatchOptions options;
    options.observer = recorder;
    auto watch = client.watch_users_resumable(options);
    watch.cancel();
    for (auto& event : watch) CHECK(event.error().is<stubkit::Cancelled>());
    CHECK(recorder->events().empty());
  }

  TEST_CASE("the resumable watch reports each connection, each resume and its end") {
    ServerFixture f;
    f.server.faults().fail_next("WatchUsers", 100, StatusCode::UNAVAILABLE, "down");
    stubkit::UserClient client(f.server.channel());
    auto recorder = std::make_shared<Recorder>();
    stubkit::ResumableWatchOptions options;
    NoWaits waits;
    options.clock = waits.clock();
    options.policy.max_attempts = 3;
    options.after_sequence = 7;
    options.observer = recorder;
    for (auto& event : client.watch_users_resumable(options)) CHECK_FALSE(event.ok());
    CHECK(recorder->briefs() == std::vector<std::string>{"stream.open 1", "stream.resume 1 UNAVAILABLE",
                                                         "stream.open 2", "stream.resume 2 UNAVAILABLE",
                                                         "stream.open 3", "stream.end UNAVAILABLE"});
    auto const resumes = recorder->of(EventType::kStreamResume, "watch");
    REQUIRE(resumes.size() == 2);
    REQUIRE(waits.waits.size() == 2);
    CHECK(resumes[0].delay == waits.waits[0]);
    CHECK(resumes[0].sequence == 7);
    auto const end = recorder->of(EventType::kStreamEnd).at(0);
    CHECK(end.attempts == 3);
    CHECK(end.items == 0);
  }

  TEST_CASE("an observer that throws never breaks what it observes") {
    ServerFixture f;
    for (int i = 0; i < 5; ++i) REQUIRE(f.create("user" + std::to_string(i)).ok());
    auto broken = std::make_shared<Broken>();
    auto const failures_before = stubkit::observer_failures();
    NoWaits waits;
    // stubkit::call, retried.
    f.server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE);
    auto user = stubkit::call(*f.stub, &Stub::GetUser, get_request("user1"), retrying(waits, broken));
    REQUIRE(user.ok());
    CHECK(user->id() == "user1");
    // The interceptor, retried.
    auto stub = UserService::NewStub(
        f.server.channel(just(stubkit::retry_interceptor(interceptor_options(waits, broken)))));
    f.server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE);
    User plain;
    REQUIRE(stub->GetUser(context().get(), get_request("user2"), &plain).ok());
    CHECK(plain.id() == "user2");
    CHECK(f.server.faults().calls("GetUser") == 6);
    // paginate and streams.
    stubkit::PaginateOptions paging;
    paging.page_size = 2;
    paging.observer = broken;
    auto all =
        stubkit::paginate(*f.stub, &Stub::ListUsers, myservice::v1::ListUsersRequest(), paging).collect();
    REQUIRE(all.ok());
    CHECK(all->size() == 5);
    stubkit::StreamOptions streaming;
    streaming.observer = broken;
    auto writer = stubkit::write_stream(*f.stub, &Stub::BulkCreateUsers, streaming);
    myservice::v1::CreateUserRequest request;
    request.mutable_user()->set_id("z");
    REQUIRE(writer.write(request));
    REQUIRE(writer.finish().ok());
    // Each event was dropped and counted: 10 per retried call, 3 pages, 2 for the stream.
    CHECK(stubkit::observer_failures() - failures_before == 10 + 10 + 3 + 2);
  }

  TEST_CASE("fan_out hands each event to every observer, past one that throws") {
    auto first = std::make_shared<Recorder>();
    auto last = std::make_shared<Recorder>();
    auto both = stubkit::fan_out({first, std::make_shared<Broken>(), last});
    Event event;
    event.type = EventType::kRetry;
    event.attempt = 2;
    both->on_event(event);
    CHECK(first->briefs() == std::vector<std::string>{"retry 2 OK"});
    CHECK(last->briefs() == std::vector<std::string>{"retry 2 OK"});
  }
}

TEST_SUITE("observe") {
  TEST_CASE("LogObserver writes one logfmt line per event, keys in a fixed order") {
    Logged logged;
    auto& log = *logged.observer;
    auto const& lines = logged.lines;
    Event e = stubkit::detail::event_of(EventType::kRetry, "call", kGetUser);
    e.attempt = 1;
    e.code = StatusCode::UNAVAILABLE;
    e.message = "backend down";
    e.delay = 87ms;
    log.on_event(e);
    Event end = stubkit::detail::event_of(EventType::kCallEnd, "channel", kGetUser);
    end.peer = "ipv4:127.0.0.1:5000";
    end.latency = 1234567ns;
    end.attempts = 2;
    end.delay = 87ms;
    log.on_event(end);
    Event give_up = stubkit::detail::event_of(EventType::kGiveUp, "call", kGetUser);
    give_up.attempt = 3;
    give_up.code = StatusCode::UNAVAILABLE;
    give_up.message = "x";
    give_up.reason = "max_attempts reached";
    log.on_event(give_up);
    Event page =
        stubkit::detail::event_of(EventType::kPage, "paginate", "/myservice.v1.UserService/ListUsers");
    page.page = 2;
    page.items = 10;
    page.has_next_page = true;
    page.latency = 2ms;
    log.on_event(page);
    Event throttle = stubkit::detail::event_of(EventType::kThrottle, "call", kGetUser);
    throttle.retries_allowed = false;
    log.on_event(throttle);
    CHECK(lines ==
          std::vector<std::string>{
              "event=retry source=call method=/myservice.v1.UserService/GetUser attempt=1 "
              "code=UNAVAILABLE msg=\"backend down\" delay_ms=87",
              "event=call.end source=channel method=/myservice.v1.UserService/GetUser code=OK "
              "peer=ipv4:127.0.0.1:5000 latency_ms=1.235 delay_ms=87 attempts=2",
              "event=give_up source=call method=/myservice.v1.UserService/GetUser attempt=3 "
              "code=UNAVAILABLE msg=x reason=\"max_attempts reached\"",
              "event=page source=paginate method=/myservice.v1.UserService/ListUsers code=OK "
              "latency_ms=2.000 page=2 items=10 next_page=true",
              "event=throttle source=call method=/myservice.v1.UserService/GetUser retries_allowed=false",
          });
  }

  TEST_CASE("LogObserver escapes, cuts long values and stamps the time") {
    stubkit::LogOptions options;
    options.max_value = 16;
    Logged logged(options);
    auto& log = *logged.observer;
    auto const& lines = logged.lines;
    Event e = stubkit::detail::event_of(EventType::kAttemptEnd, "call", kGetUser);
    e.attempt = 1;
    e.code = StatusCode::INTERNAL;
    std::string const message = std::string("a \"quoted\"\n\x01=") + std::string(100, 'z');
    e.message = message;
    log.on_event(e);
    e.message = "tab\there";
    log.on_event(e);
    REQUIRE(lines.size() == 2);
    // ts=2026-12-01T10:00:00.123Z first.
    REQUIRE(lines[0].size() > 28);
    CHECK(lines[0].substr(0, 3) == "ts=");
    CHECK(lines[0][7] == '-');
    CHECK(lines[0][13] == 'T');
    CHECK(lines[0][22] == '.');
    CHECK(lines[0][26] == 'Z');
    CHECK(lines[0][27] == ' ');
    CHECK(lines[0].find(" msg=\"a \\\"quoted\\\"\\n\\x01=zzz...\" ") != std::string::npos);
    CHECK(lines[1].find(" msg=\"tab\\there\" ") != std::string::npos);
    CHECK(lines[1].find(" method=\"/myservice.v1.Us...\" ") != std::string::npos);
    CHECK(lines[0].find(std::string(17, 'z')) == std::string::npos);
  }

  TEST_CASE("a retried call through LogObserver logs its attempts, waits and end") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE, "down");
    Logged logged;
    auto const& lines = logged.lines;
    NoWaits waits;
    auto options = retrying(waits, logged.observer);
    REQUIRE(stubkit::call(*f.stub, &Stub::GetUser, get_request("ada"), options).ok());
    REQUIRE(lines.size() == 7);
    CHECK(lines[0] == "event=call.start source=call method=/myservice.v1.UserService/GetUser");
    CHECK(lines[2].rfind("event=attempt.end source=call method=/myservice.v1.UserService/GetUser attempt=1 "
                         "code=UNAVAILABLE msg=down ",
                         0) == 0);
    CHECK(lines[3] ==
          "event=retry source=call method=/myservice.v1.UserService/GetUser attempt=1 "
          "code=UNAVAILABLE msg=down delay_ms=" +
              std::to_string(waits.waits.at(0).count()));
    CHECK(lines[6].find(" attempts=2") != std::string::npos);
    // Nothing of the request or the response is logged.
    for (auto const& line : lines) CHECK(line.find("ada") == std::string::npos);
  }

  TEST_CASE("STUBKIT_LOG=rpc gives a LogObserver; other values are refused") {
    CHECK(stubkit::detail::observer_from_env(nullptr) == nullptr);
    CHECK(stubkit::detail::observer_from_env("") == nullptr);
    CHECK(dynamic_cast<stubkit::LogObserver*>(stubkit::detail::observer_from_env("rpc").get()) != nullptr);
    CHECK(stubkit::detail::observer_from_env("verbose") == nullptr);
  }
}
