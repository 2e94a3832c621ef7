// ntk-replay: the CSV cell parsers and reader against hand-written files, and the program
// itself run as a user runs it — bad command lines and bad files (one line, exit status 2),
// outputs that agree with each other, and a replay of a shipped file whose summary matches
// recorded figures.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <numbers>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "accuracy.h"
#include "ntk/core/build_info.h"
#include "replay.h"
#include "series_csv.h"
#include "support/cli.h"

namespace {

namespace fs = std::filesystem;
using ntk::replay::CsvColumns;
using ntk::replay::CsvRow;
using ntk::replay::Forecasts;
using ntk::replay::InputError;
using ntk::replay::SeriesCsvReader;

constexpr std::int64_t kNs = 1'000'000'000;

using ntk::test::read_file;
using ntk::test::Run;
using ntk::test::scratch;
using ntk::test::write_file;

// Runs ntk-replay with the given arguments.
Run replay(const std::vector<std::string>& args) {
  return ntk::test::run_program(NTK_REPLAY_BIN, args);
}

// Exactly one line on stderr, starting with "ntk-replay: ".
void check_one_line_error(const Run& r, const std::string& expected_prefix) {
  CHECK(r.status == 2);
  CHECK(r.err.starts_with("ntk-replay: " + expected_prefix));
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
}

// A smooth stream with a little structure, as CSV text.
std::string sine_csv(int n, bool with_missing) {
  std::ostringstream s;
  s.precision(17);
  s << "timestamp,value,other\n";
  for (int i = 0; i < n; ++i) {
    const int minutes = i * 5;
    char ts[32];
    std::snprintf(ts, sizeof ts, "2020-01-%02dT%02d:%02d:00", 1 + minutes / 1440, minutes / 60 % 24,
                  minutes % 60);
    s << ts << ',';
    if (!(with_missing && i % 25 == 13)) s << 10.0 + std::sin(0.2 * i) + 0.3 * std::sin(0.05 * i);
    s << ',' << i << '\n';
  }
  return s.str();
}

}  // namespace

TEST_CASE("calendar times, seconds and values parse exactly; bad cells are refused") {
  using ntk::replay::parse_calendar_time;
  using ntk::replay::parse_seconds;
  using ntk::replay::parse_value;
  // Oracle: Python's datetime (UTC) for the same texts.
  CHECK(parse_calendar_time("1970-01-01") == 0);
  CHECK(parse_calendar_time("2014-07-01T00:30:00") == 1404174600 * kNs);
  CHECK(parse_calendar_time("2014-07-01 00:30:00") == 1404174600 * kNs);
  CHECK(parse_calendar_time("2014-07-01T00:30") == 1404174600 * kNs);
  CHECK(parse_calendar_time("2014-07-01T00:30:00Z") == 1404174600 * kNs);
  CHECK(parse_calendar_time("2014-07-01T02:30:00.5+02:00") == 1404174600 * kNs + kNs / 2);
  CHECK(parse_calendar_time("2000-02-29T00:00:00") == 951782400 * kNs);
  CHECK(parse_calendar_time("1749-01-01") == -6974035200LL * kNs);
  // West of UTC: the offset is subtracted with its sign (local 19:30 at -05:00 is 00:30 Z).
  CHECK(parse_calendar_time("2014-06-30T19:30:00-05:00") == 1404174600 * kNs);
  CHECK(parse_calendar_time("2014-06-30T23:00:00.25-01:30") == 1404174600 * kNs + kNs / 4);
  for (const char* bad :
       {"", "2014-13-01", "2014-00-10", "2013-02-29", "1900-02-29", "2014-07-01T24:00:00",
        "2014-07-01T10:60", "2014-07-01X", "14-07-01", "2014-7-1", "2014-07-01T10:00:00.",
        "2014-07-01T10", "2014-07-01T10:00+0200", "2014-07-01T10:00+02"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_calendar_time(bad).has_value());
  }
  CHECK(parse_seconds("12") == 12 * kNs);
  CHECK(parse_seconds("-1.5") == -3 * kNs / 2);
  CHECK(parse_seconds("1404174600.000000001") == 1404174600 * kNs + 1);
  CHECK(parse_seconds("1e3") == 1000 * kNs);
  CHECK_FALSE(parse_seconds("abc").has_value());
  CHECK_FALSE(parse_seconds("1.2.3").has_value());
  CHECK_FALSE(parse_seconds("1e300").has_value());
  // The range ends where nanoseconds leave int64: 9223372036 s, 2262-04-11T23:47:16Z. The
  // last second before it is read in both forms, leading zeros and all.
  constexpr std::int64_t kLast = 9223372035;
  CHECK(parse_calendar_time("2262-04-11T23:47:15Z") == kLast * kNs);
  CHECK(parse_seconds("9223372035") == kLast * kNs);
  CHECK(parse_seconds("0009223372035.999999999") == kLast * kNs + kNs - 1);
  CHECK(parse_seconds("-9223372035") == -kLast * kNs);
  for (const char* bad : {"9223372036", "-9223372036", "99999999999999999999999"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_seconds(bad).has_value());
  }
  CHECK_FALSE(parse_calendar_time("2262-04-11T23:47:16Z").has_value());

  CHECK(std::isnan(*parse_value("")));
  CHECK(std::isnan(*parse_value("NA")));
  CHECK(std::isnan(*parse_value("NaN")));
  CHECK(parse_value("3.25") == 3.25);
  CHECK(parse_value(" -4e-3 ") == -4e-3);
  CHECK(parse_value("+7") == 7.0);
  CHECK(std::isinf(*parse_value("inf")));
  CHECK_FALSE(parse_value("x1").has_value());
  CHECK_FALSE(parse_value("1.5.2").has_value());
  CHECK_FALSE(parse_value("\"3\"").has_value());
  CHECK_FALSE(parse_value("+-0.5").has_value());  // one sign only
  CHECK_FALSE(parse_value("++1").has_value());
  // Beyond double's range: rounded as strtod does (an overflow is then a missing value).
  CHECK(parse_value("1e-400") == 0.0);
  CHECK(parse_value("1e400") == std::numeric_limits<double>::infinity());
  CHECK(parse_value("-1e400") == -std::numeric_limits<double>::infinity());
}

