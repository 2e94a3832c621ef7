// FrameDecoder, encode_delimited, decode_request / validate_request.
//
// Oracles: protobuf's own delimited-message utilities (SerializeDelimitedToOstream,
// ParseDelimitedFromZeroCopyStream) for the byte format; every split of a stream for the
// state machine; a counting operator new for "the limit is checked before allocating".
#include <doctest/doctest.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/util/delimited_message_util.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "alloc_tracker.h"
#include "ntk/stream/frame_codec.h"

namespace {

namespace v1 = ntk::v1;
using ntk::stream::FrameDecoder;
using ntk::stream::FrameError;
using ntk::stream::FrameResult;
using ntk::stream::FrameStatus;
using ntk::stream::StreamEnd;

std::span<const std::uint8_t> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

std::string str(std::span<const std::uint8_t> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

// Feeds `stream` in the given chunk sizes (the last chunk takes the rest); returns the
// frames and how the stream ended.
struct Decoded {
  std::vector<std::string> frames;
  StreamEnd end = StreamEnd::kClean;
  FrameError error = FrameError::kNone;
};

Decoded decode(const std::string& stream, const std::vector<std::size_t>& cuts,
               std::size_t limit = ntk::stream::kDefaultMaxFrameBytes) {
  Decoded d;
  FrameDecoder decoder(limit);
  std::size_t pos = 0;
  std::vector<std::size_t> bounds = cuts;
  bounds.push_back(stream.size());
  for (const std::size_t end : bounds) {
    const std::size_t e = std::min(end, stream.size());
    if (e < pos) continue;
    decoder.feed(bytes_of(stream).subspan(pos, e - pos));
    pos = e;
    for (;;) {
      const FrameResult r = decoder.next();
      if (r.status == FrameStatus::kNeedMore) break;
      if (r.status == FrameStatus::kError) {
        d.error = r.error;
        break;
      }
      d.frames.push_back(str(r.frame));
    }
  }
  d.end = decoder.finish();
  return d;
}

v1::Request observation(const std::string& key, std::vector<double> x, double y,
                        std::uint64_t seq) {
  v1::Request r;
  r.set_seq(seq);
  r.set_tag("t" + std::to_string(seq));
  v1::Observation* o = r.mutable_observation();
  o->set_key(key);
  o->set_time_unix_nano(1700000000000000000ull + seq);
  for (double v : x) o->add_features(v);
  o->set_target(y);
  return r;
}

// Requests of several sizes: 1-, 2- and 3-byte length varints.
std::vector<v1::Request> sample_requests() {
  std::vector<v1::Request> out;
  out.push_back(observation("a", {1.0}, 2.0, 1));
  v1::Request sensor;
  sensor.mutable_sensor_reading()->set_sensor_id("temp");
  sensor.mutable_sensor_reading()->set_value(21.5);
  out.push_back(sensor);
  out.push_back(v1::Request());  // empty: a 0-length frame
  out.push_back(observation("medium", std::vector<double>(40, 0.25), 1.0, 2));   // ~340 B
  out.push_back(observation("large", std::vector<double>(3000, -1.5), 1.0, 3));  // ~24 KiB
  v1::Request tick;
  tick.set_seq(99);
  tick.mutable_market_tick()->set_symbol("EURUSD");
  tick.mutable_market_tick()->set_bid(1.085);
  tick.mutable_market_tick()->set_ask(1.0852);
  out.push_back(tick);
  return out;
}

}  // namespace

TEST_CASE("encode_delimited is byte-identical to SerializeDelimitedToOstream") {
  std::string ours;
  std::ostringstream theirs;
  for (const v1::Request& r : sample_requests()) {
    std::string one;
    const std::size_t n = ntk::stream::encode_delimited(r, one);
    std::ostringstream reference;
    REQUIRE(google::protobuf::util::SerializeDelimitedToOstream(r, &reference));
    CHECK(one == reference.str());
    CHECK(n == one.size());
    CHECK(n == ntk::stream::varint_size(r.ByteSizeLong()) + r.ByteSizeLong());
    ntk::stream::encode_delimited(r, ours);  // appends
    REQUIRE(google::protobuf::util::SerializeDelimitedToOstream(r, &theirs));
  }
  CHECK(ours == theirs.str());
  std::vector<std::uint8_t> as_vector;
  for (const v1::Request& r : sample_requests()) ntk::stream::encode_delimited(r, as_vector);
  CHECK(std::string(as_vector.begin(), as_vector.end()) == ours);

  // And protobuf's reader reads our stream back, message by message.
  google::protobuf::io::ArrayInputStream in(ours.data(), static_cast<int>(ours.size()));
  for (const v1::Request& r : sample_requests()) {
    v1::Request back;
    bool clean_eof = false;
    REQUIRE(google::protobuf::util::ParseDelimitedFromZeroCopyStream(&back, &in, &clean_eof));
    CHECK(back.SerializeAsString() == r.SerializeAsString());
  }
  v1::Request none;
  bool clean_eof = false;
  CHECK_FALSE(google::protobuf::util::ParseDelimitedFromZeroCopyStream(&none, &in, &clean_eof));
  CHECK(clean_eof);
}

TEST_CASE("varint_size matches the encoding length at every boundary") {
  for (int bits = 0; bits <= 64; ++bits) {
    for (const std::int64_t delta : {-1, 0}) {
      const std::uint64_t v =
          bits == 64
              ? std::numeric_limits<std::uint64_t>::max()
              : (bits == 0 ? 0 : (std::uint64_t{1} << bits) + static_cast<std::uint64_t>(delta));
      const std::size_t expected =
          v == 0 ? 1 : (64 - static_cast<std::size_t>(__builtin_clzll(v)) + 6) / 7;
      CHECK(ntk::stream::varint_size(v) == expected);
    }
  }
}

TEST_CASE("FrameDecoder yields the same frames for every split of the stream") {
  std::string stream;
  std::vector<std::string> expected;
  for (const v1::Request& r : sample_requests()) {
    ntk::stream::encode_delimited(r, stream);
    expected.push_back(r.SerializeAsString());
  }
  SUBCASE("whole") {
    const Decoded d = decode(stream, {});
    CHECK(d.frames == expected);
    CHECK(d.end == StreamEnd::kClean);
  }
  SUBCASE("every single cut") {
    for (std::size_t cut = 0; cut <= stream.size(); cut += (cut < 600 ? 1 : 97)) {
      const Decoded d = decode(stream, {cut});
      REQUIRE(d.frames == expected);
      REQUIRE(d.end == StreamEnd::kClean);
    }
  }
  SUBCASE("byte by byte") {
    std::vector<std::size_t> cuts;
    for (std::size_t i = 1; i < stream.size(); ++i) cuts.push_back(i);
    const Decoded d = decode(stream, cuts);
    CHECK(d.frames == expected);
    CHECK(d.end == StreamEnd::kClean);
  }
}

TEST_CASE("a frame inside one feed is a view of the fed bytes (no copy)") {
  std::string stream;
  ntk::stream::encode_delimited(observation("k", {1.0, 2.0}, 3.0, 7), stream);
  FrameDecoder decoder;
  decoder.feed(bytes_of(stream));
  const FrameResult r = decoder.next();
  REQUIRE(r.status == FrameStatus::kFrame);
  CHECK(reinterpret_cast<const char*>(r.frame.data()) == stream.data() + 1);
  CHECK(r.length == stream.size() - 1);
  CHECK(decoder.next().status == FrameStatus::kNeedMore);
}

TEST_CASE("clean end of stream differs from a truncated frame") {
  std::string stream;
  ntk::stream::encode_delimited(observation("k", std::vector<double>(30, 1.0), 3.0, 7), stream);
  REQUIRE(stream.size() > 200);  // two-byte varint
  CHECK(decode(stream, {}).end == StreamEnd::kClean);
  CHECK(decode("", {}).end == StreamEnd::kClean);
  // Every strict prefix is truncated: inside the varint (1 byte of 2) or inside the body.
  for (std::size_t n = 1; n < stream.size(); ++n) {
    const Decoded d = decode(stream.substr(0, n), {n / 2});
    REQUIRE(d.frames.empty());
    REQUIRE(d.end == StreamEnd::kTruncated);
  }
  // A complete frame followed by the first byte of the next.
  const Decoded d = decode(stream + stream.substr(0, 1), {});
  CHECK(d.frames.size() == 1);
  CHECK(d.end == StreamEnd::kTruncated);
  // A zero-length frame is a frame, not an end.
  const Decoded zero = decode(std::string(1, '\0'), {});
  CHECK(zero.frames == std::vector<std::string>{""});
  CHECK(zero.end == StreamEnd::kClean);
}

TEST_CASE("the size limit is checked before any allocation") {
  constexpr std::size_t kLimit = ntk::stream::kDefaultMaxFrameBytes;  // 4 MiB
  SUBCASE("announced above the limit: an error from the varint alone") {
    std::string prefix;
    for (std::uint64_t v = kLimit + 1; v >= 0x80; v >>= 7) {
      prefix.push_back(static_cast<char>((v & 0x7f) | 0x80));
    }
    prefix.push_back(static_cast<char>((kLimit + 1) >> (7 * prefix.size())));
    FrameDecoder decoder(kLimit);
    ntk::test::AllocationTracker tracker;
    decoder.feed(bytes_of(prefix));
    const FrameResult r = decoder.next();
    const std::size_t largest = tracker.largest();
    REQUIRE(r.status == FrameStatus::kError);
    CHECK(r.error == FrameError::kFrameTooLarge);
    CHECK(r.length == kLimit + 1);
    CHECK(ntk::stream::error_code(r.error) == v1::ERROR_CODE_FRAME_TOO_LARGE);
    CHECK(largest < 1024);
    CHECK(decoder.finish() == StreamEnd::kFailed);
    // The stream is dead: later bytes are ignored, the error repeats.
    const std::string more(100, 'x');
    decoder.feed(bytes_of(more));
    CHECK(decoder.next().error == FrameError::kFrameTooLarge);
  }
  SUBCASE("announced at the limit: the buffer grows with the bytes received") {
    std::string stream;
    for (std::uint64_t v = kLimit; v >= 0x80; v >>= 7) {
      stream.push_back(static_cast<char>((v & 0x7f) | 0x80));
    }
    stream.push_back(static_cast<char>(kLimit >> (7 * stream.size())));
    const std::size_t varint = stream.size();
    stream += std::string(10, 'a');
    FrameDecoder decoder(kLimit);
    ntk::test::AllocationTracker tracker;
    decoder.feed(bytes_of(stream));
    const FrameResult r = decoder.next();
    const std::size_t largest = tracker.largest();
    CHECK(r.status == FrameStatus::kNeedMore);
    CHECK(decoder.buffered_bytes() == varint + 10);
    CHECK(largest < 1024);
    CHECK(decoder.finish() == StreamEnd::kTruncated);
  }
  SUBCASE("limit 16: 16 bytes pass, 17 do not") {
    const Decoded ok = decode(std::string(1, '\x10') + std::string(16, 'x'), {}, 16);
    CHECK(ok.frames.size() == 1);
    const Decoded too_large = decode(std::string(1, '\x11') + std::string(17, 'x'), {}, 16);
    CHECK(too_large.frames.empty());
    CHECK(too_large.error == FrameError::kFrameTooLarge);
    CHECK(too_large.end == StreamEnd::kFailed);
  }
  CHECK_THROWS_AS(FrameDecoder(ntk::stream::kMaxFrameBytesLimit + 1), std::invalid_argument);
}

TEST_CASE("bad length varints") {
  // 10 bytes with the continuation bit: an 11th would be needed.
  const Decoded eleven = decode(std::string(10, '\xff') + "\x01", {3});
  CHECK(eleven.error == FrameError::kBadLengthPrefix);
  CHECK(eleven.end == StreamEnd::kFailed);
  CHECK(ntk::stream::error_code(FrameError::kBadLengthPrefix) == v1::ERROR_CODE_BAD_LENGTH_PREFIX);
  // The tenth byte may only carry bit 63.
  const Decoded overflow = decode(std::string(9, '\xff') + "\x02", {});
  CHECK(overflow.error == FrameError::kBadLengthPrefix);
  // 2^64 - 1 is a valid varint, but above any limit.
  const Decoded max = decode(std::string(9, '\xff') + "\x01", {});
  CHECK(max.error == FrameError::kFrameTooLarge);
  // Non-minimal encodings are accepted, as protobuf accepts them: 0x80 0x00 is 0.
  const Decoded non_minimal = decode(std::string("\x80\x00", 2), {1});
  CHECK(non_minimal.frames == std::vector<std::string>{""});
  CHECK(non_minimal.end == StreamEnd::kClean);
}

TEST_CASE("feed() before the input is consumed is a logic error; reset() recovers") {
  std::string stream;
  ntk::stream::encode_delimited(observation("k", {1.0}, 3.0, 1), stream);
  stream += stream;
  FrameDecoder decoder;
  decoder.feed(bytes_of(stream));
  REQUIRE(decoder.next().status == FrameStatus::kFrame);
  CHECK_THROWS_AS(decoder.feed(bytes_of(stream)), std::logic_error);
  CHECK_THROWS_AS(static_cast<void>(decoder.finish()), std::logic_error);
  decoder.reset();
  CHECK(decoder.finish() == StreamEnd::kClean);
  const std::string bad(11, '\xff');
  decoder.feed(bytes_of(bad));
  CHECK(decoder.next().status == FrameStatus::kError);
  decoder.reset();
  decoder.feed(bytes_of(stream));
  CHECK(decoder.next().status == FrameStatus::kFrame);
  CHECK(decoder.next().status == FrameStatus::kFrame);
  CHECK(decoder.next().status == FrameStatus::kNeedMore);
}

// ---------------------------------------------------------------------------------------
// Request decoding and validation: every rule, with its exact code.

namespace {

v1::ErrorCode code_of(const v1::Request& r) {
  const std::string bytes = r.SerializeAsString();
  v1::Request parsed;
  const auto e = ntk::stream::decode_request(bytes_of(bytes), parsed);
  if (!e) return v1::ERROR_CODE_UNSPECIFIED;
  CHECK_FALSE(e->message.empty());
  return e->code;
}

}  // namespace

TEST_CASE("decode_request: malformed bytes") {
  v1::Request r;
  const std::string garbage("\x0a\xff\xff\xff\xff", 5);  // field 1 as a length > the data
  const auto e = ntk::stream::decode_request(bytes_of(garbage), r);
  REQUIRE(e);
  CHECK(e->code == v1::ERROR_CODE_MALFORMED_MESSAGE);
  CHECK(r.ByteSizeLong() == 0);
  // Invalid UTF-8 in a string field (proto3 strings are UTF-8).
  v1::Request bad_utf8;
  bad_utf8.mutable_observation()->set_key("ok");
  bad_utf8.mutable_observation()->add_features(1.0);
  std::string bytes = bad_utf8.SerializeAsString();
  const std::size_t at = bytes.find("ok");
  REQUIRE(at != std::string::npos);
  bytes[at] = '\xc3';
  bytes[at + 1] = '\x28';
  const auto e2 = ntk::stream::decode_request(bytes_of(bytes), r);
  REQUIRE(e2);
  CHECK(e2->code == v1::ERROR_CODE_MALFORMED_MESSAGE);
}

TEST_CASE("validate_request: every rule with its code") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const v1::Request good = observation("k", {1.0, 2.0}, 3.0, 1);
  CHECK(code_of(good) == v1::ERROR_CODE_UNSPECIFIED);

