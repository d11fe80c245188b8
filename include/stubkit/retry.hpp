// Retries with exponential backoff and full jitter, done safely: only
// idempotent calls are retried, server pushback is honoured, attempts and
// sleeps never outlast the caller's deadline, and a retry throttle keeps a
// dead backend from being hammered.
//
//   stubkit::CallOptions options;
//   options.timeout = std::chrono::seconds(2);          // bounds all attempts and sleeps
//   options.retry = stubkit::RetryPolicy::standard();   // UNAVAILABLE, 4 attempts
//   stubkit::Result<User> user = stubkit::call(*stub, &UserService::Stub::GetUser, request, options);
//
// The same policy drives the channel interceptor in retry_interceptor.hpp,
// which retries calls made through unmodified generated stubs.
#ifndef STUBKIT_RETRY_HPP
#define STUBKIT_RETRY_HPP

#include <grpcpp/client_context.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/status.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "absl/functional/function_ref.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/message.h"
#include "google/rpc/error_details.pb.h"
#include "stubkit/detail/method.hpp"
#include "stubkit/detail/time.hpp"
#include "stubkit/method.hpp"
#include "stubkit/observe.hpp"
#include "stubkit/status.hpp"
#include "stubkit/trace.hpp"

namespace stubkit {

/// When and how a failed call is tried again. The defaults follow Google
/// AIP-194: retry UNAVAILABLE only, with full-jitter exponential backoff.
struct RetryPolicy {
  /// Attempts in all, the first included; 1 = never retry.
  int max_attempts = 4;
  /// The first backoff cap; each retry multiplies it by `multiplier`, up to `max_backoff`.
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{5000};
  double multiplier = 2.0;
  /// Codes worth retrying. DEADLINE_EXCEEDED does not belong here: it is
  /// retried only when `per_attempt_timeout` (not the caller's deadline) expired.
  std::vector<grpc::StatusCode> retryable_codes{grpc::StatusCode::UNAVAILABLE};
  /// Deadline of each attempt; zero = attempts share the call's deadline.
  std::chrono::milliseconds per_attempt_timeout{0};

  /// The recommended policy: 4 attempts, 100 ms doubling to at most 5 s, UNAVAILABLE.
  static RetryPolicy standard() { return RetryPolicy{}; }

  /// A policy that never retries.
  static RetryPolicy none() {
    RetryPolicy policy;
    policy.max_attempts = 1;
    return policy;
  }

  /// Why the policy is unusable, or "" if it is fine.
  std::string problem() const {
    if (max_attempts < 1) return "max_attempts must be at least 1";
    if (initial_backoff.count() < 0 || max_backoff.count() < 0) return "backoffs must not be negative";
    if (max_backoff < initial_backoff) return "max_backoff must not be below initial_backoff";
    if (!(multiplier >= 1.0) || !std::isfinite(multiplier)) return "multiplier must be a finite number >= 1";
    if (per_attempt_timeout.count() < 0) return "per_attempt_timeout must not be negative";
    return "";
  }

  bool retryable(grpc::StatusCode code) const {
    return std::find(retryable_codes.begin(), retryable_codes.end(), code) != retryable_codes.end();
  }
};

/// Full-jitter exponential backoff (the AWS architecture blog's "full
/// jitter"): the n-th delay is uniform in [0, min(max_backoff,
/// initial_backoff * multiplier^n)], so clients that failed together do not
/// retry together.
class Backoff {
 public:
  /// `random01` returns numbers uniform in [0, 1); empty = a per-thread PRNG.
  explicit Backoff(RetryPolicy const& policy, std::function<double()> random01 = {})
      : initial_(policy.initial_backoff),
        max_(policy.max_backoff),
        multiplier_(policy.multiplier),
        random01_(std::move(random01)) {}

  /// The upper bound of the next delay, without drawing it.
  std::chrono::milliseconds cap() const {
    double const grown = static_cast<double>(initial_.count()) * std::pow(multiplier_, retries_);
    return std::chrono::milliseconds(
        static_cast<std::int64_t>(std::min(grown, static_cast<double>(max_.count()))));
  }

