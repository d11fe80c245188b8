// AIP-158 listings that outlive a process and span backends: page tokens
// signed with a key kept beside the journal survive a restart (also
// SIGKILL), and backends sharing a key file accept each other's tokens, so a
// listing behind round_robin returns every user once.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <csignal>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "process.hpp"
#include "stubkit/channel.hpp"
#include "support.hpp"

using namespace stubkit_tests;
using grpc::StatusCode;

namespace {

// u00000001 .. u0000000N: the ids `preload(N)` gives an empty service.
std::vector<std::string> preloaded_ids(int n) {
  std::vector<std::string> ids;
  for (int i = 1; i <= n; ++i) {
    std::string digits = std::to_string(i);
    ids.push_back("u" + std::string(8 - digits.size(), '0') + digits);
  }
  return ids;
}

// One page of a listing: the ids, the next token, the status and the
// backend that served it (trailing metadata stubkit-server-id).
struct Page {
  grpc::Status status;
  std::vector<std::string> ids;
  std::string next_page_token;
  std::string server_id;
};

Page list_page(UserService::Stub& stub, std::string const& token, int page_size) {
  myservice::v1::ListUsersRequest request;
  request.set_page_size(page_size);
  request.set_page_token(token);
  myservice::v1::ListUsersResponse response;
  auto ctx = context();
  Page page;
  page.status = stub.ListUsers(ctx.get(), request, &response);
  for (auto const& user : response.users()) page.ids.push_back(user.id());
  page.next_page_token = response.next_page_token();
  auto const& trailers = ctx->GetServerTrailingMetadata();
  if (auto it = trailers.find("stubkit-server-id"); it != trailers.end()) {
    page.server_id.assign(it->second.data(), it->second.size());
  }
  return page;
}

// Lists to the end from `token`, appending ids to `ids` and the backend of
// each page to `served`; false (with the failing status checked) on error.
bool list_rest(UserService::Stub& stub, std::string token, int page_size, std::vector<std::string>* ids,
               std::vector<std::string>* served = nullptr) {
  for (int pages = 0; pages < 1000; ++pages) {
    Page page = list_page(stub, token, page_size);
    if (!page.status.ok()) {
      FAIL_CHECK("page " << pages + 1 << " failed: " << page.status.error_message());
      return false;
    }
    ids->insert(ids->end(), page.ids.begin(), page.ids.end());
    if (served != nullptr) served->push_back(page.server_id);
    if (page.next_page_token.empty()) return true;
    token = page.next_page_token;
  }
  FAIL_CHECK("the listing did not end after 1000 pages");
  return false;
}

std::string user_server_path() {
  char const* path = std::getenv("STUBKIT_USER_SERVER");
  REQUIRE_MESSAGE(path != nullptr, "the test suite sets STUBKIT_USER_SERVER");
  return path;
}

std::unique_ptr<UserService::Stub> stub_for(std::string const& target) {
  return UserService::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
}

void write_key(std::filesystem::path const& file, std::string const& key) {
  std::ofstream(file, std::ios::binary | std::ios::trunc) << key;
  std::filesystem::permissions(file,
                               std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
}

}  // namespace

TEST_SUITE("listing") {
  TEST_CASE("a listing of a durable service resumes with its token after a restart") {
    TempDir dir;
    stubkit::testing::EmbeddedServerOptions options;
    options.service.data_path = (dir.path / "users.journal").string();
    std::vector<std::string> ids;
    std::string token;
    {
      ServerFixture f(options);
      f.server.service().preload(7);
      Page first = list_page(*f.stub, "", 3);
      REQUIRE(first.status.ok());
      ids = first.ids;
      token = first.next_page_token;
      REQUIRE(!token.empty());
    }
    // The key was kept beside the journal, for its owner only.
    struct stat info {};
    REQUIRE(::stat((dir.path / "users.journal.key").c_str(), &info) == 0);
    CHECK((info.st_mode & 0777) == 0600);
    CHECK(info.st_size == 32);

    ServerFixture f(options);
    REQUIRE(list_rest(*f.stub, token, 3, &ids));
    CHECK(ids == preloaded_ids(7));
  }

  TEST_CASE("without a shared key, another server's token is INVALID_ARGUMENT naming page_token") {
    ServerFixture a, b;  // memory only: a random key each
    a.server.service().preload(4);
    b.server.service().preload(4);
    Page first = list_page(*a.stub, "", 2);
    REQUIRE(first.status.ok());
    Page second = list_page(*b.stub, first.next_page_token, 2);
    CHECK(second.status.error_code() == StatusCode::INVALID_ARGUMENT);
    CHECK(violated_field(second.status) == "page_token");
  }

  TEST_CASE("servers given the same page_token_key accept each other's tokens") {
    stubkit::testing::EmbeddedServerOptions options;
    options.service.page_token_key = std::string(32, 'k');
    ServerFixture a(options), b(options);
    a.server.service().preload(5);
    b.server.service().preload(5);
    Page first = list_page(*a.stub, "", 2);
    REQUIRE(first.status.ok());
    std::vector<std::string> ids = first.ids;
    REQUIRE(list_rest(*b.stub, first.next_page_token, 2, &ids));
    CHECK(ids == preloaded_ids(5));
  }

  TEST_CASE("a page_token_key of the wrong size is refused when the service is made") {
    stubkit::testing::UserServiceOptions options;
    options.page_token_key = "short";
    CHECK_THROWS_AS(stubkit::testing::UserServiceImpl{options}, std::invalid_argument);
  }

  TEST_CASE("user_server --data: a listing survives kill -9 between pages, no gap and no repeat") {
    std::string const user_server = user_server_path();
    TempDir dir;
    std::string const file = (dir.path / "users.journal").string();
    std::vector<std::string> const args{user_server, "--data", file, "--preload", "10"};
    std::vector<std::string> ids;
    std::string token;
    {
      Process server(args);
      std::string const address = start_user_server(server);
      REQUIRE(!address.empty());
      Page first = list_page(*stub_for(address), "", 4);
      REQUIRE(first.status.ok());
      ids = first.ids;
      token = first.next_page_token;
      server.stop(SIGKILL);
    }
    Process server(args);  // --preload does nothing: the journal has users
    std::string const address = start_user_server(server);
    REQUIRE(!address.empty());
    REQUIRE(list_rest(*stub_for(address), token, 4, &ids));
    CHECK(ids == preloaded_ids(10));
  }

  TEST_CASE("three user_server backends behind round_robin with a shared key list every user once") {
    std::string const user_server = user_server_path();
    TempDir dir;
    auto const key = dir.path / "page.key";
    write_key(key, "three backends, one page token key");
    std::vector<std::unique_ptr<Process>> backends;
    std::string target = "ipv4:";
    for (int i = 0; i < 3; ++i) {
      backends.push_back(std::make_unique<Process>(
          std::vector<std::string>{user_server, "--preload", "25", "--page-token-key-file", key.string(),
                                   "--server-id", "b" + std::to_string(i)}));
      std::string const address = start_user_server(*backends.back());
      REQUIRE(!address.empty());
      target += (i ? "," : "") + address;
    }
    auto channel = stubkit::make_channel(target);  // round_robin over the three
    REQUIRE(stubkit::wait_until_serving(*channel, "myservice.v1.UserService", 5s).ok());
    auto stub = UserService::NewStub(channel);
    std::vector<std::string> ids;
    std::vector<std::string> served;
    REQUIRE(list_rest(*stub, "", 2, &ids, &served));
    CHECK(ids == preloaded_ids(25));
    // The listing really crossed backends: consecutive pages from different ones.
    int crossings = 0;
    for (std::size_t i = 1; i < served.size(); ++i) crossings += served[i] != served[i - 1] ? 1 : 0;
    CHECK_MESSAGE(crossings >= 1, "every page came from " << served.front());
    CHECK(std::set<std::string>(served.begin(), served.end()).size() >= 2);
  }

  TEST_CASE("user_server --page-token-key-file: a missing or short key stops it with exit status 1") {
    std::string const user_server = user_server_path();
    TempDir dir;
    auto const key = dir.path / "page.key";
    auto expect_refusal = [&](std::string const& expected) {
      Process server({user_server, "--page-token-key-file", key.string()}, /*capture_stderr=*/true);
      std::string const line = server.read_line();
      CHECK(line.find(expected) != std::string::npos);
      int const status = server.wait();
      CHECK(WIFEXITED(status));
      CHECK(WEXITSTATUS(status) == 1);
    };
    expect_refusal("user_server: page token key " + key.string() + ": No such file or directory");
    write_key(key, "0123456789");
    expect_refusal("holds 16 to 4096 bytes, this one 10");
  }
}
