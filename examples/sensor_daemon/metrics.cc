// Prometheus text exposition of ntkd's state.
#include "metrics.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/stubs/common.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "ntk/stream/convert.h"
#include "ntk/v1/state.pb.h"

namespace ntk::daemon {

std::string prom_escape_label(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (const char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string prom_number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 9007199254740992.0) {
    return std::to_string(static_cast<long long>(v));
  }
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

void PromText::family(std::string_view name, std::string_view type, std::string_view help) {
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  for (const char c : help) {  // HELP escapes only backslash and newline
    if (c == '\\') {
      out_ += "\\\\";
    } else if (c == '\n') {
      out_ += "\\n";
    } else {
      out_ += c;
    }
  }
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += ' ';
  out_ += type;
  out_ += '\n';
}

void PromText::sample(std::string_view name, Labels labels, double value) {
  out_ += name;
  if (labels.size() > 0) {
    out_ += '{';
    bool first = true;
    for (const auto& [k, v] : labels) {
      if (!first) out_ += ',';
      first = false;
      out_ += k;
      out_ += "=\"";
      out_ += prom_escape_label(v);
      out_ += '"';
    }
    out_ += '}';
  }
  out_ += ' ';
  out_ += prom_number(value);
  out_ += '\n';
}

namespace {

double u(std::uint64_t v) { return static_cast<double>(v); }

// "ERROR_CODE_DUPLICATE_SEQ" -> "DUPLICATE_SEQ".
std::string short_code(const std::string& name) {
  constexpr std::string_view prefix = "ERROR_CODE_";
  return name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
}

}  // namespace

std::optional<ProcessStats> read_process_stats() {
#ifdef __linux__
  std::string line;
  {
    std::ifstream in("/proc/self/stat");  // closed before the descriptors are counted
    if (!std::getline(in, line)) return std::nullopt;
  }
  // The fields after the command name, which is in parentheses and may hold anything.
  const std::size_t close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(line.substr(close + 1));
  std::vector<std::string> f;
  for (std::string x; fields >> x;) f.push_back(x);
  // f[0] is field 3 (state): utime 14, stime 15, vsize 23, rss 24 are f[11], f[12], f[20],
  // f[21] (proc(5)).
  if (f.size() < 22) return std::nullopt;
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(::sysconf(_SC_PAGESIZE));
  ProcessStats s;
  try {
    s.cpu_seconds = (std::stod(f[11]) + std::stod(f[12])) / ticks;
    s.virtual_memory_bytes = std::stod(f[20]);
    s.resident_memory_bytes = std::stod(f[21]) * page;
  } catch (const std::exception&) {
    return std::nullopt;
  }
  std::error_code ec;
  std::size_t fds = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++fds;
  }
  // The iterator's own descriptor is among them while it lists. Out of descriptors, the
  // listing itself fails: then the count is left out, not reported as 0.
  if (!ec && fds > 0) s.open_fds = static_cast<double>(fds - 1);
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) s.max_fds = static_cast<double>(limit.rlim_cur);
  return s;
#else
  return std::nullopt;
#endif
}