  /// The next delay.
  std::chrono::milliseconds next() {
    auto const bound = cap();
    ++retries_;
    double const r = random01_ ? random01_() : default_random();
    return std::chrono::milliseconds(static_cast<std::int64_t>(r * static_cast<double>(bound.count())));
  }

 private:
  static double default_random() {
    thread_local std::mt19937_64 engine{std::random_device{}()};
    return std::uniform_real_distribution<double>(0.0, 1.0)(engine);
  }

  std::chrono::milliseconds initial_;
  std::chrono::milliseconds max_;
  double multiplier_;
  std::function<double()> random01_;
  int retries_ = 0;
};

/// Retry throttling as in gRPC's retry design (A6): a token bucket shared
/// by all calls to one backend. It starts full at `max_tokens`; every
/// retryable failure takes one token, every success gives back
/// `token_ratio`; while the bucket is at or below half, no call is retried.
/// So when most calls fail, retries stop adding load. Thread-safe.
class RetryThrottle {
 public:
  explicit RetryThrottle(double max_tokens = 10, double token_ratio = 0.1)
      : max_tokens_(max_tokens), token_ratio_(token_ratio), tokens_(max_tokens) {}

  /// Each returns true when it changed allows_retry() (decided under the
  /// throttle's lock, so each change is reported to one caller only).
  bool on_success() {
    std::lock_guard<std::mutex> lock(mu_);
    bool const before = open();
    tokens_ = std::min(max_tokens_, tokens_ + token_ratio_);
    return open() != before;
  }
  bool on_retryable_failure() {
    std::lock_guard<std::mutex> lock(mu_);
    bool const before = open();
    tokens_ = std::max(0.0, tokens_ - 1);
    return open() != before;
  }
  bool allows_retry() const {
    std::lock_guard<std::mutex> lock(mu_);
    return open();
  }
  double tokens() const {
    std::lock_guard<std::mutex> lock(mu_);
    return tokens_;
  }

 private:
  bool open() const { return tokens_ > max_tokens_ / 2; }

  double const max_tokens_;
  double const token_ratio_;
  mutable std::mutex mu_;
  double tokens_;
};

/// What happened before a retry, for logs and metrics.
struct RetryEvent {
  int attempt;                      ///< the attempt that failed (1 = the first)
  grpc::Status status;              ///< how it failed
  std::chrono::milliseconds delay;  ///< the wait before the next attempt
};

/// How a retried call ended, for callers that want to know.
struct RetryReport {
  int attempts = 0;
  std::chrono::milliseconds total_delay{0};
  grpc::Status last_status;
  std::string stop_reason;  ///< why no further attempt was made ("" after success)
};

/// Time seams: every clock read and sleep of a retry loop goes through these,
/// so tests run fast and exact.
struct RetryClock {
  std::function<std::chrono::system_clock::time_point()> now;  ///< empty = system_clock::now
  std::function<void(std::chrono::milliseconds)> sleep;        ///< empty = this_thread::sleep_for
  std::function<double()> random01;                            ///< empty = a per-thread PRNG

