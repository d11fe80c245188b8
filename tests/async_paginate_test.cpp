// Async pagination (stubkit/async_paginate.hpp): the guards it shares with
// paginate, run as one table through both (one table, two drivers), against
// a scripted server; then real listings, prefetch, cancellation in every
// state, the coroutine forms and bad input against the embedded server.
#include "stubkit/async_paginate.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

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
using myservice::v1::ListUsersRequest;
using myservice::v1::ListUsersResponse;
using myservice::v1::User;

namespace {

using Async = UserService::StubInterface::async_interface;
constexpr stubkit::AsyncUnaryMethod<class UserService::Stub::async, ListUsersRequest, ListUsersResponse>
    kListUsers = &UserService::Stub::async::ListUsers;

// A page of a scripted server: asked with `token`, it answers `ids` and
// `next`, or fails with `code`.
struct ScriptPage {
  std::string token;
  std::vector<std::string> ids;
  std::string next;
  StatusCode code = StatusCode::OK;
};

// A List server whose pages are a script, for the blocking fetch and for
// the callback API alike; it records each request.
struct Script {
  Script() = default;
  explicit Script(std::vector<ScriptPage> p) : pages(std::move(p)) {}

  std::vector<ScriptPage> pages;
  std::mutex mu;
  std::vector<ListUsersRequest> requests;
  std::vector<std::optional<std::chrono::system_clock::time_point>> deadlines;

  grpc::Status answer(grpc::ClientContext const& ctx, ListUsersRequest const& request,
                      ListUsersResponse* response) {
    {
      std::lock_guard<std::mutex> lock(mu);
      requests.push_back(request);
      auto const deadline = ctx.deadline();
      deadlines.push_back(deadline == std::chrono::system_clock::time_point::max()
                              ? std::nullopt
                              : std::optional<std::chrono::system_clock::time_point>(deadline));
    }
    for (auto const& page : pages) {
      if (page.token != request.page_token()) continue;
      if (page.code != StatusCode::OK) return grpc::Status(page.code, "scripted failure");
      for (auto const& id : page.ids) response->add_users()->set_id(id);
      response->set_next_page_token(page.next);
      return grpc::Status::OK;
    }
    return grpc::Status(StatusCode::INVALID_ARGUMENT, "no page for token " + request.page_token());
  }
  std::size_t calls() {
    std::lock_guard<std::mutex> lock(mu);
    return requests.size();
  }
};

// The callback API of a stub that answers from a script: inline, inside
// the call (as gRPC may), or from a thread of its own.
class ScriptedAsync final : public Async {
 public:
  // `gate`, if given, holds every threaded answer until it is ready.
  ScriptedAsync(Script& script, bool inline_answers, std::shared_future<void> gate = {})
      : script_(script), inline_(inline_answers), gate_(std::move(gate)) {}
  ~ScriptedAsync() override {
    for (auto& t : threads_) t.join();
  }
  // Page calls started so far (counted when made, before any answer).
  int started() const { return started_; }

