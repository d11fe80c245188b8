// A client interceptor that retries unary calls made through unmodified
// generated stubs, with the policy of retry.hpp:
//
//   std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
//   interceptors.push_back(stubkit::retry_interceptor());          // RetryPolicy::standard()
//   auto channel = grpc::experimental::CreateCustomChannelWithInterceptors(
//       target, grpc::InsecureChannelCredentials(), grpc::ChannelArguments(), std::move(interceptors));
//   auto stub = UserService::NewStub(channel);
//   stub->GetUser(&ctx, request, &user);                            // retried on UNAVAILABLE
//
// How it works. gRPC 1.51 gives a unary call's result to the caller
// directly: an interceptor cannot replace a failed result after the fact
// (the sync API then reports "No message returned"). So for a call that may
// be retried, the interceptor takes the request at the first batch, runs
// the attempts itself on the rest of the interceptor chain
// (GetInterceptedChannel, with a generic stub), waits between them with
// grpc::Alarm, and finally hijacks the original call and hands it the last
// attempt's response, status and metadata. Where the attempts run depends
// on the caller's API:
// - sync API (the caller's thread is blocked until the call ends anyway):
//   on the caller's thread, inside the first batch's interception, on a
//   completion queue of the call's own. No gRPC thread is involved and no
//   thread hop is added, which is most of what a retryable call costs
//   (docs/benchmarks.md, B4). A custom `schedule` that holds a wait past
//   the call's deadline ends it then with DEADLINE_EXCEEDED.
// - callback and completion-queue APIs (the caller must not be blocked):
//   with callbacks on gRPC's threads.
// gRPC 1.51 does not say which API made a call; detail::is_blocking_call
// asks gRPC core (see client_context_access.hpp) and falls back to the
// callback path when it cannot tell.
//
// Ownership rule. stubkit never destroys a gRPC object (channel,
// ClientContext, Alarm, generic stub, completion queue) on a gRPC-owned
// thread, and releases nothing after it has told the caller the call has
// finished. Every gRPC object of a retried call (the attempts' contexts,
// the generic stub, the alarms) belongs to the interceptor, which belongs to
// the caller's ClientContext: they die when, and on the thread where, the
// caller destroys that context, and before the context's own reference to
// the channel is released. gRPC's callbacks hold only the interceptor's
// address, which stays valid because the caller's call cannot complete
// until the interceptor hands it the result (the last thing it does), and
// the scheduler's `done` holds only a small shared token that touches no
// gRPC object. So the caller may drop its stub and channel the instant a
// call returns. (Dropping the last reference to a channel on a gRPC
// callback thread tears down the callback completion queue under the
// thread polling it; gRPC then aborts in grpc_cq_internal_unref.) A
// callback-API caller that destroys its context inside its completion
// callback destroys these objects on that gRPC thread, but never the
// channel: the context's own reference to it outlives them.
//
// Cancellation. TryCancel() on the caller's context ends the call with
// CANCELLED whatever it is doing: before the first batch (the call is then
// never attempted), during an attempt (the attempt is cancelled), between an
// attempt's end and the wait, during the wait (the alarm is cancelled) or
// inside a custom `schedule` (the call ends at once; a later `done` does
// nothing). A cancelled call is never attempted again.
//
// Threads and locks. The fields the cancel path reads are under the
// interceptor's mutex (the alarm list too: a cancel or a `done` may add a
// wake-up alarm from its own thread); the rest is touched by one thread at a
// time, in order: a sync caller's own thread throughout, or else the thread
// that starts an attempt, then the attempt's callback (gRPC orders them),
// then the alarm's. User code (on_retry, `schedule`, the
// clock and random source, interceptors after this one) is never called with
// the mutex held; when it throws, the call ends with UNKNOWN and a message
// saying which callback threw.
//
// What it covers: unary methods known to the generated descriptor pool
// (proto methods of linked generated code), called through the sync, async
// (completion queue) or callback stub API. Calls that cannot be retried
// (not idempotent, no request_id) pass through untouched, so they cost what
// an empty interceptor costs. Streaming calls are left alone. Per call,
// disable_retries() and set_max_attempts() change the channel's policy.
// Put this interceptor first in the channel's list (make_channel does): in
// gRPC 1.51 attempts start at the wrong interceptor when a factory before
// it returns nullptr for a call, so interceptors before it could run twice;
// and an interceptor before it that let a sync call's first batch go on
// from another thread would have that thread run the call's attempts.
//
// Hedging. With RetryInterceptorOptions::hedging set, the calls it would
// retry are hedged instead (docs/hedging.md): detail::AsyncHedgeBase, the
// state machine of async_call's hedging, runs the attempts on gRPC's
// callback API whatever API the caller used (a sync caller's thread only
// waits), and the result is handed over by Hijack() as above. The
// ownership rule differs in one point: the hedge releases its attempts'
// contexts and alarms on the thread that completes the call (a gRPC
// thread, as async_call does), before it completes, while the caller's
// context still holds the channel; the hedge object itself, which then
// holds no gRPC object, may outlive the call. A cancel reaches the hedge
// through an alarm, on a gRPC thread: never does it run the hedge's steps
// (observer calls, the hand-over) inside the caller's TryCancel.
//
// Attempts keep the caller's call semantics: deadline, metadata,
// credentials, compression, and (read through detail/client_context_access,
// as gRPC 1.51 has no getters for them) wait_for_ready, the authority
// override and the parent call of ClientContext::FromServerContext, so a
// downstream call of a server handler is cancelled with its upstream call.
//
// Limits: the response is handed over as the generated message type: a call made
// with grpc::GenericStub and a ByteBuffer response to a retried method must
// use disable_retries() (the interceptor cannot tell the two apart).
#ifndef STUBKIT_RETRY_INTERCEPTOR_HPP
#define STUBKIT_RETRY_INTERCEPTOR_HPP

#include <grpcpp/alarm.h>
#include <grpcpp/client_context.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/client_interceptor.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/message.h"
#include "google/protobuf/wire_format_lite.h"
#include "stubkit/detail/async_hedge.hpp"
#include "stubkit/detail/client_context_access.hpp"
#include "stubkit/detail/time.hpp"
#include "stubkit/observe.hpp"
#include "stubkit/retry.hpp"
#include "stubkit/trace.hpp"

