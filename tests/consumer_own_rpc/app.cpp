// A program with its own google.rpc messages, using stubkit's typed errors
// and embedded server beside them: one google::rpc::ErrorInfo type, one
// registration of google/rpc/error_details.proto.
#include <iostream>

#include "google/protobuf/descriptor.h"
#include "google/rpc/error_details.pb.h"
#include "stubkit/status.hpp"
#include "stubkit/testing/embedded_server.hpp"
#include "stubkit/user_client.hpp"

int main() {
  // The program's own use of its messages.
  google::rpc::ErrorInfo mine;
  mine.set_reason("OWN");
  stubkit::Error own(grpc::StatusCode::ABORTED, "own");
  own.with(mine);
  bool ok = own.details<google::rpc::ErrorInfo>().has_value() &&
            own.details<google::rpc::ErrorInfo>()->reason() == "OWN";

  // stubkit's server and client decode the same messages.
  stubkit::testing::EmbeddedServerOptions options;
  options.service.token = "secret";
  stubkit::testing::EmbeddedServer server(options);
  stubkit::UserClient client(server.channel());
  auto denied = client.get_user("ada");  // no token: UNAUTHENTICATED with ErrorInfo
  auto info = denied.ok() ? std::nullopt : denied.error().details<google::rpc::ErrorInfo>();
  ok = ok && info && info->reason() == "MISSING_TOKEN";

  auto const* file = google::protobuf::DescriptorPool::generated_pool()->FindFileByName(
      "google/rpc/error_details.proto");
  ok = ok && file != nullptr && file == google::rpc::ErrorInfo::descriptor()->file();
  std::cout << (ok ? "own google.rpc: ok\n" : "own google.rpc: FAILED\n");
  return ok ? 0 : 1;
}
