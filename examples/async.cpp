// async: calls without a blocked thread, and coroutines two ways (C++20).
//
// Shows: a fan-out of 1000 GetUser calls in flight at once, written as an
// executor-free stubkit::Task and as an asio coroutine; a retried call with
// a callback; a call cancelled during its backoff wait. The faults are asked
// of the server with the stubkit-fault request header, so the same code runs
// against the embedded server and against `user_server --preload 1 --fault-metadata`.
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

using myservice::v1::GetUserRequest;
using myservice::v1::User;
using myservice::v1::UserService;
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

int main(int argc, char** argv) {
  auto const flags =
      example::parse(argc, argv, "async", "calls without a blocked thread, and coroutines (C++20)",
                     "user_server --preload 1 --fault-metadata");
  example::Servers servers(flags, /*preload=*/1);
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
