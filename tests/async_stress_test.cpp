// Async calls under stress: thousands of stubkit::async_call in flight at
// once, all started from one thread, with per-call server faults (failed
// attempts, lost deadlines, slow handlers), real alarm backoffs and a
// caller's own schedule, and cancels at random moments from a second
// thread. Every call must complete exactly once, with a status that makes
// sense for what happened to it; nothing may abort, leak (ASan/LSan) or
// hang. An observer must hear each call start and end once, and each
// attempt that starts end.
//
//   build/tests/async_stress [--calls N] [--seed N] [--user-server PATH]
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "myservice/v1/user.grpc.pb.h"
#include "process.hpp"
#include "stubkit/async.hpp"
#include "stubkit/testing/embedded_server.hpp"
#include "stubkit/testing/fault_injector.hpp"

namespace {

using namespace std::chrono_literals;
using grpc::StatusCode;
using myservice::v1::User;
using myservice::v1::UserService;
using Clock = std::chrono::steady_clock;

constexpr stubkit::AsyncUnaryMethod<class UserService::Stub::async, myservice::v1::GetUserRequest, User>
    kGetUser = &UserService::Stub::async::GetUser;

enum class Plan { kOk, kNotFound, kFailThenOk, kAlwaysFail, kDeadline, kCancelSlow, kCancelAny };
constexpr char const* kPlanNames[] = {"ok",       "not_found",   "fail_then_ok", "always_fail",
                                      "deadline", "cancel_slow", "cancel_any"};

struct Settings {
  int calls = 5000;
  unsigned seed = 1;
  std::string user_server;
};

struct Heard final : stubkit::Observer {
  std::atomic<int> call_starts{0}, call_ends{0}, attempt_starts{0}, attempt_ends{0};
  void on_event(stubkit::Event const& e) override {
    switch (e.type) {
      case stubkit::EventType::kCallStart:
        ++call_starts;
        break;
      case stubkit::EventType::kCallEnd:
        ++call_ends;
        break;
      case stubkit::EventType::kAttemptStart:
        ++attempt_starts;
        break;
      case stubkit::EventType::kAttemptEnd:
        ++attempt_ends;
        break;
      default:
        break;
    }
  }
};

struct Outcome {
  std::atomic<int> completions{0};
  std::atomic<int> code{-1};
};

// Whether `code` makes sense for a call planned as `plan`.
bool sensible(Plan plan, StatusCode code, bool cancelled) {
  if (cancelled && code == StatusCode::CANCELLED) return true;
  switch (plan) {
    case Plan::kOk:
    case Plan::kFailThenOk:
      return code == StatusCode::OK;
    case Plan::kNotFound:
      return code == StatusCode::NOT_FOUND;
    case Plan::kAlwaysFail:
      return code == StatusCode::UNAVAILABLE;
    case Plan::kDeadline:
      return code == StatusCode::DEADLINE_EXCEEDED;
    case Plan::kCancelSlow:
      return code == StatusCode::CANCELLED || code == StatusCode::OK;
    case Plan::kCancelAny:
      return code == StatusCode::CANCELLED || code == StatusCode::OK || code == StatusCode::UNAVAILABLE;
  }
  return false;
}

int run(Settings const& settings) {
  std::unique_ptr<stubkit::testing::EmbeddedServer> embedded;
  std::unique_ptr<stubkit_tests::Process> process;
  std::string address;
  if (settings.user_server.empty()) {
    stubkit::testing::EmbeddedServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.service.fault_metadata = true;
    embedded = std::make_unique<stubkit::testing::EmbeddedServer>(options);
    address = "127.0.0.1:" + std::to_string(embedded->port());
  } else {
    process = std::make_unique<stubkit_tests::Process>(
        std::vector<std::string>{settings.user_server, "--fault-metadata"});
    address = stubkit_tests::start_user_server(*process);
  }
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = UserService::NewStub(channel);
  {
    for (int i = 0; i < 10; ++i) {
      myservice::v1::CreateUserRequest request;
      request.mutable_user()->set_id("user-" + std::to_string(i));
      request.mutable_user()->set_email("user-" + std::to_string(i) + "@example.com");
      grpc::ClientContext ctx;
      myservice::v1::CreateUserResponse response;
      if (!stub->CreateUser(&ctx, request, &response).ok()) {
        std::fprintf(stderr, "async_stress: could not seed users\n");
        return 1;
      }
    }
  }

  auto heard = std::make_shared<Heard>();
  std::mt19937 random(settings.seed);
  int const n = settings.calls;
  std::vector<Outcome> outcomes(static_cast<std::size_t>(n));
  std::vector<Plan> plans(static_cast<std::size_t>(n));
  std::vector<stubkit::AsyncHandle> handles(static_cast<std::size_t>(n));
  std::vector<std::atomic<bool>> cancelled(static_cast<std::size_t>(n));
  std::atomic<int> completed{0};
  std::mutex done_mu;
  std::condition_variable done_cv;

  // A second thread cancels calls at random moments while they run.
  std::mutex queue_mu;
  std::vector<std::pair<Clock::time_point, int>> to_cancel;
  std::atomic<bool> stop{false};
  std::thread canceller([&] {
    while (!stop) {
      std::vector<std::pair<Clock::time_point, int>> due;
      {
        std::lock_guard<std::mutex> lock(queue_mu);
        auto const now = Clock::now();
        for (auto it = to_cancel.begin(); it != to_cancel.end();) {
          if (it->first <= now) {
            due.push_back(*it);
            it = to_cancel.erase(it);
          } else {
            ++it;
          }
        }
      }
      for (auto const& [when, index] : due) {
        cancelled[static_cast<std::size_t>(index)] = true;
        handles[static_cast<std::size_t>(index)].cancel();
      }
      std::this_thread::sleep_for(200us);
    }
  });

  // The schedule some calls use instead of an alarm: another thread runs done.
  std::mutex timer_mu;
  std::vector<std::function<void()>> timers;
  std::thread timer_thread([&] {
    while (!stop) {
      std::vector<std::function<void()>> due;
      {
        std::lock_guard<std::mutex> lock(timer_mu);
        due.swap(timers);
      }
      for (auto& done : due) done();
      std::this_thread::sleep_for(500us);
    }
  });

  auto const start = Clock::now();
  for (int i = 0; i < n; ++i) {
    auto const index = static_cast<std::size_t>(i);
    Plan const plan = static_cast<Plan>(random() % 7);
    plans[index] = plan;
    stubkit::CallOptions options;
    options.observer = heard;
    options.retry = stubkit::RetryPolicy::standard();
    options.retry->initial_backoff = std::chrono::milliseconds(1 + random() % 5);
    options.timeout = 20s;
    if (random() % 3 == 0) {
      options.schedule = [&timer_mu, &timers](std::chrono::milliseconds, std::function<void()> done) {
        std::lock_guard<std::mutex> lock(timer_mu);
        timers.push_back(std::move(done));
      };
    }
    std::string id = "user-" + std::to_string(random() % 10);
    switch (plan) {
      case Plan::kOk:
        break;
      case Plan::kNotFound:
        id = "nobody";
        break;
      case Plan::kFailThenOk:
        options.metadata = {{stubkit::testing::FaultInjector::kFaultHeader,
                             "code=UNAVAILABLE,attempts=" + std::to_string(1 + random() % 3)}};
        break;
      case Plan::kAlwaysFail:
        options.metadata = {{stubkit::testing::FaultInjector::kFaultHeader, "code=UNAVAILABLE"}};
        break;
      case Plan::kDeadline:
        options.timeout = std::chrono::milliseconds(20 + random() % 100);
        options.metadata = {{stubkit::testing::FaultInjector::kFaultHeader, "latency=10s"}};
        break;
      case Plan::kCancelSlow:
        options.metadata = {{stubkit::testing::FaultInjector::kFaultHeader,
                             "latency=" + std::to_string(random() % 30) + "ms"}};
        break;
      case Plan::kCancelAny:
        if (random() % 2 == 0) {
          options.metadata = {{stubkit::testing::FaultInjector::kFaultHeader, "code=UNAVAILABLE,attempts=2"}};
        }
        break;
    }
    myservice::v1::GetUserRequest request;
    request.set_id(id);
    handles[index] = stubkit::async_call(
        *stub, kGetUser, std::move(request), std::move(options), [&, index](stubkit::Result<User> user) {
          outcomes[index].code = static_cast<int>(user.ok() ? StatusCode::OK : user.error().code());
          if (++outcomes[index].completions == 1 && ++completed == n) {
            std::lock_guard<std::mutex> lock(done_mu);
            done_cv.notify_all();
          }
        });
    if (plan == Plan::kCancelSlow || plan == Plan::kCancelAny) {
      auto const after = std::chrono::microseconds(random() % 40000);
      if (after.count() < 2000 && random() % 2 == 0) {
        cancelled[index] = true;
        handles[index].cancel();  // from this thread, at once
      } else {
        std::lock_guard<std::mutex> lock(queue_mu);
        to_cancel.emplace_back(Clock::now() + after, i);
      }
    }
  }
  auto const started = Clock::now() - start;
  bool finished = false;
  {
    std::unique_lock<std::mutex> lock(done_mu);
    finished = done_cv.wait_for(lock, 120s, [&] { return completed == n; });
  }
  std::this_thread::sleep_for(100ms);  // a second completion would land here
  stop = true;
  canceller.join();
  timer_thread.join();
  for (auto& done : timers) done();  // late wake-ups of finished calls: must do nothing

  int failures = 0;
  std::map<std::string, std::map<int, int>> by_plan;
  for (std::size_t i = 0; i < outcomes.size(); ++i) {
    int const completions = outcomes[i].completions;
    auto const code = static_cast<StatusCode>(outcomes[i].code.load());
    by_plan[kPlanNames[static_cast<int>(plans[i])]][static_cast<int>(code)]++;
    if (completions != 1) {
      if (++failures <= 10) std::fprintf(stderr, "call %zu completed %d times\n", i, completions);
    } else if (!sensible(plans[i], code, cancelled[i])) {
      if (++failures <= 10) {
        std::fprintf(stderr, "call %zu (%s%s) ended with %s\n", i, kPlanNames[static_cast<int>(plans[i])],
                     cancelled[i] ? ", cancelled" : "", stubkit::code_name(code).c_str());
      }
    }
  }
  if (!finished) std::fprintf(stderr, "only %d of %d calls completed within 120 s\n", completed.load(), n);
  if (heard->call_starts != n || heard->call_ends != n || heard->attempt_starts != heard->attempt_ends) {
    std::fprintf(stderr,
                 "observer: %d call starts, %d call ends, %d attempt starts, %d attempt ends (calls: %d)\n",
                 heard->call_starts.load(), heard->call_ends.load(), heard->attempt_starts.load(),
                 heard->attempt_ends.load(), n);
    ++failures;
  }
  std::printf("async_stress: %d calls started in %.0f ms, all done after %.0f ms; attempts %d\n", n,
              std::chrono::duration<double, std::milli>(started).count(),
              std::chrono::duration<double, std::milli>(Clock::now() - start).count(),
              heard->attempt_starts.load());
  for (auto const& [plan, codes] : by_plan) {
    std::printf("  %-13s", plan.c_str());
    for (auto const& [code, count] : codes) {
      std::printf(" %s=%d", stubkit::code_name(static_cast<StatusCode>(code)).c_str(), count);
    }
    std::printf("\n");
  }
  stub.reset();
  channel.reset();
  if (!finished || failures > 0) {
    std::printf("async_stress: FAILED (%d problems)\n", failures);
    return 1;
  }
  std::printf("async_stress: every call completed exactly once with a sensible status\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  for (int i = 1; i < argc; ++i) {
    auto value = [&]() -> char const* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "async_stress: %s needs a value\n", argv[i]);
        std::exit(2);
      }
      return argv[++i];
    };
    if (std::strcmp(argv[i], "--calls") == 0) {
      settings.calls = std::atoi(value());
    } else if (std::strcmp(argv[i], "--seed") == 0) {
      settings.seed = static_cast<unsigned>(std::strtoul(value(), nullptr, 10));
    } else if (std::strcmp(argv[i], "--user-server") == 0) {
      settings.user_server = value();
    } else {
      std::fprintf(stderr, "usage: async_stress [--calls N] [--seed N] [--user-server PATH]\n");
      return 2;
    }
  }
  if (settings.calls < 1) {
    std::fprintf(stderr, "async_stress: --calls must be at least 1\n");
    return 2;
  }
  return run(settings);
}
