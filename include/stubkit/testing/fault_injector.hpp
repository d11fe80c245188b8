// Fault injection for the embedded UserService: make calls fail, slow down,
// or end streams early, so retry, deadline and stream code can be tested
// against a real server.
#ifndef STUBKIT_TESTING_FAULT_INJECTOR_HPP
#define STUBKIT_TESTING_FAULT_INJECTOR_HPP

#include <grpcpp/support/status.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/util/time_util.h"
#include "google/rpc/error_details.pb.h"
#include "stubkit/status.hpp"

namespace stubkit::testing {

/// Faults planned per method of one service, consumed by the server as calls
/// arrive. Methods are named by their short name ("GetUser"); a name the
/// service does not have throws std::invalid_argument, so a typo in a test
/// fails loudly instead of injecting nothing.
///
/// Thread-safe: tests plan faults while server threads consume them.
///
///   server.faults().fail_next("GetUser", 2, grpc::StatusCode::UNAVAILABLE);
class FaultInjector {
 public:
  /// What the server does with one call.
  struct Plan {
    std::optional<grpc::Status> failure;        ///< end the call with this status
    std::optional<grpc::Status> failure_after;  ///< handle the call, then fail it (reply lost)
    std::optional<std::string> pushback;        ///< grpc-retry-pushback-ms trailer sent with `failure`
    std::chrono::milliseconds latency{0};       ///< wait this long first (cancellable)
    std::optional<int> close_stream_after;      ///< end a stream after this many messages
  };

  explicit FaultInjector(google::protobuf::ServiceDescriptor const* service) : service_(service) {}

  /// The next `count` calls of `method` fail with `error`, details included
  /// (any google.rpc detail, or messages of your own).
  void fail_next(std::string_view method, int count, stubkit::Error const& error) {
    if (count < 0) throw std::invalid_argument("fail_next: count must not be negative");
    std::lock_guard<std::mutex> lock(mu_);
    auto& f = faults_[checked(method)];
    f.failures_left = count;
    f.failure = error.to_grpc_status();
  }

  /// The next `count` calls of `method` fail with `code`. With `retry_delay`
  /// the status carries google.rpc.RetryInfo, as a server asking for
  /// pushback would send.
  void fail_next(std::string_view method, int count, grpc::StatusCode code,
                 std::string message = "injected fault",
                 std::optional<std::chrono::milliseconds> retry_delay = std::nullopt) {
    stubkit::Error error(code, std::move(message));
    if (retry_delay) {
      google::rpc::RetryInfo info;
      *info.mutable_retry_delay() =
          google::protobuf::util::TimeUtil::MillisecondsToDuration(retry_delay->count());
      error.with(info);
    }
    fail_next(method, count, error);
  }

  /// The next `count` calls of `method` are handled (their effects happen)
  /// and then fail with `code`: a reply lost on the way back, the case that
  /// makes retrying non-idempotent calls dangerous.
  void fail_after_next(std::string_view method, int count, grpc::StatusCode code,
                       std::string message = "injected fault after handling") {
    if (count < 0) throw std::invalid_argument("fail_after_next: count must not be negative");
    std::lock_guard<std::mutex> lock(mu_);
    auto& f = faults_[checked(method)];
    f.failures_after_left = count;
    f.failure_after = grpc::Status(code, std::move(message));
  }

  /// The next `count` calls of `method` fail with `code` and the trailer
  /// `grpc-retry-pushback-ms: <pushback>` (sent verbatim, so malformed
  /// values can be tested).
  void fail_next_with_pushback(std::string_view method, int count, grpc::StatusCode code,
                               std::string pushback) {
    fail_next(method, count, code, "injected fault with pushback");
    std::lock_guard<std::mutex> lock(mu_);
    faults_[checked(method)].pushback = std::move(pushback);
  }

  /// How many attempt headers are kept per method: a long-running server
  /// must not grow with every call it serves.
  static constexpr std::size_t kKeptAttemptHeaders = 1000;

  /// The values of the `stubkit-previous-rpc-attempts` header that the last
  /// (up to kKeptAttemptHeaders) calls of `method` carried, in arrival order
  /// ("" when absent).
  std::vector<std::string> attempt_headers(std::string_view method) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = faults_.find(checked(method));
    if (it == faults_.end()) return {};
    return {it->second.attempt_headers.begin(), it->second.attempt_headers.end()};
  }

  /// Every call of `method` waits `latency` before it is handled.
  void add_latency(std::string_view method, std::chrono::milliseconds latency) {
    std::lock_guard<std::mutex> lock(mu_);
    faults_[checked(method)].latency = latency;
  }

  /// Streams of `method` end with UNAVAILABLE after `messages` messages.
  void close_stream_after(std::string_view method, int messages) {
    if (messages < 0) throw std::invalid_argument("close_stream_after: messages must not be negative");
    std::lock_guard<std::mutex> lock(mu_);
    faults_[checked(method)].close_after = messages;
  }

  /// Removes every planned fault (call counts and attempt headers are kept).
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& entry : faults_) {
      Fault cleared;
      cleared.calls = entry.second.calls;
      cleared.attempt_headers = std::move(entry.second.attempt_headers);
      entry.second = std::move(cleared);
    }
  }

  /// How many calls of `method` reached the server, failed ones included.
  std::int64_t calls(std::string_view method) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = faults_.find(checked(method));
    return it == faults_.end() ? 0 : it->second.calls;
  }

  /// Server side: counts the call and returns what to do with it.
  Plan take(std::string_view method, std::string attempt_header = "") {
    std::lock_guard<std::mutex> lock(mu_);
    auto& f = faults_[std::string(method)];
    ++f.calls;
    f.attempt_headers.push_back(std::move(attempt_header));
    if (f.attempt_headers.size() > kKeptAttemptHeaders) f.attempt_headers.pop_front();
    Plan plan;
    plan.latency = f.latency;
    plan.close_stream_after = f.close_after;
    if (f.failures_left > 0) {
      --f.failures_left;
      plan.failure = f.failure;
      if (!f.pushback.empty()) plan.pushback = f.pushback;
    } else if (f.failures_after_left > 0) {
      --f.failures_after_left;
      plan.failure_after = f.failure_after;
    }
    return plan;
  }

 private:
  struct Fault {
    std::int64_t calls = 0;
    int failures_left = 0;
    grpc::Status failure;
    std::string pushback;
    int failures_after_left = 0;
    grpc::Status failure_after;
    std::deque<std::string> attempt_headers;
    std::chrono::milliseconds latency{0};
    std::optional<int> close_after;
  };

  std::string checked(std::string_view method) const {
    std::string name(method);
    if (service_->FindMethodByName(name) == nullptr) {
      throw std::invalid_argument("no method '" + name + "' in " + service_->full_name());
    }
    return name;
  }

  google::protobuf::ServiceDescriptor const* service_;
  mutable std::mutex mu_;
  std::map<std::string, Fault, std::less<>> faults_;
};

}  // namespace stubkit::testing

#endif  // STUBKIT_TESTING_FAULT_INJECTOR_HPP
