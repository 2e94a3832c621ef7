// Global operator new/delete that record the largest allocation while tracking is on.
// In a translation unit of its own so that no caller sees the malloc/free pairing.
#include "alloc_tracker.h"

#include <atomic>
#include <cstdlib>
#include <new>

namespace {
std::atomic<bool> g_track{false};
std::atomic<std::size_t> g_largest{0};
}  // namespace

void* operator new(std::size_t n) {
  if (g_track.load(std::memory_order_relaxed)) {
    std::size_t prev = g_largest.load(std::memory_order_relaxed);
    while (n > prev && !g_largest.compare_exchange_weak(prev, n)) {
    }
  }
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace ntk::test {

AllocationTracker::AllocationTracker() {
  g_largest.store(0);
  g_track.store(true);
}
AllocationTracker::~AllocationTracker() { g_track.store(false); }
std::size_t AllocationTracker::largest() const { return g_largest.load(); }

}  // namespace ntk::test
