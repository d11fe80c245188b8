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
// (GetInterceptedChannel, with a generic stub and callbacks, so no caller
// thread is blocked), waits between them with grpc::Alarm, and finally
// hijacks the original call and hands it the last attempt's response,
// status and metadata.
//
// What it covers: unary methods known to the generated descriptor pool
// (proto methods of linked generated code), called through the sync, async
// (completion queue) or callback stub API. Calls that cannot be retried
// (not idempotent, no request_id) pass through untouched, so they cost what
// an empty interceptor costs. Streaming calls are left alone.
//
// Limits: attempts carry the caller's deadline, metadata, credentials and
// compression; wait_for_ready, authority override and parent-call
// propagation cannot be copied to attempts through gRPC's public API. Do
// not call a retried method with grpc::GenericStub and a ByteBuffer
// response on the same channel: the interceptor fills responses as the
// generated message type.
#ifndef STUBKIT_RETRY_INTERCEPTOR_HPP
#define STUBKIT_RETRY_INTERCEPTOR_HPP

#include <grpcpp/alarm.h>
#include <grpcpp/client_context.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/client_interceptor.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "stubkit/retry.hpp"

namespace stubkit {

/// Configuration of the retry interceptor of one channel.
struct RetryInterceptorOptions {
  RetryPolicy policy = RetryPolicy::standard();
  /// Shared by every call on the channel; nullptr = no throttling.
  std::shared_ptr<RetryThrottle> throttle = std::make_shared<RetryThrottle>();
  /// Called before each retry; may run on a gRPC thread.
  std::function<void(RetryEvent const&)> on_retry;
  /// Waits `delay`, then runs `done` (or runs it early when cancelled);
  /// empty = a grpc::Alarm. Tests inject one that does not wait.
  std::function<void(std::chrono::milliseconds delay, std::function<void()> done)> schedule;
  /// Clock and randomness of retry decisions.
  RetryClock clock;
};

namespace detail {

// The state of one retried call, shared by the interceptor (owned by the
// caller's ClientContext) and the callbacks of its attempts, so it lives as
// long as either needs it.
class RetryCall : public std::enable_shared_from_this<RetryCall> {
 public:
  RetryCall(RetryPlan plan, std::string method, std::shared_ptr<grpc::ChannelInterface> channel,
            grpc::ByteBuffer request, std::vector<std::pair<std::string, std::string>> metadata,
            std::shared_ptr<grpc::CallCredentials> credentials, grpc_compression_algorithm compression,
            std::function<void(std::chrono::milliseconds, std::function<void()>)> schedule,
            std::function<void()> on_done)
      : state_(std::move(plan)),
        method_(std::move(method)),
        stub_(std::move(channel)),
        request_(std::move(request)),
        metadata_(std::move(metadata)),
        credentials_(std::move(credentials)),
        compression_(compression),
        schedule_(std::move(schedule)),
        on_done_(std::move(on_done)) {}

  void start() { start_attempt(); }

  // The caller cancelled: stop the attempt in flight or the wait.
  void cancel() {
    grpc::ClientContext* in_flight = nullptr;
    grpc::Alarm* waiting = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (done_) return;
      cancelled_ = true;
      if (!attempts_.empty() && attempt_running_) in_flight = attempts_.back().get();
      if (!alarms_.empty() && alarm_waiting_) waiting = alarms_.back().get();
    }
    if (in_flight != nullptr) in_flight->TryCancel();
    if (waiting != nullptr) waiting->Cancel();
  }

  // The final result; read only after on_done ran.
  grpc::Status const& status() const { return status_; }
  grpc::ByteBuffer& response() { return response_; }
  std::vector<std::pair<std::string, std::string>> const& initial_metadata() const {
    return initial_metadata_;
  }
  std::vector<std::pair<std::string, std::string>> const& trailing_metadata() const {
    return trailing_metadata_;
  }

