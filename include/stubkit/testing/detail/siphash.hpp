// SipHash-2-4 (Aumasson & Bernstein): a fast keyed 64-bit hash. The journal
// uses it under a fixed key as a record checksum; it is not used for secrets
// (page tokens are authenticated with HMAC-SHA256, see page_token.hpp).
#ifndef STUBKIT_TESTING_DETAIL_SIPHASH_HPP
#define STUBKIT_TESTING_DETAIL_SIPHASH_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace stubkit::testing::detail {

/// A 128-bit key for `siphash24`.
using SipKey = std::array<std::uint64_t, 2>;

/// SipHash-2-4 of `data`: stable across processes and machines.
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

}  // namespace stubkit::testing::detail

#endif  // STUBKIT_TESTING_DETAIL_SIPHASH_HPP
