// Two-thread and multi-producer stress tests for SpscRing and MpscLanes: no loss, no
// duplicates, FIFO, no torn items. Sized to stay fast under TSan and QEMU user mode.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "platform/mpsc_lanes.hpp"
#include "platform/spsc_ring.hpp"

namespace {

using vantage::platform::MpscLanes;
using vantage::platform::SpscRing;

#if defined(__SANITIZE_THREAD__)  // GCC
#define VANTAGE_STRESS_UNDER_TSAN 1
#elif defined(__has_feature)  // Clang
#if __has_feature(thread_sanitizer)
#define VANTAGE_STRESS_UNDER_TSAN 1
#endif
#endif
#ifdef VANTAGE_STRESS_UNDER_TSAN
constexpr bool kThreadSanitizer = true;
#else
constexpr bool kThreadSanitizer = false;
#endif

// ThreadSanitizer makes every atomic access and yield far slower; scale the counts so
// each build of this binary finishes in a few seconds, including under QEMU.
constexpr std::uint64_t kItemsPerProducer = kThreadSanitizer ? 50'000 : 200'000;

struct Tagged {
  std::uint32_t producer;
  std::uint64_t seq;
};

// Several fields derived from seq plus a checksum over all of them: a consumer that
// observes a half-written slot (missing acquire/release) sees a mismatch.
struct Payload {
  std::uint64_t seq;
  std::uint64_t a;
  std::uint64_t b;
  std::uint64_t c;
  std::uint32_t d;
  std::uint16_t e;
  std::uint64_t checksum;
};

std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 31;
  x *= 0x7fb5d329728ea185ULL;
  x ^= x >> 27;
  return x;
}

std::uint64_t payload_checksum(const Payload& p) {
  return mix(p.seq ^ mix(p.a ^ mix(p.b ^ mix(p.c ^ mix((std::uint64_t{p.d} << 16) | p.e)))));
}

Payload make_payload(std::uint64_t seq) {
  Payload p{
      seq, mix(seq), mix(seq + 1), ~seq, static_cast<std::uint32_t>(seq * 3), static_cast<std::uint16_t>(seq),
      0};
  p.checksum = payload_checksum(p);
  return p;
}

bool payload_ok(const Payload& p, std::uint64_t expected_seq) {
  return p.seq == expected_seq && p.a == mix(expected_seq) && p.b == mix(expected_seq + 1) &&
         p.c == ~expected_seq && p.checksum == payload_checksum(p);
}

// Tracks what a consumer saw per producer; checked on the test thread after join.
struct SequenceCheck {
  std::uint64_t next = 0;
  std::uint64_t errors = 0;
  std::uint64_t first_bad = 0;

  void see(std::uint64_t seq) {
    if (seq != next && errors++ == 0) {
      first_bad = seq;
    }
    next = seq + 1;
  }
};

template <typename T>
void push_spin(SpscRing<T>& ring, const T& item) {
  while (!ring.try_push(item)) {
    std::this_thread::yield();  // under QEMU/TSan a pure spin can starve the other side
  }
}

// One producer, one consumer, single-item API on both sides.
// Pushes all of items[0, n) through anything with try_push_n (a ring or a lane's
// Producer), yielding while it is full.
template <typename Sink, typename T>
void push_all(Sink& sink, const T* items, std::size_t n) {
  for (std::size_t done = 0; done < n;) {
    const std::size_t pushed = sink.try_push_n(items + done, n - done);
    if (pushed == 0) {
      std::this_thread::yield();
    }
    done += pushed;
  }
}

void run_spsc_single(std::size_t capacity, std::uint64_t items) {
  SpscRing<Tagged> ring(capacity);
  SequenceCheck check;
  std::uint64_t wrong_producer = 0;
  std::thread consumer([&] {
    Tagged item{};
    for (std::uint64_t received = 0; received < items;) {
      if (!ring.try_pop(item)) {
        std::this_thread::yield();
        continue;
      }
      wrong_producer += item.producer != 7 ? 1 : 0;
      check.see(item.seq);
      ++received;
    }
  });
  for (std::uint64_t seq = 0; seq < items; ++seq) {
    push_spin(ring, Tagged{7, seq});
  }
  consumer.join();
  CHECK(check.errors == 0);
  CHECK(check.first_bad == 0);
  CHECK(check.next == items);
  CHECK(wrong_producer == 0);
  CHECK(ring.empty_approx());
}

}  // namespace

