// Pagination: exact page requests and misbehaving servers against a mock
// stub; real listings against the embedded server; genericity on a second,
// unrelated service.
#include "stubkit/paginate.hpp"

#include <doctest/doctest.h>
#include <unistd.h>  // gettid

#include <atomic>
#include <condition_variable>
#include <doctest/trompeloeil.hpp>
#include <future>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "book_shelf.hpp"
#include "library/v1/book.grpc.pb.h"
#include "stubkit/testing/mock_user_service.hpp"
#include "stubkit/user_client.hpp"
#include "support.hpp"

using namespace stubkit_tests;
using grpc::StatusCode;
using myservice::v1::ListUsersRequest;
using myservice::v1::ListUsersResponse;
using myservice::v1::User;
using stubkit::testing::MockUserServiceStub;
using trompeloeil::_;

namespace {

using Stub = UserService::StubInterface;

// Fills a mocked ListUsers response.
void page(ListUsersResponse* response, std::vector<std::string> const& ids, std::string const& next) {
  for (auto const& id : ids) response->add_users()->set_id(id);
  response->set_next_page_token(next);
}

// Drains an item range into ids; an error ends up as "!CODE".
template <typename Range>
std::vector<std::string> drain(Range&& range) {
  std::vector<std::string> out;
  for (auto& item : range) {
    out.push_back(item ? item->id() : "!" + stubkit::code_name(item.error().code()));
  }
  return out;
}

ListUsersRequest request_with(int page_size, std::string const& token = "") {
  ListUsersRequest request;
  request.set_page_size(page_size);
  request.set_page_token(token);
  return request;
}

}  // namespace

