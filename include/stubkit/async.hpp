// Async unary calls: stubkit::call's retries, hedges, deadlines, idempotency rules,
// throttle, pushback and observer, with no thread blocked or created per
// call. Attempts run on gRPC's callback API and backoff waits on a
// grpc::Alarm.
//
//   // a callback, run on a gRPC thread:
//   stubkit::AsyncHandle handle = stubkit::async_call(
//       *stub, &UserService::Stub::async::GetUser, request, options,
//       [](stubkit::Result<User> user) { ... });
//   handle.cancel();                                   // at any time
//
//   // a future:
//   auto user = stubkit::async_call(*stub, &UserService::Stub::async::GetUser, request, options,
//                                   stubkit::use_future).get();
//
//   // C++20: co_await, resuming on the gRPC thread that completed the call
//   // (stubkit::Task below), or on an asio executor (stubkit/asio.hpp):
//   stubkit::Result<User> user = co_await stubkit::async_call(
//       *stub, &UserService::Stub::async::GetUser, request, options, stubkit::use_awaitable);
//
// Listings the same way: stubkit/async_paginate.hpp. Every form above (and
// asio's tokens) is chosen by detail::Initiate, for calls and listings alike.
//
// The method is the generated stub's callback method (`Stub::async::Method`,
// or `StubInterface::async_interface::Method`); the stub must outlive the
// operation, i.e. stay alive until its completion has run.
//
// Where things run. The completion runs on a gRPC thread; or inline in
// async_call when the call ends before its first attempt (unusable options,
// a stub without the callback API, a stop token already stopped); or on the
// thread that cancels, or that runs a `schedule`'s `done`, when that ends
// it. So do not block in a completion or in a coroutine resumed by one: it
// may hold one of gRPC's few callback threads. Observers, on_retry, the
// clock and `schedule` run with no stubkit lock held: for the first attempt
// on the caller's thread inside async_call, later on gRPC threads.
//
// Cancellation. AsyncHandle::cancel() (and a std::stop_token, or asio's
// cancellation slot) ends the operation promptly with CANCELLED in any
// state: before the first attempt, during an attempt (the attempt is
// cancelled), while deciding, or during the backoff wait (the alarm is
// cancelled). An attempt that succeeded before the cancel reached it still
// delivers its OK result. A cancelled call is never attempted again. Every
// operation completes exactly once.
//
// Ownership. An operation holds its attempt's ClientContext and its backoff
// alarm; it releases both before it delivers the completion, on the thread
// that completes it, while the caller's stub (alive until then) still holds
// the channel, and it releases nothing of gRPC's after. So stubkit never
// drops a channel's last reference, and the caller may drop stub and channel
// once the completion has run. Dropping the last reference to a channel on
// a gRPC thread is gRPC's own hazard (it tears down the callback queue
// under the thread polling it): a completion, or a coroutine resumed on a
// gRPC thread, should not own the last reference to its channel.
#ifndef STUBKIT_ASYNC_HPP
#define STUBKIT_ASYNC_HPP

#include <grpcpp/alarm.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#if __has_include(<version>)
#include <version>
#endif
#if defined(__cpp_impl_coroutine) && __cpp_impl_coroutine >= 201902L && __has_include(<coroutine>)
#include <coroutine>
#define STUBKIT_HAS_COROUTINES 1
#endif
#if defined(__cpp_lib_jthread)
#include <stop_token>
#define STUBKIT_HAS_STOP_TOKEN 1
#endif

#include "stubkit/detail/async_hedge.hpp"
#include "stubkit/retry.hpp"
#include "stubkit/status.hpp"

namespace stubkit {

/// The callback method of a generated stub taking Request and giving
/// Response, e.g. `&UserService::Stub::async::GetUser`.
template <typename AsyncClass, typename Request, typename Response>
using AsyncUnaryMethod = void (AsyncClass::*)(grpc::ClientContext*, Request const*, Response*,
                                              std::function<void(grpc::Status)>);

namespace detail {

// One async unary call: the state machine that runs attempts on the
// callback API and waits on an alarm (or the caller's `schedule`) between.
//
// Threads. The flow (begin_attempt -> attempt_done -> wait -> wake ->
// begin_attempt ...) runs one step at a time, each on the thread gRPC (or
// the scheduler) calls it on. Exactly one thread owns the flow at a time:
// a wait is ended by whoever claims it first (claim_wait: the alarm, the
// schedule's `done`, a cancel, or the schedule's own failure), and only the
// claimer goes on. cancel() may come from any thread at any time: it reads
// the phase under mu_ and, outside the lock (gRPC may run a callback inline
// in TryCancel or Alarm::Cancel), cancels the attempt or the alarm of that
// phase. A thread that uses ctx_ or runs user code outside the lock pins the
// operation (pins_); a call that finishes while pinned is delivered by the
// last unpin. gRPC objects are never destroyed with mu_ held. The completion
// is delivered exactly once, after every gRPC object is released, and then
// the operation drops the caller's callables (observer, on_retry, clock,
// schedule), so a callable that holds the call's handle makes no cycle.
template <typename Response>
class AsyncUnary final : public AsyncOperation, public std::enable_shared_from_this<AsyncUnary<Response>> {
 public:
  using Start = std::function<void(grpc::ClientContext*, Response*, std::function<void(grpc::Status)>)>;
  using Done = std::function<void(Result<Response>)>;

