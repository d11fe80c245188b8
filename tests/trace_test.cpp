// W3C trace context: parsing and making traceparent values, and the trace
// travelling client -> front -> back through child_context, stubkit::call,
// the retry interceptor and the stream helpers, with its id on every event.
#include "stubkit/trace.hpp"

#include <doctest/doctest.h>

#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "stubkit/channel.hpp"
#include "stubkit/deadline.hpp"
#include "stubkit/observe.hpp"
#include "stubkit/paginate.hpp"
#include "stubkit/retry.hpp"
#include "stubkit/stream.hpp"
#include "stubkit/user_client.hpp"
#include "support.hpp"

using namespace stubkit_tests;
using grpc::StatusCode;
using stubkit::TraceContext;

namespace {

constexpr char kValid[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

// Tracing on or off for one scope, as it was after (STUBKIT_TRACE may
// have turned it on for the whole run).
struct Tracing {
  explicit Tracing(bool on) : before(stubkit::tracing_enabled()) { stubkit::set_tracing(on); }
  ~Tracing() { stubkit::set_tracing(before); }
  Tracing(Tracing const&) = delete;
  Tracing& operator=(Tracing const&) = delete;
  bool const before;
};

std::string header(grpc::ServerContext const& ctx, char const* key) {
  auto const& metadata = ctx.client_metadata();
  auto it = metadata.find(key);
  return it == metadata.end() ? "" : std::string(it->second.data(), it->second.size());
}

// A UserService whose GetUser records the trace headers of every call;
// the first `fail_first` calls fail with UNAVAILABLE.
class Back final : public UserService::Service {
 public:
  explicit Back(int fail_first = 0) : fail_first_(fail_first) {}

  grpc::Status GetUser(grpc::ServerContext* ctx, myservice::v1::GetUserRequest const* request,
                       myservice::v1::User* user) override {
    std::lock_guard<std::mutex> lock(mu_);
    traceparents.push_back(header(*ctx, stubkit::kTraceparentKey));
    tracestates.push_back(header(*ctx, stubkit::kTracestateKey));
    if (static_cast<int>(traceparents.size()) <= fail_first_) return {StatusCode::UNAVAILABLE, "not yet"};
    user->set_id(request->id());
    return grpc::Status::OK;
  }

  // Not retried by the retry interceptor (no request_id): passed through.
  grpc::Status CreateUser(grpc::ServerContext* ctx, myservice::v1::CreateUserRequest const* request,
                          myservice::v1::CreateUserResponse* response) override {
    std::lock_guard<std::mutex> lock(mu_);
    traceparents.push_back(header(*ctx, stubkit::kTraceparentKey));
    tracestates.push_back(header(*ctx, stubkit::kTracestateKey));
    *response->mutable_user() = request->user();
    return grpc::Status::OK;
  }

  // A stream: never retried, observed (or traced) only.
  grpc::Status WatchUsers(grpc::ServerContext* ctx, myservice::v1::WatchUsersRequest const*,
                          grpc::ServerWriter<myservice::v1::UserEvent>*) override {
    std::lock_guard<std::mutex> lock(mu_);
    traceparents.push_back(header(*ctx, stubkit::kTraceparentKey));
    tracestates.push_back(header(*ctx, stubkit::kTracestateKey));
    return grpc::Status::OK;
  }

  std::vector<std::string> seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return traceparents;
  }

  std::vector<std::string> states() {
    std::lock_guard<std::mutex> lock(mu_);
    return tracestates;
  }

  std::mutex mu_;
  std::vector<std::string> traceparents, tracestates;
  int const fail_first_;
};

// A UserService whose GetUser asks the back end, through child_context.
class Front final : public UserService::Service {
 public:
  explicit Front(std::shared_ptr<grpc::Channel> back) : back_(UserService::NewStub(std::move(back))) {}

  grpc::Status GetUser(grpc::ServerContext* ctx, myservice::v1::GetUserRequest const* request,
                       myservice::v1::User* user) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      traceparents.push_back(header(*ctx, stubkit::kTraceparentKey));
    }
    auto child = stubkit::child_context(*ctx);
    if (!child) return child.error().to_grpc_status();
    return back_->GetUser(child->get(), *request, user);
  }

  std::vector<std::string> seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return traceparents;
  }

  std::mutex mu_;
  std::vector<std::string> traceparents;

 private:
  std::unique_ptr<UserService::Stub> back_;
};

