// ntk-replay: replays a recorded series through the per-stream predictor and reports
// prequential scores, predictions, a plot and a JSON summary.
//
//   ntk-replay --offline --input F.csv [--time-column T] --value-column V [--kernel SPEC]
//              [--budget M] [--lags p] [--horizon h] [--predictions OUT.csv]
//              [--plot OUT.png] [--summary-json FILE|-]
//   ntk-replay --connect HOST:PORT --input F.csv ... [--key K] [--speed X] [--record R.pb]
//              the same through a running ntkd (remote.h): bit-identical predictions
//
// Exit status: 0 on success, 2 for a bad command line or a bad input file (one line on
// stderr: "ntk-replay: FILE:LINE: reason"), 1 when an output cannot be written (or the
// daemon cannot be reached).
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <optional>

#include "ntk/core/build_info.h"
#include "options.h"
#ifdef NTK_REPLAY_CONNECT
#include "remote.h"
#endif
#include "replay.h"
#include "series_csv.h"

namespace {

constexpr int kExitUsage = 2;
constexpr int kExitFailure = 1;

int fail(int status, const std::string& message) {
  std::cerr << "ntk-replay: " << message << '\n';
  return status;
}

void print_report(const ntk::replay::ReplaySummary& s, int warmup) {
  const ntk::PrequentialScore all = s.overall();
  std::printf("%s: %llu rows, %llu predictions scored, %llu anomalies\n", s.input.c_str(),
              static_cast<unsigned long long>(s.rows), static_cast<unsigned long long>(all.n),
              static_cast<unsigned long long>(s.anomalies()));
  for (const ntk::replay::StreamSummary& st : s.streams) {
    if (st.score.n == 0) {
      // Scores of nothing are NaN; say why there is nothing instead.
      const ntk::SeriesCounters& c = st.counters;
      std::printf(
          "  %-20s n=0: no prediction scored (%llu values, %llu missing, %llu in warm-up; "
          "warm-up needs %d values that are not all equal, to about 1e-160)\n",
          st.column.c_str(), static_cast<unsigned long long>(c.observations),
          static_cast<unsigned long long>(c.missing), static_cast<unsigned long long>(c.warming_up),
          warmup);
      continue;
    }
    std::printf("  %-20s n=%llu mse=%.6g mae=%.6g nlpd=%.6g coverage95=%.4f anomalies=%llu\n",
                st.column.c_str(), static_cast<unsigned long long>(st.score.n), st.score.mse(),
                st.score.mae(), st.score.nlpd(), st.score.coverage95(),
                static_cast<unsigned long long>(st.counters.anomalies));
  }
  std::printf("  %.0f updates/s (%.2f s in the predictor, %.2f s in all)\n", s.updates_per_second(),
              s.predictor_seconds, s.wall_seconds);
}

}  // namespace

int main(int argc, char** argv) {
  namespace rp = ntk::replay;

  // The command line becomes plain options first, so that every mistake in it is reported
  // before any file is touched.
  rp::ReplayOptions options;
  try {
    options = rp::parse_replay_args(argc, argv);
  } catch (const rp::UsageError& e) {
    return fail(kExitUsage, e.what());
  }
  if (options.help) {
    std::cout << rp::replay_usage();
    return 0;
  }
  if (options.version) {
    const ntk::CoreBuild core = ntk::core_build();
    std::cout << "ntk-replay " << NTK_VERSION << " (ntk::core: " << core.target << ", " << core.simd
              << ")\n";
    return 0;
  }

  // No output may overwrite the input or another output (exit 2, before any file is
  // touched).
  const std::string summary_file =
      options.summary_path && *options.summary_path != "-" ? *options.summary_path : "";
  try {
    rp::check_distinct_paths({{"--input", options.input},
                              {"--predictions", options.predictions_path.value_or("")},
                              {"--summary-json", summary_file},
                              {"--plot", options.plot_path.value_or("")},
                              {"--record", options.record_path.value_or("")}});
  } catch (const rp::UsageError& e) {
    return fail(kExitUsage, e.what());
  }

  try {
#ifdef NTK_REPLAY_CONNECT
    // A delimited-protobuf recording is replayed request by request (remote.h).
    if (options.connect && rp::is_recording(options.input)) return rp::run_recording(options);
#endif
    // The reader checks the header against the requested columns before the replay starts.
    rp::SeriesCsvReader reader(options.input,
                               {options.value_columns, options.time_column, options.seq_column});

    // Outputs are opened up front (under temporary names, renamed once complete): a path
    // that cannot be written fails before a long run, and a failed run replaces nothing.
    std::optional<rp::PredictionCsvWriter> predictions;
    if (options.predictions_path) predictions.emplace(*options.predictions_path);
    std::optional<rp::OutputFile> summary_out;
    if (!summary_file.empty()) summary_out.emplace(summary_file);
    // The PNG is written by gnuplot after the run; its path is checked now.
    if (options.plot_path) rp::check_writable("--plot", *options.plot_path);
    std::optional<rp::PlotData> plot;
    if (options.plot_path) plot.emplace(options.value_columns, reader.time_kind());

    // Every observation goes through core/series exactly as the daemon runs it; each
    // outcome is handed to the outputs as it is produced.
    rp::ProgressBar progress(options.progress);
    const rp::OutcomeCallback on_outcome = [&](const rp::CsvRow& row, std::size_t stream,
                                               const ntk::Outcome& outcome) {
      if (predictions) predictions->write(row, options.value_columns[stream], outcome);
      if (plot) plot->add(row, stream, outcome);
    };
#ifdef NTK_REPLAY_CONNECT
    // --connect: the same rows through ntkd; the daemon's outcomes feed the same outputs.
    const rp::ReplaySummary summary =
        options.connect ? rp::replay_connect(reader, options.series, rp::connect_options(options),
                                             on_outcome, &progress)
                        : rp::replay_offline(reader, options.series, on_outcome, &progress);
#else
    const rp::ReplaySummary summary =
        rp::replay_offline(reader, options.series, on_outcome, &progress);
#endif

    if (summary.time_reversals > 0) {
      std::cerr << "ntk-replay: warning: " << options.input << ":"
                << summary.first_time_reversal_line
                << ": the time is earlier than the row above's (" << summary.time_reversals
                << (summary.time_reversals == 1 ? " such row" : " such rows")
                << "); rows are replayed in file order, and a step back in time counts as 0 s\n";
    }
    // The outputs are completed only after the whole file was read without error.
    if (predictions) predictions->close();
    if (plot) plot->render(*options.plot_path, options.input);
    const std::string json = rp::summary_json(summary, options);
    if (options.summary_path && *options.summary_path == "-") {
      std::cout << json;
    } else {
      if (summary_out) {
        summary_out->stream() << json;
        summary_out->commit();
      }
      print_report(summary, options.series.warmup);
    }
  } catch (const rp::InputError& e) {
    return fail(kExitUsage, e.what());
  } catch (const std::invalid_argument& e) {
    return fail(kExitUsage, e.what());
  } catch (const std::exception& e) {
    return fail(kExitFailure, e.what());
  }
  return 0;
}
