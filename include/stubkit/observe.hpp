// Observing what stubkit does: one seam, stubkit::Observer, receives an
// Event for every call, attempt, retry decision, throttle change, page and
// stream that stubkit drives.
//
//   struct Counter : stubkit::Observer {
//     void on_event(stubkit::Event const& e) override {
//       if (e.type == stubkit::EventType::kRetry) ++retries;
//     }
//     std::atomic<int> retries{0};
//   };
//   auto counter = std::make_shared<Counter>();
//   stubkit::CallOptions options;
//   options.observer = counter;                    // this call only
//   stubkit::set_default_observer(counter);       // or every call without its own
//
// Where events come from (the `source` of each):
//   "call"      stubkit::call: call, attempts, retry decisions
//   "channel"   the retry interceptor (make_channel, retry_interceptor,
//               observe_interceptor): every call on the channel, with the
//               attempts and decisions of those it retries
//   "paginate"  paginate: one event per page
//   "stream"    read_stream, write_stream, open_session: open and end
//   "watch"     UserClient::watch_users_resumable: connections and resumes
// stubkit::call on a channel with an observing interceptor reports both:
// its logical call (source "call") and each attempt's wire call ("channel").
//
// Rules. An observer is called synchronously, on the thread doing the work
// (a gRPC thread for calls of the callback API), with no stubkit lock held;
// it must be thread-safe and quick, and must not block. The string_views of
// an Event live only during on_event: copy what you keep. An observer that
// throws never breaks the call: the exception is swallowed, counted
// (observer_failures()) and reported once on stderr.
//
// Without an observer the cost is a null check per event site: nothing is
// formatted or allocated.
//
// Logs without code: set STUBKIT_LOG=rpc in the environment and the default
// observer is a LogObserver writing one logfmt line per event to stderr
// (read once, at the first call that looks for a default observer).
#ifndef STUBKIT_OBSERVE_HPP
#define STUBKIT_OBSERVE_HPP

#include <grpcpp/support/status.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "stubkit/status.hpp"