  std::chrono::system_clock::time_point read() const {
    return now ? now() : std::chrono::system_clock::now();
  }
  void wait(std::chrono::milliseconds d) const {
    if (sleep) {
      sleep(d);
    } else {
      std::this_thread::sleep_for(d);
    }
  }
};

/// The metadata key that tells the server how many attempts preceded this one.
inline constexpr char const* kPreviousAttemptsKey = "stubkit-previous-rpc-attempts";
/// The trailer by which a server sets the next retry's delay (gRPC A6).
inline constexpr char const* kPushbackKey = "grpc-retry-pushback-ms";
/// The longest wait a server can ask for (grpc-retry-pushback-ms or
/// google.rpc.RetryInfo); longer requests are clamped to it, so a broken or
/// hostile server cannot park a call for days. The call's deadline still
/// applies: a wait that would pass it ends the call instead.
inline constexpr std::chrono::milliseconds kMaxServerRetryDelay{60000};

/// Whether a method is safe to retry by its proto declaration:
/// `option idempotency_level = NO_SIDE_EFFECTS` or `IDEMPOTENT`.
inline bool declared_idempotent(google::protobuf::MethodDescriptor const* method) {
  return method != nullptr && detail::idempotency_of(*method) != Idempotency::kUnknown;
}

/// Whether a request carries an idempotency key: a non-empty string field
/// named `request_id` (Google AIP-155), which lets the server deduplicate.
inline bool has_idempotency_key(google::protobuf::Message const& request) {
  return detail::request_id_set(request, detail::request_id_field_of(*request.GetDescriptor()));
}

/// The method of a full gRPC method name ("/pkg.Service/Method") in the
/// generated descriptor pool, or nullptr.
inline google::protobuf::MethodDescriptor const* find_method(std::string_view full_name) {
  if (full_name.size() < 3 || full_name[0] != '/') return nullptr;
  auto const slash = full_name.find('/', 1);
  if (slash == std::string_view::npos) return nullptr;
  auto const* service = google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
      std::string(full_name.substr(1, slash - 1)));
  return service == nullptr ? nullptr : service->FindMethodByName(std::string(full_name.substr(slash + 1)));
}

namespace detail {

// The server's pushback: nullopt = none sent; a negative value = "stop
// retrying" (sent negative or malformed).
inline std::optional<std::int64_t> parse_pushback(
    std::multimap<grpc::string_ref, grpc::string_ref> const& trailers) {
  auto it = trailers.find(kPushbackKey);
  if (it == trailers.end()) return std::nullopt;
  std::string_view const text(it->second.data(), it->second.size());
  if (text.empty()) return -1;
  std::int64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return -1;
    // Digits past the cap change nothing: stop growing before overflow.
    if (value <= kMaxServerRetryDelay.count()) value = value * 10 + (c - '0');
  }
  return std::min<std::int64_t>(value, kMaxServerRetryDelay.count());
}

// The delay a RetryInfo detail asks for, if the status carries one, clamped
// to [0, kMaxServerRetryDelay] (a negative or absurd Duration from the
// network must not overflow or wait forever).
inline std::optional<std::chrono::milliseconds> retry_info_delay(grpc::Status const& status) {
  if (status.error_details().empty()) return std::nullopt;
  auto info = Error::from(status).details<google::rpc::RetryInfo>();
  if (!info) return std::nullopt;
  std::int64_t const seconds = info->retry_delay().seconds();
  std::int32_t const nanos = info->retry_delay().nanos();
  std::int64_t const cap = kMaxServerRetryDelay.count();
  if (seconds < 0 || (seconds == 0 && nanos <= 0)) return std::chrono::milliseconds(0);
  if (seconds >= cap / 1000) return kMaxServerRetryDelay;
  std::int64_t const ms = seconds * 1000 + std::clamp(nanos, 0, 999999999) / 1000000;
  return std::chrono::milliseconds(std::min(ms, cap));
}

// The status a call ends with when user code called by the retry loop
// (on_retry, a clock, a random source, a scheduler) threw.
// What an exception says: its what(), or "unknown exception".
inline std::string what_of(std::exception_ptr error) {
  try {
    std::rethrow_exception(std::move(error));
  } catch (std::exception const& e) {
    return e.what();
  } catch (...) {
  }
  return "unknown exception";
}

inline grpc::Status callback_threw(char const* what, std::exception_ptr error) {
  return grpc::Status(grpc::StatusCode::UNKNOWN,
                      std::string("stubkit: ") + what + " threw: " + what_of(std::move(error)));
}

}  // namespace detail

/// Everything a retry loop needs besides the attempt itself.
struct RetryPlan {
  RetryPolicy policy = RetryPolicy::none();
  bool idempotent = false;
  std::optional<std::chrono::system_clock::time_point> deadline;  ///< bounds attempts and sleeps
  std::shared_ptr<RetryThrottle> throttle;                        ///< optional, shared per backend
  std::function<void(RetryEvent const&)> on_retry;                ///< optional observer
  RetryClock clock;
  /// Told of retry decisions and throttle changes (kRetry, kGiveUp,
  /// kThrottle), with `method` and `source`; optional.
  Observer* observer = nullptr;
  std::string_view method;
  std::string_view source;
  std::string_view trace_id;  ///< of the call, for its events; may be empty
};

