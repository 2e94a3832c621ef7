// The offline replay engine and its outputs. See replay.h.
#include "replay.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>

namespace ntk::replay {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// gnuplot single-quoted string: a quote is written twice.
std::string gnuplot_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    out += c;
    if (c == '\'') out += '\'';
  }
  return out + "'";
}

}  // namespace

std::uint64_t predictor_time(std::int64_t time_ns) {
  return static_cast<std::uint64_t>(time_ns) ^ (std::uint64_t{1} << 63);
}

std::string format_double(double v) {
  char buf[32];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc() ? std::string(buf, end) : std::string("nan");
}

// --- summary ----------------------------------------------------------------------------

PrequentialScore ReplaySummary::overall() const {
  PrequentialScore s;
  for (const StreamSummary& st : streams) s += st.score;
  return s;
}

std::uint64_t ReplaySummary::observations() const {
  std::uint64_t n = 0;
  for (const StreamSummary& st : streams) n += st.counters.observations;
  return n;
}

std::uint64_t ReplaySummary::anomalies() const {
  std::uint64_t n = 0;
  for (const StreamSummary& st : streams) n += st.counters.anomalies;
  return n;
}

double ReplaySummary::updates_per_second() const {
  return predictor_seconds > 0.0 ? static_cast<double>(observations()) / predictor_seconds : 0.0;
}

// --- progress ---------------------------------------------------------------------------

ProgressBar::ProgressBar(bool enabled, int fd, std::chrono::milliseconds delay,
                         std::chrono::milliseconds interval)
    : enabled_(enabled && ::isatty(fd) == 1),
      fd_(fd),
      delay_(delay),
      interval_(interval),
      start_(Clock::now()),
      last_(start_) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::put(const std::string& text) const {
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd_, text.data() + done, text.size() - done);
    if (n <= 0) return;  // a progress bar is not worth failing the replay for
    done += static_cast<std::size_t>(n);
  }
}

void ProgressBar::update(std::uint64_t done, std::uint64_t total, std::uint64_t rows) {
  if (!enabled_) return;
  const Clock::time_point now = Clock::now();
  if (now - start_ < delay_ || (shown_ && now - last_ < interval_)) return;
  last_ = now;
  shown_ = true;
  const double frac =
      total > 0 ? std::min(1.0, static_cast<double>(done) / static_cast<double>(total)) : 0.0;
  constexpr int kWidth = 40;
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.append(static_cast<std::size_t>(kWidth - filled), '.');
  char line[160];
  std::snprintf(line, sizeof line, "\r[%s] %3d%%  %llu rows  %.1f s", bar.c_str(),
                static_cast<int>(frac * 100.0), static_cast<unsigned long long>(rows),
                seconds_since(start_));
  put(line);
}

void ProgressBar::finish() {
  if (!shown_) return;
  put("\r\033[K");
  shown_ = false;
}

// --- the replay -------------------------------------------------------------------------

ReplaySummary replay_offline(SeriesCsvReader& reader, const SeriesConfig& config,
                             const OutcomeCallback& on_outcome, ProgressBar* progress) {
  const Clock::time_point start = Clock::now();
  const std::vector<std::string>& names = reader.columns().values;
  std::vector<SeriesPredictor> predictors;
  predictors.reserve(names.size());
  for (std::size_t k = 0; k < names.size(); ++k) predictors.emplace_back(config);

  ReplaySummary summary;
  summary.input = reader.path();
  Clock::duration in_predictor{};
  CsvRow row;
  while (reader.next(row)) {
    const std::uint64_t seq = row.seq.value_or(row.index);
    const std::uint64_t time = predictor_time(row.time_ns);
    for (std::size_t k = 0; k < predictors.size(); ++k) {
      const Clock::time_point t0 = Clock::now();
      const Outcome out = predictors[k].observe(seq, time, row.values[k]);
      in_predictor += Clock::now() - t0;
      if (on_outcome) on_outcome(row, k, out);
    }
    ++summary.rows;
    if (progress) progress->update(reader.bytes_read(), reader.file_size(), summary.rows);
  }
  if (progress) progress->finish();
  if (summary.rows == 0) throw InputError(reader.path(), 1, "no data rows after the header");
  summary.time_reversals = reader.time_reversals();
  summary.first_time_reversal_line = reader.first_time_reversal_line();
  for (std::size_t k = 0; k < predictors.size(); ++k) {
    summary.streams.push_back({names[k], predictors[k].counters(), predictors[k].score(),
                               predictors[k].model().config().noise_variance,
                               predictors[k].racing()});
  }
  summary.predictor_seconds = std::chrono::duration<double>(in_predictor).count();
  summary.wall_seconds = seconds_since(start);
  return summary;
}

