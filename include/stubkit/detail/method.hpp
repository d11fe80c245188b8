// Which method of a generated service a Request/Response pair belongs
// to, from the generated descriptor pool: for idempotency (retry.hpp) and
// for the method name observers see (observe.hpp).
#ifndef STUBKIT_DETAIL_METHOD_HPP
#define STUBKIT_DETAIL_METHOD_HPP

#include <string>
#include <string_view>

#include "google/protobuf/descriptor.h"
#include "stubkit/method.hpp"

namespace stubkit::detail {

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

// The name observers see: the generated table's when a call has one,
// else the one found by the request and response types.
template <typename Request, typename Response>
std::string_view method_name(MethodInfo const* info) {
  return info != nullptr ? info->full_name : std::string_view(method_path<Request, Response>());
}

}  // namespace stubkit::detail

#endif  // STUBKIT_DETAIL_METHOD_HPP
