// UserClient: the reference document's Python UserClient, in C++ on stubkit.
// The worked example of the SDK on myservice.v1.UserService, and a
// convenience layer for it.
//
//   stubkit::UserClient client(channel);
//   auto user = client.get_user("ada");            // Result<std::optional<User>>
//   if (!user) return fail(user.error());          // only non-NOT_FOUND errors
//   if (*user) greet(**user);
//   for (auto& u : client.list_users()) { ... }    // lazy, page by page
//
// Every other method is the generated client's (user.stubkit.h), with its
// async form: client.update_user(request), client.get_user_async(...).
#ifndef STUBKIT_USER_CLIENT_HPP
#define STUBKIT_USER_CLIENT_HPP

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#if !__has_include("myservice/v1/user.stubkit.h")
#error \
    "stubkit/user_client.hpp needs the generated myservice/v1/user.stubkit.h: build stubkit with protoc-gen-stubkit (Debian: libprotoc-dev)"
#endif
#include "myservice/v1/user.grpc.pb.h"
#include "myservice/v1/user.stubkit.h"
#include "stubkit/async_stream.hpp"
#include "stubkit/detail/input_range.hpp"
#include "stubkit/observe.hpp"
#include "stubkit/paginate.hpp"
#include "stubkit/retry.hpp"
#include "stubkit/status.hpp"
#include "stubkit/stream.hpp"
#include "stubkit/trace.hpp"

namespace stubkit {

/// How UserClient::watch_users_resumable reconnects.
struct ResumableWatchOptions {
  /// Reconnects after a retryable end of stream (UNAVAILABLE by default):
  /// `max_attempts` connections in a row without a message, with its backoff.
  RetryPolicy policy = RetryPolicy::standard();
  /// Deliver heartbeats too (they always advance the resume point).
  bool include_heartbeats = false;
  /// Start after this sequence (0 = live events only).
  std::int64_t after_sequence = 0;
  /// Metadata sent with every connection. A `traceparent` here is the
  /// watch's trace (trace.hpp); without one, tracing on adds a new one.
  std::vector<std::pair<std::string, std::string>> metadata;
  /// Sleeps and randomness of the backoff (tests inject them).
  RetryClock clock;
  /// Told of each connection (stream.open, `attempt` = its number), each
  /// reconnect (stream.resume) and the end (stream.end, `items` = events
  /// delivered), source "watch"; empty = the default observer, if any.
  std::shared_ptr<Observer> observer;
  /// async_watch_users only: arranges for `done` after `delay`, on any
  /// thread, instead of a grpc::Alarm (tests run `done` at once). It runs
  /// on a gRPC thread and must not block: start a timer, or run `done` at
  /// once. A watch cancelled while it waits ends at once; a later `done`
  /// does nothing; dropping `done` uncalled ends the watch with UNKNOWN.
  std::function<void(std::chrono::milliseconds delay, std::function<void()> done)> schedule;
};

namespace detail {

// Drops heartbeats unless they are asked for (empty: keeps every event).
inline std::function<bool(myservice::v1::UserEvent const&)> heartbeat_filter(bool include_heartbeats) {
  if (include_heartbeats) return {};
  return [](myservice::v1::UserEvent const& e) { return e.type() != "heartbeat"; };
}

// The resumable watch's rule, shared by the blocking range (ResumableWatch)
// and the async stream (async_watch_users): each connection carries the
// watch's metadata and trace and asks for the events after the last
// sequence seen (heartbeats included); a retryable end is resumed after the
// policy's backoff, up to max_attempts connections in a row without a
// message; the observer hears of each connection, each resume and the end
// (source "watch"). Used by one thread at a time.
class WatchRule {
 public:
  using UserEvent = myservice::v1::UserEvent;

  explicit WatchRule(ResumableWatchOptions options)
      : options_(std::move(options)),
        backoff_(options_.policy, options_.clock.random01),
        last_sequence_(options_.after_sequence),
        observer_(resolve_observer(options_.observer)),
        started_(std::chrono::steady_clock::now()),
        trace_(outgoing_trace(options_.metadata, &new_traceparent_)) {}

  ResumableWatchOptions const& options() const { return options_; }
  // The last sequence delivered or confirmed by a heartbeat.
  std::int64_t last_sequence() const { return last_sequence_; }
  int connections() const { return connections_; }

