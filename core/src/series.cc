// SeriesPredictor: lag embedding, scaling, missing values, sequence numbers, prequential
// scoring and anomalies around an OnlineGP. See series.h for the definitions.
//
// CONVENTION (the state; p = lags, h = horizon, cap = p + h - 1)
//   ring_values/ring_times   the newest min(slots, cap) slot values and their times, a
//                            circular buffer; back(0) is the newest slot, back(k) k older
//   slots                    values and imputed values taken so far; the next value that
//                            is taken gets index `slots`
//   scaler                   Welford moments of the values the model may learn from
//                            (every accepted value except excluded anomalies)
//   pending                  forecasts of slots [slots, slots + h) (h > 1 only), FIFO,
//                            ordered by target index
//   excluded_run             consecutive flagged values so far (capped at
//                            max_excluded_run while they are being excluded)
// A sample is standardized with the scaler as it is when the sample is formed, inputs and
// target alike; the scaler absorbs the value afterwards.
#include "ntk/core/series.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

#include "ntk/core/kernel.h"

namespace ntk {

using Eigen::Index;
using Eigen::VectorXd;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// Two-sided 95% quantile of the standard normal distribution.
constexpr double kZ95 = 1.959963984540054;
// log(2 pi) / 2.
constexpr double kHalfLog2Pi = 0.91893853320467274178;

std::string num(double v) {
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

[[noreturn]] void invalid(const std::string& what) {
  throw std::invalid_argument("series: " + what);
}

// The kernel must be finite on ordinary standardized inputs, or the model would refuse
// every sample (OnlineGP::update takes no x with k(x, x) not finite) and the stream would
// answer prior forecasts forever: extreme parameters (w_std 1e200, a polynomial of degree
// 10^6) are refused here, with the probe they failed on. The probe is an input
// SeriesConfig::kKernelProbe standard deviations out in every component; inputs beyond
// it are rare enough to be judged and not learned one by one. k(x, x) at the probe does
// not fall as the dimension grows (the NTK's does not change: its input kernel is
// x.x'/d), so dimension 1 is the check valid for every stream.
void check_kernel_range(const KernelSpec& spec, int dim) {
  const VectorXd probe = VectorXd::Constant(dim, SeriesConfig::kKernelProbe);
  const double k = (*make_kernel(spec))(probe);
  if (!std::isfinite(k)) {
    invalid("kernel " + spec.to_string() + " overflows (k(x, x) = " +
            (std::isnan(k) ? std::string("NaN") : num(k)) + ") on an input of " +
            std::to_string(dim) + " component(s), each " + num(SeriesConfig::kKernelProbe) +
            " standard deviations out: the model could learn nothing; lower its scale (w_std, "
            "variance, gamma, coef0) or its degree");
  }
}

double seconds_between(std::uint64_t from, std::uint64_t to) {
  return to > from ? static_cast<double>(to - from) * 1e-9 : 0.0;
}

}  // namespace

std::string_view to_string(MissingPolicy p) {
  switch (p) {
    case MissingPolicy::kSkip:
      return "skip";
    case MissingPolicy::kHoldLast:
      return "hold";
    case MissingPolicy::kRunningMean:
      return "mean";
  }
  return "unknown";
}

MissingPolicy parse_missing_policy(std::string_view text) {
  if (text == "skip") return MissingPolicy::kSkip;
  if (text == "hold" || text == "hold_last") return MissingPolicy::kHoldLast;
  if (text == "mean" || text == "running_mean") return MissingPolicy::kRunningMean;
  invalid("missing policy must be skip, hold or mean, got '" + std::string(text) + "'");
}

std::string_view to_string(SeriesTarget t) {
  switch (t) {
    case SeriesTarget::kLevel:
      return "level";
    case SeriesTarget::kChange:
      return "change";
  }
  return "unknown";
}

SeriesTarget parse_series_target(std::string_view text) {
  if (text == "level") return SeriesTarget::kLevel;
  if (text == "change") return SeriesTarget::kChange;
  invalid("target must be level or change, got '" + std::string(text) + "'");
}

std::string_view to_string(OutcomeStatus s) {
  switch (s) {
    case OutcomeStatus::kScored:
      return "scored";
    case OutcomeStatus::kWarmingUp:
      return "warming_up";
    case OutcomeStatus::kMissing:
      return "missing";
    case OutcomeStatus::kUnlabelled:
      return "unlabelled";
    case OutcomeStatus::kDuplicate:
      return "duplicate";
    case OutcomeStatus::kOutOfOrder:
      return "out_of_order";
  }
  return "unknown";
}

ModelConfig default_series_model_config() {
  ModelConfig c;
  return c;
}

void SeriesConfig::validate() const {
  if (lags < 1 || lags > kMaxLags) {
    invalid("lags must be in [1, " + std::to_string(kMaxLags) + "], got " + std::to_string(lags));
  }
  if (horizon < 1 || horizon > kMaxHorizon) {
    invalid("horizon must be in [1, " + std::to_string(kMaxHorizon) + "], got " +
            std::to_string(horizon));
  }
  switch (missing) {
    case MissingPolicy::kSkip:
    case MissingPolicy::kHoldLast:
    case MissingPolicy::kRunningMean:
      break;
    default:
      invalid("missing policy has the invalid value " + std::to_string(static_cast<int>(missing)));
  }
  switch (target) {
    case SeriesTarget::kLevel:
    case SeriesTarget::kChange:
      break;
    default:
      invalid("target has the invalid value " + std::to_string(static_cast<int>(target)));
  }
  if (warmup < 2) invalid("warmup must be >= 2, got " + std::to_string(warmup));
  if (!(anomaly_threshold > 0.0)) {
    invalid("anomaly_threshold must be > 0, got " + num(anomaly_threshold));
  }
  if (max_excluded_run < 0) {
    invalid("max_excluded_run must be >= 0, got " + std::to_string(max_excluded_run));
  }
  model.validate();
  if (noise_candidates.size() > static_cast<std::size_t>(kMaxNoiseCandidates)) {
    invalid("noise_candidates has " + std::to_string(noise_candidates.size()) +
            " entries, at most " + std::to_string(kMaxNoiseCandidates) + " allowed");
  }
  for (std::size_t i = 0; i < noise_candidates.size(); ++i) {
    const double r = noise_candidates[i];
    if (!(r > 0.0) || !std::isfinite(r)) {
      invalid("noise_candidates must be finite and > 0, got " + num(r));
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (noise_candidates[j] == r) invalid("noise_candidates lists " + num(r) + " twice");
    }
  }
  if (selection_samples < 1) {
    invalid("selection_samples must be >= 1, got " + std::to_string(selection_samples));
  }
  if (!(selection_margin > 1.0)) {
    invalid("selection_margin must be > 1, got " + num(selection_margin));
  }
  // The stream's input dimension is not known here (lags and time feature, or the
  // features of an Observation key): dimension 1 here, the real one in the constructor.
  check_kernel_range(model.kernel, 1);
}

namespace {

// The model of one noise candidate: config.model with its noise ratio.
ModelConfig candidate_config(const SeriesConfig& c, double noise) {
  ModelConfig m = c.model;
  m.noise_variance = noise;
  return m;
}

std::vector<OnlineGP> make_models(const SeriesConfig& c, int dim) {
  std::vector<OnlineGP> models;
  if (c.noise_candidates.empty()) {
    models.emplace_back(c.model, dim);
    return models;
  }
  models.reserve(c.noise_candidates.size());
  for (const double r : c.noise_candidates) models.emplace_back(candidate_config(c, r), dim);
  return models;
}

}  // namespace

// --- PrequentialScore, RunningMoments ---------------------------------------------------

void PrequentialScore::add(double truth, double mean, double sd) {
  const double e = truth - mean;
  const double u = e / sd;
  ++n;
  sum_squared_error += e * e;
  sum_absolute_error += std::abs(e);
  sum_nlpd += kHalfLog2Pi + std::log(sd) + 0.5 * u * u;
  if (std::abs(u) <= kZ95) ++covered;
}

double PrequentialScore::mse() const {
  return n ? sum_squared_error / static_cast<double>(n) : kNaN;
}
double PrequentialScore::mae() const {
  return n ? sum_absolute_error / static_cast<double>(n) : kNaN;
}
double PrequentialScore::nlpd() const { return n ? sum_nlpd / static_cast<double>(n) : kNaN; }
double PrequentialScore::coverage95() const {
  return n ? static_cast<double>(covered) / static_cast<double>(n) : kNaN;
}

PrequentialScore& PrequentialScore::operator+=(const PrequentialScore& o) {
  n += o.n;
  sum_squared_error += o.sum_squared_error;
  sum_absolute_error += o.sum_absolute_error;
  sum_nlpd += o.sum_nlpd;
  covered += o.covered;
  return *this;
}

void RunningMoments::add(double v) {
  ++n;
  const double d = v - mean;
  mean += d / static_cast<double>(n);
  m2 += d * (v - mean);
}

double RunningMoments::sd() const {
  return n < 2 ? 0.0 : std::sqrt(m2 / static_cast<double>(n - 1));
}

// --- SeriesPredictor ------------------------------------------------------------------------

struct SeriesPredictor::Impl {
  SeriesConfig config;
  int feature_dim;  // 0: scalar-stream mode
  int dim;          // model input dimension
  // The noise-ratio race: models[0] is the leader, sse[i] the sum of squared forecast
  // errors (original units) of models[i] while more than one races.
  std::vector<OnlineGP> models;
  std::vector<double> sse;