std::string render_metrics(const v1::Stats& stats, const DaemonStatus& st) {
  PromText p;
  const v1::ServerCounters& c = stats.server();
  const std::string protobuf_version =
      google::protobuf::internal::VersionString(GOOGLE_PROTOBUF_VERSION);

  p.family("ntkd_build_info", "gauge",
           "Build of the running daemon (always 1); core: the instruction-set level of the "
           "ntk::core copy it runs, simd: the vector instructions that copy uses.");
  p.sample("ntkd_build_info",
           {{"version", st.version},
            {"protobuf", protobuf_version},
            {"format", "ntk.v1"},
            {"core", st.core_target},
            {"simd", st.core_simd}},
           1);
  p.family("ntkd_start_time_seconds", "gauge", "Start time of the daemon, Unix seconds.");
  p.sample("ntkd_start_time_seconds", st.start_time_unix_seconds);
  if (st.process) {
    const ProcessStats& ps = *st.process;
    p.family("process_cpu_seconds_total", "counter", "User and system CPU time spent, seconds.");
    p.sample("process_cpu_seconds_total", ps.cpu_seconds);
    p.family("process_resident_memory_bytes", "gauge", "Resident memory size, bytes.");
    p.sample("process_resident_memory_bytes", ps.resident_memory_bytes);
    p.family("process_virtual_memory_bytes", "gauge", "Virtual memory size, bytes.");
    p.sample("process_virtual_memory_bytes", ps.virtual_memory_bytes);
    if (ps.open_fds) {
      p.family("process_open_fds", "gauge", "Open file descriptors.");
      p.sample("process_open_fds", *ps.open_fds);
    }
    p.family("process_max_fds", "gauge", "Limit on open file descriptors (soft).");
    p.sample("process_max_fds", ps.max_fds);
    p.family("process_start_time_seconds", "gauge", "Start time of the process, Unix seconds.");
    p.sample("process_start_time_seconds", st.start_time_unix_seconds);
  }
  p.family("ntkd_ready", "gauge",
           "1 when snapshots are restored and the daemon accepts requests (see /readyz).");
  p.sample("ntkd_ready", st.ready ? 1 : 0);

  // Traffic.
  p.family("ntkd_connections_accepted_total", "counter", "TCP connections accepted.");
  p.sample("ntkd_connections_accepted_total", u(c.connections_accepted()));
  p.family("ntkd_connections_refused_total", "counter",
           "TCP connections closed at once because max_connections were open.");
  p.sample("ntkd_connections_refused_total", u(c.connections_refused()));
  p.family("ntkd_connection_timeouts_total", "counter",
           "TCP connections closed by a timeout: idle (idle_timeout), read (a frame not "
           "completed within read_timeout), write (a peer that did not read for "
           "write_timeout).");
  p.sample("ntkd_connection_timeouts_total", {{"kind", "idle"}}, u(c.idle_timeouts()));
  p.sample("ntkd_connection_timeouts_total", {{"kind", "read"}}, u(c.read_timeouts()));
  p.sample("ntkd_connection_timeouts_total", {{"kind", "write"}}, u(c.write_timeouts()));
  p.family("ntkd_connections_open", "gauge", "TCP connections open now.");
  p.sample("ntkd_connections_open", u(c.connections_open()));
  p.family("ntkd_frames_total", "counter", "Request frames (TCP) and datagrams (UDP) received.");
  p.sample("ntkd_frames_total", {{"transport", "tcp"}}, u(c.tcp_frames()));
  p.sample("ntkd_frames_total", {{"transport", "udp"}}, u(c.udp_datagrams()));
  // By payload kind only (no unlabelled total: sum() over the family is the total).
  p.family("ntkd_requests_total", "counter",
           "Requests decoded, TCP and UDP, by payload kind (none: no payload).");
  p.sample("ntkd_requests_total", {{"kind", "observation"}}, u(c.requests_observation()));
  p.sample("ntkd_requests_total", {{"kind", "sensor_reading"}}, u(c.requests_sensor_reading()));
  p.sample("ntkd_requests_total", {{"kind", "market_tick"}}, u(c.requests_market_tick()));
  p.sample("ntkd_requests_total", {{"kind", "control"}}, u(c.requests_control()));
  p.sample("ntkd_requests_total", {{"kind", "none"}}, u(c.requests_no_payload()));
  p.family("ntkd_responses_total", "counter", "Responses sent.");
  p.sample("ntkd_responses_total", u(c.responses()));
  p.family("ntkd_received_bytes_total", "counter", "Bytes received from clients.");
  p.sample("ntkd_received_bytes_total", u(c.bytes_received()));
  p.family("ntkd_sent_bytes_total", "counter", "Bytes sent to clients.");
  p.sample("ntkd_sent_bytes_total", u(c.bytes_sent()));

  // Errors by code: every code the protocol defines, 0 when never sent, so that the set
  // of series is fixed.
  std::map<int, std::uint64_t> errors;
  for (const auto& e : c.errors()) errors[e.code()] += e.count();
  p.family("ntkd_errors_total", "counter", "Error responses sent, by ntk.v1.ErrorCode.");
  const auto* codes = v1::ErrorCode_descriptor();
  for (int i = 0; i < codes->value_count(); ++i) {
    const auto* value = codes->value(i);
    if (value->number() == v1::ERROR_CODE_UNSPECIFIED) continue;
    const auto it = errors.find(value->number());
    p.sample("ntkd_errors_total", {{"code", short_code(value->name())}},
             it == errors.end() ? 0.0 : u(it->second));
  }

  // Update latency: the server's per-bucket counts made cumulative, as Prometheus wants.
  const v1::LatencyHistogram& h = c.update_latency();
  p.family("ntkd_update_latency_seconds", "histogram",
           "Time a shard spends in a key's observe (prediction and model update), per value "
           "learned.");
  std::uint64_t cumulative = 0;
  for (int b = 0; b < h.upper_bounds_seconds_size(); ++b) {
    if (b < h.counts_size()) cumulative += h.counts(b);
    p.sample("ntkd_update_latency_seconds_bucket", {{"le", prom_number(h.upper_bounds_seconds(b))}},
             u(cumulative));
  }
  for (int b = h.upper_bounds_seconds_size(); b < h.counts_size(); ++b) cumulative += h.counts(b);
  p.sample("ntkd_update_latency_seconds_bucket", {{"le", "+Inf"}}, u(cumulative));
  p.sample("ntkd_update_latency_seconds_sum", h.sum_seconds());
  p.sample("ntkd_update_latency_seconds_count", u(cumulative));

  // Keys and models: gauges over the live keys; counters over every key held since start.
  std::uint64_t dict_sum = 0, dict_max = 0, budget_sum = 0, models = 0, racing_keys = 0;
  double drift_max = 0;
  // The counters start from those of the keys no longer held, so that a drop, a
  // reconfiguration or an import never makes a *_total go down.
  v1::ModelCounters model = c.retired_model();
  v1::SeriesCounters series = c.retired_series();
  for (const v1::KeyStats& k : stats.keys()) {
    dict_sum += k.dictionary_size();
    dict_max = std::max<std::uint64_t>(dict_max, k.dictionary_size());
    budget_sum += static_cast<std::uint64_t>(std::max(0, k.config().series().model().budget()));
    drift_max = std::max(drift_max, k.last_drift());
    // racing: models of the key's noise-ratio race (0 from a server that predates it: 1).
    models += std::max<std::uint32_t>(1, k.racing());
    racing_keys += k.racing() > 1;
    model.set_updates(model.updates() + k.model().updates());
    model.set_admitted(model.admitted() + k.model().admitted());
    model.set_evicted(model.evicted() + k.model().evicted());
    model.set_recomputes(model.recomputes() + k.model().recomputes());
    model.set_pivot_failures(model.pivot_failures() + k.model().pivot_failures());
    model.set_covariance_repairs(model.covariance_repairs() + k.model().covariance_repairs());
    model.set_resets(model.resets() + k.model().resets());
    const v1::SeriesCounters& s = k.counters();
    series.set_observations(series.observations() + s.observations());
    series.set_accepted(series.accepted() + s.accepted());
    series.set_missing(series.missing() + s.missing());
    series.set_duplicates(series.duplicates() + s.duplicates());
    series.set_out_of_order(series.out_of_order() + s.out_of_order());
    series.set_gaps(series.gaps() + s.gaps());
    series.set_time_reversals(series.time_reversals() + s.time_reversals());
    series.set_scored(series.scored() + s.scored());
    series.set_anomalies(series.anomalies() + s.anomalies());
    series.set_excluded(series.excluded() + s.excluded());
  }
  // Less what the keys restored at start carried in: from this process's start.
  ntk::stream::subtract_counts(model, c.restored_model());
  ntk::stream::subtract_counts(series, c.restored_series());
  p.family("ntkd_keys", "gauge", "Live stream keys.");
  p.sample("ntkd_keys", u(c.keys()));
  p.family("ntkd_models", "gauge",
           "Models held, summed over the live keys (more than one per key while its noise "
           "ratio is raced).");
  p.sample("ntkd_models", u(models));
  p.family("ntkd_model_bytes", "gauge",
           "Heap bytes the live keys' models and series buffers hold (all noise candidates "
           "while they race).");
  p.sample("ntkd_model_bytes", u(c.model_bytes()));
  p.family("ntkd_model_bytes_limit", "gauge",
           "max_model_bytes: new keys that would take ntkd_model_bytes above it are refused.");
  p.sample("ntkd_model_bytes_limit", u(c.max_model_bytes()));
  p.family("ntkd_keys_racing", "gauge", "Live keys whose noise-to-signal ratio is still raced.");
  p.sample("ntkd_keys_racing", u(racing_keys));
  p.family("ntkd_dictionary_points", "gauge", "Dictionary points held, summed over the live keys.");
  p.sample("ntkd_dictionary_points", u(dict_sum));
  p.family("ntkd_dictionary_budget_points", "gauge",
           "Dictionary budgets (maximum points), summed over the live keys.");
  p.sample("ntkd_dictionary_budget_points", u(budget_sum));
  p.family("ntkd_dictionary_size_max", "gauge", "Largest dictionary of any live key.");
  p.sample("ntkd_dictionary_size_max", u(dict_max));

  p.family("ntkd_model_updates_total", "counter",
           "Samples learned by the models of every key held since start (dropped ones included).");
  p.sample("ntkd_model_updates_total", u(model.updates()));
  p.family("ntkd_model_admitted_total", "counter", "Samples admitted into dictionaries.");
  p.sample("ntkd_model_admitted_total", u(model.admitted()));
  p.family("ntkd_model_evicted_total", "counter", "Dictionary points evicted (budget).");
  p.sample("ntkd_model_evicted_total", u(model.evicted()));
  p.family("ntkd_model_recomputes_total", "counter",
           "Periodic or drift-triggered kernel recomputations (refactorizations).");
  p.sample("ntkd_model_recomputes_total", u(model.recomputes()));
  p.family("ntkd_model_pivot_failures_total", "counter",
           "Dictionary appends refused by the Cholesky factor.");
  p.sample("ntkd_model_pivot_failures_total", u(model.pivot_failures()));
  p.family("ntkd_model_covariance_repairs_total", "counter",
           "Posterior covariances repaired after rounding made them indefinite.");
  p.sample("ntkd_model_covariance_repairs_total", u(model.covariance_repairs()));
  p.family("ntkd_model_resets_total", "counter",
           "Models restarted from the prior after their state stopped being finite.");
  p.sample("ntkd_model_resets_total", u(model.resets()));
  p.family(
      "ntkd_model_drift_max", "gauge",
      "Largest last measured factor drift |LL'-(K+jI)|/|K+jI| over the live keys (0: none yet).");
  p.sample("ntkd_model_drift_max", drift_max);

  p.family("ntkd_series_values_total", "counter",
           "Stream values by outcome, summed over every key held since start.");
  p.sample("ntkd_series_values_total", {{"outcome", "offered"}}, u(series.observations()));
  p.sample("ntkd_series_values_total", {{"outcome", "accepted"}}, u(series.accepted()));
  p.sample("ntkd_series_values_total", {{"outcome", "missing"}}, u(series.missing()));
  p.sample("ntkd_series_values_total", {{"outcome", "duplicate"}}, u(series.duplicates()));
  p.sample("ntkd_series_values_total", {{"outcome", "out_of_order"}}, u(series.out_of_order()));
  p.sample("ntkd_series_values_total", {{"outcome", "scored"}}, u(series.scored()));
  p.family("ntkd_series_gaps_total", "counter", "Sequence-number gaps seen.");
  p.sample("ntkd_series_gaps_total", u(series.gaps()));
  p.family("ntkd_series_time_reversals_total", "counter",
           "Values timed before the newest of their stream (a clock stepping back, or no "
           "time): taken as a step of 0 s.");
  p.sample("ntkd_series_time_reversals_total", u(series.time_reversals()));
  p.family("ntkd_anomalies_total", "counter", "Observations flagged as anomalies.");
  p.sample("ntkd_anomalies_total", u(series.anomalies()));
  p.family("ntkd_anomalies_excluded_total", "counter",
           "Flagged observations kept out of the model.");
  p.sample("ntkd_anomalies_excluded_total", u(series.excluded()));

  // Snapshots.
  p.family("ntkd_snapshot_restored_keys", "gauge", "Keys restored from a snapshot at start.");
  p.sample("ntkd_snapshot_restored_keys", u(st.restored_keys));
  p.family("ntkd_snapshots_written_total", "counter", "Snapshots written.");
  p.sample("ntkd_snapshots_written_total", u(st.snapshots_written));
  p.family("ntkd_snapshot_failures_total", "counter", "Snapshot writes that failed.");
  p.sample("ntkd_snapshot_failures_total", u(st.snapshot_failures));
  if (st.last_snapshot_unix_seconds) {
    p.family("ntkd_snapshot_last_success_timestamp_seconds", "gauge",
             "When the last snapshot was written (or restored at start), Unix seconds.");
    p.sample("ntkd_snapshot_last_success_timestamp_seconds", *st.last_snapshot_unix_seconds);
  }
  // With snapshots configured the age is always there, so that an alert on it fires when
  // every write since start has failed: what was learned since start is then not durable.
  if (st.snapshots_enabled || st.last_snapshot_unix_seconds) {
    p.family("ntkd_snapshot_age_seconds", "gauge",
             "Seconds since the last snapshot was written (or restored at start); since start "
             "when there was none.");
    p.sample("ntkd_snapshot_age_seconds",
             std::max(0.0, st.now_unix_seconds -
                               st.last_snapshot_unix_seconds.value_or(st.start_time_unix_seconds)));
  }
  p.family("ntkd_snapshot_duration_seconds", "gauge", "Duration of the last snapshot write.");
  p.sample("ntkd_snapshot_duration_seconds", st.last_snapshot_duration_seconds);
  p.family("ntkd_snapshot_keys", "gauge", "Keys in the last snapshot written.");
  p.sample("ntkd_snapshot_keys", u(st.last_snapshot_keys));
  p.family("ntkd_snapshot_bytes", "gauge", "Size of the last snapshot written.");
  p.sample("ntkd_snapshot_bytes", u(st.last_snapshot_bytes));

  p.family("ntkd_config_reloads_total", "counter", "SIGHUP config reloads, by result.");
  p.sample("ntkd_config_reloads_total", {{"result", "ok"}}, u(st.reloads_ok));
  p.sample("ntkd_config_reloads_total", {{"result", "failed"}}, u(st.reloads_failed));
  return p.text();
}

}  // namespace ntk::daemon
