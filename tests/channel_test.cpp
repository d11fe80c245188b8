// Channels over TCP on loopback: load balancing across backends, health
// checking, bearer tokens, message limits, TLS, and waiting until serving.
#include "stubkit/channel.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "myservice/v1/user.stubkit.h"
#include "process.hpp"
#include "support.hpp"
#include "tcp_proxy.hpp"

using namespace stubkit_tests;
using grpc::StatusCode;
using myservice::v1::User;
using myservice::v1::UserServicePoolStub;

namespace {

struct Backends {
  explicit Backends(int n) {
    for (int i = 0; i < n; ++i) {
      servers.push_back(std::make_unique<stubkit::testing::EmbeddedServer>(tcp_options()));
      servers.back()->service().preload(1);
    }
  }
  std::string target() const {
    std::string t = "ipv4:";
    for (std::size_t i = 0; i < servers.size(); ++i) t += (i ? "," : "") + servers[i]->address();
    return t;
  }
  std::vector<std::int64_t> calls() const {
    std::vector<std::int64_t> out;
    for (auto const& s : servers) out.push_back(s->faults().calls("GetUser"));
    return out;
  }
  std::vector<std::unique_ptr<stubkit::testing::EmbeddedServer>> servers;
};

int call_n(UserService::Stub& stub, int n) {
  int failed = 0;
  for (int i = 0; i < n; ++i) {
    User user;
    if (!stub.GetUser(context().get(), get_request("u00000001"), &user).ok()) ++failed;
  }
  return failed;
}

// A pool of four channels to one backend through a TCP proxy, connected
// one by one: the proxy's connection i is channel i's, so a pool stub's
// call i goes over connection i % 4.
struct ProxiedPool {
  ProxiedPool() {
    for (std::size_t i = 0; i < pool.size(); ++i) {
      REQUIRE(pool.channels()[i]->WaitForConnected(std::chrono::system_clock::now() + 5s));
      REQUIRE(proxy.connections() == i + 1);
    }
  }
  // Eight GetUser in flight through `client`, two per connection, each
  // held `hold` by the server; returns once the server has all eight.
  std::vector<stubkit::AsyncFuture<stubkit::Result<User>>> eight_held(
      myservice::v1::UserServiceClient const& client, std::chrono::milliseconds hold) {
    server.faults().set_tail_latency({1.0, hold});
    std::vector<stubkit::AsyncFuture<stubkit::Result<User>>> calls;
    for (int i = 0; i < 8; ++i)
      calls.push_back(client.get_user_async(get_request("u00000001"), stubkit::use_future));
    for (int i = 0; i < 500 && server.faults().calls("GetUser") < 8; ++i) std::this_thread::sleep_for(10ms);
    REQUIRE(server.faults().calls("GetUser") == 8);
    return calls;
  }

