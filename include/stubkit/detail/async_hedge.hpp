// The state machine of an async hedged call, and what every async
// operation shares: used by async.hpp (async_call with
// CallOptions::hedging) and by the retry interceptor (a channel's hedging
// policy), so that both run the same code. Internal: include
// stubkit/async.hpp or stubkit/retry_interceptor.hpp.
#ifndef STUBKIT_DETAIL_ASYNC_HEDGE_HPP
#define STUBKIT_DETAIL_ASYNC_HEDGE_HPP

#include <grpcpp/alarm.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "stubkit/retry.hpp"

namespace stubkit::detail {

// What a handle can do to an operation of any kind.
class AsyncOperation {
 public:
  virtual ~AsyncOperation() = default;
  virtual void cancel() = 0;
  // Keeps `registration` (a stop callback) until the operation completes.
  virtual void keep_until_done(std::shared_ptr<void> registration) = 0;
  bool done() const { return done_.load(std::memory_order_acquire); }

 protected:
  std::atomic<bool> done_{false};
};

// The message of a call the caller cancelled.
inline grpc::Status cancelled_status(char const* when) {
  return grpc::Status(grpc::StatusCode::CANCELLED, std::string("stubkit: the call was cancelled ") + when);
}

// A completion that throws is the caller's bug; it must not unwind into
// gRPC (which would terminate the process), nor vanish without a word.
inline void completion_threw(std::exception_ptr error, char const* who = "the completion of an async call") {
  std::fprintf(stderr, "stubkit: %s threw (ignored): %s\n", who, what_of(std::move(error)).c_str());
}

// An async hedged call (CallOptions::hedging): the rules of stubkit::call's
// hedging (HedgeRules), with no thread blocked or created. Attempts run on
// the callback API, and the hedging delay and pushback waits on a
// grpc::Alarm. Non-template, so that a program compiles it once; the
// typed part is AsyncHedged in async.hpp, the retry interceptor's
// RetryInterceptor::Hedge another.
//
// Threads. The flow's steps (an attempt's end, the alarm, a cancel) run one
// at a time: whoever brings a step while no thread runs the flow runs it,
// and every step that comes meanwhile (an attempt that ends inline as it
// starts, a cancel, an alarm) waits in mu_'s state for that thread to take
// it. So the flow's own state (rules_, report_, next_at_) needs no lock,
// and no lock is held while gRPC or user code runs. The completion is
// delivered once, when the call is decided and no attempt is running, after
// every gRPC object is released (see Ownership at the top of async.hpp).
class AsyncHedgeBase : public AsyncOperation, public std::enable_shared_from_this<AsyncHedgeBase> {
 public:
  explicit AsyncHedgeBase(CallOptions options)
      : options_(std::move(options)), rules_(*options_.hedging, setup_, report_) {}
  AsyncHedgeBase(AsyncHedgeBase const&) = delete;
  AsyncHedgeBase& operator=(AsyncHedgeBase const&) = delete;

  CallOptions const& options() const { return options_; }
  CallSetup& setup() { return setup_; }

  // Sends the first attempt; the setup is filled. Never throws.
  void begin() {
    guarded([&] { first_step(); });
    std::unique_lock<std::mutex> lock(mu_);
    run_steps(lock);
  }

  void keep_until_done(std::shared_ptr<void> registration) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (delivered_) return;  // dropped on return, outside any callback of ours
    registration_ = std::move(registration);
  }

  void cancel() override {
    std::unique_lock<std::mutex> lock(mu_);
    if (delivered_ || cancel_requested_) return;
    cancel_requested_ = true;
    drain(lock);
  }

 protected:
  // Sends attempt n (1-based) with `ctx`; `done` runs when it ends, maybe
  // before send returns.
  virtual void send(grpc::ClientContext* ctx, int n, std::function<void(grpc::Status)> done) = 0;
  // Hands the call's status and winner (0: none) to the caller; once.
  virtual void complete(grpc::Status const& status, int winner) noexcept = 0;
  // Who answered (the winner's peer), for the call's end event; "" = not told.
  virtual std::string_view peer(int /*winner*/) const { return {}; }

  // Marks the call delivered before it started (the caller then completes it).
  void delivered_before_start() {
    std::lock_guard<std::mutex> lock(mu_);
    delivered_ = true;
  }

