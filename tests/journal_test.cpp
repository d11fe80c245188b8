// The durable store: UserServiceOptions::data_path and user_server --data.
#include <doctest/doctest.h>
#include <sys/resource.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "process.hpp"
#include "support.hpp"

using namespace stubkit_tests;
using grpc::StatusCode;
using myservice::v1::User;
using stubkit::testing::detail::Journal;
using stubkit::testing::detail::siphash24;

namespace {

stubkit::testing::EmbeddedServerOptions durable(std::filesystem::path const& file,
                                                std::vector<std::string>* warnings = nullptr) {
  stubkit::testing::EmbeddedServerOptions options;
  options.service.data_path = file.string();
  options.service.warn = [warnings](std::string const& m) {
    if (warnings != nullptr) warnings->push_back(m);
  };
  return options;
}

std::string read_file(std::filesystem::path const& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(std::filesystem::path const& file, std::string const& data) {
  std::ofstream(file, std::ios::binary | std::ios::trunc) << data;
}

grpc::Status get(ServerFixture& f, std::string const& id, User* out = nullptr) {
  User user;
  auto status = f.stub->GetUser(context().get(), get_request(id), &user);
  if (out != nullptr) *out = user;
  return status;
}

grpc::Status rename(ServerFixture& f, std::string const& id, std::string const& name) {
  myservice::v1::UpdateUserRequest request;
  request.mutable_user()->set_id(id);
  request.mutable_user()->set_display_name(name);
  request.mutable_update_mask()->add_paths("display_name");
  User out;
  return f.stub->UpdateUser(context().get(), request, &out);
}

// Three users, one renamed and one deleted: five records.
void write_history(std::filesystem::path const& file) {
  ServerFixture f(durable(file));
  REQUIRE(f.create("ada", nullptr, "req-ada").ok());
  REQUIRE(f.create("bob").ok());
  REQUIRE(f.create("", nullptr, "req-anon").ok());
  REQUIRE(rename(f, "ada", "Ada Lovelace").ok());
  myservice::v1::DeleteUserRequest del;
  del.set_id("bob");
  google::protobuf::Empty empty;
  REQUIRE(f.stub->DeleteUser(context().get(), del, &empty).ok());
}

// A journal in `dir` holding the creates (user id, request_id) in order,
// made by a service that remembers 2 request_ids; returns its options.
stubkit::testing::EmbeddedServerOptions keyed_journal(
    TempDir const& dir, std::vector<std::pair<std::string, std::string>> const& creates) {
  auto options = durable(dir.path / "users.journal");
  options.service.request_id_capacity = 2;
  ServerFixture f(options);
  for (auto const& [id, request_id] : creates) REQUIRE(f.create(id, nullptr, request_id).ok());
  return options;
}

}  // namespace

TEST_SUITE("journal") {
  TEST_CASE("the record checksum, siphash24, matches the reference vectors of its authors") {
    stubkit::testing::detail::SipKey const key = {0x0706050403020100ULL, 0x0f0e0d0c0b0a0908ULL};
    CHECK(siphash24(key, "") == 0x726fdb47dd0e0e31ULL);
    std::string fifteen;
    for (char c = 0; c < 15; ++c) fifteen.push_back(c);
    CHECK(siphash24(key, fifteen) == 0xa129ca6149be45e5ULL);
  }

  TEST_CASE("users, updates, deletes and request_ids survive a restart") {
    TempDir dir;
    auto const file = dir.path / "users.journal";
    write_history(file);

    ServerFixture f(durable(file));
    CHECK(f.server.service().user_count() == 2);
    User ada;
    REQUIRE(get(f, "ada", &ada).ok());
    CHECK(ada.display_name() == "Ada Lovelace");
    CHECK(ada.created_at().seconds() > 0);
    CHECK(get(f, "bob").error_code() == StatusCode::NOT_FOUND);
    // The idempotency key still answers with the first result, creating nothing.
    User again;
    REQUIRE(f.create("", &again, "req-anon").ok());
    CHECK(again.id() == "u00000001");
    CHECK(f.server.service().user_count() == 2);
    // Server-assigned ids are not handed out again.
    User fresh;
    REQUIRE(f.create("", &fresh).ok());
    CHECK(fresh.id() == "u00000002");
  }

  TEST_CASE("the request_id table is rebuilt on restart with the same capacity") {
    TempDir dir;
    auto options = keyed_journal(dir, {{"a", "req-a"}, {"b", "req-b"}, {"c", "req-c"}});
    ServerFixture f(options);
    CHECK(f.create("a", nullptr, "req-a").error_code() == StatusCode::ALREADY_EXISTS);  // req-a forgotten
    CHECK(f.create("c", nullptr, "req-c").ok());                                        // remembered
    CHECK(f.create("x", nullptr, "req-c").error_code() == StatusCode::FAILED_PRECONDITION);
  }

  TEST_CASE("a request_id reused after it was forgotten replays as the newer entry, once") {
    TempDir dir;
    // req-a is forgotten when req-c comes, so its second use creates a2.
    auto options = keyed_journal(dir, {{"a", "req-a"}, {"b", "req-b"}, {"c", "req-c"}, {"a2", "req-a"}});
    options.service.request_id_capacity = 4;  // the replay keeps all four records' ids
    ServerFixture f(options);
    REQUIRE(f.create("d", nullptr, "req-d").ok());  // one more id: nothing is evicted at 4
    User again;
    REQUIRE(f.create("a2", &again, "req-a").ok());  // still remembered, as the newer request
    CHECK(again.id() == "a2");
    CHECK(f.server.service().user_count() == 5);
  }

  TEST_CASE("without data_path nothing is written and nothing survives") {
    TempDir dir;
    {
      ServerFixture f;
      REQUIRE(f.create("ada").ok());
    }
    ServerFixture f;
    CHECK(f.server.service().user_count() == 0);
    CHECK(std::filesystem::is_empty(dir.path));
  }

  TEST_CASE("a torn last record is ignored with a warning and kept aside; the rest replays") {
    TempDir dir;
    auto const file = dir.path / "users.journal";
    write_history(file);
    std::string const whole = read_file(file);
    // What a process killed in the middle of its last write leaves behind.
    std::string const torn = Journal::encode('C', std::string(40, 'x')).substr(0, 20);
    write_file(file, whole + torn);

    std::vector<std::string> warnings;
    {
      ServerFixture f(durable(file, &warnings));
      CHECK(f.server.service().user_count() == 2);
      REQUIRE(warnings.size() == 1);
      CHECK(warnings[0].find("torn last record at offset " + std::to_string(whole.size())) !=
            std::string::npos);
      CHECK(warnings[0].find("payload cut short") != std::string::npos);
      CHECK(read_file(dir.path / "users.journal.torn") == torn);
      CHECK(read_file(file) == whole);
      REQUIRE(f.create("cleo").ok());  // appends after the last intact record
    }
    warnings.clear();
    ServerFixture f(durable(file, &warnings));
    CHECK(warnings.empty());
    CHECK(get(f, "cleo").ok());
    CHECK(f.server.service().user_count() == 3);
  }

  TEST_CASE("a journal cut inside its first line starts empty") {
    TempDir dir;
    auto const file = dir.path / "users.journal";
    write_file(file, std::string(Journal::kMagic.substr(0, 7)));
    ServerFixture f(durable(file));
    CHECK(f.server.service().user_count() == 0);
    REQUIRE(f.create("ada").ok());
    CHECK(read_file(file).rfind(std::string(Journal::kMagic), 0) == 0);
  }

  TEST_CASE("damage before the last record refuses to start and leaves the file alone") {
    TempDir dir;
    auto const file = dir.path / "users.journal";
    write_history(file);
    std::string damaged = read_file(file);
    std::size_t const second =
        Journal::kMagic.size() + Journal::kHeaderSize +
        static_cast<std::size_t>(static_cast<unsigned char>(damaged[Journal::kMagic.size() + 1]));
    damaged[Journal::kMagic.size() + Journal::kHeaderSize + 3] ^= 0x40;  // inside the first payload
    write_file(file, damaged);
    CHECK(second < damaged.size());
    stubkit::testing::UserServiceOptions options;
    options.data_path = file.string();
    try {
      stubkit::testing::UserServiceImpl service(options);
      FAIL("a corrupt journal was accepted");
    } catch (std::runtime_error const& e) {
      std::string const message = e.what();
      CHECK(message.find(file.string()) != std::string::npos);
      CHECK(message.find("corrupt record at offset " + std::to_string(Journal::kMagic.size())) !=
            std::string::npos);
      CHECK(message.find("checksum mismatch") != std::string::npos);
    }
    CHECK(read_file(file) == damaged);
  }

  TEST_CASE("a file that is not a journal, or a directory, is refused untouched") {
    TempDir dir;
    auto const file = dir.path / "notes.txt";
    write_file(file, "my precious notes\n");
    stubkit::testing::UserServiceOptions options;
    options.data_path = file.string();
    CHECK_THROWS_WITH_AS(stubkit::testing::UserServiceImpl{options},
                         doctest::Contains("not a stubkit journal"), std::runtime_error);
    CHECK(read_file(file) == "my precious notes\n");
    options.data_path = dir.path.string();
    CHECK_THROWS_AS(stubkit::testing::UserServiceImpl{options}, std::runtime_error);
  }

  TEST_CASE("two services cannot share one journal") {
    TempDir dir;
    stubkit::testing::UserServiceOptions options;
    options.data_path = (dir.path / "users.journal").string();
    stubkit::testing::UserServiceImpl first(options);
    CHECK_THROWS_WITH_AS(stubkit::testing::UserServiceImpl{options},
                         doctest::Contains("in use by another process"), std::runtime_error);
  }

  TEST_CASE("a write the disk refuses fails the call with UNAVAILABLE and changes nothing") {
    TempDir dir;
    auto const file = dir.path / "users.journal";
    ServerFixture f(durable(file));
    REQUIRE(f.create("ada").ok());
    auto const size = std::filesystem::file_size(file);
    // The file-size limit makes the next write fail with EFBIG.
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit saved{};
    getrlimit(RLIMIT_FSIZE, &saved);
    rlimit limited = saved;
    limited.rlim_cur = size + 64;
    setrlimit(RLIMIT_FSIZE, &limited);
    myservice::v1::CreateUserRequest request;
    request.mutable_user()->set_id("bob");
    request.mutable_user()->set_display_name(std::string(1000, 'b'));
    myservice::v1::CreateUserResponse response;
    auto const refused = f.stub->CreateUser(context().get(), request, &response);
    auto const rename_refused = rename(f, "ada", std::string(1000, 'a'));
    setrlimit(RLIMIT_FSIZE, &saved);
    std::signal(SIGXFSZ, SIG_DFL);

    CHECK(refused.error_code() == StatusCode::UNAVAILABLE);
    CHECK(refused.error_message().find("cannot store the change") != std::string::npos);
    CHECK(rename_refused.error_code() == StatusCode::UNAVAILABLE);
    CHECK(get(f, "bob").error_code() == StatusCode::NOT_FOUND);
    User ada;
    REQUIRE(get(f, "ada", &ada).ok());
    CHECK(ada.display_name() == "User ada");
    CHECK(std::filesystem::file_size(file) == size);  // rolled back
    REQUIRE(f.create("bob").ok());                    // and usable again
  }

  TEST_CASE("every reply carries the server id in trailing metadata, errors too") {
    auto options = tcp_options();
    options.service.server_id = "backend-7";
    ServerFixture f(options);
    for (std::string const id : {"ada", "nobody"}) {
      auto ctx = context();
      User user;
      if (id == "ada") REQUIRE(f.create("ada").ok());
      auto const status = f.stub->GetUser(ctx.get(), get_request(id), &user);
      CHECK(status.ok() == (id == "ada"));
      auto const& trailers = ctx->GetServerTrailingMetadata();
      auto it = trailers.find("stubkit-server-id");
      REQUIRE(it != trailers.end());
      CHECK(std::string(it->second.data(), it->second.size()) == "backend-7");
    }
  }

  TEST_CASE("user_server --data: acknowledged writes survive SIGKILL") {
    char const* user_server = std::getenv("STUBKIT_USER_SERVER");
    REQUIRE_MESSAGE(user_server != nullptr, "the test suite sets STUBKIT_USER_SERVER");
    TempDir dir;
    std::string const file = (dir.path / "users.journal").string();
    std::vector<std::string> const args{user_server, "--data", file, "--server-id", "b0"};
    std::vector<std::string> acknowledged;
    {
      Process server(args);
      std::string const address = start_user_server(server);
      REQUIRE(!address.empty());
      auto stub = UserService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
      for (int i = 0; i < 200; ++i) {
        myservice::v1::CreateUserRequest request;
        request.mutable_user()->set_display_name("user " + std::to_string(i));
        myservice::v1::CreateUserResponse response;
        REQUIRE(stub->CreateUser(context().get(), request, &response).ok());
        acknowledged.push_back(response.user().id());
      }
      server.stop(SIGKILL);
    }
    Process server(args);
    std::string const address = start_user_server(server);
    REQUIRE(!address.empty());
    auto stub = UserService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    int found = 0;
    for (auto const& id : acknowledged) {
      User user;
      found += stub->GetUser(context().get(), get_request(id), &user).ok() ? 1 : 0;
    }
    CHECK(found == 200);
  }

  TEST_CASE("user_server --sync keeps writes too, and needs --data") {
    char const* user_server = std::getenv("STUBKIT_USER_SERVER");
    REQUIRE(user_server != nullptr);
    {
      Process bad({user_server, "--sync"});
      CHECK(start_user_server(bad).empty());
      int const status = bad.wait();
      CHECK(WIFEXITED(status));
      CHECK(WEXITSTATUS(status) == 2);
    }
    TempDir dir;
    std::string const file = (dir.path / "users.journal").string();
    {
      Process server({user_server, "--data", file, "--sync"});
      std::string const address = start_user_server(server);
      REQUIRE(!address.empty());
      auto stub = UserService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
      myservice::v1::CreateUserRequest request;
      request.mutable_user()->set_id("ada");
      myservice::v1::CreateUserResponse response;
      REQUIRE(stub->CreateUser(context().get(), request, &response).ok());
      server.stop(SIGKILL);
    }
    stubkit::testing::UserServiceOptions options;
    options.data_path = file;
    stubkit::testing::UserServiceImpl service(options);
    CHECK(service.user_count() == 1);
  }

  TEST_CASE("user_server refuses a corrupt journal with a clear message and exit status 1") {
    char const* user_server = std::getenv("STUBKIT_USER_SERVER");
    REQUIRE(user_server != nullptr);
    TempDir dir;
    auto const file = dir.path / "users.journal";
    write_file(file, "not a journal at all");
    Process server({user_server, "--data", file.string()});
    CHECK(start_user_server(server).empty());
    int const status = server.wait();
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 1);
  }
}