  void ListUsers(grpc::ClientContext* ctx, ListUsersRequest const* request, ListUsersResponse* response,
                 std::function<void(grpc::Status)> done) override {
    ++started_;
    if (inline_) {
      done(script_.answer(*ctx, *request, response));
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    threads_.emplace_back([this, ctx, request, response, done = std::move(done)] {
      if (gate_.valid()) gate_.wait();
      done(script_.answer(*ctx, *request, response));
    });
  }

#define STUBKIT_UNUSED_UNARY(Method, Req, Resp)                                                           \
  void Method(grpc::ClientContext*, Req const*, Resp*, std::function<void(grpc::Status)> done) override { \
    done(grpc::Status(StatusCode::UNIMPLEMENTED, #Method));                                               \
  }                                                                                                       \
  void Method(grpc::ClientContext*, Req const*, Resp*, grpc::ClientUnaryReactor*) override {              \
    FAIL("not used");                                                                                     \
  }
  STUBKIT_UNUSED_UNARY(CreateUser, myservice::v1::CreateUserRequest, myservice::v1::CreateUserResponse)
  STUBKIT_UNUSED_UNARY(GetUser, myservice::v1::GetUserRequest, User)
  STUBKIT_UNUSED_UNARY(UpdateUser, myservice::v1::UpdateUserRequest, User)
  STUBKIT_UNUSED_UNARY(DeleteUser, myservice::v1::DeleteUserRequest, google::protobuf::Empty)
#undef STUBKIT_UNUSED_UNARY
  void ListUsers(grpc::ClientContext*, ListUsersRequest const*, ListUsersResponse*,
                 grpc::ClientUnaryReactor*) override {
    FAIL("not used");
  }
  void WatchUsers(grpc::ClientContext*, myservice::v1::WatchUsersRequest const*,
                  grpc::ClientReadReactor<myservice::v1::UserEvent>*) override {
    FAIL("not used");
  }
  void BulkCreateUsers(grpc::ClientContext*, myservice::v1::BulkResp*,
                       grpc::ClientWriteReactor<myservice::v1::CreateUserRequest>*) override {
    FAIL("not used");
  }
  void Chat(grpc::ClientContext*,
            grpc::ClientBidiReactor<myservice::v1::ChatMessage, myservice::v1::ChatMessage>*) override {
    FAIL("not used");
  }

 private:
  Script& script_;
  bool inline_;
  std::shared_future<void> gate_;
  std::atomic<int> started_{0};
  std::mutex mu_;
  std::vector<std::thread> threads_;
};

// What async_paginate needs of a stub: its callback API.
struct ScriptedStub {
  ScriptedAsync api;
  Async* async() { return &api; }
};

constexpr stubkit::AsyncUnaryMethod<Async, ListUsersRequest, ListUsersResponse> kScriptedList =
    &Async::ListUsers;

// An element as text: the id, "!CODE" for the error that ended the listing.
template <typename T>
std::string text_of(stubkit::Result<T> const& element) {
  if (!element.ok()) return "!" + stubkit::code_name(element.error().code());
  if constexpr (std::is_same_v<T, ListUsersResponse>) {
    std::string ids;
    for (auto const& user : element->users()) ids += user.id();
    return "[" + ids + "]";
  } else {
    return element->id();
  }
}

// Drives a listing with callbacks: each completion asks for the next
// element, as a callback-style consumer would, until the end. Returns the
// elements as text, and the spread of stack addresses the callbacks ran at.
template <typename Listing>
std::pair<std::vector<std::string>, std::ptrdiff_t> drive_by_callbacks(Listing& listing) {
  std::vector<std::string> out;
  // Shared: the completion may still be inside set_value when the wait ends.
  auto ended = std::make_shared<std::promise<void>>();
  std::map<std::thread::id, std::pair<std::uintptr_t, std::uintptr_t>> stacks;  // per thread: low, high
  std::function<void(typename Listing::value_type)> step = [&](typename Listing::value_type element) {
    int marker = 0;
    auto const at = reinterpret_cast<std::uintptr_t>(&marker);
    auto [range, fresh] = stacks.try_emplace(std::this_thread::get_id(), at, at);
    range->second.first = std::min(range->second.first, at);
    range->second.second = std::max(range->second.second, at);
    if (!element) {
      ended->set_value();
      return;
    }
    out.push_back(text_of(*element));
    listing.next(step);
  };
  listing.next(step);
  REQUIRE(ended->get_future().wait_for(30s) == std::future_status::ready);
  std::ptrdiff_t spread = 0;
  for (auto const& [thread, range] : stacks) {
    spread = std::max(spread, static_cast<std::ptrdiff_t>(range.second - range.first));
  }
  return {out, spread};
}

// The guards' table: each case runs through paginate and async_paginate.
struct GuardCase {
  char const* name;
  std::vector<ScriptPage> pages;
  std::vector<std::string> items;  // what the items view gives
  std::vector<std::string> pages_view;
  stubkit::PaginateOptions options = {};
  std::string start_token = "";
};

std::vector<GuardCase> guard_cases() {
  std::vector<GuardCase> cases;
  cases.push_back({"three pages in order",
                   {{"", {"a", "b"}, "t1"}, {"t1", {"c"}, "t2"}, {"t2", {"d"}, ""}},
                   {"a", "b", "c", "d"},
                   {"[ab]", "[c]", "[d]"}});
  cases.push_back({"an error mid-listing is the last element",
                   {{"", {"a"}, "t1"}, {"t1", {}, "", StatusCode::UNAVAILABLE}},
                   {"a", "!UNAVAILABLE"},
                   {"[a]", "!UNAVAILABLE"}});
  cases.push_back({"a stuck token ends with INTERNAL after its page",
                   {{"", {"a"}, "t1"}, {"t1", {"b"}, "t1"}},
                   {"a", "b", "!INTERNAL"},
                   {"[a]", "[b]", "!INTERNAL"}});
  GuardCase cycle{"a cycle back to the resume token",
                  {{"t0", {"a"}, "t1"}, {"t1", {"b"}, "t0"}},
                  {"a", "b", "!INTERNAL"},
                  {"[a]", "[b]", "!INTERNAL"}};
  cycle.start_token = "t0";
  cases.push_back(cycle);
  cases.push_back({"empty pages with a token are skipped by the items view",
                   {{"", {}, "t1"}, {"t1", {}, "t2"}, {"t2", {"a"}, ""}},
                   {"a"},
                   {"[]", "[]", "[a]"}});
  GuardCase empty_run{"a run of empty pages ends the listing",
                      {{"", {}, "t1"}, {"t1", {}, "t2"}, {"t2", {}, "t3"}, {"t3", {"z"}, ""}},
                      {"!INTERNAL"},
                      {"[]", "[]", "[]", "!INTERNAL"}};
  empty_run.options.max_empty_pages = 3;
  cases.push_back(empty_run);
  GuardCase limited{"max_items trims a page and fetches no further",
                    {{"", {"a", "b"}, "t1"}, {"t1", {"c", "d"}, "t2"}, {"t2", {"e"}, ""}},
                    {"a", "b", "c"},
                    {"[ab]", "[cd]"}};
  limited.options.max_items = 3;
  cases.push_back(limited);
  cases.push_back({"an empty listing", {{"", {}, ""}}, {}, {"[]"}});
  GuardCase late{"a listing deadline already passed: no call at all",
                 {{"", {"a"}, ""}},
                 {"!DEADLINE_EXCEEDED"},
                 {"!DEADLINE_EXCEEDED"}};
  late.options.deadline = std::chrono::system_clock::now() - 1s;
  cases.push_back(late);
  return cases;
}

}  // namespace

TEST_SUITE("async_paginate") {
  TEST_CASE("one table of guards, two drivers: paginate and async_paginate agree element for element") {
    for (auto const& c : guard_cases()) {
      for (bool inline_answers : {true, false}) {
        for (bool prefetch : {false, true}) {
          CAPTURE(c.name);
          CAPTURE(inline_answers);
          CAPTURE(prefetch);
          stubkit::PaginateOptions options = c.options;
          options.prefetch = prefetch;
          ListUsersRequest request;
          request.set_page_size(2);
          request.set_page_token(c.start_token);

          Script blocking{c.pages};
          auto fetch = [&](grpc::ClientContext& ctx, ListUsersRequest const& r) {
            ListUsersResponse response;
            grpc::Status status = blocking.answer(ctx, r, &response);
            return stubkit::to_result(status, std::move(response));
          };
          std::vector<std::string> sync_items;
          for (auto& item : stubkit::paginate(fetch, request, options)) sync_items.push_back(text_of(item));
          CHECK(sync_items == c.items);

          Script script{c.pages};
          ScriptedStub stub{ScriptedAsync(script, inline_answers)};
          auto items = stubkit::async_paginate(stub, kScriptedList, request, options);
          CHECK(drive_by_callbacks(items).first == c.items);
          // The same page requests as paginate made (max_items caps page_size alike).
          {
            std::lock_guard<std::mutex> a(blocking.mu), b(script.mu);
            REQUIRE(script.requests.size() >= blocking.requests.size());
            for (std::size_t i = 0; i < blocking.requests.size(); ++i) {
              CHECK(script.requests[i].page_token() == blocking.requests[i].page_token());
              CHECK(script.requests[i].page_size() == blocking.requests[i].page_size());
            }
          }

          Script pages_script{c.pages};
          ScriptedStub pages_stub{ScriptedAsync(pages_script, inline_answers)};
          auto pages = stubkit::async_paginate_pages(pages_stub, kScriptedList, request, options);
          CHECK(drive_by_callbacks(pages).first == c.pages_view);
        }
      }
    }
  }

  TEST_CASE("a callback that asks for the next item is not run recursively: 10000 items, flat stack") {
    Script script;
    for (int p = 0; p < 5; ++p) {
      ScriptPage page{p == 0 ? "" : "t" + std::to_string(p), {}, p == 4 ? "" : "t" + std::to_string(p + 1)};
      for (int i = 0; i < 2000; ++i) page.ids.push_back("u" + std::to_string(p * 2000 + i));
      script.pages.push_back(page);
    }
    for (bool inline_answers : {true, false}) {
      ScriptedStub stub{ScriptedAsync(script, inline_answers)};
      auto items = stubkit::async_paginate(stub, kScriptedList, ListUsersRequest{});
      auto [out, spread] = drive_by_callbacks(items);
      CHECK(out.size() == 10000);
      CHECK(out.front() == "u0");
      CHECK(out.back() == "u9999");
      // A recursive delivery would go 10000 frames deep; the loop stays flat.
      CHECK(spread < 64 * 1024);
    }
  }

  TEST_CASE("each page call gets page_timeout capped by the listing deadline, and the caller's metadata") {
    Script script{{{"", {"a"}, "t1"}, {"t1", {"b"}, ""}}};
    ScriptedStub stub{ScriptedAsync(script, false)};
    stubkit::PaginateOptions options;
    auto const now = std::chrono::system_clock::now();
    options.clock = [now] { return now; };
    options.page_timeout = 2s;
    options.deadline = now + 10s;
    auto items = stubkit::async_paginate(stub, kScriptedList, ListUsersRequest{}, options);
    CHECK(drive_by_callbacks(items).first == std::vector<std::string>{"a", "b"});
    std::lock_guard<std::mutex> lock(script.mu);
    REQUIRE(script.deadlines.size() == 2);
    for (auto const& deadline : script.deadlines) {
      REQUIRE(deadline);
      CHECK(std::chrono::abs(*deadline - (now + 2s)) < 50ms);
    }
  }

  TEST_CASE("real listings of 0, 1, 101 and 2500 users, items and pages, each user once and in order") {
    for (int count : {0, 1, 101, 2500}) {
      CAPTURE(count);
      ServerFixture f;
      f.server.service().preload(count);
      stubkit::PaginateOptions options;
      options.page_size = 100;
      options.prefetch = count % 2 == 1;
      auto items = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{}, options);
      auto [ids, spread] = drive_by_callbacks(items);
      CHECK(ids.size() == static_cast<std::size_t>(count));
      CHECK(std::is_sorted(ids.begin(), ids.end()));
      CHECK(std::set<std::string>(ids.begin(), ids.end()).size() == ids.size());
      auto pages = stubkit::async_paginate_pages(*f.stub, kListUsers, ListUsersRequest{}, options);
      auto seen = drive_by_callbacks(pages).first;
      CHECK(seen.size() == static_cast<std::size_t>(std::max(1, (count + 99) / 100)));
    }
  }

  TEST_CASE("prefetch: the next page is requested while the current one is consumed") {
    ServerFixture f;
    f.server.service().preload(7);
    stubkit::PaginateOptions options;
    options.page_size = 3;
    options.prefetch = true;
    auto items = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{}, options);
    auto first = items.next(stubkit::use_future).get();
    REQUIRE(first);
    REQUIRE(first->ok());
    // Still on the first item of page 1: page 2 is on its way without a next().
    for (int i = 0; i < 500 && f.server.faults().calls("ListUsers") < 2; ++i)
      std::this_thread::sleep_for(10ms);
    CHECK(f.server.faults().calls("ListUsers") == 2);
    int rest = 0;
    while (auto item = items.next(stubkit::use_future).get()) {
      REQUIRE(item->ok());
      ++rest;
    }
    CHECK(rest == 6);
    CHECK(f.server.faults().calls("ListUsers") == 3);  // the third page, of one user, said it was the last
    // Without prefetch, a page is requested only when an item of it is asked for.
    auto lazy = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{}, {});
    CHECK(f.server.faults().calls("ListUsers") == 3);
  }

