// OnlineGP: a fixed-budget online Gaussian-process regressor (KRLS-T family).
//
// WHAT THIS OBJECT REPRESENTS
//   Bayesian online kernel regression with a dictionary D of at most budget() past
//   inputs: the posterior N(mu, Sigma) over f at the dictionary points, updated by every
//   sample whether or not it enters D, as in the kernel recursive least-squares tracker
//   (S. Van Vaerenbergh, M. Lázaro-Gredilla, I. Santamaría, "Kernel recursive
//   least-squares tracker for time-varying regression", IEEE TNNLS 23(8), 2012).
//   The prior on the dictionary values is K_D + jitter I; the factor L of that matrix is
//   kept by IncrementalCholesky (no explicit inverse). Every update costs O(M^2 + M d)
//   and allocates nothing once constructed.
//
//   Per sample (x, y):
//   1. forget (lambda < 1):  Sigma <- lambda Sigma + (1 - lambda) K_D,  mu <- sqrt(lambda) mu
//   2. predict: k = k(D, x), q = (K_D + jI)^{-1} k, gamma2 = k(x,x) + j - k.q,
//      h = Sigma q, var_f = gamma2 + q.h, var_y = noise + var_f, mean = q.mu
//      (returned scaled by the signal power s2, see below)
//   3. admit x if gamma2 > admission_threshold * (k(x,x) + j) (ALD test), then absorb y:
//      mu += p (y - mean)/var_y, Sigma -= p p^T / var_y with p = [h; var_f] (admitted) or
//      p = h (not admitted)
//   4. over budget: evict the basis whose removal costs least — min_loss:
//      argmin_i |(Q mu)_i| / Q_ii with Q = (K_D + jI)^{-1} (the new point included); or
//      the oldest (a sliding window that forgets the past)
//   5. every recompute_every updates, or when the drift measure
//      |L L^T - (K_D + jI)|_F / |K_D + jI|_F exceeds drift_bound: K_D recomputed from the
//      stored inputs, L refactorized.
//   Before step 3, a var_f below zero by more than 1e-3 of the noise means that rounding
//   has taken Sigma outside 0 <= Sigma <= K_D + jI (near-singular dictionaries only):
//   Sigma is repaired first, its eigenvalues relative to K_D + jI clipped to [0, 1]
//   (O(M^3), counted in covariance_repairs; at most 1 + updates / M of them), and x
//   predicted again. A state that is no
//   longer finite (an overflow near the kernels' range limits) starts over from the prior
//   (counted in resets): its predictions would all be NaN, and it would not restore.
//   Storage (model.cc): Sigma is kept in slots that do not move when a basis is removed,
//   its rank-1 updates are folded in 8 at a time (exported as sigma_pending until then),
//   and the eviction's downdate of L runs with the next update's forward solve; under
//   min_loss that pass also yields what diag(Q) needs for the eviction, which finishes as
//   a second right-hand side of the next update's upper solve. min_loss also keeps an
//   estimate of (K_D + jitter I)^{-1} mu with a proven error bound, so that evicting the
//   sample just admitted (the usual case) needs no solve when the bound proves it is the
//   criterion's pick; otherwise the criterion is solved exactly.
//
//   Signal power: with estimate_signal_power, the prior is s2 * k with s2 estimated
//   online by maximum likelihood from the standardized residuals (y-mean)^2/var_y
//   (forgotten with lambda), as in KRLS-T; noise_variance is then the noise-to-signal
//   ratio. Means do not depend on s2; reported variances are s2 * (unit-scale variance).
//
// CONVENTION (checked by tests after every operation; see check_invariants())
//   dictionary_size() <= budget(); L L^T == K_D + jitter I; Sigma (covariance()) symmetric
//   with |Sigma_ij| <= sqrt(Sigma_ii Sigma_jj); free slots zero;
//   mu.size() == dictionary_size(); qdiag == diag((K_D + jI)^{-1}) where that is finite
//   (it overflows to +inf for a prior variance near the smallest double, and downdates
//   of +inf leave NaN, until the next recomputation).
//
// INITIAL VALUE: empty dictionary; the first sample is always admitted.
// THREAD SAFETY: const methods (predict, explain, export_state) may run concurrently
//   (the first of them to run after an update applies the deferred downdate of L, under a
//   mutex); update needs exclusive access.
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ntk/core/cholesky.h"
#include "ntk/core/kernel.h"

