// Async sequences: what an async listing (async_paginate.hpp) and an async
// server stream (async_stream.hpp) have in common. Elements are asked for
// one next() at a time and handed out by one drainer, with cancellation in
// any state; the source of the elements (page calls, stream reads) is the
// implementation's.
#ifndef STUBKIT_ASYNC_SEQUENCE_HPP
#define STUBKIT_ASYNC_SEQUENCE_HPP

#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "stubkit/async.hpp"
#include "stubkit/status.hpp"

namespace stubkit::detail {

// The operation of one pending step of an owner (a next(), a stream write):
// done once the step is taken for completion; cancelling it while it is
// pending cancels the owner (Owner::cancel_pending decides).
template <typename Owner>
class PendingStep final : public AsyncOperation {
 public:
  explicit PendingStep(std::weak_ptr<Owner> owner) : owner_(std::move(owner)) {}
  void cancel() override {
    if (auto owner = owner_.lock()) owner->cancel_pending(this);
  }
  void keep_until_done(std::shared_ptr<void> registration) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!done()) registration_ = std::move(registration);
  }
  // Marks it done; returns what it kept, to drop outside any lock.
  std::shared_ptr<void> complete() {
    std::lock_guard<std::mutex> lock(mu_);
    done_.store(true, std::memory_order_release);
    return std::move(registration_);
  }

 private:
  std::weak_ptr<Owner> owner_;
  std::mutex mu_;
  std::shared_ptr<void> registration_;
};

// A sequence of elements of type Value (a Result), each delivered to one
// next() as std::optional<Value>: the element, the error that ended the
// sequence (its last element), or nullopt after the end.
//
// Threads. Work is done by one thread at a time, the drainer (draining_):
// whoever made progress (next(), a completion of the source, cancel())
// drains unless another thread is draining, in which case that one loops
// and sees the progress. The drainer delivers with mu_ released and then
// loops, so a completion that calls next() again is served by the loop,
// not by recursion. The waiter, the cancel flags and the derived class's
// shared state are under mu_. As an operation (the handle), the sequence is
// done once its source is finished with gRPC (finished_with_source()).
//
// Derived (which also derives from std::enable_shared_from_this<Derived>)
// provides two messages, `static constexpr char const* kStepName` ("an
// async listing's step") and kCancelledMessage, and these, each called by
// the drainer with mu_ held:
//   std::optional<Out> produce_next();  the next element, if at hand
//   bool nothing_left();                only the end is left to deliver
//   void drop_rest();                   a cancel or a failure: drop what is at hand
//   void before_delivery(lock);         an element is about to be delivered (prefetch)
//   bool pump(lock, bool waiting);      starts the source's work; true if it did any
//   bool finished_with_source();        no gRPC work left: the handle is done
//   Stop stop_source();                 the source must stop: returns a
//                                       callable run with mu_ released
// `lock` is the drainer's lock: a hook may release it (not across its
// return) to call into gRPC.
template <typename Derived, typename Value>
class AsyncElements : public AsyncOperation {
 public:
  using Out = std::optional<Value>;
  using Done = std::function<void(Out)>;

