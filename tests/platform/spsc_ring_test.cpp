// Single-threaded semantics of SpscRing and MpscLanes: capacity, full/empty, FIFO,
// wrap-around, batches, object lifetimes. Concurrency lives in ring_stress_test.cpp.
#include <doctest/doctest.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <utility>
#include <vector>

#include "platform/mpsc_lanes.hpp"
#include "platform/spsc_ring.hpp"

namespace vantage::platform {
struct SpscRingTestAccess {
  // Both sides agree the ring is empty at `index`; only valid before any thread uses it.
  template <typename T>
  static void start_at(SpscRing<T>& ring, std::size_t index) {
    ring.tail_.store(index, std::memory_order_relaxed);
    ring.head_.store(index, std::memory_order_relaxed);
    ring.cached_head_ = index;
    ring.cached_tail_ = index;
  }
};
}  // namespace vantage::platform

namespace {

using vantage::platform::MpscLanes;
using vantage::platform::SpscRing;

struct LifetimeCounts {
  int constructed = 0;
  int destroyed = 0;
  int live() const { return constructed - destroyed; }
};

LifetimeCounts counts;

// An int payload. No default constructor: only drain() can consume it without a pre-built output.
class NoDefault {
 public:
  explicit NoDefault(int value) noexcept : value_(value) {}
  int value() const { return value_; }

