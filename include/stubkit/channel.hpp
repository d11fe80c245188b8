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

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "stubkit/detail/time.hpp"
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

/// A bearer token and until when it may be sent (time_point::max() = no
/// expiry known).
struct BearerToken {
  std::string value;
  std::chrono::system_clock::time_point valid_until = std::chrono::system_clock::time_point::max();
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
  /// stubkit's retries on every unary call (the retry interceptor), or its
  /// hedging (RetryInterceptorOptions::hedging); gRPC's native retries are
  /// then turned off so attempts never multiply. An unusable policy makes
  /// make_channel throw std::invalid_argument (check RetryPolicy::problem()
  /// and HedgingPolicy::problem() first to avoid the exception).
  std::optional<RetryInterceptorOptions> retry;
  /// A fixed bearer token sent as `authorization: Bearer <token>` on every call.
  std::string bearer_token;
  /// Or a provider, asked for every call (and every retry attempt), so it
  /// can refresh; it wins over bearer_token. Never logged by stubkit.
  std::function<std::string()> token_provider;
  /// Or a provider that says how long its token is valid: the token is kept
  /// and sent until `token_refresh_margin` before it expires, and refreshed
  /// in the background from then on. Wins over both above.
  std::function<BearerToken()> expiring_token_provider;
  std::chrono::milliseconds token_refresh_margin{30000};
  /// Providers run on a thread of the channel's, never on the caller's or
  /// gRPC's: a call waits for its token until its deadline (then
  /// DEADLINE_EXCEEDED) or, without one, this long (then UNAUTHENTICATED).
  /// A provider that throws fails the calls waiting for it with
  /// UNAUTHENTICATED. A provider still running when the channel is
  /// destroyed is waited for.
  std::chrono::milliseconds token_timeout{10000};
  /// Bearer tokens go only to loopback or unix-socket targets unless the
  /// channel uses TLS: over plaintext to anywhere else make_channel throws
  /// std::invalid_argument, unless this is set.
  bool allow_insecure_token = false;
  /// TLS; unset = plaintext.
  std::optional<TlsOptions> tls;
  /// Told of every call on the channel (observe.hpp, source "channel");
  /// empty = the default observer when each call starts, if any. With
  /// `retry` set, its own observer wins.
  std::shared_ptr<Observer> observer;
  /// Further interceptors, run after stubkit's.
  std::function<std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>()>
      extra_interceptors;
};

namespace detail {

// Whether every address of `target` is on this machine: a unix socket,
// localhost, 127.0.0.0/8 or ::1 (with or without a scheme such as dns:///,
// ipv4: or ipv6:). Anything else counts as remote.
inline bool is_local_target(std::string_view target) {
  auto starts = [&](std::string_view prefix) { return target.substr(0, prefix.size()) == prefix; };
  if (starts("unix:") || starts("unix-abstract:")) return true;
  auto local_host = [](std::string_view address) {
    std::string_view host = address;
    if (!host.empty() && host.front() == '[') {
      host = host.substr(1, host.find(']') == std::string_view::npos ? host.size() : host.find(']') - 1);
    } else if (host.find(':') != host.rfind(':')) {
      // a bare IPv6 address (no port)
    } else if (auto colon = host.rfind(':'); colon != std::string_view::npos) {
      host = host.substr(0, colon);
    }
    return host == "localhost" || host == "::1" || host == "0:0:0:0:0:0:0:1" ||
           (host.substr(0, 4) == "127." && host.find_first_not_of("0123456789.") == std::string_view::npos);
  };
  std::string_view list = target;
  if (starts("ipv4:") || starts("ipv6:")) {
    list = target.substr(5);
  } else if (starts("dns:")) {
    list = target.substr(target.rfind('/') == std::string_view::npos ? 4 : target.rfind('/') + 1);
  } else if (target.find("://") != std::string_view::npos || starts("xds:")) {
    return false;
  }
  if (list.empty()) return false;
  for (std::size_t start = 0; start <= list.size();) {
    std::size_t const comma = std::min(list.find(',', start), list.size());
    if (!local_host(list.substr(start, comma - start))) return false;
    start = comma + 1;
  }
  return true;
}

// Where a channel's calls get their bearer token. The provider runs on one
// thread of this object's, started at the first need and joined on
// destruction, so user code never runs on gRPC's threads or under a lock,
// and a slow provider delays only the calls that wait for it, each at most
// until its deadline. Thread-safe.
class TokenSource {
 public:
  explicit TokenSource(std::function<BearerToken()> provider, std::chrono::milliseconds refresh_margin)
      : provider_(std::move(provider)), margin_(refresh_margin) {}

