// retries: retrying safely, from a call site and from the channel.
//
// Shows: stubkit::call with a RetryPolicy and a timeout (typed result, retry
// report), what is and is not retried (idempotency from the proto, a
// request_id, RetryInfo pushback), and the retry interceptor, which retries
// calls made through an unmodified generated stub.
//
//   retries    # runs against an embedded UserService with injected faults
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "example_args.hpp"
#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/retry.hpp"
#include "stubkit/retry_interceptor.hpp"
#include "stubkit/testing/embedded_server.hpp"

using myservice::v1::UserService;
using namespace std::chrono_literals;

int main(int argc, char** argv) {
  example::embedded_only(argc, argv, "retries", "retrying safely, from a call site and from the channel");
  stubkit::testing::EmbeddedServer server;
  server.service().preload(1);
  auto stub = UserService::NewStub(server.channel());
  myservice::v1::GetUserRequest request;
  request.set_id("u00000001");
  bool ok = true;

  // A call site: GetUser is NO_SIDE_EFFECTS in the proto, so it is retried.
  server.faults().fail_next("GetUser", 2, grpc::StatusCode::UNAVAILABLE);
  stubkit::RetryReport report;
  stubkit::CallOptions options;
  options.timeout = 5s;  // bounds every attempt and every wait
  options.retry = stubkit::RetryPolicy::standard();
  options.report = &report;
  auto user = stubkit::call(*stub, &UserService::Stub::GetUser, request, options);
  std::cout << "GetUser: " << (user ? "ok" : user.error().to_string()) << " after " << report.attempts
            << " attempts, " << report.total_delay.count() << " ms of backoff\n";
  ok = ok && user.ok() && report.attempts == 3;

  // CreateUser is not idempotent: without a request_id it is attempted once.
  server.faults().fail_next("CreateUser", 1, grpc::StatusCode::UNAVAILABLE);
  myservice::v1::CreateUserRequest create;
  create.mutable_user()->set_display_name("Grace");
  auto once = stubkit::call(*stub, &UserService::Stub::CreateUser, create, options);
  std::cout << "CreateUser without request_id: " << once.error().to_string() << " (" << report.stop_reason
            << ")\n";
  ok = ok && !once.ok();

  // With a request_id the server deduplicates, so retrying is safe.
  server.faults().fail_next("CreateUser", 1, grpc::StatusCode::UNAVAILABLE);
  create.set_request_id("create-grace-1");
  auto created = stubkit::call(*stub, &UserService::Stub::CreateUser, create, options);
  std::cout << "CreateUser with request_id: "
            << (created ? created->user().id() : created.error().to_string()) << " after " << report.attempts
            << " attempts\n";
  ok = ok && created.ok();

  // The channel way: every unary call of a plain stub gets the policy.
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(stubkit::retry_interceptor());
  auto retrying = UserService::NewStub(server.channel(std::move(interceptors)));
  server.faults().fail_next("GetUser", 1, grpc::StatusCode::UNAVAILABLE, "overloaded", 20ms);  // RetryInfo
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  myservice::v1::User plain;
  grpc::Status status = retrying->GetUser(&ctx, request, &plain);
  std::cout << "plain stub through the retry interceptor: " << (status.ok() ? "ok" : status.error_message())
            << ", " << server.faults().calls("GetUser") << " GetUser calls reached the server in all\n";
  ok = ok && status.ok();

  return ok ? 0 : 1;
}