 private:
  void start_attempt() {
    grpc::ClientContext* ctx = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cancelled_) {
        status_ = grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the caller during retries");
        done_ = true;
      } else {
        ++attempt_;
        attempts_.push_back(std::make_unique<grpc::ClientContext>());
        ctx = attempts_.back().get();
        if (auto deadline = state_.next_attempt_deadline()) ctx->set_deadline(*deadline);
        for (auto const& [key, value] : metadata_) ctx->AddMetadata(key, value);
        if (attempt_ > 1) ctx->AddMetadata(kPreviousAttemptsKey, std::to_string(attempt_ - 1));
        if (credentials_) ctx->set_credentials(credentials_);
        ctx->set_compression_algorithm(compression_);
        attempt_response_.Clear();
        attempt_running_ = true;
      }
    }
    // on_done re-enters the interceptor: never call it under our lock.
    if (ctx == nullptr) return on_done_();
    auto self = shared_from_this();
    stub_.UnaryCall(ctx, method_, grpc::StubOptions(), &request_, &attempt_response_,
                    [self, ctx](grpc::Status status) { self->on_attempt_done(ctx, std::move(status)); });
  }

  void on_attempt_done(grpc::ClientContext* ctx, grpc::Status status) {
    AttemptOutcome outcome{std::move(status), std::nullopt};
    if (!outcome.status.ok()) outcome.pushback_ms = parse_pushback(ctx->GetServerTrailingMetadata());
    RetryDecision decision;
    bool finished = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      attempt_running_ = false;
      decision = state_.after_attempt(attempt_, outcome);
      if (!decision.retry || cancelled_) {
        // A cancel that raced the end of a failed attempt still reports
        // CANCELLED, as gRPC does for a cancelled call.
        if (cancelled_ && !outcome.status.ok()) {
          outcome.status =
              grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the caller during retries");
        }
        status_ = std::move(outcome.status);
        response_ = attempt_response_;
        copy(ctx->GetServerInitialMetadata(), &initial_metadata_);
        copy(ctx->GetServerTrailingMetadata(), &trailing_metadata_);
        done_ = finished = true;
      }
    }
    if (finished) return on_done_();
    wait_then_retry(decision.delay);
  }

  void wait_then_retry(std::chrono::milliseconds delay) {
    // The timer holds only a weak reference: a strong one would keep the
    // call alive through its own member (a cycle).
    std::weak_ptr<RetryCall> weak = shared_from_this();
    auto resume = [weak] {
      if (auto self = weak.lock()) {
        {
          std::lock_guard<std::mutex> lock(self->mu_);
          self->alarm_waiting_ = false;
        }
        self->start_attempt();
      }
    };
    if (schedule_) return schedule_(delay, resume);
    std::lock_guard<std::mutex> lock(mu_);
    alarms_.push_back(std::make_unique<grpc::Alarm>());
    alarm_waiting_ = true;
    // A cancelled alarm fires at once (ok = false); start_attempt then sees
    // the cancellation.
    alarms_.back()->Set(std::chrono::system_clock::now() + delay, [resume](bool) { resume(); });
  }

  static void copy(std::multimap<grpc::string_ref, grpc::string_ref> const& from,
                   std::vector<std::pair<std::string, std::string>>* to) {
    to->clear();
    for (auto const& [key, value] : from)
      to->emplace_back(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
  }

  std::mutex mu_;
  RetryState state_;
  std::string const method_;
  grpc::GenericStub stub_;
  grpc::ByteBuffer request_;
  std::vector<std::pair<std::string, std::string>> const metadata_;
  std::shared_ptr<grpc::CallCredentials> const credentials_;
  grpc_compression_algorithm const compression_;
  std::function<void(std::chrono::milliseconds, std::function<void()>)> const schedule_;
  std::function<void()> const on_done_;

  int attempt_ = 0;
  bool attempt_running_ = false;
  bool cancelled_ = false;
  bool done_ = false;
  bool alarm_waiting_ = false;
  std::vector<std::unique_ptr<grpc::ClientContext>> attempts_;  // kept: TryCancel stays safe
  grpc::ByteBuffer attempt_response_;
  // Kept, like attempts_: cancel() may hold a pointer to the last one while
  // it fires and the next wait starts.
  std::vector<std::unique_ptr<grpc::Alarm>> alarms_;

  grpc::Status status_;
  grpc::ByteBuffer response_;
  std::vector<std::pair<std::string, std::string>> initial_metadata_;
  std::vector<std::pair<std::string, std::string>> trailing_metadata_;
};

