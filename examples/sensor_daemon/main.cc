// ntkd — the ntkstream sensor-stream daemon.
//
// One online NTK regressor per stream key, fed over TCP and UDP by any protobuf client
// (proto/ntk/v1), answering every observation with a prediction. This program wires the
// streaming server (stream/server.h) to what a service needs around it: a config file,
// signals, snapshots that survive crashes, metrics, logs and systemd readiness.
// Run `ntkd --help` for the command line; examples/sensor_daemon/ntkd.service is a unit.
#include <google/protobuf/stubs/logging.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>

#include "daemon_config.h"
#include "http_server.h"
#include "log.h"
#include "metrics.h"
#include "ntk/core/build_info.h"
#include "ntk/stream/server.h"
#include "sd_notify.h"
#include "snapshot_file.h"

namespace {

namespace asio = boost::asio;
namespace v1 = ntk::v1;
using ntk::daemon::Level;
using ntk::daemon::log;

constexpr const char* kVersion = NTK_VERSION;
constexpr std::uint32_t kDefaultSnapshotIntervalSeconds = 300;

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::uint64_t unix_nanos() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

ntk::daemon::DaemonStatus with_process(ntk::daemon::DaemonStatus s) {
  s.process = ntk::daemon::read_process_stats();
  return s;
}

// What /metrics and /readyz report about the daemon itself; written by the control thread
// and the snapshot writer, read by the HTTP thread.
class Status {
 public:
  template <typename F>
  void update(F&& f) {
    std::lock_guard lock(mutex_);
    f(status_);
  }
  ntk::daemon::DaemonStatus get() const {
    std::lock_guard lock(mutex_);
    ntk::daemon::DaemonStatus s = status_;
    s.now_unix_seconds = unix_seconds();
    return s;
  }
  void set_phase(std::string phase, bool ready) {
    std::lock_guard lock(mutex_);
    phase_ = std::move(phase);
    status_.ready = ready;
  }
  std::pair<bool, std::string> readiness() const {
    std::lock_guard lock(mutex_);
    return {status_.ready, phase_};
  }

 private:
  mutable std::mutex mutex_;
  ntk::daemon::DaemonStatus status_;
  std::string phase_ = "starting";
};

// Writes snapshots of the server's models into the store and keeps the status current.
class Snapshotter {
 public:
  Snapshotter(ntk::daemon::SnapshotStore& store, const v1::ServerConfig& config, Status& status)
      : store_(store), config_(config), status_(status) {}

  std::string write(const ntk::stream::ModelSnapshot& models, const char* reason) {
    const auto start = std::chrono::steady_clock::now();
    v1::SnapshotHeader header;
    header.set_created_unix_nano(unix_nanos());
    header.set_writer(std::string("ntkd ") + kVersion);
    *header.mutable_config() = config_;
    for (const auto& p : models.configured_prefixes) *header.add_configured_prefixes() = p;
    for (const auto& k : models.pending_keys) *header.add_pending_keys() = k;
    try {
      const auto path = store_.write(header, models.keys);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::error_code ec;
      const auto bytes = std::filesystem::file_size(path, ec);
      status_.update([&](ntk::daemon::DaemonStatus& s) {
        s.last_snapshot_unix_seconds = unix_seconds();
        ++s.snapshots_written;
        s.last_snapshot_duration_seconds = seconds;
        s.last_snapshot_keys = models.keys.size();
        s.last_snapshot_bytes = ec ? 0 : bytes;
      });
      log(Level::kInfo, "snapshot written",
          {{"reason", reason},
           {"path", path.string()},
           {"keys", std::to_string(models.keys.size())},
           {"bytes", std::to_string(ec ? 0 : bytes)},
           {"seconds", ntk::daemon::prom_number(seconds)}});
      return path.string();
    } catch (const std::exception& e) {
      status_.update([](ntk::daemon::DaemonStatus& s) { ++s.snapshot_failures; });
      log(Level::kError, "snapshot failed", {{"reason", reason}, {"error", e.what()}});
      throw;
    }
  }

