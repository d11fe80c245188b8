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
#include <array>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
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

/// A budget of hedges shared by many calls (per backend, or per client):
/// every call earns `ratio` of a hedge, every hedge spends one, and no more
/// than `burst` can be saved up. So hedges stay below `ratio` of calls
/// (plus the burst) whatever happens: when a backend slows down as a whole,
/// every call passes its hedging delay, and without a budget every call
/// would send copies to the backend that is already slow. Thread-safe.
class HedgeBudget {
 public:
  explicit HedgeBudget(double ratio = 0.1, double burst = 10)
      : ratio_(ratio >= 0 && std::isfinite(ratio) ? ratio : 0),
        burst_(burst >= 1 && std::isfinite(burst) ? burst : 1),
        tokens_(burst_) {}

  /// The budget hedged calls share unless theirs is given: 10% of calls
  /// plus 10, for the whole process.
  static std::shared_ptr<HedgeBudget> const& process_default() {
    static auto const* const budget = new std::shared_ptr<HedgeBudget>(std::make_shared<HedgeBudget>());
    return *budget;
  }

  /// A call starts: it earns its share.
  void on_call() {
    std::lock_guard<std::mutex> lock(mu_);
    tokens_ = std::min(burst_, tokens_ + ratio_);
  }
  /// Takes a hedge from the budget; false when it is spent.
  bool try_spend() {
    std::lock_guard<std::mutex> lock(mu_);
    if (tokens_ < 1) return false;
    tokens_ -= 1;
    return true;
  }
  double tokens() const {
    std::lock_guard<std::mutex> lock(mu_);
    return tokens_;
  }

 private:
  double const ratio_;
  double const burst_;
  mutable std::mutex mu_;
  double tokens_;
};

/// Hedging (gRPC's A6 design) for calls that are safe to repeat: the first
/// attempt is sent, and while no answer has come after `hedging_delay`,
/// another, up to `max_attempts` in flight. The first OK (or a code not in
/// `non_fatal_codes`) is the call's result and the other attempts are
/// cancelled. An attempt that fails with a non-fatal code sends the next at
/// once. Hedges count against a RetryThrottle like retries, honour the
/// server's pushback, and the call's deadline bounds them all. A call that
/// is not idempotent (the same rules as retries) is sent once, unhedged.
/// Set it in CallOptions::hedging; a call has retries or hedging, not both.
struct HedgingPolicy {
  /// The most attempts in all, the first included (A6 allows 2 to 5).
  static constexpr int kMaxAttempts = 5;
  int max_attempts = 3;
  /// How long to wait for an answer before sending the next attempt; zero
  /// sends every attempt at once. About the method's p95 latency is a good
  /// start: then some 5% of calls send a second attempt.
  std::chrono::milliseconds hedging_delay{50};
  /// Codes that do not end the call: the next attempt is sent at once.
  std::vector<grpc::StatusCode> non_fatal_codes{grpc::StatusCode::UNAVAILABLE};
  /// Where the hedges come from; unset = HedgeBudget::process_default()
  /// (10% of calls). Give each backend or client its own to keep one
  /// slow backend from spending the others' hedges.
  std::shared_ptr<HedgeBudget> budget;

  /// Why the policy is unusable, or "" if it is fine.
  std::string problem() const {
    if (max_attempts < 2 || max_attempts > kMaxAttempts) {
      return "max_attempts must be from 2 to " + std::to_string(kMaxAttempts) + ", got " +
             std::to_string(max_attempts);
    }
    if (hedging_delay.count() < 0) return "hedging_delay must not be negative";
    if (non_fatal(grpc::StatusCode::OK)) return "non_fatal_codes must not hold OK";
    return "";
  }

