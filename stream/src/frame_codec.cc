// Frame codec: length-delimited framing state machine, encoder, Request validation.
#include "ntk/stream/frame_codec.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/message.h>
#include <google/protobuf/unknown_field_set.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

namespace ntk::stream {

std::string_view to_string(FrameStatus status) {
  switch (status) {
    case FrameStatus::kFrame:
      return "frame";
    case FrameStatus::kNeedMore:
      return "need_more";
    case FrameStatus::kError:
      return "error";
  }
  return "?";
}

std::string_view to_string(FrameError error) {
  switch (error) {
    case FrameError::kNone:
      return "none";
    case FrameError::kBadLengthPrefix:
      return "bad_length_prefix";
    case FrameError::kFrameTooLarge:
      return "frame_too_large";
  }
  return "?";
}

std::string_view to_string(StreamEnd end) {
  switch (end) {
    case StreamEnd::kClean:
      return "clean";
    case StreamEnd::kTruncated:
      return "truncated";
    case StreamEnd::kFailed:
      return "failed";
  }
  return "?";
}

v1::ErrorCode error_code(FrameError error) {
  switch (error) {
    case FrameError::kNone:
      return v1::ERROR_CODE_UNSPECIFIED;
    case FrameError::kBadLengthPrefix:
      return v1::ERROR_CODE_BAD_LENGTH_PREFIX;
    case FrameError::kFrameTooLarge:
      return v1::ERROR_CODE_FRAME_TOO_LARGE;
  }
  return v1::ERROR_CODE_UNSPECIFIED;
}

// ---------------------------------------------------------------------------------------
// FrameDecoder

FrameDecoder::FrameDecoder(std::size_t max_frame_bytes) : max_frame_bytes_(max_frame_bytes) {
  if (max_frame_bytes > kMaxFrameBytesLimit) {
    throw std::invalid_argument(
        "FrameDecoder: max_frame_bytes must be <= " + std::to_string(kMaxFrameBytesLimit) +
        ", got " + std::to_string(max_frame_bytes));
  }
}

void FrameDecoder::feed(std::span<const std::uint8_t> bytes) {
  if (!input_.empty()) {
    throw std::logic_error("FrameDecoder::feed: " + std::to_string(input_.size()) +
                           " bytes of the previous input are unread; call next() until it "
                           "returns need_more or error");
  }
  if (state_ == State::kFailed) return;
  input_ = bytes;
}

void FrameDecoder::start_next_frame() {
  state_ = State::kLength;
  length_ = 0;
  varint_bytes_ = 0;
}

FrameResult FrameDecoder::fail(FrameError error, std::uint64_t length) {
  state_ = State::kFailed;
  error_ = error;
  error_length_ = length;
  input_ = {};
  body_.clear();
  body_.shrink_to_fit();
  FrameResult result;
  result.status = FrameStatus::kError;
  result.error = error;
  result.length = length;
  return result;
}

FrameResult FrameDecoder::next() {
  if (state_ == State::kFailed) {
    FrameResult result;
    result.status = FrameStatus::kError;
    result.error = error_;
    result.length = error_length_;
    return result;
  }
  // The frame returned last lived in body_: the caller is done with it.
  if (frame_in_body_) {
    frame_in_body_ = false;
    if (body_.capacity() > kRetainedBufferBytes) {
      std::vector<std::uint8_t>().swap(body_);
    } else {
      body_.clear();
    }
  }

  if (state_ == State::kLength) {
    // Base-128 varint, least significant group first. Byte k (0-based) contributes bits
    // 7k..7k+6; the tenth byte (k = 9) may only hold bit 63 and must end the varint.
    bool complete = false;
    while (!input_.empty()) {
      const std::uint8_t byte = input_.front();
      input_ = input_.subspan(1);
      const std::uint64_t group = byte & 0x7fu;
      if (varint_bytes_ == kMaxVarintBytes - 1 && (byte & 0x80u || group > 1)) {
        return fail(FrameError::kBadLengthPrefix, 0);
      }
      length_ |= group << (7 * varint_bytes_);
      ++varint_bytes_;
      if ((byte & 0x80u) == 0) {
        complete = true;
        break;
      }
    }
    if (!complete) return FrameResult{};  // the whole input is consumed
    // The limit is checked before a single byte of the body is stored.
    if (length_ > max_frame_bytes_) return fail(FrameError::kFrameTooLarge, length_);
    state_ = State::kBody;
  }

  // state_ == kBody. length_ <= max_frame_bytes_ <= kMaxFrameBytesLimit fits size_t.
  const auto length = static_cast<std::size_t>(length_);
  FrameResult result;
  result.status = FrameStatus::kFrame;
  result.length = length_;
  if (body_.empty() && input_.size() >= length) {
    // The whole frame is in the caller's bytes: a view, no copy.
    result.frame = input_.first(length);
    input_ = input_.subspan(length);
    start_next_frame();
    return result;
  }
  const std::size_t take = std::min(length - body_.size(), input_.size());
  body_.insert(body_.end(), input_.begin(), input_.begin() + static_cast<std::ptrdiff_t>(take));
  input_ = input_.subspan(take);
  if (body_.size() < length) return FrameResult{};  // the whole input is consumed
  result.frame = std::span<const std::uint8_t>(body_.data(), body_.size());
  frame_in_body_ = true;
  start_next_frame();
  return result;
}

StreamEnd FrameDecoder::finish() const {
  if (!input_.empty()) {
    throw std::logic_error("FrameDecoder::finish: " + std::to_string(input_.size()) +
                           " bytes of the input are unread; call next() until it returns "
                           "need_more or error");
  }
  if (state_ == State::kFailed) return StreamEnd::kFailed;
  if (state_ == State::kBody || varint_bytes_ > 0) return StreamEnd::kTruncated;
  return StreamEnd::kClean;
}

void FrameDecoder::reset() {
  start_next_frame();
  std::vector<std::uint8_t>().swap(body_);
  frame_in_body_ = false;
  input_ = {};
  error_ = FrameError::kNone;
  error_length_ = 0;
}

std::size_t FrameDecoder::buffered_bytes() const {
  switch (state_) {
    case State::kLength:
      return varint_bytes_;
    case State::kBody:
      return varint_size(length_) + body_.size();
    case State::kFailed:
      return 0;
  }
  return 0;
}

// ---------------------------------------------------------------------------------------
// Encoder

std::size_t varint_size(std::uint64_t value) {
  std::size_t n = 1;
  while (value >= 0x80u) {
    value >>= 7;
    ++n;
  }
  return n;
}

namespace {

// Writes the frame of message (whose ByteSizeLong() is size) at dst, which has room for
// varint_size(size) + size bytes. The same steps as SerializeDelimitedToCodedStream:
// WriteVarint32(size), then SerializeWithCachedSizesToArray.
void write_frame(const google::protobuf::MessageLite& message, std::size_t size,
                 std::uint8_t* dst) {
  dst = google::protobuf::io::CodedOutputStream::WriteVarint32ToArray(
      static_cast<std::uint32_t>(size), dst);
  message.SerializeWithCachedSizesToArray(dst);
}

std::size_t checked_size(const google::protobuf::MessageLite& message) {
  const std::size_t size = message.ByteSizeLong();
  if (size > kMaxFrameBytesLimit) {
    throw std::invalid_argument("encode_delimited: " + message.GetTypeName() + " of " +
                                std::to_string(size) + " bytes exceeds the " +
                                std::to_string(kMaxFrameBytesLimit) + "-byte limit");
  }
  return size;
}

}  // namespace

std::size_t encode_delimited(const google::protobuf::MessageLite& message, std::string& out) {
  const std::size_t size = checked_size(message);
  const std::size_t total = varint_size(size) + size;
  const std::size_t offset = out.size();
  out.resize(offset + total);
  write_frame(message, size, reinterpret_cast<std::uint8_t*>(out.data() + offset));
  return total;
}

std::size_t encode_delimited(const google::protobuf::MessageLite& message,
                             std::vector<std::uint8_t>& out) {
  const std::size_t size = checked_size(message);
  const std::size_t total = varint_size(size) + size;
  const std::size_t offset = out.size();
  out.resize(offset + total);
  write_frame(message, size, out.data() + offset);
  return total;
}

// ---------------------------------------------------------------------------------------
// Request decoding and validation

namespace {

std::string format_double(double v) {
  std::array<char, 64> buf{};
  const auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  if (ec != std::errc()) return "?";  // cannot happen: 64 chars hold any double
  return std::string(buf.data(), end);
}

std::optional<RequestError> error(v1::ErrorCode code, std::string message) {
  return RequestError{code, std::move(message)};
}

std::optional<RequestError> check_finite(const std::string& field, double v) {
  if (std::isfinite(v)) return std::nullopt;
  return error(v1::ERROR_CODE_NON_FINITE_VALUE, field + " must be finite, got " + format_double(v));
}

// A required key-like string: present (non-empty) and at most kMaxKeyBytes.
std::optional<RequestError> check_key(const std::string& field, const std::string& key) {
  if (key.empty()) return error(v1::ERROR_CODE_MISSING_FIELD, field + " is missing or empty");
  return key.size() <= kMaxKeyBytes
             ? std::nullopt
             : error(v1::ERROR_CODE_INVALID_VALUE, field + " is " + std::to_string(key.size()) +
                                                       " bytes long, at most " +
                                                       std::to_string(kMaxKeyBytes) + " allowed");
}

// Same, for a target that may be empty (a key prefix meaning "every key").
std::optional<RequestError> check_prefix(const std::string& field, const std::string& prefix) {
  return prefix.empty() ? std::nullopt : check_key(field, prefix);
}

std::optional<RequestError> validate(const v1::Observation& o) {
  if (auto e = check_key("observation.key", o.key())) return e;
  if (o.features_size() == 0) {
    return error(v1::ERROR_CODE_MISSING_FIELD, "observation.features is empty");
  }
  if (o.features_size() > kMaxFeatureDim) {
    return error(v1::ERROR_CODE_WRONG_DIMENSION,
                 "observation.features has " + std::to_string(o.features_size()) +
                     " values, at most " + std::to_string(kMaxFeatureDim) + " allowed");
  }
  for (int i = 0; i < o.features_size(); ++i) {
    if (!std::isfinite(o.features(i))) {
      return check_finite("observation.features[" + std::to_string(i) + "]", o.features(i));
    }
  }
  if (o.has_target()) return check_finite("observation.target", o.target());
  return std::nullopt;
}

std::optional<RequestError> validate(const v1::SensorReading& r) {
  if (auto e = check_key("sensor_reading.sensor_id", r.sensor_id())) return e;
  const int channels = r.values_size();
  if (r.has_value() && channels > 0) {
    return error(v1::ERROR_CODE_INVALID_VALUE, "sensor_reading has both value and values (" +
                                                   std::to_string(channels) +
                                                   "); a reading is single- or multi-channel");
  }
  if (channels > kMaxChannels) {
    return error(v1::ERROR_CODE_INVALID_VALUE,
                 "sensor_reading.values has " + std::to_string(channels) + " channels, at most " +
                     std::to_string(kMaxChannels) + " allowed");
  }
  // Each channel is the key "<sensor_id>/<i>": the longest, of the last channel, must be
  // a key a Control can name.
  if (channels > 0) {
    const std::size_t longest = r.sensor_id().size() + 1 + std::to_string(channels - 1).size();
    if (longest > kMaxKeyBytes) {
      return error(v1::ERROR_CODE_INVALID_VALUE,
                   "sensor_reading.sensor_id is " + std::to_string(r.sensor_id().size()) +
                       " bytes long: the key of channel " + std::to_string(channels - 1) +
                       " (\"<sensor_id>/" + std::to_string(channels - 1) + "\") would be " +
                       std::to_string(longest) + " bytes long, at most " +
                       std::to_string(kMaxKeyBytes) + " allowed");
    }
  }
  if (r.missing_channels_size() > 0 && channels == 0) {
    return error(v1::ERROR_CODE_INVALID_VALUE,
                 "sensor_reading.missing_channels is given without values");
  }
  // missing_channels strictly increasing and in range; the placeholders they designate
  // are not checked, every other channel must be finite.
  int m = 0;
  for (int i = 0; i < r.missing_channels_size(); ++i) {
    const std::uint32_t c = r.missing_channels(i);
    const bool increasing = i == 0 || c > r.missing_channels(i - 1);
    if (!increasing || c >= static_cast<std::uint32_t>(channels)) {
      return error(v1::ERROR_CODE_INVALID_VALUE,
                   "sensor_reading.missing_channels[" + std::to_string(i) +
                       "] = " + std::to_string(c) + " must be increasing and below " +
                       std::to_string(channels) + " (the number of values)");
    }
  }
  for (int i = 0; i < channels; ++i) {
    if (m < r.missing_channels_size() && r.missing_channels(m) == static_cast<std::uint32_t>(i)) {
      ++m;
      continue;
    }
    if (!std::isfinite(r.values(i))) {
      return check_finite("sensor_reading.values[" + std::to_string(i) + "]", r.values(i));
    }
  }
  if (r.has_value()) return check_finite("sensor_reading.value", r.value());
  return std::nullopt;
}

std::optional<RequestError> validate(const v1::MarketTick& t) {
  if (auto e = check_key("market_tick.symbol", t.symbol())) return e;
  if (t.has_price()) {
    if (auto e = check_finite("market_tick.price", t.price())) return e;
  }
  if (t.has_size()) {
    if (auto e = check_finite("market_tick.size", t.size())) return e;
    if (t.size() < 0.0) {
      return error(v1::ERROR_CODE_INVALID_VALUE,
                   "market_tick.size must be >= 0, got " + format_double(t.size()));
    }
  }
  if (t.has_bid()) {
    if (auto e = check_finite("market_tick.bid", t.bid())) return e;
  }
  if (t.has_ask()) {
    if (auto e = check_finite("market_tick.ask", t.ask())) return e;
  }
  if (!t.has_price() && !t.has_bid() && !t.has_ask()) {
    return error(v1::ERROR_CODE_MISSING_FIELD, "market_tick has none of price, bid and ask");
  }
  return std::nullopt;
}

// Configuration messages are checked by reflection, so that fields added later are
// covered: every set double is not NaN (infinities are left to the C++ validate(), where
// some are meaningful, e.g. anomaly_threshold = inf), every enum value is one this
// version knows, and a KernelConfig does not mix `spec` with structured fields.
std::optional<RequestError> validate_config(const google::protobuf::Message& message,
                                            const std::string& path) {
  namespace pb = google::protobuf;
  const pb::Reflection* reflection = message.GetReflection();
  std::vector<const pb::FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);  // the set fields, by number

