// The retry interceptor under stress: thousands of calls through retrying
// channels, in-process and over TCP, from several threads, with server
// faults, deadlines and caller cancels at random points, each call on a
// channel and stub that are dropped the instant the call returns. Every
// call must end with a status that makes sense for what happened to it;
// nothing may abort, leak (ASan/LSan) or hang. An observer on every
// channel must hear each call end once, with the status its caller got,
// and each attempt that starts end.
//
// With --user-server PATH the server is a user_server process instead: no
// server in this process then holds gRPC's callback completion queue, so
// each channel dropped may be the last one, the case in which dropping it
// on a gRPC thread aborts the process (grpc_cq_internal_unref, prior > 0).
//
//   build/tests/retry_stress [--calls N] [--threads N] [--seed N] [--user-server PATH]
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "myservice/v1/user.grpc.pb.h"
#include "process.hpp"
#include "stubkit/channel.hpp"
#include "stubkit/observe.hpp"
#include "stubkit/retry_interceptor.hpp"
#include "stubkit/trace.hpp"
#include "stubkit/testing/embedded_server.hpp"

namespace {

using namespace std::chrono_literals;
using grpc::StatusCode;
using myservice::v1::UserService;
using Clock = std::chrono::steady_clock;

struct Settings {
  int calls = 4000;  // in all, over every thread
  int threads = 4;
  unsigned seed = 1;
  std::string user_server;  // a user_server program to call instead of an embedded server
};

// Where calls go: an embedded server (in-process and TCP channels, faults
// planned through its injector) or a user_server process (TCP only).
struct Target {
  stubkit::testing::EmbeddedServer* embedded = nullptr;
  std::string address;
};

// Cancels a context from a second thread after a delay; the worker waits
// for it before destroying the context (gRPC's rule for TryCancel).
class Canceller {
 public:
  Canceller() : thread_([this] { run(); }) {}
  ~Canceller() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void arm(grpc::ClientContext* ctx, std::chrono::microseconds after) {
    std::lock_guard<std::mutex> lock(mu_);
    ctx_ = ctx;
    after_ = after;
    done_ = false;
    cv_.notify_all();
  }
  void wait_done() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stop_ || ctx_ != nullptr; });
      if (stop_) return;
      auto* ctx = ctx_;
      auto after = after_;
      lock.unlock();
      std::this_thread::sleep_for(after);
      ctx->TryCancel();
      lock.lock();
      ctx_ = nullptr;
      done_ = true;
      cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  grpc::ClientContext* ctx_ = nullptr;
  std::chrono::microseconds after_{0};
  bool done_ = true;
  bool stop_ = false;
  std::thread thread_;
};

struct Tally {
  std::mutex mu;
  std::map<std::string, int> by_outcome;
  std::vector<std::string> problems;
  Clock::duration slowest_cancel{0};
  std::map<std::string, int> by_code;
  void add(std::string const& outcome) {
    std::lock_guard<std::mutex> lock(mu);
    ++by_outcome[outcome];
  }
  void add_code(std::string const& code) {
    std::lock_guard<std::mutex> lock(mu);
    ++by_code[code];
  }
  void problem(std::string what) {
    std::lock_guard<std::mutex> lock(mu);
    if (problems.size() < 20) problems.push_back(std::move(what));
  }
};

// What the observer of every channel heard: call ends by code, and starts
// and ends of calls and attempts; compared with the callers' own tally.
struct Heard final : stubkit::Observer {
  void on_event(stubkit::Event const& e) override {
    // Tracing is on: every call has a trace from its first batch on.
    if (e.trace_id.size() != 32) ++untraced;
    switch (e.type) {
      case stubkit::EventType::kCallStart:
        ++call_starts;
        break;
      case stubkit::EventType::kAttemptStart:
        ++attempt_starts;
        break;
      case stubkit::EventType::kAttemptEnd:
        ++attempt_ends;
        break;
      case stubkit::EventType::kCallEnd: {
        std::lock_guard<std::mutex> lock(mu);
        ++ends_by_code[stubkit::code_name(e.code)];
        break;
      }
      default:
        break;
    }
  }
  std::atomic<int> call_starts{0}, attempt_starts{0}, attempt_ends{0}, untraced{0};
  std::mutex mu;
  std::map<std::string, int> ends_by_code;
};