  AsyncUnary(CallOptions options, Done done) : options_(std::move(options)), done_fn_(std::move(done)) {}

  CallOptions const& options() const { return options_; }
  CallSetup& setup() { return setup_; }

  // `start` sends one attempt; set once, before begin().
  void set_start(Start start) { start_ = std::move(start); }

  // Starts the first attempt; the setup is filled. Never throws: a failure
  // ends the call.
  void begin() {
    state_.emplace(std::move(setup_.plan));  // its views point into setup_, which stays
    guarded([&] { begin_attempt(1); });
  }

  // Ends the call before it started (unusable options): completes inline.
  void fail_before_start(Error error) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      finished_ = delivered_ = true;
    }
    Done done = std::move(done_fn_);
    done_.store(true, std::memory_order_release);
    try {
      done(Result<Response>(std::move(error)));
    } catch (...) {
      completion_threw(std::current_exception());
    }
  }

  void keep_until_done(std::shared_ptr<void> registration) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (delivered_) return;  // dropped on return, outside any callback of ours
    registration_ = std::move(registration);
  }

  void cancel() override {
    std::unique_lock<std::mutex> lock(mu_);
    if (finished_ || cancel_requested_) return;
    cancel_requested_ = true;
    if (phase_ == Phase::kAttempt) {
      // ctx_ stays: the flow replaces it only in begin_attempt, which the
      // attempt's end reaches only after seeing this flag.
      grpc::ClientContext* const ctx = ctx_.get();
      ++pins_;
      lock.unlock();
      ctx->TryCancel();  // the attempt ends with CANCELLED; attempt_done finishes
      unpin();
    } else if (phase_ == Phase::kWaiting && alarm_) {
      std::shared_ptr<grpc::Alarm> alarm = alarm_;
      ++pins_;
      lock.unlock();
      alarm->Cancel();  // wake(ok = false) finishes
      alarm.reset();    // before a delivery: nothing of gRPC's is released after it
      unpin();
    } else if (phase_ == Phase::kWaiting) {
      // The caller's schedule holds the wait: claim it and end the call.
      ++wait_id_;
      phase_ = Phase::kIdle;
      lock.unlock();
      report_.stop_reason = "cancelled";
      finish(cancelled_status("during the backoff wait"));
    }
    // kIdle, kDeciding: the flow's next step sees the flag.
  }

 private:
  enum class Phase { kIdle, kAttempt, kDeciding, kWaiting };

  // The schedule's `done`, once: a second call does nothing, and dropping
  // it uncalled ends the call instead of leaving it waiting forever.
  struct WaitToken {
    std::shared_ptr<AsyncUnary> op;
    int next;
    std::uint64_t id;
    std::atomic<bool> used{false};
    WaitToken(std::shared_ptr<AsyncUnary> o, int n, std::uint64_t i) : op(std::move(o)), next(n), id(i) {}
    ~WaitToken() {
      if (!used.exchange(true)) op->dropped(id);
    }
    void fire() {
      if (!used.exchange(true)) op->wake(next, id, true);
    }
  };

  // Runs a step of the flow; an exception (out of memory, say) ends the
  // call instead of unwinding into gRPC.
  template <typename Step>
  void guarded(Step&& step) {
    try {
      step();
    } catch (...) {
      report_.stop_reason = "an internal error";
      finish(callback_threw("an async call's step", std::current_exception()));
    }
  }

  void begin_attempt(int n) {
    if (cancel_requested_now()) {
      report_.stop_reason = "cancelled";
      finish(cancelled_status(n == 1 ? "before its first attempt" : "between attempts"));
      return;
    }
    auto deadline = state_->next_attempt_deadline();
    if (auto* failed = std::get_if<grpc::Status>(&deadline)) {
      report_.stop_reason = "the retry clock threw";
      finish(*failed);
      return;
    }
    auto ctx = std::make_unique<grpc::ClientContext>();
    response_.Clear();
    started_ = start_attempt(*ctx, options_, setup_, n,
                             std::get<std::optional<std::chrono::system_clock::time_point>>(deadline));
    grpc::ClientContext* raw = nullptr;
    bool cancel_now = false;
    std::unique_ptr<grpc::ClientContext> previous;
    {
      std::lock_guard<std::mutex> lock(mu_);
      previous = std::exchange(ctx_, std::move(ctx));
      raw = ctx_.get();
      phase_ = Phase::kAttempt;
      // A cancel since the check above found no attempt to cancel: cancel
      // this one as it starts (TryCancel before the call cancels it at once).
      cancel_now = cancel_requested_;
      ++pins_;  // raw stays valid until the attempt is started
    }
    previous.reset();  // the last attempt's context, outside the lock
    start_(raw, &response_, [self = this->shared_from_this(), n](grpc::Status status) {
      self->guarded([&] { self->attempt_done(n, std::move(status)); });
    });
    if (cancel_now) raw->TryCancel();
    unpin();
  }

  void attempt_done(int n, grpc::Status status) {
    AttemptOutcome const outcome = end_attempt(*ctx_, std::move(status), options_, setup_, started_);
    report_.attempts = n;
    report_.last_status = outcome.status;
    if (cancel_requested_now(Phase::kDeciding) && !outcome.status.ok()) {
      report_.stop_reason = "cancelled";
      finish(cancelled_status("during an attempt"));
      return;
    }
    // (An attempt that succeeded before the cancel reached it delivers its
    // result, and the throttle hears of the success.)
    RetryDecision const decision = state_->after_attempt(n, outcome);
    if (!decision.retry) {
      report_.stop_reason = decision.stop_reason;
      finish(decision.status ? *decision.status : outcome.status);
      return;
    }
    report_.total_delay += decision.delay;
    wait(n + 1, decision.delay);
  }

  // Waits `delay`, then starts attempt `next`.
  void wait(int next, std::chrono::milliseconds delay) {
    std::unique_lock<std::mutex> lock(mu_);
    if (cancel_requested_) {
      lock.unlock();
      report_.stop_reason = "cancelled";
      finish(cancelled_status("before the backoff wait"));
      return;
    }
    phase_ = Phase::kWaiting;
    std::uint64_t const id = ++wait_id_;
    std::shared_ptr<grpc::Alarm> previous = std::move(alarm_);
    ++pins_;  // until the schedule returns, or the alarm is set and checked
    if (options_.schedule) {
      lock.unlock();
      previous.reset();
      auto token = std::make_shared<WaitToken>(this->shared_from_this(), next, id);
      try {
        options_.schedule(delay, [token] { token->fire(); });
      } catch (...) {
        auto const error = std::current_exception();
        if (claim_wait(id)) {
          report_.stop_reason = "the retry schedule threw";
          finish(callback_threw("the retry schedule", error));
        } else {  // the wait was over already (done ran, or a cancel): the call goes on
          completion_threw(error, "the retry schedule, after its done ran,");
        }
      }
      unpin();
      return;
    }
    auto alarm = std::make_shared<grpc::Alarm>();
    alarm_ = alarm;
    lock.unlock();
    previous.reset();
    alarm->Set(std::chrono::system_clock::now() + delay,
               [self = this->shared_from_this(), next, id](bool ok) {
                 self->guarded([&] { self->wake(next, id, ok); });
               });
    bool cancel_now = false;
    {
      std::lock_guard<std::mutex> relock(mu_);
      // A cancel that came while the alarm was being set found no alarm.
      cancel_now = cancel_requested_ && phase_ == Phase::kWaiting && wait_id_ == id;
    }
    if (cancel_now) alarm->Cancel();  // our own copy: alive even if the flow moved on
    alarm.reset();                    // before a delivery: nothing of gRPC's is released after it
    unpin();
  }

  // Ends wait `id` for the caller: true if it was still on (the caller
  // then owns the flow), false if it was over or claimed already.
  bool claim_wait(std::uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_ || phase_ != Phase::kWaiting || id != wait_id_) return false;
    ++wait_id_;
    phase_ = Phase::kIdle;
    return true;
  }

  void wake(int next, std::uint64_t id, bool ok) {
    if (!claim_wait(id)) return;  // over, or a stale or second `done`
    if (!ok) {
      bool const asked = cancel_requested_now();
      report_.stop_reason = "cancelled";
      finish(asked ? cancelled_status("during the backoff wait")
                   : grpc::Status(grpc::StatusCode::CANCELLED,
                                  "stubkit: the backoff alarm ended early (gRPC is "
                                  "shutting down?)"));
      return;
    }
    begin_attempt(next);
  }

  // The schedule dropped its `done` without calling it.
  void dropped(std::uint64_t id) {
    if (!claim_wait(id)) return;
    report_.stop_reason = "the retry schedule dropped its done";
    finish(grpc::Status(grpc::StatusCode::UNKNOWN,
                        "stubkit: the retry schedule dropped its `done` callback without calling it"));
  }

  // Reads the cancel flag; optionally moves to `phase` in the same step.
  bool cancel_requested_now(std::optional<Phase> phase = std::nullopt) {
    std::lock_guard<std::mutex> lock(mu_);
    if (phase) phase_ = *phase;
    return cancel_requested_;
  }

  void finish(grpc::Status status) {
    std::unique_lock<std::mutex> lock(mu_);
    if (finished_) return;
    finished_ = true;
    final_ = std::move(status);
    if (pins_ == 0) deliver(lock);
  }

  void unpin() {
    std::unique_lock<std::mutex> lock(mu_);
    if (--pins_ == 0 && finished_ && !delivered_) deliver(lock);
  }

  // Releases the gRPC objects, then runs the completion (see Ownership at
  // the top of the file), then drops the caller's callables. Called once,
  // with the lock held; unlocks it.
  void deliver(std::unique_lock<std::mutex>& lock) {
    delivered_ = true;
    std::unique_ptr<grpc::ClientContext> ctx = std::move(ctx_);
    std::shared_ptr<grpc::Alarm> alarm = std::move(alarm_);
    std::shared_ptr<void> registration = std::move(registration_);
    Done done = std::move(done_fn_);
    lock.unlock();
    ctx.reset();
    alarm.reset();  // a cancelled alarm's pending callback keeps what it needs
    registration.reset();
    report_.last_status = final_;
    if (final_.ok()) report_.stop_reason.clear();
    if (options_.report != nullptr) *options_.report = report_;
    end_call(setup_, report_, final_);
    Result<Response> result = to_result(final_, std::move(response_));
    state_.reset();
    options_.on_retry = nullptr;
    options_.schedule = nullptr;
    options_.clock = RetryClock{};
    options_.observer.reset();
    setup_.observer = nullptr;
    done_.store(true, std::memory_order_release);
    try {
      done(std::move(result));
    } catch (...) {
      completion_threw(std::current_exception());
    }
  }

  CallOptions options_;
  CallSetup setup_;
  Start start_;
  std::optional<RetryState> state_;
  Response response_;
  RetryReport report_;
  std::chrono::steady_clock::time_point started_;
  grpc::Status final_;

  std::mutex mu_;
  Done done_fn_;
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::shared_ptr<grpc::Alarm> alarm_;
  std::shared_ptr<void> registration_;
  Phase phase_ = Phase::kIdle;
  std::uint64_t wait_id_ = 0;
  int pins_ = 0;
  bool cancel_requested_ = false;
  bool finished_ = false;
  bool delivered_ = false;
};