  ~TokenSource() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
  }

  TokenSource(TokenSource const&) = delete;
  TokenSource& operator=(TokenSource const&) = delete;

  // The token to send, waiting at most until `deadline`; an error status
  // when there is none. `no_deadline_wait` bounds calls without a deadline.
  std::variant<std::string, grpc::Status> get(std::chrono::system_clock::time_point deadline,
                                              std::chrono::milliseconds no_deadline_wait) {
    bool const bounded = deadline != std::chrono::system_clock::time_point::max();
    auto const now = std::chrono::system_clock::now();
    auto const until = bounded ? deadline : saturating_add(now, no_deadline_wait);
    std::unique_lock<std::mutex> lock(mu_);
    if (cached_ && now < saturating_add(cached_->valid_until, -margin_)) return cached_->value;
    if (cached_ && now < cached_->valid_until) {
      request_fetch();  // still good: send it, and refresh in the background
      return cached_->value;
    }
    std::uint64_t const mine = request_fetch();
    if (!cv_.wait_until(lock, until, [&] { return finished_ >= mine; })) {
      if (bounded) {
        return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                            "the bearer token provider did not answer before the call's deadline");
      }
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "the bearer token provider did not answer within " +
                              std::to_string(no_deadline_wait.count()) + " ms");
    }
    if (!failure_.ok()) return failure_;
    return cached_ ? cached_->value : std::string();
  }

 private:
  // Asks the worker for a token (once for all callers waiting now) and
  // returns the number of the fetch that will answer. Called under mu_.
  std::uint64_t request_fetch() {
    if (!worker_.joinable()) worker_ = std::thread([this] { run(); });
    if (requested_ <= started_) ++requested_;  // otherwise one is already queued
    cv_.notify_all();
    return requested_;
  }

  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stopping_ || requested_ > started_; });
      if (stopping_) return;
      std::uint64_t const fetch = started_ = requested_;
      lock.unlock();
      std::optional<BearerToken> token;
      grpc::Status failure;
      try {
        token = provider_();
      } catch (...) {
        failure = grpc::Status(
            grpc::StatusCode::UNAUTHENTICATED,
            callback_threw("the bearer token provider", std::current_exception()).error_message());
      }
      lock.lock();
      failure_ = failure;  // the callers waiting for this fetch get it; a cached token stays usable
      if (token) cached_ = std::move(token);
      finished_ = fetch;
      cv_.notify_all();
    }
  }

  std::function<BearerToken()> const provider_;
  std::chrono::milliseconds const margin_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<BearerToken> cached_;
  grpc::Status failure_;
  std::uint64_t requested_ = 0;  // fetches asked for
  std::uint64_t started_ = 0;    // the last fetch begun
  std::uint64_t finished_ = 0;   // the last fetch done
  bool stopping_ = false;
  std::thread worker_;
};

