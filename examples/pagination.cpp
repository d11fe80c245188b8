// pagination: listing every user without loading them all, bounding a
// listing, and resuming one later from a saved page token.
//
// Shows: stubkit::paginate over a generated stub, PaginateOptions (page
// size, max items, a deadline for the whole listing, prefetch), the pages
// view with next_page_token, resuming, and the reference client's
// list_all_users through stubkit::UserClient.
//
//   pagination    # runs against an embedded UserService with 250 users
#include <chrono>
#include <iostream>
#include <string>

#include "example_args.hpp"
#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/paginate.hpp"
#include "stubkit/testing/embedded_server.hpp"
#include "stubkit/user_client.hpp"

using myservice::v1::ListUsersRequest;
using Stub = myservice::v1::UserService::Stub;

int main(int argc, char** argv) {
  example::embedded_only(
      argc, argv, "pagination",
      "listing every user page by page, bounding a listing, resuming it from a saved token");
  stubkit::testing::EmbeddedServer server;
  server.service().preload(250);
  auto stub = myservice::v1::UserService::NewStub(server.channel());

  // Every user, one page in memory at a time.
  std::size_t count = 0;
  for (auto& user : stubkit::paginate(*stub, &Stub::ListUsers, ListUsersRequest{})) {
    if (!user) {
      std::cerr << "listing failed: " << user.error().to_string() << "\n";
      return 1;
    }
    ++count;
  }
  std::cout << "listed " << count << " users\n";

  // A bounded listing: pages of 20, at most 50 users, 10 s for the whole walk,
  // the next page fetched while this one is consumed.
  stubkit::PaginateOptions options;
  options.page_size = 20;
  options.max_items = 50;
  options.deadline = std::chrono::system_clock::now() + std::chrono::seconds(10);
  options.prefetch = true;
  std::size_t bounded = 0;
  for (auto& user : stubkit::paginate(*stub, &Stub::ListUsers, ListUsersRequest{}, options)) {
    if (!user) return 1;
    ++bounded;
  }
  std::cout << "bounded listing stopped at " << bounded << " users\n";

  // Page by page, saving where we are; stop after two pages.
  ListUsersRequest request;
  request.set_page_size(100);
  std::string saved_token;
  int pages = 0;
  for (auto& page : stubkit::paginate_pages(*stub, &Stub::ListUsers, request)) {
    if (!page) return 1;
    saved_token = page->next_page_token();
    if (++pages == 2) break;
  }
  std::cout << "read " << pages << " pages, saved token " << saved_token.substr(0, 12) << "...\n";

  // Later, perhaps in another process: resume from the saved token.
  request.set_page_token(saved_token);
  std::size_t rest = 0;
  for (auto& user : stubkit::paginate(*stub, &Stub::ListUsers, request)) {
    if (!user) return 1;
    ++rest;
  }
  std::cout << "resumed and listed the remaining " << rest << " users\n";

  // The reference client's list_all_users, for small listings.
  stubkit::UserClient client(server.channel());
  auto all = client.list_all_users();
  if (!all) return 1;
  std::cout << "list_all_users returned " << all->size() << " users\n";

  bool const ok = count == 250 && bounded == 50 && rest == 50 && all->size() == 250;
  return ok ? 0 : 1;
}
