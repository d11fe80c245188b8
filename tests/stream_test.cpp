// Streaming helpers on the embedded server: WatchUsers as a range (and
// resumable), BulkCreateUsers as a writer, Chat as a session.
#include "stubkit/stream.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "stubkit/user_client.hpp"
#include "support.hpp"

using namespace stubkit_tests;
using grpc::StatusCode;
using myservice::v1::UserEvent;

namespace {

void wait_for_streams(stubkit::testing::EmbeddedServer& server, int n) {
  for (int i = 0; i < 1000 && server.service().open_streams() != n; ++i) std::this_thread::sleep_for(2ms);
  REQUIRE(server.service().open_streams() == n);
}

}  // namespace

TEST_SUITE("stream") {
  TEST_CASE("watch_users yields change events without heartbeats, in order") {
    ServerFixture f;
    stubkit::UserClient client(f.server.channel());
    auto events = client.watch_changes();
    std::thread writer([&] {
      wait_for_streams(f.server, 1);
      for (auto id : {"a", "b", "c"}) REQUIRE(f.create(id).ok());
    });
    std::vector<std::string> ids;
    for (auto& event : events) {
      REQUIRE(event.ok());
      CHECK(event->type() == "created");
      ids.push_back(event->user().id());
      if (ids.size() == 3) break;
    }
    writer.join();
    CHECK(ids == std::vector<std::string>{"a", "b", "c"});
  }

  TEST_CASE("a stream range outlives the stub that opened it") {
    ServerFixture f;
    // The call is opened at once and holds its channel: the stub, gone at
    // the end of this statement, is not needed again.
    auto events = stubkit::read_stream(*myservice::v1::UserService::NewStub(f.server.channel()),
                                       &myservice::v1::UserService::Stub::WatchUsers,
                                       myservice::v1::WatchUsersRequest{});
    std::thread writer([&] {
      wait_for_streams(f.server, 1);
      REQUIRE(f.create("a").ok());
    });
    auto it = events.begin();
    while (it != events.end() && (*it).ok() && (*it)->type() == "heartbeat") ++it;
    writer.join();
    REQUIRE(it != events.end());
    REQUIRE((*it).ok());
    CHECK((*it)->type() == "created");
    CHECK((*it)->user().id() == "a");
  }

  TEST_CASE("heartbeats come through when asked for") {
    stubkit::testing::EmbeddedServerOptions options;
    options.service.heartbeat_interval = 5ms;
    ServerFixture f(options);
    stubkit::UserClient client(f.server.channel());
    int heartbeats = 0;
    for (auto& event : client.watch_users({})) {
      REQUIRE(event.ok());
      heartbeats += event->type() == "heartbeat";
      if (heartbeats == 3) break;
    }
    CHECK(heartbeats == 3);
  }

  TEST_CASE("a stream range ends with the server's error as its last element") {
    ServerFixture f;
    f.server.faults().fail_next("WatchUsers", 1, StatusCode::PERMISSION_DENIED, "not yours");
    stubkit::UserClient client(f.server.channel());
    std::vector<std::string> seen;
    for (auto& event : client.watch_changes()) {
      seen.push_back(event ? event->type() : event.error().to_string());
    }
    CHECK(seen == std::vector<std::string>{"PERMISSION_DENIED: not yours"});
  }

  TEST_CASE("a stream ends on time at its deadline, and on cancel()") {
    ServerFixture f;
    stubkit::UserClient client(f.server.channel());
    stubkit::StreamOptions options;
    options.deadline = stubkit::Deadline::after(100ms);
    std::vector<std::string> codes;
    for (auto& event : client.watch_changes({}, options)) {
      if (!event) codes.push_back(stubkit::code_name(event.error().code()));
    }
    CHECK(codes == std::vector<std::string>{"DEADLINE_EXCEEDED"});

    auto events = client.watch_changes();
    std::thread canceller([&] {
      wait_for_streams(f.server, 1);
      events.cancel();
    });
    std::vector<std::string> ends;
    for (auto& event : events) {
      if (!event) ends.push_back(stubkit::code_name(event.error().code()));
    }
    canceller.join();
    CHECK(ends == std::vector<std::string>{"CANCELLED"});
  }

  TEST_CASE("dropping a stream range early cancels the call; no stream is left open") {
    ServerFixture f;
    stubkit::UserClient client(f.server.channel());
    {
      auto events = client.watch_users({});
      REQUIRE(events.begin()->ok());  // the first heartbeat
      CHECK(f.server.service().open_streams() == 1);
    }
    wait_for_streams(f.server, 0);
  }

  TEST_CASE("the resumable watch reconnects after dropped streams without losing or repeating events") {
    ServerFixture f;
    f.server.faults().close_stream_after("WatchUsers", 2);  // every stream dies after 2 messages
    stubkit::UserClient client(f.server.channel());
    stubkit::ResumableWatchOptions options;
    options.clock.sleep = [](std::chrono::milliseconds) {};
    options.policy.max_attempts = 5;
    auto events = client.watch_users_resumable(options);
    std::thread writer([&] {
      wait_for_streams(f.server, 1);
      for (int i = 0; i < 10; ++i) REQUIRE(f.create("user" + std::to_string(i)).ok());
    });
    std::vector<std::int64_t> sequences;
    std::set<std::string> ids;
    for (auto& event : events) {
      REQUIRE_MESSAGE(event.ok(), event.error().to_string());
      sequences.push_back(event->sequence());
      ids.insert(event->user().id());
      if (sequences.size() == 10) break;
    }
    writer.join();
    CHECK(ids.size() == 10);
    CHECK(std::is_sorted(sequences.begin(), sequences.end()));
    CHECK(std::adjacent_find(sequences.begin(), sequences.end()) == sequences.end());
    CHECK(events.connections() > 2);
  }

  TEST_CASE("the resumable watch sends its metadata with every connection") {
    stubkit::testing::EmbeddedServerOptions server_options;
    server_options.service.fault_metadata = true;
    ServerFixture f(server_options);
    stubkit::UserClient client(f.server.channel());
    for (int i = 0; i < 10; ++i) REQUIRE(f.create("user" + std::to_string(i)).ok());
    stubkit::ResumableWatchOptions options;
    options.clock.sleep = [](std::chrono::milliseconds) {};
    options.policy.max_attempts = 5;
    options.metadata.emplace_back("stubkit-fault", "close-stream-after=1");
    options.after_sequence = 1;  // replay events 2..10
    int events = 0;
    auto watch = client.watch_users_resumable(options);
    for (auto& event : watch) {
      REQUIRE_MESSAGE(event.ok(), event.error().to_string());
      if (++events == 9) break;
    }
    // One event per connection: the fault reached every one of them.
    CHECK(watch.connections() == 9);
  }

  TEST_CASE("the resumable watch gives up after max_attempts failed connections") {
    ServerFixture f;
    f.server.faults().fail_next("WatchUsers", 100, StatusCode::UNAVAILABLE, "down");
    stubkit::UserClient client(f.server.channel());
    stubkit::ResumableWatchOptions options;
    std::vector<std::chrono::milliseconds> sleeps;
    options.clock.sleep = [&](std::chrono::milliseconds d) { sleeps.push_back(d); };
    options.policy.max_attempts = 3;
    std::vector<std::string> seen;
    for (auto& event : client.watch_users_resumable(options)) {
      seen.push_back(event ? event->type() : event.error().to_string());
    }
    CHECK(seen == std::vector<std::string>{"UNAVAILABLE: down"});
    CHECK(f.server.faults().calls("WatchUsers") == 3);
    CHECK(sleeps.size() == 2);
  }

  TEST_CASE("bulk_create streams requests and reports per-item failures as typed errors") {
    ServerFixture f;
    REQUIRE(f.create("taken").ok());
    stubkit::UserClient client(f.server.channel());
    auto writer = client.bulk_create_users();
    for (std::string id : {"a", "taken", "b", "bad id"}) {
      myservice::v1::CreateUserRequest request;
      request.mutable_user()->set_id(id);
      REQUIRE(writer.write(request));
    }
    auto response = writer.finish();
    REQUIRE(response.ok());
    CHECK(response->created() == 2);
    auto failures = stubkit::UserClient::bulk_failures(*response);
    REQUIRE(failures.size() == 2);
    CHECK(failures[0].first == 1);
    CHECK(failures[0].second.is<stubkit::AlreadyExists>());
    CHECK(failures[1].first == 3);
    CHECK(failures[1].second.is<stubkit::InvalidArgument>());
    CHECK(writer.finish().error().is<stubkit::FailedPrecondition>());
  }

  TEST_CASE("dropping an unfinished bulk writer cancels its call instead of leaking it") {
    ServerFixture f;
    stubkit::UserClient client(f.server.channel());
    {
      auto writer = client.bulk_create_users();
      myservice::v1::CreateUserRequest request;
      request.mutable_user()->set_id("a");
      REQUIRE(writer.write(request));
    }
    // The destructor returned: the call was cancelled and finished (not
    // left open). Users already read by the server stay created.
    for (int i = 0; i < 500 && f.server.faults().calls("BulkCreateUsers") == 0; ++i)
      std::this_thread::sleep_for(2ms);
    CHECK(f.server.faults().calls("BulkCreateUsers") == 1);
  }

  TEST_CASE("a chat session's initial metadata means the server relays to it") {
    ServerFixture f;
    stubkit::UserClient client(f.server.channel());
    stubkit::StreamOptions options;
    options.deadline = stubkit::Deadline::after(10s);  // a missing signal fails, not hangs
    auto alice = client.chat(options);
    auto bob = client.chat(options);
    bob.wait_for_initial_metadata();  // no sleep, no server counter
    myservice::v1::ChatMessage message;
    message.set_sender("alice");
    message.set_text("first");
    REQUIRE(alice.write(message));
    auto got = bob.read();
    REQUIRE(got);
    CHECK(got->text() == "first");
    alice.writes_done();
    bob.writes_done();
    CHECK_FALSE(alice.read());
    CHECK_FALSE(bob.read());
    CHECK_FALSE(alice.finish());
    CHECK_FALSE(bob.finish());
  }

  TEST_CASE("chat sessions read and write concurrently, half-close cleanly, and cancel") {
    ServerFixture f;
    stubkit::UserClient client(f.server.channel());
    auto alice = client.chat();
    auto bob = client.chat();
    wait_for_streams(f.server, 2);
    std::vector<std::string> bob_got;  // the reader's until it is joined
    std::atomic<std::size_t> bob_count{0};
    std::thread reader([&] {
      while (auto message = bob.read()) {
        bob_got.push_back(message->sender() + ":" + message->text());
        ++bob_count;
      }
    });
    for (int i = 0; i < 3; ++i) {
      myservice::v1::ChatMessage message;
      message.set_sender("alice");
      message.set_text("hi " + std::to_string(i));
      REQUIRE(alice.write(message));
    }
    // Bob's reader is running while alice writes; now both close their sides.
    for (int i = 0; i < 1000 && bob_count < 3; ++i) std::this_thread::sleep_for(2ms);
    REQUIRE(alice.writes_done());
    CHECK_FALSE(alice.read().has_value());
    CHECK_FALSE(alice.finish().has_value());  // OK
    REQUIRE(bob.writes_done());
    reader.join();
    CHECK_FALSE(bob.finish().has_value());
    CHECK(bob_got == std::vector<std::string>{"alice:hi 0", "alice:hi 1", "alice:hi 2"});

    auto carol = client.chat();
    wait_for_streams(f.server, 1);
    std::thread cancel([&] { carol.cancel(); });
    CHECK_FALSE(carol.read().has_value());
    cancel.join();
    auto end = carol.finish();
    REQUIRE(end.has_value());
    CHECK(end->is<stubkit::Cancelled>());
    wait_for_streams(f.server, 0);
  }
}
