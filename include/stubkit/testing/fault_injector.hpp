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
#include <random>
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
    std::chrono::milliseconds tail_delay{0};    ///< and this much longer: the tail latency's
    std::optional<int> close_stream_after;      ///< end a stream after this many messages
  };

  /// A tail-latency backend, for hedging: each unary call is slow with
  /// probability `fraction` and then waits `delay` longer before it is
  /// handled (cancellable, like add_latency's wait). Streams are not
  /// delayed: BulkCreateUsers is admitted on a gRPC callback thread, which
  /// must not block.
  struct TailLatency {
    double fraction = 0;                 ///< 0 to 1: the share of calls delayed
    std::chrono::milliseconds delay{0};  ///< 0 to 1 hour
    /// Which calls: the n-th unary call to arrive is slow or not by the
    /// n-th draw of a generator seeded with this, so calls made one after
    /// another are delayed the same way on every run. Backends meant to be
    /// slow at different times need different seeds.
    std::uint64_t seed = 1;

    /// What makes these settings unusable; empty when they are fine.
    std::string problem() const {
      if (!(fraction >= 0 && fraction <= 1)) return "fraction must be from 0 to 1";
      if (delay.count() < 0 || delay > std::chrono::hours(1)) return "delay must be from 0 to 1 hour";
      return {};
    }
  };

  explicit FaultInjector(google::protobuf::ServiceDescriptor const* service) : service_(service) {}

  /// Makes the backend a tail-latency one (TailLatency); `{}` turns it off.
  /// Starts the seed's sequence anew. Throws std::invalid_argument on
  /// unusable settings (TailLatency::problem). clear() leaves it as it is.
  void set_tail_latency(TailLatency tail) {
    if (auto problem = tail.problem(); !problem.empty()) {
      throw std::invalid_argument("set_tail_latency: " + problem);
    }
    std::lock_guard<std::mutex> lock(mu_);
    tail_ = tail;
    tail_random_.seed(tail.seed);
  }

  /// The tail-latency settings in force.
  TailLatency tail_latency() const {
    std::lock_guard<std::mutex> lock(mu_);
    return tail_;
  }

  /// How many calls the tail latency has delayed so far.
  std::int64_t tail_delayed_calls() const {
    std::lock_guard<std::mutex> lock(mu_);
    return tail_delayed_;
  }

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
    fail_next(method, count, injected_error(code, std::move(message), retry_delay));
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

  /// The request header a client can send to ask for a fault, when the
  /// service is started with `fault_metadata` (user_server
  /// --fault-metadata). Its value is a comma-separated list of settings:
  ///
  ///   code=UNAVAILABLE     fail with this status code (name or number)
  ///   attempts=N           only the first N attempts fail: the attempt
  ///                        number comes from stubkit-previous-rpc-attempts or
  ///                        grpc-previous-rpc-attempts (default: every attempt)
  ///   retry-delay=1500ms   the failure carries google.rpc.RetryInfo
  ///   lost-reply           handle the call, then fail it with `code`
  ///   latency=5s           wait this long first (cancellable); ms or s
  ///   close-stream-after=N end a stream with UNAVAILABLE after N messages
  ///
  /// e.g. `stubkit-fault: code=UNAVAILABLE,attempts=2`. What the header
  /// names replaces the call's planned faults; the rest of them still apply.
  static constexpr char const* kFaultHeader = "stubkit-fault";

  /// Applies a `stubkit-fault` header value to `plan` for the attempt that
  /// had `previous_attempts` before it. A malformed value gives
  /// INVALID_ARGUMENT naming the setting, and `plan` is left as it was.
  static grpc::Status apply_header(std::string_view value, int previous_attempts, Plan& plan) {
    Plan out = plan;
    std::optional<grpc::StatusCode> code;
    std::optional<std::chrono::milliseconds> retry_delay;
    int attempts = -1;  // every attempt
    bool lost_reply = false;
    auto bad = [](std::string_view setting, std::string_view why) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          std::string(kFaultHeader) + ": '" + std::string(setting) + "' " + std::string(why));
    };
    while (!value.empty()) {
      auto const comma = value.find(',');
      std::string_view setting = trim(value.substr(0, comma));
      value = comma == std::string_view::npos ? std::string_view() : value.substr(comma + 1);
      if (setting.empty()) continue;
      auto const eq = setting.find('=');
      std::string_view const key = trim(setting.substr(0, eq));
      std::string_view const arg =
          eq == std::string_view::npos ? std::string_view() : trim(setting.substr(eq + 1));
      if (key == "lost-reply" && eq == std::string_view::npos) {
        lost_reply = true;
      } else if (eq == std::string_view::npos) {
        return bad(setting,
                   "is not key=value (known: code, attempts, retry-delay, lost-reply, latency, "
                   "close-stream-after)");
      } else if (key == "code") {
        code = parse_code(arg);
        if (!code) return bad(setting, "names no status code");
      } else if (key == "attempts" || key == "close-stream-after") {
        auto n = parse_count(arg);
        if (!n) return bad(setting, "is not a count from 0 to 1000000");
        if (key == "attempts") {
          attempts = *n;
        } else {
          out.close_stream_after = *n;
        }
      } else if (key == "retry-delay" || key == "latency") {
        auto d = parse_duration(arg);
        if (!d) return bad(setting, "is not a duration such as 250ms or 2s (at most 1 hour)");
        if (key == "latency") {
          out.latency = *d;
        } else {
          retry_delay = *d;
        }
      } else {
        return bad(setting,
                   "is not a known setting (known: code, attempts, retry-delay, lost-reply, latency, "
                   "close-stream-after)");
      }
    }
    if ((retry_delay || lost_reply) && !code) return bad("code", "is needed with retry-delay and lost-reply");
    if (code && *code == grpc::StatusCode::OK) return bad("code=OK", "is not a failure");
    if (code && (attempts < 0 || previous_attempts < attempts)) {
      (lost_reply ? out.failure_after : out.failure) =
          injected_error(
              *code,
              lost_reply ? "injected fault after handling (stubkit-fault)" : "injected fault (stubkit-fault)",
              retry_delay)
              .to_grpc_status();
    }
    plan = std::move(out);
    return grpc::Status::OK;
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
    if (tail_.delay.count() > 0 && unary(method) && tail_draw() < tail_.fraction) {
      plan.tail_delay = tail_.delay;
      ++tail_delayed_;
    }
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

  // A failure with `code`, carrying google.rpc.RetryInfo when a server
  // asking for pushback would: with `retry_delay`.
  static stubkit::Error injected_error(grpc::StatusCode code, std::string message,
                                       std::optional<std::chrono::milliseconds> retry_delay) {
    stubkit::Error error(code, std::move(message));
    if (retry_delay) {
      google::rpc::RetryInfo info;
      *info.mutable_retry_delay() =
          google::protobuf::util::TimeUtil::MillisecondsToDuration(retry_delay->count());
      error.with(info);
    }
    return error;
  }

  static std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
  }

  static std::optional<int> parse_count(std::string_view s) {
    if (s.empty() || s.size() > 7) return std::nullopt;
    int n = 0;
    for (char c : s) {
      if (c < '0' || c > '9') return std::nullopt;
      n = n * 10 + (c - '0');
    }
    if (n > 1000000) return std::nullopt;
    return n;
  }

  static std::optional<grpc::StatusCode> parse_code(std::string_view s) {
    if (auto n = parse_count(s)) {
      if (*n <= 16) return static_cast<grpc::StatusCode>(*n);
      return std::nullopt;
    }
    for (int c = 0; c <= 16; ++c) {
      if (stubkit::code_name(c) == s) return static_cast<grpc::StatusCode>(c);
    }
    return std::nullopt;
  }

  static std::optional<std::chrono::milliseconds> parse_duration(std::string_view s) {
    int scale = 0;
    if (s.size() > 2 && s.substr(s.size() - 2) == "ms") {
      scale = 1;
      s.remove_suffix(2);
    } else if (s.size() > 1 && s.back() == 's') {
      scale = 1000;
      s.remove_suffix(1);
    }
    auto n = parse_count(s);
    if (scale == 0 || !n || std::int64_t{*n} * scale > 3600 * 1000) return std::nullopt;
    return std::chrono::milliseconds(std::int64_t{*n} * scale);
  }

  // A uniform draw in [0, 1) from the top 53 bits: the same on every
  // standard library (std::bernoulli_distribution's is unspecified).
  double tail_draw() { return static_cast<double>(tail_random_() >> 11) * 0x1p-53; }

  bool unary(std::string_view method) const {
    auto const* m = service_->FindMethodByName(std::string(method));
    return m != nullptr && !m->client_streaming() && !m->server_streaming();
  }

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
  TailLatency tail_;
  std::mt19937_64 tail_random_{1};
  std::int64_t tail_delayed_ = 0;
};

}  // namespace stubkit::testing

#endif  // STUBKIT_TESTING_FAULT_INJECTOR_HPP