TEST_CASE("SeriesCsvReader: columns, CRLF, missing cells, located errors") {
  const std::string ok = write_file("ok.csv",
                                    "step,a,b,seq\r\n"
                                    "0,1.5,x,7\r\n"
                                    "1,,y,8\r\n"
                                    "2,NA,z,9\r\n");
  SeriesCsvReader r(ok, CsvColumns{{"a"}, "step", "seq"});
  CHECK(r.time_kind() == ntk::replay::TimeKind::kNumber);
  CsvRow row;
  REQUIRE(r.next(row));
  CHECK(row.index == 0);
  CHECK(row.line == 2);
  CHECK(row.values[0] == 1.5);
  CHECK(row.time_ns == 0);
  CHECK(row.seq == 7u);
  REQUIRE(r.next(row));
  CHECK(std::isnan(row.values[0]));
  CHECK(row.time_text == "1");
  CHECK(row.time_ns == kNs);
  REQUIRE(r.next(row));
  CHECK(std::isnan(row.values[0]));
  CHECK_FALSE(r.next(row));
  CHECK(r.bytes_read() == r.file_size());
  // The kind is known before the first row is read, from the first row's cell.
  const std::string cal = write_file("cal.csv", "v,timestamp\n1,2014-07-01T00:30:00\n");
  SeriesCsvReader rc(cal, CsvColumns{{"v"}, "timestamp", {}});
  CHECK(rc.time_kind() == ntk::replay::TimeKind::kCalendar);
  REQUIRE(rc.next(row));
  CHECK(row.time_ns == 1404174600 * kNs);
  CHECK(row.line == 2);
  SeriesCsvReader rn(cal, CsvColumns{{"timestamp"}, "v", {}});
  CHECK(rn.time_kind() == ntk::replay::TimeKind::kNumber);
  SeriesCsvReader none(cal, CsvColumns{{"v"}, {}, {}});
  CHECK(none.time_kind() == ntk::replay::TimeKind::kNone);

  // A byte-order mark (spreadsheet exports) is not part of the first column's name.
  const std::string bom = write_file("bom.csv", "\xEF\xBB\xBFstep,v\n0,2.5\n");
  SeriesCsvReader rb(bom, CsvColumns{{"v"}, "step", {}});
  REQUIRE(rb.next(row));
  CHECK(row.values[0] == 2.5);

  const auto error_of = [](const std::string& path, const CsvColumns& cols) {
    try {
      SeriesCsvReader reader(path, cols);
      CsvRow rw;
      while (reader.next(rw)) {
      }
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error_of(ok, {{"c"}, {}, {}}) ==
        ok + ":1: no value column 'c' in the header (step, a, b, seq)");
  CHECK(error_of(ok, {{"a"}, "time", {}}).starts_with(ok + ":1: no time column 'time'"));
  const std::string dup = write_file("dup.csv", "a,a\n1,2\n");
  CHECK(error_of(dup, {{"a"}, {}, {}}) ==
        dup + ":1: column 'a' appears more than once in the header");
  const std::string fields = write_file("fields.csv", "t,v\n0,1\n1,2,3\n");
  CHECK(error_of(fields, {{"v"}, {}, {}}) == fields + ":3: row has 3 fields, the header has 2");
  const std::string number = write_file("number.csv", "t,v\n0,1\n1,2\n2,x1\n");
  CHECK(error_of(number, {{"v"}, {}, {}}) ==
        number + ":4: column 'v': cannot read 'x1' as a number");
  const std::string kinds = write_file("kinds.csv", "t,v\n2020-01-01,1\n5,2\n");
  CHECK(error_of(kinds, {{"v"}, "t", {}})
            .starts_with(kinds + ":3: column 't': cannot read '5' as a calendar time"));
  const std::string seq = write_file("seq.csv", "s,v\n-1,1\n");
  CHECK(error_of(seq, {{"v"}, {}, "s"})
            .starts_with(seq + ":2: column 's': cannot read '-1' as a sequence number"));
  const std::string empty = write_file("empty.csv", "");
  CHECK(error_of(empty, {{"v"}, {}, {}}) == empty + ":1: empty file: no header row");
  const std::string absent = (scratch() / "absent.csv").string();
  CHECK(error_of(absent, {{"v"}, {}, {}}) == absent + ": cannot open for reading");

  // Empty lines: with several columns, ignored at the end of the file (editors add them)
  // and an error elsewhere; with one column, an empty cell, that is a missing value.
  const std::string tail = write_file("tail.csv", "t,v\n0,1\n1,2\n\r\n\n");
  SeriesCsvReader rt(tail, CsvColumns{{"v"}, "t", {}});
  REQUIRE(rt.next(row));
  REQUIRE(rt.next(row));
  CHECK(row.values[0] == 2.0);
  CHECK_FALSE(rt.next(row));
  CHECK_FALSE(rt.next(row));
  CHECK(rt.bytes_read() == rt.file_size());
  const std::string inner = write_file("inner.csv", "t,v\n0,1\n\n1,2\n\n");
  CHECK(error_of(inner, {{"v"}, {}, {}}) ==
        inner +
            ":3: empty line; a row has 2 fields (only empty lines at the end of the file "
            "are ignored)");
  const std::string single = write_file("single.csv", "v\n1\n\n2\n\n");
  SeriesCsvReader rs(single, CsvColumns{{"v"}, {}, {}});
  std::vector<double> seen;
  while (rs.next(row)) seen.push_back(row.values[0]);
  REQUIRE(seen.size() == 4);
  CHECK(seen[0] == 1.0);
  CHECK(std::isnan(seen[1]));
  CHECK(seen[2] == 2.0);
  CHECK(std::isnan(seen[3]));

  // Rows timed before the row above them are read (and counted, with the first's line).
  const std::string back = write_file("back.csv", "t,v\n0,1\n2,2\n1,3\n1,4\n3,5\n0.5,6\n");
  SeriesCsvReader rr(back, CsvColumns{{"v"}, "t", {}});
  int rows = 0;
  while (rr.next(row)) ++rows;
  CHECK(rows == 6);
  CHECK(rr.time_reversals() == 2);
  CHECK(rr.first_time_reversal_line() == 4);
  SeriesCsvReader untimed(back, CsvColumns{{"v"}, {}, {}});
  while (untimed.next(row)) {
  }
  CHECK(untimed.time_reversals() == 0);
  CHECK(untimed.first_time_reversal_line() == 0);
}

TEST_CASE("ntk-replay: bad command lines and bad files give one line and exit status 2") {
  const std::string good = write_file("good.csv", sine_csv(100, false));
  check_one_line_error(replay({"--input", good, "--value-column", "value"}),
                       "the mode is required");
  check_one_line_error(replay({"--offline", "--value-column", "value"}), "--input is required");
  check_one_line_error(replay({"--offline", "--input", good}), "--value-column is required");
  check_one_line_error(
      replay({"--offline", "--input", good, "--value-column", "value", "--lags", "x"}),
      "--lags: expected an integer in [1, 4096], got 'x'");
  check_one_line_error(
      replay({"--offline", "--input", good, "--value-column", "value", "--horizon=0"}),
      "--horizon: expected an integer");
  check_one_line_error(replay({"--offline", "--input", good, "--value-column", "value", "--bogus"}),
                       "unknown argument '--bogus'");
  check_one_line_error(
      replay({"--offline", "--input", good, "--value-column", "value", "--kernel", "ntk:depth=-1"}),
      "--kernel: ");
  check_one_line_error(
      replay({"--offline", "--input", good, "--value-column", "value", "--forgetting", "1.5"}),
      "model: forgetting");
  check_one_line_error(
      replay({"--offline", "--input", good, "--value-column", "value", "--missing", "zero"}),
      "--missing: ");
  check_one_line_error(replay({"--offline", "--input", good, "--value-column", "nope"}),
                       good + ":1: no value column 'nope'");
  const std::string bad = write_file("bad.csv",
                                     "timestamp,value\n2020-01-01T00:00:00,1\n"
                                     "2020-01-01T00:05:00,2\n2020-01-01T00:10:00,abc\n");
  check_one_line_error(replay({"--offline", "--input", bad, "--value-column", "value"}),
                       bad + ":4: column 'value': cannot read 'abc' as a number");
  const std::string bad_time = write_file("bad_time.csv",
                                          "timestamp,value\n2020-01-01T00:00:00,1\n"
                                          "2020-01-01T25:00:00,2\n");
  check_one_line_error(replay({"--offline", "--input", bad_time, "--time-column", "timestamp",
                               "--value-column", "value"}),
                       bad_time +
                           ":3: column 'timestamp': cannot read '2020-01-01T25:00:00' as "
                           "a calendar time");
  const std::string ragged =
      write_file("ragged.csv", "timestamp,value\n2020-01-01,1\n2020-01-02\n");
  check_one_line_error(replay({"--offline", "--input", ragged, "--value-column", "value"}),
                       ragged + ":3: row has 1 fields, the header has 2");
  const std::string header_only = write_file("header.csv", "timestamp,value\n");
  check_one_line_error(replay({"--offline", "--input", header_only, "--value-column", "value"}),
                       header_only + ":1: no data rows");
  check_one_line_error(replay({"--offline", "--input", (scratch() / "none.csv").string(),
                               "--value-column", "value"}),
                       (scratch() / "none.csv").string() + ": cannot open");
  // Outputs appear only when the run succeeds: a failed run creates nothing, and replaces
  // nothing (before, it left a partial file in place of a good one).
  const std::string pred = (scratch() / "never.csv").string();
  replay({"--offline", "--input", bad, "--value-column", "value", "--predictions", pred});
  CHECK_FALSE(fs::exists(pred));
  const std::string kept = write_file("kept.csv", "an earlier run's predictions\n");
  const std::string kept_json = write_file("kept.json", "{}\n");
  check_one_line_error(replay({"--offline", "--input", bad, "--value-column", "value",
                               "--predictions", kept, "--summary-json", kept_json}),
                       bad + ":4:");
  CHECK(read_file(kept) == "an earlier run's predictions\n");
  CHECK(read_file(kept_json) == "{}\n");
  for (const auto& e : fs::directory_iterator(scratch())) {
    CHECK(e.path().filename().string().find(".partial-") == std::string::npos);
  }
  // No output over the input, or over another output: refused before anything is written.
  const std::string input_copy = write_file("input_copy.csv", sine_csv(100, false));
  check_one_line_error(replay({"--offline", "--input", input_copy, "--value-column", "value",
                               "--predictions", input_copy}),
                       "--predictions " + input_copy + " is the same file as --input");
  CHECK(read_file(input_copy) == sine_csv(100, false));
  const std::string out = (scratch() / "out.txt").string();
  check_one_line_error(replay({"--offline", "--input", good, "--value-column", "value",
                               "--predictions", out, "--summary-json", out}),
                       "--summary-json " + out + " is the same file as --predictions");
  // A header without a newline is a file without data rows, said so.
  const std::string header_no_nl = write_file("header_no_nl.csv", "timestamp,value");
  check_one_line_error(replay({"--offline", "--input", header_no_nl, "--time-column", "timestamp",
                               "--value-column", "value"}),
                       header_no_nl + ":1: no data rows");
  // Flags that would silently override each other, or be ignored.
  check_one_line_error(replay({"--offline", "--input", good, "--value-column", "value", "--noise",
                               "0.1", "--noise-candidates", "0.01,0.02"}),
                       "--noise and --noise-candidates exclude each other");
  check_one_line_error(
      replay({"--offline", "--input", good, "--value-column", "value", "--speed", "2"}),
      "--speed: only with --connect");
  // --speed is checked as it is read: a finite number >= 0 (an infinite one never paces).
  check_one_line_error(
      replay({"--offline", "--input", good, "--value-column", "value", "--speed", "inf"}),
      "--speed: expected a finite number >= 0, got 'inf'");
  // An unwritable plot path fails before the run (exit 1, an output), and nothing reaches
  // stdout (gnuplot wrote the PNG there).
  const Run unplottable = replay({"--offline", "--input", good, "--value-column", "value", "--plot",
                                  (scratch() / "no-such-dir" / "p.png").string()});
  CHECK(unplottable.status == 1);
  CHECK(unplottable.err.find("cannot be written") != std::string::npos);
  CHECK(unplottable.out.empty());

  check_one_line_error(
      replay({"--offline", "--input", good, "--value-column", "value,other,value"}),
      "--value-column: column 'value' is named twice");
  check_one_line_error(replay({"--offline", "--input", good, "--value-column", "value",
                               "--noise-candidates", "0.1,,0.2"}),
                       "--noise-candidates: empty ratio in '0.1,,0.2'");
  check_one_line_error(replay({"--offline", "--input", good, "--value-column", "value",
                               "--noise-candidates", "0.1,-1"}),
                       "series: noise_candidates must be finite and > 0, got -1");
  check_one_line_error(
      replay({"--offline", "--input", good, "--value-column", "value", "--selection-margin", "1"}),
      "series: selection_margin must be > 1, got 1");

  const Run help = replay({"--help"});
  CHECK(help.status == 0);
  CHECK(help.out.find("--value-column") != std::string::npos);
  CHECK(help.out.find("--noise-candidates") != std::string::npos);

  // The version names the copy of ntk::core that runs, the one this process runs.
  const Run version = replay({"--version"});
  const ntk::CoreBuild core = ntk::core_build();
  CHECK(version.status == 0);
  CHECK(version.out == "ntk-replay " NTK_PROJECT_VERSION " (ntk::core: " +
                           std::string(core.target) + ", " + std::string(core.simd) + ")\n");
}

TEST_CASE("ntk-replay: the documented defaults, and switches that undo each other") {
  // replay_usage() promises these defaults; the summary JSON echoes the configuration.
  const std::string good = write_file("defaults.csv", sine_csv(60, false));
  const std::string summary = (scratch() / "defaults.json").string();
  const auto config_of = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"--offline",      "--input", good,
                                     "--value-column", "value",   "--no-progress",
                                     "--summary-json", summary};
    args.insert(args.end(), extra.begin(), extra.end());
    const Run r = replay(args);
    REQUIRE(r.status == 0);
    return nlohmann::json::parse(read_file(summary))["config"];
  };
  const nlohmann::json d = config_of({});
  CHECK(d["budget"] == 64);
  CHECK(d["lags"] == 8);
  CHECK(d["horizon"] == 1);
  CHECK(d["target"] == "change");
  CHECK(d["time_feature"] == false);
  CHECK(d["warmup"] == 20);
  CHECK(d["missing"] == "hold");
  CHECK(d["anomaly_threshold"] == 4.0);
  CHECK(d["exclude_anomalies"] == false);
  CHECK(d["forgetting"] == 1.0);
  CHECK(d["selection_samples"] == 2000);
  CHECK(d["selection_margin"] == 1.5);
  // The later switch wins.
  CHECK(config_of({"--exclude-anomalies"})["exclude_anomalies"] == true);
  CHECK(config_of({"--exclude-anomalies", "--include-anomalies"})["exclude_anomalies"] == false);
  CHECK(config_of({"--include-anomalies", "--exclude-anomalies"})["exclude_anomalies"] == true);
  CHECK(config_of({"--include-anomalies"})["exclude_anomalies"] == false);
  // --warmup is refused as it is read, naming the flag and its range.
  check_one_line_error(
      replay({"--offline", "--input", good, "--value-column", "value", "--warmup", "1"}),
      "--warmup: expected an integer in [2, 1073741824], got '1'");
}

