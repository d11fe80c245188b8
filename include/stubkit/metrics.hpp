// Prometheus metrics of stubkit's calls (client side) and of any gRPC server,
// with prometheus-cpp. Optional: only a program that includes this header
// needs prometheus-cpp (Debian: prometheus-cpp-dev; meson:
// dependency('stubkit-metrics'); pkg-config: stubkit-metrics).
//
//   // Client: serve /metrics on port 9464 and count every call stubkit makes.
//   stubkit::MetricsServer metrics("127.0.0.1:9464");
//   stubkit::set_default_observer(std::make_shared<stubkit::MetricsObserver>(metrics.registry()));
//
//   // Server: count every call a grpc::Server handles.
//   builder.experimental().SetInterceptorCreators(...
//       std::make_unique<stubkit::ServerMetricsInterceptorFactory>(metrics.registry()) ...);
//
// Names follow gRPC's own metrics (gRFC A66) in Prometheus spelling, with
// A66's labels grpc_method ("myservice.v1.UserService/GetUser", no leading
// slash) and grpc_status ("OK", "UNAVAILABLE"):
//   grpc_client_attempt_started_total        counter    grpc_method
//   grpc_client_attempt_duration_seconds     histogram  grpc_method, grpc_status
//   grpc_client_call_duration_seconds        histogram  grpc_method, grpc_status
//   grpc_server_call_started_total           counter    grpc_method
//   grpc_server_call_duration_seconds        histogram  grpc_method, grpc_status
// and stubkit's own:
//   stubkit_client_retries_total             counter    grpc_method, grpc_status (of the failed attempt)
//   stubkit_client_give_ups_total            counter    grpc_method, reason (why no further attempt)
//   stubkit_client_retry_throttle_changes_total counter state ("refusing" or "allowing")
//   stubkit_client_retry_throttles_refusing  gauge      how many throttles refuse retries now
//   stubkit_client_pages_total               counter    grpc_method, grpc_status
//   stubkit_client_page_items_total          counter    grpc_method
//   stubkit_client_streams_total             counter    grpc_method, grpc_status (streams ended)
//   stubkit_client_stream_messages_total     counter    grpc_method (read or written)
//   stubkit_client_stream_resumes_total      counter    grpc_method, grpc_status (that caused it)
// Every client metric but the throttle's also has the label stubkit_source
// (the Event source: "call", "channel", "paginate", "stream", "watch"): a
// stubkit::call on a channel with the retry interceptor is seen twice, as
// the logical call (source "call") and as each wire call ("channel"), and
// the label keeps the two apart. A call's histogram _count is its count by
// method and status.
#ifndef STUBKIT_METRICS_HPP
#define STUBKIT_METRICS_HPP

#include <grpcpp/support/server_interceptor.h>
#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "stubkit/observe.hpp"
#include "stubkit/status.hpp"

namespace stubkit {

/// Options of MetricsObserver and ServerMetricsInterceptorFactory.
struct MetricsOptions {
  /// Upper bounds of the duration histograms' buckets, in seconds, rising;
  /// by default A66's recommended bounds from 10 us to 100 s.
  std::vector<double> latency_buckets = {
      0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01,
      0.013,   0.016,   0.02,   0.025,  0.03,   0.04,   0.05,  0.065, 0.08,  0.1,   0.13,  0.16,  0.2,   0.25,
      0.3,     0.4,     0.5,    0.65,   0.8,    1,      2,     5,     10,    20,    50,    100};
};

namespace detail {

// A66's grpc.method value: the full name without its leading slash.
inline std::string_view metric_method(std::string_view method) {
  if (!method.empty() && method.front() == '/') method.remove_prefix(1);
  return method;
}

inline double seconds(std::chrono::nanoseconds latency) { return static_cast<double>(latency.count()) / 1e9; }

// The metrics of one family per distinct label values, made on first use and
// then found again without building a label map: prometheus-cpp's
// Family::Add constructs a metric on every call, even one that exists.
template <typename Metric>
class MetricCache {
 public:
  MetricCache(prometheus::Family<Metric>& family, std::vector<std::string> label_names)
      : family_(family), names_(std::move(label_names)) {}

  template <typename... Args>
  Metric& get(std::vector<std::string_view> const& values, Args const&... args) {
    std::string key;
    for (auto value : values) {
      key.append(value);
      key.push_back('\0');
    }
    std::lock_guard<std::mutex> lock(mu_);
    auto it = metrics_.find(key);
    if (it != metrics_.end()) return *it->second;
    prometheus::Labels labels;
    for (std::size_t i = 0; i < names_.size() && i < values.size(); ++i) {
      labels.emplace(names_[i], std::string(values[i]));
    }
    Metric& metric = family_.Add(labels, args...);
    metrics_.emplace(std::move(key), &metric);
    return metric;
  }

