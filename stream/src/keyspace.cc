// The socket-free key space of the server: shards of per-key predictors, the config table.
#include "keyspace.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <limits>
#include <stdexcept>
#include <utility>

namespace ntk::stream::detail {

namespace {

const char* kind_name(v1::KeySnapshot::Kind kind) {
  switch (kind) {
    case v1::KeySnapshot::KIND_OBSERVATION:
      return "observation";
    case v1::KeySnapshot::KIND_SENSOR_READING:
      return "sensor_reading";
    case v1::KeySnapshot::KIND_MARKET_TICK:
      return "market_tick";
    default:
      return "unspecified";
  }
}

// Not "'" + std::string(key) + "'": GCC 12 flags that with a false -Wrestrict at -O2
// -march=native (GCC bug 105651).
std::string quoted(std::string_view key) {
  return std::string(1, '\'').append(key).append(1, '\'');
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

v1::Prediction::Status to_proto(OutcomeStatus status) {
  switch (status) {
    case OutcomeStatus::kScored:
      return v1::Prediction::STATUS_SCORED;
    case OutcomeStatus::kWarmingUp:
      return v1::Prediction::STATUS_WARMING_UP;
    case OutcomeStatus::kMissing:
      return v1::Prediction::STATUS_MISSING;
    case OutcomeStatus::kUnlabelled:
      return v1::Prediction::STATUS_UNLABELLED;
    case OutcomeStatus::kDuplicate:
    case OutcomeStatus::kOutOfOrder:
      break;
  }
  return v1::Prediction::STATUS_UNSPECIFIED;
}

// The Prediction of one accepted value (not a dropped one).
void fill_prediction(const Outcome& o, const SeriesPredictor& predictor, std::uint64_t time,
                     v1::Prediction* p) {
  p->set_status(to_proto(o.status));
  p->set_time_unix_nano(time);
  if (o.status != OutcomeStatus::kMissing && std::isfinite(o.value)) p->set_value(o.value);
  if (o.has_prediction) {
    p->set_mean(o.mean);
    p->set_variance(o.sd * o.sd);
  }
  if (o.status == OutcomeStatus::kScored) p->set_z(o.z);
  p->set_anomaly(o.anomaly);
  p->set_excluded(o.excluded);
  p->set_learned(o.learned);
  if ((o.status == OutcomeStatus::kMissing || o.excluded) && std::isfinite(o.imputed)) {
    p->set_imputed(o.imputed);
  }
  p->set_gap(o.gap);
  p->set_dictionary_size(static_cast<std::uint32_t>(predictor.model().dictionary_size()));
  p->set_model_version(predictor.counters().updates);
}

// The number a tick's stream receives under `mode` (NaN: missing), and the price the
// next log return is taken against (MID_OR_LAST), if the tick has one.
double tick_value(const v1::MarketTick& t, v1::TickValue mode,
                  const std::optional<double>& last_price, std::optional<double>& price) {
  const bool mid_available = t.has_bid() && t.has_ask();
  const double mid = mid_available ? 0.5 * (t.bid() + t.ask()) : 0.0;
  if (mid_available) {
    price = mid;
  } else if (t.has_price()) {
    price = t.price();
  }
  constexpr double kMissing = std::numeric_limits<double>::quiet_NaN();
  switch (mode) {
    case v1::TICK_VALUE_LAST:
      return t.has_price() ? t.price() : kMissing;
    case v1::TICK_VALUE_MID:
      return mid_available ? mid : kMissing;
    case v1::TICK_VALUE_LOG_RETURN:
      if (price && last_price && *price > 0.0 && *last_price > 0.0) {
        return std::log(*price / *last_price);
      }
      return kMissing;
    case v1::TICK_VALUE_MID_OR_LAST:
    default:
      return price ? *price : kMissing;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Counters

RequestKind request_kind(const v1::Request& request) {
  switch (request.payload_case()) {
    case v1::Request::kObservation:
      return RequestKind::kObservation;
    case v1::Request::kSensorReading:
      return RequestKind::kSensorReading;
    case v1::Request::kMarketTick:
      return RequestKind::kMarketTick;
    case v1::Request::kControl:
      return RequestKind::kControl;
    case v1::Request::PAYLOAD_NOT_SET:
      break;
  }
  return RequestKind::kNoPayload;
}

void LatencyHistogram::record(std::uint64_t nanos) {
  constexpr auto r = std::memory_order_relaxed;
  const auto bound = std::lower_bound(kUpperBoundsNanos.begin(), kUpperBoundsNanos.end(), nanos);
  auto& bucket = counts[static_cast<std::size_t>(bound - kUpperBoundsNanos.begin())];
  bucket.store(bucket.load(r) + 1, r);
  sum_nanos.store(sum_nanos.load(r) + nanos, r);
}

void Counters::count_error(v1::ErrorCode code) {
  const int i = static_cast<int>(code);
  if (i >= 0 && i < kErrorCodes)
    errors[static_cast<std::size_t>(i)].fetch_add(1, std::memory_order_relaxed);
}

void Counters::retire(const v1::ModelCounters& model, const v1::SeriesCounters& series) {
  std::lock_guard lock(retired_mutex);
  add_counts(retired_model, model);
  add_counts(retired_series, series);
}

void Counters::restore(const v1::ModelCounters& model, const v1::SeriesCounters& series) {
  std::lock_guard lock(retired_mutex);
  add_counts(restored_model, model);
  add_counts(restored_series, series);
}

v1::ServerCounters Counters::to_proto() const {
  constexpr auto r = std::memory_order_relaxed;
  v1::ServerCounters c;
  c.set_start_time_unix_nano(start_time_unix_nano);
  c.set_connections_accepted(connections_accepted.load(r));
  c.set_connections_open(connections_open.load(r));
  c.set_connections_refused(connections_refused.load(r));
  c.set_idle_timeouts(idle_timeouts.load(r));
  c.set_read_timeouts(read_timeouts.load(r));
  c.set_write_timeouts(write_timeouts.load(r));
  c.set_tcp_frames(tcp_frames.load(r));
  c.set_udp_datagrams(udp_datagrams.load(r));
  const auto kind = [&](RequestKind k) { return requests[static_cast<std::size_t>(k)].load(r); };
  c.set_requests_no_payload(kind(RequestKind::kNoPayload));
  c.set_requests_observation(kind(RequestKind::kObservation));
  c.set_requests_sensor_reading(kind(RequestKind::kSensorReading));
  c.set_requests_market_tick(kind(RequestKind::kMarketTick));
  c.set_requests_control(kind(RequestKind::kControl));
  c.set_requests(c.requests_no_payload() + c.requests_observation() + c.requests_sensor_reading() +
                 c.requests_market_tick() + c.requests_control());
  c.set_responses(responses.load(r));
  c.set_bytes_received(bytes_received.load(r));
  c.set_bytes_sent(bytes_sent.load(r));
  c.set_keys(keys.load(r));
  c.set_model_bytes(model_bytes.load(r));
  c.set_max_model_bytes(max_model_bytes);
  {
    std::lock_guard lock(retired_mutex);
    *c.mutable_retired_model() = retired_model;
    *c.mutable_retired_series() = retired_series;
    *c.mutable_restored_model() = restored_model;
    *c.mutable_restored_series() = restored_series;
  }
  for (int i = 0; i < kErrorCodes; ++i) {
    const std::uint64_t n = errors[static_cast<std::size_t>(i)].load(r);
    if (n == 0) continue;
    v1::ErrorCount* e = c.add_errors();
    e->set_code(static_cast<v1::ErrorCode>(i));
    e->set_count(n);
  }
  // Per-bucket counts of the shards, summed; count derived from them so that it always
  // equals the buckets' total (a shard may be between its bucket and sum updates).
  std::array<std::uint64_t, LatencyHistogram::kBuckets> counts{};
  std::uint64_t sum_nanos = 0;
  for (const LatencyHistogram& h : shard_latency) {
    for (std::size_t b = 0; b < counts.size(); ++b) counts[b] += h.counts[b].load(r);
    sum_nanos += h.sum_nanos.load(r);
  }
  v1::LatencyHistogram* latency = c.mutable_update_latency();
  std::uint64_t total = 0;
  for (const std::uint64_t bound : LatencyHistogram::kUpperBoundsNanos) {
    latency->add_upper_bounds_seconds(static_cast<double>(bound) / 1e9);  // exact: 1e-06 ...
  }
  for (const std::uint64_t n : counts) {
    latency->add_counts(n);
    total += n;
  }
  latency->set_sum_seconds(static_cast<double>(sum_nanos) / 1e9);
  latency->set_count(total);
  return c;
}

// ---------------------------------------------------------------------------------------
// ConfigTable

std::string format_bytes(std::uint64_t bytes) {
  if (bytes < 1024) return std::to_string(bytes) + " B";
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(bytes) / 1024.0;
  std::size_t unit = 0;
  while (v >= 1024.0 && unit + 1 < std::size(kUnits)) {
    v /= 1024.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, "%.1f %s", v, kUnits[unit]);
  return text;
}

std::optional<std::string> exceeds_model_memory(const KeySettings& settings,
                                                std::uint64_t max_model_bytes) {
  const SeriesConfig& c = settings.series;
  const std::uint64_t need = SeriesPredictor::memory_bytes(c);
  if (need <= max_model_bytes) return std::nullopt;
  const std::size_t models = std::max<std::size_t>(1, c.noise_candidates.size());
  return "a key's models would hold " + format_bytes(need) + " (budget " +
         std::to_string(c.model.budget) + ", " + std::to_string(models) +
         (models == 1 ? " model" : " noise candidates racing") +
         "), more than the server's max_model_bytes = " + format_bytes(max_model_bytes);
}

namespace {

void check_resolves(const v1::KeyConfig& config, const std::string& what,
                    std::uint64_t max_model_bytes) {
  std::optional<std::string> too_big;
  try {
    too_big = exceeds_model_memory(resolve_key_config(config), max_model_bytes);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(what + ": " + e.what());
  }
  if (too_big) throw std::invalid_argument(what + ": " + *too_big);
}

void check_table(const v1::KeyConfig& defaults, const std::vector<v1::PrefixOverride>& overrides,
                 std::uint64_t max_model_bytes) {
  check_resolves(defaults, "defaults", max_model_bytes);
  for (std::size_t i = 0; i < overrides.size(); ++i) {
    const std::string what = "overrides[" + std::to_string(i) + "]";
    if (overrides[i].key_prefix().empty()) {
      throw std::invalid_argument(what + ".key_prefix is empty");
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (overrides[j].key_prefix() == overrides[i].key_prefix()) {
        throw std::invalid_argument(what + ".key_prefix " + quoted(overrides[i].key_prefix()) +
                                    " repeats overrides[" + std::to_string(j) +
                                    "]'s: give each prefix once");
      }
    }
    v1::KeyConfig merged = defaults;
    merge_key_config(merged, overrides[i].config());
    check_resolves(merged, what + " (key_prefix " + quoted(overrides[i].key_prefix()) + ")",
                   max_model_bytes);
  }
}

}  // namespace

ConfigTable::ConfigTable(const v1::KeyConfig& defaults,
                         const std::vector<v1::PrefixOverride>& overrides,
                         std::uint64_t max_model_bytes)
    : max_model_bytes_(max_model_bytes) {
  set(defaults, overrides);
}

v1::KeyConfig ConfigTable::base_locked(std::string_view key) const {
  v1::KeyConfig config = defaults_;
  const v1::PrefixOverride* best = nullptr;
  for (const v1::PrefixOverride& o : overrides_) {
    if (starts_with(key, o.key_prefix()) &&
        (best == nullptr || o.key_prefix().size() > best->key_prefix().size())) {
      best = &o;
    }
  }
  if (best != nullptr) merge_key_config(config, best->config());
  std::vector<const v1::PrefixOverride*> matching;
  for (const v1::PrefixOverride& o : configured_) {
    if (starts_with(key, o.key_prefix())) matching.push_back(&o);
  }
  std::stable_sort(matching.begin(), matching.end(), [](const auto* a, const auto* b) {
    return a->key_prefix().size() < b->key_prefix().size();
  });
  for (const v1::PrefixOverride* o : matching) merge_key_config(config, o->config());
  return config;
}

v1::KeyConfig ConfigTable::base_for(std::string_view key) const {
  std::lock_guard lock(mutex_);
  return base_locked(key);
}

std::optional<RequestError> ConfigTable::configure_prefix(const std::string& prefix,
                                                          const v1::KeyConfig& config) {
  std::lock_guard lock(mutex_);
  v1::PrefixOverride* entry = find_configured_locked(prefix);
  if (entry == nullptr && configured_.size() >= kMaxConfiguredPrefixes) {
    return RequestError{v1::ERROR_CODE_TOO_MANY_KEYS,
                        "control.configure.key_prefix " + quoted(prefix) + ": " +
                            std::to_string(kMaxConfiguredPrefixes) +
                            " prefixes are configured already (each new key is matched "
                            "against all of them); configure a shorter common prefix"};
  }
  v1::KeyConfig merged = base_locked(prefix);
  merge_key_config(merged, config);
  try {
    check_resolves(merged, "control.configure.config for key_prefix " + quoted(prefix),
                   max_model_bytes_);
  } catch (const std::invalid_argument& e) {
    return RequestError{v1::ERROR_CODE_BAD_CONFIG, e.what()};
  }
  add_configured_locked(entry, prefix, config);
  return std::nullopt;
}

v1::PrefixOverride* ConfigTable::find_configured_locked(const std::string& prefix) {
  for (v1::PrefixOverride& o : configured_) {
    if (o.key_prefix() == prefix) return &o;
  }
  return nullptr;
}

void ConfigTable::add_configured_locked(v1::PrefixOverride* entry, const std::string& prefix,
                                        const v1::KeyConfig& config) {
  // One entry per prefix: a prefix's Configures merged in the order given are what
  // applying them one after the other gives (equal-length prefixes that match one key are
  // the same prefix, so no other prefix applies between them).
  if (entry != nullptr) {
    merge_key_config(*entry->mutable_config(), config);
    return;
  }
  v1::PrefixOverride o;
  o.set_key_prefix(prefix);
  *o.mutable_config() = config;
  configured_.push_back(std::move(o));
}

void ConfigTable::set(const v1::KeyConfig& defaults,
                      const std::vector<v1::PrefixOverride>& overrides) {
  check_table(defaults, overrides, max_model_bytes_);
  std::lock_guard lock(mutex_);
  defaults_ = defaults;
  overrides_ = overrides;
}

std::vector<v1::PrefixOverride> ConfigTable::configured() const {
  std::lock_guard lock(mutex_);
  return configured_;
}

void ConfigTable::set_configured(const std::vector<v1::PrefixOverride>& configured) {
  std::lock_guard lock(mutex_);
  std::vector<v1::PrefixOverride> saved = std::move(configured_);
  configured_.clear();
  // Each one checked as configure_prefix() checked it when it was given.
  for (std::size_t i = 0; i < configured.size(); ++i) {
    const std::string what = "configured_prefixes[" + std::to_string(i) + "]";
    try {
      if (configured[i].key_prefix().empty()) {
        throw std::invalid_argument(what + ".key_prefix is empty");
      }
      v1::KeyConfig merged = base_locked(configured[i].key_prefix());
      merge_key_config(merged, configured[i].config());
      // Restored whatever its keys would hold (max_model_bytes may be lower than when it
      // was configured): refusing it would refuse the whole snapshot.
      check_resolves(merged, what + " (key_prefix " + quoted(configured[i].key_prefix()) + ")",
                     std::numeric_limits<std::uint64_t>::max());
    } catch (...) {
      configured_ = std::move(saved);
      throw;
    }
    add_configured_locked(find_configured_locked(configured[i].key_prefix()),
                          configured[i].key_prefix(), configured[i].config());
  }
}

// ---------------------------------------------------------------------------------------
// Helpers

std::size_t shard_of(std::string_view key, std::size_t shards) {
  std::uint64_t h = 14695981039346656037ull;
  for (const char c : key) {
    h ^= static_cast<std::uint8_t>(c);
    h *= 1099511628211ull;
  }
  h ^= h >> 32;
  return static_cast<std::size_t>(h % shards);
}

std::string channel_key(std::string_view sensor_id, int channel) {
  std::string key(sensor_id);
  key += '/';
  key += std::to_string(channel);
  return key;
}

void echo_request(const v1::Request& request, v1::Response& response) {
  if (request.has_seq()) response.set_seq(request.seq());
  response.set_tag(request.tag());
  switch (request.payload_case()) {
    case v1::Request::kObservation:
      response.set_key(request.observation().key());
      break;
    case v1::Request::kSensorReading:
      response.set_key(request.sensor_reading().sensor_id());
      break;
    case v1::Request::kMarketTick:
      response.set_key(request.market_tick().symbol());
      break;
    case v1::Request::kControl: {
      const v1::Control& c = request.control();
      if (c.has_configure()) {
        response.set_key(c.configure().has_key() ? c.configure().key()
                                                 : c.configure().key_prefix());
      } else if (c.has_stats()) {
        response.set_key(c.stats().has_key() ? c.stats().key() : c.stats().key_prefix());
      } else if (c.has_drop_key()) {
        response.set_key(c.drop_key().key());
      }
      break;
    }
    case v1::Request::PAYLOAD_NOT_SET:
      break;
  }
}

void set_error(v1::Response& response, v1::ErrorCode code, std::string message,
               bool connection_closed) {
  v1::Error* e = response.mutable_error();
  e->set_code(code);
  e->set_message(std::move(message));
  e->set_connection_closed(connection_closed);
}

// ---------------------------------------------------------------------------------------
// Shard

Shard::Shard(const ConfigTable& configs, Counters& counters, std::size_t max_keys)
    : configs_(configs),
      counters_(counters),
      latency_(counters.add_shard_latency()),
      max_keys_(max_keys) {}

Shard::Entry* Shard::entry_for(const std::string& key, v1::KeySnapshot::Kind kind, int feature_dim,
                               v1::ErrorCode& code, std::string& message) {
  const auto it = entries_.find(key);
  if (it != entries_.end()) {
    Entry& e = it->second;
    if (e.kind != kind) {
      code = v1::ERROR_CODE_KIND_MISMATCH;
      message = "key " + quoted(key) + " is fed by " + kind_name(e.kind) + " requests, not " +
                kind_name(kind);
      return nullptr;
    }
    if (kind == v1::KeySnapshot::KIND_OBSERVATION && e.predictor.feature_dim() != feature_dim) {
      code = v1::ERROR_CODE_WRONG_DIMENSION;
      message = "observation.features has " + std::to_string(feature_dim) + " values; key " +
                quoted(key) + " has dimension " + std::to_string(e.predictor.feature_dim());
      return nullptr;
    }
    return &e;
  }

  v1::KeyConfig config = configs_.base_for(key);
  if (const auto kc = key_configs_.find(key); kc != key_configs_.end()) {
    merge_key_config(config, kc->second);
  }
  KeySettings settings;
  try {
    settings = resolve_key_config(config);
  } catch (const std::invalid_argument& e) {
    code = v1::ERROR_CODE_BAD_CONFIG;
    message = "the configuration of key " + quoted(key) + " does not resolve: " + e.what();
    return nullptr;
  }
  // A key with a config waiting has its place already.
  const bool has_slot = key_configs_.count(key) > 0;
  if (!has_slot && !reserve_slot()) {
    code = v1::ERROR_CODE_TOO_MANY_KEYS;
    message = "key " + quoted(key) + " would exceed the server's limit of " +
              std::to_string(max_keys_) + " keys";
    return nullptr;
  }
  std::uint64_t bytes = 0;
  try {
    bytes = SeriesPredictor::memory_bytes(settings.series, feature_dim);
  } catch (const std::exception& e) {
    if (!has_slot) release_slot();
    code = v1::ERROR_CODE_BAD_CONFIG;
    message = "key " + quoted(key) + ": " + e.what();
    return nullptr;
  }
  if (bytes > counters_.max_model_bytes) {
    // Alone beyond the limit (a Configure's check prices a scalar stream; an observation
    // key's feature count, or configs merged from several sources, can exceed it): no
    // retry will help.
    if (!has_slot) release_slot();
    code = v1::ERROR_CODE_BAD_CONFIG;
    message =
        "key " + quoted(key) + ": its models would hold " + format_bytes(bytes) +
        ", more than the server's max_model_bytes = " + format_bytes(counters_.max_model_bytes) +
        " alone";
    return nullptr;
  }
  if (!reserve_bytes(bytes)) {
    if (!has_slot) release_slot();
    code = v1::ERROR_CODE_MEMORY_LIMIT;
    message = "key " + quoted(key) + " would need " + format_bytes(bytes) +
              " for its models; the live keys' models hold " +
              format_bytes(counters_.model_bytes.load(std::memory_order_relaxed)) +
              " of the server's max_model_bytes = " + format_bytes(counters_.max_model_bytes) +
              ": not created";
    return nullptr;
  }
  try {
    SeriesPredictor predictor = feature_dim > 0 ? SeriesPredictor(settings.series, feature_dim)
                                                : SeriesPredictor(settings.series);
    const int racing = predictor.racing();
    Entry entry{kind, to_proto(settings), settings, std::move(predictor), {}, 0, {}, bytes, racing};
    Entry* created = &entries_.emplace(key, std::move(entry)).first->second;
    counters_.keys.fetch_add(1, std::memory_order_relaxed);
    return created;
  } catch (const std::exception& e) {
    counters_.model_bytes.fetch_sub(bytes, std::memory_order_relaxed);
    if (!has_slot) release_slot();
    code = v1::ERROR_CODE_BAD_CONFIG;
    message = "key " + quoted(key) + ": " + e.what();
    return nullptr;
  }
}

bool Shard::reserve_bytes(std::uint64_t bytes) {
  std::uint64_t held = counters_.model_bytes.load(std::memory_order_relaxed);
  do {
    if (bytes > counters_.max_model_bytes || held > counters_.max_model_bytes - bytes) {
      return false;
    }
  } while (
      !counters_.model_bytes.compare_exchange_weak(held, held + bytes, std::memory_order_relaxed));
  return true;
}

void Shard::settle_bytes(Entry& entry) {
  const int racing = entry.predictor.racing();
  if (racing == entry.racing) return;
  const std::uint64_t bytes = entry.predictor.memory_bytes();
  // One step: between a fetch_sub of the old and a fetch_add of the new count, another
  // shard's reserve_bytes() could take the old count's room and overshoot the limit.
  if (bytes < entry.bytes) {
    counters_.model_bytes.fetch_sub(entry.bytes - bytes, std::memory_order_relaxed);
  } else {
    counters_.model_bytes.fetch_add(bytes - entry.bytes, std::memory_order_relaxed);
  }
  entry.bytes = bytes;
  entry.racing = racing;
}

void Shard::record_latency(std::chrono::steady_clock::time_point start) {
  const auto elapsed = std::chrono::steady_clock::now() - start;
  latency_.record(static_cast<std::uint64_t>(std::max<std::int64_t>(
      0, std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count())));
}

void Shard::retire(const std::string& key, const Entry& entry) {
  v1::KeyStats stats;
  fill_key_stats(key, entry, &stats);
  counters_.retire(stats.model(), stats.counters());
}

void Shard::erase(const std::string& key) {
  const auto it = entries_.find(key);
  if (it == entries_.end()) return;
  retire(key, it->second);
  counters_.model_bytes.fetch_sub(it->second.bytes, std::memory_order_relaxed);
  entries_.erase(it);
  counters_.keys.fetch_sub(1, std::memory_order_relaxed);
  if (key_configs_.count(key) == 0) release_slot();
}

bool Shard::reserve_slot() {
  if (counters_.key_slots.fetch_add(1, std::memory_order_relaxed) >= max_keys_) {
    counters_.key_slots.fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  return true;
}

void Shard::release_slot() { counters_.key_slots.fetch_sub(1, std::memory_order_relaxed); }

std::size_t Shard::slots_used() const {
  std::size_t n = entries_.size();
  for (const auto& [key, config] : key_configs_) n += entries_.count(key) == 0 ? 1 : 0;
  return n;
}

v1::ErrorCode Shard::observe_scalar(Entry& entry, const std::string& key,
                                    const std::optional<std::uint64_t>& seq, std::uint64_t time,
                                    double value, v1::Prediction* prediction,
                                    std::string& message) {
  const auto start = std::chrono::steady_clock::now();
  const Outcome o = entry.predictor.observe(seq, time, value);
  if (o.learned) record_latency(start);
  settle_bytes(entry);
  if (o.status == OutcomeStatus::kDuplicate || o.status == OutcomeStatus::kOutOfOrder) {
    const bool duplicate = o.status == OutcomeStatus::kDuplicate;
    message = "seq " + std::to_string(*seq) + " of key " + quoted(key) +
              (duplicate ? " repeats the last accepted one" : " is below the last accepted ") +
              (duplicate ? "" : std::to_string(*entry.last_seq)) + ": dropped";
    return duplicate ? v1::ERROR_CODE_DUPLICATE_SEQ : v1::ERROR_CODE_OUT_OF_ORDER_SEQ;
  }
  if (seq) entry.last_seq = seq;
  entry.last_time = std::max(entry.last_time, time);  // as the series takes times (newest)
  fill_prediction(o, entry.predictor, time, prediction);
  return v1::ERROR_CODE_UNSPECIFIED;
}

void Shard::handle(const v1::Request& request, v1::Response& response) {
  echo_request(request, response);
  switch (request.payload_case()) {
    case v1::Request::kObservation:
      handle_observation(request, response);
      break;
    case v1::Request::kSensorReading:
      handle_sensor(request, response);
      break;
    case v1::Request::kMarketTick:
      handle_tick(request, response);
      break;
    case v1::Request::kControl:
      handle_control(request, response);
      break;
    case v1::Request::PAYLOAD_NOT_SET:
      set_error(response, v1::ERROR_CODE_MISSING_FIELD, "request has no payload");
      break;
  }
  if (response.has_error()) counters_.count_error(response.error().code());
}

void Shard::handle_observation(const v1::Request& request, v1::Response& response) {
  const v1::Observation& o = request.observation();
  v1::ErrorCode code = v1::ERROR_CODE_UNSPECIFIED;
  std::string message;
  Entry* e =
      entry_for(o.key(), v1::KeySnapshot::KIND_OBSERVATION, o.features_size(), code, message);
  if (e == nullptr) return set_error(response, code, std::move(message));
  const std::optional<std::uint64_t> seq =
      request.has_seq() ? std::optional<std::uint64_t>(request.seq()) : std::nullopt;
  const Eigen::Map<const Eigen::VectorXd> x(o.features().data(), o.features_size());
  const auto start = std::chrono::steady_clock::now();
  const Outcome out =
      e->predictor.observe(seq, o.time_unix_nano(), x,
                           o.has_target() ? std::optional<double>(o.target()) : std::nullopt);
  if (out.learned) record_latency(start);
  settle_bytes(*e);
  if (out.status == OutcomeStatus::kDuplicate || out.status == OutcomeStatus::kOutOfOrder) {
    const bool duplicate = out.status == OutcomeStatus::kDuplicate;
    return set_error(
        response, duplicate ? v1::ERROR_CODE_DUPLICATE_SEQ : v1::ERROR_CODE_OUT_OF_ORDER_SEQ,
        "seq " + std::to_string(*seq) + " of key " + quoted(o.key()) +
            (duplicate ? " repeats the last accepted one"
                       : " is below the last accepted " + std::to_string(*e->last_seq)) +
            ": dropped");
  }
  if (seq) e->last_seq = seq;
  e->last_time = std::max(e->last_time, o.time_unix_nano());
  fill_prediction(out, e->predictor, o.time_unix_nano(), response.mutable_prediction());
}

void Shard::handle_sensor(const v1::Request& request, v1::Response& response) {
  const v1::SensorReading& r = request.sensor_reading();
  v1::ErrorCode code = v1::ERROR_CODE_UNSPECIFIED;
  std::string message;
  Entry* e = entry_for(r.sensor_id(), v1::KeySnapshot::KIND_SENSOR_READING, 0, code, message);
  if (e == nullptr) return set_error(response, code, std::move(message));
  const std::optional<std::uint64_t> seq =
      request.has_seq() ? std::optional<std::uint64_t>(request.seq()) : std::nullopt;
  const double value = r.has_value() ? r.value() : std::numeric_limits<double>::quiet_NaN();
  code = observe_scalar(*e, r.sensor_id(), seq, r.time_unix_nano(), value,
                        response.mutable_prediction(), message);
  if (code != v1::ERROR_CODE_UNSPECIFIED) set_error(response, code, std::move(message));
}

void Shard::handle_channel(const v1::Request& request, int channel, v1::ChannelResult& result) {
  const v1::SensorReading& r = request.sensor_reading();
  std::string key = channel_key(r.sensor_id(), channel);
  v1::ErrorCode code = v1::ERROR_CODE_UNSPECIFIED;
  std::string message;
  Entry* e = entry_for(key, v1::KeySnapshot::KIND_SENSOR_READING, 0, code, message);
  if (e != nullptr) {
    const bool missing =
        std::find(r.missing_channels().begin(), r.missing_channels().end(),
                  static_cast<std::uint32_t>(channel)) != r.missing_channels().end();
    const double value = missing ? std::numeric_limits<double>::quiet_NaN() : r.values(channel);
    const std::optional<std::uint64_t> seq =
        request.has_seq() ? std::optional<std::uint64_t>(request.seq()) : std::nullopt;
    code = observe_scalar(*e, key, seq, r.time_unix_nano(), value, result.mutable_prediction(),
                          message);
  }
  result.set_key(std::move(key));
  if (code != v1::ERROR_CODE_UNSPECIFIED) {
    v1::Error* err = result.mutable_error();
    err->set_code(code);
    err->set_message(std::move(message));
    counters_.count_error(code);
  }
}

void Shard::handle_tick(const v1::Request& request, v1::Response& response) {
  const v1::MarketTick& t = request.market_tick();
  v1::ErrorCode code = v1::ERROR_CODE_UNSPECIFIED;
  std::string message;
  Entry* e = entry_for(t.symbol(), v1::KeySnapshot::KIND_MARKET_TICK, 0, code, message);
  if (e == nullptr) return set_error(response, code, std::move(message));
  const std::optional<std::uint64_t> seq =
      request.has_seq() ? std::optional<std::uint64_t>(request.seq()) : std::nullopt;
  std::optional<double> price;
  const double value = tick_value(t, e->settings.tick_value, e->last_price, price);
  code = observe_scalar(*e, t.symbol(), seq, t.time_unix_nano(), value,
                        response.mutable_prediction(), message);
  if (code != v1::ERROR_CODE_UNSPECIFIED) return set_error(response, code, std::move(message));
  if (price) e->last_price = price;
}

void Shard::handle_control(const v1::Request& request, v1::Response& response) {
  const v1::Control& c = request.control();
  if (c.has_configure() && c.configure().has_key()) {
    const std::string& key = c.configure().key();
    v1::KeyConfig key_config;
    if (const auto kc = key_configs_.find(key); kc != key_configs_.end()) key_config = kc->second;
    merge_key_config(key_config, c.configure().config());
    v1::KeyConfig merged = configs_.base_for(key);
    merge_key_config(merged, key_config);
    std::optional<std::string> too_big;
    try {
      too_big = exceeds_model_memory(resolve_key_config(merged), counters_.max_model_bytes);
    } catch (const std::invalid_argument& e) {
      return set_error(response, v1::ERROR_CODE_BAD_CONFIG,
                       "control.configure.config for key " + quoted(key) + ": " + e.what());
    }
    if (too_big) {
      return set_error(response, v1::ERROR_CODE_BAD_CONFIG,
                       "control.configure.config for key " + quoted(key) + ": " + *too_big);
    }
    const bool existed = entries_.count(key) > 0;
    const auto [kc, added] = key_configs_.try_emplace(key);
    if (added && !existed && !reserve_slot()) {
      key_configs_.erase(kc);
      return set_error(response, v1::ERROR_CODE_TOO_MANY_KEYS,
                       "control.configure.key " + quoted(key) +
                           " would exceed the server's limit of " + std::to_string(max_keys_) +
                           " keys (a key configured before it exists counts)");
    }
    kc->second = std::move(key_config);
    erase(key);  // keeps its place: the key now has a config waiting
    response.mutable_ack()->set_keys_affected(existed ? 1 : 0);
    return;
  }
  if (c.has_stats() && c.stats().has_key()) {
    const auto it = entries_.find(c.stats().key());
    if (it == entries_.end()) {
      return set_error(response, v1::ERROR_CODE_UNKNOWN_KEY,
                       "control.stats.key " + quoted(c.stats().key()) + " does not exist");
    }
    v1::Stats* stats = response.mutable_stats();
    *stats->mutable_server() = counters_.to_proto();
    fill_key_stats(it->first, it->second, stats->add_keys());
    return;
  }
  if (c.has_drop_key()) {
    const std::string& key = c.drop_key().key();
    const bool existed = entries_.count(key) > 0;
    const bool configured = key_configs_.erase(key) > 0;
    if (!existed && !configured) {
      return set_error(response, v1::ERROR_CODE_UNKNOWN_KEY,
                       "control.drop_key.key " + quoted(key) + " does not exist");
    }
    if (existed) {
      erase(key);  // releases the key's place (its config is gone)
    } else {
      release_slot();
    }
    response.mutable_ack()->set_keys_affected(existed ? 1 : 0);
    return;
  }
  // The server routes every other Control elsewhere; reaching here is a bug.
  set_error(response, v1::ERROR_CODE_INTERNAL, "control operation routed to a shard by mistake");
}

void Shard::fill_key_stats(const std::string& key, const Entry& e, v1::KeyStats* out) const {
  out->set_key(key);
  *out->mutable_config() = e.config;
  out->set_feature_dim(e.predictor.feature_dim());
  out->set_input_dim(e.predictor.input_dim());
  out->set_dictionary_size(static_cast<std::uint32_t>(e.predictor.model().dictionary_size()));
  out->set_signal_power(e.predictor.model().signal_power());
  if (e.last_seq) out->set_last_seq(*e.last_seq);
  out->set_last_time_unix_nano(e.last_time);
  *out->mutable_counters() = stream::to_proto(e.predictor.counters());
  *out->mutable_score() = stream::to_proto(e.predictor.score());
  *out->mutable_model() = stream::to_proto(e.predictor.model().counters());
  out->set_last_drift(e.predictor.model().last_drift());
  out->set_noise_variance(e.predictor.model().config().noise_variance);
  out->set_racing(static_cast<std::uint32_t>(e.predictor.racing()));
  out->set_memory_bytes(e.bytes);
}

void Shard::collect_stats(std::string_view prefix, std::vector<v1::KeyStats>& out) const {
  for (const auto& [key, entry] : entries_) {
    if (!starts_with(key, prefix)) continue;
    out.emplace_back();
    fill_key_stats(key, entry, &out.back());
  }
}

void Shard::export_keys(std::vector<v1::KeySnapshot>& out) const {
  for (const auto& [key, e] : entries_) {
    v1::KeySnapshot s;
    s.set_key(key);
    *s.mutable_config() = e.config;
    s.set_kind(e.kind);
    if (e.last_seq) s.set_last_seq(*e.last_seq);
    if (e.last_price) s.set_last_price(*e.last_price);
    if (const auto kc = key_configs_.find(key); kc != key_configs_.end()) {
      *s.mutable_configured() = kc->second;
    }
    *s.mutable_series() = stream::to_proto(e.predictor.export_state());
    out.push_back(std::move(s));
  }
  // Keys configured before their first value: the key and its config, no state.
  for (const auto& [key, configured] : key_configs_) {
    if (entries_.count(key) > 0) continue;
    v1::KeySnapshot s;
    s.set_key(key);
    *s.mutable_configured() = configured;
    out.push_back(std::move(s));
  }
}

Shard::Entry Shard::make_entry(const v1::KeySnapshot& s) {
  const std::string where = "key " + quoted(s.key()) + ": ";
  try {
    if (s.key().empty()) throw std::invalid_argument("the key is empty");
    const KeySettings settings = resolve_key_config(s.config());
    const SeriesState state = from_proto(s.series());
    if (!(state.config == settings.series)) {
      throw std::invalid_argument("config.series differs from series.config");
    }
    switch (s.kind()) {
      case v1::KeySnapshot::KIND_OBSERVATION:
        if (state.feature_dim <= 0) {
          throw std::invalid_argument("kind observation needs series.feature_dim > 0");
        }
        break;
      case v1::KeySnapshot::KIND_SENSOR_READING:
      case v1::KeySnapshot::KIND_MARKET_TICK:
        if (state.feature_dim != 0) {
          throw std::invalid_argument(std::string("kind ") + kind_name(s.kind()) +
                                      " needs series.feature_dim == 0");
        }
        break;
      default:
        throw std::invalid_argument("kind " + std::to_string(s.kind()) + " is not a request kind");
    }
    if (s.has_last_seq() != state.last_seq.has_value() ||
        (s.has_last_seq() && s.last_seq() != *state.last_seq)) {
      throw std::invalid_argument("last_seq differs from series.last_seq");
    }
    if (s.has_last_price() && !std::isfinite(s.last_price())) {
      throw std::invalid_argument("last_price is not finite");
    }
    if (s.has_configured()) {
      v1::KeyConfig merged = s.config();
      merge_key_config(merged, s.configured());
      try {
        resolve_key_config(merged);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(std::string("configured: ") + e.what());
      }
    }
    Entry e{s.kind(),
            to_proto(settings),
            settings,
            SeriesPredictor::import_state(state),
            state.last_seq,
            state.slots > 0 ? state.last_time : 0,
            s.has_last_price() ? std::optional<double>(s.last_price()) : std::nullopt};
    e.bytes = e.predictor.memory_bytes();
    e.racing = e.predictor.racing();
    return e;
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(where + e.what());
  }
}

void Shard::replace_all(std::vector<std::pair<std::string, Entry>> entries,
                        std::unordered_map<std::string, v1::KeyConfig> key_configs) {
  counters_.keys.fetch_sub(entries_.size(), std::memory_order_relaxed);
  counters_.key_slots.fetch_sub(slots_used(), std::memory_order_relaxed);
  for (const auto& [key, entry] : entries_) {
    retire(key, entry);
    counters_.model_bytes.fetch_sub(entry.bytes, std::memory_order_relaxed);
  }
  entries_.clear();
  key_configs_ = std::move(key_configs);
  for (auto& [key, entry] : entries) {
    v1::KeyStats stats;
    fill_key_stats(key, entry, &stats);
    counters_.restore(stats.model(), stats.counters());
    counters_.model_bytes.fetch_add(entry.bytes, std::memory_order_relaxed);
    entries_.emplace(std::move(key), std::move(entry));
  }
  counters_.keys.fetch_add(entries_.size(), std::memory_order_relaxed);
  counters_.key_slots.fetch_add(slots_used(), std::memory_order_relaxed);
}

}  // namespace ntk::stream::detail
