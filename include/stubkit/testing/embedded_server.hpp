// EmbeddedServer: the UserService running inside the calling process, for
// tests, examples and demos; reachable through an in-process channel and,
// when asked, over TCP.
//
//   stubkit::testing::EmbeddedServer server;               // in-process only
//   auto stub = myservice::v1::UserService::NewStub(server.channel());
//
//   stubkit::testing::EmbeddedServer tcp({.listen_address = "127.0.0.1:0"});
//   std::cout << tcp.address();                            // 127.0.0.1:<port>
#ifndef STUBKIT_TESTING_EMBEDDED_SERVER_HPP
#define STUBKIT_TESTING_EMBEDDED_SERVER_HPP

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/support/client_interceptor.h>
#include <grpcpp/support/server_interceptor.h>

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "grpc/health/v1/health.pb.h"
#include "stubkit/testing/user_service.hpp"

namespace stubkit::testing {

namespace detail {

// Turns gRPC's answer to a request message that does not parse (INTERNAL,
// no message) into INVALID_ARGUMENT naming the problem. Only for methods
// with one request message: in a client stream a message that does not
// parse looks like the end of the stream to an interceptor (the service's
// BulkCreateUsers reads raw bytes to tell them apart).
class MalformedRequestInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit MalformedRequestInterceptor(std::string const& request_type) : request_type_(request_type) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() == nullptr) {
      malformed_ = true;
    }
    if (malformed_ && methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) &&
        methods->GetSendStatus().error_code() == grpc::StatusCode::INTERNAL) {
      methods->ModifySendStatus(UserServiceImpl::malformed_request(request_type_));
    }
    methods->Proceed();
  }

 private:
  std::string const& request_type_;  // owned by the factory
  bool malformed_ = false;
};

class MalformedRequestFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  // The request type of each UserService method with one request message,
  // by the path gRPC reports; read-only once built, so calls share it.
  MalformedRequestFactory() {
    auto const* service = UserServiceImpl::User::descriptor()->file()->FindServiceByName("UserService");
    for (int i = 0; i < service->method_count(); ++i) {
      auto const* method = service->method(i);
      if (method->client_streaming()) continue;
      request_types_.emplace("/" + service->full_name() + "/" + method->name(),
                             method->input_type()->full_name());
    }
  }

  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    if (info->method() == nullptr) return nullptr;
    auto it = request_types_.find(std::string_view(info->method()));
    return it == request_types_.end() ? nullptr : new MalformedRequestInterceptor(it->second);
  }

 private:
  std::map<std::string, std::string, std::less<>> request_types_;
};

// gRPC owns the factories it is given; this one lends it a shared one.
class SharedInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit SharedInterceptorFactory(
      std::shared_ptr<grpc::experimental::ServerInterceptorFactoryInterface> factory)
      : factory_(std::move(factory)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return factory_->CreateServerInterceptor(info);
  }

 private:
  std::shared_ptr<grpc::experimental::ServerInterceptorFactoryInterface> const factory_;
};

}  // namespace detail

/// Configuration of an EmbeddedServer.
struct EmbeddedServerOptions {
  /// TCP address to listen on ("127.0.0.1:0" picks a free port); empty =
  /// in-process channels only.
  std::string listen_address;
  /// Largest request the server accepts (the reference server's 10 MB);
  /// larger ones fail with RESOURCE_EXHAUSTED.
  int max_receive_message_size = 10 * 1024 * 1024;
  /// HTTP/2 keepalive ping interval (the reference server's 30 s).
  std::chrono::milliseconds keepalive_time{30000};
  /// Most calls one client connection may have open at once (HTTP/2's
  /// SETTINGS_MAX_CONCURRENT_STREAMS; many servers use 100); more wait on
  /// the client. 0 = gRPC's default, no limit.
  int max_concurrent_streams = 0;
  /// Credentials of the TCP port; empty = plaintext (e.g.
  /// grpc::SslServerCredentials for TLS).
  std::shared_ptr<grpc::ServerCredentials> credentials;
  /// More server interceptors, run after the server's own (which rewrites
  /// the status of malformed requests), e.g. a
  /// stubkit::ServerMetricsInterceptorFactory. Shared: they must outlive
  /// the server, and the options stay copyable.
  std::vector<std::shared_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  /// Options of the UserService itself.
  UserServiceOptions service;
};

/// A started grpc::Server with the UserService, the standard health service
/// ("myservice.v1.UserService" SERVING) and server reflection. Thread-safe.
/// The destructor shuts down gracefully.
class EmbeddedServer {
 public:
  /// The name the health service reports the UserService under.
  static constexpr char const* kServiceName = "myservice.v1.UserService";