// The typed part of an async hedged call: one response per attempt.
template <typename Response>
class AsyncHedged final : public AsyncHedgeBase {
 public:
  using Start = std::function<void(grpc::ClientContext*, Response*, std::function<void(grpc::Status)>)>;
  using Done = std::function<void(Result<Response>)>;

  AsyncHedged(CallOptions options, Done done)
      : AsyncHedgeBase(std::move(options)), done_fn_(std::move(done)) {}

  // `start` sends one attempt; set once, before begin().
  void set_start(Start start) { start_ = std::move(start); }

  // Ends the call before it started (unusable options): completes inline.
  void fail_before_start(Error error) {
    delivered_before_start();
    done_.store(true, std::memory_order_release);
    complete_with(Result<Response>(std::move(error)));
  }

 private:
  void send(grpc::ClientContext* ctx, int n, std::function<void(grpc::Status)> done) override {
    start_(ctx, &responses_[static_cast<std::size_t>(n - 1)], std::move(done));
  }

  void complete(grpc::Status const& status, int winner) noexcept override {
    std::optional<Result<Response>> result;
    try {
      result.emplace(to_result(
          status, winner > 0 ? std::move(responses_[static_cast<std::size_t>(winner - 1)]) : Response()));
    } catch (...) {  // no memory for the result: the caller still hears the call ended
      try {
        result.emplace(
            Error(grpc::StatusCode::UNKNOWN, "stubkit: no memory for an async hedged call's result"));
      } catch (...) {
        completion_threw(std::current_exception(), "an async hedged call's result");
        return;
      }
    }
    complete_with(std::move(*result));
  }