// A server on a free local port for `service`.
struct Serve {
  explicit Serve(grpc::Service* service) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service);
    server = builder.BuildAndStart();
    REQUIRE(server != nullptr);
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
  // A stub on a plain channel to it.
  std::unique_ptr<UserService::Stub> stub() const {
    return UserService::NewStub(grpc::CreateChannel(address(), grpc::InsecureChannelCredentials()));
  }
  int port = 0;
  std::unique_ptr<grpc::Server> server;
};

// The trace_id of every log line (an empty string for a line without one).
struct LogLines {
  std::shared_ptr<stubkit::Observer> observer() {
    stubkit::LogOptions options;
    options.timestamps = false;
    options.sink = [this](std::string_view line) {
      std::lock_guard<std::mutex> lock(mu);
      lines.emplace_back(line);
    };
    return std::make_shared<stubkit::LogObserver>(options);
  }
  stubkit::CallOptions call_options() {
    stubkit::CallOptions options;
    options.observer = observer();
    return options;
  }
  std::set<std::string> trace_ids() {
    std::lock_guard<std::mutex> lock(mu);
    std::set<std::string> ids;
    for (auto const& line : lines) {
      auto const at = line.find(" trace_id=");
      ids.insert(at == std::string::npos ? "" : line.substr(at + 10, 32));
    }
    return ids;
  }
  std::mutex mu;
  std::vector<std::string> lines;
};

std::string trace_id(std::string const& traceparent) {
  auto const trace = TraceContext::parse(traceparent);
  REQUIRE_MESSAGE(trace.has_value(), "not a traceparent: '" << traceparent << "'");
  return std::string(trace->trace_id());
}

}  // namespace

