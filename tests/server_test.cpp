// The embedded server around the service: health, reflection, auth, message
// limits, fault injection, TCP and graceful shutdown.
#include <doctest/doctest.h>
#include <grpcpp/generic/generic_stub.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <future>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "support.hpp"

using namespace stubkit_tests;
using grpc::StatusCode;
using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

namespace {

HealthCheckResponse::ServingStatus health_of(std::shared_ptr<grpc::Channel> channel,
                                             std::string const& service) {
  auto health = Health::NewStub(std::move(channel));
  HealthCheckRequest request;
  request.set_service(service);
  HealthCheckResponse response;
  auto status = health->Check(context().get(), request, &response);
  REQUIRE(status.ok());
  return response.status();
}

// Asks server reflection for its services through the message types that
// libgrpc++_reflection registers, so no copy of reflection.proto is needed.
std::set<std::string> reflected_services(std::shared_ptr<grpc::Channel> const& channel) {
  auto const* pool = google::protobuf::DescriptorPool::generated_pool();
  auto const* req_type = pool->FindMessageTypeByName("grpc.reflection.v1alpha.ServerReflectionRequest");
  auto const* resp_type = pool->FindMessageTypeByName("grpc.reflection.v1alpha.ServerReflectionResponse");
  REQUIRE(req_type != nullptr);
  REQUIRE(resp_type != nullptr);
  google::protobuf::DynamicMessageFactory factory;
  std::unique_ptr<google::protobuf::Message> request(factory.GetPrototype(req_type)->New());
  request->GetReflection()->SetString(request.get(), req_type->FindFieldByName("list_services"), "*");
  grpc::ByteBuffer out;
  bool own = false;
  REQUIRE(
      grpc::GenericSerialize<grpc::ProtoBufferWriter, google::protobuf::Message>(*request, &out, &own).ok());

  grpc::GenericStub generic(channel);
  grpc::CompletionQueue cq;
  auto ctx = context();
  auto call =
      generic.PrepareCall(ctx.get(), "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag = nullptr;
  bool ok = false;
  call->StartCall(reinterpret_cast<void*>(1));
  REQUIRE(cq.Next(&tag, &ok));
  REQUIRE(ok);
  call->Write(out, reinterpret_cast<void*>(2));
  REQUIRE(cq.Next(&tag, &ok));
  REQUIRE(ok);
  grpc::ByteBuffer in;
  call->Read(&in, reinterpret_cast<void*>(3));
  REQUIRE(cq.Next(&tag, &ok));
  REQUIRE(ok);
  std::unique_ptr<google::protobuf::Message> response(factory.GetPrototype(resp_type)->New());
  REQUIRE(
      grpc::GenericDeserialize<grpc::ProtoBufferReader, google::protobuf::Message>(&in, response.get()).ok());
  ctx->TryCancel();
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(4));
  REQUIRE(cq.Next(&tag, &ok));
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }

  std::set<std::string> names;
  auto const* list_field = resp_type->FindFieldByName("list_services_response");
  auto const& list = response->GetReflection()->GetMessage(*response, list_field);
  auto const* service_field = list.GetDescriptor()->FindFieldByName("service");
  for (int i = 0; i < list.GetReflection()->FieldSize(list, service_field); ++i) {
    auto const& svc = list.GetReflection()->GetRepeatedMessage(list, service_field, i);
    names.insert(svc.GetReflection()->GetString(svc, svc.GetDescriptor()->FindFieldByName("name")));
  }
  return names;
}

myservice::v1::CreateUserRequest user_with_metadata_bytes(std::string const& id, std::size_t bytes) {
  myservice::v1::CreateUserRequest request;
  request.mutable_user()->set_id(id);
  (*request.mutable_user()->mutable_metadata())["blob"] = std::string(bytes, 'x');
  return request;
}

