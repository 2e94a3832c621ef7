// Conversions between ntk.v1 protobuf configs/states and the core structs.
#include "ntk/stream/convert.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace ntk::stream {

namespace {

[[noreturn]] void invalid(const std::string& message) { throw std::invalid_argument(message); }

[[noreturn]] void unknown_enum(const char* field, int value) {
  invalid(std::string(field) + " has the value " + std::to_string(value) +
          ", unknown to this version");
}

// ---------------------------------------------------------------------------------------
// Enums: UNSPECIFIED keeps the base value.

KernelType to_cpp(v1::KernelType v, KernelType base) {
  switch (v) {
    case v1::KERNEL_TYPE_UNSPECIFIED:
      return base;
    case v1::KERNEL_TYPE_NTK:
      return KernelType::kNtk;
    case v1::KERNEL_TYPE_RBF:
      return KernelType::kRbf;
    case v1::KERNEL_TYPE_POLYNOMIAL:
      return KernelType::kPolynomial;
    case v1::KERNEL_TYPE_LINEAR:
      return KernelType::kLinear;
    default:
      unknown_enum("kernel.type", v);
  }
}

v1::KernelType to_proto(KernelType v) {
  switch (v) {
    case KernelType::kNtk:
      return v1::KERNEL_TYPE_NTK;
    case KernelType::kRbf:
      return v1::KERNEL_TYPE_RBF;
    case KernelType::kPolynomial:
      return v1::KERNEL_TYPE_POLYNOMIAL;
    case KernelType::kLinear:
      return v1::KERNEL_TYPE_LINEAR;
  }
  return v1::KERNEL_TYPE_UNSPECIFIED;
}

Activation to_cpp(v1::Activation v, Activation base) {
  switch (v) {
    case v1::ACTIVATION_UNSPECIFIED:
      return base;
    case v1::ACTIVATION_RELU:
      return Activation::kRelu;
    case v1::ACTIVATION_ERF:
      return Activation::kErf;
    case v1::ACTIVATION_GELU:
      return Activation::kGelu;
    default:
      unknown_enum("kernel.activation", v);
  }
}

v1::Activation to_proto(Activation v) {
  switch (v) {
    case Activation::kRelu:
      return v1::ACTIVATION_RELU;
    case Activation::kErf:
      return v1::ACTIVATION_ERF;
    case Activation::kGelu:
      return v1::ACTIVATION_GELU;
  }
  return v1::ACTIVATION_UNSPECIFIED;
}

Parameterization to_cpp(v1::Parameterization v, Parameterization base) {
  switch (v) {
    case v1::PARAMETERIZATION_UNSPECIFIED:
      return base;
    case v1::PARAMETERIZATION_NTK:
      return Parameterization::kNtk;
    case v1::PARAMETERIZATION_STANDARD:
      return Parameterization::kStandard;
    default:
      unknown_enum("kernel.parameterization", v);
  }
}

v1::Parameterization to_proto(Parameterization v) {
  switch (v) {
    case Parameterization::kNtk:
      return v1::PARAMETERIZATION_NTK;
    case Parameterization::kStandard:
      return v1::PARAMETERIZATION_STANDARD;
  }
  return v1::PARAMETERIZATION_UNSPECIFIED;
}

KernelOutput to_cpp(v1::KernelOutput v, KernelOutput base) {
  switch (v) {
    case v1::KERNEL_OUTPUT_UNSPECIFIED:
      return base;
    case v1::KERNEL_OUTPUT_NTK:
      return KernelOutput::kNtk;
    case v1::KERNEL_OUTPUT_NNGP:
      return KernelOutput::kNngp;
    default:
      unknown_enum("kernel.output", v);
  }
}

v1::KernelOutput to_proto(KernelOutput v) {
  switch (v) {
    case KernelOutput::kNtk:
      return v1::KERNEL_OUTPUT_NTK;
    case KernelOutput::kNngp:
      return v1::KERNEL_OUTPUT_NNGP;
  }
  return v1::KERNEL_OUTPUT_UNSPECIFIED;
}

EvictionPolicy to_cpp(v1::EvictionPolicy v, EvictionPolicy base) {
  switch (v) {
    case v1::EVICTION_POLICY_UNSPECIFIED:
      return base;
    case v1::EVICTION_POLICY_MIN_LOSS:
      return EvictionPolicy::kMinLoss;
    case v1::EVICTION_POLICY_OLDEST:
      return EvictionPolicy::kOldest;
    default:
      unknown_enum("model.eviction", v);
  }
}

v1::EvictionPolicy to_proto(EvictionPolicy v) {
  switch (v) {
    case EvictionPolicy::kMinLoss:
      return v1::EVICTION_POLICY_MIN_LOSS;
    case EvictionPolicy::kOldest:
      return v1::EVICTION_POLICY_OLDEST;
  }
  return v1::EVICTION_POLICY_UNSPECIFIED;
}

SeriesTarget to_cpp(v1::SeriesTarget v, SeriesTarget base) {
  switch (v) {
    case v1::SERIES_TARGET_UNSPECIFIED:
      return base;
    case v1::SERIES_TARGET_LEVEL:
      return SeriesTarget::kLevel;
    case v1::SERIES_TARGET_CHANGE:
      return SeriesTarget::kChange;
    default:
      unknown_enum("series.target", v);
  }
}

v1::SeriesTarget to_proto(SeriesTarget v) {
  switch (v) {
    case SeriesTarget::kLevel:
      return v1::SERIES_TARGET_LEVEL;
    case SeriesTarget::kChange:
      return v1::SERIES_TARGET_CHANGE;
  }
  return v1::SERIES_TARGET_UNSPECIFIED;
}

MissingPolicy to_cpp(v1::MissingPolicy v, MissingPolicy base) {
  switch (v) {
    case v1::MISSING_POLICY_UNSPECIFIED:
      return base;
    case v1::MISSING_POLICY_SKIP:
      return MissingPolicy::kSkip;
    case v1::MISSING_POLICY_HOLD_LAST:
      return MissingPolicy::kHoldLast;
    case v1::MISSING_POLICY_RUNNING_MEAN:
      return MissingPolicy::kRunningMean;
    default:
      unknown_enum("series.missing", v);
  }
}

v1::MissingPolicy to_proto(MissingPolicy v) {
  switch (v) {
    case MissingPolicy::kSkip:
      return v1::MISSING_POLICY_SKIP;
    case MissingPolicy::kHoldLast:
      return v1::MISSING_POLICY_HOLD_LAST;
    case MissingPolicy::kRunningMean:
      return v1::MISSING_POLICY_RUNNING_MEAN;
  }
  return v1::MISSING_POLICY_UNSPECIFIED;
}

// ---------------------------------------------------------------------------------------
// Matrices: row-major `values`.

template <typename Matrix>
void write_matrix(const Matrix& m, v1::Matrix* out) {
  out->set_rows(static_cast<std::uint32_t>(m.rows()));
  out->set_cols(static_cast<std::uint32_t>(m.cols()));
  auto* values = out->mutable_values();
  values->Reserve(static_cast<int>(m.size()));
  for (Eigen::Index i = 0; i < m.rows(); ++i) {
    for (Eigen::Index j = 0; j < m.cols(); ++j) values->Add(m(i, j));
  }
}

template <typename Matrix>
Matrix read_matrix(const v1::Matrix& in, const char* field) {
  const std::uint64_t expected = std::uint64_t{in.rows()} * std::uint64_t{in.cols()};
  if (static_cast<std::uint64_t>(in.values_size()) != expected) {
    invalid(std::string(field) + " is " + std::to_string(in.rows()) + " x " +
            std::to_string(in.cols()) + " but holds " + std::to_string(in.values_size()) +
            " values");
  }
  Matrix m(static_cast<Eigen::Index>(in.rows()), static_cast<Eigen::Index>(in.cols()));
  int k = 0;
  for (Eigen::Index i = 0; i < m.rows(); ++i) {
    for (Eigen::Index j = 0; j < m.cols(); ++j) m(i, j) = in.values(k++);
  }
  return m;
}

Eigen::VectorXd read_vector(const google::protobuf::RepeatedField<double>& in) {
  Eigen::VectorXd v(in.size());
  for (int i = 0; i < in.size(); ++i) v(i) = in.Get(i);
  return v;
}

void write_vector(const Eigen::VectorXd& v, google::protobuf::RepeatedField<double>* out) {
  out->Reserve(static_cast<int>(v.size()));
  for (Eigen::Index i = 0; i < v.size(); ++i) out->Add(v(i));
}

v1::RunningMoments to_proto(const RunningMoments& m) {
  v1::RunningMoments out;
  out.set_n(m.n);
  out.set_mean(m.mean);
  out.set_m2(m.m2);
  return out;
}

RunningMoments from_proto(const v1::RunningMoments& m) {
  RunningMoments out;
  out.n = m.n();
  out.mean = m.mean();
  out.m2 = m.m2();
  return out;
}

}  // namespace

