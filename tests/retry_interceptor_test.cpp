// The retry interceptor: unmodified generated-stub calls, sync, callback and
// completion-queue flavours, in-process and over TCP, are retried by the
// channel's policy.
#include "stubkit/retry_interceptor.hpp"

#include <doctest/doctest.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/proto_buffer_writer.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "stubkit/channel.hpp"
#include "stubkit/user_client.hpp"
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

// Options whose scheduler never runs `done` by itself: the test runs it,
// late, with run().
struct Parked {
  std::mutex mu;
  std::function<void()> done;

  stubkit::RetryInterceptorOptions options() {
    stubkit::RetryInterceptorOptions o;
    o.schedule = [this](std::chrono::milliseconds, std::function<void()> d) {
      std::lock_guard<std::mutex> lock(mu);
      done = std::move(d);
    };
    return o;
  }
  bool holding() {
    std::lock_guard<std::mutex> lock(mu);
    return static_cast<bool>(done);
  }
  void run() {
    std::function<void()> d;
    {
      std::lock_guard<std::mutex> lock(mu);
      d = done;
    }
    d();
  }
};

Interceptors with(stubkit::RetryInterceptorOptions options) {
  Interceptors interceptors;  // std::vector<std::unique_ptr<ClientInterceptorFactoryInterface>>
  interceptors.push_back(stubkit::retry_interceptor(std::move(options)));
  return interceptors;
}

// Records the initial metadata keys of every call that reaches it (placed
// after the retry interceptor: it sees what the attempts send).
struct SentKeys {
  std::mutex mu;
  std::vector<std::string> keys;

  std::vector<std::string> methods;  // the method name each call had when its status arrived

  class Interceptor final : public grpc::experimental::Interceptor {
   public:
    Interceptor(SentKeys* sink, grpc::experimental::ClientRpcInfo* info) : sink_(sink), info_(info) {}
    void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
      using grpc::experimental::InterceptionHookPoints;
      if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
        std::lock_guard<std::mutex> lock(sink_->mu);
        for (auto const& kv : *methods->GetSendInitialMetadata()) sink_->keys.push_back(kv.first);
      }
      if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_STATUS)) {
        std::lock_guard<std::mutex> lock(sink_->mu);
        sink_->methods.push_back(info_->method());  // still valid: the name must outlive the call
      }
      methods->Proceed();
    }

   private:
    SentKeys* sink_;
    grpc::experimental::ClientRpcInfo* info_;
  };
  struct Factory final : grpc::experimental::ClientInterceptorFactoryInterface {
    explicit Factory(SentKeys* sink) : sink_(sink) {}
    grpc::experimental::Interceptor* CreateClientInterceptor(
        grpc::experimental::ClientRpcInfo* info) override {
      return new Interceptor(sink_, info);
    }
    SentKeys* sink_;
  };
  bool saw(std::string const& key) {
    std::lock_guard<std::mutex> lock(mu);
    return std::find(keys.begin(), keys.end(), key) != keys.end();
  }
};

Interceptors with(stubkit::RetryInterceptorOptions options, SentKeys& sent) {
  Interceptors interceptors = with(std::move(options));
  interceptors.push_back(std::make_unique<SentKeys::Factory>(&sent));
  return interceptors;
}

// Options whose waits are so long that only a cancel can end them.
stubkit::RetryInterceptorOptions long_waits() {
  stubkit::RetryInterceptorOptions options;
  options.policy.initial_backoff = 60s;
  options.policy.max_backoff = 60s;
  options.clock.random01 = [] { return 0.99; };
  return options;
}

// Over TCP with `args` (gRPC's own retries configured or not), a GetUser
// that meets two UNAVAILABLE faults ends UNAVAILABLE after one attempt.
void check_one_attempt_over_tcp(stubkit::testing::EmbeddedServer& server,
                                grpc::ChannelArguments const& args) {
  auto stub = UserService::NewStub(
      grpc::CreateCustomChannel(server.address(), grpc::InsecureChannelCredentials(), args));
  server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE);
  User user;
  CHECK(stub->GetUser(context().get(), get_request("u00000001"), &user).error_code() ==
        StatusCode::UNAVAILABLE);
  CHECK(server.faults().calls("GetUser") == 1);
}