  Backends backends{1};
  stubkit::testing::EmbeddedServer& server = *backends.servers[0];
  TcpProxy proxy{server.port()};
  stubkit::ChannelPool pool{proxy.address(), 4};
};

std::string read_file(std::string const& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TEST_SUITE("channel") {
  TEST_CASE("round_robin spreads calls across every backend of an ipv4: list") {
    Backends backends(3);
    auto channel = stubkit::make_channel(backends.target());
    REQUIRE(stubkit::wait_until_serving(*channel, "myservice.v1.UserService", 5s).ok());
    auto stub = UserService::NewStub(channel);
    CHECK(call_n(*stub, 30) == 0);
    for (auto n : backends.calls()) CHECK(n >= 5);  // 10 each, give or take connection timing
  }

  TEST_CASE("a channel pool connects each channel on its own; plain channels share one connection") {
    Backends backends(1);
    auto& service = backends.servers[0]->service();
    stubkit::ChannelPool pool(backends.target(), 4);
    REQUIRE(pool.size() == 4);
    // next() hands the channels out in turn.
    for (std::size_t i = 0; i < 8; ++i) CHECK(pool.next() == pool.channels()[i % 4]);
    for (int i = 0; i < 8; ++i) {
      auto stub = UserService::NewStub(pool.next());
      CHECK(call_n(*stub, 1) == 0);
    }
    CHECK(service.peer_count() == 4);  // four connections, four client ports

    // Four make_channel channels with the same target and options: one connection.
    Backends shared(1);
    std::vector<std::shared_ptr<grpc::Channel>> channels;
    for (int i = 0; i < 4; ++i) channels.push_back(stubkit::make_channel(shared.target()));
    for (auto const& channel : channels) CHECK(call_n(*UserService::NewStub(channel), 2) == 0);
    CHECK(shared.servers[0]->service().peer_count() == 1);
  }

  TEST_CASE("a channel pool refuses a size of 0 or past its limit, and options make_channel refuses") {
    CHECK_THROWS_WITH_AS(stubkit::ChannelPool("127.0.0.1:1", 0),
                         "stubkit::ChannelPool: size must be from 1 to 64, got 0", std::invalid_argument);
    CHECK_THROWS_AS(stubkit::ChannelPool("127.0.0.1:1", stubkit::ChannelPool::kMaxSize + 1),
                    std::invalid_argument);
    stubkit::ChannelOptions options;
    options.bearer_token = "secret";
    CHECK_THROWS_AS(stubkit::ChannelPool("dns:///far.example.com:443", 2, options), std::invalid_argument);
  }

  TEST_CASE("a pool stub sends every kind of call to the next channel in turn") {
    // A fresh backend for each kind of call: the connections it sees are
    // the pool's channels that kind of call went through.
    auto peers_of = [](std::string const& kind, auto&& calls) {
      CAPTURE(kind);
      Backends backends(1);
      auto& service = backends.servers[0]->service();
      service.preload(7);  // 8 users: four pages of 2
      stubkit::ChannelPool pool(backends.target(), 4);
      auto stub = std::make_shared<UserServicePoolStub>(pool.channels());
      CHECK(stub->size() == 4);
      myservice::v1::UserServiceClient client(stub);
      calls(client, *stub);
      return service.peer_count();
    };
    CHECK(peers_of("blocking unary", [](auto& client, auto&) {
            for (int i = 0; i < 4; ++i) CHECK(client.get_user(get_request("u00000001")).ok());
          }) == 4);
    CHECK(peers_of("listing", [](auto& client, auto&) {
            stubkit::PaginateOptions options;
            options.page_size = 2;
            std::size_t items = 0;
            for (auto const& user : client.list_users({}, options)) items += user.ok() ? 1 : 0;
            CHECK(items == 8);
          }) == 4);
    CHECK(peers_of("server stream", [](auto& client, auto&) {
            for (int i = 0; i < 4; ++i) {
              stubkit::StreamOptions options;
              options.deadline = stubkit::Deadline::after(50ms);
              std::optional<StatusCode> end;
              for (auto const& event : client.watch_users({}, options)) {
                if (!event) end = event.error().code();
              }
              CHECK(end == StatusCode::DEADLINE_EXCEEDED);  // no changes: it ends at its deadline
            }
          }) == 4);
    CHECK(peers_of("client stream", [](auto& client, auto&) {
            for (int i = 0; i < 4; ++i) {
              auto writer = client.bulk_create_users();
              CHECK(writer.write(create_user_request("")));
              auto result = writer.finish();
              REQUIRE(result.ok());
              CHECK(result->created() == 1);
            }
          }) == 4);
    CHECK(peers_of("bidi stream", [](auto& client, auto&) {
            for (int i = 0; i < 4; ++i) {
              auto session = client.chat();
              myservice::v1::ChatMessage message;
              message.set_sender("pool");
              message.set_text("hello");
              CHECK(session.write(message));
              CHECK(session.writes_done());
              while (session.read()) {
              }
              CHECK_FALSE(session.finish().has_value());  // no error
            }
          }) == 4);
    CHECK(peers_of("async_call", [](auto& client, auto&) {
            std::vector<stubkit::AsyncFuture<stubkit::Result<User>>> calls;
            for (int i = 0; i < 4; ++i)
              calls.push_back(client.get_user_async(get_request("u00000001"), stubkit::use_future));
            for (auto& call : calls) CHECK(call.get().ok());
          }) == 4);
    CHECK(peers_of("completion queue", [](auto&, auto& stub) {
            grpc::CompletionQueue cq;
            struct Call {
              std::unique_ptr<grpc::ClientContext> ctx = context();
              User user;
              grpc::Status status;
            };
            std::vector<Call> calls(4);
            for (std::size_t i = 0; i < calls.size(); ++i) {
              stub.AsyncGetUser(calls[i].ctx.get(), get_request("u00000001"), &cq)
                  ->Finish(&calls[i].user, &calls[i].status, &calls[i]);
            }
            for (std::size_t done = 0; done < calls.size(); ++done) {
              void* tag = nullptr;
              bool ok = false;
              REQUIRE(cq.Next(&tag, &ok));
              CHECK(ok);
              CHECK(static_cast<Call*>(tag)->status.ok());
            }
          }) == 4);
  }

  TEST_CASE("a pool stub refuses no channels and null channels") {
    CHECK_THROWS_WITH_AS(UserServicePoolStub{std::vector<std::shared_ptr<grpc::Channel>>{}},
                         "stubkit: a pool stub needs at least one channel, got none", std::invalid_argument);
    std::vector<std::shared_ptr<grpc::Channel>> channels{stubkit::make_channel("127.0.0.1:1"), nullptr};
    CHECK_THROWS_WITH_AS(UserServicePoolStub{channels}, "stubkit: a pool stub's channel 1 is a null pointer",
                         std::invalid_argument);
  }

  TEST_CASE("a connection reset on one pool channel fails only the calls on that channel") {
    ProxiedPool proxied;
    auto& server = proxied.server;
    auto& proxy = proxied.proxy;
    auto& pool = proxied.pool;
    auto stub = std::make_shared<UserServicePoolStub>(pool.channels());
    myservice::v1::UserServiceClient client(stub);

    auto calls = proxied.eight_held(client, 2s);

    proxy.reset(1);
    for (std::size_t i = 0; i < calls.size(); ++i) {
      CAPTURE(i);
      auto result = calls[i].get();
      if (i % 4 == 1) {
        REQUIRE_FALSE(result.ok());
        CHECK(result.error().code() == StatusCode::UNAVAILABLE);
      } else {
        CHECK(result.ok());
      }
    }
    // The server saw its side of the connection reset: both calls on it end there.
    for (int i = 0; i < 500 && server.service().cancelled_calls() < 2; ++i) std::this_thread::sleep_for(10ms);
    CHECK(server.service().cancelled_calls() == 2);

    // The reset channel connects again on its next call; the others keep theirs.
    server.faults().set_tail_latency({});
    for (int i = 0; i < 8; ++i) CHECK(client.get_user(get_request("u00000001")).ok());
    CHECK(proxy.connections() == 5);
  }

  TEST_CASE("with retries, a connection reset on one pool channel fails no call") {
    ProxiedPool proxied;
    auto& server = proxied.server;
    auto& proxy = proxied.proxy;
    auto& pool = proxied.pool;

    stubkit::ClientOptions defaults;
    defaults.call.retry = stubkit::RetryPolicy{};
    myservice::v1::UserServiceClient client(std::make_shared<UserServicePoolStub>(pool.channels()), defaults);

    auto calls = proxied.eight_held(client, 1s);
    proxy.reset(1);
    // The two attempts on the reset connection are retried on the next
    // channels: every call succeeds, two of them after a second attempt.
    for (auto& call : calls) CHECK(call.get().ok());
    CHECK(server.faults().calls("GetUser") == 10);
  }

  TEST_CASE("max_concurrent_streams holds a connection's further calls on the client") {
    auto options = tcp_options();
    options.max_concurrent_streams = 2;
    stubkit::testing::EmbeddedServer server(options);
    server.service().preload(1);
    server.faults().set_tail_latency({1.0, 2s});
    myservice::v1::UserServiceClient client(stubkit::make_channel(server.address()));
    std::vector<stubkit::AsyncFuture<stubkit::Result<User>>> calls;
    for (int i = 0; i < 4; ++i)
      calls.push_back(client.get_user_async(get_request("u00000001"), stubkit::use_future));
    for (int i = 0; i < 500 && server.faults().calls("GetUser") < 2; ++i) std::this_thread::sleep_for(10ms);
    std::this_thread::sleep_for(200ms);
    CHECK(server.faults().calls("GetUser") == 2);  // two calls open; two wait on the client
    for (auto& call : calls) CHECK(call.get().ok());
    CHECK(server.faults().calls("GetUser") == 4);

    options.max_concurrent_streams = -1;
    CHECK_THROWS_WITH_AS(stubkit::testing::EmbeddedServer{options},
                         "EmbeddedServerOptions::max_concurrent_streams must not be negative, got -1",
                         std::invalid_argument);
  }

  TEST_CASE("a backend set NOT_SERVING gets no traffic with client-side health checking") {
    Backends backends(3);
    stubkit::ChannelOptions options;
    options.health_check_service = "myservice.v1.UserService";
    auto channel = stubkit::make_channel(backends.target(), options);
    auto stub = UserService::NewStub(channel);
    REQUIRE(stubkit::wait_until_serving(*channel, "myservice.v1.UserService", 5s).ok());
    CHECK(call_n(*stub, 30) == 0);
    backends.servers[1]->health().SetServingStatus("myservice.v1.UserService", false);
    // The health watch reaches the client asynchronously: wait for traffic to move.
    auto before = backends.calls();
    for (int i = 0; i < 100; ++i) {
      before = backends.calls();
      CHECK(call_n(*stub, 6) == 0);
      if (backends.calls()[1] == before[1]) break;
      std::this_thread::sleep_for(20ms);
    }
    before = backends.calls();
    CHECK(call_n(*stub, 30) == 0);
    auto after = backends.calls();
    CHECK(after[1] == before[1]);
    CHECK(after[0] > before[0]);
    CHECK(after[2] > before[2]);
  }

  TEST_CASE("a dead backend costs no failed calls with retries on") {
    Backends backends(3);
    stubkit::ChannelOptions options;
    options.retry = stubkit::RetryInterceptorOptions{};
    options.retry->policy.initial_backoff = 10ms;
    auto channel = stubkit::make_channel(backends.target(), options);
    auto stub = UserService::NewStub(channel);
    REQUIRE(stubkit::wait_until_serving(*channel, "myservice.v1.UserService", 5s).ok());
    CHECK(call_n(*stub, 15) == 0);
    backends.servers[2]->shutdown(0ms);  // killed: its connections drop
    CHECK(call_n(*stub, 60) == 0);
    auto const before = backends.calls();
    CHECK(call_n(*stub, 20) == 0);
    auto const after = backends.calls();
    CHECK(after[0] + after[1] - before[0] - before[1] == 20);
  }

  TEST_CASE("user_server processes: one killed with SIGKILL costs no failed calls") {
    char const* user_server = std::getenv("STUBKIT_USER_SERVER");
    REQUIRE_MESSAGE(user_server != nullptr, "the test suite sets STUBKIT_USER_SERVER");
    std::vector<std::unique_ptr<Process>> processes;
    std::string target = "ipv4:";
    for (int i = 0; i < 3; ++i) {
      processes.push_back(std::make_unique<Process>(std::vector<std::string>{user_server, "--preload", "1"}));
      std::string const address = start_user_server(*processes.back());
      REQUIRE_FALSE(address.empty());
      target += (i ? "," : "") + address;
    }
    stubkit::ChannelOptions options;
    options.retry = stubkit::RetryInterceptorOptions{};
    options.retry->policy.initial_backoff = 10ms;
    auto channel = stubkit::make_channel(target, options);
    REQUIRE(stubkit::wait_until_serving(*channel, "myservice.v1.UserService", 5s).ok());
    auto stub = UserService::NewStub(channel);
    CHECK(call_n(*stub, 30) == 0);
    processes[0]->stop(SIGKILL);
    CHECK(call_n(*stub, 100) == 0);
    processes[1]->stop(SIGKILL);
    CHECK(call_n(*stub, 30) == 0);  // one backend left carries everything
  }

  TEST_CASE("a bearer token goes on every call; wrong or missing ones are typed Unauthenticated") {
    stubkit::testing::EmbeddedServerOptions server_options = tcp_options();
    server_options.service.token = "t0ken";
    stubkit::testing::EmbeddedServer server(server_options);
    server.service().preload(1);

    stubkit::ChannelOptions good;
    good.bearer_token = "t0ken";
    User user;
    auto ok = UserService::NewStub(stubkit::make_channel(server.address(), good))
                  ->GetUser(context().get(), get_request("u00000001"), &user);
    CHECK(ok.ok());

    stubkit::ChannelOptions wrong;
    int asked = 0;
    wrong.token_provider = [&] {
      ++asked;
      return std::string("nope");
    };
    auto stub = UserService::NewStub(stubkit::make_channel(server.address(), wrong));
    auto denied = stubkit::call(*stub, &UserService::Stub::GetUser, get_request("u00000001"));
    CHECK(denied.error().is<stubkit::Unauthenticated>());
    CHECK(denied.error().to_string().find("nope") == std::string::npos);
    CHECK(asked == 1);

    auto missing = UserService::NewStub(stubkit::make_channel(server.address()))
                       ->GetUser(context().get(), get_request("u00000001"), &user);
    CHECK(missing.error_code() == StatusCode::UNAUTHENTICATED);

    // Health stays public: waiting works without a token.
    CHECK(
        stubkit::wait_until_serving(*stubkit::make_channel(server.address()), "myservice.v1.UserService", 5s)
            .ok());
  }

  TEST_CASE("a refreshing token provider is asked on every retry attempt") {
    stubkit::testing::EmbeddedServerOptions server_options = tcp_options();
    server_options.service.token = "fresh";
    stubkit::testing::EmbeddedServer server(server_options);
    server.service().preload(1);
    server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE);
    stubkit::ChannelOptions options;
    options.retry = stubkit::RetryInterceptorOptions{};
    options.retry->policy.initial_backoff = 1ms;
    std::atomic<int> asked{0};
    options.token_provider = [&] {
      ++asked;
      return std::string("fresh");
    };
    auto stub = UserService::NewStub(stubkit::make_channel(server.address(), options));
    User user;
    auto status = stub->GetUser(context().get(), get_request("u00000001"), &user);
    CHECK_MESSAGE(status.ok(), status.error_message());
    CHECK(server.faults().calls("GetUser") == 2);
    CHECK(asked == 2);  // once per attempt
  }

  TEST_CASE("tokens go in plaintext only to this machine unless the caller opts in") {
    using stubkit::detail::is_local_target;
    for (char const* local : {"localhost:50051", "127.0.0.1:1", "127.5.0.9:80", "[::1]:50051", "::1",
                              "ipv4:127.0.0.1:1,127.0.0.2:2", "ipv6:[::1]:5", "dns:///localhost:50051",
                              "unix:/tmp/socket", "unix-abstract:name"}) {
      CHECK_MESSAGE(is_local_target(local), local);
    }
    for (char const* remote :
         {"10.0.0.1:50051", "example.com:443", "ipv4:127.0.0.1:1,10.0.0.2:2", "dns:///api.example.com:443",
          "xds:///service", "127.0.0.1.example.com:1", "[2001:db8::1]:50051", ""}) {
      CHECK_FALSE_MESSAGE(is_local_target(remote), remote);
    }

    stubkit::ChannelOptions options;
    options.bearer_token = "s3cret-value";
    try {
      stubkit::make_channel("10.0.0.1:50051", options);
      FAIL("make_channel sent a token in plaintext to a remote target");
    } catch (std::invalid_argument const& e) {
      CHECK(std::string(e.what()).find("plaintext") != std::string::npos);
      CHECK(std::string(e.what()).find("s3cret") == std::string::npos);  // the token is never shown
    }
    options.allow_insecure_token = true;
    CHECK(stubkit::make_channel("10.0.0.1:50051", options) != nullptr);
    options.allow_insecure_token = false;
    options.tls = stubkit::TlsOptions{};
    CHECK(stubkit::make_channel("10.0.0.1:50051", options) != nullptr);
  }

  TEST_CASE("a token provider that throws or blocks fails the call, and nothing is sent") {
    stubkit::testing::EmbeddedServerOptions server_options = tcp_options();
    server_options.service.token = "t0ken";
    stubkit::testing::EmbeddedServer server(server_options);
    server.service().preload(1);
    User user;
    SUBCASE("throws: UNAUTHENTICATED, naming the provider") {
      stubkit::ChannelOptions options;
      options.token_provider = []() -> std::string { throw std::runtime_error("vault unreachable"); };
      auto stub = UserService::NewStub(stubkit::make_channel(server.address(), options));
      auto status = stub->GetUser(context().get(), get_request("u00000001"), &user);
      CHECK(status.error_code() == StatusCode::UNAUTHENTICATED);
      CHECK(status.error_message().find("vault unreachable") != std::string::npos);
    }
    SUBCASE("blocks: DEADLINE_EXCEEDED at the call's deadline, UNAUTHENTICATED after token_timeout") {
      std::mutex mu;
      std::condition_variable cv;
      bool release = false;
      stubkit::ChannelOptions options;
      options.token_timeout = 300ms;
      options.token_provider = [&] {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait_for(lock, 20s, [&] { return release; });
        return std::string("t0ken");
      };
      {
        auto stub = UserService::NewStub(stubkit::make_channel(server.address(), options));
        auto const start = std::chrono::steady_clock::now();
        auto status = stub->GetUser(context(200ms).get(), get_request("u00000001"), &user);
        CHECK(status.error_code() == StatusCode::DEADLINE_EXCEEDED);
        CHECK(status.error_message().find("token provider") != std::string::npos);
        grpc::ClientContext no_deadline;
        status = stub->GetUser(&no_deadline, get_request("u00000001"), &user);
        CHECK(status.error_code() == StatusCode::UNAUTHENTICATED);
        CHECK(std::chrono::steady_clock::now() - start < 10s);
        {
          std::lock_guard<std::mutex> lock(mu);
          release = true;
        }
        cv.notify_all();
      }  // the channel waits for its provider's thread here
    }
    CHECK(server.faults().calls("GetUser") == 0);
  }

  TEST_CASE("a token with an expiry is kept until shortly before it; an expired one is fetched again") {
    stubkit::testing::EmbeddedServerOptions server_options = tcp_options();
    server_options.service.token = "t0ken";
    stubkit::testing::EmbeddedServer server(server_options);
    server.service().preload(1);
    std::atomic<int> asked{0};
    stubkit::ChannelOptions options;
    options.expiring_token_provider = [&] {
      ++asked;
      return stubkit::BearerToken{"t0ken", std::chrono::system_clock::now() + 1h};
    };
    auto stub = UserService::NewStub(stubkit::make_channel(server.address(), options));
    User user;
    for (int i = 0; i < 5; ++i) CHECK(stub->GetUser(context().get(), get_request("u00000001"), &user).ok());
    CHECK(asked == 1);

    asked = 0;  // now tokens arrive already expired: never reused
    options.expiring_token_provider = [&] {
      ++asked;
      return stubkit::BearerToken{"t0ken", std::chrono::system_clock::now() - 1s};
    };
    auto expired = UserService::NewStub(stubkit::make_channel(server.address(), options));
    for (int i = 0; i < 3; ++i)
      CHECK(expired->GetUser(context().get(), get_request("u00000001"), &user).ok());
    CHECK(asked == 3);
  }

  TEST_CASE("a 5 MB request fails under gRPC's default 4 MB limit and passes when both sides raise it") {
    stubkit::testing::EmbeddedServerOptions defaults = tcp_options();
    defaults.max_receive_message_size = 4 * 1024 * 1024;
    stubkit::testing::EmbeddedServer strict(defaults);
    myservice::v1::CreateUserRequest big;
    big.mutable_user()->set_id("big");
    (*big.mutable_user()->mutable_metadata())["blob"] = std::string(5 << 20, 'x');
    myservice::v1::CreateUserResponse response;
    auto rejected = UserService::NewStub(stubkit::make_channel(strict.address()))
                        ->CreateUser(context().get(), big, &response);
    CHECK(rejected.error_code() == StatusCode::RESOURCE_EXHAUSTED);

    stubkit::testing::EmbeddedServerOptions raised = tcp_options();
    raised.max_receive_message_size = 16 << 20;
    stubkit::testing::EmbeddedServer roomy(raised);
    stubkit::ChannelOptions client;
    client.max_receive_message_size = 16 << 20;  // the reply echoes the user
    auto accepted = UserService::NewStub(stubkit::make_channel(roomy.address(), client))
                        ->CreateUser(context().get(), big, &response);
    CHECK_MESSAGE(accepted.ok(), accepted.error_message());
    CHECK(response.user().metadata().at("blob").size() == (5u << 20));
  }

  TEST_CASE("TLS: the right CA connects, a wrong CA fails with UNAVAILABLE") {
    // Certificates made now with the openssl CLI: a CA, a server certificate
    // for 127.0.0.1 signed by it, and an unrelated CA.
    // A directory of this run's own: suites may run side by side in one
    // working directory (scripts/stress_loop.sh does).
    TempDir temp;
    std::string const dir = temp.path.string();
    std::string const script = "set -e; cd " + dir +
                               "; openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca "
                               "-keyout ca.key -out ca.pem 2>/dev/null"
                               "; openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=other-ca "
                               "-keyout other.key -out other.pem "
                               "2>/dev/null"
                               "; openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key "
                               "-out server.csr 2>/dev/null"
                               "; printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > san.ext"
                               "; openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
                               "-days 1 -extfile san.ext "
                               "-out server.pem 2>/dev/null";
    REQUIRE(std::system(("bash -c \"" + script + "\"").c_str()) == 0);
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({read_file(dir + "/server.key"), read_file(dir + "/server.pem")});
    auto options = tcp_options();
    options.credentials = grpc::SslServerCredentials(ssl);
    stubkit::testing::EmbeddedServer server(options);
    server.service().preload(1);

    stubkit::ChannelOptions right;
    right.tls = stubkit::TlsOptions{read_file(dir + "/ca.pem"), "", "", ""};
    User user;
    auto ok = UserService::NewStub(stubkit::make_channel(server.address(), right))
                  ->GetUser(context().get(), get_request("u00000001"), &user);
    CHECK_MESSAGE(ok.ok(), ok.error_message());

    stubkit::ChannelOptions wrong;
    wrong.tls = stubkit::TlsOptions{read_file(dir + "/other.pem"), "", "", ""};
    auto bad = UserService::NewStub(stubkit::make_channel(server.address(), wrong))
                   ->GetUser(context(2s).get(), get_request("u00000001"), &user);
    CHECK(bad.error_code() == StatusCode::UNAVAILABLE);

    auto plaintext = UserService::NewStub(stubkit::make_channel(server.address()))
                         ->GetUser(context(2s).get(), get_request("u00000001"), &user);
    CHECK(plaintext.error_code() == StatusCode::UNAVAILABLE);
  }

  TEST_CASE("wait_until_serving says what did not happen") {
    stubkit::testing::EmbeddedServer server(tcp_options());
    server.health().SetServingStatus("myservice.v1.UserService", false);
    auto channel = stubkit::make_channel(server.address());
    // Connected first, so the 1.5 s below are all for asking: with every
    // CPU busy (scripts/stress_loop.sh), connecting alone once took them all
    // and the error was "did not connect" instead of the health state.
    REQUIRE(channel->WaitForConnected(std::chrono::system_clock::now() + 30s));
    auto not_serving = stubkit::wait_until_serving(*channel, "myservice.v1.UserService", 1500ms);
    REQUIRE_FALSE(not_serving.ok());
    CHECK_MESSAGE(not_serving.error().message().find("NOT_SERVING") != std::string::npos,
                  not_serving.error().message());
    auto unknown = stubkit::wait_until_serving(*channel, "no.such.Service", 1500ms);
    CHECK(unknown.error().message().find("unknown to the health service") != std::string::npos);

    std::string const dead = server.address();
    server.shutdown(0ms);
    auto nobody =
        stubkit::wait_until_serving(*stubkit::make_channel(dead), "myservice.v1.UserService", 300ms);
    REQUIRE_FALSE(nobody.ok());
    CHECK(nobody.error().is<stubkit::Unavailable>());
    CHECK(nobody.error().message().find("did not connect") != std::string::npos);
  }
}
