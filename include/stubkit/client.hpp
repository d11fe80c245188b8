// What the clients protoc-gen-stubkit generates build on (docs/codegen.md).
// A generated `<name>.stubkit.h` includes this header; programs include the
// generated one:
//
//   #include "library/v1/book.stubkit.h"
//
//   stubkit::ClientOptions defaults;
//   defaults.call.timeout = 2s;
//   library::v1::BookServiceClient books(channel, defaults);
//   auto book = books.get_book(request);            // Result<Book>, retried if declared idempotent
//   for (auto& b : books.list_books(request)) ...   // every page, lazily
#ifndef STUBKIT_CLIENT_HPP
#define STUBKIT_CLIENT_HPP

#include <memory>
#include <stdexcept>
#include <utility>

#include "stubkit/async.hpp"
#include "stubkit/async_paginate.hpp"
#include "stubkit/async_stream.hpp"
#include "stubkit/method.hpp"
#include "stubkit/paginate.hpp"
#include "stubkit/retry.hpp"
#include "stubkit/stream.hpp"

namespace stubkit {

/// The defaults of a generated client: each call, listing and stream it
/// makes starts from these (a call's own options replace them whole).
struct ClientOptions {
  /// Unary calls, and the page calls of async listings.
  CallOptions call;
  /// Listings (List methods shaped as AIP-158).
  PaginateOptions paginate;
  /// Server, client and bidirectional streams.
  StreamOptions stream;
};

namespace detail {

// A generated client's stub, refused when null (every call would crash).
template <typename Stub>
std::shared_ptr<Stub> require_stub(std::shared_ptr<Stub> stub) {
  if (!stub) throw std::invalid_argument("stubkit: a generated client needs a stub, got a null pointer");
  return stub;
}

}  // namespace detail

}  // namespace stubkit

#endif  // STUBKIT_CLIENT_HPP
