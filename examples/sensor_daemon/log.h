// Structured log lines (logfmt) on stderr: one line per event, fields key=value, values
// quoted when they need it, e.g.
//   ts=2026-12-01T04:20:00.123456Z level=info msg="listening" tcp=127.0.0.1:7420
// The first three fields are always ts (UTC, microseconds), level and msg.
//
// THREAD SAFETY: log() may be called from any thread; each line is written with one
// write(2), so lines never interleave.
#pragma once

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

namespace ntk::daemon {

enum class Level { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };
std::string_view to_string(Level level);
// "debug", "info", "warning" (or "warn"), "error"; std::invalid_argument otherwise.
Level parse_level(std::string_view text);

using Field = std::pair<std::string_view, std::string>;

// The logfmt line for one event (without the trailing newline). Exposed for tests.
std::string format_log_line(std::string_view ts, Level level, std::string_view msg,
                            std::initializer_list<Field> fields);
// A value as logfmt writes it: bare when it has no space, quote, '=' or control
// character and is not empty; otherwise double-quoted with \" \\ \n \t \r escaped.
std::string logfmt_value(std::string_view value);

// At most `burst` lines per `window` for one source of lines that clients can trigger
// (e.g. protobuf's diagnostics on malformed requests), so that no client can flood the
// log. allow() says whether a line may be written now; when a new window opens after
// lines were dropped, it also returns (in *suppressed) how many, for one summary line.
// Thread-safe.
class LogRateLimit {
 public:
  using Clock = std::chrono::steady_clock;
  LogRateLimit(int burst, Clock::duration window) : burst_(burst), window_(window) {}
  bool allow(Clock::time_point now, std::uint64_t* suppressed);

 private:
  std::mutex mutex_;
  const int burst_;
  const Clock::duration window_;
  Clock::time_point window_start_{};
  int used_ = 0;
  std::uint64_t dropped_ = 0;
};

// Lines below the minimum level are dropped (default: info).
void set_min_level(Level level);
// Whether a line of this level would be written.
bool enabled(Level level);
void log(Level level, std::string_view msg, std::initializer_list<Field> fields = {});

}  // namespace ntk::daemon