 private:
  struct Slot {
    std::unique_ptr<grpc::ClientContext> ctx;  // under mu_ while the flow is not delivered
    std::chrono::steady_clock::time_point started;
    grpc::Status status;   // under mu_ until the attempt has ended
    bool running = false;  // under mu_
  };

  // Runs a step of the flow; an exception (out of memory, the options'
  // clock) ends the call instead of unwinding into gRPC.
  template <typename Step>
  void guarded(Step&& step) noexcept {
    try {
      step();
    } catch (...) {
      try {
        if (!finishing_) {
          // The blocking call's words: report_.stop_reason is set too.
          grpc::Status status = hedged_step_threw(report_, std::current_exception());
          finish(0, report_.stop_reason, std::move(status));
        }
      } catch (...) {  // no memory left even for that: end the attempts, deliver a failure
        finishing_ = true;
        winner_ = 0;
        final_ = grpc::Status(grpc::StatusCode::UNKNOWN, std::string());
        cancel_running();
      }
    }
  }

  // Runs the flow's pending steps on this thread, unless a thread runs them.
  void drain(std::unique_lock<std::mutex>& lock) {
    if (draining_) return;
    draining_ = true;
    run_steps(lock);
  }

  // The flow's loop: a cancel first, then attempts' ends in the order they
  // ended, then the alarm; delivers once decided and no attempt runs.
  void run_steps(std::unique_lock<std::mutex>& lock) {
    for (;;) {
      if (cancel_requested_ && !cancel_taken_) {
        cancel_taken_ = true;
        lock.unlock();
        guarded([&] { on_cancel(); });
        lock.lock();
      } else if (ended_count_ > taken_) {
        int const n = ended_[static_cast<std::size_t>(taken_++)];
        lock.unlock();
        guarded([&] { on_end(n); });
        lock.lock();
      } else if (alarm_rang_.first != 0) {
        auto const [id, ok] = std::exchange(alarm_rang_, {0, false});
        lock.unlock();
        if (id == alarm_id_) {  // else an alarm replaced since
          alarm_at_ = {};       // none is set now
          guarded([&, ok = ok] { ok ? pump() : alarm_ended_early(); });
        }
        lock.lock();
      } else if (finishing_ &&
                 std::none_of(slots_.begin(), slots_.end(), [](Slot const& s) { return s.running; })) {
        deliver(lock);
        return;
      } else {
        draining_ = false;
        return;
      }
    }
  }

  void first_step() {
    if (take_cancel()) {
      finish(0, "cancelled", cancelled_status("before its first attempt"));
      return;
    }
    rules_.begin();
    start(1, "");
    next_at_ = HedgeRules::after(options_.hedging->hedging_delay);
    why_next_ = "no answer within hedging_delay";
    pump();
  }

  // Sends what is due; arms the alarm for what is due later; ends the call
  // when nothing is left to wait for.
  void pump() {
    while (!finishing_) {
      if (rules_.over()) {
        finish(rules_.last(), report_.stop_reason);
        return;
      }
      if (!rules_.can_send()) return;  // the attempts in flight decide
      if (std::chrono::steady_clock::now() < next_at_) {
        arm(next_at_);
        return;
      }
      if (auto refused = rules_.refused(); !refused.empty()) {
        rules_.stop(std::move(refused));
        continue;
      }
      start(rules_.sent() + 1, why_next_);
      next_at_ = HedgeRules::after(options_.hedging->hedging_delay);
      why_next_ = "no answer within hedging_delay";
    }
  }

  void start(int n, std::string const& why) {
    Slot& slot = slots_[static_cast<std::size_t>(n - 1)];
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (n > 1) notify_hedge(setup_, n, why);
    auto const started = start_attempt(*ctx, options_, setup_, n, setup_.plan.deadline);
    std::function<void(grpc::Status)> on_end = [self = shared_from_this(), n](grpc::Status status) {
      self->ended(n, std::move(status));
    };
    grpc::ClientContext* const raw = ctx.get();
    {
      std::lock_guard<std::mutex> lock(mu_);
      slot.ctx = std::move(ctx);
      slot.started = started;
      slot.running = true;
    }
    rules_.on_sent(n);
    try {
      send(raw, n, std::move(on_end));
    } catch (...) {  // the stub's method threw: the attempt ends with that
      grpc::Status status(grpc::StatusCode::UNKNOWN, std::string());
      try {
        status = callback_threw("the stub's method", std::current_exception());
      } catch (...) {  // no memory for the message
      }
      ended(n, std::move(status));
    }
  }