/// One attempt's result as the loop needs it.
struct AttemptOutcome {
  grpc::Status status;
  std::optional<std::int64_t> pushback_ms;  ///< from grpc-retry-pushback-ms, see detail::parse_pushback
};

/// What to do after an attempt failed.
struct RetryDecision {
  bool retry = false;
  std::chrono::milliseconds delay{0};  ///< wait this long first, when retrying
  std::string stop_reason;             ///< why not, when not retrying
  /// Set when the call must end with this status rather than the attempt's
  /// (a callback of the plan threw).
  std::optional<grpc::Status> status;
};

/// The retry rules of one call, applied attempt by attempt: shared by the
/// blocking loop (run_with_retries) and the asynchronous interceptor.
/// Not thread-safe; one per call. It calls the plan's user code (clock,
/// random source, on_retry): its drivers call it with no lock held.
/// Exceptions from that code never escape: next_attempt_deadline returns
/// the status to end the call with, after_attempt a decision carrying it.
class RetryState {
 public:
  explicit RetryState(RetryPlan plan)
      : plan_(std::move(plan)), backoff_(plan_.policy, plan_.clock.random01) {}

  RetryPlan const& plan() const { return plan_; }

  /// The deadline of the next attempt: the call's, or sooner with a
  /// per-attempt timeout. Fails only when the plan's clock threw.
  std::variant<std::optional<std::chrono::system_clock::time_point>, grpc::Status> next_attempt_deadline() {
    auto const per_attempt = plan_.policy.per_attempt_timeout;
    auto deadline = plan_.deadline;
    own_deadline_ = false;
    if (per_attempt.count() > 0) {
      std::chrono::system_clock::time_point now;
      try {
        now = plan_.clock.read();
      } catch (...) {
        return detail::callback_threw("the retry clock", std::current_exception());
      }
      auto const mine = detail::saturating_add(now, per_attempt);
      if (!deadline || mine < *deadline) {
        deadline = mine;
        own_deadline_ = true;
      }
    }
    return deadline;
  }

  /// Records attempt `attempt`'s outcome and says whether to try again.
  RetryDecision after_attempt(int attempt, AttemptOutcome const& outcome) {
    RetryDecision decision;
    try {
      decision = decide(attempt, outcome);
    } catch (...) {
      decision = RetryDecision{false, {}, "a retry callback threw", {}};
      decision.status =
          detail::callback_threw("a retry callback (clock, random01 or on_retry)", std::current_exception());
    }
    if (plan_.observer != nullptr && (decision.retry || !outcome.status.ok() || decision.status)) {
      grpc::Status const& status = decision.status ? *decision.status : outcome.status;
      Event event = detail::event_of(decision.retry ? EventType::kRetry : EventType::kGiveUp, plan_.source,
                                     plan_.method, attempt, plan_.trace_id);
      std::string message;
      detail::set_status(event, status, message);
      event.delay = decision.delay;
      event.reason = decision.stop_reason;
      detail::notify(plan_.observer, event);
    }
    return decision;
  }

 private:
  // Feeds the throttle, telling the observer when it starts refusing
  // retries or allows them again.
  void feed_throttle(bool success) {
    RetryThrottle& throttle = *plan_.throttle;
    bool const changed = success ? throttle.on_success() : throttle.on_retryable_failure();
    if (!changed || plan_.observer == nullptr) return;
    Event event = detail::event_of(EventType::kThrottle, plan_.source, plan_.method, 0, plan_.trace_id);
    event.retries_allowed = success;  // a success can only open it, a failure only close it
    detail::notify(plan_.observer, event);
  }

