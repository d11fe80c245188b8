// Typed errors: decoding rich details from real server calls, conversions,
// the error category, exceptions, Result<T>, and bad details blobs.
#include "stubkit/status.hpp"

#include <doctest/doctest.h>

#include <string>

#include "google/protobuf/util/message_differencer.h"
#include "google/protobuf/wrappers.pb.h"
#include "support.hpp"

using namespace stubkit_tests;
using google::protobuf::util::MessageDifferencer;
using grpc::StatusCode;
using stubkit::Error;

namespace {

stubkit::Error get_user_error(UserService::Stub& stub, std::string const& id) {
  myservice::v1::GetUserRequest request;
  request.set_id(id);
  myservice::v1::User user;
  auto status = stub.GetUser(context().get(), request, &user);
  REQUIRE_FALSE(status.ok());
  return Error::from(status);
}

// Sends `error` from the server (through fault injection) and decodes it on the client.
template <typename Detail>
void check_round_trip(Detail const& detail) {
  ServerFixture f;
  Error sent(StatusCode::FAILED_PRECONDITION, "round trip");
  sent.with(detail);
  f.server.faults().fail_next("GetUser", 1, sent);
  Error got = get_user_error(*f.stub, "x");
  CHECK(got.code() == StatusCode::FAILED_PRECONDITION);
  CHECK(got.message() == "round trip");
  CHECK(got.details_problem().empty());
  auto decoded = got.details<Detail>();
  REQUIRE(decoded.has_value());
  CHECK(MessageDifferencer::Equals(*decoded, detail));
}

google::rpc::Status rich(StatusCode code, std::string const& message) {
  google::rpc::Status status;
  status.set_code(static_cast<int>(code));
  status.set_message(message);
  return status;
}

}  // namespace