TEST_CASE("ntk-replay: times before 1970 keep their order; a shift of all times changes nothing") {
  // The predictor sees only differences of times, so the same series one day later gives
  // the same predictions; the first copy crosses 1970-01-01 (negative seconds before it),
  // with unevenly spaced times so that the time feature matters.
  const auto csv = [](std::int64_t shift) {
    std::ostringstream s;
    s.precision(17);
    s << "t,value\n";
    std::int64_t t = -7200 + shift;
    for (int i = 0; i < 120; ++i) {
      t += 60 * (1 + i % 3);
      s << t << ',' << 10.0 + std::sin(0.2 * i) + 0.3 * std::sin(0.05 * i) << '\n';
    }
    return s.str();
  };
  const auto predictions = [](const std::string& input, const std::string& out) {
    const Run r = replay({"--offline", "--input", input, "--value-column", "value", "--time-column",
                          "t", "--time-feature", "--warmup", "5", "--noise", "0.01",
                          "--no-progress", "--predictions", out});
    REQUIRE(r.status == 0);
    // Everything but the time column.
    std::vector<std::string> rows;
    std::istringstream in(read_file(out));
    for (std::string line; std::getline(in, line);) rows.push_back(line.substr(line.find(',')));
    return rows;
  };
  const std::vector<std::string> early =
      predictions(write_file("epoch.csv", csv(0)), (scratch() / "epoch_pred.csv").string());
  const std::vector<std::string> later = predictions(write_file("epoch_later.csv", csv(86400)),
                                                     (scratch() / "epoch_later_pred.csv").string());
  REQUIRE(early.size() > 100);
  CHECK(early == later);
}

