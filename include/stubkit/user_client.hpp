// UserClient: the reference document's Python UserClient, in C++ on stubkit.
// The worked example of the SDK on myservice.v1.UserService, and a
// convenience layer for it.
//
//   stubkit::UserClient client(channel);
//   auto user = client.get_user("ada");            // Result<std::optional<User>>
//   if (!user) return fail(user.error());          // only non-NOT_FOUND errors
//   if (*user) greet(**user);
//   for (auto& u : client.list_users()) { ... }    // lazy, page by page
#ifndef STUBKIT_USER_CLIENT_HPP
#define STUBKIT_USER_CLIENT_HPP

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/paginate.hpp"
#include "stubkit/status.hpp"

namespace stubkit {

/// ListUsersResponse lists `users`.
template <>
struct PageTraits<myservice::v1::ListUsersResponse> {
  static auto* items(myservice::v1::ListUsersResponse& response) { return response.mutable_users(); }
};

/// A UserService client with the reference client's behaviour: a timeout on
/// every call, a missing user as an empty optional, every other error
/// surfaced. Thread-safe (gRPC stubs are).
class UserClient {
 public:
  using User = myservice::v1::User;
  using Stub = myservice::v1::UserService::StubInterface;

  /// Calls the UserService over `channel`; each call gets `timeout`.
  explicit UserClient(std::shared_ptr<grpc::ChannelInterface> const& channel,
                      std::chrono::milliseconds timeout = std::chrono::seconds(5))
      : UserClient(myservice::v1::UserService::NewStub(channel), timeout) {}

  /// Calls through any stub, a mock included.
  explicit UserClient(std::unique_ptr<Stub> stub, std::chrono::milliseconds timeout = std::chrono::seconds(5))
      : stub_(std::move(stub)), timeout_(timeout) {}

  /// The user, an empty optional if there is none, or the error.
  Result<std::optional<User>> get_user(std::string const& id) {
    myservice::v1::GetUserRequest request;
    request.set_id(id);
    auto ctx = context();
    User user;
    return optional_if_not_found(to_result(stub_->GetUser(ctx.get(), request, &user), std::move(user)));
  }

  /// Creates `user`; `request_id` makes a retried create return the first result.
  Result<User> create_user(User user, std::string request_id = "") {
    myservice::v1::CreateUserRequest request;
    *request.mutable_user() = std::move(user);
    request.set_request_id(std::move(request_id));
    auto ctx = context();
    myservice::v1::CreateUserResponse response;
    auto result = to_result(stub_->CreateUser(ctx.get(), request, &response), std::move(response));
    if (!result) return std::move(result).error();
    return std::move(*result->mutable_user());
  }

  /// Every user, lazily, in pages of `options.page_size` (default 100 as in
  /// the reference client), each page call with this client's timeout.
  auto list_users(PaginateOptions options = {}) {
    if (options.page_size == 0) options.page_size = 100;
    if (options.page_timeout.count() == 0) options.page_timeout = timeout_;
    return paginate(*stub_, &Stub::ListUsers, myservice::v1::ListUsersRequest{}, std::move(options));
  }

  /// The reference client's list_all_users: every user in memory, or the
  /// first error. Prefer list_users() for large listings.
  Result<std::vector<User>> list_all_users() { return list_users().collect(); }

  Stub& stub() { return *stub_; }

 private:
  std::unique_ptr<grpc::ClientContext> context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + timeout_);
    return ctx;
  }

  std::unique_ptr<Stub> stub_;
  std::chrono::milliseconds timeout_;
};

}  // namespace stubkit

#endif  // STUBKIT_USER_CLIENT_HPP
