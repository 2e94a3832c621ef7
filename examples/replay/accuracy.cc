// Forecasting baselines and scoring for the accuracy report. See accuracy.h.
#include "accuracy.h"

#include <Eigen/Cholesky>
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>

#include "ntk/core/kernel.h"

namespace ntk::replay {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

struct Moments {
  double mean = 0.0, sd = 0.0;
};

// Two-pass mean and sample standard deviation of y[0..n).
Moments moments(const std::vector<double>& y, std::size_t n) {
  Moments m;
  if (n == 0) return m;
  for (std::size_t i = 0; i < n; ++i) m.mean += y[i];
  m.mean /= static_cast<double>(n);
  double ss = 0.0;
  for (std::size_t i = 0; i < n; ++i) ss += (y[i] - m.mean) * (y[i] - m.mean);
  m.sd = n > 1 ? std::sqrt(ss / static_cast<double>(n - 1)) : 0.0;
  return m;
}

// k of 0..n-1 (all when k >= n), ascending: a partial Fisher-Yates shuffle driven by
// mt19937_64 (whose output sequence is fixed by the standard), so the subset is the same on
// every platform.
std::vector<std::size_t> subset(std::size_t n, std::size_t k, std::uint64_t seed) {
  std::vector<std::size_t> all(n);
  for (std::size_t i = 0; i < n; ++i) all[i] = i;
  if (k >= n) return all;
  std::mt19937_64 rng(seed);
  for (std::size_t i = 0; i < k; ++i) {
    const std::size_t j = i + static_cast<std::size_t>(rng() % (n - i));
    std::swap(all[i], all[j]);
  }
  all.resize(k);
  std::sort(all.begin(), all.end());
  return all;
}

}  // namespace

Forecasts::Forecasts(std::size_t rows) : mean(rows, kNaN), sd(rows, kNaN) {}

bool Forecasts::has(std::size_t row) const { return row < mean.size() && !std::isnan(mean[row]); }

PrequentialScore score_rows(const std::vector<double>& y, const Forecasts& f, std::size_t begin,
                            std::size_t end, const std::vector<bool>& use) {
  PrequentialScore s;
  for (std::size_t t = begin; t < std::min(end, y.size()); ++t) {
    if (!f.has(t) || (!use.empty() && !use[t])) continue;
    s.add(y[t], f.mean[t], f.sd[t]);
  }
  return s;
}

// --- persistence --------------------------------------------------------------------------

Forecasts persistence_forecasts(const std::vector<double>& y) {
  Forecasts f(y.size());
  double sum_sq = 0.0;  // of the changes y_k - y_{k-1}, k < t
  for (std::size_t t = 1; t < y.size(); ++t) {
    if (t >= 2 && sum_sq > 0.0) {
      f.mean[t] = y[t - 1];
      f.sd[t] = std::sqrt(sum_sq / static_cast<double>(t - 1));
    }
    const double d = y[t] - y[t - 1];
    sum_sq += d * d;
  }
  return f;
}

// --- recursive least squares ----------------------------------------------------------------

RecursiveLeastSquares::RecursiveLeastSquares(int dim, double prior_variance)
    : w_(VectorXd::Zero(dim)), p_(prior_variance * MatrixXd::Identity(dim, dim)), pz_(dim) {
  if (dim < 1 || !(prior_variance > 0.0)) {
    throw std::invalid_argument("RecursiveLeastSquares: dim >= 1 and prior_variance > 0");
  }
}

double RecursiveLeastSquares::predict(Eigen::Ref<const VectorXd> z) const { return w_.dot(z); }

double RecursiveLeastSquares::gain(Eigen::Ref<const VectorXd> z) const {
  return z.dot(p_.selfadjointView<Eigen::Lower>() * z);
}

double RecursiveLeastSquares::update(Eigen::Ref<const VectorXd> z, double t) {
  // Sherman-Morrison on P = (Z^T Z + I / prior)^{-1}: k = P z / (1 + z^T P z).
  pz_.noalias() = p_ * z;
  const double g = 1.0 + z.dot(pz_);
  const double e = t - w_.dot(z);
  w_.noalias() += pz_ * (e / g);
  p_.noalias() -= (pz_ / g) * pz_.transpose();
  p_ = 0.5 * (p_ + p_.transpose()).eval();  // keep P symmetric against rounding
  return e;
}

