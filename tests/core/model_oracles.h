// Independent oracles for the online GP tests: deliberately naive re-implementations with
// explicit inverses and full recomputation, written from the equations (DESIGN §4,
// KRLS-T paper / KAFBOX krlst.m), sharing no code with core/src/model.cc.
#pragma once

#include <Eigen/Dense>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "ntk/core/kernel.h"
#include "ntk/core/model.h"

namespace ntk::test {

// Exact GP regression on all points seen so far, prior k + jitter (white noise in f),
// noise variance `noise`: mean = k^T (K + (j + noise) I)^{-1} y,
// var_f = k(x,x) + j - k^T (K + (j + noise) I)^{-1} k.
inline Prediction exact_gp(const Kernel& kernel, const std::vector<Eigen::VectorXd>& xs,
                           const std::vector<double>& ys, const Eigen::VectorXd& x, double noise,
                           double jitter) {
  const Eigen::Index n = static_cast<Eigen::Index>(xs.size());
  Prediction p;
  const double kss = kernel(x, x) + jitter;
  if (n == 0) {
    p.var_f = kss;
    p.var_y = kss + noise;
    return p;
  }
  Eigen::MatrixXd K(n, n);
  Eigen::VectorXd k(n), y(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    for (Eigen::Index j = 0; j < n; ++j) K(i, j) = kernel(xs[i], xs[j]);
    k(i) = kernel(xs[i], x);
    y(i) = ys[static_cast<std::size_t>(i)];
  }
  K.diagonal().array() += jitter + noise;
  const Eigen::LLT<Eigen::MatrixXd> llt(K);
  p.mean = k.dot(llt.solve(y));
  p.var_f = kss - k.dot(llt.solve(k));
  p.var_y = p.var_f + noise;
  return p;
}

// KRLS-T as in KAFBOX's krlst.m, with explicit Q = (K_D + jI)^{-1} and K_D recomputed
// from the inputs at every step. Unit signal power (estimate_signal_power = false).
class NaiveKrlst {
 public:
  NaiveKrlst(const ModelConfig& c, std::shared_ptr<const Kernel> k) : c_(c), k_(std::move(k)) {}

  struct Step {
    Prediction pred;
    bool admitted = false;
    int evicted = -1;
  };

  Prediction predict(const Eigen::VectorXd& x) const {
    const Eigen::Index m = static_cast<Eigen::Index>(dict_.size());
    const double lambda = c_.forgetting;
    const double kss = (*k_)(x, x) + c_.jitter;
    Prediction p;
    if (m == 0) {
      p.var_f = kss;
    } else {
      const Eigen::MatrixXd Sigma = lambda * Sigma_ + (1 - lambda) * gram_jittered();
      const Eigen::VectorXd mu = std::sqrt(lambda) * mu_;
      const Eigen::VectorXd kb = kvec(x);
      const Eigen::VectorXd q = Q_ * kb;
      const double gamma2 = std::max(0.0, kss - kb.dot(q));
      p.mean = q.dot(mu);
      p.var_f = std::max(0.0, gamma2 + q.dot(Sigma * q));
    }
    p.var_y = p.var_f + c_.noise_variance;
    return p;
  }

