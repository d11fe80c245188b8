// async: calls without a blocked thread, and coroutines two ways (C++20).
//
// Shows: a fan-out of 1000 GetUser calls in flight at once, and a listing of
// every user page by page with the next page fetched while one is consumed,
// each written as an executor-free stubkit::Task and as an asio coroutine;
// a watch (a server stream) that sees what a bulk create (a client stream)
// makes; a retried call with a callback; a call cancelled during its
// backoff wait.
// The faults are asked of the server with the stubkit-fault request header,
// so the same code runs against the embedded server and against
// `user_server --preload 250 --fault-metadata`.
//
//   async [--target HOST:PORT] [--token T]
#include "stubkit/async.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/use_awaitable.hpp>
#include <chrono>
#include <future>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "example.hpp"
#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/asio.hpp"
#include "stubkit/async_paginate.hpp"
#include "stubkit/async_stream.hpp"
#include "stubkit/user_client.hpp"  // PageTraits of ListUsersResponse

using myservice::v1::BulkResp;
using myservice::v1::CreateUserRequest;
using myservice::v1::GetUserRequest;
using myservice::v1::ListUsersRequest;
using myservice::v1::User;
using myservice::v1::UserEvent;
using myservice::v1::UserService;
using myservice::v1::WatchUsersRequest;
using namespace std::chrono_literals;

// A fan-out with no executor: every call starts at once; each co_await
// resumes on the gRPC thread that completed the call.
stubkit::Task<int> fan_out(UserService::Stub& stub, GetUserRequest request, int calls) {
  std::vector<stubkit::Awaitable<stubkit::Result<User>>> pending;
  for (int i = 0; i < calls; ++i) {
    pending.push_back(
        stubkit::async_call(stub, &UserService::Stub::async::GetUser, request, {}, stubkit::use_awaitable));
  }
  int found = 0;
  for (auto& call : pending) {
    stubkit::Result<User> user = co_await call;
    if (user) ++found;
  }
  co_return found;
}

// The same with asio: one small coroutine per call, each resuming on its
// io_context's thread (so `found` needs no lock).
asio::awaitable<void> get_one(UserService::Stub& stub, GetUserRequest request, int& found) {
  auto user = co_await stubkit::async_call(stub, &UserService::Stub::async::GetUser, request, {},
                                           asio::use_awaitable);
  if (user) ++found;
}

// A listing with no executor: co_await each user; with prefetch, the next
// page is on its way while this one is consumed.
stubkit::Task<stubkit::Result<int>> count_users(UserService::Stub& stub) {
  stubkit::PaginateOptions options;
  options.page_size = 100;
  options.prefetch = true;
  auto users =
      stubkit::async_paginate(stub, &UserService::Stub::async::ListUsers, ListUsersRequest{}, options);
  int count = 0;
  while (auto user = co_await users.next()) {
    if (!*user) co_return user->error();  // the error that ended the listing
    ++count;
  }
  co_return count;
}

// The same listing in an asio coroutine: each co_await resumes on the io_context.
asio::awaitable<void> count_users_asio(UserService::Stub& stub, int& count) {
  stubkit::PaginateOptions options;
  options.page_size = 100;
  options.prefetch = true;
  auto users =
      stubkit::async_paginate(stub, &UserService::Stub::async::ListUsers, ListUsersRequest{}, options);
  while (auto user = co_await users.next(asio::use_awaitable)) {
    if (!*user) co_return;
    ++count;
  }
}

// A client stream: one write at a time (each waits for flow control), then
// the server's response.
stubkit::Task<stubkit::Result<BulkResp>> bulk_create(UserService::Stub& stub, std::string prefix, int n) {
  auto bulk = stubkit::async_write_stream(stub, &UserService::Stub::async::BulkCreateUsers);
  for (int i = 0; i < n; ++i) {
    CreateUserRequest request;
    request.mutable_user()->set_id(prefix + std::to_string(i));
    request.mutable_user()->set_email(prefix + std::to_string(i) + "@example.com");
    if (!co_await bulk.write(std::move(request))) break;  // broken: finish() says why
  }
  co_return co_await bulk.finish();  // the response, with per-item failures
}

// A server stream read while the bulk create runs: its first message (a
// heartbeat) says the server is listening; then the created events come.
stubkit::Task<stubkit::Result<int>> watch_bulk_create(UserService::Stub& stub, std::string prefix, int n,
                                                      stubkit::AsyncHandle* handle) {
  auto events = stubkit::async_read_stream(stub, &UserService::Stub::async::WatchUsers, WatchUsersRequest{});
  *handle = events.handle();  // the stub must stay until it is done
  auto first = co_await events.next();
  if (!first) co_return stubkit::Error(grpc::StatusCode::UNAVAILABLE, "the watch ended at once");
  if (!*first) co_return first->error();  // the status that ended the stream
  stubkit::Result<BulkResp> bulk = co_await bulk_create(stub, prefix, n);
  if (!bulk) co_return bulk.error();
  int seen = 0;
  while (seen < bulk->created()) {
    auto event = co_await events.next();
    if (!event) co_return stubkit::Error(grpc::StatusCode::UNAVAILABLE, "the watch ended");
    if (!*event) co_return event->error();
    if ((*event)->type() == "created" && (*event)->user().id().rfind(prefix, 0) == 0) ++seen;
  }
  co_return seen;  // leaving cancels the stream
}

