#include "stubkit/testing/detail/page_token.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

using stubkit::testing::detail::PageTokenCodec;
using stubkit::testing::detail::siphash24;
using stubkit::testing::detail::SipKey;

namespace {
constexpr SipKey kReferenceKey = {0x0706050403020100ULL, 0x0f0e0d0c0b0a0908ULL};
}

TEST_SUITE("page_token") {
  TEST_CASE("siphash24 matches the reference vectors of its authors") {
    CHECK(siphash24(kReferenceKey, "") == 0x726fdb47dd0e0e31ULL);
    std::string fifteen;
    for (char c = 0; c < 15; ++c) fifteen.push_back(c);
    CHECK(siphash24(kReferenceKey, fifteen) == 0xa129ca6149be45e5ULL);
  }

  TEST_CASE("a token decodes to the cursor it was made from") {
    PageTokenCodec codec(kReferenceKey);
    for (std::string const& id :
         std::vector<std::string>{"", "a", "u00000042", std::string(128, 'z'), std::string("with\0nul", 8)}) {
      auto decoded = codec.decode(codec.encode(id));
      REQUIRE(decoded.has_value());
      CHECK(*decoded == id);
    }
  }

  TEST_CASE("every single-character edit of a token is rejected") {
    PageTokenCodec codec(kReferenceKey);
    std::string const token = codec.encode("u00000042");
    for (std::size_t i = 0; i < token.size(); ++i) {
      std::string edited = token;
      edited[i] = edited[i] == 'A' ? 'B' : 'A';
      CHECK_FALSE(codec.decode(edited).has_value());
    }
  }

  TEST_CASE("garbage, truncated and foreign tokens are rejected") {
    PageTokenCodec codec(kReferenceKey);
    PageTokenCodec other({1, 2});
    std::string const token = codec.encode("u1");
    CHECK_FALSE(codec.decode("not a token!").has_value());
    CHECK_FALSE(codec.decode("").has_value());
    CHECK_FALSE(codec.decode("50").has_value());  // the reference server's offset tokens
    CHECK_FALSE(codec.decode(token.substr(0, token.size() - 2)).has_value());
    CHECK_FALSE(other.decode(token).has_value());
    CHECK(PageTokenCodec(kReferenceKey).decode(token) == std::optional<std::string>("u1"));
  }
}