  void complete_with(Result<Response> result) noexcept {
    Done done = std::move(done_fn_);
    start_ = nullptr;
    try {
      done(std::move(result));
    } catch (...) {
      completion_threw(std::current_exception());
    }
  }

  Start start_;
  Done done_fn_;
  std::array<Response, HedgingPolicy::kMaxAttempts> responses_;
};

template <typename Stub, typename AsyncClass>
constexpr void check_async_stub() {
  using Async = std::remove_pointer_t<decltype(std::declval<Stub&>().async())>;
  static_assert(std::is_base_of_v<AsyncClass, Async>,
                "stubkit::async_call: the method must be a callback method of this stub "
                "(&Service::Stub::async::Method)");
}

// The stub's callback API, checked at compile time to be the method's.
template <typename Stub, typename AsyncClass>
AsyncClass* async_of(Stub& stub) {
  check_async_stub<Stub, AsyncClass>();
  return stub.async();
}

// The error of an operation `what` whose stub's async() gave null.
inline Error no_callback_api(char const* what) {
  return Error(grpc::StatusCode::FAILED_PRECONDITION,
               std::string("stubkit::") + what +
                   ": the stub has no callback API (its async() returned null, as a StubInterface "
                   "mock's does unless mocked)");
}

// Makes the operation of a call (Op: AsyncUnary, or AsyncHedged), ready to
// begin(); or completes it inline and returns null when it cannot start (no
// callback API, unusable options).
template <template <typename> class Op, typename Stub, typename AsyncClass, typename Request,
          typename Response>
