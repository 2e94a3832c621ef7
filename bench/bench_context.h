// The instruction sets behind a run, in the benchmark context (printed before the table
// and in --benchmark_format=json): the ntk::core copy the process runs (with NTK_HWCAPS
// the dynamic loader picks it per machine, core/CMakeLists.txt) and the one this program
// was compiled for, which is what the reference code in the program itself (the
// reference pieces, dlib) runs. A ratio between the two means like for like only when
// they agree; returns whether they do.
#pragma once

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <Eigen/Core>
#include <map>
#include <set>
#include <string>
#include <vector>

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

// Collects the CPU time per iteration of every benchmark (in its own time unit) while the
// console output goes on: the median over repetitions when --benchmark_repetitions is
// given, else the run. The programs print their ratio tables from it after the run.
class TimeCollector : public benchmark::ConsoleReporter {
 public:
  // Colours only on a terminal, so that redirected output stays plain text.
  TimeCollector() : ConsoleReporter(::isatty(STDOUT_FILENO) ? OO_ColorTabular : OO_Tabular) {}
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      const std::string name = r.run_name.str();
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name == "median") {
        times_[name] = r.GetAdjustedCPUTime();
        medians_.insert(name);
      } else if (r.run_type == Run::RT_Iteration && !medians_.contains(name)) {
        times_[name] = r.GetAdjustedCPUTime();
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }
  bool empty() const { return times_.empty(); }
  // The time of the benchmark run `name` (without aggregate suffix), 0 when it did not run.
  double time(const std::string& name) const {
    const auto it = times_.find(name);
    return it == times_.end() ? 0.0 : it->second;
  }

 private:
  std::map<std::string, double> times_;
  std::set<std::string> medians_;
};

}  // namespace ntk::bench
