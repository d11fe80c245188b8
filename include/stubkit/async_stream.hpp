// Async streams: stream.hpp's server streams and client streams with no
// thread blocked, on gRPC's callback reactors.
//
//   // A server stream, one next() at a time (async_sequence.hpp):
//   auto events = stubkit::async_read_stream(*stub, &UserService::Stub::async::WatchUsers, request);
//   while (auto event = co_await events.next()) {   // nullopt when the server ended it with OK
//     if (!*event) co_return handle((*event).error());  // the status that ended it
//     use(**event);
//   }
//
//   // A client stream: each write() completes once gRPC took the message
//   // (flow control: one write at a time, nothing piles up), finish() with
//   // the server's response:
//   auto bulk = stubkit::async_write_stream(*stub, &UserService::Stub::async::BulkCreateUsers);
//   for (auto& request : requests)
//     if (!co_await bulk.write(request)) break;     // broken: finish() says why
//   stubkit::Result<BulkResp> response = co_await bulk.finish();
//
// Every completion takes the forms async_call's does: a callback, use_future,
// use_awaitable (C++20), or an asio token (stubkit/asio.hpp).
//
// Reading. The stream starts at once. One read is in flight at a time, and
// at most two messages wait for next() (one, while a read fills the
// second); gRPC's own flow control holds the rest on the server, so a slow
// consumer slows the server, never fills memory. `filter` (e.g. dropping
// heartbeats) runs on the gRPC thread that read the message; a message it
// rejects is not delivered. Where completions run, and the
// one-next()-at-a-time rule, are the async listing's (async_paginate.hpp).
// The last element is the stream's status when it is not OK; an OK end is
// nullopt.
//
// Writing. One write() or finish() at a time (another while one is pending
// throws std::logic_error; through an asio token it completes with false or
// FAILED_PRECONDITION). write() gives false once the stream is broken or
// finished; finish() then gives the status that broke it.
//
// Cancellation. cancel(), cancel_on(std::stop_token), a pending step's
// handle, future or awaitable, asio's slot: the call is cancelled at once
// (ClientContext::TryCancel). A reader's next element is then CANCELLED if
// anything was left undelivered (a stream the server had already ended
// gives its own status); a writer's pending write gives false and finish()
// CANCELLED. Destroying a reader cancels it; destroying a writer before
// finish() cancels it (the server creates nothing), after finish() lets the
// call run to its end.
//
// Ownership. Each stream owns its ClientContext and releases it when the
// call is over, before its handle() is done; the stub (and its channel) must
// stay alive until then. handle() outlives the stream.
#ifndef STUBKIT_ASYNC_STREAM_HPP
#define STUBKIT_ASYNC_STREAM_HPP

#include <grpcpp/alarm.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/client_callback.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "stubkit/async.hpp"
#include "stubkit/async_sequence.hpp"
#include "stubkit/stream.hpp"

namespace stubkit {

/// The callback method of a generated stub for a server stream, e.g.
/// `&UserService::Stub::async::WatchUsers`.
template <typename AsyncClass, typename Request, typename Response>
using AsyncReadMethod = void (AsyncClass::*)(grpc::ClientContext*, Request const*,
                                             grpc::ClientReadReactor<Response>*);
/// The callback method of a generated stub for a client stream, e.g.
/// `&UserService::Stub::async::BulkCreateUsers`.
template <typename AsyncClass, typename Request, typename Response>
using AsyncWriteMethod = void (AsyncClass::*)(grpc::ClientContext*, Response*,
                                              grpc::ClientWriteReactor<Request>*);

namespace detail {

// T, in a context that deduces nothing (a filter lambda must convert).
template <typename T>
struct SameAs {
  using type = T;
};
template <typename T>
using Same = typename SameAs<T>::type;

// A copy of an OnDone status that never throws into gRPC: out of memory,
// the code alone.
inline grpc::Status copy_of(grpc::Status const& status) noexcept {
  try {
    return status;
  } catch (...) {
    return grpc::Status(status.error_code(), std::string());
  }
}

// The call's ClientContext, released once the call is over (OnDone) and no
// thread is cancelling through it. Under its owner's mutex.
class StreamContext {
 public:
  StreamContext() = default;
  explicit StreamContext(std::unique_ptr<grpc::ClientContext> ctx) : ctx_(std::move(ctx)) {}

  grpc::ClientContext* get() const { return ctx_.get(); }

  // A cancel: the context to TryCancel with the lock released, then unpin().
  grpc::ClientContext* pin() {
    if (!ctx_ || over_) return nullptr;
    ++pins_;
    return ctx_.get();
  }
  void unpin() { --pins_; }
  void call_over() { over_ = true; }