std::shared_ptr<Op<Response>> make_unary(Stub& stub, AsyncUnaryMethod<AsyncClass, Request, Response> method,
                                         Request request, CallOptions options,
                                         typename AsyncUnary<Response>::Done done) {
  auto op = std::make_shared<Op<Response>>(std::move(options), std::move(done));
  AsyncClass* const async = async_of<Stub, AsyncClass>(stub);
  if (async == nullptr) {
    op->fail_before_start(no_callback_api("async_call"));
    return nullptr;
  }
  if (auto error = setup_call(op->options(), method_of<Request, Response>(op->options().method), request,
                              "async", op->setup())) {
    op->fail_before_start(std::move(*error));
    return nullptr;
  }
  op->set_start([async, method, request = std::move(request)](grpc::ClientContext* ctx, Response* response,
                                                              std::function<void(grpc::Status)> on_done) {
    (async->*method)(ctx, &request, response, std::move(on_done));
  });
  return op;
}

#if defined(STUBKIT_HAS_STOP_TOKEN)
// Cancels `op` when `stop` is requested, until it completes. A stop
// already requested cancels it at once.
inline void cancel_on_stop(std::shared_ptr<AsyncOperation> const& op, std::stop_token const& stop) {
  if (!op || !stop.stop_possible()) return;
  struct Cancel {
    std::weak_ptr<AsyncOperation> op;
    void operator()() const {
      if (auto alive = op.lock()) alive->cancel();
    }
  };
  op->keep_until_done(std::make_shared<std::stop_callback<Cancel>>(stop, Cancel{op}));
}

// The before-begin step of the overloads that take a stop token.
struct StopHook {
  std::stop_token stop;
  void operator()(std::shared_ptr<AsyncOperation> const& op) const { cancel_on_stop(op, stop); }
};
#endif

// Starts a call whose completion is `done`; `before_begin(op)` runs first
// (a stop token's registration). Null when it completed inline.
template <typename Stub, typename AsyncClass, typename Request, typename Response, typename BeforeBegin>
std::shared_ptr<AsyncOperation> start_unary(Stub& stub,
                                            AsyncUnaryMethod<AsyncClass, Request, Response> method,
                                            Request request, CallOptions options,
                                            typename AsyncUnary<Response>::Done done,
                                            BeforeBegin&& before_begin) {
  auto run = [&](auto op) -> std::shared_ptr<AsyncOperation> {
    if (!op) return nullptr;
    before_begin(std::shared_ptr<AsyncOperation>(op));
    op->begin();
    return op;
  };
  if (options.hedging) {
    return run(
        make_unary<AsyncHedged>(stub, method, std::move(request), std::move(options), std::move(done)));
  }
  return run(make_unary<AsyncUnary>(stub, method, std::move(request), std::move(options), std::move(done)));
}

struct NoStop {
  void operator()(std::shared_ptr<AsyncOperation> const&) const {}
};

}  // namespace detail

/// Cancels an async operation and tells whether it completed. Copyable,
/// thread-safe; an empty handle (an operation that ended before it started)
/// is done and ignores cancel().
class AsyncHandle {
 public:
  AsyncHandle() = default;
  explicit AsyncHandle(std::shared_ptr<detail::AsyncOperation> op) : op_(std::move(op)) {}

  /// Ends the operation promptly with CANCELLED, whatever it is doing;
  /// nothing once it has completed. The completion may run on this thread.
  void cancel() const {
    if (op_) op_->cancel();
  }
  /// Whether the completion has run (or is running).
  bool done() const { return !op_ || op_->done(); }

 private:
  std::shared_ptr<detail::AsyncOperation> op_;
};

/// Completion tag: async_call returns an AsyncFuture.
struct use_future_t {};
inline constexpr use_future_t use_future{};

/// The future of an async operation's result, which can also cancel it.
/// get() and wait() block: never call them on a gRPC thread (in a
/// completion), which the operation may need to finish.
template <typename T>
class AsyncFuture {
 public:
  AsyncFuture(std::future<T> future, AsyncHandle handle)
      : future_(std::move(future)), handle_(std::move(handle)) {}

  T get() { return future_.get(); }
  void wait() const { future_.wait(); }
  template <typename Rep, typename Period>
  std::future_status wait_for(std::chrono::duration<Rep, Period> const& timeout) const {
    return future_.wait_for(timeout);
  }
  bool valid() const noexcept { return future_.valid(); }
  void cancel() const { handle_.cancel(); }
  AsyncHandle const& handle() const { return handle_; }