  RetryDecision decide(int attempt, AttemptOutcome const& outcome) {
    auto const code = outcome.status.error_code();
    if (code == grpc::StatusCode::OK) {
      if (plan_.throttle) feed_throttle(true);
      return {};
    }
    auto stop = [](std::string reason) { return RetryDecision{false, {}, std::move(reason), {}}; };
    bool const retryable =
        plan_.policy.retryable(code) || (code == grpc::StatusCode::DEADLINE_EXCEEDED && own_deadline_);
    if (!retryable) return stop("status " + code_name(code) + " is not retryable");
    if (plan_.throttle) feed_throttle(false);
    if (!plan_.idempotent) return stop("the call is not idempotent and has no idempotency key");
    if (attempt >= plan_.policy.max_attempts) return stop("max_attempts reached");
    if (plan_.throttle && !plan_.throttle->allows_retry()) return stop("the retry throttle is closed");
    std::chrono::milliseconds delay;
    if (outcome.pushback_ms) {
      if (*outcome.pushback_ms < 0) return stop("the server asked not to retry");
      delay = std::chrono::milliseconds(*outcome.pushback_ms);
    } else if (auto asked = detail::retry_info_delay(outcome.status)) {
      delay = *asked;
    } else {
      delay = backoff_.next();
    }
    if (plan_.deadline && detail::saturating_add(plan_.clock.read(), delay) >= *plan_.deadline) {
      return stop("the deadline would pass before the next attempt");
    }
    if (plan_.on_retry) plan_.on_retry(RetryEvent{attempt, outcome.status, delay});
    return RetryDecision{true, delay, {}, {}};
  }

  RetryPlan plan_;
  Backoff backoff_;
  bool own_deadline_ = false;
};

/// Runs attempts until one succeeds or the plan says stop, sleeping through
/// the plan's clock. `attempt(n, deadline)` runs attempt n (1-based) with
/// that deadline (nullopt = none). Returns the last attempt's status.
template <typename Attempt>
grpc::Status run_with_retries(RetryPlan const& plan, Attempt&& attempt, RetryReport* report = nullptr) {
  RetryReport local;
  RetryReport& r = report != nullptr ? *report : local;
  r = RetryReport{};
  RetryState state(plan);
  for (int n = 1;; ++n) {
    auto deadline = state.next_attempt_deadline();
    if (auto* failed = std::get_if<grpc::Status>(&deadline)) {
      r.stop_reason = "the retry clock threw";
      return r.last_status = *failed;
    }
    AttemptOutcome const outcome =
        attempt(n, std::get<std::optional<std::chrono::system_clock::time_point>>(deadline));
    r.attempts = n;
    r.last_status = outcome.status;
    RetryDecision const decision = state.after_attempt(n, outcome);
    if (!decision.retry) {
      r.stop_reason = decision.stop_reason;
      if (decision.status) r.last_status = *decision.status;
      return r.last_status;
    }
    try {
      plan.clock.wait(decision.delay);
    } catch (...) {
      r.stop_reason = "the retry sleeper threw";
      return r.last_status = detail::callback_threw("the retry sleeper", std::current_exception());
    }
    r.total_delay += decision.delay;
  }
}