TEST_CASE("ntk-replay: the noise ratio is raced by default, fixed by --noise") {
  const std::string good = write_file("race.csv", sine_csv(300, false));
  const std::string summary = (scratch() / "race.json").string();
  REQUIRE(replay({"--offline", "--input", good, "--value-column", "value", "--no-progress",
                  "--summary-json", summary})
              .status == 0);
  nlohmann::json j = nlohmann::json::parse(read_file(summary));
  CHECK(j["config"]["noise"] == "race");
  CHECK(j["config"]["noise_candidates"] == nlohmann::json({0.01, 0.1, 0.001, 0.0001}));
  const double winner = j["streams"][0]["noise"].get<double>();
  CHECK((winner == 0.01 || winner == 0.1 || winner == 0.001 || winner == 0.0001));
  const int racing = j["streams"][0]["racing"].get<int>();
  CHECK((racing >= 1 && racing <= 4));

  REQUIRE(replay({"--offline", "--input", good, "--value-column", "value", "--no-progress",
                  "--noise-candidates", "0.5,0.05", "--selection-samples", "50", "--summary-json",
                  summary})
              .status == 0);
  j = nlohmann::json::parse(read_file(summary));
  CHECK(j["config"]["noise_candidates"] == nlohmann::json({0.5, 0.05}));
  CHECK(j["config"]["selection_samples"] == 50);
  CHECK(j["streams"][0]["racing"] == 1);  // 280 samples learned: the race is over
  const double w2 = j["streams"][0]["noise"].get<double>();
  CHECK((w2 == 0.5 || w2 == 0.05));

  REQUIRE(replay({"--offline", "--input", good, "--value-column", "value", "--no-progress",
                  "--noise", "0.05", "--summary-json", summary})
              .status == 0);
  j = nlohmann::json::parse(read_file(summary));
  CHECK(j["config"]["noise"] == 0.05);
  CHECK(j["config"]["noise_candidates"].empty());
  CHECK(j["streams"][0]["noise"] == 0.05);
  CHECK(j["streams"][0]["racing"] == 1);
}

