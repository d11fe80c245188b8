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
// Observers and factories share the registry (std::shared_ptr): a default
// observer outlives main's locals, and so does what it counts into.
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
//   stubkit_client_hedges_total              counter    grpc_method (hedges sent, first attempts not counted)
//   stubkit_client_retry_throttle_changes_total counter state ("refusing" or "allowing")
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

#include <grpcpp/server_context.h>
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

#include "google/protobuf/descriptor.h"
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

// The same for a server, where anyone can ask for any name: "other" unless
// the method is in the process's generated descriptors (A66: unregistered
// methods are "other"), so a client cannot add series without end.
inline std::string_view server_metric_method(char const* path) {
  std::string_view const method = metric_method(path == nullptr ? "" : path);
  auto const slash = method.find('/');
  if (slash == std::string_view::npos) return "other";
  std::string full(method);
  full[slash] = '.';
  bool const known = google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(full) != nullptr;
  return known ? method : std::string_view("other");
}

inline std::vector<double> checked_buckets(std::vector<double> buckets) {
  for (std::size_t i = 1; i < buckets.size(); ++i) {
    if (!(buckets[i - 1] < buckets[i]))
      throw std::invalid_argument("MetricsOptions::latency_buckets must rise strictly");
  }
  return buckets;
}

inline std::shared_ptr<prometheus::Registry> checked_registry(
    std::shared_ptr<prometheus::Registry> registry) {
  if (!registry) throw std::invalid_argument("stubkit metrics need a prometheus::Registry, got nullptr");
  return registry;
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

// A family registered in `registry`, with its cache of metrics by labels.
inline MetricCache<prometheus::Counter> counter_family(prometheus::Registry& registry, char const* name,
                                                       char const* help, std::vector<std::string> labels) {
  return {prometheus::BuildCounter().Name(name).Help(help).Register(registry), std::move(labels)};
}

inline MetricCache<prometheus::Histogram> histogram_family(prometheus::Registry& registry, char const* name,
                                                           char const* help,
                                                           std::vector<std::string> labels) {
  return {prometheus::BuildHistogram().Name(name).Help(help).Register(registry), std::move(labels)};
}

}  // namespace detail

/// An Observer that counts stubkit's events into a prometheus-cpp registry
/// (the metrics named at the top of this file), which it keeps alive.
/// Thread-safe. Throws std::invalid_argument for a null registry, for
/// buckets that do not rise, or if the registry holds one of these families
/// with another type. Two observers on one registry share its families
/// (and the first one's buckets).
class MetricsObserver final : public Observer {
 public:
  explicit MetricsObserver(std::shared_ptr<prometheus::Registry> registry_in, MetricsOptions options = {})
      : keep_(detail::checked_registry(std::move(registry_in))),
        buckets_(detail::checked_buckets(std::move(options.latency_buckets))),
        attempts_started_(detail::counter_family(*keep_, "grpc_client_attempt_started_total",
                                                 "Attempts started, by method.",
                                                 {"grpc_method", "stubkit_source"})),
        attempt_duration_(
            detail::histogram_family(*keep_, "grpc_client_attempt_duration_seconds",
                                     "Time from an attempt's start to its end, by method and status.",
                                     {"grpc_method", "grpc_status", "stubkit_source"})),
        call_duration_(
            detail::histogram_family(*keep_, "grpc_client_call_duration_seconds",
                                     "Time from a call's start to its end, attempts and waits included.",
                                     {"grpc_method", "grpc_status", "stubkit_source"})),
        retries_(detail::counter_family(*keep_, "stubkit_client_retries_total",
                                        "Retries, by method and the status of the attempt that failed.",
                                        {"grpc_method", "grpc_status", "stubkit_source"})),
        give_ups_(detail::counter_family(*keep_, "stubkit_client_give_ups_total",
                                         "Failed attempts that were not retried, by method and reason.",
                                         {"grpc_method", "reason", "stubkit_source"})),
        hedges_(detail::counter_family(
            *keep_, "stubkit_client_hedges_total",
            "Hedged attempts sent (the first attempt of a call not counted), by method.",
            {"grpc_method", "stubkit_source"})),
        throttle_changes_(detail::counter_family(*keep_, "stubkit_client_retry_throttle_changes_total",
                                                 "Retry throttles starting to refuse or to allow retries.",
                                                 {"state"})),
        pages_(detail::counter_family(*keep_, "stubkit_client_pages_total",
                                      "Pages fetched (or failed), by method and status.",
                                      {"grpc_method", "grpc_status", "stubkit_source"})),
        page_items_(detail::counter_family(*keep_, "stubkit_client_page_items_total",
                                           "Items in the pages fetched.", {"grpc_method", "stubkit_source"})),
        streams_(detail::counter_family(*keep_, "stubkit_client_streams_total",
                                        "Streams ended, by method and status.",
                                        {"grpc_method", "grpc_status", "stubkit_source"})),
        stream_messages_(detail::counter_family(*keep_, "stubkit_client_stream_messages_total",
                                                "Messages read or written by the streams that ended.",
                                                {"grpc_method", "stubkit_source"})),
        resumes_(detail::counter_family(
            *keep_, "stubkit_client_stream_resumes_total",
            "Resumable watches reconnecting, by method and the status that ended the connection.",
            {"grpc_method", "grpc_status", "stubkit_source"})) {}

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
      case EventType::kHedge:
        hedges_.get({method, e.source}).Increment();
        break;
      case EventType::kThrottle:
        // Changes only: a throttle's changes are told while an observer
        // watches its calls, so no gauge of its state could be kept right.
        throttle_changes_.get({e.retries_allowed ? "allowing" : "refusing"}).Increment();
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
  std::shared_ptr<prometheus::Registry> const keep_;  // first: the families below live in it
  prometheus::Histogram::BucketBoundaries const buckets_;
  detail::MetricCache<prometheus::Counter> attempts_started_;
  detail::MetricCache<prometheus::Histogram> attempt_duration_;
  detail::MetricCache<prometheus::Histogram> call_duration_;
  detail::MetricCache<prometheus::Counter> retries_;
  detail::MetricCache<prometheus::Counter> give_ups_;
  detail::MetricCache<prometheus::Counter> hedges_;
  detail::MetricCache<prometheus::Counter> throttle_changes_;
  detail::MetricCache<prometheus::Counter> pages_;
  detail::MetricCache<prometheus::Counter> page_items_;
  detail::MetricCache<prometheus::Counter> streams_;
  detail::MetricCache<prometheus::Counter> stream_messages_;
  detail::MetricCache<prometheus::Counter> resumes_;
};

