// ntk-replay against a running ntkd (--connect) and session recordings (--record).
//
// replay_connect() streams a recorded series to the daemon over TCP and hands each answer
// to the same callbacks and outputs as replay_offline(): for the same file and series
// configuration the Outcomes are bit-identical, because the daemon runs the same
// core/series code on the same values, times and sequence numbers:
//   * each value column is one stream key: --key (default: the input file's name) for a
//     single column, "<key>/<column>" for several;
//   * before the first value the key is configured with a Control.Configure carrying the
//     replay's SeriesConfig (so --kernel, --budget, --lags ... mean the same in both
//     modes, and a key that existed is reset);
//   * every row sends one SensorReading per stream with seq = the row's sequence number
//     (or index), time_unix_nano = the row's time (Unix ns; times before 1970 cannot be
//     sent), and no value for a missing or non-finite cell;
//   * a Prediction becomes an Outcome (sd = sqrt(variance), exact since variance = sd^2);
//     DUPLICATE_SEQ / OUT_OF_ORDER_SEQ errors become the dropped statuses; any other
//     Error stops the replay with its code and message;
//   * the per-stream counters and scores of the summary are the daemon's (GetStats).
//
// Pacing: as fast as possible (speed 0), pipelining up to `window` requests; or at the
// recorded pace divided by `speed` (2: twice as fast), from the time column.
//
// RECORDINGS (--record FILE, and --input FILE.pb with --connect)
//   A recording is the session's requests as sent: length-delimited ntk.v1.Request frames
//   (the TCP framing, so `cat FILE | nc host port` replays it too), the Configure of each
//   key first. With --connect, an input ending in ".pb" is such a recording: its requests
//   are sent as they are (paced by their time_unix_nano under --speed) and every
//   SensorReading answer goes to the outputs, the stream being its key.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "ntk/core/series.h"
#include "options.h"
#include "replay.h"
#include "series_csv.h"

namespace ntk::replay {

struct ConnectOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 7420;
  std::string key;                         // key (prefix) of the streams
  double speed = 0.0;                      // 0: as fast as possible
  std::size_t window = 256;                // requests in flight at most
  std::optional<std::string> record_path;  // write the session's requests here
};

// "host:port" -> (host, port); UsageError-like std::invalid_argument otherwise.
std::pair<std::string, std::uint16_t> parse_connect_address(const std::string& text);

// The default stream key for an input path: its file name without directories and
// without the extension ("data/nab/nyc_taxi.csv" -> "nyc_taxi").
std::string default_stream_key(const std::string& input_path);

// Streams reader's rows through the daemon (see above). Throws std::runtime_error on a
// transport failure or an unexpected Error response, InputError for a bad row.
ReplaySummary replay_connect(SeriesCsvReader& reader, const SeriesConfig& config,
                             const ConnectOptions& options, const OutcomeCallback& on_outcome,
                             ProgressBar* progress);

// A ".pb" recording replayed as it was recorded. Streams are the keys in order of first
// appearance (reported through `streams`, then on_outcome's stream index).
ReplaySummary replay_recording(const std::string& path, const ConnectOptions& options,
                               std::vector<std::string>& streams, const OutcomeCallback& on_outcome,
                               ProgressBar* progress);

// True for inputs that are recordings (the ".pb" extension).
bool is_recording(const std::string& input_path);

// The ConnectOptions of a command line with --connect (std::invalid_argument for a bad
// address); the key defaults to default_stream_key(options.input).
ConnectOptions connect_options(const ReplayOptions& options);

// ntk-replay --connect --input F.pb: replays the recording and writes the outputs the
// options ask for (predictions CSV, plot, summary JSON, else a short report on stdout).
// Returns the exit status.
int run_recording(const ReplayOptions& options);

}  // namespace ntk::replay
