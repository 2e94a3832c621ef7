// SeriesCsvReader and the cell parsers. See series_csv.h.
#include "series_csv.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <system_error>

namespace ntk::replay {

namespace {

constexpr std::int64_t kNanosPerSecond = 1'000'000'000;
// |seconds| below this fit in int64 nanoseconds.
constexpr std::int64_t kMaxSeconds = std::numeric_limits<std::int64_t>::max() / kNanosPerSecond;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Reads exactly n digits at s[pos]; advances pos.
std::optional<int> digits(std::string_view s, std::size_t& pos, std::size_t n) {
  if (pos + n > s.size()) return std::nullopt;
  int v = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const char c = s[pos + i];
    if (!is_digit(c)) return std::nullopt;
    v = v * 10 + (c - '0');
  }
  pos += n;
  return v;
}

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant, "chrono-compatible
// low-level date algorithms", days_from_civil).
std::int64_t days_from_civil(std::int64_t y, int m, int d) {
  y -= m <= 2 ? 1 : 0;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const std::int64_t yoe = y - era * 400;
  const std::int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const std::int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

int days_in_month(int y, int m) {
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : kDays[m - 1];
}

}  // namespace

InputError::InputError(const std::string& path, std::uint64_t line, const std::string& reason)
    : std::invalid_argument(path + ":" + std::to_string(line) + ": " + reason) {}

InputError::InputError(const std::string& path, const std::string& reason)
    : std::invalid_argument(path + ": " + reason) {}

std::optional<std::int64_t> parse_calendar_time(std::string_view text) {
  const std::string_view s = trim(text);
  std::size_t pos = 0;
  const auto expect = [&](char c) {
    if (pos < s.size() && s[pos] == c) {
      ++pos;
      return true;
    }
    return false;
  };
  const std::optional<int> year = digits(s, pos, 4);
  if (!year || !expect('-')) return std::nullopt;
  const std::optional<int> month = digits(s, pos, 2);
  if (!month || !expect('-')) return std::nullopt;
  const std::optional<int> day = digits(s, pos, 2);
  if (!day || *month < 1 || *month > 12 || *day < 1 || *day > days_in_month(*year, *month)) {
    return std::nullopt;
  }
  int hour = 0, minute = 0, second = 0;
  std::int64_t fraction_ns = 0;
  std::int64_t offset_s = 0;
  if (pos < s.size()) {
    if (!expect('T') && !expect(' ')) return std::nullopt;
    const std::optional<int> hh = digits(s, pos, 2);
    if (!hh || !expect(':')) return std::nullopt;
    const std::optional<int> mm = digits(s, pos, 2);
    if (!mm) return std::nullopt;
    hour = *hh;
    minute = *mm;
    if (expect(':')) {
      const std::optional<int> ss = digits(s, pos, 2);
      if (!ss) return std::nullopt;
      second = *ss;
      if (expect('.')) {
        std::int64_t scale = kNanosPerSecond / 10;
        const std::size_t start = pos;
        while (pos < s.size() && is_digit(s[pos])) {
          fraction_ns += (s[pos] - '0') * scale;
          scale /= 10;
          ++pos;
        }
        if (pos == start) return std::nullopt;
      }
    }
    if (hour > 23 || minute > 59 || second > 60) return std::nullopt;
    if (expect('Z')) {
      // UTC.
    } else if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) {
      const int sign = s[pos] == '-' ? -1 : 1;
      ++pos;
      const std::optional<int> oh = digits(s, pos, 2);
      if (!oh || !expect(':')) return std::nullopt;
      const std::optional<int> om = digits(s, pos, 2);
      if (!om || *oh > 23 || *om > 59) return std::nullopt;
      offset_s = sign * (*oh * 3600 + *om * 60);
    }
  }
  if (pos != s.size()) return std::nullopt;
  const std::int64_t seconds =
      days_from_civil(*year, *month, *day) * 86400 + hour * 3600 + minute * 60 + second - offset_s;
  if (seconds >= kMaxSeconds || seconds <= -kMaxSeconds) return std::nullopt;
  return seconds * kNanosPerSecond + fraction_ns;
}

