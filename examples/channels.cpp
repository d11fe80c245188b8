// channels: one channel to several backends, with load balancing, health
// checking, retries, a bearer token and message limits.
//
// Shows: stubkit::make_channel with ChannelOptions, an ipv4: target listing
// three backends, wait_until_serving, calls spread by round_robin (told
// apart by the stubkit-server-id trailer each backend sends), a backend
// taken out of rotation by its health status, and retries covering a
// backend that dies.
//
//   channels [--target TARGET] [--token T] [--tls-ca FILE]
//
// Without --target it starts three token-protected backends on loopback.
// TARGET is any gRPC target, e.g. ipv4:127.0.0.1:5001,127.0.0.1:5002 for
// several `user_server --preload 1 --server-id ID` processes; the health
// and shutdown steps need control of the backends, so they run embedded only.
#include <iostream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include "example.hpp"
#include "stubkit/channel.hpp"

using myservice::v1::UserService;
using namespace std::chrono_literals;

int main(int argc, char** argv) {
  auto flags = example::parse(
      argc, argv, "channels",
      "one channel to several backends: load balancing, health checking, retries, a bearer token, limits",
      "one or more of user_server --preload 1 --server-id ID, as --target ipv4:ADDR,ADDR,...");
  if (!flags.remote() && flags.token.empty()) flags.token = "s3cret";  // the backends require it
  example::Servers servers(flags, /*preload=*/1, /*count=*/3);

  stubkit::ChannelOptions options;
  options.load_balancing = "round_robin";                     // the default, as in the reference client
  options.health_check_service = "myservice.v1.UserService";  // skip backends that are not SERVING
  options.retry = stubkit::RetryInterceptorOptions{};         // stubkit's retries on every unary call
  options.max_receive_message_size = 16 * 1024 * 1024;        // accept replies up to 16 MB
  options.keepalive_time = 30s;                               // HTTP/2 pings on idle connections
  options.bearer_token = flags.token;                         // authorization: Bearer <token>
  if (!flags.tls_ca.empty()) {
    options.tls = stubkit::TlsOptions{flags.tls_ca, "", "", flags.tls_server_name};
  }
  std::shared_ptr<grpc::Channel> channel;
  try {
    channel = stubkit::make_channel(servers.target(), options);
  } catch (std::invalid_argument const& e) {  // e.g. a token in plaintext to another machine
    std::cerr << e.what() << "\n";
    return 2;
  }

  auto ready = stubkit::wait_until_serving(*channel, "myservice.v1.UserService", 5s);
  if (!ready) {
    std::cerr << ready.error().to_string() << "\n";
    return 1;
  }

  auto stub = UserService::NewStub(channel);
  auto call_all = [&](char const* when, int n) {
    int failed = 0;
    std::map<std::string, int> answered_by;
    for (int i = 0; i < n; ++i) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + 5s);
      myservice::v1::GetUserRequest request;
      request.set_id("u00000001");
      myservice::v1::User user;
      if (!stub->GetUser(&ctx, request, &user).ok()) {
        ++failed;
        continue;
      }
      auto const& trailers = ctx.GetServerTrailingMetadata();
      auto id = trailers.find("stubkit-server-id");
      ++answered_by[id == trailers.end() ? "(no id)" : std::string(id->second.data(), id->second.size())];
    }
    std::cout << when << ": " << failed << " failed; answered by";
    for (auto const& [backend, calls] : answered_by) std::cout << " " << backend << " x" << calls;
    std::cout << "\n";
    return failed;
  };

  int failed = call_all("30 calls", 30);
  if (!servers.remote()) {
    servers.embedded(1).health().SetServingStatus("myservice.v1.UserService", false);
    std::this_thread::sleep_for(200ms);  // the health watch reaches the client
    failed += call_all("backend-2 NOT_SERVING, 30 more calls", 30);
    servers.embedded(2).shutdown(0ms);
    failed += call_all("backend-3 killed, 30 more calls", 30);
  }
  return failed == 0 ? 0 : 1;
}
