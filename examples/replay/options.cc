// ntk-replay's command line. See options.h.
#include "options.h"

#include <charconv>
#include <cmath>
#include <functional>
#include <map>
#include <set>
#include <string_view>
#include <system_error>

namespace ntk::replay {

namespace {

int parse_int(std::string_view flag, std::string_view text, int lo, int hi) {
  int v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || v < lo || v > hi) {
    throw UsageError(std::string(flag) + ": expected an integer in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got '" + std::string(text) + "'");
  }
  return v;
}

double parse_double(std::string_view flag, std::string_view text) {
  double v = 0.0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || std::isnan(v)) {
    throw UsageError(std::string(flag) + ": expected a number, got '" + std::string(text) + "'");
  }
  return v;
}

// Comma-separated items, none empty (`what` names an item in the error).
std::vector<std::string> split_list(std::string_view flag, std::string_view text,
                                    const char* what) {
  const std::string_view whole = text;
  std::vector<std::string> names;
  for (;;) {
    const std::size_t comma = text.find(',');
    const std::string_view name = text.substr(0, comma);
    if (name.empty()) {
      throw UsageError(std::string(flag) + ": empty " + what + " in '" + std::string(whole) + "'");
    }
    names.emplace_back(name);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return names;
}

// Column names: a name given twice would be two streams writing one stream's outputs.
std::vector<std::string> split_names(std::string_view flag, std::string_view text) {
  std::vector<std::string> names = split_list(flag, text, "column name");
  for (std::size_t i = 0; i < names.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j) {
      if (names[i] == names[j]) {
        throw UsageError(std::string(flag) + ": column '" + names[i] + "' is named twice");
      }
    }
  }
  return names;
}

// Runs f and turns the core's std::invalid_argument into a UsageError naming the flag.
template <typename F>
void as_flag(std::string_view flag, F&& f) {
  try {
    f();
  } catch (const UsageError&) {
    throw;
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string(flag) + ": " + e.what());
  }
}

}  // namespace

std::string replay_usage() {
  return R"(usage: ntk-replay --offline --input FILE.csv --value-column NAME[,NAME...] [options]
       ntk-replay --connect HOST:PORT --input FILE.csv --value-column NAME[,...] [options]

Replays a recorded series through the per-stream predictor (core/series) in-process,
exactly as the daemon runs it, scoring every prediction when its truth arrives.

input
  --input FILE.csv           comma-separated, one header row, one row per time step
  --value-column NAME[,...]  the column(s) to predict; each is its own stream
  --time-column NAME         ISO 8601 times or seconds (default: the row index)
  --seq-column NAME          sequence numbers (default: the row index)
predictor
  --kernel SPEC              e.g. ntk:activation=relu,depth=3 or rbf:lengthscale=0.5
  --budget M                 dictionary size (default 64)
  --lags p                   lagged values per input (default 8)
  --horizon h                predict h steps ahead (default 1)
  --target level|change      regress the value or its change (default change)
  --time-feature             add the elapsed time to the inputs (irregular sampling)
  --warmup n                 values before the first prediction (default 20)
  --missing skip|hold|mean   what an empty cell becomes (default hold)
  --anomaly-threshold T      flag |z| > T (default 4; inf: never)
  --exclude-anomalies        keep flagged values out of the model
  --include-anomalies        learn from flagged values too
  --forgetting L             forgetting factor in (0, 1] (default 1)
  --noise R                  a fixed noise-to-signal variance ratio (default: raced)
  --noise-candidates R,...   the ratios raced per stream; the best forecaster so far
                             leads (default 0.01,0.1,0.001,0.0001)
  --selection-samples N      learned samples until one candidate is left (default 2000)
  --selection-margin F       drop a candidate F times worse than the leader (default 1.5)
outputs
  --predictions OUT.csv      time,truth,mean,sd,z,anomaly,row,stream per prediction
  --plot OUT.png             truth, prediction, 95% band and anomalies (gnuplot)
  --summary-json FILE|-      n, mse, mae, nlpd, coverage95, anomalies, updates_per_second
                             (JSON has no NaN or inf: such numbers are null)
  --no-progress              no progress bar on stderr
through a running ntkd (instead of --offline; the same outputs, bit-identical predictions)
  --connect HOST:PORT        stream the rows to ntkd over TCP; each key is configured
                             first with the predictor flags above
  --key KEY                  stream key (default: the input's file name without its
                             extension; KEY/COLUMN for several value columns)
  --speed X                  X times the recorded pace (default 0: as fast as possible)
  --record FILE              also write the session's requests (delimited ntk.v1.Request)
                             to FILE; replay it later with --connect --input FILE.pb
                             (its predictions CSV: time in Unix seconds, row = the
                             request's index in FILE, stream = the key)
  --help                     this text
  --version                  the version, and the instruction set of the ntk::core copy
                             that runs (it decides updates_per_second)
Errors in the command line or the file: one line on stderr, exit status 2. Other
failures (an output that cannot be written, a daemon that cannot be reached): exit
status 1.
)";
}