  // Asks for the next element; `done` gets it. `hook(op)` runs first, with
  // the operation that stands for this next() (its cancel cancels the
  // sequence while the next() is pending).
  template <typename Hook>
  std::shared_ptr<AsyncOperation> next(Done done, Hook const& hook) {
    auto op = std::make_shared<Step>(self());
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (waiter_) {
        throw std::logic_error(
            "stubkit: next() while the previous next() has not completed; "
            "await each element before asking for the next");
      }
      waiter_.emplace(Waiter{std::move(done), op});
    }
    try {
      hook(std::shared_ptr<AsyncOperation>(op));
    } catch (...) {
      // The token's hook failed. While this next() is pending, it is undone
      // and the caller gets the exception; once another thread delivered to
      // it, the hook's failure is moot.
      std::optional<Waiter> dropped;  // destroyed after the lock is released
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!waiter_ || waiter_->op != op) return op;
        dropped = std::move(waiter_);
        waiter_.reset();
      }
      throw;
    }
    std::unique_lock<std::mutex> lock(mu_);
    drain(lock);
    return op;
  }

  // Ends the sequence with CANCELLED: if anything was left undelivered, the
  // next element is the CANCELLED error, then the end.
  void cancel() override {
    auto const keep = self();  // a completion run from here may drop the last owner
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (cancelled_) return;
      cancelled_ = true;
      auto stop = derived().stop_source();
      lock.unlock();
      stop();  // a completion of the source may run here
    }
    std::unique_lock<std::mutex> lock(mu_);
    drain(lock);
  }

  void keep_until_done(std::shared_ptr<void> registration) override {
    std::lock_guard<std::mutex> lock(mu_);
    kept_.push_back(std::move(registration));
  }

  using Step = PendingStep<Derived>;

  // A cancel through a next()'s handle: only while that next() is pending.
  void cancel_pending(Step const* op) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!waiter_ || waiter_->op.get() != op) return;
    }
    cancel();
  }

 protected:
  // Runs until no progress can be made; called and returns with mu_ held.
  void drain(std::unique_lock<std::mutex>& lock) {
    if (draining_) return;  // the drainer loops and sees what changed
    draining_ = true;
    for (;;) {
      bool progress = false;
      try {
        progress = step(lock);
      } catch (...) {  // out of memory, a caller's function that threw: end the sequence
        if (!lock.owns_lock()) lock.lock();
        fail(lock, std::current_exception());
        progress = true;
      }
      if (!progress) break;
    }
    draining_ = false;
    if (derived().finished_with_source()) done_.store(true, std::memory_order_release);
  }

  // A step failed: the sequence ends with the error as its last element and
  // its source is stopped. mu_ held.
  void fail(std::unique_lock<std::mutex>& lock, std::exception_ptr error) {
    bool const stop_it = !cancel_seen_;
    cancel_seen_ = true;  // the source starts no more work
    derived().drop_rest();
    try {
      if (!over_) ending_ = Error::from(callback_threw(Derived::kStepName, std::move(error)));
    } catch (...) {
      over_ = true;  // not even an error could be made: the end
    }
    if (stop_it && !cancelled_) {
      auto stop = derived().stop_source();
      lock.unlock();
      stop();
      lock.lock();
    }
  }

  // Whether cancel() was called (mu_ held), and whether the drainer has
  // acted on it or on a failure (no new work may start).
  bool cancelled() const { return cancelled_; }
  bool stopping() const { return cancelled_ || cancel_seen_; }
  bool over() const { return over_; }

  // next()'s element after the last: nullopt.
  static std::optional<Out> the_end() { return std::optional<Out>(std::in_place); }

  mutable std::mutex mu_;

 private:
  struct Waiter {
    Done done;
    std::shared_ptr<Step> op;
  };

  Derived& derived() { return static_cast<Derived&>(*this); }
  std::shared_ptr<Derived> self() { return derived().shared_from_this(); }

  // One step of the drainer; false when nothing more can be done now.
  bool step(std::unique_lock<std::mutex>& lock) {
    if (cancelled_ && !cancel_seen_) {
      cancel_seen_ = true;
      // Whatever was left is dropped, and said so: the next element is
      // CANCELLED, unless the end was all that was left.
      if (!over_ && !ending_ && !derived().nothing_left()) ending_ = cancelled_error();
      derived().drop_rest();
    }
    if (waiter_) {
      if (std::optional<Out> out = produce()) {
        derived().before_delivery(lock);
        Waiter waiter = *std::move(waiter_);
        waiter_.reset();
        std::shared_ptr<void> kept = waiter.op->complete();  // its handle no longer cancels
        lock.unlock();
        deliver(std::move(waiter), *std::move(out));
        kept.reset();
        lock.lock();
        return true;
      }
    }
    return derived().pump(lock, waiter_.has_value());
  }

  static Error cancelled_error() { return Error(grpc::StatusCode::CANCELLED, Derived::kCancelledMessage); }

  // The next element, if it is at hand. After the last element (the end,
  // or an error), only the end.
  std::optional<Out> produce() {
    if (over_) return the_end();
    if (ending_) {
      over_ = true;
      return Out{*std::exchange(ending_, std::nullopt)};
    }
    std::optional<Out> out = derived().produce_next();
    if (out && (!out->has_value() || !(*out)->ok())) over_ = true;
    return out;
  }

  static void deliver(Waiter waiter, Out out) {
    try {
      waiter.done(std::move(out));
    } catch (...) {
      completion_threw(std::current_exception(), "the completion of a next()");  // see completion_threw
    }
  }

  std::optional<Waiter> waiter_;
  std::optional<Error> ending_;  // delivered next, as the last element (a cancel, a failure)
  bool over_ = false;            // the last element has been delivered
  bool draining_ = false;
  bool cancelled_ = false;
  bool cancel_seen_ = false;
  std::vector<std::shared_ptr<void>> kept_;  // registrations (stop callbacks) kept for the sequence's life
};

}  // namespace stubkit::detail