TEST_CASE("ntk-replay: predictions CSV, summary JSON and plot agree") {
  const std::string input = write_file("sine.csv", sine_csv(600, true));
  const std::string pred = (scratch() / "pred.csv").string();
  const std::string summary = (scratch() / "summary.json").string();
  const std::string png = (scratch() / "plot.png").string();
  const Run r =
      replay({"--offline", "--input", input, "--time-column", "timestamp", "--value-column",
              "value", "--lags", "6", "--kernel", "rbf:lengthscale=1,variance=1", "--predictions",
              pred, "--plot", png, "--summary-json", summary, "--no-progress"});
  REQUIRE(r.status == 0);
  CHECK(r.err.empty());
  CHECK(r.out.find("predictions scored") != std::string::npos);

  // Recompute the scores from the predictions file.
  std::ifstream in(pred);
  std::string line;
  std::getline(in, line);
  CHECK(line == "time,truth,mean,sd,z,anomaly,row,stream");
  double se = 0, ae = 0, nlpd = 0;
  std::uint64_t n = 0, covered = 0, anomalies = 0;
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream ls(line);
    for (std::string cell; std::getline(ls, cell, ',');) f.push_back(cell);
    REQUIRE(f.size() == 8);
    CHECK(f[0].starts_with("2020-01-"));
    CHECK(f[7] == "value");
    const double y = std::stod(f[1]), m = std::stod(f[2]), sd = std::stod(f[3]),
                 z = std::stod(f[4]);
    CHECK(z == doctest::Approx((y - m) / sd).epsilon(1e-12));
    CHECK(f[5] == (std::abs(z) > 4.0 ? "1" : "0"));
    se += (y - m) * (y - m);
    ae += std::abs(y - m);
    nlpd += 0.5 * std::log(2 * std::numbers::pi * sd * sd) + 0.5 * z * z;
    covered += std::abs(z) <= 1.959963984540054 ? 1 : 0;
    anomalies += f[5] == "1" ? 1 : 0;
    ++n;
  }
  const nlohmann::json j = nlohmann::json::parse(read_file(summary));
  CHECK(j["n"].get<std::uint64_t>() == n);
  CHECK(n > 500);
  CHECK(j["mse"].get<double>() == doctest::Approx(se / n).epsilon(1e-12));
  CHECK(j["mae"].get<double>() == doctest::Approx(ae / n).epsilon(1e-12));
  CHECK(j["nlpd"].get<double>() == doctest::Approx(nlpd / n).epsilon(1e-10));
  CHECK(j["coverage95"].get<double>() == doctest::Approx(static_cast<double>(covered) / n));
  CHECK(j["anomalies"].get<std::uint64_t>() == anomalies);
  CHECK(j["updates_per_second"].get<double>() > 0.0);
  CHECK(j["rows"].get<int>() == 600);
  CHECK(j["streams"][0]["counters"]["missing"].get<int>() == 24);  // i % 25 == 13
  CHECK(j["streams"][0]["counters"]["imputed"].get<int>() == 24);
  CHECK(j["config"]["lags"].get<int>() == 6);
  CHECK(j["time_reversals"].get<int>() == 0);
  // The plot is a PNG.
  const std::string image = read_file(png);
  CHECK(image.size() > 1000);
  CHECK(image.starts_with("\x89PNG\r\n"));
  // A column that never gets a scored prediction (constant: it never leaves warmup) has no
  // panel; with calendar times it crashed the plot (an empty stream's last point).
  std::string with_constant = "timestamp,a,b\n";
  for (int i = 0; i < 300; ++i) {
    char row[64];
    std::snprintf(row, sizeof row, "2020-01-%02dT%02d:00:00,%.6f,5\n", 1 + i / 24, i % 24,
                  std::sin(0.1 * i));
    with_constant += row;
  }
  const std::string two = write_file("two.csv", with_constant);
  const std::string png2 = (scratch() / "two.png").string();
  const Run r2 = replay({"--offline", "--input", two, "--time-column", "timestamp",
                         "--value-column", "a,b", "--plot", png2, "--no-progress"});
  CHECK(r2.status == 0);
  CHECK(r2.err.empty());
  CHECK(read_file(png2).starts_with("\x89PNG\r\n"));
  // Its report line says why it has no scores, instead of printing NaN for each.
  CHECK(r2.out.find(
            "  b                    n=0: no prediction scored (300 values, 0 missing, "
            "300 in warm-up; warm-up needs 20 values that are not all equal, to about 1e-160)\n") !=
        std::string::npos);
  CHECK(r2.out.find("nan") == std::string::npos);

  // Rows timed before the row above them: replayed in file order, counted, and said once.
  std::string shuffled = "t,v\n";
  for (int i = 0; i < 200; ++i) {
    const int t = i == 120 ? 50 : i == 150 ? 140 : i;  // steps back at lines 122 and 152
    shuffled += std::to_string(t) + "," + std::to_string(std::sin(0.1 * i)) + "\n";
  }
  const std::string back = write_file("back_in_time.csv", shuffled);
  const Run rb = replay({"--offline", "--input", back, "--time-column", "t", "--value-column", "v",
                         "--summary-json", "-"});
  REQUIRE(rb.status == 0);
  CHECK(rb.err == "ntk-replay: warning: " + back +
                      ":122: the time is earlier than the row above's (2 such rows); rows are "
                      "replayed in file order, and a step back in time counts as 0 s\n");
  CHECK(nlohmann::json::parse(rb.out)["time_reversals"].get<int>() == 2);

  // Outputs that are not regular files are written in place: a FIFO stays a FIFO (as
  // root, --predictions /dev/null replaced /dev/null with a regular file), and two
  // outputs may both be /dev/null. A symlink stays a link to the file it names.
  const fs::path fifo = scratch() / "pred.fifo";
  fs::remove(fifo);
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const int fifo_fd = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);  // a reader, not waiting
  REQUIRE(fifo_fd >= 0);
  const Run to_fifo = replay({"--offline", "--input", input, "--value-column", "value",
                              "--predictions", fifo.string(), "--no-progress"});
  CHECK(to_fifo.status == 0);
  char head[41] = {};
  CHECK(::read(fifo_fd, head, 40) == 40);
  ::close(fifo_fd);
  CHECK(std::string(head).starts_with("time,truth,mean,sd,z,anomaly,row,stream\n"));
  // Before /dev/null is used: with that defect back, a run as root would replace it.
  REQUIRE(fs::is_fifo(fifo));
  REQUIRE(fs::is_character_file("/dev/null"));
  CHECK(replay({"--offline", "--input", input, "--value-column", "value", "--predictions",
                "/dev/null", "--summary-json", "/dev/null", "--no-progress"})
            .status == 0);
  CHECK(fs::is_character_file("/dev/null"));
  const fs::path real = scratch() / "real_pred.csv", link = scratch() / "link_pred.csv";
  write_file("real_pred.csv", "old\n");
  fs::remove(link);
  fs::create_symlink(real, link);
  CHECK(replay({"--offline", "--input", input, "--value-column", "value", "--predictions",
                link.string(), "--no-progress"})
            .status == 0);
  CHECK(fs::is_symlink(link));
  CHECK(read_file(real.string()).starts_with("time,truth,mean,sd,z,anomaly,row,stream\n"));

  // JSON on stdout with "-".
  const Run js = replay(
      {"--offline", "--input", input, "--value-column", "value,other", "--summary-json", "-"});
  REQUIRE(js.status == 0);
  const nlohmann::json k = nlohmann::json::parse(js.out);
  REQUIRE(k["streams"].size() == 2);
  CHECK(k["streams"][1]["column"] == "other");
  CHECK(k["n"].get<std::uint64_t>() ==
        k["streams"][0]["n"].get<std::uint64_t>() + k["streams"][1]["n"].get<std::uint64_t>());
}