ReplayOptions parse_replay_args(int argc, const char* const* argv) {
  ReplayOptions o;
  SeriesConfig& s = o.series;
  using Handler = std::function<void(std::string_view flag, std::string_view value)>;
  // Flags with a value.
  const std::map<std::string, Handler, std::less<>> with_value = {
      {"--input", [&](auto, auto v) { o.input = v; }},
      {"--time-column", [&](auto, auto v) { o.time_column = std::string(v); }},
      {"--value-column", [&](auto f, auto v) { o.value_columns = split_names(f, v); }},
      {"--seq-column", [&](auto, auto v) { o.seq_column = std::string(v); }},
      {"--kernel",
       [&](auto f, auto v) { as_flag(f, [&] { s.model.kernel = KernelSpec::parse(v); }); }},
      {"--budget", [&](auto f, auto v) { s.model.budget = parse_int(f, v, 1, 1 << 20); }},
      {"--lags", [&](auto f, auto v) { s.lags = parse_int(f, v, 1, SeriesConfig::kMaxLags); }},
      {"--horizon",
       [&](auto f, auto v) { s.horizon = parse_int(f, v, 1, SeriesConfig::kMaxHorizon); }},
      {"--target", [&](auto f, auto v) { as_flag(f, [&] { s.target = parse_series_target(v); }); }},
      {"--warmup", [&](auto f, auto v) { s.warmup = parse_int(f, v, 2, 1 << 30); }},
      {"--missing",
       [&](auto f, auto v) { as_flag(f, [&] { s.missing = parse_missing_policy(v); }); }},
      {"--anomaly-threshold", [&](auto f, auto v) { s.anomaly_threshold = parse_double(f, v); }},
      {"--forgetting", [&](auto f, auto v) { s.model.forgetting = parse_double(f, v); }},
      {"--noise",
       [&](auto f, auto v) {
         s.model.noise_variance = parse_double(f, v);
         s.noise_candidates.clear();
       }},
      {"--noise-candidates",
       [&](auto f, auto v) {
         s.noise_candidates.clear();
         for (const std::string& r : split_list(f, v, "ratio")) {
           s.noise_candidates.push_back(parse_double(f, r));
         }
       }},
      {"--selection-samples",
       [&](auto f, auto v) { s.selection_samples = parse_int(f, v, 1, 1 << 30); }},
      {"--selection-margin", [&](auto f, auto v) { s.selection_margin = parse_double(f, v); }},
      {"--predictions", [&](auto, auto v) { o.predictions_path = std::string(v); }},
      {"--plot", [&](auto, auto v) { o.plot_path = std::string(v); }},
      {"--summary-json", [&](auto, auto v) { o.summary_path = std::string(v); }},
      {"--connect", [&](auto, auto v) { o.connect = std::string(v); }},
      {"--key",
       [&](auto f, auto v) {
         if (v.empty()) throw UsageError(std::string(f) + ": empty key");
         o.key = std::string(v);
       }},
      {"--speed",
       [&](auto f, auto v) {
         o.speed = parse_double(f, v);
         if (!(o.speed >= 0.0) || std::isinf(o.speed)) {
           throw UsageError(std::string(f) + ": expected a finite number >= 0, got '" +
                            std::string(v) + "'");
         }
       }},
      {"--record", [&](auto, auto v) { o.record_path = std::string(v); }},
  };
  // Flags without a value.
  const std::map<std::string, std::function<void()>, std::less<>> switches = {
      {"--help", [&] { o.help = true; }},
      {"-h", [&] { o.help = true; }},
      {"--version", [&] { o.version = true; }},
      {"--offline", [&] { o.offline = true; }},
      {"--time-feature", [&] { s.time_feature = true; }},
      {"--exclude-anomalies", [&] { s.exclude_anomalies = true; }},
      {"--include-anomalies", [&] { s.exclude_anomalies = false; }},
      {"--no-progress", [&] { o.progress = false; }},
  };

  std::set<std::string, std::less<>> given;  // flags with a value, as seen
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string_view value;
    bool inline_value = false;
    if (const std::size_t eq = arg.find('=');
        arg.starts_with("--") && eq != std::string_view::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      inline_value = true;
    }
    if (const auto sw = switches.find(arg); sw != switches.end()) {
      if (inline_value) throw UsageError(std::string(arg) + ": takes no value");
      sw->second();
      continue;
    }
    const auto h = with_value.find(arg);
    if (h == with_value.end()) {
      throw UsageError("unknown argument '" + std::string(argv[i]) + "' (see --help)");
    }
    if (!inline_value) {
      if (i + 1 >= argc) throw UsageError(std::string(arg) + ": missing value");
      value = argv[++i];
    }
    h->second(arg, value);
    given.emplace(arg);
  }
  if (o.help || o.version) return o;

  // Flags that would silently override or be ignored.
  if (given.contains("--noise") && given.contains("--noise-candidates")) {
    throw UsageError(
        "--noise and --noise-candidates exclude each other (one fixed ratio, or a race)");
  }
  if (o.offline) {
    for (const char* f : {"--key", "--speed"}) {
      if (given.contains(f)) throw UsageError(std::string(f) + ": only with --connect");
    }
  }

  if (o.offline == o.connect.has_value()) {
    throw UsageError("the mode is required: --offline or --connect HOST:PORT (see --help)");
  }
  if (o.record_path && !o.connect) throw UsageError("--record: only with --connect");
  if (o.input.empty()) throw UsageError("--input is required");
  // A delimited-protobuf recording (--connect --input F.pb) names its own streams.
  const bool recording = o.connect && o.input.size() > 3 && o.input.ends_with(".pb");
  if (o.value_columns.empty() && !recording) throw UsageError("--value-column is required");
  try {
    s.validate();
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  return o;
}

}  // namespace ntk::replay
