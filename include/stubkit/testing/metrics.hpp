// Prometheus metrics of the embedded UserService (needs prometheus-cpp, like
// stubkit/metrics.hpp): what `user_server --metrics-port N` serves.
//
//   stubkit::MetricsServer metrics("127.0.0.1:9465");
//   stubkit::testing::EmbeddedServerOptions options;
//   stubkit::testing::ServerMetrics server_metrics(metrics, options);  // before the server starts
//   stubkit::testing::EmbeddedServer server(options);
//   server_metrics.watch(&server.service());
//   ...
//   server_metrics.watch(nullptr);                       // before the service goes
//
// Served:
//   grpc_server_call_started_total, grpc_server_call_duration_seconds
//                                  every call, by method (and status): see stubkit/metrics.hpp
//   stubkit_server_users           gauge: users stored now
//   stubkit_server_watchers        gauge: WatchUsers streams open now
//   stubkit_server_open_streams    gauge: WatchUsers and Chat streams open now
//   stubkit_server_cancelled_calls_total  counter: calls stopped early because their
//                                  caller cancelled or their deadline passed
#ifndef STUBKIT_TESTING_METRICS_HPP
#define STUBKIT_TESTING_METRICS_HPP

#include <prometheus/client_metric.h>
#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <memory>
#include <mutex>
#include <vector>

#include "stubkit/metrics.hpp"
#include "stubkit/testing/embedded_server.hpp"

namespace stubkit::testing {

/// The UserService's gauges, read at each scrape.
class UserServiceCollectable final : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override {
    std::lock_guard<std::mutex> lock(mu_);  // watch(nullptr) waits for a scrape in progress
    UserServiceImpl const* service = service_;
    if (service == nullptr) return {};
    return {
        family("stubkit_server_users", "Users stored now.", prometheus::MetricType::Gauge,
               static_cast<double>(service->user_count())),
        family("stubkit_server_watchers", "WatchUsers streams open now.", prometheus::MetricType::Gauge,
               service->watchers()),
        family("stubkit_server_open_streams", "WatchUsers and Chat streams open now.",
               prometheus::MetricType::Gauge, service->open_streams()),
        family("stubkit_server_cancelled_calls_total",
               "Calls stopped early because their caller cancelled or their deadline passed.",
               prometheus::MetricType::Counter, static_cast<double>(service->cancelled_calls())),
    };
  }

  /// Starts reading `service`; nullptr stops, and returns once no scrape
  /// reads the old one. Unwatch before the service is destroyed.
  void watch(UserServiceImpl const* service) {
    std::lock_guard<std::mutex> lock(mu_);
    service_ = service;
  }

 private:
  static prometheus::MetricFamily family(char const* name, char const* help, prometheus::MetricType type,
                                         double value) {
    prometheus::MetricFamily family;
    family.name = name;
    family.help = help;
    family.type = type;
    prometheus::ClientMetric metric;
    if (type == prometheus::MetricType::Counter) {
      metric.counter.value = value;
    } else {
      metric.gauge.value = value;
    }
    family.metric.push_back(metric);
    return family;
  }

  mutable std::mutex mu_;
  UserServiceImpl const* service_ = nullptr;
};

/// The server side of `user_server --metrics-port`: every call counted by a
/// ServerMetricsInterceptorFactory added to `options`, and the service's
/// gauges, both served by `metrics`. Construct before the server, call
/// watch(&service) once it runs and watch(nullptr) before it is destroyed
/// (the destructor does too); keep this alive as long as `metrics` serves.
class ServerMetrics {
 public:
  ServerMetrics(MetricsServer& metrics, EmbeddedServerOptions& options)
      : calls_(std::make_shared<ServerMetricsInterceptorFactory>(metrics.registry())),
        gauges_(std::make_shared<UserServiceCollectable>()) {
    options.interceptors.push_back(calls_);
    metrics.add(gauges_);
  }

  ~ServerMetrics() { gauges_->watch(nullptr); }
  ServerMetrics(ServerMetrics const&) = delete;
  ServerMetrics& operator=(ServerMetrics const&) = delete;

  void watch(UserServiceImpl const* service) { gauges_->watch(service); }

 private:
  std::shared_ptr<ServerMetricsInterceptorFactory> calls_;
  std::shared_ptr<UserServiceCollectable> gauges_;
};

}  // namespace stubkit::testing

#endif  // STUBKIT_TESTING_METRICS_HPP