namespace stubkit {

/// The metadata key of per-call retry control on a retrying channel (see
/// disable_retries and set_max_attempts). The interceptor removes it: it is
/// never sent on a call it retries.
inline constexpr char const* kRetryControlKey = "stubkit-retry";

/// Turns the channel's retries off for the one call made with `ctx`: it is
/// attempted once, as on a plain channel.
///
///   grpc::ClientContext ctx;
///   stubkit::disable_retries(ctx);
///   stub->GetUser(&ctx, request, &user);
inline void disable_retries(grpc::ClientContext& ctx) { ctx.AddMetadata(kRetryControlKey, "off"); }

/// At most `max_attempts` attempts (the first included; clamped to 1..100)
/// for the one call made with `ctx`, instead of the policy's. Idempotency
/// rules still apply.
inline void set_max_attempts(grpc::ClientContext& ctx, int max_attempts) {
  ctx.AddMetadata(kRetryControlKey, "attempts=" + std::to_string(std::clamp(max_attempts, 1, 100)));
}

/// Configuration of the retry interceptor of one channel.
struct RetryInterceptorOptions {
  RetryPolicy policy = RetryPolicy::standard();
  /// Shared by every call on the channel; nullptr = no throttling.
  std::shared_ptr<RetryThrottle> throttle = std::make_shared<RetryThrottle>();
  /// Called before each retry, with no stubkit lock held: on a sync
  /// caller's own thread, on a gRPC thread for other callers.
  std::function<void(RetryEvent const&)> on_retry;
  /// Arranges for `done` to run after `delay`, on any thread; empty = a
  /// grpc::Alarm. Tests inject one that does not wait. It is called where
  /// on_retry is, so it must not block: start a timer, or run `done` at
  /// once. A call cancelled during the wait ends at once (a sync call also
  /// at its deadline); `done` may still be run later and then does nothing.
  std::function<void(std::chrono::milliseconds delay, std::function<void()> done)> schedule;
  /// Set: calls that are safe to repeat are hedged instead of retried
  /// (HedgingPolicy, docs/hedging.md): the `policy` above then serves only
  /// calls made with set_max_attempts(ctx, 1). The throttle, observer and
  /// clock apply as to retries; on_retry and `schedule` do not (hedges are
  /// the observer's `hedge` events, and wait on a grpc::Alarm).
  std::optional<HedgingPolicy> hedging;
  /// Clock and randomness of retry decisions.
  RetryClock clock;
  /// Told of every call on the channel (source "channel"): start and end,
  /// each attempt, and the retry decisions of the calls it retries; calls
  /// it does not retry (streams included) as one attempt. Empty = the
  /// default observer when the call starts (observe.hpp), if any.
  std::shared_ptr<Observer> observer;
};

namespace detail {

// The events of one call seen from an interceptor that lets it through
// untouched: start when the call is made or sends its first batch, end at
// its status. start() happens before end(): see the callers.
class CallWatch {
 public:
  bool active() const { return observer_ != nullptr; }

  // `trace_id` must outlive the watch.
  void start(Observer* observer, std::string_view method, std::string_view trace_id) {
    observer_ = observer;
    method_ = method;
    trace_id_ = trace_id;
    start_ = std::chrono::steady_clock::now();
    Event event = base(EventType::kCallStart);
    notify(observer_, event);
    event.type = EventType::kAttemptStart;
    event.attempt = 1;
    notify(observer_, event);
  }

  void end(grpc::Status const& status, grpc::ClientContext const& ctx) {
    if (observer_ == nullptr) return;
    Event event = base(EventType::kAttemptEnd);
    event.attempt = 1;
    std::string const peer = ctx.peer();
    event.peer = peer;
    notify_end(observer_, event, status, start_);
    event.type = EventType::kCallEnd;
    event.attempt = 0;
    event.attempts = 1;
    notify_end(observer_, event, status, start_);
    observer_ = nullptr;  // once
  }

 private:
  Event base(EventType type) const { return event_of(type, "channel", method_, 0, trace_id_); }

  Observer* observer_ = nullptr;
  std::string_view method_;
  std::string_view trace_id_;
  std::chrono::steady_clock::time_point start_;
};

// The trace of a call about to send `metadata` (its first batch's): the
// traceparent it carries, or a new one added when tracing is on.
inline std::optional<TraceContext> trace_call(std::multimap<std::string, std::string>* metadata) {
  std::string add;
  auto trace = outgoing_trace(*metadata, &add);
  if (!add.empty()) metadata->emplace(kTraceparentKey, std::move(add));
  return trace;
}

// Observes a call it does not otherwise touch (a call the retry
// interceptor does not retry, or any call of observe_interceptor), and
// gives it a traceparent when tracing is on. The call starts at its first
// batch, whatever it is; the end always comes from a batch started after
// it. The first batch carries the initial metadata, and so the trace,
// except on a stream with corked initial metadata that reads (or is
// cancelled) before it writes: its events then carry no trace id, though
// the metadata, when it goes, still gets a traceparent with tracing on.
class ObserveInterceptor final : public grpc::experimental::Interceptor {
 public:
  ObserveInterceptor(grpc::experimental::ClientRpcInfo* info, Observer* observer)
      : info_(info), method_(info->method()), observer_(observer) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    bool const sends_metadata =
        methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_INITIAL_METADATA);
    bool first = false;
    // Batches of one call may come on several threads at once: whichever
    // is first starts the call, and the others wait until it has.
    std::call_once(started_, [&] {
      first = true;
      if (sends_metadata) trace_ = trace_call(methods->GetSendInitialMetadata());
      if (observer_ != nullptr) watch_.start(observer_, method_, trace_id_of(trace_));
    });
    if (sends_metadata && !first) trace_call(methods->GetSendInitialMetadata());  // on the wire only
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_STATUS)) {
      watch_.end(*methods->GetRecvStatus(), *info_->client_context());
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ClientRpcInfo* const info_;
  std::string const method_;  // gRPC's name of a generic call lives only as long as the call
  Observer* const observer_;  // may be null: tracing only
  std::once_flag started_;
  std::optional<TraceContext> trace_;  // written once, in the call_once
  CallWatch watch_;
};

// An ObserveInterceptor for a call, when there is anything to do: an
// observer to tell, or tracing to add.
inline grpc::experimental::Interceptor* observe_only(grpc::experimental::ClientRpcInfo* info,
                                                     Observer* observer) {
  return observer != nullptr || tracing_enabled() ? new ObserveInterceptor(info, observer) : nullptr;
}

