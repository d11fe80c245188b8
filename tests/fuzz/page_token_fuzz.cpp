// libFuzzer target: the embedded server's page-token decoder (HMAC-SHA256
// tags) must never crash on any bytes, must reject what it did not issue,
// and must round-trip what it did.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "stubkit/testing/detail/page_token.hpp"

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  using stubkit::testing::detail::PageTokenCodec;
  static PageTokenCodec const codec(std::string("fuzzing page token key, 32 bytes"));
  std::string_view const input(reinterpret_cast<char const*>(data), size);

  // As a token: anything accepted must re-encode to a token that decodes the same.
  if (auto cursor = codec.decode(input)) {
    if (codec.decode(codec.encode(*cursor)) != cursor) __builtin_trap();
  }
  // As a cursor: every cursor round-trips.
  if (codec.decode(codec.encode(input)) != std::optional<std::string>(std::string(input))) __builtin_trap();
  return 0;
}