SeriesCounters from_proto(const v1::SeriesCounters& c) {
  SeriesCounters out;
  out.observations = c.observations();
  out.accepted = c.accepted();
  out.missing = c.missing();
  out.imputed = c.imputed();
  out.duplicates = c.duplicates();
  out.out_of_order = c.out_of_order();
  out.gaps = c.gaps();
  out.skipped_seq = c.skipped_seq();
  out.warming_up = c.warming_up();
  out.scored = c.scored();
  out.anomalies = c.anomalies();
  out.excluded = c.excluded();
  out.updates = c.updates();
  out.time_reversals = c.time_reversals();
  return out;
}

PrequentialScore from_proto(const v1::PrequentialScore& s) {
  PrequentialScore out;
  out.n = s.n();
  out.sum_squared_error = s.sum_squared_error();
  out.sum_absolute_error = s.sum_absolute_error();
  out.sum_nlpd = s.sum_nlpd();
  out.covered = s.covered();
  return out;
}

// ---------------------------------------------------------------------------------------
// Configs

KernelSpec to_kernel_spec(const v1::KernelConfig& c) {
  const bool structured =
      c.type() != v1::KERNEL_TYPE_UNSPECIFIED || c.activation() != v1::ACTIVATION_UNSPECIFIED ||
      c.has_depth() || c.has_w_std() || c.bias_case() != v1::KernelConfig::BIAS_NOT_SET ||
      c.parameterization() != v1::PARAMETERIZATION_UNSPECIFIED || c.has_width() ||
      c.output() != v1::KERNEL_OUTPUT_UNSPECIFIED || c.has_lengthscale() || c.has_variance() ||
      c.has_degree() || c.has_gamma() || c.has_coef0();
  if (c.has_spec()) {
    if (structured) {
      invalid("kernel: spec '" + c.spec() +
              "' and structured fields are both set; give the kernel either as a spec or as "
              "fields");
    }
    return KernelSpec::parse(c.spec());
  }
  KernelSpec s;
  s.type = to_cpp(c.type(), s.type);
  s.activation = to_cpp(c.activation(), s.activation);
  if (c.has_depth()) s.depth = c.depth();
  if (c.has_w_std()) s.w_std = c.w_std();
  switch (c.bias_case()) {
    case v1::KernelConfig::kBStd:
      s.b_std = c.b_std();
      break;
    case v1::KernelConfig::kNoBias:
      s.b_std = std::nullopt;
      break;
    case v1::KernelConfig::BIAS_NOT_SET:
      break;
  }
  s.parameterization = to_cpp(c.parameterization(), s.parameterization);
  if (c.has_width()) s.width = c.width();
  s.output = to_cpp(c.output(), s.output);
  if (c.has_lengthscale()) s.lengthscale = c.lengthscale();
  if (c.has_variance()) s.variance = c.variance();
  if (c.has_degree()) s.degree = c.degree();
  if (c.has_gamma()) s.gamma = c.gamma();
  if (c.has_coef0()) s.coef0 = c.coef0();
  return s;
}

