// The largest single operator-new allocation made while an AllocationTracker is alive
// (this test binary replaces the global operator new, in alloc_tracker.cc).
#pragma once

#include <cstddef>

namespace ntk::test {

class AllocationTracker {
 public:
  AllocationTracker();   // starts tracking from 0
  ~AllocationTracker();  // stops tracking
  AllocationTracker(const AllocationTracker&) = delete;
  AllocationTracker& operator=(const AllocationTracker&) = delete;
  std::size_t largest() const;
};

}  // namespace ntk::test
