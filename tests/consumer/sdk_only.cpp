// A user's program that uses only the SDK (no embedded server): it must
// build and link without gRPC's reflection library.
#include <grpcpp/grpcpp.h>

#include <iostream>

#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/stubkit.hpp"

int main() {
  // A call to a port nothing listens on: UNAVAILABLE, mapped to its type.
  auto stub = myservice::v1::UserService::NewStub(
      grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials()));
  stubkit::CallOptions options;
  options.timeout = std::chrono::seconds(2);
  myservice::v1::GetUserRequest request;
  request.set_id("ada");
  auto user = stubkit::call(*stub, &myservice::v1::UserService::Stub::GetUser, request, options);
  bool const ok =
      !user.ok() && (user.error().is<stubkit::Unavailable>() || user.error().is<stubkit::DeadlineExceeded>());
  std::cout << (ok ? "sdk only: ok\n" : "sdk only: FAILED " + user.error().to_string() + "\n");
  return ok ? 0 : 1;
}
