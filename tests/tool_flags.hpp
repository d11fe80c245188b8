// Command-line flags of the test tools (chaos_soak, stubkit-load): every
// flag takes one value; anything wrong prints the problem and the tool's
// usage and exits with status 2.
#ifndef STUBKIT_TESTS_TOOL_FLAGS_HPP
#define STUBKIT_TESTS_TOOL_FLAGS_HPP

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>

#include "absl/strings/numbers.h"
#include "absl/time/time.h"

namespace stubkit_tests {

class FlagReader {
 public:
  FlagReader(int argc, char** argv, std::string tool, std::string usage)
      : argc_(argc), argv_(argv), tool_(std::move(tool)), usage_(std::move(usage)) {}

  /// Moves to the next flag; false when there are none left.
  bool next() {
    if (i_ >= argc_) return false;
    flag_ = argv_[i_];
    if (i_ + 1 >= argc_) fail("missing value after " + std::string(flag_));
    value_ = argv_[i_ + 1];
    i_ += 2;
    return true;
  }

  std::string_view flag() const { return flag_; }
  std::string text() const { return std::string(value_); }

  std::int64_t integer(std::int64_t min, std::int64_t max) const {
    std::int64_t n = 0;
    if (!absl::SimpleAtoi(absl::string_view(value_.data(), value_.size()), &n) || n < min || n > max) {
      fail(std::string(flag_) + " wants an integer in [" + std::to_string(min) + ", " + std::to_string(max) +
           "], got '" + std::string(value_) + "'");
    }
    return n;
  }

  std::chrono::milliseconds duration() const {
    absl::Duration d;
    if (!absl::ParseDuration(absl::string_view(value_.data(), value_.size()), &d) ||
        d <= absl::ZeroDuration()) {
      fail(std::string(flag_) + " wants a positive duration such as 60s or 300ms, got '" +
           std::string(value_) + "'");
    }
    return absl::ToChronoMilliseconds(d);
  }

  [[noreturn]] void fail(std::string const& problem) const {
    std::cerr << tool_ << ": " << problem << "\nusage: " << usage_;
    std::exit(2);
  }

 private:
  int argc_;
  char** argv_;
  std::string tool_;
  std::string usage_;
  int i_ = 1;
  std::string_view flag_;
  std::string_view value_;
};

}  // namespace stubkit_tests

#endif  // STUBKIT_TESTS_TOOL_FLAGS_HPP
