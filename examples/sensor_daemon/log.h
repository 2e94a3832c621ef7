// Structured log lines (logfmt) on stderr: one line per event, fields key=value, values
// quoted when they need it, e.g.
//   ts=2026-12-01T04:20:00.123456Z level=info msg="listening" tcp=127.0.0.1:7420
// The first three fields are always ts (UTC, microseconds), level and msg.
//
// THREAD SAFETY: log() may be called from any thread; each line is written with one
// write(2), so lines never interleave.
#pragma once

#include <initializer_list>
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

// Lines below the minimum level are dropped (default: info).
void set_min_level(Level level);
void log(Level level, std::string_view msg, std::initializer_list<Field> fields = {});

}  // namespace ntk::daemon
