// Counting allocator for the zero-allocation tests: a test binary made with
// ntk_count_allocations() (tests/CMakeLists.txt) has its global operator new replaced by
// one that counts every call, and on Linux static builds also every malloc, calloc and
// realloc (the linker's --wrap), so Eigen's allocations inside ntk::core count too.
#pragma once

namespace ntk::test {

// Allocations so far in this process.
long allocations();
// Whether allocations() sees malloc/calloc/realloc too, not only operator new.
bool allocations_include_malloc();

}  // namespace ntk::test