// Allocations made on this thread while it lives are not reported as
// leaks (nor what they point to); for leaks that are gRPC's, named where used.
#if defined(__SANITIZE_ADDRESS__)
using KnownLeaks = __lsan::ScopedDisabler;
#else
struct KnownLeaks {
  KnownLeaks() {}  // user-provided: a variable of it is not "unused"
};
#endif

// A cancel must end a call this fast: far below the waits it interrupts
// (60 s), far above scheduling noise (the figures are in docs/reliability.md).
constexpr auto kPromptly = 5s;

// The two ways the interceptor runs attempts: a sync-API caller's on its
// own (blocked) thread, the callback and completion-queue APIs' on gRPC's
// threads. Every cancel window is checked with both.
enum class Api { kSync, kCallback };

Api caller_api() {
  Api api = Api::kSync;
  SUBCASE("sync caller: attempts on the caller's thread") { api = Api::kSync; }
  SUBCASE("callback caller: attempts on gRPC's threads") { api = Api::kCallback; }
  return api;
}

// GetUser(id) through `api`, waiting at most 20 s for a callback's result.
grpc::Status get_user(Api api, UserService::Stub& stub, grpc::ClientContext* ctx, std::string const& id,
                      User* user) {
  auto const request = get_request(id);
  if (api == Api::kSync) return stub.GetUser(ctx, request, user);
  std::promise<grpc::Status> done;
  stub.async()->GetUser(ctx, &request, user, [&](grpc::Status s) { done.set_value(std::move(s)); });
  auto future = done.get_future();
  if (future.wait_for(20s) != std::future_status::ready) {
    FAIL_CHECK("a callback call did not end in 20 s");
    ctx->TryCancel();  // `done` must outlive the call: wait for its end
  }
  return future.get();
}

