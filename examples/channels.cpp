// channels: one channel to several backends, with load balancing, health
// checking, retries, a bearer token and message limits.
//
// Shows: stubkit::make_channel with ChannelOptions, an ipv4: target listing
// three backends, wait_until_serving, calls spread by round_robin, a backend
// taken out of rotation by its health status, and retries covering a
// backend that dies.
//
//   channels    # starts three token-protected UserService backends on loopback
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "example_args.hpp"
#include "stubkit/channel.hpp"
#include "stubkit/testing/embedded_server.hpp"

using myservice::v1::UserService;
using namespace std::chrono_literals;

int main(int argc, char** argv) {
  example::embedded_only(
      argc, argv, "channels",
      "one channel to several backends: load balancing, health checking, retries, a bearer token, limits");
  std::vector<std::unique_ptr<stubkit::testing::EmbeddedServer>> backends;
  std::string target = "ipv4:";
  for (int i = 0; i < 3; ++i) {
    stubkit::testing::EmbeddedServerOptions server;
    server.listen_address = "127.0.0.1:0";
    server.service.token = "s3cret";
    backends.push_back(std::make_unique<stubkit::testing::EmbeddedServer>(server));
    backends.back()->service().preload(1);
    target += (i ? "," : "") + backends.back()->address();
  }

  stubkit::ChannelOptions options;
  options.load_balancing = "round_robin";                     // the default, as in the reference client
  options.health_check_service = "myservice.v1.UserService";  // skip backends that are not SERVING
  options.retry = stubkit::RetryInterceptorOptions{};         // stubkit's retries on every unary call
  options.bearer_token = "s3cret";                            // authorization: Bearer s3cret
  options.max_receive_message_size = 16 * 1024 * 1024;        // accept replies up to 16 MB
  options.keepalive_time = 30s;                               // HTTP/2 pings on idle connections
  auto channel = stubkit::make_channel(target, options);

  auto ready = stubkit::wait_until_serving(*channel, "myservice.v1.UserService", 5s);
  if (!ready) {
    std::cerr << ready.error().to_string() << "\n";
    return 1;
  }

  auto stub = UserService::NewStub(channel);
  auto call_all = [&](int n) {
    int failed = 0;
    for (int i = 0; i < n; ++i) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + 5s);
      myservice::v1::GetUserRequest request;
      request.set_id("u00000001");
      myservice::v1::User user;
      failed += stub->GetUser(&ctx, request, &user).ok() ? 0 : 1;
    }
    return failed;
  };
  auto report = [&](char const* when, int failed) {
    std::cout << when << ": " << failed << " failed; calls per backend:";
    for (auto const& b : backends) std::cout << " " << b->faults().calls("GetUser");
    std::cout << "\n";
  };

  report("30 calls over three backends", call_all(30));
  backends[1]->health().SetServingStatus("myservice.v1.UserService", false);
  std::this_thread::sleep_for(200ms);  // the health watch reaches the client
  report("backend 2 NOT_SERVING, 30 more calls", call_all(30));
  backends[2]->shutdown(0ms);
  int const failed = call_all(30);
  report("backend 3 killed, 30 more calls", failed);
  return failed == 0 ? 0 : 1;
}