  Step update(const Eigen::VectorXd& x, double y) {
    Step st;
    const Eigen::Index m = static_cast<Eigen::Index>(dict_.size());
    const double lambda = c_.forgetting;
    if (m > 0) {
      Sigma_ = lambda * Sigma_ + (1 - lambda) * gram_jittered();
      mu_ = std::sqrt(lambda) * mu_;
    }
    const double kss = (*k_)(x, x) + c_.jitter;
    Eigen::VectorXd kb = kvec(x), q = Q_ * kb, h = Sigma_ * q;
    const double gamma2 = m == 0 ? kss : std::max(0.0, kss - kb.dot(q));
    const double var_f = std::max(0.0, gamma2 + q.dot(h));
    const double var_y = c_.noise_variance + var_f;
    const double mean = m == 0 ? 0.0 : q.dot(mu_);
    st.pred = {mean, var_f, var_y};
    const bool admit = m == 0 || gamma2 > c_.admission_threshold * kss;
    if (admit) {
      dict_.push_back(x);
      Eigen::VectorXd p(m + 1);
      p << h, var_f;
      Eigen::VectorXd mu(m + 1);
      mu << mu_, mean;
      Eigen::MatrixXd S(m + 1, m + 1);
      S.topLeftCorner(m, m) = Sigma_;
      S.col(m).head(m) = h;
      S.row(m).head(m) = h.transpose();
      S(m, m) = var_f;
      mu_ = mu + (y - mean) / var_y * p;
      Sigma_ = S - p * p.transpose() / var_y;
      st.admitted = true;
    } else {
      mu_ += (y - mean) / var_y * h;
      Sigma_ -= h * h.transpose() / var_y;
    }
    Q_ = gram_jittered().inverse();
    if (static_cast<int>(dict_.size()) > c_.budget) {
      int r = 0;
      if (c_.eviction == EvictionPolicy::kMinLoss) {
        const Eigen::VectorXd err = (Q_ * mu_).cwiseAbs().cwiseQuotient(Q_.diagonal());
        err.minCoeff(&r);
      }
      st.evicted = r;
      remove(r);
      Q_ = gram_jittered().inverse();
    }
    return st;
  }

  // The KRLS-T criterion of every basis right now (brute force, explicit inverse).
  Eigen::VectorXd criterion() const { return (Q_ * mu_).cwiseAbs().cwiseQuotient(Q_.diagonal()); }
  const std::vector<Eigen::VectorXd>& dict() const { return dict_; }

 private:
  Eigen::VectorXd kvec(const Eigen::VectorXd& x) const {
    Eigen::VectorXd kb(static_cast<Eigen::Index>(dict_.size()));
    for (std::size_t i = 0; i < dict_.size(); ++i)
      kb(static_cast<Eigen::Index>(i)) = (*k_)(dict_[i], x);
    return kb;
  }
  Eigen::MatrixXd gram_jittered() const {
    const Eigen::Index m = static_cast<Eigen::Index>(dict_.size());
    Eigen::MatrixXd K(m, m);
    for (Eigen::Index i = 0; i < m; ++i)
      for (Eigen::Index j = 0; j < m; ++j) K(i, j) = (*k_)(dict_[i], dict_[j]);
    K.diagonal().array() += c_.jitter;
    return K;
  }
  void remove(int r) {
    const Eigen::Index m = static_cast<Eigen::Index>(dict_.size());
    std::vector<Eigen::Index> keep;
    for (Eigen::Index i = 0; i < m; ++i)
      if (i != r) keep.push_back(i);
    Eigen::VectorXd mu(m - 1);
    Eigen::MatrixXd S(m - 1, m - 1);
    for (Eigen::Index a = 0; a < m - 1; ++a) {
      mu(a) = mu_(keep[a]);
      for (Eigen::Index b = 0; b < m - 1; ++b) S(a, b) = Sigma_(keep[a], keep[b]);
    }
    mu_ = mu;
    Sigma_ = S;
    dict_.erase(dict_.begin() + r);
  }

  ModelConfig c_;
  std::shared_ptr<const Kernel> k_;
  std::vector<Eigen::VectorXd> dict_;
  Eigen::VectorXd mu_;
  Eigen::MatrixXd Sigma_, Q_;
};

// Online linear AR(p) by recursive least squares with an intercept (the baseline of the
// chaotic benchmarks). Predicts before it updates.
class RlsAr {
 public:
  explicit RlsAr(int p, double lambda = 1.0, double delta = 1e4)
      : w_(Eigen::VectorXd::Zero(p + 1)),
        P_(Eigen::MatrixXd::Identity(p + 1, p + 1) * delta),
        lambda_(lambda) {}
  double predict(const Eigen::VectorXd& lags) const { return w_.dot(features(lags)); }
  void update(const Eigen::VectorXd& lags, double y) {
    const Eigen::VectorXd z = features(lags);
    const Eigen::VectorXd Pz = P_ * z;
    const Eigen::VectorXd g = Pz / (lambda_ + z.dot(Pz));
    w_ += g * (y - w_.dot(z));
    P_ = (P_ - g * Pz.transpose()) / lambda_;
  }

