// ntkd's command line and config file: values read, flags overriding the file, and every
// error naming its flag or FILE:LINE:COLUMN.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "daemon_config.h"
#include "log.h"
#include "temp_dir.h"

namespace {

using ntk::daemon::ConfigError;
using ntk::daemon::DaemonOptions;
using ntk::test::TempDir;

DaemonOptions args(std::vector<std::string> a) {
  a.insert(a.begin(), "ntkd");
  std::vector<const char*> argv;
  for (const auto& s : a) argv.push_back(s.c_str());
  return ntk::daemon::parse_daemon_args(static_cast<int>(argv.size()), argv.data());
}

std::string args_error(std::vector<std::string> a) {
  try {
    args(std::move(a));
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

std::string write_file(const TempDir& dir, const std::string& name, const std::string& text) {
  const auto p = dir / name;
  std::ofstream(p) << text;
  return p.string();
}

std::string load_error(const std::string& path) {
  try {
    ntk::daemon::load_config_file(path);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("config file: every field read") {
  TempDir dir;
  const auto path = write_file(dir, "ntkd.textproto", R"(# a comment
tcp_listen: "127.0.0.1:0"
tcp_listen: "[::1]:7420"
udp_listen: "127.0.0.1:0"
threads: 3
defaults { series { lags: 16 model { budget: 32 kernel { spec: "rbf:lengthscale=0.5" } } } }
overrides { key_prefix: "fx/" config { tick_value: TICK_VALUE_LOG_RETURN } }
snapshot_dir: "/var/lib/ntkd"
snapshot_interval_seconds: 60
metrics_listen: "127.0.0.1:9464"
max_keys: 5000
max_model_bytes: 8589934592
)");
  const auto c = ntk::daemon::load_config_file(path);
  REQUIRE(c.tcp_listen_size() == 2);
  CHECK(c.tcp_listen(1) == "[::1]:7420");
  CHECK(c.udp_listen(0) == "127.0.0.1:0");
  CHECK(c.threads() == 3u);
  CHECK(c.defaults().series().lags() == 16);
  CHECK(c.defaults().series().model().budget() == 32);
  CHECK(c.defaults().series().model().kernel().spec() == "rbf:lengthscale=0.5");
  REQUIRE(c.overrides_size() == 1);
  CHECK(c.overrides(0).config().tick_value() == ntk::v1::TICK_VALUE_LOG_RETURN);
  CHECK(c.snapshot_dir() == "/var/lib/ntkd");
  CHECK(c.snapshot_interval_seconds() == 60u);
  CHECK(c.metrics_listen() == "127.0.0.1:9464");
  CHECK(c.max_keys() == 5000u);
  CHECK(c.max_model_bytes() == 8589934592u);
}

TEST_CASE("flags override the file") {
  TempDir dir;
  const auto path = write_file(dir, "ntkd.textproto",
                               "tcp_listen: \"127.0.0.1:7000\"\nudp_listen: \"127.0.0.1:7001\"\n"
                               "metrics_listen: \"127.0.0.1:7002\"\nsnapshot_dir: \"/a\"\n"
                               "threads: 4\nsnapshot_interval_seconds: 10\n");
  auto o = args({"--config", path, "--listen", "127.0.0.1:0", "--listen=[::1]:0", "--udp",
                 "0.0.0.0:0", "--metrics", "", "--snapshot-dir", "/b", "--threads", "1",
                 "--snapshot-interval=0", "--port-file", "/tmp/p", "--log-level", "debug"});
  const auto c = ntk::daemon::resolve_config(o);
  REQUIRE(c.tcp_listen_size() == 2);
  CHECK(c.tcp_listen(0) == "127.0.0.1:0");
  CHECK(c.tcp_listen(1) == "[::1]:0");
  REQUIRE(c.udp_listen_size() == 1);
  CHECK(c.udp_listen(0) == "0.0.0.0:0");
  CHECK(c.metrics_listen().empty());
  CHECK(c.snapshot_dir() == "/b");
  CHECK(c.threads() == 1u);
  CHECK(c.has_snapshot_interval_seconds());
  CHECK(c.snapshot_interval_seconds() == 0u);
  CHECK(*o.port_file == "/tmp/p");
  CHECK(o.log_level == ntk::daemon::Level::kDebug);

  // Without flags the file's values stand; without a file, the defaults (unset fields).
  const auto f = ntk::daemon::resolve_config(args({"--config", path}));
  CHECK(f.tcp_listen(0) == "127.0.0.1:7000");
  CHECK(f.metrics_listen() == "127.0.0.1:7002");
  const auto none = ntk::daemon::resolve_config(args({}));
  CHECK(none.tcp_listen_size() == 0);
  CHECK(!none.has_threads());
  CHECK(args({"--help"}).help);
  CHECK(args({"--version"}).version);
}

TEST_CASE("command-line errors name the flag") {
  CHECK(args_error({"--bogus"}) == "--bogus: unknown option (see --help)");
  CHECK(args_error({"--listen"}) == "--listen: missing value");
  CHECK(args_error({"--listen", "localhost"}) ==
        "--listen: expected HOST:PORT or [IPv6]:PORT, got \"localhost\"");
  CHECK(args_error({"--udp", "127.0.0.1:70000"}) ==
        "--udp: expected HOST:PORT with a port in [0, 65535], got \"127.0.0.1:70000\"");
  CHECK(args_error({"--threads", "0"}) == "--threads: must be >= 1, got 0");
  CHECK(args_error({"--threads", "-1"}) ==
        "--threads: expected a non-negative integer, got \"-1\"");
  CHECK(args_error({"--snapshot-interval", "5s"}) ==
        "--snapshot-interval: expected a non-negative integer, got \"5s\"");
  CHECK(args_error({"--log-level", "loud"}) ==
        "--log-level: unknown log level \"loud\" (debug, info, warning, error)");
  CHECK(args_error({"--port-file="}) == "--port-file: empty path");
  CHECK(args_error({"--port-file", "/nonexistent/dir/ports"}) ==
        "--port-file: the directory /nonexistent/dir does not exist");
  // ntkd deletes and replaces its port file: never a device (as root, /dev/null).
  CHECK(args_error({"--port-file", "/dev/null"}) ==
        "--port-file: /dev/null is not a regular file; ntkd replaces and removes this file, so "
        "it needs a path of its own");
}

TEST_CASE("config errors: FILE:LINE:COLUMN and the reason") {
  TempDir dir;
  // Syntax: a string where a number belongs (line 2, at the value).
  auto p = write_file(dir, "a.textproto", "tcp_listen: \"127.0.0.1:0\"\nthreads: \"two\"\n");
  CHECK(load_error(p) == p + ":2:10: Expected integer, got: \"two\"");
  // An unknown field.
  p = write_file(dir, "b.textproto", "\n\ntreads: 2\n");
  CHECK(load_error(p) ==
        p + ":3:7: Message type \"ntk.v1.ServerConfig\" has no field named \"treads\".");
  // An unknown enum value.
  p = write_file(dir, "c.textproto",
                 "overrides {\n  key_prefix: \"x\"\n  config { tick_value: TICK_VALUE_NOPE }\n}\n");
  CHECK(load_error(p) == p + ":3:40: Unknown enumeration value of \"TICK_VALUE_NOPE\" for field "
                             "\"tick_value\".");
  // Unbalanced braces: the error is at the end of the input.
  p = write_file(dir, "d.textproto", "defaults { series { lags: 3 }\n");
  CHECK(load_error(p).rfind(p + ":2:1: ", 0) == 0);

  // Values refused after parsing point at the offending field.
  p = write_file(dir, "e.textproto",
                 "threads: 2\ndefaults {\n  series {\n    warmup: 10\n    lags: 0\n  }\n}\n");
  CHECK(load_error(p) == p + ":5:5: defaults: series: lags must be in [1, 4096], got 0");
  p = write_file(dir, "f.textproto",
                 "defaults { series { lags: 4 } }\n"
                 "overrides {\n  key_prefix: \"fx/\"\n  config {\n    series {\n"
                 "      model { budget: 0 }\n    }\n  }\n}\n");
  CHECK(load_error(p) == p + ":6:15: overrides[0] (key_prefix \"fx/\"): model: budget must be in "
                             "[1, 16384], got 0");
  p = write_file(dir, "f2.textproto", "defaults { series { model { budget: 2147483647 } } }\n");
  CHECK(load_error(p) ==
        p + ":1:29: defaults: model: budget must be in [1, 16384], got 2147483647");
  p = write_file(dir, "g.textproto",
                 "defaults {\n  series { model { kernel { spec: \"ntk:depth=-1\" } } }\n}\n");
  CHECK(load_error(p) == p + ":2:29: defaults: kernel spec: depth must be >= 0, got -1");
  p = write_file(dir, "h.textproto", "tcp_listen: \"127.0.0.1:0\"\ntcp_listen: \"nohost\"\n");
  CHECK(load_error(p) == p + ":2:1: tcp_listen: expected HOST:PORT or [IPv6]:PORT, got \"nohost\"");
  p = write_file(dir, "i.textproto", "metrics_listen: \"127.0.0.1:99999\"\n");
  CHECK(load_error(p) == p + ":1:1: metrics_listen: expected HOST:PORT with a port in [0, 65535], "
                             "got \"127.0.0.1:99999\"");
  p = write_file(dir, "j.textproto", "\noverrides { config { } }\n");
  CHECK(load_error(p) == p + ":2:1: overrides[0]: key_prefix must not be empty");
  p = write_file(dir, "j2.textproto",
                 "overrides { key_prefix: \"a/\" }\noverrides { key_prefix: \"b/\" }\n"
                 "overrides {\n  key_prefix: \"a/\"\n}\n");
  CHECK(load_error(p) == p + ":3:1: overrides[2]: key_prefix \"a/\" repeats overrides[0]'s: "
                             "give each prefix once");
  p = write_file(dir, "k.textproto", "threads: 0\n");
  CHECK(load_error(p) == p + ":1:1: threads must be >= 1, got 0");
  // A repeated field: the position of its first entry (protobuf's lookup without an index
  // used to abort the load, exit 1 instead of 2).
  p = write_file(dir, "l.textproto",
                 "defaults {\n  series {\n    noise_candidates: [0.1, -1]\n  }\n}\n");
  CHECK(load_error(p) ==
        p + ":3:5: defaults: series: noise_candidates must be finite and > 0, got -1");
  p = write_file(dir, "m.textproto",
                 "defaults {\n  series {\n    noise_candidates: 0.1\n    noise_candidates: 0.1\n"
                 "  }\n}\n");
  CHECK(load_error(p) ==
        p + ":3:5: defaults: series: noise_candidates lists 0.10000000000000001 twice");

  CHECK(load_error((dir / "missing.textproto").string()) ==
        (dir / "missing.textproto").string() +
            ": cannot open the config file: No such file or directory");

  // Text that is not UTF-8 is refused with its position: the config goes into every
  // snapshot header, which would not parse back (the snapshot refused, its keys lost).
  p = write_file(dir, "n.textproto",
                 "threads: 2\noverrides {\n  key_prefix: \"caf\xE9/\"\n  config { }\n}\n");
  CHECK(load_error(p) == p + ":3:3: overrides[0].key_prefix: not valid UTF-8 (ntkd keeps its "
                             "config in every snapshot, where text must be UTF-8)");
  // Strict UTF-8: an overlong form and a surrogate are refused, a 4-byte character is not.
  for (const std::string bad : {"\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xE2\x82"}) {
    p = write_file(dir, "p.textproto", "overrides {\n  key_prefix: \"" + bad + "\"\n}\n");
    CHECK(load_error(p).find(":2:3: overrides[0].key_prefix: not valid UTF-8") !=
          std::string::npos);
  }
  p = write_file(dir, "q.textproto", "overrides {\n  key_prefix: \"\xF0\x9F\x98\x80/\"\n}\n");
  CHECK(load_error(p).empty());
  // From the command line, where file names in another encoding come from.
  std::string message;
  try {
    ntk::daemon::resolve_config(args({"--snapshot-dir", "/var/lib/caf\xE9"}));
  } catch (const ConfigError& e) {
    message = e.what();
  }
  CHECK(message ==
        "flags: snapshot_dir: not valid UTF-8 (ntkd keeps its config in every "
        "snapshot, where text must be UTF-8)");
  // A byte order mark is skipped; positions on the first line are as an editor shows them.
  p = write_file(dir, "o.textproto", "\xEF\xBB\xBFthreads: 0\n");
  CHECK(load_error(p) == p + ":1:1: threads must be >= 1, got 0");
}

TEST_CASE("config errors: a directory or a file that cannot be read, named") {
  TempDir dir;
  // A directory opens as a stream and fails at the first read (an exception from the
  // stream buffer): a ConfigError naming it, as for any other bad config file.
  const std::string d = dir.path().string();
  CHECK(load_error(d) == d + ": not a regular file (a directory), cannot be the config file");
  CHECK(load_error(d + "/") ==
        d + "/: not a regular file (a directory), cannot be the config file");
  std::filesystem::create_directory_symlink(dir.path(), dir / "link");
  CHECK(load_error((dir / "link").string()) ==
        (dir / "link").string() + ": not a regular file (a directory), cannot be the config file");
  CHECK(load_error("/dev/null") ==
        "/dev/null: not a regular file (a special file), cannot be the config file");
  // A regular file whose read fails (EIO: address 0 is not mapped).
  if (std::filesystem::is_regular_file("/proc/self/mem")) {
    const std::string e = load_error("/proc/self/mem");
    INFO(e);
    CHECK(e.rfind("/proc/self/mem: cannot read the config file", 0) == 0);
  }
}

TEST_CASE("host:port parsing") {
  auto hp = ntk::daemon::parse_host_port("127.0.0.1:7420");
  CHECK(hp.host == "127.0.0.1");
  CHECK(hp.port == 7420);
  hp = ntk::daemon::parse_host_port("[::1]:0");
  CHECK(hp.host == "::1");
  CHECK(hp.port == 0);
  hp = ntk::daemon::parse_host_port("localhost:65535");
  CHECK(hp.port == 65535);
  for (const char* bad : {"", ":80", "host:", "::1:80", "[::1]80", "h:8x", "h:-1", "[::1]"}) {
    CHECK_THROWS_AS(ntk::daemon::parse_host_port(bad), std::invalid_argument);
  }
}

TEST_CASE("logfmt lines") {
  using ntk::daemon::format_log_line;
  using ntk::daemon::Level;
  CHECK(format_log_line("2026-01-02T03:04:05.000006Z", Level::kInfo, "ready",
                        {{"tcp", "127.0.0.1:7420"}, {"keys", "3"}}) ==
        "ts=2026-01-02T03:04:05.000006Z level=info msg=ready tcp=127.0.0.1:7420 keys=3");
  CHECK(format_log_line("T", Level::kError, "snapshot refused",
                        {{"reason", "checksum \"bad\"\nx=1"}, {"empty", ""}}) ==
        "ts=T level=error msg=\"snapshot refused\" reason=\"checksum \\\"bad\\\"\\nx=1\" "
        "empty=\"\"");
  CHECK(ntk::daemon::logfmt_value("a\\b") == "\"a\\\\b\"");
  CHECK(ntk::daemon::logfmt_value(std::string("\x01", 1)) == "\"\\x01\"");
  CHECK(ntk::daemon::parse_level("warn") == Level::kWarning);
}

TEST_CASE("the shipped example config loads") {
  const auto c =
      ntk::daemon::load_config_file(NTK_SOURCE_DIR "/examples/sensor_daemon/ntkd.textproto");
  CHECK(c.tcp_listen(0) == "127.0.0.1:7420");
  CHECK(c.udp_listen(0) == "127.0.0.1:7421");
  CHECK(c.defaults().series().model().budget() == 64);
  REQUIRE(c.overrides_size() == 1);
  CHECK(c.overrides(0).key_prefix() == "fx/");
  CHECK(c.snapshot_interval_seconds() == 300u);
  CHECK(c.metrics_listen() == "127.0.0.1:9464");
}

TEST_CASE("LogRateLimit: a burst per window, then a count of the lines dropped") {
  using ntk::daemon::LogRateLimit;
  using namespace std::chrono_literals;
  LogRateLimit limit(3, 10s);
  const LogRateLimit::Clock::time_point t0{};
  std::uint64_t dropped = 99;
  for (int i = 0; i < 3; ++i) {
    CHECK(limit.allow(t0 + 1s + i * 1ms, &dropped));
    CHECK(dropped == 0);
  }
  for (int i = 0; i < 5; ++i) CHECK_FALSE(limit.allow(t0 + 2s, &dropped));
  CHECK_FALSE(limit.allow(t0 + 10s, &dropped));  // the window is [1 s, 11 s)
  CHECK(dropped == 0);
  CHECK(limit.allow(t0 + 11s, &dropped));  // a new window reports the 6 dropped once
  CHECK(dropped == 6);
  CHECK(limit.allow(t0 + 12s, &dropped));
  CHECK(dropped == 0);
}

TEST_CASE("config errors: limits, adjacent repeated prefixes, the last port") {
  TempDir dir;
  // Limits are checked when the file is read (exit 2), not when the server starts (1).
  auto p = write_file(dir, "limits.textproto", "max_keys: 0\n");
  CHECK(load_error(p) == p + ": max_keys must be in [1, 4294967295], got 0");
  p = write_file(dir, "frame.textproto", "max_frame_bytes: 63\n");
  CHECK(load_error(p).rfind(p + ": max_frame_bytes must be in [64, ", 0) == 0);
  p = write_file(dir, "memory.textproto", "max_model_bytes: 1048575\n");
  CHECK(load_error(p).rfind(p + ": max_model_bytes must be in [1048576, ", 0) == 0);
  // Defaults whose key alone would hold more than max_model_bytes: 4 racing models of
  // budget 4096 are about 1.5 GiB.
  p = write_file(dir, "budget.textproto",
                 "max_model_bytes: 1073741824\ndefaults { series { model { budget: 4096 } } }\n");
  CHECK(load_error(p) == p + ": defaults: a key's models would hold 1.5 GiB (budget 4096, 4 "
                             "noise candidates racing), more than the server's max_model_bytes "
                             "= 1.0 GiB");
  // A prefix given twice in a row.
  p = write_file(dir, "twice.textproto",
                 "overrides { key_prefix: \"a/\" }\noverrides { key_prefix: \"a/\" }\n");
  CHECK(load_error(p) == p + ":2:1: overrides[1]: key_prefix \"a/\" repeats overrides[0]'s: "
                             "give each prefix once");
  // 65535 is the last port; 65536 is not one.
  CHECK(ntk::daemon::parse_host_port("h:65535").port == 65535);
  CHECK_THROWS_AS(ntk::daemon::parse_host_port("h:65536"), std::invalid_argument);
  CHECK(args_error({"--listen", "127.0.0.1:65536"}) ==
        "--listen: expected HOST:PORT with a port in [0, 65535], got \"127.0.0.1:65536\"");
}

TEST_CASE("--port-file: a symlink is accepted (the link is what ntkd replaces)") {
  TempDir dir;
  const auto link = dir / "ports";
  std::filesystem::create_symlink("/dev/null", link);
  CHECK(args_error({"--port-file", link.string()}).empty());
  CHECK(*args({"--port-file", link.string()}).port_file == link.string());
}

TEST_CASE("logfmt: '=', DEL and carriage return are quoted; levels parse and filter") {
  using ntk::daemon::Level;
  using ntk::daemon::logfmt_value;
  CHECK(logfmt_value("plain-value_1.2") == "plain-value_1.2");
  CHECK(logfmt_value("a=b") == "\"a=b\"");
  CHECK(logfmt_value("a\rb") == "\"a\\rb\"");
  CHECK(logfmt_value("a\tb") == "\"a\\tb\"");
  CHECK(logfmt_value("a\x7f") == "\"a\\x7f\"");
  CHECK(logfmt_value("") == "\"\"");
  CHECK(ntk::daemon::parse_level("debug") == Level::kDebug);
  CHECK(ntk::daemon::parse_level("info") == Level::kInfo);
  CHECK(ntk::daemon::parse_level("warning") == Level::kWarning);
  CHECK(ntk::daemon::parse_level("error") == Level::kError);
  CHECK_THROWS_AS(ntk::daemon::parse_level("ERROR"), std::invalid_argument);
  for (const Level l : {Level::kDebug, Level::kInfo, Level::kWarning, Level::kError}) {
    CHECK(ntk::daemon::parse_level(ntk::daemon::to_string(l)) == l);
  }
  // The minimum level itself is written; the one below it is not.
  ntk::daemon::set_min_level(Level::kWarning);
  CHECK(ntk::daemon::enabled(Level::kError));
  CHECK(ntk::daemon::enabled(Level::kWarning));
  CHECK_FALSE(ntk::daemon::enabled(Level::kInfo));
  ntk::daemon::set_min_level(Level::kDebug);
  CHECK(ntk::daemon::enabled(Level::kDebug));
  ntk::daemon::set_min_level(Level::kInfo);  // the default again
  CHECK_FALSE(ntk::daemon::enabled(Level::kDebug));
  CHECK(ntk::daemon::enabled(Level::kInfo));
}
