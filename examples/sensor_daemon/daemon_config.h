// ntkd's configuration: a ServerConfig (proto/ntk/v1/server.proto) read from protobuf
// text format, with command-line flags on top.
//
//   ntkd [--config F.textproto] [--listen HOST:PORT]... [--udp HOST:PORT]...
//        [--metrics HOST:PORT] [--snapshot-dir DIR] [--snapshot-interval SECONDS]
//        [--threads N] [--port-file FILE] [--log-level LEVEL] [--help] [--version]
//
// Every error names where it comes from: "FILE:LINE:COLUMN: reason" for the config file
// (1-based; the line of the offending field when a value is refused after parsing), or
// "--flag: reason". ntkd exits with status 2 on any of them.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "log.h"
#include "ntk/v1/server.pb.h"

namespace ntk::daemon {

// A bad command line or config file; what() is the complete one-line message.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What the flags say; unset ones leave the file's value (or the default).
struct FlagOverrides {
  std::vector<std::string> listen;  // replaces tcp_listen when non-empty
  std::vector<std::string> udp;     // replaces udp_listen when non-empty
  std::optional<std::string> metrics;
  std::optional<std::string> snapshot_dir;
  std::optional<std::uint32_t> snapshot_interval_seconds;
  std::optional<std::uint32_t> threads;
};

struct DaemonOptions {
  bool help = false;
  bool version = false;
  std::optional<std::string> config_path;
  FlagOverrides flags;
  std::optional<std::string> port_file;
  Level log_level = Level::kInfo;
};

// Parses argv[1..argc) (flags take their value as the next argument or after '=').
// Throws ConfigError("--flag: reason").
DaemonOptions parse_daemon_args(int argc, const char* const* argv);

// The --help text.
std::string daemon_usage();

// Reads and checks a config file: text-format syntax, then every value (addresses,
// limits, the key configs of `defaults` and each override resolved and validated as the
// server will). Throws ConfigError("PATH:LINE:COLUMN: reason") (or "PATH: reason" when
// the file is not a regular file, cannot be opened or cannot be read).
v1::ServerConfig load_config_file(const std::string& path);

// The effective config: the file's (or an empty one) with the flags applied, checked.
// Throws ConfigError naming the flag or file position.
v1::ServerConfig resolve_config(const DaemonOptions& options);

// Checks the fields the server does not: snapshot and metrics settings, and everything
// ntk::stream::options_from_config() checks. Throws ConfigError(prefix + reason).
void check_config(const v1::ServerConfig& config, const std::string& prefix);

// "host:port" or "[v6]:port" split; port in [0, 65535]. std::invalid_argument otherwise.
struct HostPort {
  std::string host;
  std::uint16_t port = 0;
};
HostPort parse_host_port(const std::string& text);

}  // namespace ntk::daemon
