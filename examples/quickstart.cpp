// quickstart: a tour of the UserService from C++.
//
// Shows: create (with an idempotency key), get (found and missing), list
// page by page, update with a field mask, and a WatchUsers change event.
//
//   quickstart                                  # against an embedded server
//   quickstart --target HOST:PORT [--token T]   # against a running server
//              [--tls-ca FILE [--tls-server-name N]]
//
// Exits 0 when every step behaved as the UserService contract says, 1 otherwise.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include "example.hpp"
#include "google/protobuf/util/time_util.h"
#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/status.hpp"

namespace {

using myservice::v1::UserService;
using namespace std::chrono_literals;

std::string describe(grpc::Status const& status) {
  return stubkit::code_name(status.error_code()) + " \"" + status.error_message() + "\"";
}

class Tour {
 public:
  explicit Tour(std::shared_ptr<grpc::Channel> channel) : stub_(UserService::NewStub(std::move(channel))) {}

  // Every call gets a deadline (the channel adds the token, if any).
  static std::unique_ptr<grpc::ClientContext> context(std::chrono::milliseconds timeout = 5s) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + timeout);
    return ctx;
  }

  bool create(std::string const& id, std::string const& name, std::string const& email) {
    myservice::v1::CreateUserRequest request;
    request.set_request_id("quickstart-create-" + id);  // a retry would not create twice
    request.mutable_user()->set_id(id);
    request.mutable_user()->set_display_name(name);
    request.mutable_user()->set_email(email);
    request.mutable_user()->set_role(myservice::v1::USER_ROLE_MEMBER);
    myservice::v1::CreateUserResponse response;
    auto const status = stub_->CreateUser(context().get(), request, &response);
    if (status.error_code() == grpc::StatusCode::ALREADY_EXISTS) {
      std::cout << "create " << id << ": already exists (from an earlier run)\n";
      return true;
    }
    if (!status.ok()) return fail("create " + id, status);
    std::cout << "create " << id << ": " << response.user().display_name() << ", created_at "
              << google::protobuf::util::TimeUtil::ToString(response.user().created_at()) << "\n";
    return true;
  }

  // The reference client's get_user: a missing user is an empty optional,
  // every other error is an error.
  bool get(std::string const& id, bool expect_found) {
    myservice::v1::GetUserRequest request;
    request.set_id(id);
    myservice::v1::User user;
    auto const status = stub_->GetUser(context().get(), request, &user);
    if (status.error_code() == grpc::StatusCode::NOT_FOUND && !expect_found) {
      std::cout << "get " << id << ": not found, as expected (" << describe(status) << ")\n";
      return true;
    }
    if (!status.ok()) return fail("get " + id, status);
    std::cout << "get " << id << ": " << user.display_name() << " <" << user.email() << ">\n";
    return expect_found;
  }

  bool list(int page_size) {
    myservice::v1::ListUsersRequest request;
    request.set_page_size(page_size);
    int page = 0;
    int total = 0;
    do {
      myservice::v1::ListUsersResponse response;
      auto const status = stub_->ListUsers(context().get(), request, &response);
      if (!status.ok()) return fail("list", status);
      std::cout << "list page " << ++page << ":";
      for (auto const& user : response.users()) std::cout << " " << user.id();
      std::cout << "\n";
      total += response.users_size();
      request.set_page_token(response.next_page_token());
    } while (!request.page_token().empty());
    std::cout << "list: " << total << " users in " << page << " pages of up to " << page_size << "\n";
    return true;
  }

  // Only display_name changes: the mask leaves every other field alone.
  bool rename(std::string const& id, std::string const& name) {
    myservice::v1::UpdateUserRequest request;
    request.mutable_user()->set_id(id);
    request.mutable_user()->set_display_name(name);
    request.mutable_update_mask()->add_paths("display_name");
    myservice::v1::User user;
    auto const status = stub_->UpdateUser(context().get(), request, &user);
    if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      std::cout << "update " << id << ": this server does not offer UpdateUser\n";
      return true;
    }
    if (!status.ok()) return fail("update " + id, status);
    std::cout << "update " << id << ": display_name is now '" << user.display_name() << "', email still <"
              << user.email() << ">\n";
    return true;
  }

  // Opens WatchUsers, waits for the first message (the stream is live), makes
  // a change, and prints the event it produces.
  bool watch(std::string const& id) {
    auto ctx = context(3s);
    auto reader = stub_->WatchUsers(ctx.get(), myservice::v1::WatchUsersRequest{});
    myservice::v1::UserEvent event;
    if (!reader->Read(&event)) return fail("watch", reader->Finish());
    std::cout << "watch: stream open (first event: " << event.type() << ")\n";
    std::thread change([&] { rename(id, "Ada, Countess of Lovelace"); });
    bool seen = false;
    while (!seen && reader->Read(&event)) seen = event.type() != "heartbeat";
    change.join();  // it prints too: the event's line waits until it is done
    if (seen) {
      std::cout << "watch: " << event.type() << " " << event.user().id() << " (sequence " << event.sequence()
                << ")\n";
    }
    ctx->TryCancel();
    auto const status = reader->Finish();
    if (!seen) {
      std::cout << "watch: no change event before the deadline (" << describe(status) << ")\n";
    }
    return true;
  }

 private:
  static bool fail(std::string const& what, grpc::Status const& status) {
    std::cout << what << ": FAILED " << describe(status) << "\n";
    return false;
  }

  std::unique_ptr<UserService::Stub> stub_;
};

}  // namespace

int main(int argc, char** argv) {
  auto const flags =
      example::parse(argc, argv, "quickstart", "A tour of the UserService: create, get, list, update, watch",
                     "any user_server (or a UserService of your own)");
  example::Servers servers(flags);
  std::cout << "using " << servers.describe() << "\n";
  Tour tour(servers.channel());
  bool ok = tour.create("ada", "Ada Lovelace", "ada@example.com") &&
            tour.create("grace", "Grace Hopper", "grace@example.com") &&
            tour.create("linus", "Linus Torvalds", "linus@example.com") && tour.get("ada", true) &&
            tour.get("nobody", false) && tour.list(2) && tour.rename("grace", "Rear Admiral Grace Hopper") &&
            tour.watch("ada");
  std::cout << (ok ? "quickstart: done\n" : "quickstart: stopped at the first failure\n");
  return ok ? 0 : 1;
}