 private:
  ntk::daemon::SnapshotStore& store_;
  const v1::ServerConfig& config_;
  Status& status_;
};

// True when `path` is a regular file whose whole content is `text`.
bool file_holds(const std::string& path, const std::string& text) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::string content(text.size() + 1, '\0');
  in.read(content.data(), static_cast<std::streamsize>(content.size()));
  content.resize(static_cast<std::size_t>(in.gcount()));
  return content == text;
}

// "tcp=HOST:PORT" lines (then udp=, metrics=) for scripts that asked for port 0.
std::string port_file_text(const v1::ServerConfig& config, const ntk::stream::Server& server,
                           const ntk::daemon::HttpServer* http) {
  auto line = [](const char* kind, const std::string& address, std::uint16_t port) {
    std::string host = ntk::daemon::parse_host_port(address).host;
    if (host.find(':') != std::string::npos) host = "[" + host + "]";
    return std::string(kind) + "=" + host + ":" + std::to_string(port) + "\n";
  };
  std::string text;
  const auto options = ntk::stream::options_from_config(config);
  for (std::size_t i = 0; i < options.tcp_listen.size(); ++i) {
    text += line("tcp", options.tcp_listen[i], server.port(i));
  }
  for (std::size_t i = 0; i < options.udp_listen.size(); ++i) {
    text += line("udp", options.udp_listen[i], server.udp_port(i));
  }
  if (http != nullptr) text += line("metrics", config.metrics_listen(), http->port());
  return text;
}

// True when the settings that only a restart applies are the same in both configs.
bool restart_only_equal(const v1::ServerConfig& a, const v1::ServerConfig& b) {
  v1::ServerConfig x = a, y = b;
  for (v1::ServerConfig* c : {&x, &y}) {
    c->clear_defaults();
    c->clear_overrides();
  }
  return x.SerializeAsString() == y.SerializeAsString();
}

void notify(const char* state) {
  try {
    ntk::daemon::sd_notify(state);
  } catch (const std::exception& e) {
    log(Level::kWarning, "sd_notify failed", {{"state", state}, {"error", e.what()}});
  }
}

// Protobuf's own diagnostics become log lines too. Malformed requests trigger them (e.g.
// invalid UTF-8 in a string field: one line per request, besides its counted Error), so
// at most 20 lines per 10 s, and then a count of those dropped.
void protobuf_log(google::protobuf::LogLevel level, const char* file, int line,
                  const std::string& message) {
  static ntk::daemon::LogRateLimit limit(20, std::chrono::seconds(10));
  std::uint64_t dropped = 0;
  const bool allowed = limit.allow(ntk::daemon::LogRateLimit::Clock::now(), &dropped);
  if (dropped > 0) {
    log(Level::kWarning, "protobuf diagnostics suppressed (rate limit)",
        {{"lines", std::to_string(dropped)}});
  }
  if (!allowed) return;
  log(level >= google::protobuf::LOGLEVEL_ERROR ? Level::kError : Level::kWarning, "protobuf",
      {{"file", file}, {"line", std::to_string(line)}, {"detail", message}});
}

