// libFuzzer target: UpdateUser's FieldMask application. Any bytes that parse
// as an UpdateUserRequest are applied to a stored user; the handler must
// never crash, and:
// - on success the stored user is the response, keeps its id and
//   created_at, and (AIP-134) with "*" equals the request, with named paths
//   every masked field equals the request's, without a mask every field the
//   request populates equals the request's and every other is unchanged;
// - on failure nothing changed.
#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <cstdint>

#include "google/protobuf/util/field_mask_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "stubkit/testing/user_service.hpp"

namespace {

myservice::v1::User stored_user() {
  myservice::v1::User user;
  user.set_id("ada");
  user.set_email("ada@example.com");
  user.set_display_name("Ada");
  user.set_role(myservice::v1::USER_ROLE_ADMIN);
  (*user.mutable_metadata())["team"] = "engines";
  user.mutable_age()->set_value(36);
  return user;
}

myservice::v1::User get(stubkit::testing::UserServiceImpl& service, std::string const& id) {
  grpc::ServerContext ctx;
  myservice::v1::GetUserRequest request;
  request.set_id(id);
  myservice::v1::User user;
  (void)service.GetUser(&ctx, &request, &user);
  return user;
}

}  // namespace

// Requests with invalid UTF-8 are expected here: keep protobuf's log quiet.
extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  google::protobuf::SetLogHandler([](google::protobuf::LogLevel, char const*, int, std::string const&) {});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  using google::protobuf::util::MessageDifferencer;
  myservice::v1::UpdateUserRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  // Aim at the stored user most of the time; keep the fuzzer's id otherwise.
  if (size % 4 != 0) request.mutable_user()->set_id("ada");

  stubkit::testing::UserServiceImpl service;
  {
    grpc::ServerContext ctx;
    myservice::v1::CreateUserRequest create;
    *create.mutable_user() = stored_user();
    myservice::v1::CreateUserResponse created;
    if (!service.CreateUser(&ctx, &create, &created).ok()) __builtin_trap();
  }
  myservice::v1::User const before = get(service, "ada");

  grpc::ServerContext ctx;
  myservice::v1::User response;
  grpc::Status const status = service.UpdateUser(&ctx, &request, &response);
  myservice::v1::User const after = get(service, "ada");

  if (!status.ok()) {
    if (status.error_message().empty()) __builtin_trap();  // every refusal says why
    if (!MessageDifferencer::Equals(before, after)) __builtin_trap();
    return 0;
  }
  if (!MessageDifferencer::Equals(response, after)) __builtin_trap();
  if (after.id() != "ada" || !MessageDifferencer::Equals(after.created_at(), before.created_at()))
    __builtin_trap();
  auto const& paths = request.update_mask().paths();
  if (paths.size() == 1 && paths[0] == "*") {  // everything but id and created_at replaced
    myservice::v1::User expected = request.user();
    expected.set_id("ada");
    *expected.mutable_created_at() = before.created_at();
    if (!MessageDifferencer::Equals(expected, after)) __builtin_trap();
    return 0;
  }
  // Without a mask, the populated fields: each from the request, the rest
  // as before.
  google::protobuf::FieldMask mask = request.update_mask();
  if (paths.empty()) {
    for (int i = 0; i < myservice::v1::User::descriptor()->field_count(); ++i) {
      auto const* field = myservice::v1::User::descriptor()->field(i);
      if (field->name() == "id" || field->name() == "created_at") continue;
      bool const populated = field->is_repeated()
                                 ? request.user().GetReflection()->FieldSize(request.user(), field) > 0
                                 : request.user().GetReflection()->HasField(request.user(), field);
      if (populated) {
        mask.add_paths(field->name());
        continue;
      }
      // A oneof member gives way to the member the request sets.
      auto const* oneof = field->containing_oneof();
      if (oneof != nullptr && request.user().GetReflection()->HasOneof(request.user(), oneof)) continue;
      google::protobuf::FieldMask one;
      one.add_paths(field->name());
      myservice::v1::User was;
      myservice::v1::User is;
      google::protobuf::util::FieldMaskUtil::MergeOptions merge;
      merge.set_replace_message_fields(true);
      merge.set_replace_repeated_fields(true);
      google::protobuf::util::FieldMaskUtil::MergeMessageTo(before, one, merge, &was);
      google::protobuf::util::FieldMaskUtil::MergeMessageTo(after, one, merge, &is);
      if (!MessageDifferencer::Equals(was, is)) __builtin_trap();
    }
  }
  // Each masked field now holds the request's value.
  for (auto const& path : mask.paths()) {
    google::protobuf::FieldMask one;
    one.add_paths(path);
    myservice::v1::User expected;
    myservice::v1::User actual;
    google::protobuf::util::FieldMaskUtil::MergeOptions merge;
    merge.set_replace_message_fields(true);
    merge.set_replace_repeated_fields(true);
    google::protobuf::util::FieldMaskUtil::MergeMessageTo(request.user(), one, merge, &expected);
    google::protobuf::util::FieldMaskUtil::MergeMessageTo(after, one, merge, &actual);
    if (!MessageDifferencer::Equals(expected, actual)) __builtin_trap();
  }
  return 0;
}