  // The context to destroy (with the lock released) once the call is over
  // and unpinned; null otherwise. Whoever takes it calls destroyed() once
  // it is gone: until then the context is not released.
  std::unique_ptr<grpc::ClientContext> take_if_released() {
    if (!over_ || pins_ != 0 || !ctx_) return nullptr;
    releasing_ = true;
    return std::move(ctx_);
  }
  void destroyed() { releasing_ = false; }
  // The call is over and its context destroyed: the stub may go.
  bool released() const { return over_ && !ctx_ && !releasing_; }

 private:
  std::unique_ptr<grpc::ClientContext> ctx_;
  int pins_ = 0;
  bool over_ = false;
  bool releasing_ = false;  // being destroyed by a thread without the lock
};

// How a server stream resumes after its connection ends (async_watch_users
// in user_client.hpp is one): it makes each connection, sees every message
// read, and decides whether an end is resumed and after what wait. The
// reader calls it from one thread at a time, never under its lock.
template <typename Response>
class StreamResume {
 public:
  virtual ~StreamResume() = default;

  // One connection: its context, its request (kept until its OnDone), and
  // the call of the stub's method.
  struct Connection {
    std::unique_ptr<grpc::ClientContext> ctx;
    std::shared_ptr<void> request;
    std::function<void(grpc::ClientContext*, grpc::ClientReadReactor<Response>*)> bind;
  };

  // The next connection (the first one too).
  virtual Connection connect() = 0;
  // Every message read, before the filter.
  virtual void read(Response const& message) = 0;
  // A connection ended with `status`: the wait before the next, or nullopt
  // to end the stream with it.
  virtual std::optional<std::chrono::milliseconds> resume_after(grpc::Status const& status) = 0;
  // The stream ended with `status` after `delivered` messages (once).
  virtual void ended(grpc::Status const& status, std::int64_t delivered) = 0;
  // Arranges for `done` after `delay` (tests); empty = a grpc::Alarm.
  std::function<void(std::chrono::milliseconds, std::function<void()>)> schedule;
};

// One server stream: a read reactor per connection feeding an async
// sequence; with a StreamResume, a connection that ends is followed by
// another after a wait. Reads, holds, waits, new connections and the
// release of each connection's context are the drainer's; OnReadDone and
// OnDone record what came (under mu_) and drain. Each connection's reactor
// keeps the reader alive until its OnDone; an alarm's callback does the
// same until it runs.
template <typename Response>
class AsyncReader final : public AsyncElements<AsyncReader<Response>, Result<Response>>,
                          public std::enable_shared_from_this<AsyncReader<Response>> {
  using Base = AsyncElements<AsyncReader, Result<Response>>;
  friend Base;

 public:
  using Out = typename Base::Out;
  using Filter = std::function<bool(Response const&)>;
  using Connection = typename StreamResume<Response>::Connection;

  static constexpr char const* kStepName = "an async stream's step";
  static constexpr char const* kCancelledMessage = "stubkit: the stream was cancelled";

  AsyncReader(Filter filter, StreamWatch watch, std::unique_ptr<StreamResume<Response>> resume = nullptr)
      : filter_(std::move(filter)), watch_(std::move(watch)), resume_(std::move(resume)) {}

  // Starts the first connection. No lock is held across gRPC's calls (a
  // reaction may run on this thread when it is one of gRPC's).
  void start(Connection connection) {
    std::unique_lock<std::mutex> lock(mu_);
    open(lock, std::move(connection));
  }

  // Starts the first connection through the resume rule.
  void start() {
    if (!resume_) throw std::logic_error("stubkit: AsyncReader::start() needs a resume rule");
    std::unique_lock<std::mutex> lock(mu_);
    ctx_.call_over();  // no connection yet: nothing to release
    connect_due_ = true;
    this->drain(lock);
  }

  // The stream could not start: its only element is `error`.
  void fail_to_start(Error error) {
    grpc::Status const status(error.code(), error.message());
    watch_.end(status);
    if (resume_) resume_->ended(status, 0);
    std::lock_guard<std::mutex> lock(mu_);
    final_ = status;
    start_error_ = std::move(error);
    ctx_.call_over();
    this->done_.store(true, std::memory_order_release);  // no call: finished with gRPC
  }

 private:
  using Base::mu_;

  // The reactor of one connection.
  class Call final : public grpc::ClientReadReactor<Response> {
   public:
    explicit Call(std::shared_ptr<AsyncReader> owner) : owner_(std::move(owner)) {}
    void OnReadDone(bool ok) override { owner_->on_read(*this, ok); }
    void OnDone(grpc::Status const& status) override {
      std::shared_ptr<AsyncReader> owner = std::move(owner_);  // goes last: the reader may end here
      owner->on_done(*this, status);
    }

    Response incoming;              // the read target; gRPC's while reading
    std::shared_ptr<void> request;  // until OnDone: gRPC (an interceptor) may serialize it late

   private:
    std::shared_ptr<AsyncReader> owner_;
  };

  // Opens `connection`; mu_ held on entry and on return (released across
  // gRPC's calls).
  void open(std::unique_lock<std::mutex>& lock, Connection connection) {
    auto call = std::make_shared<Call>(this->shared_from_this());
    call->request = std::move(connection.request);
    ctx_ = StreamContext(std::move(connection.ctx));
    grpc::ClientContext* const context = ctx_.get();
    call_ = call;
    hold_ = true;
    reading_ = true;
    read_over_ = false;
    lock.unlock();
    try {
      connection.bind(context, call.get());
    } catch (...) {  // no call was made: nothing will end it
      lock.lock();
      call_.reset();
      hold_ = reading_ = false;
      read_over_ = true;
      ctx_.call_over();
      throw;  // the drainer's catch (or the caller) ends the stream
    }
    call->AddHold();  // no OnDone while a read may still be started from outside a reaction
    call->StartRead(&call->incoming);
    call->StartCall();
    lock.lock();
  }

  void on_read(Call& call, bool ok) {
    bool keep = true;
    std::exception_ptr filter_error;
    if (ok) {
      try {  // one read at a time: only this thread touches watch_ and the rule now
        watch_.count();
        if (resume_) resume_->read(call.incoming);
        if (filter_) keep = filter_(call.incoming);
      } catch (...) {
        filter_error = std::current_exception();
      }
    }
    std::unique_lock<std::mutex> lock(mu_);
    reading_ = false;
    if (!ok) {
      read_over_ = true;
    } else if (filter_error) {
      this->fail(lock, filter_error);
    } else if (keep && !this->stopping()) {
      ++delivered_;
      if (!buffered_) {
        buffered_.emplace(std::move(call.incoming));
      } else {
        held_.emplace(std::move(call.incoming));  // no read until it moves on
      }
    }
    this->drain(lock);
  }

  void on_done(Call&, grpc::Status const& status) {
    grpc::Status const copy = copy_of(status);
    bool resumable = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      resumable = resume_ && !copy.ok() && !this->stopping();
    }
    std::optional<std::chrono::milliseconds> wait;
    if (resumable) {
      try {  // the rule (and the observer it tells) runs with no lock held
        wait = resume_->resume_after(copy);
      } catch (...) {  // out of memory, an observer's failure: the stream ends with its status
      }
    }
    bool const over = !wait;
    if (over) {
      std::int64_t delivered = 0;
      {
        std::lock_guard<std::mutex> lock(mu_);
        delivered = delivered_;
        end_told_ = true;
      }
      try {
        watch_.end(copy);
      } catch (...) {  // out of memory: the event is lost, not the stream
      }
      try {
        if (resume_) resume_->ended(copy, delivered);
      } catch (...) {
      }
    }
    std::unique_lock<std::mutex> lock(mu_);
    ctx_.call_over();
    if (over) {
      final_ = copy;
    } else {
      resume_wait_ = *wait;
      resume_due_ = true;
    }
    this->drain(lock);
  }

