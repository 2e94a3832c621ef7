// Conversions between the ntk.v1 protobuf messages (proto/ntk/v1/config.proto, state.proto)
// and the C++ structs of core/ they mirror field by field.
//
// CONFIGS
//   A protobuf config says only what it changes: every scalar has explicit presence, enums
//   use *_UNSPECIFIED = 0 for "not given" (config.proto). to_*() resolves a message onto
//   a base C++ struct: set fields replace, unset ones keep the base. A set `kernel`
//   replaces the base kernel as a whole. to_proto() goes the other way and sets every
//   field (a "resolved" config), the kernel in its structured form.
//   merge_key_config() merges two protobuf configs the same way, without resolving.
//
// STATES
//   to_proto(SeriesState) / from_proto(v1::SeriesState) are exact (doubles are copied
//   bit for bit); Matrix messages are row-major whatever the Eigen storage order.
//
// ERRORS
//   Every from-protobuf function throws std::invalid_argument naming the offending field
//   (its protobuf path) and value: unknown enum values, a kernel with both `spec` and
//   structured fields, a bad spec, a Matrix whose values do not match rows x cols, and
//   (resolve_key_config, to_series_config) anything the C++ validate() refuses.
#pragma once

#include <optional>

#include "ntk/core/kernel_spec.h"
#include "ntk/core/model.h"
#include "ntk/core/series.h"
#include "ntk/v1/config.pb.h"
#include "ntk/v1/state.pb.h"

namespace ntk::stream {

// Kernels. The spec form parses with KernelSpec::parse; the structured form resolves onto
// KernelSpec{} (not validated: ModelConfig::validate does it).
KernelSpec to_kernel_spec(const v1::KernelConfig& config);
v1::KernelConfig to_proto(const KernelSpec& spec);

ModelConfig to_model_config(const v1::ModelConfig& config, const ModelConfig& base);
v1::ModelConfig to_proto(const ModelConfig& config);

// Resolves onto `base` (default: SeriesConfig{}, whose model is
// default_series_model_config()) and validates the result.
SeriesConfig to_series_config(const v1::SeriesConfig& config, const SeriesConfig& base = {});
v1::SeriesConfig to_proto(const SeriesConfig& config);

// What a stream key runs with: its series front end and, for MarketTick keys, which
// number of a tick the stream receives.
struct KeySettings {
  SeriesConfig series;
  v1::TickValue tick_value = v1::TICK_VALUE_MID_OR_LAST;
  friend bool operator==(const KeySettings&, const KeySettings&) = default;
};

// base := base merged with overlay (protobuf MergeFrom, except that a kernel set in
// overlay replaces base's kernel as a whole).
void merge_key_config(v1::KeyConfig& base, const v1::KeyConfig& overlay);
// Resolves onto the C++ defaults and validates.
KeySettings resolve_key_config(const v1::KeyConfig& config);
v1::KeyConfig to_proto(const KeySettings& settings);

// States, counters and scores.
v1::SeriesState to_proto(const SeriesState& state);
SeriesState from_proto(const v1::SeriesState& state);
v1::ModelState to_proto(const ModelState& state);
ModelState from_proto(const v1::ModelState& state);
v1::SeriesCounters to_proto(const SeriesCounters& counters);
SeriesCounters from_proto(const v1::SeriesCounters& counters);
v1::PrequentialScore to_proto(const PrequentialScore& score);
PrequentialScore from_proto(const v1::PrequentialScore& score);
v1::ModelCounters to_proto(const ModelCounters& counters);

// Sums of counters (v1::ModelCounters, v1::SeriesCounters), every uint64 field: a += b,
// and a -= b at 0 at least. requires: a and b of the same message type.
void add_counts(google::protobuf::Message& a, const google::protobuf::Message& b);
void subtract_counts(google::protobuf::Message& a, const google::protobuf::Message& b);

}  // namespace ntk::stream
