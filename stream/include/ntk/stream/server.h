// Server: the ntk.v1 streaming server — TCP sessions (length-delimited Requests), UDP ingest
// (one Request per datagram), and the per-key online predictors, on Boost.Asio.
//
// WHAT THIS OBJECT REPRESENTS
//   A set of stream keys, each with its own ntk::SeriesPredictor (core/series), fed by
//   clients over TCP and UDP. How requests become streams, what every Response means and
//   the error codes are specified in proto/ntk/v1/request.proto and response.proto; this
//   header says how the server runs them.
//
//   Threads and shards. One asio::io_context runs on ServerOptions::threads threads. Keys
//   hash to `shards` shards; a shard is an actor on its own strand, and a key's predictor
//   is only ever touched on its shard's strand: no mutex on the hot path. A session (one
//   TCP connection) reads frames on its own strand, decodes and validates them, posts them
//   to the shards of their keys in batches, and writes the answers back in request order:
//
//       socket --read--> FrameDecoder --decode/validate--> slot i (per-connection order)
//                                                              |  post (batched per shard)
//                                                              v
//                        shard strand: SeriesPredictor::observe -> serialized Response
//                                                              |  post back
//       socket <--write-- in-order bytes of slots 0..k <-------+
//
//   Answers. Every request that was read gets exactly one Response carrying its seq and
//   tag: a Prediction (a multi-channel SensorReading: one ChannelResults with one entry
//   per channel), an Error with a stable code (counted per code), a Stats or an Ack. A
//   well-framed message that fails to parse or validate gets an Error and the connection
//   goes on; a bad length prefix or a frame above max_frame_bytes gets a final Error
//   (connection_closed = true) and closes that connection only. The server never throws
//   out of a completion handler.
//
//   Backpressure. Each connection has one write in flight and at most
//   max_queued_responses requests that are in flight or answered but not yet written;
//   when that bound is reached the session stops reading from its socket and resumes
//   when writes complete. A client that never reads holds at most that many responses
//   plus the socket buffers.
//
//   Timeouts. A connection that sends nothing for idle_timeout is closed; a frame that
//   has started must be complete within read_timeout (slowloris). Each is off when 0.
//   A connection whose peer does not read is closed after write_timeout with a write
//   pending. Each close is counted (ServerCounters.*_timeouts); no Error is sent.
//
//   Connections. At most max_connections TCP connections are open at once; one more is
//   closed as soon as it is accepted and counted (connections_refused).
//
//   Shutdown (stop()): close the listeners, stop reading, answer what was read (frames
//   already received but not yet dispatched are answered ERROR_CODE_SHUTTING_DOWN),
//   write the answers (at most drain_timeout), close the connections, join the threads.
//
// LIFECYCLE: construct (validates the options) -> import_models() (optional) -> start()
//   -> ... -> stop() (or the destructor). A Server is started at most once.
// THREAD SAFETY: every public method may be called from any thread except the server's
//   own threads (the blocking ones would deadlock there: stats(), export_models(),
//   configure(), set_key_configs() wait for the shards). The callbacks in ServerOptions
//   are called on server threads.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ntk/stream/frame_codec.h"
#include "ntk/v1/config.pb.h"
#include "ntk/v1/request.pb.h"
#include "ntk/v1/response.pb.h"
#include "ntk/v1/server.pb.h"
#include "ntk/v1/snapshot.pb.h"

namespace ntk::stream {

// Every learned thing the server holds: what a snapshot file stores between its header
// and trailer (proto/ntk/v1/snapshot.proto), and what import_models() restores.
struct ModelSnapshot {
  // Control.Configure prefixes in effect, in the order they were first given: one per
  // prefix, its Configures merged in order (on import, repeated prefixes are merged).
  std::vector<v1::PrefixOverride> configured_prefixes;
  // One per key, sorted by key; each with its resolved config, its own Control.Configure
  // config (if any), kind, last seq and state.
  std::vector<v1::KeySnapshot> keys;
  // Keys configured (Control.Configure of a key) before their first value, sorted by key:
  // only `key` and `configured` set. They count towards max_keys, as when configured.
  std::vector<v1::KeySnapshot> pending_keys;
};

// Writes a snapshot for Control.Snapshot and returns the path written (reported in the
// Ack). Throws (any std::exception) on failure: the client gets ERROR_CODE_SNAPSHOT_FAILED
// with what(). Called on a server thread, never twice at the same time.
using SnapshotWriter = std::function<std::string(const ModelSnapshot&)>;

enum class LogLevel { kDebug, kInfo, kWarning, kError };
std::string_view to_string(LogLevel);
// Receives the server's log lines (socket errors, closed connections, bind results).
// Called from any server thread, possibly concurrently: must be thread-safe.
using LogSink = std::function<void(LogLevel, std::string_view)>;

// The smallest ServerOptions::max_model_bytes (1 MiB).
inline constexpr std::size_t kMinModelBytes = std::size_t{1} << 20;
// The memory this process may use: the machine's physical memory (sysconf), or its
// cgroup v2 limit (memory.max) where that is lower.
std::size_t memory_available();
// A quarter of memory_available(), at least kMinModelBytes: a snapshot briefly holds about
// twice what the models hold again (its messages, then their encoding), so the models,
// their snapshot and everything else fit.
std::size_t default_max_model_bytes();

struct ServerOptions {
  // TCP listen addresses "host:port" (IPv4 or IPv6 literal, "localhost", or a name the
  // resolver knows; "[::1]:0" for IPv6 with a port). Port 0 picks a free port, reported by
  // port(). At least one.
  std::vector<std::string> tcp_listen = {"127.0.0.1:0"};
  // UDP ingest addresses "host:port" (one Request per datagram). Empty: no UDP.
  std::vector<std::string> udp_listen;
  // Answer each UDP datagram with its Response datagram to the sender (off: ingest only;
  // errors are still counted).
  bool udp_replies = false;