// --- predictions CSV --------------------------------------------------------------------

OutputFile::OutputFile(std::string path) : path_(std::move(path)) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path_, ec);  // of what a symlink names
  if (fs::exists(st) && !fs::is_regular_file(st)) {
    // A device, FIFO or socket (/dev/null, /dev/stdout, a pipe) is written in place: the
    // rename would have replaced it with a regular file (as root, /dev/null itself).
    direct_ = true;
    out_.open(path_);
  } else {
    // An existing file is replaced where it is, through symlinks, which stay links.
    target_ = path_;
    if (fs::exists(st)) {
      const fs::path resolved = fs::canonical(path_, ec);
      if (!ec) target_ = resolved.string();
    }
    tmp_ = target_ + ".partial-" + std::to_string(::getpid());
    out_.open(tmp_);
  }
  if (!out_) throw std::runtime_error(path_ + ": cannot open for writing");
}

OutputFile::~OutputFile() {
  if (committed_ || direct_) return;
  out_.close();
  std::error_code ignored;
  std::filesystem::remove(tmp_, ignored);
}

void OutputFile::commit() {
  out_.close();
  if (!out_) throw std::runtime_error(path_ + ": write failed");
  if (!direct_) {
    std::error_code ec;
    std::filesystem::rename(tmp_, target_, ec);
    if (ec) throw std::runtime_error(path_ + ": cannot be replaced: " + ec.message());
  }
  committed_ = true;
}

void check_distinct_paths(const std::vector<std::pair<std::string, std::string>>& named_paths) {
  namespace fs = std::filesystem;
  const auto same = [](const std::string& a, const std::string& b) {
    std::error_code ec1, ec2;
    if (fs::exists(a, ec1) && fs::exists(b, ec2)) {
      // Devices and pipes (e.g. /dev/null for two outputs) hold no file to destroy.
      if (!fs::is_regular_file(a, ec1) || !fs::is_regular_file(b, ec2)) return false;
      return fs::equivalent(a, b, ec1);
    }
    return fs::weakly_canonical(a, ec1) == fs::weakly_canonical(b, ec2);
  };
  for (std::size_t i = 0; i < named_paths.size(); ++i) {
    for (std::size_t j = i + 1; j < named_paths.size(); ++j) {
      const auto& [fa, pa] = named_paths[i];
      const auto& [fb, pb] = named_paths[j];
      if (pa.empty() || pb.empty() || !same(pa, pb)) continue;
      throw UsageError(fb + " " + pb + " is the same file as " + fa + " " + pa);
    }
  }
}

void check_writable(const std::string& flag, const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw std::runtime_error(flag + " " + path + ": is a directory");
  const fs::path parent = fs::path(path).has_parent_path() ? fs::path(path).parent_path() : ".";
  const bool ok = fs::exists(path, ec) ? ::access(path.c_str(), W_OK) == 0
                                       : ::access(parent.c_str(), W_OK | X_OK) == 0;
  if (!ok) {
    throw std::runtime_error(flag + " " + path + ": cannot be written (" + std::strerror(errno) +
                             ")");
  }
}

PredictionCsvWriter::PredictionCsvWriter(const std::string& path) : file_(path) {
  file_.stream() << "time,truth,mean,sd,z,anomaly,row,stream\n";
}

void PredictionCsvWriter::write(const CsvRow& row, const std::string& stream, const Outcome& o) {
  if (o.status != OutcomeStatus::kScored) return;
  line_.clear();
  line_ += row.time_text;
  for (double v : {o.value, o.mean, o.sd, o.z}) {
    line_ += ',';
    line_ += format_double(v);
  }
  line_ += o.anomaly ? ",1," : ",0,";
  line_ += std::to_string(row.index);
  line_ += ',';
  line_ += stream;
  line_ += '\n';
  file_.stream() << line_;
}

