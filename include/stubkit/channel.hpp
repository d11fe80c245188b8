// One way to make a channel: target, load balancing, keepalive, message
// limits, TLS, bearer tokens and stubkit's retries, from one options struct.
//
//   stubkit::ChannelOptions options;
//   options.retry = stubkit::RetryPolicy::standard();
//   options.bearer_token = token;
//   auto channel = stubkit::make_channel("ipv4:10.0.0.1:50051,10.0.0.2:50051", options);
//   auto ready = stubkit::wait_until_serving(*channel, "myservice.v1.UserService", 5s);
#ifndef STUBKIT_CHANNEL_HPP
#define STUBKIT_CHANNEL_HPP

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/client_interceptor.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "stubkit/retry.hpp"
#include "stubkit/retry_interceptor.hpp"
#include "stubkit/status.hpp"

namespace stubkit {

/// TLS settings of a channel. PEM strings; empty root certificates = the
/// system's roots.
struct TlsOptions {
  std::string root_certificates;
  std::string client_certificate_chain;  ///< for mutual TLS, with client_private_key
  std::string client_private_key;
  /// Expect this name in the server's certificate instead of the target's host.
  std::string server_name_override;
};

/// Everything make_channel can set. Defaults follow the reference client:
/// round_robin over every resolved address, keepalive pings every 30 s.
struct ChannelOptions {
  /// "round_robin", "pick_first" or another registered policy; "" = gRPC's default.
  std::string load_balancing = "round_robin";
  /// Client-side health checking: backends whose health service reports
  /// this name as not SERVING get no calls (round_robin only). "" = off.
  std::string health_check_service;
  /// HTTP/2 keepalive ping interval and how long to wait for the ack; zero = off.
  std::chrono::milliseconds keepalive_time{30000};
  std::chrono::milliseconds keepalive_timeout{10000};
  /// Waits between attempts to reconnect to a backend that went away; zero
  /// = gRPC's defaults (1 s growing to 120 s, so a backend that restarts can
  /// stay unused for up to two minutes).
  std::chrono::milliseconds initial_reconnect_backoff{0};
  std::chrono::milliseconds max_reconnect_backoff{0};
  /// Largest message the channel receives; gRPC's default is 4 MB (larger
  /// responses fail with RESOURCE_EXHAUSTED). -1 = unlimited.
  int max_receive_message_size = 4 * 1024 * 1024;
  /// Largest message the channel sends; -1 (gRPC's default) = unlimited, so
  /// the server's receive limit decides.
  int max_send_message_size = -1;
  /// stubkit's retries on every unary call (the retry interceptor); gRPC's
  /// native retries are then turned off so attempts never multiply. An
  /// unusable policy makes make_channel throw std::invalid_argument (check
  /// RetryPolicy::problem() first to avoid the exception).
  std::optional<RetryInterceptorOptions> retry;
  /// A fixed bearer token sent as `authorization: Bearer <token>` on every call.
  std::string bearer_token;
  /// Or a provider, asked on every call (and every retry attempt), so it can
  /// refresh; it wins over bearer_token. Never logged by stubkit.
  std::function<std::string()> token_provider;
  /// TLS; unset = plaintext.
  std::optional<TlsOptions> tls;
  /// Further interceptors, run after stubkit's.
  std::function<std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>()>
      extra_interceptors;
};

namespace detail {

// Adds `authorization: Bearer <token>` to a call's initial metadata. An
// interceptor, not call credentials: gRPC drops call credentials on
// insecure channels (grpc/grpc#8142).
class BearerTokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit BearerTokenInterceptor(std::function<std::string()> const& token) : token_(token) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      auto* metadata = methods->GetSendInitialMetadata();
      if (metadata->find("authorization") == metadata->end()) {
        std::string token = token_();
        if (!token.empty()) metadata->emplace("authorization", "Bearer " + token);
      }
    }
    methods->Proceed();
  }

 private:
  std::function<std::string()> const& token_;
};

class BearerTokenFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerTokenFactory(std::function<std::string()> token) : token_(std::move(token)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new BearerTokenInterceptor(token_);
  }

 private:
  std::function<std::string()> const token_;
};

inline std::string service_config_json(ChannelOptions const& options) {
  std::vector<std::string> parts;
  if (!options.load_balancing.empty()) {
    parts.push_back("\"loadBalancingConfig\": [{\"" + options.load_balancing + "\": {}}]");
  }
  if (!options.health_check_service.empty()) {
    parts.push_back("\"healthCheckConfig\": {\"serviceName\": \"" + options.health_check_service + "\"}");
  }
  std::string json = "{";
  for (std::size_t i = 0; i < parts.size(); ++i) json += (i ? ", " : "") + parts[i];
  return json + "}";
}

}  // namespace detail

