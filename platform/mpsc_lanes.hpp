// Multi-producer/single-consumer queue built from one SpscRing lane per producer;
// the path by which many collector threads feed the single aggregator thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <concepts>
#include <cstddef>
#include <memory>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "platform/spsc_ring.hpp"

namespace vantage::platform {

// Why lanes rather than one bounded MPSC ring (Vyukov-style, per-slot sequence numbers):
//  - No CAS on the hot path. A shared ring makes producers claim slots with a CAS or
//    fetch_add on a common tail; here a push is the plain SpscRing load/store sequence.
//  - Producers never contend on a shared cache line. Each lane's tail line is written by
//    one core only, so adding producers does not add coherence traffic between them.
//  - A stalled producer cannot block anyone. In a Vyukov ring a producer preempted
//    between claiming a slot and publishing it leaves a hole the consumer cannot pass,
//    stalling delivery from every other producer behind it. Here it only delays its
//    own lane.
//  - Ordering is FIFO per producer, which is all the aggregator needs: samples carry
//    their own timestamps, so a total order across producers buys nothing.
// The costs: the consumer polls every lane (cheap for the handful of collector threads
// an agent runs, and an empty lane costs one load of a line that stays cached until its
// producer writes), memory is lane_count x lane_capacity, and a lane's capacity cannot
// be lent to a busier producer.
//
// Thread contract: claim_producer() may be called from any thread; each Producer is
// used by one thread at a time. try_pop_n(), drain() and the size queries on the
// consumer side are called from one consumer thread at a time. A full lane makes the
// push return false; the caller decides whether to count, retry or drop.
template <typename T>
class MpscLanes {
 public:
  using value_type = T;

  // Push handle bound to one lane. Move-only: two copies pushing from different
  // threads would break the lane's single-producer contract. A moved-from handle
  // must not be used.
  class Producer {
   public:
    Producer(Producer&& other) noexcept : lane_(std::exchange(other.lane_, nullptr)) {}
    Producer& operator=(Producer&& other) noexcept {
      lane_ = std::exchange(other.lane_, nullptr);
      return *this;
    }
    Producer(const Producer&) = delete;
    Producer& operator=(const Producer&) = delete;
    ~Producer() = default;

    [[nodiscard]] bool try_push(const T& item) noexcept(std::is_nothrow_copy_constructible_v<T>) {
      return lane_->try_push(item);
    }

    [[nodiscard]] bool try_push(T&& item) noexcept { return lane_->try_push(std::move(item)); }

    template <typename... Args>
    requires std::constructible_from<T, Args&&...>
    [[nodiscard]] bool try_emplace(Args&&... args) noexcept(std::is_nothrow_constructible_v<T, Args&&...>) {
      return lane_->try_emplace(std::forward<Args>(args)...);
    }

    [[nodiscard]] std::size_t try_push_n(
        const T* items, std::size_t n) noexcept requires std::is_nothrow_copy_constructible_v<T> {
      return lane_->try_push_n(items, n);
    }

    // Free slots in this lane may only grow behind the producer's back, so this is a
    // lower bound on what the next pushes can fit.
    [[nodiscard]] std::size_t free_approx() const noexcept {
      return lane_->capacity() - lane_->size_approx();
    }

   private:
    friend class MpscLanes;
    explicit Producer(SpscRing<T>* lane) noexcept : lane_(lane) {}

    SpscRing<T>* lane_;
  };

  // Every lane is allocated here; nothing allocates afterwards. Each lane's capacity
  // is rounded up to a power of two like SpscRing's.
  MpscLanes(std::size_t lane_count, std::size_t lane_capacity) {
    if (lane_count == 0) {
      throw std::invalid_argument("MpscLanes needs at least one lane");
    }
    lanes_.reserve(lane_count);
    for (std::size_t i = 0; i < lane_count; ++i) {
      lanes_.push_back(std::make_unique<SpscRing<T>>(lane_capacity));
    }
  }

