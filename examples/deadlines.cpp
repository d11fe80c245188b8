// deadlines: passing a caller's deadline on to downstream calls, and one
// time budget for a group of calls.
//
// Shows: stubkit::child_context in a server handler (deadline minus a
// reserve, cancellation propagated, "Insufficient time" when too little is
// left), and stubkit::Deadline shared by several client calls.
//
//   deadlines [--target HOST:PORT] [--token T]
//
// A client -> front -> UserService chain: the front runs in this process,
// the UserService is embedded or the --target. The slow back end is asked
// for with the stubkit-fault header, which a real server honours when
// started with `user_server --preload 1 --fault-metadata`.
#include <atomic>
#include <chrono>
#include <iostream>
#include <memory>
#include <thread>

#include "example.hpp"
#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/deadline.hpp"

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
    // A test fault for the back end travels on with the call.
    auto fault = ctx->client_metadata().find("stubkit-fault");
    if (fault != ctx->client_metadata().end()) {
      (*child)->AddMetadata("stubkit-fault", std::string(fault->second.data(), fault->second.size()));
    }
    ++downstream_calls_;
    return backend_->GetUser(child->get(), *request, response);
  }

  int downstream_calls() const { return downstream_calls_; }

 private:
  std::unique_ptr<UserService::Stub> backend_;
  std::atomic<int> downstream_calls_{0};
};

grpc::Status get_user(UserService::Stub& stub, std::chrono::milliseconds timeout,
                      char const* fault = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  if (fault != nullptr) ctx.AddMetadata("stubkit-fault", fault);
  myservice::v1::GetUserRequest request;
  request.set_id("u00000001");
  myservice::v1::User user;
  return stub.GetUser(&ctx, request, &user);
}

int main(int argc, char** argv) {
  auto const flags =
      example::parse(argc, argv, "deadlines",
                     "passing a deadline on to downstream calls, and one time budget for a group of calls",
                     "user_server --preload 1 --fault-metadata");
  example::Servers backend(flags, /*preload=*/1);
  auto backend_channel = backend.channel();
  Front front(backend_channel);
  grpc::ServerBuilder builder;
  builder.RegisterService(&front);
  auto front_server = builder.BuildAndStart();
  auto stub = UserService::NewStub(front_server->InProcessChannel({}));

  auto ok = get_user(*stub, 2s);
  std::cout << "2 s deadline, fast back end: " << (ok.ok() ? "OK" : ok.error_message()) << "\n";

  auto short_call = get_user(*stub, 300ms);
  std::cout << "300 ms deadline: " << short_call.error_message() << " (no downstream call: still "
            << front.downstream_calls() << " in all)\n";

  auto start = std::chrono::steady_clock::now();
  auto slow = get_user(*stub, 1s, "latency=5s");
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  std::cout << "1 s deadline, 5 s back end: code " << slow.error_code() << " after " << took.count()
            << " ms\n";
  if (slow.ok()) std::cout << "  (the server injected no latency: start user_server with --fault-metadata)\n";
  int stopped_early = 0;
  if (!backend.remote()) {
    // The back end notices the cancellation on its own thread, a moment later.
    auto& service = backend.embedded().service();
    for (int i = 0; i < 200 && service.cancelled_calls() == 0; ++i) std::this_thread::sleep_for(10ms);
    stopped_early = static_cast<int>(service.cancelled_calls());
    std::cout << "  the back end stopped early " << stopped_early << " time(s)\n";
  }

  // One budget for a group of calls, straight to the back end.
  auto direct = UserService::NewStub(backend_channel);
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
  bool const as_expected =
      ok.ok() && short_call.error_message() == "Insufficient time" && front.downstream_calls() == 2 &&
      done == 3 &&
      (backend.remote() || (slow.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && stopped_early == 1));
  return as_expected ? 0 : 1;
}
