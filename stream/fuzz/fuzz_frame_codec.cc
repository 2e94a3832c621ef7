// Fuzz target: FrameDecoder, encode_delimited and decode_request.
//
// Input: one control byte, then a byte stream as a TCP peer would send it.
//   control bits 0-5: feed the stream in chunks of (bits + 1) bytes;
//   control bits 6-7: frame limit 4 MiB, 1024, 16 or 0 bytes.
// Properties checked (a violation aborts, which libFuzzer and the replay report):
//   1. framing agrees with a reference parser built on protobuf's own varint reader
//      (frames, their bytes, and how the stream ends), whether the stream is fed whole
//      or in chunks;
//   2. every frame decodes to a Request or to an error with a known code; a parsed
//      Request re-serializes stably, survives encode_delimited -> FrameDecoder, and
//      validates the same way after the round trip;
//   3. the whole stream, taken as a UDP datagram, decodes consistently with protobuf's
//      parser.
// Built with a libFuzzer main (NTK_BUILD_FUZZ) and with replay_main.cc, which replays
// the seed corpus (make_seed_corpus.cc) under ctest.
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/stubs/logging.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ntk/stream/frame_codec.h"

namespace {

using ntk::stream::FrameDecoder;
using ntk::stream::FrameError;
using ntk::stream::FrameStatus;
using ntk::stream::StreamEnd;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_frame_codec: property violated: %s\n", what);
    std::abort();
  }
}

// What a byte stream turned into: its frames and how it ended.
struct Trace {
  std::vector<std::string> frames;
  StreamEnd end = StreamEnd::kClean;
  FrameError error = FrameError::kNone;
  std::uint64_t error_length = 0;
  bool operator==(const Trace&) const = default;
};

// Reference framing: the whole stream at once, varints read by protobuf's
// CodedInputStream::ReadVarint64, plus the rule protobuf does not enforce (the tenth
// byte of a varint may only hold bit 63).
Trace reference_frames(std::span<const std::uint8_t> bytes, std::size_t limit) {
  Trace trace;
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    const std::span<const std::uint8_t> rest = bytes.subspan(pos);
    google::protobuf::io::CodedInputStream in(rest.data(), static_cast<int>(rest.size()));
    std::uint64_t length = 0;
    if (!in.ReadVarint64(&length)) {
      // Fails on 10 bytes all with the continuation bit, or on a truncated varint.
      if (rest.size() >= ntk::stream::kMaxVarintBytes) {
        trace.end = StreamEnd::kFailed;
        trace.error = FrameError::kBadLengthPrefix;
      } else {
        trace.end = StreamEnd::kTruncated;
      }
      return trace;
    }
    const auto varint_bytes = static_cast<std::size_t>(in.CurrentPosition());
    if (varint_bytes == ntk::stream::kMaxVarintBytes && rest[9] > 1) {
      trace.end = StreamEnd::kFailed;
      trace.error = FrameError::kBadLengthPrefix;
      return trace;
    }
    if (length > limit) {
      trace.end = StreamEnd::kFailed;
      trace.error = FrameError::kFrameTooLarge;
      trace.error_length = length;
      return trace;
    }
    if (rest.size() - varint_bytes < length) {
      trace.end = StreamEnd::kTruncated;
      return trace;
    }
    trace.frames.emplace_back(reinterpret_cast<const char*>(rest.data() + varint_bytes),
                              static_cast<std::size_t>(length));
    pos += varint_bytes + static_cast<std::size_t>(length);
  }
  return trace;
}