/// A channel to `target` (anything gRPC resolves: "host:port", "dns:///",
/// "ipv4:a:p1,b:p2", "unix:/path", "xds:///") configured by `options`.
/// Throws std::invalid_argument when `options.retry` holds an unusable
/// policy: a bad policy is refused where it is accepted, not at the first call.
inline std::shared_ptr<grpc::Channel> make_channel(std::string const& target,
                                                   ChannelOptions const& options = {}) {
  grpc::ChannelArguments args;
  std::string const config = detail::service_config_json(options);
  if (config != "{}") args.SetServiceConfigJSON(config);
  if (options.keepalive_time.count() > 0) {
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(options.keepalive_time.count()));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(options.keepalive_timeout.count()));
  }
  if (options.initial_reconnect_backoff.count() > 0) {
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
                static_cast<int>(options.initial_reconnect_backoff.count()));
  }
  if (options.max_reconnect_backoff.count() > 0) {
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, static_cast<int>(options.max_reconnect_backoff.count()));
  }
  args.SetMaxReceiveMessageSize(options.max_receive_message_size);
  args.SetMaxSendMessageSize(options.max_send_message_size);
  if (options.tls && !options.tls->server_name_override.empty()) {
    args.SetSslTargetNameOverride(options.tls->server_name_override);
  }

  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  if (options.retry) {
    disable_native_retries(args);
    interceptors.push_back(retry_interceptor(*options.retry));
  }
  // After the retry interceptor, so every attempt asks the provider afresh.
  if (options.token_provider) {
    interceptors.push_back(std::make_unique<detail::BearerTokenFactory>(options.token_provider));
  } else if (!options.bearer_token.empty()) {
    interceptors.push_back(
        std::make_unique<detail::BearerTokenFactory>([token = options.bearer_token] { return token; }));
  }
  if (options.extra_interceptors) {
    for (auto& extra : options.extra_interceptors()) interceptors.push_back(std::move(extra));
  }

  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (options.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls->root_certificates;
    ssl.pem_cert_chain = options.tls->client_certificate_chain;
    ssl.pem_private_key = options.tls->client_private_key;
    credentials = grpc::SslCredentials(ssl);
  }
  if (interceptors.empty()) return grpc::CreateCustomChannel(target, credentials, args);
  return grpc::experimental::CreateCustomChannelWithInterceptors(target, credentials, args,
                                                                 std::move(interceptors));
}

/// Waits until `channel` connects and its health service reports `service`
/// SERVING, or `timeout` passes. The error says which step did not happen.
inline Result<grpc::health::v1::HealthCheckResponse> wait_until_serving(grpc::Channel& channel,
                                                                        std::string const& service,
                                                                        std::chrono::milliseconds timeout) {
  auto const deadline = std::chrono::system_clock::now() + timeout;
  if (!channel.WaitForConnected(deadline)) {
    return Error(grpc::StatusCode::UNAVAILABLE, "the channel did not connect within " +
                                                    std::to_string(timeout.count()) + " ms (state " +
                                                    std::to_string(channel.GetState(false)) + ")");
  }
  auto health = grpc::health::v1::Health::NewStub(
      std::shared_ptr<grpc::ChannelInterface>(&channel, [](grpc::ChannelInterface*) {}));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::Status last;
  std::string last_state = "no answer";
  while (std::chrono::system_clock::now() < deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline);
    grpc::health::v1::HealthCheckResponse response;
    last = health->Check(&ctx, request, &response);
    if (last.ok() && response.status() == grpc::health::v1::HealthCheckResponse::SERVING) return response;
    if (last.ok()) last_state = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
    if (last.error_code() == grpc::StatusCode::NOT_FOUND) last_state = "unknown to the health service";
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return Error(grpc::StatusCode::UNAVAILABLE,
               "service '" + service + "' was not SERVING within " + std::to_string(timeout.count()) +
                   " ms (last: " +
                   (last.ok() || last.error_code() == grpc::StatusCode::NOT_FOUND
                        ? last_state
                        : code_name(last.error_code()) + " " + last.error_message()) +
                   ")");
}

}  // namespace stubkit

#endif  // STUBKIT_CHANNEL_HPP
