// Auto-pagination for List methods shaped as Google AIP-158 describes:
// `page_size` and `page_token` in the request, one repeated field and
// `next_page_token` in the response.
//
//   for (auto& user : stubkit::paginate(*stub, &UserService::Stub::ListUsers, request)) {
//     if (!user) return handle(user.error());   // the error that ended the listing
//     use(*user);
//   }
//
//   for (auto& page : stubkit::paginate_pages(*stub, &UserService::Stub::ListUsers, request)) {
//     if (!page) return handle(page.error());
//     save(page->next_page_token());            // resume later from here
//   }
//
// Ranges are lazy: one page is fetched at a time and at most one page is
// held (two with prefetch). Servers that misbehave end the listing with a
// clear error instead of looping: a page token seen before (stuck or
// cyclic tokens), or a long run of empty pages. Empty pages that carry a
// next token are skipped; pages larger than asked for are accepted.
//
// The repeated field is named once per response type, by specializing
// PageTraits or by passing an accessor:
//
//   stubkit::paginate(*stub, &BookService::Stub::ListBooks, request,
//                     [](ListBooksResponse& r) { return r.mutable_books(); });
#ifndef STUBKIT_PAGINATE_HPP
#define STUBKIT_PAGINATE_HPP

#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "google/protobuf/message.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "stubkit/detail/input_range.hpp"
#include "stubkit/detail/method.hpp"
#include "stubkit/detail/time.hpp"
#include "stubkit/observe.hpp"
#include "stubkit/status.hpp"
#include "stubkit/trace.hpp"

namespace stubkit {

/// Names the repeated field of a List response. Specialize it once per
/// response type to call paginate() without an accessor:
///
///   template <> struct stubkit::PageTraits<ListBooksResponse> {
///     static auto* items(ListBooksResponse& r) { return r.mutable_books(); }
///   };
template <typename Response>
struct PageTraits;

/// How a listing runs. Every field has a safe default.
struct PaginateOptions {
  /// Items per page to ask for; 0 keeps the request's own page_size (0 there
  /// means the server's default).
  int page_size = 0;
  /// Stop after this many items; 0 = no limit. Pages then ask for no more
  /// items than remain, and extra items of a larger page are dropped.
  std::size_t max_items = 0;
  /// Deadline of each page call; zero = none (beyond `deadline`).
  std::chrono::milliseconds page_timeout{0};
  /// Deadline of the whole listing: each page call ends by it, and no page
  /// is requested once it has passed (the listing ends with DEADLINE_EXCEEDED).
  std::optional<std::chrono::system_clock::time_point> deadline;
  /// Fetch the next page while the caller consumes the current one.
  bool prefetch = false;
  /// This many empty pages in a row, each with a next token, end the listing
  /// with an error (a server that never gets anywhere).
  int max_empty_pages = 100;
  /// The clock `deadline` is checked against; empty = system_clock::now.
  std::function<std::chrono::system_clock::time_point()> clock;
  /// Metadata sent with every page call. A `traceparent` here is the
  /// listing's trace (trace.hpp); without one, tracing on gives the
  /// listing a new one, sent with every page.
  std::vector<std::pair<std::string, std::string>> metadata;
  /// Told of every page fetched or failed (kPage, source "paginate"); empty =
  /// the default observer when the range is made (observe.hpp), if any.
  std::shared_ptr<Observer> observer;
  /// The List method's facts (method.hpp), for the name observers see;
  /// generated clients set it. Unset = found by the message types.
  MethodInfo const* method = nullptr;
};

namespace detail {

template <typename Response, typename = void>
struct HasPageTraits : std::false_type {};
template <typename Response>
struct HasPageTraits<Response, std::void_t<decltype(PageTraits<Response>::items(std::declval<Response&>()))>>
    : std::true_type {};

template <typename Response>
struct TraitsAccessor {
  static_assert(HasPageTraits<Response>::value,
                "stubkit::paginate: name the repeated field of this response, either with an accessor "
                "argument `[](Response& r) { return r.mutable_items(); }` or by specializing "
                "stubkit::PageTraits<Response>");
  auto operator()(Response& response) const { return PageTraits<Response>::items(response); }
};

// The item type an accessor yields: T for RepeatedPtrField<T>*.
template <typename Accessor, typename Response>
using ItemOf = typename std::remove_pointer_t<std::invoke_result_t<Accessor const&, Response&>>::value_type;

// How many items a page holds, counted through the accessor that names its
// repeated field (the guards count pages with it).
template <typename Response, typename Accessor>
std::function<std::size_t(Response const&)> item_counter(Accessor items) {
  return [items = std::move(items)](Response const& r) {
    return static_cast<std::size_t>(items(const_cast<Response&>(r))->size());
  };
}

// Loads a page: the context has the page's deadline set already.
template <typename Request, typename Response>
using PageFetch = std::function<Result<Response>(grpc::ClientContext&, Request const&)>;

// The thread that fetches the next page while the caller consumes the
// current one: one per listing, started at its first prefetch and kept for
// the listing, so a page costs a wake-up, not a thread start. One job at a
// time: start() it, then take() its page.
template <typename Response>
class Prefetcher {
 public:
  Prefetcher() = default;
  Prefetcher(Prefetcher const&) = delete;
  Prefetcher& operator=(Prefetcher const&) = delete;
  ~Prefetcher() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  bool busy() const { return busy_; }