  // State.
  RunningMoments scaler;
  RunningMoments interval;
  std::vector<RunningMoments> feature_scalers;
  VectorXd last_features;  // NaN: none seen
  std::vector<double> ring_values;
  std::vector<std::uint64_t> ring_times;
  int ring_head = 0;  // next write position
  int ring_count = 0;
  std::uint64_t slots = 0;
  std::uint64_t last_time = 0;
  std::vector<PendingForecast> pending;  // circular, capacity h
  int pending_head = 0;                  // oldest entry
  int pending_count = 0;
  std::optional<std::uint64_t> last_seq;
  int excluded_run = 0;
  SeriesCounters counters;
  PrequentialScore score;

  // Scratch, not state: never exported.
  VectorXd x;     // model input
  VectorXd xraw;  // feature mode: the features after imputation

  static int input_dim(const SeriesConfig& c, int feature_dim) {
    return feature_dim > 0 ? feature_dim : c.lags + (c.time_feature ? 1 : 0);
  }

  Impl(const SeriesConfig& c, int fdim)
      : config((c.validate(), check_kernel_range(c.model.kernel, input_dim(c, fdim)), c)),
        feature_dim(fdim),
        dim(input_dim(c, fdim)),
        models(make_models(c, dim)),
        sse(models.size(), 0.0),
        feature_scalers(static_cast<std::size_t>(fdim)),
        last_features(VectorXd::Constant(fdim, kNaN)),
        ring_values(static_cast<std::size_t>(fdim > 0 ? 1 : c.lags + c.horizon - 1), 0.0),
        ring_times(ring_values.size(), 0),
        pending(static_cast<std::size_t>(fdim > 0 ? 1 : c.horizon)),
        x(dim),
        xraw(std::max(fdim, 1)) {}

