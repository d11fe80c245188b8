// Deadline propagation through a real two-hop chain (client -> front ->
// UserService), the reserve and the "Insufficient time" refusal, and
// group budgets with an injected clock.
#include "stubkit/deadline.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <mutex>
#include <optional>
#include <thread>

#include "stubkit/retry_interceptor.hpp"
#include "support.hpp"

using namespace stubkit_tests;
using grpc::StatusCode;
using myservice::v1::User;

namespace {

// A front service: serves GetUser by asking a back end through child_context,
// and records the downstream deadline it used.
class Front final : public UserService::Service {
 public:
  explicit Front(std::shared_ptr<grpc::Channel> backend)
      : backend_(UserService::NewStub(std::move(backend))) {}
  Front(Front const&) = delete;

  grpc::Status GetUser(grpc::ServerContext* ctx, myservice::v1::GetUserRequest const* request,
                       User* response) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      upstream_deadline_ = ctx->deadline();
    }
    auto child = stubkit::child_context(*ctx);
    if (!child) return child.error().to_grpc_status();
    {
      std::lock_guard<std::mutex> lock(mu_);
      downstream_deadline_ = (*child)->deadline();
    }
    return backend_->GetUser(child->get(), *request, response);
  }

  std::chrono::system_clock::time_point upstream_deadline() {
    std::lock_guard<std::mutex> lock(mu_);
    return upstream_deadline_;
  }
  std::optional<std::chrono::system_clock::time_point> downstream_deadline() {
    std::lock_guard<std::mutex> lock(mu_);
    return downstream_deadline_;
  }

 private:
  std::unique_ptr<UserService::Stub> backend_;
  std::mutex mu_;
  std::chrono::system_clock::time_point upstream_deadline_;
  std::optional<std::chrono::system_clock::time_point> downstream_deadline_;
};

struct Chain {
  // The front calls the back end on a plain channel, or on a retrying one.
  explicit Chain(bool retrying = false)
      : front(retrying ? backend.server.channel(retry_interceptors()) : backend.server.channel()) {
    grpc::ServerBuilder builder;
    builder.RegisterService(&front);
    server = builder.BuildAndStart();
    stub = UserService::NewStub(server->InProcessChannel({}));
  }
  ~Chain() { server->Shutdown(std::chrono::system_clock::now() + 1s); }

  static std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
  retry_interceptors() {
    std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
    interceptors.push_back(stubkit::retry_interceptor());
    return interceptors;
  }

  ServerFixture backend;
  Front front;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<UserService::Stub> stub;
};

}  // namespace

