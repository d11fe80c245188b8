// Shared pieces of the test suite: a fixture with an embedded server and a
// stub, and readers for what a status carries.
#ifndef STUBKIT_TESTS_SUPPORT_HPP
#define STUBKIT_TESTS_SUPPORT_HPP

#include <doctest/doctest.h>
#include <grpcpp/grpcpp.h>
#include <stdlib.h>  // mkdtemp

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/observe.hpp"
#include "stubkit/testing/embedded_server.hpp"

namespace stubkit_tests {

using namespace std::chrono_literals;
using myservice::v1::UserService;

/// A fresh directory per test case, removed afterwards.
struct TempDir {
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "stubkit-test-XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  TempDir(TempDir const&) = delete;
  TempDir& operator=(TempDir const&) = delete;
  std::filesystem::path path;
};

/// A context with a deadline, so a hang fails the test instead of the suite.
inline std::unique_ptr<grpc::ClientContext> context(std::chrono::milliseconds timeout = 5s,
                                                    std::string const& token = "") {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  return ctx;
}

/// Counts the calls that ended (call.end events). An async call tells of
/// its end after it released its gRPC objects, so a test that waited for it
/// may drop its stub and channel: a call still holding the last reference
/// to a channel would drop it on a gRPC thread, gRPC's own hazard (its
/// callback queue is then torn down under the thread polling it).
struct CallEnds final : stubkit::Observer {
  void on_event(stubkit::Event const& e) override {
    if (e.type == stubkit::EventType::kCallEnd) ++count;
  }
  /// Waits (at most 10 s) until `n` calls ended; true if they did.
  bool wait_for(int n) const {
    for (int i = 0; i < 1000 && count < n; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return count >= n;
  }
  std::atomic<int> count{0};
};

/// A GetUserRequest for `id`.
inline myservice::v1::GetUserRequest get_request(std::string const& id) {
  myservice::v1::GetUserRequest request;
  request.set_id(id);
  return request;
}

/// A CreateUserRequest for user `id` (email and display name made from it).
inline myservice::v1::CreateUserRequest create_user_request(std::string const& id,
                                                            std::string const& request_id = "") {
  myservice::v1::CreateUserRequest request;
  request.mutable_user()->set_id(id);
  request.mutable_user()->set_email(id + "@example.com");
  request.mutable_user()->set_display_name("User " + id);
  request.set_request_id(request_id);
  return request;
}

/// Options of an embedded server that also listens on a free loopback port.
inline stubkit::testing::EmbeddedServerOptions tcp_options() {
  stubkit::testing::EmbeddedServerOptions options;
  options.listen_address = "127.0.0.1:0";
  return options;
}

/// An embedded server and a stub on an in-process channel to it.
struct ServerFixture {
  explicit ServerFixture(stubkit::testing::EmbeddedServerOptions options = {})
      : server(std::move(options)), stub(UserService::NewStub(server.channel())) {}

  grpc::Status create(std::string const& id, myservice::v1::User* out = nullptr,
                      std::string const& request_id = "") {
    myservice::v1::CreateUserResponse response;
    auto status = stub->CreateUser(context().get(), create_user_request(id, request_id), &response);
    if (out != nullptr) *out = response.user();
    return status;
  }

  stubkit::testing::EmbeddedServer server;
  std::unique_ptr<UserService::Stub> stub;
};

/// The google.rpc.Status a status carries in grpc-status-details-bin.
inline google::rpc::Status rich_status(grpc::Status const& status) {
  google::rpc::Status rich;
  REQUIRE(rich.ParseFromString(status.error_details()));
  return rich;
}

/// The first detail of type T, if any.
template <typename T>
std::optional<T> detail_of(grpc::Status const& status) {
  google::rpc::Status const rich = rich_status(status);
  for (auto const& any : rich.details()) {
    T detail;
    if (any.UnpackTo(&detail)) return detail;
  }
  return std::nullopt;
}

/// The field named by a BadRequest detail ("" if none).
inline std::string violated_field(grpc::Status const& status) {
  auto bad = detail_of<google::rpc::BadRequest>(status);
  return bad && bad->field_violations_size() > 0 ? bad->field_violations(0).field() : "";
}

}  // namespace stubkit_tests

#endif  // STUBKIT_TESTS_SUPPORT_HPP
