// W3C Trace Context (https://www.w3.org/TR/trace-context/) for stubkit's
// calls: the `traceparent` header carried from a server call to the calls it
// makes downstream, created for calls that have none when tracing is on, and
// the trace id on every event (Event::trace_id) and log line.
//
//   traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
//                 |  trace id (16 bytes, hex)         parent id (8 bytes) flags (01 = sampled)
//
// Where it travels:
// - child_context (deadline.hpp) gives the downstream call the upstream
//   call's trace id with a new parent id, and its `tracestate` unchanged;
// - stubkit::call, the stream helpers and calls on channels made by
//   make_channel (or with retry_interceptor / observe_interceptor) keep a
//   traceparent the caller set in the metadata, and report its trace id;
// - with tracing on (set_tracing(true), or STUBKIT_TRACE=w3c in the
//   environment), a call without one gets a new trace.
// stubkit records no spans: it carries the context and names it in events.
// An OpenTelemetry adapter is an Observer that starts a span at each start
// event and ends it at the matching end event, using Event::trace_id (and
// the traceparent the call sent) as the span's context.
#ifndef STUBKIT_TRACE_HPP
#define STUBKIT_TRACE_HPP

#include <grpcpp/server_context.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace stubkit {

/// The metadata keys of W3C Trace Context.
inline constexpr char kTraceparentKey[] = "traceparent";
inline constexpr char kTracestateKey[] = "tracestate";

/// One W3C trace context: a trace id, the id of the caller's span (the
/// "parent id" its callee sees) and the trace flags. A value type.
class TraceContext {
 public:
  /// Parses a traceparent header value; nullopt when it is not one
  /// (wrong length or characters, version ff, an all-zero id). A future
  /// version is read as version 00 if it starts like one, as the
  /// specification asks.
  static std::optional<TraceContext> parse(std::string_view value) {
    if (value.size() < 55) return std::nullopt;
    if (!is_hex(value.substr(0, 2)) || value.substr(0, 2) == "ff") return std::nullopt;
    bool const v00 = value.substr(0, 2) == "00";
    if (v00 ? value.size() != 55 : (value.size() > 55 && value[55] != '-')) return std::nullopt;
    if (value[2] != '-' || value[35] != '-' || value[52] != '-') return std::nullopt;
    std::string_view const trace = value.substr(3, 32), span = value.substr(36, 16),
                           flags = value.substr(53, 2);
    if (!is_hex(trace) || !is_hex(span) || !is_hex(flags)) return std::nullopt;
    if (all_zero(trace) || all_zero(span)) return std::nullopt;
    TraceContext context;
    trace.copy(context.trace_.data(), trace.size());
    span.copy(context.span_.data(), span.size());
    context.flags_ = static_cast<std::uint8_t>(std::strtoul(std::string(flags).c_str(), nullptr, 16));
    return context;
  }

  /// A new trace (random ids, sampled).
  static TraceContext generate() {
    TraceContext context;
    do {
      random_hex(context.trace_.data(), context.trace_.size());
    } while (all_zero({context.trace_.data(), context.trace_.size()}));
    context.new_span();
    context.flags_ = 0x01;
    return context;
  }

  /// The context a call made inside this one sends: the same trace and
  /// flags, a new parent id.
  TraceContext child() const {
    TraceContext context = *this;
    context.new_span();
    return context;
  }

  /// 32 lowercase hex digits.
  std::string_view trace_id() const { return {trace_.data(), trace_.size()}; }
  /// 16 lowercase hex digits: the span this context names as parent.
  std::string_view parent_id() const { return {span_.data(), span_.size()}; }
  bool sampled() const { return (flags_ & 0x01) != 0; }

  /// The traceparent header value (version 00; of the flags only
  /// "sampled", which version 00 defines: the others are sent as zero).
  std::string traceparent() const {
    char flags[3];
    std::snprintf(flags, sizeof flags, "%02x", flags_ & 0x01);
    return "00-" + std::string(trace_id()) + "-" + std::string(parent_id()) + "-" + flags;
  }

 private:
  TraceContext() = default;