  // A context for the next connection.
  std::unique_ptr<grpc::ClientContext> context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    for (auto const& [key, value] : options_.metadata) ctx->AddMetadata(key, value);
    if (!new_traceparent_.empty()) ctx->AddMetadata(kTraceparentKey, new_traceparent_);
    return ctx;
  }

  // The next connection opens (stream.open): its request.
  myservice::v1::WatchUsersRequest open() {
    myservice::v1::WatchUsersRequest request;
    request.set_after_sequence(last_sequence_);
    ++connections_;
    if (observer_ != nullptr) {
      Event event = observed(EventType::kStreamOpen);
      event.attempt = connections_;
      notify(observer_, event);
    }
    return request;
  }

  // Every event read, heartbeats too.
  void read(UserEvent const& event) {
    failures_in_a_row_ = 0;
    last_sequence_ = std::max(last_sequence_, event.sequence());
  }

  // A connection ended with `status`: the wait before the next one
  // (stream.resume), or nullopt to end the watch with it.
  std::optional<std::chrono::milliseconds> resume_after(grpc::Status const& status) {
    if (!options_.policy.retryable(status.error_code()) ||
        ++failures_in_a_row_ >= options_.policy.max_attempts) {
      return std::nullopt;
    }
    auto const delay = backoff_.next();
    if (observer_ != nullptr) {
      Event event = observed(EventType::kStreamResume);
      event.attempt = connections_;
      std::string message;
      set_status(event, status, message);
      event.delay = delay;
      notify(observer_, event);
    }
    return delay;
  }

  // The watch ended with `status` after `delivered` events (stream.end,
  // unless it never opened a connection). Once.
  void ended(grpc::Status const& status, std::int64_t delivered) {
    if (observer_ == nullptr || connections_ == 0) return;
    Event event = observed(EventType::kStreamEnd);
    event.items = delivered;
    event.attempts = connections_;
    notify_end(observer_, event, status, started_);
  }

 private:
  Event observed(EventType type) const {
    Event event = event_of(type, "watch", myservice::v1::UserServiceMethods::WatchUsers.full_name, 0,
                           trace_id_of(trace_));
    event.sequence = last_sequence_;
    return event;
  }

  ResumableWatchOptions options_;
  Backoff backoff_;
  std::int64_t last_sequence_;
  int connections_ = 0;
  int failures_in_a_row_ = 0;
  Observer* const observer_;
  std::chrono::steady_clock::time_point const started_;
  std::string new_traceparent_;              // sent when the caller's metadata has none
  std::optional<TraceContext> const trace_;  // one trace for every connection
};

}  // namespace detail

/// WatchUsers that survives dropped streams: after a retryable end it
/// reconnects with backoff and asks the server to replay every event after
/// the last sequence it saw, so events are neither lost nor repeated (as far
/// as the server still keeps them: an older resume point ends the range with
/// OUT_OF_RANGE). A lazy input range of Result<UserEvent>.
class ResumableWatch : public detail::LazyRange<ResumableWatch> {
 public:
  using UserEvent = myservice::v1::UserEvent;
  using value_type = Result<UserEvent>;
  using iterator = detail::InputIterator<ResumableWatch>;

  ResumableWatch(myservice::v1::UserService::StubInterface& stub, ResumableWatchOptions options)
      : state_(std::make_unique<State>(stub, std::move(options))) {}

  /// The last sequence delivered or confirmed by a heartbeat: where a new
  /// watch would resume.
  std::int64_t resume_point() const { return state_->rule.last_sequence(); }
  /// Connections made so far.
  int connections() const { return state_->rule.connections(); }

  /// Stops the watch (thread-safe); the range then ends with CANCELLED.
  void cancel() {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->cancelled = true;
    if (state_->ctx) state_->ctx->TryCancel();
  }

  ~ResumableWatch() {
    if (state_ && state_->reader) {
      state_->ctx->TryCancel();
      finish(state_->reader->Finish());
    }
  }
  ResumableWatch(ResumableWatch&&) noexcept = default;
  ResumableWatch& operator=(ResumableWatch&&) noexcept = default;

 private:
  friend iterator;
  friend detail::LazyRange<ResumableWatch>;

