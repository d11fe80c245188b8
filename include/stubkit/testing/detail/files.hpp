// Small POSIX file helpers shared by the journal and the page-token key file.
#ifndef STUBKIT_TESTING_DETAIL_FILES_HPP
#define STUBKIT_TESTING_DETAIL_FILES_HPP

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace stubkit::testing::detail {

/// fsync(2)s the directory holding `path`, so that the entries of files
/// created, linked or removed in it survive a crash. False (errno set) on
/// failure.
inline bool sync_parent_directory(std::string const& path) {
  auto const slash = path.rfind('/');
  std::string const dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  int const fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  bool const ok = ::fsync(fd) == 0;
  int const error = errno;
  ::close(fd);
  errno = error;
  return ok;
}

}  // namespace stubkit::testing::detail

#endif  // STUBKIT_TESTING_DETAIL_FILES_HPP
