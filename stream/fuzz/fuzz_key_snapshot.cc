// Fuzz target: restoring one key of a snapshot (what Server::import_models does for each
// KeySnapshot of a snapshot file), then serving it.
//
// Input: a serialized ntk.v1.KeySnapshot (the seeds, from make_snapshot_seeds, are keys
// of every kind that ntkd exported at various stages).
// Properties checked (a violation aborts, which libFuzzer and the replay report):
//   1. Shard::make_entry either restores the key or throws std::invalid_argument; no other
//      exception, no crash, no sanitizer report;
//   2. a restored key exports (Shard::export_keys) a KeySnapshot that restores, and whose
//      own restore exports the same message again;
//   3. the restored key answers 24 values of its kind with predictions or errors of known
//      codes (never INTERNAL), and what it exports afterwards restores: a key that serves
//      must not make the next snapshot refuse (ntkd restores a snapshot whole).
// Keys whose predictor would hold more than 8 MiB are skipped: restoring them is only
// slower (O(M^3) checks), not different.
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/util/field_comparator.h>
#include <google/protobuf/util/message_differencer.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "keyspace.h"
#include "ntk/core/series.h"
#include "ntk/stream/convert.h"

namespace {

namespace v1 = ntk::v1;
using ntk::stream::detail::ConfigTable;
using ntk::stream::detail::Counters;
using ntk::stream::detail::Shard;

constexpr std::uint64_t kMaxBytes = std::uint64_t{8} << 20;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_key_snapshot: property violated: %s\n", what);
    std::abort();
  }
}

// Restores `snapshot` into a shard of its own; the reason when make_entry refuses it.
std::optional<std::string> restore(const v1::KeySnapshot& snapshot, Shard& shard) {
  std::vector<std::pair<std::string, Shard::Entry>> entries;
  try {
    entries.emplace_back(snapshot.key(), Shard::make_entry(snapshot));
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  std::unordered_map<std::string, v1::KeyConfig> configured;
  if (snapshot.has_configured()) configured.emplace(snapshot.key(), snapshot.configured());
  shard.replace_all(std::move(entries), std::move(configured));
  return std::nullopt;
}

void check_restores(const v1::KeySnapshot& snapshot, Shard& shard, const char* what) {
  if (const auto error = restore(snapshot, shard)) {
    std::fprintf(stderr, "fuzz_key_snapshot: property violated: %s: %s\n", what, error->c_str());
    std::abort();
  }
}

v1::KeySnapshot exported(const Shard& shard) {
  std::vector<v1::KeySnapshot> out;
  shard.export_keys(out);
  check(out.size() == 1, "a shard holding one key exports one key");
  return out.front();
}

// The next value of the key's kind, for sequence number seq.
v1::Request next_value(const v1::KeySnapshot& key, std::uint64_t seq, int i) {
  v1::Request r;
  r.set_seq(seq);
  const double value = 20.0 + 3.0 * ((i * 7) % 11) - 0.25 * i;
  const std::uint64_t time = 1'700'000'000'000'000'000ull + seq * 1'000'000'000ull;
  switch (key.kind()) {
    case v1::KeySnapshot::KIND_OBSERVATION: {
      v1::Observation* o = r.mutable_observation();
      o->set_key(key.key());
      o->set_time_unix_nano(time);
      for (int c = 0; c < key.series().feature_dim(); ++c) o->add_features(value * (c + 1) / 10);
      o->set_target(value);
      break;
    }
    case v1::KeySnapshot::KIND_MARKET_TICK: {
      v1::MarketTick* t = r.mutable_market_tick();
      t->set_symbol(key.key());
      t->set_time_unix_nano(time);
      t->set_price(value);
      break;
    }
    default: {
      v1::SensorReading* s = r.mutable_sensor_reading();
      s->set_sensor_id(key.key());
      s->set_time_unix_nano(time);
      s->set_value(value);
      break;
    }
  }
  return r;
}

// The fuzzer feeds invalid UTF-8 in string fields; protobuf would log each.
struct QuietProtobufLogs {
  QuietProtobufLogs() { google::protobuf::SetLogHandler(nullptr); }
} quiet_protobuf_logs;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  v1::KeySnapshot snapshot;
  if (!snapshot.ParseFromArray(data, static_cast<int>(size))) return 0;
  try {
    const ntk::stream::KeySettings settings = ntk::stream::resolve_key_config(snapshot.config());
    const int feature_dim = snapshot.series().feature_dim();
    if (feature_dim > ntk::SeriesConfig::kMaxLags ||
        ntk::SeriesPredictor::memory_bytes(settings.series, feature_dim < 0 ? 0 : feature_dim) >
            kMaxBytes) {
      return 0;
    }
  } catch (const std::invalid_argument&) {
    // make_entry must refuse it as well: go on and check that.
  }

  Counters counters;
  counters.max_model_bytes = ~std::uint64_t{0};
  const ConfigTable configs(v1::KeyConfig{}, {}, counters.max_model_bytes);
  Shard shard(configs, counters, 16);
  if (restore(snapshot, shard)) return 0;
  check(shard.size() == 1, "a restored key is live");

  // 2. What the key exports restores, and exports the same again.
  const v1::KeySnapshot first = exported(shard);
  Shard again(configs, counters, 16);
  check_restores(first, again, "an exported key restores");
  // NaN is a value here (SeriesState.last_features: none seen).
  google::protobuf::util::DefaultFieldComparator nan_equal;
  nan_equal.set_treat_nan_as_equal(true);
  google::protobuf::util::MessageDifferencer differencer;
  differencer.set_field_comparator(&nan_equal);
  check(differencer.Compare(first, exported(again)),
        "a restored key exports what it was restored from");

  // 3. It serves values of its kind, and what it reaches restores.
  std::uint64_t seq = first.has_last_seq() ? first.last_seq() : 0;
  for (int i = 0; i < 24; ++i) {
    if (seq == ~std::uint64_t{0}) break;
    v1::Response response;
    shard.handle(next_value(first, ++seq, i), response);
    check(response.has_prediction() || response.has_error(), "every value is answered");
    if (response.has_error()) {
      check(response.error().code() != v1::ERROR_CODE_INTERNAL &&
                response.error().code() != v1::ERROR_CODE_UNSPECIFIED,
            "a value is answered with a known error code");
    }
  }
  Shard last(configs, counters, 16);
  check_restores(exported(shard), last, "a served key restores");
  return 0;
}