Trace decoder_frames(std::span<const std::uint8_t> bytes, std::size_t limit, std::size_t chunk) {
  Trace trace;
  FrameDecoder decoder(limit);
  std::size_t pos = 0;
  bool failed = false;
  do {
    const std::size_t n = std::min(chunk, bytes.size() - pos);
    decoder.feed(bytes.subspan(pos, n));
    pos += n;
    for (;;) {
      const ntk::stream::FrameResult r = decoder.next();
      if (r.status == FrameStatus::kNeedMore) break;
      if (r.status == FrameStatus::kError) {
        trace.error = r.error;
        trace.error_length = r.error == FrameError::kFrameTooLarge ? r.length : 0;
        failed = true;
        break;
      }
      check(r.length == r.frame.size(), "FrameResult::length == frame.size()");
      check(r.frame.size() <= limit, "frame within the limit");
      trace.frames.emplace_back(reinterpret_cast<const char*>(r.frame.data()), r.frame.size());
    }
    check(decoder.buffered_bytes() <= limit + ntk::stream::kMaxVarintBytes,
          "buffer bounded by the limit");
  } while (!failed && pos < bytes.size());
  trace.end = decoder.finish();
  check((trace.end == StreamEnd::kFailed) == failed, "finish() reports the failure");
  return trace;
}

void check_request(std::span<const std::uint8_t> bytes) {
  ntk::v1::Request request;
  const std::optional<ntk::stream::RequestError> error =
      ntk::stream::decode_request(bytes, request);
  ntk::v1::Request plain;
  const bool parses = plain.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
  if (!parses) {
    check(error && error->code == ntk::v1::ERROR_CODE_MALFORMED_MESSAGE,
          "unparseable bytes are MALFORMED_MESSAGE");
    check(request.ByteSizeLong() == 0, "request cleared after a parse failure");
    return;
  }
  if (error) {
    check(error->code != ntk::v1::ERROR_CODE_UNSPECIFIED &&
              error->code != ntk::v1::ERROR_CODE_MALFORMED_MESSAGE &&
              ntk::v1::ErrorCode_IsValid(error->code) && !error->message.empty(),
          "a validation error has a specific code and a message");
  }
  // Stable re-serialization, and the delimited round trip.
  const std::string once = request.SerializeAsString();
  check(once == plain.SerializeAsString(), "decode_request parses like ParseFromArray");
  std::string framed;
  const std::size_t n = ntk::stream::encode_delimited(request, framed);
  check(n == framed.size() && n == ntk::stream::varint_size(once.size()) + once.size(),
        "encode_delimited size");
  FrameDecoder decoder(once.size());
  decoder.feed(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(framed.data()),
                                             framed.size()));
  const ntk::stream::FrameResult r = decoder.next();
  check(r.status == FrameStatus::kFrame, "re-encoded request is one frame");
  check(std::string(reinterpret_cast<const char*>(r.frame.data()), r.frame.size()) == once,
        "re-encoded frame holds the serialization");
  check(decoder.next().status == FrameStatus::kNeedMore && decoder.finish() == StreamEnd::kClean,
        "re-encoded frame ends cleanly");
  ntk::v1::Request again;
  const std::optional<ntk::stream::RequestError> error_again =
      ntk::stream::decode_request(r.frame, again);
  check(error_again == error, "validation is a function of the message");
  check(again.SerializeAsString() == once, "serialization is stable");
}

struct QuietProtobufLogs {
  // Invalid UTF-8 in a string field makes protobuf log an error before failing the
  // parse; the fuzzer produces it constantly.
  QuietProtobufLogs() { google::protobuf::SetLogHandler(nullptr); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const QuietProtobufLogs quiet;
  if (size == 0) return 0;
  constexpr std::array<std::size_t, 4> kLimits = {ntk::stream::kDefaultMaxFrameBytes, 1024, 16, 0};
  const std::size_t chunk = (data[0] & 0x3fu) + 1;
  const std::size_t limit = kLimits[data[0] >> 6];
  const std::span<const std::uint8_t> stream(data + 1, size - 1);

  const Trace reference = reference_frames(stream, limit);
  const Trace whole = decoder_frames(stream, limit, stream.size() + 1);
  const Trace chunked = decoder_frames(stream, limit, chunk);
  check(whole == reference, "decoder (whole input) agrees with the reference framing");
  check(chunked == reference, "decoder (chunked input) agrees with the reference framing");

  for (const std::string& frame : reference.frames) {
    check_request(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(frame.data()),
                                                frame.size()));
  }
  check_request(stream);  // the same bytes as a UDP datagram
  return 0;
}