v1::KernelConfig to_proto(const KernelSpec& s) {
  v1::KernelConfig c;
  c.set_type(to_proto(s.type));
  c.set_activation(to_proto(s.activation));
  c.set_depth(s.depth);
  c.set_w_std(s.w_std);
  if (s.b_std) {
    c.set_b_std(*s.b_std);
  } else {
    c.mutable_no_bias();
  }
  c.set_parameterization(to_proto(s.parameterization));
  if (s.width) c.set_width(*s.width);
  c.set_output(to_proto(s.output));
  c.set_lengthscale(s.lengthscale);
  c.set_variance(s.variance);
  c.set_degree(s.degree);
  c.set_gamma(s.gamma);
  c.set_coef0(s.coef0);
  return c;
}

ModelConfig to_model_config(const v1::ModelConfig& c, const ModelConfig& base) {
  ModelConfig m = base;
  if (c.has_kernel()) m.kernel = to_kernel_spec(c.kernel());
  if (c.has_budget()) m.budget = c.budget();
  if (c.has_noise_variance()) m.noise_variance = c.noise_variance();
  if (c.has_forgetting()) m.forgetting = c.forgetting();
  if (c.has_admission_threshold()) m.admission_threshold = c.admission_threshold();
  m.eviction = to_cpp(c.eviction(), m.eviction);
  if (c.has_recompute_every()) m.recompute_every = c.recompute_every();
  if (c.has_drift_bound()) m.drift_bound = c.drift_bound();
  if (c.has_jitter()) m.jitter = c.jitter();
  if (c.has_estimate_signal_power()) m.estimate_signal_power = c.estimate_signal_power();
  return m;
}