int run(const ntk::daemon::DaemonOptions& options) {
  // The effective configuration: file, then flags. Anything wrong is a usage error (2).
  v1::ServerConfig config = ntk::daemon::resolve_config(options);
  const std::uint32_t interval = config.has_snapshot_interval_seconds()
                                     ? config.snapshot_interval_seconds()
                                     : kDefaultSnapshotIntervalSeconds;

  // Signals first, so that a SIGTERM during a long restore is a drain, not a kill.
  asio::io_context control;
  asio::signal_set signals(control, SIGINT, SIGTERM, SIGHUP);
  std::signal(SIGPIPE, SIG_IGN);

  const ntk::CoreBuild core = ntk::core_build();
  Status status;
  status.update([&](ntk::daemon::DaemonStatus& s) {
    s.version = kVersion;
    s.core_target = std::string(core.target);
    s.core_simd = std::string(core.simd);
    s.start_time_unix_seconds = unix_seconds();
  });
  // The snapshot directory is locked for this process before anything is restored.
  std::optional<ntk::daemon::SnapshotStore> store;
  std::optional<Snapshotter> snapshotter;
  if (!config.snapshot_dir().empty()) {
    status.update([](ntk::daemon::DaemonStatus& s) { s.snapshots_enabled = true; });
    store.emplace(config.snapshot_dir());
    snapshotter.emplace(*store, config, status);
  }
  // An existing port file is left alone until ours replaces it atomically, once we
  // listen: it may be a running instance's (a second start exits on the snapshot lock or
  // on bind, before that). A stale one from a crashed run stays readable meanwhile: wait
  // for READY=1 or /readyz rather than for the file.

  // The stream server, not started yet: its models may still come from a snapshot.
  ntk::stream::ServerOptions server_options = ntk::stream::options_from_config(config);
  // Clients decide how many lines the server logs (a connection flood, timeouts), so at
  // most 50 per 10 s below error, and then a count of those dropped.
  server_options.log = [](ntk::stream::LogLevel level, std::string_view message) {
    static ntk::daemon::LogRateLimit limit(50, std::chrono::seconds(10));
    const Level l = level == ntk::stream::LogLevel::kDebug     ? Level::kDebug
                    : level == ntk::stream::LogLevel::kInfo    ? Level::kInfo
                    : level == ntk::stream::LogLevel::kWarning ? Level::kWarning
                                                               : Level::kError;
    if (l != Level::kError && !ntk::daemon::enabled(l)) return;
    if (l != Level::kError) {
      std::uint64_t dropped = 0;
      const bool allowed = limit.allow(ntk::daemon::LogRateLimit::Clock::now(), &dropped);
      if (dropped > 0) {
        log(Level::kWarning, "server log lines suppressed (rate limit)",
            {{"component", "server"}, {"lines", std::to_string(dropped)}});
      }
      if (!allowed) return;
    }
    log(l, message, {{"component", "server"}});
  };
  if (snapshotter) {
    server_options.snapshot_writer = [&](const ntk::stream::ModelSnapshot& models) {
      return snapshotter->write(models, "request");
    };
  }
  const std::size_t max_model_bytes = server_options.max_model_bytes;
  ntk::stream::Server server(server_options);

  // Metrics and health come up first: /livez answers while a large snapshot loads, and
  // /readyz says why the daemon is not ready yet.
  std::optional<ntk::daemon::HttpServer> http;
  v1::Control::GetStats all_keys;
  all_keys.set_key_prefix("");  // every key, aggregated by render_metrics
  if (!config.metrics_listen().empty()) {
    http.emplace(config.metrics_listen(), [&](std::string_view path) -> ntk::daemon::HttpReply {
      if (path == "/livez") return {200, "text/plain; charset=utf-8", "ok\n"};
      if (path == "/readyz") {
        const auto [ready, phase] = status.readiness();
        if (ready) return {200, "text/plain; charset=utf-8", "ready\n"};
        return {503, "text/plain; charset=utf-8", "not ready: " + phase + "\n"};
      }
      if (path == "/metrics") {
        // Never waits: while a snapshot loads or the server drains, the endpoint's one
        // thread must stay free for /livez and /readyz, and partial sums over the keys
        // would make counters go down.
        const std::optional<v1::Stats> stats = server.try_stats(all_keys);
        if (!stats) {
          const auto [ready, phase] = status.readiness();
          return {503, "text/plain; charset=utf-8",
                  "metrics unavailable while the server is busy (" +
                      (ready ? std::string("starting or stopping") : phase) + "); retry\n"};
        }
        return {200, "text/plain; version=0.0.4; charset=utf-8",
                ntk::daemon::render_metrics(*stats, with_process(status.get()))};
      }
      return {404, "text/plain; charset=utf-8", "not found (try /metrics, /livez, /readyz)\n"};
    });
    http->start();
    log(Level::kInfo, "metrics listening", {{"address", http->bound_address()}});
  }

  // Restore the newest snapshot that is intact and imports completely; refused ones are
  // reported, set aside (never pruned) and the next older one is tried. Snapshots refused
  // at an earlier start are tried first. Never half a snapshot: import is atomic.
  if (store) {
    status.set_phase("restoring snapshot", false);
    const auto result = store->load_latest([&](const ntk::daemon::SnapshotContents& c) {
      ntk::stream::ModelSnapshot models;
      models.configured_prefixes.assign(c.header.configured_prefixes().begin(),
                                        c.header.configured_prefixes().end());
      models.keys = c.keys;
      models.pending_keys.assign(c.header.pending_keys().begin(), c.header.pending_keys().end());
      server.import_models(models);
    });
    for (const auto& refusal : result.refused) {
      log(Level::kError, "snapshot refused",
          {{"path", refusal.path.string()},
           {"reason", refusal.reason},
           {"kept_as", refusal.kept_as.string()}});
    }
    if (result.snapshot) {
      const auto& c = result.snapshot->contents;
      status.update([&](ntk::daemon::DaemonStatus& s) {
        s.restored_keys = c.keys.size();
        s.last_snapshot_unix_seconds = static_cast<double>(c.header.created_unix_nano()) * 1e-9;
      });
      log(Level::kInfo, "snapshot restored",
          {{"path", result.snapshot->path.string()},
           {"keys", std::to_string(c.keys.size())},
           {"writer", c.header.writer()}});
      if (const auto& from = result.snapshot->set_aside_as) {
        log(Level::kWarning,
            "restored a snapshot refused at an earlier start; the snapshots written since "
            "are older generations now",
            {{"from", from->string()}, {"path", result.snapshot->path.string()}});
      }
    } else if (!result.refused.empty()) {
      log(Level::kError, "no usable snapshot: starting with no keys",
          {{"dir", config.snapshot_dir()}, {"refused", std::to_string(result.refused.size())}});
    } else {
      log(Level::kInfo, "no snapshot yet: starting with no keys", {{"dir", config.snapshot_dir()}});
    }
  }

  // Listen. A bind failure ends the program here (exit 1) with the address in the log.
  server.start();
  const std::string ports = port_file_text(config, server, http ? &*http : nullptr);
  if (options.port_file) ntk::daemon::write_file_atomically(*options.port_file, ports);
  status.set_phase("ready", true);
  {
    std::string where = ports;
    for (auto& ch : where) ch = ch == '\n' ? ' ' : ch;
    if (!where.empty()) where.pop_back();
    // snapshot_interval_s: seconds between periodic snapshots (0: at shutdown and on
    // request only; off: no snapshot directory).
    log(Level::kInfo, "ready",
        {{"version", kVersion},
         {"core", std::string(core.target)},
         {"simd", std::string(core.simd)},
         {"listening", where},
         {"snapshot_interval_s", snapshotter ? std::to_string(interval) : std::string("off")},
         {"max_model_bytes", std::to_string(max_model_bytes)}});
  }
  notify("READY=1\nSTATUS=listening");

  // Periodic snapshots on the control thread (the server keeps serving meanwhile).
  asio::steady_timer timer(control);
  std::function<void()> arm = [&] {
    if (!snapshotter || interval == 0) return;
    timer.expires_after(std::chrono::seconds(interval));
    timer.async_wait([&](const boost::system::error_code& ec) {
      if (ec) return;
      try {
        snapshotter->write(server.export_models(), "periodic");
      } catch (const std::exception&) {
        // Logged and counted by the snapshotter; the next period tries again.
      }
      arm();
    });
  };
  arm();

  // Signals: SIGHUP reloads key configs; SIGTERM/SIGINT end the loop.
  std::function<void()> wait_signal = [&] {
    signals.async_wait([&](const boost::system::error_code& ec, int signo) {
      if (ec) return;
      if (signo == SIGHUP) {
        if (!options.config_path) {
          log(Level::kWarning, "SIGHUP: no --config file to reload");
        } else {
          // systemd's reload protocol: RELOADING=1 with the time, READY=1 when done, the
          // outcome in STATUS (what `systemctl status` shows).
          timespec now{};
          ::clock_gettime(CLOCK_MONOTONIC, &now);
          const long long usec = static_cast<long long>(now.tv_sec) * 1000000 + now.tv_nsec / 1000;
          notify(("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec) +
                  "\nSTATUS=reloading the config")
                     .c_str());
          try {
            const v1::ServerConfig fresh = ntk::daemon::resolve_config(options);
            server.set_key_configs(fresh.defaults(),
                                   {fresh.overrides().begin(), fresh.overrides().end()});
            status.update([](ntk::daemon::DaemonStatus& s) { ++s.reloads_ok; });
            if (!restart_only_equal(config, fresh)) {
              log(Level::kWarning,
                  "config reload: listen addresses, threads, limits, metrics and snapshot "
                  "settings take effect at the next start");
            }
            log(Level::kInfo, "config reloaded: key defaults and overrides apply to new keys",
                {{"file", *options.config_path},
                 {"overrides", std::to_string(fresh.overrides_size())}});
            notify("READY=1\nSTATUS=listening; config reloaded");
          } catch (const std::exception& e) {
            status.update([](ntk::daemon::DaemonStatus& s) { ++s.reloads_failed; });
            log(Level::kError, "config reload failed: keeping the running config",
                {{"error", e.what()}});
            std::string why = e.what();
            for (char& ch : why) ch = ch == '\n' ? ' ' : ch;  // one line
            notify(("READY=1\nSTATUS=listening; config reload failed: " + why).c_str());
          }
        }
        wait_signal();
        return;
      }
      log(Level::kInfo, "draining", {{"signal", signo == SIGTERM ? "SIGTERM" : "SIGINT"}});
      timer.cancel();
      control.stop();
    });
  };
  wait_signal();
  control.run();

  // Drain: stop accepting, answer what was read, then save everything.
  status.set_phase("draining", false);
  notify("STOPPING=1\nSTATUS=draining");
  server.stop();
  int exit_code = 0;
  if (snapshotter) {
    try {
      snapshotter->write(server.export_models(), "shutdown");
    } catch (const std::exception&) {
      exit_code = 1;  // logged by the snapshotter
    }
  }
  if (http) http->stop();
  // Ours only: another instance may have written it since (it is then its ports).
  if (options.port_file && file_holds(*options.port_file, ports)) {
    std::error_code ignored;
    std::filesystem::remove(*options.port_file, ignored);
  }
  log(Level::kInfo, "stopped", {{"exit_code", std::to_string(exit_code)}});
  return exit_code;
}

}  // namespace

int main(int argc, char** argv) {
  ntk::daemon::DaemonOptions options;
  try {
    options = ntk::daemon::parse_daemon_args(argc, argv);
  } catch (const ntk::daemon::ConfigError& e) {
    std::fprintf(stderr, "ntkd: %s\n", e.what());
    return 2;
  }
  if (options.help) {
    std::cout << ntk::daemon::daemon_usage();
    return 0;
  }
  if (options.version) {
    const ntk::CoreBuild core = ntk::core_build();
    std::cout << "ntkd " << kVersion << " (ntk::core: " << core.target << ", " << core.simd
              << ")\n";
    return 0;
  }
  ntk::daemon::set_min_level(options.log_level);
  google::protobuf::SetLogHandler(&protobuf_log);
  try {
    return run(options);
  } catch (const ntk::daemon::ConfigError& e) {
    std::fprintf(stderr, "ntkd: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    log(Level::kError, "fatal", {{"error", e.what()}});
    return 1;
  }
}
