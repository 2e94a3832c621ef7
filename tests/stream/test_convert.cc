// Protobuf <-> core conversions (stream/include/ntk/stream/convert.h).
//
// Oracles: KernelSpec::parse of the text form; the C++ defaults; and for states, a
// predictor restored from the converted state must continue exactly (bit for bit) like
// the one it was exported from.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "ntk/stream/convert.h"

namespace {

namespace v1 = ntk::v1;
using ntk::stream::from_proto;
using ntk::stream::to_proto;

// Equal bit for bit, NaN included.
bool same(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

}  // namespace

TEST_CASE("kernel configs: spec form, structured form, and round trips") {
  for (const char* spec : {"ntk:activation=erf,depth=2,w_std=1.2,b_std=none,"
                           "parameterization=standard,width=512,output=nngp",
                           "rbf:lengthscale=0.5,variance=2",
                           "polynomial:degree=2,gamma=0.5,coef0=1", "linear", "ntk"}) {
    CAPTURE(spec);
    const ntk::KernelSpec expected = ntk::KernelSpec::parse(spec);
    v1::KernelConfig c;
    c.set_spec(spec);
    CHECK(ntk::stream::to_kernel_spec(c) == expected);
    // Resolved form: every field set; back to the same spec.
    const v1::KernelConfig full = to_proto(expected);
    CHECK(full.has_depth());
    CHECK(full.has_lengthscale());
    CHECK(ntk::stream::to_kernel_spec(full) == expected);
  }
  v1::KernelConfig structured;
  structured.set_type(v1::KERNEL_TYPE_NTK);
  structured.set_activation(v1::ACTIVATION_GELU);
  structured.set_depth(5);
  structured.mutable_no_bias();
  ntk::KernelSpec expected;
  expected.activation = ntk::Activation::kGelu;
  expected.depth = 5;
  expected.b_std = std::nullopt;
  CHECK(ntk::stream::to_kernel_spec(structured) == expected);
  // Unset means the KernelSpec default.
  CHECK(ntk::stream::to_kernel_spec(v1::KernelConfig()) == ntk::KernelSpec{});
  // Mixing the forms is an error.
  structured.set_spec("linear");
  CHECK_THROWS_AS(ntk::stream::to_kernel_spec(structured), std::invalid_argument);
  v1::KernelConfig unknown;
  unknown.set_activation(static_cast<v1::Activation>(9));
  CHECK_THROWS_AS(ntk::stream::to_kernel_spec(unknown), std::invalid_argument);
}

TEST_CASE("series configs: unset fields keep the base, resolved form round-trips") {
  v1::SeriesConfig c;
  c.set_lags(3);
  c.mutable_model()->set_budget(16);
  ntk::SeriesConfig expected;
  expected.lags = 3;
  expected.model.budget = 16;
  CHECK(ntk::stream::to_series_config(c) == expected);
  // The base's model is default_series_model_config(), not a bare ModelConfig.
  CHECK(ntk::stream::to_series_config(v1::SeriesConfig()).model ==
        ntk::default_series_model_config());

  ntk::SeriesConfig odd;
  odd.lags = 12;
  odd.horizon = 3;
  odd.time_feature = true;
  odd.target = ntk::SeriesTarget::kLevel;
  odd.missing = ntk::MissingPolicy::kRunningMean;
  odd.warmup = 7;
  odd.anomaly_threshold = std::numeric_limits<double>::infinity();
  odd.exclude_anomalies = true;
  odd.max_excluded_run = 9;
  odd.model.kernel = ntk::KernelSpec::parse("rbf:lengthscale=0.25,variance=3");
  odd.model.budget = 33;
  odd.model.noise_variance = 0.125;
  odd.model.forgetting = 0.99;
  odd.model.admission_threshold = 1e-3;
  odd.model.eviction = ntk::EvictionPolicy::kOldest;
  odd.model.recompute_every = 17;
  odd.model.drift_bound = 1e-7;
  odd.model.jitter = 1e-9;
  odd.model.estimate_signal_power = false;
  CHECK(ntk::stream::to_series_config(to_proto(odd)) == odd);
  // Through bytes, as in a snapshot.
  v1::SeriesConfig parsed;
  REQUIRE(parsed.ParseFromString(to_proto(odd).SerializeAsString()));
  CHECK(ntk::stream::to_series_config(parsed) == odd);

  // The noise race: the candidates and its two knobs round-trip; an unset list means the
  // default race unless model.noise_variance is set, which fixes the ratio.
  odd.noise_candidates = {0.5, 0.05};
  odd.selection_samples = 77;
  odd.selection_margin = 3.0;
  CHECK(ntk::stream::to_series_config(to_proto(odd)) == odd);
  odd.noise_candidates.clear();
  CHECK(to_proto(odd).noise_candidates_size() == 0);
  CHECK(ntk::stream::to_series_config(to_proto(odd)) == odd);
  CHECK(ntk::stream::to_series_config(v1::SeriesConfig()).noise_candidates ==
        ntk::SeriesConfig().noise_candidates);
  v1::SeriesConfig fixed;
  fixed.mutable_model()->set_noise_variance(0.3);
  const ntk::SeriesConfig f = ntk::stream::to_series_config(fixed);
  CHECK(f.noise_candidates.empty());
  CHECK(f.model.noise_variance == 0.3);
  v1::SeriesConfig raced;
  raced.add_noise_candidates(0.2);
  raced.add_noise_candidates(0.02);
  raced.set_selection_samples(9);
  const ntk::SeriesConfig r = ntk::stream::to_series_config(raced);
  CHECK(r.noise_candidates == std::vector<double>{0.2, 0.02});
  CHECK(r.selection_samples == 9);
  raced.add_noise_candidates(-1.0);
  try {
    ntk::stream::to_series_config(raced);
    FAIL("a negative noise candidate accepted");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("noise_candidates") != std::string::npos);
  }

