// Built as C++20: the pagination ranges model std::ranges::input_range.
// Compiling this file is the test.
#include <ranges>

#include "library/v1/book.grpc.pb.h"
#include "stubkit/paginate.hpp"
#include "stubkit/user_client.hpp"

namespace {
using UserStub = myservice::v1::UserService::StubInterface;
using Items = decltype(stubkit::paginate(std::declval<UserStub&>(), &UserStub::ListUsers,
                                         myservice::v1::ListUsersRequest{}));
using Pages = decltype(stubkit::paginate_pages(std::declval<UserStub&>(), &UserStub::ListUsers,
                                               myservice::v1::ListUsersRequest{}));

static_assert(__cplusplus >= 202002L, "this file is the C++20 check");
static_assert(std::ranges::input_range<Items>);
static_assert(std::ranges::input_range<Pages>);
static_assert(std::input_iterator<std::ranges::iterator_t<Items>>);
static_assert(std::sentinel_for<std::ranges::sentinel_t<Items>, std::ranges::iterator_t<Items>>);
static_assert(std::same_as<std::ranges::range_value_t<Items>, stubkit::Result<myservice::v1::User>>);
static_assert(
    std::same_as<std::ranges::range_value_t<Pages>, stubkit::Result<myservice::v1::ListUsersResponse>>);
}  // namespace