 private:
  Eigen::VectorXd features(const Eigen::VectorXd& lags) const {
    Eigen::VectorXd z(lags.size() + 1);
    z << lags, 1.0;
    return z;
  }
  Eigen::VectorXd w_;
  Eigen::MatrixXd P_;
  double lambda_;
};

// Mackey-Glass dx/dt = 0.2 x(t-tau) / (1 + x(t-tau)^10) - 0.1 x(t), tau = 17, history
// x = 1.2 for t <= 0. Classical RK4 with step dt = 0.1; the delayed value at the half
// step is the mean of the two stored neighbours (linear interpolation). Sampled every
// time unit after a 1000-unit transient.
inline std::vector<double> mackey_glass(int n, double tau = 17.0) {
  const double dt = 0.1;
  const int lag = static_cast<int>(std::lround(tau / dt));
  const int per_sample = 10, transient = 10000;
  std::vector<double> x(static_cast<std::size_t>(lag + 1), 1.2);
  const auto f = [](double xt, double xd) {
    return 0.2 * xd / (1.0 + std::pow(xd, 10)) - 0.1 * xt;
  };
  std::vector<double> out;
  for (int step = 0; static_cast<int>(out.size()) < n; ++step) {
    const std::size_t t = x.size() - 1;
    const double xd0 = x[t - static_cast<std::size_t>(lag)];
    const double xd1 = x[t - static_cast<std::size_t>(lag) + 1];
    const double xdh = 0.5 * (xd0 + xd1);
    const double xt = x[t];
    const double k1 = f(xt, xd0);
    const double k2 = f(xt + 0.5 * dt * k1, xdh);
    const double k3 = f(xt + 0.5 * dt * k2, xdh);
    const double k4 = f(xt + dt * k3, xd1);
    x.push_back(xt + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4));
    if (step >= transient && (step - transient) % per_sample == 0) out.push_back(x.back());
  }
  return out;
}

// Lorenz-63 (sigma 10, rho 28, beta 8/3) from (1, 1, 1), RK4 with dt = 0.01, x sampled
// every 0.05 after a 50-unit transient.
inline std::vector<double> lorenz_x(int n) {
  const double dt = 0.01, sigma = 10.0, rho = 28.0, beta = 8.0 / 3.0;
  Eigen::Vector3d s(1.0, 1.0, 1.0);
  const auto f = [&](const Eigen::Vector3d& v) {
    return Eigen::Vector3d(sigma * (v(1) - v(0)), v(0) * (rho - v(2)) - v(1),
                           v(0) * v(1) - beta * v(2));
  };
  std::vector<double> out;
  const int transient = 5000, per_sample = 5;
  for (int step = 0; static_cast<int>(out.size()) < n; ++step) {
    const Eigen::Vector3d k1 = f(s), k2 = f(s + 0.5 * dt * k1), k3 = f(s + 0.5 * dt * k2),
                          k4 = f(s + dt * k3);
    s += dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4);
    if (step >= transient && (step - transient) % per_sample == 0) out.push_back(s(0));
  }
  return out;
}

// Standardizes a series to zero mean and unit variance.
inline std::vector<double> standardized(std::vector<double> v) {
  double mean = 0, var = 0;
  for (double a : v) mean += a;
  mean /= static_cast<double>(v.size());
  for (double a : v) var += (a - mean) * (a - mean);
  const double sd = std::sqrt(var / static_cast<double>(v.size()));
  for (double& a : v) a = (a - mean) / sd;
  return v;
}

}  // namespace ntk::test