  void start(std::function<Result<Response>()> job) {
    if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = std::move(job);
    }
    busy_ = true;
    cv_.notify_all();
  }

  // The page of the job started last; waits for it.
  Result<Response> take() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return result_.has_value(); });
    Result<Response> page = *std::move(result_);
    result_.reset();
    busy_ = false;
    return page;
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stop_ || job_; });
      if (stop_) return;
      std::function<Result<Response>()> job = std::move(job_);
      job_ = nullptr;
      lock.unlock();
      Result<Response> page = job();
      lock.lock();
      result_.emplace(std::move(page));
      cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::function<Result<Response>()> job_;
  std::optional<Result<Response>> result_;
  bool stop_ = false;
  bool busy_ = false;  // the consumer's own view: a job started and not taken
  std::thread thread_;
};

// The guards of a listing, shared by paginate's ranges and the async
// listings of async_paginate.hpp: the request of each page, the page token
// checks (a token seen before, a run of empty pages), max_items, the
// deadlines, and the listing's trace. It runs no call itself. One thread
// at a time.
template <typename Request, typename Response>
class PageGuard {
 public:
  using Clock = std::chrono::system_clock;

  PageGuard(Request request, PaginateOptions options, std::function<std::size_t(Response const&)> count)
      : request_(std::move(request)), options_(std::move(options)), count_(std::move(count)) {
    std::string add;
    trace_ = outgoing_trace(options_.metadata, &add);
    if (!add.empty()) options_.metadata.emplace_back(kTraceparentKey, std::move(add));
    observer_ = resolve_observer(options_.observer);
    if (options_.page_size > 0) request_.set_page_size(options_.page_size);
    if (!request_.page_token().empty()) seen_.insert(std::hash<std::string>{}(request_.page_token()));
  }

  /// The listing has ended: no page is to be fetched or delivered.
  bool finished() const { return done_; }
  /// Another page is to be fetched: not finished, and no error pending.
  bool more() const { return !done_ && !pending_error_; }

  /// The error a misbehaving server earned, delivered after its last page;
  /// taking it ends the listing.
  std::optional<Error> take_pending_error() {
    if (!pending_error_) return std::nullopt;
    done_ = true;
    return std::exchange(pending_error_, std::nullopt);
  }

