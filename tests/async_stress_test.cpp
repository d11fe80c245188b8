// Async calls under stress: thousands of stubkit::async_call in flight at
// once, all started from one thread, with per-call server faults (failed
// attempts, lost deadlines, slow handlers), real alarm backoffs and a
// caller's own schedule, and cancels at random moments from a second
// thread. Every call must complete exactly once, with a status that makes
// sense for what happened to it; nothing may abort, leak (ASan/LSan) or
// hang. An observer must hear each call start and end once, and each
// attempt that starts end.
//
// Then async listings (async_paginate.hpp) under the same stress: hundreds
// in flight at once, each driven by its own completions, with random page
// sizes, prefetch, failing pages, deadlines, and cancels from another
// thread, from inside a completion, or the listing destroyed inside one.
// Every next() must complete exactly once; a listing left alone must yield
// every user once and in order; one cancelled, a prefix of them and then
// CANCELLED.
//
// Then async streams (async_stream.hpp): hundreds of WatchUsers readers and
// BulkCreateUsers writers in flight at once, each driven by its own
// completions: readers replaying a known run of events and closed by the
// server after a random count, cancelled from another thread or inside a
// completion, destroyed inside one, or ended by a deadline; resumable
// watches (async_watch_users) whose every connection the server drops
// after a few events, resumed on an alarm, cancelled inside a completion
// or from another thread; writers
// writing to the end, refused by the server, cancelled from another thread,
// or dropped inside a write's completion. Every next(), write() and
// finish() must complete exactly once; a reader's events must be the known
// run, in order; every handle must be done before the stub goes.
//
//   build/tests/async_stress [--calls N] [--listings N] [--streams N] [--seed N] [--user-server PATH]
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "myservice/v1/user.grpc.pb.h"
#include "process.hpp"
#include "stubkit/async.hpp"
#include "stubkit/async_paginate.hpp"
#include "stubkit/async_stream.hpp"
#include "stubkit/testing/embedded_server.hpp"
#include "stubkit/testing/fault_injector.hpp"
#include "stubkit/user_client.hpp"

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
  int listings = 300;
  int streams = 200;
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

constexpr stubkit::AsyncUnaryMethod<class UserService::Stub::async, myservice::v1::ListUsersRequest,
                                    myservice::v1::ListUsersResponse>
    kListUsers = &UserService::Stub::async::ListUsers;

enum class ListPlan { kWhole, kPagesFail, kDeadline, kCancelLater, kCancelInside, kDestroyInside };
constexpr char const* kListPlanNames[] = {"whole",        "pages_fail",    "deadline",
                                          "cancel_later", "cancel_inside", "destroy_inside"};

using Listing = decltype(stubkit::async_paginate(std::declval<UserService::Stub&>(), kListUsers,
                                                 myservice::v1::ListUsersRequest{}));

// One listing, driven by its own completions: each asks for the next item.
struct ListingRun {
  ListPlan plan = ListPlan::kWhole;
  std::size_t stop_after = 0;  // cancel_inside, destroy_inside: after this many items
  std::optional<Listing> listing;
  stubkit::AsyncHandle handle;  // outlives the listing: done once its last page call is over
  std::atomic<int> asked{0};
  std::atomic<int> answered{0};
  std::vector<std::string> ids;  // written by one completion at a time
  int error = -1;                // the code of the error element, if any
  int errors = 0;                // error elements seen (at most one)
  bool after_end = false;        // an element came after the end
  std::atomic<bool> ended{false};
  std::atomic<bool> cancelled{false};
  std::function<void()> on_end;

  void ask() {
    ++asked;
    listing->next([this](std::optional<stubkit::Result<User>> item) { take(std::move(item)); });
  }

  void take(std::optional<stubkit::Result<User>> item) {
    ++answered;
    if (ended) {
      after_end = true;
      return;
    }
    if (!item) return end();
    if (!item->ok()) {
      error = static_cast<int>(item->error().code());
      ++errors;
    } else {
      ids.push_back((*item)->id());
    }
    if (plan == ListPlan::kCancelInside && ids.size() == stop_after && item->ok()) {
      cancelled = true;
      listing->cancel();  // the next element is CANCELLED, then the end
    }
    if (plan == ListPlan::kDestroyInside && ids.size() == stop_after && item->ok()) {
      cancelled = true;
      listing.reset();  // inside its own completion
      return end();
    }
    ask();
  }

