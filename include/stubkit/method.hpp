// What stubkit knows of a gRPC method: its full name, kind, declared
// idempotency and whether its request carries an AIP-155 `request_id`.
// protoc-gen-stubkit writes a table of these per service (`XxxMethods`,
// docs/codegen.md) and registers it, so retries (retry.hpp) and the retry
// interceptor (retry_interceptor.hpp) find a method's facts by its full
// name instead of inferring them from the request and response types.
//
//   stubkit::CallOptions options;
//   options.method = &myservice::v1::UserServiceMethods::GetUser;  // set by generated clients
#ifndef STUBKIT_METHOD_HPP
#define STUBKIT_METHOD_HPP

#include <cstddef>
#include <mutex>
#include <shared_mutex>
#include <string_view>
#include <unordered_map>

namespace stubkit {

/// How a method streams.
enum class RpcKind { kUnary, kServerStreaming, kClientStreaming, kBidiStreaming };

/// A method's `option idempotency_level` (google.protobuf.MethodOptions).
enum class Idempotency { kUnknown, kNoSideEffects, kIdempotent };

/// The facts of one method. Generated tables hold them as constants with
/// static storage: `full_name` must outlive every call that uses it.
struct MethodInfo {
  /// "/package.Service/Method", as gRPC names it on the wire.
  std::string_view full_name;
  RpcKind kind = RpcKind::kUnary;
  Idempotency idempotency = Idempotency::kUnknown;
  /// Field number of the request's string `request_id` (AIP-155), 0 = none.
  /// A call whose request sets it may be retried: the server deduplicates.
  int request_id_field = 0;

  /// Declared NO_SIDE_EFFECTS or IDEMPOTENT: safe to retry as it is.
  constexpr bool declared_idempotent() const noexcept { return idempotency != Idempotency::kUnknown; }
};

namespace detail {

struct MethodRegistry {
  std::shared_mutex mu;
  std::unordered_map<std::string_view, MethodInfo const*> by_name;
};

// Never destroyed: an interceptor may look a method up while the program exits.
inline MethodRegistry& method_registry() {
  static auto* const registry = new MethodRegistry;
  return *registry;
}

}  // namespace detail

/// Makes `count` methods known by full name to find_method_info. Generated
/// headers call it once per service, while the program starts; the methods
/// must have static storage. A name registered before keeps its first
/// facts. Returns true (for the generated registration variable).
inline bool register_methods(MethodInfo const* methods, std::size_t count) {
  auto& registry = detail::method_registry();
  std::unique_lock<std::shared_mutex> lock(registry.mu);
  for (std::size_t i = 0; i < count; ++i) registry.by_name.emplace(methods[i].full_name, &methods[i]);
  return true;
}

/// The registered facts of a method by full name ("/pkg.Service/Method"),
/// or nullptr when no generated header of its service is in the program.
inline MethodInfo const* find_method_info(std::string_view full_name) {
  auto& registry = detail::method_registry();
  std::shared_lock<std::shared_mutex> lock(registry.mu);
  auto const it = registry.by_name.find(full_name);
  return it == registry.by_name.end() ? nullptr : it->second;
}

}  // namespace stubkit

#endif  // STUBKIT_METHOD_HPP
