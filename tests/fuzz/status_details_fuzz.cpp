// libFuzzer target: decoding of grpc-status-details-bin and of absl::Status
// payloads into stubkit::Error must never crash, whatever the bytes.
// Input: byte 0 picks the status code, the rest is the details blob.
#include <cstddef>
#include <cstdint>
#include <string>

#include "google/protobuf/stubs/logging.h"
#include "google/rpc/error_details.pb.h"
#include "stubkit/status.hpp"

// protobuf logs every string field with invalid UTF-8 it meets; that is
// noise here (the decoder already treats such input as corrupt).
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  if (size == 0) return 0;
  auto const code = stubkit::canonical_code(data[0] % 20);
  std::string const blob(reinterpret_cast<char const*>(data + 1), size - 1);

  stubkit::Error error = stubkit::Error::from(grpc::Status(code, "fuzz", blob));
  (void)error.to_string();
  (void)error.details<google::rpc::BadRequest>();
  (void)error.details<google::rpc::RetryInfo>();
  (void)error.details<google::rpc::ErrorInfo>();
  (void)error.details<google::rpc::ResourceInfo>();

  // Whatever was decoded encodes and decodes again to the same details.
  stubkit::Error again = stubkit::Error::from(error.to_grpc_status());
  if (again.details().size() != error.details().size()) __builtin_trap();

  absl::Status payload(absl::StatusCode::kUnavailable, "fuzz");
  payload.SetPayload(stubkit::Error::kPayloadKey, absl::Cord(blob));
  (void)stubkit::Error::from(payload).to_absl_status();
  return 0;
}