  // AsyncElements' hooks (mu_ held, by the drainer).
  void before_delivery(std::unique_lock<std::mutex>& lock) { start_read_if_due(lock); }

  bool pump(std::unique_lock<std::mutex>& lock, bool /*waiting*/) {
    if (start_read_if_due(lock)) return true;
    if (hold_ && !reading_ && (read_over_ || this->stopping())) {
      hold_ = false;  // no more reads on this connection: let its call end
      std::shared_ptr<Call> call = call_;
      lock.unlock();
      call->RemoveHold();  // its OnDone may run on this thread: no lock is held
      call.reset();
      lock.lock();
      return true;
    }
    if (auto ctx = ctx_.take_if_released()) {
      lock.unlock();
      ctx.reset();
      lock.lock();
      ctx_.destroyed();
      return true;
    }
    if (resume_due_ && ctx_.released()) {
      resume_due_ = false;
      if (!this->stopping()) start_wait(lock);
      return true;
    }
    if (wake_ && !alarm_) {
      wake_ = false;
      if (!this->stopping()) connect_due_ = true;
      return true;
    }
    if (connect_due_) {
      connect_due_ = false;
      if (this->stopping()) return true;
      lock.unlock();
      Connection connection = resume_->connect();  // a throw ends the stream (the drainer's catch)
      lock.lock();
      if (!this->stopping()) {
        open(lock, std::move(connection));
        return true;
      }
      lock.unlock();  // cancelled meanwhile: the unused context goes unlocked
      connection.ctx.reset();
      connection.request.reset();
      connection.bind = nullptr;
      lock.lock();
      return true;
    }
    if (resume_ && !end_told_ && (final_ || this->stopping()) && ctx_.released() && !waiting_ && !alarm_) {
      // Ended between connections (a cancel, a failed step, an alarm gRPC
      // ended early): the rule hears the end.
      end_told_ = true;
      grpc::Status const status =
          final_ ? *final_
          : this->cancelled()
              ? grpc::Status(grpc::StatusCode::CANCELLED, kCancelledMessage)
              : grpc::Status(grpc::StatusCode::UNKNOWN, "stubkit: a step of the async stream failed");
      std::int64_t const delivered = delivered_;
      lock.unlock();
      try {
        resume_->ended(status, delivered);
      } catch (...) {
      }
      lock.lock();
      return true;
    }
    if (alarm_done_) {  // the alarm's callback has run: drop it here, unlocked
      alarm_done_ = false;
      std::shared_ptr<grpc::Alarm> alarm = std::move(alarm_);
      lock.unlock();
      alarm.reset();
      lock.lock();
      return true;
    }
    return false;
  }

