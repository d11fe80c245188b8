// Opaque, tamper-evident page tokens for the embedded UserService.
//
// A token carries the id of the last item of the previous page (a cursor,
// not an offset, so items inserted or deleted during a listing do not shift
// the pages) and a 64-bit SipHash-2-4 tag keyed by a server secret. A token
// that was garbled, truncated, edited or issued by a server with another
// secret is rejected. The tag makes tampering evident; the cursor itself is
// not encrypted, which is fine for a test server (do not put secrets in it).
#ifndef STUBKIT_TESTING_DETAIL_PAGE_TOKEN_HPP
#define STUBKIT_TESTING_DETAIL_PAGE_TOKEN_HPP

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "absl/strings/escaping.h"

namespace stubkit::testing::detail {

/// A 128-bit key for `siphash24`.
using SipKey = std::array<std::uint64_t, 2>;

/// SipHash-2-4 (Aumasson & Bernstein): a keyed 64-bit hash, stable across
/// processes and machines, so tokens stay valid while the key does.
inline std::uint64_t siphash24(SipKey const& key, std::string_view data) {
  auto rotl = [](std::uint64_t x, int b) { return (x << b) | (x >> (64 - b)); };
  std::uint64_t v0 = 0x736f6d6570736575ULL ^ key[0];
  std::uint64_t v1 = 0x646f72616e646f6dULL ^ key[1];
  std::uint64_t v2 = 0x6c7967656e657261ULL ^ key[0];
  std::uint64_t v3 = 0x7465646279746573ULL ^ key[1];
  auto round = [&] {
    v0 += v1;
    v1 = rotl(v1, 13);
    v1 ^= v0;
    v0 = rotl(v0, 32);
    v2 += v3;
    v3 = rotl(v3, 16);
    v3 ^= v2;
    v0 += v3;
    v3 = rotl(v3, 21);
    v3 ^= v0;
    v2 += v1;
    v1 = rotl(v1, 17);
    v1 ^= v2;
    v2 = rotl(v2, 32);
  };
  auto const* p = reinterpret_cast<unsigned char const*>(data.data());
  std::size_t const n = data.size();
  std::size_t const whole = n - n % 8;
  for (std::size_t i = 0; i < whole; i += 8) {
    std::uint64_t m = 0;
    for (int b = 0; b < 8; ++b) m |= std::uint64_t{p[i + b]} << (8 * b);
    v3 ^= m;
    round();
    round();
    v0 ^= m;
  }
  std::uint64_t last = std::uint64_t{n & 0xff} << 56;
  for (std::size_t b = 0; b < n % 8; ++b) last |= std::uint64_t{p[whole + b]} << (8 * b);
  v3 ^= last;
  round();
  round();
  v0 ^= last;
  v2 ^= 0xff;
  for (int i = 0; i < 4; ++i) round();
  return v0 ^ v1 ^ v2 ^ v3;
}

/// Encodes and checks cursor page tokens under one key.
class PageTokenCodec {
 public:
  explicit PageTokenCodec(SipKey key) : key_(key) {}

  /// The token that resumes a listing after the item with id `last_id`.
  std::string encode(std::string_view last_id) const {
    std::string payload(kVersion);
    payload.append(last_id.data(), last_id.size());
    std::uint64_t const tag = siphash24(key_, payload);
    char bytes[8];
    for (int b = 0; b < 8; ++b) bytes[b] = static_cast<char>((tag >> (8 * b)) & 0xff);
    payload.append(bytes, 8);
    return absl::WebSafeBase64Escape(payload);
  }

  /// The cursor (last id) a token carries, or nullopt if the token was not
  /// produced by `encode` with this key.
  std::optional<std::string> decode(std::string_view token) const {
    std::string raw;
    // Debian's abseil has its own string_view type: convert explicitly.
    if (!absl::WebSafeBase64Unescape(absl::string_view(token.data(), token.size()), &raw))
      return std::nullopt;
    if (raw.size() < kVersion.size() + 8 || raw.compare(0, kVersion.size(), kVersion) != 0) {
      return std::nullopt;
    }
    std::string_view const payload(raw.data(), raw.size() - 8);
    std::uint64_t tag = 0;
    for (int b = 0; b < 8; ++b) {
      tag |= std::uint64_t{static_cast<unsigned char>(raw[raw.size() - 8 + b])} << (8 * b);
    }
    if (tag != siphash24(key_, payload)) return std::nullopt;
    return std::string(payload.substr(kVersion.size()));
  }

 private:
  static constexpr std::string_view kVersion = "c1:";
  SipKey key_;
};

}  // namespace stubkit::testing::detail

#endif  // STUBKIT_TESTING_DETAIL_PAGE_TOKEN_HPP