// --- the accuracy baselines -----------------------------------------------------------------

TEST_CASE("persistence: the last value, sd from the past changes (hand-computed)") {
  const std::vector<double> y = {1.0, 2.0, 4.0, 7.0, 11.0};
  const Forecasts f = ntk::replay::persistence_forecasts(y);
  CHECK_FALSE(f.has(0));
  CHECK_FALSE(f.has(1));  // one change seen by row 2, none by row 1
  CHECK(f.mean[2] == 2.0);
  CHECK(f.sd[2] == doctest::Approx(1.0));
  CHECK(f.mean[3] == 4.0);
  CHECK(f.sd[3] == doctest::Approx(std::sqrt((1.0 + 4.0) / 2.0)));
  CHECK(f.mean[4] == 7.0);
  CHECK(f.sd[4] == doctest::Approx(std::sqrt((1.0 + 4.0 + 9.0) / 3.0)));
  // Scoring the rows with a forecast: errors 2, 3, 4.
  const ntk::PrequentialScore s = ntk::replay::score_rows(y, f, 0, y.size());
  CHECK(s.n == 3);
  CHECK(s.mse() == doctest::Approx((4.0 + 9.0 + 16.0) / 3.0));
  const ntk::PrequentialScore masked =
      ntk::replay::score_rows(y, f, 0, y.size(), {true, true, false, true, true});
  CHECK(masked.n == 2);
  CHECK(masked.mse() == doctest::Approx((9.0 + 16.0) / 2.0));
}

TEST_CASE("recursive least squares equals the batch ridge solution after every sample") {
  std::mt19937_64 rng(5);
  std::normal_distribution<double> g(0.0, 1.0);
  const int d = 4, n = 60;
  const double prior = 10.0;
  Eigen::MatrixXd z(n, d);
  Eigen::VectorXd t(n);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < d; ++j) z(i, j) = g(rng);
    t(i) = 0.5 * z(i, 0) - 2.0 * z(i, 3) + 0.1 * g(rng);
  }
  ntk::replay::RecursiveLeastSquares rls(d, prior);
  for (int i = 0; i < n; ++i) {
    const double before = rls.predict(z.row(i).transpose());
    const double e = rls.update(z.row(i).transpose(), t(i));
    CHECK(e == doctest::Approx(t(i) - before).epsilon(1e-12));
    // Oracle: a fresh factorization of Z^T Z + I / prior over the first i + 1 samples.
    const Eigen::MatrixXd zi = z.topRows(i + 1);
    const Eigen::MatrixXd a = zi.transpose() * zi + Eigen::MatrixXd::Identity(d, d) / prior;
    const Eigen::LLT<Eigen::MatrixXd> llt(a);
    const Eigen::VectorXd w = llt.solve(zi.transpose() * t.head(i + 1));
    CHECK((rls.weights() - w).norm() <= 1e-9 * std::max(1.0, w.norm()));
    const Eigen::MatrixXd p = llt.solve(Eigen::MatrixXd::Identity(d, d));
    CHECK((rls.covariance() - p).norm() <= 1e-9 * std::max(1.0, p.norm()));
  }
  CHECK(rls.weights()(3) == doctest::Approx(-2.0).epsilon(0.05));
}