namespace detail {

// The server side of one call, from its creation to its end: the status
// the handler sent, or CANCELLED / DEADLINE_EXCEEDED when the call ended
// before the handler sent one (gRPC still runs a sync handler to the end
// and lets it "send" a status after the client left). Recorded at
// POST_RECV_CLOSE, which comes once the call is over, else when the
// interceptor goes. Never throws: a metric that cannot be recorded is
// dropped.
class ServerMetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  ServerMetricsInterceptor(grpc::experimental::ServerRpcInfo* info, std::string_view method,
                           MetricCache<prometheus::Histogram>* duration,
                           prometheus::Histogram::BucketBoundaries const* buckets)
      : info_(info),
        method_(method),
        duration_(duration),
        buckets_(buckets),
        start_(std::chrono::steady_clock::now()) {}

  ~ServerMetricsInterceptor() override {
    if (!recorded_) record(sent_.load());
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      sent_.store(static_cast<int>(methods->GetSendStatus().error_code()));
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_CLOSE) && !recorded_) {
      // The call is over. No status sent yet means it ended first: the
      // client cancelled, or the deadline passed. (IsCancelled() cannot be
      // asked here: it runs this hook again.)
      int code = sent_.load();
      if (code < 0) {
        grpc::ServerContextBase const* const ctx = info_->server_context();
        bool const late = ctx != nullptr && std::chrono::system_clock::now() >= ctx->deadline();
        code = static_cast<int>(late ? grpc::StatusCode::DEADLINE_EXCEEDED : grpc::StatusCode::CANCELLED);
      }
      record(code);
    }
    methods->Proceed();
  }

 private:
  void record(int code) noexcept {
    recorded_ = true;
    if (code < 0) code = static_cast<int>(grpc::StatusCode::CANCELLED);  // ended with no status at all
    try {
      duration_->get({method_, code_name(code)}, *buckets_)
          .Observe(seconds(std::chrono::steady_clock::now() - start_));
    } catch (...) {
    }
  }

  grpc::experimental::ServerRpcInfo* const info_;
  std::string const method_;
  MetricCache<prometheus::Histogram>* const duration_;
  prometheus::Histogram::BucketBoundaries const* const buckets_;
  std::chrono::steady_clock::time_point const start_;
  std::atomic<int> sent_{-1};  // the status code the handler sent; a handler thread writes it
  bool recorded_ = false;      // by the thread of POST_RECV_CLOSE, then the destructor
};

}  // namespace detail

/// Counts every call of a grpc::Server: grpc_server_call_started_total and
/// grpc_server_call_duration_seconds (A66), by method and status (see
/// detail::ServerMetricsInterceptor for calls the client left). Methods the
/// process has no generated descriptor for count as "other". Give it to
/// ServerBuilder::experimental().SetInterceptorCreators, last, so that it
/// sees the status other interceptors may rewrite. Thread-safe; keeps the
/// registry alive. Throws std::invalid_argument like MetricsObserver.
class ServerMetricsInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ServerMetricsInterceptorFactory(std::shared_ptr<prometheus::Registry> registry,
                                           MetricsOptions options = {})
      : keep_(detail::checked_registry(std::move(registry))),
        buckets_(detail::checked_buckets(std::move(options.latency_buckets))),
        started_(detail::counter_family(*keep_, "grpc_server_call_started_total",
                                        "Calls the server started, by method.", {"grpc_method"})),
        duration_(detail::histogram_family(*keep_, "grpc_server_call_duration_seconds",
                                           "Time from a call's start to its end, by method and status.",
                                           {"grpc_method", "grpc_status"})) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    try {
      std::string_view const method = detail::server_metric_method(info->method());
      started_.get({method}).Increment();
      return new detail::ServerMetricsInterceptor(info, method, &duration_, &buckets_);
    } catch (...) {
      return nullptr;  // this call goes uncounted; it goes on
    }
  }

 private:
  std::shared_ptr<prometheus::Registry> const keep_;
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
      : registry_(detail::checked_registry(std::move(registry))), exposer_(make_exposer(address)) {
    exposer_->RegisterCollectable(registry_);
  }

  /// The registry served; give it to a MetricsObserver or add metrics.
  std::shared_ptr<prometheus::Registry> const& registry() const { return registry_; }

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