TEST_SUITE("trace") {
  TEST_CASE("traceparent values are parsed as W3C Trace Context says") {
    auto const trace = TraceContext::parse(kValid);
    REQUIRE(trace.has_value());
    CHECK(trace->trace_id() == "4bf92f3577b34da6a3ce929d0e0e4736");
    CHECK(trace->parent_id() == "00f067aa0ba902b7");
    CHECK(trace->sampled());
    CHECK(trace->traceparent() == kValid);
    CHECK_FALSE(TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")->sampled());
    // A later version may add fields after a dash; version 00 may not.
    CHECK(TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").has_value());
    for (char const* bad : {
             "",
             "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  // 00 with more
             "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",        // uppercase
             "00-00000000000000000000000000000000-00f067aa0ba902b7-01",        // zero trace id
             "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",        // zero parent id
             "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",        // version ff
             "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",        // separator
             "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",         // short trace id
             "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",        // flags not hex
             "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",       // later version, no dash
         }) {
      CAPTURE(bad);
      CHECK_FALSE(TraceContext::parse(bad).has_value());
    }
  }

  TEST_CASE("new traces are valid and distinct; a child keeps the trace and takes a new parent id") {
    std::set<std::string> ids;
    for (int i = 0; i < 1000; ++i) {
      auto const trace = TraceContext::generate();
      auto const again = TraceContext::parse(trace.traceparent());
      REQUIRE(again.has_value());
      CHECK(again->trace_id() == trace.trace_id());
      ids.insert(std::string(trace.trace_id()));
    }
    CHECK(ids.size() == 1000);
    auto const parent = *TraceContext::parse(kValid);
    auto const child = parent.child();
    CHECK(child.trace_id() == parent.trace_id());
    CHECK(child.parent_id() != parent.parent_id());
    CHECK(child.sampled() == parent.sampled());
  }

  TEST_CASE("STUBKIT_TRACE turns tracing on with w3c only") {
    CHECK(stubkit::detail::tracing_from_env("w3c"));
    CHECK_FALSE(stubkit::detail::tracing_from_env(nullptr));
    CHECK_FALSE(stubkit::detail::tracing_from_env(""));
    CHECK_FALSE(stubkit::detail::tracing_from_env("on"));  // reported on stderr
  }

  TEST_CASE("client -> front -> back: the back end sees the client's trace, and every log line names it") {
    Tracing tracing(true);
    Back back;
    Serve back_server(&back);
    Front front(grpc::CreateChannel(back_server.address(), grpc::InsecureChannelCredentials()));
    Serve front_server(&front);
    LogLines log;
    stubkit::ChannelOptions options;
    options.observer = log.observer();
    SUBCASE("a plain channel") {}
    SUBCASE("a channel that retries") { options.retry = stubkit::RetryInterceptorOptions{}; }
    auto stub = UserService::NewStub(stubkit::make_channel(front_server.address(), options));
    myservice::v1::User user;
    REQUIRE(stub->GetUser(context().get(), get_request("ada"), &user).ok());
    CHECK(user.id() == "ada");

    auto const at_front = front.seen();
    auto const at_back = back.seen();
    REQUIRE(at_front.size() == 1);
    REQUIRE(at_back.size() == 1);
    std::string const id = trace_id(at_front[0]);
    CHECK(trace_id(at_back[0]) == id);
    // The front's call is a child: a new parent id.
    CHECK(TraceContext::parse(at_back[0])->parent_id() != TraceContext::parse(at_front[0])->parent_id());
    CHECK(log.trace_ids() == std::set<std::string>{id});
    CHECK(log.lines.size() >= 4);
  }

  TEST_CASE("tracing on needs no observer: make_channel's interceptors add the traceparent") {
    Tracing tracing(true);
    stubkit::set_default_observer(nullptr);
    Back back;
    Serve server(&back);
    stubkit::ChannelOptions options;
    SUBCASE("a plain channel") {}
    SUBCASE("a channel that retries") { options.retry = stubkit::RetryInterceptorOptions{}; }
    auto stub = UserService::NewStub(stubkit::make_channel(server.address(), options));
    myservice::v1::User user;
    REQUIRE(stub->GetUser(context().get(), get_request("ada"), &user).ok());  // retried when it may be
    myservice::v1::CreateUserRequest create;
    create.mutable_user()->set_id("ada");
    myservice::v1::CreateUserResponse created;
    REQUIRE(stub->CreateUser(context().get(), create, &created).ok());  // no request_id: passed through
    auto watch_ctx = context();
    auto watch = stub->WatchUsers(watch_ctx.get(), {});  // a stream: observed or traced only
    myservice::v1::UserEvent event;
    while (watch->Read(&event)) {
    }
    REQUIRE(watch->Finish().ok());
    auto const seen = back.seen();
    REQUIRE(seen.size() == 3);
    std::set<std::string> traces;
    for (auto const& traceparent : seen) traces.insert(trace_id(traceparent));
    CHECK(traces.size() == 3);  // three calls, three traces
  }

  TEST_CASE("with tracing off, a caller's traceparent still travels, and none is made") {
    Tracing off(false);
    Back back;
    Serve back_server(&back);
    Front front(grpc::CreateChannel(back_server.address(), grpc::InsecureChannelCredentials()));
    Serve front_server(&front);
    auto stub = front_server.stub();
    myservice::v1::User user;
    REQUIRE(stub->GetUser(context().get(), get_request("ada"), &user).ok());
    CHECK(back.seen().at(0).empty());

    auto ctx = context();
    ctx->AddMetadata("traceparent", kValid);
    ctx->AddMetadata("tracestate", "vendor=abc");
    REQUIRE(stub->GetUser(ctx.get(), get_request("ada"), &user).ok());
    CHECK(trace_id(back.seen().at(1)) == "4bf92f3577b34da6a3ce929d0e0e4736");
    CHECK(back.states().at(1) == "vendor=abc");
  }

  TEST_CASE("stubkit::call sends one trace with every attempt and reports it on every event") {
    Tracing tracing(false);
    Back back(/*fail_first=*/2);
    Serve server(&back);
    auto stub = server.stub();
    LogLines log;
    stubkit::CallOptions options = log.call_options();
    options.retry = stubkit::RetryPolicy::standard();
    options.clock.sleep = [](std::chrono::milliseconds) {};
    std::string expected;
    SUBCASE("the caller's traceparent") {
      options.metadata.emplace_back("traceparent", kValid);
      expected = "4bf92f3577b34da6a3ce929d0e0e4736";
    }
    bool on = false;
    SUBCASE("a new trace, tracing on") { on = true; }
    std::optional<Tracing> scope;
    if (on) scope.emplace(true);
    auto result = stubkit::call(*stub, &UserService::Stub::GetUser, get_request("ada"), options);
    REQUIRE(result.ok());
    auto const seen = back.seen();
    REQUIRE(seen.size() == 3);
    CHECK(seen[0] == seen[1]);
    CHECK(seen[1] == seen[2]);
    if (expected.empty()) expected = trace_id(seen[0]);
    CHECK(trace_id(seen[0]) == expected);
    // call.start, 3 x (attempt.start, attempt.end), 2 retries, call.end: all traced.
    CHECK(log.lines.size() == 10);
    CHECK(log.trace_ids() == std::set<std::string>{expected});
  }

  TEST_CASE("without tracing and without a traceparent, nothing is sent and events carry no trace id") {
    Tracing off(false);
    Back back;
    Serve server(&back);
    auto stub = server.stub();
    LogLines log;
    stubkit::CallOptions options = log.call_options();
    REQUIRE(stubkit::call(*stub, &UserService::Stub::GetUser, get_request("ada"), options).ok());
    CHECK(back.seen().at(0).empty());
    CHECK(log.trace_ids() == std::set<std::string>{""});
  }

  TEST_CASE("listings and streams carry one trace for all their calls") {
    Tracing tracing(true);
    ServerFixture f;
    for (int i = 0; i < 5; ++i) REQUIRE(f.create("u" + std::to_string(i)).ok());
    LogLines log;
    SUBCASE("paginate") {
      stubkit::PaginateOptions options;
      options.page_size = 2;
      options.observer = log.observer();
      int items = 0;
      for (auto const& user : stubkit::paginate(*f.stub, &UserService::Stub::ListUsers, {}, options)) {
        REQUIRE(user.ok());
        ++items;
      }
      CHECK(items == 5);
      CHECK(log.lines.size() == 3);
    }
    SUBCASE("read_stream") {
      stubkit::StreamOptions options;
      options.observer = log.observer();
      options.deadline = stubkit::Deadline::after(std::chrono::milliseconds(300));
      myservice::v1::WatchUsersRequest request;
      for (auto const& event :
           stubkit::read_stream(*f.stub, &UserService::Stub::WatchUsers, request, options)) {
        (void)event;
      }
      CHECK(log.lines.size() == 2);
    }
    auto const ids = log.trace_ids();
    REQUIRE(ids.size() == 1);
    CHECK(ids.begin()->size() == 32);
  }
}

TEST_SUITE("trace") {
  TEST_CASE("child_context: trace carried, made, or left out as asked") {
    // A server whose handler reports the child's metadata as seen by a back end.
    Back back;
    Serve back_server(&back);
    class Relay final : public UserService::Service {
     public:
      Relay(std::shared_ptr<grpc::Channel> channel, stubkit::ChildContextOptions options)
          : stub_(UserService::NewStub(std::move(channel))), options_(options) {}
      grpc::Status GetUser(grpc::ServerContext* ctx, myservice::v1::GetUserRequest const* request,
                           myservice::v1::User* user) override {
        auto child = stubkit::child_context(*ctx, options_);
        if (!child) return child.error().to_grpc_status();
        return stub_->GetUser(child->get(), *request, user);
      }

     private:
      std::unique_ptr<UserService::Stub> stub_;
      stubkit::ChildContextOptions options_;
    };
    stubkit::ChildContextOptions options;
    bool traced_upstream = true, tracing = false, expect_trace = true;
    SUBCASE("carried") {}
    SUBCASE("not carried when asked not to") {
      options.propagate_trace = false;
      expect_trace = false;
    }
    SUBCASE("made when the upstream has none and tracing is on") {
      traced_upstream = false;
      tracing = true;
    }
    SUBCASE("none when the upstream has none and tracing is off") {
      traced_upstream = false;
      expect_trace = false;
    }
    Relay relay(grpc::CreateChannel(back_server.address(), grpc::InsecureChannelCredentials()), options);
    Serve relay_server(&relay);
    auto stub = relay_server.stub();
    auto ctx = context();
    if (traced_upstream) {
      ctx->AddMetadata("traceparent", kValid);
      ctx->AddMetadata("tracestate", "a=1");
      ctx->AddMetadata("tracestate", "b=2");  // several headers are one list (W3C)
    }
    Tracing scope(tracing);
    myservice::v1::User user;
    REQUIRE(stub->GetUser(ctx.get(), get_request("ada"), &user).ok());
    std::string const seen = back.seen().at(0);
    CHECK(!seen.empty() == expect_trace);
    if (expect_trace && traced_upstream) {
      CHECK(trace_id(seen) == "4bf92f3577b34da6a3ce929d0e0e4736");
      CHECK(back.states().at(0) == "a=1,b=2");
    }
    if (expect_trace && !traced_upstream) CHECK(TraceContext::parse(seen).has_value());
  }
}
