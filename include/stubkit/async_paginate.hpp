// Async pagination: paginate's listings (paginate.hpp) with no thread
// blocked. Each page is an async call (async.hpp), and each element is
// asked for with next(), which completes through any of async.hpp's forms:
//
//   // C++20, a coroutine (stubkit::Task, or asio's with stubkit/asio.hpp):
//   auto users = stubkit::async_paginate(stub, &UserService::Stub::async::ListUsers, request);
//   while (auto user = co_await users.next()) {     // nullopt at the end
//     if (!*user) co_return handle((*user).error());  // the error that ended it
//     use(**user);
//   }
//
//   // a callback, run on a gRPC thread (or inline when the element is at hand):
//   users.next([](std::optional<stubkit::Result<User>> user) { ... });
//
// The guards are paginate's own (detail::PageGuard): page_size, max_items,
// page_timeout, the listing's deadline, stuck or cyclic page tokens, runs of
// empty pages, the listing's trace and its page events. With
// `options.prefetch`, the next page is requested before the current page's
// first element is delivered, so it comes while that page is consumed. Each page call also takes a
// CallOptions (a retry policy, wait_for_ready, metadata...), so a page that
// fails with a retryable code is retried as stubkit::call would.
//
// One consumer: one next() at a time (a second one while the first is
// pending throws std::logic_error; through an asio token, which may start
// it where nothing can throw, it completes with FAILED_PRECONDITION). An
// element at hand (an item of the current page, the end, an error) is
// delivered at once by the thread that is draining the listing: the caller
// of next() when no other is, else a gRPC thread still returning from the
// previous completion, or a thread inside cancel(). An element not at hand
// comes on the gRPC thread that delivered its page. So never block on a
// next() (its future's get()) inside a completion. A callback that calls
// next() again is not run recursively: the thread that delivers loops, so
// a long page costs no stack. The accessor that names the repeated field
// runs under the listing's lock: it must only return the field.
//
// Cancellation. cancel(), a std::stop_token given to cancel_on() (C++20),
// destroying the listing, cancelling a pending
// next()'s handle, future or awaitable (a next() already completed cancels
// nothing), or asio's cancellation slot: the listing ends with CANCELLED at
// once, whatever it is doing (a page call in flight is cancelled, a page at
// hand is dropped). If anything was left undelivered, the next element is
// the CANCELLED error, then the end; a listing with only its end left, or
// already ended, stays ended. A step that fails (out of memory, a clock
// that throws) ends the listing the same way, with that error.
//
// Ownership. The stub must outlive the listing's last page call: a listing
// destroyed or cancelled while a page call is in flight cancels that call,
// which completes soon after on a gRPC thread. handle().done() says when
// the listing makes no more page calls; the handle outlives the listing.
// The listing holds no gRPC object of its own (each page call holds its
// context as async_call does).
#ifndef STUBKIT_ASYNC_PAGINATE_HPP
#define STUBKIT_ASYNC_PAGINATE_HPP

#include <algorithm>
#include <chrono>
#include <cstddef>
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
#include "stubkit/paginate.hpp"