Forecasts ar_rls_forecasts(const std::vector<double>& y, int lags, int warmup) {
  Forecasts f(y.size());
  const std::size_t p = static_cast<std::size_t>(lags);
  const std::size_t start = std::max(p, static_cast<std::size_t>(warmup));
  if (y.size() <= start) return f;
  // Fixed centring and scale from the warm-up values: a rescaled series gives the same
  // forecasts up to the scale.
  const Moments m = moments(y, static_cast<std::size_t>(warmup));
  const double c = m.mean, s = m.sd > 0.0 ? m.sd : 1.0;
  // A vague prior (variance 1e6 per standardized coefficient): practically ordinary least
  // squares once a few samples are in.
  RecursiveLeastSquares rls(lags + 1, 1e6);
  VectorXd z(lags + 1);
  double sum_sq = 0.0;  // of the normalized a-priori errors e^2 / (1 + z^T P z)
  std::uint64_t n = 0;
  for (std::size_t t = start; t < y.size(); ++t) {
    z(0) = 1.0;
    for (std::size_t k = 0; k < p; ++k) z(static_cast<Index>(k + 1)) = (y[t - 1 - k] - c) / s;
    const double g = 1.0 + rls.gain(z);
    if (n > 0 && sum_sq > 0.0) {
      f.mean[t] = c + s * rls.predict(z);
      f.sd[t] = s * std::sqrt(sum_sq / static_cast<double>(n) * g);
    }
    const double e = rls.update(z, (y[t] - c) / s);
    sum_sq += e * e / g;
    ++n;
  }
  return f;
}

// --- the online predictor ---------------------------------------------------------------------

Forecasts series_forecasts(const std::vector<double>& y, const std::vector<std::int64_t>& times,
                           const SeriesConfig& config, std::vector<bool>* anomalies,
                           double* noise) {
  Forecasts f(y.size());
  if (anomalies) anomalies->assign(y.size(), false);
  SeriesPredictor sp(config);
  for (std::size_t t = 0; t < y.size(); ++t) {
    // Signed nanoseconds mapped order-preservingly onto uint64, as ntk-replay does.
    const std::uint64_t time = static_cast<std::uint64_t>(times[t]) ^ (std::uint64_t{1} << 63);
    const Outcome o = sp.observe(t, time, y[t]);
    if (o.status == OutcomeStatus::kScored) {
      f.mean[t] = o.mean;
      f.sd[t] = o.sd;
    }
    if (anomalies) (*anomalies)[t] = o.anomaly;
  }
  if (noise) *noise = sp.model().config().noise_variance;
  return f;
}

// --- batch kernel ridge regression ------------------------------------------------------------

