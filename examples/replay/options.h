// ntk-replay's command line, parsed into plain data; shared by every replay mode (the
// series and output flags mean the same thing offline and against a daemon).
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "ntk/core/series.h"

namespace ntk::replay {

// A bad command line; what() is the one-line reason (without the program name).
class UsageError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

struct ReplayOptions {
  bool help = false;
  bool version = false;
  bool offline = false;
  // --connect HOST:PORT: the same replay through a running ntkd (remote.h), under the
  // stream key --key (default: the input's file name), at --speed x the recorded pace
  // (0: as fast as possible), recording the session's requests with --record FILE.
  std::optional<std::string> connect;
  std::optional<std::string> key;
  double speed = 0.0;
  std::optional<std::string> record_path;

  // Input.
  std::string input;
  std::optional<std::string> time_column;
  std::vector<std::string> value_columns;  // --value-column A[,B...]: one stream each
  std::optional<std::string> seq_column;   // default: the row index is the sequence number

  // The predictor (SeriesConfig defaults unless a flag says otherwise).
  SeriesConfig series;

  // Outputs.
  std::optional<std::string> predictions_path;  // CSV
  std::optional<std::string> plot_path;         // PNG through gnuplot
  std::optional<std::string> summary_path;      // JSON; "-" is stdout
  bool progress = true;                         // when stderr is a terminal
};

// Parses argv[1..argc). Flags take their value as the next argument or after '='.
// Throws UsageError naming the flag and the bad value; the resulting series config has
// passed SeriesConfig::validate().
ReplayOptions parse_replay_args(int argc, const char* const* argv);

// The --help text.
std::string replay_usage();

}  // namespace ntk::replay