namespace stubkit {

namespace detail {

// What the public async objects (a sequence, a stream writer) share: the
// shared implementation, its cancel, its stop token and its handle.
template <typename Impl>
class AsyncOwner {
 public:
  /// Cancels at once (what that means is the owning class's).
  void cancel() const {
    if (impl_) impl_->cancel();
  }

#if defined(STUBKIT_HAS_STOP_TOKEN)
  /// Cancels when `stop` is requested (at once if it already was), as
  /// cancel() does. Can be called more than once.
  void cancel_on(std::stop_token const& stop) const {
    if (impl_) cancel_on_stop(impl_, stop);
  }
#endif

  /// The operation: cancel() cancels it, and done() is true once it is
  /// finished with gRPC (no call in flight or to come), the moment its stub
  /// may go. The handle outlives its owner: keep it to know when one
  /// destroyed early is finished with the stub.
  AsyncHandle handle() const { return AsyncHandle(impl_); }

 protected:
  explicit AsyncOwner(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

}  // namespace detail

/// An async sequence (an async listing, an async server stream): its
/// elements, one next() at a time. Movable, not copyable; destroying it
/// cancels the sequence.
template <typename Impl>
class AsyncSequence : public detail::AsyncOwner<Impl> {
  using detail::AsyncOwner<Impl>::impl_;

 public:
  /// What next() completes with: the next element, the error that ended
  /// the sequence (its last element), or nullopt after the end.
  using value_type = typename Impl::Out;

  explicit AsyncSequence(std::shared_ptr<Impl> impl) : detail::AsyncOwner<Impl>(std::move(impl)) {}
  AsyncSequence(AsyncSequence&&) noexcept = default;
  AsyncSequence& operator=(AsyncSequence&& other) noexcept {
    if (this != &other) {
      this->cancel();
      impl_ = std::move(other.impl_);
    }
    return *this;
  }
  AsyncSequence(AsyncSequence const&) = delete;
  AsyncSequence& operator=(AsyncSequence const&) = delete;
  ~AsyncSequence() { this->cancel(); }

  /// Asks for the next element, completing through `token`: a callable
  /// `void(value_type)` (returns an AsyncHandle), stubkit::use_future,
  /// stubkit::use_awaitable, or an asio token (stubkit/asio.hpp). Throws
  /// std::logic_error while a previous next() is pending.
  template <typename Token>
  auto next(Token&& token) {
    if (!impl_) throw std::logic_error("stubkit: next() on a moved-from async sequence");
    return detail::Initiate<value_type, std::decay_t<Token>>::run(
        std::forward<Token>(token), [impl = impl_](std::function<void(value_type)> done, auto const& hook) {
          return impl->next(std::move(done), hook);
        });
  }

#if defined(STUBKIT_HAS_COROUTINES)
  /// The next element, to co_await (C++20): `next(stubkit::use_awaitable)`.
  Awaitable<value_type> next() { return next(use_awaitable); }
#endif

  // cancel(): ends the sequence with CANCELLED at once: if anything was
  // left undelivered, the next element is the CANCELLED error, then the
  // end. cancel_on(stop_token) and handle(): see AsyncOwner.
};

}  // namespace stubkit

#endif  // STUBKIT_ASYNC_SEQUENCE_HPP
