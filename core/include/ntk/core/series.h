// SeriesPredictor: one stream key's predictor — lag embedding, online scaling, bad and
// missing values, sequence numbers, prequential scoring and anomaly flags around an
// OnlineGP.
//
// WHAT THIS OBJECT REPRESENTS
//   The front end that turns one scalar stream y_0, y_1, ... (one sensor, one symbol, one
//   channel of a multi-value reading: each channel is its own stream) into regression
//   samples for a fixed-budget online GP, and scores every prediction it makes against
//   the truth when the truth arrives (prequential evaluation, A. P. Dawid, "Present
//   position and potential developments: some personal views: statistical theory: the
//   prequential approach", JRSS A 147(2), 1984).
//
//   Lag embedding (horizon h >= 1, p lags): the sample for target y_t is
//     x_t = (y_{t-h}, y_{t-h-1}, ..., y_{t-h-p+1})  [+ one elapsed-time feature],
//   standardized as (y - mean) / sd with the running (Welford) mean and standard deviation
//   of the values seen so far — the statistics as they were when the sample is formed,
//   for inputs and target alike. With target kChange the regression target is the change
//   y_t - y_{t-h} (the prior mean is persistence); with kLevel it is y_t (the prior mean is
//   the running mean). Predictions are reported in the original units.
//
//   Horizon: the forecast for y_t is made when y_{t-h} is the newest value (for h == 1 at
//   the arrival of y_t, which is the same model state), held until y_t arrives and then
//   scored; the model learns (x_t, y_t) at that point.
//
//   Elapsed-time feature (irregular sampling): with dt the time from the newest lag to the
//   target and dbar the running mean interval between consecutive values, the feature is
//   log((1 + dt / (h dbar)) / 2): 0 on a regular grid, about log(gap) across a gap. For
//   h == 1 dt is the actual arrival time; for h > 1 the forecast is issued assuming
//   dt = h dbar (feature 0) and the model learns with the actual dt. A time before the
//   newest value's (a clock stepping back, or an unset time, 0) counts as the newest
//   value's time, a step of 0 s (SeriesCounters::time_reversals); while the values have
//   come without a time (0 from the first one on), steps from them are unknown: left out
//   of dbar, and dt = h dbar.
//
//   Bad and missing values (NaN, infinite, absent, or beyond 1e150 in magnitude):
//   MissingPolicy decides; either way nothing is scored and nothing is learned from the
//   slot. A value more than 1e150 standard deviations from the scaler's mean (e.g. 1e145
//   after values that varied by 1e-10) is scored and judged, but never learned: the model
//   takes no larger target. In feature mode such a feature component, or one beyond
//   1e150, is a missing component. A sample whose input the kernel overflows on (k(x, x)
//   not finite, OnlineGP::update) is judged but not learned. Sequence numbers (optional):
//   a value whose seq equals the last accepted one is a duplicate, one below it is out of
//   order; both are dropped and counted. A jump above last + 1 is a gap: counted, the
//   value is processed normally.
//
//   Anomaly: z = (y - mean) / sd with mean and sd of the predictive distribution of y;
//   |z| > anomaly_threshold flags the observation. With exclude_anomalies a flagged value
//   is kept out of the model entirely: it is not learned, does not enter the scaler, and
//   the lags receive the predicted mean in its place (so the next predictions do not see
//   the fault either). At most max_excluded_run consecutive flagged values are excluded,
//   so that a lasting change of regime is learned instead of being rejected forever.
//
//   Noise-ratio race: the noise-to-signal ratio that forecasts best differs by orders of
//   magnitude between streams (about 1e-1 for sensor and market data, 1e-3 and below for
//   noise-free dynamics) and cannot be known before the stream is seen. With
//   noise_candidates, one model per candidate ratio learns every sample, and forecasts
//   come from the leader: the candidate with the smallest sum of squared forecast errors
//   (original units) so far. After kRaceMinSamples learned samples, a candidate whose
//   sum exceeds selection_margin times the leader's is dropped; once selection_samples
//   samples have been learned only the leader remains. This is prequential model
//   selection (Dawid, below) restricted to one hyperparameter; while several candidates
//   race, each learned sample costs one model update per candidate.
//
//   Feature mode (the protobuf Observation path): constructed with an explicit feature
//   dimension, the predictor takes (x, optional y) per call instead of a scalar stream;
//   each feature component and the target get their own running scaler; everything else
//   (sequence numbers, missing values, scoring, anomalies, state) is shared. lags,
//   horizon, time_feature and target are not used in that mode.
//
// INITIAL VALUE: nothing seen; every noise candidate racing, the first one leading; observations
// are "warming up" until warmup values (with a
//   nonzero spread) have been seen and p + h - 1 lags are available.
// THREAD SAFETY: const methods may run concurrently; observe*() needs exclusive access
//   (the daemon keeps one predictor per key on one strand).
// COST: observe() is O(M^2 + M d) per racing candidate and, for h == 1 with exclude_anomalies off,
// allocates
//   nothing once warmed up; otherwise the forecast is computed by OnlineGP::predict,
//   which allocates O(M) scratch.
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "ntk/core/model.h"

