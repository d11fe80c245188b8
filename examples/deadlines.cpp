// deadlines: passing a caller's deadline on to downstream calls, and one
// time budget for a group of calls.
//
// Shows: stubkit::child_context in a server handler (deadline minus a
// reserve, cancellation propagated, "Insufficient time" when too little is
// left), and stubkit::Deadline shared by several client calls.
//
//   deadlines    # a client -> front -> UserService chain, all in-process
#include <chrono>
#include <iostream>
#include <memory>
#include <thread>

#include "example_args.hpp"
#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/deadline.hpp"
#include "stubkit/testing/embedded_server.hpp"

using myservice::v1::UserService;
using namespace std::chrono_literals;

// A front end that serves GetUser by asking the UserService behind it.
class Front final : public UserService::Service {
 public:
  explicit Front(std::shared_ptr<grpc::Channel> backend)
      : backend_(UserService::NewStub(std::move(backend))) {}

  grpc::Status GetUser(grpc::ServerContext* ctx, myservice::v1::GetUserRequest const* request,
                       myservice::v1::User* response) override {
    auto child = stubkit::child_context(*ctx);  // caller's deadline - 100 ms, min 500 ms left
    if (!child) return child.error().to_grpc_status();
    return backend_->GetUser(child->get(), *request, response);
  }

 private:
  std::unique_ptr<UserService::Stub> backend_;
};

grpc::Status get_user(UserService::Stub& stub, std::chrono::milliseconds timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  myservice::v1::GetUserRequest request;
  request.set_id("u00000001");
  myservice::v1::User user;
  return stub.GetUser(&ctx, request, &user);
}

int main(int argc, char** argv) {
  example::embedded_only(
      argc, argv, "deadlines",
      "passing a deadline on to downstream calls, and one time budget for a group of calls");
  stubkit::testing::EmbeddedServer backend;
  backend.service().preload(1);
  Front front(backend.channel());
  grpc::ServerBuilder builder;
  builder.RegisterService(&front);
  auto front_server = builder.BuildAndStart();
  auto stub = UserService::NewStub(front_server->InProcessChannel({}));

  auto ok = get_user(*stub, 2s);
  std::cout << "2 s deadline, fast back end: " << (ok.ok() ? "OK" : ok.error_message()) << "\n";

  auto short_call = get_user(*stub, 300ms);
  std::cout << "300 ms deadline: " << short_call.error_message()
            << " (the back end was not called: " << backend.faults().calls("GetUser") << " call so far)\n";

  backend.faults().add_latency("GetUser", 5s);
  auto start = std::chrono::steady_clock::now();
  auto slow = get_user(*stub, 1s);
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  // The back end notices the cancellation on its own thread, a moment later.
  for (int i = 0; i < 200 && backend.service().cancelled_calls() == 0; ++i) std::this_thread::sleep_for(10ms);
  std::cout << "1 s deadline, 5 s back end: code " << slow.error_code() << " after " << took.count()
            << " ms; the back end stopped early " << backend.service().cancelled_calls() << " time(s)\n";
  backend.faults().add_latency("GetUser", 0ms);

  // One budget for a group of calls.
  auto direct = UserService::NewStub(backend.channel());
  auto budget = stubkit::Deadline::after(2s);
  int done = 0;
  for (int i = 0; i < 3; ++i) {
    auto ctx = budget.context();  // every call ends by the same deadline
    myservice::v1::GetUserRequest request;
    request.set_id("u00000001");
    myservice::v1::User user;
    if (direct->GetUser(ctx.get(), request, &user).ok()) ++done;
  }
  std::cout << done << " calls within one 2 s budget, " << budget.remaining().count() << " ms left\n";

  front_server->Shutdown();
  bool const as_expected = ok.ok() && short_call.error_message() == "Insufficient time" &&
                           slow.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
                           backend.service().cancelled_calls() == 1 && done == 3;
  return as_expected ? 0 : 1;
}