// What the interceptor knows about a method, looked up once per method.
struct RetryMethod {
  bool known = false;                // in a generated table or the generated descriptor pool
  bool declared_idempotent = false;  // NO_SIDE_EFFECTS or IDEMPOTENT
  int request_id_field = 0;          // number of a string `request_id` field of the request, 0 = none
};

// Method facts by full method name ("/pkg.Service/Method"). Names, not the
// addresses gRPC passes: a generic stub's name lives only as long as its
// call, so an address can later name another method. Bounded: past
// kMaxEntries names (a client calling ever new generic methods) facts are
// computed per call instead of stored. Thread-safe.
class MethodTable {
 public:
  static constexpr std::size_t kMaxEntries = 4096;

  RetryMethod lookup(std::string_view name) {
    {
      std::shared_lock<std::shared_mutex> lock(mu_);
      auto it = methods_.find(name);
      if (it != methods_.end()) return it->second;
    }
    RetryMethod const method = describe(name);
    std::unique_lock<std::shared_mutex> lock(mu_);
    if (methods_.size() < kMaxEntries) methods_.emplace(std::string(name), method);
    return method;
  }

  std::size_t size() const {
    std::shared_lock<std::shared_mutex> lock(mu_);
    return methods_.size();
  }

  // A generated table's facts (method.hpp) first; else the generated
  // descriptor pool's.
  static RetryMethod describe(std::string_view name) {
    auto known = [](MethodInfo const& info) {
      return RetryMethod{true, info.declared_idempotent(), info.request_id_field};
    };
    if (MethodInfo const* info = find_method_info(name)) return known(*info);
    auto const* descriptor = find_method(name);
    return descriptor == nullptr ? RetryMethod{} : known(method_info_of(*descriptor, name));
  }

 private:
  mutable std::shared_mutex mu_;
  std::map<std::string, RetryMethod, std::less<>> methods_;
};

// Whether the serialized message holds a non-empty length-delimited field
// `number` at its top level (the last occurrence wins, as protobuf parses
// it). Reads the wire format, so it works whatever type the caller's
// message has (generated or ByteBuffer); malformed bytes give false.
inline bool has_nonempty_field(grpc::ByteBuffer const& message, int number) {
  using google::protobuf::internal::WireFormatLite;
  grpc::ByteBuffer copy(message);  // shares the slices; the reader consumes its own
  grpc::ProtoBufferReader reader(&copy);
  google::protobuf::io::CodedInputStream input(&reader);
  bool found = false;
  while (std::uint32_t const tag = input.ReadTag()) {
    if (WireFormatLite::GetTagFieldNumber(tag) == number &&
        WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      std::uint32_t length = 0;
      if (!input.ReadVarint32(&length) || !input.Skip(static_cast<int>(length))) return false;
      found = length > 0;
    } else if (!WireFormatLite::SkipField(&input, tag)) {
      return false;
    }
  }
  return input.ConsumedEntireMessage() && found;
}

// What a call's `stubkit-retry` metadata asks for.
struct RetryControl {
  bool off = false;
  std::optional<int> max_attempts;
  std::string problem;  // a value this version does not understand
};

inline RetryControl parse_retry_control(std::string_view value) {
  RetryControl control;
  constexpr std::string_view kAttempts = "attempts=";
  if (value == "off") {
    control.off = true;
  } else if (value.substr(0, kAttempts.size()) == kAttempts && value.size() > kAttempts.size() &&
             value.size() <= kAttempts.size() + 3 &&
             value.find_first_not_of("0123456789", kAttempts.size()) == std::string_view::npos &&
             std::stoi(std::string(value.substr(kAttempts.size()))) <= 100) {
    control.max_attempts = std::max(1, std::stoi(std::string(value.substr(kAttempts.size()))));
  } else {
    control.problem = std::string("metadata '") + kRetryControlKey + "' has the unknown value '" +
                      std::string(value.substr(0, 64)) +
                      "' (expected 'off' or 'attempts=N', N from 1 to 100)";
  }
  return control;
}

// One retried call: the attempts, the waits and the hand-over of the result.
// Owned by the caller's ClientContext (through gRPC's ClientRpcInfo); see
// "Ownership rule" at the top of this file.
class RetryInterceptor final : public grpc::experimental::Interceptor {
 public:
  RetryInterceptor(grpc::experimental::ClientRpcInfo* info, RetryMethod method,
                   RetryInterceptorOptions const& options, Observer* observer)
      : info_(info), method_name_(info->method()), method_(method), options_(options), observer_(observer) {}

  // True on a thread that is creating one of this interceptor's attempts.
  // gRPC 1.51 starts an attempt's interceptors at a position counted in
  // created interceptors, not factories: if a factory before this one
  // returned nullptr for the call, the attempt would reach this factory
  // again and recurse without end. The factory declines while this is set.
  static bool& creating_attempt() {
    thread_local bool creating = false;
    return creating;
  }