  v1::SeriesConfig bad;
  bad.set_lags(0);
  try {
    ntk::stream::to_series_config(bad);
    FAIL("lags = 0 accepted");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("lags") != std::string::npos);
  }
}

TEST_CASE("key configs: merge order and kernel replacement") {
  v1::KeyConfig base;
  base.mutable_series()->set_lags(5);
  base.mutable_series()->mutable_model()->mutable_kernel()->set_spec("rbf:lengthscale=2");
  v1::KeyConfig overlay;
  overlay.set_tick_value(v1::TICK_VALUE_LOG_RETURN);
  overlay.mutable_series()->set_warmup(4);
  overlay.mutable_series()->mutable_model()->mutable_kernel()->set_type(v1::KERNEL_TYPE_LINEAR);
  ntk::stream::merge_key_config(base, overlay);
  // A plain MergeFrom would keep the spec next to the structured type (invalid).
  CHECK_FALSE(base.series().model().kernel().has_spec());
  const ntk::stream::KeySettings k = ntk::stream::resolve_key_config(base);
  CHECK(k.series.lags == 5);
  CHECK(k.series.warmup == 4);
  CHECK(k.series.model.kernel.type == ntk::KernelType::kLinear);
  CHECK(k.tick_value == v1::TICK_VALUE_LOG_RETURN);
  CHECK(ntk::stream::resolve_key_config(to_proto(k)) == k);
  // Default tick value.
  CHECK(ntk::stream::resolve_key_config(v1::KeyConfig()).tick_value == v1::TICK_VALUE_MID_OR_LAST);

  // Noise candidates are replaced, not appended to; a fixed ratio ends the base's race.
  v1::KeyConfig raced = to_proto(k);
  REQUIRE(raced.series().noise_candidates_size() == 4);
  v1::KeyConfig other;
  other.mutable_series()->add_noise_candidates(0.3);
  ntk::stream::merge_key_config(raced, other);
  CHECK(ntk::stream::resolve_key_config(raced).series.noise_candidates == std::vector<double>{0.3});
  v1::KeyConfig fix;
  fix.mutable_series()->mutable_model()->set_noise_variance(0.05);
  ntk::stream::merge_key_config(raced, fix);
  const ntk::stream::KeySettings fixed = ntk::stream::resolve_key_config(raced);
  CHECK(fixed.series.noise_candidates.empty());
  CHECK(fixed.series.model.noise_variance == 0.05);
}