  TEST_CASE("prefetch asks for the next page before the current page's first element is delivered") {
    Script script{{{"", {"a", "b"}, "t1"}, {"t1", {"c", "d"}, "t2"}, {"t2", {"e"}, ""}}};
    for (bool inline_answers : {true, false}) {
      for (bool pages_view : {false, true}) {
        CAPTURE(inline_answers);
        CAPTURE(pages_view);
        ScriptedStub stub{ScriptedAsync(script, inline_answers)};
        stubkit::PaginateOptions options;
        options.prefetch = true;
        // Inside each completion (where a callback consumer works): how
        // many page calls had been started by then.
        std::vector<int> started_by;
        auto drive = [&](auto& listing) {
          auto ended = std::make_shared<std::promise<void>>();
          std::function<void(typename std::decay_t<decltype(listing)>::value_type)> step = [&](auto element) {
            if (!element) return ended->set_value();
            started_by.push_back(stub.api.started());
            listing.next(step);
          };
          listing.next(step);
          REQUIRE(ended->get_future().wait_for(30s) == std::future_status::ready);
        };
        if (pages_view) {
          auto pages = stubkit::async_paginate_pages(stub, kScriptedList, ListUsersRequest{}, options);
          drive(pages);
          // Page 1 came with page 2 asked for; page 2 with page 3; page 3 is the last.
          CHECK(started_by == std::vector<int>{2, 3, 3});
        } else {
          auto items = stubkit::async_paginate(stub, kScriptedList, ListUsersRequest{}, options);
          drive(items);
          CHECK(started_by == std::vector<int>{2, 2, 3, 3, 3});
        }
      }
    }
  }