  // The attempts' contexts, the alarms and the generic stub are destroyed
  // here, on the thread that destroys the caller's context.
  ~RetryInterceptor() override = default;

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    auto has = [methods](InterceptionHookPoints point) { return methods->QueryInterceptionHookPoint(point); };
    // The cancel batch can come from any thread, at any time, even before
    // the first batch (a context cancelled before its call began).
    if (has(InterceptionHookPoints::PRE_SEND_CANCEL)) {
      on_cancel();
      return methods->Proceed();
    }
    if (has(InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      // The first batch: only it carries the initial metadata.
      trace_ = trace_call(methods->GetSendInitialMetadata());
      if (!begin(methods)) {
        // A unary call's one batch also asks for the status: the end follows this.
        if (observer_ != nullptr) watch_.start(observer_, method_name_, trace_id_of(trace_));
        pass_through(methods);
      }
      return;  // when retried: held until the attempts are done, then Hijack()
    }
    // Receive hook points are set only when gRPC brings a batch back to the
    // interceptor that hijacked the call, to have its receive ops filled.
    if (has(InterceptionHookPoints::PRE_RECV_INITIAL_METADATA) ||
        has(InterceptionHookPoints::PRE_RECV_MESSAGE) || has(InterceptionHookPoints::PRE_RECV_STATUS)) {
      return fill(methods);
    }
    // Results on their way up: only a call passed through is observed here.
    if (has(InterceptionHookPoints::POST_RECV_STATUS) && watch_.active()) {
      watch_.end(*methods->GetRecvStatus(), *info_->client_context());
    }
    if (has(InterceptionHookPoints::POST_RECV_INITIAL_METADATA) ||
        has(InterceptionHookPoints::POST_RECV_MESSAGE) || has(InterceptionHookPoints::POST_RECV_STATUS) ||
        has(InterceptionHookPoints::POST_SEND_MESSAGE)) {
      return methods->Proceed();
    }
    // A later batch on its way down (receive-only batches show no hook
    // point): callback reactors and ReadInitialMetadata/Finish send them.
    // Until the call is hijacked it must not reach gRPC's core (the call
    // never started there); after, Proceed() brings it back to be filled.
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (phase_ != Phase::kPassThrough && !hijacked_) {
        held_.push_back(methods);
        return;
      }
    }
    methods->Proceed();
  }

 private:
  enum class Phase {
    kNotStarted,   // before the first batch
    kPassThrough,  // not retried: every batch goes on untouched
    kAttempt,      // an attempt is in flight (attempts_.back())
    kDeciding,     // an attempt ended; its callback decides what next
    kWaiting,      // waiting before the next attempt (an alarm or the user's schedule)
    kHedging,      // a hedged call runs (hedge_)
    kFinished,     // the result is final; the caller's call is being completed
  };

  // The user's scheduler holds this, not the interceptor: `done` may run
  // after the call ended (it was cancelled during the wait), when the
  // interceptor is gone. Touches no gRPC object.
  struct WaitToken {
    std::mutex mu;
    RetryInterceptor* owner;  // null once the wait is over (done ran, or the cancel claimed it)
    explicit WaitToken(RetryInterceptor* o) : owner(o) {}
    RetryInterceptor* claim() {
      std::lock_guard<std::mutex> lock(mu);
      return std::exchange(owner, nullptr);
    }
  };

  // This call is not retried: it goes on untouched, with any batch that
  // arrived before that was known.
  void pass_through(grpc::experimental::InterceptorBatchMethods* first) {
    std::vector<grpc::experimental::InterceptorBatchMethods*> held;
    {
      std::lock_guard<std::mutex> lock(mu_);
      phase_ = Phase::kPassThrough;
      held.swap(held_);
    }
    first->Proceed();
    for (auto* batch : held) batch->Proceed();
  }

  // Takes the request and starts the attempts; false = do not retry this
  // call (it goes on untouched).
  bool begin(grpc::experimental::InterceptorBatchMethods* methods) {
    using grpc::experimental::InterceptionHookPoints;
    auto* send_metadata = methods->GetSendInitialMetadata();
    std::optional<RetryControl> control;
    if (auto it = send_metadata->find(kRetryControlKey); it != send_metadata->end()) {
      control = parse_retry_control(it->second);
      send_metadata->erase(it);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cancelled_) return false;  // gRPC ends the call CANCELLED; never attempted
    }
    if (control && control->off) return false;
    if (!methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) return false;
    grpc::ByteBuffer* serialized = methods->GetSerializedSendMessage();
    if (serialized == nullptr) return false;

    first_ = methods;
    if (control && !control->problem.empty()) {
      // Refused before anything is sent: a typo must not silently retry.
      observe(EventType::kCallStart);
      finish_early(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, control->problem));
      return true;
    }
    bool const idempotent =
        method_.declared_idempotent ||
        (method_.request_id_field != 0 && has_nonempty_field(*serialized, method_.request_id_field));
    if (!idempotent) {
      first_ = nullptr;
      return false;
    }

    RetryPlan plan;
    plan.policy = options_.policy;
    if (control && control->max_attempts) plan.policy.max_attempts = *control->max_attempts;
    plan.idempotent = true;
    grpc::ClientContext* ctx = info_->client_context();
    if (ctx->deadline() != std::chrono::system_clock::time_point::max()) plan.deadline = ctx->deadline();
    plan.throttle = options_.throttle;
    plan.on_retry = options_.on_retry;
    plan.clock = options_.clock;
    plan.observer = observer_;
    plan.method = method_name_;
    plan.source = "channel";
    plan.trace_id = trace_id_of(trace_);
    metadata_.assign(send_metadata->begin(), send_metadata->end());
    credentials_ = ctx->credentials();
    request_ = *serialized;
    stub_ = std::make_unique<grpc::GenericStub>(
        std::shared_ptr<grpc::ChannelInterface>(methods->GetInterceptedChannel()));
    if (options_.hedging && !(control && control->max_attempts == 1)) {
      begin_hedged(std::move(plan), control ? control->max_attempts : std::nullopt);
      return true;
    }
    state_.emplace(std::move(plan));
    observe(EventType::kCallStart);
    if (is_blocking_call(methods)) {
      run_blocking();
    } else {
      start_attempt();
    }
    return true;
  }

  // The attempts of a sync-API call, on its caller's thread, which is
  // blocked until the call ends anyway: no gRPC callback thread, no thread
  // hop per attempt. Everything waits on one completion queue of this call:
  // the attempt's end, the backoff alarm, the wake-up of a user `schedule`
  // or of a cancel. Once the result is final the queue is drained, and only
  // then is the caller's call completed (inside this Intercept, so the
  // caller cannot destroy anything before that returns).
  void run_blocking() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocking_ = true;
      cq_.emplace();
    }
    start_attempt();
    auto const deadline = state_->plan().deadline.value_or(std::chrono::system_clock::time_point::max());
    while (!blocking_done_) {
      // A user `schedule` holding the wait past the call's deadline ends it
      // then. Attempts end by their own deadlines, and an alarm never waits
      // past the call's (RetryState does not retry across it).
      std::shared_ptr<WaitToken> token;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (phase_ == Phase::kWaiting) token = wait_token_;
      }
      void* tag = nullptr;
      bool ok = false;
      grpc::CompletionQueue::NextStatus next = grpc::CompletionQueue::SHUTDOWN;
      try {
        // The post-receive hooks of interceptors after this one run in here.
        next = cq_->AsyncNext(&tag, &ok, token ? deadline : std::chrono::system_clock::time_point::max());
      } catch (...) {
        finish_early(callback_threw("an interceptor after the retry interceptor", std::current_exception()));
        break;
      }
      if (next == grpc::CompletionQueue::GOT_EVENT) {
        if (tag == &attempt_status_) {
          on_attempt_done(attempts_.back().get(), std::exchange(attempt_status_, grpc::Status()));
        } else {
          start_attempt();  // an alarm: the wait is over, or was cancelled
        }
      } else if (next == grpc::CompletionQueue::TIMEOUT) {
        if (token && token->claim() != nullptr) {
          finish_early(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                    "deadline exceeded while the retry schedule held the call"));
        }  // else a `done` or a cancel claimed the wait first: its wake-up is on its way
      } else {
        break;  // shut down: cannot happen before the drain below
      }
    }
    drain();
    first_->Hijack();
  }

  // Shuts cq_ down and takes what is left in it. Core's shutdown, not
  // CompletionQueue::Shutdown(): an interceptor that threw inside an
  // attempt's batch left grpcpp's count of batches in flight one too high,
  // and the C++ call would then never shut the queue down (the drain would
  // wait for ever). Nothing begins on cq_ any more: the result is final,
  // and every wait that could still post to it was claimed.
  void drain() {
    grpc_completion_queue_shutdown(cq_->cq());
    for (;;) {
      void* tag = nullptr;
      bool ok = false;
      try {
        if (!cq_->Next(&tag, &ok)) return;
      } catch (...) {
        // A late hook of an interceptor after this one threw: the result is final already.
      }
    }
  }

  // A blocking call's driver waits on cq_: post it an event now (the
  // schedule's `done`, or a cancel that claimed the wait).
  void wake() {
    grpc::Alarm* alarm = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      alarms_.push_back(std::make_unique<grpc::Alarm>());
      alarm = alarms_.back().get();
    }
    alarm->Set(&*cq_, std::chrono::system_clock::now(), alarm);
  }

  // Gives an attempt's context what the caller's call carries: metadata,
  // credentials, wait_for_ready, authority and parent call. Compression
  // needs nothing more: the caller's choice is a metadata entry (set_
  // compression_algorithm would add it twice).
  void carry_call(grpc::ClientContext& ctx) const {
    for (auto const& [key, value] : metadata_) ctx.AddMetadata(key, value);
    if (credentials_) ctx.set_credentials(credentials_);
    copy_call_semantics(*info_->client_context(), ctx);
  }

  // A hedged call (RetryInterceptorOptions::hedging): async_call's hedging
  // state machine (detail::AsyncHedgeBase), its attempts sent on this
  // interceptor's generic stub with the callback API, whatever API the
  // caller used. It uses the interceptor only until it completes (the
  // interceptor cannot die before: the caller's call waits for that), and
  // releases its attempts' contexts on the thread that completes it, while
  // the caller's context still holds the channel.
  class Hedge final : public AsyncHedgeBase {
   public:
    Hedge(CallOptions options, RetryInterceptor* owner) : AsyncHedgeBase(std::move(options)), owner_(owner) {}

   private:
    void send(grpc::ClientContext* ctx, int n, std::function<void(grpc::Status)> done) override {
      owner_->carry_call(*ctx);
      auto const i = static_cast<std::size_t>(n - 1);
      // The metadata is copied while the attempt's context lives: the base
      // releases it before completing.
      auto on_end = [this, ctx, i, done = std::move(done)](grpc::Status status) {
        try {
          copy(ctx->GetServerInitialMetadata(), &initial_[i]);
          copy(ctx->GetServerTrailingMetadata(), &trailing_[i]);
          if (owner_->observer_ != nullptr) peers_[i] = ctx->peer();
        } catch (...) {  // no memory: the result goes up without this attempt's metadata
          initial_[i].clear();
          trailing_[i].clear();
        }
        done(std::move(status));
      };
      creating_attempt() = true;
      try {
        owner_->stub_->UnaryCall(ctx, owner_->method_name_, grpc::StubOptions(), &owner_->request_,
                                 &responses_[i], std::move(on_end));
      } catch (...) {
        creating_attempt() = false;
        throw;  // the base ends the attempt with UNKNOWN
      }
      creating_attempt() = false;
    }

    void complete(grpc::Status const& status, int winner) noexcept override {
      RetryInterceptor* const owner = owner_;
      {
        std::lock_guard<std::mutex> lock(owner->mu_);
        try {
          owner->status_ = status;
          if (winner > 0) {
            auto const i = static_cast<std::size_t>(winner - 1);
            if (status.ok()) owner->response_ = std::move(responses_[i]);
            owner->initial_metadata_ = std::move(initial_[i]);
            owner->trailing_metadata_ = std::move(trailing_[i]);
          }
        } catch (...) {  // no memory for the status' message
          owner->status_ = grpc::Status(grpc::StatusCode::UNKNOWN, std::string());
        }
        owner->phase_ = Phase::kFinished;
      }
      owner->first_->Hijack();  // the last use of owner_
    }

    std::string_view peer(int winner) const override {
      return winner > 0 ? std::string_view(peers_[static_cast<std::size_t>(winner - 1)]) : std::string_view();
    }

    RetryInterceptor* const owner_;
    std::array<std::string, HedgingPolicy::kMaxAttempts> peers_;  // when observed
    std::array<grpc::ByteBuffer, HedgingPolicy::kMaxAttempts> responses_;
    std::array<std::vector<std::pair<std::string, std::string>>, HedgingPolicy::kMaxAttempts> initial_;
    std::array<std::vector<std::pair<std::string, std::string>>, HedgingPolicy::kMaxAttempts> trailing_;
  };

  // Starts a hedged call; the observer hears of it from the hedge (source
  // "channel"), as of a retried call.
  void begin_hedged(RetryPlan plan, std::optional<int> max_attempts) {
    CallOptions options;
    options.hedging = *options_.hedging;
    if (max_attempts) options.hedging->max_attempts = std::min(*max_attempts, HedgingPolicy::kMaxAttempts);
    auto hedge = std::make_shared<Hedge>(std::move(options), this);
    CallSetup& setup = hedge->setup();
    setup.plan = std::move(plan);
    setup.trace = trace_;
    setup.observer = observer_;
    if (observer_ != nullptr) {
      setup.start = std::chrono::steady_clock::now();
      setup.plan.method = setup.event.method = method_name_;
      setup.plan.source = setup.event.source = "channel";
      setup.plan.trace_id = setup.event.trace_id = trace_id_of(setup.trace);
      notify(observer_, setup.event);
    }
    bool cancelled = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      hedge_ = hedge;
      phase_ = Phase::kHedging;
      cancelled = cancelled_;
    }
    if (cancelled) hedge->cancel();  // a cancel before hedge_ was set: it ends before its first attempt
    hedge->begin();                  // `hedge` keeps it alive should the call complete in here
  }

  // Starts the next attempt, or ends the call when it was cancelled.
  void start_attempt() {
    bool cancelled = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled = cancelled_;
    }
    // A cancelled call ends without reading the clock or building a context.
    if (cancelled) return finish_early(cancelled_status());
    auto deadline = state_->next_attempt_deadline();
    if (auto* failed = std::get_if<grpc::Status>(&deadline)) return finish_early(*failed);
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (auto const& when = std::get<0>(deadline)) ctx->set_deadline(*when);
    if (attempt_ > 0) ctx->AddMetadata(kPreviousAttemptsKey, std::to_string(attempt_));
    carry_call(*ctx);

    attempt_response_.Clear();
    grpc::ClientContext* const attempt = ctx.get();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!cancelled_) {
        ++attempt_;
        attempts_.push_back(std::move(ctx));  // kept until the caller's context dies: TryCancel stays safe
        phase_ = Phase::kAttempt;
      }
    }
    if (ctx) {      // not published: the caller cancelled first
      ctx.reset();  // a gRPC object: gone before the caller hears the call has ended
      return finish_early(cancelled_status());
    }
    // Interceptors after this one run inside UnaryCall (or StartCall and
    // Finish), and must not throw: gRPC 1.51 cannot clean up a call whose
    // batch an exception interrupted (it keeps a reference to the call, and
    // on the callback path its completion queue never shuts down). Should
    // one throw anyway, the exception does not unwind into gRPC's threads
    // (std::terminate) nor out of a sync caller's stub call; the caller's
    // call ends here with UNKNOWN, as no completion of this attempt will
    // follow. (run_blocking catches what their receive hooks throw.)
    if (observer_ != nullptr) {
      observe(EventType::kAttemptStart, attempt_);
      attempt_start_ = std::chrono::steady_clock::now();
      attempt_open_ = true;
    }
    creating_attempt() = true;
    try {
      if (blocking_) {
        reader_ = stub_->PrepareUnaryCall(attempt, method_name_, request_, &*cq_);
        reader_->StartCall();
        reader_->Finish(&attempt_response_, &attempt_status_, &attempt_status_);
      } else {
        stub_->UnaryCall(
            attempt, method_name_, grpc::StubOptions(), &request_, &attempt_response_,
            [this, attempt](grpc::Status status) { on_attempt_done(attempt, std::move(status)); });
      }
    } catch (...) {
      creating_attempt() = false;
      // A batch that did start ends now, so the blocking driver's drain
      // cannot wait on it.
      if (blocking_ && reader_) attempt->TryCancel();
      return finish_early(
          callback_threw("an interceptor after the retry interceptor", std::current_exception()));
    }
    creating_attempt() = false;
  }

  // An attempt ended (on a gRPC thread): decide, then wait, retry or finish.
  void on_attempt_done(grpc::ClientContext* attempt, grpc::Status status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      phase_ = Phase::kDeciding;
    }
    AttemptOutcome outcome{std::move(status), std::nullopt};
    if (observer_ != nullptr) {
      Event event = observed(EventType::kAttemptEnd, attempt_);
      last_peer_ = attempt->peer();
      event.peer = last_peer_;
      attempt_open_ = false;
      notify_end(observer_, event, outcome.status, attempt_start_);  // user code: no lock held
    }
    if (!outcome.status.ok()) outcome.pushback_ms = parse_pushback(attempt->GetServerTrailingMetadata());
    RetryDecision decision = state_->after_attempt(attempt_, outcome);  // user code: no lock held
    // Copied before the wait is published: once a cancel can claim it, the
    // call may complete and the channel (and its options) go away.
    auto const schedule = options_.schedule;
    std::shared_ptr<WaitToken> token;
    bool finished = false;
    bool fired_inline = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!decision.retry || cancelled_) {
        if (decision.status) {
          outcome.status = std::move(*decision.status);
        } else if (cancelled_ && !outcome.status.ok()) {
          // A cancel that raced the end of a failed attempt still reports
          // CANCELLED, as gRPC does for a cancelled call.
          outcome.status = cancelled_status();
        }
        status_ = std::move(outcome.status);
        if (status_.ok()) response_ = attempt_response_;
        copy(attempt->GetServerInitialMetadata(), &initial_metadata_);
        copy(attempt->GetServerTrailingMetadata(), &trailing_metadata_);
        phase_ = Phase::kFinished;
        finished = true;
      } else {
        phase_ = Phase::kWaiting;
        total_delay_ += decision.delay;  // a wait begun (a cancel may cut it short)
        if (schedule) {
          token = wait_token_ = std::make_shared<WaitToken>(this);
        } else if (blocking_) {
          // The driver waits for the alarm on cq_; a cancel cancels it.
          alarms_.push_back(std::make_unique<grpc::Alarm>());
          alarms_.back()->Set(&*cq_, detail::saturating_add(std::chrono::system_clock::now(), decision.delay),
                              alarms_.back().get());
        } else {
          // Set under the lock, so the cancel path never cancels an alarm
          // that is not set (gRPC forbids it). gRPC runs the callback on its
          // executor; should it ever run it inside Set (an executor without
          // threads, as during shutdown), on_alarm defers to this thread
          // instead of locking mu_ again. A cancelled alarm fires at once
          // with ok = false; the next attempt then sees the cancel.
          alarms_.push_back(std::make_unique<grpc::Alarm>());
          arming() = this;
          alarms_.back()->Set(detail::saturating_add(std::chrono::system_clock::now(), decision.delay),
                              [this](bool) { on_alarm(); });
          arming() = nullptr;
          fired_inline = std::exchange(fired_inline_, false);
        }
      }
    }
    if (finished) return complete();
    if (fired_inline) return start_attempt();
    if (!token) return;  // the alarm owns the call now
    // The user's scheduler, with no lock held. `done` keeps only the token.
    auto done = [token] {
      if (RetryInterceptor* self = token->claim()) self->resume();
    };
    try {
      schedule(decision.delay, std::move(done));
    } catch (...) {
      // Unless `done` already ran (and so owns the call now), end it here.
      if (RetryInterceptor* self = token->claim()) {
        self->finish_early(callback_threw("the retry schedule", std::current_exception()));
      }
    }
  }

  // The wait of a user `schedule` is over: go on with the next attempt.
  void resume() {
    if (blocking_) return wake();  // on the caller's thread, which waits on cq_
    start_attempt();
  }

  static RetryInterceptor*& arming() {
    thread_local RetryInterceptor* interceptor = nullptr;
    return interceptor;
  }

  void on_alarm() {
    if (arming() == this) {
      fired_inline_ = true;  // on the arming thread, inside Set: it starts the attempt
      return;
    }
    start_attempt();
  }

  // The caller cancelled: stop what is in flight. The call then ends through
  // the path that owns it (the attempt's callback, the alarm's), or here
  // when a user scheduler holds it.
  void on_cancel() {
    grpc::ClientContext* in_flight = nullptr;
    grpc::Alarm* alarm = nullptr;
    std::shared_ptr<WaitToken> token;
    std::shared_ptr<Hedge> hedge;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cancelled_) return;
      cancelled_ = true;
      hedge = hedge_;
      switch (phase_) {
        case Phase::kAttempt:
          in_flight = attempts_.back().get();
          break;
        case Phase::kWaiting:
          if (wait_token_) {
            token = wait_token_;
          } else if (!alarms_.empty()) {
            alarm = alarms_.back().get();
          }
          break;
        default:  // not started, passing through, deciding (sees the flag) or finished
          break;
      }
    }
    if (hedge) {
      // The hedge cancels its attempts and may complete the call at once
      // (no attempt in flight): on a gRPC thread, never inside the caller's
      // TryCancel, which holds the caller's context locked. The alarm holds
      // the hedge, not this interceptor: it may ring after the call ended.
      wake_ = std::make_unique<grpc::Alarm>();
      wake_->Set(std::chrono::system_clock::now(), [hedge = std::move(hedge)](bool) { hedge->cancel(); });
      return;
    }
    // gRPC objects are called with no stubkit lock held (the cancel reaches
    // interceptors after this one, which are user code). They stay alive:
    // the caller's call, which owns them, cannot complete before this
    // interceptor completes it.
    if (in_flight != nullptr) {
      try {
        in_flight->TryCancel();  // runs the interceptors after this one: user code
      } catch (...) {
        // The attempt ends either way; its callback completes the call.
      }
    }
    if (alarm != nullptr) alarm->Cancel();
    if (token && token->claim() != nullptr) {
      // The user's scheduler may never run `done`. A blocking call's driver
      // sees the cancel when woken; otherwise end the call from a gRPC
      // thread rather than from inside the caller's TryCancel.
      if (blocking_) return wake();
      wake_ = std::make_unique<grpc::Alarm>();
      wake_->Set(std::chrono::system_clock::now(), [this](bool) { finish_early(cancelled_status()); });
    }
  }

  // Ends the call with `status` without (further) attempts.
  void finish_early(grpc::Status status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      status_ = std::move(status);
      phase_ = Phase::kFinished;
    }
    complete();
  }

  // The attempts are over: hijack the caller's call and hand it the result.
  // gRPC re-enters Intercept at once with the first batch's receive ops
  // (fill() does the rest); nothing of `this` is touched after that, as the
  // caller may then destroy its context and this interceptor with it. A
  // blocking call's driver does this itself, once its queue is drained.
  void complete() {
    if (observer_ != nullptr) {
      // The result is final (phase_ is kFinished) and only this thread reads it now.
      if (attempt_open_) {
        // The attempt never ended by itself (an interceptor after this one threw).
        attempt_open_ = false;
        notify_end(observer_, observed(EventType::kAttemptEnd, attempt_), status_, attempt_start_);
      }
      Event event = observed(EventType::kCallEnd);
      event.attempts = attempt_;
      event.delay = total_delay_;
      event.peer = last_peer_;
      notify_end(observer_, event, status_, call_start_);
    }
    if (blocking_) {
      blocking_done_ = true;
      return;
    }
    first_->Hijack();
  }

  // Fills a batch's receive ops with the result. For the first batch (inside
  // Hijack()) it also releases the batches held meanwhile: from here on,
  // new batches go straight on, and gRPC brings each back to be filled.
  void fill(grpc::experimental::InterceptorBatchMethods* methods) {
    using grpc::experimental::InterceptionHookPoints;
    std::vector<grpc::experimental::InterceptorBatchMethods*> held;
    if (methods == first_) {
      std::lock_guard<std::mutex> lock(mu_);
      hijacked_ = true;
      held.swap(held_);
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_RECV_INITIAL_METADATA)) {
      auto* map = methods->GetRecvInitialMetadata();
      for (auto const& [key, value] : initial_metadata_) map->emplace(key, value);
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_RECV_MESSAGE)) {
      auto* message = static_cast<google::protobuf::Message*>(methods->GetRecvMessage());
      bool parsed = false;
      if (status_.ok() && message != nullptr) {
        parsed =
            grpc::GenericDeserialize<grpc::ProtoBufferReader, google::protobuf::Message>(&response_, message)
                .ok();
      }
      if (!parsed) methods->FailHijackedRecvMessage();
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_RECV_STATUS)) {
      auto* map = methods->GetRecvTrailingMetadata();
      for (auto const& [key, value] : trailing_metadata_) map->emplace(key, value);
      *methods->GetRecvStatus() = status_;
    }
    // A sync caller may return, and destroy this, once its batch goes on:
    // only locals from here.
    methods->Proceed();
    for (auto* batch : held) batch->Proceed();
  }

  static grpc::Status cancelled_status() {
    return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the caller during retries");
  }

  Event observed(EventType type, int attempt = 0) const {
    return event_of(type, "channel", method_name_, attempt, trace_id_of(trace_));
  }

  // Start events of a call this interceptor runs (no lock held).
  void observe(EventType type, int attempt = 0) {
    if (observer_ == nullptr) return;
    if (type == EventType::kCallStart) call_start_ = std::chrono::steady_clock::now();
    notify(observer_, observed(type, attempt));
  }

  static void copy(std::multimap<grpc::string_ref, grpc::string_ref> const& from,
                   std::vector<std::pair<std::string, std::string>>* to) {
    to->clear();
    for (auto const& [key, value] : from)
      to->emplace_back(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
  }

  grpc::experimental::ClientRpcInfo* const info_;
  // Owned: the attempts' calls keep a pointer to it (a generic stub's name
  // is otherwise a temporary). Declared before attempts_, so it outlives them.
  std::string const method_name_;
  RetryMethod const method_;
  RetryInterceptorOptions const& options_;
  Observer* const observer_;  // may be null; outlives the call (see RetryInterceptorOptions::observer)
  // The call's trace, set by its first batch before any event but a cancel's.
  std::optional<TraceContext> trace_;
  CallWatch watch_;  // a call passed through, when observed

  // A blocking call's completion queue (see run_blocking). Declared before
  // the attempts and alarms that use it, so it outlives them.
  std::optional<grpc::CompletionQueue> cq_;

  // Under mu_: what the cancel path and the receive batches read.
  std::mutex mu_;
  Phase phase_ = Phase::kNotStarted;
  bool cancelled_ = false;
  bool hijacked_ = false;
  std::vector<grpc::experimental::InterceptorBatchMethods*> held_;  // later batches, until hijacked
  std::vector<std::unique_ptr<grpc::ClientContext>> attempts_;
  std::vector<std::unique_ptr<grpc::Alarm>>
      alarms_;  // kept, like attempts_: the cancel path may hold the last
  std::shared_ptr<WaitToken> wait_token_;
  std::shared_ptr<Hedge> hedge_;  // a hedged call's, set once

  // The attempt driver's: written in begin(), then by one thread at a time
  // (see "Threads and locks" above).
  grpc::experimental::InterceptorBatchMethods* first_ = nullptr;
  std::optional<RetryState> state_;
  std::vector<std::pair<std::string, std::string>> metadata_;
  std::shared_ptr<grpc::CallCredentials> credentials_;
  grpc::ByteBuffer request_;
  std::unique_ptr<grpc::GenericStub> stub_;
  std::unique_ptr<grpc::Alarm> wake_;
  int attempt_ = 0;
  bool fired_inline_ = false;  // see on_alarm
  // Observation, by the attempt driver (see "Threads and locks").
  std::chrono::steady_clock::time_point call_start_;
  std::chrono::steady_clock::time_point attempt_start_;
  std::chrono::milliseconds total_delay_{0};
  bool attempt_open_ = false;  // attempt.start told, attempt.end not yet
  std::string last_peer_;
  // A sync-API call: attempts run in run_blocking. Set under mu_ before the
  // first attempt, never changed after; other threads read it only after
  // taking mu_ (on_cancel) or claiming a wait token created after it (done).
  bool blocking_ = false;
  bool blocking_done_ = false;  // its result is final
  // The blocking driver's attempt in flight; destroyed before the attempt's
  // context, whose call holds its memory.
  std::unique_ptr<grpc::ClientAsyncResponseReader<grpc::ByteBuffer>> reader_;
  grpc::Status attempt_status_;
  grpc::ByteBuffer attempt_response_;

  // The result; final once phase_ is kFinished, read by fill().
  grpc::Status status_;
  grpc::ByteBuffer response_;
  std::vector<std::pair<std::string, std::string>> initial_metadata_;
  std::vector<std::pair<std::string, std::string>> trailing_metadata_;
};

}  // namespace detail

