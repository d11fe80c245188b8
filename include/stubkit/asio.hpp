// stubkit's async operations with standalone asio (Debian libasio-dev;
// optional: only this header needs it): async_call (async.hpp) and the next
// element of an async listing (async_paginate.hpp). Any asio completion
// token works, and the completion runs on the token's associated executor,
// not on gRPC's thread:
//
//   asio::awaitable<void> handle(UserService::Stub& stub) {
//     stubkit::Result<User> user = co_await stubkit::async_call(
//         stub, &UserService::Stub::async::GetUser, request, options, asio::use_awaitable);
//   }
//
// asio's cancellation reaches the operation: a token whose cancellation
// slot is connected (asio::bind_cancellation_slot, a co_spawn'ed
// coroutine's, the operators of asio::experimental::awaitable_operators)
// ends it promptly with CANCELLED, as AsyncHandle::cancel() does (for a
// listing's next element, the listing is cancelled). Until the operation
// completes it counts as outstanding work of the executor, so
// io_context::run() does not return under it.
//
// Which form: asio's tokens (asio::use_awaitable, asio::use_future,
// asio::deferred, asio::detached, ...) and handlers bound with
// asio::bind_executor or asio::bind_cancellation_slot go through asio; a
// plain callable (a lambda) stays async.hpp's callback form and runs on a
// gRPC thread. Only terminal cancellation is honoured (a call cancelled in
// flight may have had effects on the server). Keep the io_context alive
// until its operations have completed: a completion is posted to its
// executor, and run() does not return before the gRPC thread that posted
// it is out of asio's code. An operation that cannot start (a listing's
// second pending next()) completes with FAILED_PRECONDITION instead of
// throwing: asio may start it inside a noexcept await_suspend.
#ifndef STUBKIT_ASIO_HPP
#define STUBKIT_ASIO_HPP

#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>
#include <asio/cancellation_type.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/post.hpp>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "stubkit/async.hpp"

namespace stubkit {

namespace detail {

// The tags of async.hpp are not asio tokens.
template <typename Token>
inline constexpr bool is_stubkit_tag_v = std::is_same_v<std::decay_t<Token>, use_future_t>
#if defined(STUBKIT_HAS_COROUTINES)
                                         || std::is_same_v<std::decay_t<Token>, use_awaitable_t>
#endif
    ;

// asio's binders wrap a handler with an executor or a cancellation slot:
// they are callables, but must go through asio to be honoured.
template <typename T, typename Executor>
struct ForeignToken<asio::executor_binder<T, Executor>> : std::true_type {};
template <typename T, typename Slot>
struct ForeignToken<asio::cancellation_slot_binder<T, Slot>> : std::true_type {};

template <typename T, typename Token>
inline constexpr bool is_asio_token_v = !is_completion_for_v<T, Token> && !is_stubkit_tag_v<Token>;

// Cancels a call from asio's cancellation slot. The slot may fire before
// the call has its handle (it is installed first, so no cancel is missed).
struct AsioCancel {
  struct Target {
    std::mutex mu;
    AsyncHandle handle;
    bool started = false;
    bool cancel_requested = false;
  };
  std::shared_ptr<Target> target;

  void operator()(asio::cancellation_type type) const {
    // Only terminal cancellation is honoured: a call cancelled in flight may
    // have had effects on the server, which partial and total promise not.
    if ((type & asio::cancellation_type::terminal) == asio::cancellation_type::none) return;
    AsyncHandle handle;
    {
      std::lock_guard<std::mutex> lock(target->mu);
      if (!target->started) {
        target->cancel_requested = true;
        return;
      }
      handle = target->handle;
    }
    handle.cancel();
  }
};

// Hands the result to an asio handler on its executor: the slot is cleared
// and the handler invoked there, where the slot is also emitted from.
template <typename Handler, typename T>
struct AsioCompletion {
  Handler handler;
  asio::executor_work_guard<asio::associated_executor_t<Handler>> work;

  AsioCompletion(Handler h) : handler(std::move(h)), work(asio::make_work_guard(handler)) {}

  static void complete(std::shared_ptr<AsioCompletion> self, T result) {
    // This (gRPC) thread holds work of its own until post() has returned:
    // asio wakes the executor's thread after releasing its lock, so without
    // it the handler could run, run() return and the io_context be destroyed
    // while this thread is still inside post().
    auto posting = self->work;
    asio::post(posting.get_executor(), [self = std::move(self), result = std::move(result)]() mutable {
      auto slot = asio::get_associated_cancellation_slot(self->handler);
      if (slot.is_connected()) slot.clear();
      Handler handler = std::move(self->handler);
      self->work.reset();
      std::move(handler)(std::move(result));
    });
    posting.reset();
  }
};

// An operation of async.hpp (an async call, or the next element of an async
// listing) completed through an asio completion token, e.g.
// `co_await stubkit::async_call(..., asio::use_awaitable)`. The operation
// starts when asio initiates it (for asio::use_awaitable, when awaited).
template <typename T, typename Token>
struct Initiate<T, Token, std::enable_if_t<is_asio_token_v<T, Token>>> {
  template <typename AsioToken, typename Start>
  static auto run(AsioToken&& token, Start&& start) {
    auto initiation = [start = std::forward<Start>(start)](auto handler) mutable {
      using Handler = decltype(handler);
      auto target = std::make_shared<AsioCancel::Target>();
      auto slot = asio::get_associated_cancellation_slot(handler);
      if (slot.is_connected()) slot.template emplace<AsioCancel>(AsioCancel{target});
      auto completion = std::make_shared<AsioCompletion<Handler, T>>(std::move(handler));
      // The slot's target gets the operation before it begins, so a cancel
      // that came first means no attempt at all.
      // asio may start the operation where nothing can throw (use_awaitable
      // starts it inside a noexcept await_suspend): a failure to start (a
      // listing's second pending next()) completes the handler instead.
      try {
        start([completion](T result) { AsioCompletion<Handler, T>::complete(completion, std::move(result)); },
              [&target](std::shared_ptr<AsyncOperation> const& op) {
                bool cancel_now = false;
                {
                  std::lock_guard<std::mutex> lock(target->mu);
                  target->handle = AsyncHandle(op);
                  target->started = true;
                  cancel_now = target->cancel_requested;
                }
                if (cancel_now) op->cancel();
              });
      } catch (std::logic_error const& misuse) {
        AsioCompletion<Handler, T>::complete(
            completion, ErrorValue<T>::make(Error(grpc::StatusCode::FAILED_PRECONDITION, misuse.what())));
      } catch (...) {
        AsioCompletion<Handler, T>::complete(
            completion, ErrorValue<T>::make(
                            Error::from(callback_threw("starting the operation", std::current_exception()))));
      }
    };
    return asio::async_initiate<AsioToken, void(T)>(std::move(initiation), token);
  }
};

}  // namespace detail

}  // namespace stubkit

#endif  // STUBKIT_ASIO_HPP