  // Waits before the next connection: the rule's schedule, or an alarm.
  void start_wait(std::unique_lock<std::mutex>& lock) {
    std::uint64_t const id = ++wait_id_;
    auto const delay = resume_wait_;
    if (resume_->schedule) {
      waiting_ = true;
      auto token = std::make_shared<WaitToken>(this->shared_from_this(), id);
      lock.unlock();
      try {
        resume_->schedule(delay, [token] { token->fire(); });
      } catch (...) {
        token.reset();
        lock.lock();
        if (waiting_ && id == wait_id_) waiting_ = false;
        throw;  // the drainer's catch ends the stream
      }
      token.reset();  // the schedule holds its own copy, or dropped it (ends the stream)
      lock.lock();
      return;
    }
    lock.unlock();
    auto alarm = std::make_shared<grpc::Alarm>();
    std::function<void(bool)> callback = [self = this->shared_from_this(), id](bool ok) {
      self->wake(id, ok, true);
    };
    lock.lock();
    if (this->stopping()) {  // cancelled meanwhile: no wait
      lock.unlock();
      callback = nullptr;
      alarm.reset();
      lock.lock();
      return;
    }
    waiting_ = true;
    alarm_ = alarm;  // published before Set, as AsyncUnary does: a cancel may come at any time
    lock.unlock();
    try {
      alarm->Set(std::chrono::system_clock::now() + delay, std::move(callback));
    } catch (...) {  // out of memory: no callback will come
      lock.lock();
      waiting_ = false;
      std::shared_ptr<grpc::Alarm> unset = std::move(alarm_);
      lock.unlock();
      unset.reset();
      alarm.reset();
      lock.lock();
      throw;
    }
    lock.lock();
    if (this->stopping()) {  // a cancel meanwhile may have come before Set: cancel again
      lock.unlock();
      alarm->Cancel();
      lock.lock();
    }
  }

  // The `done` a schedule gets: fires once; dropped unfired, it ends the
  // stream (a wait nobody will end would hang it).
  class WaitToken {
   public:
    WaitToken(std::weak_ptr<AsyncReader> reader, std::uint64_t id) : reader_(std::move(reader)), id_(id) {}
    WaitToken(WaitToken const&) = delete;
    WaitToken& operator=(WaitToken const&) = delete;
    ~WaitToken() {
      if (fired_.load()) return;
      if (auto reader = reader_.lock()) reader->wait_dropped(id_);
    }
    void fire() {
      if (fired_.exchange(true)) return;
      if (auto reader = reader_.lock()) reader->wake(id_, true);
    }

   private:
    std::weak_ptr<AsyncReader> reader_;
    std::uint64_t const id_;
    std::atomic<bool> fired_{false};
  };

  void wait_dropped(std::uint64_t id) {
    std::unique_lock<std::mutex> lock(mu_);
    if (waiting_ && id == wait_id_) {
      waiting_ = false;
      this->fail(lock, std::make_exception_ptr(std::runtime_error(
                           "the resume schedule dropped its `done` callback without calling it")));
    }
    this->drain(lock);
  }

  // The wait `id` is over: `ok` false when an alarm was cancelled, or ended
  // early by gRPC (shutting down): then the stream ends.
  void wake(std::uint64_t id, bool ok, bool from_alarm = false) {
    std::unique_lock<std::mutex> lock(mu_);
    if (from_alarm) alarm_done_ = true;
    if (!waiting_ || id != wait_id_) {
      this->drain(lock);
      return;  // a stale or second wake
    }
    waiting_ = false;
    if (ok || this->stopping()) {
      wake_ = true;
    } else {
      final_ = grpc::Status(grpc::StatusCode::CANCELLED,
                            "stubkit: the resume alarm ended early (gRPC is shutting down?)");
    }
    this->drain(lock);
  }

  bool start_read_if_due(std::unique_lock<std::mutex>& lock) {
    if (!hold_ || reading_ || held_ || read_over_ || this->stopping()) return false;
    reading_ = true;
    std::shared_ptr<Call> call = call_;
    lock.unlock();
    call->StartRead(&call->incoming);  // one message may wait in buffered_ meanwhile
    lock.lock();
    return true;
  }