namespace ntk {

// What a NaN, infinite or absent value turns into. Nothing is scored or learned from
// the slot under any policy; the policies differ in what the lags see afterwards.
enum class MissingPolicy {
  // Drop the observation: the stream continues as if it had not been sent.
  kSkip,
  // Repeat the last value in the lags (a time slot is kept; suits sensors that hold).
  kHoldLast,
  // Put the running mean in the lags (a time slot is kept; suits noisy stationary data).
  kRunningMean,
};
std::string_view to_string(MissingPolicy);
// Parses "skip", "hold" (or "hold_last"), "mean" (or "running_mean");
// std::invalid_argument otherwise.
MissingPolicy parse_missing_policy(std::string_view text);

// What the model regresses on the lags.
enum class SeriesTarget {
  // y_t itself (standardized); far from the data the prediction reverts to the mean.
  kLevel,
  // y_t - y_{t-h}; far from the data the prediction reverts to persistence.
  kChange,
};
std::string_view to_string(SeriesTarget);
// Parses "level" or "change"; std::invalid_argument otherwise.
SeriesTarget parse_series_target(std::string_view text);

// The model configuration SeriesConfig starts from: ModelConfig's defaults, unchanged (the
// default NTK and budget; the noise ratio is raced, SeriesConfig::noise_candidates).
// ACCURACY.md shows how they fare on the shipped series.
ModelConfig default_series_model_config();

struct SeriesConfig {
  int lags = 8;                                 // p, in [1, kMaxLags]
  int horizon = 1;                              // h, in [1, kMaxHorizon]
  bool time_feature = false;                    // add the elapsed-time feature
  SeriesTarget target = SeriesTarget::kChange;  // what the model regresses
  MissingPolicy missing = MissingPolicy::kHoldLast;
  int warmup = 20;                 // values before the first prediction, >= 2
  double anomaly_threshold = 4.0;  // |z| above this flags, > 0 (inf: never)
  bool exclude_anomalies = false;  // keep flagged values out of the model
  int max_excluded_run = 3;        // consecutive exclusions at most, >= 0
  ModelConfig model = default_series_model_config();
  // Noise ratios raced per stream (see above), each finite and > 0, no duplicates, at most
  // kMaxNoiseCandidates; they replace model.noise_variance. Ties go to the earlier one, so
  // the first is the leader until errors separate them. Empty: model.noise_variance alone.
  std::vector<double> noise_candidates = {1e-2, 1e-1, 1e-3, 1e-4};
  int selection_samples = 2000;   // learned samples after which only the leader stays, >= 1
  double selection_margin = 1.5;  // drop a candidate this many times worse, > 1 (inf: never)

  static constexpr int kMaxLags = 4096;
  static constexpr int kMaxHorizon = 4096;
  static constexpr int kMaxNoiseCandidates = 16;
  // Learned samples before a candidate may be dropped by selection_margin.
  static constexpr int kRaceMinSamples = 100;
  // The kernel must give a finite k(x, x) for an input this many standard deviations out
  // in every component (lags + time feature, or the feature dimension); see validate().
  static constexpr double kKernelProbe = 10.0;

  // Throws std::invalid_argument naming the first offending field and value. Model fields
  // are checked by ModelConfig::validate() and read "model: <field> ...";
  // model.noise_variance must be valid even when noise_candidates replace it. Kernel
  // parameters so extreme that k(x, x) overflows at the probe input (kKernelProbe in every
  // component) are refused: the model could learn nothing from standardized data. Here
  // with one component; SeriesPredictor's constructors probe the stream's dimension.
  void validate() const;
  friend bool operator==(const SeriesConfig&, const SeriesConfig&) = default;
};

// Prequential scores: every prediction scored once, when its truth arrived. Units are
// those of the series (NLPD in nats for the density in those units).
struct PrequentialScore {
  std::uint64_t n = 0;
  double sum_squared_error = 0.0;
  double sum_absolute_error = 0.0;
  double sum_nlpd = 0.0;      // sum of -log N(truth; mean, sd^2)
  std::uint64_t covered = 0;  // truth inside mean +- 1.959964 sd

