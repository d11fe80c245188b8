// A trompeloeil mock of the generated UserService stub interface, for unit
// tests of code that calls the UserService. Code under test takes a
// `UserService::StubInterface&` (or a unique_ptr to one); tests hand it this.
//
//   stubkit::testing::MockUserServiceStub stub;
//   REQUIRE_CALL(stub, ListUsers(_, _, _))
//       .SIDE_EFFECT(_3->add_users()->set_id("ada"))
//       .RETURN(grpc::Status::OK);
//
// The same pattern mocks any generated stub: derive from its StubInterface,
// mock the unary methods you call with MAKE_MOCK3, and the private *Raw
// methods that streaming calls go through. Every pure virtual must be
// overridden; unused ones can stay unexpected (a call fails the test).
#ifndef STUBKIT_TESTING_MOCK_USER_SERVICE_HPP
#define STUBKIT_TESTING_MOCK_USER_SERVICE_HPP

#include <trompeloeil.hpp>

#include "myservice/v1/user.grpc.pb.h"

namespace stubkit::testing {

/// Mock of myservice::v1::UserService::StubInterface.
class MockUserServiceStub : public myservice::v1::UserService::StubInterface {
 public:
  using CreateUserRequest = myservice::v1::CreateUserRequest;
  using CreateUserResponse = myservice::v1::CreateUserResponse;
  using GetUserRequest = myservice::v1::GetUserRequest;
  using ListUsersRequest = myservice::v1::ListUsersRequest;
  using ListUsersResponse = myservice::v1::ListUsersResponse;
  using UpdateUserRequest = myservice::v1::UpdateUserRequest;
  using DeleteUserRequest = myservice::v1::DeleteUserRequest;
  using WatchUsersRequest = myservice::v1::WatchUsersRequest;
  using User = myservice::v1::User;
  using UserEvent = myservice::v1::UserEvent;
  using BulkResp = myservice::v1::BulkResp;
  using ChatMessage = myservice::v1::ChatMessage;
  using Empty = google::protobuf::Empty;
  using ChatStream = grpc::ClientReaderWriterInterface<ChatMessage, ChatMessage>;
  using AsyncChatStream = grpc::ClientAsyncReaderWriterInterface<ChatMessage, ChatMessage>;

  // Unary calls, blocking.
  MAKE_MOCK3(CreateUser, grpc::Status(grpc::ClientContext*, CreateUserRequest const&, CreateUserResponse*),
             override);
  MAKE_MOCK3(GetUser, grpc::Status(grpc::ClientContext*, GetUserRequest const&, User*), override);
  MAKE_MOCK3(ListUsers, grpc::Status(grpc::ClientContext*, ListUsersRequest const&, ListUsersResponse*),
             override);
  MAKE_MOCK3(UpdateUser, grpc::Status(grpc::ClientContext*, UpdateUserRequest const&, User*), override);
  MAKE_MOCK3(DeleteUser, grpc::Status(grpc::ClientContext*, DeleteUserRequest const&, Empty*), override);

  // Streaming calls, blocking: the public WatchUsers/BulkCreateUsers/Chat
  // wrappers call these.
  MAKE_MOCK2(WatchUsersRaw,
             grpc::ClientReaderInterface<UserEvent>*(grpc::ClientContext*, WatchUsersRequest const&),
             override);
  MAKE_MOCK2(BulkCreateUsersRaw,
             grpc::ClientWriterInterface<CreateUserRequest>*(grpc::ClientContext*, BulkResp*), override);
  MAKE_MOCK1(ChatRaw, ChatStream*(grpc::ClientContext*), override);

