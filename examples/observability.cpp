// observability: seeing what stubkit does, call by call.
//
// Shows: a LogObserver writing one logfmt line per event (here to stdout),
// a hand-written observer counting events, both fed by fan_out; an observer
// on a channel (every plain stub call, with the retry interceptor's attempts
// and waits), on one stubkit::call, and on a listing; and a call with
// tracing on, whose lines carry its W3C trace id. Logs for every call of a
// program, without code: run it with STUBKIT_LOG=rpc (lines on stderr), and
// STUBKIT_TRACE=w3c for trace ids.
//
// Faults are asked of the server with the stubkit-fault request header, so
// the same code runs against the embedded server and against
// `user_server --preload 30 --fault-metadata`.
//
//   observability [--target HOST:PORT] [--token T]
#include <array>
#include <atomic>
#include <chrono>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>

#include "example.hpp"
#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/observe.hpp"
#include "stubkit/paginate.hpp"
#include "stubkit/retry.hpp"
#include "stubkit/trace.hpp"
#include "stubkit/user_client.hpp"

using myservice::v1::UserService;
using namespace std::chrono_literals;

// Counts events by type: the shape of a metrics exporter.
struct Counts final : stubkit::Observer {
  void on_event(stubkit::Event const& event) override {
    counts[static_cast<std::size_t>(event.type)].fetch_add(1, std::memory_order_relaxed);
  }
  int operator[](stubkit::EventType type) const { return counts[static_cast<std::size_t>(type)].load(); }
  std::array<std::atomic<int>, 11> counts{};
};

int main(int argc, char** argv) {
  auto const flags = example::parse(argc, argv, "observability", "logging and counting calls, retries and pages",
                                    "user_server --preload 30 --fault-metadata");
  example::Servers servers(flags, /*preload=*/30);

  // One line per event on stdout; a real program would keep the default
  // (stderr) or hand lines to its logger.
  std::mutex out;
  stubkit::LogOptions log_options;
  log_options.timestamps = false;  // shorter lines for the example
  log_options.sink = [&](std::string_view line) {
    std::lock_guard<std::mutex> lock(out);
    std::cout << "  " << line << "\n";
  };
  auto counts = std::make_shared<Counts>();
  auto observer = stubkit::fan_out({std::make_shared<stubkit::LogObserver>(log_options), counts});

  // Every call on a channel: the retry interceptor reports each attempt,
  // its wait and the end (source=channel).
  stubkit::ChannelOptions channel_options;
  channel_options.retry = stubkit::RetryInterceptorOptions{};
  channel_options.observer = observer;
  auto stub = UserService::NewStub(servers.channel(channel_options));
  std::cout << "GetUser on a retrying channel, first attempt fails:\n";
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  ctx.AddMetadata("stubkit-fault", "code=UNAVAILABLE,attempts=1");
  myservice::v1::GetUserRequest request;
  request.set_id("u00000001");
  myservice::v1::User user;
  grpc::Status status = stub->GetUser(&ctx, request, &user);
  bool ok = status.ok();

  // One call site (source=call): a code that is not retried gives up at once.
  std::cout << "stubkit::call for a user that does not exist:\n";
  auto plain = UserService::NewStub(servers.channel());
  stubkit::CallOptions call_options;
  call_options.timeout = 5s;
  call_options.retry = stubkit::RetryPolicy::standard();
  call_options.observer = observer;
  request.set_id("nobody-" + example::run_tag());
  auto missing = stubkit::call(*plain, &UserService::Stub::GetUser, request, call_options);
  ok = ok && missing.error().is<stubkit::NotFound>();

  // A listing (source=paginate): one line per page.
  std::cout << "listing 25 users, 10 per page:\n";
  stubkit::PaginateOptions paging;
  paging.page_size = 10;
  paging.max_items = 25;
  paging.observer = observer;
  auto users = stubkit::paginate(*plain, &UserService::Stub::ListUsers, myservice::v1::ListUsersRequest(), paging)
                   .collect();
  ok = ok && users.ok() && users->size() == 25;

  using stubkit::EventType;
  std::cout << "counted: " << (*counts)[EventType::kCallEnd] << " calls, " << (*counts)[EventType::kAttemptEnd]
            << " attempts, " << (*counts)[EventType::kRetry] << " retries, " << (*counts)[EventType::kGiveUp]
            << " give-ups, " << (*counts)[EventType::kPage] << " pages\n";
  if (!servers.remote()) {
    // Two calls (GetUser twice), three attempts, one retry, one give-up, three pages.
    ok = ok && (*counts)[EventType::kCallEnd] == 2 && (*counts)[EventType::kAttemptEnd] == 3 &&
         (*counts)[EventType::kRetry] == 1 && (*counts)[EventType::kGiveUp] == 1 && (*counts)[EventType::kPage] == 3;
  }

  // Tracing: the call sends a new traceparent (every attempt the same), and
  // each of its lines names the trace. A server that calls on passes it
  // down with stubkit::child_context.
  std::cout << "stubkit::call with tracing on:\n";
  stubkit::set_tracing(true);
  stubkit::CallOptions traced;
  traced.timeout = 5s;
  traced.observer = std::make_shared<stubkit::LogObserver>(log_options);
  request.set_id("u00000001");
  ok = stubkit::call(*plain, &UserService::Stub::GetUser, request, traced).ok() && ok;
  stubkit::set_tracing(false);
  return ok ? 0 : 1;
}