TEST_SUITE("ring stress") {
  TEST_CASE("SPSC single push/pop: no loss, no duplicates, strict FIFO") {
    run_spsc_single(1024, kItemsPerProducer);
  }

  TEST_CASE("SPSC tiny capacity forces constant full/empty transitions") {
    SUBCASE("capacity 2") { run_spsc_single(2, kItemsPerProducer / 4); }
    SUBCASE("capacity 1") { run_spsc_single(1, kItemsPerProducer / 4); }
  }

  TEST_CASE("SPSC batch push/pop with uneven batch sizes") {
    SpscRing<Tagged> ring(256);
    SequenceCheck check;
    const std::uint64_t items = kItemsPerProducer;
    std::thread consumer([&] {
      std::array<Tagged, 61> buffer{};
      std::uint64_t received = 0;
      for (std::size_t round = 0; received < items; ++round) {
        const std::size_t want = 1 + round % buffer.size();
        const std::size_t got = ring.try_pop_n(buffer.data(), want);
        if (got == 0) {
          std::this_thread::yield();
          continue;
        }
        for (std::size_t i = 0; i < got; ++i) {
          check.see(buffer[i].seq);
        }
        received += got;
      }
    });
    std::array<Tagged, 37> batch{};
    std::uint64_t sent = 0;
    for (std::size_t round = 0; sent < items; ++round) {
      const std::size_t want = std::min<std::uint64_t>(1 + round % batch.size(), items - sent);
      for (std::size_t i = 0; i < want; ++i) {
        batch[i] = Tagged{1, sent + i};
      }
      push_all(ring, batch.data(), want);
      sent += want;
    }
    consumer.join();
    CHECK(check.errors == 0);
    CHECK(check.next == items);
    CHECK(ring.empty_approx());
  }

  TEST_CASE("SPSC multi-field payload is never observed torn") {
    // Single pushes against batch pops and drain, so every combination of publish and
    // consume path is exercised with a payload wider than any atomic store.
    SUBCASE("try_emplace -> try_pop_n, capacity 64") {
      SpscRing<Payload> ring(64);
      std::uint64_t bad = 0;
      std::uint64_t received = 0;
      std::thread consumer([&] {
        std::array<Payload, 16> buffer{};
        while (received < kItemsPerProducer) {
          const std::size_t got = ring.try_pop_n(buffer.data(), buffer.size());
          if (got == 0) {
            std::this_thread::yield();
            continue;
          }
          for (std::size_t i = 0; i < got; ++i) {
            bad += payload_ok(buffer[i], received + i) ? 0 : 1;
          }
          received += got;
        }
      });
      for (std::uint64_t seq = 0; seq < kItemsPerProducer; ++seq) {
        const Payload p = make_payload(seq);
        while (!ring.try_emplace(p)) {
          std::this_thread::yield();
        }
      }
      consumer.join();
      CHECK(bad == 0);
      CHECK(received == kItemsPerProducer);
    }
    SUBCASE("try_push_n -> drain, capacity 4") {
      SpscRing<Payload> ring(4);
      std::uint64_t bad = 0;
      std::uint64_t received = 0;
      std::thread consumer([&] {
        while (received < kItemsPerProducer / 4) {
          const std::size_t got = ring.drain(
              [&](Payload&& p) {
                bad += payload_ok(p, received) ? 0 : 1;
                ++received;
              },
              3);
          if (got == 0) {
            std::this_thread::yield();
          }
        }
      });
      std::array<Payload, 5> batch{};
      for (std::uint64_t seq = 0; seq < kItemsPerProducer / 4;) {
        const std::size_t want = std::min<std::uint64_t>(batch.size(), kItemsPerProducer / 4 - seq);
        for (std::size_t i = 0; i < want; ++i) {
          batch[i] = make_payload(seq + i);
        }
        push_all(ring, batch.data(), want);
        seq += want;
      }
      consumer.join();
      CHECK(bad == 0);
      CHECK(received == kItemsPerProducer / 4);
    }
  }

  TEST_CASE("SPSC transfers ownership of heap objects") {
    // The consumer reads memory the producer wrote outside the ring; only the ring's
    // release/acquire pair orders it, which TSan verifies.
    SpscRing<std::unique_ptr<Payload>> ring(128);
    const std::uint64_t items = kItemsPerProducer / 4;
    std::uint64_t bad = 0;
    std::thread consumer([&] {
      std::unique_ptr<Payload> p;
      for (std::uint64_t seq = 0; seq < items;) {
        if (!ring.try_pop(p)) {
          std::this_thread::yield();
          continue;
        }
        bad += payload_ok(*p, seq) ? 0 : 1;
        ++seq;
      }
    });
    for (std::uint64_t seq = 0; seq < items; ++seq) {
      auto p = std::make_unique<Payload>(make_payload(seq));
      while (!ring.try_push(std::move(p))) {
        std::this_thread::yield();
      }
    }
    consumer.join();
    CHECK(bad == 0);
    CHECK(ring.empty_approx());
  }

  TEST_CASE("MpscLanes: four producers, FIFO per producer, no loss, no duplicates") {
    constexpr std::uint32_t kProducers = 4;

    auto run = [](std::size_t lane_capacity, std::uint64_t items, bool use_drain) {
      MpscLanes<Tagged> lanes(kProducers, lane_capacity);
      std::vector<std::thread> producers;
      for (std::uint32_t id = 0; id < kProducers; ++id) {
        // Claimed on the test thread; thread creation hands the handle over.
        auto producer = lanes.claim_producer();
        REQUIRE(producer.has_value());
        producers.emplace_back([id, items, p = std::move(*producer)]() mutable {
          std::array<Tagged, 8> batch{};
          for (std::uint64_t seq = 0; seq < items;) {
            if (seq % 3 == 0) {  // mix single and batch pushes
              while (!p.try_push(Tagged{id, seq})) {
                std::this_thread::yield();
              }
              ++seq;
              continue;
            }
            const std::size_t want = std::min<std::uint64_t>(batch.size(), items - seq);
            for (std::size_t i = 0; i < want; ++i) {
              batch[i] = Tagged{id, seq + i};
            }
            push_all(p, batch.data(), want);
            seq += want;
          }
        });
      }
      CHECK_FALSE(lanes.claim_producer().has_value());

      std::array<SequenceCheck, kProducers> checks{};
      std::uint64_t unknown_producer = 0;
      auto see = [&](const Tagged& item) {
        if (item.producer >= kProducers) {
          ++unknown_producer;
          return;
        }
        checks[item.producer].see(item.seq);
      };
      const std::uint64_t total = items * kProducers;
      std::uint64_t received = 0;
      std::array<Tagged, 32> buffer{};
      while (received < total) {
        std::size_t got = 0;
        if (use_drain) {
          got = lanes.drain([&](Tagged&& item) { see(item); }, buffer.size());
        } else {
          got = lanes.try_pop_n(buffer.data(), buffer.size());
          for (std::size_t i = 0; i < got; ++i) {
            see(buffer[i]);
          }
        }
        if (got == 0) {
          std::this_thread::yield();
        }
        received += got;
      }
      for (auto& t : producers) {
        t.join();
      }
      CHECK(received == total);
      CHECK(unknown_producer == 0);
      for (const SequenceCheck& check : checks) {
        CHECK(check.errors == 0);
        CHECK(check.next == items);
      }
      CHECK(lanes.empty_approx());
    };

    SUBCASE("try_pop_n, lane capacity 256") { run(256, kItemsPerProducer, false); }
    SUBCASE("drain, lane capacity 2") { run(2, kItemsPerProducer / 4, true); }
  }
}
