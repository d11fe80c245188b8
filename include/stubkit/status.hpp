// Typed errors for gRPC calls: a status code, a message and the google.rpc
// error details a server sent in `grpc-status-details-bin`, decoded.
//
//   stubkit::Error error = stubkit::Error::from(status);   // from a grpc::Status
//   if (error.is<stubkit::InvalidArgument>()) {
//     if (auto bad = error.details<google::rpc::BadRequest>()) show(bad->field_violations());
//   }
//   if (auto retry = error.details<google::rpc::RetryInfo>()) wait(retry->retry_delay());
//
// Also here: conversions to and from grpc::Status and absl::Status, a
// std::error_category for gRPC codes, an optional exception hierarchy
// (stubkit::RpcError and one subclass per code), and Result<T>, the value or
// error that stubkit calls return.
#ifndef STUBKIT_STATUS_HPP
#define STUBKIT_STATUS_HPP

#include <grpcpp/support/status.h>

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "google/protobuf/any.pb.h"
#include "google/protobuf/message.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace stubkit {

/// The canonical name of a status code number ("NOT_FOUND" for 5), or
/// "CODE(n)" for a number outside the 17 defined codes.
inline std::string code_name(int code) {
  static constexpr char const* kNames[] = {
      "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
      "DATA_LOSS", "UNAUTHENTICATED"};
  if (code >= 0 && code < static_cast<int>(std::size(kNames))) return kNames[code];
  return "CODE(" + std::to_string(code) + ")";
}

/// The canonical name of a gRPC status code ("NOT_FOUND").
inline std::string code_name(grpc::StatusCode code) { return code_name(static_cast<int>(code)); }

/// A status code number from outside (the network, absl::Status) as a
/// grpc::StatusCode; numbers outside the 17 defined codes become UNKNOWN
/// (a cast would be undefined behaviour for them).
inline grpc::StatusCode canonical_code(int code) {
  return code >= 0 && code <= 16 ? static_cast<grpc::StatusCode>(code) : grpc::StatusCode::UNKNOWN;
}

/// The std::error_category of gRPC status codes: lets a gRPC code travel as
/// a std::error_code. Codes with a clear POSIX meaning compare equal to the
/// matching std::errc (DEADLINE_EXCEEDED == std::errc::timed_out, ...).
inline std::error_category const& grpc_category() noexcept {
  class Category final : public std::error_category {
   public:
    char const* name() const noexcept override { return "grpc"; }
    std::string message(int code) const override { return code_name(code); }
    std::error_condition default_error_condition(int code) const noexcept override {
      switch (canonical_code(code)) {
        case grpc::StatusCode::CANCELLED:
          return std::errc::operation_canceled;
        case grpc::StatusCode::INVALID_ARGUMENT:
          return std::errc::invalid_argument;
        case grpc::StatusCode::DEADLINE_EXCEEDED:
          return std::errc::timed_out;
        case grpc::StatusCode::PERMISSION_DENIED:
          return std::errc::permission_denied;
        case grpc::StatusCode::UNIMPLEMENTED:
          return std::errc::function_not_supported;
        default:
          return std::error_condition(code, *this);
      }
    }
  };
  static Category const category;
  return category;
}

/// A gRPC status code as a std::error_code of grpc_category().
inline std::error_code make_error_code(grpc::StatusCode code) noexcept {
  return std::error_code(static_cast<int>(code), grpc_category());
}

/// Type tags for `Error::is<Tag>()`, one per non-OK code.
template <grpc::StatusCode Code>
struct CodeTag {
  static constexpr grpc::StatusCode code = Code;
};
using Cancelled = CodeTag<grpc::StatusCode::CANCELLED>;
using Unknown = CodeTag<grpc::StatusCode::UNKNOWN>;
using InvalidArgument = CodeTag<grpc::StatusCode::INVALID_ARGUMENT>;
using DeadlineExceeded = CodeTag<grpc::StatusCode::DEADLINE_EXCEEDED>;
using NotFound = CodeTag<grpc::StatusCode::NOT_FOUND>;
using AlreadyExists = CodeTag<grpc::StatusCode::ALREADY_EXISTS>;
using PermissionDenied = CodeTag<grpc::StatusCode::PERMISSION_DENIED>;
using ResourceExhausted = CodeTag<grpc::StatusCode::RESOURCE_EXHAUSTED>;
using FailedPrecondition = CodeTag<grpc::StatusCode::FAILED_PRECONDITION>;
using Aborted = CodeTag<grpc::StatusCode::ABORTED>;
using OutOfRange = CodeTag<grpc::StatusCode::OUT_OF_RANGE>;
using Unimplemented = CodeTag<grpc::StatusCode::UNIMPLEMENTED>;
using Internal = CodeTag<grpc::StatusCode::INTERNAL>;
using Unavailable = CodeTag<grpc::StatusCode::UNAVAILABLE>;
using DataLoss = CodeTag<grpc::StatusCode::DATA_LOSS>;
using Unauthenticated = CodeTag<grpc::StatusCode::UNAUTHENTICATED>;

