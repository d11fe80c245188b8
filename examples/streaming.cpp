// streaming: server, client and bidirectional streams with stubkit.
//
// Shows: WatchUsers as a range of events, the resumable watch that
// reconnects after a dropped stream without losing or repeating events,
// BulkCreateUsers as a writer with typed per-item failures, and a Chat
// session between two clients.
//
//   streaming [--target HOST:PORT] [--token T]
//
// The dropped streams are asked of the server with the stubkit-fault header;
// against `user_server` without --fault-metadata the resumable watch simply
// never needs to reconnect.
#include <cstdint>
#include <iostream>
#include <string>
#include <thread>

#include "example.hpp"
#include "stubkit/user_client.hpp"

using namespace std::chrono_literals;

void create(stubkit::UserClient& client, std::string const& id) {
  myservice::v1::User user;
  user.set_id(id);
  (void)client.create_user(user);
}

int main(int argc, char** argv) {
  auto const flags = example::parse(argc, argv, "streaming", "server, client and bidirectional streams",
                                    "user_server --fault-metadata (for the dropped streams)");
  example::Servers servers(flags);
  stubkit::UserClient client(servers.channel());
  std::string const tag = example::run_tag();  // ids no earlier run has used
  bool ok = true;

  // WatchUsers as a range. Its first message is a heartbeat, sent once the
  // server is watching: only then are the users created, so none is missed.
  std::int64_t last_seen = 0;
  {
    stubkit::StreamOptions bounded;
    bounded.deadline = stubkit::Deadline::after(10s);  // a watch that sees too little ends
    auto events = client.watch_users({}, bounded);
    std::thread writer;
    int seen = 0;
    for (auto& event : events) {
      if (!event) {
        std::cout << "watch failed: " << event.error().to_string() << "\n";
        break;
      }
      if (!writer.joinable()) {
        writer = std::thread([&] {
          for (auto name : {"ada", "grace", "linus"}) create(client, name + ("-" + tag));
        });
      }
      if (event->type() == "heartbeat") continue;
      std::cout << "event: " << event->type() << " " << event->user().id() << "\n";
      last_seen = event->sequence();
      if (++seen == 3) break;
    }
    if (writer.joinable()) writer.join();
    ok = ok && seen == 3;
  }  // the range cancels its stream here

  // A resumable watch from where the first one stopped. The server is asked
  // to drop every stream after two messages; the watch reconnects each time
  // and resumes after the last sequence it saw, so no event is lost or
  // repeated.
  for (int i = 0; i < 5; ++i) create(client, "late" + std::to_string(i) + "-" + tag);  // before it connects
  stubkit::ResumableWatchOptions resume;
  resume.after_sequence = last_seen;
  resume.metadata.emplace_back("stubkit-fault", "close-stream-after=2");
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
  std::cout << "resumable watch: 5 events over " << connections << " connections\n";
  ok = ok && resumed == 5 && (servers.remote() || connections == 3);

  // BulkCreateUsers: each write waits for flow control; failures come back
  // typed (the second id exists already).
  auto bulk = client.bulk_create_users();
  for (std::string id : {"bulk1-" + tag, "ada-" + tag, "bulk2-" + tag}) {
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

  // Chat: the server sends a session's initial metadata once it relays to
  // it, so bob waits for his before alice writes; he reads on his own thread.
  stubkit::StreamOptions chat_options;
  chat_options.deadline = stubkit::Deadline::after(10s);  // a server that stays silent ends it
  auto alice = client.chat(chat_options);
  auto bob = client.chat(chat_options);
  bob.wait_for_initial_metadata();
  int bob_got = 0;
  std::thread bob_reads([&] {
    while (auto message = bob.read()) {
      std::cout << "bob got: " << message->sender() << ": " << message->text() << "\n";
      ++bob_got;
    }
  });
  myservice::v1::ChatMessage hello;
  hello.set_sender("alice");
  hello.set_text("hello, bob");
  bool const wrote = alice.write(hello);
  ok = ok && wrote;
  alice.writes_done();
  while (alice.read()) {
  }
  bob.writes_done();
  bob_reads.join();
  ok = ok && !alice.finish() && !bob.finish() && bob_got == 1;
  return ok ? 0 : 1;
}
