// Reading recorded series from CSV files, shared by every ntk-replay mode and the
// accuracy tool.
//
// WHAT THIS OBJECT REPRESENTS
//   A forward-only reader of a comma-separated file with one header row and one row per
//   time step (data/README.md's conventions): unquoted fields, `\n` or `\r\n` line ends,
//   an empty cell (or NA / NaN) meaning a missing value; a UTF-8 byte-order mark before the
//   header is ignored. The caller names the columns it
//   wants: value columns (one stream each), optionally a time column and a sequence-number
//   column. Every problem is an InputError whose message is "FILE:LINE: reason".
//   With one column in the header an empty line is a row with an empty cell (a missing
//   value); with more it is an error, except that empty lines at the end of the file are
//   ignored.
//
//   Time cells are either calendar times — YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS[.fraction]]
//   (a space may replace the T), optionally followed by Z or a +HH:MM / -HH:MM offset —
//   or plain numbers, read as seconds (a `step` column, Unix seconds). The first data row
//   decides which (the constructor peeks at it, so time_kind() is known before the first
//   next()); a later row of the other kind is an error. Times are nanoseconds since
//   1970-01-01T00:00:00Z as a signed 64-bit integer (years 1678 to 2261).
//
// THREAD SAFETY: none; one reader per thread.
#pragma once

#include <cstdint>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace ntk::replay {

// A problem with an input file, located: what() is "FILE:LINE: reason" (or "FILE: reason"
// when no line applies, e.g. the file cannot be opened).
class InputError : public std::invalid_argument {
 public:
  InputError(const std::string& path, std::uint64_t line, const std::string& reason);
  InputError(const std::string& path, const std::string& reason);
};

enum class TimeKind {
  kNone,      // no time column: the row index is the time, in seconds
  kCalendar,  // ISO 8601 dates and times
  kNumber,    // seconds
};

// Parses one calendar time (see above) into nanoseconds since the Unix epoch; nullopt if
// the text is not a valid calendar time (bad field ranges included).
std::optional<std::int64_t> parse_calendar_time(std::string_view text);
// Parses a whole decimal number of seconds into nanoseconds; nullopt if the text is not
// a number or out of range.
std::optional<std::int64_t> parse_seconds(std::string_view text);
// Parses a whole finite or infinite double (std::from_chars, no surrounding text);
// empty, "NA", "NaN", "nan" give NaN (missing). nullopt for anything else.
std::optional<double> parse_value(std::string_view text);

struct CsvColumns {
  std::vector<std::string> values;  // at least one
  std::optional<std::string> time;
  std::optional<std::string> seq;
};

struct CsvRow {
  std::uint64_t index = 0;  // 0-based data row
  std::uint64_t line = 0;   // 1-based line in the file (the header is line 1)
  std::string time_text;    // the time cell as written (the row index without a time column)
  std::int64_t time_ns = 0;
  std::optional<std::uint64_t> seq;
  std::vector<double> values;  // one per value column; NaN: missing
};

class SeriesCsvReader {
 public:
  // Opens the file and reads the header. Throws InputError when the file cannot be read,
  // has no header, or lacks (or repeats) a requested column.
  SeriesCsvReader(std::string path, const CsvColumns& columns);

  // Reads the next data row into row (its buffers are reused). Returns false at the end of
  // the file. Throws InputError for a malformed row: wrong number of fields, a value,
  // time or sequence number that does not parse, a time of the other kind.
  bool next(CsvRow& row);

  const std::string& path() const { return path_; }
  // kNone without a time column; otherwise the kind of the first data row's time cell
  // (kNumber when there are no data rows).
  TimeKind time_kind() const { return time_kind_; }
  const CsvColumns& columns() const { return columns_; }
  std::uint64_t file_size() const { return file_size_; }
  std::uint64_t bytes_read() const { return bytes_read_; }
  // Rows read so far whose time is earlier than the previous row's, and the line of the
  // first (0 if none). Such rows are not errors: the predictor counts a step back in time
  // as 0 s.
  std::uint64_t time_reversals() const { return time_reversals_; }
  std::uint64_t first_time_reversal_line() const { return first_time_reversal_line_; }

 private:
  [[noreturn]] void fail(const std::string& reason) const;
  // Sets time_kind_ from the first data row without consuming it.
  void decide_time_kind();
  // Splits line_ into fields_ (views into line_).
  void split();
  // True if line_ and every line after it are empty (consumes them).
  bool rest_is_empty();

  std::string path_;
  CsvColumns columns_;
  std::ifstream in_;
  std::uint64_t file_size_ = 0;
  std::uint64_t bytes_read_ = 0;
  std::uint64_t line_no_ = 0;
  std::uint64_t rows_ = 0;
  std::size_t header_fields_ = 0;
  std::vector<std::size_t> value_index_;
  std::optional<std::size_t> time_index_;
  std::optional<std::size_t> seq_index_;
  TimeKind time_kind_ = TimeKind::kNone;
  std::optional<std::int64_t> last_time_ns_;
  std::uint64_t time_reversals_ = 0;
  std::uint64_t first_time_reversal_line_ = 0;
  std::string line_;
  std::vector<std::string_view> fields_;
};

}  // namespace ntk::replay