  // Heap bytes with `models` racing: theirs (each memory_bytes, the same dimension) and
  // the buffers the constructor above allocates (keep the two in step; a test compares
  // this with what construction takes from the heap).
  static std::size_t memory_bytes(const SeriesConfig& c, int fdim, std::size_t models,
                                  std::size_t model_bytes) {
    const auto f = static_cast<std::size_t>(fdim);
    const auto ring = static_cast<std::size_t>(fdim > 0 ? 1 : c.lags + c.horizon - 1);
    const auto d = static_cast<std::size_t>(input_dim(c, fdim));
    return sizeof(Impl) + models * (model_bytes + sizeof(double)) +  // models, sse
           f * (sizeof(RunningMoments) + sizeof(double)) +           // scalers, last_features
           ring * (sizeof(double) + sizeof(std::uint64_t)) +
           static_cast<std::size_t>(fdim > 0 ? 1 : c.horizon) * sizeof(PendingForecast) +
           (d + std::max<std::size_t>(f, 1)) * sizeof(double) +  // x, xraw
           c.noise_candidates.size() * sizeof(double);           // config's copy
  }

  int ring_capacity() const { return static_cast<int>(ring_values.size()); }
  int pending_capacity() const { return static_cast<int>(pending.size()); }
  int horizon() const { return config.horizon; }
  int lags() const { return config.lags; }

  // k-th newest slot value/time, k < ring_count.
  double back(int k) const {
    const int cap = ring_capacity();
    return ring_values[static_cast<std::size_t>((ring_head - 1 - k + 2 * cap) % cap)];
  }
  std::uint64_t back_time(int k) const {
    const int cap = ring_capacity();
    return ring_times[static_cast<std::size_t>((ring_head - 1 - k + 2 * cap) % cap)];
  }

  bool warmed() const {
    return scaler.n >= static_cast<std::uint64_t>(config.warmup) && scaler.m2 > 0.0;
  }

  const OnlineGP& leader() const { return models.front(); }

  // A standardized target the model can learn: values that far out (more than 1e150
  // standard deviations, e.g. 1e145 after a stretch with sd 1e-10) are scored and judged
  // against the forecast, and go into the scaler, but the model never learns them.
  static bool learnable(double target) { return std::abs(target) <= kMaxMagnitude; }

  // --- the noise-ratio race ---------------------------------------------------------------

  // Every racing model learns (x, target); returns the leader's result. While several race,
  // each one's forecast, mapped to original units by to_original(prediction).mean, is
  // scored against `value` and the race is settled. The models all check the same input
  // the same way, so either the first update throws (nothing changed) or none does. Inputs
  // and targets are within the model's bounds, but a kernel can still overflow on them
  // (a polynomial one on a feature far out, or extreme kernel parameters): the model
  // refuses such an x, and then nothing is learned (nullopt) rather than observe() throw.
  template <typename ToOriginal>
  std::optional<UpdateResult> learn(double target, double value, ToOriginal&& to_original_mean) {
    UpdateResult lead;
    try {
      lead = models[0].update(x, target);
    } catch (const std::invalid_argument&) {
      return std::nullopt;
    }
    if (models.size() == 1) return lead;
    // Each squared error capped (a non-finite one counts as the cap): values and forecasts
    // near the accepted 1e150 square to 1e300, and the sums must stay finite, or the
    // key's snapshot would not restore. 2^31 samples at the cap sum to 2e299.
    constexpr double kMaxError2 = 1e290;
    const double e0 = value - to_original_mean(lead.prediction);
    sse[0] += std::fmin(e0 * e0, kMaxError2);
    for (std::size_t i = 1; i < models.size(); ++i) {
      const double e = value - to_original_mean(models[i].update(x, target).prediction);
      sse[i] += std::fmin(e * e, kMaxError2);
    }
    settle_race();
    return lead;
  }

  // The best candidate leads (ties keep the current leader); far worse ones are dropped,
  // and all but the leader once selection_samples samples were learned. No allocation:
  // models move within their vector.
  void settle_race() {
    std::size_t best = 0;
    for (std::size_t i = 1; i < models.size(); ++i) {
      if (sse[i] < sse[best]) best = i;
    }
    if (best != 0) {
      std::swap(models[0], models[best]);
      std::swap(sse[0], sse[best]);
    }
    const std::uint64_t learned = models[0].counters().updates;
    const bool done = learned >= static_cast<std::uint64_t>(config.selection_samples);
    if (!done && learned < static_cast<std::uint64_t>(SeriesConfig::kRaceMinSamples)) return;
    std::size_t kept = 1;
    for (std::size_t i = 1; i < models.size(); ++i) {
      if (done || sse[i] > config.selection_margin * sse[0]) continue;
      if (kept != i) {
        std::swap(models[kept], models[i]);
        std::swap(sse[kept], sse[i]);
      }
      ++kept;
    }
    models.erase(models.begin() + static_cast<std::ptrdiff_t>(kept), models.end());
    sse.resize(kept);
  }