TEST_SUITE("paginate") {
  TEST_CASE("pages are requested in order with the server's tokens, and the listing ends on an empty token") {
    MockUserServiceStub stub;
    trompeloeil::sequence seq;
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .WITH(_2.page_token().empty() && _2.page_size() == 2)
        .SIDE_EFFECT(page(_3, {"a", "b"}, "t1"))
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .WITH(_2.page_token() == "t1" && _2.page_size() == 2)
        .SIDE_EFFECT(page(_3, {"c"}, ""))
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    stubkit::PaginateOptions options;
    options.page_size = 2;
    CHECK(drain(stubkit::paginate(stub, &Stub::ListUsers, ListUsersRequest{}, options)) ==
          std::vector<std::string>{"a", "b", "c"});
  }

  TEST_CASE("nothing is fetched until the range is iterated") {
    MockUserServiceStub stub;
    FORBID_CALL(stub, ListUsers(_, _, _));
    auto range = stubkit::paginate(stub, &Stub::ListUsers, ListUsersRequest{});
    (void)range;
  }

  TEST_CASE("an error mid-listing is the last element, after every item before it") {
    MockUserServiceStub stub;
    trompeloeil::sequence seq;
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .SIDE_EFFECT(page(_3, {"a", "b"}, "t1"))
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .RETURN(grpc::Status(StatusCode::UNAVAILABLE, "backend down"))
        .IN_SEQUENCE(seq);
    auto items = stubkit::paginate(stub, &Stub::ListUsers, ListUsersRequest{});
    std::vector<std::string> ids;
    std::string message;
    for (auto& item : items) {
      if (!item) {
        message = item.error().message();
        break;
      }
      ids.push_back(item->id());
    }
    CHECK(ids == std::vector<std::string>{"a", "b"});
    CHECK(message == "backend down");
  }

  TEST_CASE("value() on the error element throws the typed exception") {
    MockUserServiceStub stub;
    REQUIRE_CALL(stub, ListUsers(_, _, _)).RETURN(grpc::Status(StatusCode::PERMISSION_DENIED, "no"));
    auto items = stubkit::paginate(stub, &Stub::ListUsers, ListUsersRequest{});
    CHECK_THROWS_AS(items.begin()->value(), stubkit::PermissionDeniedError);
  }

  TEST_CASE("a server that returns the same token again stops with a clear error, not a loop") {
    MockUserServiceStub stub;
    trompeloeil::sequence seq;
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .SIDE_EFFECT(page(_3, {"a"}, "t1"))
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .WITH(_2.page_token() == "t1")
        .SIDE_EFFECT(page(_3, {"b"}, "t1"))  // stuck
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    auto items = stubkit::paginate(stub, &Stub::ListUsers, ListUsersRequest{});
    std::vector<std::string> ids;
    std::optional<stubkit::Error> error;
    for (auto& item : items) {
      if (item)
        ids.push_back(item->id());
      else
        error = item.error();
    }
    CHECK(ids == std::vector<std::string>{"a", "b"});
    REQUIRE(error);
    CHECK(error->code() == StatusCode::INTERNAL);
    CHECK(error->message().find("page token it had returned before") != std::string::npos);
    CHECK(error->message().find("myservice.v1.ListUsersResponse") != std::string::npos);
  }

  TEST_CASE("cyclic tokens are caught, including a cycle back to the resume token") {
    MockUserServiceStub stub;
    trompeloeil::sequence seq;
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .WITH(_2.page_token() == "t0")
        .SIDE_EFFECT(page(_3, {"a"}, "t1"))
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .WITH(_2.page_token() == "t1")
        .SIDE_EFFECT(page(_3, {"b"}, "t2"))
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .WITH(_2.page_token() == "t2")
        .SIDE_EFFECT(page(_3, {"c"}, "t0"))
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    CHECK(drain(stubkit::paginate(stub, &Stub::ListUsers, request_with(0, "t0"))) ==
          std::vector<std::string>{"a", "b", "c", "!INTERNAL"});
  }

  TEST_CASE("empty pages that carry a token are skipped, and the listing goes on") {
    MockUserServiceStub stub;
    trompeloeil::sequence seq;
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .SIDE_EFFECT(page(_3, {}, "t1"))
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .SIDE_EFFECT(page(_3, {}, "t2"))
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .SIDE_EFFECT(page(_3, {"a"}, ""))
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    CHECK(drain(stubkit::paginate(stub, &Stub::ListUsers, ListUsersRequest{})) ==
          std::vector<std::string>{"a"});
  }

  TEST_CASE("an endless run of empty pages ends with an error after max_empty_pages") {
    MockUserServiceStub stub;
    int calls = 0;
    ALLOW_CALL(stub, ListUsers(_, _, _))
        .LR_SIDE_EFFECT(page(_3, {}, "t" + std::to_string(++calls)))
        .RETURN(grpc::Status::OK);
    stubkit::PaginateOptions options;
    options.max_empty_pages = 5;
    auto ids = drain(stubkit::paginate(stub, &Stub::ListUsers, ListUsersRequest{}, options));
    CHECK(ids == std::vector<std::string>{"!INTERNAL"});
    CHECK(calls == 5);
  }

  TEST_CASE("an empty listing yields nothing") {
    MockUserServiceStub stub;
    REQUIRE_CALL(stub, ListUsers(_, _, _)).RETURN(grpc::Status::OK);
    CHECK(drain(stubkit::paginate(stub, &Stub::ListUsers, ListUsersRequest{})).empty());
  }

  TEST_CASE("max_items asks for no more than remain, trims a larger page, and fetches no further") {
    MockUserServiceStub stub;
    trompeloeil::sequence seq;
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .WITH(_2.page_size() == 2)
        .SIDE_EFFECT(page(_3, {"a", "b"}, "t1"))
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .WITH(_2.page_size() == 1)                     // one item remains
        .SIDE_EFFECT(page(_3, {"c", "d", "e"}, "t2"))  // the server sends more
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    stubkit::PaginateOptions options;
    options.page_size = 2;
    options.max_items = 3;
    CHECK(drain(stubkit::paginate(stub, &Stub::ListUsers, ListUsersRequest{}, options)) ==
          std::vector<std::string>{"a", "b", "c"});
  }

  TEST_CASE("max_items with the server's default page size asks for exactly what remains") {
    MockUserServiceStub stub;
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .WITH(_2.page_size() == 7)
        .SIDE_EFFECT(page(_3, {"a"}, ""))
        .RETURN(grpc::Status::OK);
    stubkit::PaginateOptions options;
    options.max_items = 7;
    CHECK(drain(stubkit::paginate(stub, &Stub::ListUsers, ListUsersRequest{}, options)).size() == 1);
  }

  TEST_CASE("a page larger than requested is accepted whole") {
    MockUserServiceStub stub;
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .WITH(_2.page_size() == 1)
        .SIDE_EFFECT(page(_3, {"a", "b", "c"}, ""))
        .RETURN(grpc::Status::OK);
    CHECK(drain(stubkit::paginate(stub, &Stub::ListUsers, request_with(1))).size() == 3);
  }

  TEST_CASE("a listing deadline that has passed ends the listing without another call") {
    MockUserServiceStub stub;
    auto now = std::chrono::system_clock::now();
    stubkit::PaginateOptions options;
    options.deadline = now + 10s;
    options.clock = [&] { return now; };
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .WITH(_1->deadline() == *options.deadline)
        .SIDE_EFFECT(page(_3, {"a"}, "t1"))
        .LR_SIDE_EFFECT(now += 11s)
        .RETURN(grpc::Status::OK);
    auto ids = drain(stubkit::paginate(stub, &Stub::ListUsers, ListUsersRequest{}, options));
    CHECK(ids == std::vector<std::string>{"a", "!DEADLINE_EXCEEDED"});
  }

  TEST_CASE("each page call gets page_timeout, capped by the listing deadline") {
    MockUserServiceStub stub;
    auto now = std::chrono::system_clock::now();
    stubkit::PaginateOptions options;
    options.clock = [&] { return now; };
    options.page_timeout = 2s;
    options.deadline = now + 3s;
    trompeloeil::sequence seq;
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .WITH(_1->deadline() == now + 2s)
        .SIDE_EFFECT(page(_3, {"a"}, "t1"))
        .LR_SIDE_EFFECT(now += 1500ms)
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .WITH(_1->deadline() == *options.deadline)  // 1.5 s left < page_timeout
        .SIDE_EFFECT(page(_3, {"b"}, ""))
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    CHECK(drain(stubkit::paginate(stub, &Stub::ListUsers, ListUsersRequest{}, options)).size() == 2);
  }

  TEST_CASE("the pages view yields whole pages and their tokens; a saved token resumes the listing") {
    MockUserServiceStub stub;
    trompeloeil::sequence seq;
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .WITH(_2.page_token().empty())
        .SIDE_EFFECT(page(_3, {"a", "b"}, "t1"))
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .WITH(_2.page_token() == "t1")
        .SIDE_EFFECT(page(_3, {"c"}, "t2"))
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    std::string saved;
    for (auto& p : stubkit::paginate_pages(stub, &Stub::ListUsers, ListUsersRequest{})) {
      REQUIRE(p.ok());
      saved = p->next_page_token();
      if (saved == "t2") break;  // "crash" after two pages
    }
    CHECK(saved == "t2");
    // Later: resume from the saved token.
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .WITH(_2.page_token() == "t2")
        .SIDE_EFFECT(page(_3, {"d"}, ""))
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    CHECK(drain(stubkit::paginate(stub, &Stub::ListUsers, request_with(0, saved))) ==
          std::vector<std::string>{"d"});
  }

  TEST_CASE("a callable fetch can add metadata to every page call") {
    MockUserServiceStub stub;
    ALLOW_CALL(stub, ListUsers(_, _, _))
        .WITH(_2.page_token().empty())
        .SIDE_EFFECT(page(_3, {"a"}, "t1"))
        .RETURN(grpc::Status::OK);
    ALLOW_CALL(stub, ListUsers(_, _, _))
        .WITH(_2.page_token() == "t1")
        .SIDE_EFFECT(page(_3, {"b"}, ""))
        .RETURN(grpc::Status::OK);
    int calls = 0;
    auto fetch = [&](grpc::ClientContext& ctx, ListUsersRequest const& request) {
      ctx.AddMetadata("x-call", std::to_string(++calls));
      ListUsersResponse response;
      return stubkit::to_result(stub.ListUsers(&ctx, request, &response), std::move(response));
    };
    CHECK(drain(stubkit::paginate(fetch, ListUsersRequest{})) == std::vector<std::string>{"a", "b"});
    CHECK(calls == 2);
  }

  TEST_CASE("collect() gathers every item, or returns the first error") {
    MockUserServiceStub stub;
    trompeloeil::sequence seq;
    REQUIRE_CALL(stub, ListUsers(_, _, _))
        .SIDE_EFFECT(page(_3, {"a"}, "t1"))
        .RETURN(grpc::Status::OK)
        .IN_SEQUENCE(seq);
    REQUIRE_CALL(stub, ListUsers(_, _, _)).RETURN(grpc::Status(StatusCode::INTERNAL, "x")).IN_SEQUENCE(seq);
    auto all = stubkit::paginate(stub, &Stub::ListUsers, ListUsersRequest{}).collect();
    CHECK(all.error().is<stubkit::Internal>());
  }

  TEST_CASE("prefetch requests the next page while the caller still holds the current one") {
    ServerFixture f;
    f.server.service().preload(6);
    std::mutex mu;
    std::condition_variable cv;
    int started = 0;
    auto fetch = [&](grpc::ClientContext& ctx, ListUsersRequest const& request) {
      {
        std::lock_guard<std::mutex> lock(mu);
        ++started;
      }
      cv.notify_all();
      ListUsersResponse response;
      return stubkit::to_result(f.stub->ListUsers(&ctx, request, &response), std::move(response));
    };
    stubkit::PaginateOptions options;
    options.page_size = 3;
    options.prefetch = true;
    auto items = stubkit::paginate(fetch, ListUsersRequest{}, options);
    auto it = items.begin();
    REQUIRE(it != items.end());
    // Still on the first item of page 1: page 2 is already on its way.
    std::unique_lock<std::mutex> lock(mu);
    CHECK(cv.wait_for(lock, 5s, [&] { return started >= 2; }));
    lock.unlock();
    std::vector<std::string> ids;
    for (; it != items.end(); ++it) ids.push_back((*it)->id());
    CHECK(ids.size() == 6);
  }

  TEST_CASE("a listing's prefetches all run on one thread of its own, not a new thread per page") {
    ServerFixture f;
    f.server.service().preload(20);
    std::mutex mu;
    std::set<pid_t> threads;  // kernel thread ids: unlike std::thread::id, not soon reused
    int fetches = 0;
    auto fetch = [&](grpc::ClientContext& ctx, ListUsersRequest const& request) {
      {
        std::lock_guard<std::mutex> lock(mu);
        threads.insert(gettid());
        ++fetches;
      }
      ListUsersResponse response;
      return stubkit::to_result(f.stub->ListUsers(&ctx, request, &response), std::move(response));
    };
    stubkit::PaginateOptions options;
    options.page_size = 2;
    options.prefetch = true;
    auto all = stubkit::paginate(fetch, ListUsersRequest{}, options).collect();
    REQUIRE(all.ok());
    CHECK(all->size() == 20);
    std::lock_guard<std::mutex> lock(mu);
    CHECK(fetches == 10);
    // The first page on the caller's thread, every later page on one prefetch thread.
    CHECK(threads.size() == 2);
    CHECK(threads.count(gettid()) == 1);
  }

  TEST_CASE("dropping a range with a prefetch in flight cancels it and waits for it") {
    ServerFixture f;
    f.server.service().preload(4);
    std::atomic<int> calls{0};
    auto fetch = [&](grpc::ClientContext& ctx, ListUsersRequest const& request) {
      if (++calls == 2) f.server.faults().add_latency("ListUsers", 30s);  // the prefetch hangs
      ListUsersResponse response;
      return stubkit::to_result(f.stub->ListUsers(&ctx, request, &response), std::move(response));
    };
    stubkit::PaginateOptions options;
    options.page_size = 2;
    options.prefetch = true;
    auto const start = std::chrono::steady_clock::now();
    {
      auto items = stubkit::paginate(fetch, ListUsersRequest{}, options);
      REQUIRE(items.begin()->ok());
      while (calls < 2) std::this_thread::sleep_for(1ms);
    }
    CHECK(std::chrono::steady_clock::now() - start < 10s);
    CHECK(calls == 2);
  }
}

