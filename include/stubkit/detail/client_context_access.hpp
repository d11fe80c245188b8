// What a retry attempt must copy from the caller's ClientContext but gRPC
// 1.51 offers no getter for: wait_for_ready, the authority override and the
// parent call of ClientContext::FromServerContext (whose cancellation, and
// optionally deadline, gRPC propagates). Without them a retried call would
// quietly change meaning: fail fast where the caller asked to wait, or keep
// running after the server call it serves was cancelled. And one fact about
// an intercepted call gRPC does not expose: whether its caller is blocked
// waiting for it (the sync API), so its attempts may run on that thread.
//
// The members are reached through pointers to members named in explicit
// template instantiations, where C++ does not check access
// ([temp.spec.general]/6): no layout assumptions, no undefined behaviour,
// and a gRPC that renames or retypes a member fails to compile here rather
// than misbehaving.
//
//   stubkit::detail::copy_call_semantics(caller, attempt);
#ifndef STUBKIT_DETAIL_CLIENT_CONTEXT_ACCESS_HPP
#define STUBKIT_DETAIL_CLIENT_CONTEXT_ACCESS_HPP

#include <grpc/grpc.h>
#include <grpcpp/client_context.h>
#include <grpcpp/completion_queue.h>
#include <grpcpp/impl/codegen/interceptor_common.h>

#include <string>

// gRPC core's own answer to "what kind of completion queue is this" (next,
// pluck or callback). Exported by libgrpc but declared in no public header;
// declared weak, so a gRPC without it links and is_blocking_call() then
// answers false (the interceptor's portable path).
grpc_cq_completion_type grpc_get_cq_completion_type(grpc_completion_queue* cq) __attribute__((weak));

namespace stubkit::detail {

// One private member, by tag: `member(Tag{})` is a pointer to it.
template <typename Tag, typename Tag::type Pointer>
struct ExposeMember {
  friend typename Tag::type member(Tag) { return Pointer; }
};

struct WaitForReadyMember {
  using type = bool grpc::ClientContext::*;
  friend type member(WaitForReadyMember);
};
struct WaitForReadySetMember {
  using type = bool grpc::ClientContext::*;
  friend type member(WaitForReadySetMember);
};
struct AuthorityMember {
  using type = std::string grpc::ClientContext::*;
  friend type member(AuthorityMember);
};
struct ParentCallMember {
  using type = grpc_call* grpc::ClientContext::*;
  friend type member(ParentCallMember);
};
struct PropagationMember {
  using type = grpc::PropagationOptions grpc::ClientContext::*;
  friend type member(PropagationMember);
};

struct BatchCallMember {
  using type = grpc::internal::Call* grpc::internal::InterceptorBatchMethodsImpl::*;
  friend type member(BatchCallMember);
};

template struct ExposeMember<WaitForReadyMember, &grpc::ClientContext::wait_for_ready_>;
template struct ExposeMember<WaitForReadySetMember, &grpc::ClientContext::wait_for_ready_explicitly_set_>;
template struct ExposeMember<AuthorityMember, &grpc::ClientContext::authority_>;
template struct ExposeMember<ParentCallMember, &grpc::ClientContext::propagate_from_call_>;
template struct ExposeMember<PropagationMember, &grpc::ClientContext::propagation_options_>;
template struct ExposeMember<BatchCallMember, &grpc::internal::InterceptorBatchMethodsImpl::call_>;

/// Gives `attempt` (a fresh context, before its call starts) the caller's
/// wait_for_ready, authority and parent call. The parent call is gRPC's
/// own pointer, valid while the caller's call runs, as in the caller's
/// context itself.
inline void copy_call_semantics(grpc::ClientContext& caller, grpc::ClientContext& attempt) {
  if (caller.*member(WaitForReadySetMember{}))
    attempt.set_wait_for_ready(caller.*member(WaitForReadyMember{}));
  std::string const& authority = caller.*member(AuthorityMember{});
  if (!authority.empty()) attempt.set_authority(authority);
  attempt.*member(ParentCallMember{}) = caller.*member(ParentCallMember{});
  attempt.*member(PropagationMember{}) = caller.*member(PropagationMember{});
}

/// Whether `ctx` asked to wait for a ready channel (for tests and logs).
inline bool waits_for_ready(grpc::ClientContext& ctx) {
  return ctx.*member(WaitForReadySetMember{}) && ctx.*member(WaitForReadyMember{});
}

/// Whether the call of an intercepted batch is a blocking one: made through
/// the sync API, whose caller waits on a pluck completion queue of its own
/// until the call ends. Its interceptors may then block that thread. False
/// for the async (next) and callback APIs, for any batch but a call's first
/// (PRE_SEND_INITIAL_METADATA), and when it cannot be told. What it reads
/// is the queue's kind: a caller that made a pluck queue itself (through
/// gRPC's C API) and used it with the async API is taken for a sync caller.
inline bool is_blocking_call(grpc::experimental::InterceptorBatchMethods* methods) {
  using grpc::experimental::InterceptionHookPoints;
  if (&grpc_get_cq_completion_type == nullptr) return false;
  // Only InterceptorBatchMethodsImpl carries a call's first batch (cancel
  // batches are another class): the cast is sound, and needs no RTTI.
  if (!methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) return false;
  auto* batch = static_cast<grpc::internal::InterceptorBatchMethodsImpl*>(methods);
  grpc::internal::Call* call = batch->*member(BatchCallMember{});
  if (call == nullptr || call->cq() == nullptr || call->cq()->cq() == nullptr) return false;
  return grpc_get_cq_completion_type(call->cq()->cq()) == GRPC_CQ_PLUCK;
}

}  // namespace stubkit::detail

#endif  // STUBKIT_DETAIL_CLIENT_CONTEXT_ACCESS_HPP