// Adds `authorization: Bearer <token>` to a call's initial metadata. An
// interceptor, not call credentials: gRPC drops call credentials on
// insecure channels (grpc/grpc#8142). When no token can be had, the call is
// hijacked and ends with the source's status; nothing is sent.
class BearerTokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  BearerTokenInterceptor(grpc::experimental::ClientRpcInfo* info, TokenSource& source,
                         std::chrono::milliseconds no_deadline_wait)
      : info_(info), source_(source), no_deadline_wait_(no_deadline_wait) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (failure_) return fail(methods);
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      auto* metadata = methods->GetSendInitialMetadata();
      if (metadata->find("authorization") == metadata->end()) {
        auto token = source_.get(info_->client_context()->deadline(), no_deadline_wait_);
        if (auto* status = std::get_if<grpc::Status>(&token)) {
          failure_ = std::move(*status);
          return methods->Hijack();  // gRPC comes back for the receive ops: fail()
        }
        auto& value = std::get<std::string>(token);
        if (!value.empty()) metadata->emplace("authorization", "Bearer " + value);
      }
    }
    methods->Proceed();
  }

 private:
  void fail(grpc::experimental::InterceptorBatchMethods* methods) {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_RECV_MESSAGE)) {
      methods->FailHijackedRecvMessage();
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_RECV_STATUS)) {
      *methods->GetRecvStatus() = *failure_;
    }
    methods->Proceed();
  }

  grpc::experimental::ClientRpcInfo* const info_;
  TokenSource& source_;
  std::chrono::milliseconds const no_deadline_wait_;
  std::optional<grpc::Status> failure_;
};

// A fixed token: added to every call, no thread needed.
class FixedTokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit FixedTokenInterceptor(std::string const& header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      auto* metadata = methods->GetSendInitialMetadata();
      if (metadata->find("authorization") == metadata->end()) metadata->emplace("authorization", header_);
    }
    methods->Proceed();
  }

 private:
  std::string const& header_;
};

class FixedTokenFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit FixedTokenFactory(std::string const& token) : header_("Bearer " + token) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new FixedTokenInterceptor(header_);
  }

 private:
  std::string const header_;
};

class BearerTokenFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  BearerTokenFactory(std::function<BearerToken()> provider, std::chrono::milliseconds refresh_margin,
                     std::chrono::milliseconds no_deadline_wait)
      : source_(std::move(provider), refresh_margin), no_deadline_wait_(no_deadline_wait) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo* info) override {
    return new BearerTokenInterceptor(info, source_, no_deadline_wait_);
  }

 private:
  TokenSource source_;
  std::chrono::milliseconds const no_deadline_wait_;
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

// make_channel's body; with `own_connections` the channel keeps its
// connections to itself (gRPC's local subchannel pool) instead of sharing
// them with every channel of the same target and arguments.
inline std::shared_ptr<grpc::Channel> make_channel(std::string const& target, ChannelOptions const& options,
                                                   bool own_connections) {
  grpc::ChannelArguments args;
  if (own_connections) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
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
    RetryInterceptorOptions retry = *options.retry;
    if (!retry.observer) retry.observer = options.observer;
    interceptors.push_back(retry_interceptor(std::move(retry)));
  }
  // After the retry interceptor, so every attempt asks for a token afresh.
  bool const tokens =
      options.expiring_token_provider || options.token_provider || !options.bearer_token.empty();
  if (tokens && !options.tls && !options.allow_insecure_token && !detail::is_local_target(target)) {
    throw std::invalid_argument("stubkit::make_channel: a bearer token would travel in plaintext to '" +
                                target + "'; use TLS (ChannelOptions::tls) or set allow_insecure_token");
  }
  std::function<BearerToken()> provider = options.expiring_token_provider;
  if (!provider && options.token_provider) {
    // Asked for every call: a token that is stale at once.
    provider = [ask = options.token_provider] {
      return BearerToken{ask(), std::chrono::system_clock::time_point::min()};
    };
  }
  if (provider) {
    interceptors.push_back(std::make_unique<detail::BearerTokenFactory>(
        std::move(provider), options.token_refresh_margin, options.token_timeout));
  } else if (!options.bearer_token.empty()) {
    // A fixed token needs no thread: a source is only for providers.
    interceptors.push_back(std::make_unique<detail::FixedTokenFactory>(options.bearer_token));
  }
  if (options.extra_interceptors) {
    for (auto& extra : options.extra_interceptors()) interceptors.push_back(std::move(extra));
  }
  if (!options.retry) {
    // Observes calls without touching them (none while no observer is set).
    // Last: gRPC places an interceptor's own calls by counting the
    // interceptors created before it, which one that declines would shift.
    interceptors.push_back(observe_interceptor(options.observer));
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

}  // namespace detail

