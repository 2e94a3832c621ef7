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

// Whether heap_bytes_in_use() measures blocks to the allocator's rounding of each (a few
// dozen bytes): on glibc after moving the mmap threshold to 32 MiB, so that no block
// below it is page-rounded; under AddressSanitizer, which counts the bytes asked for.
// False where it cannot measure.
bool exact_heap_bytes();

// What run() took from the heap: bytes (heap_bytes_in_use) and blocks (allocations).
struct HeapTaken {
  long long bytes = 0;
  long blocks = 0;
};
template <typename F>
HeapTaken heap_taken(F&& run) {
  const long blocks = allocations();
  const long long bytes = heap_bytes_in_use();
  run();
  return {heap_bytes_in_use() - bytes, allocations() - blocks};
}

}  // namespace ntk::test