  // --- sequence numbers -------------------------------------------------------------------

  // Returns false (with out.status set) when the observation must be dropped.
  bool admit_seq(std::optional<std::uint64_t> seq, Outcome& out) {
    if (!seq) return true;
    if (last_seq) {
      if (*seq == *last_seq) {
        ++counters.duplicates;
        out.status = OutcomeStatus::kDuplicate;
        return false;
      }
      if (*seq < *last_seq) {
        ++counters.out_of_order;
        out.status = OutcomeStatus::kOutOfOrder;
        return false;
      }
      if (*seq > *last_seq + 1) {
        out.gap = *seq - *last_seq - 1;
        ++counters.gaps;
        counters.skipped_seq += out.gap;
      }
    }
    last_seq = seq;
    return true;
  }

  // --- anomalies --------------------------------------------------------------------------

  // Sets out.z, out.anomaly, out.excluded from a prediction of `value`.
  void judge(double value, double mean, double sd, Outcome& out) {
    out.has_prediction = true;
    out.mean = mean;
    out.sd = sd;
    out.z = (value - mean) / sd;
    out.anomaly = std::abs(out.z) > config.anomaly_threshold;
    if (!out.anomaly) {
      excluded_run = 0;
      return;
    }
    ++counters.anomalies;
    if (config.exclude_anomalies && excluded_run < config.max_excluded_run) {
      ++excluded_run;
      out.excluded = true;
      ++counters.excluded;
    }
  }

  void score_outcome(double value, Outcome& out) {
    out.status = OutcomeStatus::kScored;
    score.add(value, out.mean, out.sd);
    ++counters.scored;
  }

  // --- scalar-stream embedding --------------------------------------------------------------

  // The elapsed-time feature for a target dt seconds after the newest lag.
  double time_feature(double dt) const {
    const double step = static_cast<double>(horizon()) * interval.mean;
    if (interval.n == 0 || !(step > 0.0)) return 0.0;
    return std::log(0.5 * (1.0 + dt / step));
  }

  // The largest standardized component of a dim-dimensional model input: the input's
  // norm then stays within kMaxMagnitude / 2, inside what the model accepts.
  static double z_limit(int dim) {
    return 0.5 * kMaxMagnitude / std::sqrt(static_cast<double>(dim));
  }
  // z clamped into [-max_z, max_z], NaN to 0 (only imported states need it: see callers).
  static double clamp_z(double z, double max_z) {
    return std::abs(z) <= max_z ? z : std::isnan(z) ? 0.0 : std::copysign(max_z, z);
  }

  // x <- standardized lags back(offset), ..., back(offset + p - 1) [+ time feature].
  // requires ring_count >= offset + p, warmed().
  // Every lag is a value the scaler has seen, or a forecast (exclude_anomalies), so that a
  // standardized lag is within a few sqrt(n) of 0. Only an imported state can hold one
  // beyond the model's input bound (a value of 1e273 against sd 1e-8): clamped there, as
  // the model would otherwise refuse every prediction of the key.
  void embed(int offset, double time_feat) {
    const double mean = scaler.mean;
    const double inv_sd = 1.0 / scaler.sd();
    const double max_z = z_limit(dim);
    for (int j = 0; j < lags(); ++j) x(j) = clamp_z((back(offset + j) - mean) * inv_sd, max_z);
    if (config.time_feature) x(lags()) = time_feat;
  }

  // The regression target of `value` for lags ending at back(offset).
  double target_of(double value, int offset) const {
    const double base = config.target == SeriesTarget::kChange ? back(offset) : scaler.mean;
    return (value - base) / scaler.sd();
  }

  // A standardized prediction for lags ending at back(offset), in original units.
  Prediction to_original(const Prediction& p, int offset) const {
    const double base = config.target == SeriesTarget::kChange ? back(offset) : scaler.mean;
    const double sd = scaler.sd();
    return {base + sd * p.mean, sd * sd * p.var_f, sd * sd * p.var_y};
  }

  // A time before the newest slot's (a clock stepping back, or an unset time: 0) is taken
  // as that slot's time, a step of 0 s, and counted. Taken as it came, the step back was
  // clamped to 0 s but the next step, measured from the early time, was huge (from an
  // unset time, 1.7e9 s): the mean interval, which the time feature divides by, stayed
  // inflated and the feature flat for a long time.
  std::uint64_t monotone_time(std::uint64_t time) {
    if (slots == 0 || time >= last_time) return time;  // (also the first, or all, unset)
    ++counters.time_reversals;
    return last_time;
  }