TEST_SUITE("paginate_e2e") {
  TEST_CASE("listings of 0, 1, 100, 101 and 10000 users return each user once, in order") {
    for (int count : {0, 1, 100, 101, 10000}) {
      ServerFixture f;
      f.server.service().preload(count);
      stubkit::UserClient client(f.server.channel());
      auto all = client.list_all_users();
      REQUIRE(all.ok());
      CHECK_MESSAGE(all->size() == static_cast<std::size_t>(count), count);
      std::set<std::string> ids;
      for (auto const& u : *all) ids.insert(u.id());
      CHECK(ids.size() == all->size());
      CHECK(std::is_sorted(all->begin(), all->end(),
                           [](User const& a, User const& b) { return a.id() < b.id(); }));
    }
  }

  TEST_CASE("inserts during a listing neither skip nor repeat existing users") {
    ServerFixture f;
    f.server.service().preload(500);
    stubkit::PaginateOptions options;
    options.page_size = 50;
    std::atomic<bool> stop{false};
    std::thread writer([&] {
      for (int i = 0; !stop && i < 2000; ++i) {
        (void)f.create((i % 2 ? "a" : "z") + std::to_string(i));  // before and after the cursor
      }
    });
    std::multiset<std::string> seen;
    for (auto& user : stubkit::paginate(*f.stub, &Stub::ListUsers, ListUsersRequest{}, options)) {
      REQUIRE(user.ok());
      seen.insert(user->id());
    }
    stop = true;
    writer.join();
    for (int i = 1; i <= 500; ++i) {
      std::string digits = std::to_string(i);
      std::string id = "u" + std::string(8 - digits.size(), '0') + digits;
      CHECK_MESSAGE(seen.count(id) == 1, id);
    }
    for (auto const& id : seen) CHECK_MESSAGE(seen.count(id) == 1, id);
  }

  TEST_CASE("a range given its stub as a smart pointer owns it; a null one is refused") {
    ServerFixture f;
    f.server.service().preload(7);
    // The stubs exist only inside the ranges: the listings still run.
    auto owned_unique =
        stubkit::paginate(UserService::NewStub(f.server.channel()), &Stub::ListUsers, request_with(3));
    std::shared_ptr<Stub> shared = UserService::NewStub(f.server.channel());
    auto owned_shared = stubkit::paginate_pages(shared, &Stub::ListUsers, request_with(3));
    std::weak_ptr<Stub> watch = shared;
    shared.reset();
    CHECK_FALSE(watch.expired());  // the page range holds it
    std::size_t users = 0;
    for (auto& user : owned_unique) {
      REQUIRE(user.ok());
      ++users;
    }
    CHECK(users == 7);
    std::size_t pages = 0;
    for (auto& page : owned_shared) {
      REQUIRE(page.ok());
      ++pages;
    }
    CHECK(pages == 3);
    std::unique_ptr<Stub> none;
    CHECK_THROWS_AS(stubkit::paginate(std::move(none), &Stub::ListUsers, request_with(3)),
                    std::invalid_argument);
    // What may be passed, and what does not compile (a temporary stub: see
    // tests/compile_fail/paginate_temporary_stub.cpp).
    static_assert(stubkit::detail::is_stub_arg_v<Stub&, Stub>);
    static_assert(stubkit::detail::is_stub_arg_v<std::unique_ptr<Stub>, Stub>);
    static_assert(stubkit::detail::is_stub_arg_v<std::shared_ptr<Stub> const&, UserService::StubInterface>);
    static_assert(!stubkit::detail::is_stub_arg_v<std::shared_ptr<int>, Stub>);
  }

  TEST_CASE("a tampered token is INVALID_ARGUMENT naming page_token") {
    ServerFixture f;
    f.server.service().preload(10);
    std::string token;
    for (auto& p : stubkit::paginate_pages(*f.stub, &Stub::ListUsers, request_with(3))) {
      token = p->next_page_token();
      break;
    }
    token[token.size() / 2] ^= 1;
    auto items = stubkit::paginate(*f.stub, &Stub::ListUsers, request_with(3, token));
    auto& first = *items.begin();
    REQUIRE_FALSE(first.ok());
    CHECK(first.error().is<stubkit::InvalidArgument>());
    CHECK(first.error().details<google::rpc::BadRequest>()->field_violations(0).field() == "page_token");
  }

  TEST_CASE("UserClient::get_user: found, missing as empty, other errors surfaced") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    stubkit::UserClient client(f.server.channel());
    auto found = client.get_user("ada");
    REQUIRE(found.ok());
    REQUIRE(found->has_value());
    CHECK((*found)->email() == "ada@example.com");
    auto missing = client.get_user("nobody");
    REQUIRE(missing.ok());
    CHECK_FALSE(missing->has_value());
    f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE);
    auto down = client.get_user("ada");
    REQUIRE_FALSE(down.ok());
    CHECK(down.error().is<stubkit::Unavailable>());
  }

  TEST_CASE("UserClient over a mock: list_users asks for pages of 100 with the client's timeout") {
    auto mock = std::make_unique<MockUserServiceStub>();
    auto const before = std::chrono::system_clock::now();
    REQUIRE_CALL(*mock, ListUsers(_, _, _))
        .WITH(_2.page_size() == 100 && _1->deadline() >= before + 2s && _1->deadline() <= before + 60s)
        .SIDE_EFFECT(page(_3, {"a"}, ""))
        .RETURN(grpc::Status::OK);
    stubkit::UserClient client(std::move(mock), 2s);
    CHECK(drain(client.list_users()) == std::vector<std::string>{"a"});
  }
}