namespace stubkit {

namespace detail {

// One async listing: the page calls, the guards, the current page (items
// view) and the page fetched ahead. Its elements are handed out by
// AsyncElements' drainer (see async_sequence.hpp), which alone
// touches guard_, page_, index_ and yielded_. The page fetched, the call in
// flight and fetching_ are under mu_. As an operation
// (AsyncListing::handle()), the listing is done once it makes no more page
// calls: it has ended or was cancelled, and no page call is in flight.
template <typename Request, typename Response, typename Accessor, bool kItems>
class AsyncLister final
    : public AsyncElements<AsyncLister<Request, Response, Accessor, kItems>,
                           Result<std::conditional_t<kItems, ItemOf<Accessor, Response>, Response>>>,
      public std::enable_shared_from_this<AsyncLister<Request, Response, Accessor, kItems>> {
  using Base =
      AsyncElements<AsyncLister, Result<std::conditional_t<kItems, ItemOf<Accessor, Response>, Response>>>;
  friend Base;

 public:
  using Item = ItemOf<Accessor, Response>;
  using Out = typename Base::Out;
  using PageDone = std::function<void(Result<Response>)>;
  // Starts one page call; returns its operation (null when it completed inline).
  using Fetch = std::function<std::shared_ptr<AsyncOperation>(Request, CallOptions, PageDone)>;

  static constexpr char const* kStepName = "an async listing's step";
  static constexpr char const* kCancelledMessage = "stubkit: the listing was cancelled";

  AsyncLister(Fetch fetch, Request request, PaginateOptions options, CallOptions call, Accessor items)
      : fetch_(std::move(fetch)),
        call_(std::move(call)),
        items_(std::move(items)),
        guard_(std::move(request), std::move(options), item_counter<Response>(items_)) {}

  AsyncLister(AsyncLister const&) = delete;
  AsyncLister& operator=(AsyncLister const&) = delete;

 private:
  using Base::mu_;

  // AsyncElements' hooks (mu_ held, by the drainer).
  void before_delivery(std::unique_lock<std::mutex>& lock) {
    // Prefetch: the next page is asked for before this element is
    // delivered, so it comes while the caller works on this one.
    if (fetch_due() && guard_.options().prefetch) start_fetch(lock);
  }

  bool pump(std::unique_lock<std::mutex>& lock, bool waiting) {
    if (!fetch_due() || !(waiting || guard_.options().prefetch)) return false;
    start_fetch(lock);
    return true;
  }

  void drop_rest() {
    buffered_.reset();
    page_.reset();
  }

  // Stops the page call in flight, if any (run with mu_ released).
  auto stop_source() {
    return [call = inflight_] {
      if (call) call->cancel();
    };
  }

  bool finished_with_source() const {
    return !fetching_ && (this->stopping() || this->over() || !guard_.more());
  }

  // Another page is to be fetched, and none is on its way or at hand.
  bool fetch_due() { return !fetching_ && !buffered_ && !this->stopping() && guard_.more(); }

  // Nothing is left to deliver but the end.
  bool nothing_left() {
    std::size_t const max = guard_.options().max_items;
    bool const page_done = !page_ || index_ >= items_(*page_)->size() || (max != 0 && yielded_ >= max);
    return page_done && !buffered_ && guard_.finished();
  }

  std::optional<Out> produce_next() {
    if constexpr (kItems) {
      for (;;) {
        std::size_t const max = guard_.options().max_items;
        if (max != 0 && yielded_ >= max) {
          page_.reset();
          return Base::the_end();
        }
        if (page_ && index_ < items_(*page_)->size()) {
          Item item = std::move(*items_(*page_)->Mutable(index_++));
          ++yielded_;
          return Out{Result<Item>(std::move(item))};
        }
        page_.reset();
        if (auto end = end_of_listing()) return end;
        if (!buffered_) return std::nullopt;
        Result<Response> page = take_buffered();
        if (!page.ok()) return Out{Result<Item>(std::move(page).error())};
        page_.emplace(*std::move(page));
        index_ = 0;
      }
    } else {
      if (auto end = end_of_listing()) return end;
      if (!buffered_) return std::nullopt;
      return Out{take_buffered()};
    }
  }

  // The end, or the error that ends the listing, if that is what is next.
  std::optional<Out> end_of_listing() {
    if (guard_.finished()) return Base::the_end();
    if (auto error = guard_.take_pending_error()) return Out{*std::move(error)};
    return std::nullopt;
  }

  Result<Response> take_buffered() {
    Result<Response> page = *std::move(buffered_);
    buffered_.reset();
    guard_.accept(page);
    return page;
  }

  // Starts the call of the next page; mu_ held on entry and on return.
  void start_fetch(std::unique_lock<std::mutex>& lock) {
    fetching_ = true;
    std::uint64_t const id = ++fetch_id_;
    lock.unlock();
    std::shared_ptr<AsyncOperation> op;
    std::optional<Error> failed;
    try {  // the caller's clock runs here too
      failed = guard_.deadline_error();
      if (!failed) {
        op = fetch_(guard_.next_request(), page_call(),
                    [self = this->shared_from_this(), id, start = std::chrono::steady_clock::now()](
                        Result<Response> page) { self->on_page(id, start, std::move(page)); });
      }
    } catch (...) {
      failed = Error::from(callback_threw("the start of a page call", std::current_exception()));
    }
    lock.lock();
    if (failed) {
      fetching_ = false;
      buffered_.emplace(*std::move(failed));
      return;
    }
    bool cancel_it = false;
    if (op && fetching_ && fetch_id_ == id) {
      inflight_ = op;
      if (!this->cancelled()) return;
      cancel_it = true;  // a cancel that came meanwhile found no call to cancel
    }
    lock.unlock();
    if (cancel_it) op->cancel();
    op.reset();  // if the call completed already, the last reference: dropped unlocked
    lock.lock();
  }

  // The options of one page call: the caller's, with the listing's metadata
  // (its trace first) and its page deadline.
  CallOptions page_call() const {
    CallOptions call = call_;
    auto const& metadata = guard_.options().metadata;
    call.metadata.insert(call.metadata.begin(), metadata.begin(), metadata.end());
    if (auto deadline = guard_.page_deadline()) {
      call.deadline = call.deadline ? std::min(*call.deadline, *deadline) : *deadline;
    }
    return call;
  }

  void on_page(std::uint64_t id, std::chrono::steady_clock::time_point start, Result<Response> page) {
    std::shared_ptr<AsyncOperation> call;
    std::int64_t number = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!this->stopping()) number = ++pages_seen_;  // a page nobody will read is no page of the listing
    }
    if (number != 0 && guard_observer_ != nullptr) {
      try {  // a failure to report must not lose the page
        notify(guard_observer_,
               page_event(method_name<Request, Response>(guard_.options().method), trace_id_, number, start,
                          page, page.ok() ? static_cast<std::size_t>(items_(*page)->size()) : 0));
      } catch (...) {
      }
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (fetch_id_ == id) {
      fetching_ = false;
      call = std::move(inflight_);
      if (!this->stopping()) buffered_.emplace(std::move(page));
    }
    this->drain(lock);
    lock.unlock();
    call.reset();  // the page call's operation, which holds no gRPC object by now
  }

