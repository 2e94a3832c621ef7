// Internal to ntk::stream: the socket-free part of the server — per-key predictors grouped
// in shards, the configuration table new keys are resolved against, and the counters.
//
// A Shard is single-threaded: the server calls it only on its shard's strand. The
// ConfigTable is consulted when a key is created or configured (not per observation) and
// carries its own mutex. Counters are relaxed atomics.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ntk/core/series.h"
#include "ntk/stream/convert.h"
#include "ntk/stream/frame_codec.h"
#include "ntk/v1/request.pb.h"
#include "ntk/v1/response.pb.h"
#include "ntk/v1/server.pb.h"
#include "ntk/v1/snapshot.pb.h"

namespace ntk::stream::detail {

// Request kinds counted by Counters::requests: the payload a decoded request carries.
enum class RequestKind : std::size_t {
  kNoPayload,
  kObservation,
  kSensorReading,
  kMarketTick,
  kControl,
};
inline constexpr std::size_t kRequestKinds = 5;
RequestKind request_kind(const v1::Request& request);

// Update latencies of one shard (ServerCounters.update_latency): fixed buckets, counted in
// nanoseconds. One writer, its shard's strand, which updates with a relaxed load and store
// (no read-modify-write, no lock); readers on any thread load relaxed and sum the shards.
struct LatencyHistogram {
  // Bucket upper bounds: 1 2 5 10 20 50 100 200 500 us, 1 2 5 10 ms; then +Inf.
  static constexpr std::array<std::uint64_t, 13> kUpperBoundsNanos = {
      1'000,   2'000,   5'000,     10'000,    20'000,    50'000,    100'000,
      200'000, 500'000, 1'000'000, 2'000'000, 5'000'000, 10'000'000};
  static constexpr std::size_t kBuckets = kUpperBoundsNanos.size() + 1;

  // requires: called only by the owning shard (single writer).
  void record(std::uint64_t nanos);

  std::array<std::atomic<std::uint64_t>, kBuckets> counts{};  // per bucket
  std::atomic<std::uint64_t> sum_nanos{0};
};

// Server-wide counters (relaxed atomics: totals, not synchronization).
struct Counters {
  static constexpr int kErrorCodes = v1::ErrorCode_ARRAYSIZE;

  std::uint64_t start_time_unix_nano = 0;
  std::atomic<std::uint64_t> connections_accepted{0};
  std::atomic<std::uint64_t> connections_open{0};
  std::atomic<std::uint64_t> connections_refused{0};
  std::atomic<std::uint64_t> idle_timeouts{0};
  std::atomic<std::uint64_t> read_timeouts{0};
  std::atomic<std::uint64_t> write_timeouts{0};
  std::atomic<std::uint64_t> tcp_frames{0};
  std::atomic<std::uint64_t> udp_datagrams{0};
  // Decoded requests by RequestKind; ServerCounters.requests is their sum.
  std::array<std::atomic<std::uint64_t>, kRequestKinds> requests{};
  std::atomic<std::uint64_t> responses{0};
  std::atomic<std::uint64_t> bytes_received{0};
  std::atomic<std::uint64_t> bytes_sent{0};
  std::atomic<std::uint64_t> keys{0};
  // Live keys plus the keys not created yet that have a Control.Configure config waiting:
  // what max_keys bounds.
  std::atomic<std::uint64_t> key_slots{0};
  // Heap the live keys' predictors hold (SeriesPredictor::memory_bytes, as each shard last
  // saw it): what max_model_bytes bounds.
  std::atomic<std::uint64_t> model_bytes{0};
  std::uint64_t max_model_bytes = 0;  // set before the shards run
  std::array<std::atomic<std::uint64_t>, kErrorCodes> errors{};

  // Adds a key's counters to the retired sums (ServerCounters.retired_*): the key is
  // being dropped, reconfigured or replaced. Not the hot path (a mutex).
  void retire(const v1::ModelCounters& model, const v1::SeriesCounters& series);
  // Adds a key's counters to the restored sums (ServerCounters.restored_*): the key was
  // imported from a snapshot with these counts.
  void restore(const v1::ModelCounters& model, const v1::SeriesCounters& series);

  void count_error(v1::ErrorCode code);
  void count_requests(RequestKind kind, std::uint64_t n = 1) {
    requests[static_cast<std::size_t>(kind)].fetch_add(n, std::memory_order_relaxed);
  }
  // A new shard's histogram, owned here (stable address). Called while no thread reads the
  // counters (the server adds its shards when it is constructed).
  LatencyHistogram& add_shard_latency() { return shard_latency.emplace_back(); }
  // Sums the shards' histograms into update_latency.
  v1::ServerCounters to_proto() const;

