// Every rpc of the embedded UserService and every error path, on an
// in-process channel.
#include <doctest/doctest.h>

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "google/protobuf/util/message_differencer.h"
#include "support.hpp"

using namespace stubkit_tests;
using grpc::StatusCode;
using myservice::v1::User;

namespace {

std::vector<std::string> list_all_ids(UserService::Stub& stub, int page_size,
                                      std::function<void(int page)> between_pages = {}) {
  std::vector<std::string> ids;
  myservice::v1::ListUsersRequest request;
  request.set_page_size(page_size);
  int page = 0;
  do {
    myservice::v1::ListUsersResponse response;
    auto status = stub.ListUsers(context().get(), request, &response);
    REQUIRE(status.ok());
    for (auto const& u : response.users()) ids.push_back(u.id());
    request.set_page_token(response.next_page_token());
    if (between_pages) between_pages(++page);
  } while (!request.page_token().empty());
  return ids;
}

grpc::Status update(UserService::Stub& stub, User const& user, std::vector<std::string> const& paths,
                    User* out) {
  myservice::v1::UpdateUserRequest request;
  *request.mutable_user() = user;
  for (auto const& p : paths) request.mutable_update_mask()->add_paths(p);
  return stub.UpdateUser(context().get(), request, out);
}

}  // namespace