  v1::Request r = good;
  r.set_tag(std::string(257, 't'));
  CHECK(code_of(r) == v1::ERROR_CODE_INVALID_VALUE);
  r.set_tag(std::string(256, 't'));
  CHECK(code_of(r) == v1::ERROR_CODE_UNSPECIFIED);

  CHECK(code_of(v1::Request()) == v1::ERROR_CODE_MISSING_FIELD);

  SUBCASE("observation") {
    r = good;
    r.mutable_observation()->clear_key();
    CHECK(code_of(r) == v1::ERROR_CODE_MISSING_FIELD);
    r.mutable_observation()->set_key(std::string(257, 'k'));
    CHECK(code_of(r) == v1::ERROR_CODE_INVALID_VALUE);
    r = good;
    r.mutable_observation()->clear_features();
    CHECK(code_of(r) == v1::ERROR_CODE_MISSING_FIELD);
    for (int i = 0; i < 4097; ++i) r.mutable_observation()->add_features(0.5);
    CHECK(code_of(r) == v1::ERROR_CODE_WRONG_DIMENSION);
    r.mutable_observation()->mutable_features()->RemoveLast();
    CHECK(code_of(r) == v1::ERROR_CODE_UNSPECIFIED);
    r = good;
    r.mutable_observation()->set_features(1, nan);
    CHECK(code_of(r) == v1::ERROR_CODE_NON_FINITE_VALUE);
    r = good;
    r.mutable_observation()->set_target(-inf);
    CHECK(code_of(r) == v1::ERROR_CODE_NON_FINITE_VALUE);
    r.mutable_observation()->clear_target();
    CHECK(code_of(r) == v1::ERROR_CODE_UNSPECIFIED);  // unlabelled
  }
  SUBCASE("sensor reading") {
    v1::Request s;
    v1::SensorReading* sr = s.mutable_sensor_reading();
    CHECK(code_of(s) == v1::ERROR_CODE_MISSING_FIELD);  // no sensor_id
    sr->set_sensor_id("p");
    CHECK(code_of(s) == v1::ERROR_CODE_UNSPECIFIED);  // a missing single value
    sr->set_value(nan);
    CHECK(code_of(s) == v1::ERROR_CODE_NON_FINITE_VALUE);
    sr->set_value(1.0);
    sr->add_values(2.0);
    CHECK(code_of(s) == v1::ERROR_CODE_INVALID_VALUE);  // both
    sr->clear_value();
    sr->add_values(inf);
    CHECK(code_of(s) == v1::ERROR_CODE_NON_FINITE_VALUE);
    sr->add_missing_channels(1);  // the infinite one is a placeholder now
    CHECK(code_of(s) == v1::ERROR_CODE_UNSPECIFIED);
    sr->add_missing_channels(1);  // not strictly increasing
    CHECK(code_of(s) == v1::ERROR_CODE_INVALID_VALUE);
    sr->clear_missing_channels();
    sr->add_missing_channels(2);  // out of range
    CHECK(code_of(s) == v1::ERROR_CODE_INVALID_VALUE);
    sr->clear_missing_channels();
    sr->clear_values();
    sr->add_missing_channels(0);  // without values
    CHECK(code_of(s) == v1::ERROR_CODE_INVALID_VALUE);
    sr->clear_missing_channels();
    for (int i = 0; i < 257; ++i) sr->add_values(1.0);
    CHECK(code_of(s) == v1::ERROR_CODE_INVALID_VALUE);
    // The channel keys "<sensor_id>/<i>" are keys too: at most 256 bytes.
    sr->clear_values();
    sr->set_sensor_id(std::string(254, 's'));
    for (int i = 0; i < 10; ++i) sr->add_values(1.0);  // "/9": 256 bytes
    CHECK(code_of(s) == v1::ERROR_CODE_UNSPECIFIED);
    sr->add_values(1.0);  // "/10": 257 bytes
    CHECK(code_of(s) == v1::ERROR_CODE_INVALID_VALUE);
    sr->clear_values();
    sr->set_sensor_id(std::string(256, 's'));
    sr->set_value(1.0);  // a single value's key is the sensor_id itself
    CHECK(code_of(s) == v1::ERROR_CODE_UNSPECIFIED);
    sr->clear_value();
    sr->add_values(1.0);
    CHECK(code_of(s) == v1::ERROR_CODE_INVALID_VALUE);
  }
  SUBCASE("market tick") {
    v1::Request t;
    v1::MarketTick* mt = t.mutable_market_tick();
    mt->set_symbol("X");
    CHECK(code_of(t) == v1::ERROR_CODE_MISSING_FIELD);  // no price, bid or ask
    mt->set_bid(1.0);
    CHECK(code_of(t) == v1::ERROR_CODE_UNSPECIFIED);
    mt->set_size(-1.0);
    CHECK(code_of(t) == v1::ERROR_CODE_INVALID_VALUE);
    mt->set_size(2.0);
    mt->set_ask(nan);
    CHECK(code_of(t) == v1::ERROR_CODE_NON_FINITE_VALUE);
    mt->clear_ask();
    mt->clear_symbol();
    CHECK(code_of(t) == v1::ERROR_CODE_MISSING_FIELD);
  }
  SUBCASE("control") {
    v1::Request c;
    c.mutable_control();
    CHECK(code_of(c) == v1::ERROR_CODE_UNKNOWN_CONTROL);
    v1::Control::Configure* cfg = c.mutable_control()->mutable_configure();
    CHECK(code_of(c) == v1::ERROR_CODE_MISSING_FIELD);  // no target
    cfg->set_key("k");
    CHECK(code_of(c) == v1::ERROR_CODE_MISSING_FIELD);  // no config
    cfg->mutable_config()->mutable_series()->set_lags(4);
    CHECK(code_of(c) == v1::ERROR_CODE_UNSPECIFIED);
    cfg->mutable_config()->mutable_series()->set_anomaly_threshold(nan);
    CHECK(code_of(c) == v1::ERROR_CODE_BAD_CONFIG);
    cfg->mutable_config()->mutable_series()->clear_anomaly_threshold();
    cfg->mutable_config()->mutable_series()->set_missing(static_cast<v1::MissingPolicy>(42));
    CHECK(code_of(c) == v1::ERROR_CODE_BAD_CONFIG);
    cfg->mutable_config()->mutable_series()->clear_missing();
    v1::KernelConfig* k =
        cfg->mutable_config()->mutable_series()->mutable_model()->mutable_kernel();
    k->set_spec("linear");
    k->set_depth(2);
    CHECK(code_of(c) == v1::ERROR_CODE_BAD_CONFIG);
    k->clear_depth();
    CHECK(code_of(c) == v1::ERROR_CODE_UNSPECIFIED);
    cfg->set_key_prefix("");
    CHECK(code_of(c) == v1::ERROR_CODE_MISSING_FIELD);
    cfg->set_key_prefix(std::string(257, 'p'));
    CHECK(code_of(c) == v1::ERROR_CODE_INVALID_VALUE);

    v1::Request st;
    st.mutable_control()->mutable_stats();
    CHECK(code_of(st) == v1::ERROR_CODE_UNSPECIFIED);
    st.mutable_control()->mutable_stats()->set_key_prefix("");
    CHECK(code_of(st) == v1::ERROR_CODE_UNSPECIFIED);  // every key
    st.mutable_control()->mutable_stats()->set_key("");
    CHECK(code_of(st) == v1::ERROR_CODE_MISSING_FIELD);
    v1::Request drop;
    drop.mutable_control()->mutable_drop_key();
    CHECK(code_of(drop) == v1::ERROR_CODE_MISSING_FIELD);
    drop.mutable_control()->mutable_drop_key()->set_key(std::string(300, 'd'));
    CHECK(code_of(drop) == v1::ERROR_CODE_INVALID_VALUE);
    v1::Request snap;
    snap.mutable_control()->mutable_snapshot();
    CHECK(code_of(snap) == v1::ERROR_CODE_UNSPECIFIED);
  }
}

