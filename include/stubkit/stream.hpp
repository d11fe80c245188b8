// Streaming helpers for generated stubs: server streams as ranges, client
// streams as writers, bidirectional streams as sessions. Each owns its call
// and its ClientContext, respects the deadline it was given, and cancels
// and finishes its call when destroyed early, so no call is leaked.
//
//   for (auto& event : stubkit::read_stream(*stub, &UserService::Stub::WatchUsers, request)) {
//     if (!event) return handle(event.error());   // how the stream ended, if not OK
//     use(*event);
//   }
#ifndef STUBKIT_STREAM_HPP
#define STUBKIT_STREAM_HPP

#include <grpcpp/client_context.h>
#include <grpcpp/support/sync_stream.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "stubkit/deadline.hpp"
#include "stubkit/detail/input_range.hpp"
#include "stubkit/detail/method.hpp"
#include "stubkit/observe.hpp"
#include "stubkit/status.hpp"
#include "stubkit/trace.hpp"

namespace stubkit {

/// How a stream call is made.
struct StreamOptions {
  /// Deadline of the whole stream; none by default (streams may be long).
  Deadline deadline;
  /// Metadata sent when the stream starts. A `traceparent` here is the
  /// stream's trace (trace.hpp); without one, tracing on adds a new one.
  std::vector<std::pair<std::string, std::string>> metadata;
  /// Told when the stream opens and ends (source "stream"); empty = the
  /// default observer when it opens (observe.hpp), if any.
  std::shared_ptr<Observer> observer;
  /// The method's facts (method.hpp), for the name observers see;
  /// generated clients set it. Unset = found by the message types.
  MethodInfo const* method = nullptr;
};

namespace detail {

// The context of a new stream; `trace` is set to its trace (the
// traceparent of the options' metadata, or a new one when tracing is on).
inline std::unique_ptr<grpc::ClientContext> stream_context(StreamOptions const& options,
                                                           std::optional<TraceContext>* trace) {
  auto ctx = options.deadline.context();
  for (auto const& [key, value] : options.metadata) ctx->AddMetadata(key, value);
  std::string add;
  *trace = outgoing_trace(options.metadata, &add);
  if (!add.empty()) ctx->AddMetadata(kTraceparentKey, add);
  return ctx;
}

// The open and end events of one stream: stream.open when made, one
// stream.end with the status, the messages counted and the time since
// opening. It owns its observer: the stream may outlive the options it was
// opened with. A moved-from watch reports nothing.
class StreamWatch {
 public:
  StreamWatch() = default;
  StreamWatch(std::shared_ptr<Observer> observer, std::string_view method, std::optional<TraceContext> trace)
      : observer_(std::move(observer)), method_(method), trace_(std::move(trace)) {
    if (!observer_) return;
    start_ = std::chrono::steady_clock::now();
    notify(observer_.get(), event(EventType::kStreamOpen));
  }
  StreamWatch(StreamWatch&& other) noexcept { *this = std::move(other); }
  StreamWatch& operator=(StreamWatch&& other) noexcept {
    observer_ = std::move(other.observer_);
    other.observer_.reset();
    method_ = other.method_;
    trace_ = other.trace_;
    start_ = other.start_;
    items_ = other.items_;
    return *this;
  }

  void count() { ++items_; }

  void end(grpc::Status const& status) {
    if (!observer_) return;
    Event e = event(EventType::kStreamEnd);
    e.items = items_;
    std::shared_ptr<Observer> const observer = std::move(observer_);  // once
    observer_.reset();
    notify_end(observer.get(), e, status, start_);
  }

 private:
  Event event(EventType type) const { return event_of(type, "stream", method_, 0, trace_id_of(trace_)); }

  std::shared_ptr<Observer> observer_;
  std::string_view method_;
  std::optional<TraceContext> trace_;
  std::chrono::steady_clock::time_point start_;
  std::int64_t items_ = 0;
};

template <typename Request, typename Response>
StreamWatch watch_stream(StreamOptions const& options, std::optional<TraceContext> const& trace) {
  return StreamWatch(shared_observer(options.observer), method_name<Request, Response>(options.method),
                     trace);
}

// The message type R of a reader/writer handle std::unique_ptr<X<R>>.
template <typename Handle>
struct StreamMessage;
template <template <typename> class Reader, typename R>
struct StreamMessage<std::unique_ptr<Reader<R>>> {
  using type = R;
};

// The write and read types of a bidi handle std::unique_ptr<X<W, R>>.
template <typename Handle>
struct BidiMessages;
template <template <typename, typename> class Stream, typename W, typename R>
struct BidiMessages<std::unique_ptr<Stream<W, R>>> {
  using write = W;
  using read = R;
};

}  // namespace detail

/// A server stream as a lazy input range of Result<Response>. It ends when
/// the server closes the stream: after the last message when the status is
/// OK, or with one final element holding the error otherwise. `filter`, if
/// set, drops messages it returns false for. Cancel from another thread
/// with cancel(). Movable, not copyable; iterate once.
template <typename Response>
class StreamRange : public detail::LazyRange<StreamRange<Response>> {
 public:
  using value_type = Result<Response>;
  using iterator = detail::InputIterator<StreamRange>;

