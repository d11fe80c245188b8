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
// consumer slows the server, never fills memory. `filter` (e.g. dropping heartbeats) runs on the gRPC thread
// that read the message; a message it rejects is not delivered. Where completions run, and the
// one-next()-at-a-time rule, are the async listing's (async_paginate.hpp). The last element is the stream's
// status when it is not OK; an OK end is nullopt.
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

#include <grpcpp/client_context.h>
#include <grpcpp/support/client_callback.h>

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

inline Error no_callback_api(char const* what) {
  return Error(grpc::StatusCode::FAILED_PRECONDITION,
               std::string("stubkit::") + what +
                   ": the stub has no callback API (its async() returned null, as a StubInterface "
                   "mock's does unless mocked)");
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
  bool is_over() const { return over_; }

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

// One server stream: a read reactor feeding an async sequence. Reads,
// the hold and the release of the context are the drainer's; OnReadDone
// and OnDone record what came (under mu_) and drain. The reactor keeps
// itself alive (self_) from the start of the call until OnDone.
template <typename Response>
class AsyncReader final : public AsyncElements<AsyncReader<Response>, Result<Response>>,
                          public grpc::ClientReadReactor<Response>,
                          public std::enable_shared_from_this<AsyncReader<Response>> {
  using Base = AsyncElements<AsyncReader, Result<Response>>;
  friend Base;

 public:
  using Out = typename Base::Out;
  using Filter = std::function<bool(Response const&)>;

  static constexpr char const* kStepName = "an async stream's step";
  static constexpr char const* kCancelledMessage = "stubkit: the stream was cancelled";

  AsyncReader(Filter filter, StreamWatch watch) : filter_(std::move(filter)), watch_(std::move(watch)) {}

  // Starts the call: `bind(ctx, reactor)` calls the stub's method. No lock
  // is held across gRPC's calls (a reaction may run on this thread when it
  // is one of gRPC's); none can come before StartCall.
  // `request` is kept until OnDone: gRPC (an interceptor) may serialize it
  // late.
  template <typename Bind>
  void start(std::unique_ptr<grpc::ClientContext> ctx, std::shared_ptr<void> request, Bind const& bind) {
    grpc::ClientContext* context = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ctx_ = StreamContext(std::move(ctx));
      context = ctx_.get();
      self_ = this->shared_from_this();
      request_ = std::move(request);
      hold_ = true;
      reading_ = true;
    }
    try {
      bind(context, this);
    } catch (...) {  // no call was made: nothing will end it
      std::lock_guard<std::mutex> lock(mu_);
      self_.reset();
      throw;
    }
    this->AddHold();  // no OnDone while a read may still be started from outside a reaction
    this->StartRead(&incoming_);
    this->StartCall();
  }

  // The stream could not start: its only element is `error`.
  void fail_to_start(Error error) {
    watch_.end(grpc::Status(error.code(), error.message()));
    std::lock_guard<std::mutex> lock(mu_);
    final_ = grpc::Status(error.code(), error.message());
    start_error_ = std::move(error);
    ctx_.call_over();
    this->done_.store(true, std::memory_order_release);  // no call: finished with gRPC
  }

  void OnReadDone(bool ok) override {
    bool keep = true;
    std::exception_ptr filter_error;
    if (ok) {
      watch_.count();  // one read at a time: only this thread touches watch_ now
      if (filter_) {
        try {
          keep = filter_(incoming_);
        } catch (...) {
          filter_error = std::current_exception();
        }
      }
    }
    std::unique_lock<std::mutex> lock(mu_);
    reading_ = false;
    if (!ok) {
      read_over_ = true;
    } else if (filter_error) {
      this->fail(lock, filter_error);
    } else if (keep && !this->stopping()) {
      if (!buffered_) {
        buffered_.emplace(std::move(incoming_));
      } else {
        held_ = true;  // incoming_ waits; no read until it moves on
      }
    }
    this->drain(lock);
  }

  void OnDone(grpc::Status const& status) override {
    try {
      watch_.end(status);
    } catch (...) {  // out of memory: the event is lost, not the stream
    }
    std::shared_ptr<AsyncReader> self;
    std::shared_ptr<void> request;
    {
      std::unique_lock<std::mutex> lock(mu_);
      final_ = copy_of(status);
      ctx_.call_over();
      self = std::move(self_);
      request = std::move(request_);
      this->drain(lock);
    }
    // self goes last: the reactor may end here, which gRPC allows once
    // OnDone has been called.
  }

 private:
  using Base::mu_;

  // AsyncElements' hooks (mu_ held, by the drainer).
  void before_delivery(std::unique_lock<std::mutex>& lock) { start_read_if_due(lock); }

  bool pump(std::unique_lock<std::mutex>& lock, bool /*waiting*/) {
    if (start_read_if_due(lock)) return true;
    if (hold_ && !reading_ && (read_over_ || this->stopping())) {
      hold_ = false;  // no more reads: let the call end
      lock.unlock();
      this->RemoveHold();  // OnDone may run on this thread: no lock is held
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
    return false;
  }

  bool start_read_if_due(std::unique_lock<std::mutex>& lock) {
    // One message may wait in buffered_ while a read fills incoming_.
    if (!hold_ || reading_ || held_ || read_over_ || this->stopping()) return false;
    reading_ = true;
    lock.unlock();
    this->StartRead(&incoming_);
    lock.lock();
    return true;
  }

  void drop_rest() {
    buffered_.reset();
    held_ = false;
  }

  // Cancels the call (TryCancel with mu_ released).
  auto stop_source() {
    grpc::ClientContext* const ctx = ctx_.pin();
    return [this, ctx] {
      if (ctx == nullptr) return;
      ctx->TryCancel();
      std::lock_guard<std::mutex> lock(mu_);
      ctx_.unpin();  // the drainer (or the next drain) releases the context
    };
  }

  bool finished_with_source() const { return final_.has_value() && ctx_.released(); }

  // Only the status is left: the server ended the stream and every message
  // was delivered. A cancel then gives that status, not CANCELLED.
  bool nothing_left() const { return (read_over_ || start_error_) && !buffered_ && !held_; }

  std::optional<Out> produce_next() {
    if (buffered_) {
      Response message = std::move(*buffered_);
      buffered_.reset();
      if (held_) {
        buffered_.emplace(std::move(incoming_));
        held_ = false;
      }
      return Out{Result<Response>(std::move(message))};
    }
    if (start_error_) return Out{Result<Response>(*start_error_)};
    if (!final_) return std::nullopt;
    if (final_->ok()) return Base::the_end();
    return Out{Result<Response>(Error::from(*final_))};
  }

  Filter filter_;
  StreamWatch watch_;                  // the reading thread's, then OnDone's
  Response incoming_;                  // the read target; gRPC's while reading_
  std::shared_ptr<AsyncReader> self_;  // alive until OnDone
  std::shared_ptr<void> request_;      // the request, until OnDone

  // Under mu_.
  StreamContext ctx_;
  std::optional<Response> buffered_;  // the message next() gets next
  std::optional<grpc::Status> final_;
  std::optional<Error> start_error_;
  bool hold_ = false;
  bool reading_ = false;
  bool held_ = false;       // incoming_ holds a second message
  bool read_over_ = false;  // a read failed: the server ended the stream (or it broke)
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

template <typename Stub, typename AsyncClass>
AsyncClass* async_of(Stub& stub) {
  check_async_stub<Stub, AsyncClass>();
  return stub.async();
}

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
    reader->start(std::move(ctx), owned,
                  [&](grpc::ClientContext* context, grpc::ClientReadReactor<Response>* reactor) {
                    (async->*method)(context, owned.get(), reactor);
                  });
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