  struct State {
    State(myservice::v1::UserService::StubInterface& s, ResumableWatchOptions o)
        : stub(s),
          policy_problem(o.policy.problem()),
          filter(detail::heartbeat_filter(o.include_heartbeats)),
          rule(std::move(o)) {}
    myservice::v1::UserService::StubInterface& stub;
    std::string policy_problem;  // an unusable policy ends the range at once with INVALID_ARGUMENT
    std::function<bool(UserEvent const&)> filter;
    detail::WatchRule rule;
    std::mutex mu;  // guards ctx against cancel()
    bool cancelled = false;
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<grpc::ClientReaderInterface<UserEvent>> reader;
    std::optional<value_type> current;
    bool done = false;
    std::int64_t delivered = 0;
  };

  // The watch is over: with `status` (OK when the server closed it).
  void finish(grpc::Status const& status) {
    auto& s = *state_;
    s.done = true;
    if (!status.ok()) s.current.emplace(Error::from(status));
    s.rule.ended(status, s.delivered);
  }

  value_type& current() { return *state_->current; }
  bool at_end() const { return !state_->current.has_value(); }

  void advance() {
    auto& s = *state_;
    s.current.reset();
    if (!s.policy_problem.empty()) {
      finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "invalid RetryPolicy: " + s.policy_problem));
      s.policy_problem.clear();
      return;
    }
    while (!s.done) {
      if (!s.reader && !connect()) return;
      UserEvent event;
      if (s.reader->Read(&event)) {
        s.rule.read(event);
        if (s.filter && !s.filter(event)) continue;
        ++s.delivered;
        s.current.emplace(std::move(event));
        return;
      }
      grpc::Status status = s.reader->Finish();
      {
        std::lock_guard<std::mutex> lock(s.mu);
        s.reader.reset();
        s.ctx.reset();
      }
      // An OK end: the server closed the stream, the watch is over.
      std::optional<std::chrono::milliseconds> const delay =
          status.ok() || is_cancelled() ? std::nullopt : s.rule.resume_after(status);
      if (!delay) {
        finish(status);
        return;
      }
      s.rule.options().clock.wait(*delay);
    }
  }

  bool is_cancelled() {
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->cancelled;
  }

  bool connect() {
    auto& s = *state_;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      if (!s.cancelled) s.ctx = s.rule.context();
    }
    if (!s.ctx) {
      finish(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
      return false;
    }
    myservice::v1::WatchUsersRequest const request = s.rule.open();
    s.reader = s.stub.WatchUsers(s.ctx.get(), request);
    return true;
  }

  std::unique_ptr<State> state_;
};

namespace detail {

// The resumable watch's rule (WatchRule) for an async stream
// (async_stream.hpp).
class WatchResume final : public StreamResume<myservice::v1::UserEvent> {
 public:
  using Async = myservice::v1::UserService::StubInterface::async_interface;

  WatchResume(Async* async, ResumableWatchOptions options) : async_(async), rule_(std::move(options)) {
    schedule = rule_.options().schedule;
  }

  Connection connect() override {
    auto ctx = rule_.context();
    auto request = std::make_shared<myservice::v1::WatchUsersRequest>(rule_.open());
    auto const* raw = request.get();
    return {std::move(ctx), std::move(request),
            [async = async_, raw](grpc::ClientContext* context,
                                  grpc::ClientReadReactor<myservice::v1::UserEvent>* reactor) {
              async->WatchUsers(context, raw, reactor);
            }};
  }

  void read(myservice::v1::UserEvent const& event) override { rule_.read(event); }

  std::optional<std::chrono::milliseconds> resume_after(grpc::Status const& status) override {
    return rule_.resume_after(status);
  }

  void ended(grpc::Status const& status, std::int64_t delivered) override { rule_.ended(status, delivered); }

 private:
  Async* const async_;
  WatchRule rule_;
};

}  // namespace detail

/// WatchUsers as an async stream that resumes (async_stream.hpp): the
/// resumable watch's rule (ResumableWatchOptions: after_sequence, the
/// policy's retryable codes, backoff and max_attempts, heartbeats, metadata,
/// observer) with no thread blocked, next() at a time. The backoff waits on
/// a grpc::Alarm (or `options.schedule`); a cancel during it ends the watch
/// at once. The stub must outlive the watch's last call (handle().done()).
inline AsyncStream<myservice::v1::UserEvent> async_watch_users(
    myservice::v1::UserService::StubInterface& stub, ResumableWatchOptions options) {
  using UserEvent = myservice::v1::UserEvent;
  auto filter = detail::heartbeat_filter(options.include_heartbeats);
  std::string const problem = options.policy.problem();
  auto* const async = stub.async();
  auto rule = std::make_unique<detail::WatchResume>(async, std::move(options));
  auto reader = std::make_shared<detail::AsyncReader<UserEvent>>(std::move(filter), detail::StreamWatch(),
                                                                 std::move(rule));
  if (!problem.empty()) {
    reader->fail_to_start(Error(grpc::StatusCode::INVALID_ARGUMENT, "invalid RetryPolicy: " + problem));
  } else if (async == nullptr) {
    reader->fail_to_start(detail::no_callback_api("async_watch_users"));
  } else {
    reader->start();
  }
  return AsyncStream<UserEvent>(std::move(reader));
}

