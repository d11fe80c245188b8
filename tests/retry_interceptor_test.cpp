// The retry interceptor: unmodified generated-stub calls, sync, callback and
// completion-queue flavours, in-process and over TCP, are retried by the
// channel's policy.
#include "stubkit/retry_interceptor.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <vector>

#include "support.hpp"

using namespace stubkit_tests;
using grpc::StatusCode;
using myservice::v1::User;

namespace {

using Interceptors = std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>;

// Options whose waits are recorded and skipped.
struct Recorded {
  std::mutex mu;
  std::vector<std::chrono::milliseconds> delays;

  stubkit::RetryInterceptorOptions options() {
    stubkit::RetryInterceptorOptions o;
    o.schedule = [this](std::chrono::milliseconds delay, std::function<void()> done) {
      {
        std::lock_guard<std::mutex> lock(mu);
        delays.push_back(delay);
      }
      done();
    };
    return o;
  }
};

Interceptors with(stubkit::RetryInterceptorOptions options) {
  Interceptors interceptors;
  interceptors.push_back(stubkit::retry_interceptor(std::move(options)));
  return interceptors;
}

}  // namespace

TEST_SUITE("retry_interceptor") {
  TEST_CASE("a plain sync stub call is retried after UNAVAILABLE and gets the real response") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    Recorded recorded;
    auto stub = UserService::NewStub(f.server.channel(with(recorded.options())));
    f.server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE);
    User user;
    auto status = stub->GetUser(context().get(), get_request("ada"), &user);
    REQUIRE_MESSAGE(status.ok(), status.error_message());
    CHECK(user.email() == "ada@example.com");
    CHECK(f.server.faults().calls("GetUser") == 3);
    CHECK(f.server.faults().attempt_headers("GetUser") == std::vector<std::string>{"", "1", "2"});
    CHECK(recorded.delays.size() == 2);
  }

  TEST_CASE("the last status, details and trailers reach the caller when retries run out") {
    ServerFixture f;
    Recorded recorded;
    auto options = recorded.options();
    options.policy.max_attempts = 3;
    auto stub = UserService::NewStub(f.server.channel(with(options)));
    f.server.faults().fail_next("GetUser", 10, StatusCode::UNAVAILABLE, "down", 5ms);
    User user;
    auto ctx = context();
    auto status = stub->GetUser(ctx.get(), get_request("ada"), &user);
    CHECK(status.error_code() == StatusCode::UNAVAILABLE);
    CHECK(status.error_message() == "down");
    CHECK(stubkit::Error::from(status).details<google::rpc::RetryInfo>().has_value());
    CHECK(f.server.faults().calls("GetUser") == 3);
    CHECK(recorded.delays == std::vector<std::chrono::milliseconds>{5ms, 5ms});

    f.server.faults().clear();
    auto missing = stub->GetUser(context().get(), get_request("nobody"), &user);  // NOT_FOUND: no retry
    CHECK(missing.error_code() == StatusCode::NOT_FOUND);
    auto info = stubkit::Error::from(missing).details<google::rpc::ResourceInfo>();
    REQUIRE(info);
    CHECK(info->resource_name() == "nobody");
    CHECK(f.server.faults().calls("GetUser") == 4);
  }

  TEST_CASE("CreateUser passes through once without request_id, and is retried safely with one") {
    ServerFixture f;
    Recorded recorded;
    auto stub = UserService::NewStub(f.server.channel(with(recorded.options())));
    f.server.faults().fail_after_next("CreateUser", 1, StatusCode::UNAVAILABLE);
    myservice::v1::CreateUserRequest request;
    request.mutable_user()->set_id("ada");
    myservice::v1::CreateUserResponse response;
    CHECK(stub->CreateUser(context().get(), request, &response).error_code() == StatusCode::UNAVAILABLE);
    CHECK(f.server.faults().calls("CreateUser") == 1);

    f.server.faults().fail_after_next("CreateUser", 2, StatusCode::UNAVAILABLE);
    myservice::v1::CreateUserRequest keyed;
    keyed.mutable_user()->set_display_name("server-assigned id");
    keyed.set_request_id("req-7");
    auto status = stub->CreateUser(context().get(), keyed, &response);
    REQUIRE_MESSAGE(status.ok(), status.error_message());
    CHECK_FALSE(response.user().id().empty());
    CHECK(f.server.faults().calls("CreateUser") == 4);
    CHECK(f.server.service().user_count() == 2);  // "ada" (the lost reply) and the keyed one, once
  }

  TEST_CASE("callback-API calls are retried") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    Recorded recorded;
    auto stub = UserService::NewStub(f.server.channel(with(recorded.options())));
    f.server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE);
    auto ctx = context();
    auto request = get_request("ada");
    User user;
    std::promise<grpc::Status> done;
    stub->async()->GetUser(ctx.get(), &request, &user, [&](grpc::Status s) { done.set_value(s); });
    auto future = done.get_future();
    REQUIRE(future.wait_for(10s) == std::future_status::ready);
    CHECK(future.get().ok());
    CHECK(user.email() == "ada@example.com");
    CHECK(f.server.faults().calls("GetUser") == 3);
  }

  TEST_CASE("completion-queue calls are retried") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    Recorded recorded;
    auto stub = UserService::NewStub(f.server.channel(with(recorded.options())));
    f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE);
    grpc::CompletionQueue cq;
    auto ctx = context();
    auto reader = stub->AsyncGetUser(ctx.get(), get_request("ada"), &cq);
    User user;
    grpc::Status status;
    reader->Finish(&user, &status, reinterpret_cast<void*>(1));
    void* tag = nullptr;
    bool ok = false;
    REQUIRE(cq.Next(&tag, &ok));
    CHECK(tag == reinterpret_cast<void*>(1));
    CHECK(status.ok());
    CHECK(user.email() == "ada@example.com");
    CHECK(f.server.faults().calls("GetUser") == 2);
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
  }

  TEST_CASE("over TCP, a channel with the interceptor retries plain stub calls") {
    stubkit::testing::EmbeddedServer server(tcp_options());
    server.service().preload(1);
    Recorded recorded;
    auto channel = grpc::experimental::CreateCustomChannelWithInterceptors(
        server.address(), grpc::InsecureChannelCredentials(), grpc::ChannelArguments(),
        with(recorded.options()));
    auto stub = UserService::NewStub(channel);
    server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE);
    User user;
    auto ctx = context();
    ctx->AddMetadata("x-trace", "abc");
    auto status = stub->GetUser(ctx.get(), get_request("u00000001"), &user);
    REQUIRE_MESSAGE(status.ok(), status.error_message());
    CHECK(user.id() == "u00000001");
    CHECK(server.faults().calls("GetUser") == 3);
  }

  TEST_CASE("a caller's cancel ends a call waiting between attempts") {
    ServerFixture f;
    stubkit::RetryInterceptorOptions options;
    options.policy.initial_backoff = 20s;
    options.policy.max_backoff = 20s;
    options.clock.random01 = [] { return 0.99; };
    auto stub = UserService::NewStub(f.server.channel(with(options)));
    f.server.faults().fail_next("GetUser", 5, StatusCode::UNAVAILABLE);
    auto ctx = context(60s);
    auto const start = std::chrono::steady_clock::now();
    auto cancel = std::async(std::launch::async, [&] {
      while (f.server.faults().calls("GetUser") < 1) std::this_thread::sleep_for(1ms);
      std::this_thread::sleep_for(50ms);  // now in the 19.8 s wait
      ctx->TryCancel();
    });
    User user;
    auto status = stub->GetUser(ctx.get(), get_request("ada"), &user);
    cancel.wait();
    CHECK(status.error_code() == StatusCode::CANCELLED);
    CHECK(std::chrono::steady_clock::now() - start < 10s);
    CHECK(f.server.faults().calls("GetUser") == 1);
  }

  TEST_CASE("no wait runs past the caller's deadline") {
    ServerFixture f;
    stubkit::RetryInterceptorOptions options;
    options.policy.initial_backoff = 5s;
    options.clock.random01 = [] { return 0.99; };
    auto stub = UserService::NewStub(f.server.channel(with(options)));
    f.server.faults().fail_next("GetUser", 5, StatusCode::UNAVAILABLE, "down");
    auto const start = std::chrono::steady_clock::now();
    User user;
    auto status = stub->GetUser(context(1s).get(), get_request("ada"), &user);
    CHECK(status.error_code() == StatusCode::UNAVAILABLE);  // 4.95 s would pass the 1 s deadline
    CHECK(std::chrono::steady_clock::now() - start < 900ms);
    CHECK(f.server.faults().calls("GetUser") == 1);
  }

  TEST_CASE("real waits through grpc::Alarm follow the backoff") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    stubkit::RetryInterceptorOptions options;
    options.policy.initial_backoff = 30ms;
    options.clock.random01 = [] { return 0.99; };
    auto stub = UserService::NewStub(f.server.channel(with(options)));
    f.server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE);
    auto const start = std::chrono::steady_clock::now();
    User user;
    CHECK(stub->GetUser(context().get(), get_request("ada"), &user).ok());
    CHECK(std::chrono::steady_clock::now() - start >= 29ms + 59ms);  // 29.7 + 59.4 ms of backoff
  }

  TEST_CASE("streaming calls on the channel are left alone") {
    ServerFixture f;
    Recorded recorded;
    auto stub = UserService::NewStub(f.server.channel(with(recorded.options())));
    auto ctx = context();
    auto reader = stub->WatchUsers(ctx.get(), {});
    myservice::v1::UserEvent event;
    CHECK(reader->Read(&event));
    CHECK(event.type() == "heartbeat");
    ctx->TryCancel();
    reader->Finish();
  }
}