  bool non_fatal(grpc::StatusCode code) const {
    return std::find(non_fatal_codes.begin(), non_fatal_codes.end(), code) != non_fatal_codes.end();
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
  /// A hedged call: the attempt whose status and response the call returned
  /// (1-based); 0 for a call without hedging, or one refused before any
  /// attempt. `attempts` counts every attempt sent.
  int winner = 0;
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

  /// The wait the server asked for before another attempt: its pushback,
  /// else the RetryInfo delay in the status; nullopt when it asked for none,
  /// negative when it asked for no further attempt.
  std::optional<std::chrono::milliseconds> server_wait() const {
    if (pushback_ms) return std::chrono::milliseconds(*pushback_ms);
    return detail::retry_info_delay(status);
  }
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

namespace detail {

// Feeds the plan's throttle, telling the observer when it starts refusing
// retries or allows them again.
inline void feed_throttle(RetryPlan const& plan, bool success) {
  RetryThrottle& throttle = *plan.throttle;
  bool const changed = success ? throttle.on_success() : throttle.on_retryable_failure();
  if (!changed || plan.observer == nullptr) return;
  Event event = detail::event_of(EventType::kThrottle, plan.source, plan.method, 0, plan.trace_id);
  event.retries_allowed = success;  // a success can only open it, a failure only close it
  detail::notify(plan.observer, event);
}

}  // namespace detail

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
  void feed_throttle(bool success) { detail::feed_throttle(plan_, success); }

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
    if (auto asked = outcome.server_wait()) {
      if (asked->count() < 0) return stop("the server asked not to retry");
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
  /// Hedging policy (HedgingPolicy), instead of `retry`: stubkit::call,
  /// async_call and the page calls of async listings hedge (docs/hedging.md).
  std::optional<HedgingPolicy> hedging;
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
  /// Called before each retry; optional. Not called for hedges (observers
  /// hear of those as `hedge` events).
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
  if (options.hedging) {
    if (auto problem = options.hedging->problem(); !problem.empty()) {
      return Error(grpc::StatusCode::INVALID_ARGUMENT, "invalid HedgingPolicy: " + problem);
    }
    if (options.retry) {
      return Error(grpc::StatusCode::INVALID_ARGUMENT,
                   "CallOptions: set retry or hedging, not both (a hedged call's attempts are its retries)");
    }
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

// Tells the observer attempt n ended.
inline void notify_attempt_end(grpc::ClientContext& ctx, grpc::Status const& status, CallSetup const& setup,
                               int n, std::chrono::steady_clock::time_point started) {
  if (setup.observer == nullptr) return;
  Event end = setup.event;
  end.type = EventType::kAttemptEnd;
  end.attempt = n;
  std::string const peer = ctx.peer();
  end.peer = peer;
  detail::notify_end(setup.observer, end, status, started);
}

// What the retry loop needs of an attempt that ended with `status`: tells
// the observer, reads the pushback and copies the trailers the caller asked for.
inline AttemptOutcome end_attempt(grpc::ClientContext& ctx, grpc::Status status, CallOptions const& options,
                                  CallSetup const& setup, std::chrono::steady_clock::time_point started) {
  notify_attempt_end(ctx, status, setup, setup.event.attempt, started);
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
inline void end_call(CallSetup const& setup, RetryReport const& report, grpc::Status const& status,
                     std::string_view peer = {}) {
  if (setup.observer == nullptr) return;
  Event end =
      detail::event_of(EventType::kCallEnd, setup.event.source, setup.event.method, 0, setup.event.trace_id);
  end.attempts = report.attempts;
  end.delay = report.total_delay;
  end.winner = report.winner;
  end.peer = peer;
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

// One attempt of a hedged call: attempt `n` (1-based) sends the request
// with `ctx` and fills the n-th response. Attempts run at the same time.
using HedgedAttempt = absl::FunctionRef<grpc::Status(grpc::ClientContext& ctx, int n)>;

// The one timer of hedged calls: runs a callback at a time, on a thread of
// its own (started at the first use, never stopped, so no static
// destructor runs while a call uses it). A call adds one entry at its start
// and cancels it when its first attempt ends, which is all that a call
// answered within its hedging delay costs: two short locks, no wake-up.
class HedgeTimer {
 public:
  struct Token {
    std::chrono::steady_clock::time_point at;
    std::uint64_t id = 0;
  };

  static HedgeTimer& instance() {
    static HedgeTimer* const timer = new HedgeTimer;  // never destroyed: see above
    return *timer;
  }

  // Runs `fire` (which must not throw) at `at`; id 0 when the timer thread
  // cannot be started.
  Token add(std::chrono::steady_clock::time_point at, std::function<void()> fire) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_) {
      try {
        std::thread([this] { loop(); }).detach();
      } catch (std::system_error const&) {
        return {};
      }
      started_ = true;
    }
    Token const token{at, ++last_id_};
    auto const it = queue_.emplace(std::make_pair(at, token.id), std::move(fire)).first;
    if (it == queue_.begin()) wake_.notify_one();
    return token;
  }

  // When it returns, the entry's callback either will never run or has
  // finished. Never call it from a callback.
  void cancel(Token token) {
    if (token.id == 0) return;
    std::unique_lock<std::mutex> lock(mu_);
    if (queue_.erase(std::make_pair(token.at, token.id)) > 0) return;
    finished_.wait(lock, [&] { return running_ != token.id; });
  }

 private:
  HedgeTimer() = default;

  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (queue_.empty()) {
        wake_.wait(lock);
        continue;
      }
      auto const first = queue_.begin();
      auto const at = first->first.first;  // a copy: cancel() may erase the entry while we wait
      if (at > std::chrono::steady_clock::now()) {
        wake_.wait_until(lock, at);
        continue;
      }
      std::function<void()> fire = std::move(first->second);
      running_ = first->first.second;
      queue_.erase(first);
      lock.unlock();
      fire();
      lock.lock();
      running_ = 0;
      finished_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable wake_;      // the loop: an earlier entry came
  std::condition_variable finished_;  // cancel: a callback finished
  std::map<std::pair<std::chrono::steady_clock::time_point, std::uint64_t>, std::function<void()>> queue_;
  std::uint64_t last_id_ = 0;
  std::uint64_t running_ = 0;  // the entry whose callback runs now
  bool started_ = false;
};

// The threads of hedged calls: a task runs on an idle worker, or on a new
// one when none is idle (tasks block in gRPC calls, so there is no cap:
// each hedged call needs at most max_attempts of them). A worker idle for
// 30 s ends. Reused threads matter: a new thread and its first gRPC call
// cost some 0.2 ms, which under load made hedges slower than the calls they
// hedge. Never destroyed, like the timer.
class HedgeWorkers {
 public:
  static HedgeWorkers& instance() {
    static HedgeWorkers* const workers = new HedgeWorkers;
    return *workers;
  }

  // Runs `task`, which must not throw. Throws std::system_error when it
  // needs a new thread and none can be made.
  void run(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (idle_ > 0) {
        tasks_.push_back(std::move(task));
        --idle_;  // claimed: idle_ counts waiting workers without a task queued for them
        work_.notify_one();
        return;
      }
    }
    std::thread([this, first = std::move(task)]() mutable { work(std::move(first)); }).detach();
  }

 private:
  HedgeWorkers() = default;

  void work(std::function<void()> task) {
    for (;;) {
      task();
      task = nullptr;
      std::unique_lock<std::mutex> lock(mu_);
      ++idle_;
      if (!work_.wait_for(lock, std::chrono::seconds(30), [&] { return !tasks_.empty(); })) {
        --idle_;
        return;
      }
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
  }

  std::mutex mu_;
  std::condition_variable work_;
  std::deque<std::function<void()>> tasks_;
  int idle_ = 0;
};

// The status of a hedged call whose step threw (the options' clock, or
// memory running out), noted in `report`; allocates nothing when memory is
// what ran out.
inline grpc::Status hedged_step_threw(RetryReport& report, std::exception_ptr error) noexcept {
  try {
    report.stop_reason = "a hedged call's step threw";
    return report.last_status = callback_threw("a hedged call's step (the retry clock?)", std::move(error));
  } catch (...) {
    return grpc::Status(grpc::StatusCode::UNKNOWN, std::string());
  }
}

// Tells the observer hedge `n` is sent, for `why`.
inline void notify_hedge(CallSetup& setup, int n, std::string const& why) {
  if (setup.observer == nullptr) return;
  Event event = setup.event;
  event.type = EventType::kHedge;
  event.attempt = n;
  event.reason = why;
  detail::notify(setup.observer, event);
}

// Tells the observer a hedged call gives up with attempt n's `status`.
inline void notify_hedged_give_up(CallSetup& setup, int n, grpc::Status const& status,
                                  std::string const& reason) {
  if (status.ok() || setup.observer == nullptr) return;
  Event event = setup.event;
  event.type = EventType::kGiveUp;
  event.attempt = n;
  std::string message;
  set_status(event, status, message);
  event.reason = reason;
  detail::notify(setup.observer, event);
}

// The rules of a hedged call, the same for the blocking call (HedgedCall)
// and the async one (async.hpp): how many attempts it may send, what an
// attempt's end means, and whether a further attempt may go now. Used by
// the one thread that coordinates the call at a time.
class HedgeRules {
 public:
  HedgeRules(HedgingPolicy const& policy, CallSetup& setup, RetryReport& report)
      : policy_(policy), setup_(setup), report_(report) {}

  // Before the first attempt: how many attempts the call may send (1 when
  // it is not safe to repeat). A call that may hedge earns its budget share.
  int begin() {
    most_ = setup_.plan.idempotent ? policy_.max_attempts : 1;
    if (most_ > 1) budget().on_call();
    return most_;
  }

  int sent() const { return sent_; }
  // The last attempt whose end was read (0: none).
  int last() const { return last_; }
  // Whether a further attempt may still be sent, now or later.
  bool can_send() const { return sent_ < most_ && more_; }
  // Whether every attempt sent has been read and none may follow.
  bool over() const { return sent_ == settled_ && !can_send(); }

  // Attempt n (sent() + 1) is sent.
  void on_sent(int n) {
    sent_ = n;
    report_.attempts = n;
    next_after_failure_ = false;
  }
  // Attempt n (sent() + 1) could not be sent: none after it will be.
  void on_not_sent(int n, std::string reason) {
    sent_ = n - 1;
    report_.attempts = n - 1;
    stop(std::move(reason));
  }
  // No further attempt will be sent, for `reason`.
  void stop(std::string reason) {
    more_ = false;
    report_.stop_reason = std::move(reason);
  }

  // Reads the end of attempt n (its outcome, from end_attempt). Returns the
  // reason the call ends with it ("" when it succeeded), or nothing when
  // the call goes on, maybe with the next attempt sooner (`next_at`,
  // `why_next`).
  std::optional<std::string> settle(int n, AttemptOutcome const& outcome,
                                    std::chrono::steady_clock::time_point& next_at, std::string& why_next) {
    ++settled_;
    report_.last_status = outcome.status;
    last_ = n;
    grpc::StatusCode const code = outcome.status.error_code();
    if (code == grpc::StatusCode::OK) {
      if (setup_.plan.throttle) feed_throttle(setup_.plan, true);
      return std::string();
    }
    if (!policy_.non_fatal(code)) return "status " + code_name(code) + " is fatal for hedging";
    if (setup_.plan.throttle) feed_throttle(setup_.plan, false);
    if (!setup_.plan.idempotent) return std::string("the call is not idempotent and has no idempotency key");
    // A non-fatal failure sends the next attempt at once, or after the
    // server's pushback; a pushback that says stop sends no more.
    why_next = "attempt " + std::to_string(n) + " failed with " + code_name(code);
    next_after_failure_ = true;
    std::chrono::milliseconds wait{0};
    if (auto asked = outcome.server_wait(); asked && asked->count() < 0) {
      stop("the server asked not to retry");
    } else if (asked) {
      wait = *asked;
      why_next += ", after the wait the server asked for";
    }
    next_at = after(wait);
    if (wait.count() > 0) pushed_back_until_ = std::max(pushed_back_until_, next_at);
    next_at = std::max(next_at, pushed_back_until_);  // an earlier pushback still holds
    if (more_ && wait.count() > 0 && setup_.plan.deadline &&
        saturating_add(setup_.plan.clock.read(), wait) >= *setup_.plan.deadline) {
      stop("the deadline would pass before the next attempt");
    }
    if (sent_ >= most_ && report_.stop_reason.empty()) report_.stop_reason = "max_attempts reached";
    return std::nullopt;
  }

  // Why no further attempt may be sent now, or "" (then one hedge of the
  // budget is spent on it).
  std::string refused() const {
    if (setup_.plan.throttle && !setup_.plan.throttle->allows_retry()) return "the retry throttle is closed";
    if (setup_.plan.deadline && setup_.plan.clock.read() >= *setup_.plan.deadline)
      return "the deadline passed";
    // Only hedges for slowness spend the budget; an attempt after a failure
    // is the throttle's to refuse.
    if (!next_after_failure_ && !budget().try_spend()) return "the hedging budget is spent";
    return "";
  }

  // Now plus `delay`, capped so that no delay overflows the clock.
  static std::chrono::steady_clock::time_point after(std::chrono::milliseconds delay) {
    return std::chrono::steady_clock::now() +
           std::min<std::chrono::milliseconds>(delay, std::chrono::hours(24 * 365));
  }

 private:
  HedgeBudget& budget() const { return policy_.budget ? *policy_.budget : *HedgeBudget::process_default(); }

  HedgingPolicy const& policy_;
  CallSetup& setup_;
  RetryReport& report_;
  int most_ = 1;                                               // attempts this call may send
  int sent_ = 0;                                               // attempts started
  int settled_ = 0;                                            // attempts whose end was read
  int last_ = 0;                                               // the last attempt whose end was read
  bool more_ = true;                                           // hedges may still be sent
  std::chrono::steady_clock::time_point pushed_back_until_{};  // no attempt before this
  bool next_after_failure_ = false;  // the next attempt replaces a failed one (else: hedges a slow one)
};

// The blocking hedged call of stubkit::call (HedgingPolicy).
//
// Threads. The first attempt runs on the caller's thread. A call answered
// within the hedging delay uses no other thread; otherwise the hedge timer
// has a coordinator take over, on a worker (HedgeWorkers). Whoever
// coordinates (the caller's thread after its attempt, or the coordinator)
// starts further attempts, each on a worker, reads their ends in the order
// they ended, tells the observer and the throttle, and at the end cancels
// the attempts in flight and waits until each has ended. The caller waits
// for the coordinator, so no worker runs for the call once run() returns,
// also when it unwinds: the attempts use the caller's stub, request and
// responses. A worker's last touch of the call is the notify under mu_ that
// says it is done. One thread coordinates at a time: the caller until it
// starts waiting for a coordinator, which the timer starts only while the
// caller's attempt is running (checked under mu_).
// gRPC objects (the contexts) are created by the coordinating thread and
// destroyed by the caller's.
//
// Time. The hedging delay is waited on the steady clock; the call's
// deadline is each attempt's deadline, and the options' clock decides
// whether it has passed before a hedge is sent.
class HedgedCall {
 public:
  HedgedCall(CallOptions const& options, CallSetup& setup, HedgedAttempt attempt, RetryReport& report)
      : options_(options),
        policy_(*options.hedging),
        setup_(setup),
        attempt_(attempt),
        report_(report),
        rules_(policy_, setup, report) {}
  HedgedCall(HedgedCall const&) = delete;
  HedgedCall& operator=(HedgedCall const&) = delete;
  ~HedgedCall() {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !coordinator_started_ || coordinator_done_; });
    }
    stop_all();
  }

  grpc::Status run() {
    int const most = rules_.begin();
    start(1, "");
    HedgeTimer::Token timer;
    if (most > 1 && policy_.hedging_delay.count() == 0) {
      fire();  // every attempt at once
    } else if (most > 1) {
      try {
        timer = HedgeTimer::instance().add(HedgeRules::after(policy_.hedging_delay), [this] { fire(); });
      } catch (...) {  // no memory or no timer thread: the first attempt goes on alone
        timer = {};
      }
    }
    grpc::Status status = run_attempt(1);
    HedgeTimer::instance().cancel(timer);
    bool coordinated = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      end_of(1, std::move(status));
      coordinated = coordinator_started_;
    }
    cv_.notify_all();
    if (coordinated) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return coordinator_done_; });
      return result_;
    }
    return coordinate(std::chrono::steady_clock::now(), "");
  }

 private:
  struct Slot {
    std::unique_ptr<grpc::ClientContext> ctx;
    std::chrono::steady_clock::time_point started;
    grpc::Status status;   // under mu_ until the attempt has ended
    bool running = false;  // under mu_
    bool settled = false;  // its end was read and told
  };

  // On the timer's thread (or the caller's, for a zero delay): the first
  // attempt has no answer in time; a coordinator takes over.
  // The caller reads coordinator_started_ only once this has returned
  // (HedgeTimer::cancel waits for it), so it is set before the worker runs
  // and taken back if none can.
  void fire() noexcept {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!slots_[0].running) return;  // it ended meanwhile: the caller coordinates
      coordinator_started_ = true;
    }
    try {
      HedgeWorkers::instance().run([this] { coordinate_on_worker(); });
    } catch (...) {  // no thread: the first attempt goes on alone
      std::lock_guard<std::mutex> lock(mu_);
      coordinator_started_ = false;
    }
  }

  void coordinate_on_worker() noexcept {
    try {
      result_ = coordinate(std::chrono::steady_clock::now(), "no answer within hedging_delay");
    } catch (...) {  // the options' clock threw, or memory ran out
      result_ = hedged_step_threw(report_, std::current_exception());
      stop_all();
    }
    std::lock_guard<std::mutex> lock(mu_);
    coordinator_done_ = true;
    cv_.notify_all();  // the last touch of this call
  }

  // Runs the call from here to its end: reads attempts' ends, sends
  // attempts when due (the next one at `next_at`), decides. Returns the
  // call's status, every attempt ended.
  grpc::Status coordinate(std::chrono::steady_clock::time_point next_at, std::string why_next) {
    for (;;) {
      for (int n = take_ended(); n != 0; n = take_ended()) {
        if (auto done = settle(n, next_at, why_next)) return finish(n, *done);
      }
      if (rules_.over()) return finish(rules_.last(), report_.stop_reason);  // nothing left
      bool const can_send = rules_.can_send();
      if (can_send && std::chrono::steady_clock::now() >= next_at) {
        if (auto refused = rules_.refused(); !refused.empty()) {
          rules_.stop(refused);
        } else {
          start(rules_.sent() + 1, why_next);
          next_at = HedgeRules::after(policy_.hedging_delay);
          why_next = "no answer within hedging_delay";
        }
        continue;
      }
      std::unique_lock<std::mutex> lock(mu_);
      auto const ended = [&] { return ended_count_ > taken_; };
      if (can_send) {
        cv_.wait_until(lock, next_at, ended);
      } else {
        cv_.wait(lock, ended);
      }
    }
  }

  // Reads attempt n's end; returns the reason the call ends with it, or
  // nothing when the call goes on (then maybe with the next attempt sooner).
  std::optional<std::string> settle(int n, std::chrono::steady_clock::time_point& next_at,
                                    std::string& why_next) {
    Slot& slot = slots_[n - 1];
    slot.settled = true;
    setup_.event.attempt = n;
    AttemptOutcome const outcome = end_attempt(*slot.ctx, slot.status, options_, setup_, slot.started);
    return rules_.settle(n, outcome, next_at, why_next);
  }

  // Readies attempt n and, past the first, starts it on a worker. When no
  // worker can be had, the attempt is never sent: the attempts in flight
  // go on and no more are sent.
  void start(int n, std::string const& why) {
    Slot& slot = slots_[n - 1];
    slot.ctx = std::make_unique<grpc::ClientContext>();
    if (n > 1) notify_hedge(setup_, n, why);
    slot.started = start_attempt(*slot.ctx, options_, setup_, n, setup_.plan.deadline);
    {
      std::lock_guard<std::mutex> lock(mu_);
      slot.running = true;
    }
    rules_.on_sent(n);
    if (n == 1) return;  // the caller runs it
    try {
      HedgeWorkers::instance().run([this, n] {
        grpc::Status status = run_attempt(n);
        std::lock_guard<std::mutex> lock(mu_);
        end_of(n, std::move(status));
        cv_.notify_all();  // the last touch of this call
      });
    } catch (...) {
      // No thread (or no memory) for it: it was never sent. The attempts in
      // flight go on; no more are sent.
      {
        std::lock_guard<std::mutex> lock(mu_);
        slot.running = false;
      }
      rules_.on_not_sent(n, "no thread for a hedged attempt");
      notify_attempt_end(*slot.ctx, grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, report_.stop_reason),
                         setup_, n, slot.started);
    }
  }

  grpc::Status run_attempt(int n) noexcept {
    try {
      return attempt_(*slots_[n - 1].ctx, n);
    } catch (...) {
      try {
        return callback_threw("the stub's method", std::current_exception());
      } catch (...) {  // no memory for the message
        return grpc::Status(grpc::StatusCode::UNKNOWN, std::string());
      }
    }
  }

  // Records attempt n's end; mu_ held.
  void end_of(int n, grpc::Status status) {
    slots_[n - 1].status = std::move(status);
    slots_[n - 1].running = false;
    ended_[ended_count_++] = n;
  }

  // The next attempt that ended and is not read yet, in the order they
  // ended; 0 when none.
  int take_ended() {
    std::lock_guard<std::mutex> lock(mu_);
    return ended_count_ > taken_ ? ended_[taken_++] : 0;
  }

  // Ends the call with attempt n's status: cancels the others and waits
  // for them.
  grpc::Status finish(int n, std::string reason) {
    report_.winner = n;
    report_.stop_reason = std::move(reason);
    grpc::Status status =
        n > 0 ? report_.last_status : grpc::Status(grpc::StatusCode::INTERNAL, "stubkit: no attempt");
    stop_all();
    for (int i = 1; i <= rules_.sent(); ++i) {
      Slot& slot = slots_[i - 1];
      if (!slot.settled) notify_attempt_end(*slot.ctx, slot.status, setup_, i, slot.started);
      slot.settled = true;
    }
    notify_hedged_give_up(setup_, n, status, report_.stop_reason);
    return status;
  }

  // Cancels the attempts in flight and waits until every one has ended.
  void stop_all() noexcept {
    std::array<grpc::ClientContext*, HedgingPolicy::kMaxAttempts> running{};
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (std::size_t i = 0; i < slots_.size(); ++i)
        running[i] = slots_[i].running ? slots_[i].ctx.get() : nullptr;
    }
    for (grpc::ClientContext* ctx : running) {  // outside the lock: contexts live until the caller's return
      if (ctx != nullptr) ctx->TryCancel();
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] {
      return std::none_of(slots_.begin(), slots_.end(), [](Slot const& slot) { return slot.running; });
    });
  }

  CallOptions const& options_;
  HedgingPolicy const& policy_;
  CallSetup& setup_;
  HedgedAttempt attempt_;
  RetryReport& report_;
  std::array<Slot, HedgingPolicy::kMaxAttempts> slots_;
  HedgeRules rules_;     // used by the coordinating thread
  grpc::Status result_;  // the coordinator's, read once it is done

  std::mutex mu_;
  std::condition_variable cv_;
  bool coordinator_started_ = false;
  bool coordinator_done_ = false;
  std::array<int, HedgingPolicy::kMaxAttempts> ended_{};  // attempts in the order they ended
  int ended_count_ = 0;
  int taken_ = 0;  // of ended_, read by the coordinating thread
};

