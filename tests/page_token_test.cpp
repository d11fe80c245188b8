// Page tokens of the embedded UserService: the HMAC-SHA256 codec and the key
// files that let tokens outlive a process (see tests/listing_test.cpp for
// listings across restarts and backends).
#include "stubkit/testing/detail/page_token.hpp"

#include <doctest/doctest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <stdexcept>
#include <string>
#include <vector>

#include "support.hpp"

using stubkit::testing::detail::load_or_create_page_token_key;
using stubkit::testing::detail::PageTokenCodec;
using stubkit::testing::detail::read_page_token_key;
using stubkit_tests::TempDir;

namespace {

// The bytes 0x00..0x1f.
std::string reference_key() {
  std::string key;
  for (char c = 0; c < 32; ++c) key.push_back(c);
  return key;
}

void write_file(std::filesystem::path const& file, std::string const& data, mode_t mode = 0600) {
  std::ofstream(file, std::ios::binary | std::ios::trunc) << data;
  std::filesystem::permissions(file, static_cast<std::filesystem::perms>(mode));
}

std::string message_of(std::function<void()> const& action) {
  try {
    action();
  } catch (std::exception const& e) {
    return e.what();
  }
  return "(nothing thrown)";
}

}  // namespace

TEST_SUITE("page_token") {
  TEST_CASE("a token is base64url of version, cursor and the HMAC-SHA256 tag") {
    // The expected token was computed by another implementation:
    //   raw = b"c2:u00000042"
    //   base64.urlsafe_b64encode(raw + hmac.new(bytes(range(32)), raw, hashlib.sha256).digest())
    // without its padding, which the decoder also accepts.
    PageTokenCodec codec(reference_key());
    CHECK(codec.encode("u00000042") == "YzI6dTAwMDAwMDQy5p73UDefaDgug5L-AnTSIzDomNQZShMbhqizHMrG5MQ");
    CHECK(codec.decode("YzI6dTAwMDAwMDQy5p73UDefaDgug5L-AnTSIzDomNQZShMbhqizHMrG5MQ=") ==
          std::optional<std::string>("u00000042"));
  }

  TEST_CASE("a token decodes to the cursor it was made from") {
    PageTokenCodec codec(reference_key());
    for (std::string const& id :
         std::vector<std::string>{"", "a", "u00000042", std::string(128, 'z'), std::string("with\0nul", 8)}) {
      auto decoded = codec.decode(codec.encode(id));
      REQUIRE(decoded.has_value());
      CHECK(*decoded == id);
    }
  }

  TEST_CASE("every single-character edit of a token is rejected") {
    PageTokenCodec codec(reference_key());
    std::string const token = codec.encode("u00000042");
    for (std::size_t i = 0; i < token.size(); ++i) {
      std::string edited = token;
      edited[i] = edited[i] == 'A' ? 'B' : 'A';
      CHECK_FALSE(codec.decode(edited).has_value());
    }
  }

  TEST_CASE("garbage, truncated, foreign and old-format tokens are rejected") {
    PageTokenCodec codec(reference_key());
    PageTokenCodec other(std::string(32, 'k'));
    std::string const token = codec.encode("u1");
    CHECK_FALSE(codec.decode("not a token!").has_value());
    CHECK_FALSE(codec.decode("").has_value());
    CHECK_FALSE(codec.decode("50").has_value());  // the reference server's offset tokens
    CHECK_FALSE(codec.decode(token.substr(0, token.size() - 4)).has_value());
    CHECK_FALSE(other.decode(token).has_value());
    // A "c1" token (SipHash tag, 8 bytes) from before the key could be kept.
    CHECK_FALSE(codec.decode("YzE6dTAwMDAwMDAxAAAAAAAAAAA=").has_value());
    CHECK(PageTokenCodec(reference_key()).decode(token) == std::optional<std::string>("u1"));
  }

  TEST_CASE("a key shorter than 16 bytes is refused, and generated keys differ") {
    CHECK(message_of([] { PageTokenCodec codec(std::string(15, 'k')); }).find("16 to 4096 bytes, got 15") !=
          std::string::npos);
    CHECK_NOTHROW(PageTokenCodec(std::string(16, 'k')));
    std::string const a = PageTokenCodec::random_key();
    CHECK(a.size() == 32);
    CHECK(a != PageTokenCodec::random_key());
  }

  TEST_CASE("a key file is read as it is; a bad one is refused naming the file") {
    TempDir dir;
    auto const file = dir.path / "page.key";
    write_file(file, "0123456789abcdef0123456789abcdef\n");
    CHECK(read_page_token_key(file.string()) == "0123456789abcdef0123456789abcdef\n");

    std::string const missing = (dir.path / "missing.key").string();
    CHECK(message_of([&] { read_page_token_key(missing); }) ==
          "page token key " + missing + ": No such file or directory");
    write_file(file, "short");
    CHECK(message_of([&] {
            read_page_token_key(file.string());
          }).find("holds 16 to 4096 bytes, this one 5 (make one with: head -c 32 /dev/urandom > FILE)") !=
          std::string::npos);
    // Endless input is cut off, not read forever.
    CHECK(message_of([] { read_page_token_key("/dev/zero"); }).find("this one more") != std::string::npos);
    CHECK(message_of([&] { read_page_token_key(dir.path.string()); }).find(dir.path.string()) !=
          std::string::npos);
  }

  TEST_CASE("a key file others can read is used, with a warning") {
    TempDir dir;
    auto const file = dir.path / "page.key";
    write_file(file, std::string(32, 'k'), 0644);
    std::vector<std::string> warnings;
    CHECK(read_page_token_key(file.string(), [&](std::string const& m) { warnings.push_back(m); }) ==
          std::string(32, 'k'));
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0].find("can be read by others than its owner") != std::string::npos);
  }

  TEST_CASE("load_or_create makes a private 32-byte key once and then reads it") {
    TempDir dir;
    std::string const file = (dir.path / "users.journal.key").string();
    std::string const key = load_or_create_page_token_key(file);
    CHECK(key.size() == 32);
    struct stat info {};
    REQUIRE(::stat(file.c_str(), &info) == 0);
    CHECK((info.st_mode & 0777) == 0600);
    CHECK(load_or_create_page_token_key(file) == key);
    // Nothing left beside it.
    CHECK(std::distance(std::filesystem::directory_iterator(dir.path),
                        std::filesystem::directory_iterator()) == 1);
  }

  TEST_CASE("processes racing to create the key all get the same one") {
    TempDir dir;
    std::string const file = (dir.path / "shared.key").string();
    std::vector<std::future<std::string>> racers;
    for (int i = 0; i < 8; ++i) {
      racers.push_back(std::async(std::launch::async, [&] { return load_or_create_page_token_key(file); }));
    }
    std::string const first = racers[0].get();
    for (std::size_t i = 1; i < racers.size(); ++i) CHECK(racers[i].get() == first);
    CHECK(read_page_token_key(file) == first);
    CHECK(std::distance(std::filesystem::directory_iterator(dir.path),
                        std::filesystem::directory_iterator()) == 1);
  }

  TEST_CASE("load_or_create in a directory that does not exist says so") {
    TempDir dir;
    std::string const file = (dir.path / "absent" / "users.journal.key").string();
    CHECK(message_of([&] { load_or_create_page_token_key(file); }) ==
          "page token key " + file + ": cannot create: No such file or directory");
  }
}
