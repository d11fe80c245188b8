// streaming: server, client and bidirectional streams with stubkit.
//
// Shows: WatchUsers as a range of events (heartbeats filtered), the
// resumable watch that reconnects after a dropped stream without losing or
// repeating events, BulkCreateUsers as a writer with typed per-item
// failures, and a Chat session between two clients.
//
//   streaming    # runs against an embedded UserService
#include <cstdint>
#include <iostream>
#include <string>
#include <thread>

#include "example_args.hpp"
#include "stubkit/testing/embedded_server.hpp"
#include "stubkit/user_client.hpp"

using namespace std::chrono_literals;

void create(stubkit::UserClient& client, std::string const& id) {
  myservice::v1::User user;
  user.set_id(id);
  (void)client.create_user(user);
}

int main(int argc, char** argv) {
  example::embedded_only(argc, argv, "streaming", "server, client and bidirectional streams");
  stubkit::testing::EmbeddedServer server;
  stubkit::UserClient client(server.channel());
  bool ok = true;

  // WatchUsers as a range: change events only, until we have seen three.
  std::int64_t last_seen = 0;
  {
    auto events = client.watch_users();
    std::thread writer([&] {
      while (server.service().open_streams() == 0) std::this_thread::sleep_for(1ms);
      for (auto id : {"ada", "grace", "linus"}) create(client, id);
    });
    int seen = 0;
    for (auto& event : events) {
      if (!event) return 1;
      std::cout << "event " << event->sequence() << ": " << event->type() << " " << event->user().id()
                << "\n";
      last_seen = event->sequence();
      if (++seen == 3) break;
    }
    writer.join();
  }  // the range cancels its stream here

  // A resumable watch from where the first one stopped. The server drops
  // every stream after two messages; the watch reconnects each time and
  // resumes after the last sequence it saw, so no event is lost or repeated.
  for (int i = 0; i < 5; ++i) create(client, "late" + std::to_string(i));  // even before it connects
  server.faults().close_stream_after("WatchUsers", 2);
  stubkit::ResumableWatchOptions resume;
  resume.after_sequence = last_seen;
  int resumed = 0;
  int connections = 0;
  {
    auto resumable = client.watch_users_resumable(resume);
    for (auto& event : resumable) {
      if (!event) return 1;
      if (++resumed == 5) break;
    }
    connections = resumable.connections();
  }
  server.faults().clear();
  std::cout << "resumable watch: 5 events over " << connections << " connections\n";
  ok = ok && resumed == 5;

  // BulkCreateUsers: each write waits for flow control; failures come back typed.
  auto bulk = client.bulk_create();
  for (std::string id : {"bulk1", "ada", "bulk2"}) {
    myservice::v1::CreateUserRequest request;
    request.mutable_user()->set_id(id);
    if (!bulk.write(request)) break;
  }
  auto result = bulk.finish();
  if (!result) return 1;
  std::cout << "bulk: created " << result->created() << "\n";
  for (auto const& [index, error] : stubkit::UserClient::bulk_failures(*result)) {
    std::cout << "  request " << index << " failed: " << error.to_string() << "\n";
  }
  ok = ok && result->created() == 2;

  // Chat: bob reads on his own thread while alice writes.
  while (server.service().open_streams() != 0) std::this_thread::sleep_for(1ms);  // the watches are gone
  auto alice = client.chat();
  auto bob = client.chat();
  while (server.service().open_streams() < 2) std::this_thread::sleep_for(1ms);
  std::thread bob_reads([&] {
    while (auto message = bob.read())
      std::cout << "bob got: " << message->sender() << ": " << message->text() << "\n";
  });
  myservice::v1::ChatMessage hello;
  hello.set_sender("alice");
  hello.set_text("hello, bob");
  ok = ok && alice.write(hello);
  std::this_thread::sleep_for(50ms);
  alice.writes_done();
  while (alice.read()) {
  }
  bob.writes_done();
  bob_reads.join();
  ok = ok && !alice.finish() && !bob.finish();
  return ok ? 0 : 1;
}