  StreamRange(std::unique_ptr<grpc::ClientContext> ctx,
              std::unique_ptr<grpc::ClientReaderInterface<Response>> reader,
              std::function<bool(Response const&)> filter = {}, detail::StreamWatch watch = {})
      : state_(std::make_unique<State>()) {
    state_->ctx = std::move(ctx);
    state_->reader = std::move(reader);
    state_->filter = std::move(filter);
    state_->watch = std::move(watch);
  }

  StreamRange(StreamRange&&) noexcept = default;
  StreamRange& operator=(StreamRange&&) noexcept = default;

  /// An unfinished stream is cancelled and finished: the call does not outlive the range.
  ~StreamRange() {
    if (state_ && !state_->finished) {
      state_->ctx->TryCancel();
      state_->watch.end(state_->reader->Finish());
    }
  }

  /// Cancels the stream (thread-safe); the range then ends with CANCELLED.
  void cancel() { state_->ctx->TryCancel(); }

  /// The call's context, e.g. to read the server's initial metadata.
  grpc::ClientContext& context() { return *state_->ctx; }

 private:
  friend iterator;
  friend detail::LazyRange<StreamRange>;

  struct State {
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<grpc::ClientReaderInterface<Response>> reader;
    std::function<bool(Response const&)> filter;
    std::optional<value_type> current;
    bool finished = false;
    detail::StreamWatch watch;
  };

  value_type& current() { return *state_->current; }
  bool at_end() const { return !state_->current.has_value(); }

  void advance() {
    auto& s = *state_;
    if (s.finished) {
      s.current.reset();
      return;
    }
    // Reuse the element's message: Read() overwrites it.
    if (!s.current || !s.current->ok()) s.current.emplace(Response());
    while (s.reader->Read(&**s.current)) {
      s.watch.count();
      if (!s.filter || s.filter(**s.current)) return;
    }
    s.finished = true;
    grpc::Status status = s.reader->Finish();
    s.watch.end(status);
    if (status.ok()) {
      s.current.reset();
    } else {
      s.current.emplace(Error::from(status));
    }
  }

  std::unique_ptr<State> state_;  // stable address for iterators across moves
};

/// The messages of a server-streaming method of a generated stub.
template <typename Stub, typename Class, typename Request, typename Handle>
auto read_stream(Stub& stub, Handle (Class::*method)(grpc::ClientContext*, Request const&),
                 Request const& request, StreamOptions const& options = {},
                 std::function<bool(typename detail::StreamMessage<Handle>::type const&)> filter = {}) {
  using Response = typename detail::StreamMessage<Handle>::type;
  std::optional<TraceContext> trace;
  auto ctx = detail::stream_context(options, &trace);
  std::unique_ptr<grpc::ClientReaderInterface<Response>> reader = (stub.*method)(ctx.get(), request);
  return StreamRange<Response>(std::move(ctx), std::move(reader), std::move(filter),
                               detail::watch_stream<Request, Response>(options, trace));
}

/// A client stream: write requests one by one (each write waits for flow
/// control, so nothing piles up in memory), then finish() for the response.
/// Destroying an unfinished writer cancels the call.
template <typename Request, typename Response>
class StreamWriter {
 public:
  StreamWriter(std::unique_ptr<grpc::ClientContext> ctx, std::unique_ptr<Response> response,
               std::unique_ptr<grpc::ClientWriterInterface<Request>> writer, detail::StreamWatch watch = {})
      : ctx_(std::move(ctx)),
        response_(std::move(response)),
        writer_(std::move(writer)),
        watch_(std::move(watch)) {}
  StreamWriter(StreamWriter&&) noexcept = default;
  StreamWriter& operator=(StreamWriter&&) noexcept = default;

  ~StreamWriter() {
    if (writer_ && !finished_) {
      ctx_->TryCancel();
      watch_.end(writer_->Finish());
    }
  }

  /// Sends one request; false when the stream is broken (finish() says why).
  bool write(Request const& request) {
    if (finished_ || !writer_->Write(request)) return false;
    watch_.count();
    return true;
  }

