// A BookService for the tests: `count` books, paged by an offset token,
// each page also listing one unreachable location (a second repeated field).
#ifndef STUBKIT_TESTS_BOOK_SHELF_HPP
#define STUBKIT_TESTS_BOOK_SHELF_HPP

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <string>
#include <vector>

#include "library/v1/book.grpc.pb.h"

namespace stubkit_tests {

class BookShelf final : public library::v1::BookService::Service {
 public:
  explicit BookShelf(int count) {
    for (int i = 0; i < count; ++i) {
      library::v1::Book book;
      book.set_name("shelves/s/books/" + std::to_string(i));
      book.set_title("Book " + std::to_string(i));
      books_.push_back(book);
    }
  }
  grpc::Status ListBooks(grpc::ServerContext*, library::v1::ListBooksRequest const* request,
                         library::v1::ListBooksResponse* response) override {
    std::size_t start = request->page_token().empty() ? 0 : std::stoul(request->page_token());
    std::size_t const size = request->page_size() > 0 ? request->page_size() : 10;
    for (std::size_t i = start; i < std::min(books_.size(), start + size); ++i)
      *response->add_books() = books_[i];
    response->add_unreachable("shelves/elsewhere");
    if (start + size < books_.size()) response->set_next_page_token(std::to_string(start + size));
    return grpc::Status::OK;
  }

 private:
  std::vector<library::v1::Book> books_;
};

}  // namespace stubkit_tests

#endif  // STUBKIT_TESTS_BOOK_SHELF_HPP