v1::ModelConfig to_proto(const ModelConfig& m) {
  v1::ModelConfig c;
  *c.mutable_kernel() = to_proto(m.kernel);
  c.set_budget(m.budget);
  c.set_noise_variance(m.noise_variance);
  c.set_forgetting(m.forgetting);
  c.set_admission_threshold(m.admission_threshold);
  c.set_eviction(to_proto(m.eviction));
  c.set_recompute_every(m.recompute_every);
  c.set_drift_bound(m.drift_bound);
  c.set_jitter(m.jitter);
  c.set_estimate_signal_power(m.estimate_signal_power);
  return c;
}

SeriesConfig to_series_config(const v1::SeriesConfig& c, const SeriesConfig& base) {
  SeriesConfig s = base;
  if (c.has_lags()) s.lags = c.lags();
  if (c.has_horizon()) s.horizon = c.horizon();
  if (c.has_time_feature()) s.time_feature = c.time_feature();
  s.target = to_cpp(c.target(), s.target);
  s.missing = to_cpp(c.missing(), s.missing);
  if (c.has_warmup()) s.warmup = c.warmup();
  if (c.has_anomaly_threshold()) s.anomaly_threshold = c.anomaly_threshold();
  if (c.has_exclude_anomalies()) s.exclude_anomalies = c.exclude_anomalies();
  if (c.has_max_excluded_run()) s.max_excluded_run = c.max_excluded_run();
  if (c.has_model()) s.model = to_model_config(c.model(), s.model);
  if (c.noise_candidates_size() > 0) {
    s.noise_candidates.assign(c.noise_candidates().begin(), c.noise_candidates().end());
  } else if (c.model().has_noise_variance()) {
    s.noise_candidates.clear();  // a fixed ratio: no race
  }
  if (c.has_selection_samples()) s.selection_samples = c.selection_samples();
  if (c.has_selection_margin()) s.selection_margin = c.selection_margin();
  s.validate();
  return s;
}

v1::SeriesConfig to_proto(const SeriesConfig& s) {
  v1::SeriesConfig c;
  c.set_lags(s.lags);
  c.set_horizon(s.horizon);
  c.set_time_feature(s.time_feature);
  c.set_target(to_proto(s.target));
  c.set_missing(to_proto(s.missing));
  c.set_warmup(s.warmup);
  c.set_anomaly_threshold(s.anomaly_threshold);
  c.set_exclude_anomalies(s.exclude_anomalies);
  c.set_max_excluded_run(s.max_excluded_run);
  *c.mutable_model() = to_proto(s.model);
  c.mutable_noise_candidates()->Add(s.noise_candidates.begin(), s.noise_candidates.end());
  c.set_selection_samples(s.selection_samples);
  c.set_selection_margin(s.selection_margin);
  return c;
}

void merge_key_config(v1::KeyConfig& base, const v1::KeyConfig& overlay) {
  const bool replace_kernel = overlay.series().model().has_kernel();
  if (replace_kernel) base.mutable_series()->mutable_model()->clear_kernel();
  // A repeated field would be appended to: the overlay's candidates replace the base's,
  // and an overlay that fixes the noise ratio without candidates ends the base's race.
  const v1::SeriesConfig& over = overlay.series();
  if (over.noise_candidates_size() > 0 || over.model().has_noise_variance()) {
    base.mutable_series()->clear_noise_candidates();
  }
  base.MergeFrom(overlay);
}

KeySettings resolve_key_config(const v1::KeyConfig& c) {
  KeySettings k;
  k.series = to_series_config(c.series());
  switch (c.tick_value()) {
    case v1::TICK_VALUE_UNSPECIFIED:
      break;
    case v1::TICK_VALUE_MID_OR_LAST:
    case v1::TICK_VALUE_LAST:
    case v1::TICK_VALUE_MID:
    case v1::TICK_VALUE_LOG_RETURN:
      k.tick_value = c.tick_value();
      break;
    default:
      unknown_enum("tick_value", c.tick_value());
  }
  return k;
}