// What the factory knows about a method, looked up once per method.
struct RetryMethod {
  google::protobuf::MethodDescriptor const* descriptor = nullptr;
  bool declared_idempotent = false;
  bool has_request_id = false;  // the request type has a string request_id field
};

class RetryInterceptor final : public grpc::experimental::Interceptor {
 public:
  RetryInterceptor(grpc::experimental::ClientRpcInfo* info, RetryMethod method,
                   RetryInterceptorOptions const& options)
      : info_(info), method_(method), options_(options) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (passthrough_) return methods->Proceed();
    if (!started_) {
      if (!methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
        return methods->Proceed();
      }
      started_ = true;
      if (!begin(methods)) {
        passthrough_ = true;
        return methods->Proceed();
      }
      return;  // held until the attempts are done; then Hijack()
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_CANCEL)) {
      if (call_) call_->cancel();
      return methods->Proceed();
    }
    bool const receives =
        methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_RECV_INITIAL_METADATA) ||
        methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_RECV_MESSAGE) ||
        methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_RECV_STATUS);
    if (!receives) return methods->Proceed();
    // gRPC shows a receive batch to this interceptor twice: on its way down,
    // and, the call being hijacked, once more to have it filled. The first
    // batch is only seen the second way (after Hijack()).
    bool second_visit;
    {
      std::lock_guard<std::mutex> lock(mu_);
      second_visit = methods == first_ || forwarded_.erase(methods) > 0;
      if (!second_visit) {
        forwarded_.insert(methods);
        if (!finished_) {
          held_ = methods;  // async and callback callers: proceeds once the result exists
          return;
        }
      }
    }
    if (!second_visit) return methods->Proceed();
    fill(methods);
  }

 private:
  // Takes the request and starts the attempts; false = do not retry this call.
  bool begin(grpc::experimental::InterceptorBatchMethods* methods) {
    using grpc::experimental::InterceptionHookPoints;
    if (!methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) return false;
    bool idempotent = method_.declared_idempotent;
    if (!idempotent && method_.has_request_id) {
      if (auto const* message = static_cast<google::protobuf::Message const*>(methods->GetSendMessage())) {
        idempotent = has_idempotency_key(*message);
      } else if (auto* serialized = methods->GetSerializedSendMessage()) {  // async callers
        std::unique_ptr<google::protobuf::Message> request(
            google::protobuf::MessageFactory::generated_factory()
                ->GetPrototype(method_.descriptor->input_type())
                ->New());
        grpc::ByteBuffer copy(*serialized);
        idempotent =
            grpc::GenericDeserialize<grpc::ProtoBufferReader, google::protobuf::Message>(&copy, request.get())
                .ok() &&
            has_idempotency_key(*request);
      }
    }
    if (!idempotent) return false;
    auto* serialized = methods->GetSerializedSendMessage();
    if (serialized == nullptr) return false;

    RetryPlan plan;
    plan.policy = options_.policy;
    plan.idempotent = true;
    auto* ctx = info_->client_context();
    if (ctx->deadline() != std::chrono::system_clock::time_point::max()) plan.deadline = ctx->deadline();
    plan.throttle = options_.throttle;
    plan.on_retry = options_.on_retry;
    plan.clock = options_.clock;

    std::vector<std::pair<std::string, std::string>> metadata;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      for (auto const& kv : *methods->GetSendInitialMetadata()) metadata.push_back(kv);
    }
    first_ = methods;
    std::shared_ptr<grpc::ChannelInterface> channel = methods->GetInterceptedChannel();
    call_ = std::make_shared<RetryCall>(std::move(plan), info_->method(), std::move(channel), *serialized,
                                        std::move(metadata), ctx->credentials(), ctx->compression_algorithm(),
                                        options_.schedule, [this] { finish(); });
    call_->start();
    return true;
  }

  // The attempts are over: hijack the caller's call and hand it the result.
  // Nothing of `this` is touched after the batches proceed: the caller may
  // then destroy its context, and this interceptor with it.
  void finish() {
    grpc::experimental::InterceptorBatchMethods* held;
    grpc::experimental::InterceptorBatchMethods* first;
    {
      std::lock_guard<std::mutex> lock(mu_);
      finished_ = true;
      held = held_;
      held_ = nullptr;
      first = first_;
    }
    first->Hijack();                       // gRPC re-enters Intercept for the first batch's receive ops
    if (held != nullptr) held->Proceed();  // and then asks for the held batch's
  }

  void fill(grpc::experimental::InterceptorBatchMethods* methods) {
    using grpc::experimental::InterceptionHookPoints;
    auto call = call_;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_RECV_INITIAL_METADATA)) {
      auto* map = methods->GetRecvInitialMetadata();
      for (auto const& [key, value] : call->initial_metadata()) map->emplace(key, value);
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_RECV_MESSAGE)) {
      auto* message = static_cast<google::protobuf::Message*>(methods->GetRecvMessage());
      bool parsed = false;
      if (call->status().ok() && message != nullptr) {
        parsed = grpc::GenericDeserialize<grpc::ProtoBufferReader, google::protobuf::Message>(
                     &call->response(), message)
                     .ok();
      }
      if (!parsed) methods->FailHijackedRecvMessage();
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_RECV_STATUS)) {
      auto* map = methods->GetRecvTrailingMetadata();
      for (auto const& [key, value] : call->trailing_metadata()) map->emplace(key, value);
      *methods->GetRecvStatus() = call->status();
    }
    methods->Proceed();
  }

  grpc::experimental::ClientRpcInfo* info_;
  RetryMethod const method_;
  RetryInterceptorOptions const& options_;
  bool passthrough_ = false;
  bool started_ = false;
  std::mutex mu_;
  bool finished_ = false;
  std::set<grpc::experimental::InterceptorBatchMethods*> forwarded_;
  grpc::experimental::InterceptorBatchMethods* first_ = nullptr;
  grpc::experimental::InterceptorBatchMethods* held_ = nullptr;
  std::shared_ptr<RetryCall> call_;
};

}  // namespace detail

