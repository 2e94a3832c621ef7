// One-step forecasting methods and scoring for the accuracy report (ntk-accuracy,
// ACCURACY.md): the baselines the online predictor is compared with, run over the same
// recorded series and scored on the same rows.
//
// WHAT THIS FILE PROVIDES
//   Every method turns a series y_0, ..., y_{N-1} into Forecasts: for row t a predictive
//   mean and standard deviation of y_t (original units) or none. All methods except the
//   batch upper bound are prequential: the forecast of row t uses rows 0..t-1 only.
//   - persistence: mean y_{t-1}; sd the root mean square of the one-step changes seen so
//     far (rows 1..t-1).
//   - AR(p) by recursive least squares (RecursiveLeastSquares): y_t on (1, y_{t-1}, ...,
//     y_{t-p}), inputs centred and scaled by the mean and sd of the first `warmup` values
//     (fixed afterwards); predictive variance sigma2 (1 + z^T P z) with sigma2 the mean of
//     the past normalized a-priori errors e^2 / (1 + z^T P z) (S. Haykin, "Adaptive
//     Filter Theory", ch. 10, 4th ed., 2002).
//   - the online predictor: one SeriesPredictor per series, exactly as ntk-replay runs it.
//   - batch kernel ridge regression (KRR, a GP posterior mean) fitted on the whole series
//     at once — past and future — as an upper bound: the same lag inputs and target as
//     the online predictor, standardized with the mean and sd of the whole series; at most
//     max_train training samples (a fixed pseudo-random subset when there are more); each training
//     sample is predicted leave-one-out (closed form, C. E. Rasmussen, C. K. I. Williams,
//     "Gaussian Processes for Machine Learning", 2006, eq. 5.12), every other sample from
//     the fit; the kernel and ridge lambda are those with the lowest leave-one-out MSE on
//     the scored rows of a subset of at most max_select training samples; the signal
//     variance is its maximum-likelihood value.
//
// THREAD SAFETY: plain functions of their arguments.
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ntk/core/kernel_spec.h"
#include "ntk/core/series.h"

namespace ntk::replay {

// One forecast per row; mean NaN where the method made none.
struct Forecasts {
  std::vector<double> mean;
  std::vector<double> sd;

  explicit Forecasts(std::size_t rows = 0);
  bool has(std::size_t row) const;
};

// Scores the forecasts of rows [begin, end) that have one and for which use[row] is true
// (use empty: every row).
PrequentialScore score_rows(const std::vector<double>& y, const Forecasts& f, std::size_t begin,
                            std::size_t end, const std::vector<bool>& use = {});

Forecasts persistence_forecasts(const std::vector<double>& y);

// Recursive least squares for y ~ w.z with the prior w ~ N(0, prior_variance I):
// after samples (z_1, t_1) ... (z_n, t_n), weights() equals the ridge solution
// (Z^T Z + I / prior_variance)^{-1} Z^T t (up to rounding).
// INITIAL VALUE: w = 0, P = prior_variance I.
class RecursiveLeastSquares {
 public:
  // requires: dim >= 1, prior_variance > 0.
  RecursiveLeastSquares(int dim, double prior_variance);
  double predict(Eigen::Ref<const Eigen::VectorXd> z) const;  // w.z
  double gain(Eigen::Ref<const Eigen::VectorXd> z) const;     // z^T P z
  // ensures: w <- w + P z e / (1 + z^T P z), P <- P - P z z^T P / (1 + z^T P z), with
  // e = t - w.z; returns e.
  double update(Eigen::Ref<const Eigen::VectorXd> z, double t);
  const Eigen::VectorXd& weights() const { return w_; }
  const Eigen::MatrixXd& covariance() const { return p_; }  // P

 private:
  Eigen::VectorXd w_;
  Eigen::MatrixXd p_;
  Eigen::VectorXd pz_;  // scratch
};

// AR(lags) by recursive least squares (see the file comment); forecasts from row
// max(lags, warmup) + 1 on.
Forecasts ar_rls_forecasts(const std::vector<double>& y, int lags, int warmup);

// The online predictor over the series: times in nanoseconds (row order; they only feed
// the elapsed-time feature). anomalies (if not null) gets one flag per row; noise (if not
// null) the noise ratio forecasts came from at the end (the winner of the noise race).
Forecasts series_forecasts(const std::vector<double>& y, const std::vector<std::int64_t>& times,
                           const SeriesConfig& config, std::vector<bool>* anomalies = nullptr,
                           double* noise = nullptr);

struct KrrOptions {
  int lags = 8;
  SeriesTarget target = SeriesTarget::kChange;
  std::vector<KernelSpec> kernels;  // candidates, at least one
  std::vector<double> lambdas = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};
  int max_train = 2000;   // training samples at most (a fixed pseudo-random subset)
  int max_select = 1000;  // of those, used to choose the kernel and lambda
};

struct KrrResult {
  Forecasts forecasts;                  // rows [scored_begin, N) with at least `lags` predecessors
  KernelSpec kernel;                    // the chosen candidate
  double lambda = 0.0;                  // the chosen ridge (relative to the kernel's scale)
  std::size_t train = 0;                // training samples
  std::vector<std::size_t> train_rows;  // the rows they predict, ascending
  double loo_mse = 0.0;                 // standardized leave-one-out MSE of the choice
};

// Batch KRR (see the file comment) forecasting rows [scored_begin, N). Throws
// std::invalid_argument if no candidate has a positive definite K + lambda I.
KrrResult batch_krr_forecasts(const std::vector<double>& y, const KrrOptions& options,
                              std::size_t scored_begin);

}  // namespace ntk::replay