std::optional<std::int64_t> parse_seconds(std::string_view text) {
  const std::string_view s = trim(text);
  if (s.empty()) return std::nullopt;
  // Exact path for plain decimals: [-]digits[.digits].
  std::size_t pos = 0;
  const bool negative = s[0] == '-';
  if (negative || s[0] == '+') pos = 1;
  const std::size_t int_start = pos;
  while (pos < s.size() && is_digit(s[pos])) ++pos;
  const std::size_t int_end = pos;
  std::size_t frac_start = pos, frac_end = pos;
  if (pos < s.size() && s[pos] == '.') {
    frac_start = ++pos;
    while (pos < s.size() && is_digit(s[pos])) ++pos;
    frac_end = pos;
  }
  if (pos == s.size() && (int_end > int_start || frac_end > frac_start)) {
    std::int64_t whole = 0;
    for (std::size_t i = int_start; i < int_end; ++i) {
      if (whole >= kMaxSeconds) return std::nullopt;  // (whole * 10 + 9 cannot overflow)
      whole = whole * 10 + (s[i] - '0');
    }
    if (whole >= kMaxSeconds) return std::nullopt;
    std::int64_t frac = 0, scale = kNanosPerSecond / 10;
    for (std::size_t i = frac_start; i < frac_end && scale > 0; ++i, scale /= 10) {
      frac += (s[i] - '0') * scale;
    }
    const std::int64_t ns = whole * kNanosPerSecond + frac;
    return negative ? -ns : ns;
  }
  // Anything else with an exponent: through double (nanosecond precision not guaranteed).
  double v = 0.0;
  const char* first = s.data() + (s[0] == '+' ? 1 : 0);
  const auto [end, ec] = std::from_chars(first, s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || !std::isfinite(v)) return std::nullopt;
  if (std::abs(v) >= static_cast<double>(kMaxSeconds)) return std::nullopt;
  return static_cast<std::int64_t>(std::llround(v * 1e9));
}

std::optional<double> parse_value(std::string_view text) {
  const std::string_view s = trim(text);
  if (s.empty() || s == "NA" || s == "NaN" || s == "nan" || s == "NAN") {
    return std::numeric_limits<double>::quiet_NaN();
  }
  double v = 0.0;
  const char* first = s.data() + (s[0] == '+' ? 1 : 0);
  if (first != s.data() && s.size() > 1 && (s[1] == '-' || s[1] == '+')) return std::nullopt;
  const auto [end, ec] = std::from_chars(first, s.data() + s.size(), v);
  if (end != s.data() + s.size()) return std::nullopt;
  if (ec == std::errc::result_out_of_range) {
    // Beyond double's range: strtod gives +-inf (then a missing value, like "inf") for an
    // overflow and 0 or a subnormal for an underflow, as the text's value rounds.
    return std::strtod(std::string(first, end).c_str(), nullptr);
  }
  if (ec != std::errc()) return std::nullopt;
  return v;
}

SeriesCsvReader::SeriesCsvReader(std::string path, const CsvColumns& columns)
    : path_(std::move(path)), columns_(columns) {
  if (columns_.values.empty()) throw InputError(path_, "no value column requested");
  in_.open(path_, std::ios::binary);
  if (!in_) throw InputError(path_, "cannot open for reading");
  in_.seekg(0, std::ios::end);
  const std::streamoff size = in_.tellg();
  in_.seekg(0, std::ios::beg);
  if (!in_ || size < 0) throw InputError(path_, "cannot read (not a regular file?)");
  file_size_ = static_cast<std::uint64_t>(size);

  if (!std::getline(in_, line_)) throw InputError(path_, 1, "empty file: no header row");
  line_no_ = 1;
  bytes_read_ = line_.size() + 1;
  if (!line_.empty() && line_.back() == '\r') line_.pop_back();
  if (line_.starts_with("\xEF\xBB\xBF")) line_.erase(0, 3);  // a UTF-8 byte-order mark
  split();
  header_fields_ = fields_.size();
  std::string names;
  for (std::string_view f : fields_) names += (names.empty() ? "" : ", ") + std::string(trim(f));
  const auto find = [&](const std::string& name, const char* role) {
    std::optional<std::size_t> found;
    for (std::size_t i = 0; i < fields_.size(); ++i) {
      if (trim(fields_[i]) != name) continue;
      if (found) fail("column '" + name + "' appears more than once in the header");
      found = i;
    }
    if (!found)
      fail("no " + std::string(role) + " column '" + name + "' in the header (" + names + ")");
    return *found;
  };
  for (const std::string& name : columns_.values) value_index_.push_back(find(name, "value"));
  if (columns_.time) time_index_ = find(*columns_.time, "time");
  if (columns_.seq) seq_index_ = find(*columns_.seq, "sequence");
  if (time_index_) decide_time_kind();
}