// A WatchUsers stream on `ctx`, planned to close after two messages: the
// heartbeat and one event arrive, then UNAVAILABLE.
void check_watch_closed_after_two(ServerFixture& f, grpc::ClientContext& ctx) {
  auto reader = f.stub->WatchUsers(&ctx, {});
  myservice::v1::UserEvent event;
  REQUIRE(reader->Read(&event));  // heartbeat
  REQUIRE(f.create("a").ok());
  REQUIRE(f.create("b").ok());
  int received = 1;
  while (reader->Read(&event)) ++received;
  CHECK(received == 2);
  CHECK(reader->Finish().error_code() == StatusCode::UNAVAILABLE);
}

}  // namespace

TEST_SUITE("server") {
  TEST_CASE("health reports the UserService SERVING, and NOT_SERVING when flipped") {
    ServerFixture f;
    CHECK(health_of(f.server.channel(), "myservice.v1.UserService") == HealthCheckResponse::SERVING);
    CHECK(health_of(f.server.channel(), "") == HealthCheckResponse::SERVING);
    f.server.health().SetServingStatus("myservice.v1.UserService", false);
    CHECK(health_of(f.server.channel(), "myservice.v1.UserService") == HealthCheckResponse::NOT_SERVING);
  }

  TEST_CASE("a health watcher sees NOT_SERVING when the server shuts down") {
    // Over TCP: gRPC's in-process transport may close before the update arrives.
    stubkit::testing::EmbeddedServer server(tcp_options());
    auto health = Health::NewStub(grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
    HealthCheckRequest request;
    request.set_service("myservice.v1.UserService");
    auto ctx = context();
    auto reader = health->Watch(ctx.get(), request);
    HealthCheckResponse response;
    REQUIRE(reader->Read(&response));
    CHECK(response.status() == HealthCheckResponse::SERVING);
    auto stop = std::async(std::launch::async, [&] { server.shutdown(1s); });
    bool const updated = reader->Read(&response);
    stop.wait();
    CHECK(updated);
    CHECK(response.status() == HealthCheckResponse::NOT_SERVING);
    ctx->TryCancel();
    reader->Finish();
  }

  TEST_CASE("reflection lists the UserService and the health service") {
    ServerFixture f;
    auto names = reflected_services(f.server.channel());
    CHECK(names.count("myservice.v1.UserService") == 1);
    CHECK(names.count("grpc.health.v1.Health") == 1);
  }

  TEST_CASE("with a token, UserService calls need it; health and reflection stay public") {
    stubkit::testing::EmbeddedServerOptions options;
    options.service.token = "s3cret-token";
    stubkit::testing::EmbeddedServer server(options);
    auto stub = UserService::NewStub(server.channel());
    myservice::v1::GetUserRequest request;
    request.set_id("nobody");
    myservice::v1::User user;

    auto missing = stub->GetUser(context().get(), request, &user);
    CHECK(missing.error_code() == StatusCode::UNAUTHENTICATED);
    REQUIRE(detail_of<google::rpc::ErrorInfo>(missing));
    CHECK(detail_of<google::rpc::ErrorInfo>(missing)->reason() == "MISSING_TOKEN");

    auto wrong = stub->GetUser(context(5s, "s3cret-tokex").get(), request, &user);
    CHECK(wrong.error_code() == StatusCode::UNAUTHENTICATED);
    CHECK(detail_of<google::rpc::ErrorInfo>(wrong)->reason() == "INVALID_TOKEN");
    CHECK(wrong.error_message().find("s3cret") == std::string::npos);
    CHECK(wrong.error_details().find("s3cret") == std::string::npos);

    // The right token reaches the handler: NOT_FOUND, not UNAUTHENTICATED.
    CHECK(stub->GetUser(context(5s, "s3cret-token").get(), request, &user).error_code() ==
          StatusCode::NOT_FOUND);

    auto ctx = context();
    auto reader = stub->WatchUsers(ctx.get(), {});
    myservice::v1::UserEvent event;
    CHECK_FALSE(reader->Read(&event));
    CHECK(reader->Finish().error_code() == StatusCode::UNAUTHENTICATED);

    CHECK(health_of(server.channel(), "myservice.v1.UserService") == HealthCheckResponse::SERVING);
    CHECK(reflected_services(server.channel()).count("myservice.v1.UserService") == 1);
  }

  TEST_CASE("a request over 10 MB is RESOURCE_EXHAUSTED and the server keeps serving") {
    ServerFixture f;
    myservice::v1::CreateUserResponse response;
    auto big = f.stub->CreateUser(context().get(), user_with_metadata_bytes("big", 11 << 20), &response);
    CHECK(big.error_code() == StatusCode::RESOURCE_EXHAUSTED);
    CHECK(f.server.service().user_count() == 0);
    CHECK(f.create("small").ok());
  }

  TEST_CASE("a 9 MB user is accepted, but reading it back needs a client limit above 4 MB") {
    ServerFixture f;
    myservice::v1::CreateUserResponse response;
    auto status = f.stub->CreateUser(context().get(), user_with_metadata_bytes("big", 9 << 20), &response);
    // The reply echoes the user, so it exceeds the client's default 4 MB receive limit.
    CHECK(status.error_code() == StatusCode::RESOURCE_EXHAUSTED);
    CHECK(f.server.service().user_count() == 1);

    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(16 << 20);
    auto roomy = UserService::NewStub(f.server.channel(args));
    myservice::v1::GetUserRequest get;
    get.set_id("big");
    myservice::v1::User user;
    REQUIRE(roomy->GetUser(context().get(), get, &user).ok());
    CHECK(user.metadata().at("blob").size() == (9u << 20));
  }

  TEST_CASE("fail_next fails exactly the next N calls, with RetryInfo when asked") {
    ServerFixture f;
    f.server.faults().fail_next("GetUser", 2, StatusCode::UNAVAILABLE, "try later", 250ms);
    REQUIRE(f.create("ada").ok());
    myservice::v1::GetUserRequest request;
    request.set_id("ada");
    myservice::v1::User user;
    for (int i = 0; i < 2; ++i) {
      auto status = f.stub->GetUser(context().get(), request, &user);
      CHECK(status.error_code() == StatusCode::UNAVAILABLE);
      CHECK(status.error_message() == "try later");
      auto retry = detail_of<google::rpc::RetryInfo>(status);
      REQUIRE(retry);
      CHECK(retry->retry_delay().seconds() == 0);
      CHECK(retry->retry_delay().nanos() == 250'000'000);
    }
    CHECK(f.stub->GetUser(context().get(), request, &user).ok());
    CHECK(f.server.faults().calls("GetUser") == 3);
    CHECK(f.server.faults().calls("CreateUser") == 1);
  }

  TEST_CASE("fault injection refuses method names the service does not have") {
    ServerFixture f;
    CHECK_THROWS_AS(f.server.faults().fail_next("GetUsr", 1, StatusCode::UNAVAILABLE), std::invalid_argument);
    CHECK_THROWS_AS(f.server.faults().add_latency("", 1ms), std::invalid_argument);
    CHECK_THROWS_AS(f.server.faults().fail_next("GetUser", -1, StatusCode::UNAVAILABLE),
                    std::invalid_argument);
  }

  TEST_CASE(
      "injected latency past the deadline gives DEADLINE_EXCEEDED and the handler sees the cancellation") {
    ServerFixture f;
    f.server.faults().add_latency("GetUser", 10s);
    myservice::v1::GetUserRequest request;
    request.set_id("ada");
    myservice::v1::User user;
    auto const start = std::chrono::steady_clock::now();
    auto status = f.stub->GetUser(context(100ms).get(), request, &user);
    CHECK(status.error_code() == StatusCode::DEADLINE_EXCEEDED);
    // The handler stops waiting once cancelled, so shutdown is prompt.
    f.server.shutdown(0ms);
    CHECK(std::chrono::steady_clock::now() - start < 5s);
  }

  TEST_CASE("tail latency delays the chosen share of calls, the same calls for the same seed") {
    using Tail = stubkit::testing::FaultInjector::TailLatency;
    auto const* service = myservice::v1::User::descriptor()->file()->FindServiceByName("UserService");
    // Which of `n` calls are delayed, and by how much.
    auto picks = [&](Tail tail, int n) {
      stubkit::testing::FaultInjector faults(service);
      faults.set_tail_latency(tail);
      std::vector<bool> slow;
      for (int i = 0; i < n; ++i) {
        auto const plan = faults.take(i % 2 == 0 ? "GetUser" : "ListUsers");
        CHECK(plan.latency == 0ms);
        CHECK((plan.tail_delay == 0ms || plan.tail_delay == tail.delay));
        slow.push_back(plan.tail_delay == tail.delay);
      }
      CHECK(faults.tail_delayed_calls() == std::count(slow.begin(), slow.end(), true));
      return slow;
    };
    auto const a = picks({0.05, 200ms, 7}, 4000);
    auto const delayed = std::count(a.begin(), a.end(), true);
    CHECK(delayed > 100);  // 5% of 4000 is 200; the seed's draw lands near it
    CHECK(delayed < 300);
    CHECK(picks({0.05, 200ms, 7}, 4000) == a);
    CHECK(picks({0.05, 200ms, 8}, 4000) != a);
    auto const none = picks({0, 200ms, 7}, 100);
    CHECK(std::count(none.begin(), none.end(), true) == 0);
    auto const all = picks({1, 200ms, 7}, 100);
    CHECK(std::count(all.begin(), all.end(), true) == 100);
    // A planned latency and the tail's are kept apart (the server waits both).
    stubkit::testing::FaultInjector faults(service);
    faults.add_latency("GetUser", 30ms);
    faults.set_tail_latency({1, 200ms, 1});
    auto plan = faults.take("GetUser");
    CHECK(plan.latency == 30ms);
    CHECK(plan.tail_delay == 200ms);
    // A stubkit-fault header's latency replaces the planned one, not the tail's.
    REQUIRE(stubkit::testing::FaultInjector::apply_header("latency=5ms", 0, plan).ok());
    CHECK(plan.latency == 5ms);
    CHECK(plan.tail_delay == 200ms);
    // Streams are never delayed (BulkCreateUsers runs on a callback thread).
    CHECK(faults.take("WatchUsers").tail_delay == 0ms);
    CHECK(faults.take("BulkCreateUsers").tail_delay == 0ms);
    CHECK(faults.take("Chat").tail_delay == 0ms);
    CHECK(faults.tail_delayed_calls() == 1);
    faults.clear();  // leaves the tail latency
    CHECK(faults.take("GetUser").tail_delay == 200ms);
    faults.set_tail_latency({});
    CHECK(faults.take("GetUser").tail_delay == 0ms);
  }

  TEST_CASE("unusable tail latency settings are refused before the server starts") {
    auto const* service = myservice::v1::User::descriptor()->file()->FindServiceByName("UserService");
    stubkit::testing::FaultInjector faults(service);
    using Tail = stubkit::testing::FaultInjector::TailLatency;
    for (Tail bad : {Tail{-0.1, 1ms, 1}, Tail{1.5, 1ms, 1}, Tail{std::nan(""), 1ms, 1}, Tail{0.5, -1ms, 1},
                     Tail{0.5, 2h, 1}}) {
      CAPTURE(bad.fraction);
      CAPTURE(bad.delay.count());
      CHECK_THROWS_AS(faults.set_tail_latency(bad), std::invalid_argument);
    }
    CHECK(faults.tail_latency().fraction == 0);  // unchanged
    // Refused before the journal or its key file is made.
    TempDir dir;
    stubkit::testing::EmbeddedServerOptions options;
    options.service.tail_latency = {2, 10ms, 1};
    options.service.data_path = (dir.path / "users.journal").string();
    CHECK_THROWS_WITH_AS(stubkit::testing::EmbeddedServer{options},
                         "set_tail_latency: fraction must be from 0 to 1", std::invalid_argument);
    CHECK_FALSE(std::filesystem::exists(options.service.data_path));
    CHECK_FALSE(std::filesystem::exists(options.service.data_path + ".key"));
  }

  TEST_CASE("the server draws the tail latency once per unary call, with the options' seed") {
    stubkit::testing::FaultInjector::TailLatency const tail{0.5, 1ms, 7};
    stubkit::testing::EmbeddedServerOptions options;
    options.service.tail_latency = tail;
    ServerFixture f(options);
    myservice::v1::User user;
    for (int i = 0; i < 40; ++i) (void)f.stub->GetUser(context().get(), get_request("ada"), &user);
    stubkit::testing::FaultInjector same(
        myservice::v1::User::descriptor()->file()->FindServiceByName("UserService"));
    same.set_tail_latency(tail);
    for (int i = 0; i < 40; ++i) (void)same.take("GetUser");
    CHECK(f.server.faults().tail_delayed_calls() == same.tail_delayed_calls());
    CHECK(same.tail_delayed_calls() > 0);
    CHECK(same.tail_delayed_calls() < 40);
  }

  TEST_CASE("a call slowed by the tail latency waits, and a caller that gives up cancels it on the server") {
    stubkit::testing::EmbeddedServerOptions options;
    options.service.tail_latency = {1, 10s, 1};  // every call, far past any deadline here
    ServerFixture f(options);
    myservice::v1::GetUserRequest request;
    request.set_id("ada");
    myservice::v1::User user;
    auto status = f.stub->GetUser(context(100ms).get(), request, &user);
    CHECK(status.error_code() == StatusCode::DEADLINE_EXCEEDED);
    // The server sees the cancellation (what hedging relies on to stop losers).
    for (int i = 0; i < 500 && f.server.service().cancelled_calls() == 0; ++i)
      std::this_thread::sleep_for(10ms);
    CHECK(f.server.service().cancelled_calls() == 1);
    CHECK(f.server.faults().tail_delayed_calls() == 1);
    // Turned down live: the next call waits its 50 ms at least, then is answered.
    f.server.faults().set_tail_latency({1, 50ms, 1});
    auto const start = std::chrono::steady_clock::now();
    status = f.stub->GetUser(context().get(), request, &user);
    CHECK(status.error_code() == StatusCode::NOT_FOUND);
    CHECK(std::chrono::steady_clock::now() - start >= 50ms);
    CHECK(f.server.faults().tail_delayed_calls() == 2);
  }

  TEST_CASE("close_stream_after ends a WatchUsers stream with UNAVAILABLE after K messages") {
    ServerFixture f;
    f.server.faults().close_stream_after("WatchUsers", 2);
    check_watch_closed_after_two(f, *context());
  }

  TEST_CASE("clear() removes planned faults but keeps call counts") {
    ServerFixture f;
    f.server.faults().fail_next("CreateUser", 5, StatusCode::INTERNAL);
    CHECK(f.create("a").error_code() == StatusCode::INTERNAL);
    f.server.faults().clear();
    CHECK(f.create("a").ok());
    CHECK(f.server.faults().calls("CreateUser") == 2);
  }

  TEST_CASE("attempt headers are kept for the latest calls only, so a busy server does not grow") {
    stubkit::testing::FaultInjector faults(
        myservice::v1::User::descriptor()->file()->FindServiceByName("UserService"));
    std::size_t const n = stubkit::testing::FaultInjector::kKeptAttemptHeaders;
    for (std::size_t i = 0; i < n + 5; ++i) (void)faults.take("GetUser", std::to_string(i));
    auto const headers = faults.attempt_headers("GetUser");
    REQUIRE(headers.size() == n);
    CHECK(headers.front() == "5");
    CHECK(headers.back() == std::to_string(n + 4));
    CHECK(faults.calls("GetUser") == static_cast<std::int64_t>(n + 5));
  }

  TEST_CASE("the stubkit-fault header is ignored unless the service honours it") {
    ServerFixture f;  // fault_metadata off
    REQUIRE(f.create("ada").ok());
    auto ctx = context();
    ctx->AddMetadata("stubkit-fault", "code=UNAVAILABLE");
    myservice::v1::GetUserRequest request;
    request.set_id("ada");
    myservice::v1::User user;
    CHECK(f.stub->GetUser(ctx.get(), request, &user).ok());
  }

  TEST_CASE("the stubkit-fault header fails the first N attempts, counted by either attempt header") {
    stubkit::testing::EmbeddedServerOptions options;
    options.service.fault_metadata = true;
    ServerFixture f(options);
    REQUIRE(f.create("ada").ok());
    auto get = [&](std::string const& fault, std::string const& attempt_header = "",
                   std::string const& n = "") {
      auto ctx = context();
      ctx->AddMetadata("stubkit-fault", fault);
      if (!attempt_header.empty()) ctx->AddMetadata(attempt_header, n);
      myservice::v1::GetUserRequest request;
      request.set_id("ada");
      myservice::v1::User user;
      return f.stub->GetUser(ctx.get(), request, &user);
    };
    std::string const fault = "code=UNAVAILABLE, attempts=2";
    CHECK(get(fault).error_code() == StatusCode::UNAVAILABLE);  // no header: the first attempt
    CHECK(get(fault, "stubkit-previous-rpc-attempts", "1").error_code() == StatusCode::UNAVAILABLE);
    CHECK(get(fault, "stubkit-previous-rpc-attempts", "2").ok());
    CHECK(get(fault, "grpc-previous-rpc-attempts", "1").error_code() == StatusCode::UNAVAILABLE);
    CHECK(get(fault, "grpc-previous-rpc-attempts", "2").ok());
    CHECK(get(fault, "stubkit-previous-rpc-attempts", "-5").error_code() == StatusCode::UNAVAILABLE);  // as 0
    // Without attempts= every attempt fails; codes by name or number.
    CHECK(get("code=14", "stubkit-previous-rpc-attempts", "9").error_code() == StatusCode::UNAVAILABLE);
    CHECK(get("code=RESOURCE_EXHAUSTED").error_code() == StatusCode::RESOURCE_EXHAUSTED);
    auto pushback = get("code=UNAVAILABLE,retry-delay=1500ms");
    auto retry = detail_of<google::rpc::RetryInfo>(pushback);
    REQUIRE(retry);
    CHECK(retry->retry_delay().seconds() == 1);
    CHECK(retry->retry_delay().nanos() == 500'000'000);
    // Planned faults still apply, and every call is counted.
    f.server.faults().fail_next("GetUser", 1, StatusCode::INTERNAL);
    CHECK(get("latency=0ms").error_code() == StatusCode::INTERNAL);
    CHECK(f.server.faults().calls("GetUser") == 10);
  }

  TEST_CASE("stubkit-fault lost-reply does the work, then fails the call") {
    stubkit::testing::EmbeddedServerOptions options;
    options.service.fault_metadata = true;
    ServerFixture f(options);
    auto ctx = context();
    ctx->AddMetadata("stubkit-fault", "code=UNAVAILABLE,lost-reply");
    myservice::v1::CreateUserRequest request;
    request.mutable_user()->set_id("ada");
    myservice::v1::CreateUserResponse response;
    CHECK(f.stub->CreateUser(ctx.get(), request, &response).error_code() == StatusCode::UNAVAILABLE);
    CHECK(f.server.service().user_count() == 1);
  }

  TEST_CASE("stubkit-fault latency and close-stream-after") {
    stubkit::testing::EmbeddedServerOptions options;
    options.service.fault_metadata = true;
    ServerFixture f(options);
    auto slow = context(100ms);
    slow->AddMetadata("stubkit-fault", "latency=10s");
    myservice::v1::GetUserRequest get;
    get.set_id("ada");
    myservice::v1::User user;
    CHECK(f.stub->GetUser(slow.get(), get, &user).error_code() == StatusCode::DEADLINE_EXCEEDED);

    auto ctx = context();
    ctx->AddMetadata("stubkit-fault", "close-stream-after=2");
    check_watch_closed_after_two(f, *ctx);
  }

  TEST_CASE("a malformed stubkit-fault header is INVALID_ARGUMENT naming the setting") {
    stubkit::testing::EmbeddedServerOptions options;
    options.service.fault_metadata = true;
    ServerFixture f(options);
    REQUIRE(f.create("ada").ok());
    for (std::string const bad :
         {"code=NOPE", "code=17", "code=OK", "attempts=-1", "attempts=x", "attempts=9999999", "latency=5",
          "latency=5m", "latency=2000000s", "retry-delay=1s", "lost-reply", "frobnicate=1", "code"}) {
      CAPTURE(bad);
      auto ctx = context();
      ctx->AddMetadata("stubkit-fault", bad);
      myservice::v1::GetUserRequest request;
      request.set_id("ada");
      myservice::v1::User user;
      auto status = f.stub->GetUser(ctx.get(), request, &user);
      CHECK(status.error_code() == StatusCode::INVALID_ARGUMENT);
      CHECK(status.error_message().find("stubkit-fault: '") == 0);
    }
    // A bad header leaves the plan as it was.
    stubkit::testing::FaultInjector::Plan plan;
    plan.latency = 7ms;
    CHECK_FALSE(stubkit::testing::FaultInjector::apply_header("latency=1s,code=NOPE", 0, plan).ok());
    CHECK(plan.latency == 7ms);
    CHECK(stubkit::testing::FaultInjector::apply_header(" latency = 1s , , code = ABORTED ", 0, plan).ok());
    CHECK(plan.latency == 1s);
    REQUIRE(plan.failure);
    CHECK(plan.failure->error_code() == StatusCode::ABORTED);
  }

  TEST_CASE("over TCP the server listens on a picked port") {
    stubkit::testing::EmbeddedServer server(tcp_options());
    REQUIRE(server.port() > 0);
    CHECK(server.address() == "127.0.0.1:" + std::to_string(server.port()));
    auto stub =
        UserService::NewStub(grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
    myservice::v1::CreateUserRequest request;
    request.mutable_user()->set_id("tcp");
    myservice::v1::CreateUserResponse response;
    CHECK(stub->CreateUser(context().get(), request, &response).ok());
    CHECK(server.service().user_count() == 1);
  }

  TEST_CASE("a port already taken is a clear error") {
    stubkit::testing::EmbeddedServer first(tcp_options());
    auto options = tcp_options();
    options.listen_address = first.address();
    CHECK_THROWS_AS(stubkit::testing::EmbeddedServer{options}, std::runtime_error);
  }

  TEST_CASE("graceful shutdown over TCP lets an in-flight call finish") {
    // (gRPC's in-process transport closes at once on shutdown; TCP drains.)
    stubkit::testing::EmbeddedServer server(tcp_options());
    auto stub =
        UserService::NewStub(grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
    server.service().preload(1);
    server.faults().add_latency("GetUser", 200ms);
    auto call = std::async(std::launch::async, [&] {
      myservice::v1::GetUserRequest request;
      request.set_id("u00000001");
      myservice::v1::User user;
      return stub->GetUser(context().get(), request, &user);
    });
    while (server.faults().calls("GetUser") == 0) std::this_thread::sleep_for(1ms);
    server.shutdown(5s);
    auto status = call.get();
    CHECK_MESSAGE(status.ok(), status.error_message());
    // New calls are refused once the server is down.
    myservice::v1::CreateUserResponse response;
    CHECK_FALSE(stub->CreateUser(context(1s).get(), {}, &response).ok());
  }
}
