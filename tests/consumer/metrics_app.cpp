// A user's program with Prometheus metrics: stubkit/metrics.hpp through
// dependency('stubkit-metrics') / pkg-config stubkit-metrics / CMake
// stubkit::metrics. A call to a port nothing listens on is counted, and
// /metrics is served.
#include <prometheus/text_serializer.h>

#include <iostream>
#include <memory>
#include <string>

#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/metrics.hpp"
#include "stubkit/stubkit.hpp"

int main() {
  stubkit::MetricsServer metrics("127.0.0.1:0");
  auto stub = myservice::v1::UserService::NewStub(
      grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials()));
  stubkit::CallOptions options;
  options.timeout = std::chrono::seconds(2);
  options.observer = std::make_shared<stubkit::MetricsObserver>(metrics.registry());
  auto user = stubkit::call(*stub, &myservice::v1::UserService::Stub::GetUser,
                            myservice::v1::GetUserRequest(), options);
  std::string const text = prometheus::TextSerializer().Serialize(metrics.registry()->Collect());
  bool const ok =
      !user.ok() && metrics.port() > 0 &&
      text.find(
          "grpc_client_call_duration_seconds_count{grpc_method=\"myservice.v1.UserService/"
          "GetUser\",grpc_status=\"" +
          stubkit::code_name(user.error().code()) + "\",stubkit_source=\"call\"} 1") != std::string::npos;
  std::cout << (ok ? "metrics: ok\n" : "metrics: FAILED\n" + text);
  return ok ? 0 : 1;
}
