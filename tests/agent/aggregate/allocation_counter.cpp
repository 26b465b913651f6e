// Replaces the global operator new and delete of the test binary with malloc/free plus a
// counter; behaviour is otherwise the standard one.
#include "tests/agent/aggregate/allocation_counter.hpp"

#include <atomic>
#include <cstdlib>
#include <new>

namespace {

std::atomic<std::size_t> g_allocations{0};
std::atomic<bool> g_fail{false};

void* counted(std::size_t size) noexcept {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (g_fail.load(std::memory_order_relaxed)) {
    return nullptr;
  }
  return std::malloc(size != 0 ? size : 1);
}

void* counted_or_throw(std::size_t size) {
  void* p = counted(size);
  if (p == nullptr) {
    throw std::bad_alloc();
  }
  return p;
}

}  // namespace

namespace vantage::test {

std::size_t allocations() noexcept { return g_allocations.load(std::memory_order_relaxed); }
void fail_allocations(bool fail) noexcept { g_fail.store(fail, std::memory_order_relaxed); }

}  // namespace vantage::test

void* operator new(std::size_t size) { return counted_or_throw(size); }
void* operator new[](std::size_t size) { return counted_or_throw(size); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept { return counted(size); }
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept { return counted(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