/// Creates retry interceptors for the calls of one channel; see the top of
/// this file. Thread-safe; must outlive the channel (gRPC owns it when
/// passed to CreateCustomChannelWithInterceptors). Throws
/// std::invalid_argument for an unusable policy (check
/// RetryPolicy::problem() first to avoid the exception).
class RetryInterceptorFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit RetryInterceptorFactory(RetryInterceptorOptions options = {}) : options_(std::move(options)) {
    if (auto problem = options_.policy.problem(); !problem.empty()) {
      throw std::invalid_argument("stubkit::retry_interceptor: invalid RetryPolicy: " + problem);
    }
    if (options_.hedging) {
      if (auto problem = options_.hedging->problem(); !problem.empty()) {
        throw std::invalid_argument("stubkit::retry_interceptor: invalid HedgingPolicy: " + problem);
      }
    }
  }

  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo* info) override {
    if (detail::RetryInterceptor::creating_attempt()) return nullptr;  // an attempt of ours: reported by it
    Observer* const observer = detail::resolve_observer(options_.observer);
    if (info->type() != grpc::experimental::ClientRpcInfo::Type::UNARY)
      return detail::observe_only(info, observer);
    detail::RetryMethod const method = methods_.lookup(info->method());
    if (!method.known || (!method.declared_idempotent && method.request_id_field == 0))
      return detail::observe_only(info, observer);
    return new detail::RetryInterceptor(info, method, options_, observer);
  }

 private:
  RetryInterceptorOptions const options_;
  detail::MethodTable methods_;
};