// The blocking hedged call of stubkit::call; the winner's response is
// report.winner's (0: none).
inline grpc::Status run_hedged(CallOptions const& options, MethodInfo const& method,
                               google::protobuf::Message const& request, HedgedAttempt attempt, int& winner) {
  CallSetup setup;
  winner = 0;
  if (auto error = setup_call(options, method, request, "call", setup)) return error->to_grpc_status();
  RetryReport local_report;
  RetryReport& report = options.report != nullptr ? *options.report : local_report;
  report = RetryReport{};
  grpc::Status status;
  try {
    HedgedCall call(options, setup, attempt, report);  // its destructor cancels and joins every attempt
    status = call.run();
  } catch (...) {
    status = hedged_step_threw(report, std::current_exception());
  }
  winner = report.winner;
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
  MethodInfo const& info = detail::method_of<Request, Response>(options.method);
  if (options.hedging) {
    std::array<Response, HedgingPolicy::kMaxAttempts> responses;  // one per attempt: they run at once
    auto attempt = [&stub, method, &request, &responses](grpc::ClientContext& ctx, int n) {
      return (stub.*method)(&ctx, request, &responses[n - 1]);
    };
    int winner = 0;
    grpc::Status const status = detail::run_hedged(options, info, request, attempt, winner);
    return to_result(status, winner > 0 ? std::move(responses[winner - 1]) : Response());
  }
  Response response;
  // A named object, alive until run_unary returns: the attempt refers to it.
  auto attempt = [&stub, method, &request, &response](grpc::ClientContext& ctx) {
    response.Clear();
    return (stub.*method)(&ctx, request, &response);
  };
  grpc::Status const status = detail::run_unary(options, info, request, attempt);
  return to_result(status, std::move(response));
}

}  // namespace stubkit

#endif  // STUBKIT_RETRY_HPP
