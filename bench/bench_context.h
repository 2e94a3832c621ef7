// The instruction sets behind a run, in the benchmark context (printed before the table
// and in --benchmark_format=json): the ntk::core copy the process runs (with NTK_HWCAPS
// the dynamic loader picks it per machine, core/CMakeLists.txt) and the one this program
// was compiled for, which is what the reference code in the program itself (the
// reference pieces, dlib) runs. A ratio between the two means like for like only when
// they agree; returns whether they do.
#pragma once

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <string>

#include "ntk/core/build_info.h"

namespace ntk::bench {

inline bool add_build_context() {
  const ntk::CoreBuild core = ntk::core_build();
  const int program_lanes = Eigen::internal::packet_traits<double>::size;
  benchmark::AddCustomContext("ntk_core", std::string(core.target) + " (" + std::string(core.simd) +
                                              ", " + std::to_string(core.double_lanes) +
                                              " doubles)");
  benchmark::AddCustomContext("program_double_lanes", std::to_string(program_lanes));
  return program_lanes == core.double_lanes;
}

}  // namespace ntk::bench