  if (message.GetDescriptor() == v1::KernelConfig::descriptor()) {
    const pb::FieldDescriptor* spec =
        message.GetDescriptor()->FindFieldByNumber(v1::KernelConfig::kSpecFieldNumber);
    if (reflection->HasField(message, spec)) {
      const std::string text = reflection->GetString(message, spec);
      if (text.empty()) return error(v1::ERROR_CODE_BAD_CONFIG, path + ".spec is set but empty");
      for (const pb::FieldDescriptor* f : fields) {
        if (f != spec) {
          return error(v1::ERROR_CODE_BAD_CONFIG,
                       path + ": spec '" + text + "' and " + f->name() +
                           " are both set; give the kernel either as a spec or as fields");
        }
      }
    }
  }

  for (const pb::FieldDescriptor* f : fields) {
    const std::string field_path = path + "." + f->name();
    const int n = f->is_repeated() ? reflection->FieldSize(message, f) : 1;
    for (int i = 0; i < n; ++i) {
      const std::string item_path =
          f->is_repeated() ? field_path + "[" + std::to_string(i) + "]" : field_path;
      switch (f->cpp_type()) {
        case pb::FieldDescriptor::CPPTYPE_DOUBLE: {
          const double v = f->is_repeated() ? reflection->GetRepeatedDouble(message, f, i)
                                            : reflection->GetDouble(message, f);
          if (std::isnan(v)) {
            return error(v1::ERROR_CODE_BAD_CONFIG, item_path + " is nan");
          }
          break;
        }
        case pb::FieldDescriptor::CPPTYPE_FLOAT: {
          const float v = f->is_repeated() ? reflection->GetRepeatedFloat(message, f, i)
                                           : reflection->GetFloat(message, f);
          if (std::isnan(v)) {
            return error(v1::ERROR_CODE_BAD_CONFIG, item_path + " is nan");
          }
          break;
        }
        case pb::FieldDescriptor::CPPTYPE_ENUM: {
          const int v = f->is_repeated() ? reflection->GetRepeatedEnumValue(message, f, i)
                                         : reflection->GetEnumValue(message, f);
          if (f->enum_type()->FindValueByNumber(v) == nullptr) {
            return error(
                v1::ERROR_CODE_BAD_CONFIG,
                item_path + " has the value " + std::to_string(v) + ", unknown to this server");
          }
          break;
        }
        case pb::FieldDescriptor::CPPTYPE_MESSAGE: {
          const pb::Message& sub = f->is_repeated() ? reflection->GetRepeatedMessage(message, f, i)
                                                    : reflection->GetMessage(message, f);
          if (auto e = validate_config(sub, item_path)) return e;
          break;
        }
        default:
          break;
      }
    }
  }
  return std::nullopt;
}

std::optional<RequestError> validate(const v1::Control& c) {
  switch (c.operation_case()) {
    case v1::Control::kConfigure: {
      const v1::Control::Configure& configure = c.configure();
      switch (configure.target_case()) {
        case v1::Control::Configure::kKey:
          if (auto e = check_key("control.configure.key", configure.key())) return e;
          break;
        case v1::Control::Configure::kKeyPrefix:
          if (auto e = check_key("control.configure.key_prefix", configure.key_prefix())) {
            return e;
          }
          break;
        case v1::Control::Configure::TARGET_NOT_SET:
          return error(v1::ERROR_CODE_MISSING_FIELD,
                       "control.configure has no target (key or key_prefix)");
      }
      if (!configure.has_config()) {
        return error(v1::ERROR_CODE_MISSING_FIELD, "control.configure.config is missing");
      }
      return validate_config(configure.config(), "control.configure.config");
    }
    case v1::Control::kStats:
      switch (c.stats().scope_case()) {
        case v1::Control::GetStats::kKey:
          return check_key("control.stats.key", c.stats().key());
        case v1::Control::GetStats::kKeyPrefix:
          return check_prefix("control.stats.key_prefix", c.stats().key_prefix());
        case v1::Control::GetStats::SCOPE_NOT_SET:
          return std::nullopt;
      }
      return std::nullopt;
    case v1::Control::kSnapshot:
      return std::nullopt;
    case v1::Control::kDropKey:
      return check_key("control.drop_key.key", c.drop_key().key());
    case v1::Control::OPERATION_NOT_SET:
      break;
  }
  return error(v1::ERROR_CODE_UNKNOWN_CONTROL,
               c.GetReflection()->GetUnknownFields(c).empty()
                   ? "control has no operation (configure, stats, snapshot or drop_key)"
                   : "control has no operation this server knows (it carries unknown fields)");
}

}  // namespace