void SeriesCsvReader::decide_time_kind() {
  // Peek at the first data row's time cell, then rewind: the kind is known before the
  // first next(), so that the outputs opened up front (the plot's axis) can rely on it.
  // A cell that is neither kind but looks like a date (a '-' or ':' after a digit) counts
  // as calendar, so that next() reports it against the calendar format.
  time_kind_ = TimeKind::kNumber;
  if (in_.eof()) return;  // the header was the whole file: next() reports no data rows
  const std::streampos start = in_.tellg();
  std::string first;
  if (start != std::streampos(-1) && std::getline(in_, first)) {
    if (!first.empty() && first.back() == '\r') first.pop_back();
    std::string_view rest(first);
    for (std::size_t i = 0; i < *time_index_ && rest.find(',') != std::string_view::npos; ++i) {
      rest.remove_prefix(rest.find(',') + 1);
    }
    const std::string_view cell = trim(rest.substr(0, rest.find(',')));
    const bool calendar = parse_calendar_time(cell).has_value();
    const std::size_t sep = cell.find_first_of("-:", 1);
    const bool date_like = sep != std::string_view::npos && is_digit(cell[sep - 1]) &&
                           !parse_seconds(cell).has_value();
    if (calendar || date_like) time_kind_ = TimeKind::kCalendar;
  }
  in_.clear();
  in_.seekg(start);
  if (!in_) fail("cannot rewind after reading the first data row");
}

void SeriesCsvReader::fail(const std::string& reason) const {
  throw InputError(path_, line_no_, reason);
}

void SeriesCsvReader::split() {
  fields_.clear();
  std::string_view rest(line_);
  for (;;) {
    const std::size_t comma = rest.find(',');
    fields_.push_back(rest.substr(0, comma));
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
}

bool SeriesCsvReader::rest_is_empty() {
  std::string rest;
  while (std::getline(in_, rest)) {
    bytes_read_ += rest.size() + 1;
    if (!rest.empty() && rest.back() == '\r') rest.pop_back();
    if (!rest.empty()) return false;
  }
  if (in_.bad()) fail("read error");
  return true;
}

bool SeriesCsvReader::next(CsvRow& row) {
  if (!std::getline(in_, line_)) {
    if (in_.bad()) fail("read error");
    return false;
  }
  ++line_no_;
  bytes_read_ += line_.size() + 1;
  if (!line_.empty() && line_.back() == '\r') line_.pop_back();
  if (line_.empty() && header_fields_ > 1) {
    if (rest_is_empty()) return false;  // empty lines at the end of the file
    fail("empty line; a row has " + std::to_string(header_fields_) +
         " fields (only empty lines at the end of the file are ignored)");
  }
  split();
  if (fields_.size() != header_fields_) {
    fail("row has " + std::to_string(fields_.size()) + " fields, the header has " +
         std::to_string(header_fields_));
  }
  row.index = rows_++;
  row.line = line_no_;
  row.values.resize(value_index_.size());
  for (std::size_t k = 0; k < value_index_.size(); ++k) {
    const std::string_view cell = fields_[value_index_[k]];
    const std::optional<double> v = parse_value(cell);
    if (!v) {
      fail("column '" + columns_.values[k] + "': cannot read '" + std::string(cell) +
           "' as a number");
    }
    row.values[k] = *v;
  }
  if (time_index_) {
    const std::string_view cell = trim(fields_[*time_index_]);
    row.time_text.assign(cell);
    const std::optional<std::int64_t> t =
        time_kind_ == TimeKind::kCalendar ? parse_calendar_time(cell) : parse_seconds(cell);
    if (!t) {
      fail("column '" + *columns_.time + "': cannot read '" + std::string(cell) + "' as " +
           (time_kind_ == TimeKind::kCalendar
                ? "a calendar time (YYYY-MM-DD[THH:MM[:SS[.f]]][Z|+HH:MM])"
                : "a time in seconds"));
    }
    row.time_ns = *t;
    if (last_time_ns_ && *t < *last_time_ns_ && time_reversals_++ == 0) {
      first_time_reversal_line_ = line_no_;
    }
    last_time_ns_ = *t;
  } else {
    row.time_text = std::to_string(row.index);
    row.time_ns = static_cast<std::int64_t>(row.index) * kNanosPerSecond;
  }
  if (seq_index_) {
    const std::string_view cell = trim(fields_[*seq_index_]);
    std::uint64_t s = 0;
    const auto [end, ec] = std::from_chars(cell.data(), cell.data() + cell.size(), s);
    if (cell.empty() || ec != std::errc() || end != cell.data() + cell.size()) {
      fail("column '" + *columns_.seq + "': cannot read '" + std::string(cell) +
           "' as a sequence number (an unsigned integer)");
    }
    row.seq = s;
  } else {
    row.seq.reset();
  }
  return true;
}

}  // namespace ntk::replay