  void new_span() {
    do {
      random_hex(span_.data(), span_.size());
    } while (all_zero({span_.data(), span_.size()}));
  }

  static bool is_hex(std::string_view s) {
    for (char c : s) {
      if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;  // lowercase only, per the spec
    }
    return true;
  }

  static bool all_zero(std::string_view s) { return s.find_first_not_of('0') == std::string_view::npos; }

  // Trace ids need to be unique, not secret: a per-thread generator seeded
  // from the system's entropy.
  static void random_hex(char* out, std::size_t n) {
    thread_local std::mt19937_64 generator{(std::uint64_t{std::random_device{}()} << 32) ^
                                           std::random_device{}()};
    static constexpr char kDigits[] = "0123456789abcdef";
    std::uint64_t bits = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (i % 16 == 0) bits = generator();
      out[i] = kDigits[bits & 0xf];
      bits >>= 4;
    }
  }

  std::array<char, 32> trace_{};
  std::array<char, 16> span_{};
  std::uint8_t flags_ = 0;
};

namespace detail {

// STUBKIT_TRACE: "w3c" = on; unset or empty = off; anything else is
// reported once on stderr and leaves tracing off.
inline bool tracing_from_env(char const* value) {
  if (value == nullptr || *value == '\0') return false;
  if (std::string_view(value) == "w3c") return true;
  std::fprintf(stderr, "stubkit: STUBKIT_TRACE=%s is not understood (expected 'w3c'); tracing stays off\n",
               value);
  return false;
}

inline std::atomic<bool>& tracing_flag() {
  static std::atomic<bool> flag{tracing_from_env(std::getenv("STUBKIT_TRACE"))};
  return flag;
}

}  // namespace detail

/// Whether calls without a traceparent get a new trace.
inline bool tracing_enabled() { return detail::tracing_flag().load(std::memory_order_relaxed); }

/// Turns tracing on or off for the process (the default comes from
/// STUBKIT_TRACE=w3c).
inline void set_tracing(bool on) { detail::tracing_flag().store(on, std::memory_order_relaxed); }

/// The trace context a server call came with (its traceparent header), if
/// valid. (A traceparent sent more than once is not valid: nullopt.)
inline std::optional<TraceContext> trace_of(grpc::ServerContextBase const& upstream) {
  auto const& metadata = upstream.client_metadata();
  auto const [first, last] = metadata.equal_range(kTraceparentKey);
  if (first == last || std::next(first) != last) return std::nullopt;
  return TraceContext::parse(std::string_view(first->second.data(), first->second.size()));
}

/// The tracestate a server call came with: its tracestate headers joined
/// with commas, as W3C Trace Context reads several; "" when none.
inline std::string tracestate_of(grpc::ServerContextBase const& upstream) {
  std::string joined;
  auto const [first, last] = upstream.client_metadata().equal_range(kTracestateKey);
  for (auto it = first; it != last; ++it) {
    if (!joined.empty()) joined += ',';
    joined.append(it->second.data(), it->second.size());
  }
  return joined;
}

namespace detail {

// The trace of an outgoing call whose metadata is `metadata` (pairs of
// strings, or a multimap): the traceparent it carries, if valid; else, when
// tracing is on and it carries none, a new trace, whose header `add` is set
// to (the caller adds it to the call). nullopt: the call is not traced (an
// invalid traceparent is sent as it is, and not reported).
template <typename Metadata>
std::optional<TraceContext> outgoing_trace(Metadata const& metadata, std::string* add) {
  for (auto const& [key, value] : metadata) {
    if (key == kTraceparentKey) return TraceContext::parse(value);
  }
  if (!tracing_enabled()) return std::nullopt;
  TraceContext trace = TraceContext::generate();
  *add = trace.traceparent();
  return trace;
}

// The trace id of `trace` for an Event ("" when untraced); valid while
// `trace` is.
inline std::string_view trace_id_of(std::optional<TraceContext> const& trace) {
  return trace ? trace->trace_id() : std::string_view();
}

}  // namespace detail

}  // namespace stubkit

#endif  // STUBKIT_TRACE_HPP
