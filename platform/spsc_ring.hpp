// Bounded wait-free single-producer/single-consumer ring: hands samples from one
// collector thread to one consumer with no locks and no allocation after construction.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <concepts>
#include <cstddef>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "platform/cache_line.hpp"

namespace vantage::platform {

// Thread contract: at any moment one thread acts as the producer (try_push,
// try_emplace, try_push_n) and one as the consumer (try_pop, try_pop_n, drain).
// Moving a role to another thread needs external synchronisation (join, mutex, ...).
// size_approx(), empty_approx() and capacity() may be called from any thread.
//
// Indices grow monotonically and are masked with capacity - 1 only to address a slot.
// Unsigned wrap-around keeps `tail - head` exact (the capacity is a power of two, so it
// divides 2^N), and since "full" (tail - head == capacity) and "empty" (tail == head)
// are distinct states no slot is sacrificed: a ring of capacity 1 holds one item.
//
// Each side keeps a private copy of the other side's index and re-reads the shared one
// only when its copy says full (producer) or empty (consumer). In steady state the two
// index cache lines therefore stay in their owner's cache instead of bouncing between
// cores on every operation.
// Lets tests start both indices just below the wrap of size_t, which real traffic reaches
// only after 2^32 items on 32-bit targets. Defined by the tests only.
struct SpscRingTestAccess;

template <typename T>
class SpscRing {
  friend struct SpscRingTestAccess;

  static_assert(std::is_nothrow_move_constructible_v<T>, "SpscRing<T> requires a nothrow move constructor");
  static_assert(std::is_nothrow_destructible_v<T>, "SpscRing<T> requires a nothrow destructor");

 public:
  using value_type = T;

  // Capacity is rounded up to a power of two (5 -> 8, 1 -> 1). Throws
  // std::invalid_argument for 0 and std::length_error if the slots cannot be addressed.
  explicit SpscRing(std::size_t requested_capacity)
      : mask_(round_capacity(requested_capacity) - 1), slots_(allocate_slots(mask_ + 1)) {}

  SpscRing(const SpscRing&) = delete;
  SpscRing& operator=(const SpscRing&) = delete;
  SpscRing(SpscRing&&) = delete;
  SpscRing& operator=(SpscRing&&) = delete;

  ~SpscRing() {
    // Relaxed: both threads must be done with the ring before it is destroyed, and
    // whatever ended their use (join, handoff) already ordered their stores before this.
    const std::size_t tail = tail_.load(std::memory_order_relaxed);
    for (std::size_t i = head_.load(std::memory_order_relaxed); i != tail; ++i) {
      std::destroy_at(slot(i));
    }
    ::operator delete (slots_, std::align_val_t{kSlotAlignment});
  }

  // ---- producer side ----

  [[nodiscard]] bool try_push(const T& item) noexcept(std::is_nothrow_copy_constructible_v<T>) {
    return try_emplace(item);
  }

  [[nodiscard]] bool try_push(T&& item) noexcept { return try_emplace(std::move(item)); }

  template <typename... Args>
  requires std::constructible_from<T, Args&&...>
  [[nodiscard]] bool try_emplace(Args&&... args) noexcept(std::is_nothrow_constructible_v<T, Args&&...>) {
    // Relaxed: only this thread ever writes tail_.
    const std::size_t tail = tail_.load(std::memory_order_relaxed);
    if (tail - cached_head_ == capacity()) {
      // Acquire: pairs with the consumer's release of head_, so its move out of the
      // slot we are about to reuse happens-before we construct into it.
      cached_head_ = head_.load(std::memory_order_acquire);
      if (tail - cached_head_ == capacity()) {
        return false;
      }
    }
    // A throwing constructor leaves the ring unchanged: nothing is published yet.
    std::construct_at(slot(tail), std::forward<Args>(args)...);
    // Release: the constructed item becomes visible no later than the new tail.
    tail_.store(tail + 1, std::memory_order_release);
    return true;
  }

  // Copies as many of items[0, n) as fit and publishes them with one store.
  // Returns how many were pushed (0 when full).
  [[nodiscard]] std::size_t try_push_n(
      const T* items, std::size_t n) noexcept requires std::is_nothrow_copy_constructible_v<T> {
    // Relaxed: only this thread ever writes tail_.
    const std::size_t tail = tail_.load(std::memory_order_relaxed);
    std::size_t free_slots = capacity() - (tail - cached_head_);
    if (free_slots < n) {
      // Acquire: as in try_emplace, the consumer is done with every slot before head_.
      cached_head_ = head_.load(std::memory_order_acquire);
      free_slots = capacity() - (tail - cached_head_);
    }
    const std::size_t count = std::min(n, free_slots);
    if (count == 0) {
      return 0;
    }
    // Two contiguous runs (before and after the wrap) so trivially copyable items
    // become plain memcpy instead of a masked per-item loop.
    const std::size_t start = tail & mask_;
    const std::size_t first = std::min(count, capacity() - start);
    std::uninitialized_copy_n(items, first, slots_ + start);
    std::uninitialized_copy_n(items + first, count - first, slots_);
    // Release: a single store publishes the whole batch.
    tail_.store(tail + count, std::memory_order_release);
    return count;
  }

  // ---- consumer side ----

  [[nodiscard]] bool try_pop(T& out) noexcept(std::is_nothrow_move_assignable_v<T>) {
    // Relaxed: only this thread ever writes head_.
    const std::size_t head = head_.load(std::memory_order_relaxed);
    if (head == cached_tail_) {
      // Acquire: pairs with the producer's release of tail_ so the slot contents are visible.
      cached_tail_ = tail_.load(std::memory_order_acquire);
      if (head == cached_tail_) {
        return false;
      }
    }
    T* const item = slot(head);
    // A throwing move assignment leaves the item in the ring: head_ is not advanced.
    out = std::move(*item);
    std::destroy_at(item);
    // Release: our read and destruction of the slot complete before the producer,
    // which acquires head_, may construct into it again.
    head_.store(head + 1, std::memory_order_release);
    return true;
  }