namespace stubkit {

/// What an Event reports.
enum class EventType {
  kCallStart,     ///< a call begins (before its first attempt)
  kCallEnd,       ///< a call ended: code, message, latency, attempts, delay (waits in all)
  kAttemptStart,  ///< attempt `attempt` (1-based) is sent
  kAttemptEnd,    ///< it ended: code, message, latency, peer
  kRetry,         ///< attempt `attempt` failed with `code`; the next follows after `delay`
  kGiveUp,        ///< attempt `attempt` failed with `code` and is the last: `reason` says why
  kHedge,         ///< attempt `attempt` of a hedged call is sent, others in flight: `reason` says why
  kThrottle,      ///< the retry throttle started refusing retries, or allowing them again: `retries_allowed`
  kPage,          ///< page `page` of a listing arrived (or failed): items, has_next_page, latency
  kStreamOpen,    ///< a stream was opened (for a watch: connection `attempt`)
  kStreamResume,  ///< a resumable watch reconnects after `code`, from `sequence`, after `delay`
  kStreamEnd,     ///< a stream ended: code, message, items (messages read or written), latency
};

/// The dotted name of an event type, as logs print it ("attempt.end").
inline char const* event_name(EventType type) {
  switch (type) {
    case EventType::kCallStart:
      return "call.start";
    case EventType::kCallEnd:
      return "call.end";
    case EventType::kAttemptStart:
      return "attempt.start";
    case EventType::kAttemptEnd:
      return "attempt.end";
    case EventType::kRetry:
      return "retry";
    case EventType::kGiveUp:
      return "give_up";
    case EventType::kHedge:
      return "hedge";
    case EventType::kThrottle:
      return "throttle";
    case EventType::kPage:
      return "page";
    case EventType::kStreamOpen:
      return "stream.open";
    case EventType::kStreamResume:
      return "stream.resume";
    case EventType::kStreamEnd:
      return "stream.end";
  }
  return "unknown";
}

/// One thing that happened. Fields a type does not use keep their defaults.
/// The string_views are valid during Observer::on_event only.
struct Event {
  EventType type = EventType::kCallStart;
  std::string_view source;  ///< "call", "channel", "paginate", "stream" or "watch"
  /// The full method name, "/myservice.v1.UserService/GetUser"; for a
  /// stubkit::call whose request and response types name no single method
  /// of their file, "(pkg.Request)->(pkg.Response)".
  std::string_view method;
  /// The W3C trace id of the call (32 hex digits) when it carries a
  /// traceparent or tracing is on (trace.hpp); empty otherwise.
  std::string_view trace_id;
  int attempt = 0;  ///< attempt events, kRetry, kGiveUp, kStreamOpen of a watch
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string_view message;             ///< the status message when code is not OK
  std::string_view peer;                ///< kAttemptEnd, kCallEnd of a channel call: who answered, when known
  std::chrono::nanoseconds latency{0};  ///< *End, kPage: time since the matching start
  std::chrono::milliseconds delay{
      0};                       ///< kRetry, kStreamResume: wait before the next; kCallEnd: waits in all
  std::string_view reason;      ///< kGiveUp: why no further attempt; kHedge: why this one now
  int attempts = 0;             ///< kCallEnd: attempts made; kStreamEnd of a watch: connections made
  int winner = 0;               ///< kCallEnd of a hedged call: the attempt whose result the call returned
  bool retries_allowed = true;  ///< kThrottle
  std::int64_t page = 0;        ///< kPage: 1-based
  std::int64_t items = 0;       ///< kPage: items in it; kStreamEnd: messages read or written
  bool has_next_page = false;   ///< kPage
  std::int64_t sequence = 0;    ///< kStreamResume: the resume point
};

/// Receives stubkit's events; see the rules at the top of this file.
class Observer {
 public:
  virtual ~Observer() = default;
  virtual void on_event(Event const& event) = 0;
};

/// An observer that calls `fn`.
inline std::shared_ptr<Observer> observer_from(std::function<void(Event const&)> fn) {
  struct FunctionObserver final : Observer {
    explicit FunctionObserver(std::function<void(Event const&)> f) : fn(std::move(f)) {}
    void on_event(Event const& event) override {
      if (fn) fn(event);
    }
    std::function<void(Event const&)> fn;
  };
  return std::make_shared<FunctionObserver>(std::move(fn));
}

/// An observer that hands every event to each of `observers` in order (one
/// that throws does not keep the event from the others).
inline std::shared_ptr<Observer> fan_out(std::vector<std::shared_ptr<Observer>> observers);

namespace detail {

inline std::atomic<std::uint64_t>& observer_failure_count() {
  static std::atomic<std::uint64_t> count{0};
  return count;
}

// Calls the observer, if any; whatever it throws stays here.
inline void notify(Observer* observer, Event const& event) noexcept {
  if (observer == nullptr) return;
  try {
    observer->on_event(event);
  } catch (...) {
    if (observer_failure_count().fetch_add(1, std::memory_order_relaxed) == 0) {
      std::string what = "unknown exception";
      try {
        throw;
      } catch (std::exception const& e) {
        what = e.what();
      } catch (...) {
      }
      std::fprintf(stderr,
                   "stubkit: an observer threw on %s (%s); the event was dropped and the call went on\n",
                   event_name(event.type), what.c_str());
    }
  }
}

// An event of `type` from `source` about `method`.
inline Event event_of(EventType type, std::string_view source, std::string_view method, int attempt = 0,
                      std::string_view trace_id = {}) {
  Event event;
  event.type = type;
  event.source = source;
  event.method = method;
  event.attempt = attempt;
  event.trace_id = trace_id;
  return event;
}

// The time since `start`, for latencies.
inline std::chrono::nanoseconds since(std::chrono::steady_clock::time_point start) {
  return std::chrono::steady_clock::now() - start;
}

// Puts `status` into `event`. grpc::Status returns its message by value:
// `keep` holds it while the event is in use.
inline void set_status(Event& event, grpc::Status const& status, std::string& keep) {
  event.code = status.error_code();
  keep = status.error_message();
  event.message = keep;
}

// Tells `observer` that what `event` reports (a call, an attempt, a
// stream) ended with `status`, `start` being when it began.
inline void notify_end(Observer* observer, Event event, grpc::Status const& status,
                       std::chrono::steady_clock::time_point start) {
  std::string message;
  set_status(event, status, message);
  event.latency = since(start);
  notify(observer, event);
}

}  // namespace detail

/// How many times an observer threw (process-wide); the exceptions were
/// swallowed.
inline std::uint64_t observer_failures() {
  return detail::observer_failure_count().load(std::memory_order_relaxed);
}

inline std::shared_ptr<Observer> fan_out(std::vector<std::shared_ptr<Observer>> observers) {
  struct FanOut final : Observer {
    explicit FanOut(std::vector<std::shared_ptr<Observer>> o) : observers(std::move(o)) {}
    void on_event(Event const& event) override {
      for (auto const& observer : observers) detail::notify(observer.get(), event);
    }
    std::vector<std::shared_ptr<Observer>> observers;
  };
  return std::make_shared<FanOut>(std::move(observers));
}

/// Options of a LogObserver.
struct LogOptions {
  /// Receives each line, without its newline; empty = standard error (one
  /// write per line, so lines of concurrent calls do not interleave).
  std::function<void(std::string_view line)> sink;
  /// Values longer than this many bytes are cut and end in "..." (the
  /// timestamp never is).
  std::size_t max_value = 200;
  /// Start each line with ts=<UTC time, RFC 3339 with milliseconds>.
  bool timestamps = true;
};

/// Writes one logfmt line per event:
///
///   ts=2026-12-01T10:00:00.123Z event=retry source=call method=/myservice.v1.UserService/GetUser
///     attempt=1 code=UNAVAILABLE msg="backend down" delay_ms=87
///
/// Keys, in this order, each only when it applies: ts, event, source,
/// method, trace_id, attempt, code, msg, peer, latency_ms (3 decimals), delay_ms,
/// attempts, winner, reason, retries_allowed, page, items, next_page, sequence.
/// Values with spaces, quotes, '=' or control characters are quoted with
/// backslash escapes. Nothing of a request, a response, metadata or a page
/// token is in an event, so none of it is logged; status messages are,
/// cut to `max_value`. Thread-safe.
class LogObserver final : public Observer {
 public:
  explicit LogObserver(LogOptions options = {}) : options_(std::move(options)) {}