TEST_CASE("series state: a restored predictor continues exactly like the original") {
  for (const int feature_dim : {0, 3}) {
    CAPTURE(feature_dim);
    ntk::SeriesConfig config;
    config.lags = 4;
    config.horizon = feature_dim == 0 ? 2 : 1;
    config.warmup = 5;
    config.model.budget = 12;
    ntk::SeriesPredictor original =
        feature_dim == 0 ? ntk::SeriesPredictor(config) : ntk::SeriesPredictor(config, feature_dim);
    std::mt19937_64 rng(7);
    std::normal_distribution<double> noise(0.0, 0.1);
    auto feed = [&](ntk::SeriesPredictor& p, int t) {
      const double y = std::sin(0.3 * t) + noise(rng);
      if (feature_dim == 0) return p.observe(static_cast<std::uint64_t>(t), 1000ull * t, y);
      Eigen::VectorXd x(3);
      x << std::sin(0.3 * t), std::cos(0.3 * t), 0.01 * t;
      return p.observe(static_cast<std::uint64_t>(t), 1000ull * t, x, y);
    };
    for (int t = 0; t < 60; ++t) feed(original, t);

    const ntk::SeriesState state = original.export_state();
    v1::SeriesState wire;
    REQUIRE(wire.ParseFromString(to_proto(state).SerializeAsString()));
    const ntk::SeriesState back = from_proto(wire);
    CHECK(back.model.inputs == state.model.inputs);
    CHECK(back.model.factor == state.model.factor);
    CHECK(back.model.sigma == state.model.sigma);
    CHECK(back.model.sigma_pending == state.model.sigma_pending);
    CHECK(back.model.slots == state.model.slots);
    CHECK(back.lag_values == state.lag_values);
    CHECK(back.counters == state.counters);
    CHECK(back.score == state.score);
    CHECK(back.last_seq == state.last_seq);
    ntk::SeriesPredictor restored = ntk::SeriesPredictor::import_state(back);

    const std::mt19937_64 saved = rng;
    std::vector<ntk::Outcome> a, b;
    for (int t = 60; t < 100; ++t) a.push_back(feed(original, t));
    rng = saved;
    for (int t = 60; t < 100; ++t) b.push_back(feed(restored, t));
    for (std::size_t i = 0; i < a.size(); ++i) {
      REQUIRE(a[i].status == b[i].status);
      REQUIRE(same(a[i].mean, b[i].mean));
      REQUIRE(same(a[i].sd, b[i].sd));
      REQUIRE(same(a[i].z, b[i].z));
    }
  }
  // A matrix whose values do not match its shape.
  v1::SeriesState broken;
  broken.mutable_model()->mutable_gram()->set_rows(2);
  broken.mutable_model()->mutable_gram()->set_cols(2);
  broken.mutable_model()->mutable_gram()->add_values(1.0);
  CHECK_THROWS_AS(from_proto(broken), std::invalid_argument);
}

TEST_CASE("kernel configs: the spec with any one structured field is refused") {
  // Each structured field alone next to a spec: the spec would silently win.
  const std::vector<std::pair<const char*, void (*)(v1::KernelConfig&)>> fields = {
      {"type", [](v1::KernelConfig& c) { c.set_type(v1::KERNEL_TYPE_RBF); }},
      {"activation", [](v1::KernelConfig& c) { c.set_activation(v1::ACTIVATION_ERF); }},
      {"depth", [](v1::KernelConfig& c) { c.set_depth(2); }},
      {"w_std", [](v1::KernelConfig& c) { c.set_w_std(1.5); }},
      {"b_std", [](v1::KernelConfig& c) { c.set_b_std(0.5); }},
      {"no_bias", [](v1::KernelConfig& c) { c.mutable_no_bias(); }},
      {"parameterization",
       [](v1::KernelConfig& c) { c.set_parameterization(v1::PARAMETERIZATION_STANDARD); }},
      {"width", [](v1::KernelConfig& c) { c.set_width(64); }},
      {"output", [](v1::KernelConfig& c) { c.set_output(v1::KERNEL_OUTPUT_NNGP); }},
      {"lengthscale", [](v1::KernelConfig& c) { c.set_lengthscale(0.5); }},
      {"variance", [](v1::KernelConfig& c) { c.set_variance(2.0); }},
      {"degree", [](v1::KernelConfig& c) { c.set_degree(3); }},
      {"gamma", [](v1::KernelConfig& c) { c.set_gamma(0.25); }},
      {"coef0", [](v1::KernelConfig& c) { c.set_coef0(1.0); }},
  };
  for (const auto& [name, set] : fields) {
    CAPTURE(name);
    v1::KernelConfig c;
    c.set_spec("polynomial:degree=2");
    set(c);
    try {
      ntk::stream::to_kernel_spec(c);
      FAIL("spec and a structured field accepted together");
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()) ==
            "kernel: spec 'polynomial:degree=2' and structured fields are both set; give the "
            "kernel either as a spec or as fields");
    }
  }
}

