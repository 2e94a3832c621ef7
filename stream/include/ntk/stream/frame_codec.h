// Frame codec: protobuf's length-delimited framing without sockets, and the decoding and
// wire-level validation of one ntk.v1.Request.
//
// WIRE FORMAT (TCP)
//   frame := varint(n) byte[n]
//   The varint is protobuf's base-128 unsigned integer, least significant group first,
//   at most 10 bytes; a frame holds one serialized message. This is the form written by
//   C++ google::protobuf::util::SerializeDelimitedToOstream and Java writeDelimitedTo.
//   UDP datagrams carry one serialized Request each, without the varint.
//
// ERRORS
//   A length varint longer than 10 bytes or above 2^64 - 1 (kBadLengthPrefix), and a
//   length above the decoder's limit (kFrameTooLarge), make the rest of the stream
//   unreadable: the decoder stops and the connection is to be answered with a final
//   Error and closed. A frame that is well delimited but is not a valid Request is
//   decode_request's business: an Error for that request, and the stream goes on.
//
// Byte buffers are std::span<const std::uint8_t> (the type protobuf's coded streams use);
// asio::buffer / std::string data convert with a reinterpret_cast of the pointer.
#pragma once

#include <google/protobuf/message_lite.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ntk/v1/request.pb.h"
#include "ntk/v1/response.pb.h"

namespace ntk::stream {

// Default largest frame (message bytes, without the varint): 4 MiB.
inline constexpr std::size_t kDefaultMaxFrameBytes = std::size_t{4} << 20;
// Largest limit a decoder accepts: protobuf cannot parse or serialize 2 GiB or more.
inline constexpr std::size_t kMaxFrameBytesLimit = 0x7fffffff;
// A varint of a 64-bit value never needs more than 10 bytes.
inline constexpr std::size_t kMaxVarintBytes = 10;

enum class FrameStatus {
  kFrame,     // a complete frame: FrameResult::frame holds its message bytes
  kNeedMore,  // every fed byte is consumed; feed more
  kError,     // framing violation: the stream cannot be resynchronized
};

enum class FrameError {
  kNone,
  kBadLengthPrefix,  // varint longer than 10 bytes, or its value above 2^64 - 1
  kFrameTooLarge,    // announced length above max_frame_bytes()
};

std::string_view to_string(FrameStatus);
std::string_view to_string(FrameError);
// The wire code of a framing error (ERROR_CODE_BAD_LENGTH_PREFIX, _FRAME_TOO_LARGE;
// ERROR_CODE_UNSPECIFIED for kNone).
v1::ErrorCode error_code(FrameError);

struct FrameResult {
  FrameStatus status = FrameStatus::kNeedMore;
  // kFrame: the message bytes (without the length prefix); may be empty (a 0-length
  // frame is a valid, empty message). Valid until the next call to feed(), next(),
  // reset() or the destruction of the decoder, and, when it points into the caller's
  // fed bytes, as long as those bytes are.
  std::span<const std::uint8_t> frame;
  FrameError error = FrameError::kNone;  // kError: which violation
  // kFrame: frame.size(). kError with kFrameTooLarge: the announced length.
  std::uint64_t length = 0;
};

// How a byte stream ended, as seen by the decoder.
enum class StreamEnd {
  kClean,      // at a frame boundary: nothing of a next frame was received
  kTruncated,  // inside a frame: part of a length varint or of a message body is pending
  kFailed,     // a framing error already happened (next() returned kError)
};
std::string_view to_string(StreamEnd);

// FrameDecoder
//
// WHAT THIS OBJECT REPRESENTS
//   The reading side of one length-delimited byte stream (one TCP connection): bytes go
//   in with feed() in chunks of any size, complete frames come out of next(), in order.
//   It is the framing state machine of the session, without sockets, so that every
//   split of the stream can be tested.
//
//   Usage (one read buffer reused for every read):
//     decoder.feed(bytes_read);
//     for (;;) {
//       FrameResult r = decoder.next();
//       if (r.status == FrameStatus::kNeedMore) break;          // read again
//       if (r.status == FrameStatus::kError) { /* final Error, close */ }
//       handle(r.frame);                                         // decode_request(...)
//     }
//     ... at end of stream: decoder.finish() == StreamEnd::kClean or not.
//
//   Zero copy: a frame that lies entirely inside the bytes of the current feed() is
//   returned as a view of those bytes. Only a frame that straddles two feeds is copied,
//   into an internal buffer, and only the part of it received so far.
//
//   Memory: the length limit is checked as soon as the varint is complete, before any
//   byte of the body is buffered; the internal buffer then grows with the bytes actually
//   received (a peer that announces 4 MiB and sends 10 bytes costs 10 bytes), so it never
//   exceeds max_frame_bytes() + kMaxVarintBytes. A buffer that grew beyond
//   kRetainedBufferBytes is released once its frame has been consumed, so an idle
//   connection holds little.
//
//   Accepted varints are those of protobuf's parser, including non-minimal encodings
//   (0x80 0x00 is 0); rejected are those that protobuf's 64-bit parser also rejects
//   (11 or more bytes) and 10-byte ones whose last byte carries bits above 2^63.
//
// INITIAL VALUE: no bytes seen; finish() == kClean.
// THREAD SAFETY: none; one decoder per stream, used by one thread (or strand) at a time.
class FrameDecoder {
 public:
  // A buffer larger than this is released after its frame has been consumed.
  static constexpr std::size_t kRetainedBufferBytes = std::size_t{64} << 10;

