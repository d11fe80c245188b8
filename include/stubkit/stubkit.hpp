// stubkit: the umbrella header. Includes every public SDK header (not the
// testing/ ones, which pull in server code).
#ifndef STUBKIT_STUBKIT_HPP
#define STUBKIT_STUBKIT_HPP

#include "stubkit/channel.hpp"   // IWYU pragma: export
#include "stubkit/deadline.hpp"  // IWYU pragma: export
#include "stubkit/paginate.hpp"  // IWYU pragma: export
#include "stubkit/retry.hpp"     // IWYU pragma: export
#include "stubkit/status.hpp"    // IWYU pragma: export
#include "stubkit/stream.hpp"    // IWYU pragma: export

#endif  // STUBKIT_STUBKIT_HPP