  /// Starts the server; throws std::runtime_error if the address cannot be bound.
  explicit EmbeddedServer(EmbeddedServerOptions options = {}) : service_(std::move(options.service)) {
    enable_process_wide_services();
    grpc::ServerBuilder builder;
    builder.RegisterService(&service_);
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
    interceptors.push_back(std::make_unique<detail::MalformedRequestFactory>());
    for (auto const& factory : options.interceptors) {
      if (factory) interceptors.push_back(std::make_unique<detail::SharedInterceptorFactory>(factory));
    }
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
    builder.SetMaxReceiveMessageSize(options.max_receive_message_size);
    // gRPC sets SO_REUSEPORT by default, so a second server on a taken port
    // would "start" and share its traffic. Fail instead.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(options.keepalive_time.count()));
    if (options.max_concurrent_streams < 0) {
      throw std::invalid_argument("EmbeddedServerOptions::max_concurrent_streams must not be negative, got " +
                                  std::to_string(options.max_concurrent_streams));
    }
    if (options.max_concurrent_streams > 0) {
      builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options.max_concurrent_streams);
    }
    if (!options.listen_address.empty()) {
      builder.AddListeningPort(options.listen_address,
                               options.credentials ? options.credentials : grpc::InsecureServerCredentials(),
                               &port_);
    }
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || (!options.listen_address.empty() && port_ == 0)) {
      throw std::runtime_error("cannot start the UserService on '" + options.listen_address + "'");
    }
    if (!options.listen_address.empty()) {
      host_ = options.listen_address.substr(0, options.listen_address.rfind(':'));
    }
    server_->GetHealthCheckService()->SetServingStatus(kServiceName, true);
  }

  ~EmbeddedServer() { shutdown(std::chrono::milliseconds(500)); }
  EmbeddedServer(EmbeddedServer const&) = delete;
  EmbeddedServer& operator=(EmbeddedServer const&) = delete;

  /// A new in-process channel to the server (no network, no TCP port needed).
  std::shared_ptr<grpc::Channel> channel(grpc::ChannelArguments args = {}) {
    return server_->InProcessChannel(args);
  }

  /// A new in-process channel whose calls go through `interceptors` (for
  /// example stubkit::retry_interceptor()).
  std::shared_ptr<grpc::Channel> channel(
      std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors,
      grpc::ChannelArguments args = {}) {
    return server_->experimental().InProcessChannelWithInterceptors(args, std::move(interceptors));
  }

  /// The TCP port, or 0 when the server listens in-process only.
  int port() const { return port_; }

  /// "host:port" to dial over TCP (empty when in-process only).
  std::string address() const { return port_ == 0 ? std::string() : host_ + ":" + std::to_string(port_); }

  /// The service, for fault injection and inspection.
  UserServiceImpl& service() { return service_; }
  FaultInjector& faults() { return service_.faults(); }

  /// The standard health service, e.g. to flip the UserService NOT_SERVING.
  grpc::HealthCheckServiceInterface& health() { return *server_->GetHealthCheckService(); }

  /// Graceful shutdown: health goes NOT_SERVING, WatchUsers streams end with
  /// OK, new calls are refused, in-flight calls get `grace` to finish before
  /// they are cancelled. Idempotent.
  void shutdown(std::chrono::milliseconds grace = std::chrono::seconds(5)) {
    std::call_once(shutdown_once_, [&] {
      server_->GetHealthCheckService()->SetServingStatus(kServiceName, false);
      service_.begin_shutdown();
      server_->Shutdown(std::chrono::system_clock::now() + grace);
      server_->Wait();
    });
  }

 private:
  // gRPC keeps both switches process-wide; turning them on twice is harmless.
  static void enable_process_wide_services() {
    static std::once_flag once;
    std::call_once(once, [] {
      grpc::EnableDefaultHealthCheckService(true);
      grpc::reflection::InitProtoReflectionServerBuilderPlugin();
      // gRPC's default health service is built on its own messages, which
      // server reflection (reading protobuf's generated pool) cannot see:
      // tools such as grpcurl and buf curl then list grpc.health.v1.Health
      // but cannot describe or call it. Touching a generated health message
      // links grpc/health/v1/health.proto's descriptors into the pool.
      (void)grpc::health::v1::HealthCheckRequest::descriptor();
    });
  }

  UserServiceImpl service_;
  std::unique_ptr<grpc::Server> server_;
  std::string host_;
  int port_ = 0;
  std::once_flag shutdown_once_;
};

}  // namespace stubkit::testing

#endif  // STUBKIT_TESTING_EMBEDDED_SERVER_HPP