std::shared_ptr<Heard> const& heard() {
  static auto const observer = std::make_shared<Heard>();
  return observer;
}

stubkit::RetryInterceptorOptions retry_options() {
  stubkit::RetryInterceptorOptions options;
  options.observer = heard();
  options.policy.max_attempts = 4;
  options.policy.initial_backoff = 1ms;
  options.policy.max_backoff = 4ms;
  options.throttle = nullptr;  // every call may retry: the point is to exercise the waits
  return options;
}

void worker(Target const& target, int index, int calls, unsigned seed, Tally& tally) {
  std::mt19937 rng(seed * 7919 + static_cast<unsigned>(index));
  auto chance = [&](int percent) { return static_cast<int>(rng() % 100) < percent; };
  Canceller canceller;
  for (int i = 0; i < calls; ++i) {
    bool const tcp = target.embedded == nullptr || chance(50);
    std::shared_ptr<grpc::Channel> channel;
    if (tcp) {
      stubkit::ChannelOptions options;
      options.retry = retry_options();
      channel = stubkit::make_channel(target.address, options);
    } else {
      std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
      interceptors.push_back(stubkit::retry_interceptor(retry_options()));
      channel = target.embedded->channel(std::move(interceptors));
    }
    auto stub = UserService::NewStub(channel);
    if (target.embedded != nullptr && chance(40)) {
      target.embedded->faults().fail_next("GetUser", 1 + static_cast<int>(rng() % 3),
                                          StatusCode::UNAVAILABLE);
    }

    auto ctx = std::make_unique<grpc::ClientContext>();
    auto const timeout = chance(20) ? std::chrono::milliseconds(1 + rng() % 5) : 5000ms;
    ctx->set_deadline(std::chrono::system_clock::now() + timeout);
    int const cancel_mode = static_cast<int>(rng() % 10);  // 0: before the call, 1-3: during it, else none
    if (cancel_mode == 0) ctx->TryCancel();
    if (cancel_mode >= 1 && cancel_mode <= 3)
      canceller.arm(ctx.get(), std::chrono::microseconds(rng() % 3000));

    myservice::v1::GetUserRequest request;
    request.set_id("u0000000" + std::to_string(1 + rng() % 5));
    myservice::v1::User user;
    grpc::Status status;
    auto const start = Clock::now();
    if (chance(50)) {
      status = stub->GetUser(ctx.get(), request, &user);
    } else {
      std::promise<grpc::Status> done;
      stub->async()->GetUser(ctx.get(), &request, &user, [&done](grpc::Status s) { done.set_value(s); });
      auto future = done.get_future();
      if (future.wait_for(30s) != std::future_status::ready) {
        tally.problem("a callback call never completed");
        std::fprintf(stderr, "retry_stress: a call hung; aborting\n");
        std::abort();
      }
      status = future.get();
    }
    auto const took = Clock::now() - start;
    if (cancel_mode >= 1 && cancel_mode <= 3) canceller.wait_done();

    std::string outcome = stubkit::code_name(status.error_code());
    switch (status.error_code()) {
      case StatusCode::OK:
        if (user.id() != request.id()) tally.problem("OK with the wrong user: " + user.id());
        break;
      case StatusCode::CANCELLED:
        if (cancel_mode > 3) tally.problem("CANCELLED without a cancel: " + status.error_message());
        if (cancel_mode == 0 && took > std::chrono::seconds(1))
          tally.problem("a pre-cancelled call took over 1 s");
        break;
      case StatusCode::UNAVAILABLE:        // faults outlasted the attempts
      case StatusCode::DEADLINE_EXCEEDED:  // the short deadlines
        break;
      default:
        tally.problem("unexpected " + outcome + ": " + status.error_message());
    }
    if (cancel_mode == 0 && status.ok()) tally.problem("a call cancelled before it began succeeded");
    tally.add(std::string(tcp ? "tcp " : "in-process ") + outcome);
    tally.add_code(outcome);
    // The context, then the stub and the channel go at once, on this thread.
    ctx.reset();
    stub.reset();
    channel.reset();
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Every call gets a traceparent: the interceptor's trace is set on the
  // first batch and read by attempts and cancels on other threads.
  stubkit::set_tracing(true);
  Settings settings;
  for (int i = 1; i < argc; ++i) {
    std::string const arg = argv[i];
    auto value = [&]() -> long {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "retry_stress: %s needs a value\n", arg.c_str());
        std::exit(2);
      }
      char* end = nullptr;
      long v = std::strtol(argv[++i], &end, 10);
      if (*end != '\0' || v <= 0) {
        std::fprintf(stderr, "retry_stress: %s wants a positive number, not '%s'\n", arg.c_str(), argv[i]);
        std::exit(2);
      }
      return v;
    };
    if (arg == "--calls") {
      settings.calls = static_cast<int>(value());
    } else if (arg == "--threads") {
      settings.threads = static_cast<int>(value());
    } else if (arg == "--seed") {
      settings.seed = static_cast<unsigned>(value());
    } else if (arg == "--user-server") {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "retry_stress: --user-server needs a path\n");
        return 2;
      }
      settings.user_server = argv[++i];
    } else if (arg == "--help") {
      std::printf("usage: retry_stress [--calls N] [--threads N] [--seed N] [--user-server PATH]\n");
      return 0;
    } else {
      std::fprintf(stderr, "retry_stress: unknown argument '%s' (try --help)\n", arg.c_str());
      return 2;
    }
  }

  Target target;
  std::unique_ptr<stubkit::testing::EmbeddedServer> embedded;
  std::unique_ptr<stubkit_tests::Process> process;
  if (settings.user_server.empty()) {
    stubkit::testing::EmbeddedServerOptions options;
    options.listen_address = "127.0.0.1:0";
    embedded = std::make_unique<stubkit::testing::EmbeddedServer>(options);
    embedded->service().preload(5);
    target.embedded = embedded.get();
    target.address = embedded->address();
  } else {
    process = std::make_unique<stubkit_tests::Process>(
        std::vector<std::string>{settings.user_server, "--preload", "5"});
    target.address = stubkit_tests::start_user_server(*process);
    if (target.address.empty()) {
      std::fprintf(stderr, "retry_stress: %s did not start\n", settings.user_server.c_str());
      return 1;
    }
  }

  Tally tally;
  auto const start = Clock::now();
  {
    std::vector<std::thread> threads;
    for (int t = 0; t < settings.threads; ++t) {
      int const share = settings.calls / settings.threads + (t < settings.calls % settings.threads ? 1 : 0);
      threads.emplace_back([&, t, share] { worker(target, t, share, settings.seed, tally); });
    }
    for (auto& thread : threads) thread.join();
  }
  auto const seconds = std::chrono::duration<double>(Clock::now() - start).count();

  int total = 0;
  for (auto const& [outcome, count] : tally.by_outcome) {
    std::printf("  %-32s %d\n", outcome.c_str(), count);
    total += count;
  }
  std::printf("retry_stress: %d calls on %d threads in %.1f s against %s\n", total, settings.threads, seconds,
              embedded ? "an embedded server" : settings.user_server.c_str());
  if (embedded)
    std::printf("  the server saw %lld GetUser attempts\n",
                static_cast<long long>(embedded->faults().calls("GetUser")));
  // Every call's end was told before its caller had the status.
  Heard const& h = *heard();
  if (h.ends_by_code != tally.by_code)
    tally.problem("the observer heard other call ends than the callers got");
  if (h.call_starts != total) {
    tally.problem("the observer heard " + std::to_string(h.call_starts.load()) + " call starts for " +
                  std::to_string(total) + " calls");
  }
  if (h.untraced != 0) tally.problem(std::to_string(h.untraced.load()) + " events had no trace id");
  if (h.attempt_starts != h.attempt_ends) {
    tally.problem("the observer heard " + std::to_string(h.attempt_starts.load()) + " attempt starts and " +
                  std::to_string(h.attempt_ends.load()) + " ends");
  }
  std::printf("  the observer heard %d call ends and %d attempts\n",
              static_cast<int>(std::accumulate(h.ends_by_code.begin(), h.ends_by_code.end(), 0,
                                               [](int n, auto const& kv) { return n + kv.second; })),
              h.attempt_ends.load());
  for (auto const& problem : tally.problems) std::printf("PROBLEM: %s\n", problem.c_str());
  if (total != settings.calls) std::printf("PROBLEM: %d calls ended, %d started\n", total, settings.calls);
  return tally.problems.empty() && total == settings.calls ? 0 : 1;
}
