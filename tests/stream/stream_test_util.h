// Helpers for the loopback tests of ntk::stream: request builders, a small fast key
// configuration, and the in-process oracle (core/series run on the same sequences).
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "ntk/core/series.h"
#include "ntk/stream/convert.h"
#include "ntk/stream/server.h"
#include "ntk/v1/request.pb.h"
#include "ntk/v1/response.pb.h"

namespace ntk::stream::test {

namespace v1 = ntk::v1;

// A configuration that learns fast in tests: 3 lags, warm-up 5, budget 8.
inline v1::KeyConfig small_key_config() {
  v1::KeyConfig c;
  c.mutable_series()->set_lags(3);
  c.mutable_series()->set_warmup(5);
  c.mutable_series()->mutable_model()->set_budget(8);
  return c;
}

inline ServerOptions small_options() {
  ServerOptions o;
  o.threads = 2;
  o.shards = 4;
  o.defaults = small_key_config();
  return o;
}

// The series config a key gets from `config` (what the server resolves).
inline SeriesConfig series_of(const v1::KeyConfig& config) {
  return resolve_key_config(config).series;
}

inline v1::Request observation(const std::string& key, std::uint64_t seq,
                               const std::vector<double>& x, std::optional<double> y) {
  v1::Request r;
  r.set_seq(seq);
  r.set_tag("obs-" + std::to_string(seq));
  v1::Observation* o = r.mutable_observation();
  o->set_key(key);
  o->set_time_unix_nano(1'700'000'000'000'000'000ull + seq * 1'000'000ull);
  for (const double v : x) o->add_features(v);
  if (y) o->set_target(*y);
  return r;
}

inline v1::Request reading(const std::string& sensor, std::uint64_t seq,
                           std::optional<double> value) {
  v1::Request r;
  r.set_seq(seq);
  v1::SensorReading* s = r.mutable_sensor_reading();
  s->set_sensor_id(sensor);
  s->set_time_unix_nano(1'700'000'000'000'000'000ull + seq * 1'000'000'000ull);
  if (value) s->set_value(*value);
  return r;
}

inline v1::Request tick(const std::string& symbol, std::uint64_t seq, std::optional<double> price,
                        std::optional<double> bid, std::optional<double> ask) {
  v1::Request r;
  r.set_seq(seq);
  r.set_tag("tick");
  v1::MarketTick* t = r.mutable_market_tick();
  t->set_symbol(symbol);
  t->set_time_unix_nano(1'700'000'000'000'000'000ull + seq * 1'000'000ull);
  if (price) t->set_price(*price);
  if (bid) t->set_bid(*bid);
  if (ask) t->set_ask(*ask);
  return r;
}

inline v1::Request control_stats(std::optional<std::string> key,
                                 std::optional<std::string> prefix) {
  v1::Request r;
  v1::Control::GetStats* s = r.mutable_control()->mutable_stats();
  if (key) s->set_key(*key);
  if (prefix) s->set_key_prefix(*prefix);
  return r;
}

// A deterministic test signal.
inline double signal(std::uint64_t key, std::uint64_t t) {
  return std::sin(0.2 * static_cast<double>(t) + 0.37 * static_cast<double>(key)) +
         0.1 * std::cos(1.7 * static_cast<double>(t * (key % 5 + 1)));
}

inline bool same(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

// Checks that a Prediction is exactly what the in-process predictor's Outcome says.
inline void check_prediction(const v1::Prediction& p, const Outcome& o,
                             const SeriesPredictor& oracle) {
  switch (o.status) {
    case OutcomeStatus::kScored:
      REQUIRE(p.status() == v1::Prediction::STATUS_SCORED);
      break;
    case OutcomeStatus::kWarmingUp:
      REQUIRE(p.status() == v1::Prediction::STATUS_WARMING_UP);
      break;
    case OutcomeStatus::kMissing:
      REQUIRE(p.status() == v1::Prediction::STATUS_MISSING);
      break;
    case OutcomeStatus::kUnlabelled:
      REQUIRE(p.status() == v1::Prediction::STATUS_UNLABELLED);
      break;
    default:
      FAIL("the oracle dropped a value the server answered with a prediction");
  }
  REQUIRE(p.has_mean() == o.has_prediction);
  if (o.has_prediction) {
    REQUIRE(p.mean() == o.mean);
    REQUIRE(p.variance() == o.sd * o.sd);
  }
  REQUIRE(p.has_z() == (o.status == OutcomeStatus::kScored));
  if (p.has_z()) REQUIRE(p.z() == o.z);
  REQUIRE(p.anomaly() == o.anomaly);
  REQUIRE(p.learned() == o.learned);
  REQUIRE(p.gap() == o.gap);
  REQUIRE(p.dictionary_size() == static_cast<std::uint32_t>(oracle.model().dictionary_size()));
  REQUIRE(p.model_version() == oracle.counters().updates);
}

// Waits (polling, at most `limit`) until pred() holds.
template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

inline std::uint64_t error_count(const v1::ServerCounters& c, v1::ErrorCode code) {
  for (const v1::ErrorCount& e : c.errors()) {
    if (e.code() == code) return e.count();
  }
  return 0;
}

}  // namespace ntk::stream::test
