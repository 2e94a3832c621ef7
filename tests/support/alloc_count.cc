// Counting allocator (support/alloc_count.h). In a translation unit of its own so that no
// caller sees the malloc/free pairing.
//
// What is counted, by build:
// - glibc, no sanitizer: malloc, calloc and realloc are defined here. A definition in the
//   program replaces libc's for every module of the process, the shared libntkcore.so
//   (NTK_HWCAPS) and Eigen's aligned allocations in it included; each forwards to glibc's
//   own entry point (__libc_malloc, ...), whose blocks libc's free() releases. The
//   replaced operator new counts once and takes its block from __libc_malloc directly.
// - AddressSanitizer: its allocator serves malloc and operator new alike, and reports
//   every allocation to a hook (__sanitizer_install_malloc_and_free_hooks): one count
//   each, whatever module asked. Replacing malloc here would bypass its checks.
// - elsewhere: operator new only.
#include "support/alloc_count.h"

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

#if defined(__SANITIZE_ADDRESS__)
#define NTK_TEST_COUNT_SANITIZER_HOOK 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NTK_TEST_COUNT_SANITIZER_HOOK 1
#endif
#endif
#if !defined(NTK_TEST_COUNT_SANITIZER_HOOK) && defined(__GLIBC__)
#define NTK_TEST_COUNT_MALLOC 1
#endif

#if defined(NTK_TEST_COUNT_SANITIZER_HOOK)
extern "C" std::size_t __sanitizer_get_current_allocated_bytes();
#elif defined(NTK_TEST_COUNT_MALLOC)
#include <malloc.h>

#include <cerrno>
#endif

namespace {
std::atomic<long> g_allocations{0};
}  // namespace

#if defined(NTK_TEST_COUNT_SANITIZER_HOOK)
extern "C" int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void*,
                                                                             std::size_t),
                                                         void (*free_hook)(const volatile void*));
namespace {
void count_malloc(const volatile void*, std::size_t) { ++g_allocations; }
void ignore_free(const volatile void*) {}
// Both hooks are required: with a null one the call installs nothing and returns 0.
const int g_hook_installed = __sanitizer_install_malloc_and_free_hooks(count_malloc, ignore_free);
}  // namespace
#define NTK_UNCOUNTED_MALLOC std::malloc
#define NTK_COUNT_NEW() static_cast<void>(0)
#elif defined(NTK_TEST_COUNT_MALLOC)
// Live bytes: each block's malloc_usable_size, added when it is handed out and taken back
// when it is freed; the aligned entry points are counted too, so that every block free()
// sees was added (C++'s aligned operator new takes its blocks from aligned_alloc).
std::atomic<long long> g_live_bytes{0};
extern "C" {
void* __libc_malloc(std::size_t n);
void* __libc_calloc(std::size_t n, std::size_t size);
void* __libc_realloc(void* p, std::size_t n);
void* __libc_memalign(std::size_t alignment, std::size_t n);
void* __libc_valloc(std::size_t n);
void* __libc_pvalloc(std::size_t n);
void __libc_free(void* p);
}
namespace {
void* live(void* p) {
  if (p) g_live_bytes += static_cast<long long>(malloc_usable_size(p));
  return p;
}
}  // namespace
extern "C" {
void* malloc(std::size_t n) noexcept {
  ++g_allocations;
  return live(__libc_malloc(n));
}
void* calloc(std::size_t n, std::size_t size) noexcept {
  ++g_allocations;
  return live(__libc_calloc(n, size));
}
void* realloc(void* p, std::size_t n) noexcept {
  ++g_allocations;
  const auto old = static_cast<long long>(p ? malloc_usable_size(p) : 0);
  void* q = __libc_realloc(p, n);
  if (q || n == 0) g_live_bytes -= old;  // moved, or freed by realloc(p, 0)
  return live(q);
}
void* aligned_alloc(std::size_t alignment, std::size_t n) noexcept {
  ++g_allocations;
  return live(__libc_memalign(alignment, n));
}
void* memalign(std::size_t alignment, std::size_t n) noexcept {
  ++g_allocations;
  return live(__libc_memalign(alignment, n));
}
void* valloc(std::size_t n) noexcept {
  ++g_allocations;
  return live(__libc_valloc(n));
}
void* pvalloc(std::size_t n) noexcept {
  ++g_allocations;
  return live(__libc_pvalloc(n));
}
int posix_memalign(void** out, std::size_t alignment, std::size_t n) noexcept {
  if (alignment == 0 || alignment % sizeof(void*) != 0 || (alignment & (alignment - 1)) != 0) {
    return EINVAL;
  }
  ++g_allocations;
  void* p = live(__libc_memalign(alignment, n));
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}
void free(void* p) noexcept {
  if (!p) return;
  g_live_bytes -= static_cast<long long>(malloc_usable_size(p));
  __libc_free(p);
}
}
#define NTK_UNCOUNTED_MALLOC(n) live(__libc_malloc(n))
#define NTK_COUNT_NEW() ++g_allocations
#else
#define NTK_UNCOUNTED_MALLOC std::malloc
#define NTK_COUNT_NEW() ++g_allocations
#endif

// Counted once each.
void* operator new(std::size_t n) {
  NTK_COUNT_NEW();
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
#if defined(NTK_TEST_COUNT_SANITIZER_HOOK)
  return g_hook_installed != 0;
#elif defined(NTK_TEST_COUNT_MALLOC)
  return true;
#else
  return false;
#endif
}

long long heap_bytes_in_use() {
#if defined(NTK_TEST_COUNT_SANITIZER_HOOK)
  return static_cast<long long>(__sanitizer_get_current_allocated_bytes());
#elif defined(NTK_TEST_COUNT_MALLOC)
  return g_live_bytes.load();
#else
  return -1;
#endif
}

bool exact_heap_bytes() {
  if (heap_bytes_in_use() < 0 || !allocations_include_malloc()) return false;
#if defined(NTK_TEST_COUNT_MALLOC)
  return mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1;
#else
  return true;
#endif
}

}  // namespace ntk::test
