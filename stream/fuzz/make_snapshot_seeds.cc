// Writes the seed corpus of fuzz_key_snapshot into a directory:
//   make_snapshot_seeds OUTPUT_DIR
// ctest runs it into the build tree before fuzz_key_snapshot_replay (tests/stream), so the
// seeds always match the current state format. Each seed is one serialized
// ntk.v1.KeySnapshot as ntkd exports it: keys of every request kind, fed through a shard
// as the server feeds them, exported while warming up, while noise candidates race and
// after the race, under both eviction policies, with forgetting, a horizon of 2, the time
// feature, log returns, and a key configured by Control.Configure.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "keyspace.h"

namespace {

namespace v1 = ntk::v1;
using ntk::stream::detail::ConfigTable;
using ntk::stream::detail::Counters;
using ntk::stream::detail::Shard;

constexpr std::uint64_t kTime0 = 1'700'000'000'000'000'000ull;

double wave(int i) { return 20.0 + 5.0 * ((i * 37) % 17) / 17.0 + 0.01 * i; }

v1::Request sensor(const std::string& key, int i) {
  v1::Request r;
  r.set_seq(static_cast<std::uint64_t>(i + 1));
  v1::SensorReading* s = r.mutable_sensor_reading();
  s->set_sensor_id(key);
  s->set_time_unix_nano(kTime0 + static_cast<std::uint64_t>(i) * 60'000'000'000ull);
  if (i % 13 != 12) s->set_value(wave(i));  // a missing value now and then
  return r;
}

v1::Request tick(const std::string& key, int i) {
  v1::Request r;
  r.set_seq(static_cast<std::uint64_t>(i + 1));
  v1::MarketTick* t = r.mutable_market_tick();
  t->set_symbol(key);
  t->set_time_unix_nano(kTime0 + static_cast<std::uint64_t>(i) * 1'000'000'000ull);
  t->set_bid(1.08 + 0.0001 * wave(i));
  t->set_ask(1.0802 + 0.0001 * wave(i));
  return r;
}

v1::Request observation(const std::string& key, int i) {
  v1::Request r;
  r.set_seq(static_cast<std::uint64_t>(i + 1));
  v1::Observation* o = r.mutable_observation();
  o->set_key(key);
  o->set_time_unix_nano(kTime0 + static_cast<std::uint64_t>(i) * 1'000'000ull);
  o->add_features(wave(i));
  o->add_features(wave(i + 3) * 0.1);
  o->add_features(-wave(i + 7));
  if (i % 5 != 4) o->set_target(wave(i + 1));  // unlabelled queries too
  return r;
}

v1::Request configure(const std::string& key, const v1::KeyConfig& config) {
  v1::Request r;
  v1::Control::Configure* c = r.mutable_control()->mutable_configure();
  c->set_key(key);
  *c->mutable_config() = config;
  return r;
}

bool write(const std::filesystem::path& dir, const std::string& name, const v1::KeySnapshot& s) {
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out << s.SerializeAsString();
  if (!out) std::fprintf(stderr, "cannot write %s\n", (dir / name).c_str());
  return static_cast<bool>(out);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path dir(argv[1]);
  std::filesystem::create_directories(dir);

  // Small budgets and a short race, so that a few hundred values reach every stage.
  v1::KeyConfig defaults;
  v1::SeriesConfig* series = defaults.mutable_series();
  series->set_lags(4);
  series->set_warmup(8);
  series->set_selection_samples(60);
  series->mutable_model()->set_budget(16);
  Counters counters;
  counters.max_model_bytes = ~std::uint64_t{0};
  const ConfigTable configs(defaults, {}, counters.max_model_bytes);
  Shard shard(configs, counters, 64);

  v1::KeyConfig oldest;
  oldest.mutable_series()->mutable_model()->set_eviction(v1::EVICTION_POLICY_OLDEST);
  oldest.mutable_series()->mutable_model()->set_forgetting(0.995);
  oldest.mutable_series()->set_horizon(2);
  oldest.mutable_series()->set_time_feature(true);
  v1::KeyConfig returns;
  returns.set_tick_value(v1::TICK_VALUE_LOG_RETURN);
  returns.mutable_series()->mutable_model()->mutable_kernel()->set_spec("rbf:lengthscale=1.5");
  v1::Response response;
  for (const auto& [key, config] :
       {std::pair{"s/oldest", oldest}, std::pair{"t/returns", returns}}) {
    response.Clear();
    shard.handle(configure(key, config), response);
    if (!response.has_ack()) {
      std::fprintf(stderr, "configure %s: %s\n", key, response.DebugString().c_str());
      return 1;
    }
  }

  bool ok = true;
  int written = 0;
  const auto feed = [&](int from, int to) {
    for (int i = from; i < to; ++i) {
      for (const v1::Request& r : {sensor("s/minloss", i), sensor("s/oldest", i), tick("t/mid", i),
                                   tick("t/returns", i), observation("o/x", i)}) {
        response.Clear();
        shard.handle(r, response);
      }
    }
  };
  const auto dump = [&](const std::string& stage) {
    std::vector<v1::KeySnapshot> keys;
    shard.export_keys(keys);
    for (const v1::KeySnapshot& k : keys) {
      std::string name = stage + "_" + k.key();
      for (char& c : name) c = c == '/' ? '_' : c;
      ok &= write(dir, name, k);
      ++written;
    }
  };
  feed(0, 5);
  dump("warming");
  feed(5, 40);
  dump("racing");
  feed(40, 200);
  dump("settled");
  if (!ok || written != 15) {
    std::fprintf(stderr, "wrote %d seeds\n", written);
    return 1;
  }
  return 0;
}