/// A failed call: code, message and the google.rpc error details that came
/// with it. A value type; cheap to move. Details of types this build does
/// not know stay available as raw google.protobuf.Any.
///
/// Decoding never fails: a corrupt, truncated or oversized details blob, or
/// one whose code disagrees with the status, keeps the status's code and
/// message and says what was wrong in `details_problem()`.
class Error {
 public:
  /// The largest details blob that is decoded; larger ones are reported in
  /// details_problem() and dropped (gRPC's default metadata limit is 8 KiB,
  /// so a legitimate trailer is far smaller).
  static constexpr std::size_t kMaxDetailsBytes = 1 << 20;
  /// The absl::Status payload key under which the details travel.
  static constexpr char const* kPayloadKey = "type.googleapis.com/google.rpc.Status";

  /// An error with `code` (UNKNOWN if given OK: an Error always means failure).
  explicit Error(grpc::StatusCode code = grpc::StatusCode::UNKNOWN, std::string message = "")
      : code_(code == grpc::StatusCode::OK ? grpc::StatusCode::UNKNOWN : code),
        message_(std::move(message)) {}

  /// Decodes a failed grpc::Status and its `grpc-status-details-bin`.
  static Error from(grpc::Status const& status) {
    Error error(status.error_code(), status.error_message());
    error.decode_details(status.error_details());
    return error;
  }

  /// Decodes a failed absl::Status; details travel as the payload kPayloadKey
  /// (as `to_absl_status()` writes them), other payloads become raw Anys.
  static Error from(absl::Status const& status) {
    Error error(canonical_code(static_cast<int>(status.code())), std::string(status.message()));
    status.ForEachPayload([&error](absl::string_view key, absl::Cord const& payload) {
      if (key == kPayloadKey) {
        error.decode_details(std::string(payload));
      } else {
        google::protobuf::Any any;
        any.set_type_url(std::string(key));
        any.set_value(std::string(payload));
        error.details_.push_back(std::move(any));
      }
    });
    return error;
  }

  grpc::StatusCode code() const { return code_; }
  std::string const& message() const { return message_; }

  /// True if the code is the one of `Tag` (a CodeTag or an RpcError subclass).
  template <typename Tag>
  bool is() const {
    return code_ == Tag::code;
  }

  /// Every detail, in the order the server sent them, unknown types included.
  std::vector<google::protobuf::Any> const& details() const { return details_; }

  /// The first detail of message type T, if there is one that parses.
  template <typename T>
  std::optional<T> details() const {
    static_assert(std::is_base_of_v<google::protobuf::Message, T>, "T must be a protobuf message");
    for (auto const& any : details_) {
      if (!any.Is<T>()) continue;
      T detail;
      if (any.UnpackTo(&detail)) return detail;
    }
    return std::nullopt;
  }

  /// Adds a detail (for servers building an error, and for tests).
  Error& with(google::protobuf::Message const& detail) {
    details_.emplace_back().PackFrom(detail);
    return *this;
  }

  /// What was wrong with the details blob, if anything ("" when fine).
  std::string const& details_problem() const { return details_problem_; }

  /// The status as gRPC sends it, details encoded into `grpc-status-details-bin`.
  grpc::Status to_grpc_status() const {
    if (details_.empty()) return grpc::Status(code_, message_);
    return grpc::Status(code_, message_, rich_status().SerializeAsString());
  }

  /// The status as abseil carries it, details as the payload kPayloadKey.
  absl::Status to_absl_status() const {
    absl::Status status(static_cast<absl::StatusCode>(code_), message_);
    if (!details_.empty()) status.SetPayload(kPayloadKey, absl::Cord(rich_status().SerializeAsString()));
    return status;
  }

  /// The code as a std::error_code of grpc_category().
  std::error_code error_code() const { return make_error_code(code_); }