int main(int argc, char** argv) {
  auto const flags =
      example::parse(argc, argv, "async", "calls without a blocked thread, and coroutines (C++20)",
                     "user_server --preload 250 --fault-metadata");
  example::Servers servers(flags, /*preload=*/250);
  auto stub = UserService::NewStub(servers.channel());
  GetUserRequest request;
  request.set_id("u00000001");
  bool ok = true;

  // 1000 calls in flight from one coroutine, no thread per call.
  auto const start = std::chrono::steady_clock::now();
  int const found = stubkit::sync_wait(fan_out(*stub, request, 1000));
  auto const took =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  std::cout << "stubkit::Task fan-out: " << found << " of 1000 GetUser ok in " << took.count() << " ms\n";
  ok = ok && found == 1000;

  // The same fan-out with asio: run() returns once every call has completed.
  asio::io_context io;
  int via_asio = 0;
  for (int i = 0; i < 1000; ++i) asio::co_spawn(io, get_one(*stub, request, via_asio), asio::detached);
  io.run();
  std::cout << "asio fan-out: " << via_asio << " of 1000 GetUser ok\n";
  ok = ok && via_asio == 1000;

  // Every user, page by page, as a Task and as an asio coroutine.
  stubkit::Result<int> const listed = stubkit::sync_wait(count_users(*stub));
  std::cout << "stubkit::Task listing: "
            << (listed ? std::to_string(*listed) + " users" : listed.error().to_string()) << "\n";
  ok = ok && listed && (servers.remote() ? *listed > 0 : *listed == 250);
  int listed_asio = 0;
  asio::co_spawn(io, count_users_asio(*stub, listed_asio), asio::detached);
  io.restart();
  io.run();
  std::cout << "asio listing: " << listed_asio << " users\n";
  ok = ok && (servers.remote() ? listed_asio > 0 : listed_asio == 250);

  // A watch sees the users a bulk create makes, both streams async.
  std::string const prefix =
      "bulk-" + std::to_string(std::chrono::system_clock::now().time_since_epoch().count()) + "-";
  stubkit::AsyncHandle watch;
  stubkit::Result<int> const watched = stubkit::sync_wait(watch_bulk_create(*stub, prefix, 20, &watch));
  std::cout << "async streams: the watch saw "
            << (watched ? std::to_string(*watched) + " of 20 users created in bulk"
                        : watched.error().to_string())
            << "\n";
  ok = ok && watched && *watched == 20;
  while (!watch.done()) std::this_thread::sleep_for(1ms);  // the cancelled watch's call is over

  // A callback, and retries: the first two attempts fail, the third answers.
  stubkit::CallOptions options;
  options.timeout = 5s;
  options.retry = stubkit::RetryPolicy::standard();
  options.metadata.emplace_back("stubkit-fault", "code=UNAVAILABLE,attempts=2");
  std::promise<std::string> said;
  stubkit::async_call(*stub, &UserService::Stub::async::GetUser, request, options,
                      [&](stubkit::Result<User> user) {
                        said.set_value(user ? std::string("ok: ").append(user->display_name())
                                            : user.error().to_string());  // on a gRPC thread
                      });
  std::string const answer = said.get_future().get();
  std::cout << "callback, first 2 attempts fail: " << answer << "\n";
  ok = ok && answer.rfind("ok", 0) == 0;

  // Cancelled while it waits before its second attempt (the server asks
  // for 10 s of pushback with google.rpc.RetryInfo).
  stubkit::CallOptions waiting = options;
  waiting.timeout = 30s;
  waiting.metadata = {{"stubkit-fault", "code=UNAVAILABLE,attempts=1,retry-delay=10s"}};
  stubkit::RetryReport report;
  waiting.report = &report;
  auto call =
      stubkit::async_call(*stub, &UserService::Stub::async::GetUser, request, waiting, stubkit::use_future);
  std::this_thread::sleep_for(200ms);
  call.cancel();
  auto cancelled = call.get();
  std::cout << "cancelled during its backoff: " << (cancelled ? "ok" : cancelled.error().to_string())
            << " after " << report.attempts << " attempt(s)\n";
  ok = ok &&
       (servers.remote() || (!cancelled.ok() && cancelled.error().code() == grpc::StatusCode::CANCELLED));
  return ok ? 0 : 1;
}
