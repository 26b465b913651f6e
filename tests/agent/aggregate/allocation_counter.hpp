// Counts heap allocations made through operator new in this test binary, so tests can prove
// that a code path allocates nothing (or exactly what it should).
#pragma once

#include <cstddef>

namespace vantage::test {

// operator new calls (every form but the aligned ones) since the program started.
std::size_t allocations() noexcept;

// While true, every operator new fails (nullptr, or std::bad_alloc from the throwing forms).
void fail_allocations(bool fail) noexcept;

}  // namespace vantage::test