  /// "NOT_FOUND: User ada not found [google.rpc.ResourceInfo]": code, message
  /// and the type of each detail, for logs.
  std::string to_string() const {
    std::string out = code_name(code_) + ": " + message_;
    if (!details_.empty()) {
      out += " [";
      for (std::size_t i = 0; i < details_.size(); ++i) {
        if (i > 0) out += ", ";
        auto const& url = details_[i].type_url();
        out += url.substr(url.rfind('/') + 1);
      }
      out += "]";
    }
    if (!details_problem_.empty()) out += " (" + details_problem_ + ")";
    return out;
  }

 private:
  google::rpc::Status rich_status() const {
    google::rpc::Status rich;
    rich.set_code(static_cast<std::int32_t>(code_));
    rich.set_message(message_);
    for (auto const& any : details_) *rich.add_details() = any;
    return rich;
  }

  void decode_details(std::string const& blob) {
    if (blob.empty()) return;
    if (blob.size() > kMaxDetailsBytes) {
      details_problem_ = "status details of " + std::to_string(blob.size()) + " bytes exceed the " +
                         std::to_string(kMaxDetailsBytes) + "-byte limit and were dropped";
      return;
    }
    google::rpc::Status rich;
    if (!rich.ParseFromString(blob)) {
      details_problem_ = "status details are not a valid google.rpc.Status and were dropped";
      return;
    }
    if (rich.code() != static_cast<std::int32_t>(code_)) {
      details_problem_ = "status details carry code " + code_name(rich.code()) + ", the status says " +
                         code_name(code_) + "; the status code is kept";
    }
    for (auto& any : *rich.mutable_details()) details_.push_back(std::move(any));
  }

  grpc::StatusCode code_;
  std::string message_;
  std::vector<google::protobuf::Any> details_;
  std::string details_problem_;
};

/// The base of stubkit's exceptions, for code that prefers them to
/// Result<T>: `catch (stubkit::RpcError const& e)` then `e.error()`.
class RpcError : public std::runtime_error {
 public:
  explicit RpcError(Error error) : std::runtime_error(error.to_string()), error_(std::move(error)) {}
  Error const& error() const noexcept { return error_; }
  grpc::StatusCode code() const noexcept { return error_.code(); }

 private:
  Error error_;
};

/// The exception for one code; `NotFoundError` and friends name them.
template <grpc::StatusCode Code>
class CodeError : public RpcError {
 public:
  static constexpr grpc::StatusCode code = Code;
  using RpcError::RpcError;
};
using CancelledError = CodeError<grpc::StatusCode::CANCELLED>;
using UnknownError = CodeError<grpc::StatusCode::UNKNOWN>;
using InvalidArgumentError = CodeError<grpc::StatusCode::INVALID_ARGUMENT>;
using DeadlineExceededError = CodeError<grpc::StatusCode::DEADLINE_EXCEEDED>;
using NotFoundError = CodeError<grpc::StatusCode::NOT_FOUND>;
using AlreadyExistsError = CodeError<grpc::StatusCode::ALREADY_EXISTS>;
using PermissionDeniedError = CodeError<grpc::StatusCode::PERMISSION_DENIED>;
using ResourceExhaustedError = CodeError<grpc::StatusCode::RESOURCE_EXHAUSTED>;
using FailedPreconditionError = CodeError<grpc::StatusCode::FAILED_PRECONDITION>;
using AbortedError = CodeError<grpc::StatusCode::ABORTED>;
using OutOfRangeError = CodeError<grpc::StatusCode::OUT_OF_RANGE>;
using UnimplementedError = CodeError<grpc::StatusCode::UNIMPLEMENTED>;
using InternalError = CodeError<grpc::StatusCode::INTERNAL>;
using UnavailableError = CodeError<grpc::StatusCode::UNAVAILABLE>;
using DataLossError = CodeError<grpc::StatusCode::DATA_LOSS>;
using UnauthenticatedError = CodeError<grpc::StatusCode::UNAUTHENTICATED>;

namespace detail {
template <int... Codes>
[[noreturn]] void throw_by_code(Error error, std::integer_sequence<int, Codes...>) {
  ((error.code() == static_cast<grpc::StatusCode>(Codes)
        ? throw CodeError<static_cast<grpc::StatusCode>(Codes)>(std::move(error))
        : void()),
   ...);
  throw UnknownError(std::move(error));  // a code outside the 17 defined ones
}
}  // namespace detail