TEST_SUITE("deadline") {
  TEST_CASE("the downstream deadline is the caller's minus the reserve") {
    Chain chain;
    chain.backend.server.service().preload(1);
    User user;
    REQUIRE(chain.stub->GetUser(context(2s).get(), get_request("u00000001"), &user).ok());
    auto const downstream = chain.front.downstream_deadline();
    REQUIRE(downstream);
    auto const gap =
        std::chrono::duration_cast<std::chrono::microseconds>(chain.front.upstream_deadline() - *downstream);
    // gRPC keeps deadlines as gpr_timespec: allow its rounding.
    CHECK_MESSAGE(gap > 99ms, gap.count());
    CHECK_MESSAGE(gap < 101ms, gap.count());
  }

  TEST_CASE(
      "a slow back end: the client gets DEADLINE_EXCEEDED on time and the back end sees the cancellation") {
    Chain chain;
    chain.backend.server.faults().add_latency("GetUser", 10s);
    auto const start = std::chrono::steady_clock::now();
    User user;
    auto status = chain.stub->GetUser(context(700ms).get(), get_request("ada"), &user);
    auto const took = std::chrono::steady_clock::now() - start;
    CHECK(status.error_code() == StatusCode::DEADLINE_EXCEEDED);
    CHECK(took >= 590ms);  // the downstream call gave up at 600 ms ...
    CHECK(took < 3s);      // ... and nothing waited for the back end's 10 s
    for (int i = 0; i < 1000 && chain.backend.server.service().cancelled_calls() == 0; ++i) {
      std::this_thread::sleep_for(2ms);
    }
    CHECK(chain.backend.server.service().cancelled_calls() == 1);
  }

  TEST_CASE("cancelling the client's call cancels the downstream call, also through the retry interceptor") {
    bool retrying = false;
    SUBCASE("plain channel") { retrying = false; }
    SUBCASE("retrying channel: attempts keep the parent call") { retrying = true; }
    Chain chain(retrying);
    chain.backend.server.faults().add_latency("GetUser", 10s);
    auto ctx = context(30s);
    std::thread canceller([&] {
      while (chain.backend.server.faults().calls("GetUser") == 0) std::this_thread::sleep_for(1ms);
      ctx->TryCancel();
    });
    User user;
    auto const start = std::chrono::steady_clock::now();
    auto status = chain.stub->GetUser(ctx.get(), get_request("ada"), &user);
    canceller.join();
    CHECK(status.error_code() == StatusCode::CANCELLED);
    for (int i = 0; i < 1000 && chain.backend.server.service().cancelled_calls() == 0; ++i) {
      std::this_thread::sleep_for(2ms);
    }
    CHECK(chain.backend.server.service().cancelled_calls() == 1);
    CHECK(std::chrono::steady_clock::now() - start < 5s);  // not the back end's 10 s
    CHECK(chain.backend.server.faults().calls("GetUser") == 1);
  }

  TEST_CASE("less than min_remaining left fails with Insufficient time and no downstream call") {
    Chain chain;
    User user;
    auto status = chain.stub->GetUser(context(300ms).get(), get_request("ada"), &user);
    CHECK(status.error_code() == StatusCode::DEADLINE_EXCEEDED);
    CHECK(status.error_message() == "Insufficient time");
    CHECK(chain.backend.server.faults().calls("GetUser") == 0);
  }

  TEST_CASE("an upstream call without a deadline gives a child without one") {
    Chain chain;
    chain.backend.server.service().preload(1);
    grpc::ClientContext ctx;  // no deadline
    User user;
    REQUIRE(chain.stub->GetUser(&ctx, get_request("u00000001"), &user).ok());
    CHECK(chain.front.downstream_deadline() == std::chrono::system_clock::time_point::max());
  }

  TEST_CASE("a Deadline budget counts down on its clock and bounds each call") {
    auto now = std::chrono::system_clock::now();
    auto clock = [&] { return now; };
    auto budget = stubkit::Deadline::after(2s, clock);
    CHECK(budget.is_set());
    CHECK(budget.remaining() == 2000ms);
    now += 1500ms;
    CHECK(budget.remaining() == 500ms);
    CHECK(budget.within(1s).when() == budget.when());   // the budget is sooner
    CHECK(budget.within(100ms).when() == now + 100ms);  // the call bound is sooner
    now += 600ms;
    CHECK(budget.expired());
    CHECK(budget.remaining() == 0ms);
    stubkit::Deadline none;
    CHECK_FALSE(none.is_set());
    CHECK_FALSE(none.expired());
    CHECK(none.context()->deadline() == std::chrono::system_clock::time_point::max());
    CHECK(budget.context()->deadline() == budget.when());
  }

  TEST_CASE("one budget bounds a whole group of calls") {
    ServerFixture f;
    f.server.service().preload(1);
    f.server.faults().add_latency("GetUser", 150ms);
    auto budget = stubkit::Deadline::after(400ms);
    int ok = 0;
    grpc::Status last;
    for (int i = 0; i < 10; ++i) {
      auto ctx = budget.context();
      User user;
      last = f.stub->GetUser(ctx.get(), get_request("u00000001"), &user);
      if (!last.ok()) break;
      ++ok;
    }
    CHECK(ok >= 1);  // at most 2 x 150 ms fit in 400 ms (fewer on a loaded machine)
    CHECK(ok <= 2);
    CHECK(last.error_code() == StatusCode::DEADLINE_EXCEEDED);
  }
}
