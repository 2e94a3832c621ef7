// core/build_info: the copy of ntk::core this process runs, checked against what the
// machine and the dynamic loader say independently of the library's own macros.
//   - NTK_HWCAPS builds: the loader must pick glibc-hwcaps/x86-64-v3/libntkcore on a CPU
//     with x86-64-v3 (the CPU's own report, __builtin_cpu_supports), the baseline copy
//     elsewhere and where the test's environment masks AVX2 (GLIBC_TUNABLES, set by
//     tests/CMakeLists.txt for the *_x86_64 copies of the core tests, together with
//     NTK_EXPECT_CORE_TARGET); the file the code runs from (dladdr) must agree.
//   - every build: the SIMD description agrees with the -march level.
#include <dlfcn.h>
#include <doctest/doctest.h>

#include <cstdlib>
#include <string>
#include <string_view>

#include "ntk/core/build_info.h"

namespace {

// The file of the loaded object that holds ntk::core_build.
std::string library_file() {
  Dl_info info{};
  void* const address = reinterpret_cast<void*>(&ntk::core_build);
  if (dladdr(address, &info) == 0 || info.dli_fname == nullptr) return {};
  return info.dli_fname;
}

}  // namespace

TEST_CASE("the build reports a consistent instruction set") {
  const ntk::CoreBuild b = ntk::core_build();
  INFO("target=" << b.target << " simd=" << b.simd << " lanes=" << b.double_lanes
                 << " fma=" << b.fma << " file=" << library_file());
  CHECK(!b.target.empty());
  CHECK(b.double_lanes >= 1);
  if (b.target == "x86-64") {
    CHECK(b.simd == "SSE2");
    CHECK(b.double_lanes == 2);
    CHECK_FALSE(b.fma);
  } else if (b.target == "x86-64-v3") {
    CHECK(b.simd == "AVX2+FMA");
    CHECK(b.double_lanes == 4);
    CHECK(b.fma);
  } else if (b.target == "x86-64-v4") {
    CHECK(b.simd == "AVX-512");
    CHECK(b.double_lanes == 8);
    CHECK(b.fma);
  }
  if (b.simd == "none") CHECK(b.double_lanes == 1);
}

#if defined(NTK_TEST_HWCAPS)
TEST_CASE("the dynamic loader picks the copy for this CPU") {
  const ntk::CoreBuild b = ntk::core_build();
  const std::string file = library_file();
#if defined(__clang__) && __clang_major__ < 16
  // Clang before 16 knows no level names, nor F16C, LZCNT or MOVBE: every CPU with these
  // four (Haswell, Excavator and later) has the rest of x86-64-v3.
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
#else
  const bool v3 = __builtin_cpu_supports("x86-64-v3");
#endif
  std::string expected = v3 ? "x86-64-v3" : "x86-64";
  if (const char* e = std::getenv("NTK_EXPECT_CORE_TARGET")) expected = e;
  INFO("file=" << file << " GLIBC_TUNABLES="
               << (std::getenv("GLIBC_TUNABLES") ? std::getenv("GLIBC_TUNABLES") : "(unset)"));
  CHECK(b.target == expected);
  const bool from_hwcaps_dir = file.find("/glibc-hwcaps/x86-64-v3/") != std::string::npos;
  CHECK(from_hwcaps_dir == (expected == "x86-64-v3"));
  CHECK(file.find("libntkcore.so") != std::string::npos);
}
#endif
