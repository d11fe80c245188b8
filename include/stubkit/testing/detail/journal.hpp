// An append-only journal file: the durable store of the embedded UserService
// (`UserServiceOptions::data_path`, user_server --data).
//
// Layout: the line "stubkit-journal-v1\n", then records of
//   kind (1 byte) | payload length (4 bytes LE) | tag (8 bytes LE) | payload
// where the tag is SipHash-2-4 of the payload under a fixed key with the kind
// folded in: a checksum that catches torn and corrupted records, not a
// secret.
//
// Each append is one write(2) before the caller replies, so an acknowledged
// record survives the process being killed (SIGKILL); with `sync` it is also
// fdatasync(2)ed and survives the machine going down. Creating the file (and
// the .torn file kept aside below) fsync(2)s its directory, so the file itself
// survives a crash right after. On open every record is
// checked and replayed. A last record cut short (the process died during its
// write) is cut off with a warning: it was never acknowledged. Anything else
// that does not check out is an error, since dropping it would lose
// acknowledged writes.
#ifndef STUBKIT_TESTING_DETAIL_JOURNAL_HPP
#define STUBKIT_TESTING_DETAIL_JOURNAL_HPP

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "stubkit/testing/detail/files.hpp"
#include "stubkit/testing/detail/siphash.hpp"

namespace stubkit::testing::detail {

class Journal {
 public:
  static constexpr std::string_view kMagic = "stubkit-journal-v1\n";
  static constexpr std::size_t kHeaderSize = 1 + 4 + 8;
  /// Largest payload a record may hold; a longer length field is corruption.
  static constexpr std::uint32_t kMaxPayload = 64u << 20;

  /// Called for each intact record in file order; returns false when the
  /// payload does not make sense (the open then fails).
  using Replay = std::function<bool(char kind, std::string_view payload)>;
  using Warn = std::function<void(std::string const& message)>;