  // Moves up to `max` items into out[0, max) and frees their slots with one store.
  // Returns how many were popped (0 when empty).
  [[nodiscard]] std::size_t try_pop_n(
      T* out, std::size_t max) noexcept requires std::is_nothrow_move_assignable_v<T> {
    // Relaxed: only this thread ever writes head_.
    const std::size_t head = head_.load(std::memory_order_relaxed);
    const std::size_t count = readable(head, max);
    if (count == 0) {
      return 0;
    }
    const std::size_t start = head & mask_;
    const std::size_t first = std::min(count, capacity() - start);
    std::move(slots_ + start, slots_ + start + first, out);
    std::destroy_n(slots_ + start, first);
    std::move(slots_, slots_ + (count - first), out + first);
    std::destroy_n(slots_, count - first);
    // Release: the whole batch has been read and destroyed before the producer may reuse it.
    head_.store(head + count, std::memory_order_release);
    return count;
  }

  // Calls f(T&&) on up to `max` items in FIFO order, in place (no default-constructed
  // output needed). An item counts as consumed once f returns; if f throws, the items
  // consumed so far are released and the one f threw on stays at the front.
  template <typename F>
  requires std::invocable<F&, T&&> std::size_t drain(F&& f, std::size_t max) {
    // Relaxed: only this thread ever writes head_.
    const std::size_t head = head_.load(std::memory_order_relaxed);
    const std::size_t count = readable(head, max);
    if (count == 0) {
      return 0;
    }
    HeadPublisher publisher(head_, head);
    for (std::size_t i = 0; i < count; ++i) {
      T* const item = slot(head + i);
      f(std::move(*item));
      std::destroy_at(item);
      publisher.advance();
    }
    return count;
  }

  // ---- any thread ----

  // Number of items at some recent moment; exact when neither side is active.
  [[nodiscard]] std::size_t size_approx() const noexcept {
    // Acquire: orders the tail_ load after this one, and since the consumer had
    // acquired a tail >= head before releasing head, the tail we read cannot be older
    // than that, so the difference never underflows.
    const std::size_t head = head_.load(std::memory_order_acquire);
    // Relaxed: only a count is derived, no slot is read through it.
    const std::size_t tail = tail_.load(std::memory_order_relaxed);
    // The producer may have run ahead of the head we saw, past one full lap.
    return std::min(tail - head, capacity());
  }

  [[nodiscard]] bool empty_approx() const noexcept { return size_approx() == 0; }

  [[nodiscard]] std::size_t capacity() const noexcept { return mask_ + 1; }

 private:
  // Slots start on their own cache line and occupy whole lines, so the first and last
  // slots never share a line with the indices below or with a neighbouring allocation.
  static constexpr std::size_t kSlotAlignment = std::max(alignof(T), kCacheLineSize);
  static constexpr std::size_t kMaxCapacity =
      std::bit_floor((std::numeric_limits<std::size_t>::max() - kSlotAlignment) / sizeof(T));

  // Stores the consumer's progress on scope exit, so drain() releases what it
  // consumed even if the callback throws.
  class HeadPublisher {
   public:
    HeadPublisher(std::atomic<std::size_t>& head, std::size_t position) noexcept
        : head_(head), position_(position) {}
    HeadPublisher(const HeadPublisher&) = delete;
    HeadPublisher& operator=(const HeadPublisher&) = delete;
    ~HeadPublisher() {
      // Release: every consumed slot is read and destroyed before the producer reuses it.
      head_.store(position_, std::memory_order_release);
    }
    void advance() noexcept { ++position_; }

   private:
    std::atomic<std::size_t>& head_;
    std::size_t position_;
  };

  static std::size_t round_capacity(std::size_t requested) {
    if (requested == 0) {
      throw std::invalid_argument("SpscRing capacity must be at least 1");
    }
    if (requested > kMaxCapacity) {
      throw std::length_error("SpscRing capacity too large");
    }
    return std::bit_ceil(requested);
  }

  static T* allocate_slots(std::size_t capacity) {
    const std::size_t bytes = (capacity * sizeof(T) + kSlotAlignment - 1) / kSlotAlignment * kSlotAlignment;
    return static_cast<T*>(::operator new (bytes, std::align_val_t{kSlotAlignment}));
  }

  // Consumer only: how many items (up to max) are readable starting at head.
  std::size_t readable(std::size_t head, std::size_t max) noexcept {
    std::size_t available = cached_tail_ - head;
    if (available < max) {
      // Acquire: pairs with the producer's release of tail_ so the slot contents are visible.
      cached_tail_ = tail_.load(std::memory_order_acquire);
      available = cached_tail_ - head;
    }
    return std::min(max, available);
  }

  T* slot(std::size_t index) const noexcept { return slots_ + (index & mask_); }

  // Written once in the constructor and then only read, by both threads; kept on a
  // line of its own so index stores never invalidate it.
  alignas(kCacheLineSize) const std::size_t mask_;
  T* const slots_;

  // Producer's line: tail_ is written here and read by the consumer only when its
  // cached copy runs out; cached_head_ is private to the producer.
  alignas(kCacheLineSize) std::atomic<std::size_t> tail_{0};
  std::size_t cached_head_ = 0;

  // Consumer's line, mirror image of the producer's. The class alignment pads the
  // object to a whole line, so nothing allocated after the ring shares it.
  alignas(kCacheLineSize) std::atomic<std::size_t> head_{0};
  std::size_t cached_tail_ = 0;
};

}  // namespace vantage::platform