void PredictionCsvWriter::close() { file_.commit(); }

// --- plot -------------------------------------------------------------------------------

PlotData::PlotData(std::vector<std::string> streams, TimeKind time_kind)
    : streams_(std::move(streams)), time_kind_(time_kind), points_(streams_.size()) {}

void PlotData::add(const CsvRow& row, std::size_t stream, const Outcome& o) {
  if (o.status != OutcomeStatus::kScored) return;
  const double x = time_kind_ == TimeKind::kNone ? static_cast<double>(row.index)
                                                 : static_cast<double>(row.time_ns) * 1e-9;
  points_[stream].push_back({x, o.value, o.mean, o.sd, o.anomaly});
}

void PlotData::render(const std::string& png_path, const std::string& title) const {
  bool any = false;
  for (const auto& p : points_) any = any || !p.empty();
  if (!any) throw std::runtime_error("--plot: no scored predictions to draw");

  // The data goes to a temporary file, one gnuplot data block per stream.
  std::random_device rd;
  const std::filesystem::path data =
      std::filesystem::temp_directory_path() /
      ("ntk-replay-plot-" + std::to_string(::getpid()) + "-" + std::to_string(rd()) + ".dat");
  {
    std::ofstream out(data);
    if (!out) throw std::runtime_error(data.string() + ": cannot create the plot data file");
    out.precision(17);
    for (const auto& block : points_) {
      if (block.empty()) continue;  // no block, so that indices count drawn streams only
      for (const Point& p : block) {
        out << p.x << ' ' << p.truth << ' ' << p.mean << ' ' << p.sd << ' ' << (p.anomaly ? 1 : 0)
            << '\n';
      }
      out << "\n\n";
    }
    if (!out) throw std::runtime_error(data.string() + ": write failed");
  }

  // One panel per stream with everything; a long stream gets a second panel with its last
  // kZoom predictions, where truth, prediction and band can be told apart.
  constexpr std::size_t kZoom = 500;
  int panels = 0;
  for (const auto& block : points_) {
    if (!block.empty()) panels += block.size() > 2 * kZoom ? 2 : 1;
  }
  std::ostringstream gp;
  gp << "set terminal pngcairo size 1600," << 120 + 300 * panels << " noenhanced font ',10'\n"
     << "set output " << gnuplot_quote(png_path) << "\n"
     << "set multiplot layout " << panels << ",1 title " << gnuplot_quote(title) << "\n"
     << "set key top left horizontal opaque\n"
     << "set grid lc rgb '#dddddd'\n"
     << "set autoscale xfix\n";
  if (time_kind_ == TimeKind::kCalendar) {
    gp << "set xdata time\nset timefmt '%s'\n";
  } else {
    gp << "set xlabel " << gnuplot_quote(time_kind_ == TimeKind::kNone ? "row" : "time") << "\n";
  }
  const std::string file = gnuplot_quote(data.string());
  // k: the stream; block: its data block (streams without scored predictions have none).
  const auto panel = [&](std::size_t k, std::size_t block, std::size_t first,
                         const std::string& label) {
    // every ::first skips the block's first points; the band first, the truth on top.
    const std::string sel = " index " + std::to_string(block) + " every ::" + std::to_string(first);
    if (time_kind_ == TimeKind::kCalendar) {
      // Dates alone, or dates and times of day when the panel spans less than ten days.
      const double span = points_[k].back().x - points_[k][first].x;
      gp << (span < 10 * 86400.0 ? "set format x \"%Y-%m-%d\\n%H:%M\"\n"
                                 : "set format x \"%Y-%m-%d\"\n");
    }
    gp << "set ylabel " << gnuplot_quote(label) << "\n"
       << "plot " << file << sel
       << " using 1:($3-1.959964*$4):($3+1.959964*$4) with filledcurves"
          " fc rgb '#9ecae1' fs solid 0.6 noborder title '95% band', \\\n"
       << "  ''" << sel << " using 1:3 with lines lw 1.5 lc rgb '#08519c' title 'prediction', \\\n"
       << "  ''" << sel << " using 1:2 with lines lw 1 lc rgb '#000000' title 'truth', \\\n"
       << "  ''" << sel
       << " using 1:($5 > 0 ? $2 : 1/0) with points pt 7 ps 1.1 lc rgb '#e31a1c'"
          " title 'anomaly'\n";
  };
  std::size_t block = 0;
  for (std::size_t k = 0; k < points_.size(); ++k) {
    const std::string& name = streams_[k];
    const std::size_t count = points_[k].size();
    if (count == 0) continue;  // not drawn: nothing was scored (e.g. a constant column)
    panel(k, block, 0, name);
    if (count > 2 * kZoom) {
      panel(k, block, count - kZoom, name + " (last " + std::to_string(kZoom) + " predictions)");
    }
    ++block;
  }
  gp << "unset multiplot\n";

  // gnuplot's stdout is not ours: when it cannot open the PNG it writes the image there.
  std::FILE* pipe = ::popen("gnuplot > /dev/null", "w");
  if (!pipe) {
    std::filesystem::remove(data);
    throw std::runtime_error("--plot: cannot run gnuplot");
  }
  const std::string script = gp.str();
  std::fwrite(script.data(), 1, script.size(), pipe);
  const int status = ::pclose(pipe);
  std::error_code ignored;
  std::filesystem::remove(data, ignored);
  if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 127) {
    throw std::runtime_error("--plot: gnuplot not found; install Debian's gnuplot-nox");
  }
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error("--plot: gnuplot failed (exit status " +
                             std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) +
                             "; its message is above)");
  }
}

