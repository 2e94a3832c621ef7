// ntkd's Prometheus metrics, in the text exposition format 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/): for each family a
// "# HELP" and a "# TYPE" line, then its samples "name{label="value",...} number".
//
// Everything is aggregated over keys: no metric has a label per stream key, so the number
// of series stays fixed however many keys the daemon holds.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ntk/v1/response.pb.h"

namespace ntk::daemon {

// Builds one exposition. Families must be declared before their samples, each once.
class PromText {
 public:
  using Labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;
  // type: counter, gauge, histogram, summary or untyped.
  void family(std::string_view name, std::string_view type, std::string_view help);
  void sample(std::string_view name, Labels labels, double value);
  void sample(std::string_view name, double value) { sample(name, {}, value); }
  const std::string& text() const { return out_; }

 private:
  std::string out_;
};

// A label value with \ " and newline escaped as the format requires.
std::string prom_escape_label(std::string_view value);
// A sample value: shortest round-trip decimal; integers below 2^53 without exponent;
// +Inf, -Inf, NaN.
std::string prom_number(double value);

// The process's own resources, as Prometheus client libraries export them (process_*).
struct ProcessStats {
  double cpu_seconds = 0;  // user + system
  double resident_memory_bytes = 0;
  double virtual_memory_bytes = 0;
  std::optional<double> open_fds;  // absent when /proc/self/fd cannot be listed
  double max_fds = 0;              // RLIMIT_NOFILE, soft
};
// Reads them from /proc/self (Linux); nullopt where that is not available.
std::optional<ProcessStats> read_process_stats();

// What the daemon itself knows, besides the server's counters and key stats.
struct DaemonStatus {
  std::string version;
  // The copy of ntk::core the process runs (ntk::core_build()): -march level and SIMD.
  std::string core_target;
  std::string core_simd;
  double start_time_unix_seconds = 0;
  double now_unix_seconds = 0;
  bool ready = false;
  std::uint64_t restored_keys = 0;
  // Snapshots: whether a snapshot directory is configured, the last success (written, or
  // restored at start), counts, last write.
  bool snapshots_enabled = false;
  std::optional<double> last_snapshot_unix_seconds;
  std::uint64_t snapshots_written = 0;
  std::uint64_t snapshot_failures = 0;
  double last_snapshot_duration_seconds = 0;
  std::uint64_t last_snapshot_keys = 0;
  std::uint64_t last_snapshot_bytes = 0;
  std::uint64_t reloads_ok = 0;
  std::uint64_t reloads_failed = 0;
  std::optional<ProcessStats> process;  // read at scrape time
};

// The whole exposition: server counters (requests by kind, responses, errors by code for
// every ErrorCode, connections, bytes, the update latency histogram), the key aggregates
// from `stats` (keys, dictionary sizes, model and series counters, the largest last drift,
// anomalies), the snapshot state and ntkd_build_info.
std::string render_metrics(const v1::Stats& stats, const DaemonStatus& status);

}  // namespace ntk::daemon