  TEST_CASE("a page that fails with a retryable code is retried with the page call's policy") {
    ServerFixture f;
    f.server.service().preload(5);
    f.server.faults().fail_next("ListUsers", 2, StatusCode::UNAVAILABLE);
    stubkit::PaginateOptions options;
    options.page_size = 2;
    stubkit::CallOptions call;
    call.retry = stubkit::RetryPolicy::standard();
    call.retry->initial_backoff = 1ms;
    auto items = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{}, options, call);
    CHECK(drive_by_callbacks(items).first.size() == 5);
    CHECK(f.server.faults().calls("ListUsers") == 5);  // 3 pages, the first tried three times
    // Without a policy, the failure ends the listing.
    f.server.faults().fail_next("ListUsers", 1, StatusCode::UNAVAILABLE);
    auto plain = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{}, options);
    CHECK(drive_by_callbacks(plain).first == std::vector<std::string>{"!UNAVAILABLE"});
  }

  TEST_CASE("cancel while a page call is in flight: the pending next() ends at once, the server sees it") {
    ServerFixture f;
    f.server.service().preload(3);
    f.server.faults().add_latency("ListUsers", 20s);
    auto items = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{});
    auto next = items.next(stubkit::use_future);
    while (f.server.faults().calls("ListUsers") == 0) std::this_thread::sleep_for(1ms);
    CHECK_FALSE(items.handle().done());
    auto const start = std::chrono::steady_clock::now();
    next.cancel();  // the handle of a pending next() cancels the listing
    REQUIRE(next.wait_for(10s) == std::future_status::ready);
    CHECK(std::chrono::steady_clock::now() - start < 5s);
    auto element = next.get();
    REQUIRE(element);
    CHECK(element->error().code() == StatusCode::CANCELLED);
    CHECK_FALSE(items.next(stubkit::use_future).get());  // then the end
    for (int i = 0; i < 500 && f.server.service().cancelled_calls() == 0; ++i)
      std::this_thread::sleep_for(10ms);
    CHECK(f.server.service().cancelled_calls() == 1);
    for (int i = 0; i < 500 && !items.handle().done(); ++i) std::this_thread::sleep_for(10ms);
    CHECK(items.handle().done());  // the cancelled page call has completed: the stub may go
  }

  TEST_CASE(
      "cancel between pages, or with items left: CANCELLED; with only the end left, or after it: the end") {
    ServerFixture f;
    f.server.service().preload(4);
    stubkit::PaginateOptions options;
    options.page_size = 2;
    auto items = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{}, options);
    auto taken = items.next(stubkit::use_future);
    REQUIRE(taken.get()->ok());
    taken.cancel();  // the handle of a next() that completed cancels nothing
    REQUIRE(items.next(stubkit::use_future).get()->ok());
    items.cancel();
    auto element = items.next(stubkit::use_future).get();
    REQUIRE(element);
    CHECK(element->error().code() == StatusCode::CANCELLED);
    CHECK_FALSE(items.next(stubkit::use_future).get());
    CHECK(f.server.faults().calls("ListUsers") == 1);

    // The last page at hand, items of it left: they are dropped, and said so.
    options.page_size = 10;
    auto one_page = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{}, options);
    REQUIRE(one_page.next(stubkit::use_future).get()->ok());
    one_page.cancel();
    auto dropped = one_page.next(stubkit::use_future).get();
    REQUIRE(dropped);
    CHECK(dropped->error().code() == StatusCode::CANCELLED);
    CHECK_FALSE(one_page.next(stubkit::use_future).get());

    // Every item delivered, only the end left: a cancel loses nothing, the end stays the end.
    auto all_taken = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{}, options);
    for (int i = 0; i < 4; ++i) REQUIRE(all_taken.next(stubkit::use_future).get()->ok());
    all_taken.cancel();
    CHECK_FALSE(all_taken.next(stubkit::use_future).get());

    auto done = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{}, options);
    while (auto e = done.next(stubkit::use_future).get()) REQUIRE(e->ok());
    done.cancel();
    CHECK_FALSE(done.next(stubkit::use_future).get());
  }

  TEST_CASE("a stop token cancels the listing; one already stopped cancels it before any page call") {
    ServerFixture f;
    f.server.service().preload(3);
    f.server.faults().add_latency("ListUsers", 20s);
    std::stop_source stop;
    auto items = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{});
    items.cancel_on(stop.get_token());
    auto next = items.next(stubkit::use_future);
    while (f.server.faults().calls("ListUsers") == 0) std::this_thread::sleep_for(1ms);
    stop.request_stop();
    REQUIRE(next.wait_for(10s) == std::future_status::ready);
    CHECK(next.get()->error().code() == StatusCode::CANCELLED);

    std::stop_source stopped;
    stopped.request_stop();
    auto never = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{});
    never.cancel_on(stopped.get_token());
    auto element = never.next(stubkit::use_future).get();
    REQUIRE(element);
    CHECK(element->error().code() == StatusCode::CANCELLED);
    CHECK(f.server.faults().calls("ListUsers") == 1);  // the first listing's only
  }

  TEST_CASE("destroying a listing with a prefetch in flight cancels the page call") {
    ServerFixture f;
    f.server.service().preload(4);
    stubkit::PaginateOptions options;
    options.page_size = 2;
    options.prefetch = true;
    // The observer hears of page 1 before the listing asks for page 2: from
    // there on the server is slow, so the prefetch is surely in flight.
    struct SlowAfterFirstPage : stubkit::Observer {
      stubkit::testing::FaultInjector* faults = nullptr;
      void on_event(stubkit::Event const& e) override {
        if (e.type == stubkit::EventType::kPage && e.page == 1) faults->add_latency("ListUsers", 20s);
      }
    };
    auto slow = std::make_shared<SlowAfterFirstPage>();
    slow->faults = &f.server.faults();
    options.observer = slow;
    stubkit::AsyncHandle handle;
    {
      auto items = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{}, options);
      REQUIRE(items.next(stubkit::use_future).get()->ok());
      while (f.server.faults().calls("ListUsers") < 2) std::this_thread::sleep_for(1ms);
      CHECK_FALSE(items.handle().done());
      handle = items.handle();
    }
    for (int i = 0; i < 500 && f.server.service().cancelled_calls() == 0; ++i)
      std::this_thread::sleep_for(10ms);
    CHECK(f.server.service().cancelled_calls() == 1);
    // The cancelled page call has completed: only now may the stub go.
    for (int i = 0; i < 500 && !handle.done(); ++i) std::this_thread::sleep_for(10ms);
    CHECK(handle.done());
  }

  TEST_CASE("bad input and misuse: a second pending next(), a throwing completion, a stub without the API") {
    ServerFixture f;
    f.server.service().preload(3);
    {
      // The page is held back until the second next() has been refused.
      Script script{{{"", {"a"}, ""}}};
      std::promise<void> open;
      ScriptedStub held{ScriptedAsync(script, false, open.get_future().share())};
      auto listing = stubkit::async_paginate(held, kScriptedList, ListUsersRequest{});
      auto first = listing.next(stubkit::use_future);
      CHECK_THROWS_AS(listing.next(stubkit::use_future), std::logic_error);
      open.set_value();
      auto a = first.get();  // the first is unharmed
      REQUIRE(a);
      CHECK(text_of(*a) == "a");
      CHECK_FALSE(listing.next(stubkit::use_future).get());
    }
    auto items = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{});
    CHECK(items.next(stubkit::use_future).get()->ok());

    // A completion that throws is reported, and the listing goes on.
    auto thrown = std::make_shared<std::promise<void>>();
    items.next([thrown](auto) {
      thrown->set_value();
      throw std::runtime_error("in the completion");
    });
    thrown->get_future().wait();
    auto next = items.next(stubkit::use_future).get();
    REQUIRE(next);
    CHECK(next->ok());

    // A stub whose callback API is missing: the listing's first element is the error.
    struct NoApi {
      Async* async() { return nullptr; }
    } no_api;
    auto none = stubkit::async_paginate(no_api, kScriptedList, ListUsersRequest{});
    auto element = none.next(stubkit::use_future).get();
    REQUIRE(element);
    CHECK(element->error().code() == StatusCode::FAILED_PRECONDITION);
    CHECK_FALSE(none.next(stubkit::use_future).get());

    // A clock that throws ends the listing with UNKNOWN naming it, not the process.
    stubkit::PaginateOptions bad_clock;
    bad_clock.page_timeout = 1s;
    bad_clock.clock = []() -> std::chrono::system_clock::time_point { throw std::runtime_error("no time"); };
    auto timeless = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{}, bad_clock);
    auto failed = timeless.next(stubkit::use_future).get();
    REQUIRE(failed);
    CHECK(failed->error().code() == StatusCode::UNKNOWN);
    CHECK(failed->error().message().find("no time") != std::string::npos);
    CHECK_FALSE(timeless.next(stubkit::use_future).get());

    // A moved-from listing refuses clearly.
    auto moved = std::move(none);
    CHECK_THROWS_AS(none.next(stubkit::use_future), std::logic_error);  // NOLINT(bugprone-use-after-move)
  }

  TEST_CASE("the listing's page events and its trace reach the observer, as paginate's do") {
    struct Pages : stubkit::Observer {
      std::mutex mu;
      std::vector<std::string> seen;
      void on_event(stubkit::Event const& e) override {
        if (e.type != stubkit::EventType::kPage) return;
        std::lock_guard<std::mutex> lock(mu);
        seen.push_back(std::string(e.source) + " " + std::to_string(e.page) + " " + std::to_string(e.items) +
                       (e.has_next_page ? " more" : " last"));
      }
    };
    ServerFixture f;
    f.server.service().preload(5);
    auto pages = std::make_shared<Pages>();
    stubkit::PaginateOptions options;
    options.page_size = 2;
    options.observer = pages;
    auto items = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{}, options);
    CHECK(drive_by_callbacks(items).first.size() == 5);
    std::lock_guard<std::mutex> lock(pages->mu);
    CHECK(pages->seen ==
          std::vector<std::string>{"paginate 1 2 more", "paginate 2 2 more", "paginate 3 1 last"});
  }
}