  // requires: max_frame_bytes <= kMaxFrameBytesLimit (std::invalid_argument otherwise).
  // 0 allows only empty frames.
  explicit FrameDecoder(std::size_t max_frame_bytes = kDefaultMaxFrameBytes);

  // Makes bytes the decoder's input. The decoder reads them in place: they must stay
  // valid and unchanged until next() has returned kNeedMore or kError.
  // requires: the previous input is consumed: next() returned kNeedMore or kError since
  //   the last feed() (std::logic_error otherwise; nothing changes).
  // ensures: after a framing error the bytes are ignored (the stream is dead).
  void feed(std::span<const std::uint8_t> bytes);

  // The next complete frame, or kNeedMore once every fed byte is consumed (then a
  // partial frame, if any, is held internally), or kError. Once kError has been returned
  // every later call returns the same error until reset().
  FrameResult next();

  // Where the stream stands if it ends now (the peer closed the connection).
  // requires: the input is consumed (as for feed(); std::logic_error otherwise).
  StreamEnd finish() const;

  // Back to the initial value (the limit is kept); releases the internal buffer. Any
  // fed bytes not yet consumed are forgotten.
  void reset();

  std::size_t max_frame_bytes() const { return max_frame_bytes_; }
  // Bytes of an incomplete frame held internally (length varint and body so far).
  std::size_t buffered_bytes() const;

 private:
  enum class State { kLength, kBody, kFailed };

  FrameResult fail(FrameError error, std::uint64_t length);
  void start_next_frame();