v1::KeyConfig to_proto(const KeySettings& k) {
  v1::KeyConfig c;
  *c.mutable_series() = to_proto(k.series);
  c.set_tick_value(k.tick_value);
  return c;
}

// ---------------------------------------------------------------------------------------
// States

v1::SeriesCounters to_proto(const SeriesCounters& c) {
  v1::SeriesCounters out;
  out.set_observations(c.observations);
  out.set_accepted(c.accepted);
  out.set_missing(c.missing);
  out.set_imputed(c.imputed);
  out.set_duplicates(c.duplicates);
  out.set_out_of_order(c.out_of_order);
  out.set_gaps(c.gaps);
  out.set_skipped_seq(c.skipped_seq);
  out.set_warming_up(c.warming_up);
  out.set_scored(c.scored);
  out.set_anomalies(c.anomalies);
  out.set_excluded(c.excluded);
  out.set_updates(c.updates);
  out.set_time_reversals(c.time_reversals);
  return out;
}

v1::PrequentialScore to_proto(const PrequentialScore& s) {
  v1::PrequentialScore out;
  out.set_n(s.n);
  out.set_sum_squared_error(s.sum_squared_error);
  out.set_sum_absolute_error(s.sum_absolute_error);
  out.set_sum_nlpd(s.sum_nlpd);
  out.set_covered(s.covered);
  return out;
}

namespace {

// f(a's value, b's value) into a, for every uint64 field.
template <typename F>
void combine_counts(google::protobuf::Message& a, const google::protobuf::Message& b, F f) {
  const google::protobuf::Descriptor* d = a.GetDescriptor();
  const google::protobuf::Reflection* ra = a.GetReflection();
  const google::protobuf::Reflection* rb = b.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* fd = d->field(i);
    if (fd->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_UINT64) continue;
    ra->SetUInt64(&a, fd, f(ra->GetUInt64(a, fd), rb->GetUInt64(b, fd)));
  }
}

}  // namespace

void add_counts(google::protobuf::Message& a, const google::protobuf::Message& b) {
  combine_counts(a, b, [](std::uint64_t x, std::uint64_t y) { return x + y; });
}

void subtract_counts(google::protobuf::Message& a, const google::protobuf::Message& b) {
  // At 0 at least: a server that predates a field sends 0 for it.
  combine_counts(a, b, [](std::uint64_t x, std::uint64_t y) { return x > y ? x - y : 0; });
}

v1::ModelCounters to_proto(const ModelCounters& c) {
  v1::ModelCounters out;
  out.set_updates(c.updates);
  out.set_admitted(c.admitted);
  out.set_evicted(c.evicted);
  out.set_recomputes(c.recomputes);
  out.set_pivot_failures(c.pivot_failures);
  out.set_covariance_repairs(c.covariance_repairs);
  out.set_resets(c.resets);
  return out;
}

v1::ModelState to_proto(const ModelState& s) {
  v1::ModelState out;
  *out.mutable_config() = to_proto(s.config);
  out.set_dim(s.dim);
  write_matrix(s.inputs, out.mutable_inputs());
  out.mutable_samples()->Add(s.samples.begin(), s.samples.end());
  write_matrix(s.gram, out.mutable_gram());
  write_matrix(s.factor, out.mutable_factor());
  write_vector(s.mu, out.mutable_mu());
  write_matrix(s.sigma, out.mutable_sigma());
  write_vector(s.qdiag, out.mutable_qdiag());
  out.set_s2_num(s.s2_num);
  out.set_s2_den(s.s2_den);
  out.set_updates(s.updates);
  out.set_admitted(s.admitted);
  out.set_evicted(s.evicted);
  out.set_recomputes(s.recomputes);
  out.set_pivot_failures(s.pivot_failures);
  out.set_covariance_repairs(s.covariance_repairs);
  out.set_resets(s.resets);
  out.set_since_recompute(s.since_recompute);
  out.set_last_drift(s.last_drift);
  write_matrix(s.sigma_pending, out.mutable_sigma_pending());
  for (const int a : s.slots) out.add_slots(static_cast<std::uint32_t>(a));
  return out;
}