/// gRPC's native retries (A6) for `service` ("myservice.v1.UserService"), as
/// a service config JSON for the `grpc.service_config` channel argument
/// (`ChannelArguments::SetServiceConfigJSON`). Native retries cost nothing
/// when calls succeed, but work only on real (not in-process) channels, stop
/// once the server has sent response headers, and know nothing of
/// idempotency, RetryInfo or the caller's deadline beyond their own: use
/// them for idempotent services only, and never together with stubkit's
/// retries on one channel (see disable_native_retries). gRPC wants the
/// throttle's token ratio with at most three decimals: it is given in
/// thousandths (100 = 0.1).
inline std::string native_retry_service_config(std::string const& service, RetryPolicy const& policy,
                                               int max_tokens = 10, int token_ratio_thousandths = 100) {
  auto seconds = [](std::chrono::milliseconds d) {
    std::string ms = std::to_string(d.count() % 1000);
    return std::to_string(d.count() / 1000) + "." + std::string(3 - ms.size(), '0') + ms + "s";
  };
  std::string codes;
  for (auto code : policy.retryable_codes) {
    codes += (codes.empty() ? "\"" : ", \"") + code_name(code) + "\"";
  }
  std::string const name = "{\"methodConfig\": [{\"name\": [{\"service\": \"" + service + "\"}]";
  // One attempt (RetryPolicy::none()) means no retryPolicy at all: gRPC
  // accepts maxAttempts of 2 to 5 only, and 2 would retry.
  if (policy.max_attempts <= 1) return name + "}]}";
  // gRPC caps attempts at 5 whatever the config says.
  int const attempts = std::min(policy.max_attempts, 5);
  return name + ", \"retryPolicy\": {" + "\"maxAttempts\": " + std::to_string(attempts) +
         ", \"initialBackoff\": \"" +
         seconds(std::max(policy.initial_backoff, std::chrono::milliseconds(1))) + "\", \"maxBackoff\": \"" +
         seconds(std::max(policy.max_backoff, std::chrono::milliseconds(1))) +
         "\", \"backoffMultiplier\": " + std::to_string(policy.multiplier) + ", \"retryableStatusCodes\": [" +
         codes + "]}}], " + "\"retryThrottling\": {\"maxTokens\": " + std::to_string(max_tokens) +
         ", \"tokenRatio\": " + std::to_string(token_ratio_thousandths / 1000) + "." +
         std::string(3 - std::to_string(token_ratio_thousandths % 1000).size(), '0') +
         std::to_string(token_ratio_thousandths % 1000) + "}}";
}

/// Turns gRPC's native retries off on a channel that uses stubkit's retry
/// interceptor, so attempts are never multiplied (native retries are on by
/// default in gRPC 1.51, though they only act when a service config asks).
inline void disable_native_retries(grpc::ChannelArguments& args) { args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0); }

/// Options of one stubkit::call.
struct CallOptions {
  /// Time for the whole call, all attempts and waits included; zero = none.
  std::chrono::milliseconds timeout{0};
  /// An absolute deadline instead of (or with) `timeout`; the earlier wins.
  std::optional<std::chrono::system_clock::time_point> deadline;
  /// Retry policy; unset = a single attempt.
  std::optional<RetryPolicy> retry;
  /// Overrides idempotency detection (proto option or request_id).
  std::optional<bool> idempotent;
  /// The method's facts (method.hpp): its declared idempotency, its
  /// AIP-155 request_id and the name observers see. Generated clients set
  /// it; unset, they are found by the request and response types, which
  /// fails for two methods of the same types (then not retried).
  MethodInfo const* method = nullptr;
  /// Every attempt waits for the channel to be ready instead of failing at
  /// once while no backend is reachable (gRPC's wait_for_ready); bound it
  /// with `timeout` or `deadline`. Besides riding out a backend restart,
  /// a waiting call makes gRPC notice the new connection at once: a channel
  /// whose calls all fail fast only notices it on its 5 s backup poll (gRPC
  /// 1.51), so fail-fast retries can miss a backend that is already back.
  bool wait_for_ready = false;
  /// Metadata sent with every attempt. A `traceparent` here is the call's
  /// trace (trace.hpp); without one, tracing on adds a new one.
  std::vector<std::pair<std::string, std::string>> metadata;
  /// A throttle shared by the calls to one backend; optional.
  std::shared_ptr<RetryThrottle> throttle;
  /// Called before each retry; optional.
  std::function<void(RetryEvent const&)> on_retry;
  /// Filled with attempts, delays and the stop reason; optional.
  RetryReport* report = nullptr;
  /// Filled with the trailing metadata of the last attempt (e.g. which
  /// backend answered); optional.
  std::multimap<std::string, std::string>* trailers = nullptr;
  /// Clock, sleeper and randomness (tests inject them). The async call
  /// (async.hpp) does not sleep: it waits with `schedule`.
  RetryClock clock;
  /// Async calls only: arranges for `done` to run after `delay`, on any
  /// thread; empty = a grpc::Alarm. It is called on a gRPC thread, so it
  /// must not block: start a timer, or run `done` at once (tests do). A call
  /// cancelled while it waits ends at once; a later `done` then does nothing,
  /// as does a second one. Dropping `done` uncalled ends the call with
  /// UNKNOWN; so does a `schedule` that throws before its `done` ran.
  std::function<void(std::chrono::milliseconds delay, std::function<void()> done)> schedule;
  /// Told of the call, each attempt and each retry decision (source
  /// "call"); empty = the default observer (observe.hpp), if any.
  std::shared_ptr<Observer> observer;
};

