// errors: handling gRPC errors by type, with the details servers send.
//
// Shows: stubkit::Error decoded from a grpc::Status, checks by code
// (is<stubkit::NotFound>()), reading google.rpc details (BadRequest,
// ResourceInfo, RetryInfo), the reference client's "missing is empty"
// one-liner, and the exception flavour.
//
//   errors [--target HOST:PORT] [--token T]
//
// The pushback case asks the server for a failure with the stubkit-fault
// header: a real server needs `user_server --fault-metadata` for it.
#include <grpcpp/grpcpp.h>

#include <iostream>
#include <optional>
#include <string>

#include "example.hpp"
#include "google/protobuf/util/time_util.h"
#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/retry.hpp"
#include "stubkit/status.hpp"

using myservice::v1::User;
using myservice::v1::UserService;

// A typed GetUser: the user or a decoded error.
stubkit::Result<User> get_user(UserService::StubInterface& stub, std::string const& id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  myservice::v1::GetUserRequest request;
  request.set_id(id);
  User user;
  grpc::Status status = stub.GetUser(&ctx, request, &user);
  return stubkit::to_result(status, std::move(user));
}

void explain(stubkit::Error const& error) {
  if (error.is<stubkit::NotFound>()) {
    auto resource = error.details<google::rpc::ResourceInfo>();
    std::cout << "  not found: " << (resource ? resource->resource_name() : "?") << "\n";
  } else if (error.is<stubkit::InvalidArgument>()) {
    if (auto bad = error.details<google::rpc::BadRequest>()) {
      for (auto const& violation : bad->field_violations()) {
        std::cout << "  bad field " << violation.field() << ": " << violation.description() << "\n";
      }
    }
  } else if (auto retry = error.details<google::rpc::RetryInfo>()) {
    std::cout << "  " << stubkit::code_name(error.code()) << ", server asks to retry after "
              << google::protobuf::util::TimeUtil::ToString(retry->retry_delay()) << "\n";
  } else {
    std::cout << "  " << error.to_string() << "\n";
  }
}

int main(int argc, char** argv) {
  auto const flags =
      example::parse(argc, argv, "errors", "handling gRPC errors by type, with the details servers send",
                     "user_server --fault-metadata (for the pushback case)");
  example::Servers servers(flags);
  auto stub = UserService::NewStub(servers.channel());
  std::string const missing_id = "nobody-" + example::run_tag();  // on no server yet

  std::cout << "GetUser(\"" << missing_id << "\"):\n";
  auto missing = get_user(*stub, missing_id);
  if (!missing) explain(missing.error());

  std::cout << "GetUser(\"\"):\n";
  auto invalid = get_user(*stub, "");
  if (!invalid) explain(invalid.error());

  std::cout << "GetUser while the server pushes back:\n";
  // stubkit::call without a retry policy makes one attempt; the header asks
  // the server for the failure.
  stubkit::CallOptions busy_options;
  busy_options.timeout = std::chrono::seconds(2);
  busy_options.metadata.emplace_back("stubkit-fault", "code=UNAVAILABLE,retry-delay=1500ms");
  myservice::v1::GetUserRequest request;
  request.set_id(missing_id);
  auto busy = stubkit::call(*stub, &UserService::Stub::GetUser, request, busy_options);
  if (busy || busy.error().is<stubkit::NotFound>()) {
    std::cout << "  (the server injected no fault: start user_server with --fault-metadata)\n";
  } else {
    explain(busy.error());
  }

  // The reference client's get_user: missing is empty, other errors are errors.
  std::optional<User> user = stubkit::optional_if_not_found(get_user(*stub, missing_id)).value();
  std::cout << "optional_if_not_found: " << (user ? "found" : "empty") << "\n";

  // The exception flavour: value() throws the subclass of the code.
  try {
    get_user(*stub, missing_id).value();
  } catch (stubkit::NotFoundError const& e) {
    std::cout << "caught NotFoundError: " << e.what() << "\n";
  }

  bool const pushback_seen = !busy && busy.error().details<google::rpc::RetryInfo>().has_value();
  bool const ok = !missing && !invalid && !user && (servers.remote() || pushback_seen);
  return ok ? 0 : 1;
}