TEST_SUITE("retry_native") {
  TEST_CASE("gRPC's native retries from native_retry_service_config retry over TCP") {
    stubkit::testing::EmbeddedServer server(tcp_options());
    server.service().preload(1);
    stubkit::RetryPolicy policy;
    policy.initial_backoff = 10ms;
    grpc::ChannelArguments args;
    args.SetServiceConfigJSON(stubkit::native_retry_service_config("myservice.v1.UserService", policy));
    auto stub = UserService::NewStub(
        grpc::CreateCustomChannel(server.address(), grpc::InsecureChannelCredentials(), args));
    server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE);
    User user;
    auto status = stub->GetUser(context().get(), get_request("u00000001"), &user);
    CHECK_MESSAGE(status.ok(), status.error_message());
    CHECK(server.faults().calls("GetUser") == 3);
  }

  TEST_CASE("disable_native_retries turns the service config's retries off") {
    stubkit::testing::EmbeddedServer server(tcp_options());
    grpc::ChannelArguments args;
    args.SetServiceConfigJSON(stubkit::native_retry_service_config("myservice.v1.UserService", {}));
    stubkit::disable_native_retries(args);
    auto stub = UserService::NewStub(
        grpc::CreateCustomChannel(server.address(), grpc::InsecureChannelCredentials(), args));
    server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE);
    User user;
    CHECK(stub->GetUser(context().get(), get_request("u00000001"), &user).error_code() ==
          StatusCode::UNAVAILABLE);
    CHECK(server.faults().calls("GetUser") == 1);
  }

  TEST_CASE("the service config JSON carries the policy") {
    stubkit::RetryPolicy policy;
    policy.initial_backoff = 250ms;
    policy.max_backoff = 2s;
    policy.retryable_codes = {StatusCode::UNAVAILABLE, StatusCode::ABORTED};
    auto json = stubkit::native_retry_service_config("a.B", policy);
    CHECK(json.find("\"initialBackoff\": \"0.250s\"") != std::string::npos);
    CHECK(json.find("\"maxBackoff\": \"2.000s\"") != std::string::npos);
    CHECK(json.find("\"retryableStatusCodes\": [\"UNAVAILABLE\", \"ABORTED\"]") != std::string::npos);
    CHECK(json.find("\"maxAttempts\": 4") != std::string::npos);
  }
}
