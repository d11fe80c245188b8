// Time arithmetic that saturates instead of overflowing. Durations come
// from users (timeouts), policies (backoffs) and the network (pushback,
// RetryInfo); a huge or negative value must give "never" or "now", not
// signed overflow (undefined behaviour) and a deadline in 1677.
//
//   auto deadline = stubkit::detail::saturating_add(clock.now(), timeout);  // max() if it would overflow
//   auto left = stubkit::detail::time_left(deadline, clock.now());          // >= 0, 0 once passed
#ifndef STUBKIT_DETAIL_TIME_HPP
#define STUBKIT_DETAIL_TIME_HPP

#include <chrono>
#include <type_traits>

namespace stubkit::detail {

/// `d` in the units of `To`, clamped to To's range (rounded toward zero).
template <typename To, typename Rep, typename Period>
constexpr To saturating_cast(std::chrono::duration<Rep, Period> d) {
  using Wide = std::chrono::duration<long double, typename To::period>;
  long double const value = std::chrono::duration_cast<Wide>(d).count();
  if (!(value == value)) return To::zero();  // NaN from a floating-point Rep
  if (value >= static_cast<long double>(To::max().count())) return To::max();
  if (value <= static_cast<long double>(To::min().count())) return To::min();
  return To(static_cast<typename To::rep>(value));
}

/// `t + d`, clamped to the time point's range: adding a huge duration gives
/// time_point::max() ("never"), subtracting one gives time_point::min().
template <typename Clock, typename Duration, typename Rep, typename Period>
constexpr std::chrono::time_point<Clock, Duration> saturating_add(std::chrono::time_point<Clock, Duration> t,
                                                                  std::chrono::duration<Rep, Period> d) {
  using TimePoint = std::chrono::time_point<Clock, Duration>;
  Duration const step = saturating_cast<Duration>(d);
  auto const since = t.time_since_epoch();
  if (step > Duration::zero() && since > Duration::max() - step) return TimePoint::max();
  if (step < Duration::zero() && since < Duration::min() - step) return TimePoint::min();
  return t + step;
}

/// How long until `deadline`, never negative; time_point::max() gives the
/// largest duration of the clock.
template <typename Clock, typename Duration>
constexpr Duration time_left(std::chrono::time_point<Clock, Duration> deadline,
                             std::chrono::time_point<Clock, Duration> now) {
  if (deadline <= now) return Duration::zero();
  auto const a = deadline.time_since_epoch();
  auto const b = now.time_since_epoch();
  if (b < Duration::zero() && a > Duration::max() + b) return Duration::max();
  return a - b;
}

}  // namespace stubkit::detail

#endif  // STUBKIT_DETAIL_TIME_HPP
