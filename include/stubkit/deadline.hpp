// Deadlines that travel: from a server handler to the downstream calls it
// makes (keeping a reserve for its own work), and across a group of client
// calls that share one budget.
//
//   // In a handler: downstream gets the caller's remaining time minus 100 ms,
//   // and is cancelled when the caller cancels.
//   auto child = stubkit::child_context(*server_ctx);
//   if (!child) return child.error().to_grpc_status();   // DEADLINE_EXCEEDED "Insufficient time"
//   backend->Lookup(child->get(), request, &reply);
//
//   // On a client: one budget for a pagination walk or a fan-out.
//   auto budget = stubkit::Deadline::after(std::chrono::seconds(2));
//   options.deadline = budget.when();
#ifndef STUBKIT_DEADLINE_HPP
#define STUBKIT_DEADLINE_HPP

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "stubkit/detail/time.hpp"
#include "stubkit/status.hpp"
#include "stubkit/trace.hpp"

namespace stubkit {

/// A point in time by which work must be done, or none. A value type; the
/// clock it reads is injectable for tests.
class Deadline {
 public:
  using Clock = std::chrono::system_clock;
  using ClockFn = std::function<Clock::time_point()>;

  /// No deadline.
  Deadline() = default;

  /// `timeout` from now.
  static Deadline after(std::chrono::milliseconds timeout, ClockFn clock = {}) {
    Deadline d;
    d.clock_ = std::move(clock);
    d.when_ = detail::saturating_add(d.now(), timeout);  // a huge timeout is "none", not overflow
    return d;
  }

  /// At `when` (time_point::max() = none).
  static Deadline at(Clock::time_point when, ClockFn clock = {}) {
    Deadline d;
    d.clock_ = std::move(clock);
    d.when_ = when;
    return d;
  }

  bool is_set() const { return when_ != Clock::time_point::max(); }
  Clock::time_point when() const { return when_; }

  /// Time left, never negative; milliseconds::max() when there is no deadline.
  std::chrono::milliseconds remaining() const {
    if (!is_set()) return std::chrono::milliseconds::max();
    return std::chrono::duration_cast<std::chrono::milliseconds>(detail::time_left(when_, now()));
  }

  bool expired() const { return is_set() && now() >= when_; }

  /// The earlier of this deadline and `timeout` from now: a per-call bound
  /// inside the group's budget.
  Deadline within(std::chrono::milliseconds timeout) const {
    auto const mine = detail::saturating_add(now(), timeout);
    return at(is_set() ? std::min(when_, mine) : mine, clock_);
  }

  /// Sets this deadline on `ctx` (nothing when there is none).
  void apply(grpc::ClientContext& ctx) const {
    if (is_set()) ctx.set_deadline(when_);
  }

  /// A new ClientContext with this deadline.
  std::unique_ptr<grpc::ClientContext> context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    apply(*ctx);
    return ctx;
  }

 private:
  Clock::time_point now() const { return clock_ ? clock_() : Clock::now(); }

  Clock::time_point when_ = Clock::time_point::max();
  ClockFn clock_;
};

/// How child_context derives a downstream call from an upstream one.
struct ChildContextOptions {
  /// Time kept back for the handler's own work after the downstream call
  /// (the reference server's 100 ms).
  std::chrono::milliseconds reserve{100};
  /// Less time than this left upstream fails at once with DEADLINE_EXCEEDED
  /// "Insufficient time", without calling downstream (the reference's 0.5 s).
  std::chrono::milliseconds min_remaining{500};
  /// Cancel the downstream call when the upstream call is cancelled.
  bool propagate_cancellation = true;
  /// Carry the upstream call's W3C trace context (trace.hpp): the child
  /// sends a traceparent with the same trace id and a new parent id, and
  /// the upstream tracestate unchanged. An upstream call without a valid
  /// traceparent gives a child with a new trace when tracing is on.
  bool propagate_trace = true;
  /// The clock the upstream deadline is compared with; empty = system_clock.
  Deadline::ClockFn clock;
};

/// A ClientContext for a call made while serving `upstream`: its deadline
/// is the upstream deadline minus `reserve`, and (by default) it is
/// cancelled when the upstream call is cancelled, through gRPC's own
/// propagation; and (by default) it carries the upstream trace. Fails
/// with DEADLINE_EXCEEDED "Insufficient time" when less than
/// `min_remaining` is left. An upstream call without a deadline gives a
/// child without one.
inline Result<std::unique_ptr<grpc::ClientContext>> child_context(grpc::ServerContextBase const& upstream,
                                                                  ChildContextOptions const& options = {}) {
  auto const deadline = upstream.deadline();
  bool const bounded = deadline != std::chrono::system_clock::time_point::max();
  if (bounded) {
    auto const now = options.clock ? options.clock() : std::chrono::system_clock::now();
    if (detail::time_left(deadline, now) < options.min_remaining) {
      return Error(grpc::StatusCode::DEADLINE_EXCEEDED, "Insufficient time");
    }
  }
  grpc::PropagationOptions propagation;
  // The deadline is set below, shortened by the reserve; gRPC's own
  // propagation would copy it unshortened (it takes the earlier of the two,
  // so it would do no harm, but one source of truth reads better).
  propagation.disable_deadline_propagation();
  if (!options.propagate_cancellation) propagation.disable_cancellation_propagation();
  std::unique_ptr<grpc::ClientContext> child = grpc::ClientContext::FromServerContext(upstream, propagation);
  if (bounded) child->set_deadline(detail::saturating_add(deadline, -options.reserve));
  if (options.propagate_trace) {
    if (auto const trace = trace_of(upstream)) {
      child->AddMetadata(kTraceparentKey, trace->child().traceparent());
      if (std::string state = tracestate_of(upstream); !state.empty())
        child->AddMetadata(kTracestateKey, state);
    } else if (tracing_enabled()) {
      child->AddMetadata(kTraceparentKey, TraceContext::generate().traceparent());
    }
  }
  return child;
}

}  // namespace stubkit

#endif  // STUBKIT_DEADLINE_HPP