 private:
  prometheus::Family<Metric>& family_;
  std::vector<std::string> const names_;
  std::mutex mu_;
  std::unordered_map<std::string, Metric*> metrics_;
};

}  // namespace detail

/// An Observer that counts stubkit's events into a prometheus-cpp registry
/// (the metrics named at the top of this file). Thread-safe; the registry
/// must outlive it. Throws std::invalid_argument if the registry already
/// holds one of these families of another type, or for buckets that do not
/// rise.
class MetricsObserver final : public Observer {
 public:
  explicit MetricsObserver(prometheus::Registry& registry, MetricsOptions options = {})
      : buckets_(check_buckets(std::move(options.latency_buckets))),
        attempts_started_(counter(registry, "grpc_client_attempt_started_total",
                                  "Attempts started, by method.", {"grpc_method", "stubkit_source"})),
        attempt_duration_(histogram(registry, "grpc_client_attempt_duration_seconds",
                                    "Time from an attempt's start to its end, by method and status.",
                                    {"grpc_method", "grpc_status", "stubkit_source"})),
        call_duration_(histogram(registry, "grpc_client_call_duration_seconds",
                                 "Time from a call's start to its end, attempts and waits included.",
                                 {"grpc_method", "grpc_status", "stubkit_source"})),
        retries_(counter(registry, "stubkit_client_retries_total",
                         "Retries, by method and the status of the attempt that failed.",
                         {"grpc_method", "grpc_status", "stubkit_source"})),
        give_ups_(counter(registry, "stubkit_client_give_ups_total",
                          "Failed attempts that were not retried, by method and reason.",
                          {"grpc_method", "reason", "stubkit_source"})),
        throttle_changes_(counter(registry, "stubkit_client_retry_throttle_changes_total",
                                  "Retry throttles starting to refuse or to allow retries.", {"state"})),
        pages_(counter(registry, "stubkit_client_pages_total",
                       "Pages fetched (or failed), by method and status.",
                       {"grpc_method", "grpc_status", "stubkit_source"})),
        page_items_(counter(registry, "stubkit_client_page_items_total", "Items in the pages fetched.",
                            {"grpc_method", "stubkit_source"})),
        streams_(counter(registry, "stubkit_client_streams_total", "Streams ended, by method and status.",
                         {"grpc_method", "grpc_status", "stubkit_source"})),
        stream_messages_(counter(registry, "stubkit_client_stream_messages_total",
                                 "Messages read or written by the streams that ended.",
                                 {"grpc_method", "stubkit_source"})),
        resumes_(
            counter(registry, "stubkit_client_stream_resumes_total",
                    "Resumable watches reconnecting, by method and the status that ended the connection.",
                    {"grpc_method", "grpc_status", "stubkit_source"})),
        throttles_refusing_(prometheus::BuildGauge()
                                .Name("stubkit_client_retry_throttles_refusing")
                                .Help("Retry throttles refusing retries now.")
                                .Register(registry)
                                .Add({})) {}

  void on_event(Event const& e) override {
    auto const method = detail::metric_method(e.method);
    switch (e.type) {
      case EventType::kAttemptStart:
        attempts_started_.get({method, e.source}).Increment();
        break;
      case EventType::kAttemptEnd:
        attempt_duration_.get({method, code_name(e.code), e.source}, buckets_)
            .Observe(detail::seconds(e.latency));
        break;
      case EventType::kCallEnd:
        call_duration_.get({method, code_name(e.code), e.source}, buckets_)
            .Observe(detail::seconds(e.latency));
        break;
      case EventType::kRetry:
        retries_.get({method, code_name(e.code), e.source}).Increment();
        break;
      case EventType::kGiveUp:
        give_ups_.get({method, e.reason, e.source}).Increment();
        break;
      case EventType::kThrottle:
        throttle_changes_.get({e.retries_allowed ? "allowing" : "refusing"}).Increment();
        if (e.retries_allowed) {
          throttles_refusing_.Decrement();
        } else {
          throttles_refusing_.Increment();
        }
        break;
      case EventType::kPage:
        pages_.get({method, code_name(e.code), e.source}).Increment();
        page_items_.get({method, e.source}).Increment(static_cast<double>(e.items));
        break;
      case EventType::kStreamEnd:
        streams_.get({method, code_name(e.code), e.source}).Increment();
        stream_messages_.get({method, e.source}).Increment(static_cast<double>(e.items));
        break;
      case EventType::kStreamResume:
        resumes_.get({method, code_name(e.code), e.source}).Increment();
        break;
      case EventType::kCallStart:
      case EventType::kStreamOpen:
        break;
    }
  }

 private:
  static std::vector<double> check_buckets(std::vector<double> buckets) {
    for (std::size_t i = 1; i < buckets.size(); ++i) {
      if (!(buckets[i - 1] < buckets[i])) {
        throw std::invalid_argument("MetricsOptions::latency_buckets must rise strictly");
      }
    }
    return buckets;
  }

  static detail::MetricCache<prometheus::Counter> counter(prometheus::Registry& registry, char const* name,
                                                          char const* help, std::vector<std::string> labels) {
    return {prometheus::BuildCounter().Name(name).Help(help).Register(registry), std::move(labels)};
  }