 private:
  std::deque<LatencyHistogram> shard_latency;
  mutable std::mutex retired_mutex;
  v1::ModelCounters retired_model;
  v1::SeriesCounters retired_series;
  v1::ModelCounters restored_model;  // what imported keys carried in
  v1::SeriesCounters restored_series;
};

// Distinct key prefixes Control.Configure may set (a new key is matched against each).
inline constexpr std::size_t kMaxConfiguredPrefixes = 1024;

// "512 B", "1.5 KiB", "6.0 GiB".
std::string format_bytes(std::uint64_t bytes);

// Why a key with these settings could never be created under max_model_bytes (its
// predictor at its most, SeriesPredictor::memory_bytes, in scalar-stream mode), or
// nullopt when it could.
std::optional<std::string> exceeds_model_memory(const KeySettings& settings,
                                                std::uint64_t max_model_bytes);

// ServerOptions::defaults / overrides and the Control.Configure prefixes: what a new key
// is configured with. Thread-safe.
class ConfigTable {
 public:
  // Throws std::invalid_argument when a config does not resolve, or a key with it would
  // take more than max_model_bytes alone (exceeds_model_memory; also for later configs).
  ConfigTable(const v1::KeyConfig& defaults, const std::vector<v1::PrefixOverride>& overrides,
              std::uint64_t max_model_bytes);

  // defaults, then the longest matching override, then every matching configured prefix
  // (shorter prefixes first).
  v1::KeyConfig base_for(std::string_view key) const;

  // Control.Configure with a key_prefix: checks that base_for(prefix) merged with config
  // resolves (BAD_CONFIG otherwise), then merges config into the prefix's entry, or
  // appends one for a prefix not configured before.
  std::optional<RequestError> configure_prefix(const std::string& prefix,
                                               const v1::KeyConfig& config);

  // Throws std::invalid_argument (nothing changes) when a config does not resolve.
  void set(const v1::KeyConfig& defaults, const std::vector<v1::PrefixOverride>& overrides);

  // One entry per prefix, in the order the prefixes were first configured.
  std::vector<v1::PrefixOverride> configured() const;
  // As if each were configured in turn (entries of one prefix are merged).
  // Throws std::invalid_argument (nothing changes) when a prefix is empty or its config
  // does not resolve.
  void set_configured(const std::vector<v1::PrefixOverride>& configured);

 private:
  v1::KeyConfig base_locked(std::string_view key) const;
  // The configured entry of exactly this prefix, or nullptr.
  v1::PrefixOverride* find_configured_locked(const std::string& prefix);
  // Merges config into `entry` (the prefix's, from find_configured_locked), or appends a
  // new entry when it is nullptr.
  void add_configured_locked(v1::PrefixOverride* entry, const std::string& prefix,
                             const v1::KeyConfig& config);

  const std::uint64_t max_model_bytes_;
  mutable std::mutex mutex_;
  v1::KeyConfig defaults_;
  std::vector<v1::PrefixOverride> overrides_;
  std::vector<v1::PrefixOverride> configured_;
};

// FNV-1a of the key, reduced to [0, shards).
std::size_t shard_of(std::string_view key, std::size_t shards);

// "<sensor_id>/<i>": the stream of channel i of a multi-channel SensorReading.
std::string channel_key(std::string_view sensor_id, int channel);

// Fills response's seq, tag and key from the request (key: the request's key, sensor_id,
// symbol or Control target).
void echo_request(const v1::Request& request, v1::Response& response);
// Makes response an Error (keeps seq, tag, key).
void set_error(v1::Response& response, v1::ErrorCode code, std::string message,
               bool connection_closed = false);

// One shard of the key space: the keys that hash to it, each with its predictor.
//
// CONVENTION
//   entries_ holds the live keys; counters_.keys counts the live keys of every shard.
//   key_configs_ holds the Control.Configure configs of single keys (live or not yet
//   created), merged in the order given. counters_.key_slots counts the keys of every
//   shard that are live or have a config (<= max_keys_): a config waiting for its key
//   takes one of the max_keys_ places, so that configs of keys never created stay bounded.
//   Entry::bytes is the entry's predictor's memory_bytes() when its race last changed
//   (Entry::racing); counters_.model_bytes sums them over every shard (<= max_model_bytes
//   for the keys created here; restored keys count whatever they hold).
// THREAD SAFETY: none; one strand.
class Shard {
 public:
  Shard(const ConfigTable& configs, Counters& counters, std::size_t max_keys);