  // CONVENTION
  //   state_ == kLength: varint_bytes_ (< kMaxVarintBytes) bytes of the length varint
  //     were consumed, their value is length_; body_ is empty.
  //   state_ == kBody: length_ <= max_frame_bytes_ is the announced length and
  //     body_.size() < length_ of its bytes are in body_ (a straddling frame); the
  //     frame is returned from input_ directly when body_ is empty and input_ holds all
  //     of it.
  //   state_ == kFailed: error_ and error_length_ describe the violation.
  //   input_ is the unread part of the last feed(); frame_in_body_ says that the frame
  //   returned last lives in body_ (released at the next call).
  std::size_t max_frame_bytes_;
  State state_ = State::kLength;
  std::uint64_t length_ = 0;
  std::size_t varint_bytes_ = 0;
  std::vector<std::uint8_t> body_;
  bool frame_in_body_ = false;
  std::span<const std::uint8_t> input_;
  FrameError error_ = FrameError::kNone;
  std::uint64_t error_length_ = 0;
};

// Number of bytes of the varint encoding of value (1 to 10).
std::size_t varint_size(std::uint64_t value);

// Appends the length-delimited form of message to out: varint(message.ByteSizeLong())
// followed by the serialized message, byte-identical to
// google::protobuf::util::SerializeDelimitedToOstream. Returns the number of bytes
// appended.
// requires: message.ByteSizeLong() <= kMaxFrameBytesLimit (std::invalid_argument
//   otherwise; out is unchanged).
// THREAD SAFETY: like protobuf serialization, it updates the message's cached sizes: no
//   concurrent encode of the same message.
std::size_t encode_delimited(const google::protobuf::MessageLite& message, std::string& out);
std::size_t encode_delimited(const google::protobuf::MessageLite& message,
                             std::vector<std::uint8_t>& out);

// Wire-level limits of a Request (documented in proto/ntk/v1/request.proto).
inline constexpr std::size_t kMaxKeyBytes = 256;  // key, sensor_id, symbol, Control targets
inline constexpr std::size_t kMaxTagBytes = 256;
inline constexpr int kMaxFeatureDim = 4096;  // Observation.features
inline constexpr int kMaxChannels = 256;     // SensorReading.values

// Why a Request was refused: a stable code for the Error response and a message naming
// the offending field (its path in the Request, e.g. "observation.features[3]") and value.
struct RequestError {
  v1::ErrorCode code = v1::ERROR_CODE_UNSPECIFIED;
  std::string message;
  friend bool operator==(const RequestError&, const RequestError&) = default;
};

// Parses one frame (or UDP datagram) as a Request and validates it (validate_request).
// ensures: returns nullopt and request holds the message; or returns
//   ERROR_CODE_MALFORMED_MESSAGE and request is cleared (the bytes do not parse: bad
//   wire format, invalid UTF-8 in a string, more than 100 levels of nesting); or returns
//   validate_request's error and request holds the parsed message, so that the Error
//   response can echo its seq and tag.
// Reusing one Request across calls reuses its allocations.
std::optional<RequestError> decode_request(std::span<const std::uint8_t> bytes,
                                           v1::Request& request);

// The checks that need no server state, in this order (first failure reported):
//   tag longer than kMaxTagBytes                                       INVALID_VALUE
//   no payload (also: a payload kind this version does not know)      MISSING_FIELD
//   Observation: empty key                                             MISSING_FIELD
//                key longer than kMaxKeyBytes                          INVALID_VALUE
//                no features                                           MISSING_FIELD
//                more than kMaxFeatureDim features                     WRONG_DIMENSION
//                non-finite feature or target                          NON_FINITE_VALUE
//   SensorReading: empty / too long sensor_id                          MISSING_FIELD /
//   INVALID_VALUE
//                both value and values; more than kMaxChannels values;
//                a channel key "<sensor_id>/<i>" longer than kMaxKeyBytes;
//                missing_channels without values, not strictly increasing, or out of
//                range                                                 INVALID_VALUE
//                non-finite value, or non-finite values[i] for a channel not listed
//                in missing_channels (their placeholders are not checked) NON_FINITE_VALUE
//   MarketTick:  empty / too long symbol                               MISSING_FIELD /
//   INVALID_VALUE
//                non-finite price, size, bid or ask                    NON_FINITE_VALUE
//                negative size                                         INVALID_VALUE
//                none of price, bid, ask                               MISSING_FIELD
//   Control:     no operation this version knows                       UNKNOWN_CONTROL
//                configure: no target, empty key / key_prefix          MISSING_FIELD
//                           target longer than kMaxKeyBytes            INVALID_VALUE
//                           no config                                  MISSING_FIELD
//                           config: an enum value this version does not know, a NaN,
//                           a kernel with both `spec` and structured fields BAD_CONFIG
//                stats: empty key (an empty key_prefix means all keys) MISSING_FIELD
//                drop_key: empty key                                   MISSING_FIELD
//                targets longer than kMaxKeyBytes                      INVALID_VALUE
// Semantic checks of a configuration (ranges, the kernel spec's grammar, combinations)
// are those of the C++ validate() functions, applied when the config is converted to
// ntk::SeriesConfig; they are not repeated here.
std::optional<RequestError> validate_request(const v1::Request& request);

}  // namespace ntk::stream