/// Observes every call of a channel without retrying any (source
/// "channel"): for channels without the retry interceptor, which observes
/// by itself (RetryInterceptorOptions::observer). `observer` empty = the
/// default observer when each call starts; with none, calls are not
/// touched. Put it last: gRPC places the calls an interceptor makes
/// itself by counting the interceptors created before it, and one that
/// declines a call would shift that count.
class ObserveInterceptorFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit ObserveInterceptorFactory(std::shared_ptr<Observer> observer = nullptr)
      : observer_(std::move(observer)) {}

  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo* info) override {
    return detail::observe_only(info, detail::resolve_observer(observer_));
  }

 private:
  std::shared_ptr<Observer> const observer_;
};

/// An ObserveInterceptorFactory, ready for CreateCustomChannelWithInterceptors.
inline std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface> observe_interceptor(
    std::shared_ptr<Observer> observer = nullptr) {
  return std::make_unique<ObserveInterceptorFactory>(std::move(observer));
}

/// A retry interceptor factory, ready for CreateCustomChannelWithInterceptors
/// or InProcessChannelWithInterceptors. Throws std::invalid_argument for an
/// unusable policy.
inline std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface> retry_interceptor(
    RetryInterceptorOptions options = {}) {
  return std::make_unique<RetryInterceptorFactory>(std::move(options));
}

}  // namespace stubkit

#endif  // STUBKIT_RETRY_INTERCEPTOR_HPP
