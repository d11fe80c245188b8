// stubkit-load: many concurrent clients and watch streams against one
// user_server process. Runs the same workload through raw generated stubs
// and through stubkit::call (timeout + retry policy), in alternating rounds,
// and reports throughput, p50/p99 latency and the server's memory over time.
//
//   stubkit-load --user-server PATH [--clients 16] [--streams 32]
//                [--rounds 3] [--round-time 5s] [--users 1000]
//
// Workload per client, one call at a time: 70% GetUser, 20% ListUsers (a
// page of 50), 10% UpdateUser of an existing user (so the store does not
// grow and memory should stay flat). Every UpdateUser reaches each open
// WatchUsers stream as an event. Each client has its own connection.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "../process.hpp"
#include "../tool_flags.hpp"
#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/retry.hpp"

namespace {

using myservice::v1::UserService;
using Stub = UserService::Stub;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct Flags {
  std::string user_server;
  int clients = 16;
  int streams = 32;
  int rounds = 3;
  std::chrono::milliseconds round_time = 5s;
  int users = 1000;
};

Flags parse_flags(int argc, char** argv) {
  stubkit_tests::FlagReader flags_in(
      argc, argv, "stubkit-load",
      "stubkit-load --user-server PATH [--clients 16] [--streams 32] [--rounds 3]\n"
      "                    [--round-time 5s] [--users 1000]\n");
  Flags flags;
  while (flags_in.next()) {
    auto const flag = flags_in.flag();
    if (flag == "--user-server") {
      flags.user_server = flags_in.text();
    } else if (flag == "--clients") {
      flags.clients = static_cast<int>(flags_in.integer(1, 1000));
    } else if (flag == "--streams") {
      flags.streams = static_cast<int>(flags_in.integer(0, 10000));
    } else if (flag == "--rounds") {
      flags.rounds = static_cast<int>(flags_in.integer(1, 100));
    } else if (flag == "--users") {
      flags.users = static_cast<int>(flags_in.integer(1, 1'000'000));
    } else if (flag == "--round-time") {
      flags.round_time = flags_in.duration();
    } else {
      flags_in.fail("unknown flag " + std::string(flag));
    }
  }
  if (flags.user_server.empty()) flags_in.fail("--user-server is required");
  return flags;
}

std::shared_ptr<grpc::Channel> own_connection(std::string const& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a TCP connection per client
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

struct RoundResult {
  std::int64_t calls = 0;
  std::int64_t failures = 0;
  double seconds = 0;
  std::vector<std::int64_t> latencies_us;
};

// One client's loop: the workload through raw stubs or stubkit::call.
void client_loop(Stub& stub, bool with_stubkit, std::vector<std::string> const& ids, std::uint32_t seed,
                 std::atomic<bool> const& stop, RoundResult* out) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::size_t> pick_id(0, ids.size() - 1);
  std::uniform_int_distribution<int> pick_op(0, 99);
  stubkit::CallOptions options;
  options.timeout = 5s;
  options.retry = stubkit::RetryPolicy::standard();
  options.idempotent = true;  // the updates set values
  auto raw_context = [] {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + 5s);
    return ctx;
  };
  while (!stop.load(std::memory_order_relaxed)) {
    int const op = pick_op(rng);
    std::string const& id = ids[pick_id(rng)];
    auto const start = Clock::now();
    std::string error;  // empty = the call succeeded
    auto raw = [&error](grpc::Status const& status) {
      if (!status.ok()) error = stubkit::code_name(status.error_code()) + ": " + status.error_message();
    };
    auto via_stubkit = [&error](auto const& result) {
      if (!result.ok()) error = stubkit::code_name(result.error().code()) + ": " + result.error().message();
    };
    if (op < 70) {
      myservice::v1::GetUserRequest request;
      request.set_id(id);
      if (with_stubkit) {
        via_stubkit(stubkit::call(stub, &Stub::GetUser, request, options));
      } else {
        myservice::v1::User user;
        raw(stub.GetUser(raw_context().get(), request, &user));
      }
    } else if (op < 90) {
      myservice::v1::ListUsersRequest request;
      request.set_page_size(50);
      if (with_stubkit) {
        via_stubkit(stubkit::call(stub, &Stub::ListUsers, request, options));
      } else {
        myservice::v1::ListUsersResponse page;
        raw(stub.ListUsers(raw_context().get(), request, &page));
      }
    } else {
      myservice::v1::UpdateUserRequest request;
      request.mutable_user()->set_id(id);
      request.mutable_user()->set_display_name("load " + std::to_string(op));
      request.mutable_update_mask()->add_paths("display_name");
      if (with_stubkit) {
        via_stubkit(stubkit::call(stub, &Stub::UpdateUser, request, options));
      } else {
        myservice::v1::User user;
        raw(stub.UpdateUser(raw_context().get(), request, &user));
      }
    }
    out->latencies_us.push_back(
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count());
    ++out->calls;
    if (!error.empty() && ++out->failures <= 3) std::cerr << "stubkit-load: a call failed: " << error << "\n";
  }
}

