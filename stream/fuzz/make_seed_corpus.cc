// Writes the seed corpus of fuzz_frame_codec into a directory:
//   make_seed_corpus OUTPUT_DIR
// ctest runs it into the build tree before fuzz_frame_codec_replay (tests/stream), so the
// seeds always match the current protocol.
// Each seed is one control byte (see fuzz_frame_codec.cc: chunk size and frame limit)
// followed by a byte stream: valid requests of every kind, requests that fail each kind
// of validation, and the framing edge cases (empty frames, limits, bad varints,
// truncation).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <string>

#include "ntk/stream/frame_codec.h"

namespace {

namespace v1 = ntk::v1;

constexpr std::uint8_t kLimit4MiB = 0x00;
constexpr std::uint8_t kLimit16 = 0x80;

std::uint8_t control(std::uint8_t limit_bits, int chunk) {
  return static_cast<std::uint8_t>(limit_bits | ((chunk - 1) & 0x3f));
}

std::string frames(std::initializer_list<v1::Request> requests) {
  std::string out;
  for (const v1::Request& r : requests) ntk::stream::encode_delimited(r, out);
  return out;
}

v1::Request observation(std::string key, std::initializer_list<double> x, std::optional<double> y) {
  v1::Request r;
  r.set_seq(1);
  r.set_tag("obs");
  v1::Observation* o = r.mutable_observation();
  o->set_key(std::move(key));
  o->set_time_unix_nano(1700000000000000000ull);
  for (double v : x) o->add_features(v);
  if (y) o->set_target(*y);
  return r;
}

v1::Request sensor(std::string id, std::optional<double> value,
                   std::initializer_list<double> values,
                   std::initializer_list<std::uint32_t> missing) {
  v1::Request r;
  r.set_seq(7);
  v1::SensorReading* s = r.mutable_sensor_reading();
  s->set_sensor_id(std::move(id));
  s->set_time_unix_nano(1700000000500000000ull);
  if (value) s->set_value(*value);
  for (double v : values) s->add_values(v);
  for (std::uint32_t c : missing) s->add_missing_channels(c);
  return r;
}

v1::Request tick(std::string symbol, double price, double size, double bid, double ask) {
  v1::Request r;
  r.set_seq(123456);
  r.set_tag("mkt");
  v1::MarketTick* t = r.mutable_market_tick();
  t->set_symbol(std::move(symbol));
  t->set_time_unix_nano(1700000001000000000ull);
  t->set_price(price);
  t->set_size(size);
  t->set_bid(bid);
  t->set_ask(ask);
  return r;
}

v1::Request configure_structured() {
  v1::Request r;
  v1::Control::Configure* c = r.mutable_control()->mutable_configure();
  c->set_key_prefix("pump/");
  v1::KeyConfig* k = c->mutable_config();
  k->set_tick_value(v1::TICK_VALUE_LOG_RETURN);
  v1::SeriesConfig* s = k->mutable_series();
  s->set_lags(16);
  s->set_horizon(2);
  s->set_missing(v1::MISSING_POLICY_RUNNING_MEAN);
  s->set_anomaly_threshold(std::numeric_limits<double>::infinity());
  v1::ModelConfig* m = s->mutable_model();
  m->set_budget(128);
  m->set_forgetting(0.999);
  m->set_eviction(v1::EVICTION_POLICY_OLDEST);
  v1::KernelConfig* kernel = m->mutable_kernel();
  kernel->set_type(v1::KERNEL_TYPE_NTK);
  kernel->set_activation(v1::ACTIVATION_ERF);
  kernel->set_depth(2);
  kernel->mutable_no_bias();
  kernel->set_parameterization(v1::PARAMETERIZATION_STANDARD);
  kernel->set_width(512);
  return r;
}

v1::Request configure_spec(std::string spec) {
  v1::Request r;
  v1::Control::Configure* c = r.mutable_control()->mutable_configure();
  c->set_key("sensor-1");
  c->mutable_config()->mutable_series()->mutable_model()->mutable_kernel()->set_spec(
      std::move(spec));
  return r;
}

bool write(const std::filesystem::path& dir, const std::string& name, std::uint8_t ctl,
           const std::string& stream) {
  std::ofstream out(dir / name, std::ios::binary);
  out.put(static_cast<char>(ctl));
  out.write(stream.data(), static_cast<std::streamsize>(stream.size()));
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
  const double nan = std::numeric_limits<double>::quiet_NaN();
  bool ok = true;

  // Valid requests of every kind.
  ok &= write(dir, "observation", control(kLimit4MiB, 1),
              frames({observation("x", {1.0, -2.5, 3.25}, 0.5)}));
  ok &= write(dir, "observation_unlabelled", control(kLimit4MiB, 3),
              frames({observation("x", {0.0}, std::nullopt)}));
  ok &= write(dir, "sensor_single", control(kLimit4MiB, 7), frames({sensor("temp", 21.5, {}, {})}));
  ok &= write(dir, "sensor_missing_single", control(kLimit4MiB, 2),
              frames({sensor("temp", std::nullopt, {}, {})}));
  ok &= write(dir, "sensor_multi_missing_channel", control(kLimit4MiB, 4),
              frames({sensor("pump", std::nullopt, {1.0, nan, 3.0}, {1})}));
  ok &= write(dir, "market_tick", control(kLimit4MiB, 16),
              frames({tick("EURUSD", 1.0851, 1e6, 1.0850, 1.0852)}));
  ok &=
      write(dir, "configure_structured", control(kLimit4MiB, 64), frames({configure_structured()}));
  ok &= write(dir, "configure_spec", control(kLimit4MiB, 5),
              frames({configure_spec("rbf:lengthscale=0.5,variance=1")}));
  {
    v1::Request stats, stats_all, snapshot, drop;
    stats.mutable_control()->mutable_stats()->set_key("x");
    stats_all.mutable_control()->mutable_stats()->set_key_prefix("");
    snapshot.mutable_control()->mutable_snapshot();
    drop.mutable_control()->mutable_drop_key()->set_key("x");
    ok &=
        write(dir, "controls", control(kLimit4MiB, 6), frames({stats, stats_all, snapshot, drop}));
  }

  // Well-framed requests that fail validation, one stream.
  {
    v1::Request no_payload;
    no_payload.set_seq(3);
    v1::Request unknown_enum = configure_spec("linear");
    unknown_enum.mutable_control()
        ->mutable_configure()
        ->mutable_config()
        ->mutable_series()
        ->set_missing(static_cast<v1::MissingPolicy>(42));
    v1::Request spec_and_fields = configure_spec("linear");
    spec_and_fields.mutable_control()
        ->mutable_configure()
        ->mutable_config()
        ->mutable_series()
        ->mutable_model()
        ->mutable_kernel()
        ->set_depth(2);
    v1::Request empty_control;
    empty_control.mutable_control();
    ok &= write(dir, "invalid_mix", control(kLimit4MiB, 9),
                frames({observation("x", {nan}, 1.0), observation("", {1.0}, 1.0),
                        observation("x", {}, 1.0), sensor("s", 1.0, {2.0}, {}),
                        sensor("s", std::nullopt, {1.0, 2.0}, {1, 0}),
                        tick("AAPL", 190.0, -1.0, 189.9, 190.1), no_payload, unknown_enum,
                        spec_and_fields, empty_control}));
  }

  // Framing edge cases.
  ok &= write(dir, "empty_frames", control(kLimit4MiB, 1), std::string(3, '\0'));
  ok &= write(dir, "non_minimal_varint", control(kLimit4MiB, 1),
              std::string("\x80\x00", 2) + frames({sensor("a", 1.0, {}, {})}));
  {
    v1::Request r = sensor("abcdefgh", 1.0, {}, {});  // 16 bytes: exactly at the limit 16
    std::string at_limit = frames({r});
    r.mutable_sensor_reading()->set_sensor_id("abcdefghi");  // 17 bytes
    ok &= write(dir, "limit16_boundary", control(kLimit16, 4), at_limit + frames({r}));
  }
  ok &= write(dir, "varint_11_bytes", control(kLimit4MiB, 3),
              std::string(10, '\xff') + std::string("\x01"));
  ok &= write(dir, "varint_overflow", control(kLimit4MiB, 2),
              std::string(9, '\xff') + std::string("\x02"));
  ok &= write(dir, "varint_max_too_large", control(kLimit4MiB, 10),
              std::string(9, '\xff') + std::string("\x01"));
  {
    std::string s = frames({tick("BTC", 65000.0, 0.01, 64999.5, 65000.5)});
    s.pop_back();
    ok &= write(dir, "truncated_body", control(kLimit4MiB, 8), s);
  }
  ok &= write(dir, "truncated_varint", control(kLimit4MiB, 1),
              std::string("\x05\x00\x00\x00\x00\x00\x80", 7));
  ok &= write(dir, "malformed_frame", control(kLimit4MiB, 2),
              std::string("\x05\x0a\xff\xff\xff\xff", 6));
  ok &= write(dir, "invalid_utf8_key", control(kLimit4MiB, 1),
              std::string("\x07\x1a\x05\x0a\x03\xc3\x28\x21", 8));
  ok &= write(dir, "unknown_fields", control(kLimit4MiB, 1),
              std::string("\x04\x08\x01\xf8\x06", 5) + std::string("\x01", 1));
  ok &= write(dir, "udp_datagram", control(kLimit4MiB, 64),
              observation("udp", {1.0, 2.0}, 3.0).SerializeAsString());

  if (!ok) {
    std::fprintf(stderr, "could not write the corpus to %s\n", dir.c_str());
    return 1;
  }
  return 0;
}