  // Takes a (possibly imputed) value into the lags as slot number `slots`. A step from an
  // unset time (0: the first values came without one) is unknown, not 1.7e9 s.
  void push_slot(double value, std::uint64_t time) {
    if (slots > 0 && last_time != 0) interval.add(seconds_between(last_time, time));
    const int cap = ring_capacity();
    ring_values[static_cast<std::size_t>(ring_head)] = value;
    ring_times[static_cast<std::size_t>(ring_head)] = time;
    ring_head = (ring_head + 1) % cap;
    ring_count = std::min(ring_count + 1, cap);
    last_time = time;
    ++slots;
  }

  // Removes and returns the forecast of slot `slots`, if one was made.
  std::optional<PendingForecast> pop_pending() {
    if (pending_count == 0) return std::nullopt;
    const PendingForecast f = pending[static_cast<std::size_t>(pending_head)];
    if (f.target_index != slots) return std::nullopt;
    pending_head = (pending_head + 1) % pending_capacity();
    --pending_count;
    return f;
  }

  // h > 1: after a slot was taken, forecast the value h slots later.
  void issue_forecast() {
    if (horizon() == 1 || !warmed() || ring_count < lags()) return;
    embed(0, 0.0);
    const Prediction p = to_original(leader().predict(x), 0);
    const int cap = pending_capacity();
    pending[static_cast<std::size_t>((pending_head + pending_count) % cap)] = {
        slots - 1 + static_cast<std::uint64_t>(horizon()), p.mean, std::sqrt(p.var_y)};
    ++pending_count;
  }

  Outcome observe_value(std::optional<std::uint64_t> seq, std::uint64_t time, double value) {
    Outcome out;
    out.value = value;
    out.imputed = kNaN;
    out.mean = out.sd = out.z = kNaN;
    ++counters.observations;
    if (!admit_seq(seq, out)) return out;
    time = monotone_time(time);

    // Beyond 1e150 counts as missing too: the model accepts no larger target, and the
    // scaler's squared deviations overflowed to inf (then NaN forecasts, scored).
    if (!std::isfinite(value) || std::abs(value) > kMaxMagnitude) {
      ++counters.missing;
      out.status = OutcomeStatus::kMissing;
      double fill = kNaN;
      if (config.missing == MissingPolicy::kHoldLast && ring_count > 0) fill = back(0);
      if (config.missing == MissingPolicy::kRunningMean && scaler.n > 0) fill = scaler.mean;
      if (std::isnan(fill)) return out;  // kSkip, or nothing to impute from yet
      ++counters.imputed;
      out.imputed = fill;
      pop_pending();  // its truth will never arrive
      push_slot(fill, time);
      issue_forecast();
      return out;
    }

    ++counters.accepted;
    const int h = horizon();
    const int offset = h - 1;  // lags of this value's sample end at back(offset)
    const bool ready = warmed() && ring_count >= lags() + offset;
    if (ready) {
      // From an unset time (0) the step is unknown: taken as the mean one (feature 0).
      const std::uint64_t from = back_time(offset);
      const double dt =
          from == 0 ? static_cast<double>(horizon()) * interval.mean : seconds_between(from, time);
      embed(offset, time_feature(dt));
    }
    const double target = ready ? target_of(value, offset) : 0.0;

    // The race scores each candidate's forecast of this value from this sample's lags.
    const auto original_mean = [&](const Prediction& p) { return to_original(p, offset).mean; };
    if (h == 1) {
      if (ready && !config.exclude_anomalies && learnable(target)) {
        // The prediction update() makes before absorbing y is the forecast: no extra pass.
        const std::optional<UpdateResult> r = learn(target, value, original_mean);
        const Prediction p = to_original(r ? r->prediction : leader().predict(x), 0);
        judge(value, p.mean, std::sqrt(p.var_y), out);
        out.learned = r.has_value();
      } else if (ready) {
        const Prediction p = to_original(leader().predict(x), 0);
        judge(value, p.mean, std::sqrt(p.var_y), out);
        if (!out.excluded && learnable(target)) {
          out.learned = learn(target, value, original_mean).has_value();
        }
      }
    } else {
      if (const std::optional<PendingForecast> f = pop_pending()) {
        judge(value, f->mean, f->sd, out);
      }
      if (ready && !out.excluded && learnable(target)) {
        out.learned = learn(target, value, original_mean).has_value();
      }
    }

    if (out.has_prediction) {
      score_outcome(value, out);
    } else {
      ++counters.warming_up;
      out.status = OutcomeStatus::kWarmingUp;
    }
    if (out.learned) ++counters.updates;
    if (out.excluded) {
      // Kept out of the model entirely: the lags see what the model expected instead.
      out.imputed = out.mean;
      push_slot(out.mean, time);
    } else {
      scaler.add(value);
      push_slot(value, time);
    }
    issue_forecast();
    return out;
  }

  // --- feature mode -----------------------------------------------------------------------

  // Component j of a feature vector, standardized.
  double standardized_feature(int j, double v) const {
    const RunningMoments& m = feature_scalers[static_cast<std::size_t>(j)];
    const double scale = m.m2 > 0.0 ? m.sd() : 1.0;
    return (v - m.mean) / scale;
  }