std::int64_t percentile(std::vector<std::int64_t>& v, double p) {
  if (v.empty()) return 0;
  auto const k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

}  // namespace

int main(int argc, char** argv) {
  Flags const flags = parse_flags(argc, argv);
  stubkit_tests::Process server(
      {flags.user_server, "--preload", std::to_string(flags.users), "--heartbeat", "1s"});
  std::string const address = stubkit_tests::start_user_server(server);
  if (address.empty()) {
    std::cerr << "stubkit-load: user_server did not start\n";
    return 1;
  }
  std::vector<std::string> ids;
  {
    auto stub = UserService::NewStub(own_connection(address));
    myservice::v1::ListUsersRequest request;
    request.set_page_size(100);
    do {
      grpc::ClientContext ctx;
      myservice::v1::ListUsersResponse page;
      auto const status = stub->ListUsers(&ctx, request, &page);
      if (!status.ok()) {
        std::cerr << "stubkit-load: cannot list the users: " << status.error_message() << "\n";
        return 1;
      }
      for (auto const& u : page.users()) ids.push_back(u.id());
      request.set_page_token(page.next_page_token());
    } while (!request.page_token().empty());
  }

  // Memory of the server, sampled every 500 ms for the whole run.
  std::atomic<bool> done{false};
  std::vector<std::pair<double, long>> memory;
  std::mutex memory_mu;
  auto const t0 = Clock::now();
  std::thread sampler([&] {
    while (!done) {
      long const kib = stubkit_tests::rss_kib(server.pid());
      {
        std::lock_guard<std::mutex> lock(memory_mu);
        memory.emplace_back(std::chrono::duration<double>(Clock::now() - t0).count(), kib);
      }
      std::this_thread::sleep_for(500ms);
    }
  });

  // Watch streams, reading every event, open for the whole run.
  std::vector<std::unique_ptr<grpc::ClientContext>> watch_contexts;
  std::vector<std::thread> watchers;
  std::atomic<std::int64_t> events{0};
  auto watch_channel = own_connection(address);
  auto watch_stub = UserService::NewStub(watch_channel);
  for (int i = 0; i < flags.streams; ++i) {
    watch_contexts.push_back(std::make_unique<grpc::ClientContext>());
    watchers.emplace_back([&, ctx = watch_contexts.back().get()] {
      auto reader = watch_stub->WatchUsers(ctx, myservice::v1::WatchUsersRequest{});
      myservice::v1::UserEvent event;
      while (reader->Read(&event)) events.fetch_add(1, std::memory_order_relaxed);
      reader->Finish();
    });
  }

  std::vector<std::unique_ptr<Stub>> stubs;
  for (int c = 0; c < flags.clients; ++c) stubs.push_back(UserService::NewStub(own_connection(address)));

  std::cout << "stubkit-load: " << flags.clients << " clients, " << flags.streams << " watch streams, "
            << ids.size() << " users, " << flags.rounds << " rounds of " << flags.round_time.count()
            << " ms per mode" << std::endl;
  RoundResult totals[2];
  for (int round = 0; round < flags.rounds * 2; ++round) {
    bool const with_stubkit = round % 2 == 1;
    std::vector<RoundResult> results(static_cast<std::size_t>(flags.clients));
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    auto const start = Clock::now();
    for (int c = 0; c < flags.clients; ++c) {
      threads.emplace_back(client_loop, std::ref(*stubs[static_cast<std::size_t>(c)]), with_stubkit,
                           std::cref(ids), static_cast<std::uint32_t>(round * 1000 + c), std::cref(stop),
                           &results[static_cast<std::size_t>(c)]);
    }
    std::this_thread::sleep_for(flags.round_time);
    stop = true;
    for (auto& t : threads) t.join();
    double const seconds = std::chrono::duration<double>(Clock::now() - start).count();
    RoundResult& total = totals[with_stubkit ? 1 : 0];
    std::int64_t calls = 0;
    for (auto& r : results) {
      calls += r.calls;
      total.calls += r.calls;
      total.failures += r.failures;
      total.latencies_us.insert(total.latencies_us.end(), r.latencies_us.begin(), r.latencies_us.end());
    }
    total.seconds += seconds;
    std::cout << "  round " << round / 2 + 1 << " " << (with_stubkit ? "stubkit" : "raw    ") << ": "
              << static_cast<std::int64_t>(calls / seconds) << " calls/s, server RSS "
              << stubkit_tests::rss_kib(server.pid()) << " KiB" << std::endl;
  }

  for (auto& ctx : watch_contexts) ctx->TryCancel();
  for (auto& t : watchers) t.join();
  done = true;
  sampler.join();

  std::cout << "\n| mode | calls | failed | calls/s | p50 us | p99 us |\n|---|---|---|---|---|---|\n";
  double rate[2] = {0, 0};
  std::int64_t p50[2] = {0, 0};
  std::int64_t p99[2] = {0, 0};
  for (int m = 0; m < 2; ++m) {
    rate[m] = static_cast<double>(totals[m].calls) / totals[m].seconds;
    p50[m] = percentile(totals[m].latencies_us, 0.50);
    p99[m] = percentile(totals[m].latencies_us, 0.99);
    std::cout << "| " << (m == 0 ? "raw stub" : "stubkit::call") << " | " << totals[m].calls << " | "
              << totals[m].failures << " | " << static_cast<std::int64_t>(rate[m]) << " | " << p50[m] << " | "
              << p99[m] << " |\n";
  }
  std::cout << std::fixed << std::setprecision(3) << "throughput stubkit/raw: " << rate[1] / rate[0]
            << ", p50 stubkit/raw: "
            << static_cast<double>(p50[1]) / static_cast<double>(std::max<std::int64_t>(p50[0], 1))
            << ", p99 stubkit/raw: "
            << static_cast<double>(p99[1]) / static_cast<double>(std::max<std::int64_t>(p99[0], 1))
            << "\nwatch events received: " << events.load() << "\n";

  // Flat memory: compare the first and last thirds of the samples (after
  // the first second of warm-up).
  std::cout << "server RSS (KiB) over time:";
  long first = 0, last = 0, peak = 0;
  {
    std::lock_guard<std::mutex> lock(memory_mu);
    std::size_t const n = memory.size();
    for (std::size_t i = 0; i < n; i += std::max<std::size_t>(1, n / 12)) {
      std::cout << " " << std::setprecision(0) << memory[i].first << "s=" << memory[i].second;
    }
    auto mean = [&](std::size_t from, std::size_t to) {
      long sum = 0;
      for (std::size_t i = from; i < to; ++i) sum += memory[i].second;
      return to > from ? sum / static_cast<long>(to - from) : 0L;
    };
    first = mean(std::min<std::size_t>(2, n), std::max<std::size_t>(n / 3, std::min<std::size_t>(2, n) + 1));
    last = mean(n - n / 3, n);
    for (auto const& [t, kib] : memory) peak = std::max(peak, kib);
  }
  std::cout << "\nserver RSS: mean of first third " << first << " KiB, of last third " << last << " KiB (x"
            << std::setprecision(3) << static_cast<double>(last) / static_cast<double>(std::max(first, 1L))
            << "), peak " << peak << " KiB" << std::endl;
  bool const healthy = totals[0].failures == 0 && totals[1].failures == 0 && totals[0].calls > 0 &&
                       totals[1].calls > 0 && (flags.streams == 0 || events.load() > 0);
  if (!healthy) {
    std::cerr << "stubkit-load: unhealthy run: " << totals[0].failures << " raw and " << totals[1].failures
              << " stubkit calls failed, " << events.load() << " watch events\n";
  }
  return healthy ? 0 : 1;
}