namespace detail {

// What a call (stubkit::call, or the async call of async.hpp) works out
// before its first attempt. Not copyable or movable: the plan's
// string_views point into it.
struct CallSetup {
  RetryPlan plan;
  Observer* observer = nullptr;  ///< the options' or the default; null = none
  Event event;                   ///< method, source and trace id of the call's events
  std::optional<TraceContext> trace;
  std::string new_traceparent;  ///< sent with every attempt when the caller sent none
  std::chrono::steady_clock::time_point start;

  CallSetup() = default;
  CallSetup(CallSetup const&) = delete;
  CallSetup& operator=(CallSetup const&) = delete;
};

// Fills `setup` from `options` for a call of `method` and tells the
// observer the call started. Returns the error the call ends with instead
// when the options are unusable (the call then makes no attempt and reports
// nothing).
inline std::optional<Error> setup_call(CallOptions const& options, MethodInfo const& method,
                                       google::protobuf::Message const& request, std::string_view source,
                                       CallSetup& setup) {
  RetryPlan& plan = setup.plan;
  if (options.retry) {
    if (auto problem = options.retry->problem(); !problem.empty()) {
      return Error(grpc::StatusCode::INVALID_ARGUMENT, "invalid RetryPolicy: " + problem);
    }
    plan.policy = *options.retry;
  }
  plan.idempotent = options.idempotent ? *options.idempotent
                                       : method.declared_idempotent() ||
                                             detail::request_id_set(request, method.request_id_field);
  plan.deadline = options.deadline;
  if (options.timeout.count() > 0) {
    std::chrono::system_clock::time_point now;
    try {
      now = options.clock.read();
    } catch (...) {
      return Error::from(detail::callback_threw("the retry clock", std::current_exception()));
    }
    auto const by_timeout = detail::saturating_add(now, options.timeout);
    if (!plan.deadline || by_timeout < *plan.deadline) plan.deadline = by_timeout;
  }
  plan.throttle = options.throttle;
  plan.on_retry = options.on_retry;
  plan.clock = options.clock;
  // Every attempt carries the call's trace: the caller's traceparent, or a
  // new one when tracing is on.
  setup.trace = detail::outgoing_trace(options.metadata, &setup.new_traceparent);
  setup.observer = detail::resolve_observer(options.observer);
  if (setup.observer != nullptr) {
    setup.start = std::chrono::steady_clock::now();
    plan.observer = setup.observer;
    plan.method = setup.event.method = method.full_name;
    plan.source = setup.event.source = source;
    plan.trace_id = setup.event.trace_id = detail::trace_id_of(setup.trace);
    detail::notify(setup.observer, setup.event);
  }
  return std::nullopt;
}

// Readies attempt `n`'s context: deadline, wait_for_ready, metadata, trace
// and the attempt number; tells the observer the attempt starts. Returns
// when it started (for the attempt's latency).
inline std::chrono::steady_clock::time_point start_attempt(
    grpc::ClientContext& ctx, CallOptions const& options, CallSetup& setup, int n,
    std::optional<std::chrono::system_clock::time_point> deadline) {
  if (deadline) ctx.set_deadline(*deadline);
  if (options.wait_for_ready) ctx.set_wait_for_ready(true);
  for (auto const& [key, value] : options.metadata) ctx.AddMetadata(key, value);
  if (!setup.new_traceparent.empty()) ctx.AddMetadata(kTraceparentKey, setup.new_traceparent);
  if (n > 1) ctx.AddMetadata(kPreviousAttemptsKey, std::to_string(n - 1));
  if (setup.observer == nullptr) return {};
  setup.event.type = EventType::kAttemptStart;
  setup.event.attempt = n;
  detail::notify(setup.observer, setup.event);
  return std::chrono::steady_clock::now();
}

// What the retry loop needs of an attempt that ended with `status`: tells
// the observer, reads the pushback and copies the trailers the caller asked for.
inline AttemptOutcome end_attempt(grpc::ClientContext& ctx, grpc::Status status, CallOptions const& options,
                                  CallSetup const& setup, std::chrono::steady_clock::time_point started) {
  if (setup.observer != nullptr) {
    Event end = setup.event;
    end.type = EventType::kAttemptEnd;
    std::string const peer = ctx.peer();
    end.peer = peer;
    detail::notify_end(setup.observer, end, status, started);
  }
  AttemptOutcome outcome{std::move(status), std::nullopt};
  if (!outcome.status.ok()) outcome.pushback_ms = detail::parse_pushback(ctx.GetServerTrailingMetadata());
  if (options.trailers != nullptr) {
    options.trailers->clear();
    for (auto const& [key, value] : ctx.GetServerTrailingMetadata()) {
      options.trailers->emplace(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
    }
  }
  return outcome;
}

// Tells the observer the call ended.
inline void end_call(CallSetup const& setup, RetryReport const& report, grpc::Status const& status) {
  if (setup.observer == nullptr) return;
  Event end =
      detail::event_of(EventType::kCallEnd, setup.event.source, setup.event.method, 0, setup.event.trace_id);
  end.attempts = report.attempts;
  end.delay = report.total_delay;
  detail::notify_end(setup.observer, end, status, setup.start);
}

// One attempt of a unary call: sends the request with `ctx` and fills the
// response (cleared first).
using UnaryAttempt = absl::FunctionRef<grpc::Status(grpc::ClientContext& ctx)>;

// The blocking call of stubkit::call, with the stub's method behind
// `attempt`: one body for every method, so a program compiles it once per
// translation unit, not once per method.
inline grpc::Status run_unary(CallOptions const& options, MethodInfo const& method,
                              google::protobuf::Message const& request, UnaryAttempt attempt) {
  CallSetup setup;
  if (auto error = setup_call(options, method, request, "call", setup)) return error->to_grpc_status();
  auto attempt_n = [&](int n, std::optional<std::chrono::system_clock::time_point> deadline) {
    grpc::ClientContext ctx;
    auto const started = start_attempt(ctx, options, setup, n, deadline);
    grpc::Status status = attempt(ctx);
    return end_attempt(ctx, std::move(status), options, setup, started);
  };
  RetryReport local_report;
  RetryReport& report = options.report != nullptr ? *options.report : local_report;
  grpc::Status status = run_with_retries(setup.plan, attempt_n, &report);
  end_call(setup, report, status);
  return status;
}

}  // namespace detail

/// Calls a unary method of a generated stub (Stub or StubInterface) with a
/// deadline, metadata and the retry policy of `options`; returns the typed
/// result. Idempotency comes from the method's proto option
/// (NO_SIDE_EFFECTS/IDEMPOTENT), a non-empty `request_id` in the request, or
/// `options.idempotent`; a call that is not idempotent is attempted once.
/// The thread waits through every attempt and backoff; async.hpp has the
/// same call without a blocked thread.
template <typename Stub, typename Class, typename Request, typename Response>
Result<Response> call(Stub& stub,
                      grpc::Status (Class::*method)(grpc::ClientContext*, Request const&, Response*),
                      Request const& request, CallOptions const& options = {}) {
  static_assert(std::is_base_of_v<Class, Stub>, "the method must belong to the stub");
  Response response;
  // A named object, alive until run_unary returns: the attempt refers to it.
  auto attempt = [&stub, method, &request, &response](grpc::ClientContext& ctx) {
    response.Clear();
    return (stub.*method)(&ctx, request, &response);
  };
  grpc::Status const status =
      detail::run_unary(options, detail::method_of<Request, Response>(options.method), request, attempt);
  return to_result(status, std::move(response));
}

}  // namespace stubkit

#endif  // STUBKIT_RETRY_HPP
