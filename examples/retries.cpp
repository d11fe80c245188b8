// retries: retrying safely, from a call site and from the channel.
//
// Shows: stubkit::call with a RetryPolicy and a timeout (typed result, retry
// report), what is and is not retried (idempotency from the proto, a
// request_id, RetryInfo pushback), and the retry interceptor, which retries
// calls made through an unmodified generated stub.
//
// The failures are asked of the server with the stubkit-fault request header
// ("fail the first N attempts"), so the same code runs against the embedded
// server and against `user_server --preload 1 --fault-metadata`.
//
//   retries [--target HOST:PORT] [--token T]
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "example.hpp"
#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/retry.hpp"

using myservice::v1::UserService;
using namespace std::chrono_literals;

// Options for one call: 5 s for every attempt and wait, the standard policy,
// and a fault for the server to inject.
stubkit::CallOptions with_fault(std::string fault, stubkit::RetryReport* report) {
  stubkit::CallOptions options;
  options.timeout = 5s;
  options.retry = stubkit::RetryPolicy::standard();
  options.report = report;
  options.metadata.emplace_back("stubkit-fault", std::move(fault));
  return options;
}

int main(int argc, char** argv) {
  auto const flags =
      example::parse(argc, argv, "retries", "retrying safely, from a call site and from the channel",
                     "user_server --preload 1 --fault-metadata");
  example::Servers servers(flags, /*preload=*/1);
  auto stub = UserService::NewStub(servers.channel());
  myservice::v1::GetUserRequest request;
  request.set_id("u00000001");
  bool ok = true;

  // A call site: GetUser is NO_SIDE_EFFECTS in the proto, so it is retried.
  stubkit::RetryReport report;
  auto user = stubkit::call(*stub, &UserService::Stub::GetUser, request,
                            with_fault("code=UNAVAILABLE,attempts=2", &report));
  std::cout << "GetUser, first 2 attempts fail: " << (user ? "ok" : user.error().to_string()) << " after "
            << report.attempts << " attempts, " << report.total_delay.count() << " ms of backoff\n";
  if (user && report.attempts == 1) {
    std::cout << "  (the server injected no fault: start user_server with --fault-metadata)\n";
  }
  ok = ok && user.ok() && (servers.remote() || report.attempts == 3);

  // CreateUser is not idempotent: without a request_id it is attempted once.
  myservice::v1::CreateUserRequest create;
  create.mutable_user()->set_display_name("Grace");
  auto once = stubkit::call(*stub, &UserService::Stub::CreateUser, create,
                            with_fault("code=UNAVAILABLE,attempts=1", &report));
  std::cout << "CreateUser without request_id: "
            << (once ? "created " + once->user().id() : once.error().to_string()) << " (" << report.attempts
            << " attempt; " << report.stop_reason << ")\n";
  ok = ok && (servers.remote() || !once.ok());

  // With a request_id the server deduplicates, so retrying is safe.
  create.set_request_id("create-grace-" + example::run_tag());
  auto created = stubkit::call(*stub, &UserService::Stub::CreateUser, create,
                               with_fault("code=UNAVAILABLE,attempts=1", &report));
  std::cout << "CreateUser with request_id: "
            << (created ? created->user().id() : created.error().to_string()) << " after " << report.attempts
            << " attempts\n";
  ok = ok && created.ok();

  // The channel way: every unary call of a plain stub gets the policy. The
  // fault carries google.rpc.RetryInfo: the server asks for 20 ms of pushback.
  stubkit::ChannelOptions retrying_options;
  retrying_options.retry = stubkit::RetryInterceptorOptions{};
  auto retrying = UserService::NewStub(servers.channel(retrying_options));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  ctx.AddMetadata("stubkit-fault", "code=UNAVAILABLE,attempts=1,retry-delay=20ms");
  myservice::v1::User plain;
  grpc::Status status = retrying->GetUser(&ctx, request, &plain);
  std::cout << "plain stub through the retry interceptor, first attempt fails: "
            << (status.ok() ? "ok" : status.error_message()) << "\n";
  ok = ok && status.ok();
  if (!servers.remote()) {
    auto const calls = servers.embedded().faults().calls("GetUser");
    std::cout << calls << " GetUser calls reached the server in all\n";
    ok = ok && calls == 5;
  }
  return ok ? 0 : 1;
}