  MpscLanes(const MpscLanes&) = delete;
  MpscLanes& operator=(const MpscLanes&) = delete;
  MpscLanes(MpscLanes&&) = delete;
  MpscLanes& operator=(MpscLanes&&) = delete;
  ~MpscLanes() = default;

  // Hands out the next unclaimed lane, or nullopt once all are taken. Lanes are
  // claimed for the lifetime of the MpscLanes.
  [[nodiscard]] std::optional<Producer> claim_producer() noexcept {
    // Relaxed throughout: the RMW alone guarantees each index is handed out once, and
    // the lanes themselves were built before this object was shared with any thread.
    // A CAS rather than fetch_add so failed claims cannot wrap the counter around.
    std::size_t index = claimed_.load(std::memory_order_relaxed);
    do {
      if (index == lanes_.size()) {
        return std::nullopt;
      }
    } while (!claimed_.compare_exchange_weak(index, index + 1, std::memory_order_relaxed));
    return Producer(lanes_[index].get());
  }

  // Moves up to `max` items into out[0, max), taking at most max / lane_count (at
  // least 1) from a lane per visit and resuming after the last lane visited, so a busy
  // producer cannot starve the others within or across calls.
  [[nodiscard]] std::size_t try_pop_n(
      T* out, std::size_t max) noexcept requires std::is_nothrow_move_assignable_v<T> {
    return visit_lanes(max, [out](SpscRing<T>& lane, std::size_t done, std::size_t quota) {
      return lane.try_pop_n(out + done, quota);
    });
  }

  // Calls f(T&&) on up to `max` items with the same fairness as try_pop_n; items are
  // consumed in place, so T need not be default constructible.
  template <typename F>
  requires std::invocable<F&, T&&> std::size_t drain(F&& f, std::size_t max) {
    return visit_lanes(
        max, [&f](SpscRing<T>& lane, std::size_t, std::size_t quota) { return lane.drain(f, quota); });
  }

  [[nodiscard]] std::size_t size_approx() const noexcept {
    std::size_t total = 0;
    for (const auto& lane : lanes_) {
      total += lane->size_approx();
    }
    return total;
  }

  [[nodiscard]] bool empty_approx() const noexcept {
    return std::all_of(lanes_.begin(), lanes_.end(), [](const auto& lane) { return lane->empty_approx(); });
  }

  [[nodiscard]] std::size_t lane_count() const noexcept { return lanes_.size(); }
  [[nodiscard]] std::size_t lane_capacity() const noexcept { return lanes_.front()->capacity(); }

 private:
  // Round-robin over lanes until `max` items are taken or every lane came up empty in
  // a row. take(lane, done, quota) pops at most quota items and returns the count.
  template <typename Take>
  std::size_t visit_lanes(std::size_t max, Take&& take) {
    const std::size_t lane_count = lanes_.size();
    const std::size_t quota = std::max<std::size_t>(1, max / lane_count);
    std::size_t done = 0;
    std::size_t empty_in_a_row = 0;
    while (done < max && empty_in_a_row < lane_count) {
      const std::size_t got = take(*lanes_[next_lane_], done, std::min(quota, max - done));
      done += got;
      empty_in_a_row = got == 0 ? empty_in_a_row + 1 : 0;
      next_lane_ = next_lane_ + 1 == lane_count ? 0 : next_lane_ + 1;
    }
    return done;
  }

  // Read-only after construction; each SpscRing is a separate cache-line-aligned
  // allocation, so lanes never share lines with each other.
  std::vector<std::unique_ptr<SpscRing<T>>> lanes_;
  // Touched only by claim_producer(), a cold path; no padding needed.
  std::atomic<std::size_t> claimed_{0};
  // Consumer-only fairness cursor.
  std::size_t next_lane_ = 0;
};

}  // namespace vantage::platform