/// A channel to `target` (anything gRPC resolves: "host:port", "dns:///",
/// "ipv4:a:p1,b:p2", "unix:/path", "xds:///") configured by `options`.
/// Throws std::invalid_argument when `options.retry` holds an unusable
/// policy: a bad policy is refused where it is accepted, not at the first call.
inline std::shared_ptr<grpc::Channel> make_channel(std::string const& target,
                                                   ChannelOptions const& options = {}) {
  return detail::make_channel(target, options, false);
}

/// `size` channels to one target, each with connections of its own, handed
/// out round-robin: for more calls in flight than one HTTP/2 connection
/// carries (servers commonly allow 100 concurrent streams per connection;
/// more calls queue). Channels from make_channel with the same target and
/// options share one connection per backend; a pool's do not. Every
/// channel is made by make_channel with `options` (with a token provider,
/// each runs its own provider thread). Thread-safe.
///
///   stubkit::ChannelPool pool("dns:///users.internal:443", 4, options);
///   auto stub = myservice::v1::UserService::NewStub(pool.next());
class ChannelPool {
 public:
  static constexpr std::size_t kMaxSize = 64;

  /// Throws std::invalid_argument when `size` is 0 or above kMaxSize, or
  /// when make_channel refuses `options`.
  ChannelPool(std::string const& target, std::size_t size, ChannelOptions const& options = {}) {
    if (size == 0 || size > kMaxSize) {
      throw std::invalid_argument("stubkit::ChannelPool: size must be from 1 to " + std::to_string(kMaxSize) +
                                  ", got " + std::to_string(size));
    }
    channels_.reserve(size);
    for (std::size_t i = 0; i < size; ++i) channels_.push_back(detail::make_channel(target, options, true));
  }

  std::size_t size() const noexcept { return channels_.size(); }

  /// The next channel, round-robin.
  std::shared_ptr<grpc::Channel> next() noexcept {
    return channels_[next_.fetch_add(1, std::memory_order_relaxed) % channels_.size()];
  }

  /// Every channel, in the order next() hands them out.
  std::vector<std::shared_ptr<grpc::Channel>> const& channels() const noexcept { return channels_; }

 private:
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::atomic<std::size_t> next_{0};
};

/// Waits until `channel` connects and its health service reports `service`
/// SERVING, or `timeout` passes. The error says which step did not happen.
inline Result<grpc::health::v1::HealthCheckResponse> wait_until_serving(grpc::Channel& channel,
                                                                        std::string const& service,
                                                                        std::chrono::milliseconds timeout) {
  auto const deadline = detail::saturating_add(std::chrono::system_clock::now(), timeout);
  if (!channel.WaitForConnected(deadline)) {
    return Error(grpc::StatusCode::UNAVAILABLE, "the channel did not connect within " +
                                                    std::to_string(timeout.count()) + " ms (state " +
                                                    std::to_string(channel.GetState(false)) + ")");
  }
  auto health = grpc::health::v1::Health::NewStub(
      std::shared_ptr<grpc::ChannelInterface>(&channel, [](grpc::ChannelInterface*) {}));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  // What the health service last said (or how asking it last failed). A
  // Check cut short by our own deadline does not replace an answer: the
  // answer is what the caller needs to hear.
  std::string last_answer;
  while (std::chrono::system_clock::now() < deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline);
    grpc::health::v1::HealthCheckResponse response;
    grpc::Status const status = health->Check(&ctx, request, &response);
    if (status.ok() && response.status() == grpc::health::v1::HealthCheckResponse::SERVING) return response;
    bool const cut_short = status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
                           std::chrono::system_clock::now() >= deadline;
    if (status.ok()) {
      last_answer = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
    } else if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      last_answer = "unknown to the health service";
    } else if (!cut_short || last_answer.empty()) {
      last_answer = code_name(status.error_code()) + " " + status.error_message();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return Error(grpc::StatusCode::UNAVAILABLE,
               "service '" + service + "' was not SERVING within " + std::to_string(timeout.count()) +
                   " ms (last: " + (last_answer.empty() ? "no answer" : last_answer) + ")");
}

}  // namespace stubkit

#endif  // STUBKIT_CHANNEL_HPP
