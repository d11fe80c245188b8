// A method's facts (MethodInfo) from its descriptor, and which method of a
// generated service a Request/Response pair belongs to, from the generated
// descriptor pool: for idempotency (retry.hpp) and for the method name
// observers see (observe.hpp), when a call has no generated table.
#ifndef STUBKIT_DETAIL_METHOD_HPP
#define STUBKIT_DETAIL_METHOD_HPP

#include <string>
#include <string_view>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/message.h"
#include "stubkit/method.hpp"

namespace stubkit::detail {

// The number of `request`'s AIP-155 idempotency key, a single string field
// named `request_id`; 0 when it has none.
inline int request_id_field_of(google::protobuf::Descriptor const& request) {
  auto const* field = request.FindFieldByName("request_id");
  if (field == nullptr || field->is_repeated() ||
      field->type() != google::protobuf::FieldDescriptor::TYPE_STRING) {
    return 0;
  }
  return field->number();
}

// Whether `request` sets its string field number `field` (a request_id_field
// of MethodInfo) to a non-empty value.
inline bool request_id_set(google::protobuf::Message const& request, int field) {
  if (field == 0) return false;
  auto const* descriptor = request.GetDescriptor()->FindFieldByNumber(field);
  if (descriptor == nullptr || descriptor->is_repeated() ||
      descriptor->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_STRING) {
    return false;
  }
  return !request.GetReflection()->GetString(request, descriptor).empty();
}

// A method's `option idempotency_level`.
inline Idempotency idempotency_of(google::protobuf::MethodDescriptor const& method) {
  switch (method.options().idempotency_level()) {
    case google::protobuf::MethodOptions::NO_SIDE_EFFECTS:
      return Idempotency::kNoSideEffects;
    case google::protobuf::MethodOptions::IDEMPOTENT:
      return Idempotency::kIdempotent;
    default:
      return Idempotency::kUnknown;
  }
}

// What a descriptor says of a method, the facts a generated table holds;
// `full_name` must outlive the result's uses.
inline MethodInfo method_info_of(google::protobuf::MethodDescriptor const& method,
                                 std::string_view full_name) {
  MethodInfo info;
  info.full_name = full_name;
  info.kind = method.client_streaming()
                  ? (method.server_streaming() ? RpcKind::kBidiStreaming : RpcKind::kClientStreaming)
                  : (method.server_streaming() ? RpcKind::kServerStreaming : RpcKind::kUnary);
  info.idempotency = idempotency_of(method);
  info.request_id_field = request_id_field_of(*method.input_type());
  return info;
}

// The unique method of Request's file taking Request and returning
// Response, or nullptr when there is none or several (then idempotency must
// be stated by the caller).
template <typename Request, typename Response>
google::protobuf::MethodDescriptor const* method_for_types() {
  static google::protobuf::MethodDescriptor const* const found = [] {
    google::protobuf::MethodDescriptor const* match = nullptr;
    auto const* file = Request::descriptor()->file();
    for (int s = 0; s < file->service_count(); ++s) {
      auto const* service = file->service(s);
      for (int m = 0; m < service->method_count(); ++m) {
        auto const* method = service->method(m);
        if (method->input_type() == Request::descriptor() &&
            method->output_type() == Response::descriptor()) {
          if (match != nullptr) return static_cast<google::protobuf::MethodDescriptor const*>(nullptr);
          match = method;
        }
      }
    }
    return match;
  }();
  return found;
}

// The full method name of the unique method taking Request and returning
// Response ("/pkg.Service/Method"), for observers; when there is none or
// several, "(pkg.Request)->(pkg.Response)".
template <typename Request, typename Response>
std::string const& method_path() {
  static std::string const path = [] {
    if (auto const* method = method_for_types<Request, Response>()) {
      return "/" + method->service()->full_name() + "/" + method->name();
    }
    return "(" + Request::descriptor()->full_name() + ")->(" + Response::descriptor()->full_name() + ")";
  }();
  return path;
}

// The facts of the method found by the request and response types; when
// there is none or several, a method not declared idempotent, named by its
// types, whose request_id is Request's.
template <typename Request, typename Response>
MethodInfo const& inferred_method() {
  static MethodInfo const info = [] {
    if (auto const* method = method_for_types<Request, Response>()) {
      return method_info_of(*method, method_path<Request, Response>());
    }
    MethodInfo unknown;
    unknown.full_name = method_path<Request, Response>();
    unknown.request_id_field = request_id_field_of(*Request::descriptor());
    return unknown;
  }();
  return info;
}

// A call's method: the generated table's when the call has one, else the
// one found by the request and response types.
template <typename Request, typename Response>
MethodInfo const& method_of(MethodInfo const* given) {
  return given != nullptr ? *given : inferred_method<Request, Response>();
}

// The name observers see (method_of's).
template <typename Request, typename Response>
std::string_view method_name(MethodInfo const* info) {
  return method_of<Request, Response>(info).full_name;
}

}  // namespace stubkit::detail

#endif  // STUBKIT_DETAIL_METHOD_HPP