ModelState from_proto(const v1::ModelState& s) {
  ModelState out;
  out.config = to_model_config(s.config(), ModelConfig{});
  out.dim = s.dim();
  out.inputs = read_matrix<RowMatrixXd>(s.inputs(), "model.inputs");
  out.samples.assign(s.samples().begin(), s.samples().end());
  out.gram = read_matrix<Eigen::MatrixXd>(s.gram(), "model.gram");
  out.factor = read_matrix<Eigen::MatrixXd>(s.factor(), "model.factor");
  out.mu = read_vector(s.mu());
  out.sigma = read_matrix<Eigen::MatrixXd>(s.sigma(), "model.sigma");
  out.qdiag = read_vector(s.qdiag());
  out.s2_num = s.s2_num();
  out.s2_den = s.s2_den();
  out.updates = s.updates();
  out.admitted = s.admitted();
  out.evicted = s.evicted();
  out.recomputes = s.recomputes();
  out.pivot_failures = s.pivot_failures();
  out.covariance_repairs = s.covariance_repairs();
  out.resets = s.resets();
  out.since_recompute = s.since_recompute();
  out.last_drift = s.last_drift();
  out.sigma_pending = read_matrix<Eigen::MatrixXd>(s.sigma_pending(), "model.sigma_pending");
  for (const std::uint32_t a : s.slots()) {
    // Out-of-range values are refused by OnlineGP::import_state; this only keeps the
    // conversion to int from wrapping.
    out.slots.push_back(static_cast<int>(std::min<std::uint32_t>(a, 1u << 30)));
  }
  return out;
}

v1::SeriesState to_proto(const SeriesState& s) {
  v1::SeriesState out;
  *out.mutable_config() = to_proto(s.config);
  out.set_feature_dim(s.feature_dim);
  *out.mutable_scaler() = to_proto(s.scaler);
  *out.mutable_interval() = to_proto(s.interval);
  for (const RunningMoments& m : s.feature_scalers) *out.add_feature_scalers() = to_proto(m);
  out.mutable_last_features()->Add(s.last_features.begin(), s.last_features.end());
  out.mutable_lag_values()->Add(s.lag_values.begin(), s.lag_values.end());
  out.mutable_lag_times()->Add(s.lag_times.begin(), s.lag_times.end());
  out.set_slots(s.slots);
  out.set_last_time(s.last_time);
  for (const PendingForecast& p : s.pending) {
    v1::PendingForecast* q = out.add_pending();
    q->set_target_index(p.target_index);
    q->set_mean(p.mean);
    q->set_sd(p.sd);
  }
  if (s.last_seq) out.set_last_seq(*s.last_seq);
  out.set_excluded_run(s.excluded_run);
  *out.mutable_counters() = to_proto(s.counters);
  *out.mutable_score() = to_proto(s.score);
  *out.mutable_model() = to_proto(s.model);
  out.set_leader_sse(s.leader_sse);
  for (const RivalState& r : s.rivals) {
    v1::RivalState* q = out.add_rivals();
    *q->mutable_model() = to_proto(r.model);
    q->set_sse(r.sse);
  }
  return out;
}

SeriesState from_proto(const v1::SeriesState& s) {
  SeriesState out;
  // The stored config is resolved; resolving it onto the defaults is the identity then,
  // and fills in what an older writer did not know.
  out.config = to_series_config(s.config());
  out.feature_dim = s.feature_dim();
  out.scaler = from_proto(s.scaler());
  out.interval = from_proto(s.interval());
  for (const v1::RunningMoments& m : s.feature_scalers()) {
    out.feature_scalers.push_back(from_proto(m));
  }
  out.last_features.assign(s.last_features().begin(), s.last_features().end());
  out.lag_values.assign(s.lag_values().begin(), s.lag_values().end());
  out.lag_times.assign(s.lag_times().begin(), s.lag_times().end());
  out.slots = s.slots();
  out.last_time = s.last_time();
  for (const v1::PendingForecast& p : s.pending()) {
    out.pending.push_back(PendingForecast{p.target_index(), p.mean(), p.sd()});
  }
  if (s.has_last_seq()) out.last_seq = s.last_seq();
  out.excluded_run = s.excluded_run();
  out.counters = from_proto(s.counters());
  out.score = from_proto(s.score());
  out.model = from_proto(s.model());
  out.leader_sse = s.leader_sse();
  for (const v1::RivalState& r : s.rivals()) {
    out.rivals.push_back(RivalState{from_proto(r.model()), r.sse()});
  }
  return out;
}

}  // namespace ntk::stream
