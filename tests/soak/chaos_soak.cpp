// chaos_soak: three durable user_server backends are killed with SIGKILL
// and restarted on the same ports and journals, while client threads create,
// update and list users through one round_robin channel with retries and
// request_ids. The backends share nothing, so every acknowledged write is
// filed under the backend that acknowledged it (the stubkit-server-id
// trailer), and at the end each must be readable there.
//
//   chaos_soak --user-server PATH [--duration 60s] [--kill-every 2s]
//              [--down-for 300ms] [--workers 4] [--max-calls N] [--seed S]
//              [--creates round-robin|by-key]
//
// --creates by-key sends every attempt of a create to the backend its
// request_id picks (a shard), instead of any backend through round_robin.
//
// Loopback only, bounded in time (--duration) and calls (--max-calls).
// Prints progress every 5 s, then a report. Exits 1 when an acknowledged
// write was lost, one backend created a request_id twice, or nothing was
// acknowledged at all; 2 on bad flags.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "../process.hpp"
#include "../tool_flags.hpp"
#include "absl/strings/numbers.h"
#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/channel.hpp"
#include "stubkit/retry.hpp"

namespace {

using myservice::v1::UserService;
using Stub = UserService::Stub;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr char const* kMarker = "soak-request-id";
constexpr int kBackends = 3;

struct Flags {
  std::string user_server;
  std::chrono::milliseconds duration = 60s;
  std::chrono::milliseconds kill_every = 2s;
  std::chrono::milliseconds down_for = 300ms;
  int workers = 4;
  std::int64_t max_calls = 1'000'000;
  std::uint32_t seed = 1;
  bool creates_by_key = false;  // --creates by-key: a create always goes to the backend its request_id picks
};

Flags parse_flags(int argc, char** argv) {
  stubkit_tests::FlagReader flags_in(
      argc, argv, "chaos_soak",
      "chaos_soak --user-server PATH [--duration 60s] [--kill-every 2s] "
      "[--down-for 300ms]\n                  [--workers 4] [--max-calls N] [--seed S] "
      "[--creates round-robin|by-key]\n");
  Flags flags;
  while (flags_in.next()) {
    auto const flag = flags_in.flag();
    if (flag == "--user-server") {
      flags.user_server = flags_in.text();
    } else if (flag == "--duration") {
      flags.duration = flags_in.duration();
    } else if (flag == "--kill-every") {
      flags.kill_every = flags_in.duration();
    } else if (flag == "--down-for") {
      flags.down_for = flags_in.duration();
    } else if (flag == "--workers") {
      flags.workers = static_cast<int>(flags_in.integer(1, 64));
    } else if (flag == "--max-calls") {
      flags.max_calls = flags_in.integer(1, 1'000'000'000);
    } else if (flag == "--creates") {
      if (flags_in.text() != "round-robin" && flags_in.text() != "by-key") {
        flags_in.fail("--creates wants round-robin or by-key, got '" + flags_in.text() + "'");
      }
      flags.creates_by_key = flags_in.text() == "by-key";
    } else if (flag == "--seed") {
      flags.seed = static_cast<std::uint32_t>(flags_in.integer(0, 0xffffffff));
    } else {
      flags_in.fail("unknown flag " + std::string(flag));
    }
  }
  if (flags.user_server.empty()) flags_in.fail("--user-server is required");
  if (access(flags.user_server.c_str(), X_OK) != 0) flags_in.fail("cannot execute " + flags.user_server);
  return flags;
}

// One user_server process, restartable on the same port and journal.
class Backend {
 public:
  Backend(std::string program, std::string id, std::string data)
      : program_(std::move(program)), id_(std::move(id)), data_(std::move(data)) {}

  std::string const& id() const { return id_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  // Starts the process; the first start picks the port, later ones reuse it.
  bool start() {
    for (int tries = 0; tries < 50; ++tries) {
      process_ = std::make_unique<stubkit_tests::Process>(std::vector<std::string>{
          program_, "--port", std::to_string(port_), "--data", data_, "--server-id", id_});
      std::string const address = stubkit_tests::start_user_server(*process_);
      if (!address.empty()) {
        int port = 0;
        if (!absl::SimpleAtoi(address.substr(address.rfind(':') + 1), &port)) return false;
        port_ = port;
        return true;
      }
      process_.reset();
      std::this_thread::sleep_for(100ms);  // e.g. the port is not free yet
    }
    return false;
  }

  void kill() { process_.reset(); }  // SIGKILL and reap
  bool running() const { return process_ != nullptr; }

 private:
  std::string program_;
  std::string id_;
  std::string data_;
  int port_ = 0;
  std::unique_ptr<stubkit_tests::Process> process_;
};

// An acknowledged write: after the soak, `user_id` on `backend` must exist,
// carry `request_id`, and be at `version` or later.
struct Ack {
  std::string backend;
  std::string user_id;
  std::string request_id;
  int version = 0;
};

struct Totals {
  std::mutex mu;
  std::map<std::string, std::int64_t> calls;   // by operation
  std::map<std::string, std::int64_t> failed;  // by operation and code, after retries
  std::int64_t retries = 0;
  std::int64_t wrong_backend = 0;  // an update answered by a backend other than the owner
  std::vector<Ack> acks;           // the latest acknowledgement per user
};

std::string version_name(int v) { return "v" + std::to_string(v); }

stubkit::RetryPolicy soak_policy() {
  stubkit::RetryPolicy policy;
  // Enough to outlast a backend that is down for a few hundred ms and
  // restarting: about 3 s of waits on average.
  policy.max_attempts = 10;
  policy.initial_backoff = 50ms;
  policy.max_backoff = 1s;
  return policy;
}

stubkit::ChannelOptions channel_options(std::string load_balancing) {
  stubkit::ChannelOptions options;
  options.load_balancing = std::move(load_balancing);
  // A restarted backend is used again within 250 ms, not gRPC's up to 120 s.
  options.initial_reconnect_backoff = 100ms;
  options.max_reconnect_backoff = 250ms;
  return options;
}

class Soak {
 public:
  Soak(Flags flags, std::filesystem::path dir)
      : flags_(std::move(flags)), dir_(std::move(dir)), rng_(flags_.seed) {
    for (int i = 0; i < kBackends; ++i) {
      std::string const id = "b" + std::to_string(i);
      backends_.push_back(
          std::make_unique<Backend>(flags_.user_server, id, (dir_ / (id + ".journal")).string()));
    }
  }

  int run() {
    std::string target = "ipv4:";
    for (auto& backend : backends_) {
      if (!backend->start()) return fail("cannot start " + backend->id());
      target += (target.size() > 5 ? "," : "") + backend->address();
      direct_[backend->id()] =
          UserService::NewStub(stubkit::make_channel(backend->address(), channel_options("round_robin")));
    }
    balanced_ = UserService::NewStub(stubkit::make_channel(target, channel_options("round_robin")));
    std::cout << "chaos_soak: 3 backends at " << target.substr(5) << ", " << flags_.workers << " workers, "
              << flags_.duration.count() / 1000.0 << " s, a SIGKILL every " << flags_.kill_every.count()
              << " ms" << std::endl;

    auto const start = Clock::now();
    deadline_ = start + flags_.duration;
    std::vector<std::thread> threads;
    for (int w = 0; w < flags_.workers; ++w) threads.emplace_back([this, w] { work(w); });
    std::thread killer([this] { chaos(); });
    while (Clock::now() < deadline_ && !stop_) {
      std::unique_lock<std::mutex> lock(stop_mu_);
      stop_cv_.wait_until(lock, std::min(deadline_, Clock::now() + 5s), [this] { return stop_.load(); });
      print_progress(start);
    }
    stop_ = true;
    stop_cv_.notify_all();
    for (auto& t : threads) t.join();
    killer.join();
    auto const elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    for (auto& backend : backends_) {
      if (!backend->running() && !backend->start()) {
        return fail("cannot restart " + backend->id() + " to check it");
      }
    }
    return verify(elapsed);
  }

 private:
  int fail(std::string const& message) {
    std::cerr << "chaos_soak: " << message << "\n";
    return 1;
  }

  void print_progress(Clock::time_point start) {
    std::lock_guard<std::mutex> lock(totals_.mu);
    std::int64_t calls = 0;
    for (auto const& [op, n] : totals_.calls) calls += n;
    std::cout << "  t=" << std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - start).count()
              << "s calls=" << calls << " acknowledged=" << acknowledged_.load() << " kills=" << kills_.load()
              << std::endl;
  }

  stubkit::CallOptions call_options(std::multimap<std::string, std::string>* trailers,
                                    stubkit::RetryReport* report) {
    stubkit::CallOptions options;
    options.report = report;
    options.timeout = 10s;
    options.retry = soak_policy();
    options.trailers = trailers;
    options.on_retry = [this](stubkit::RetryEvent const&) {
      std::lock_guard<std::mutex> lock(totals_.mu);
      ++totals_.retries;
    };
    return options;
  }

  // Counts a finished call; the first few failures are explained on stderr.
  template <typename T>
  void count(std::string const& op, stubkit::Result<T> const& result, stubkit::RetryReport const& report) {
    std::lock_guard<std::mutex> lock(totals_.mu);
    ++totals_.calls[op];
    if (result.ok()) return;
    if (++totals_.failed[op + " " + stubkit::code_name(result.error().code())] <= 3) {
      std::cerr << "chaos_soak: " << op << " failed after " << report.attempts << " attempts and "
                << report.total_delay.count() << " ms of waits (" << report.stop_reason
                << "): " << result.error().message() << "\n";
    }
  }

  static std::string server_of(std::multimap<std::string, std::string> const& trailers) {
    auto it = trailers.find("stubkit-server-id");
    return it == trailers.end() ? "" : it->second;
  }

  void work(int worker) {
    std::mt19937 rng(flags_.seed * 7919u + static_cast<std::uint32_t>(worker));
    std::uniform_real_distribution<double> pick(0.0, 1.0);
    std::vector<Ack> owned;  // this worker's users; only it updates them
    for (int n = 0; !stop_ && Clock::now() < deadline_; ++n) {
      if (issued_.fetch_add(1) >= flags_.max_calls) break;
      double const r = pick(rng);
      if (r < 0.5 || owned.empty()) {
        create(worker, n, &owned);
      } else if (r < 0.8) {
        update(owned[std::uniform_int_distribution<std::size_t>(0, owned.size() - 1)(rng)]);
      } else {
        list();
      }
    }
    std::lock_guard<std::mutex> lock(totals_.mu);
    totals_.acks.insert(totals_.acks.end(), owned.begin(), owned.end());
  }

  void create(int worker, int n, std::vector<Ack>* owned) {
    myservice::v1::CreateUserRequest request;
    request.set_request_id("w" + std::to_string(worker) + "-" + std::to_string(n));
    request.mutable_user()->set_display_name(version_name(0));
    (*request.mutable_user()->mutable_metadata())[kMarker] = request.request_id();
    std::multimap<std::string, std::string> trailers;
    stubkit::RetryReport report;
    auto options = call_options(&trailers, &report);
    Stub* stub = balanced_.get();
    if (flags_.creates_by_key) {
      // Every attempt of one create goes to the same backend, waiting for it
      // while it restarts: a reply lost with the backend cannot lead to a
      // second copy elsewhere.
      auto const backend = "b" + std::to_string(std::hash<std::string>{}(request.request_id()) % kBackends);
      stub = direct_[backend].get();
      options.wait_for_ready = true;
    }
    auto result = stubkit::call(*stub, &Stub::CreateUser, request, options);
    count("CreateUser", result, report);
    if (!result.ok()) return;
    owned->push_back({server_of(trailers), result->user().id(), request.request_id(), 0});
    ++acknowledged_;
  }

  void update(Ack& user) {
    myservice::v1::UpdateUserRequest request;
    request.mutable_user()->set_id(user.user_id);
    request.mutable_user()->set_display_name(version_name(user.version + 1));
    request.mutable_update_mask()->add_paths("display_name");
    std::multimap<std::string, std::string> trailers;
    stubkit::RetryReport report;
    auto options = call_options(&trailers, &report);
    options.idempotent = true;  // it sets a value: applying it twice is applying it once
    // The user lives on one backend only: wait for it while it restarts.
    options.wait_for_ready = true;
    auto it = direct_.find(user.backend);
    if (it == direct_.end()) return;
    auto result = stubkit::call(*it->second, &Stub::UpdateUser, request, options);
    count("UpdateUser", result, report);
    if (!result.ok()) return;
    if (server_of(trailers) != user.backend) {
      std::lock_guard<std::mutex> lock(totals_.mu);
      ++totals_.wrong_backend;
    }
    ++user.version;
    ++acknowledged_;
  }

  void list() {
    myservice::v1::ListUsersRequest request;
    request.set_page_size(50);
    stubkit::RetryReport report;
    auto result = stubkit::call(*balanced_, &Stub::ListUsers, request, call_options(nullptr, &report));
    count("ListUsers", result, report);
  }

  // Kills a random backend every kill_every and restarts it after down_for.
  void chaos() {
    std::unique_lock<std::mutex> lock(stop_mu_);
    while (!stop_cv_.wait_for(lock, flags_.kill_every, [this] { return stop_.load(); })) {
      auto& backend = *backends_[std::uniform_int_distribution<int>(0, kBackends - 1)(rng_)];
      lock.unlock();
      auto const down = Clock::now();
      backend.kill();
      ++kills_;
      std::this_thread::sleep_for(flags_.down_for);
      if (!backend.start()) {
        std::cerr << "chaos_soak: " << backend.id() << " did not restart\n";
        ++restart_failures_;
      }
      auto const outage = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - down);
      longest_outage_ = std::max(longest_outage_, outage);
      lock.lock();
    }
  }

  // Everything on `backend`, listed page by page over a fresh connection
  // (the soak's own may still be waiting to reconnect).
  static std::map<std::string, myservice::v1::User> read_all(Backend const& backend, bool* complete) {
    std::map<std::string, myservice::v1::User> users;
    auto channel = stubkit::make_channel(backend.address(), channel_options("round_robin"));
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + 10s)) {
      std::cerr << "chaos_soak: cannot connect to " << backend.id() << " to check it\n";
      *complete = false;
      return users;
    }
    auto stub = UserService::NewStub(channel);
    stubkit::CallOptions options;
    options.timeout = 30s;
    options.retry = soak_policy();
    myservice::v1::ListUsersRequest request;
    request.set_page_size(100);
    do {
      auto page = stubkit::call(*stub, &Stub::ListUsers, request, options);
      if (!page.ok()) {
        std::cerr << "chaos_soak: cannot list " << backend.id() << ": " << page.error().message() << "\n";
        *complete = false;
        return users;
      }
      for (auto const& user : page->users()) users[user.id()] = user;
      request.set_page_token(page->next_page_token());
    } while (!request.page_token().empty());
    return users;
  }

  int verify(double elapsed) {
    std::map<std::string, std::map<std::string, myservice::v1::User>> stored;
    std::set<std::string> unchecked;  // backends that could not be read back
    for (auto& backend : backends_) {
      bool complete = true;
      stored[backend->id()] = read_all(*backend, &complete);
      if (!complete) unchecked.insert(backend->id());
    }

    std::int64_t lost = 0;
    std::int64_t unverified = 0;
    for (auto const& ack : totals_.acks) {
      if (unchecked.count(ack.backend) != 0) {
        ++unverified;
        continue;
      }
      auto const& users = stored[ack.backend];
      auto it = users.find(ack.user_id);
      bool ok = it != users.end();
      if (ok) {
        auto marker = it->second.metadata().find(kMarker);
        int version = -1;
        absl::SimpleAtoi(absl::string_view(it->second.display_name()).substr(1), &version);
        ok = marker != it->second.metadata().end() && marker->second == ack.request_id &&
             version >= ack.version;
      }
      if (!ok) {
        ++lost;
        if (lost <= 10) {
          std::cerr << "chaos_soak: lost " << ack.user_id << " (" << ack.request_id << ", "
                    << version_name(ack.version) << ") acknowledged by " << ack.backend << "\n";
        }
      }
    }
    // A request_id stored twice on one backend is a broken idempotency key.
    // On two backends it is a create whose reply was lost (the backend died
    // after storing it) and whose retry went to another backend.
    std::int64_t same_backend = 0;
    std::int64_t across_backends = 0;
    std::map<std::string, std::set<std::string>> where;
    for (auto const& [backend, users] : stored) {
      std::map<std::string, int> seen;
      for (auto const& [id, user] : users) {
        auto marker = user.metadata().find(kMarker);
        if (marker == user.metadata().end()) continue;
        if (++seen[marker->second] == 2) ++same_backend;
        where[marker->second].insert(backend);
      }
    }
    for (auto const& [request_id, backends] : where) across_backends += backends.size() > 1 ? 1 : 0;

    std::int64_t calls = 0;
    std::cout << "\nchaos_soak report (" << elapsed << " s, seed " << flags_.seed << ", creates "
              << (flags_.creates_by_key ? "by key" : "round-robin") << ")\n";
    for (auto const& [op, n] : totals_.calls) {
      std::cout << "  calls " << op << ": " << n << "\n";
      calls += n;
    }
    std::cout << "  calls: " << calls << " (" << static_cast<std::int64_t>(calls / elapsed) << "/s)\n"
              << "  attempts retried: " << totals_.retries << "\n"
              << "  backend kills (SIGKILL): " << kills_.load()
              << ", failed restarts: " << restart_failures_.load()
              << ", longest outage: " << longest_outage_.count() << " ms\n"
              << "  acknowledged writes: " << acknowledged_.load() << " (" << totals_.acks.size()
              << " users)\n"
              << "  lost acknowledged writes: " << lost << "\n"
              << "  acknowledged users not checked (backend unreadable): " << unverified << "\n"
              << "  duplicate creates of one request_id on one backend: " << same_backend << "\n"
              << "  request_ids stored on two backends (reply lost, retried elsewhere): " << across_backends
              << "\n"
              << "  updates answered by another backend: " << totals_.wrong_backend << "\n";
    std::cout << "  failed calls by code (after retries):";
    if (totals_.failed.empty()) std::cout << " none";
    for (auto const& [code, n] : totals_.failed) std::cout << "\n    " << code << ": " << n;
    std::cout << std::endl;

    bool const passed = unchecked.empty() && lost == 0 && same_backend == 0 && acknowledged_ > 0 &&
                        totals_.wrong_backend == 0 && restart_failures_ == 0;
    std::cout << (passed ? "PASS" : "FAIL") << std::endl;
    return passed ? 0 : 1;
  }

  Flags flags_;
  std::filesystem::path dir_;
  std::mt19937 rng_;  // the chaos thread's
  std::vector<std::unique_ptr<Backend>> backends_;
  std::map<std::string, std::unique_ptr<Stub>> direct_;  // by backend id
  std::unique_ptr<Stub> balanced_;
  Clock::time_point deadline_;
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  std::atomic<bool> stop_{false};
  std::atomic<std::int64_t> issued_{0};
  std::atomic<std::int64_t> acknowledged_{0};
  std::atomic<int> kills_{0};
  std::atomic<int> restart_failures_{0};
  std::chrono::milliseconds longest_outage_{0};  // written by the chaos thread, read after it ends
  Totals totals_;
};

}  // namespace

int main(int argc, char** argv) {
  Flags flags = parse_flags(argc, argv);
  std::signal(SIGPIPE, SIG_IGN);
  std::string pattern = (std::filesystem::temp_directory_path() / "chaos-soak-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) {
    std::cerr << "chaos_soak: cannot make a temporary directory\n";
    return 1;
  }
  std::filesystem::path const dir = pattern;
  int status = 1;
  {
    Soak soak(std::move(flags), dir);
    status = soak.run();
  }
  std::filesystem::remove_all(dir);
  return status;
}