namespace ntk {

// Largest input norm and target magnitude update()/predict() accept: the NTK and RBF
// kernels with moderate parameters are free of overflow and NaN up to input norms of
// 1e150 (kernel.h). Larger values are refused with std::invalid_argument, like NaN, and
// leave the model unchanged. Some kernels overflow sooner (polynomial: |x|^(2 degree)
// beyond ~1e308); update() also refuses an input whose k(x, x) is not finite.
inline constexpr double kMaxMagnitude = 1e150;

// Largest budget ModelConfig::validate() accepts. A model allocates three square
// (budget + 1)^2 matrices of doubles up front (6.4 GB at this bound) and an update costs
// O(budget^2) (about 25 us at 256, so near 0.1 s here).
inline constexpr int kMaxBudget = 16384;

// What happens when an admitted sample would exceed the budget.
enum class EvictionPolicy {
  // KRLS-T's criterion: drop the basis whose removal changes the posterior mean least,
  // |(Q mu)_i| / Q_ii. Keeps informative old points (e.g. a rare regime).
  kMinLoss,
  // Drop the oldest basis: a sliding window over the last budget() admitted inputs; the
  // model forgets everything older.
  kOldest,
};
std::string_view to_string(EvictionPolicy);

struct ModelConfig {
  KernelSpec kernel;  // default: the NTK of an erf network, depth 1 (kernel_spec.h)
  int budget = 64;    // M, maximum dictionary size, in [1, kMaxBudget]
  // Noise variance (a ratio to s2 when estimated). Each sample uses at least 1e-12 times
  // its prior variance k(x, x) + jitter: below that, double precision cannot represent
  // the posterior update (its variances would come out negative).
  double noise_variance = 1e-2;
  double forgetting = 1.0;  // lambda in (0, 1]; 1: stationary, no forgetting
  // ALD threshold on gamma2 / k(x,x), in [0, 1). At least 1e-8 is used: near-repeats
  // admitted with smaller residuals made the dictionary as good as singular, and the
  // posterior covariance lost positive definiteness to rounding (with jitter 0).
  double admission_threshold = 1e-4;
  EvictionPolicy eviction = EvictionPolicy::kMinLoss;
  int recompute_every = 1000;  // refactorize from scratch every n updates; 0: never
  double drift_bound = 1e-9;   // refactorize when the drift measure exceeds this
  double jitter = 1e-10;       // added to the diagonal of K_D (and to k(x,x))
  bool estimate_signal_power = true;

  // Throws std::invalid_argument naming the first offending field and value.
  void validate() const;
  friend bool operator==(const ModelConfig&, const ModelConfig&) = default;
};

struct Prediction {
  double mean = 0.0;
  double var_f = 0.0;  // variance of the latent function value
  double var_y = 0.0;  // variance of a new observation (var_f + noise)
};

struct UpdateResult {
  Prediction prediction;  // made before y was seen (prequential)
  bool admitted = false;  // x entered the dictionary (it may have been evicted again)
  int evicted = -1;       // dictionary index evicted (before removal; == size when x itself), or -1
  bool recomputed = false;  // the factor was rebuilt from scratch during this update
  // The model's state had overflowed and started over from the prior (counters().resets).
  // Before the prediction: x is the new dictionary's first sample (admitted) and
  // prediction is the prior's. After absorbing y: admitted and evicted say what happened
  // before, and the dictionary is now empty.
  bool reset = false;
};

struct Contribution {
  int index = 0;             // dictionary index
  std::uint64_t sample = 0;  // update count at which the point was admitted
  double weight = 0.0;       // sqrt(lambda) q_i mu_i: its additive share of the predicted mean
  Eigen::VectorXd input;     // the stored input
};

// Everything that defines the model, as plain data (its protobuf form lives in proto/).
struct ModelState {
  ModelConfig config;
  int dim = 0;
  RowMatrixXd inputs;                  // m x d
  std::vector<std::uint64_t> samples;  // m, admission update counts
  Eigen::MatrixXd gram;                // m x m, K_D (without jitter)
  Eigen::MatrixXd factor;              // m x m, lower triangular L
  Eigen::VectorXd mu;                  // m
  // The posterior covariance is sigma - sigma_pending sigma_pending^T (covariance()): the
  // model folds its rank-1 updates into sigma a few at a time (at most 7 pending columns).
  Eigen::MatrixXd sigma;          // m x m, symmetric
  Eigen::MatrixXd sigma_pending;  // m x p, p < 8
  // Where the model keeps each entry's row of sigma (distinct, in [0, budget]); empty:
  // 0..m-1. Carried so that an imported model computes in the same order (bit-identical).
  std::vector<int> slots;
  Eigen::VectorXd qdiag;  // diag((K_D + jI)^{-1}): m under kMinLoss, empty under kOldest
  double s2_num = 0.0, s2_den = 0.0;
  std::uint64_t updates = 0, admitted = 0, evicted = 0, recomputes = 0, pivot_failures = 0;
  std::uint64_t covariance_repairs = 0, resets = 0;
  std::uint64_t since_recompute = 0;
  double last_drift = 0.0;
};

struct ModelCounters {
  std::uint64_t updates = 0;
  std::uint64_t admitted = 0;
  std::uint64_t evicted = 0;
  std::uint64_t recomputes = 0;
  std::uint64_t pivot_failures = 0;  // appends refused by the factor (treated as not admitted)
  // Posterior covariances repaired after rounding made them indefinite (update()).
  std::uint64_t covariance_repairs = 0;
  // Restarts from the prior after the state stopped being finite (update()).
  std::uint64_t resets = 0;
};

class OnlineGP {
 public:
  // requires: config.validate() passes, dim >= 1 (std::invalid_argument otherwise).
  OnlineGP(const ModelConfig& config, int dim);
  ~OnlineGP();
  OnlineGP(const OnlineGP&);
  OnlineGP& operator=(const OnlineGP&);
  OnlineGP(OnlineGP&&) noexcept;
  OnlineGP& operator=(OnlineGP&&) noexcept;