 private:
  std::future<T> future_;
  AsyncHandle handle_;
};

namespace detail {

// A callback: called with the result, returning nothing. (Asio's tokens
// such as asio::use_future are callable too, but return a new token.)
template <typename T, typename Callback, typename = void>
struct IsCompletionFor : std::false_type {};
template <typename T, typename Callback>
struct IsCompletionFor<T, Callback,
                       std::enable_if_t<std::is_void_v<std::invoke_result_t<std::decay_t<Callback>&, T>>>>
    : std::true_type {};
// Completion tokens of other libraries that are callables too (asio's
// executor and cancellation-slot binders): stubkit/asio.hpp marks them, so
// they take its path instead of the plain callback form.
template <typename Token>
struct ForeignToken : std::false_type {};

template <typename T, typename Callback>
inline constexpr bool is_completion_for_v =
    IsCompletionFor<T, Callback>::value && !ForeignToken<std::decay_t<Callback>>::value;

// A completion as an operation keeps it (std::function needs a copyable
// callable: a move-only one is shared instead).
template <typename T, typename Callback>
std::function<void(T)> as_done(Callback&& callback) {
  using F = std::decay_t<Callback>;
  if constexpr (std::is_copy_constructible_v<F>) {
    return std::function<void(T)>(std::forward<Callback>(callback));
  } else {
    return [shared = std::make_shared<F>(std::forward<Callback>(callback))](T result) {
      (*shared)(std::move(result));
    };
  }
}

// The result that carries `error` to a completion taking a T (an async
// call's Result, a listing's optional Result).
template <typename T>
struct ErrorValue;
template <typename R>
struct ErrorValue<Result<R>> {
  static Result<R> make(Error error) { return Result<R>(std::move(error)); }
};
template <>
struct ErrorValue<bool> {  // a stream write: false, and finish() gives the stream's status
  static bool make(Error const&) { return false; }
};
template <typename R>
struct ErrorValue<std::optional<Result<R>>> {
  static std::optional<Result<R>> make(Error error) {
    return std::optional<Result<R>>(std::in_place, std::move(error));
  }
};

// How an operation whose result is a T completes, chosen by the completion
// token the caller passed: Initiate<T, Token>::run(token, start) calls
// `start(done, hook)`, which must call `hook(op)` before the operation
// begins, start it with `done` as its completion, and return it (null when
// it completed inline); run returns what the token's form returns. This
// primary form is a plain callback and returns an AsyncHandle; use_future
// and use_awaitable specialize it below, stubkit/asio.hpp for asio's tokens.
template <typename T, typename Token, typename = void>
struct Initiate {
  static_assert(is_completion_for_v<T, Token>,
                "stubkit: the completion must be a callable taking the result and returning void, "
                "stubkit::use_future, stubkit::use_awaitable, or (with stubkit/asio.hpp included) an "
                "asio completion token");
  template <typename Callback, typename Start>
  static AsyncHandle run(Callback&& callback, Start&& start) {
    return AsyncHandle(start(as_done<T>(std::forward<Callback>(callback)), NoStop{}));
  }
};

template <typename T>
struct Initiate<T, use_future_t> {
  template <typename Start>
  static AsyncFuture<T> run(use_future_t, Start&& start) {
    auto promise = std::make_shared<std::promise<T>>();
    std::future<T> future = promise->get_future();
    auto op = start([promise](T result) { promise->set_value(std::move(result)); }, NoStop{});
    return AsyncFuture<T>(std::move(future), AsyncHandle(std::move(op)));
  }
};

// An async call completed through `token`; `before_begin(op)` runs before
// its first attempt, after the token's own hook. The start functor owns
// what it needs: asio may run it after async_call has returned.
template <typename Response, typename Token, typename BeforeBegin, typename Stub, typename AsyncClass,
          typename Request>
auto initiate_call(Token&& token, Stub& stub, AsyncUnaryMethod<AsyncClass, Request, Response> method,
                   Request request, CallOptions options, BeforeBegin before_begin) {
  auto start = [&stub, method, request = std::move(request), options = std::move(options),
                before_begin = std::move(before_begin)](std::function<void(Result<Response>)> done,
                                                        auto const& hook) mutable {
    return start_unary(stub, method, std::move(request), std::move(options), std::move(done),
                       [&](std::shared_ptr<AsyncOperation> const& op) {
                         hook(op);
                         before_begin(op);
                       });
  };
  return Initiate<Result<Response>, std::decay_t<Token>>::run(std::forward<Token>(token), std::move(start));
}

}  // namespace detail