 protected:
  int value_;
};

// Counts every construction and destruction so tests can prove the ring neither leaks
// nor double-destroys the objects it holds.
class Counted : public NoDefault {
 public:
  explicit Counted(int value) noexcept : NoDefault(value) { ++counts.constructed; }
  Counted(const Counted& other) noexcept : NoDefault(other.value_) { ++counts.constructed; }
  Counted(Counted&& other) noexcept : NoDefault(std::exchange(other.value_, -1)) { ++counts.constructed; }
  Counted& operator=(const Counted& other) noexcept = default;
  Counted& operator=(Counted&& other) noexcept {
    value_ = std::exchange(other.value_, -1);
    return *this;
  }
  ~Counted() { ++counts.destroyed; }
};

// Construction from `true` throws, to check that a failed emplace publishes nothing.
class ThrowOnRequest : public NoDefault {
 public:
  explicit ThrowOnRequest(int value) noexcept : NoDefault(value) {}
  ThrowOnRequest(int value, bool fail) : NoDefault(value) {
    if (fail) {
      throw std::runtime_error("requested");
    }
  }
  ThrowOnRequest(ThrowOnRequest&&) noexcept = default;
  ThrowOnRequest& operator=(ThrowOnRequest&&) noexcept = default;
};

std::vector<int> iota_vector(int first, std::size_t n) {
  std::vector<int> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

}  // namespace

TEST_SUITE("SpscRing") {
  TEST_CASE("capacity is rounded up to a power of two") {
    // Monotonic indices tell full from empty without a spare slot, so 1 stays 1.
    CHECK(SpscRing<int>(1).capacity() == 1);
    CHECK(SpscRing<int>(2).capacity() == 2);
    CHECK(SpscRing<int>(3).capacity() == 4);
    CHECK(SpscRing<int>(5).capacity() == 8);
    CHECK(SpscRing<int>(8).capacity() == 8);
    CHECK(SpscRing<int>(1000).capacity() == 1024);
    CHECK_THROWS_AS(SpscRing<int>(0), std::invalid_argument);
    CHECK_THROWS_AS(SpscRing<int>(~std::size_t{0}), std::length_error);
  }

  TEST_CASE("a capacity-1 ring holds exactly one item") {
    SpscRing<int> ring(1);
    int out = 0;
    CHECK_FALSE(ring.try_pop(out));
    CHECK(ring.try_push(7));
    CHECK_FALSE(ring.try_push(8));
    CHECK(ring.size_approx() == 1);
    CHECK(ring.try_pop(out));
    CHECK(out == 7);
    CHECK_FALSE(ring.try_pop(out));
    CHECK(ring.try_push(9));
    CHECK(ring.try_pop(out));
    CHECK(out == 9);
  }

  TEST_CASE("full and empty behaviour, FIFO order") {
    SpscRing<int> ring(4);
    CHECK(ring.empty_approx());
    CHECK(ring.size_approx() == 0);
    for (int i = 0; i < 4; ++i) {
      const int value = 100 + i;
      CHECK(ring.try_push(value));  // lvalue overload
      CHECK(ring.size_approx() == static_cast<std::size_t>(i + 1));
    }
    CHECK_FALSE(ring.try_push(999));
    CHECK_FALSE(ring.try_emplace(999));
    CHECK(ring.size_approx() == 4);
    CHECK_FALSE(ring.empty_approx());

    int out = 0;
    for (int i = 0; i < 4; ++i) {
      REQUIRE(ring.try_pop(out));
      CHECK(out == 100 + i);
    }
    CHECK_FALSE(ring.try_pop(out));
    CHECK(out == 103);  // a failed pop leaves the output alone
    CHECK(ring.empty_approx());
  }

  TEST_CASE("wraps around many times with varying fill levels") {
    SpscRing<std::uint64_t> ring(8);
    std::uint64_t next_push = 0;
    std::uint64_t next_pop = 0;
    for (int round = 0; round < 5000; ++round) {
      const int pushes = 1 + round % 8;
      for (int i = 0; i < pushes; ++i) {
        REQUIRE(ring.try_push(next_push));
        ++next_push;
      }
      const int pops = 1 + (round * 7) % pushes;  // leaves a varying residue behind
      for (int i = 0; i < pops; ++i) {
        std::uint64_t out = 0;
        REQUIRE(ring.try_pop(out));
        REQUIRE(out == next_pop);
        ++next_pop;
      }
      // Drain whatever is left so the next round starts empty at a new offset.
      std::uint64_t out = 0;
      while (ring.try_pop(out)) {
        REQUIRE(out == next_pop);
        ++next_pop;
      }
    }
    CHECK(next_pop == next_push);
    CHECK(next_push > 8 * 1000);  // the indices lapped the 8 slots thousands of times
  }

  TEST_CASE("indices wrapping past SIZE_MAX keep FIFO, full and empty exact") {
    // On armhf size_t is 32 bits, so a long-running agent wraps the indices after 2^32
    // items; start just below the wrap instead of pushing that many.
    SpscRing<std::uint64_t> ring(8);
    vantage::platform::SpscRingTestAccess::start_at(ring, std::numeric_limits<std::size_t>::max() - 20);
    std::uint64_t next_in = 0;
    std::uint64_t next_out = 0;
    for (int round = 0; round < 10; ++round) {  // 10 rounds x 8 items crosses the wrap
      while (ring.try_push(next_in)) {
        ++next_in;
      }
      CHECK(ring.size_approx() == 8);
      CHECK(next_in - next_out == 8);
      std::uint64_t out = 0;
      for (int i = 0; i < 5; ++i) {
        REQUIRE(ring.try_pop(out));
        CHECK(out == next_out++);
      }
      std::array<std::uint64_t, 8> batch{};
      const std::size_t got = ring.try_pop_n(batch.data(), batch.size());
      CHECK(got == 3);
      for (std::size_t i = 0; i < got; ++i) {
        CHECK(batch[i] == next_out++);
      }
      CHECK(ring.empty_approx());
      CHECK_FALSE(ring.try_pop(out));
    }
    const std::array<std::uint64_t, 5> more{1, 2, 3, 4, 5};
    CHECK(ring.try_push_n(more.data(), more.size()) == 5);
    CHECK(ring.try_push_n(more.data(), more.size()) == 3);  // only 3 of 8 slots left
    CHECK(ring.size_approx() == 8);
  }

  TEST_CASE("batch push and pop report partial counts across the wrap point") {
    SpscRing<int> ring(8);
    // Move head and tail to slot 5 so the next batch straddles the end of the storage.
    const auto warmup = iota_vector(-5, 5);
    REQUIRE(ring.try_push_n(warmup.data(), warmup.size()) == 5);
    std::array<int, 16> out{};
    REQUIRE(ring.try_pop_n(out.data(), out.size()) == 5);
    CHECK(out[0] == -5);
    CHECK(out[4] == -1);

    const auto items = iota_vector(0, 12);
    CHECK(ring.try_push_n(items.data(), items.size()) == 8);  // only 8 fit: slots 5..7, 0..4
    CHECK(ring.try_push_n(items.data() + 8, 4) == 0);
    CHECK(ring.size_approx() == 8);

    CHECK(ring.try_pop_n(out.data(), 2) == 2);  // slots 5, 6
    CHECK(out[0] == 0);
    CHECK(out[1] == 1);
    CHECK(ring.try_push_n(items.data() + 8, 4) == 2);    // room for two more
    CHECK(ring.try_pop_n(out.data(), out.size()) == 8);  // crosses the wrap: slots 7, 0..6
    for (int i = 0; i < 8; ++i) {
      CHECK(out[static_cast<std::size_t>(i)] == 2 + i);
    }
    CHECK(ring.try_pop_n(out.data(), out.size()) == 0);
    CHECK(ring.try_push_n(items.data(), 0) == 0);
    CHECK(ring.try_pop_n(out.data(), 0) == 0);
    CHECK(ring.empty_approx());
  }

  TEST_CASE("batch and single operations interleave in FIFO order") {
    SpscRing<int> ring(16);
    int next_push = 0;
    int next_pop = 0;
    std::array<int, 16> buffer{};
    for (int round = 0; round < 2000; ++round) {
      const std::size_t want = 1 + static_cast<std::size_t>(round) % 11;
      for (std::size_t i = 0; i < want; ++i) {
        buffer[i] = next_push + static_cast<int>(i);
      }
      const std::size_t pushed = ring.try_push_n(buffer.data(), want);
      next_push += static_cast<int>(pushed);
      if (round % 3 == 0 && ring.try_push(next_push)) {
        ++next_push;
      }
      const std::size_t popped = ring.try_pop_n(buffer.data(), 1 + static_cast<std::size_t>(round) % 7);
      for (std::size_t i = 0; i < popped; ++i) {
        REQUIRE(buffer[i] == next_pop);
        ++next_pop;
      }
      int single = 0;
      if (round % 2 == 0 && ring.try_pop(single)) {
        REQUIRE(single == next_pop);
        ++next_pop;
      }
      REQUIRE(ring.size_approx() == static_cast<std::size_t>(next_push - next_pop));
    }
    CHECK(next_pop > 1000);
  }

  TEST_CASE("move-only items") {
    SpscRing<std::unique_ptr<int>> ring(4);
    auto first = std::make_unique<int>(1);
    CHECK(ring.try_push(std::move(first)));
    CHECK(first == nullptr);
    CHECK(ring.try_emplace(std::make_unique<int>(2)));
    CHECK(ring.try_emplace(new int(3)));
    CHECK(ring.try_push(std::make_unique<int>(4)));
    auto rejected = std::make_unique<int>(5);
    CHECK_FALSE(ring.try_push(std::move(rejected)));
    CHECK(rejected != nullptr);  // a failed push must not consume the argument

    std::unique_ptr<int> out;
    REQUIRE(ring.try_pop(out));
    CHECK(*out == 1);

    std::array<std::unique_ptr<int>, 2> batch;
    REQUIRE(ring.try_pop_n(batch.data(), batch.size()) == 2);
    CHECK(*batch[0] == 2);
    CHECK(*batch[1] == 3);

    int seen = 0;
    CHECK(ring.drain([&](std::unique_ptr<int>&& p) { seen = *p; }, 10) == 1);
    CHECK(seen == 4);

    // Left in the ring on purpose: the destructor must free it (LeakSanitizer checks).
    CHECK(ring.try_push(std::move(rejected)));
  }

  TEST_CASE("every constructed item is destroyed exactly once") {
    counts = {};
    {
      SpscRing<Counted> ring(8);
      const Counted original(1);
      CHECK(ring.try_push(original));    // copy
      CHECK(ring.try_push(Counted(2)));  // move from a temporary
      CHECK(ring.try_emplace(3));        // in place
      const std::array<Counted, 3> batch{Counted(4), Counted(5), Counted(6)};
      CHECK(ring.try_push_n(batch.data(), batch.size()) == 3);
      // original + batch (4) + 6 in the ring.
      CHECK(counts.live() == 4 + 6);

      Counted out(0);
      REQUIRE(ring.try_pop(out));
      CHECK(out.value() == 1);
      std::array<Counted, 2> popped{Counted(0), Counted(0)};
      REQUIRE(ring.try_pop_n(popped.data(), popped.size()) == 2);
      CHECK(popped[0].value() == 2);
      CHECK(popped[1].value() == 3);
      int drained = 0;
      CHECK(ring.drain([&](Counted&& c) { drained = c.value(); }, 1) == 1);
      CHECK(drained == 4);
      // original + batch (3) + out + popped (2) + 2 still in the ring.
      CHECK(counts.live() == 1 + 3 + 1 + 2 + 2);
      CHECK(ring.size_approx() == 2);

      // Wrap the remaining items past the end of the storage before destruction.
      for (int i = 0; i < 5; ++i) {
        CHECK(ring.try_emplace(10 + i));
      }
      CHECK(ring.size_approx() == 7);
    }
    CHECK(counts.constructed > 0);
    CHECK(counts.constructed == counts.destroyed);
  }

  TEST_CASE("a throwing constructor leaves the ring unchanged") {
    SpscRing<ThrowOnRequest> ring(2);
    CHECK(ring.try_emplace(1, false));
    CHECK_THROWS_AS((void)ring.try_emplace(2, true), std::runtime_error);
    CHECK(ring.size_approx() == 1);
    CHECK(ring.try_emplace(3, false));
    ThrowOnRequest out(0);
    REQUIRE(ring.try_pop(out));
    CHECK(out.value() == 1);
    REQUIRE(ring.try_pop(out));
    CHECK(out.value() == 3);
  }

  TEST_CASE("drain consumes in place, honours max, and survives a throwing callback") {
    SpscRing<NoDefault> ring(8);
    for (int i = 0; i < 6; ++i) {
      REQUIRE(ring.try_emplace(i));
    }
    std::vector<int> seen;
    CHECK(ring.drain([&](NoDefault&& item) { seen.push_back(item.value()); }, 2) == 2);
    CHECK(seen == std::vector<int>{0, 1});
    CHECK(ring.drain([](NoDefault&&) {}, 0) == 0);

    // The callback throws on item 3: items before it are consumed, item 3 stays.
    auto throw_on_three = [&](NoDefault&& item) {
      if (item.value() == 3) {
        throw std::runtime_error("callback");
      }
      seen.push_back(item.value());
    };
    CHECK_THROWS_AS(ring.drain(throw_on_three, 10), std::runtime_error);
    CHECK(seen == std::vector<int>{0, 1, 2});
    CHECK(ring.size_approx() == 3);

    CHECK(ring.drain([&](NoDefault&& item) { seen.push_back(item.value()); }, 10) == 3);
    CHECK(seen == std::vector<int>{0, 1, 2, 3, 4, 5});
    CHECK(ring.drain([](NoDefault&&) {}, 10) == 0);
  }

  TEST_CASE("size_approx tracks pushes and pops") {
    SpscRing<int> ring(16);
    for (int i = 0; i < 16; ++i) {
      REQUIRE(ring.try_push(i));
      CHECK(ring.size_approx() == static_cast<std::size_t>(i + 1));
    }
    int out = 0;
    for (int i = 16; i > 0; --i) {
      CHECK(ring.size_approx() == static_cast<std::size_t>(i));
      REQUIRE(ring.try_pop(out));
    }
    CHECK(ring.size_approx() == 0);
    CHECK(ring.empty_approx());
  }
}

TEST_SUITE("MpscLanes") {
  TEST_CASE("lanes are claimed once each") {
    MpscLanes<int> lanes(3, 5);
    CHECK(lanes.lane_count() == 3);
    CHECK(lanes.lane_capacity() == 8);
    std::vector<MpscLanes<int>::Producer> producers;
    for (int i = 0; i < 3; ++i) {
      auto producer = lanes.claim_producer();
      REQUIRE(producer.has_value());
      producers.push_back(std::move(*producer));
    }
    for (int i = 0; i < 10; ++i) {
      CHECK_FALSE(lanes.claim_producer().has_value());
    }
    CHECK_THROWS_AS(MpscLanes<int>(0, 4), std::invalid_argument);
  }

  TEST_CASE("a full lane rejects pushes without affecting other lanes") {
    MpscLanes<int> lanes(2, 2);
    auto a = lanes.claim_producer().value();
    auto b = lanes.claim_producer().value();
    CHECK(a.try_push(1));
    CHECK(a.try_emplace(2));
    CHECK_FALSE(a.try_push(3));
    CHECK(a.free_approx() == 0);
    CHECK(b.free_approx() == 2);
    const std::array<int, 3> batch{10, 11, 12};
    CHECK(b.try_push_n(batch.data(), batch.size()) == 2);
    CHECK(lanes.size_approx() == 4);

    std::array<int, 8> out{};
    CHECK(lanes.try_pop_n(out.data(), out.size()) == 4);
    CHECK(lanes.empty_approx());
    CHECK(a.try_push(3));
  }

  TEST_CASE("the consumer visits lanes round-robin and resumes where it stopped") {
    MpscLanes<int> lanes(3, 64);
    std::vector<MpscLanes<int>::Producer> producers;
    for (int lane = 0; lane < 3; ++lane) {
      producers.push_back(lanes.claim_producer().value());
      for (int i = 0; i < 10; ++i) {
        REQUIRE(producers.back().try_push(lane * 100 + i));
      }
    }
    // max 3 over 3 lanes: quota of one item per lane per visit.
    std::array<int, 3> out{};
    REQUIRE(lanes.try_pop_n(out.data(), 3) == 3);
    CHECK(out == std::array<int, 3>{0, 100, 200});
    // max 2 stops after lane 1 ...
    REQUIRE(lanes.try_pop_n(out.data(), 2) == 2);
    CHECK(out[0] == 1);
    CHECK(out[1] == 101);
    // ... so the next call starts with lane 2.
    REQUIRE(lanes.try_pop_n(out.data(), 1) == 1);
    CHECK(out[0] == 201);
    REQUIRE(lanes.try_pop_n(out.data(), 1) == 1);
    CHECK(out[0] == 2);

    std::vector<int> all;
    while (lanes.drain([&](int&& v) { all.push_back(v); }, 4) > 0) {
    }
    CHECK(all.size() == 30 - 7);
    CHECK(lanes.empty_approx());

    // A lone busy lane still yields everything in one call: passes repeat until every
    // lane has come up empty in a row.
    for (int i = 0; i < 7; ++i) {
      REQUIRE(producers[1].try_push(i));
    }
    std::array<int, 16> many{};
    REQUIRE(lanes.try_pop_n(many.data(), many.size()) == 7);
    for (int i = 0; i < 7; ++i) {
      CHECK(many[static_cast<std::size_t>(i)] == i);
    }
    CHECK(lanes.try_pop_n(many.data(), many.size()) == 0);
  }

  TEST_CASE("items left in lanes are destroyed with the structure") {
    counts = {};
    {
      MpscLanes<Counted> lanes(2, 4);
      auto a = lanes.claim_producer().value();
      auto b = lanes.claim_producer().value();
      CHECK(a.try_emplace(1));
      CHECK(b.try_push(Counted(2)));
      CHECK(b.try_emplace(3));
      int consumed = 0;
      CHECK(lanes.drain([&](Counted&& c) { consumed += c.value(); }, 1) == 1);
      CHECK(consumed == 1);
    }
    CHECK(counts.constructed == counts.destroyed);
  }
}
