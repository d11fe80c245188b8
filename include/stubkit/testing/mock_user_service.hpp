// A trompeloeil mock of the generated UserService stub interface, for unit
// tests of code that calls the UserService. Code under test takes a
// `UserService::StubInterface&` (or a pointer to one); tests hand it this.
//
//   stubkit::testing::MockUserServiceStub stub;
//   REQUIRE_CALL(stub, ListUsers(_, _, _))
//       .SIDE_EFFECT(_3->add_users()->set_id("ada"))
//       .RETURN(grpc::Status::OK);
//
// It is protoc-gen-stubkit's MockUserServiceStub (myservice/v1/user.stubkit_mock.h),
// which the plugin writes for every service (docs/codegen.md).
#ifndef STUBKIT_TESTING_MOCK_USER_SERVICE_HPP
#define STUBKIT_TESTING_MOCK_USER_SERVICE_HPP

#include "myservice/v1/user.stubkit_mock.h"

namespace stubkit::testing {

/// Mock of myservice::v1::UserService::StubInterface.
using MockUserServiceStub = myservice::v1::MockUserServiceStub;

}  // namespace stubkit::testing

#endif  // STUBKIT_TESTING_MOCK_USER_SERVICE_HPP