  void drop_rest() {
    delivered_ -= (buffered_ ? 1 : 0) + (held_ ? 1 : 0);  // dropped, not delivered
    buffered_.reset();
    held_.reset();
  }

  // Cancels the connection (TryCancel with mu_ released) or the wait.
  auto stop_source() {
    grpc::ClientContext* const ctx = ctx_.pin();
    std::shared_ptr<grpc::Alarm> alarm = alarm_;
    bool const scheduled = waiting_ && !alarm;
    if (scheduled) {
      waiting_ = false;  // a schedule's late done then does nothing
      wake_ = false;
    }
    return [this, ctx, alarm = std::move(alarm)] {
      if (alarm) alarm->Cancel();  // its callback runs, with ok false
      if (ctx == nullptr) return;
      ctx->TryCancel();
      std::lock_guard<std::mutex> lock(mu_);
      ctx_.unpin();  // the drainer (or the next drain) releases the context
    };
  }

  bool finished_with_source() const {
    bool const connection_over = ctx_.released() && !connect_due_ && !resume_due_;
    return connection_over && !waiting_ && !alarm_ && (final_.has_value() || this->stopping());
  }

  // Only the status is left: the stream ended and every message was
  // delivered. A cancel then gives that status, not CANCELLED.
  bool nothing_left() const {
    bool const ended = final_.has_value() || (read_over_ && !resume_);
    return ended && !buffered_ && !held_;
  }

  std::optional<Out> produce_next() {
    if (buffered_) {
      Response message = std::move(*buffered_);
      buffered_ = std::move(held_);
      held_.reset();
      return Out{Result<Response>(std::move(message))};
    }
    if (start_error_) return Out{Result<Response>(*start_error_)};
    if (!final_) return std::nullopt;
    if (final_->ok()) return Base::the_end();
    return Out{Result<Response>(Error::from(*final_))};
  }

  Filter filter_;
  StreamWatch watch_;  // the reading thread's, then OnDone's
  std::unique_ptr<StreamResume<Response>> const resume_;

  // Under mu_.
  StreamContext ctx_;                 // the connection's
  std::shared_ptr<Call> call_;        // the connection's reactor
  std::optional<Response> buffered_;  // the message next() gets next
  std::optional<Response> held_;      // a second one; no read until it moves on
  std::optional<grpc::Status> final_;
  std::optional<Error> start_error_;
  std::int64_t delivered_ = 0;  // messages kept by the filter
  std::chrono::milliseconds resume_wait_{0};
  std::shared_ptr<grpc::Alarm> alarm_;
  std::uint64_t wait_id_ = 0;
  bool hold_ = false;
  bool reading_ = false;
  bool read_over_ = false;    // a read failed: the connection is ending
  bool resume_due_ = false;   // the connection ended and is resumed: wait, once its context is released
  bool waiting_ = false;      // a wait before the next connection is on
  bool wake_ = false;         // the wait is over: connect
  bool alarm_done_ = false;   // the alarm's callback ran: drop the alarm
  bool connect_due_ = false;  // open the next connection
  bool end_told_ = false;     // the rule heard the end
};

// One client stream: a write reactor with one write() or finish() pending
// at a time. The reactor keeps itself alive (self_) from the start of the
// call until OnDone. The hold that keeps the call open is removed once no
// operation will start any more (broken, cancelled or finishing) and none
// is being started (starting_) or in flight.
template <typename Request, typename Response>
class AsyncWriterImpl final : public AsyncOperation,
                              public grpc::ClientWriteReactor<Request>,
                              public std::enable_shared_from_this<AsyncWriterImpl<Request, Response>> {
 public:
  using Step = PendingStep<AsyncWriterImpl>;
  using WriteDone = std::function<void(bool)>;
  using FinishDone = std::function<void(Result<Response>)>;

  explicit AsyncWriterImpl(StreamWatch watch) : watch_(std::move(watch)) {}

  // Starts the call, as AsyncReader::start does.
  template <typename Bind>
  void start(std::unique_ptr<grpc::ClientContext> ctx, Bind const& bind) {
    grpc::ClientContext* context = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ctx_ = StreamContext(std::move(ctx));
      context = ctx_.get();
      self_ = this->shared_from_this();
      hold_ = true;
    }
    try {
      bind(context, &response_, this);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      self_.reset();
      throw;
    }
    this->AddHold();  // no OnDone while write() or finish() may still start an operation
    this->StartCall();
  }

  void fail_to_start(Error error) {
    watch_.end(grpc::Status(error.code(), error.message()));
    std::lock_guard<std::mutex> lock(mu_);
    final_ = grpc::Status(error.code(), error.message());
    ctx_.call_over();
    done_.store(true, std::memory_order_release);
  }

