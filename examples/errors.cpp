// errors: handling gRPC errors by type, with the details servers send.
//
// Shows: stubkit::Error decoded from a grpc::Status, checks by code
// (is<stubkit::NotFound>()), reading google.rpc details (BadRequest,
// ResourceInfo, RetryInfo), the reference client's "missing is empty"
// one-liner, and the exception flavour.
//
//   errors    # runs against an embedded UserService
#include <grpcpp/grpcpp.h>

#include <iostream>
#include <optional>
#include <string>

#include "example_args.hpp"
#include "google/protobuf/util/time_util.h"
#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/status.hpp"
#include "stubkit/testing/embedded_server.hpp"

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
  example::embedded_only(argc, argv, "errors", "handling gRPC errors by type, with the details servers send");
  stubkit::testing::EmbeddedServer server;
  auto stub = UserService::NewStub(server.channel());

  std::cout << "GetUser(\"ada\") on an empty server:\n";
  auto missing = get_user(*stub, "ada");
  if (!missing) explain(missing.error());

  std::cout << "GetUser(\"\"):\n";
  auto invalid = get_user(*stub, "");
  if (!invalid) explain(invalid.error());

  std::cout << "GetUser while the server pushes back:\n";
  server.faults().fail_next("GetUser", 1, grpc::StatusCode::UNAVAILABLE, "overloaded",
                            std::chrono::milliseconds(1500));
  auto busy = get_user(*stub, "ada");
  if (!busy) explain(busy.error());

  // The reference client's get_user: missing is empty, other errors are errors.
  std::optional<User> user = stubkit::optional_if_not_found(get_user(*stub, "ada")).value();
  std::cout << "optional_if_not_found: " << (user ? "found" : "empty") << "\n";

  // The exception flavour: value() throws the subclass of the code.
  try {
    get_user(*stub, "ada").value();
  } catch (stubkit::NotFoundError const& e) {
    std::cout << "caught NotFoundError: " << e.what() << "\n";
  }

  return missing.ok() || invalid.ok() || busy.ok() || user ? 1 : 0;
}