TEST_SUITE("status") {
  TEST_CASE("the embedded server's errors decode to typed details") {
    ServerFixture f;
    Error missing = get_user_error(*f.stub, "ada");
    CHECK(missing.is<stubkit::NotFound>());
    CHECK_FALSE(missing.is<stubkit::AlreadyExists>());
    REQUIRE(missing.details<google::rpc::ResourceInfo>());
    CHECK(missing.details<google::rpc::ResourceInfo>()->resource_name() == "ada");
    CHECK(missing.to_string() == "NOT_FOUND: User ada not found [google.rpc.ResourceInfo]");

    REQUIRE(f.create("ada").ok());
    Error exists = Error::from(f.create("ada"));
    CHECK(exists.is<stubkit::AlreadyExists>());
    CHECK(exists.details<google::rpc::ResourceInfo>()->resource_type() ==
          "type.googleapis.com/myservice.v1.User");

    Error bad = get_user_error(*f.stub, "");
    CHECK(bad.is<stubkit::InvalidArgument>());
    REQUIRE(bad.details<google::rpc::BadRequest>());
    CHECK(bad.details<google::rpc::BadRequest>()->field_violations(0).field() == "id");
    CHECK_FALSE(bad.details<google::rpc::RetryInfo>().has_value());

    f.server.faults().fail_next("GetUser", 1, StatusCode::UNAVAILABLE, "busy", 1500ms);
    Error busy = get_user_error(*f.stub, "ada");
    CHECK(busy.is<stubkit::Unavailable>());
    REQUIRE(busy.details<google::rpc::RetryInfo>());
    CHECK(busy.details<google::rpc::RetryInfo>()->retry_delay().seconds() == 1);
    CHECK(busy.details<google::rpc::RetryInfo>()->retry_delay().nanos() == 500'000'000);
  }

  TEST_CASE("authentication failures carry ErrorInfo with reason and domain") {
    stubkit::testing::EmbeddedServerOptions options;
    options.service.token = "tok";
    ServerFixture f(options);
    Error error = get_user_error(*f.stub, "ada");
    CHECK(error.is<stubkit::Unauthenticated>());
    auto info = error.details<google::rpc::ErrorInfo>();
    REQUIRE(info);
    CHECK(info->reason() == "MISSING_TOKEN");
    CHECK(info->domain() == "myservice.v1");
  }

  TEST_CASE("every google.rpc detail kind survives a trip through a real server") {
    google::rpc::ErrorInfo error_info;
    error_info.set_reason("QUOTA");
    error_info.set_domain("example.com");
    (*error_info.mutable_metadata())["zone"] = "eu";
    check_round_trip(error_info);
    google::rpc::RetryInfo retry_info;
    retry_info.mutable_retry_delay()->set_seconds(3);
    check_round_trip(retry_info);
    google::rpc::DebugInfo debug_info;
    debug_info.add_stack_entries("frame 1");
    debug_info.set_detail("boom");
    check_round_trip(debug_info);
    google::rpc::QuotaFailure quota;
    quota.add_violations()->set_subject("project:1");
    check_round_trip(quota);
    google::rpc::PreconditionFailure precondition;
    auto* pv = precondition.add_violations();
    pv->set_type("TOS");
    pv->set_subject("user:ada");
    pv->set_description("terms not accepted");
    check_round_trip(precondition);
    google::rpc::BadRequest bad;
    auto* fv = bad.add_field_violations();
    fv->set_field("user.email");
    fv->set_description("not an address");
    check_round_trip(bad);
    google::rpc::RequestInfo request_info;
    request_info.set_request_id("r-1");
    check_round_trip(request_info);
    google::rpc::ResourceInfo resource_info;
    resource_info.set_resource_name("users/ada");
    resource_info.set_owner("team");
    check_round_trip(resource_info);
    google::rpc::Help help;
    auto* link = help.add_links();
    link->set_description("docs");
    link->set_url("https://example.com/help");
    check_round_trip(help);
    google::rpc::LocalizedMessage localized;
    localized.set_locale("fr-FR");
    localized.set_message("introuvable");
    check_round_trip(localized);
  }

  TEST_CASE("details of unknown types are kept as raw Any, in order") {
    Error error(StatusCode::ABORTED, "mixed");
    google::protobuf::StringValue custom;
    custom.set_value("mine");
    google::rpc::DebugInfo debug;
    debug.set_detail("d");
    error.with(custom).with(debug);
    Error back = Error::from(error.to_grpc_status());
    REQUIRE(back.details().size() == 2);
    CHECK(back.details()[0].type_url() == "type.googleapis.com/google.protobuf.StringValue");
    CHECK(back.details<google::protobuf::StringValue>()->value() == "mine");
    CHECK(back.details<google::rpc::DebugInfo>()->detail() == "d");
    CHECK(back.to_string() == "ABORTED: mixed [google.protobuf.StringValue, google.rpc.DebugInfo]");
  }

  TEST_CASE("grpc::Status and absl::Status conversions keep code, message and details") {
    google::rpc::BadRequest bad;
    bad.add_field_violations()->set_field("page_size");
    Error error(StatusCode::INVALID_ARGUMENT, "bad page size");
    error.with(bad);

    grpc::Status g = error.to_grpc_status();
    CHECK(g.error_code() == StatusCode::INVALID_ARGUMENT);
    CHECK(g.error_message() == "bad page size");
    CHECK(Error::from(g).details<google::rpc::BadRequest>()->field_violations(0).field() == "page_size");

    absl::Status a = error.to_absl_status();
    CHECK(a.code() == absl::StatusCode::kInvalidArgument);
    CHECK(a.message() == "bad page size");
    Error back = Error::from(a);
    CHECK(back.code() == StatusCode::INVALID_ARGUMENT);
    CHECK(back.details<google::rpc::BadRequest>()->field_violations(0).field() == "page_size");

    // Payloads other than stubkit's become raw details under their key.
    absl::Status foreign(absl::StatusCode::kInternal, "x");
    foreign.SetPayload("example.com/Trace", absl::Cord("abc"));
    Error from_foreign = Error::from(foreign);
    REQUIRE(from_foreign.details().size() == 1);
    CHECK(from_foreign.details()[0].type_url() == "example.com/Trace");
    CHECK(from_foreign.details()[0].value() == "abc");

    CHECK(Error(StatusCode::NOT_FOUND, "x").to_grpc_status().error_details().empty());
  }

  TEST_CASE("an Error never means success") {
    CHECK(Error(StatusCode::OK, "huh").code() == StatusCode::UNKNOWN);
    CHECK(Error::from(grpc::Status::OK).code() == StatusCode::UNKNOWN);
  }

  TEST_CASE("gRPC codes work as std::error_code, with POSIX equivalents where clear") {
    std::error_code ec = Error(StatusCode::DEADLINE_EXCEEDED, "slow").error_code();
    CHECK(std::string(ec.category().name()) == "grpc");
    CHECK(ec.value() == 4);
    CHECK(ec.message() == "DEADLINE_EXCEEDED");
    CHECK(ec == std::errc::timed_out);
    CHECK(stubkit::make_error_code(StatusCode::CANCELLED) == std::errc::operation_canceled);
    CHECK(stubkit::make_error_code(StatusCode::INVALID_ARGUMENT) == std::errc::invalid_argument);
    CHECK(stubkit::make_error_code(StatusCode::NOT_FOUND) != std::errc::timed_out);
    CHECK(stubkit::make_error_code(StatusCode::NOT_FOUND) == stubkit::make_error_code(StatusCode::NOT_FOUND));
    CHECK(stubkit::code_name(42) == "CODE(42)");
    CHECK(stubkit::canonical_code(42) == StatusCode::UNKNOWN);
    CHECK(stubkit::canonical_code(-1) == StatusCode::UNKNOWN);
    CHECK(stubkit::canonical_code(14) == StatusCode::UNAVAILABLE);
    CHECK(Error::from(absl::Status(static_cast<absl::StatusCode>(99), "odd")).code() == StatusCode::UNKNOWN);
  }

  TEST_CASE("throw_error throws the subclass of the code, catchable as RpcError") {
    CHECK_THROWS_AS(stubkit::throw_error(Error(StatusCode::NOT_FOUND, "gone")), stubkit::NotFoundError);
    CHECK_THROWS_AS(stubkit::throw_error(Error(StatusCode::UNAVAILABLE, "down")), stubkit::UnavailableError);
    CHECK_THROWS_AS(stubkit::throw_error(Error(StatusCode::UNKNOWN, "odd")), stubkit::UnknownError);
    try {
      stubkit::throw_error(Error(StatusCode::PERMISSION_DENIED, "no"));
      FAIL("did not throw");
    } catch (stubkit::RpcError const& e) {
      CHECK(e.code() == StatusCode::PERMISSION_DENIED);
      CHECK(std::string(e.what()) == "PERMISSION_DENIED: no");
      CHECK(e.error().is<stubkit::PermissionDeniedError>());
    }
  }

  TEST_CASE("Result holds a value or an error; value() throws the typed exception") {
    stubkit::Result<int> good = 7;
    CHECK(good.ok());
    CHECK(*good == 7);
    CHECK(good.value() == 7);
    CHECK(good.status().ok());
    stubkit::Result<int> bad = Error(StatusCode::NOT_FOUND, "no");
    CHECK_FALSE(bad);
    CHECK(bad.error().is<stubkit::NotFound>());
    CHECK(bad.value_or(3) == 3);
    CHECK_THROWS_AS(bad.value(), stubkit::NotFoundError);

    google::rpc::ResourceInfo info;
    info.set_resource_name("ada");
    stubkit::Result<std::string> detailed = std::move(Error(StatusCode::NOT_FOUND, "no").with(info));
    absl::StatusOr<std::string> as_absl = detailed;
    CHECK(as_absl.status().code() == absl::StatusCode::kNotFound);
    CHECK(Error::from(as_absl.status()).details<google::rpc::ResourceInfo>()->resource_name() == "ada");
  }

  TEST_CASE("optional_if_not_found: missing is empty, other errors stay errors") {
    using stubkit::optional_if_not_found;
    auto found = optional_if_not_found(stubkit::Result<int>(5));
    REQUIRE(found.ok());
    CHECK(found.value() == std::optional<int>(5));
    auto missing = optional_if_not_found(stubkit::Result<int>(Error(StatusCode::NOT_FOUND, "no")));
    REQUIRE(missing.ok());
    CHECK_FALSE(missing->has_value());
    auto down = optional_if_not_found(stubkit::Result<int>(Error(StatusCode::UNAVAILABLE, "down")));
    CHECK(down.error().is<stubkit::Unavailable>());
    CHECK_THROWS_AS(down.value(), stubkit::UnavailableError);
  }

  TEST_CASE("a corrupt or truncated details blob keeps code and message and says what went wrong") {
    auto full = rich(StatusCode::NOT_FOUND, "m");
    google::rpc::DebugInfo debug;
    debug.set_detail(std::string(300, 'd'));
    full.add_details()->PackFrom(debug);
    std::string const blob = full.SerializeAsString();
    for (std::string const& bad : {std::string("\xff\xff\xff\xff", 4), blob.substr(0, blob.size() - 7)}) {
      Error error = Error::from(grpc::Status(StatusCode::NOT_FOUND, "m", bad));
      CHECK(error.code() == StatusCode::NOT_FOUND);
      CHECK(error.message() == "m");
      CHECK(error.details().empty());
      CHECK(error.details_problem().find("not a valid google.rpc.Status") != std::string::npos);
      CHECK(error.to_string().find("(status details") != std::string::npos);
    }
  }

  TEST_CASE("an oversized details blob is dropped, not parsed") {
    std::string huge(Error::kMaxDetailsBytes + 1, '\0');
    Error error = Error::from(grpc::Status(StatusCode::INTERNAL, "big", huge));
    CHECK(error.code() == StatusCode::INTERNAL);
    CHECK(error.details().empty());
    CHECK(error.details_problem().find("exceed") != std::string::npos);
  }

  TEST_CASE("details whose code disagrees with the status keep the status code") {
    auto other = rich(StatusCode::INTERNAL, "inner");
    google::rpc::RequestInfo info;
    info.set_request_id("r");
    other.add_details()->PackFrom(info);
    Error error = Error::from(grpc::Status(StatusCode::UNAVAILABLE, "outer", other.SerializeAsString()));
    CHECK(error.code() == StatusCode::UNAVAILABLE);
    CHECK(error.message() == "outer");
    CHECK(error.details<google::rpc::RequestInfo>()->request_id() == "r");
    CHECK(error.details_problem().find("INTERNAL") != std::string::npos);
  }

  TEST_CASE("a detail with a known type but corrupt bytes is skipped by the typed accessor") {
    auto status = rich(StatusCode::ABORTED, "x");
    auto* any = status.add_details();
    any->set_type_url("type.googleapis.com/google.rpc.BadRequest");
    any->set_value("\xff\xff\xff");
    Error error = Error::from(grpc::Status(StatusCode::ABORTED, "x", status.SerializeAsString()));
    REQUIRE(error.details().size() == 1);
    CHECK_FALSE(error.details<google::rpc::BadRequest>().has_value());
  }
}

TEST_SUITE("status") {
  TEST_CASE("to_result reads the response after the call, whatever order arguments are evaluated in") {
    std::string response;
    auto fill = [](std::string* out) {
      *out = "filled";
      return grpc::Status::OK;
    };
    auto result = stubkit::to_result(fill(&response), std::move(response));
    REQUIRE(result.ok());
    CHECK(*result == "filled");
  }
}
