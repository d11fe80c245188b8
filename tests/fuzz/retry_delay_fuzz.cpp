// libFuzzer target: the delays a server can ask for (grpc-retry-pushback-ms,
// google.rpc.RetryInfo) and the time arithmetic that uses them. Whatever the
// bytes, parsing never crashes or overflows (UBSan), a delay is never
// negative nor above kMaxServerRetryDelay, and a retry decision never waits
// past the call's deadline.
//
// Input: one flags byte, then the pushback trailer's value up to the first
// NUL byte, then the bytes of grpc-status-details-bin.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>

#include "stubkit/detail/time.hpp"
#include "stubkit/retry.hpp"

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  using namespace std::chrono;
  if (size < 1) return 0;
  std::uint8_t const flags = data[0];
  std::string const rest(reinterpret_cast<char const*>(data + 1), size - 1);
  auto const nul = rest.find('\0');
  std::string const pushback = rest.substr(0, nul);
  std::string const details = nul == std::string::npos ? std::string() : rest.substr(nul + 1);
  auto const cap = stubkit::kMaxServerRetryDelay;

  std::multimap<grpc::string_ref, grpc::string_ref> trailers;
  if (flags & 1) trailers.emplace(stubkit::kPushbackKey, pushback);
  auto const asked = stubkit::detail::parse_pushback(trailers);
  if (asked && *asked != -1 && (*asked < 0 || *asked > cap.count())) __builtin_trap();

  grpc::Status const status(grpc::StatusCode::UNAVAILABLE, "fuzzed", details);
  if (auto delay = stubkit::detail::retry_info_delay(status)) {
    if (*delay < milliseconds(0) || *delay > cap) __builtin_trap();
  }

  // A decision with a fake clock anywhere in time_point's range and a
  // deadline somewhere after it.
  std::int64_t raw_now = 0;
  std::memcpy(&raw_now, pushback.data(), std::min(pushback.size(), sizeof raw_now));
  auto const now = system_clock::time_point(system_clock::duration(raw_now));
  auto const budget = milliseconds((flags >> 1) * 997);
  stubkit::RetryPlan plan;
  plan.policy = stubkit::RetryPolicy::standard();
  plan.idempotent = true;
  if (flags & 0x80) plan.deadline = stubkit::detail::saturating_add(now, budget);
  plan.clock.now = [now] { return now; };
  plan.clock.random01 = [flags] { return (flags & 0x7f) / 128.0; };
  stubkit::RetryState state(plan);
  auto const decision = state.after_attempt(1, stubkit::AttemptOutcome{status, asked});
  if (decision.retry) {
    if (decision.delay < milliseconds(0) || decision.delay > std::max(cap, plan.policy.max_backoff)) {
      __builtin_trap();
    }
    if (plan.deadline && stubkit::detail::saturating_add(now, decision.delay) >= *plan.deadline) __builtin_trap();
  }
  // The helpers themselves, on the same numbers.
  auto const later = stubkit::detail::saturating_add(now, budget);
  if (later < now) __builtin_trap();
  if (stubkit::detail::time_left(later, now) < system_clock::duration::zero()) __builtin_trap();
  return 0;
}