namespace {

// Lists every user in a coroutine without an executor.
stubkit::Task<std::vector<std::string>> list_in_task(UserService::Stub& stub,
                                                     stubkit::PaginateOptions options,
                                                     stubkit::CallOptions call = {}) {
  std::vector<std::string> ids;
  auto users = stubkit::async_paginate(stub, kListUsers, ListUsersRequest{}, options, std::move(call));
  while (auto user = co_await users.next()) {
    if (!*user) co_return std::vector<std::string>{"!" + stubkit::code_name(user->error().code())};
    ids.push_back((*user)->id());
  }
  co_return ids;
}

stubkit::Task<int> count_pages_in_task(UserService::Stub& stub) {
  stubkit::PaginateOptions options;
  options.page_size = 7;
  int pages = 0;
  auto listing = stubkit::async_paginate_pages(stub, kListUsers, ListUsersRequest{}, options);
  while (auto page = co_await listing.next()) {
    if (!*page) co_return -1;
    ++pages;
  }
  co_return pages;
}

}  // namespace

TEST_SUITE("async_paginate") {
  TEST_CASE("coroutines without an executor: co_await each item, each page") {
    ServerFixture f;
    f.server.service().preload(250);
    for (bool prefetch : {false, true}) {
      stubkit::PaginateOptions options;
      options.page_size = 40;
      options.prefetch = prefetch;
      auto ids = stubkit::sync_wait(list_in_task(*f.stub, options));
      CHECK(ids.size() == 250);
      CHECK(std::is_sorted(ids.begin(), ids.end()));
    }
    CHECK(stubkit::sync_wait(count_pages_in_task(*f.stub)) == 36);
  }

  TEST_CASE("a coroutine destroyed while it awaits the next item cancels the listing") {
    ServerFixture f;
    f.server.service().preload(3);
    f.server.faults().add_latency("ListUsers", 20s);
    auto ends = std::make_shared<CallEnds>();
    stubkit::CallOptions call;
    call.observer = ends;
    {
      stubkit::Task<std::vector<std::string>> task = list_in_task(*f.stub, {}, call);
      // Start it by hand: a Task starts when awaited; await it from a bare coroutine.
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
      auto body = [](stubkit::Task<std::vector<std::string>>& t) -> Bare { co_await t; };
      Bare bare = body(task);
      bare.coroutine.resume();
      while (f.server.faults().calls("ListUsers") == 0) std::this_thread::sleep_for(1ms);
      bare.coroutine.destroy();
    }  // the task's frame, its listing and its Awaitable go here
    for (int i = 0; i < 500 && f.server.service().cancelled_calls() == 0; ++i)
      std::this_thread::sleep_for(10ms);
    CHECK(f.server.service().cancelled_calls() == 1);
    CHECK(ends->wait_for(1));  // the page call has completed: the stub may go
  }
}