  static detail::MetricCache<prometheus::Histogram> histogram(prometheus::Registry& registry,
                                                              char const* name, char const* help,
                                                              std::vector<std::string> labels) {
    return {prometheus::BuildHistogram().Name(name).Help(help).Register(registry), std::move(labels)};
  }

  prometheus::Histogram::BucketBoundaries const buckets_;
  detail::MetricCache<prometheus::Counter> attempts_started_;
  detail::MetricCache<prometheus::Histogram> attempt_duration_;
  detail::MetricCache<prometheus::Histogram> call_duration_;
  detail::MetricCache<prometheus::Counter> retries_;
  detail::MetricCache<prometheus::Counter> give_ups_;
  detail::MetricCache<prometheus::Counter> throttle_changes_;
  detail::MetricCache<prometheus::Counter> pages_;
  detail::MetricCache<prometheus::Counter> page_items_;
  detail::MetricCache<prometheus::Counter> streams_;
  detail::MetricCache<prometheus::Counter> stream_messages_;
  detail::MetricCache<prometheus::Counter> resumes_;
  prometheus::Gauge& throttles_refusing_;
};

namespace detail {

// The server side of one call: started when gRPC creates it, ended at the
// status it sends, or as CANCELLED when it is destroyed without one (the
// client went away first).
template <typename Cache>
class ServerMetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  ServerMetricsInterceptor(std::string_view method, Cache* duration,
                           prometheus::Histogram::BucketBoundaries const* buckets)
      : method_(method), duration_(duration), buckets_(buckets), start_(std::chrono::steady_clock::now()) {}

  ~ServerMetricsInterceptor() override {
    if (!ended_) record(grpc::StatusCode::CANCELLED);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      record(methods->GetSendStatus().error_code());
    }
    methods->Proceed();
  }

 private:
  void record(grpc::StatusCode code) {
    ended_ = true;
    duration_->get({method_, code_name(code)}, *buckets_)
        .Observe(seconds(std::chrono::steady_clock::now() - start_));
  }

  std::string const method_;
  Cache* const duration_;
  prometheus::Histogram::BucketBoundaries const* const buckets_;
  std::chrono::steady_clock::time_point const start_;
  bool ended_ = false;
};

}  // namespace detail

/// Counts every call of a grpc::Server: grpc_server_call_started_total and
/// grpc_server_call_duration_seconds (A66), by method and the status sent
/// (CANCELLED when the call ended before the server sent one). Give it to
/// ServerBuilder::experimental().SetInterceptorCreators, last, so that it
/// sees the status other interceptors may rewrite. Thread-safe; the
/// registry must outlive it.
class ServerMetricsInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ServerMetricsInterceptorFactory(prometheus::Registry& registry, MetricsOptions options = {})
      : buckets_(std::move(options.latency_buckets)),
        started_(prometheus::BuildCounter()
                     .Name("grpc_server_call_started_total")
                     .Help("Calls the server started, by method.")
                     .Register(registry),
                 {"grpc_method"}),
        duration_(prometheus::BuildHistogram()
                      .Name("grpc_server_call_duration_seconds")
                      .Help("Time from a call's start to its status, by method and status.")
                      .Register(registry),
                  {"grpc_method", "grpc_status"}) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    std::string_view const method = detail::metric_method(info->method() == nullptr ? "" : info->method());
    started_.get({method}).Increment();
    return new detail::ServerMetricsInterceptor<detail::MetricCache<prometheus::Histogram>>(
        method, &duration_, &buckets_);
  }

 private:
  prometheus::Histogram::BucketBoundaries const buckets_;
  detail::MetricCache<prometheus::Counter> started_;
  detail::MetricCache<prometheus::Histogram> duration_;
};

/// A registry served over HTTP at /metrics (prometheus-cpp's Exposer, a
/// civetweb server with 2 threads). Throws std::runtime_error when the
/// address cannot be bound.
class MetricsServer {
 public:
  /// `address` is "host:port"; port 0 picks a free one (see port()).
  explicit MetricsServer(std::string const& address, std::shared_ptr<prometheus::Registry> registry =
                                                         std::make_shared<prometheus::Registry>())
      : registry_(std::move(registry)), exposer_(make_exposer(address)) {
    exposer_->RegisterCollectable(registry_);
  }

  /// The registry served; add metrics (or a MetricsObserver) to it.
  prometheus::Registry& registry() { return *registry_; }
  std::shared_ptr<prometheus::Registry> const& shared_registry() const { return registry_; }

  /// Serves another collectable too (held weakly: keep it alive).
  void add(std::weak_ptr<prometheus::Collectable> const& collectable) {
    exposer_->RegisterCollectable(collectable);
  }

  /// The port it listens on.
  int port() const {
    auto const ports = exposer_->GetListeningPorts();
    return ports.empty() ? 0 : ports.front();
  }

 private:
  static std::unique_ptr<prometheus::Exposer> make_exposer(std::string const& address) {
    try {
      return std::make_unique<prometheus::Exposer>(address);
    } catch (std::exception const& e) {
      throw std::runtime_error("cannot serve metrics on " + address + ": " + e.what());
    }
  }

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace stubkit

#endif  // STUBKIT_METRICS_HPP