  void on_event(Event const& e) override {
    std::string line;
    line.reserve(256);
    if (options_.timestamps) put("ts", timestamp(), &line, false);
    put("event", event_name(e.type), &line);
    put("source", e.source, &line);
    put("method", e.method, &line);
    if (!e.trace_id.empty()) put("trace_id", e.trace_id, &line);
    bool const ends = e.type == EventType::kCallEnd || e.type == EventType::kAttemptEnd ||
                      e.type == EventType::kStreamEnd || e.type == EventType::kPage;
    bool const has_code = ends || e.type == EventType::kRetry || e.type == EventType::kGiveUp ||
                          e.type == EventType::kStreamResume;
    if (e.attempt > 0) put("attempt", std::to_string(e.attempt), &line);
    if (has_code) put("code", code_name(e.code), &line);
    if (has_code && e.code != grpc::StatusCode::OK) put("msg", e.message, &line);
    if (!e.peer.empty()) put("peer", e.peer, &line);
    if (ends) put("latency_ms", millis(e.latency), &line);
    if (e.type == EventType::kRetry || e.type == EventType::kStreamResume ||
        (e.type == EventType::kCallEnd && e.delay.count() > 0)) {
      put("delay_ms", std::to_string(e.delay.count()), &line);
    }
    if ((e.type == EventType::kCallEnd || e.type == EventType::kStreamEnd) && e.attempts > 0) {
      put("attempts", std::to_string(e.attempts), &line);
    }
    if (e.type == EventType::kCallEnd && e.winner > 0) put("winner", std::to_string(e.winner), &line);
    if (e.type == EventType::kGiveUp || e.type == EventType::kHedge) put("reason", e.reason, &line);
    if (e.type == EventType::kThrottle) put("retries_allowed", e.retries_allowed ? "true" : "false", &line);
    if (e.type == EventType::kPage) {
      put("page", std::to_string(e.page), &line);
      put("items", std::to_string(e.items), &line);
      put("next_page", e.has_next_page ? "true" : "false", &line);
    }
    if (e.type == EventType::kStreamEnd) put("items", std::to_string(e.items), &line);
    if (e.type == EventType::kStreamResume) put("sequence", std::to_string(e.sequence), &line);
    if (options_.sink) {
      options_.sink(line);
    } else {
      line.push_back('\n');
      std::fwrite(line.data(), 1, line.size(), stderr);
    }
  }