#if defined(STUBKIT_TEST_ASIO)
namespace {

asio::awaitable<std::size_t> asio_list(UserService::Stub& stub, std::thread::id* resumed_on, bool* same) {
  stubkit::PaginateOptions options;
  options.page_size = 10;
  options.prefetch = true;
  auto users = stubkit::async_paginate(stub, kListUsers, ListUsersRequest{}, options);
  std::size_t count = 0;
  *same = true;
  while (auto user = co_await users.next(asio::use_awaitable)) {
    if (!*user) co_return 0;
    if (std::this_thread::get_id() != *resumed_on) *same = false;
    ++count;
  }
  co_return count;
}

using Listing =
    decltype(stubkit::async_paginate(std::declval<UserService::Stub&>(), kListUsers, ListUsersRequest{}));

// A next() through asio while another is pending: refused with
// FAILED_PRECONDITION (asio starts it where nothing may throw).
asio::awaitable<void> asio_second_next(Listing& users, std::string* got) {
  auto element = co_await users.next(asio::use_awaitable);
  *got = !element        ? std::string("end")
         : element->ok() ? (*element)->id()
                         : "!" + stubkit::code_name(element->error().code());
}

asio::awaitable<void> asio_cancelled_listing(UserService::Stub& stub, asio::cancellation_signal& signal,
                                             std::optional<stubkit::Result<User>>* out) {
  auto users = stubkit::async_paginate(stub, kListUsers, ListUsersRequest{});
  *out = co_await users.next(asio::bind_cancellation_slot(signal.slot(), asio::use_awaitable));
}

}  // namespace