/// Throws the RpcError subclass that matches the error's code.
[[noreturn]] inline void throw_error(Error error) {
  detail::throw_by_code(std::move(error), std::make_integer_sequence<int, 17>{});
}

/// The value of a successful call, or the Error of a failed one.
///
///   stubkit::Result<User> r = ...;
///   if (!r) return handle(r.error());
///   use(*r);
///
/// `value()` throws the matching RpcError subclass on error, for code that
/// prefers exceptions. Converts to absl::StatusOr<T> without losing details.
template <typename T>
class [[nodiscard]] Result {
 public:
  using value_type = T;

  Result(T value) : state_(std::in_place_index<0>, std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : state_(std::in_place_index<1>, std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const { return state_.index() == 0; }
  explicit operator bool() const { return ok(); }

  /// The value; throws the matching RpcError subclass if this is an error.
  T& value() & {
    if (!ok()) throw_error(std::get<1>(state_));
    return std::get<0>(state_);
  }
  T const& value() const& {
    if (!ok()) throw_error(std::get<1>(state_));
    return std::get<0>(state_);
  }
  T&& value() && {
    if (!ok()) throw_error(std::get<1>(std::move(state_)));
    return std::get<0>(std::move(state_));
  }

  /// The value; this must be ok().
  T& operator*() & { return std::get<0>(state_); }
  T const& operator*() const& { return std::get<0>(state_); }
  T&& operator*() && { return std::get<0>(std::move(state_)); }
  T* operator->() { return &std::get<0>(state_); }
  T const* operator->() const { return &std::get<0>(state_); }

  template <typename U>
  T value_or(U&& fallback) const& {
    return ok() ? std::get<0>(state_) : static_cast<T>(std::forward<U>(fallback));
  }

  /// The error; this must not be ok().
  Error const& error() const& { return std::get<1>(state_); }
  Error&& error() && { return std::get<1>(std::move(state_)); }

  /// OK, or the error as an absl::Status with its details as payload.
  absl::Status status() const { return ok() ? absl::OkStatus() : error().to_absl_status(); }

  /// Converts to absl::StatusOr<T> (details travel as the payload).
  operator absl::StatusOr<T>() const& {  // NOLINT: implicit by design
    if (ok()) return std::get<0>(state_);
    return error().to_absl_status();
  }
  operator absl::StatusOr<T>() && {  // NOLINT: implicit by design
    if (ok()) return std::get<0>(std::move(state_));
    return error().to_absl_status();
  }

 private:
  std::variant<T, Error> state_;
};

/// The reference client's "missing is empty, other errors are errors": a
/// NOT_FOUND result becomes an empty optional, any other error stays.
///
///   std::optional<User> user = stubkit::optional_if_not_found(get_user(id)).value();
template <typename T>
Result<std::optional<T>> optional_if_not_found(Result<T> result) {
  if (result.ok()) return std::optional<T>(*std::move(result));
  if (result.error().template is<NotFound>()) return std::optional<T>();
  return std::move(result).error();
}

/// The Result of a finished call: `response` when `status` is OK, else the
/// decoded error. Takes the response by reference, so
/// `to_result(stub->GetUser(&ctx, req, &user), std::move(user))` is safe
/// whatever order the arguments are evaluated in.
template <typename T>
Result<std::decay_t<T>> to_result(grpc::Status const& status, T&& response) {
  if (status.ok()) return Result<std::decay_t<T>>(std::forward<T>(response));
  return Error::from(status);
}

/// Server side: a status carrying google.rpc.BadRequest for one field.
inline Error invalid_argument(std::string field, std::string description) {
  google::rpc::BadRequest bad;
  auto* violation = bad.add_field_violations();
  violation->set_field(std::move(field));
  violation->set_description(description);
  return std::move(Error(grpc::StatusCode::INVALID_ARGUMENT, std::move(description)).with(bad));
}

/// Server side: a status about one resource (NOT_FOUND, ALREADY_EXISTS, ...)
/// carrying google.rpc.ResourceInfo.
inline Error resource_error(grpc::StatusCode code, std::string message, std::string resource_type,
                            std::string resource_name) {
  google::rpc::ResourceInfo info;
  info.set_resource_type(std::move(resource_type));
  info.set_resource_name(std::move(resource_name));
  return std::move(Error(code, std::move(message)).with(info));
}

}  // namespace stubkit

#endif  // STUBKIT_STATUS_HPP
