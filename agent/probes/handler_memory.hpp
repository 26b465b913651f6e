// Memory for one outstanding Asio operation's handler, owned by the prober, so arming a
// connect, a wait or a timer never reaches the heap on the probe path.
#pragma once

#include <asio/bind_allocator.hpp>

#include <cstddef>
#include <new>
#include <utility>

namespace vantage::agent::probes {

// Asio frees the handler's memory before invoking it, so the handler may immediately start the
// next operation of the same kind in the same block. Not thread-safe: one block serves the
// operations of one io_context thread, one at a time.
class HandlerMemory {
 public:
  void* allocate(std::size_t size) {
    if (!in_use_ && size <= sizeof(storage_)) {
      in_use_ = true;
      return storage_;
    }
    // Only if Asio's operation outgrows the block (a different Asio version): still correct.
    return ::operator new(size);
  }
  void deallocate(void* p) noexcept {
    if (p == storage_) {
      in_use_ = false;
    } else {
      ::operator delete(p);
    }
  }

 private:
  alignas(std::max_align_t) unsigned char storage_[256];
  bool in_use_ = false;
};

template <typename T>
class HandlerAllocator {
 public:
  using value_type = T;
  explicit HandlerAllocator(HandlerMemory& memory) noexcept : memory_(&memory) {}
  template <typename U>
  HandlerAllocator(const HandlerAllocator<U>& other) noexcept : memory_(other.memory()) {}
  T* allocate(std::size_t n) { return static_cast<T*>(memory_->allocate(sizeof(T) * n)); }
  void deallocate(T* p, std::size_t) noexcept { memory_->deallocate(p); }
  HandlerMemory* memory() const noexcept { return memory_; }
  template <typename U>
  bool operator==(const HandlerAllocator<U>& other) const noexcept {
    return memory_ == other.memory();
  }

 private:
  HandlerMemory* memory_;
};

// The handler, bound to allocate its operation's state from `memory`.
template <typename Handler>
auto with_memory(HandlerMemory& memory, Handler&& handler) {
  return asio::bind_allocator(HandlerAllocator<int>(memory), std::forward<Handler>(handler));
}

}  // namespace vantage::agent::probes