  // x <- standardized xraw. Every component is a value within max_z of its scaler's mean
  // (observe_features), or an imputed one: the last value or the running mean, which the
  // scaler has seen. Only an imported state can put one beyond the model's input bound (a
  // feature mean of 1e252 against a held value of -25): clamped there, as in embed(), as
  // the model would otherwise refuse every prediction of the key.
  void standardize_features() {
    const double max_z = z_limit(feature_dim);
    for (int j = 0; j < feature_dim; ++j) x(j) = clamp_z(standardized_feature(j, xraw(j)), max_z);
  }

  Prediction features_to_original(const Prediction& p) const {
    const double sd = scaler.sd();
    return {scaler.mean + sd * p.mean, sd * sd * p.var_f, sd * sd * p.var_y};
  }

  Outcome observe_features(std::optional<std::uint64_t> seq, Eigen::Ref<const VectorXd> xin,
                           std::optional<double> y) {
    if (xin.size() != feature_dim) {
      invalid("observation has " + std::to_string(xin.size()) + " features, expected " +
              std::to_string(feature_dim));
    }
    Outcome out;
    out.value = y.value_or(kNaN);
    out.imputed = kNaN;
    out.mean = out.sd = out.z = kNaN;
    ++counters.observations;
    if (!admit_seq(seq, out)) return out;

    // Missing components: the policy per component; kSkip drops the observation. Beyond
    // 1e150 counts as missing, as in the scalar path: the scalers' squared deviations
    // would overflow, and the model accepts no larger input or target. So does a component
    // more than max_z standard deviations from its running mean, which the model could not
    // take either: its input norm is at most 1e150.
    const auto usable = [](double v) { return std::isfinite(v) && std::abs(v) <= kMaxMagnitude; };
    const double max_z = z_limit(feature_dim);
    bool any_missing = false;
    for (int j = 0; j < feature_dim; ++j) {
      double v = xin(j);
      if (!usable(v) || !(std::abs(standardized_feature(j, v)) <= max_z)) {
        any_missing = true;
        const RunningMoments& m = feature_scalers[static_cast<std::size_t>(j)];
        v = kNaN;
        if (config.missing == MissingPolicy::kHoldLast) v = last_features(j);
        if (config.missing == MissingPolicy::kRunningMean && m.n > 0) v = m.mean;
        if (std::isnan(v)) {
          ++counters.missing;
          out.status = OutcomeStatus::kMissing;
          return out;
        }
      }
      xraw(j) = v;
    }
    const bool y_missing = y && !usable(*y);
    if (any_missing || y_missing) ++counters.missing;
    if (any_missing) ++counters.imputed;
    standardize_features();

    if (!y || y_missing) {
      out.status = y ? OutcomeStatus::kMissing : OutcomeStatus::kUnlabelled;
      if (warmed()) {
        const Prediction p = features_to_original(leader().predict(x));
        out.has_prediction = true;
        out.mean = p.mean;
        out.sd = std::sqrt(p.var_y);
      }
      return out;
    }

    const double value = *y;
    ++counters.accepted;
    if (warmed()) {
      const double target = (value - scaler.mean) / scaler.sd();
      const auto original_mean = [&](const Prediction& p) { return features_to_original(p).mean; };
      if (!config.exclude_anomalies && learnable(target)) {
        const std::optional<UpdateResult> r = learn(target, value, original_mean);
        const Prediction p = features_to_original(r ? r->prediction : leader().predict(x));
        judge(value, p.mean, std::sqrt(p.var_y), out);
        out.learned = r.has_value();
      } else {
        const Prediction p = features_to_original(leader().predict(x));
        judge(value, p.mean, std::sqrt(p.var_y), out);
        if (!out.excluded && learnable(target)) {
          out.learned = learn(target, value, original_mean).has_value();
        }
      }
      score_outcome(value, out);
    } else {
      ++counters.warming_up;
      out.status = OutcomeStatus::kWarmingUp;
    }
    if (out.learned) ++counters.updates;
    if (!out.excluded) {
      scaler.add(value);
      for (int j = 0; j < feature_dim; ++j) {
        feature_scalers[static_cast<std::size_t>(j)].add(xraw(j));
      }
    }
    last_features = xraw.head(feature_dim);
    return out;
  }

  std::optional<Prediction> forecast() const {
    if (feature_dim > 0 || !warmed() || ring_count < lags()) return std::nullopt;
    // embed() writes the scratch input; forecast() is const, so build a local input.
    VectorXd xf(dim);
    const double inv_sd = 1.0 / scaler.sd();
    for (int j = 0; j < lags(); ++j) xf(j) = (back(j) - scaler.mean) * inv_sd;
    if (config.time_feature) xf(lags()) = 0.0;
    return to_original(leader().predict(xf), 0);
  }