  // requires: sd > 0 or NaN. A non-finite forecast (near the 1e150 limit, or from a model
  // whose state overflowed and started over at its next update) makes the sums it enters
  // non-finite, as its error is.
  void add(double truth, double mean, double sd);
  // NaN when n == 0.
  double mse() const;
  double mae() const;
  double nlpd() const;
  double coverage95() const;
  // Pools two score sets (per stream -> overall).
  PrequentialScore& operator+=(const PrequentialScore& other);
  friend bool operator==(const PrequentialScore&, const PrequentialScore&) = default;
};

// Running mean and variance (B. P. Welford, Technometrics 4(3), 1962).
struct RunningMoments {
  std::uint64_t n = 0;
  double mean = 0.0;
  double m2 = 0.0;  // sum of squared deviations from the mean

  void add(double v);
  // Sample standard deviation sqrt(m2 / (n - 1)); 0 when n < 2.
  double sd() const;
  friend bool operator==(const RunningMoments&, const RunningMoments&) = default;
};

struct SeriesCounters {
  std::uint64_t observations = 0;  // observe*() calls
  std::uint64_t accepted = 0;      // finite values taken into the stream
  std::uint64_t missing = 0;       // NaN, infinite or absent values
  std::uint64_t imputed = 0;       // missing values replaced by the policy
  std::uint64_t duplicates = 0;    // dropped: seq equal to the last accepted
  std::uint64_t out_of_order = 0;  // dropped: seq below the last accepted
  std::uint64_t gaps = 0;          // seq jumps above last + 1
  std::uint64_t skipped_seq = 0;   // sequence numbers missing inside those jumps
  std::uint64_t warming_up = 0;    // accepted values with no prediction to score
  std::uint64_t scored = 0;        // predictions scored (== score().n)
  std::uint64_t anomalies = 0;     // flagged observations
  std::uint64_t excluded = 0;      // flagged values kept out of the model
  std::uint64_t updates = 0;       // samples the model learned
  // Scalar streams: values whose time is before the newest slot's (a clock stepping back,
  // or an unset time, 0); each is taken as a step of 0 s.
  std::uint64_t time_reversals = 0;
  friend bool operator==(const SeriesCounters&, const SeriesCounters&) = default;
};

enum class OutcomeStatus {
  kScored,      // a prediction made before the value was seen was scored against it
  kWarmingUp,   // value accepted; no prediction for it yet (warm-up, lags filling)
  kMissing,     // NaN, infinite, absent or |value| > 1e150: handled by the MissingPolicy
  kUnlabelled,  // feature mode without a target: prediction only
  kDuplicate,   // seq equal to the last accepted one: dropped
  kOutOfOrder,  // seq below the last accepted one: dropped
};
std::string_view to_string(OutcomeStatus);

// What one observation produced. Fields that do not apply are NaN / false.
struct Outcome {
  OutcomeStatus status = OutcomeStatus::kWarmingUp;
  double value = 0.0;  // the value as given (NaN when missing)
  // The value the lags received instead of the given one: the policy's value for a
  // missing one, the predicted mean for an excluded anomaly (NaN when none, e.g. kSkip).
  double imputed = 0.0;
  bool has_prediction = false;  // kScored always; kUnlabelled when warmed up
  double mean = 0.0;            // predictive mean, original units
  double sd = 0.0;              // predictive standard deviation of y, original units
  double z = 0.0;               // (value - mean) / sd when scored
  bool anomaly = false;         // |z| > anomaly_threshold
  bool excluded = false;        // the anomaly was kept out of the model
  bool learned = false;         // the model learned a sample at this observation
  std::uint64_t gap = 0;        // sequence numbers skipped just before this one
};

// One forecast waiting for its truth (horizon > 1), in original units.
struct PendingForecast {
  std::uint64_t target_index = 0;  // index of the value it predicts (accepted slots)
  double mean = 0.0;
  double sd = 0.0;
  friend bool operator==(const PendingForecast&, const PendingForecast&) = default;
};

// Everything that defines a SeriesPredictor, as plain data (snapshots). Scratch buffers
// are not part of it.
// A candidate model still racing the leader (SeriesConfig::noise_candidates).
struct RivalState {
  ModelState model;
  double sse = 0.0;  // sum of its squared forecast errors, original units
};

struct SeriesState {
  SeriesConfig config;
  int feature_dim = 0;                          // 0: scalar-stream mode
  RunningMoments scaler;                        // of the values (the target in feature mode)
  RunningMoments interval;                      // of the time steps, seconds
  std::vector<RunningMoments> feature_scalers;  // feature mode: one per component
  std::vector<double> last_features;            // feature mode: last finite value per component
  std::vector<double> lag_values;               // oldest first, at most lags + horizon - 1
  std::vector<std::uint64_t> lag_times;         // time_unix_nano of each lag value
  std::uint64_t slots = 0;                      // values and imputed values taken so far
  std::uint64_t last_time = 0;                  // time of the newest slot (valid when slots > 0)
  std::vector<PendingForecast> pending;         // oldest first
  std::optional<std::uint64_t> last_seq;
  int excluded_run = 0;
  SeriesCounters counters;
  PrequentialScore score;
  ModelState model;                // the leader (the only model when nothing races)
  double leader_sse = 0.0;         // its sum of squared forecast errors while racing
  std::vector<RivalState> rivals;  // racing candidates, in race order
};

class SeriesPredictor {
 public:
  // Scalar-stream mode. requires: config.validate() passes (std::invalid_argument).
  explicit SeriesPredictor(const SeriesConfig& config);
  // Feature mode with feature_dim >= 1 inputs per observation.
  SeriesPredictor(const SeriesConfig& config, int feature_dim);
  ~SeriesPredictor();
  SeriesPredictor(const SeriesPredictor&);
  SeriesPredictor& operator=(const SeriesPredictor&);
  SeriesPredictor(SeriesPredictor&&) noexcept;
  SeriesPredictor& operator=(SeriesPredictor&&) noexcept;