  /// Takes in a page as it is delivered; true if another page follows
  /// (its request is then ready).
  bool accept(Result<Response> const& page) {
    if (!page.ok()) {
      done_ = true;
      return false;
    }
    ++pages_;
    std::string const& token = page->next_page_token();
    std::size_t const items = count_(*page);
    delivered_ += items;
    empty_run_ = items == 0 ? empty_run_ + 1 : 0;
    if (token.empty() || limit_reached()) {
      done_ = true;
    } else if (!seen_.insert(std::hash<std::string>{}(token)).second) {
      pending_error_ = misbehaving("returned a page token it had returned before");
    } else if (empty_run_ >= options_.max_empty_pages) {
      pending_error_ = misbehaving("returned " + std::to_string(empty_run_) + " empty pages in a row");
    } else {
      request_.set_page_token(token);
      return true;
    }
    return false;
  }

  /// The error of a page not requested because the listing's deadline has
  /// passed; none while it has not.
  std::optional<Error> deadline_error() const {
    if (!options_.deadline || now() < *options_.deadline) return std::nullopt;
    return Error(grpc::StatusCode::DEADLINE_EXCEEDED,
                 "the listing's deadline passed after " + std::to_string(pages_) + " pages");
  }

  /// The request for the next page, with page_size capped to what remains.
  Request next_request() const {
    Request request = request_;
    if (options_.max_items != 0) {
      std::size_t const remaining = options_.max_items - delivered_;
      std::size_t const cap = std::min<std::size_t>(remaining, std::numeric_limits<std::int32_t>::max());
      if (request.page_size() <= 0 || static_cast<std::size_t>(request.page_size()) > cap) {
        request.set_page_size(static_cast<std::int32_t>(cap));
      }
    }
    return request;
  }

  /// The deadline of a page call starting now: the listing's, or
  /// page_timeout from now if that is earlier.
  std::optional<Clock::time_point> page_deadline() const {
    std::optional<Clock::time_point> deadline = options_.deadline;
    if (options_.page_timeout.count() > 0) {
      auto const page_deadline = detail::saturating_add(now(), options_.page_timeout);
      if (!deadline || page_deadline < *deadline) deadline = page_deadline;
    }
    return deadline;
  }

  /// Items delivered so far (counted per page, before any max_items trim).
  std::size_t delivered() const { return delivered_; }
  PaginateOptions const& options() const { return options_; }
  /// The observer of the listing's pages; null = none.
  Observer* observer() const { return observer_; }
  std::string_view trace_id() const { return trace_id_of(trace_); }
  std::function<std::size_t(Response const&)> const& counter() const { return count_; }

 private:
  Clock::time_point now() const { return options_.clock ? options_.clock() : Clock::now(); }

  bool limit_reached() const { return options_.max_items != 0 && delivered_ >= options_.max_items; }

  Error misbehaving(std::string const& what) const {
    return Error(grpc::StatusCode::INTERNAL, "the server of " + Response::descriptor()->full_name() + " " +
                                                 what + " after " + std::to_string(pages_) +
                                                 " pages; the listing stopped instead of looping forever");
  }

  Request request_;
  PaginateOptions options_;
  std::function<std::size_t(Response const&)> count_;
  std::optional<TraceContext> trace_;
  Observer* observer_ = nullptr;
  std::unordered_set<std::size_t> seen_;  // hashes of the page tokens seen
  std::optional<Error> pending_error_;
  std::size_t delivered_ = 0;
  std::size_t pages_ = 0;
  int empty_run_ = 0;
  bool done_ = false;
};

// The kPage event of page number `page` of a listing.
template <typename Response>
Event page_event(std::string_view method, std::string_view trace_id, std::int64_t page,
                 std::chrono::steady_clock::time_point start, Result<Response> const& result,
                 std::size_t items) {
  Event event = event_of(EventType::kPage, "paginate", method, 0, trace_id);
  event.page = page;
  event.latency = since(start);
  if (result.ok()) {
    event.items = static_cast<std::int64_t>(items);
    event.has_next_page = !result->next_page_token().empty();
  } else {
    event.code = result.error().code();
    event.message = result.error().message();
  }
  return event;
}