/// Calls `method` of `stub` as stubkit::call does (same CallOptions, same
/// retry rules, report and observer, source "async"), without blocking.
/// The stub must stay alive until the call completes; the request is
/// copied. `token` says how it completes:
/// - a callable `void(Result<Response>)`: run exactly once, on a gRPC
///   thread (see the top of this file); async_call returns an AsyncHandle
///   that cancels the call;
/// - stubkit::use_future: returns an AsyncFuture;
/// - stubkit::use_awaitable (C++20): returns an Awaitable to co_await;
/// - an asio completion token (stubkit/asio.hpp).
template <typename Stub, typename AsyncClass, typename Request, typename Response, typename Token>
auto async_call(Stub& stub, AsyncUnaryMethod<AsyncClass, Request, Response> method, Request request,
                CallOptions options, Token&& token) {
  return detail::initiate_call<Response>(std::forward<Token>(token), stub, method, std::move(request),
                                         std::move(options), detail::NoStop{});
}

#if defined(STUBKIT_HAS_STOP_TOKEN)
/// The same, also cancelled when `stop` is requested.
template <typename Stub, typename AsyncClass, typename Request, typename Response, typename Token>
auto async_call(Stub& stub, AsyncUnaryMethod<AsyncClass, Request, Response> method, Request request,
                CallOptions options, std::stop_token stop, Token&& token) {
  return detail::initiate_call<Response>(std::forward<Token>(token), stub, method, std::move(request),
                                         std::move(options), detail::StopHook{std::move(stop)});
}
#endif

#if defined(STUBKIT_HAS_COROUTINES)
/// Completion tag: async_call returns an Awaitable (C++20).
struct use_awaitable_t {};
inline constexpr use_awaitable_t use_awaitable{};

namespace detail {

// Where an operation's result meets the coroutine awaiting it.
template <typename T>
struct AwaitState {
  std::mutex mu;
  std::optional<T> value;
  std::coroutine_handle<> waiter;
  bool taken = false;  // the value was handed to the coroutine

  void complete(T result) {
    std::coroutine_handle<> resume;
    {
      std::lock_guard<std::mutex> lock(mu);
      value.emplace(std::move(result));
      resume = std::exchange(waiter, {});
    }
    if (resume) resume.resume();
  }
};

}  // namespace detail

/// The result of an async operation, to co_await once (C++20). The
/// operation starts when the Awaitable is made, so many can be in flight
/// before the first co_await. co_await resumes the coroutine on the thread
/// that completed the operation (a gRPC thread: do not block there), or
/// continues at once when it has completed already. Dropping an Awaitable
/// whose operation has not completed cancels the operation.
template <typename T>
class [[nodiscard]] Awaitable {
 public:
  Awaitable(std::shared_ptr<detail::AwaitState<T>> state, AsyncHandle handle)
      : state_(std::move(state)), handle_(std::move(handle)) {}
  Awaitable(Awaitable&&) noexcept = default;
  Awaitable& operator=(Awaitable&& other) noexcept {
    if (this != &other) {
      abandon();
      state_ = std::move(other.state_);
      handle_ = std::move(other.handle_);
    }
    return *this;
  }
  Awaitable(Awaitable const&) = delete;
  Awaitable& operator=(Awaitable const&) = delete;
  ~Awaitable() { abandon(); }

  bool await_ready() const {
    if (!state_ || state_->taken) {
      throw std::logic_error("stubkit::Awaitable: awaited twice, or after it was moved from");
    }
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->value.has_value();
  }
  bool await_suspend(std::coroutine_handle<> coroutine) {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->value) return false;  // completed meanwhile: go on here
    state_->waiter = coroutine;
    return true;
  }
  T await_resume() {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->taken = true;
    return std::move(*state_->value);
  }

  /// Cancels the operation (see AsyncHandle::cancel).
  void cancel() const { handle_.cancel(); }
  AsyncHandle const& handle() const { return handle_; }

 private:
  // Dropped: a coroutine suspended here is being destroyed (or never
  // awaited), so nobody may be resumed; the call is cancelled if still on.
  void abandon() {
    if (!state_) return;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->waiter = nullptr;
    }
    if (!handle_.done()) handle_.cancel();
  }

  std::shared_ptr<detail::AwaitState<T>> state_;
  AsyncHandle handle_;
};

namespace detail {

template <typename T>
struct Initiate<T, use_awaitable_t> {
  template <typename Start>
  static Awaitable<T> run(use_awaitable_t, Start&& start) {
    auto state = std::make_shared<AwaitState<T>>();
    auto op = start([state](T result) { state->complete(std::move(result)); }, NoStop{});
    return Awaitable<T>(std::move(state), AsyncHandle(std::move(op)));
  }
};

}  // namespace detail

template <typename T = void>
class Task;

namespace detail {

struct TaskPromiseBase {
  std::coroutine_handle<> continuation = std::noop_coroutine();
  std::exception_ptr error;