std::optional<RequestError> validate_request(const v1::Request& request) {
  if (request.tag().size() > kMaxTagBytes) {
    return error(v1::ERROR_CODE_INVALID_VALUE, "tag is " + std::to_string(request.tag().size()) +
                                                   " bytes long, at most " +
                                                   std::to_string(kMaxTagBytes) + " allowed");
  }
  switch (request.payload_case()) {
    case v1::Request::kObservation:
      return validate(request.observation());
    case v1::Request::kSensorReading:
      return validate(request.sensor_reading());
    case v1::Request::kMarketTick:
      return validate(request.market_tick());
    case v1::Request::kControl:
      return validate(request.control());
    case v1::Request::PAYLOAD_NOT_SET:
      break;
  }
  return error(v1::ERROR_CODE_MISSING_FIELD,
               request.GetReflection()->GetUnknownFields(request).empty()
                   ? "request has no payload (observation, sensor_reading, market_tick or "
                     "control)"
                   : "request has no payload this server knows (it carries unknown fields)");
}

std::optional<RequestError> decode_request(std::span<const std::uint8_t> bytes,
                                           v1::Request& request) {
  // bytes.size() <= INT_MAX is guaranteed by the framing limit; a larger datagram cannot
  // exist. Checked anyway: ParseFromArray takes an int.
  if (bytes.size() > kMaxFrameBytesLimit ||
      !request.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    request.Clear();
    return error(
        v1::ERROR_CODE_MALFORMED_MESSAGE,
        "the " + std::to_string(bytes.size()) + "-byte message is not a valid ntk.v1.Request");
  }
  return validate_request(request);
}

}  // namespace ntk::stream