TEST_CASE("AR(p) forecasts equal a from-scratch least-squares recomputation per row") {
  // A noisy AR(2) series; lags 3, warm-up 10: forecasts from row 11 on.
  std::mt19937_64 rng(9);
  std::normal_distribution<double> g(0.0, 0.3);
  std::vector<double> y = {5.0, 5.5};
  for (int i = 2; i < 80; ++i) y.push_back(1.0 + 0.6 * y[i - 1] + 0.2 * y[i - 2] + g(rng));
  const int p = 3, warmup = 10;
  const ntk::replay::Forecasts f = ntk::replay::ar_rls_forecasts(y, p, warmup);
  // The oracle's own centring and scale: the first warm-up values, two-pass.
  double c = 0.0, ss = 0.0;
  for (int i = 0; i < warmup; ++i) c += y[i] / warmup;
  for (int i = 0; i < warmup; ++i) ss += (y[i] - c) * (y[i] - c);
  const double s = std::sqrt(ss / (warmup - 1));
  const auto features = [&](std::size_t t) {
    Eigen::VectorXd z(p + 1);
    z(0) = 1.0;
    for (int k = 0; k < p; ++k) z(k + 1) = (y[t - 1 - k] - c) / s;
    return z;
  };
  double sum_sq = 0.0;  // normalized a-priori errors, recomputed by batch solves
  int checked = 0;
  for (std::size_t t = warmup; t < y.size(); ++t) {
    Eigen::MatrixXd a = Eigen::MatrixXd::Identity(p + 1, p + 1) / 1e6;
    Eigen::VectorXd b = Eigen::VectorXd::Zero(p + 1);
    for (std::size_t k = warmup; k < t; ++k) {
      const Eigen::VectorXd zk = features(k);
      a += zk * zk.transpose();
      b += zk * ((y[k] - c) / s);
    }
    const Eigen::LLT<Eigen::MatrixXd> llt(a);
    const Eigen::VectorXd z = features(t);
    const double mean = llt.solve(b).dot(z);
    const double gain = 1.0 + z.dot(llt.solve(z));
    const std::size_t seen = t - warmup;
    if (seen == 0) {
      CHECK_FALSE(f.has(t));
    } else {
      REQUIRE(f.has(t));
      CHECK(f.mean[t] == doctest::Approx(c + s * mean).epsilon(1e-8));
      CHECK(f.sd[t] == doctest::Approx(s * std::sqrt(sum_sq / seen * gain)).epsilon(1e-8));
      ++checked;
    }
    const double e = (y[t] - c) / s - mean;
    sum_sq += e * e / gain;
  }
  CHECK(checked == 69);
}

TEST_CASE("batch KRR: leave-one-out and out-of-sample forecasts equal explicit refits") {
  std::mt19937_64 rng(13);
  std::normal_distribution<double> g(0.0, 0.05);
  std::vector<double> y;
  for (int i = 0; i < 90; ++i) y.push_back(std::sin(0.4 * i) + 0.5 * std::sin(0.13 * i) + g(rng));
  ntk::replay::KrrOptions o;
  o.lags = 3;
  o.target = ntk::SeriesTarget::kChange;
  o.kernels = {ntk::KernelSpec::parse("rbf:lengthscale=1.5,variance=1")};
  o.lambdas = {1e-3, 1e-1};
  o.max_train = 40;  // a subset: both kinds of forecast occur
  o.max_select = 40;
  const std::size_t begin = 45;
  const ntk::replay::KrrResult r = ntk::replay::batch_krr_forecasts(y, o, begin);
  REQUIRE(r.train == 40);
  REQUIRE(r.train_rows.size() == 40);

  // The oracle's own standardization (whole series, two-pass) and samples.
  const std::size_t n = y.size();
  double m = 0.0, ss = 0.0;
  for (double v : y) m += v / n;
  for (double v : y) ss += (v - m) * (v - m);
  const double s = std::sqrt(ss / (n - 1));
  const auto input = [&](std::size_t t) {
    Eigen::VectorXd x(3);
    for (int k = 0; k < 3; ++k) x(k) = (y[t - 1 - k] - m) / s;
    return x;
  };
  const auto target = [&](std::size_t t) { return (y[t] - y[t - 1]) / s; };
  const auto rbf = [](const Eigen::VectorXd& a, const Eigen::VectorXd& b) {
    return std::exp(-(a - b).squaredNorm() / (2.0 * 1.5 * 1.5));
  };
  // Fit on a set of rows: returns (A = K + lambda I factor, alpha, the rows).
  const auto solve_on = [&](const std::vector<std::size_t>& rows, double lambda) {
    const int k = static_cast<int>(rows.size());
    Eigen::MatrixXd a(k, k);
    Eigen::VectorXd tv(k);
    for (int i = 0; i < k; ++i) {
      tv(i) = target(rows[i]);
      for (int j = 0; j < k; ++j) a(i, j) = rbf(input(rows[i]), input(rows[j]));
      a(i, i) += lambda;
    }
    const Eigen::LLT<Eigen::MatrixXd> llt(a);
    return std::make_pair(llt, Eigen::VectorXd(llt.solve(tv)));
  };
  // The chosen lambda has the lower LOO MSE (by refits) over the scored training rows.
  const auto loo_mse = [&](double lambda) {
    double se = 0.0;
    int count = 0;
    for (std::size_t row : r.train_rows) {
      if (row < begin) continue;
      std::vector<std::size_t> others;
      for (std::size_t q : r.train_rows)
        if (q != row) others.push_back(q);
      const auto [llt, alpha] = solve_on(others, lambda);
      double mean = 0.0;
      for (std::size_t i = 0; i < others.size(); ++i)
        mean += rbf(input(others[i]), input(row)) * alpha(static_cast<Eigen::Index>(i));
      se += (target(row) - mean) * (target(row) - mean);
      ++count;
    }
    return se / count;
  };
  const double other = r.lambda == 1e-3 ? 1e-1 : 1e-3;
  CHECK(loo_mse(r.lambda) <= loo_mse(other));
  CHECK(r.loo_mse == doctest::Approx(loo_mse(r.lambda)).epsilon(1e-8));

  // Every scored row: the leave-one-out refit for training rows, the fit otherwise.
  const auto [full_llt, full_alpha] = solve_on(r.train_rows, r.lambda);
  Eigen::VectorXd tt(static_cast<Eigen::Index>(r.train_rows.size()));
  for (std::size_t i = 0; i < r.train_rows.size(); ++i)
    tt(static_cast<Eigen::Index>(i)) = target(r.train_rows[i]);
  const double s2 = tt.dot(full_alpha) / static_cast<double>(r.train_rows.size());
  int loo = 0, fitted = 0;
  for (std::size_t row = begin; row < n; ++row) {
    CAPTURE(row);
    const bool in_train =
        std::find(r.train_rows.begin(), r.train_rows.end(), row) != r.train_rows.end();
    std::vector<std::size_t> basis;
    for (std::size_t q : r.train_rows)
      if (q != row) basis.push_back(q);
    const auto [llt, alpha] = solve_on(basis, r.lambda);
    Eigen::VectorXd k(static_cast<Eigen::Index>(basis.size()));
    for (std::size_t i = 0; i < basis.size(); ++i)
      k(static_cast<Eigen::Index>(i)) = rbf(input(basis[i]), input(row));
    const double mean = k.dot(alpha);
    const double var = s2 * (1.0 + r.lambda - k.dot(llt.solve(k)));
    REQUIRE(r.forecasts.has(row));
    CHECK(r.forecasts.mean[row] == doctest::Approx(y[row - 1] + s * mean).epsilon(1e-9));
    CHECK(r.forecasts.sd[row] == doctest::Approx(s * std::sqrt(var)).epsilon(1e-7));
    (in_train ? loo : fitted) += 1;
  }
  CHECK(loo > 5);
  CHECK(fitted > 5);
  CHECK_FALSE(r.forecasts.has(begin - 1));  // nothing before the scored rows
}