TEST_CASE("key configs: an unknown tick value is refused") {
  v1::KeyConfig c;
  c.set_tick_value(static_cast<v1::TickValue>(99));
  try {
    ntk::stream::resolve_key_config(c);
    FAIL("an unknown tick value accepted");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()) == "tick_value has the value 99, unknown to this version");
  }
}

TEST_CASE("series state: last_seq 0, the excluded run and the rivals' errors round-trip") {
  ntk::SeriesState state = ntk::SeriesPredictor(ntk::SeriesConfig()).export_state();
  REQUIRE(!state.rivals.empty());  // the default config races its noise candidates
  // Sequence number 0 is a sequence number: a restored key must still refuse it again.
  state.last_seq = 0;
  state.excluded_run = 3;
  state.leader_sse = 0.75;
  for (std::size_t i = 0; i < state.rivals.size(); ++i) {
    state.rivals[i].sse = 1.5 + static_cast<double>(i);
  }
  v1::SeriesState wire;
  REQUIRE(wire.ParseFromString(to_proto(state).SerializeAsString()));
  CHECK(wire.has_last_seq());
  const ntk::SeriesState back = from_proto(wire);
  REQUIRE(back.last_seq.has_value());
  CHECK(*back.last_seq == 0u);
  CHECK(back.excluded_run == 3);
  CHECK(back.leader_sse == 0.75);
  REQUIRE(back.rivals.size() == state.rivals.size());
  for (std::size_t i = 0; i < back.rivals.size(); ++i) {
    CHECK(back.rivals[i].sse == 1.5 + static_cast<double>(i));
  }
  // And no sequence number at all stays none.
  state.last_seq.reset();
  CHECK(!from_proto(to_proto(state)).last_seq.has_value());
}

TEST_CASE("model counters: every field of the state and of the stats form round-trips") {
  // Distinct values, so that a field written to or read from another one shows.
  ntk::ModelState state = ntk::SeriesPredictor(ntk::SeriesConfig()).export_state().model;
  state.updates = 11;
  state.admitted = 12;
  state.evicted = 13;
  state.recomputes = 14;
  state.pivot_failures = 15;
  state.covariance_repairs = 16;
  state.resets = 17;
  v1::ModelState wire;
  REQUIRE(wire.ParseFromString(to_proto(state).SerializeAsString()));
  const ntk::ModelState back = from_proto(wire);
  CHECK(back.updates == 11u);
  CHECK(back.admitted == 12u);
  CHECK(back.evicted == 13u);
  CHECK(back.recomputes == 14u);
  CHECK(back.pivot_failures == 15u);
  CHECK(back.covariance_repairs == 16u);
  CHECK(back.resets == 17u);

  const ntk::ModelCounters c{21, 22, 23, 24, 25, 26, 27};
  const v1::ModelCounters pc = to_proto(c);
  CHECK(pc.updates() == 21u);
  CHECK(pc.admitted() == 22u);
  CHECK(pc.evicted() == 23u);
  CHECK(pc.recomputes() == 24u);
  CHECK(pc.pivot_failures() == 25u);
  CHECK(pc.covariance_repairs() == 26u);
  CHECK(pc.resets() == 27u);
}