TEST_SUITE("user_service") {
  TEST_CASE("CreateUser stores the user and sets created_at on the server") {
    ServerFixture f;
    myservice::v1::CreateUserRequest request;
    request.mutable_user()->set_id("ada");
    request.mutable_user()->set_email("ada@example.com");
    request.mutable_user()->mutable_created_at()->set_seconds(1);  // ignored
    myservice::v1::CreateUserResponse response;
    REQUIRE(f.stub->CreateUser(context().get(), request, &response).ok());
    CHECK(response.user().id() == "ada");
    CHECK(response.user().email() == "ada@example.com");
    CHECK(response.user().created_at().seconds() > 1'600'000'000);
    CHECK(f.server.service().user_count() == 1);
  }

  TEST_CASE("CreateUser of an existing id is ALREADY_EXISTS with the seed's message and ResourceInfo") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    auto status = f.create("ada");
    CHECK(status.error_code() == StatusCode::ALREADY_EXISTS);
    CHECK(status.error_message() == "User ada already exists");
    auto info = detail_of<google::rpc::ResourceInfo>(status);
    REQUIRE(info);
    CHECK(info->resource_name() == "ada");
    CHECK(f.server.service().user_count() == 1);
  }

  TEST_CASE("CreateUser with a request_id seen before returns the first result and creates nothing") {
    ServerFixture f;
    User first, again;
    REQUIRE(f.create("", &first, "req-1").ok());
    REQUIRE(f.create("", &again, "req-1").ok());
    CHECK(google::protobuf::util::MessageDifferencer::Equals(first, again));
    CHECK(f.server.service().user_count() == 1);
    User other;
    REQUIRE(f.create("", &other, "req-2").ok());
    CHECK(other.id() != first.id());
    CHECK(f.server.service().user_count() == 2);
  }

  TEST_CASE("a reused request_id (AIP-155): same request, another request, after update, delete, expiry") {
    stubkit::testing::EmbeddedServerOptions options;
    options.service.request_id_capacity = 2;
    ServerFixture f(options);
    User first;
    REQUIRE(f.create("", &first, "req-1").ok());  // id assigned by the server

    // The same request: the first result, even sent with the id it got.
    User again;
    REQUIRE(f.create("", &again, "req-1").ok());
    CHECK(google::protobuf::util::MessageDifferencer::Equals(first, again));
    myservice::v1::CreateUserRequest resent;
    *resent.mutable_user() = first;
    resent.mutable_user()->clear_created_at();
    resent.set_request_id("req-1");
    myservice::v1::CreateUserResponse response;
    REQUIRE(f.stub->CreateUser(context().get(), resent, &response).ok());
    CHECK(response.user().id() == first.id());

    // Another request under the same id: refused, nothing created.
    auto status = f.create("someone-else", nullptr, "req-1");
    CHECK(status.error_code() == StatusCode::FAILED_PRECONDITION);
    auto failure = detail_of<google::rpc::PreconditionFailure>(status);
    REQUIRE(failure);
    CHECK(failure->violations(0).subject() == "request_id");
    CHECK(f.server.service().user_count() == 1);

    // After an update, and after a delete: the first result, nothing recreated.
    User renamed;
    renamed.set_id(first.id());
    renamed.set_display_name("Renamed");
    User out;
    REQUIRE(update(*f.stub, renamed, {"display_name"}, &out).ok());
    REQUIRE(f.create("", &again, "req-1").ok());
    CHECK(again.display_name() == first.display_name());
    myservice::v1::DeleteUserRequest del;
    del.set_id(first.id());
    google::protobuf::Empty empty;
    REQUIRE(f.stub->DeleteUser(context().get(), del, &empty).ok());
    REQUIRE(f.create("", &again, "req-1").ok());
    CHECK(again.id() == first.id());
    CHECK(f.server.service().user_count() == 0);

    // Expiry: two newer ids push req-1 out; it then creates anew.
    REQUIRE(f.create("", nullptr, "req-2").ok());
    REQUIRE(f.create("", nullptr, "req-3").ok());
    User fresh;
    REQUIRE(f.create("", &fresh, "req-1").ok());
    CHECK(fresh.id() != first.id());
    CHECK(f.server.service().user_count() == 3);
  }

  TEST_CASE("CreateUser assigns distinct ids when none is given") {
    ServerFixture f;
    std::set<std::string> ids;
    for (int i = 0; i < 5; ++i) {
      User u;
      REQUIRE(f.create("", &u).ok());
      CHECK_FALSE(u.id().empty());
      ids.insert(u.id());
    }
    CHECK(ids.size() == 5);
  }

  TEST_CASE("CreateUser rejects a missing user and a malformed id, naming the field") {
    ServerFixture f;
    myservice::v1::CreateUserResponse response;
    auto status = f.stub->CreateUser(context().get(), myservice::v1::CreateUserRequest{}, &response);
    CHECK(status.error_code() == StatusCode::INVALID_ARGUMENT);
    CHECK(violated_field(status) == "user");
    for (std::string bad : {std::string("has space"), std::string(129, 'x'), std::string("a/b")}) {
      status = f.create(bad);
      CHECK(status.error_code() == StatusCode::INVALID_ARGUMENT);
      CHECK(violated_field(status) == "user.id");
    }
    CHECK(f.server.service().user_count() == 0);
  }

  TEST_CASE(
      "GetUser returns a stored user, NOT_FOUND with the seed's message, or INVALID_ARGUMENT for no id") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    myservice::v1::GetUserRequest request;
    request.set_id("ada");
    User user;
    REQUIRE(f.stub->GetUser(context().get(), request, &user).ok());
    CHECK(user.email() == "ada@example.com");

    request.set_id("nobody");
    auto status = f.stub->GetUser(context().get(), request, &user);
    CHECK(status.error_code() == StatusCode::NOT_FOUND);
    CHECK(status.error_message() == "User nobody not found");
    REQUIRE(detail_of<google::rpc::ResourceInfo>(status));
    CHECK(detail_of<google::rpc::ResourceInfo>(status)->resource_name() == "nobody");

    request.set_id("");
    status = f.stub->GetUser(context().get(), request, &user);
    CHECK(status.error_code() == StatusCode::INVALID_ARGUMENT);
    CHECK(violated_field(status) == "id");
  }

  TEST_CASE("ListUsers pages are min(page_size or 50, 100) long") {
    ServerFixture f;
    f.server.service().preload(120);
    for (auto [asked, expected] :
         std::vector<std::pair<int, int>>{{0, 50}, {7, 7}, {100, 100}, {1000, 100}}) {
      myservice::v1::ListUsersRequest request;
      request.set_page_size(asked);
      myservice::v1::ListUsersResponse response;
      REQUIRE(f.stub->ListUsers(context().get(), request, &response).ok());
      CHECK(response.users_size() == expected);
      CHECK_FALSE(response.next_page_token().empty());
    }
  }

  TEST_CASE("max_page_size raises or lowers the page cap") {
    stubkit::testing::EmbeddedServerOptions options;
    options.service.max_page_size = 1000;
    ServerFixture big(options);
    big.server.service().preload(1200);
    options.service.max_page_size = 20;
    ServerFixture small(options);
    small.server.service().preload(100);
    myservice::v1::ListUsersRequest request;
    request.set_page_size(5000);
    myservice::v1::ListUsersResponse response;
    REQUIRE(big.stub->ListUsers(context().get(), request, &response).ok());
    CHECK(response.users_size() == 1000);
    request.set_page_size(0);
    response.Clear();
    REQUIRE(small.stub->ListUsers(context().get(), request, &response).ok());
    CHECK(response.users_size() == 20);
  }

  TEST_CASE("ListUsers walks every user once, in id order, and the last page has no token") {
    ServerFixture f;
    f.server.service().preload(23);
    auto ids = list_all_ids(*f.stub, 5);
    CHECK(ids.size() == 23);
    CHECK(std::is_sorted(ids.begin(), ids.end()));
    CHECK(std::set<std::string>(ids.begin(), ids.end()).size() == 23);
  }

  TEST_CASE("ListUsers of an empty service is one empty page") {
    ServerFixture f;
    myservice::v1::ListUsersResponse response;
    REQUIRE(f.stub->ListUsers(context().get(), {}, &response).ok());
    CHECK(response.users_size() == 0);
    CHECK(response.next_page_token().empty());
  }

  TEST_CASE("users created or deleted during a listing neither skip nor repeat the others") {
    ServerFixture f;
    for (char c = 'b'; c <= 'y'; c += 2) REQUIRE(f.create(std::string(1, c)).ok());  // b d f ... x
    std::set<std::string> const before = [&] {
      auto ids = list_all_ids(*f.stub, 100);
      return std::set<std::string>(ids.begin(), ids.end());
    }();
    auto ids = list_all_ids(*f.stub, 3, [&](int page) {
      // Insert before and after the cursor, and delete one not yet listed.
      REQUIRE(f.create("a" + std::to_string(page)).ok());
      REQUIRE(f.create("z" + std::to_string(page)).ok());
      if (page == 1) {
        myservice::v1::DeleteUserRequest del;
        del.set_id("x");
        google::protobuf::Empty empty;
        REQUIRE(f.stub->DeleteUser(context().get(), del, &empty).ok());
      }
    });
    std::multiset<std::string> seen(ids.begin(), ids.end());
    for (auto const& id : before) {
      if (id != "x") CHECK_MESSAGE(seen.count(id) == 1, id);
    }
    CHECK(seen.count("x") == 0);
    CHECK(std::set<std::string>(ids.begin(), ids.end()).size() == ids.size());
  }

  TEST_CASE("ListUsers rejects a negative page_size and bad tokens, naming the field") {
    ServerFixture f;
    f.server.service().preload(3);
    myservice::v1::ListUsersRequest request;
    request.set_page_size(-1);
    myservice::v1::ListUsersResponse response;
    auto status = f.stub->ListUsers(context().get(), request, &response);
    CHECK(status.error_code() == StatusCode::INVALID_ARGUMENT);
    CHECK(violated_field(status) == "page_size");

    request.set_page_size(1);
    REQUIRE(f.stub->ListUsers(context().get(), request, &response).ok());
    std::string const good = response.next_page_token();
    std::string tampered = good;
    tampered[tampered.size() / 2] ^= 1;
    ServerFixture other;  // another server signs with another key
    other.server.service().preload(3);
    for (std::string const& bad : {std::string("garbage"), std::string("50"), tampered}) {
      request.set_page_token(bad);
      status = f.stub->ListUsers(context().get(), request, &response);
      CHECK(status.error_code() == StatusCode::INVALID_ARGUMENT);
      CHECK(violated_field(status) == "page_token");
    }
    request.set_page_token(good);
    status = other.stub->ListUsers(context().get(), request, &response);
    CHECK(status.error_code() == StatusCode::INVALID_ARGUMENT);
  }

  TEST_CASE("UpdateUser with a mask changes only the named fields") {
    ServerFixture f;
    User created;
    REQUIRE(f.create("ada", &created).ok());
    User change;
    change.set_id("ada");
    change.set_display_name("Countess");
    change.set_email("ignored@example.com");
    User updated;
    REQUIRE(update(*f.stub, change, {"display_name"}, &updated).ok());
    CHECK(updated.display_name() == "Countess");
    CHECK(updated.email() == "ada@example.com");
    CHECK(updated.created_at().seconds() == created.created_at().seconds());
  }

  TEST_CASE("UpdateUser replaces map fields and switches oneof members through the mask") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    User change;
    change.set_id("ada");
    change.set_phone("+44 20 7946 0000");
    (*change.mutable_metadata())["team"] = "engines";
    User updated;
    REQUIRE(update(*f.stub, change, {"phone", "metadata"}, &updated).ok());
    CHECK(updated.phone() == "+44 20 7946 0000");
    CHECK(updated.metadata().at("team") == "engines");

    User slack;
    slack.set_id("ada");
    slack.set_slack_id("U123");
    (*slack.mutable_metadata())["desk"] = "3";
    REQUIRE(update(*f.stub, slack, {"slack_id", "metadata"}, &updated).ok());
    CHECK(updated.contact_case() == User::kSlackId);
    CHECK(updated.metadata().size() == 1);
    CHECK(updated.metadata().count("desk") == 1);
  }

  TEST_CASE(
      "UpdateUser follows AIP-134: no mask = the populated fields, '*' = replace, paths = those fields") {
    ServerFixture f;
    User created;
    REQUIRE(f.create("ada", &created).ok());  // email ada@example.com, display_name "User ada"
    User change;
    change.set_id("ada");
    change.set_display_name("New name");
    User updated;

    SUBCASE("no mask: only what the request populates changes") {
      *change.mutable_created_at() = google::protobuf::util::TimeUtil::SecondsToTimestamp(1);  // output only
      REQUIRE(update(*f.stub, change, {}, &updated).ok());
      CHECK(updated.display_name() == "New name");
      CHECK(updated.email() == "ada@example.com");
      CHECK(updated.created_at().seconds() == created.created_at().seconds());
    }
    SUBCASE("'*': a full replacement; unset fields are cleared") {
      REQUIRE(update(*f.stub, change, {"*"}, &updated).ok());
      CHECK(updated.display_name() == "New name");
      CHECK(updated.email().empty());
      CHECK(updated.created_at().seconds() == created.created_at().seconds());
    }
    SUBCASE("named paths: exactly those, cleared when the request leaves them unset") {
      REQUIRE(update(*f.stub, change, {"email"}, &updated).ok());
      CHECK(updated.email().empty());
      CHECK(updated.display_name() == "User ada");
    }
    SUBCASE("'*' beside another path is INVALID_ARGUMENT") {
      auto status = update(*f.stub, change, {"*", "email"}, &updated);
      CHECK(status.error_code() == StatusCode::INVALID_ARGUMENT);
      CHECK(violated_field(status) == "update_mask.paths");
    }
    User stored;
    myservice::v1::GetUserRequest get;
    get.set_id("ada");
    REQUIRE(f.stub->GetUser(context().get(), get, &stored).ok());
    // What the reply said is what was stored; a refused update stored nothing.
    CHECK(stored.email() == (updated.id().empty() ? created.email() : updated.email()));
    CHECK(stored.display_name() == (updated.id().empty() ? created.display_name() : updated.display_name()));
  }

  TEST_CASE("UpdateUser rejects server-set, unknown and missing fields, and unknown users") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    User change;
    change.set_id("ada");
    User out;
    for (std::string path : {"id", "created_at", "created_at.seconds", "nickname", "no_such_field"}) {
      auto status = update(*f.stub, change, {path}, &out);
      CHECK_MESSAGE(status.error_code() == StatusCode::INVALID_ARGUMENT, path);
      CHECK(violated_field(status) == "update_mask.paths");
      CHECK(status.error_message().find(path) != std::string::npos);
    }
    User no_id;
    auto status = update(*f.stub, no_id, {"email"}, &out);
    CHECK(status.error_code() == StatusCode::INVALID_ARGUMENT);
    CHECK(violated_field(status) == "user.id");
    change.set_id("nobody");
    status = update(*f.stub, change, {"email"}, &out);
    CHECK(status.error_code() == StatusCode::NOT_FOUND);
    CHECK(status.error_message() == "User nobody not found");
  }

  TEST_CASE("the nullable age tells unset from zero through a wrapper") {
    ServerFixture f;
    User created;
    REQUIRE(f.create("ada", &created).ok());
    CHECK_FALSE(created.has_age());
    User change;
    change.set_id("ada");
    change.mutable_age()->set_value(0);
    User updated;
    REQUIRE(update(*f.stub, change, {"age"}, &updated).ok());
    CHECK(updated.has_age());
    CHECK(updated.age().value() == 0);
    User clear;
    clear.set_id("ada");
    REQUIRE(update(*f.stub, clear, {"age"}, &updated).ok());
    CHECK_FALSE(updated.has_age());
  }

  TEST_CASE("DeleteUser removes a user; deleting again is NOT_FOUND") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    myservice::v1::DeleteUserRequest request;
    request.set_id("ada");
    google::protobuf::Empty empty;
    REQUIRE(f.stub->DeleteUser(context().get(), request, &empty).ok());
    CHECK(f.server.service().user_count() == 0);
    CHECK(f.stub->DeleteUser(context().get(), request, &empty).error_code() == StatusCode::NOT_FOUND);
    request.set_id("");
    CHECK(violated_field(f.stub->DeleteUser(context().get(), request, &empty)) == "id");
  }

  TEST_CASE("DeleteUser with allow_missing succeeds for a missing user and changes nothing (AIP-135)") {
    ServerFixture f;
    REQUIRE(f.create("ada").ok());
    REQUIRE(f.create("bob").ok());
    myservice::v1::DeleteUserRequest request;
    request.set_id("ada");
    request.set_allow_missing(true);
    google::protobuf::Empty empty;
    REQUIRE(f.stub->DeleteUser(context().get(), request, &empty).ok());
    CHECK(f.stub->DeleteUser(context().get(), request, &empty).ok());
    request.set_id("never-was");
    CHECK(f.stub->DeleteUser(context().get(), request, &empty).ok());
    CHECK(f.server.service().user_count() == 1);
    // Only the real delete is an event.
    CHECK(f.server.service().last_sequence() == 3);
  }

  TEST_CASE("WatchUsers sends a heartbeat at once, then change events in order") {
    ServerFixture f;
    auto ctx = context();
    auto reader = f.stub->WatchUsers(ctx.get(), {});
    myservice::v1::UserEvent event;
    REQUIRE(reader->Read(&event));
    CHECK(event.type() == "heartbeat");
    REQUIRE(f.create("ada").ok());
    User change;
    change.set_id("ada");
    change.set_display_name("Countess");
    User out;
    REQUIRE(update(*f.stub, change, {"display_name"}, &out).ok());
    myservice::v1::DeleteUserRequest del;
    del.set_id("ada");
    google::protobuf::Empty empty;
    REQUIRE(f.stub->DeleteUser(context().get(), del, &empty).ok());

    std::vector<std::string> types;
    std::int64_t last = 0;
    while (types.size() < 3 && reader->Read(&event)) {
      if (event.type() == "heartbeat") continue;
      CHECK(event.sequence() > last);
      last = event.sequence();
      CHECK(event.user().id() == "ada");
      types.push_back(event.type());
    }
    CHECK(types == std::vector<std::string>{"created", "updated", "deleted"});
    ctx->TryCancel();
    CHECK(reader->Finish().error_code() == StatusCode::CANCELLED);
  }

  TEST_CASE("WatchUsers repeats heartbeats at the configured interval") {
    stubkit::testing::EmbeddedServerOptions options;
    options.service.heartbeat_interval = 10ms;
    ServerFixture f(options);
    auto ctx = context();
    auto reader = f.stub->WatchUsers(ctx.get(), {});
    myservice::v1::UserEvent event;
    int heartbeats = 0;
    while (heartbeats < 3 && reader->Read(&event)) heartbeats += event.type() == "heartbeat";
    CHECK(heartbeats == 3);
    ctx->TryCancel();
    reader->Finish();
  }

  TEST_CASE("WatchUsers resumes after a sequence and replays what followed it") {
    ServerFixture f;
    for (auto id : {"a", "b", "c"}) REQUIRE(f.create(id).ok());
    myservice::v1::WatchUsersRequest request;
    request.set_after_sequence(1);
    auto ctx = context();
    auto reader = f.stub->WatchUsers(ctx.get(), request);
    std::vector<std::string> ids;
    myservice::v1::UserEvent event;
    while (ids.size() < 2 && reader->Read(&event)) {
      if (event.type() != "heartbeat") ids.push_back(event.user().id());
    }
    CHECK(ids == std::vector<std::string>{"b", "c"});
    ctx->TryCancel();
    reader->Finish();
  }

  TEST_CASE("WatchUsers refuses resume points it cannot honour") {
    stubkit::testing::EmbeddedServerOptions options;
    options.service.event_history = 2;
    ServerFixture f(options);
    for (auto id : {"a", "b", "c", "d"}) REQUIRE(f.create(id).ok());
    auto finish = [&](std::int64_t after) {
      myservice::v1::WatchUsersRequest request;
      request.set_after_sequence(after);
      auto ctx = context();
      auto reader = f.stub->WatchUsers(ctx.get(), request);
      myservice::v1::UserEvent event;
      while (reader->Read(&event)) {
      }
      return reader->Finish();
    };
    CHECK(finish(-1).error_code() == StatusCode::INVALID_ARGUMENT);
    CHECK(finish(5).error_code() == StatusCode::INVALID_ARGUMENT);
    auto old = finish(1);  // events 2..4 are wanted, only 3..4 are kept
    CHECK(old.error_code() == StatusCode::OUT_OF_RANGE);
    CHECK(old.error_message().find("no longer retained") != std::string::npos);
  }

  TEST_CASE("WatchUsers ends on client cancellation and leaves no stream behind") {
    ServerFixture f;
    auto ctx = context();
    auto reader = f.stub->WatchUsers(ctx.get(), {});
    myservice::v1::UserEvent event;
    REQUIRE(reader->Read(&event));
    CHECK(f.server.service().open_streams() == 1);
    ctx->TryCancel();
    CHECK(reader->Finish().error_code() == StatusCode::CANCELLED);
    for (int i = 0; i < 500 && f.server.service().open_streams() != 0; ++i) std::this_thread::sleep_for(2ms);
    CHECK(f.server.service().open_streams() == 0);
  }

  TEST_CASE("WatchUsers ends with OK when the server shuts down") {
    // Over TCP: gRPC's in-process transport may close before the OK arrives.
    stubkit::testing::EmbeddedServer server(tcp_options());
    auto stub =
        UserService::NewStub(grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
    auto ctx = context();
    auto reader = stub->WatchUsers(ctx.get(), {});
    myservice::v1::UserEvent event;
    REQUIRE(reader->Read(&event));
    std::thread stop([&] { server.shutdown(2s); });
    while (reader->Read(&event)) {
    }
    CHECK(reader->Finish().ok());
    stop.join();
  }

  TEST_CASE("BulkCreateUsers counts what it created and reports each failure by index") {
    ServerFixture f;
    REQUIRE(f.create("taken").ok());
    myservice::v1::BulkResp response;
    auto ctx = context();
    auto writer = f.stub->BulkCreateUsers(ctx.get(), &response);
    for (std::string id : {"a", "taken", "b", "bad id", "c"}) {
      myservice::v1::CreateUserRequest request;
      request.mutable_user()->set_id(id);
      REQUIRE(writer->Write(request));
    }
    REQUIRE(writer->WritesDone());
    REQUIRE(writer->Finish().ok());
    CHECK(response.created() == 3);
    REQUIRE(response.failures_size() == 2);
    CHECK(response.failures(0).index() == 1);
    CHECK(response.failures(0).user_id() == "taken");
    CHECK(response.failures(0).code() == static_cast<int>(StatusCode::ALREADY_EXISTS));
    CHECK(response.failures(1).index() == 3);
    CHECK(response.failures(1).code() == static_cast<int>(StatusCode::INVALID_ARGUMENT));
    CHECK(f.server.service().user_count() == 4);
  }

  TEST_CASE("Chat relays a message to every other open stream, stamped with a time") {
    ServerFixture f;
    auto ctx_a = context();
    auto ctx_b = context();
    auto a = f.stub->Chat(ctx_a.get());
    auto b = f.stub->Chat(ctx_b.get());
    // Both streams must be registered before the message is sent.
    for (int i = 0; i < 500 && f.server.service().open_streams() < 2; ++i) std::this_thread::sleep_for(2ms);
    REQUIRE(f.server.service().open_streams() == 2);
    myservice::v1::ChatMessage hello;
    hello.set_sender("a");
    hello.set_text("hello");
    REQUIRE(a->Write(hello));
    myservice::v1::ChatMessage got;
    REQUIRE(b->Read(&got));
    CHECK(got.sender() == "a");
    CHECK(got.text() == "hello");
    CHECK(got.has_sent_at());
    // Half-close both; each stream then ends with OK and the sender got no echo.
    REQUIRE(a->WritesDone());
    REQUIRE(b->WritesDone());
    CHECK_FALSE(a->Read(&got));
    CHECK(a->Finish().ok());
    CHECK_FALSE(b->Read(&got));
    CHECK(b->Finish().ok());
  }
}