TEST_CASE("validate_request: Control targets longer than kMaxKeyBytes are INVALID_VALUE") {
  // Every Control target is a key or a key prefix: at most 256 bytes, each checked.
  v1::Request st;
  st.mutable_control()->mutable_stats()->set_key_prefix(std::string(256, 'p'));
  CHECK(code_of(st) == v1::ERROR_CODE_UNSPECIFIED);
  st.mutable_control()->mutable_stats()->set_key_prefix(std::string(257, 'p'));
  CHECK(code_of(st) == v1::ERROR_CODE_INVALID_VALUE);
  st.mutable_control()->mutable_stats()->set_key(std::string(256, 'k'));
  CHECK(code_of(st) == v1::ERROR_CODE_UNSPECIFIED);
  st.mutable_control()->mutable_stats()->set_key(std::string(257, 'k'));
  CHECK(code_of(st) == v1::ERROR_CODE_INVALID_VALUE);
  v1::Request cfg;
  cfg.mutable_control()->mutable_configure()->set_key(std::string(257, 'k'));
  cfg.mutable_control()->mutable_configure()->mutable_config()->mutable_series()->set_lags(4);
  CHECK(code_of(cfg) == v1::ERROR_CODE_INVALID_VALUE);
  cfg.mutable_control()->mutable_configure()->set_key(std::string(256, 'k'));
  CHECK(code_of(cfg) == v1::ERROR_CODE_UNSPECIFIED);
}