KrrResult batch_krr_forecasts(const std::vector<double>& y, const KrrOptions& o,
                              std::size_t scored_begin) {
  if (o.kernels.empty() || o.lambdas.empty() || o.lags < 1 || o.max_train < 1 || o.max_select < 1) {
    throw std::invalid_argument(
        "batch KRR: needs kernels, lambdas, lags >= 1, max_train >= 1, max_select >= 1");
  }
  const std::size_t p = static_cast<std::size_t>(o.lags);
  KrrResult result{Forecasts(y.size()), o.kernels.front(), 0.0, 0, {}, 0.0};
  if (y.size() <= p + 1) return result;

  // Samples j = 0..n-1 predict row t = j + p from rows t-1..t-p, standardized with the
  // statistics of the whole series (a batch method may use them).
  const Moments m = moments(y, y.size());
  const double s = m.sd > 0.0 ? m.sd : 1.0;
  const std::size_t n = y.size() - p;
  RowMatrixXd x(static_cast<Index>(n), o.lags);
  VectorXd target(static_cast<Index>(n));
  std::vector<double> base(n);
  for (std::size_t j = 0; j < n; ++j) {
    const std::size_t t = j + p;
    for (std::size_t k = 0; k < p; ++k) {
      x(static_cast<Index>(j), static_cast<Index>(k)) = (y[t - 1 - k] - m.mean) / s;
    }
    base[j] = o.target == SeriesTarget::kChange ? y[t - 1] : m.mean;
    target(static_cast<Index>(j)) = (y[t] - base[j]) / s;
  }

  // Training samples: all of them, or a pseudo-random subset (a regular stride would alias
  // with a seasonal period, e.g. every 6th half-hour sees only 8 times of day); the kernel
  // and lambda are chosen on a subset of those.
  const std::vector<std::size_t> train = subset(n, static_cast<std::size_t>(o.max_train), 1);
  const auto gather = [&](const std::vector<std::size_t>& rows, RowMatrixXd& xs, VectorXd& ts) {
    xs.resize(static_cast<Index>(rows.size()), o.lags);
    ts.resize(static_cast<Index>(rows.size()));
    for (std::size_t i = 0; i < rows.size(); ++i) {
      xs.row(static_cast<Index>(i)) = x.row(static_cast<Index>(rows[i]));
      ts(static_cast<Index>(i)) = target(static_cast<Index>(rows[i]));
    }
  };
  const auto scored = [&](std::size_t j) { return j + p >= scored_begin; };

  // The fit for one (kernel, lambda): A = K + lambda I = L L^T, alpha = A^{-1} t,
  // diag(A^{-1}) as the column norms of L^{-1}, s2 = t^T alpha / n (ML signal variance).
  struct Fit {
    Eigen::LLT<MatrixXd> llt;
    VectorXd alpha, ainv_diag;
    double s2 = 0.0;
  };
  const auto fit = [](const MatrixXd& gram, const VectorXd& ts,
                      double lambda) -> std::optional<Fit> {
    const Index size = gram.rows();
    Fit f;
    MatrixXd a = gram;
    a.diagonal().array() += lambda;
    f.llt.compute(a);
    if (f.llt.info() != Eigen::Success) return std::nullopt;
    f.alpha = f.llt.solve(ts);
    MatrixXd linv = MatrixXd::Identity(size, size);
    f.llt.matrixL().solveInPlace(linv);
    f.ainv_diag = linv.colwise().squaredNorm().transpose();
    f.s2 = ts.dot(f.alpha) / static_cast<double>(size);
    if (!(f.s2 > 0.0) || !f.ainv_diag.allFinite()) return std::nullopt;
    return f;
  };

  // Choose (kernel, lambda) by the leave-one-out MSE of the scored samples of the
  // selection subset (LOO residual of sample i: alpha_i / [A^{-1}]_ii).
  std::vector<std::size_t> select;
  for (const std::size_t i : subset(train.size(), static_cast<std::size_t>(o.max_select), 2)) {
    select.push_back(train[i]);
  }
  RowMatrixXd xs;
  VectorXd ts;
  gather(select, xs, ts);
  std::optional<std::size_t> best_kernel;
  double best_lambda = 0.0, best_mse = std::numeric_limits<double>::infinity();
  for (std::size_t kk = 0; kk < o.kernels.size(); ++kk) {
    const MatrixXd gram = make_kernel(o.kernels[kk])->gram(xs);
    for (const double lambda : o.lambdas) {
      const std::optional<Fit> f = fit(gram, ts, lambda);
      if (!f) continue;
      double se = 0.0;
      std::size_t count = 0;
      for (std::size_t i = 0; i < select.size(); ++i) {
        if (!scored(select[i])) continue;
        const double r = f->alpha(static_cast<Index>(i)) / f->ainv_diag(static_cast<Index>(i));
        se += r * r;
        ++count;
      }
      const double mse = count ? se / static_cast<double>(count) : kNaN;
      if (mse < best_mse) {
        best_mse = mse;
        best_kernel = kk;
        best_lambda = lambda;
      }
    }
  }
  if (!best_kernel) throw std::invalid_argument("batch KRR: no candidate could be factorized");

  RowMatrixXd xt;
  VectorXd tt;
  gather(train, xt, tt);
  const Index nt = xt.rows();
  const std::shared_ptr<const Kernel> kernel = make_kernel(o.kernels[*best_kernel]);
  const std::optional<Fit> f = fit(kernel->gram(xt), tt, best_lambda);
  if (!f) throw std::invalid_argument("batch KRR: the chosen fit could not be factorized");
  result.kernel = o.kernels[*best_kernel];
  result.lambda = best_lambda;
  result.train = train.size();
  for (const std::size_t j : train) result.train_rows.push_back(j + p);
  result.loo_mse = best_mse;
  const auto put = [&](std::size_t j, double mean_std, double var_std) {
    result.forecasts.mean[j + p] = base[j] + s * mean_std;
    result.forecasts.sd[j + p] = s * std::sqrt(var_std);
  };
  // Training samples: leave-one-out mean t_i - alpha_i / [A^{-1}]_ii, variance
  // s2 / [A^{-1}]_ii.
  std::vector<bool> is_train(n, false);
  for (Index i = 0; i < nt; ++i) {
    const std::size_t j = train[static_cast<std::size_t>(i)];
    is_train[j] = true;
    if (!scored(j)) continue;
    put(j, tt(i) - f->alpha(i) / f->ainv_diag(i), f->s2 / f->ainv_diag(i));
  }
  // Every other scored sample, in blocks: mean k.alpha, variance
  // s2 (k(x,x) + lambda - |L^{-1} k|^2).
  constexpr std::size_t kBlock = 512;
  std::vector<std::size_t> rest;
  for (std::size_t j = 0; j < n; ++j) {
    if (scored(j) && !is_train[j]) rest.push_back(j);
  }
  for (std::size_t b = 0; b < rest.size(); b += kBlock) {
    const std::size_t e = std::min(rest.size(), b + kBlock);
    RowMatrixXd xb(static_cast<Index>(e - b), o.lags);
    for (std::size_t r = b; r < e; ++r) {
      xb.row(static_cast<Index>(r - b)) = x.row(static_cast<Index>(rest[r]));
    }
    const MatrixXd kc = kernel->cross(xt, xb);  // nt x B
    const VectorXd means = kc.transpose() * f->alpha;
    MatrixXd v = kc;
    f->llt.matrixL().solveInPlace(v);
    for (std::size_t r = b; r < e; ++r) {
      const Index c = static_cast<Index>(r - b);
      const double kxx = (*kernel)(xb.row(c).transpose());
      // k(x,x) + lambda - k^T A^{-1} k >= lambda in exact arithmetic (a Schur complement).
      const double var = f->s2 * std::max(kxx + best_lambda - v.col(c).squaredNorm(), best_lambda);
      put(rest[r], means(c), var);
    }
  }
  return result;
}

}  // namespace ntk::replay
