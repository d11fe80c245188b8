// Internal: the iterator shared by stubkit's lazy input ranges (pagination,
// streams). Not part of the public API.
#ifndef STUBKIT_DETAIL_INPUT_RANGE_HPP
#define STUBKIT_DETAIL_INPUT_RANGE_HPP

#include <cstddef>
#include <iterator>

namespace stubkit::detail {

// The end of a lazily produced range.
struct RangeEnd {};

// An input iterator over a range that produces values one at a time through
// `advance()` and exposes the current one as `current()`.
template <typename Range>
class InputIterator {
 public:
  using iterator_category = std::input_iterator_tag;
  using value_type = typename Range::value_type;
  using difference_type = std::ptrdiff_t;
  using pointer = value_type*;
  using reference = value_type&;

  InputIterator() = default;
  explicit InputIterator(Range* range) : range_(range) {}

  reference operator*() const { return range_->current(); }
  pointer operator->() const { return &range_->current(); }
  InputIterator& operator++() {
    range_->advance();
    return *this;
  }
  void operator++(int) { ++*this; }
  bool at_end() const { return range_->at_end(); }

  friend bool operator==(InputIterator const& it, RangeEnd) { return it.at_end(); }
  friend bool operator==(RangeEnd s, InputIterator const& it) { return it == s; }
  friend bool operator!=(InputIterator const& it, RangeEnd s) { return !(it == s); }
  friend bool operator!=(RangeEnd s, InputIterator const& it) { return !(it == s); }

 private:
  Range* range_ = nullptr;
};

// The begin/end of a range that produces its first value on begin(). A
// Derived class provides value_type, current(), at_end() and advance(),
// and befriends InputIterator<Derived> and LazyRange<Derived>.
template <typename Derived>
class LazyRange {
 public:
  /// Starts the range (produces the first value). Call once.
  InputIterator<Derived> begin() {
    auto* self = static_cast<Derived*>(this);
    if (!started_) {
      started_ = true;
      self->advance();
    }
    return InputIterator<Derived>(self);
  }
  RangeEnd end() const { return {}; }

 private:
  bool started_ = false;
};

}  // namespace stubkit::detail

#endif  // STUBKIT_DETAIL_INPUT_RANGE_HPP
