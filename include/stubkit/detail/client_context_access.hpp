// What a retry attempt must copy from the caller's ClientContext but gRPC
// 1.51 offers no getter for: wait_for_ready, the authority override and the
// parent call of ClientContext::FromServerContext (whose cancellation, and
// optionally deadline, gRPC propagates). Without them a retried call would
// quietly change meaning: fail fast where the caller asked to wait, or keep
// running after the server call it serves was cancelled.
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

#include <grpcpp/client_context.h>

#include <string>

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

template struct ExposeMember<WaitForReadyMember, &grpc::ClientContext::wait_for_ready_>;
template struct ExposeMember<WaitForReadySetMember, &grpc::ClientContext::wait_for_ready_explicitly_set_>;
template struct ExposeMember<AuthorityMember, &grpc::ClientContext::authority_>;
template struct ExposeMember<ParentCallMember, &grpc::ClientContext::propagate_from_call_>;
template struct ExposeMember<PropagationMember, &grpc::ClientContext::propagation_options_>;

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

}  // namespace stubkit::detail

#endif  // STUBKIT_DETAIL_CLIENT_CONTEXT_ACCESS_HPP
