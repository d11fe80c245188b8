// stubkit's async calls with standalone asio (Debian libasio-dev; optional:
// only this header needs it). Any asio completion token works, and the
// completion runs on the token's associated executor, not on gRPC's thread:
//
//   asio::awaitable<void> handle(UserService::Stub& stub) {
//     stubkit::Result<User> user = co_await stubkit::async_call(
//         stub, &UserService::Stub::async::GetUser, request, options, asio::use_awaitable);
//   }
//
// asio's cancellation reaches the call: a token whose cancellation slot is
// connected (asio::bind_cancellation_slot, a co_spawn'ed coroutine's, the
// operators of asio::experimental::awaitable_operators) ends the call
// promptly with CANCELLED, as AsyncHandle::cancel() does. Until the call
// completes it counts as outstanding work of the executor, so
// io_context::run() does not return under it.
//
// Which overload: asio's tokens (asio::use_awaitable, asio::use_future,
// asio::deferred, asio::detached, ...) and handlers bound with
// asio::bind_executor or asio::bind_cancellation_slot take this one; a plain
// callable (a lambda) stays async.hpp's callback form and runs on a gRPC
// thread. Only terminal cancellation is honoured (a call cancelled in flight
// may have had effects on the server). Keep the io_context alive until its
// calls have completed: a completion is posted to its executor.
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

template <typename Response, typename Token>
inline constexpr bool is_asio_token_v = !is_completion_v<Response, Token> && !is_stubkit_tag_v<Token>;

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
template <typename Handler, typename Response>
struct AsioCompletion {
  Handler handler;
  asio::executor_work_guard<asio::associated_executor_t<Handler>> work;

  AsioCompletion(Handler h) : handler(std::move(h)), work(asio::make_work_guard(handler)) {}

  static void complete(std::shared_ptr<AsioCompletion> self, Result<Response> result) {
    auto executor = self->work.get_executor();
    asio::post(executor, [self = std::move(self), result = std::move(result)]() mutable {
      auto slot = asio::get_associated_cancellation_slot(self->handler);
      if (slot.is_connected()) slot.clear();
      Handler handler = std::move(self->handler);
      self->work.reset();
      std::move(handler)(std::move(result));
    });
  }
};

}  // namespace detail

/// stubkit::async_call (async.hpp) completed through an asio completion
/// token, e.g. `co_await stubkit::async_call(..., asio::use_awaitable)`.
template <typename Stub, typename AsyncClass, typename Request, typename Response, typename Token,
          std::enable_if_t<detail::is_asio_token_v<Response, Token>, int> = 0>
auto async_call(Stub& stub, AsyncUnaryMethod<AsyncClass, Request, Response> method, Request request,
                CallOptions options, Token&& token) {
  auto initiation = [&stub, method](auto handler, Request request, CallOptions options) {
    using Handler = decltype(handler);
    auto target = std::make_shared<detail::AsioCancel::Target>();
    auto slot = asio::get_associated_cancellation_slot(handler);
    if (slot.is_connected()) slot.template emplace<detail::AsioCancel>(detail::AsioCancel{target});
    auto completion = std::make_shared<detail::AsioCompletion<Handler, Response>>(std::move(handler));
    // The slot's target gets the call before its first attempt, so a cancel
    // that came first means no attempt at all.
    detail::start_unary(
        stub, method, std::move(request), std::move(options),
        [completion](Result<Response> result) {
          detail::AsioCompletion<Handler, Response>::complete(completion, std::move(result));
        },
        [&target](std::shared_ptr<detail::AsyncOperation> const& op) {
          bool cancel_now = false;
          {
            std::lock_guard<std::mutex> lock(target->mu);
            target->handle = AsyncHandle(op);
            target->started = true;
            cancel_now = target->cancel_requested;
          }
          if (cancel_now) op->cancel();
        });
  };
  return asio::async_initiate<Token, void(Result<Response>)>(std::move(initiation), token, std::move(request),
                                                             std::move(options));
}

}  // namespace stubkit

#endif  // STUBKIT_ASIO_HPP