TEST_CASE("ntk-accuracy: a directory of series in, tables out; nothing to score is an error") {
  const fs::path dir = scratch() / "accuracy_data";
  fs::create_directories(dir);
  // A byte-order mark before the header, as spreadsheets write it, and a constant column
  // (skipped: nothing to forecast, and batch KRR's fits would fail).
  std::string csv = "\xEF\xBB\xBFstep,v,c\n";
  for (int i = 0; i < 120; ++i)
    csv += std::to_string(i) + "," + std::to_string(std::sin(0.3 * i)) + ",5\n";
  write_file("accuracy_data/s.csv", csv);
  const Run ok =
      ntk::test::run_program(NTK_ACCURACY_BIN, {"--data", dir.string(), "--max-train", "50"});
  CHECK(ok.status == 0);
  CHECK(ok.out.find("| s.csv v | 120 | 60 |") != std::string::npos);
  CHECK(ok.out.find("s.csv c") == std::string::npos);
  CHECK(ok.err.find("s.csv c: constant, skipped\n") != std::string::npos);
  const Run none =
      ntk::test::run_program(NTK_ACCURACY_BIN, {"--data", dir.string(), "--only", "nothing"});
  CHECK(none.status == 2);
  CHECK(none.err ==
        "ntk-accuracy: " + dir.string() + ": no series (.csv) whose path contains 'nothing'\n");
  CHECK(none.out.empty());
  const Run help = ntk::test::run_program(NTK_ACCURACY_BIN, {"--help"});
  CHECK(help.status == 0);
  CHECK(help.out.find("--max-train N") != std::string::npos);
}

// --- the progress bar ---------------------------------------------------------------------

TEST_CASE("ProgressBar draws on a terminal only, and erases itself") {
  // A pseudo-terminal stands in for the user's terminal.
  const int master = ::posix_openpt(O_RDWR | O_NOCTTY);
  REQUIRE(master >= 0);
  REQUIRE(::grantpt(master) == 0);
  REQUIRE(::unlockpt(master) == 0);
  const int tty = ::open(::ptsname(master), O_RDWR | O_NOCTTY);
  REQUIRE(tty >= 0);
  {
    ntk::replay::ProgressBar bar(true, tty, std::chrono::milliseconds(0),
                                 std::chrono::milliseconds(0));
    CHECK(bar.enabled());
    bar.update(50, 100, 1234);
    bar.finish();
  }
  // The terminal delivers the bytes asynchronously and possibly in pieces: collect them
  // until the erase sequence arrives (or nothing more comes within 5 s).
  char buf[512];
  std::string drawn;
  while (!drawn.ends_with("\r\033[K")) {
    pollfd p{master, POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) break;
    const ssize_t got = ::read(master, buf, sizeof buf);
    if (got <= 0) break;
    drawn.append(buf, static_cast<std::size_t>(got));
  }
  CHECK(drawn.find("[" + std::string(20, '#') + std::string(20, '.') + "]  50%") !=
        std::string::npos);
  CHECK(drawn.find("1234 rows") != std::string::npos);
  CHECK(drawn.ends_with("\r\033[K"));  // erased
  ntk::replay::ProgressBar disabled(false, tty);
  CHECK_FALSE(disabled.enabled());
  ::close(tty);
  ::close(master);

  // Not a terminal (a pipe, as when stderr is redirected): never enabled, writes nothing.
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  {
    ntk::replay::ProgressBar bar(true, pipe_fds[1], std::chrono::milliseconds(0),
                                 std::chrono::milliseconds(0));
    CHECK_FALSE(bar.enabled());
    bar.update(50, 100, 10);
  }
  ::close(pipe_fds[1]);
  CHECK(::read(pipe_fds[0], buf, sizeof buf) == 0);
  ::close(pipe_fds[0]);
}

// --- a shipped file against recorded figures ----------------------------------------------

TEST_CASE("ntk-replay of a shipped file reproduces the recorded summary") {
  // The recorded figures were written by this very command (run from the source root):
  //   ntk-replay --offline --input data/nab/ec2_request_latency_system_failure.csv
  //       --time-column timestamp --value-column value
  //       --summary-json tests/replay/recorded_ec2_summary.json
  // Re-record them, with that command, only after a deliberate change of the predictor or
  // its defaults, and say so in the commit.
  const std::string recorded_path = NTK_TEST_DATA_DIR "/replay/recorded_ec2_summary.json";
  const nlohmann::json recorded = nlohmann::json::parse(read_file(recorded_path));
  const std::string summary = (scratch() / "ec2_summary.json").string();
  const Run r =
      replay({"--offline", "--input",
              NTK_SOURCE_DIR "/data/nab/ec2_request_latency_system_failure.csv", "--time-column",
              "timestamp", "--value-column", "value", "--summary-json", summary, "--no-progress"});
  REQUIRE(r.status == 0);
  const nlohmann::json now = nlohmann::json::parse(read_file(summary));
  CHECK(now["config"] == recorded["config"]);
  CHECK(now["rows"] == 4032);
  CHECK(now["n"].get<std::uint64_t>() == recorded["n"].get<std::uint64_t>());
  CHECK(now["anomalies"].get<std::uint64_t>() == recorded["anomalies"].get<std::uint64_t>());
  CHECK(now["streams"][0]["counters"] == recorded["streams"][0]["counters"]);
  // Rounding may differ between compilers and flags; a real change of behaviour moves these
  // by far more than 1e-9.
  for (const char* key : {"mse", "mae", "nlpd", "coverage95"}) {
    CAPTURE(key);
    CHECK(now[key].get<double>() == doctest::Approx(recorded[key].get<double>()).epsilon(1e-9));
  }
  // The figures themselves, as a sanity anchor: one-step errors of a ~45 ms latency metric.
  CHECK(recorded["mse"].get<double>() < 20.0);
  CHECK(recorded["coverage95"].get<double>() > 0.9);
}