/// The generated UserServiceClient (protoc-gen-stubkit: every method, its
/// async form, listings and streams) with the reference client's
/// behaviour: a timeout on every call and listing page, pages of 100, a
/// missing user as an empty optional, every other error surfaced.
/// Thread-safe (gRPC stubs are).
class UserClient : public myservice::v1::UserServiceClient {
 public:
  using User = myservice::v1::User;
  using Stub = myservice::v1::UserService::StubInterface;

  /// Calls the UserService over `channel`; each call gets `timeout`.
  explicit UserClient(std::shared_ptr<grpc::ChannelInterface> const& channel,
                      std::chrono::milliseconds timeout = std::chrono::seconds(5))
      : myservice::v1::UserServiceClient(channel, defaults(timeout)) {}

  /// Calls through any stub, a mock included.
  explicit UserClient(std::shared_ptr<Stub> stub, std::chrono::milliseconds timeout = std::chrono::seconds(5))
      : myservice::v1::UserServiceClient(std::move(stub), defaults(timeout)) {}

  // The generated methods stay visible beside the conveniences below.
  using myservice::v1::UserServiceClient::create_user;
  using myservice::v1::UserServiceClient::get_user;

  /// The user, an empty optional if there is none, or the error.
  Result<std::optional<User>> get_user(std::string const& id) const {
    myservice::v1::GetUserRequest request;
    request.set_id(id);
    return optional_if_not_found(get_user(request));
  }

  /// Creates `user`; `request_id` makes a retried create return the first result.
  Result<User> create_user(User user, std::string request_id = "") const {
    myservice::v1::CreateUserRequest request;
    *request.mutable_user() = std::move(user);
    request.set_request_id(std::move(request_id));
    auto result = create_user(request);
    if (!result) return std::move(result).error();
    return std::move(*result->mutable_user());
  }

  /// The reference client's list_all_users: every user in memory, or the
  /// first error. Prefer list_users(), lazy, for large listings.
  Result<std::vector<User>> list_all_users() const { return list_users().collect(); }

  /// WatchUsers' change events: heartbeats dropped (watch_users(request)
  /// delivers every event, heartbeats too).
  StreamRange<myservice::v1::UserEvent> watch_changes(myservice::v1::WatchUsersRequest const& request = {},
                                                      StreamOptions const& options = {}) const {
    StreamOptions named = options;
    named.method = &Methods::WatchUsers;
    return read_stream(stub(), &Stub::WatchUsers, request, named, detail::heartbeat_filter(false));
  }

  /// WatchUsers that reconnects and resumes after dropped streams.
  ResumableWatch watch_users_resumable(ResumableWatchOptions options = {}) const {
    return ResumableWatch(stub(), std::move(options));
  }

  /// The resumable watch as an async stream, with no thread blocked
  /// (async_watch_users). This client must outlive its last call.
  AsyncStream<myservice::v1::UserEvent> watch_users_resumable_async(
      ResumableWatchOptions options = {}) const {
    return async_watch_users(stub(), std::move(options));
  }

  /// The per-item failures of a BulkResp as typed errors, by request index.
  static std::vector<std::pair<int, Error>> bulk_failures(myservice::v1::BulkResp const& response) {
    std::vector<std::pair<int, Error>> failures;
    for (auto const& f : response.failures()) {
      failures.emplace_back(f.index(), Error(canonical_code(f.code()), f.message()));
    }
    return failures;
  }

 private:
  static ClientOptions defaults(std::chrono::milliseconds timeout) {
    ClientOptions options;
    options.call.timeout = timeout;
    options.paginate.page_size = 100;  // as the reference client
    options.paginate.page_timeout = timeout;
    return options;
  }
};

}  // namespace stubkit

#endif  // STUBKIT_USER_CLIENT_HPP