// The blocking state machine shared by the item and page views: fetches
// pages in order through the guards, optionally prefetching. Not
// thread-safe: one consumer.
template <typename Request, typename Response>
class Pager {
 public:
  Pager(PageFetch<Request, Response> fetch, Request request, PaginateOptions options,
        std::function<std::size_t(Response const&)> count)
      : fetch_(std::move(fetch)), guard_(std::move(request), std::move(options), std::move(count)) {
    if (Observer* const observer = guard_.observer()) observe_pages(observer);
  }

  ~Pager() { abandon_prefetch(); }
  Pager(Pager const&) = delete;
  Pager& operator=(Pager const&) = delete;

  /// The next page, the error that ended the listing, or nullopt at the end.
  std::optional<Result<Response>> next() {
    if (guard_.finished()) return std::nullopt;
    if (auto error = guard_.take_pending_error()) return Result<Response>(*std::move(error));
    Result<Response> page = take_page();
    if (guard_.accept(page) && guard_.options().prefetch) start_prefetch();
    return page;
  }

  /// Items delivered so far (counted per page, before any max_items trim).
  std::size_t delivered() const { return guard_.delivered(); }
  PaginateOptions const& options() const { return guard_.options(); }

 private:
  std::unique_ptr<grpc::ClientContext> make_context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (auto deadline = guard_.page_deadline()) ctx->set_deadline(*deadline);
    for (auto const& [key, value] : guard_.options().metadata) ctx->AddMetadata(key, value);
    return ctx;
  }

  Result<Response> take_page() {
    if (prefetcher_ && prefetcher_->busy()) {
      Result<Response> page = prefetcher_->take();
      inflight_ctx_.reset();
      return page;
    }
    if (auto error = guard_.deadline_error()) return *std::move(error);
    auto ctx = make_context();
    return fetch_(*ctx, guard_.next_request());
  }

  void start_prefetch() {
    if (guard_.deadline_error()) return;  // take_page reports it
    inflight_ctx_ = make_context();
    if (!prefetcher_) prefetcher_ = std::make_unique<Prefetcher<Response>>();
    prefetcher_->start([fetch = fetch_, ctx = inflight_ctx_.get(), request = guard_.next_request()] {
      return fetch(*ctx, request);
    });
  }

  // Wraps the fetch to report each page, on the thread that fetched it (a
  // prefetch thread too); pages are fetched one at a time, in order. The
  // count is shared: a prefetch runs a copy of the fetch. A prefetch
  // abandoned (the range dropped) is no page of the listing: not reported.
  void observe_pages(Observer* observer) {
    abandoned_ = std::make_shared<std::atomic<bool>>(false);
    fetch_ = [fetch = std::move(fetch_), count = guard_.counter(), observer,
              trace_id = std::string(guard_.trace_id()),
              method = method_name<Request, Response>(guard_.options().method),
              pages = std::make_shared<std::atomic<std::int64_t>>(0),
              abandoned = abandoned_](grpc::ClientContext& ctx, Request const& request) -> Result<Response> {
      auto const start = std::chrono::steady_clock::now();
      Result<Response> result = fetch(ctx, request);
      if (abandoned->load()) return result;
      notify(observer, page_event(method, trace_id, pages->fetch_add(1) + 1, start, result,
                                  result.ok() ? count(*result) : 0));
      return result;
    };
  }

  // A prefetch nobody will read: cancel it and wait, so no call outlives us.
  void abandon_prefetch() {
    if (!prefetcher_ || !prefetcher_->busy()) return;
    if (abandoned_) abandoned_->store(true);
    inflight_ctx_->TryCancel();
    static_cast<void>(prefetcher_->take());  // the page nobody will read
  }

  PageFetch<Request, Response> fetch_;
  PageGuard<Request, Response> guard_;
  std::unique_ptr<Prefetcher<Response>> prefetcher_;  // made at the first prefetch
  std::unique_ptr<grpc::ClientContext> inflight_ctx_;
  std::shared_ptr<std::atomic<bool>> abandoned_;  // set when observing
};