  // io_context threads; 0: std::thread::hardware_concurrency() (at least 1).
  unsigned threads = 0;
  // Key shards (strands); 0: 8 per thread.
  unsigned shards = 0;

  std::size_t max_frame_bytes = kDefaultMaxFrameBytes;  // <= kMaxFrameBytesLimit
  std::size_t max_keys = 100000;                        // live stream keys, >= 1
  std::size_t max_queued_responses = 1024;              // per connection, >= 1
  std::size_t max_connections = 1024;                   // TCP connections open, >= 1
  std::size_t read_buffer_bytes = 64 << 10;             // per connection read size, >= 512
  // Heap the live keys' models may hold in all (ServerConfig.max_model_bytes, Counters
  // model_bytes): a new key that would take it higher is ERROR_CODE_MEMORY_LIMIT, a config
  // whose key alone would is BAD_CONFIG. >= kMinModelBytes.
  std::size_t max_model_bytes = default_max_model_bytes();

  std::chrono::milliseconds idle_timeout{0};       // no bytes for this long: close; 0: never
  std::chrono::milliseconds read_timeout{30000};   // a started frame must complete; 0: never
  std::chrono::milliseconds write_timeout{30000};  // a pending write; 0: never
  std::chrono::milliseconds drain_timeout{5000};   // stop(): answers' last chance

  // Configuration of a new key: `defaults`, then the override with the longest
  // key_prefix that matches, then Control.Configure prefixes and keys (config.proto).
  v1::KeyConfig defaults;
  std::vector<v1::PrefixOverride> overrides;

  // Control.Snapshot; empty: Control.Snapshot is answered ERROR_CODE_SNAPSHOT_FAILED.
  SnapshotWriter snapshot_writer;
  // Empty: no logging.
  LogSink log;

  // Throws std::invalid_argument naming the first offending field and value (addresses
  // that do not parse, limits out of range, a defaults/override config that does not
  // validate).
  void validate() const;
};

// ServerOptions from the daemon's configuration (server.proto): tcp_listen, udp_listen,
// udp_replies, threads, defaults, overrides, max_frame_bytes, max_keys,
// max_queued_responses, max_connections, max_model_bytes and the idle/read/write/drain
// timeouts; the fields
// ServerConfig does not have keep their defaults, and so do unset ones (tcp_listen empty:
// "127.0.0.1:7420"; threads unset: the number of cores). snapshot_dir, the snapshot
// interval and metrics are the daemon's business. Throws std::invalid_argument like
// validate().
ServerOptions options_from_config(const v1::ServerConfig& config);

class Server {
 public:
  // requires: options.validate() passes (std::invalid_argument otherwise).
  explicit Server(ServerOptions options);
  // stop() if running.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds every listener and starts the threads; returns once the server accepts.
  // requires: not started before (std::logic_error).
  // ensures: port() / udp_port() report the bound ports. On a bind failure nothing is
  //   left running and std::system_error is thrown naming the address.
  void start();

  // Drained shutdown (see above); blocks until every server thread has returned.
  // Idempotent; a no-op before start().
  void stop();

  bool running() const;

  // The bound port of tcp_listen[i] / udp_listen[i] (the chosen one for port 0).
  // requires: started, i in range (std::logic_error / std::out_of_range).
  std::uint16_t port(std::size_t i = 0) const;
  std::uint16_t udp_port(std::size_t i = 0) const;

  // Server counters (non-blocking, from atomics; `keys` is the live key count). requests
  // is the sum of the per-kind counts; update_latency sums the shards' histograms, each
  // written only on its shard's strand and read here with relaxed loads.
  v1::ServerCounters counters() const;

  // What Control.GetStats answers: the counters, and the KeyStats of the keys in scope
  // (sorted by key). An unknown key yields no KeyStats (on the wire: UNKNOWN_KEY).
  // Blocks until every shard concerned has answered. Works before start() and after stop().
  v1::Stats stats(const v1::Control::GetStats& scope = {}) const;
  // stats(), or nothing at once while start(), stop() (a drain) or import_models() holds
  // the server: for callers that must not wait, such as a metrics endpoint.
  std::optional<v1::Stats> try_stats(const v1::Control::GetStats& scope = {}) const;

  // Every key's state and the Control.Configure prefixes, consistent per key (each shard
  // is exported on its strand; keys of different shards may be exported at slightly
  // different times while requests keep flowing). Blocks until done.
  ModelSnapshot export_models() const;

  // Restores a snapshot: replaces every key (with its key config) and the configured
  // prefixes by those of `snapshot`. All or nothing: every KeySnapshot is checked and
  // converted first.
  // requires: not started (std::logic_error). Throws std::invalid_argument naming the
  //   offending key and field for a snapshot that does not convert or validate, or that
  //   has more keys than max_keys; the server is then unchanged.
  void import_models(const ModelSnapshot& snapshot);

  // What Control.Configure does, from the process (same semantics and errors); blocks.
  // Returns the Ack's keys_affected, or the RequestError the client would get.
  struct ConfigureResult {
    std::uint64_t keys_affected = 0;
    std::optional<RequestError> error;
  };
  ConfigureResult configure(const v1::Control::Configure& configure);

  // Replaces ServerOptions::defaults and ::overrides (a config reload). Applies to keys
  // created afterwards; existing keys keep their predictors and configs. Control.Configure
  // prefixes stay in effect. Throws std::invalid_argument (and changes nothing) when a
  // config does not validate.
  void set_key_configs(const v1::KeyConfig& defaults,
                       const std::vector<v1::PrefixOverride>& overrides);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ntk::stream
