// Compiled once per copy of the library: the macros below are those of its own build.
#include "ntk/core/build_info.h"

#include <Eigen/Core>

#ifndef NTK_CORE_TARGET
#define NTK_CORE_TARGET "default"
#endif

namespace ntk {

CoreBuild core_build() noexcept {
#if defined(EIGEN_VECTORIZE_AVX512)
  constexpr std::string_view simd = "AVX-512";
#elif defined(EIGEN_VECTORIZE_AVX2) && defined(EIGEN_VECTORIZE_FMA)
  constexpr std::string_view simd = "AVX2+FMA";
#elif defined(EIGEN_VECTORIZE_AVX)
  constexpr std::string_view simd = "AVX";
#elif defined(EIGEN_VECTORIZE_SSE2)
  constexpr std::string_view simd = "SSE2";
#elif defined(EIGEN_VECTORIZE_NEON)
  constexpr std::string_view simd = "NEON";
#else
  constexpr std::string_view simd = "none";
#endif
#if defined(EIGEN_VECTORIZE_FMA) || defined(__FMA__) || defined(__ARM_FEATURE_FMA)
  constexpr bool fma = true;
#else
  constexpr bool fma = false;
#endif
  return CoreBuild{NTK_CORE_TARGET, simd, Eigen::internal::packet_traits<double>::size, fma};
}

}  // namespace ntk