// What paginate accepts as its stub, for a method of `Class`: a stub (or a
// StubInterface) by name, which must outlive the range, or a
// std::shared_ptr / std::unique_ptr to one, which the range then owns.
template <typename T, typename Class>
struct StubArg {
  using Stub = std::remove_cv_t<std::remove_reference_t<T>>;
  static constexpr bool owning = false;
  static constexpr bool unique = false;
  static constexpr bool value = std::is_base_of_v<Class, Stub>;
};
template <typename P, typename Class>
struct StubArg<std::shared_ptr<P>, Class> {
  using Stub = P;
  static constexpr bool owning = true;
  static constexpr bool unique = false;
  static constexpr bool value = std::is_base_of_v<Class, P>;
};
template <typename P, typename D, typename Class>
struct StubArg<std::unique_ptr<P, D>, Class> {
  using Stub = P;
  static constexpr bool owning = true;
  static constexpr bool unique = true;
  static constexpr bool value = std::is_base_of_v<Class, P>;
};
template <typename T, typename Class>
using StubArgOf = StubArg<std::remove_cv_t<std::remove_reference_t<T>>, Class>;
template <typename T, typename Class>
inline constexpr bool is_stub_arg_v = StubArgOf<T, Class>::value;

template <typename Stub, typename Class, typename Request, typename Response>
PageFetch<Request, Response> stub_fetch(Stub& stub,
                                        grpc::Status (Class::*method)(grpc::ClientContext*, Request const&,
                                                                      Response*)) {
  return [&stub, method](grpc::ClientContext& ctx, Request const& request) -> Result<Response> {
    Response response;
    grpc::Status status = (stub.*method)(&ctx, request, &response);
    return to_result(status, std::move(response));
  };
}

template <typename Stub, typename Class, typename Request, typename Response>
PageFetch<Request, Response> owned_stub_fetch(std::shared_ptr<Stub> stub,
                                              grpc::Status (Class::*method)(grpc::ClientContext*,
                                                                            Request const&, Response*)) {
  return
      [stub = std::move(stub), method](grpc::ClientContext& ctx, Request const& request) -> Result<Response> {
        Response response;
        grpc::Status status = ((*stub).*method)(&ctx, request, &response);
        return to_result(status, std::move(response));
      };
}

// The fetch of a paginate call on `stub`; refuses, at compile time, a
// temporary stub, which the range would outlive.
template <typename T, typename Class, typename Request, typename Response>
PageFetch<Request, Response> fetch_from(T&& stub, grpc::Status (Class::*method)(grpc::ClientContext*,
                                                                                Request const&, Response*)) {
  using Arg = StubArgOf<T, Class>;
  static_assert(Arg::owning || std::is_lvalue_reference_v<T>,
                "paginate keeps its stub for the whole listing: a temporary stub would be gone before the "
                "first page. Pass a stub that outlives the range, or a std::shared_ptr / std::unique_ptr "
                "to it, which the range then owns");
  static_assert(!Arg::unique || !std::is_lvalue_reference_v<T>,
                "pass a std::unique_ptr stub with std::move: the range takes it over");
  if constexpr (Arg::owning) {
    if (!stub) throw std::invalid_argument("stubkit::paginate: the stub pointer is null");
    return owned_stub_fetch(std::shared_ptr<typename Arg::Stub>(std::forward<T>(stub)), method);
  } else {
    return stub_fetch(stub, method);
  }
}

template <typename T>
inline constexpr bool is_message_v = std::is_base_of_v<google::protobuf::Message, T>;

}  // namespace detail

/// A lazy input range over the items of a listing; each element is a
/// Result<Item>: an item, or the error that ended the listing (the last
/// element then). `value()` on an element throws that error instead.
/// Iterate it once; it is movable, not copyable.
template <typename Request, typename Response, typename Accessor>
class ItemRange : public detail::LazyRange<ItemRange<Request, Response, Accessor>> {
 public:
  using Item = detail::ItemOf<Accessor, Response>;
  using value_type = Result<Item>;
  using iterator = detail::InputIterator<ItemRange>;
  using sentinel = detail::RangeEnd;

