// Opaque, tamper-evident page tokens for the embedded UserService, and the
// key they are made with.
//
// A token carries the id of the last item of the previous page (a cursor,
// not an offset, so items inserted or deleted during a listing do not shift
// the pages) and an HMAC-SHA256 tag (OpenSSL) keyed by a server secret. A
// token that was garbled, truncated, edited or issued under another key is
// rejected; tags are compared in constant time. The tag makes tampering
// evident; the cursor itself is not encrypted (do not put secrets in ids).
//
// A token is valid wherever the key is: after a restart of a server that
// keeps its key in a file, and on every backend that shares the key.
#ifndef STUBKIT_TESTING_DETAIL_PAGE_TOKEN_HPP
#define STUBKIT_TESTING_DETAIL_PAGE_TOKEN_HPP

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "absl/strings/escaping.h"
#include "stubkit/testing/detail/files.hpp"

namespace stubkit::testing::detail {

/// Encodes and checks cursor page tokens under one HMAC-SHA256 key.
class PageTokenCodec {
 public:
  /// Shortest key accepted: 128 bits. Generated keys have 256.
  static constexpr std::size_t kMinKeySize = 16;
  static constexpr std::size_t kGeneratedKeySize = 32;
  /// Longest key file read; a longer one is a mistake (or /dev/urandom).
  static constexpr std::size_t kMaxKeySize = 4096;
  static constexpr std::size_t kTagSize = 32;

  /// Throws std::invalid_argument when `key` is shorter than kMinKeySize.
  explicit PageTokenCodec(std::string key) : key_(std::move(key)) {
    if (key_.size() < kMinKeySize || key_.size() > kMaxKeySize) {
      throw std::invalid_argument("a page token key has " + std::to_string(kMinKeySize) + " to " +
                                  std::to_string(kMaxKeySize) + " bytes, got " + std::to_string(key_.size()));
    }
  }

  /// A new random key of kGeneratedKeySize bytes from OpenSSL's CSPRNG.
  static std::string random_key() {
    std::string key(kGeneratedKeySize, '\0');
    if (RAND_bytes(reinterpret_cast<unsigned char*>(key.data()), static_cast<int>(key.size())) != 1) {
      throw std::runtime_error("page token key: OpenSSL's random generator failed");
    }
    return key;
  }

  /// The token that resumes a listing after the item with id `last_id`.
  std::string encode(std::string_view last_id) const {
    std::string raw(kVersion);
    raw.append(last_id.data(), last_id.size());
    auto const tag = mac(raw);
    raw.append(reinterpret_cast<char const*>(tag.data()), tag.size());
    return absl::WebSafeBase64Escape(raw);
  }

  /// The cursor (last id) a token carries, or nullopt if the token was not
  /// produced by `encode` with this key.
  std::optional<std::string> decode(std::string_view token) const {
    std::string raw;
    // Debian's abseil has its own string_view type: convert explicitly.
    if (!absl::WebSafeBase64Unescape(absl::string_view(token.data(), token.size()), &raw))
      return std::nullopt;
    if (raw.size() < kVersion.size() + kTagSize || raw.compare(0, kVersion.size(), kVersion) != 0) {
      return std::nullopt;
    }
    std::string_view const payload(raw.data(), raw.size() - kTagSize);
    auto const expected = mac(payload);
    if (CRYPTO_memcmp(expected.data(), raw.data() + payload.size(), kTagSize) != 0) return std::nullopt;
    return std::string(payload.substr(kVersion.size()));
  }

 private:
  // "c2": cursor tokens with an HMAC-SHA256 tag ("c1" had a SipHash tag).
  static constexpr std::string_view kVersion = "c2:";

  std::array<unsigned char, kTagSize> mac(std::string_view payload) const {
    std::array<unsigned char, kTagSize> tag{};
    unsigned int length = 0;
    if (HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
             reinterpret_cast<unsigned char const*>(payload.data()), payload.size(), tag.data(),
             &length) == nullptr ||
        length != kTagSize) {
      // Only when OpenSSL itself is broken; a zero tag then matches nothing
      // encode could have produced with a working OpenSSL.
      tag.fill(0);
    }
    return tag;
  }

  std::string key_;
};

/// The key stored in the file at `path`: its bytes, as they are (a file
/// from `head -c 32 /dev/urandom` or `openssl rand -hex 32` both work).
/// Throws std::runtime_error naming the file when it cannot be read or has
/// fewer than kMinKeySize or more than kMaxKeySize bytes. `warn` is told
/// when others than the owner can read it.
inline std::string read_page_token_key(std::string const& path,
                                       std::function<void(std::string const&)> const& warn = {}) {
  auto fail = [&](std::string const& problem) -> std::runtime_error {
    return std::runtime_error("page token key " + path + ": " + problem);
  };
  int const fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw fail(std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) == 0 && S_ISREG(info.st_mode) && (info.st_mode & 077) != 0 && warn) {
    warn("page token key " + path + " can be read by others than its owner (chmod 600 it)");
  }
  std::string key;
  char buffer[1024];
  while (key.size() <= PageTokenCodec::kMaxKeySize) {
    ssize_t const n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int const error = errno;
      ::close(fd);
      throw fail(std::strerror(error));
    }
    if (n == 0) break;
    key.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  if (key.size() < PageTokenCodec::kMinKeySize || key.size() > PageTokenCodec::kMaxKeySize) {
    throw fail("a key file holds " + std::to_string(PageTokenCodec::kMinKeySize) + " to " +
               std::to_string(PageTokenCodec::kMaxKeySize) + " bytes, this one " +
               (key.size() > PageTokenCodec::kMaxKeySize ? "more" : std::to_string(key.size())) +
               " (make one with: head -c 32 /dev/urandom > FILE)");
  }
  return key;
}

/// The key in the file at `path`, created with a new random key (mode 0600,
/// synced with its directory) when there is none. Safe when several
/// processes race to create it: the file appears whole (written aside, then
/// linked), and all of them end up with the same key.
inline std::string load_or_create_page_token_key(std::string const& path,
                                                 std::function<void(std::string const&)> const& warn = {}) {
  if (::access(path.c_str(), F_OK) == 0 || errno != ENOENT) return read_page_token_key(path, warn);
  auto fail = [&](std::string const& problem) -> std::runtime_error {
    return std::runtime_error("page token key " + path + ": cannot create: " + problem);
  };
  std::string const key = PageTokenCodec::random_key();
  std::string aside = path + ".XXXXXX";
  int const fd = ::mkstemp(aside.data());  // mode 0600
  if (fd < 0) throw fail(std::strerror(errno));
  bool written = ::write(fd, key.data(), key.size()) == static_cast<ssize_t>(key.size()) && ::fsync(fd) == 0;
  int error = errno;
  ::close(fd);
  bool linked = written && ::link(aside.c_str(), path.c_str()) == 0;
  if (written && !linked) error = errno;
  ::unlink(aside.c_str());
  if (!written) throw fail(std::strerror(error));
  if (!linked && error != EEXIST) throw fail(std::strerror(error));
  if (!linked) return read_page_token_key(path, warn);  // another process made it first
  if (!sync_parent_directory(path)) {
    error = errno;
    ::unlink(path.c_str());  // else a later start would trust a key that may vanish
    throw fail("cannot sync its directory: " + std::string(std::strerror(error)));
  }
  return key;
}

}  // namespace stubkit::testing::detail

#endif  // STUBKIT_TESTING_DETAIL_PAGE_TOKEN_HPP