  // One value of the stream (scalar-stream mode; std::logic_error in feature mode).
  // seq: the sender's sequence number, if it has one. value: NaN (or any non-finite
  // value) means missing.
  // ensures: returns what happened; counters() and score() account for it.
  Outcome observe(std::optional<std::uint64_t> seq, std::uint64_t time_unix_nano, double value);

  // One explicit sample (feature mode; std::logic_error in scalar-stream mode).
  // requires: x.size() == feature_dim() (std::invalid_argument otherwise; nothing
  // changes). Non-finite components are missing (MissingPolicy per component; kSkip
  // drops the observation). y absent: prediction only (kUnlabelled); y non-finite:
  // counted missing, prediction only.
  Outcome observe(std::optional<std::uint64_t> seq, std::uint64_t time_unix_nano,
                  Eigen::Ref<const Eigen::VectorXd> x, std::optional<double> y);

  // The current forecast of the value h steps after the newest one (for feature mode:
  // not available), as observe() would score it if nothing else arrived first;
  // nullopt while warming up. Allocates.
  std::optional<Prediction> forecast() const;

  const SeriesConfig& config() const;
  int feature_dim() const;  // 0 in scalar-stream mode
  int input_dim() const;    // dimension of the model's inputs
  const SeriesCounters& counters() const;
  const PrequentialScore& score() const;
  // The model forecasts come from: the leader of the noise-ratio race.
  const OnlineGP& model() const;
  // Candidates still racing, the leader included (1 when nothing races).
  int racing() const;

  // Heap bytes a predictor of this config holds at its most, while every noise candidate
  // races: OnlineGP::memory_bytes per candidate plus the series' own buffers (O(lags +
  // horizon + feature_dim)). For memory limits before constructing one. feature_dim 0:
  // scalar-stream mode. requires: config.validate() passes, feature_dim >= 0
  // (std::invalid_argument otherwise).
  static std::size_t memory_bytes(const SeriesConfig& config, int feature_dim = 0);
  // What this predictor holds now: less once the race has dropped candidates (racing()).
  std::size_t memory_bytes() const;

  SeriesState export_state() const;
  // Validates the state (shapes, finiteness, consistency with the config) and throws
  // std::invalid_argument naming the offending field otherwise.
  // ensures: the result behaves exactly like the exported predictor (identical outcomes
  // for identical subsequent observations).
  static SeriesPredictor import_state(const SeriesState& state);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ntk