// --- summary JSON -----------------------------------------------------------------------

std::string summary_json(const ReplaySummary& s, const ReplayOptions& o) {
  using Json = nlohmann::ordered_json;
  const auto metrics = [](Json& j, const PrequentialScore& sc) {
    j["n"] = sc.n;
    j["mse"] = sc.mse();
    j["mae"] = sc.mae();
    j["nlpd"] = sc.nlpd();
    j["coverage95"] = sc.coverage95();
  };
  Json j;
  const PrequentialScore all = s.overall();
  metrics(j, all);
  j["anomalies"] = s.anomalies();
  j["updates_per_second"] = s.updates_per_second();
  j["rows"] = s.rows;
  j["observations"] = s.observations();
  j["time_reversals"] = s.time_reversals;
  j["seconds"] = s.wall_seconds;
  j["input"] = s.input;
  const SeriesConfig& c = o.series;
  j["config"] = {
      {"kernel", c.model.kernel.to_string()},
      {"budget", c.model.budget},
      {"noise", c.noise_candidates.empty() ? Json(c.model.noise_variance) : Json("race")},
      {"noise_candidates", c.noise_candidates},
      {"selection_samples", c.selection_samples},
      {"selection_margin", c.selection_margin},
      {"forgetting", c.model.forgetting},
      {"lags", c.lags},
      {"horizon", c.horizon},
      {"target", std::string(to_string(c.target))},
      {"time_feature", c.time_feature},
      {"warmup", c.warmup},
      {"missing", std::string(to_string(c.missing))},
      {"anomaly_threshold", c.anomaly_threshold},
      {"exclude_anomalies", c.exclude_anomalies},
  };
  Json streams = Json::array();
  for (const StreamSummary& st : s.streams) {
    Json js;
    js["column"] = st.column;
    metrics(js, st.score);
    js["noise"] = st.noise;
    js["racing"] = st.racing;
    const SeriesCounters& n = st.counters;
    js["anomalies"] = n.anomalies;
    js["counters"] = {{"observations", n.observations},
                      {"accepted", n.accepted},
                      {"missing", n.missing},
                      {"imputed", n.imputed},
                      {"duplicates", n.duplicates},
                      {"out_of_order", n.out_of_order},
                      {"gaps", n.gaps},
                      {"skipped_seq", n.skipped_seq},
                      {"warming_up", n.warming_up},
                      {"scored", n.scored},
                      {"anomalies", n.anomalies},
                      {"excluded", n.excluded},
                      {"updates", n.updates}};
    streams.push_back(std::move(js));
  }
  j["streams"] = std::move(streams);
  return j.dump(2) + "\n";
}

}  // namespace ntk::replay