  // Attempt n ended (on a gRPC thread, or inline): a step for the flow.
  void ended(int n, grpc::Status status) {
    std::unique_lock<std::mutex> lock(mu_);
    Slot& slot = slots_[static_cast<std::size_t>(n - 1)];
    if (!slot.running) return;  // a stub that threw after it had called back
    slot.status = std::move(status);
    slot.running = false;
    ended_[static_cast<std::size_t>(ended_count_++)] = n;
    drain(lock);
  }

  void on_end(int n) {
    Slot& slot = slots_[static_cast<std::size_t>(n - 1)];
    setup_.event.attempt = n;
    if (finishing_ && !(cancelled_ && slot.status.ok() && winner_ == 0)) {
      // A loser: the observer hears of it; the trailers stay the winner's.
      notify_attempt_end(*slot.ctx, slot.status, setup_, n, slot.started);
      return;
    }
    AttemptOutcome const outcome = end_attempt(*slot.ctx, slot.status, options_, setup_, slot.started);
    if (finishing_) {
      // It succeeded before the cancel reached it: its OK result stands.
      if (setup_.plan.throttle) feed_throttle(setup_.plan, true);
      cancelled_ = false;
      winner_ = report_.winner = n;
      final_ = report_.last_status = outcome.status;
      report_.stop_reason.clear();
      return;
    }
    if (auto done = rules_.settle(n, outcome, next_at_, why_next_)) {
      finish(n, std::move(*done));
      return;
    }
    pump();
  }

  void on_cancel() {
    if (finishing_) return;  // decided already: that result stands
    finish(0, "cancelled", cancelled_status("during an attempt"));
    cancelled_ = true;
  }

  // Decides the call: attempt n's status (0: `status`). Cancels the
  // attempts in flight and the alarm; delivery follows their ends.
  void finish(int n, std::string reason, std::optional<grpc::Status> status = std::nullopt) {
    // What may throw first (a copy), then what may not: a step that throws
    // here leaves the call undecided, for guarded() to end.
    grpc::Status result = status  ? std::move(*status)
                          : n > 0 ? report_.last_status
                                  : grpc::Status(grpc::StatusCode::INTERNAL, "stubkit: no attempt");
    final_ = std::move(result);
    winner_ = report_.winner = n;
    report_.stop_reason = std::move(reason);
    finishing_ = true;
    cancel_running();
  }

