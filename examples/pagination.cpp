// pagination: listing every user without loading them all, bounding a
// listing, and resuming one later from a saved page token.
//
// Shows: stubkit::paginate over a generated stub, PaginateOptions (page
// size, max items, a deadline for the whole listing, prefetch), the pages
// view with next_page_token, resuming, and the reference client's
// list_all_users through stubkit::UserClient.
//
//   pagination [--target HOST:PORT] [--token T]
//
// Embedded, the server holds 250 users; against a running server, whatever
// it holds (`user_server --preload 250` gives the same listing).
#include <chrono>
#include <iostream>
#include <string>

#include "example.hpp"
#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/paginate.hpp"
#include "stubkit/user_client.hpp"

using myservice::v1::ListUsersRequest;
using Stub = myservice::v1::UserService::Stub;

int main(int argc, char** argv) {
  auto const flags =
      example::parse(argc, argv, "pagination",
                     "listing every user page by page, bounding a listing, resuming it from a saved token",
                     "user_server --preload 250 (or any number of users)");
  example::Servers servers(flags, /*preload=*/250);
  auto channel = servers.channel();
  auto stub = myservice::v1::UserService::NewStub(channel);

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
  std::size_t const expected_bounded = count < 50 ? count : 50;

  // Page by page, saving where we are; stop after two pages.
  ListUsersRequest request;
  request.set_page_size(100);
  std::string saved_token;
  int pages = 0;
  std::size_t in_pages = 0;
  for (auto& page : stubkit::paginate_pages(*stub, &Stub::ListUsers, request)) {
    if (!page) return 1;
    saved_token = page->next_page_token();
    in_pages += static_cast<std::size_t>(page->users_size());
    if (++pages == 2 || saved_token.empty()) break;
  }
  std::cout << "read " << pages << " pages, saved token " << saved_token.substr(0, 12) << "...\n";

  // Later, perhaps in another process: resume from the saved token (an
  // empty one means the listing was complete).
  std::size_t rest = 0;
  if (!saved_token.empty()) {
    request.set_page_token(saved_token);
    for (auto& user : stubkit::paginate(*stub, &Stub::ListUsers, request)) {
      if (!user) return 1;
      ++rest;
    }
  }
  std::cout << "resumed and listed the remaining " << rest << " users\n";

  // The reference client's list_all_users, for small listings.
  stubkit::UserClient client(channel);
  auto all = client.list_all_users();
  if (!all) return 1;
  std::cout << "list_all_users returned " << all->size() << " users\n";

  // Every count agrees with the first listing (as long as nothing else
  // writes to the server meanwhile).
  bool const ok = (servers.remote() || count == 250) && bounded == expected_bounded &&
                  in_pages + rest == count && all->size() == count;
  return ok ? 0 : 1;
}