  // Writes `request`; `done(true)` once gRPC took it, `done(false)` when the
  // stream is broken, cancelled or finished.
  template <typename Hook>
  std::shared_ptr<AsyncOperation> write(Request request, WriteDone done, Hook const& hook) {
    auto op = std::make_shared<Step>(this->shared_from_this());
    std::unique_lock<std::mutex> lock(mu_);
    check_idle("write()");
    if (broken_ || cancelled_ || finishing_ || final_) {
      lock.unlock();
      hook(std::shared_ptr<AsyncOperation>(op));
      complete(op, [&] { done(false); });
      return op;
    }
    message_ = std::move(request);
    writing_ = true;
    ++starting_;
    write_waiter_.emplace(std::move(done), op);
    lock.unlock();
    run_hook(hook, op);
    this->StartWrite(&message_);  // the hold keeps the call open
    lock.lock();
    --starting_;
    maybe_release_hold(lock);
    return op;
  }

  // Half-closes the stream; `done` gets the server's response or the status.
  template <typename Hook>
  std::shared_ptr<AsyncOperation> finish(FinishDone done, Hook const& hook) {
    auto op = std::make_shared<Step>(this->shared_from_this());
    std::unique_lock<std::mutex> lock(mu_);
    check_idle("finish()");
    if (finishing_) {
      lock.unlock();
      hook(std::shared_ptr<AsyncOperation>(op));
      complete(op, [&] {
        done(Result<Response>(
            Error(grpc::StatusCode::FAILED_PRECONDITION, "stubkit: finish() was called already")));
      });
      return op;
    }
    finishing_ = true;
    bool const half_close = !broken_ && !cancelled_ && !final_;
    if (half_close) ++starting_;
    finish_waiter_.emplace(std::move(done), op);
    lock.unlock();
    run_hook(hook, op, half_close);
    if (half_close) this->StartWritesDone();
    lock.lock();
    if (half_close) --starting_;
    maybe_release_hold(lock);
    settle(lock);  // a stream that could not start is over already
    return op;
  }

  void cancel() override {
    auto const keep = this->shared_from_this();  // a completion run from here may drop the last owner
    std::unique_lock<std::mutex> lock(mu_);
    if (cancelled_ || final_) return;
    cancelled_ = true;
    grpc::ClientContext* const ctx = ctx_.pin();
    lock.unlock();
    if (ctx != nullptr) ctx->TryCancel();  // a pending write ends with false, the call with CANCELLED
    lock.lock();
    if (ctx != nullptr) ctx_.unpin();
    maybe_release_hold(lock);
    settle(lock);
  }