  ItemRange(detail::PageFetch<Request, Response> fetch, Request request, Accessor items,
            PaginateOptions options)
      : items_(std::move(items)),
        pager_(std::make_unique<detail::Pager<Request, Response>>(std::move(fetch), std::move(request),
                                                                  std::move(options),
                                                                  detail::item_counter<Response>(items_))) {}

  /// Collects every item; stops at the first error and returns it.
  Result<std::vector<Item>> collect() {
    std::vector<Item> all;
    for (auto& item : *this) {
      if (!item) return std::move(item).error();
      all.push_back(*std::move(item));
    }
    return all;
  }

 private:
  friend iterator;
  friend detail::LazyRange<ItemRange>;

  value_type& current() { return *current_; }
  bool at_end() const { return at_end_; }

  void advance() {
    at_end_ = true;
    std::size_t const max = pager_->options().max_items;
    while (true) {
      if (max != 0 && yielded_ >= max) return;
      if (page_ && index_ < items_(*page_)->size()) {
        Item& slot = *items_(*page_)->Mutable(index_++);
        // Swap the item into the element instead of constructing a new
        // message per item: the previous element goes back into the page,
        // which is freed as a whole.
        if (current_ && current_->ok()) {
          using std::swap;
          swap(**current_, slot);
        } else {
          current_.emplace(std::move(slot));
        }
        ++yielded_;
        at_end_ = false;
        return;
      }
      page_.reset();
      auto next = pager_->next();
      if (!next) return;
      if (!next->ok()) {
        current_.emplace(std::move(*next).error());
        at_end_ = false;
        return;
      }
      page_.emplace(*std::move(*next));
      index_ = 0;
    }
  }

  Accessor items_;
  std::unique_ptr<detail::Pager<Request, Response>> pager_;
  std::optional<Response> page_;
  int index_ = 0;
  std::size_t yielded_ = 0;
  std::optional<value_type> current_;
  bool at_end_ = true;
};

/// A lazy input range over the pages of a listing; each element is a
/// Result<Response>: the page as the server sent it (its
/// `next_page_token()` resumes the listing later), or the error that ended
/// the listing. Empty pages are delivered too.
template <typename Request, typename Response>
class PageRange : public detail::LazyRange<PageRange<Request, Response>> {
 public:
  using value_type = Result<Response>;
  using iterator = detail::InputIterator<PageRange>;
  using sentinel = detail::RangeEnd;

  template <typename Accessor>
  PageRange(detail::PageFetch<Request, Response> fetch, Request request, Accessor items,
            PaginateOptions options)
      : pager_(std::make_unique<detail::Pager<Request, Response>>(
            std::move(fetch), std::move(request), std::move(options),
            detail::item_counter<Response>(std::move(items)))) {}

 private:
  friend iterator;
  friend detail::LazyRange<PageRange>;

  value_type& current() { return *current_; }
  bool at_end() const { return !current_.has_value(); }
  void advance() {
    current_.reset();
    if (auto next = pager_->next()) current_.emplace(*std::move(next));
  }

  std::unique_ptr<detail::Pager<Request, Response>> pager_;
  std::optional<value_type> current_;
};

/// The items of a List method called on a generated stub (Stub or
/// StubInterface), starting from `request` (its page_token resumes a
/// listing). The response type must have PageTraits. `stub` is used for
/// every page: pass one that outlives the range, or a std::shared_ptr or
/// std::unique_ptr to it, which the range then owns
/// (`paginate(UserService::NewStub(channel), ...)`). A temporary stub does
/// not compile. Throws std::invalid_argument for a null pointer.
template <typename Stub, typename Class, typename Request, typename Response,
          typename = std::enable_if_t<detail::is_stub_arg_v<Stub, Class>>>
auto paginate(Stub&& stub, grpc::Status (Class::*method)(grpc::ClientContext*, Request const&, Response*),
              Request request, PaginateOptions options = {}) {
  return ItemRange<Request, Response, detail::TraitsAccessor<Response>>(
      detail::fetch_from(std::forward<Stub>(stub), method), std::move(request), {}, std::move(options));
}