  // Cancels the attempts in flight and the alarm, outside the lock (gRPC
  // may call back inline); their contexts live until delivery.
  void cancel_running() noexcept {
    std::array<grpc::ClientContext*, HedgingPolicy::kMaxAttempts> running{};
    std::shared_ptr<grpc::Alarm> alarm;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (std::size_t i = 0; i < slots_.size(); ++i)
        running[i] = slots_[i].running ? slots_[i].ctx.get() : nullptr;
      alarm = alarm_;
    }
    for (grpc::ClientContext* ctx : running) {
      if (ctx != nullptr) ctx->TryCancel();
    }
    if (alarm) alarm->Cancel();
  }

  // Rings the flow at `at` (steady clock), replacing the alarm set before.
  void arm(std::chrono::steady_clock::time_point at) {
    if (alarm_at_ == at && alarm_id_ != 0) return;  // set for that time already
    auto alarm = std::make_shared<grpc::Alarm>();
    std::uint64_t const id = ++alarm_id_;
    alarm_at_ = at;
    std::shared_ptr<grpc::Alarm> previous;
    {
      std::lock_guard<std::mutex> lock(mu_);
      previous = std::exchange(alarm_, alarm);
    }
    if (previous) previous->Cancel();  // it rings with ok = false, ignored
    previous.reset();
    auto const wait =
        std::max(at - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration::zero());
    alarm->Set(std::chrono::system_clock::now() +
                   std::chrono::duration_cast<std::chrono::system_clock::duration>(wait),
               [self = shared_from_this(), id](bool ok) {
                 std::unique_lock<std::mutex> lock(self->mu_);
                 // The newest alarm's ring wins: a replaced alarm's late ring
                 // must not hide the current one's.
                 if (id > self->alarm_rang_.first) self->alarm_rang_ = {id, ok};
                 self->drain(lock);
               });
  }

  // The current alarm rang with ok = false though the flow did not cancel
  // it (the flow cancels it only when it decides, or replaces it): gRPC is
  // shutting down, and nothing else would wake the call.
  void alarm_ended_early() {
    if (finishing_) return;
    finish(0, "cancelled",
           grpc::Status(grpc::StatusCode::CANCELLED,
                        "stubkit: the hedging alarm ended early (gRPC is shutting down?)"));
  }

  // Whether a cancel came before the first step; the step then takes it.
  bool take_cancel() {
    std::lock_guard<std::mutex> lock(mu_);
    if (cancel_requested_) cancel_taken_ = true;
    return cancel_requested_;
  }

  // Releases the gRPC objects, tells the observer and the report, drops the
  // caller's callables, then completes. Called once, with the lock held;
  // unlocks it.
  void deliver(std::unique_lock<std::mutex>& lock) {
    delivered_ = true;
    std::array<std::unique_ptr<grpc::ClientContext>, HedgingPolicy::kMaxAttempts> contexts;
    for (std::size_t i = 0; i < slots_.size(); ++i) contexts[i] = std::move(slots_[i].ctx);
    std::shared_ptr<grpc::Alarm> alarm = std::move(alarm_);
    std::shared_ptr<void> registration = std::move(registration_);
    lock.unlock();
    for (auto& ctx : contexts) ctx.reset();
    alarm.reset();  // a cancelled alarm's pending callback keeps what it needs
    registration.reset();
    try {
      report_.last_status = final_;
      if (final_.ok()) report_.stop_reason.clear();
      if (options_.report != nullptr) *options_.report = report_;
      // After the losers' ends, as the blocking call tells them.
      if (winner_ > 0) notify_hedged_give_up(setup_, winner_, final_, report_.stop_reason);
      end_call(setup_, report_, final_, peer(winner_));
    } catch (...) {  // no memory for a copy: the call completes all the same
      completion_threw(std::current_exception(), "reporting an async hedged call");
    }
    // The caller's callables go before the completion: one that holds the
    // call's handle makes no cycle.
    options_.on_retry = nullptr;
    options_.schedule = nullptr;
    options_.clock = RetryClock{};
    options_.observer.reset();
    setup_.plan.on_retry = nullptr;
    setup_.plan.clock = RetryClock{};
    setup_.plan.throttle.reset();
    setup_.observer = setup_.plan.observer = nullptr;
    done_.store(true, std::memory_order_release);
    complete(final_, winner_);
  }

  CallOptions options_;
  CallSetup setup_;
  RetryReport report_;
  HedgeRules rules_;  // the flow's, like the fields below down to alarm_at_
  std::chrono::steady_clock::time_point next_at_;
  std::string why_next_;
  grpc::Status final_;
  int winner_ = 0;
  bool finishing_ = false;  // decided: delivery follows the attempts' ends
  bool cancelled_ = false;  // decided by a cancel
  std::uint64_t alarm_id_ = 0;
  std::chrono::steady_clock::time_point alarm_at_;

  std::mutex mu_;
  std::array<Slot, HedgingPolicy::kMaxAttempts> slots_;
  std::array<int, HedgingPolicy::kMaxAttempts> ended_{};  // attempts in the order they ended
  int ended_count_ = 0;
  int taken_ = 0;
  std::shared_ptr<grpc::Alarm> alarm_;
  std::pair<std::uint64_t, bool> alarm_rang_{0, false};  // the newest alarm that rang (id, ok), not taken yet
  std::shared_ptr<void> registration_;
  // A thread runs the flow: the caller's, from the start until begin()
  // has sent the first attempt (a cancel before then only sets the flag).
  bool draining_ = true;
  bool cancel_requested_ = false;
  bool cancel_taken_ = false;
  bool delivered_ = false;
};

}  // namespace stubkit::detail

#endif  // STUBKIT_DETAIL_ASYNC_HEDGE_HPP