  // The writer was dropped: cancel unless finish() was called.
  void abandon() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finishing_) return;
    }
    cancel();
  }

  void keep_until_done(std::shared_ptr<void> registration) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!done()) kept_.push_back(std::move(registration));
  }

  // A cancel through a step's handle: only while that step is pending.
  void cancel_pending(Step const* op) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      bool const pending = (write_waiter_ && write_waiter_->second.get() == op) ||
                           (finish_waiter_ && finish_waiter_->second.get() == op);
      if (!pending) return;
    }
    cancel();
  }

  // `ok` false: the call ended before the server sent anything (a
  // trailers-only answer, as a refused call gets): no write can get through.
  void OnReadInitialMetadataDone(bool ok) override {
    if (ok) return;
    std::unique_lock<std::mutex> lock(mu_);
    broken_ = true;
    maybe_release_hold(lock);
  }

  void OnWriteDone(bool ok) override {
    if (ok) watch_.count();  // one write at a time: only this thread touches watch_ now
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) broken_ = true;
    auto waiter = std::move(write_waiter_);
    write_waiter_.reset();
    maybe_release_hold(lock);
    lock.unlock();
    if (waiter) complete(waiter->second, [&] { waiter->first(ok); });
  }

  void OnDone(grpc::Status const& status) override {
    try {
      watch_.end(status);
    } catch (...) {  // out of memory: the event is lost, not the call
    }
    std::shared_ptr<AsyncWriterImpl> self;
    {
      std::unique_lock<std::mutex> lock(mu_);
      final_ = copy_of(status);
      ctx_.call_over();
      self = std::move(self_);
      settle(lock);
    }
    // self goes last (see AsyncReader::OnDone).
  }

 private:
  void check_idle(char const* what) {
    if (write_waiter_ || finish_waiter_) {
      throw std::logic_error(std::string("stubkit: ") + what +
                             " on an async writer whose previous write() or finish() has not completed");
    }
  }

  // Runs the token's hook. If it throws while the step is still pending,
  // the step is undone (nothing was started) and the exception goes to the
  // caller; if the step completed meanwhile, the hook's failure is moot.
  template <typename Hook>
  void run_hook(Hook const& hook, std::shared_ptr<Step> const& op, bool started = true) {
    try {
      hook(std::shared_ptr<AsyncOperation>(op));
    } catch (...) {
      std::optional<std::pair<WriteDone, std::shared_ptr<Step>>> write_dropped;  // dropped after the lock
      std::optional<std::pair<FinishDone, std::shared_ptr<Step>>> finish_dropped;
      std::unique_lock<std::mutex> lock(mu_);
      if (write_waiter_ && write_waiter_->second == op) {
        write_dropped = std::move(write_waiter_);
        write_waiter_.reset();
        writing_ = false;
      } else if (finish_waiter_ && finish_waiter_->second == op) {
        finish_dropped = std::move(finish_waiter_);
        finish_waiter_.reset();
        finishing_ = false;
      } else {
        return;  // completed already
      }
      if (started) --starting_;
      maybe_release_hold(lock);
      lock.unlock();
      throw;
    }
  }

  // Removes the hold once no operation will start or is in flight; mu_
  // held (released around the call into gRPC).
  void maybe_release_hold(std::unique_lock<std::mutex>& lock) {
    if (!hold_ || writing_ || starting_ != 0 || !(broken_ || cancelled_ || finishing_)) return;
    hold_ = false;
    lock.unlock();
    this->RemoveHold();  // OnDone may run on this thread: no lock is held
    lock.lock();
  }

  // Once the call is over: destroys the context (when nobody cancels
  // through it), then marks the writer done and delivers finish()'s result.
  // mu_ held (released around what it destroys and delivers; the
  // completion, and what it owns, are dropped before relocking).
  void settle(std::unique_lock<std::mutex>& lock) {
    if (auto ctx = ctx_.take_if_released()) {
      lock.unlock();
      ctx.reset();
      lock.lock();
      ctx_.destroyed();
    }
    if (!ctx_.released()) return;
    std::optional<std::pair<FinishDone, std::shared_ptr<Step>>> waiter = std::move(finish_waiter_);
    finish_waiter_.reset();
    std::optional<Result<Response>> result;
    if (waiter) {
      try {
        result.emplace(to_result(*final_, std::move(response_)));
      } catch (...) {  // out of memory: still a result, with no message
        result.emplace(Error(grpc::StatusCode::UNKNOWN, std::string()));
      }
    }
    done_.store(true, std::memory_order_release);
    std::vector<std::shared_ptr<void>> kept = std::move(kept_);
    kept_.clear();
    lock.unlock();
    kept.clear();  // stop callbacks: never dropped under mu_
    if (waiter) complete(waiter->second, [&] { waiter->first(*std::move(result)); });
    waiter.reset();  // the completion may own the writer: never dropped under mu_
    result.reset();
    lock.lock();
  }

  template <typename Call>
  static void complete(std::shared_ptr<Step> const& op, Call const& call) {
    std::shared_ptr<void> kept = op->complete();
    try {
      call();
    } catch (...) {
      completion_threw(std::current_exception(), "the completion of an async stream's write() or finish()");
    }
  }

  StreamWatch watch_;  // the writing thread's, then OnDone's
  Request message_;    // the message being written; gRPC's while writing_
  Response response_;  // filled by gRPC by OnDone
  std::shared_ptr<AsyncWriterImpl> self_;

  std::mutex mu_;
  StreamContext ctx_;
  std::optional<std::pair<WriteDone, std::shared_ptr<Step>>> write_waiter_;
  std::optional<std::pair<FinishDone, std::shared_ptr<Step>>> finish_waiter_;
  std::optional<grpc::Status> final_;
  std::vector<std::shared_ptr<void>> kept_;
  int starting_ = 0;  // operations being started with mu_ released
  bool hold_ = false;
  bool writing_ = false;
  bool broken_ = false;
  bool finishing_ = false;
  bool cancelled_ = false;
};

}  // namespace detail

/// A server stream read asynchronously: next() gives
/// `std::optional<Result<Response>>` (see async_sequence.hpp and the top of
/// this file). Its handle() is done once the call is over and its context
/// released: the moment its stub may go.
template <typename Response>
using AsyncStream = AsyncSequence<detail::AsyncReader<Response>>;

/// Opens a server-streaming method through the stub's callback method
/// (`&UserService::Stub::async::WatchUsers`). `options` gives the stream's
/// deadline, metadata and observer, as read_stream's; `filter`, if set,
/// drops the messages it returns false for. The stub must outlive the
/// stream's call (handle().done()).
template <typename Stub, typename AsyncClass, typename Request, typename Response>
AsyncStream<Response> async_read_stream(Stub& stub, AsyncReadMethod<AsyncClass, Request, Response> method,
                                        Request request, StreamOptions const& options = {},
                                        std::function<bool(detail::Same<Response> const&)> filter = {}) {
  std::optional<TraceContext> trace;
  auto ctx = detail::stream_context(options, &trace);
  auto reader = std::make_shared<detail::AsyncReader<Response>>(
      std::move(filter), detail::watch_stream<Request, Response>(options, trace));
  AsyncClass* const async = detail::async_of<Stub, AsyncClass>(stub);
  if (async == nullptr) {
    reader->fail_to_start(detail::no_callback_api("async_read_stream"));
  } else {
    auto owned = std::make_shared<Request>(std::move(request));
    Request const* const raw = owned.get();
    reader->start(
        {std::move(ctx), std::move(owned),
         [async, method, raw](grpc::ClientContext* context, grpc::ClientReadReactor<Response>* reactor) {
           (async->*method)(context, raw, reactor);
         }});
  }
  return AsyncStream<Response>(std::move(reader));
}

