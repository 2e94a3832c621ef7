// The offline replay engine and ntk-replay's outputs (predictions CSV, summary JSON,
// gnuplot plot, progress bar), in reusable pieces: a daemon-backed mode produces the same
// Outcomes and feeds the same outputs.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "ntk/core/series.h"
#include "options.h"
#include "series_csv.h"

namespace ntk::replay {

// Times handed to SeriesPredictor: the CSV's signed nanoseconds mapped order-preservingly
// onto uint64 (t + 2^63), so that dates before 1970 work; the predictor only uses
// differences of times.
std::uint64_t predictor_time(std::int64_t time_ns);

struct StreamSummary {
  std::string column;
  SeriesCounters counters;
  PrequentialScore score;
  double noise = 0.0;  // the noise ratio forecasts came from at the end (the race's leader)
  int racing = 1;      // noise candidates still racing at the end
};

struct ReplaySummary {
  std::string input;
  std::uint64_t rows = 0;
  std::uint64_t time_reversals = 0;  // rows timed before the row above them
  std::uint64_t first_time_reversal_line = 0;
  std::vector<StreamSummary> streams;
  double predictor_seconds = 0.0;  // time spent inside SeriesPredictor::observe
  double wall_seconds = 0.0;       // the whole replay, reading included

  PrequentialScore overall() const;  // pooled over the streams
  std::uint64_t observations() const;
  std::uint64_t anomalies() const;
  double updates_per_second() const;  // observations / predictor_seconds
};

// Called for every observation of every stream, in file order.
using OutcomeCallback =
    std::function<void(const CsvRow& row, std::size_t stream, const Outcome& outcome)>;

// Draws a progress bar on a terminal while a long replay runs: on fd (stderr by default),
// only if enabled and fd is a terminal; it appears once `delay` has passed (so short runs
// print nothing) and is redrawn at most once per `interval`. finish() (and the destructor)
// erase it.
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled, int fd = 2,
                       std::chrono::milliseconds delay = std::chrono::milliseconds(500),
                       std::chrono::milliseconds interval = std::chrono::milliseconds(100));
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  bool enabled() const { return enabled_; }
  // ensures: if enabled() and due, "\r[####....]  NN%  ROWS rows  S.S s" is written.
  void update(std::uint64_t done_bytes, std::uint64_t total_bytes, std::uint64_t rows);
  void finish();

 private:
  void put(const std::string& text) const;

  bool enabled_;
  int fd_;
  std::chrono::milliseconds delay_, interval_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

// Streams every row of reader through one SeriesPredictor per value column.
// seq: the row's sequence number, or the row index without a sequence column.
ReplaySummary replay_offline(SeriesCsvReader& reader, const SeriesConfig& config,
                             const OutcomeCallback& on_outcome, ProgressBar* progress);

// A file written under a temporary name beside `path` and renamed to it by commit(): a
// run that fails midway leaves whatever was at `path` as it was, and the destructor
// removes the temporary file. The constructor creates it, so an unwritable path fails
// before a long run. A symlink to a file stays a link (the file it names is replaced); a
// path that is not a regular file (/dev/null, /dev/stdout, a FIFO) is written directly.
// Throws std::runtime_error on I/O failure.
class OutputFile {
 public:
  explicit OutputFile(std::string path);
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  std::ofstream& stream() { return out_; }
  void commit();

 private:
  std::string path_, target_, tmp_;
  std::ofstream out_;
  bool direct_ = false;  // not a regular file: written in place
  bool committed_ = false;
};

// Writes one line per scored prediction: time,truth,mean,sd,z,anomaly,row,stream with
// shortest round-trip numbers, into an OutputFile. Throws std::runtime_error on I/O
// failure.
class PredictionCsvWriter {
 public:
  explicit PredictionCsvWriter(const std::string& path);
  void write(const CsvRow& row, const std::string& stream, const Outcome& outcome);
  void close();  // commits the file

 private:
  OutputFile file_;
  std::string line_;
};

// Throws UsageError when two of the paths name the same file (an output over the input,
// or two outputs over each other), compared as the files they resolve to; devices and
// FIFOs are never the same file. Each pair is (flag for the message, path); empty paths
// are skipped.
void check_distinct_paths(const std::vector<std::pair<std::string, std::string>>& named_paths);

// Throws std::runtime_error unless a file can be created (or overwritten) at `path`.
void check_writable(const std::string& flag, const std::string& path);

// Collects what --plot draws: the scored predictions of each stream.
class PlotData {
 public:
  PlotData(std::vector<std::string> streams, TimeKind time_kind);
  void add(const CsvRow& row, std::size_t stream, const Outcome& outcome);
  // Renders a PNG through gnuplot (one panel per stream): truth, predictive mean, the 95%
  // band and the anomalies. Throws std::runtime_error if gnuplot fails or there is
  // nothing to draw.
  void render(const std::string& png_path, const std::string& title) const;

 private:
  struct Point {
    double x, truth, mean, sd;
    bool anomaly;
  };
  std::vector<std::string> streams_;
  TimeKind time_kind_;
  std::vector<std::vector<Point>> points_;
};

// The summary as a JSON object: overall n, mse, mae, nlpd, coverage95, anomalies,
// updates_per_second, time_reversals, then the configuration and per-stream scores and
// counters. Numbers JSON cannot hold (NaN, inf) are null.
std::string summary_json(const ReplaySummary& summary, const ReplayOptions& options);

// Formats v in the shortest form that reads back exactly.
std::string format_double(double v);

}  // namespace ntk::replay