  void end() {
    ended = true;
    on_end();
  }
};

// Runs the listings phase; returns the number of problems found.
int run_listings(UserService::Stub& stub, std::vector<std::string> const& all_ids, Settings const& settings,
                 std::mt19937& random) {
  int const n = settings.listings;
  if (n == 0) return 0;
  std::vector<std::unique_ptr<ListingRun>> runs;
  std::atomic<int> ended{0};
  std::mutex done_mu;
  std::condition_variable done_cv;
  std::mutex queue_mu;
  std::vector<std::pair<Clock::time_point, ListingRun*>> to_cancel;
  std::atomic<bool> stop{false};
  std::thread canceller([&] {
    while (!stop) {
      std::vector<ListingRun*> due;
      {
        std::lock_guard<std::mutex> lock(queue_mu);
        auto const now = Clock::now();
        for (auto it = to_cancel.begin(); it != to_cancel.end();) {
          if (it->first <= now) {
            due.push_back(it->second);
            it = to_cancel.erase(it);
          } else {
            ++it;
          }
        }
      }
      // The listing object is the consumer's; cancel() is thread-safe.
      for (ListingRun* run : due) {
        run->cancelled = true;
        run->listing->cancel();
      }
      std::this_thread::sleep_for(200us);
    }
  });
  auto const start = Clock::now();
  for (int i = 0; i < n; ++i) {
    auto run = std::make_unique<ListingRun>();
    run->plan = static_cast<ListPlan>(random() % 6);
    run->stop_after = 1 + random() % all_ids.size();
    run->on_end = [&] {
      if (++ended == n) {
        std::lock_guard<std::mutex> lock(done_mu);
        done_cv.notify_all();
      }
    };
    stubkit::PaginateOptions options;
    options.page_size = static_cast<int>(1 + random() % 50);
    options.prefetch = random() % 2 == 0;
    stubkit::CallOptions call;
    if (run->plan == ListPlan::kPagesFail) {
      call.metadata = {{stubkit::testing::FaultInjector::kFaultHeader, "code=UNAVAILABLE"}};
    } else if (run->plan == ListPlan::kDeadline) {
      call.metadata = {{stubkit::testing::FaultInjector::kFaultHeader, "latency=10s"}};
      options.deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(20 + random() % 80);
    }
    // ListingRun is not movable (atomics): emplace the listing in place.
    run->listing.emplace(
        stubkit::async_paginate(stub, kListUsers, myservice::v1::ListUsersRequest{}, options, call));
    run->handle = run->listing->handle();
    run->ask();
    if (run->plan == ListPlan::kCancelLater) {
      std::lock_guard<std::mutex> lock(queue_mu);
      to_cancel.emplace_back(Clock::now() + std::chrono::microseconds(random() % 30000), run.get());
    }
    runs.push_back(std::move(run));
  }
  bool finished = false;
  {
    std::unique_lock<std::mutex> lock(done_mu);
    finished = done_cv.wait_for(lock, 120s, [&] { return ended == n; });
  }
  stop = true;
  canceller.join();
  std::this_thread::sleep_for(100ms);  // a late element would land here

  int problems = 0;
  std::map<std::string, std::map<std::string, int>> by_plan;
  auto problem = [&](std::size_t i, std::string const& what) {
    if (++problems <= 10) {
      std::fprintf(stderr, "listing %zu (%s): %s\n", i, kListPlanNames[static_cast<int>(runs[i]->plan)],
                   what.c_str());
    }
  };
  for (std::size_t i = 0; i < runs.size(); ++i) {
    ListingRun& run = *runs[i];
    bool const whole = run.ids == all_ids;
    bool const prefix =
        run.ids.size() <= all_ids.size() && std::equal(run.ids.begin(), run.ids.end(), all_ids.begin());
    auto const code = static_cast<StatusCode>(run.error);
    std::string outcome = run.error < 0 ? (whole ? "whole" : "partial") : stubkit::code_name(code);
    by_plan[kListPlanNames[static_cast<int>(run.plan)]][outcome]++;
    if (!run.ended) problem(i, "never ended");
    if (run.asked != run.answered) {
      problem(i, std::to_string(run.asked) + " next() asked, " + std::to_string(run.answered) + " answered");
    }
    if (run.after_end) problem(i, "an element after the end");
    if (run.errors > 1) problem(i, std::to_string(run.errors) + " error elements");
    if (!prefix) problem(i, "items not a prefix of the listing, in order");
    bool ok = false;
    switch (run.plan) {
      case ListPlan::kWhole:
        ok = whole && run.error < 0;
        break;
      case ListPlan::kPagesFail:
        ok = run.ids.empty() && code == StatusCode::UNAVAILABLE;
        break;
      case ListPlan::kDeadline:
        ok = run.ids.empty() && code == StatusCode::DEADLINE_EXCEEDED;
        break;
      case ListPlan::kCancelLater:
        ok = (whole && run.error < 0) || code == StatusCode::CANCELLED;
        break;
      case ListPlan::kCancelInside:
        ok = run.ids.size() == run.stop_after &&
             (code == StatusCode::CANCELLED || (run.error < 0 && run.stop_after == all_ids.size()));
        break;
      case ListPlan::kDestroyInside:
        ok = run.ids.size() == run.stop_after && run.error < 0;
        break;
    }
    if (!ok) problem(i, "ended as " + outcome + " after " + std::to_string(run.ids.size()) + " items");
  }
  if (!finished) std::fprintf(stderr, "only %d of %d listings ended within 120 s\n", ended.load(), n);
  std::printf("async_stress: %d listings of %zu users done after %.0f ms\n", n, all_ids.size(),
              std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  for (auto const& [plan, outcomes] : by_plan) {
    std::printf("  %-14s", plan.c_str());
    for (auto const& [outcome, count] : outcomes) std::printf(" %s=%d", outcome.c_str(), count);
    std::printf("\n");
  }
  // Every listing's last page call must be over (its handle done) before the stub goes.
  auto all_done = [&] {
    return std::all_of(runs.begin(), runs.end(), [](auto const& r) { return r->handle.done(); });
  };
  for (int i = 0; i < 1000 && !all_done(); ++i) std::this_thread::sleep_for(10ms);
  if (!all_done()) {
    std::fprintf(stderr, "a listing's handle was not done 10 s after every listing ended\n");
    ++problems;
  }
  runs.clear();
  return problems + (finished ? 0 : 1);
}

// A second thread that cancels things at given moments.
class Canceller {
 public:
  Canceller()
      : thread_([this] {
          while (!stop_) {
            std::vector<std::function<void()>> due;
            {
              std::lock_guard<std::mutex> lock(mu_);
              auto const now = Clock::now();
              for (auto it = queue_.begin(); it != queue_.end();) {
                if (it->first <= now) {
                  due.push_back(std::move(it->second));
                  it = queue_.erase(it);
                } else {
                  ++it;
                }
              }
            }
            for (auto& cancel : due) cancel();
            std::this_thread::sleep_for(200us);
          }
        }) {}
  ~Canceller() {
    stop_ = true;
    thread_.join();
  }
  void at(Clock::time_point when, std::function<void()> cancel) {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.emplace_back(when, std::move(cancel));
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<Clock::time_point, std::function<void()>>> queue_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

constexpr stubkit::AsyncReadMethod<class UserService::Stub::async, myservice::v1::WatchUsersRequest,
                                   myservice::v1::UserEvent>
    kWatchUsers = &UserService::Stub::async::WatchUsers;
constexpr stubkit::AsyncWriteMethod<class UserService::Stub::async, myservice::v1::CreateUserRequest,
                                    myservice::v1::BulkResp>
    kBulkCreate = &UserService::Stub::async::BulkCreateUsers;

enum class ReadPlan {
  kClosed,
  kCancelLater,
  kCancelInside,
  kDestroyInside,
  kDeadline,
  kResumeInside,
  kResumeLater
};
constexpr char const* kReadPlanNames[] = {"closed",   "cancel_later",  "cancel_inside", "destroy_inside",
                                          "deadline", "resume_inside", "resume_later"};
enum class WritePlan { kAll, kRefused, kCancelLater, kDropInside };
constexpr char const* kWritePlanNames[] = {"write_all", "refused", "write_cancel_later", "drop_inside"};

// What one stream run saw; its completions run one at a time.
struct StreamRunBase {
  std::atomic<int> asked{0};
  std::atomic<int> answered{0};
  std::atomic<bool> ended{false};
  bool after_end = false;
  int error = -1;  // the code the stream ended with, if not OK
  stubkit::AsyncHandle handle;
  std::function<void()> on_end;

  void end() {
    ended = true;
    on_end();
  }
};

// A WatchUsers reader replaying the events after `after`, driven by its
// own completions.
struct ReadRun : StreamRunBase {
  using Stream = stubkit::AsyncStream<myservice::v1::UserEvent>;
  ReadPlan plan = ReadPlan::kClosed;
  std::size_t close_after = 0;  // closed: the server ends the stream after this many messages
  std::size_t stop_after = 0;   // cancel_inside, destroy_inside: after this many events
  std::optional<Stream> stream;
  std::vector<std::int64_t> sequences;
  int errors = 0;

  void ask() {
    ++asked;
    stream->next(
        [this](std::optional<stubkit::Result<myservice::v1::UserEvent>> event) { take(std::move(event)); });
  }

  void take(std::optional<stubkit::Result<myservice::v1::UserEvent>> event) {
    ++answered;
    if (ended) {
      after_end = true;
      return;
    }
    if (!event) return end();
    if (!event->ok()) {
      error = static_cast<int>(event->error().code());
      ++errors;
    } else {
      sequences.push_back((*event)->sequence());
    }
    bool const stop_inside = plan == ReadPlan::kCancelInside || plan == ReadPlan::kResumeInside;
    if (stop_inside && sequences.size() == stop_after && event->ok()) stream->cancel();
    if (plan == ReadPlan::kDestroyInside && sequences.size() == stop_after && event->ok()) {
      stream.reset();  // inside its own completion
      return end();
    }
    ask();
  }
};

// A BulkCreateUsers writer of `ids`, driven by its own completions.
struct WriteRun : StreamRunBase {
  using Writer = stubkit::AsyncWriter<myservice::v1::CreateUserRequest, myservice::v1::BulkResp>;
  WritePlan plan = WritePlan::kAll;
  std::vector<std::string> ids;
  std::size_t drop_after = 0;
  std::optional<Writer> writer;
  std::size_t written = 0;
  bool refused_write = false;  // a write gave false
  std::int32_t created = -1;

  void write_next() {
    if (written == ids.size()) return finish();
    myservice::v1::CreateUserRequest request;
    request.mutable_user()->set_id(ids[written]);
    request.mutable_user()->set_email(ids[written] + "@example.com");
    ++asked;
    writer->write(std::move(request), [this](bool ok) {
      ++answered;
      if (ended) {
        after_end = true;
        return;
      }
      if (!ok) {
        refused_write = true;
        return finish();
      }
      ++written;
      if (plan == WritePlan::kDropInside && written == drop_after) {
        writer.reset();  // inside its own completion: the call is cancelled
        return end();
      }
      write_next();
    });
  }

  void finish() {
    ++asked;
    writer->finish([this](stubkit::Result<myservice::v1::BulkResp> response) {
      ++answered;
      if (ended) {
        after_end = true;
        return;
      }
      if (response.ok()) {
        created = response->created();
      } else {
        error = static_cast<int>(response.error().code());
      }
      end();
    });
  }
};

// Runs the streams phase; returns the number of problems found.
int run_streams(UserService::Stub& stub, Settings const& settings, std::mt19937& random) {
  int const n = settings.streams;
  if (n == 0) return 0;
  // Where the history ends now: a watch's first heartbeat carries it.
  std::int64_t last = 0;
  for (auto& event :
       stubkit::read_stream(stub, &UserService::Stub::WatchUsers, myservice::v1::WatchUsersRequest{})) {
    if (event.ok()) last = event->sequence();
    break;
  }
  std::int64_t const replay = 150;  // the readers replay the 150 events before `last`
  if (last < replay) {
    std::fprintf(stderr, "async_stress: the history ends at %lld, fewer than %lld events\n",
                 static_cast<long long>(last), static_cast<long long>(replay));
    return 1;
  }
  std::int64_t const after = last - replay;
  std::vector<std::unique_ptr<ReadRun>> readers;
  std::vector<std::unique_ptr<WriteRun>> writers;
  std::atomic<int> ended{0};
  std::mutex done_mu;
  std::condition_variable done_cv;
  auto on_end = [&] {
    if (++ended == n) {
      std::lock_guard<std::mutex> lock(done_mu);
      done_cv.notify_all();
    }
  };
  auto const start = Clock::now();
  {
    Canceller canceller;
    for (int i = 0; i < n; ++i) {
      if (i % 2 == 0) {
        auto run = std::make_unique<ReadRun>();
        run->plan = static_cast<ReadPlan>(random() % 7);
        run->close_after = 1 + random() % replay;
        run->stop_after = 1 + random() % run->close_after;
        run->on_end = on_end;
        myservice::v1::WatchUsersRequest request;
        request.set_after_sequence(after);
        if (run->plan == ReadPlan::kResumeInside || run->plan == ReadPlan::kResumeLater) {
          // The resumable watch: every connection dies after a few events,
          // and the next resumes after the last sequence seen (on an alarm).
          stubkit::ResumableWatchOptions watch;
          watch.after_sequence = after;
          watch.policy.initial_backoff = std::chrono::milliseconds(1);
          watch.policy.max_backoff = std::chrono::milliseconds(5);
          watch.metadata = {{stubkit::testing::FaultInjector::kFaultHeader,
                             "close-stream-after=" + std::to_string(1 + random() % 20)}};
          run->stream.emplace(stubkit::async_watch_users(stub, watch));
        } else {
          stubkit::StreamOptions options;
          if (run->plan == ReadPlan::kDeadline) {
            options.deadline = stubkit::Deadline::after(std::chrono::milliseconds(20 + random() % 80));
          } else {
            options.metadata = {{stubkit::testing::FaultInjector::kFaultHeader,
                                 "close-stream-after=" + std::to_string(run->close_after)}};
          }
          run->stream.emplace(stubkit::async_read_stream(
              stub, kWatchUsers, request, options,
              [](myservice::v1::UserEvent const& e) { return e.type() != "heartbeat"; }));
        }
        run->handle = run->stream->handle();
        run->ask();
        if (run->plan == ReadPlan::kCancelLater || run->plan == ReadPlan::kResumeLater) {
          ReadRun* raw = run.get();
          canceller.at(Clock::now() + std::chrono::microseconds(random() % 30000), [raw] {
            raw->handle.cancel();  // the stream object is the consumer's; its handle is thread-safe
          });
        }
        readers.push_back(std::move(run));
      } else {
        auto run = std::make_unique<WriteRun>();
        run->plan = static_cast<WritePlan>(random() % 4);
        // At most 800 users in all: the server keeps the last 1024 events,
        // so the resumable watches' resume points stay in its history.
        std::size_t const count = 1 + random() % std::max<std::size_t>(1, 800 / std::max(1, n / 2) - 1);
        for (std::size_t j = 0; j < count; ++j) {
          run->ids.push_back("w" + std::to_string(settings.seed) + "-" + std::to_string(i) + "-" +
                             std::to_string(j));
        }
        run->drop_after = 1 + random() % count;
        run->on_end = on_end;
        stubkit::StreamOptions options;
        if (run->plan == WritePlan::kRefused) {
          options.metadata = {{stubkit::testing::FaultInjector::kFaultHeader, "code=PERMISSION_DENIED"}};
        }
        run->writer.emplace(stubkit::async_write_stream(stub, kBulkCreate, options));
        run->handle = run->writer->handle();
        run->write_next();
        if (run->plan == WritePlan::kCancelLater) {
          WriteRun* raw = run.get();
          canceller.at(Clock::now() + std::chrono::microseconds(random() % 30000),
                       [raw] { raw->handle.cancel(); });
        }
        writers.push_back(std::move(run));
      }
    }
    std::unique_lock<std::mutex> lock(done_mu);
    done_cv.wait_for(lock, 120s, [&] { return ended == n; });
  }
  bool const finished = ended == n;
  std::this_thread::sleep_for(100ms);  // a late completion would land here

  int problems = 0;
  std::map<std::string, std::map<std::string, int>> by_plan;
  auto problem = [&](char const* plan, std::size_t i, std::string const& what) {
    if (++problems <= 10) std::fprintf(stderr, "stream %zu (%s): %s\n", i, plan, what.c_str());
  };
  auto common = [&](StreamRunBase const& run, char const* plan, std::size_t i) {
    if (!run.ended) problem(plan, i, "never ended");
    if (run.asked != run.answered) {
      problem(plan, i, std::to_string(run.asked) + " asked, " + std::to_string(run.answered) + " answered");
    }
    if (run.after_end) problem(plan, i, "a completion after the end");
  };
  for (std::size_t i = 0; i < readers.size(); ++i) {
    ReadRun const& run = *readers[i];
    char const* const plan = kReadPlanNames[static_cast<int>(run.plan)];
    common(run, plan, i);
    auto const code = static_cast<StatusCode>(run.error);
    std::string const outcome = run.error < 0 ? "end" : stubkit::code_name(code);
    by_plan[plan][outcome]++;
    if (run.errors > 1) problem(plan, i, std::to_string(run.errors) + " error elements");
    // The events are the replayed run after `after`, in order (live events
    // may follow it for a stream that outlives the replay).
    bool in_order = true;
    for (std::size_t k = 0; k < run.sequences.size(); ++k) {
      std::int64_t const expected = after + 1 + static_cast<std::int64_t>(k);
      if (k < static_cast<std::size_t>(replay) ? run.sequences[k] != expected
                                               : run.sequences[k] <= run.sequences[k - 1]) {
        in_order = false;
      }
    }
    if (!in_order) problem(plan, i, "events not the replayed run, in order");
    std::size_t const got = run.sequences.size();
    bool ok = false;
    switch (run.plan) {
      case ReadPlan::kClosed:
        ok = got == run.close_after && code == StatusCode::UNAVAILABLE;
        break;
      case ReadPlan::kCancelLater:
        ok = (got <= run.close_after && code == StatusCode::CANCELLED) ||
             (got == run.close_after && code == StatusCode::UNAVAILABLE);
        break;
      case ReadPlan::kCancelInside:
        ok = got == run.stop_after && (code == StatusCode::CANCELLED || (run.stop_after == run.close_after &&
                                                                         code == StatusCode::UNAVAILABLE));
        break;
      case ReadPlan::kDestroyInside:
        ok = got == run.stop_after && run.error < 0;
        break;
      case ReadPlan::kDeadline:
        ok = code == StatusCode::DEADLINE_EXCEEDED;
        break;
      case ReadPlan::kResumeInside:  // however many connections it took, the events run on
        ok = got == run.stop_after && code == StatusCode::CANCELLED;
        break;
      case ReadPlan::kResumeLater:
        ok = code == StatusCode::CANCELLED;
        break;
    }
    if (!ok) problem(plan, i, "ended as " + outcome + " after " + std::to_string(got) + " events");
  }
  for (std::size_t i = 0; i < writers.size(); ++i) {
    WriteRun const& run = *writers[i];
    char const* const plan = kWritePlanNames[static_cast<int>(run.plan)];
    common(run, plan, i);
    auto const code = static_cast<StatusCode>(run.error);
    std::string const outcome = run.error >= 0     ? stubkit::code_name(code)
                                : run.created >= 0 ? "OK"
                                                   : "dropped";
    by_plan[plan][outcome]++;
    bool ok = false;
    switch (run.plan) {
      case WritePlan::kAll:
        ok = run.written == run.ids.size() && run.created == static_cast<std::int32_t>(run.ids.size());
        break;
      case WritePlan::kRefused:
        ok = code == StatusCode::PERMISSION_DENIED;
        break;
      case WritePlan::kCancelLater:
        ok = code == StatusCode::CANCELLED ||
             (run.written == run.ids.size() && run.created == static_cast<std::int32_t>(run.ids.size()));
        break;
      case WritePlan::kDropInside:
        ok = run.written == run.drop_after && run.error < 0 && run.created < 0;
        break;
    }
    if (!ok) {
      problem(plan, i,
              "ended as " + outcome + " after " + std::to_string(run.written) + " of " +
                  std::to_string(run.ids.size()) + " writes");
    }
  }
  if (!finished) std::fprintf(stderr, "only %d of %d streams ended within 120 s\n", ended.load(), n);
  std::printf("async_stress: %d streams done after %.0f ms\n", n,
              std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  for (auto const& [plan, outcomes] : by_plan) {
    std::printf("  %-18s", plan.c_str());
    for (auto const& [outcome, count] : outcomes) std::printf(" %s=%d", outcome.c_str(), count);
    std::printf("\n");
  }
  auto all_done = [&] {
    return std::all_of(readers.begin(), readers.end(), [](auto const& r) { return r->handle.done(); }) &&
           std::all_of(writers.begin(), writers.end(), [](auto const& w) { return w->handle.done(); });
  };
  for (int i = 0; i < 1000 && !all_done(); ++i) std::this_thread::sleep_for(10ms);
  if (!all_done()) {
    std::fprintf(stderr, "a stream's handle was not done 10 s after every stream ended\n");
    ++problems;
  }
  return problems + (finished ? 0 : 1);
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
  {
    // The listings list the seeded users plus more, in pages of 1 to 50.
    for (int i = 10; i < 200; ++i) {
      myservice::v1::CreateUserRequest request;
      request.mutable_user()->set_id("user-" + std::to_string(i));
      request.mutable_user()->set_email("user-" + std::to_string(i) + "@example.com");
      grpc::ClientContext ctx;
      myservice::v1::CreateUserResponse response;
      if (!stub->CreateUser(&ctx, request, &response).ok()) ++failures;
    }
    stubkit::UserClient client(channel);
    auto all = client.list_all_users();
    std::vector<std::string> all_ids;
    if (all.ok()) {
      for (auto const& user : *all) all_ids.push_back(user.id());
    }
    if (all_ids.size() != 200) {
      std::fprintf(stderr, "async_stress: the server lists %zu users, not 200\n", all_ids.size());
      ++failures;
    } else {
      failures += run_listings(*stub, all_ids, settings, random);
      failures += run_streams(*stub, settings, random);
    }
  }
  stub.reset();
  channel.reset();
  if (!finished || failures > 0) {
    std::printf("async_stress: FAILED (%d problems)\n", failures);
    return 1;
  }
  std::printf(
      "async_stress: every call, next(), write() and finish() completed exactly once with a sensible "
      "outcome\n");
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
    } else if (std::strcmp(argv[i], "--listings") == 0) {
      settings.listings = std::atoi(value());
    } else if (std::strcmp(argv[i], "--streams") == 0) {
      settings.streams = std::atoi(value());
    } else if (std::strcmp(argv[i], "--seed") == 0) {
      settings.seed = static_cast<unsigned>(std::strtoul(value(), nullptr, 10));
    } else if (std::strcmp(argv[i], "--user-server") == 0) {
      settings.user_server = value();
    } else {
      std::fprintf(
          stderr,
          "usage: async_stress [--calls N] [--listings N] [--streams N] [--seed N] [--user-server PATH]\n");
      return 2;
    }
  }
  if (settings.calls < 1 || settings.listings < 0 || settings.streams < 0) {
    std::fprintf(stderr, "async_stress: --calls must be at least 1, --listings and --streams at least 0\n");
    return 2;
  }
  return run(settings);
}