/// A client stream written asynchronously (see the top of this file).
/// Movable; destroying it before finish() cancels the call.
template <typename Request, typename Response>
class AsyncWriter : public detail::AsyncOwner<detail::AsyncWriterImpl<Request, Response>> {
  using Impl = detail::AsyncWriterImpl<Request, Response>;
  using detail::AsyncOwner<Impl>::impl_;

 public:
  explicit AsyncWriter(std::shared_ptr<Impl> impl) : detail::AsyncOwner<Impl>(std::move(impl)) {}
  AsyncWriter(AsyncWriter&&) noexcept = default;
  AsyncWriter& operator=(AsyncWriter&& other) noexcept {
    if (this != &other) {
      abandon();
      impl_ = std::move(other.impl_);
    }
    return *this;
  }
  AsyncWriter(AsyncWriter const&) = delete;
  AsyncWriter& operator=(AsyncWriter const&) = delete;
  ~AsyncWriter() { abandon(); }

  /// Sends `request`, completing through `token` with true once gRPC took
  /// it (the next write may follow), or false when the stream is broken,
  /// cancelled or finished (finish() says why). Throws std::logic_error
  /// while a write() or finish() is pending.
  template <typename Token>
  auto write(Request request, Token&& token) {
    return detail::Initiate<bool, std::decay_t<Token>>::run(
        std::forward<Token>(token), [impl = checked(), request = std::move(request)](
                                        std::function<void(bool)> done, auto const& hook) mutable {
          return impl->write(std::move(request), std::move(done), hook);
        });
  }

  /// Half-closes the stream, completing through `token` with the server's
  /// response or the status that ended the call.
  template <typename Token>
  auto finish(Token&& token) {
    return detail::Initiate<Result<Response>, std::decay_t<Token>>::run(
        std::forward<Token>(token),
        [impl = checked()](std::function<void(Result<Response>)> done, auto const& hook) {
          return impl->finish(std::move(done), hook);
        });
  }

#if defined(STUBKIT_HAS_COROUTINES)
  /// To co_await (C++20): `write(request, stubkit::use_awaitable)`.
  Awaitable<bool> write(Request request) { return write(std::move(request), use_awaitable); }
  /// To co_await (C++20): `finish(stubkit::use_awaitable)`.
  Awaitable<Result<Response>> finish() { return finish(use_awaitable); }
#endif

  // cancel(): cancels the call at once: a pending write() gives false,
  // finish() CANCELLED (unless the server had answered already).
  // cancel_on(stop_token): the same when `stop` is requested. handle():
  // done once the call is over and its context released, the moment its
  // stub may go (finish()'s completion, if finish() was called, runs right
  // after). See AsyncOwner.

 private:
  std::shared_ptr<Impl> const& checked() const {
    if (!impl_) throw std::logic_error("stubkit: a moved-from async writer");
    return impl_;
  }
  void abandon() {
    if (impl_) impl_->abandon();
  }
};

/// Opens a client-streaming method through the stub's callback method
/// (`&UserService::Stub::async::BulkCreateUsers`), with read_stream's
/// options. The stub must outlive the call (handle().done()).
template <typename Stub, typename AsyncClass, typename Request, typename Response>
AsyncWriter<Request, Response> async_write_stream(Stub& stub,
                                                  AsyncWriteMethod<AsyncClass, Request, Response> method,
                                                  StreamOptions const& options = {}) {
  std::optional<TraceContext> trace;
  auto ctx = detail::stream_context(options, &trace);
  auto writer = std::make_shared<detail::AsyncWriterImpl<Request, Response>>(
      detail::watch_stream<Request, Response>(options, trace));
  AsyncClass* const async = detail::async_of<Stub, AsyncClass>(stub);
  if (async == nullptr) {
    writer->fail_to_start(detail::no_callback_api("async_write_stream"));
  } else {
    writer->start(std::move(ctx), [&](grpc::ClientContext* context, Response* response,
                                      grpc::ClientWriteReactor<Request>* reactor) {
      (async->*method)(context, response, reactor);
    });
  }
  return AsyncWriter<Request, Response>(std::move(writer));
}

}  // namespace stubkit

#endif  // STUBKIT_ASYNC_STREAM_HPP