  // Completion-queue calls.
  MAKE_MOCK3(AsyncCreateUserRaw,
             grpc::ClientAsyncResponseReaderInterface<CreateUserResponse>*(grpc::ClientContext*,
                                                                           CreateUserRequest const&,
                                                                           grpc::CompletionQueue*),
             override);
  MAKE_MOCK3(PrepareAsyncCreateUserRaw,
             grpc::ClientAsyncResponseReaderInterface<CreateUserResponse>*(grpc::ClientContext*,
                                                                           CreateUserRequest const&,
                                                                           grpc::CompletionQueue*),
             override);
  MAKE_MOCK3(AsyncGetUserRaw,
             grpc::ClientAsyncResponseReaderInterface<User>*(grpc::ClientContext*, GetUserRequest const&,
                                                             grpc::CompletionQueue*),
             override);
  MAKE_MOCK3(PrepareAsyncGetUserRaw,
             grpc::ClientAsyncResponseReaderInterface<User>*(grpc::ClientContext*, GetUserRequest const&,
                                                             grpc::CompletionQueue*),
             override);
  MAKE_MOCK3(AsyncListUsersRaw,
             grpc::ClientAsyncResponseReaderInterface<ListUsersResponse>*(grpc::ClientContext*,
                                                                          ListUsersRequest const&,
                                                                          grpc::CompletionQueue*),
             override);
  MAKE_MOCK3(PrepareAsyncListUsersRaw,
             grpc::ClientAsyncResponseReaderInterface<ListUsersResponse>*(grpc::ClientContext*,
                                                                          ListUsersRequest const&,
                                                                          grpc::CompletionQueue*),
             override);
  MAKE_MOCK3(AsyncUpdateUserRaw,
             grpc::ClientAsyncResponseReaderInterface<User>*(grpc::ClientContext*, UpdateUserRequest const&,
                                                             grpc::CompletionQueue*),
             override);
  MAKE_MOCK3(PrepareAsyncUpdateUserRaw,
             grpc::ClientAsyncResponseReaderInterface<User>*(grpc::ClientContext*, UpdateUserRequest const&,
                                                             grpc::CompletionQueue*),
             override);
  MAKE_MOCK3(AsyncDeleteUserRaw,
             grpc::ClientAsyncResponseReaderInterface<Empty>*(grpc::ClientContext*, DeleteUserRequest const&,
                                                              grpc::CompletionQueue*),
             override);
  MAKE_MOCK3(PrepareAsyncDeleteUserRaw,
             grpc::ClientAsyncResponseReaderInterface<Empty>*(grpc::ClientContext*, DeleteUserRequest const&,
                                                              grpc::CompletionQueue*),
             override);
  MAKE_MOCK4(AsyncWatchUsersRaw,
             grpc::ClientAsyncReaderInterface<UserEvent>*(grpc::ClientContext*, WatchUsersRequest const&,
                                                          grpc::CompletionQueue*, void*),
             override);
  MAKE_MOCK3(PrepareAsyncWatchUsersRaw,
             grpc::ClientAsyncReaderInterface<UserEvent>*(grpc::ClientContext*, WatchUsersRequest const&,
                                                          grpc::CompletionQueue*),
             override);
  MAKE_MOCK4(AsyncBulkCreateUsersRaw,
             grpc::ClientAsyncWriterInterface<CreateUserRequest>*(grpc::ClientContext*, BulkResp*,
                                                                  grpc::CompletionQueue*, void*),
             override);
  MAKE_MOCK3(PrepareAsyncBulkCreateUsersRaw,
             grpc::ClientAsyncWriterInterface<CreateUserRequest>*(grpc::ClientContext*, BulkResp*,
                                                                  grpc::CompletionQueue*),
             override);
  MAKE_MOCK3(AsyncChatRaw, AsyncChatStream*(grpc::ClientContext*, grpc::CompletionQueue*, void*), override);
  MAKE_MOCK2(PrepareAsyncChatRaw, AsyncChatStream*(grpc::ClientContext*, grpc::CompletionQueue*), override);
};

}  // namespace stubkit::testing

#endif  // STUBKIT_TESTING_MOCK_USER_SERVICE_HPP