/// As above, naming the repeated field with `items`:
/// `[](ListBooksResponse& r) { return r.mutable_books(); }`.
template <typename Stub, typename Class, typename Request, typename Response, typename Accessor,
          typename = std::enable_if_t<detail::is_stub_arg_v<Stub, Class> &&
                                      std::is_invocable_v<Accessor const&, Response&>>>
auto paginate(Stub&& stub, grpc::Status (Class::*method)(grpc::ClientContext*, Request const&, Response*),
              Request request, Accessor items, PaginateOptions options = {}) {
  return ItemRange<Request, Response, Accessor>(detail::fetch_from(std::forward<Stub>(stub), method),
                                                std::move(request), std::move(items), std::move(options));
}

/// The items of a listing whose pages come from `fetch`, a callable
/// `Result<Response>(grpc::ClientContext&, Request const&)`: wrap the call
/// with metadata, retries or logging there. The context arrives with the
/// page's deadline set.
template <typename Fetch, typename Request, typename = std::enable_if_t<detail::is_message_v<Request>>,
          typename Response =
              typename std::invoke_result_t<Fetch&, grpc::ClientContext&, Request const&>::value_type>
auto paginate(Fetch fetch, Request request, PaginateOptions options = {}) {
  return ItemRange<Request, Response, detail::TraitsAccessor<Response>>(std::move(fetch), std::move(request),
                                                                        {}, std::move(options));
}

/// As above, naming the repeated field with `items`.
template <typename Fetch, typename Request, typename Accessor,
          typename = std::enable_if_t<detail::is_message_v<Request>>,
          typename Response =
              typename std::invoke_result_t<Fetch&, grpc::ClientContext&, Request const&>::value_type>
auto paginate(Fetch fetch, Request request, Accessor items, PaginateOptions options = {}) {
  return ItemRange<Request, Response, Accessor>(std::move(fetch), std::move(request), std::move(items),
                                                std::move(options));
}

/// The pages of a List method called on a generated stub (held as for
/// paginate).
template <typename Stub, typename Class, typename Request, typename Response,
          typename = std::enable_if_t<detail::is_stub_arg_v<Stub, Class>>>
auto paginate_pages(Stub&& stub,
                    grpc::Status (Class::*method)(grpc::ClientContext*, Request const&, Response*),
                    Request request, PaginateOptions options = {}) {
  return PageRange<Request, Response>(detail::fetch_from(std::forward<Stub>(stub), method),
                                      std::move(request), detail::TraitsAccessor<Response>{},
                                      std::move(options));
}

/// The pages of a List method, naming the repeated field with `items`.
template <typename Stub, typename Class, typename Request, typename Response, typename Accessor,
          typename = std::enable_if_t<detail::is_stub_arg_v<Stub, Class> &&
                                      std::is_invocable_v<Accessor const&, Response&>>>
auto paginate_pages(Stub&& stub,
                    grpc::Status (Class::*method)(grpc::ClientContext*, Request const&, Response*),
                    Request request, Accessor items, PaginateOptions options = {}) {
  return PageRange<Request, Response>(detail::fetch_from(std::forward<Stub>(stub), method),
                                      std::move(request), std::move(items), std::move(options));
}

/// The pages of a listing whose pages come from `fetch` (see paginate).
template <typename Fetch, typename Request, typename = std::enable_if_t<detail::is_message_v<Request>>,
          typename Response =
              typename std::invoke_result_t<Fetch&, grpc::ClientContext&, Request const&>::value_type>
auto paginate_pages(Fetch fetch, Request request, PaginateOptions options = {}) {
  return PageRange<Request, Response>(std::move(fetch), std::move(request),
                                      detail::TraitsAccessor<Response>{}, std::move(options));
}

}  // namespace stubkit

#endif  // STUBKIT_PAGINATE_HPP