// Calls GetUser("ada") through the caller API of this subcase with a 120 s
// deadline while another thread cancels the call once `ready()` holds; the
// call must end CANCELLED, promptly, after exactly one attempt.
void check_cancel_ends_call(ServerFixture& f, UserService::Stub& stub, std::function<bool()> const& ready) {
  Api const api = caller_api();
  auto ctx = context(120s);
  auto const start = std::chrono::steady_clock::now();
  auto cancel = std::async(std::launch::async, [&] {
    auto const give_up = std::chrono::steady_clock::now() + 10s;
    while (!ready() && std::chrono::steady_clock::now() < give_up) std::this_thread::sleep_for(1ms);
    ctx->TryCancel();
  });
  User user;
  auto status = get_user(api, stub, ctx.get(), "ada", &user);
  cancel.wait();
  CHECK(status.error_code() == StatusCode::CANCELLED);
  CHECK(std::chrono::steady_clock::now() - start < kPromptly);
  CHECK(f.server.faults().calls("GetUser") == 1);
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

  TEST_CASE(
      "a retried DeleteUser whose reply was lost: NOT_FOUND, or OK with allow_missing; the user is gone") {
    ServerFixture f;
    Recorded recorded;
    auto stub = UserService::NewStub(f.server.channel(with(recorded.options())));
    google::protobuf::Empty empty;
    for (bool const allow_missing : {false, true}) {
      CAPTURE(allow_missing);
      REQUIRE(f.create("ada").ok());
      f.server.faults().fail_after_next("DeleteUser", 1, StatusCode::UNAVAILABLE);  // deleted, reply lost
      myservice::v1::DeleteUserRequest request;
      request.set_id("ada");
      request.set_allow_missing(allow_missing);
      auto status = stub->DeleteUser(context().get(), request, &empty);
      // DeleteUser is IDEMPOTENT, so the interceptor retries it; the retry
      // finds the user gone.
      CHECK(status.error_code() == (allow_missing ? StatusCode::OK : StatusCode::NOT_FOUND));
      CHECK(f.server.service().user_count() == 0);
    }
    CHECK(f.server.faults().calls("DeleteUser") == 4);
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
    auto stub = UserService::NewStub(f.server.channel(with(long_waits())));
    f.server.faults().fail_next("GetUser", 5, StatusCode::UNAVAILABLE);
    // Once the first attempt reached the server, the cancel lands in its end
    // or in the 59.4 s wait: either way one attempt, and CANCELLED.
    check_cancel_ends_call(f, *stub, [&] { return f.server.faults().calls("GetUser") >= 1; });
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
  TEST_CASE("reactor calls are retried, their receive batch held until the result exists") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    Recorded recorded;
    auto stub = UserService::NewStub(f.server.channel(with(recorded.options())));

    struct Reactor final : grpc::ClientUnaryReactor {
      std::promise<grpc::Status> done;
      void OnDone(grpc::Status const& s) override { done.set_value(s); }
    };
    auto run = [&](grpc::ClientContext* ctx, User* user) {
      Reactor reactor;
      auto request = get_request("ada");
      stub->async()->GetUser(ctx, &request, user, &reactor);
      reactor.StartCall();
      auto future = reactor.done.get_future();
      REQUIRE(future.wait_for(10s) == std::future_status::ready);
      return future.get();
    };

    f.server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE);
    User user;
    auto ok = run(context().get(), &user);
    CHECK(ok.ok());
    CHECK(user.email() == "ada@example.com");
    CHECK(f.server.faults().calls("GetUser") == 3);

    f.server.faults().fail_next("GetUser", 10, StatusCode::UNAVAILABLE, "down");
    User none;
    auto const start = std::chrono::steady_clock::now();
    auto failed = run(context(30s).get(), &none);
    CHECK(failed.error_code() == StatusCode::UNAVAILABLE);
    CHECK(std::chrono::steady_clock::now() - start < kPromptly);  // not the deadline
    CHECK(none.id().empty());

    auto typo = context();
    typo->AddMetadata(stubkit::kRetryControlKey, "sometimes");
    CHECK(run(typo.get(), &none).error_code() == StatusCode::INVALID_ARGUMENT);
  }

  TEST_CASE("completion-queue calls with ReadInitialMetadata then Finish are retried, in either order") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    Recorded recorded;
    auto options = recorded.options();
    options.throttle = nullptr;  // the failing rounds would close it
    auto stub = UserService::NewStub(f.server.channel(with(options)));
    for (bool wait_for_metadata_first : {false, true}) {
      CAPTURE(wait_for_metadata_first);
      for (int failures : {1, 10}) {
        CAPTURE(failures);
        f.server.faults().clear();
        f.server.faults().fail_next("GetUser", failures, StatusCode::UNAVAILABLE);
        grpc::CompletionQueue cq;
        auto ctx = context(30s);
        auto const start = std::chrono::steady_clock::now();
        auto reader = stub->AsyncGetUser(ctx.get(), get_request("ada"), &cq);
        reader->ReadInitialMetadata(reinterpret_cast<void*>(1));
        void* tag = nullptr;
        bool ok = false;
        if (wait_for_metadata_first) {
          REQUIRE(cq.Next(&tag, &ok));
          CHECK(tag == reinterpret_cast<void*>(1));
        }
        User user;
        grpc::Status status;
        reader->Finish(&user, &status, reinterpret_cast<void*>(2));
        for (;;) {
          REQUIRE(cq.Next(&tag, &ok));
          if (tag == reinterpret_cast<void*>(2)) break;
        }
        if (failures == 1) {
          CHECK(status.ok());
          CHECK(user.email() == "ada@example.com");
        } else {
          CHECK(status.error_code() == StatusCode::UNAVAILABLE);  // the last attempt's, not OK or a timeout
          CHECK(user.id().empty());
        }
        CHECK(std::chrono::steady_clock::now() - start < kPromptly);
        cq.Shutdown();
        while (cq.Next(&tag, &ok)) {
        }
      }
    }
  }

  TEST_CASE("a factory before this one that declines a call does not make attempts recurse") {
    struct Declines final : grpc::experimental::ClientInterceptorFactoryInterface {
      grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
        return nullptr;
      }
    };
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    Recorded recorded;
    SentKeys later;
    Interceptors interceptors;
    interceptors.push_back(std::make_unique<Declines>());
    interceptors.push_back(stubkit::retry_interceptor(recorded.options()));
    interceptors.push_back(std::make_unique<SentKeys::Factory>(&later));
    auto stub = UserService::NewStub(f.server.channel(std::move(interceptors)));
    f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE);
    User user;
    auto status = stub->GetUser(context().get(), get_request("ada"), &user);
    REQUIRE_MESSAGE(status.ok(), status.error_message());
    CHECK(f.server.faults().calls("GetUser") == 2);
    std::lock_guard<std::mutex> lock(later.mu);
    // Each attempt passed the later interceptor once, and kept its method name.
    CHECK(later.methods == std::vector<std::string>(2, "/myservice.v1.UserService/GetUser"));
  }

  TEST_CASE("attempts keep the caller's wait_for_ready") {
    // Nothing listens on port 1: fail-fast attempts end UNAVAILABLE at once,
    // waiting ones wait for the deadline.
    stubkit::RetryInterceptorOptions options;
    options.policy.max_attempts = 2;
    options.policy.initial_backoff = 1ms;
    auto stub = UserService::NewStub(grpc::experimental::CreateCustomChannelWithInterceptors(
        "127.0.0.1:1", grpc::InsecureChannelCredentials(), grpc::ChannelArguments(), with(options)));
    User user;
    auto fail_fast = context(2s);
    CHECK(stub->GetUser(fail_fast.get(), get_request("ada"), &user).error_code() == StatusCode::UNAVAILABLE);
    auto waiting = context(300ms);
    waiting->set_wait_for_ready(true);
    CHECK(stubkit::detail::waits_for_ready(*waiting));
    CHECK(stub->GetUser(waiting.get(), get_request("ada"), &user).error_code() ==
          StatusCode::DEADLINE_EXCEEDED);
  }

  TEST_CASE("a context cancelled before its call began is never attempted") {
    Api const api = caller_api();
    ServerFixture f;
    Recorded recorded;
    auto stub = UserService::NewStub(f.server.channel(with(recorded.options())));
    auto ctx = context();
    ctx->TryCancel();
    User user;
    auto status = get_user(api, *stub, ctx.get(), "ada", &user);
    CHECK(status.error_code() == StatusCode::CANCELLED);
    CHECK(f.server.faults().calls("GetUser") == 0);
  }

  TEST_CASE("a cancel during an attempt ends the call and nothing is attempted again") {
    ServerFixture f;
    auto stub = UserService::NewStub(f.server.channel(with(long_waits())));
    f.server.faults().add_latency("GetUser", 60s);  // cancellable on the server
    check_cancel_ends_call(f, *stub, [&] { return f.server.faults().calls("GetUser") >= 1; });
  }

  TEST_CASE("a cancel between an attempt's end and its backoff wait is not lost") {
    Api const api = caller_api();
    ServerFixture f;
    auto options = long_waits();
    grpc::ClientContext* caller = nullptr;
    // on_retry runs after the decision to retry and before the wait starts:
    // exactly the window in which a cancel used to be dropped.
    options.on_retry = [&caller](stubkit::RetryEvent const&) { caller->TryCancel(); };
    auto stub = UserService::NewStub(f.server.channel(with(options)));
    f.server.faults().fail_next("GetUser", 5, StatusCode::UNAVAILABLE);
    auto ctx = context(120s);
    caller = ctx.get();
    auto const start = std::chrono::steady_clock::now();
    User user;
    auto status = get_user(api, *stub, ctx.get(), "ada", &user);
    CHECK(status.error_code() == StatusCode::CANCELLED);
    CHECK(std::chrono::steady_clock::now() - start < kPromptly);
    CHECK(f.server.faults().calls("GetUser") == 1);
  }

  TEST_CASE("a cancel inside a custom schedule ends the call; its late done does nothing") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    Parked parked;
    auto stub = UserService::NewStub(f.server.channel(with(parked.options())));
    f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE);
    check_cancel_ends_call(f, *stub, [&] { return parked.holding(); });
    stub.reset();
    parked.run();  // the call and its interceptor are gone: nothing may happen
    CHECK(f.server.faults().calls("GetUser") == 1);
  }

  TEST_CASE("a sync caller's attempts and waits run on its own thread; other callers' on gRPC's") {
    Api const api = caller_api();
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    std::mutex mu;
    std::vector<std::thread::id> retried_on;
    stubkit::RetryInterceptorOptions options;
    options.policy.initial_backoff = 1ms;
    options.on_retry = [&](stubkit::RetryEvent const&) {
      std::lock_guard<std::mutex> lock(mu);
      retried_on.push_back(std::this_thread::get_id());
    };
    auto stub = UserService::NewStub(f.server.channel(with(options)));
    f.server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE);
    User user;
    auto status = get_user(api, *stub, context().get(), "ada", &user);
    REQUIRE_MESSAGE(status.ok(), status.error_message());
    CHECK(user.email() == "ada@example.com");
    std::lock_guard<std::mutex> lock(mu);
    REQUIRE(retried_on.size() == 2);
    for (auto const& id : retried_on) CHECK((id == std::this_thread::get_id()) == (api == Api::kSync));
  }

  TEST_CASE("the sync API is told apart from the callback and completion-queue APIs") {
    // Records is_blocking_call() of every call's first batch.
    struct Probe {
      std::mutex mu;
      std::vector<bool> blocking;
      struct Interceptor final : grpc::experimental::Interceptor {
        explicit Interceptor(Probe* probe) : probe_(probe) {}
        void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
          if (methods->QueryInterceptionHookPoint(
                  grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
            std::lock_guard<std::mutex> lock(probe_->mu);
            probe_->blocking.push_back(stubkit::detail::is_blocking_call(methods));
          }
          methods->Proceed();
        }
        Probe* probe_;
      };
      struct Factory final : grpc::experimental::ClientInterceptorFactoryInterface {
        explicit Factory(Probe* probe) : probe_(probe) {}
        grpc::experimental::Interceptor* CreateClientInterceptor(
            grpc::experimental::ClientRpcInfo*) override {
          return new Interceptor(probe_);
        }
        Probe* probe_;
      };
    } probe;
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    Interceptors interceptors;
    interceptors.push_back(std::make_unique<Probe::Factory>(&probe));
    auto stub = UserService::NewStub(f.server.channel(std::move(interceptors)));
    User user;
    CHECK(get_user(Api::kSync, *stub, context().get(), "ada", &user).ok());
    CHECK(get_user(Api::kCallback, *stub, context().get(), "ada", &user).ok());
    grpc::CompletionQueue cq;
    auto ctx = context();
    auto reader = stub->AsyncGetUser(ctx.get(), get_request("ada"), &cq);
    grpc::Status status;
    reader->Finish(&user, &status, &status);
    void* tag = nullptr;
    bool ok = false;
    REQUIRE(cq.Next(&tag, &ok));
    CHECK(status.ok());
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
    std::lock_guard<std::mutex> lock(probe.mu);
    CHECK(probe.blocking == std::vector<bool>{true, false, false});
  }

  TEST_CASE("a cancel during the wait ends the call without reading the clock again") {
    ServerFixture f;
    auto options = long_waits();
    options.policy.per_attempt_timeout = 60s;  // each attempt reads the clock first
    std::atomic<bool> waiting{false};
    options.on_retry = [&waiting](stubkit::RetryEvent const&) { waiting = true; };
    options.clock.now = [&waiting] {
      if (waiting) throw std::logic_error("the clock was read after the wait began");
      return std::chrono::system_clock::now();
    };
    auto stub = UserService::NewStub(f.server.channel(with(options)));
    f.server.faults().fail_next("GetUser", 5, StatusCode::UNAVAILABLE);
    check_cancel_ends_call(f, *stub, [&waiting] { return waiting.load(); });
  }

  TEST_CASE("a sync call ends UNKNOWN when an interceptor after the retry interceptor throws") {
    // Throws from the hook point given, on the calls it sees (the attempts).
    struct Thrower final : grpc::experimental::Interceptor {
      explicit Thrower(grpc::experimental::InterceptionHookPoints point) : point_(point) {}
      void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
        if (methods->QueryInterceptionHookPoint(point_)) throw std::runtime_error("interceptor broke");
        methods->Proceed();
      }
      grpc::experimental::InterceptionHookPoints point_;
    };
    struct Factory final : grpc::experimental::ClientInterceptorFactoryInterface {
      explicit Factory(grpc::experimental::InterceptionHookPoints point) : point_(point) {}
      grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
        return new Thrower(point_);
      }
      grpc::experimental::InterceptionHookPoints point_;
    };
    auto point = grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA;
    SUBCASE("as an attempt starts") {}
    SUBCASE("as an attempt's status comes back") {
      point = grpc::experimental::InterceptionHookPoints::POST_RECV_STATUS;
    }
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    Recorded recorded;
    auto options = recorded.options();
    std::mutex mu;
    std::vector<std::string> events;  // what an observer hears: every attempt that starts also ends
    options.observer = stubkit::observer_from([&](stubkit::Event const& e) {
      std::lock_guard<std::mutex> lock(mu);
      events.push_back(std::string(stubkit::event_name(e.type)) + " " + stubkit::code_name(e.code));
    });
    auto interceptors = with(std::move(options));
    interceptors.push_back(std::make_unique<Factory>(point));
    auto stub = UserService::NewStub(f.server.channel(std::move(interceptors)));
    User user;
    grpc::Status status;
    {
      // gRPC 1.51 cannot free an attempt whose batch an exception
      // interrupted (it keeps a reference to the call): that one call's
      // memory is a known leak, which LeakSanitizer is told about here.
      // Interceptors after the retry interceptor must still not throw.
      KnownLeaks known;
      status = stub->GetUser(context().get(), get_request("ada"), &user);
    }
    CHECK(status.error_code() == StatusCode::UNKNOWN);
    CHECK_MESSAGE(
        status.error_message().find("an interceptor after the retry interceptor threw") != std::string::npos,
        status.error_message());
    CHECK_MESSAGE(status.error_message().find("interceptor broke") != std::string::npos,
                  status.error_message());
    CHECK(events == std::vector<std::string>{"call.start OK", "attempt.start OK", "attempt.end UNKNOWN",
                                             "call.end UNKNOWN"});
  }

  TEST_CASE("a sync call whose custom schedule holds the wait ends at its deadline") {
    ServerFixture f;
    Parked parked;
    auto stub = UserService::NewStub(f.server.channel(with(parked.options())));
    f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE);
    auto const start = std::chrono::steady_clock::now();
    User user;
    auto status = stub->GetUser(context(300ms).get(), get_request("ada"), &user);
    CHECK(status.error_code() == StatusCode::DEADLINE_EXCEEDED);
    CHECK(std::chrono::steady_clock::now() - start < kPromptly);
    stub.reset();
    REQUIRE(parked.holding());
    parked.run();  // late: the call is gone, nothing happens
    CHECK(f.server.faults().calls("GetUser") == 1);
  }

  TEST_CASE("attempts keep the caller's compression, asked for once") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    Recorded recorded;
    SentKeys sent;
    auto stub = UserService::NewStub(f.server.channel(with(recorded.options(), sent)));
    f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE);
    auto ctx = context();
    ctx->set_compression_algorithm(GRPC_COMPRESS_GZIP);
    User user;
    REQUIRE(stub->GetUser(ctx.get(), get_request("ada"), &user).ok());
    std::lock_guard<std::mutex> lock(sent.mu);
    // Two attempts, each asking for gzip exactly once.
    CHECK(std::count(sent.keys.begin(), sent.keys.end(), "grpc-internal-encoding-request") == 2);
  }

  TEST_CASE("a throwing on_retry, schedule or clock ends the call with UNKNOWN naming it") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    // One call after one UNAVAILABLE fault: UNKNOWN naming `text`, after `attempts` attempts.
    auto check = [&f](stubkit::RetryInterceptorOptions const& options, char const* text, int attempts) {
      auto stub = UserService::NewStub(f.server.channel(with(options)));
      f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE);
      auto const before = f.server.faults().calls("GetUser");
      User user;
      auto status = stub->GetUser(context().get(), get_request("ada"), &user);
      CHECK(status.error_code() == StatusCode::UNKNOWN);
      CHECK_MESSAGE(status.error_message().find(text) != std::string::npos, status.error_message());
      CHECK(f.server.faults().calls("GetUser") - before == attempts);
      f.server.faults().clear();
    };
    SUBCASE("on_retry") {
      stubkit::RetryInterceptorOptions options;
      options.on_retry = [](stubkit::RetryEvent const&) { throw std::runtime_error("observer broke"); };
      check(options, "observer broke", 1);
    }
    SUBCASE("schedule") {
      stubkit::RetryInterceptorOptions options;
      options.schedule = [](std::chrono::milliseconds, std::function<void()>) { throw std::bad_alloc(); };
      check(options, "retry schedule threw", 1);
    }
    SUBCASE("clock") {
      stubkit::RetryInterceptorOptions options;
      options.policy.per_attempt_timeout = 1s;  // the clock is read before the first attempt
      options.clock.now = []() -> std::chrono::system_clock::time_point {
        throw std::logic_error("no time");
      };
      check(options, "no time", 0);
    }
  }

  TEST_CASE("disable_retries and set_max_attempts change one call; the control header is never sent") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    Recorded recorded;
    SentKeys sent;
    auto options = recorded.options();
    options.throttle = nullptr;  // seven failures in a row would close it
    auto stub = UserService::NewStub(f.server.channel(with(options, sent)));
    User user;

    f.server.faults().fail_next("GetUser", 5, StatusCode::UNAVAILABLE);
    grpc::ClientContext once;
    stubkit::disable_retries(once);
    CHECK(stub->GetUser(&once, get_request("ada"), &user).error_code() == StatusCode::UNAVAILABLE);
    CHECK(f.server.faults().calls("GetUser") == 1);

    f.server.faults().clear();
    f.server.faults().fail_next("GetUser", 5, StatusCode::UNAVAILABLE);
    grpc::ClientContext twice;
    stubkit::set_max_attempts(twice, 2);
    CHECK(stub->GetUser(&twice, get_request("ada"), &user).error_code() == StatusCode::UNAVAILABLE);
    CHECK(f.server.faults().calls("GetUser") == 3);

    f.server.faults().clear();
    f.server.faults().fail_next("GetUser", 5, StatusCode::UNAVAILABLE);
    grpc::ClientContext more;
    stubkit::set_max_attempts(more, 7);  // more than the channel's 4
    CHECK(stub->GetUser(&more, get_request("ada"), &user).ok());
    CHECK(f.server.faults().calls("GetUser") == 9);
    CHECK_FALSE(sent.saw(stubkit::kRetryControlKey));
  }

  TEST_CASE("an unknown stubkit-retry value is INVALID_ARGUMENT and nothing is sent") {
    ServerFixture f;
    Recorded recorded;
    auto stub = UserService::NewStub(f.server.channel(with(recorded.options())));
    auto ctx = context();
    ctx->AddMetadata(stubkit::kRetryControlKey, "sometimes");
    User user;
    auto status = stub->GetUser(ctx.get(), get_request("ada"), &user);
    CHECK(status.error_code() == StatusCode::INVALID_ARGUMENT);
    CHECK(status.error_message().find("'sometimes'") != std::string::npos);
    CHECK(f.server.faults().calls("GetUser") == 0);
  }

  TEST_CASE("a request_id is found in the request's bytes, whatever type the caller used") {
    auto bytes = [](google::protobuf::Message const& message) {
      grpc::ByteBuffer buffer;
      bool own = false;
      REQUIRE(
          grpc::GenericSerialize<grpc::ProtoBufferWriter, google::protobuf::Message>(message, &buffer, &own)
              .ok());
      return buffer;
    };
    myservice::v1::CreateUserRequest request;
    request.mutable_user()->set_id("ada");
    request.mutable_user()->set_display_name("a display name long enough to span bytes");
    int const number =
        myservice::v1::CreateUserRequest::descriptor()->FindFieldByName("request_id")->number();
    CHECK_FALSE(stubkit::detail::has_nonempty_field(bytes(request), number));
    request.set_request_id("req-1");
    CHECK(stubkit::detail::has_nonempty_field(bytes(request), number));
    CHECK_FALSE(stubkit::detail::has_nonempty_field(bytes(request), number + 1));

    std::string twice = request.SerializeAsString();
    twice += char(number << 3 | 2);
    twice += char(0);  // a later, empty occurrence wins, as protobuf parses it
    grpc::Slice slice(twice);
    CHECK_FALSE(stubkit::detail::has_nonempty_field(grpc::ByteBuffer(&slice, 1), number));
    grpc::Slice torn(twice.substr(0, twice.size() - 4));
    CHECK_FALSE(stubkit::detail::has_nonempty_field(grpc::ByteBuffer(&torn, 1), number));
  }

  TEST_CASE("method facts are kept by full name and bounded") {
    stubkit::detail::MethodTable table;
    std::string name = "/myservice.v1.UserService/GetUser";
    auto const get = table.lookup(name);
    CHECK(get.known);
    CHECK(get.declared_idempotent);
    name = "/myservice.v1.UserService/CreateUser";  // the same buffer now names another method
    auto const create = table.lookup(name);
    CHECK(create.known);
    CHECK_FALSE(create.declared_idempotent);
    CHECK(create.request_id_field != 0);
    for (std::size_t i = 0; i < stubkit::detail::MethodTable::kMaxEntries + 100; ++i) {
      CHECK_FALSE(table.lookup("/unknown.Service/M" + std::to_string(i)).known);
    }
    CHECK(table.size() == stubkit::detail::MethodTable::kMaxEntries);
    CHECK(table.lookup("/myservice.v1.UserService/GetUser").declared_idempotent);
  }

  TEST_CASE("a generic ByteBuffer call with disable_retries passes a retrying channel untouched") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    Recorded recorded;
    grpc::GenericStub generic(f.server.channel(with(recorded.options())));
    std::string const serialized = get_request("ada").SerializeAsString();
    grpc::Slice slice(serialized);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    auto ctx = context();
    stubkit::disable_retries(*ctx);
    std::promise<grpc::Status> done;
    generic.UnaryCall(ctx.get(), "/myservice.v1.UserService/GetUser", {}, &request, &response,
                      [&done](grpc::Status s) { done.set_value(s); });
    auto status = done.get_future().get();
    REQUIRE_MESSAGE(status.ok(), status.error_message());
    std::vector<grpc::Slice> slices;
    REQUIRE(response.Dump(&slices).ok());
    std::string bytes;
    for (auto const& s : slices) bytes.append(reinterpret_cast<char const*>(s.begin()), s.size());
    User user;
    REQUIRE(user.ParseFromString(bytes));
    CHECK(user.id() == "ada");
  }

  TEST_CASE("an unusable policy is refused where it is accepted") {
    stubkit::RetryInterceptorOptions bad;
    bad.policy.max_attempts = 0;
    CHECK_THROWS_AS(stubkit::retry_interceptor(bad), std::invalid_argument);
    stubkit::ChannelOptions channel;
    channel.retry = bad;
    CHECK_THROWS_WITH_AS(stubkit::make_channel("127.0.0.1:1", channel),
                         doctest::Contains("max_attempts must be at least 1"), std::invalid_argument);

    ServerFixture f;
    stubkit::UserClient client(f.server.channel());
    stubkit::ResumableWatchOptions watch;
    watch.policy.multiplier = 0.5;
    auto events = client.watch_users_resumable(watch);
    auto it = events.begin();
    REQUIRE(it != events.end());
    REQUIRE_FALSE(it->ok());
    CHECK(it->error().is<stubkit::InvalidArgument>());
    CHECK(it->error().message().find("multiplier") != std::string::npos);
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
    check_one_attempt_over_tcp(server, args);
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

  TEST_CASE("RetryPolicy::none() as native config does not retry; gRPC's cap of 5 attempts shows") {
    CHECK(stubkit::native_retry_service_config("a.B", stubkit::RetryPolicy::none()).find("retryPolicy") ==
          std::string::npos);
    stubkit::RetryPolicy many;
    many.max_attempts = 9;
    CHECK(stubkit::native_retry_service_config("a.B", many).find("\"maxAttempts\": 5") != std::string::npos);

    stubkit::testing::EmbeddedServer server(tcp_options());
    server.service().preload(1);
    grpc::ChannelArguments args;
    args.SetServiceConfigJSON(
        stubkit::native_retry_service_config("myservice.v1.UserService", stubkit::RetryPolicy::none()));
    check_one_attempt_over_tcp(server, args);
  }
}