 private:
  void put(char const* key, std::string_view value, std::string* line, bool may_cut = true) const {
    if (!line->empty()) line->push_back(' ');
    line->append(key);
    line->push_back('=');
    bool const cut = may_cut && value.size() > options_.max_value;
    if (cut) value = value.substr(0, options_.max_value);
    bool quote = value.empty() || cut;
    for (char c : value) {
      if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20 ||
          c == 0x7f) {
        quote = true;
        break;
      }
    }
    if (!quote) {
      line->append(value);
      return;
    }
    line->push_back('"');
    for (char c : value) {
      switch (c) {
        case '"':
          line->append("\\\"");
          break;
        case '\\':
          line->append("\\\\");
          break;
        case '\n':
          line->append("\\n");
          break;
        case '\r':
          line->append("\\r");
          break;
        case '\t':
          line->append("\\t");
          break;
        default:
          if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
            char hex[8];
            std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned char>(c));
            line->append(hex);
          } else {
            line->push_back(c);
          }
      }
    }
    if (cut) line->append("...");
    line->push_back('"');
  }

  static std::string millis(std::chrono::nanoseconds latency) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.3f", static_cast<double>(latency.count()) / 1e6);
    return buffer;
  }

  static std::string timestamp() {
    auto const now = std::chrono::system_clock::now();
    std::time_t const seconds = std::chrono::system_clock::to_time_t(now);
    auto const ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    std::tm utc{};
    gmtime_r(&seconds, &utc);
    char buffer[64];
    std::size_t const n = std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%S", &utc);
    std::snprintf(buffer + n, sizeof buffer - n, ".%03dZ", static_cast<int>(ms));
    return buffer;
  }

  LogOptions const options_;
};

namespace detail {

// What STUBKIT_LOG asks for: "rpc" = a LogObserver to stderr; unset or
// empty = nothing. Another value is reported on stderr once and ignored.
inline std::shared_ptr<Observer> observer_from_env(char const* value) {
  if (value == nullptr || *value == '\0') return nullptr;
  if (std::string_view(value) == "rpc") return std::make_shared<LogObserver>();
  std::fprintf(stderr, "stubkit: STUBKIT_LOG=%s is not understood (expected 'rpc'); logging stays off\n",
               value);
  return nullptr;
}

// The default observer. Observers once set stay alive until the process
// exits (a call may still be using one), so reading the default is one
// atomic load.
struct DefaultObserver {
  std::atomic<Observer*> current{nullptr};
  std::mutex mu;
  std::vector<std::shared_ptr<Observer>> kept;  // every observer ever set

  DefaultObserver() {
    if (auto from_env = observer_from_env(std::getenv("STUBKIT_LOG"))) {
      current.store(from_env.get(), std::memory_order_release);
      kept.push_back(std::move(from_env));
    }
  }

  static DefaultObserver& instance() {
    static DefaultObserver* const state = new DefaultObserver();  // never destroyed: used until exit
    return *state;
  }
};

}  // namespace detail

/// The observer of everything that has none of its own: set from
/// STUBKIT_LOG at first use, replaced by set_default_observer; may be null.
inline Observer* default_observer() {
  return detail::DefaultObserver::instance().current.load(std::memory_order_acquire);
}

/// Makes `observer` the default (nullptr = none). It is kept alive until the
/// process exits, since calls in flight may still use it.
inline void set_default_observer(std::shared_ptr<Observer> observer) {
  auto& state = detail::DefaultObserver::instance();
  std::lock_guard<std::mutex> lock(state.mu);
  state.current.store(observer.get(), std::memory_order_release);
  if (observer) state.kept.push_back(std::move(observer));
}

namespace detail {

// The observer a feature uses: its own, else the default.
inline Observer* resolve_observer(std::shared_ptr<Observer> const& own) {
  return own ? own.get() : default_observer();
}

// The same, for a feature that may outlive the options naming `own`: the
// default is never destroyed, so it is held without owning it.
inline std::shared_ptr<Observer> shared_observer(std::shared_ptr<Observer> const& own) {
  if (own) return own;
  return std::shared_ptr<Observer>(std::shared_ptr<Observer>(), default_observer());
}

}  // namespace detail

}  // namespace stubkit

#endif  // STUBKIT_OBSERVE_HPP