  std::suspend_always initial_suspend() noexcept { return {}; }
  struct Final {
    bool await_ready() noexcept { return false; }
    template <typename Promise>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<Promise> done) noexcept {
      return done.promise().continuation;  // resume whoever awaited the task
    }
    void await_resume() noexcept {}
  };
  Final final_suspend() noexcept { return {}; }
  void unhandled_exception() { error = std::current_exception(); }
};

template <typename T>
struct TaskPromise : TaskPromiseBase {
  std::optional<T> value;
  Task<T> get_return_object();
  void return_value(T v) { value.emplace(std::move(v)); }
  T take() {
    if (error) std::rethrow_exception(error);
    return std::move(*value);
  }
};

template <>
struct TaskPromise<void> : TaskPromiseBase {
  Task<void> get_return_object();
  void return_void() {}
  void take() {
    if (error) std::rethrow_exception(error);
  }
};

}  // namespace detail

/// A coroutine that needs no executor (C++20): it starts when awaited (or
/// by sync_wait) and runs on whatever thread resumes it, so after its first
/// co_await of a call it runs on gRPC threads. Do not block inside it. An
/// exception escaping it is rethrown to whoever awaits it.
template <typename T>
class [[nodiscard]] Task {
 public:
  using promise_type = detail::TaskPromise<T>;

  explicit Task(std::coroutine_handle<promise_type> coroutine) : coroutine_(coroutine) {}
  Task(Task&& other) noexcept : coroutine_(std::exchange(other.coroutine_, {})) {}
  Task& operator=(Task&& other) noexcept {
    if (this != &other) {
      if (coroutine_) coroutine_.destroy();
      coroutine_ = std::exchange(other.coroutine_, {});
    }
    return *this;
  }
  Task(Task const&) = delete;
  Task& operator=(Task const&) = delete;
  ~Task() {
    if (coroutine_) coroutine_.destroy();
  }

  bool await_ready() const noexcept { return false; }
  std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiting) noexcept {
    coroutine_.promise().continuation = awaiting;
    return coroutine_;
  }
  T await_resume() { return coroutine_.promise().take(); }

 private:
  std::coroutine_handle<promise_type> coroutine_;
};

namespace detail {

template <typename T>
Task<T> TaskPromise<T>::get_return_object() {
  return Task<T>(std::coroutine_handle<TaskPromise<T>>::from_promise(*this));
}
inline Task<void> TaskPromise<void>::get_return_object() {
  return Task<void>(std::coroutine_handle<TaskPromise<void>>::from_promise(*this));
}

// A one-shot signal sync_wait blocks on.
struct Latch {
  std::mutex mu;
  std::condition_variable cv;
  bool set = false;
};

// The coroutine sync_wait runs: awaits the task, then signals.
struct SignalWhenDone {
  struct promise_type {
    Latch* latch = nullptr;
    SignalWhenDone get_return_object() {
      return SignalWhenDone{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    struct Final {
      bool await_ready() noexcept { return false; }
      void await_suspend(std::coroutine_handle<promise_type> done) noexcept {
        Latch& latch = *done.promise().latch;
        std::lock_guard<std::mutex> lock(latch.mu);
        latch.set = true;
        latch.cv.notify_all();
      }
      void await_resume() noexcept {}
    };
    Final final_suspend() noexcept { return {}; }
    void return_void() {}
    void unhandled_exception() noexcept { std::terminate(); }  // the body catches everything
  };
  std::coroutine_handle<promise_type> coroutine;
};

template <typename T>
SignalWhenDone await_into(Task<T>& task, std::optional<T>& out, std::exception_ptr& error) {
  try {
    out.emplace(co_await task);
  } catch (...) {
    error = std::current_exception();
  }
}

inline SignalWhenDone await_into(Task<void>& task, std::optional<std::monostate>& out,
                                 std::exception_ptr& error) {
  try {
    co_await task;
    out.emplace();
  } catch (...) {
    error = std::current_exception();
  }
}

}  // namespace detail

/// Runs `task` to its end, blocking this thread until then, and returns
/// its result (or rethrows its exception). For main() and tests: never on
/// a gRPC thread, whose completions the task may be waiting for.
template <typename T>
T sync_wait(Task<T> task) {
  detail::Latch latch;
  std::exception_ptr error;
  std::optional<std::conditional_t<std::is_void_v<T>, std::monostate, T>> out;
  detail::SignalWhenDone runner = detail::await_into(task, out, error);
  runner.coroutine.promise().latch = &latch;
  runner.coroutine.resume();
  {
    std::unique_lock<std::mutex> lock(latch.mu);
    latch.cv.wait(lock, [&] { return latch.set; });
  }
  runner.coroutine.destroy();
  if (error) std::rethrow_exception(error);
  if constexpr (!std::is_void_v<T>) return std::move(*out);
}
#endif  // STUBKIT_HAS_COROUTINES

}  // namespace stubkit

#endif  // STUBKIT_ASYNC_HPP