  /// Opens or creates the journal at `path`, replays it and takes an
  /// exclusive lock on it (a second process on the same file fails).
  /// Throws std::runtime_error naming the path and the problem.
  Journal(std::string path, bool sync, Replay const& replay, Warn const& warn)
      : path_(std::move(path)), sync_(sync) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    bool const created = fd_ >= 0;
    if (!created && errno == EEXIST) fd_ = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
    if (fd_ < 0) fail("cannot open: " + std::string(std::strerror(errno)));
    // A new file is a new directory entry: without syncing the directory a
    // crash could lose the file, and every write acknowledged into it.
    if (created && !sync_directory()) {
      int const error = errno;
      ::close(fd_);
      fd_ = -1;
      ::unlink(path_.c_str());  // else the next start would take it as synced
      fail("cannot sync its directory: " + std::string(std::strerror(error)));
    }
    struct stat info {};
    if (::fstat(fd_, &info) != 0 || !S_ISREG(info.st_mode)) {
      ::close(fd_);
      fd_ = -1;
      fail("not a regular file");
    }
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      int const error = errno;
      ::close(fd_);
      fd_ = -1;
      fail(error == EWOULDBLOCK ? "in use by another process" : std::strerror(error));
    }
    try {
      recover(replay, warn);
    } catch (...) {
      ::close(fd_);
      fd_ = -1;
      throw;
    }
  }

  Journal(Journal const&) = delete;
  Journal& operator=(Journal const&) = delete;
  // fsync(2)s the directory holding the journal. False (errno set) on failure.
  bool sync_directory() const { return sync_parent_directory(path_); }

  ~Journal() {
    if (fd_ >= 0) ::close(fd_);
  }

  /// Appends one record. Returns an empty string on success, otherwise what
  /// went wrong; the file is then rolled back to its last intact record, or,
  /// if even that fails, refuses every later append.
  std::string append(char kind, std::string_view payload) {
    if (broken_) return "journal " + path_ + " is unusable after an earlier write error";
    if (payload.size() > kMaxPayload) {
      return "record of " + std::to_string(payload.size()) + " bytes is too large";
    }
    std::string record = encode(kind, payload);
    std::size_t done = 0;
    while (done < record.size()) {
      ssize_t const n =
          ::pwrite(fd_, record.data() + done, record.size() - done, static_cast<off_t>(end_ + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        return roll_back("write failed: " + std::string(n < 0 ? std::strerror(errno) : "no progress"));
      }
      done += static_cast<std::size_t>(n);
    }
    if (sync_ && ::fdatasync(fd_) != 0) {
      return roll_back("fdatasync failed: " + std::string(std::strerror(errno)));
    }
    end_ += record.size();
    return {};
  }

  /// The bytes of one record, as append writes it (for tests and fuzzing).
  static std::string encode(char kind, std::string_view payload) {
    std::string record(kHeaderSize, '\0');
    record[0] = kind;
    put_le(&record[1], payload.size(), 4);
    put_le(&record[5], tag(kind, payload), 8);
    record.append(payload.data(), payload.size());
    return record;
  }

 private:
  // The kind goes into the key, so the payload is hashed where it lies.
  static std::uint64_t tag(char kind, std::string_view payload) {
    return siphash24({0x6a6f75726e616c31ULL ^ static_cast<unsigned char>(kind), 0x737475626b697421ULL},
                     payload);
  }

  static void put_le(char* out, std::uint64_t value, int bytes) {
    for (int i = 0; i < bytes; ++i) out[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  }

  static std::uint64_t get_le(char const* in, int bytes) {
    std::uint64_t value = 0;
    for (int i = 0; i < bytes; ++i) value |= std::uint64_t{static_cast<unsigned char>(in[i])} << (8 * i);
    return value;
  }

  [[noreturn]] void fail(std::string const& problem) const {
    throw std::runtime_error("journal " + path_ + ": " + problem);
  }

  std::string read_all() {
    std::string data;
    char buffer[1 << 16];
    for (off_t at = 0;;) {
      ssize_t const n = ::pread(fd_, buffer, sizeof buffer, at);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail("cannot read: " + std::string(std::strerror(errno)));
      if (n == 0) return data;
      data.append(buffer, static_cast<std::size_t>(n));
      at += n;
    }
  }

  void truncate_to(std::uint64_t size) {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      fail("cannot truncate: " + std::string(std::strerror(errno)));
    }
  }

  void recover(Replay const& replay, Warn const& warn) {
    std::string const data = read_all();
    std::string_view const view(data);
    if (view.size() < kMagic.size() && kMagic.substr(0, view.size()) == view) {
      // New, or the process died while writing the first line.
      truncate_to(0);
      if (::pwrite(fd_, kMagic.data(), kMagic.size(), 0) != static_cast<ssize_t>(kMagic.size())) {
        fail("cannot write: " + std::string(std::strerror(errno)));
      }
      end_ = kMagic.size();
      return;
    }
    if (view.substr(0, kMagic.size()) != kMagic) {
      fail("not a stubkit journal (it does not start with " +
           std::string(kMagic.substr(0, kMagic.size() - 1)) + ")");
    }
    std::uint64_t at = kMagic.size();
    while (at < view.size()) {
      std::string_view const rest = view.substr(at);
      // A write the process did not finish leaves a prefix of a record with
      // an intact length: the file ends before the record does (or, after a
      // machine crash without `sync`, exactly where it does, checksum wrong).
      std::string problem;
      bool torn = false;
      std::uint64_t const length = rest.size() < kHeaderSize ? 0 : get_le(rest.data() + 1, 4);
      if (rest.size() < kHeaderSize) {
        problem = "header cut short";
        torn = true;
      } else if (length > kMaxPayload) {
        problem = "length " + std::to_string(length) + " is out of range";
      } else if (rest.size() < kHeaderSize + length) {
        problem = "payload cut short";
        torn = true;
      } else if (get_le(rest.data() + 5, 8) != tag(rest[0], rest.substr(kHeaderSize, length))) {
        problem = "checksum mismatch";
        torn = rest.size() == kHeaderSize + length;
      }
      if (torn) {
        // Kept aside, not destroyed, in case it is not what it seems.
        std::string const aside = path_ + ".torn";
        int const out = ::open(aside.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        bool saved = out >= 0 &&
                     ::write(out, rest.data(), rest.size()) == static_cast<ssize_t>(rest.size()) &&
                     ::fsync(out) == 0 && sync_directory();
        if (out >= 0) ::close(out);
        warn("journal " + path_ + ": ignored a torn last record at offset " + std::to_string(at) + " (" +
             problem + ", " + std::to_string(rest.size()) + " bytes" + (saved ? ", saved to " + aside : "") +
             "); it was never acknowledged");
        truncate_to(at);
        break;
      }
      if (!problem.empty()) fail("corrupt record at offset " + std::to_string(at) + " (" + problem + ")");
      if (!replay(rest[0], rest.substr(kHeaderSize, length))) {
        fail("record at offset " + std::to_string(at) + " of kind '" + std::string(1, rest[0]) +
             "' does not make sense");
      }
      at += kHeaderSize + length;
    }
    end_ = at;
  }

  std::string roll_back(std::string problem) {
    if (::ftruncate(fd_, static_cast<off_t>(end_)) != 0) broken_ = true;
    return "journal " + path_ + ": " + problem;
  }

  std::string path_;
  bool sync_;
  int fd_ = -1;
  std::uint64_t end_ = 0;  // the file's size: the magic line and intact records
  bool broken_ = false;
};

}  // namespace stubkit::testing::detail

#endif  // STUBKIT_TESTING_DETAIL_JOURNAL_HPP