  /// Half-closes the stream and waits for the server's response.
  Result<Response> finish() {
    if (finished_) return Error(grpc::StatusCode::FAILED_PRECONDITION, "the stream was already finished");
    writer_->WritesDone();
    finished_ = true;
    grpc::Status status = writer_->Finish();
    watch_.end(status);
    return to_result(status, std::move(*response_));
  }

  void cancel() { ctx_->TryCancel(); }

 private:
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::unique_ptr<Response> response_;  // written by gRPC at Finish; stable address
  std::unique_ptr<grpc::ClientWriterInterface<Request>> writer_;
  bool finished_ = false;
  detail::StreamWatch watch_;  // counts requests written
};

/// Opens a client-streaming method of a generated stub.
template <typename Stub, typename Class, typename Response, typename Handle>
auto write_stream(Stub& stub, Handle (Class::*method)(grpc::ClientContext*, Response*),
                  StreamOptions const& options = {}) {
  using Request = typename detail::StreamMessage<Handle>::type;
  std::optional<TraceContext> trace;
  auto ctx = detail::stream_context(options, &trace);
  auto response = std::make_unique<Response>();
  std::unique_ptr<grpc::ClientWriterInterface<Request>> writer = (stub.*method)(ctx.get(), response.get());
  return StreamWriter<Request, Response>(std::move(ctx), std::move(response), std::move(writer),
                                         detail::watch_stream<Request, Response>(options, trace));
}

/// A bidirectional stream. One thread may read while another writes (gRPC
/// allows one of each at a time). writes_done() half-closes; finish() waits
/// for the server's status once reading is over. Destroying an unfinished
/// session cancels the call.
template <typename Request, typename Response>
class BidiSession {
 public:
  BidiSession(std::unique_ptr<grpc::ClientContext> ctx,
              std::unique_ptr<grpc::ClientReaderWriterInterface<Request, Response>> stream,
              detail::StreamWatch watch = {})
      : ctx_(std::move(ctx)), stream_(std::move(stream)), watch_(std::move(watch)) {}
  BidiSession(BidiSession&&) noexcept = default;
  BidiSession& operator=(BidiSession&&) noexcept = default;

  ~BidiSession() {
    if (stream_ && !finished_) {
      ctx_->TryCancel();
      Response drain;
      while (stream_->Read(&drain)) {
      }
      watch_.end(stream_->Finish());
    }
  }

  bool write(Request const& request) { return stream_->Write(request); }

  /// Blocks until the server's initial metadata arrives, then returns it.
  /// Call it before the first read(), never beside one. A server sends
  /// initial metadata with its first message at the latest; some (the
  /// embedded Chat) send it as soon as the stream is set up, which lets a
  /// client know it is listening.
  std::multimap<grpc::string_ref, grpc::string_ref> const& wait_for_initial_metadata() {
    stream_->WaitForInitialMetadata();
    return ctx_->GetServerInitialMetadata();
  }

  /// The next message, or nullopt when the server closed its side.
  std::optional<Response> read() {
    Response message;
    if (!stream_->Read(&message)) return std::nullopt;
    watch_.count();
    return message;
  }

  /// Half-closes: no more writes; the server sees the end of its stream.
  bool writes_done() { return stream_->WritesDone(); }

  /// The call's final status, once read() returned nullopt: nullopt = OK.
  std::optional<Error> finish() {
    finished_ = true;
    grpc::Status status = stream_->Finish();
    watch_.end(status);
    if (status.ok()) return std::nullopt;
    return Error::from(status);
  }

  /// Cancels the call (thread-safe): pending and later reads and writes fail.
  void cancel() { ctx_->TryCancel(); }

 private:
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::unique_ptr<grpc::ClientReaderWriterInterface<Request, Response>> stream_;
  bool finished_ = false;
  detail::StreamWatch watch_;  // counts messages read
};

/// Opens a bidirectional-streaming method of a generated stub.
template <typename Stub, typename Class, typename Handle>
auto open_session(Stub& stub, Handle (Class::*method)(grpc::ClientContext*),
                  StreamOptions const& options = {}) {
  using Messages = detail::BidiMessages<Handle>;
  std::optional<TraceContext> trace;
  auto ctx = detail::stream_context(options, &trace);
  Handle stream = (stub.*method)(ctx.get());
  return BidiSession<typename Messages::write, typename Messages::read>(
      std::move(ctx), std::move(stream),
      detail::watch_stream<typename Messages::write, typename Messages::read>(options, trace));
}

}  // namespace stubkit

#endif  // STUBKIT_STREAM_HPP
