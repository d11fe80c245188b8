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

#include <atomic>
#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

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

// The stubs of a generated XxxPoolStub: one per channel, handed out in
// turn. Thread-safe; next() is one relaxed atomic increment.
template <typename Service>
class StubRing {
 public:
  using Stub = typename Service::Stub;

  // One stub per channel of `channels` (a range of shared_ptr to channels,
  // e.g. ChannelPool::channels()). Refuses an empty range and null channels.
  template <typename Channels>
  explicit StubRing(Channels const& channels) {
    for (auto const& channel : channels) {
      if (!channel)
        throw std::invalid_argument("stubkit: a pool stub's channel " + std::to_string(stubs_.size()) +
                                    " is a null pointer");
      stubs_.push_back(Service::NewStub(channel));
    }
    if (stubs_.empty())
      throw std::invalid_argument("stubkit: a pool stub needs at least one channel, got none");
  }

  std::size_t size() const noexcept { return stubs_.size(); }
  Stub& next() noexcept { return *stubs_[next_.fetch_add(1, std::memory_order_relaxed) % stubs_.size()]; }

 private:
  std::vector<std::unique_ptr<Stub>> stubs_;
  std::atomic<std::size_t> next_{0};
};

}  // namespace detail

}  // namespace stubkit

#endif  // STUBKIT_CLIENT_HPP
