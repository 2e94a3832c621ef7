// ntk-accuracy: the accuracy report of ACCURACY.md, from the series shipped in data/.
//
//   ntk-accuracy [--data DIR] [--only TEXT] [--max-train N] > tables.md
//
// For every CSV under DIR (every column after the first, which is the time or step) it
// runs, one step ahead: persistence, AR(p) by recursive least squares, the online
// predictor with an RBF kernel tuned on the first half of the series, the online predictor
// with its defaults (the NTK, no tuning), and batch kernel ridge regression on the whole
// series (the upper bound). Every method is scored on the same rows: the second half of the
// series. Then, for the files with labelled anomaly windows (DIR/nab/nab_windows.csv),
// it counts the windows the default predictor flagged and its flags outside windows.
// Tables go to stdout as Markdown, progress to stderr.
//
// Exit status: 0 on success, 2 for a bad command line or a bad file.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "accuracy.h"
#include "series_csv.h"

namespace {

namespace fs = std::filesystem;
namespace rp = ntk::replay;
using ntk::KernelSpec;
using ntk::PrequentialScore;
using ntk::SeriesConfig;

constexpr int kExitUsage = 2;

constexpr const char* kUsage =
    R"(usage: ntk-accuracy [--data DIR] [--only TEXT] [--max-train N] > tables.md

Scores persistence, AR(8), the online predictor with a tuned RBF and with its default
NTK, and batch kernel ridge regression one step ahead on every column of every CSV
under DIR (the first column is the time), all on each series' second half; then counts
the labelled anomaly windows (DIR/nab/nab_windows.csv) the default predictor flags.
Markdown tables on stdout (ACCURACY.md's), progress on stderr; about a minute for data/.

  --data DIR       the series (default: data)
  --only TEXT      only the files whose path contains TEXT
  --max-train N    batch KRR trains on at most N samples, N >= 10 (default 2000)
  --help           this text
Exit status: 0 on success, 2 for a bad command line or a bad file.
)";

struct Options {
  fs::path data = "data";
  std::string only;  // evaluate only files whose path contains this
  int max_train = 2000;
};

struct Column {
  std::string file;  // relative to the data directory
  std::string name;  // the column
  std::vector<double> y;
  std::vector<std::int64_t> times;
};

struct Window {
  std::size_t first, last;  // rows, inclusive
};

// One row of the accuracy table.
struct Result {
  std::string file, column;
  std::size_t rows = 0, scored = 0;
  PrequentialScore persistence, ar, rbf, ntk, krr;
  PrequentialScore ntk_tuned;  // the NTK with its noise ratio tuned (diagnostic)
  std::string rbf_choice, krr_choice, ntk_noise_choice;
  double race_noise = 0.0;  // the noise ratio the default NTK's race settled on
};

// One row of the anomaly table.
struct AnomalyResult {
  std::string file;
  std::size_t windows = 0, flagged = 0, flags_inside = 0, flags_outside = 0;
  std::size_t flagged_excl = 0, flags_inside_excl = 0, flags_outside_excl = 0;
};

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

double db(double a, double b) { return 10.0 * std::log10(a / b); }

// Every column of one file, with the first column as the time.
std::vector<Column> read_columns(const fs::path& path, const std::string& relative) {
  std::ifstream in(path);
  std::string header;
  if (!std::getline(in, header)) throw rp::InputError(path.string(), 1, "no header row");
  if (!header.empty() && header.back() == '\r') header.pop_back();
  if (header.starts_with("\xEF\xBB\xBF")) header.erase(0, 3);  // as SeriesCsvReader does
  std::vector<std::string> names;
  std::stringstream hs(header);
  for (std::string cell; std::getline(hs, cell, ',');) names.push_back(cell);
  if (names.size() < 2) {
    throw rp::InputError(path.string(), 1, "expected a time column and at least one value column");
  }
  const std::vector<std::string> values(names.begin() + 1, names.end());
  rp::SeriesCsvReader reader(path.string(), {values, names.front(), {}});
  std::vector<Column> columns(values.size());
  for (std::size_t k = 0; k < values.size(); ++k) columns[k] = {relative, values[k], {}, {}};
  rp::CsvRow row;
  while (reader.next(row)) {
    for (std::size_t k = 0; k < values.size(); ++k) {
      // The comparison needs every method on the same rows: no imputation here.
      if (!std::isfinite(row.values[k])) {
        throw rp::InputError(path.string(), row.line,
                             "column '" + values[k] + "': missing values are not supported");
      }
      columns[k].y.push_back(row.values[k]);
      columns[k].times.push_back(row.time_ns);
    }
  }
  return columns;
}

// nab_windows.csv: series,window_start,window_end,start_row,end_row,label_point,label_row.
std::map<std::string, std::vector<Window>> read_windows(const fs::path& path) {
  std::map<std::string, std::vector<Window>> windows;
  if (!fs::exists(path)) return windows;
  rp::SeriesCsvReader reader(path.string(), {{"start_row", "end_row"}, {}, {}});
  // The series names are text: read them alongside, line by line.
  std::ifstream names(path);
  std::string line;
  std::getline(names, line);
  rp::CsvRow row;
  while (reader.next(row)) {
    std::getline(names, line);
    const std::string series = line.substr(0, line.find(','));
    windows[series].push_back(
        {static_cast<std::size_t>(row.values[0]), static_cast<std::size_t>(row.values[1])});
  }
  return windows;
}

void count_flags(const std::vector<bool>& flags, const std::vector<Window>& windows,
                 std::size_t& flagged, std::size_t& inside, std::size_t& outside) {
  flagged = inside = outside = 0;
  std::vector<bool> in_window(flags.size(), false);
  for (const Window& w : windows) {
    bool any = false;
    for (std::size_t t = w.first; t <= w.last && t < flags.size(); ++t) {
      in_window[t] = true;
      any = any || flags[t];
    }
    flagged += any ? 1 : 0;
  }
  for (std::size_t t = 0; t < flags.size(); ++t) {
    if (flags[t]) ++(in_window[t] ? inside : outside);
  }
}

// The hand-tuning: a grid of configurations, each run over the first half of the series
// only and judged by its prequential MSE there (the scored second half is never looked at).
struct Candidate {
  SeriesConfig config;
  std::string label;
};
Candidate tune(const Column& c, const std::vector<Candidate>& grid) {
  const std::size_t half = c.y.size() / 2;
  const std::vector<double> y(c.y.begin(), c.y.begin() + static_cast<long>(half));
  const std::vector<std::int64_t> t(c.times.begin(), c.times.begin() + static_cast<long>(half));
  const Candidate* best = &grid.front();
  double best_mse = std::numeric_limits<double>::infinity();
  for (const Candidate& candidate : grid) {
    const double mse =
        rp::score_rows(y, rp::series_forecasts(y, t, candidate.config), 0, half).mse();
    if (mse < best_mse) {
      best_mse = mse;
      best = &candidate;
    }
  }
  return *best;
}

constexpr double kNoiseGrid[] = {1e-4, 1e-3, 1e-2, 1e-1};

// RBF: lengthscale x noise ratio (the kernel's variance does not matter: the model
// estimates the signal power).
std::vector<Candidate> rbf_grid() {
  std::vector<Candidate> grid;
  for (const double lengthscale : {0.5, 1.0, 2.0, 4.0, 8.0}) {
    for (const double noise : kNoiseGrid) {
      SeriesConfig cfg;
      cfg.model.kernel = KernelSpec::parse("rbf:lengthscale=1,variance=1");
      cfg.model.kernel.lengthscale = lengthscale;
      cfg.model.noise_variance = noise;
      cfg.noise_candidates.clear();  // a fixed ratio
      grid.push_back({cfg, "l=" + fmt("%g", lengthscale) + ", r=" + fmt("%g", noise)});
    }
  }
  return grid;
}

// The default NTK with only its noise ratio tuned (a diagnostic: how much of the gap to
// the tuned RBF is the noise ratio).
std::vector<Candidate> ntk_noise_grid() {
  std::vector<Candidate> grid;
  for (const double noise : kNoiseGrid) {
    SeriesConfig cfg;
    cfg.model.noise_variance = noise;
    cfg.noise_candidates.clear();  // a fixed ratio
    grid.push_back({cfg, "r=" + fmt("%g", noise)});
  }
  return grid;
}

Result evaluate(const Column& c, const Options& o, std::vector<bool>* flags,
                std::vector<bool>* flags_excluded) {
  Result r;
  r.file = c.file;
  r.column = c.name;
  r.rows = c.y.size();
  const std::size_t begin = c.y.size() / 2, end = c.y.size();
  const SeriesConfig defaults;

  // The two baselines everyone has.
  const rp::Forecasts persistence = rp::persistence_forecasts(c.y);
  const rp::Forecasts ar = rp::ar_rls_forecasts(c.y, defaults.lags, defaults.warmup);

  // Ours, untuned: the defaults as a new series gets them; and with anomalies kept out.
  const rp::Forecasts ntk = rp::series_forecasts(c.y, c.times, defaults, flags, &r.race_noise);
  SeriesConfig excluding = defaults;
  excluding.exclude_anomalies = true;
  rp::series_forecasts(c.y, c.times, excluding, flags_excluded);

  // Ours with an RBF kernel tuned on the first half; the NTK with its noise ratio tuned.
  const Candidate rbf_choice = tune(c, rbf_grid());
  const SeriesConfig& rbf_config = rbf_choice.config;
  r.rbf_choice = rbf_choice.label;
  const rp::Forecasts rbf = rp::series_forecasts(c.y, c.times, rbf_config);
  const Candidate ntk_choice = tune(c, ntk_noise_grid());
  r.ntk_noise_choice = ntk_choice.label;
  const rp::Forecasts ntk_tuned = rp::series_forecasts(c.y, c.times, ntk_choice.config);

  // The batch upper bound, choosing between the tuned RBF and the default NTK kernel.
  rp::KrrOptions krr_options;
  krr_options.lags = defaults.lags;
  krr_options.target = defaults.target;
  krr_options.kernels = {rbf_config.model.kernel, defaults.model.kernel};
  krr_options.max_train = o.max_train;
  const rp::KrrResult krr = rp::batch_krr_forecasts(c.y, krr_options, begin);
  r.krr_choice = (krr.kernel.type == ntk::KernelType::kRbf ? "rbf" : "ntk") +
                 std::string(", lambda=") + fmt("%g", krr.lambda) + ", " +
                 std::to_string(krr.train) + " of " +
                 std::to_string(c.y.size() - static_cast<std::size_t>(defaults.lags));

  // The same rows for everyone: the second half, where every method made a forecast.
  std::vector<bool> use(c.y.size(), false);
  for (std::size_t t = begin; t < end; ++t) {
    use[t] = persistence.has(t) && ar.has(t) && ntk.has(t) && rbf.has(t) && ntk_tuned.has(t) &&
             krr.forecasts.has(t);
  }
  r.persistence = rp::score_rows(c.y, persistence, begin, end, use);
  r.ar = rp::score_rows(c.y, ar, begin, end, use);
  r.ntk = rp::score_rows(c.y, ntk, begin, end, use);
  r.rbf = rp::score_rows(c.y, rbf, begin, end, use);
  r.krr = rp::score_rows(c.y, krr.forecasts, begin, end, use);
  r.ntk_tuned = rp::score_rows(c.y, ntk_tuned, begin, end, use);
  r.scored = r.ntk.n;
  return r;
}

void print_tables(const std::vector<Result>& results, const std::vector<AnomalyResult>& anomalies,
                  const Options& o) {
  const SeriesConfig defaults;
  const auto cell = [](const char* format, double v) { return fmt(format, v); };
  std::printf(
      "One step ahead, scored on the second half of every series (the same rows for every "
      "method). MSE in the series' units squared; NLPD in nats per point; lower is better. "
      "p = %d lags for every method. dB columns: 10 log10 of an MSE ratio (positive: the "
      "NTK default is worse).\n\n",
      defaults.lags);
  std::printf(
      "| series | rows | scored | persistence MSE | NLPD | AR(%d) RLS MSE | NLPD | ours RBF "
      "(tuned) MSE | NLPD | ours NTK (default) MSE | NLPD | batch KRR MSE | NLPD | NTK vs RBF "
      "dB | NTK vs best baseline dB |\n",
      defaults.lags);
  std::printf("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
  for (const Result& r : results) {
    const double baseline = std::min(r.persistence.mse(), r.ar.mse());
    std::printf(
        "| %s %s | %zu | %zu | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
        r.file.c_str(), r.column.c_str(), r.rows, r.scored,
        cell("%.4g", r.persistence.mse()).c_str(), cell("%.3f", r.persistence.nlpd()).c_str(),
        cell("%.4g", r.ar.mse()).c_str(), cell("%.3f", r.ar.nlpd()).c_str(),
        cell("%.4g", r.rbf.mse()).c_str(), cell("%.3f", r.rbf.nlpd()).c_str(),
        cell("%.4g", r.ntk.mse()).c_str(), cell("%.3f", r.ntk.nlpd()).c_str(),
        cell("%.4g", r.krr.mse()).c_str(), cell("%.3f", r.krr.nlpd()).c_str(),
        cell("%+.2f", db(r.ntk.mse(), r.rbf.mse())).c_str(),
        cell("%+.2f", db(r.ntk.mse(), baseline)).c_str());
  }
  std::printf(
      "\nThe choices behind the table: the RBF's lengthscale l and noise ratio r (tuned on the "
      "first half), batch KRR's kernel and ridge lambda (chosen by leave-one-out MSE; training "
      "samples used, at most %d), the noise ratio the default NTK's online race settled on, "
      "and, as a diagnostic, the default NTK with a fixed noise ratio tuned like the RBF's.\n\n",
      o.max_train);
  std::printf(
      "| series | RBF tuning | KRR choice | NTK race winner | NTK noise tuned | its MSE | NLPD | "
      "vs RBF dB |\n");
  std::printf("|---|---|---|---|---|--:|--:|--:|\n");
  for (const Result& r : results) {
    std::printf("| %s %s | %s | %s | r=%g | %s | %s | %s | %s |\n", r.file.c_str(),
                r.column.c_str(), r.rbf_choice.c_str(), r.krr_choice.c_str(), r.race_noise,
                r.ntk_noise_choice.c_str(), cell("%.4g", r.ntk_tuned.mse()).c_str(),
                cell("%.3f", r.ntk_tuned.nlpd()).c_str(),
                cell("%+.2f", db(r.ntk_tuned.mse(), r.rbf.mse())).c_str());
  }
  if (anomalies.empty()) return;
  std::printf(
      "\nLabelled anomaly windows (NAB), the default predictor (|z| > %g), whole series: "
      "windows with at least one flag, flags inside and outside windows; learning from "
      "flagged values (default) and keeping them out (`--exclude-anomalies`).\n\n",
      defaults.anomaly_threshold);
  std::printf(
      "| series | windows | flagged | flags inside | flags outside | flagged (excl.) | "
      "flags inside (excl.) | flags outside (excl.) |\n");
  std::printf("|---|--:|--:|--:|--:|--:|--:|--:|\n");
  for (const AnomalyResult& a : anomalies) {
    std::printf("| %s | %zu | %zu | %zu | %zu | %zu | %zu | %zu |\n", a.file.c_str(), a.windows,
                a.flagged, a.flags_inside, a.flags_outside, a.flagged_excl, a.flags_inside_excl,
                a.flags_outside_excl);
  }
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(arg + ": missing value");
      return argv[++i];
    };
    if (arg == "--data") {
      o.data = value();
    } else if (arg == "--only") {
      o.only = value();
    } else if (arg == "--max-train") {
      const std::string v = value();
      std::size_t used = 0;
      int n = 0;
      try {
        n = std::stoi(v, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != v.size() || n < 10) {
        throw std::invalid_argument("--max-train: expected an integer >= 10, got '" + v + "'");
      }
      o.max_train = n;
    } else if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown argument '" + arg + "' (see --help)");
    }
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse_args(argc, argv);

    // Every shipped CSV, in a stable order; the windows file is a label list, not a series.
    if (!fs::is_directory(o.data)) throw rp::InputError(o.data.string(), "not a directory");
    std::vector<fs::path> files;
    for (const fs::directory_entry& e : fs::recursive_directory_iterator(o.data)) {
      const fs::path& p = e.path();
      if (!e.is_regular_file() || p.extension() != ".csv" || p.filename() == "nab_windows.csv")
        continue;
      if (!o.only.empty() && p.string().find(o.only) == std::string::npos) continue;
      files.push_back(p);
    }
    if (files.empty()) {
      throw rp::InputError(o.data.string(),
                           o.only.empty()
                               ? "no series (.csv) in this directory"
                               : "no series (.csv) whose path contains '" + o.only + "'");
    }
    std::sort(files.begin(), files.end());
    const std::map<std::string, std::vector<Window>> windows =
        read_windows(o.data / "nab" / "nab_windows.csv");

    std::vector<Result> results;
    std::vector<AnomalyResult> anomalies;
    for (const fs::path& path : files) {
      const std::string relative = fs::relative(path, o.data).generic_string();
      for (const Column& c : read_columns(path, relative)) {
        if (std::all_of(c.y.begin(), c.y.end(), [&](double v) { return v == c.y.front(); })) {
          // Nothing to forecast; KRR's fits would all fail and end the run.
          std::fprintf(stderr, "%s %s: constant, skipped\n", relative.c_str(), c.name.c_str());
          continue;
        }
        const auto start = std::chrono::steady_clock::now();
        std::vector<bool> flags, flags_excluded;
        results.push_back(evaluate(c, o, &flags, &flags_excluded));
        std::fprintf(
            stderr, "%s %s: %zu rows, %.1f s\n", relative.c_str(), c.name.c_str(), c.y.size(),
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        // Anomaly windows are labelled per file; NAB files have one value column.
        const auto w = windows.find(path.stem().string());
        if (w == windows.end()) continue;
        AnomalyResult a;
        a.file = relative;
        a.windows = w->second.size();
        count_flags(flags, w->second, a.flagged, a.flags_inside, a.flags_outside);
        count_flags(flags_excluded, w->second, a.flagged_excl, a.flags_inside_excl,
                    a.flags_outside_excl);
        anomalies.push_back(a);
      }
    }
    print_tables(results, anomalies, o);
  } catch (const std::exception& e) {
    std::cerr << "ntk-accuracy: " << e.what() << '\n';
    return kExitUsage;
  }
  return 0;
}