  Fetch fetch_;
  CallOptions call_;
  Accessor items_;
  PageGuard<Request, Response> guard_;
  Observer* const guard_observer_ = guard_.observer();
  std::string const trace_id_{guard_.trace_id()};

  // The drainer's.
  std::optional<Response> page_;  // items view: the page being consumed
  int index_ = 0;
  std::size_t yielded_ = 0;

  // Under mu_.
  std::optional<Result<Response>> buffered_;  // the page fetched, not yet delivered
  std::shared_ptr<AsyncOperation> inflight_;  // the page call in flight
  std::uint64_t fetch_id_ = 0;
  std::int64_t pages_seen_ = 0;
  bool fetching_ = false;
};

}  // namespace detail

/// An async listing: its items (kItems) or its pages, one next() at a time
/// (see the top of this file and AsyncSequence). Movable; destroying it
/// cancels the listing. Its handle() is done once the listing makes no more
/// page calls (it has ended, or was cancelled, and no page call is in
/// flight): the moment its stub may go.
template <typename Request, typename Response, typename Accessor, bool kItems>
using AsyncListing = AsyncSequence<detail::AsyncLister<Request, Response, Accessor, kItems>>;

/// The items of an async listing; next() gives `std::optional<Result<Item>>`.
template <typename Request, typename Response, typename Accessor>
using AsyncItems = AsyncListing<Request, Response, Accessor, true>;
/// The pages of an async listing; next() gives `std::optional<Result<Response>>`.
template <typename Request, typename Response, typename Accessor>
using AsyncPages = AsyncListing<Request, Response, Accessor, false>;