TEST_SUITE("async_paginate") {
  TEST_CASE("asio: co_await each item on the caller's executor") {
    ServerFixture f;
    f.server.service().preload(45);
    asio::io_context io;
    std::thread::id me = std::this_thread::get_id();
    bool same = false;
    std::future<std::size_t> count = asio::co_spawn(io, asio_list(*f.stub, &me, &same), asio::use_future);
    io.run();
    REQUIRE(count.wait_for(0s) == std::future_status::ready);
    CHECK(count.get() == 45);
    CHECK(same);
  }

  TEST_CASE("asio: a second next() while one is pending completes with FAILED_PRECONDITION, not a crash") {
    ServerFixture f;
    f.server.service().preload(2);
    f.server.faults().add_latency("ListUsers", 20s);
    auto users = stubkit::async_paginate(*f.stub, kListUsers, ListUsersRequest{});
    auto first = users.next(stubkit::use_future);  // pending: the server holds the page
    asio::io_context io;
    std::string second;
    asio::co_spawn(io, asio_second_next(users, &second), asio::detached);
    io.run();
    CHECK(second == "!FAILED_PRECONDITION");
    users.cancel();  // the first is unharmed: it ends as the cancel says
    REQUIRE(first.wait_for(10s) == std::future_status::ready);
    CHECK(first.get()->error().code() == StatusCode::CANCELLED);
  }

  TEST_CASE("asio: a cancellation slot cancels the listing while its page call is in flight") {
    ServerFixture f;
    f.server.service().preload(3);
    f.server.faults().add_latency("ListUsers", 20s);
    asio::io_context io;
    asio::cancellation_signal signal;
    std::optional<stubkit::Result<User>> result = stubkit::Error(StatusCode::UNKNOWN, "not run");
    asio::co_spawn(io, asio_cancelled_listing(*f.stub, signal, &result), asio::detached);
    std::thread emitter([&] {
      while (f.server.faults().calls("ListUsers") == 0) std::this_thread::sleep_for(1ms);
      asio::post(io, [&] { signal.emit(asio::cancellation_type::terminal); });
    });
    auto const start = std::chrono::steady_clock::now();
    io.run();
    emitter.join();
    CHECK(std::chrono::steady_clock::now() - start < 10s);
    REQUIRE(result);
    CHECK(result->error().code() == StatusCode::CANCELLED);
    for (int i = 0; i < 500 && f.server.service().cancelled_calls() == 0; ++i)
      std::this_thread::sleep_for(10ms);
    CHECK(f.server.service().cancelled_calls() == 1);
  }
}
#endif