  SeriesState export_state() const {
    SeriesState s;
    s.config = config;
    s.feature_dim = feature_dim;
    s.scaler = scaler;
    s.interval = interval;
    s.feature_scalers = feature_scalers;
    s.last_features.assign(last_features.data(), last_features.data() + last_features.size());
    for (int k = ring_count - 1; k >= 0; --k) {
      s.lag_values.push_back(back(k));
      s.lag_times.push_back(back_time(k));
    }
    s.slots = slots;
    s.last_time = last_time;
    for (int i = 0; i < pending_count; ++i) {
      s.pending.push_back(
          pending[static_cast<std::size_t>((pending_head + i) % pending_capacity())]);
    }
    s.last_seq = last_seq;
    s.excluded_run = excluded_run;
    s.counters = counters;
    s.score = score;
    s.model = leader().export_state();
    if (models.size() > 1) {
      s.leader_sse = sse[0];
      for (std::size_t i = 1; i < models.size(); ++i) {
        s.rivals.push_back({models[i].export_state(), sse[i]});
      }
    }
    return s;
  }
};

SeriesPredictor::SeriesPredictor(const SeriesConfig& config)
    : impl_(std::make_unique<Impl>(config, 0)) {}

SeriesPredictor::SeriesPredictor(const SeriesConfig& config, int feature_dim) {
  if (feature_dim < 1) invalid("feature_dim must be >= 1, got " + std::to_string(feature_dim));
  impl_ = std::make_unique<Impl>(config, feature_dim);
}

SeriesPredictor::~SeriesPredictor() = default;
SeriesPredictor::SeriesPredictor(const SeriesPredictor& other)
    : impl_(std::make_unique<Impl>(*other.impl_)) {}
SeriesPredictor& SeriesPredictor::operator=(const SeriesPredictor& other) {
  if (this != &other) impl_ = std::make_unique<Impl>(*other.impl_);
  return *this;
}
SeriesPredictor::SeriesPredictor(SeriesPredictor&&) noexcept = default;
SeriesPredictor& SeriesPredictor::operator=(SeriesPredictor&&) noexcept = default;

Outcome SeriesPredictor::observe(std::optional<std::uint64_t> seq, std::uint64_t time_unix_nano,
                                 double value) {
  if (impl_->feature_dim > 0) {
    throw std::logic_error("series: observe(seq, time, value) on a feature-mode predictor");
  }
  return impl_->observe_value(seq, time_unix_nano, value);
}

Outcome SeriesPredictor::observe(std::optional<std::uint64_t> seq, std::uint64_t time_unix_nano,
                                 Eigen::Ref<const VectorXd> x, std::optional<double> y) {
  if (impl_->feature_dim == 0) {
    throw std::logic_error("series: observe(seq, time, x, y) on a scalar-stream predictor");
  }
  Outcome out = impl_->observe_features(seq, x, y);
  if (out.status != OutcomeStatus::kDuplicate && out.status != OutcomeStatus::kOutOfOrder) {
    impl_->last_time = time_unix_nano;
  }
  return out;
}

std::optional<Prediction> SeriesPredictor::forecast() const { return impl_->forecast(); }

const SeriesConfig& SeriesPredictor::config() const { return impl_->config; }
int SeriesPredictor::feature_dim() const { return impl_->feature_dim; }
int SeriesPredictor::input_dim() const { return impl_->dim; }
const SeriesCounters& SeriesPredictor::counters() const { return impl_->counters; }
const PrequentialScore& SeriesPredictor::score() const { return impl_->score; }
const OnlineGP& SeriesPredictor::model() const { return impl_->leader(); }
int SeriesPredictor::racing() const { return static_cast<int>(impl_->models.size()); }

std::size_t SeriesPredictor::memory_bytes(const SeriesConfig& config, int feature_dim) {
  config.validate();
  if (feature_dim < 0) {
    invalid("feature dimension must be >= 0, got " + std::to_string(feature_dim));
  }
  const std::size_t models = std::max<std::size_t>(1, config.noise_candidates.size());
  const std::size_t model = OnlineGP::memory_bytes(
      config.model, Impl::input_dim(config, feature_dim));  // noise does not change it
  return sizeof(SeriesPredictor) + Impl::memory_bytes(config, feature_dim, models, model);
}

std::size_t SeriesPredictor::memory_bytes() const {
  const Impl& s = *impl_;
  return sizeof(SeriesPredictor) +
         Impl::memory_bytes(s.config, s.feature_dim, s.models.size(), s.leader().memory_bytes());
}

SeriesState SeriesPredictor::export_state() const { return impl_->export_state(); }

SeriesPredictor SeriesPredictor::import_state(const SeriesState& s) {
  if (s.feature_dim < 0)
    invalid("import: feature_dim must be >= 0, got " + std::to_string(s.feature_dim));
  SeriesPredictor sp =
      s.feature_dim > 0 ? SeriesPredictor(s.config, s.feature_dim) : SeriesPredictor(s.config);
  Impl& d = *sp.impl_;
  const auto check = [](bool ok, const std::string& what) {
    if (!ok) invalid("import: " + what);
  };
  // The scalers see values within kMaxMagnitude (beyond counts as missing), so their means
  // are within it up to rounding; a foreign mean of 1e252 would overflow the next
  // squared deviation, and the key would export a state that does not restore.
  const auto within = [](double v) { return std::abs(v) <= 2.0 * kMaxMagnitude; };
  const auto moments_ok = [&](const RunningMoments& m) {
    return within(m.mean) && std::isfinite(m.m2) && m.m2 >= 0.0 && (m.n > 0 || m.m2 == 0.0);
  };
  const auto fdim = static_cast<std::size_t>(s.feature_dim);
  check(moments_ok(s.scaler), "scaler moments are inconsistent, not finite or beyond 2e150");
  check(moments_ok(s.interval), "interval moments are inconsistent, not finite or beyond 2e150");
  check(s.feature_scalers.size() == fdim, "feature_scalers has " +
                                              std::to_string(s.feature_scalers.size()) +
                                              " entries, expected " + std::to_string(fdim));
  for (const RunningMoments& m : s.feature_scalers) {
    check(moments_ok(m), "feature scaler moments are inconsistent, not finite or beyond 2e150");
  }
  check(s.last_features.size() == fdim, "last_features has " +
                                            std::to_string(s.last_features.size()) +
                                            " entries, expected " + std::to_string(fdim));
  for (double v : s.last_features) {
    check(std::isnan(v) || within(v), "last feature " + num(v) + " is beyond 2e150");
  }
  check(s.lag_values.size() == s.lag_times.size(), "lag_values and lag_times differ in length");
  check(s.lag_values.size() <= static_cast<std::size_t>(d.ring_capacity()),
        "lag_values has " + std::to_string(s.lag_values.size()) + " entries, at most " +
            std::to_string(d.ring_capacity()) + " allowed");
  check(s.lag_values.size() <= s.slots, "more lag values than slots");
  for (double v : s.lag_values) check(std::isfinite(v), "lag value " + num(v) + " is not finite");
  check(s.pending.size() <= static_cast<std::size_t>(d.pending_capacity()) &&
            (s.feature_dim == 0 || s.pending.empty()),
        "too many pending forecasts (" + std::to_string(s.pending.size()) + ")");
  for (std::size_t i = 0; i < s.pending.size(); ++i) {
    const PendingForecast& f = s.pending[i];
    check(f.target_index >= s.slots &&
              f.target_index < s.slots + static_cast<std::uint64_t>(s.config.horizon) &&
              (i == 0 || f.target_index > s.pending[i - 1].target_index),
          "pending forecast target " + std::to_string(f.target_index) + " out of order");
    // Infinite is what a forecast of h > 1 steps becomes after a valid value near 1e150
    // (its variance squares the scale), and NaN what a model whose state overflowed
    // forecast before its next update started it over (OnlineGP::update): the predictor's
    // own states, which must restore. Scored, such a forecast counts as it would have.
    check(!(f.sd <= 0.0), "pending forecast's sd is not > 0");
  }
  check(s.excluded_run >= 0 && s.excluded_run <= std::max(s.config.max_excluded_run, 0),
        "excluded_run " + std::to_string(s.excluded_run) + " out of range");
  // The leader and the rivals: each a distinct candidate's model, in race order, with the
  // same number of learned samples (they learn together).
  const std::size_t racing = 1 + s.rivals.size();
  check(
      s.config.noise_candidates.empty() ? racing == 1 : racing <= s.config.noise_candidates.size(),
      std::to_string(racing) + " racing models for " +
          std::to_string(s.config.noise_candidates.size()) + " noise candidates");
  std::vector<bool> used(s.config.noise_candidates.size(), false);
  const auto check_model = [&](const ModelState& m, double sse, const std::string& what) {
    check(m.dim == d.dim,
          what + " dimension " + std::to_string(m.dim) + ", expected " + std::to_string(d.dim));
    check(std::isfinite(sse) && sse >= 0.0, what + " error sum " + num(sse) + " is invalid");
    if (s.config.noise_candidates.empty()) {
      check(m.config == s.config.model, what + " configuration differs from config.model");
      return;
    }
    bool found = false;
    for (std::size_t i = 0; i < used.size() && !found; ++i) {
      if (!used[i] && m.config == candidate_config(s.config, s.config.noise_candidates[i])) {
        used[i] = found = true;
      }
    }
    check(found, what + " configuration is not that of an unused noise candidate");
    check(m.updates == s.model.updates, what + " learned " + std::to_string(m.updates) +
                                            " samples, the leader " +
                                            std::to_string(s.model.updates));
  };
  check_model(s.model, s.leader_sse, "model");
  for (std::size_t i = 0; i < s.rivals.size(); ++i) {
    check_model(s.rivals[i].model, s.rivals[i].sse, "rival " + std::to_string(i));
  }

  d.models.clear();
  d.sse.clear();
  d.models.push_back(OnlineGP::import_state(s.model));
  d.sse.push_back(s.leader_sse);
  for (const RivalState& r : s.rivals) {
    d.models.push_back(OnlineGP::import_state(r.model));
    d.sse.push_back(r.sse);
  }
  d.scaler = s.scaler;
  d.interval = s.interval;
  d.feature_scalers = s.feature_scalers;
  for (std::size_t j = 0; j < fdim; ++j)
    d.last_features(static_cast<Index>(j)) = s.last_features[j];
  d.ring_head = 0;
  d.ring_count = 0;
  for (std::size_t i = 0; i < s.lag_values.size(); ++i) {
    d.ring_values[i] = s.lag_values[i];
    d.ring_times[i] = s.lag_times[i];
  }
  d.ring_count = static_cast<int>(s.lag_values.size());
  d.ring_head = d.ring_count % d.ring_capacity();
  d.slots = s.slots;
  d.last_time = s.last_time;
  for (std::size_t i = 0; i < s.pending.size(); ++i) d.pending[i] = s.pending[i];
  d.pending_head = 0;
  d.pending_count = static_cast<int>(s.pending.size());
  d.last_seq = s.last_seq;
  d.excluded_run = s.excluded_run;
  d.counters = s.counters;
  d.score = s.score;
  return sp;
}

}  // namespace ntk