/// Creates retry interceptors for the calls of one channel; see the top of
/// this file. Thread-safe; must outlive the channel (gRPC owns it when
/// passed to CreateCustomChannelWithInterceptors).
class RetryInterceptorFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit RetryInterceptorFactory(RetryInterceptorOptions options = {}) : options_(std::move(options)) {}

  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo* info) override {
    if (info->type() != grpc::experimental::ClientRpcInfo::Type::UNARY) return nullptr;
    detail::RetryMethod const method = lookup(info->method());
    if (method.descriptor == nullptr || (!method.declared_idempotent && !method.has_request_id))
      return nullptr;
    return new detail::RetryInterceptor(info, method, options_);
  }

 private:
  // Method names are the generated stubs' static strings: cache by address.
  detail::RetryMethod lookup(char const* name) {
    {
      std::shared_lock<std::shared_mutex> lock(mu_);
      auto it = methods_.find(name);
      if (it != methods_.end()) return it->second;
    }
    detail::RetryMethod method;
    method.descriptor = find_method(name);
    if (method.descriptor != nullptr) {
      method.declared_idempotent = declared_idempotent(method.descriptor);
      auto const* field = method.descriptor->input_type()->FindFieldByName("request_id");
      method.has_request_id = field != nullptr && !field->is_repeated() &&
                              field->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_STRING;
    }
    std::unique_lock<std::shared_mutex> lock(mu_);
    methods_.emplace(name, method);
    return method;
  }

  RetryInterceptorOptions const options_;
  std::shared_mutex mu_;
  std::unordered_map<char const*, detail::RetryMethod> methods_;
};

/// A retry interceptor factory, ready for CreateCustomChannelWithInterceptors
/// or InProcessChannelWithInterceptors.
inline std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface> retry_interceptor(
    RetryInterceptorOptions options = {}) {
  return std::make_unique<RetryInterceptorFactory>(std::move(options));
}

}  // namespace stubkit

#endif  // STUBKIT_RETRY_INTERCEPTOR_HPP
