// Must not compile: paginate would keep a reference to a stub that dies at
// the end of the full expression, before the first page is fetched.
// tests/compile_fail_test.py expects the compiler to refuse it with
// stubkit's message.
#include <grpcpp/grpcpp.h>

#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/paginate.hpp"

using myservice::v1::UserService;

int main() {
  auto channel = grpc::CreateChannel("localhost:1", grpc::InsecureChannelCredentials());
  auto users = stubkit::paginate(UserService::Stub(channel), &UserService::Stub::ListUsers,
                                 myservice::v1::ListUsersRequest{});
  return users.begin() == users.end() ? 0 : 1;
}