  // A validated Request whose payload is an observation, a single-value sensor reading, a
  // market tick, or a Control that targets one key (configure key, stats key, drop_key).
  // ensures: response holds the whole answer (echo_request + result); an Error is counted.
  void handle(const v1::Request& request, v1::Response& response);

  // Channel `channel` of a validated multi-channel SensorReading.
  // ensures: result holds the channel's key and its Prediction or Error (counted).
  void handle_channel(const v1::Request& request, int channel, v1::ChannelResult& result);

  // Appends the KeyStats of the live keys that start with prefix (unsorted).
  void collect_stats(std::string_view prefix, std::vector<v1::KeyStats>& out) const;
  // Appends a KeySnapshot of every live key (unsorted), with its key config (configured)
  // if it has one.
  // Also the keys configured before their first value: key and configured only (no
  // series state).
  void export_keys(std::vector<v1::KeySnapshot>& out) const;

  // One live key.
  struct Entry {
    v1::KeySnapshot::Kind kind = v1::KeySnapshot::KIND_UNSPECIFIED;
    v1::KeyConfig config;  // resolved
    KeySettings settings;
    SeriesPredictor predictor;
    std::optional<std::uint64_t> last_seq;  // as the predictor's (not exposed by it)
    std::uint64_t last_time = 0;
    std::optional<double> last_price;  // TICK_VALUE_LOG_RETURN: previous price
    std::uint64_t bytes = 0;           // counted in Counters::model_bytes
    int racing = 0;                    // predictor.racing() when bytes was taken
  };

  // A restored key, converted and validated (import_models); its `configured`, if set,
  // must resolve merged onto its config.
  // Throws std::invalid_argument naming the field.
  static Entry make_entry(const v1::KeySnapshot& snapshot);
  // Replaces every key by `entries` and every key config by `key_configs` (the restored
  // keys' `configured`; the caller has checked max_keys).
  void replace_all(std::vector<std::pair<std::string, Entry>> entries,
                   std::unordered_map<std::string, v1::KeyConfig> key_configs);
  std::size_t size() const { return entries_.size(); }

 private:
  // The key's entry, created for a request of `kind` (feature_dim for observations), or
  // nullptr with `error` set (KIND_MISMATCH, WRONG_DIMENSION, BAD_CONFIG, TOO_MANY_KEYS).
  Entry* entry_for(const std::string& key, v1::KeySnapshot::Kind kind, int feature_dim,
                   v1::ErrorCode& code, std::string& message);
  // Removes the live key, if any (its config stays), retiring its counters.
  void erase(const std::string& key);
  // Adds the entry's model and series counters to the server's retired sums.
  void retire(const std::string& key, const Entry& entry);
  // Takes one of the max_keys_ places for a new key or key config; false if none is left.
  bool reserve_slot();
  void release_slot();
  // Counts the memory of a new key's predictor (at its most), or returns false (nothing
  // counted) when it would exceed max_model_bytes.
  bool reserve_bytes(std::uint64_t bytes);
  // Brings entry.bytes up to date after an observation (a race dropped a candidate).
  void settle_bytes(Entry& entry);
  // The number of keys that are live or have a config.
  std::size_t slots_used() const;
  // Adds the time since `start` to the shard's update-latency histogram.
  void record_latency(std::chrono::steady_clock::time_point start);

  // Feeds one value to a scalar stream and writes the Prediction or Error into the
  // result's parts. Returns the error code (UNSPECIFIED when a prediction was written).
  v1::ErrorCode observe_scalar(Entry& entry, const std::string& key,
                               const std::optional<std::uint64_t>& seq, std::uint64_t time,
                               double value, v1::Prediction* prediction, std::string& message);

  void handle_observation(const v1::Request& request, v1::Response& response);
  void handle_sensor(const v1::Request& request, v1::Response& response);
  void handle_tick(const v1::Request& request, v1::Response& response);
  void handle_control(const v1::Request& request, v1::Response& response);
  void fill_key_stats(const std::string& key, const Entry& entry, v1::KeyStats* out) const;

  const ConfigTable& configs_;
  Counters& counters_;
  LatencyHistogram& latency_;  // owned by counters_; written only here
  std::size_t max_keys_;
  std::unordered_map<std::string, Entry> entries_;
  std::unordered_map<std::string, v1::KeyConfig> key_configs_;
};

}  // namespace ntk::stream::detail
