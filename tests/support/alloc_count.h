// Counting allocator for the zero-allocation tests: a test binary made with
// ntk_count_allocations() (tests/CMakeLists.txt) counts every operator new and, on glibc
// and under AddressSanitizer, every malloc, calloc and realloc of the process, so that
// Eigen's allocations inside ntk::core (static or shared) count too (alloc_count.cc).
#pragma once

namespace ntk::test {

// Allocations so far in this process.
long allocations();
// Whether allocations() sees malloc/calloc/realloc too, not only operator new.
bool allocations_include_malloc();

// Heap bytes the process holds: on glibc the usable size of every block allocated and not
// freed since it started, under AddressSanitizer the bytes asked for; -1 elsewhere.
long long heap_bytes_in_use();

}  // namespace ntk::test