  // One sample. requires: x.size() == dim(), x and y finite, |x| and |y| <= kMaxMagnitude,
  // k(x, x) finite; otherwise throws std::invalid_argument with the offending value and
  // the state is unchanged.
  UpdateResult update(Eigen::Ref<const Eigen::VectorXd> x, double y);

  // Pure prediction (no state change): what update(x, y) would report before seeing y
  // (forgetting included), up to rounding. Allocates its O(M) scratch. Throws like
  // update() on x, except that an x whose k(x, x) is not finite gets a non-finite
  // variance instead.
  Prediction predict(Eigen::Ref<const Eigen::VectorXd> x) const;

  // The min(k, dictionary_size()) dictionary points contributing most (by |weight|) to
  // predict(x).mean, largest first (ties: lower index). The weights of all the points add
  // up to that mean (up to rounding).
  // requires: x as for predict(), k >= 0 (std::invalid_argument otherwise).
  std::vector<Contribution> explain(Eigen::Ref<const Eigen::VectorXd> x, int k) const;

  ModelState export_state() const;
  // Validates shapes, finiteness and the factor (std::invalid_argument otherwise).
  static OnlineGP import_state(const ModelState& state);

  // Heap bytes a model of this config and input dimension holds: the constructor allocates
  // every buffer an update needs, and they never grow (predict(), explain() and
  // export_state() allocate only while they run). For memory limits before constructing
  // one. requires: config.validate() passes, dim >= 1 (std::invalid_argument otherwise).
  static std::size_t memory_bytes(const ModelConfig& config, int dim);
  // memory_bytes(config(), dim()).
  std::size_t memory_bytes() const;

  const ModelConfig& config() const;
  int dim() const;
  int budget() const;
  int dictionary_size() const;
  const ModelCounters& counters() const;
  double signal_power() const;  // current s2 estimate (1 when not estimated)
  // Drift measure |L L^T - (K_D + jI)|_F / |K_D + jI|_F against K_D recomputed from the
  // stored inputs. O(M^3 + M^2 d); for tests and periodic monitoring.
  double drift() const;
  // Last drift measured by the model itself at a periodic check (0 before any).
  double last_drift() const;
  // Forces the periodic recomputation now.
  void recompute();
  // Throws std::logic_error describing the first violated invariant (tol: relative).
  void check_invariants(double tol = 1e-8) const;

  // Read-only views (m = dictionary_size()): inputs(): m x d; mean_vector(): mu.
  Eigen::Ref<const RowMatrixXd> inputs() const;
  Eigen::Ref<const Eigen::VectorXd> mean_vector() const;
  // Sigma, m x m, as a full symmetric matrix (a copy: the model keeps one triangle).
  Eigen::MatrixXd covariance() const;
  const IncrementalCholesky& factor() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ntk
