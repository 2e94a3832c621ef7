// Replaced global operator new/delete that count allocations (support/alloc_count.h), and
// with NTK_TEST_WRAP_MALLOC (set by tests/CMakeLists.txt together with the linker's
// --wrap=malloc,--wrap=calloc,--wrap=realloc) every malloc/calloc/realloc made from the
// binary's objects, ntk::core and Eigen's aligned allocations included. In a translation
// unit of its own so that no caller sees the malloc/free pairing.
#include "support/alloc_count.h"

#include <atomic>
#include <cstdlib>
#include <new>

namespace {
std::atomic<long> g_allocations{0};
}  // namespace

#if defined(NTK_TEST_WRAP_MALLOC)
extern "C" {
void* __real_malloc(std::size_t n);
void* __real_calloc(std::size_t n, std::size_t size);
void* __real_realloc(void* p, std::size_t n);
void* __wrap_malloc(std::size_t n) {
  ++g_allocations;
  return __real_malloc(n);
}
void* __wrap_calloc(std::size_t n, std::size_t size) {
  ++g_allocations;
  return __real_calloc(n, size);
}
void* __wrap_realloc(void* p, std::size_t n) {
  ++g_allocations;
  return __real_realloc(p, n);
}
}
#define NTK_UNCOUNTED_MALLOC __real_malloc
#else
#define NTK_UNCOUNTED_MALLOC std::malloc
#endif

// Counted once each (the malloc underneath is not counted again).
void* operator new(std::size_t n) {
  ++g_allocations;
  if (void* p = NTK_UNCOUNTED_MALLOC(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace ntk::test {

long allocations() { return g_allocations.load(); }

bool allocations_include_malloc() {
#if defined(NTK_TEST_WRAP_MALLOC)
  return true;
#else
  return false;
#endif
}

}  // namespace ntk::test