namespace detail {

template <bool kItems, typename Stub, typename AsyncClass, typename Request, typename Response,
          typename Accessor>
AsyncListing<Request, Response, Accessor, kItems> make_async_listing(
    Stub& stub, AsyncUnaryMethod<AsyncClass, Request, Response> method, Request request, Accessor items,
    PaginateOptions options, CallOptions call) {
  check_async_stub<Stub, AsyncClass>();
  using Lister = AsyncLister<Request, Response, Accessor, kItems>;
  typename Lister::Fetch fetch = [&stub, method](Request page_request, CallOptions page_options,
                                                 typename Lister::PageDone done) {
    return start_unary(stub, method, std::move(page_request), std::move(page_options), std::move(done),
                       NoStop{});
  };
  return AsyncListing<Request, Response, Accessor, kItems>(std::make_shared<Lister>(
      std::move(fetch), std::move(request), std::move(options), std::move(call), std::move(items)));
}

}  // namespace detail

/// The items of a List method, listed asynchronously: `method` is the
/// stub's callback method (`&UserService::Stub::async::ListUsers`), the
/// response type needs PageTraits, and each page call runs with `call`
/// (retries, metadata, wait_for_ready; its deadline is the page's if that is
/// earlier). The stub must outlive the listing and its last page call.
template <typename Stub, typename AsyncClass, typename Request, typename Response>
auto async_paginate(Stub& stub, AsyncUnaryMethod<AsyncClass, Request, Response> method, Request request,
                    PaginateOptions options = {}, CallOptions call = {}) {
  return detail::make_async_listing<true>(stub, method, std::move(request),
                                          detail::TraitsAccessor<Response>{}, std::move(options),
                                          std::move(call));
}

/// As above, naming the repeated field with `items`:
/// `[](ListBooksResponse& r) { return r.mutable_books(); }`.
template <typename Stub, typename AsyncClass, typename Request, typename Response, typename Accessor,
          typename = std::enable_if_t<std::is_invocable_v<Accessor const&, Response&>>>
auto async_paginate(Stub& stub, AsyncUnaryMethod<AsyncClass, Request, Response> method, Request request,
                    Accessor items, PaginateOptions options = {}, CallOptions call = {}) {
  return detail::make_async_listing<true>(stub, method, std::move(request), std::move(items),
                                          std::move(options), std::move(call));
}

/// The pages of a List method, listed asynchronously (empty pages too; a
/// page's next_page_token() resumes the listing later).
template <typename Stub, typename AsyncClass, typename Request, typename Response>
auto async_paginate_pages(Stub& stub, AsyncUnaryMethod<AsyncClass, Request, Response> method, Request request,
                          PaginateOptions options = {}, CallOptions call = {}) {
  return detail::make_async_listing<false>(stub, method, std::move(request),
                                           detail::TraitsAccessor<Response>{}, std::move(options),
                                           std::move(call));
}

/// The pages of a List method, naming the repeated field with `items`.
template <typename Stub, typename AsyncClass, typename Request, typename Response, typename Accessor,
          typename = std::enable_if_t<std::is_invocable_v<Accessor const&, Response&>>>
auto async_paginate_pages(Stub& stub, AsyncUnaryMethod<AsyncClass, Request, Response> method, Request request,
                          Accessor items, PaginateOptions options = {}, CallOptions call = {}) {
  return detail::make_async_listing<false>(stub, method, std::move(request), std::move(items),
                                           std::move(options), std::move(call));
}

}  // namespace stubkit

#endif  // STUBKIT_ASYNC_PAGINATE_HPP