// ---------------------------------------------------------------------------
// A second service: nothing above is specific to users.

TEST_SUITE("paginate_generic") {
  TEST_CASE("BookService.ListBooks pages through `books`, named in one line") {
    BookShelf shelf(25);
    grpc::ServerBuilder builder;
    builder.RegisterService(&shelf);
    auto server = builder.BuildAndStart();
    auto stub = library::v1::BookService::NewStub(server->InProcessChannel({}));
    library::v1::ListBooksRequest request;
    request.set_parent("shelves/s");
    stubkit::PaginateOptions options;
    options.page_size = 4;

    std::vector<std::string> titles;
    for (auto& book : stubkit::paginate(
             *stub, &library::v1::BookService::Stub::ListBooks, request,
             [](library::v1::ListBooksResponse& r) { return r.mutable_books(); }, options)) {
      REQUIRE(book.ok());
      static_assert(std::is_same_v<std::decay_t<decltype(*book)>, library::v1::Book>);
      titles.push_back(book->title());
    }
    CHECK(titles.size() == 25);
    CHECK(titles.front() == "Book 0");
    CHECK(titles.back() == "Book 24");

    int pages = 0;
    for (auto& p : stubkit::paginate_pages(
             *stub, &library::v1::BookService::Stub::ListBooks, request,
             [](library::v1::ListBooksResponse& r) { return r.mutable_books(); }, options)) {
      REQUIRE(p.ok());
      CHECK(p->unreachable_size() == 1);
      ++pages;
    }
    CHECK(pages == 7);
    server->Shutdown();
  }
}
