// Which instruction set the running copy of ntk::core was compiled for.
//
// A default build on x86-64 Linux ships libntkcore twice, for baseline x86-64 (SSE2) and
// for x86-64-v3 (AVX2, FMA), and the dynamic loader picks one per machine (README,
// "Building for a CPU"); programs report the choice (ntkd's log and ntkd_build_info,
// ntk-replay --version, the benchmarks' context) so that a figure or a bug report says
// which code ran.
#pragma once

#include <string_view>

namespace ntk {

struct CoreBuild {
  // The build's -march level: "x86-64" or "x86-64-v3" for the two glibc-hwcaps copies,
  // "native", an NTK_ARCH value, or "default" (the compiler's own default target).
  std::string_view target;
  // The SIMD instructions the hot loops use: "AVX-512", "AVX2+FMA", "AVX", "SSE2",
  // "NEON" or "none".
  std::string_view simd;
  // Doubles per SIMD register in those loops (1 without SIMD).
  int double_lanes;
  // Whether multiply-add is fused.
  bool fma;
};

// The build of the ntk::core copy this process runs.
CoreBuild core_build() noexcept;

}  // namespace ntk
