// OnlineGP: fixed-budget KRLS-T regressor. See model.h for the math and conventions.
//
// CONVENTION (the state; m = dictionary size, cap = budget + 1)
//   in                      dictionary inputs in admission order, kernel->prepare() of
//                           each and the update count that admitted it (Inputs)
//   K.topLeftCorner(m, m)   K_D (without jitter), bitwise symmetric, maintained only when
//                           keep_gram (forgetting < 1: forget() needs it); otherwise K is
//                           scratch for recompute() and the update path never touches it
//   chol, deferred          L with L L^T = K_D + jitter I, except that the last eviction's
//                           removal from L may be deferred (deferred.index >= 0, the
//                           entry's index; chol then has one more row than the dictionary):
//                           the next update's forward solve rides on the removal's pass over
//                           L (IncrementalCholesky::remove_solve_lower), one pass over L
//                           instead of two. Everything else that reads L first settles it
//   mu.head(m)              posterior mean of f at the dictionary
//   slot[i], used, hw       Sigma lives in physical slots: dictionary entry i (logical order,
//                           the factor's) has slot slot[i] in [0, cap); used[s] marks the
//                           taken slots, hw = 1 + the highest taken slot (0 when none).
//                           Removing an entry frees its slot (its row and column are zeroed)
//                           and an admitted entry takes the lowest free one, so no removal
//                           moves Sigma; a covariance is symmetric under any permutation, so
//                           the products with it run in slot order
//   Sigma, U, npend         posterior covariance at the dictionary, in slots:
//                             Sigma_post = Sigma - U_p U_p^T,  U_p = U.leftCols(npend),
//                           Sigma stored as its upper triangle (over slots; the strict lower
//                           triangle is unspecified), so it is symmetric by construction and
//                           every pass over it touches half the matrix. The rank-1 updates
//                           of the posterior are collected in U and folded into Sigma
//                           kPending at a time (flush()): one pass over Sigma per kPending
//                           updates instead of one per update. Rows and columns of Sigma
//                           and rows of U at free slots are zero
//   qdiag.head(m)           diag((K_D + jitter I)^{-1}), maintained under kMinLoss only;
//                           while an eviction's removal is deferred (deferred.index >= 0)
//                           it lacks that eviction's -Q_rr y^2 (remove_basis), which
//                           settle() or the next update's solves apply
//   ahat, abeta, ahat_valid min_loss only, when ahat_valid: (K_D + jitter I)^{-1} mu =
//                           ahat + e with |e_i| <= sqrt(qdiag_i) abeta (see last_is_pick());
//                           like qdiag, while an eviction's removal is deferred it lacks
//                           that eviction's ahat_r y, which finish_removal() applies
//   s2_num / s2_den         forgotten sums of squared standardized residuals / counts
// The +1 in cap holds an admitted sample until the eviction decides which basis goes
// (KRLS-T ranks the new point together with the old ones). The square buffers have a
// leading dimension padded to a multiple of 8 doubles (64 bytes), so that every column
// starts on a cache line.
#include "ntk/core/model.h"

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <mutex>
#include <new>
#include <sstream>
#include <stdexcept>

#include "detail/simd.h"

namespace ntk {

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

namespace {

// Updates between the O(M^2) single-column drift checks.
constexpr std::uint64_t kDriftCheckPeriod = 16;
// Pseudo-observations behind the initial signal power s2 = 1 (standardized data).
constexpr double kSignalPowerPrior = 1.0;
// Floor on the noise variance as a fraction of the prior variance k(x, x) + jitter of each
// input. Absorbing y leaves the posterior variance var_f noise / var_y, computed as
// var_f - var_f^2 / var_y with an error of a few ulps of var_f: at noise / k(x, x) near
// 1e-16 it came out negative and the model diverged. 1e-12 leaves four digits of margin
// and is far below the 1e-6 that the cleanest series want.
constexpr double kMinRelativeNoise = 1e-12;
// Floor on the ALD threshold: an input is admitted only if its residual gamma2 exceeds
// 1e-8 of its prior variance k(x, x) + jitter. Residuals near 1e-16 are rounding (a kernel
// of lower rank than the budget, e.g. a polynomial kernel on one input, with threshold
// 0): admitting them gave pivots near sqrt(eps k), a factor as good as singular, and a
// posterior mean that overflowed. With a floor of 1e-12, near-repeats (a stuck sensor whose
// lags move with the scaler) still made dictionaries whose Gram matrix was singular to
// working precision with jitter 0: Sigma lost its positive definiteness to rounding and
// overflowed. Such inputs carry almost no information: not admitted, they are still
// absorbed (the projected update).
constexpr double kMinAdmissionRatio = 1e-8;
// A variance of f below -kRepairTolerance times the noise variance (the floored one) makes
// update() repair Sigma (repair_covariance()). Rounding in a sound posterior leaves var_f at
// or above 0 (10^6 updates of the tests' streams never went below); states that needed the
// repair showed -7.9e3 times the noise at once, then grew by squares.
constexpr double kRepairTolerance = 1e-3;
// A repair costs O(M^3): at most 1 + updates / M of them in a model's life (M: the
// dictionary's size then), so that they cost O(M^2) per update amortized, as an update
// does. Where Sigma cannot hold a covariance at all (a Gram matrix singular to working
// precision), the repair does not stick: a sweep's worst run (RBF lengthscale 0.013 on
// repeated imputed values, jitter 0) asked for one on 481 of 2000 updates.
bool repair_allowed(std::uint64_t repairs, std::uint64_t updates, Eigen::Index m) {
  return repairs < 1 + updates / static_cast<std::uint64_t>(std::max<Eigen::Index>(m, 1));
}
// Cap on one squared standardized residual in the signal power's sum: 1e280 times any
// feasible count of updates stays far below the largest double.
constexpr double kMaxResidual2 = 1e280;
// Rank-1 covariance updates collected before they are folded into Sigma (flush()). A rank-1
// pass over Sigma is bound by memory traffic (about 5 us at M = 256); a fold of 8 by its 8
// multiply-adds per entry (about 11 us), so 1.4 us per update. Pending columns cost
// 2 x npend x M multiply-adds per prediction.
constexpr Eigen::Index kPending = 8;

std::string num(double v) {
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

[[noreturn]] void invalid(const std::string& what) {
  throw std::invalid_argument("model: " + what);
}

// Deletes row and column r of the leading m x m block of the column-major A, moving the
// later rows/columns up/left. O(m^2) moves, no allocation.
void erase_row_col(MatrixXd& A, Index m, Index r) {
  const Index ld = A.rows();
  double* a = A.data();
  for (Index c = 0; c + 1 < m; ++c) {
    const double* src = a + (c < r ? c : c + 1) * ld;
    double* dst = a + c * ld;
    if (src != dst) std::copy(src, src + r, dst);
    std::copy(src + r + 1, src + m, dst + r);
  }
}

// Leading dimension for a square buffer of size cap: rounded up to whole cache lines.
Index padded(Index cap) { return (cap + 7) / 8 * 8; }

// y = A x for the symmetric A whose upper triangle is stored in the leading n x n block of
// the column-major A. Panels of 4 columns: one pass over each column serves both its dot
// product with x (entry j of y) and its axpy into the rows above (its transpose's share),
// 4 columns per load/store of y. With 4- or 8-wide SIMD packets this measured 3.6-3.8 us at
// n = 256 against 5.1-6.9 us for Eigen's selfadjointView product; with SSE2's 2-wide
// packets it is no faster, and Eigen's is used.
void symv_upper(const MatrixXd& A, Index n, Eigen::Ref<const VectorXd> xv,
                Eigen::Ref<VectorXd> yv) {
  using Packet = Eigen::internal::packet_traits<double>::type;
  constexpr Index kPacket = static_cast<Index>(sizeof(Packet) / sizeof(double));
  if constexpr (kPacket < 4) {
    yv.noalias() = A.topLeftCorner(n, n).selfadjointView<Eigen::Upper>() * xv;
  } else {
    using namespace Eigen::internal;
    constexpr Index kCols = 4;
    const Index ld = A.rows();
    const double* a = A.data();
    const double* x = xv.data();
    double* y = yv.data();
    std::fill(y, y + n, 0.0);
    Index j0 = 0;
    for (; j0 + kCols <= n; j0 += kCols) {
      Packet acc[kCols], xs[kCols];
      _Pragma("GCC unroll 8") for (Index k = 0; k < kCols; ++k) {
        acc[k] = pset1<Packet>(0.0);
        xs[k] = pset1<Packet>(x[j0 + k]);
      }
      Index r = 0;
      const Index vend = j0 / kPacket * kPacket;
      for (; r < vend; r += kPacket) {
        const Packet xr = ploadu<Packet>(x + r);
        Packet yr = ploadu<Packet>(y + r);
        _Pragma("GCC unroll 8") for (Index k = 0; k < kCols; ++k) {
          const Packet c = ploadu<Packet>(a + (j0 + k) * ld + r);
          acc[k] = pmadd(c, xr, acc[k]);
          yr = pmadd(c, xs[k], yr);
        }
        pstoreu(y + r, yr);
      }
      double dot[kCols];
      _Pragma("GCC unroll 8") for (Index k = 0; k < kCols; ++k) dot[k] = predux(acc[k]);
      for (; r < j0; ++r) {
        double yr = y[r];
        for (Index k = 0; k < kCols; ++k) {
          const double c = a[(j0 + k) * ld + r];
          dot[k] += c * x[r];
          yr += c * x[j0 + k];
        }
        y[r] = yr;
      }
      // The kCols x kCols diagonal block.
      for (Index k = 0; k < kCols; ++k) {
        const double* c = a + (j0 + k) * ld;
        double d = dot[k] + c[j0 + k] * x[j0 + k];
        for (Index i = 0; i < k; ++i) {
          d += c[j0 + i] * x[j0 + i];
          y[j0 + i] += c[j0 + i] * x[j0 + k];
        }
        y[j0 + k] += d;
      }
    }
    for (Index j = j0; j < n; ++j) {
      const double* c = a + j * ld;
      double d = c[j] * x[j];
      for (Index i = 0; i < j; ++i) {
        d += c[i] * x[i];
        y[i] += c[i] * x[j];
      }
      y[j] += d;
    }
  }
}

// A -= U U^T on the upper triangle of the leading n x n block of the column-major A, for
// the first k (<= kPending) columns of the column-major U, each entry taking them in order.
// kK: k when > 0, known at compile time (the broadcasts then stay in registers).
template <Index kK>
void fold_upper_impl(MatrixXd& A, Index n, const MatrixXd& U, Index kdyn) {
  const Index k = kK > 0 ? kK : kdyn;
  using namespace Eigen::internal;
  using Packet = packet_traits<double>::type;
  constexpr Index kPacket = static_cast<Index>(sizeof(Packet) / sizeof(double));
  const Index lda = A.rows(), ldu = U.rows();
  double* a = A.data();
  const double* u = U.data();
  for (Index c = 0; c < n; ++c) {
    double* col = a + c * lda;
    Packet w[kPending];
    double ws[kPending];
    for (Index j = 0; j < k; ++j) {
      ws[j] = -u[j * ldu + c];
      w[j] = pset1<Packet>(ws[j]);
    }
    Index r = 0;
    for (; r + kPacket <= c + 1; r += kPacket) {
      Packet acc = ploadu<Packet>(col + r);
      _Pragma("GCC unroll 8") for (Index j = 0; j < k; ++j) acc =
          pmadd(ploadu<Packet>(u + j * ldu + r), w[j], acc);
      pstoreu(col + r, acc);
    }
    for (; r <= c; ++r) {
      double acc = col[r];
      for (Index j = 0; j < k; ++j) acc += u[j * ldu + r] * ws[j];
      col[r] = acc;
    }
  }
}

void fold_upper(MatrixXd& A, Index n, const MatrixXd& U, Index k) {
  if (k == kPending) {
    fold_upper_impl<kPending>(A, n, U, k);
  } else {
    fold_upper_impl<0>(A, n, U, k);
  }
}

// Deletes entry r of the first m entries of a contiguous array.
template <typename T>
void erase_entry(T* v, Index m, Index r) {
  std::copy(v + r + 1, v + m, v + r);
}

// The dictionary's inputs, their kernel caches and sample numbers: entry i (logical order)
// at row base + i of buffers with 2 cap rows. Erasing an entry moves the shorter side of
// it by one row, so evicting the oldest moves nothing (base advances) and evicting the
// newest neither; an append that finds the buffers' end moves the entries back to row 0,
// at most once per cap evictions. (Moving the rows after every oldest-first eviction cost
// 3-7% of that update at M = 256 with the NTK kernel, whose caches have 19 columns.)
class Inputs {
 public:
  Inputs(Index cap, int dim, Index cache_cols)
      : X_(2 * cap, dim), caches_(cache_rows(cap), cache_cols), samples_(2 * cap, 0) {}

  // Rows of the kernel caches' buffer.
  static Index cache_rows(Index cap) { return odd_lines(2 * cap); }

  // The first m entries.
  auto points(Index m) const { return X_.middleRows(base_, m); }
  auto caches(Index m) const { return caches_.middleRows(base_, m); }
  auto point(Index i) const { return X_.row(base_ + i); }
  auto cache(Index i) const { return caches_.row(base_ + i); }
  std::uint64_t sample(Index i) const { return samples_[static_cast<std::size_t>(base_ + i)]; }

  // Appends entry m (the entries are 0..m-1).
  void push(Index m, Eigen::Ref<const VectorXd> x, Eigen::Ref<const VectorXd> cache,
            std::uint64_t sample) {
    if (base_ + m == X_.rows()) {
      move_rows(base_, base_ + m, 0);
      base_ = 0;
    }
    X_.row(base_ + m) = x.transpose();
    caches_.row(base_ + m) = cache.transpose();
    samples_[static_cast<std::size_t>(base_ + m)] = sample;
  }

  // Erases entry r of the m entries.
  void erase(Index m, Index r) {
    if (r < m - 1 - r) {
      move_rows(base_, base_ + r, base_ + 1);
      ++base_;
    } else {
      move_rows(base_ + r + 1, base_ + m, base_ + r);
    }
  }

 private:
  // Moves rows [from, to) to start at row dst (overlap allowed).
  void move_rows(Index from, Index to, Index dst) {
    if (from == dst || from == to) return;
    const auto move = [&](auto* data, Index stride) {
      if (dst < from) {
        std::copy(data + from * stride, data + to * stride, data + dst * stride);
      } else {
        std::copy_backward(data + from * stride, data + to * stride,
                           data + (dst + to - from) * stride);
      }
    };
    move(X_.data(), X_.cols());  // row-major: rows are contiguous
    for (Index c = 0; c < caches_.cols(); ++c) move(caches_.col(c).data(), 1);
    move(samples_.data(), 1);
  }

  // Rows for a column-major buffer of at least n rows whose columns the kernel reads side
  // by side: an odd number of whole cache lines per column, so that the columns start in
  // distinct L1 sets. (With 2 cap rows at cap = 257, 4112 bytes, the 19 columns of the NTK
  // kernel's caches fell into a few sets, and its rejecting update took 3% longer.)
  static Index odd_lines(Index n) {
    const Index lines = (n + 7) / 8;
    return (lines % 2 == 0 ? lines + 1 : lines) * 8;
  }

  RowMatrixXd X_;
  MatrixXd caches_;
  std::vector<std::uint64_t> samples_;
  Index base_ = 0;
};

}  // namespace

std::string_view to_string(EvictionPolicy p) {
  switch (p) {
    case EvictionPolicy::kMinLoss:
      return "min_loss";
    case EvictionPolicy::kOldest:
      return "oldest";
  }
  return "unknown";
}

void ModelConfig::validate() const {
  kernel.validate();
  if (budget < 1 || budget > kMaxBudget) {
    invalid("budget must be in [1, " + std::to_string(kMaxBudget) + "], got " +
            std::to_string(budget));
  }
  if (!(noise_variance > 0.0) || !std::isfinite(noise_variance)) {
    invalid("noise_variance must be finite and > 0, got " + num(noise_variance));
  }
  if (!(forgetting > 0.0 && forgetting <= 1.0)) {
    invalid("forgetting must be in (0, 1], got " + num(forgetting));
  }
  if (!(admission_threshold >= 0.0 && admission_threshold < 1.0)) {
    invalid("admission_threshold must be in [0, 1), got " + num(admission_threshold));
  }
  if (recompute_every < 0) {
    invalid("recompute_every must be >= 0, got " + std::to_string(recompute_every));
  }
  if (!(drift_bound > 0.0)) invalid("drift_bound must be > 0, got " + num(drift_bound));
  if (!(jitter >= 0.0) || !std::isfinite(jitter)) {
    invalid("jitter must be finite and >= 0, got " + num(jitter));
  }
}

// Scratch for one prediction; not state.
struct Workspace {
  VectorXd xcache;  // prepare(x)
  VectorXd kx;      // k(D, x)
  VectorXd v;       // L^{-1} k, later reused
  VectorXd q;       // (K_D + jI)^{-1} k
  VectorXd h;       // Sigma q, extended to p = [h; var_f] on admission
  VectorXd qs;      // q in slot order
  VectorXd hs;      // Sigma q in slot order
  VectorXd uq;      // U_p^T qs
  MatrixXd kscratch;

  // The doubles the constructor allocates.
  static Index doubles(Index cap, Index slots, const Kernel& kernel) {
    return kernel.cache_size() + 4 * cap + 2 * slots + kPending +
           cap * std::max<Index>(1, kernel.scratch_cols());
  }

  // cap: dictionary entries; slots: the model's slot count.
  Workspace(Index cap, Index slots, const Kernel& kernel)
      : xcache(kernel.cache_size()),
        kx(cap),
        v(cap),
        q(cap),
        h(cap),
        qs(slots),
        hs(slots),
        uq(kPending),
        kscratch(cap, std::max<Index>(1, kernel.scratch_cols())) {}
};

// K_D of the m stored points (in), the way admission builds it: row i is
// kernel.row() of x_i against x_0..x_i, mirrored into column i, so K is bitwise symmetric.
// w needs room for m points; row is scratch of size >= m. No allocation.
void gram_by_rows(const Kernel& kernel, const Inputs& in, Index m, MatrixXd& K, Workspace& w,
                  VectorXd& row) {
  for (Index i = 0; i < m; ++i) {
    w.xcache = in.cache(i).transpose();
    Eigen::Ref<VectorXd> r = row.head(i + 1);
    kernel.row(in.points(i + 1), in.caches(i + 1), in.point(i).transpose(), w.xcache, r,
               w.kscratch);
    K.col(i).head(i + 1) = r;
    K.row(i).head(i + 1) = r.transpose();
  }
}

// The quantities of DESIGN §4 step 2 for one input (unit signal power).
struct Step {
  double kss_raw = 0.0;  // k(x, x)
  double kss = 0.0;      // k(x, x) + jitter
  double gamma2 = 0.0;   // kss - k.q, the ALD residual
  double qh = 0.0;       // q^T h = q^T Sigma q
  double var_f = 0.0;
  double var_y = 0.0;
  double mean = 0.0;
};

// A removal from the factor that waits for the next update (see CONVENTION). Const members
// of OnlineGP settle it, so it is guarded for concurrent const calls; copying carries the
// index (the copied model settles or fuses it in its turn).
struct DeferredRemoval {
  std::atomic<Index> index{-1};
  std::mutex mutex;

  DeferredRemoval() = default;
  DeferredRemoval(const DeferredRemoval& o) : index(o.index.load()) {}
  DeferredRemoval& operator=(const DeferredRemoval& o) {
    index.store(o.index.load());
    return *this;
  }
};

struct OnlineGP::Impl {
  ModelConfig config;
  int dim;
  std::shared_ptr<const Kernel> kernel;
  Index cap;
  bool track_qdiag;
  bool keep_gram;  // K_D maintained per update (forgetting < 1 only)

  // State.
  IncrementalCholesky chol;
  DeferredRemoval deferred;
  Inputs in;
  MatrixXd K;
  VectorXd mu;
  MatrixXd Sigma;
  MatrixXd U;
  Index npend = 0;
  std::vector<Index> slot;
  std::vector<unsigned char> used;
  Index hw = 0;
  VectorXd qdiag;
  Index m = 0;
  double s2_num = kSignalPowerPrior;
  double s2_den = kSignalPowerPrior;
  ModelCounters counters;
  std::uint64_t since_recompute = 0;
  double last_drift = 0.0;

  // Scratch, not state: never exported.
  Workspace ws;
  VectorXd vec;
  // min_loss: u = L'^{-1} k_r from a deferred removal, then y = L'^{-T} u, and Q_rr.
  // qdiag_waits_for_y: the removal has been applied to L (by the fused forward solve) and
  // diag(Q) waits for the upper solve of the same update(); never set across calls (a
  // removal still deferred across calls is settle()'s to finish).
  VectorXd urem;
  double urem_qrr = 0.0;
  bool qdiag_waits_for_y = false;
  // min_loss: alpha = (K_D + jI)^{-1} mu known up to a bounded error (CONVENTION), so that
  // most evictions of the sample just admitted need no solve (last_is_pick()).
  VectorXd ahat;
  double abeta = 0.0;
  bool ahat_valid = false;
  double ahat_r = 0.0;  // alpha_r of the eviction whose removal waits for y
  // min_loss: fresh is the entry this update() admitted (-1 when none, or after a
  // recompute); qdiag_prev and ahat_prev hold diag(Q) and ahat from before that admission
  // (ahat only when it was valid; ahat_saved only until a fresh solve replaces ahat). Most
  // evictions remove that entry again, which returns the dictionary to the one they belong
  // to: they are restored exactly, and the removal's y = K_{-r}^{-1} k_r is the update's
  // own q, so neither a deferred pass over L nor a second right-hand side in the next
  // upper solve is needed.
  Index fresh = -1;
  bool ahat_saved = false;
  VectorXd qdiag_prev;
  VectorXd ahat_prev;

  // Heap bytes of the buffers the constructor below allocates (keep the two in step; a
  // test compares this with what construction takes from the heap).
  static std::size_t memory_bytes(const ModelConfig& c, int d, const Kernel& k) {
    const Index cap = Index{c.budget} + 1;
    const bool min_loss = c.eviction == EvictionPolicy::kMinLoss;
    const Index doubles = 2 * cap * d + Inputs::cache_rows(cap) * k.cache_size()  // in
                          + 2 * padded(cap) * cap + padded(cap) * kPending        // K, Sigma, U
                          + 5 * cap + (min_loss ? 2 * cap : 0)  // mu ... ahat, *_prev
                          + Workspace::doubles(cap, cap, k);
    return sizeof(Impl) + IncrementalCholesky::memory_bytes(cap) +
           static_cast<std::size_t>(doubles) * sizeof(double) +
           static_cast<std::size_t>(2 * cap) * sizeof(std::uint64_t)  // in's samples
           + static_cast<std::size_t>(cap) * (sizeof(Index) + 1);     // slot, used
  }

  Impl(const ModelConfig& c, int d)
      : config(c),
        dim(d),
        kernel(make_kernel(c.kernel)),
        cap(Index{c.budget} + 1),
        track_qdiag(c.eviction == EvictionPolicy::kMinLoss),
        keep_gram(c.forgetting < 1.0),
        chol(cap, c.jitter),
        in(cap, d, kernel->cache_size()),
        K(MatrixXd::Zero(padded(cap), cap)),
        mu(cap),
        Sigma(MatrixXd::Zero(padded(cap), cap)),
        U(MatrixXd::Zero(padded(cap), kPending)),
        slot(static_cast<std::size_t>(cap), 0),
        used(static_cast<std::size_t>(cap), 0),
        qdiag(cap),
        ws(cap, cap, *kernel),
        vec(cap),
        urem(cap),
        ahat(cap),
        qdiag_prev(track_qdiag ? cap : 0),
        ahat_prev(track_qdiag ? cap : 0) {}

  double signal_power() const { return config.estimate_signal_power ? s2_num / s2_den : 1.0; }

  // Applies a deferred removal to the factor and, under min_loss, finishes diag(Q) for it.
  // Safe to call from concurrent const members of OnlineGP (the Impl itself is never
  // const).
  void settle() {
    if (deferred.index.load(std::memory_order_acquire) < 0) return;
    const std::lock_guard<std::mutex> lock(deferred.mutex);
    const Index r = deferred.index.load(std::memory_order_relaxed);
    if (r < 0) return;
    if (track_qdiag) {
      Eigen::Ref<VectorXd> y = urem.head(m);
      urem_qrr = chol.remove(r, y);
      chol.solve_upper_in_place(y);
      finish_removal(y);
    } else {
      chol.remove(r);
    }
    deferred.index.store(-1, std::memory_order_release);
  }

  // The rest of the min_loss state's update for the removal of basis r (see
  // remove_basis), from y = L'^{-T} u = K_{-r}^{-1} k_r:
  //   diag(Q): Q_{-r} = Q_{-r,-r} - Q_{-r,r} Q_{r,-r} / Q_rr with Q_{-r,r} = -Q_rr y, Q_rr
  //            as the removal computed it from the factor;
  //   ahat:    K_{-r}^{-1} mu_{-r} = alpha_{-r} + alpha_r y (the error term e transforms
  //            alike and stays within its bound: (e_{-r} + e_r y)_i = (K_{-r}^{-1} d_{-r})_i
  //            for the same accumulated mean change d).
  void finish_removal(Eigen::Ref<const VectorXd> y) {
    qdiag.head(m).array() -= urem_qrr * y.array().square();
    if (ahat_valid) ahat.head(m) += ahat_r * y;
  }

  // v <- L^{-1} v, applying a deferred removal in the same pass (update() only). Under
  // min_loss the pass also yields u, and solve_upper_fused() must follow.
  void solve_lower_fused(Eigen::Ref<VectorXd> v) {
    const Index r = deferred.index.load(std::memory_order_relaxed);
    if (r < 0) {
      chol.solve_lower_in_place(v);
      return;
    }
    if (track_qdiag) {
      urem_qrr = chol.remove_solve_lower(r, v, urem.head(m));
      qdiag_waits_for_y = true;
    } else {
      chol.remove_solve_lower(r, v);
    }
    deferred.index.store(-1, std::memory_order_relaxed);
  }

  // q <- L^{-T} q, with y = L^{-T} u in the same pass when diag(Q) waits for it.
  void solve_upper_fused(Eigen::Ref<VectorXd> q) {
    if (!qdiag_waits_for_y) {
      chol.solve_upper_in_place(q);
      return;
    }
    Eigen::Ref<VectorXd> y = urem.head(m);
    chol.solve_upper_in_place(q, y);
    finish_removal(y);
    qdiag_waits_for_y = false;
  }

  // Entry (a, b) of the stored (upper-triangle) Sigma, by slot.
  double& sig(Index a, Index b) { return a <= b ? Sigma(a, b) : Sigma(b, a); }
  double sig(Index a, Index b) const { return a <= b ? Sigma(a, b) : Sigma(b, a); }

  // The lowest free slot, now taken.
  Index take_slot() {
    Index s = 0;
    while (used[static_cast<std::size_t>(s)]) ++s;
    used[static_cast<std::size_t>(s)] = 1;
    // Rows of U at or above hw are not kept zero (the pending columns are written over the
    // taken slots only).
    U.row(s).head(npend).setZero();
    hw = std::max(hw, s + 1);
    return s;
  }

  // Frees slot s: its row and column of Sigma and its row of U become zero.
  void release_slot(Index s) {
    Sigma.col(s).head(s + 1).setZero();
    for (Index c = s + 1; c < hw; ++c) Sigma(s, c) = 0.0;
    U.row(s).head(npend).setZero();
    used[static_cast<std::size_t>(s)] = 0;
    while (hw > 0 && !used[static_cast<std::size_t>(hw - 1)]) --hw;
  }

  // Folds the pending rank-1 updates into Sigma.
  void flush() {
    if (npend == 0) return;
    fold_upper(Sigma, hw, U, npend);
    npend = 0;
  }

  // Restores 0 <= Sigma_post <= K_D + jI, which every exact posterior satisfies (a posterior
  // covariance is PSD and never exceeds its prior; forgetting and marginalizing keep both).
  // In whitened coordinates S = L^{-1} Sigma_post L^{-T} that is 0 <= S <= I: the
  // eigenvalues of S are clipped to [0, 1] and Sigma_post = L S L^T written back. mu, L and
  // diag(Q) do not change. O(m^3), and it allocates: a rare repair, not the per-update
  // path. If an allocation fails, Sigma is left as it was (pending updates folded) and the
  // repair is not counted.
  void repair_covariance() {
    settle();
    flush();
    if (m == 0) return;
    MatrixXd P;
    try {
      P.resize(m, m);
      for (Index j = 0; j < m; ++j) {
        for (Index i = 0; i <= j; ++i) {
          P(i, j) = P(j, i) =
              sig(slot[static_cast<std::size_t>(i)], slot[static_cast<std::size_t>(j)]);
        }
      }
      const auto L = chol.matrixL().triangularView<Eigen::Lower>();
      L.solveInPlace(P);     // L^{-1} Sigma
      P.transposeInPlace();  // Sigma L^{-T}
      L.solveInPlace(P);     // S = L^{-1} Sigma L^{-T}
      const Eigen::SelfAdjointEigenSolver<MatrixXd> eig(0.5 * (P + P.transpose()));
      const VectorXd d = eig.eigenvalues().cwiseMax(0.0).cwiseMin(1.0).cwiseSqrt();
      MatrixXd B = eig.eigenvectors() * d.asDiagonal();  // clipped S = B B^T
      B = L * B;
      P.noalias() = B * B.transpose();
    } catch (const std::bad_alloc&) {
      return;
    }
    // P is symmetric up to rounding; its upper triangle is what Sigma stores.
    for (Index j = 0; j < m; ++j) {
      for (Index i = 0; i <= j; ++i) {
        sig(slot[static_cast<std::size_t>(i)], slot[static_cast<std::size_t>(j)]) = P(i, j);
      }
    }
    ahat_valid = false;  // its error bound assumed Sigma <= K_D + jI
    ++counters.covariance_repairs;
  }

  // Starts over from the prior: an empty dictionary, Sigma and U zero. For a state that has
  // stopped being finite (update()), from which nothing can be recovered: every later
  // prediction would be NaN, and the state would not restore. The signal power, the
  // counters and the recomputation schedule carry on. O(M^2).
  void reset_posterior() {
    settle();
    for (Index i = 0; i < m; ++i) release_slot(slot[static_cast<std::size_t>(i)]);
    npend = 0;
    chol.clear();
    m = 0;
    ahat_valid = false;
    fresh = -1;
    ++counters.resets;
  }

  // Whether what absorbing a sample changes is finite: mu, the newest pending column and,
  // when the pending columns were folded, Sigma's diagonal (an entry that overflowed in the
  // fold makes its diagonal -inf or NaN). O(M).
  bool absorbed_finite(bool folded) const {
    // x * 0 is 0 for every finite x and NaN otherwise: one vectorized sum per vector
    // (Eigen's allFinite() took about 0.2 us per update at M = 256 in bench_model).
    const auto finite = [](const auto& v) { return (v.array() * 0.0).sum() == 0.0; };
    if (!finite(mu.head(m))) return false;
    if (npend > 0 && !finite(U.col(npend - 1).head(hw))) return false;
    if (folded) {
      for (Index i = 0; i < m; ++i) {
        const Index a = slot[static_cast<std::size_t>(i)];
        if (!std::isfinite(Sigma(a, a))) return false;
      }
    }
    return true;
  }

  // Sigma_post(i, j) for dictionary entries i, j.
  double posterior_cov(Index i, Index j) const {
    const Index a = slot[static_cast<std::size_t>(i)], b = slot[static_cast<std::size_t>(j)];
    double c = sig(a, b);
    for (Index k = 0; k < npend; ++k) c -= U(a, k) * U(b, k);
    return c;
  }

  void check_input(Eigen::Ref<const VectorXd> x) const {
    if (x.size() != dim) {
      invalid("input has dimension " + std::to_string(x.size()) + ", expected " +
              std::to_string(dim));
    }
    for (Index i = 0; i < x.size(); ++i) {
      if (!std::isfinite(x(i))) {
        invalid("input component " + std::to_string(i) + " is not finite: " + num(x(i)));
      }
    }
    // The kernels are defined (no NaN, no overflow) for norms up to 1e150 (kernel.h).
    // x.norm() overflows to inf, and is refused, for larger finite inputs.
    const double norm = x.norm();
    if (!(norm <= kMaxMagnitude)) {
      invalid("input norm " + num(norm) + " is above 1e150" + " (standardize the inputs)");
    }
  }

  // DESIGN §4 step 2, with the forgetting of step 1 applied virtually when lambda < 1:
  // Sigma_f q = lambda Sigma q + (1 - lambda) (K_D + jI) q = lambda Sigma q + (1 - lambda) k,
  // mu_f = sqrt(lambda) mu. update() forgets for real first and passes lambda = 1.
  // Leaves kx, v = L^{-1} k, q and h in ws. solve_lower(v) replaces v by L^{-1} v.
  // prepared_kxx: k(x, x) when w.xcache already holds prepare(x) (update() computes both
  // before anything changes); NaN: compute them here.
  template <typename LowerSolve, typename UpperSolve>
  Step predict_into(Eigen::Ref<const VectorXd> x, Workspace& w, double lambda,
                    LowerSolve&& solve_lower, UpperSolve&& solve_upper,
                    double prepared_kxx = std::numeric_limits<double>::quiet_NaN()) const {
    Step s;
    if (std::isnan(prepared_kxx)) {
      kernel->prepare(x, w.xcache);
      s.kss_raw = kernel->self(x, w.xcache);
    } else {
      s.kss_raw = prepared_kxx;
    }
    s.kss = s.kss_raw + config.jitter;
    if (m == 0) {
      s.gamma2 = s.kss;
      s.var_f = s.kss;
    } else {
      Eigen::Ref<VectorXd> kx = w.kx.head(m);
      kernel->row(in.points(m), in.caches(m), x, w.xcache, kx, w.kscratch);
      Eigen::Ref<VectorXd> v = w.v.head(m);
      v = kx;
      solve_lower(v);
      s.gamma2 = std::max(0.0, s.kss - v.squaredNorm());
      Eigen::Ref<VectorXd> q = w.q.head(m);
      q = v;
      solve_upper(q);
      // h = Sigma_post q, in slot order.
      Eigen::Ref<VectorXd> qs = w.qs.head(hw), hs = w.hs.head(hw);
      qs.setZero();
      for (Index i = 0; i < m; ++i) qs(slot[static_cast<std::size_t>(i)]) = q(i);
      symv_upper(Sigma, hw, qs, hs);
      // Less U_p (U_p^T qs); a few short dot products and axpys (Eigen's GEMV costs more in
      // setup than in arithmetic at npend < 8).
      for (Index k = 0; k < npend; ++k) w.uq(k) = U.col(k).head(hw).dot(qs);
      for (Index k = 0; k < npend; ++k) hs -= w.uq(k) * U.col(k).head(hw);
      Eigen::Ref<VectorXd> h = w.h.head(m);
      for (Index i = 0; i < m; ++i) h(i) = hs(slot[static_cast<std::size_t>(i)]);
      if (lambda < 1.0) h = lambda * h + (1.0 - lambda) * kx;
      s.qh = q.dot(h);
      s.var_f = std::max(0.0, s.gamma2 + s.qh);
      s.mean = std::sqrt(lambda) * q.dot(mu.head(m));
    }
    s.var_y = std::max(config.noise_variance, kMinRelativeNoise * s.kss) + s.var_f;
    return s;
  }

  // Step 1: Sigma <- lambda Sigma + (1 - lambda)(K_D + jI), mu <- sqrt(lambda) mu.
  void forget() {
    const double lambda = config.forgetting;
    if (lambda >= 1.0 || m == 0) return;
    flush();
    for (Index j = 0; j < m; ++j) {
      const Index b = slot[static_cast<std::size_t>(j)];
      for (Index i = 0; i <= j; ++i) {
        double& e = sig(slot[static_cast<std::size_t>(i)], b);
        e = lambda * e + (1.0 - lambda) * K(i, j);
      }
      sig(b, b) += (1.0 - lambda) * config.jitter;
    }
    mu.head(m) *= std::sqrt(lambda);
    // alpha scales with mu (K_D is not forgotten), and so does its error bound.
    ahat.head(m) *= std::sqrt(lambda);
    ahat_r *= std::sqrt(lambda);
    abeta *= std::sqrt(lambda);
  }

  // predict_into with the factor settled (const callers).
  Step predict_settled(Eigen::Ref<const VectorXd> x, Workspace& w, double lambda,
                       double prepared_kxx = std::numeric_limits<double>::quiet_NaN()) const {
    return predict_into(
        x, w, lambda, [this](Eigen::Ref<VectorXd> v) { chol.solve_lower_in_place(v); },
        [this](Eigen::Ref<VectorXd> q) { chol.solve_upper_in_place(q); }, prepared_kxx);
  }

  // Step 3, admission half: extend the dictionary by x (whose quantities are in ws).
  // Returns false, changing nothing, when the factor refuses the pivot.
  bool admit(Eigen::Ref<const VectorXd> x, const Step& s) {
    if (chol.append_solved(ws.v.head(m), s.kss_raw) != CholeskyInfo::kSuccess) {
      ++counters.pivot_failures;
      return false;
    }
    in.push(m, x, ws.xcache, counters.updates);
    if (keep_gram) {
      K.col(m).head(m) = ws.kx.head(m);
      K.row(m).head(m) = ws.kx.head(m).transpose();
      K(m, m) = s.kss_raw;
    }
    const Index sn = take_slot();
    slot[static_cast<std::size_t>(m)] = sn;
    for (Index i = 0; i < m; ++i) sig(slot[static_cast<std::size_t>(i)], sn) = ws.h(i);
    Sigma(sn, sn) = s.var_f;
    mu(m) = s.mean;
    if (track_qdiag) {
      fresh = m;
      qdiag_prev.head(m) = qdiag.head(m);
      ahat_saved = ahat_valid;
      if (ahat_saved) ahat_prev.head(m) = ahat.head(m);
      // Block inverse of [[K, k], [k^T, kss]]: Q += q q^T / g2 and a new diagonal 1 / g2,
      // with g2 the pivot^2 the factor accepted.
      const double l = chol.matrixL()(m, m);
      const double g2 = l * l;
      qdiag.head(m).array() += ws.q.head(m).array().square() / g2;
      qdiag(m) = 1.0 / g2;
    }
    ws.h(m) = s.var_f;  // p = [h; var_f]
    ++m;
    return true;
  }

  // Step 3, absorption half, for ahat: alpha = (K_D + jI)^{-1} mu after mu += c p. By the
  // block inverse, an admission extends alpha by 0 and (K_D' + jI)^{-1} [h; var_f] =
  // [(K_D + jI)^{-1} h - q; 1]; without admission p = h. The unknown c (K_D + jI)^{-1} h
  // joins the error bound: |((K_D + jI)^{-1} Sigma q)_i| <= sqrt(Q_ii) sqrt(q^T Sigma q) by
  // Cauchy-Schwarz in Sigma's inner product and Sigma <= K_D + jI (a posterior covariance
  // never exceeds its prior; forgetting and marginalizing keep that).
  void absorb_ahat(bool admitted, double c, double qh) {
    if (admitted) {
      const Index last = m - 1;
      ahat.head(last) -= c * ws.q.head(last);
      ahat(last) = c;
    }
    abeta += std::abs(c) * std::sqrt(std::max(qh, 0.0));
  }

  // True when the bound on ahat proves that the admitted sample (entry m - 1, known
  // exactly: alpha_{m-1} = c) has the strictly smallest |alpha_i| / Q_ii, with a relative
  // margin against rounding. On a typical stream most admitted samples are evicted again
  // at once, and this saves the two solves of alpha for them.
  bool last_is_pick() const {
    constexpr double kMargin = 1e-3;
    const Index last = m - 1;
    const double loss = std::abs(ahat(last)) / qdiag(last) * (1.0 + kMargin);
    const double slack = abeta * (1.0 + kMargin);
    // Entry i passes when |ahat_i| - sqrt(Q_ii) slack > loss Q_ii; ordered comparisons, so
    // that a NaN anywhere fails the proof. Branch-free over packets: a scalar loop with its
    // sqrt per entry took 3-4% of the update at M = 256.
    namespace simd = detail::simd;
    const double* a = ahat.data();
    const double* qd = qdiag.data();
    const simd::Packet vloss = simd::set1(loss), vslack = simd::set1(slack);
    const simd::Packet all = simd::lt(simd::set1(0.0), simd::set1(1.0));
    simd::Packet passes = all;
    Index i = 0;
    for (; i + simd::kLanes <= last; i += simd::kLanes) {
      const simd::Packet q = simd::loadu(qd + i);
      const simd::Packet lhs =
          simd::sub(simd::abs(simd::loadu(a + i)), simd::mul(simd::sqrt(q), vslack));
      passes = simd::mask_and(passes, simd::lt(simd::mul(vloss, q), lhs));
    }
    bool pass = !simd::any(simd::mask_andnot(all, passes));
    for (; i < last; ++i) {
      pass = pass && std::abs(a[i]) - std::sqrt(qd[i]) * slack > loss * qd[i];
    }
    return pass;
  }

  // Step 4: KRLS-T's criterion |(Q mu)_i| / Q_ii, or the oldest basis. Called right after
  // an admission. Under min_loss ahat then waits, like diag(Q), for the removal's y.
  Index choose_eviction() {
    if (config.eviction == EvictionPolicy::kOldest) return 0;
    Index best = m - 1;
    if (!ahat_valid || !last_is_pick()) {
      Eigen::Ref<VectorXd> alpha = ahat.head(m);
      alpha = mu.head(m);
      chol.solve_in_place(alpha);
      abeta = 0.0;
      ahat_valid = true;
      ahat_saved = false;
      best = 0;
      double best_loss = std::numeric_limits<double>::infinity();
      for (Index i = 0; i < m; ++i) {
        const double loss = std::abs(alpha(i)) / qdiag(i);
        if (loss < best_loss) {
          best_loss = loss;
          best = i;
        }
      }
    }
    ahat_r = ahat(best);  // remove_basis() erases entry best
    return best;
  }

  // Removes basis r: the posterior is marginalized (its slot is freed), and the removal
  // from L is deferred to the next update's forward solve. Under min_loss diag(Q) follows:
  // Q_{-r} = Q_{-r,-r} - Q_{-r,r} Q_{r,-r} / Q_rr, and by the block inverse
  // Q_{-r,r} = -Q_rr K_{-r}^{-1} k_r = -Q_rr L'^{-T} u with u = L'^{-1} k_r, which the
  // removal's pass yields (IncrementalCholesky::remove): so the update waits for that pass
  // and rides, as a second right-hand side, on the next upper solve. Until then diag(Q)
  // is read by nothing that does not settle first (the next eviction criterion comes
  // after both solves; export, check_invariants and recompute settle).
  // The entry this update() admitted is the exception (see fresh): L drops its last row at
  // once, in O(1), and diag(Q) and ahat return to their values before the admission (ahat
  // by the map above with y = q when a fresh solve has replaced it).
  void remove_basis(Index r) {
    if (r == fresh) {  // set under min_loss only, and then always m - 1
      chol.remove(r);
      qdiag.head(r) = qdiag_prev.head(r);
      if (ahat_saved) {
        ahat.head(r) = ahat_prev.head(r);
      } else {
        ahat.head(r) += ahat_r * ws.q.head(r);
      }
    } else {
      if (track_qdiag) {
        erase_entry(qdiag.data(), m, r);
        erase_entry(ahat.data(), m, r);
      }
      deferred.index.store(r, std::memory_order_relaxed);  // chol.remove(r), deferred
    }
    fresh = -1;
    in.erase(m, r);
    if (keep_gram) erase_row_col(K, m, r);
    release_slot(slot[static_cast<std::size_t>(r)]);
    erase_entry(slot.data(), m, r);
    erase_entry(mu.data(), m, r);
    --m;
  }

  // Relative drift of column j: |(L L^T - K_D - jI) e_j| / |(K_D + jI) e_j|. O(m j), plus
  // O(m d) for the kernel column k(D, x_j) when K_D is not maintained.
  double column_drift(Index j) {
    settle();
    const auto L = chol.matrixL();
    Eigen::Ref<VectorXd> kj = ws.kx.head(m);
    if (keep_gram) {
      kj = K.col(j).head(m);
    } else {
      ws.xcache = in.cache(j).transpose();
      kernel->row(in.points(m), in.caches(m), in.point(j).transpose(), ws.xcache, kj, ws.kscratch);
    }
    Eigen::Ref<VectorXd> c = vec.head(m);
    c.noalias() = L.leftCols(j + 1) * L.row(j).head(j + 1).transpose();
    c -= kj;
    c(j) -= config.jitter;
    // stableNorm: kernel values near 1e300 (linear kernel, inputs near 1e150) or 1e-170
    // neither overflow nor underflow when squared. kj(j) += jitter after c is formed.
    kj(j) += config.jitter;
    const double scale = kj.stableNorm();
    return scale > 0.0 ? c.stableNorm() / scale : c.stableNorm();
  }

  // Step 5: K_D from the stored inputs (into K, maintained or scratch), drift measured, L
  // refactorized, diag(Q) recomputed. A basis the refactorization refuses (possible only
  // after a pathological import) is dropped and counted.
  void recompute() {
    settle();
    gram_by_rows(*kernel, in, m, K, ws, vec);
    last_drift = m > 0 ? chol.drift(K.topLeftCorner(m, m)) : 0.0;
    while (m > 0 && chol.rebuild(K.topLeftCorner(m, m)) != CholeskyInfo::kSuccess) {
      const Index bad = chol.failed_index();
      ++counters.pivot_failures;
      in.erase(m, bad);
      erase_row_col(K, m, bad);
      release_slot(slot[static_cast<std::size_t>(bad)]);
      erase_entry(slot.data(), m, bad);
      erase_entry(mu.data(), m, bad);
      --m;
    }
    if (track_qdiag) recompute_qdiag();
    ahat_valid = false;  // bases may have been dropped; the next eviction solves afresh
    fresh = -1;          // diag(Q) is new, and the admitted entry may have been dropped
    since_recompute = 0;
    ++counters.recomputes;
  }

  // import_state's consistency checks on a state already in place (O(m^3); allocates):
  // the factor and gram must belong to the inputs, as update() leaves them:
  //   L L^T = K_D + jI within the larger of 1e-6 and 100 drift bounds (the model checks
  //   one column at a time), and gram = K_D within 1e-6, with K_D the inputs' kernel.
  // A factor or gram from another dictionary, a corrupted or hand-edited snapshot is
  // refused with std::invalid_argument instead of producing wrong predictions.
  // Deliberately not checked: that sigma is a covariance and that qdiag is diag(Q) of the
  // factor. On near-singular dictionaries (admission threshold 0) the model's own states
  // miss both by more than rounding (|sigma_ij| above sqrt(sigma_ii sigma_jj), negative
  // qdiag entries), and refusing them would refuse a daemon's whole snapshot. Nor the
  // scale of sigma or mu: a sweep of 10^4 random runs found the model's own states, with
  // jitter 0 or admission threshold 0 and inputs far out, with sigma - U U^T down to -2.3
  // times the largest prior variance in an eigenvalue, and means of 1e300 (checks of both
  // were tried and withdrawn). Such a state predicts badly, but restores.
  void check_imported(const ModelState& st) {
    constexpr double kTol = 1e-6;
    if (m == 0) return;
    const auto refuse = [](const std::string& what) { invalid("import: " + what); };
    MatrixXd Kfresh(m, m);
    {
      Workspace w(m, 1, *kernel);
      VectorXd row(m);
      gram_by_rows(*kernel, in, m, Kfresh, w, row);
    }
    const double kscale = Kfresh.stableNorm();
    const double drift_tol = std::max(kTol, 100.0 * config.drift_bound);
    const double drift = chol.drift(Kfresh);
    if (!(drift <= drift_tol)) {
      refuse("factor is not the Cholesky factor of the inputs' kernel matrix (relative error " +
             num(drift) + ", tolerance " + num(drift_tol) + ")");
    }
    if (keep_gram && st.gram != st.gram.transpose()) refuse("gram is not symmetric");
    const double gram_err = (st.gram - Kfresh).stableNorm();
    if (!(gram_err <= kTol * kscale)) {
      refuse("gram is not the inputs' kernel matrix (relative error " +
             num(kscale > 0.0 ? gram_err / kscale : gram_err) + ")");
    }
  }

  // diag(Q)_i = |L^{-1} e_i|^2; L^{-1} e_i is zero above i. O(m^3 / 3), no allocation.
  void recompute_qdiag() {
    for (Index i = 0; i < m; ++i) {
      const Index n = m - i;
      Eigen::Ref<VectorXd> e = vec.head(n);
      e.setZero();
      e(0) = 1.0;
      chol.solve_lower_trailing_in_place(i, e);
      qdiag(i) = e.squaredNorm();
    }
  }
};

OnlineGP::OnlineGP(const ModelConfig& config, int dim) {
  config.validate();
  if (dim < 1) invalid("dimension must be >= 1, got " + std::to_string(dim));
  impl_ = std::make_unique<Impl>(config, dim);
}

OnlineGP::~OnlineGP() = default;
OnlineGP::OnlineGP(const OnlineGP& other) {
  other.impl_->settle();  // no copy while a concurrent const call settles
  impl_ = std::make_unique<Impl>(*other.impl_);
}
OnlineGP& OnlineGP::operator=(const OnlineGP& other) {
  if (this != &other) {
    other.impl_->settle();
    impl_ = std::make_unique<Impl>(*other.impl_);
  }
  return *this;
}
OnlineGP::OnlineGP(OnlineGP&&) noexcept = default;
OnlineGP& OnlineGP::operator=(OnlineGP&&) noexcept = default;

UpdateResult OnlineGP::update(Eigen::Ref<const VectorXd> x, double y) {
  Impl& s = *impl_;
  // Validate before touching anything: the strong guarantee.
  s.check_input(x);
  if (!std::isfinite(y)) invalid("target is not finite: " + num(y));
  if (std::abs(y) > kMaxMagnitude) {
    invalid("target " + num(y) + " is above 1e150 in magnitude");
  }
  // The 1e150 bound keeps the NTK and RBF kernels finite, not every kernel: the polynomial
  // one overflows from |x|^(2 degree) ~ 1e308 on, and large w_std or gamma overflow sooner.
  // An inf or NaN prior variance would reach the signal-power estimate (inf / inf residual)
  // and spoil every later variance, so it is refused here, before anything changes.
  s.kernel->prepare(x, s.ws.xcache);
  const double kxx = s.kernel->self(x, s.ws.xcache);
  if (!std::isfinite(kxx)) {
    invalid("input's prior variance k(x, x) = " + num(kxx) +
            " is not finite for this kernel (standardize the inputs)");
  }

  UpdateResult result;
  const double lambda = s.config.forgetting;
  // 1. forget.
  s.forget();
  if (s.m == 0) s.settle();  // no forward solve to carry it
  // 2. predict (the prequential prediction, before y is seen).
  Step step = s.predict_into(
      x, s.ws, 1.0, [&s](Eigen::Ref<VectorXd> v) { s.solve_lower_fused(v); },
      [&s](Eigen::Ref<VectorXd> q) { s.solve_upper_fused(q); }, /*prepared_kxx=*/kxx);
  // A negative variance of f at x (beyond kRepairTolerance of the noise) means that Sigma
  // has lost 0 <= Sigma <= K_D + jI to rounding. Absorbing y with the variance clamped to 0
  // would push Sigma further the same way, by a factor 1 + |var_f| / noise per update, and
  // the posterior overflows within a few updates. Repaired first, then predicted again
  // (within repair_allowed()'s budget; beyond it, an overflow ends in the reset below).
  if (const double raw_var_f = step.gamma2 + step.qh;
      s.m > 0 && std::isfinite(raw_var_f) &&
      raw_var_f <
          -kRepairTolerance * std::max(s.config.noise_variance, kMinRelativeNoise * step.kss) &&
      repair_allowed(s.counters.covariance_repairs, s.counters.updates, s.m)) {
    s.repair_covariance();
    step = s.predict_settled(x, s.ws, 1.0, kxx);
  }
  // x and k(x, x) are finite (checked above), so a non-finite mean or q^T Sigma q (var_f
  // itself is clamped, and max(0, NaN) is 0) means that the state has overflowed (kernels
  // near their range limits, or a repair too late): it starts over from the prior, and x
  // is its first sample.
  if (s.m > 0 && !(std::isfinite(step.mean) && std::isfinite(step.qh))) {
    s.reset_posterior();
    result.reset = true;
    step = s.predict_settled(x, s.ws, 1.0, kxx);
  }
  const double s2 = s.signal_power();
  result.prediction = {step.mean, s2 * step.var_f, s2 * step.var_y};
  const double residual = y - step.mean;
  // Signal power by maximum likelihood on standardized residuals (KRLS-T). A squared
  // standardized residual counts at most kMaxResidual2, so that s2_num stays finite for
  // every accepted target (|y| <= 1e150 squares to 1e300, and var_y may be small).
  s.s2_num = lambda * s.s2_num + std::fmin(residual * residual / step.var_y, kMaxResidual2);
  s.s2_den = lambda * s.s2_den + 1.0;

  // 3. admit (ALD test), then absorb y with p = [h; var_f] or p = h.
  s.fresh = -1;
  if (s.m == 0 ||
      step.gamma2 > std::max(s.config.admission_threshold, kMinAdmissionRatio) * step.kss) {
    result.admitted = s.admit(x, step);
  }
  if (result.admitted) ++s.counters.admitted;
  const Index m = s.m;
  Eigen::Ref<VectorXd> p = s.ws.h.head(m);
  s.mu.head(m) += (residual / step.var_y) * p;
  if (s.ahat_valid) s.absorb_ahat(result.admitted, residual / step.var_y, step.qh);
  // Sigma_post -= p p^T / var_y as (p / sqrt(var_y)) (p / sqrt(var_y))^T, one product per
  // entry, so the update is bitwise symmetric; collected in U, in slot order.
  p /= std::sqrt(step.var_y);
  {
    Eigen::Ref<VectorXd> u = s.U.col(s.npend).head(s.hw);
    u.setZero();
    for (Index i = 0; i < m; ++i) u(s.slot[static_cast<std::size_t>(i)]) = p(i);
    ++s.npend;
  }

  // 5 (first half). Every kDriftCheckPeriod updates, when the periodic recomputation is not
  // due, one column of L L^T is checked, and L recomputed if it has drifted. Checked before
  // the eviction, while L is settled (the eviction defers its removal from L).
  const std::uint64_t count = s.counters.updates + 1;
  const bool periodic =
      s.config.recompute_every > 0 &&
      s.since_recompute + 1 >= static_cast<std::uint64_t>(s.config.recompute_every);
  if (!periodic && s.m > 0 && count % kDriftCheckPeriod == 0) {
    const Index j =
        static_cast<Index>((count / kDriftCheckPeriod) % static_cast<std::uint64_t>(s.m));
    if (s.column_drift(j) > s.config.drift_bound) {
      s.recompute();
      result.recomputed = true;
    }
  }

  // 4. evict when over budget (the criterion reads mu, L and diag(Q), not Sigma). The
  // basis's slot is freed, which drops its row and column of Sigma and of U.
  if (s.m > s.config.budget) {
    const Index r = s.choose_eviction();
    s.remove_basis(r);
    result.evicted = static_cast<int>(r);
    ++s.counters.evicted;
  }
  const bool folded = s.npend == kPending;
  if (folded) s.flush();
  s.counters.updates = count;

  // 5 (second half): the periodic recomputation.
  if (!result.recomputed) ++s.since_recompute;
  if (periodic) {
    s.recompute();
    result.recomputed = true;
  }
  // Absorbing an extreme residual can overflow the mean (a residual near 1e150 against a
  // tiny var_y), or the covariance update (its column, or Sigma when folded): then the
  // state, which a snapshot would carry, starts over too. O(M).
  if (!s.absorbed_finite(folded)) {
    s.reset_posterior();
    result.reset = true;
  }
  return result;
}

Prediction OnlineGP::predict(Eigen::Ref<const VectorXd> x) const {
  impl_->settle();  // logically const (see Impl::settle)
  const Impl& s = *impl_;
  s.check_input(x);
  Workspace w(std::max<Index>(s.m, 1), s.cap, *s.kernel);
  const Step step = s.predict_settled(x, w, s.config.forgetting);
  const double s2 = s.signal_power();
  return {step.mean, s2 * step.var_f, s2 * step.var_y};
}

std::vector<Contribution> OnlineGP::explain(Eigen::Ref<const VectorXd> x, int k) const {
  impl_->settle();  // logically const (see Impl::settle)
  const Impl& s = *impl_;
  s.check_input(x);
  if (k < 0) invalid("explain: k must be >= 0, got " + std::to_string(k));
  std::vector<Contribution> out;
  if (s.m == 0 || k == 0) return out;
  Workspace w(s.m, s.cap, *s.kernel);
  s.predict_settled(x, w, s.config.forgetting);
  const double scale = std::sqrt(s.config.forgetting);
  std::vector<Index> order(static_cast<std::size_t>(s.m));
  for (Index i = 0; i < s.m; ++i) order[static_cast<std::size_t>(i)] = i;
  const auto weight = [&](Index i) { return scale * w.q(i) * s.mu(i); };
  const std::size_t n = std::min<std::size_t>(static_cast<std::size_t>(k), order.size());
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n), order.end(),
                    [&](Index a, Index b) {
                      const double wa = std::abs(weight(a)), wb = std::abs(weight(b));
                      return wa != wb ? wa > wb : a < b;
                    });
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    const Index j = order[i];
    out.push_back({static_cast<int>(j), s.in.sample(j), weight(j), s.in.point(j).transpose()});
  }
  return out;
}

ModelState OnlineGP::export_state() const {
  impl_->settle();  // logically const (see Impl::settle)
  const Impl& s = *impl_;
  const Index m = s.m;
  ModelState st;
  st.config = s.config;
  st.dim = s.dim;
  st.inputs = s.in.points(m);
  st.samples.resize(static_cast<std::size_t>(m));
  for (Index i = 0; i < m; ++i) st.samples[static_cast<std::size_t>(i)] = s.in.sample(i);
  if (s.keep_gram) {
    st.gram = s.K.topLeftCorner(m, m);
  } else {
    // Not maintained: computed as recompute() would (allocates; export may).
    st.gram.resize(m, m);
    Workspace w(std::max<Index>(m, 1), 1, *s.kernel);
    VectorXd row(std::max<Index>(m, 1));
    gram_by_rows(*s.kernel, s.in, m, st.gram, w, row);
  }
  st.factor = s.chol.matrixL().triangularView<Eigen::Lower>();
  st.mu = s.mu.head(m);
  st.sigma.resize(m, m);
  st.sigma_pending.resize(m, s.npend);
  st.slots.resize(static_cast<std::size_t>(m));
  for (Index i = 0; i < m; ++i) {
    const Index a = s.slot[static_cast<std::size_t>(i)];
    st.slots[static_cast<std::size_t>(i)] = static_cast<int>(a);
    for (Index j = 0; j < m; ++j) st.sigma(i, j) = s.sig(a, s.slot[static_cast<std::size_t>(j)]);
    // (A row of an m x 0 matrix would offset its null data pointer.)
    if (s.npend > 0) st.sigma_pending.row(i) = s.U.row(a).head(s.npend);
  }
  if (s.track_qdiag) st.qdiag = s.qdiag.head(m);
  st.s2_num = s.s2_num;
  st.s2_den = s.s2_den;
  st.updates = s.counters.updates;
  st.admitted = s.counters.admitted;
  st.evicted = s.counters.evicted;
  st.recomputes = s.counters.recomputes;
  st.pivot_failures = s.counters.pivot_failures;
  st.covariance_repairs = s.counters.covariance_repairs;
  st.resets = s.counters.resets;
  st.since_recompute = s.since_recompute;
  st.last_drift = s.last_drift;
  return st;
}

OnlineGP OnlineGP::import_state(const ModelState& st) {
  OnlineGP gp(st.config, st.dim);
  Impl& s = *gp.impl_;
  const Index m = st.inputs.rows();
  const auto shape = [](const char* what, Index r, Index c, Index er, Index ec) {
    if (r != er || c != ec) {
      invalid(std::string("import: ") + what + " is " + std::to_string(r) + "x" +
              std::to_string(c) + ", expected " + std::to_string(er) + "x" + std::to_string(ec));
    }
  };
  if (m > st.config.budget) {
    invalid("import: " + std::to_string(m) + " dictionary points exceed the budget " +
            std::to_string(st.config.budget));
  }
  shape("inputs", st.inputs.rows(), st.inputs.cols(), m, st.dim);
  shape("samples", static_cast<Index>(st.samples.size()), 1, m, 1);
  shape("gram", st.gram.rows(), st.gram.cols(), m, m);
  shape("factor", st.factor.rows(), st.factor.cols(), m, m);
  shape("mu", st.mu.size(), 1, m, 1);
  shape("sigma", st.sigma.rows(), st.sigma.cols(), m, m);
  // No pending columns may also come as 0 x 0 (snapshots written before the field).
  const bool no_pending = st.sigma_pending.cols() == 0;
  if ((!no_pending && st.sigma_pending.rows() != m) || st.sigma_pending.cols() >= kPending) {
    invalid("import: sigma_pending is " + std::to_string(st.sigma_pending.rows()) + "x" +
            std::to_string(st.sigma_pending.cols()) + ", expected " + std::to_string(m) +
            " rows and at most " + std::to_string(kPending - 1) + " columns");
  }
  if (!st.slots.empty()) {
    shape("slots", static_cast<Index>(st.slots.size()), 1, m, 1);
    std::vector<unsigned char> seen(static_cast<std::size_t>(s.cap), 0);
    for (const int a : st.slots) {
      if (a < 0 || a >= s.cap || seen[static_cast<std::size_t>(a)]) {
        invalid("import: slots must be distinct and in [0, " + std::to_string(s.cap - 1) +
                "], got " + std::to_string(a));
      }
      seen[static_cast<std::size_t>(a)] = 1;
    }
  }
  shape("qdiag", st.qdiag.size(), 1, s.track_qdiag ? m : 0, 1);
  const auto finite = [](const char* what, auto&& a) {
    if (!a.allFinite()) invalid(std::string("import: ") + what + " has non-finite entries");
  };
  finite("inputs", st.inputs);
  finite("gram", st.gram);
  finite("factor", st.factor);
  finite("mu", st.mu);
  finite("sigma", st.sigma);
  finite("sigma_pending", st.sigma_pending);
  if (st.sigma != st.sigma.transpose()) invalid("import: sigma is not symmetric");
  // qdiag's values are not checked: diag((K_D + jI)^{-1}) overflows to +inf on its own when
  // a basis's prior variance is near the smallest normal double (polynomial kernels on
  // inputs near 1e-100: 1 / pivot^2), and its downdates then make inf - inf = NaN. qdiag only
  // ranks evictions (a NaN ranks last and fails the certificate's proof), and a sweep of
  // the model's own states found both.
  if (!(st.s2_num > 0.0 && st.s2_den > 0.0) || !std::isfinite(st.s2_num) ||
      !std::isfinite(st.s2_den)) {
    invalid("import: signal power statistics must be finite and > 0, got " + num(st.s2_num) +
            " / " + num(st.s2_den));
  }
  for (Index i = 0; i < m; ++i) {
    const double norm = st.inputs.row(i).stableNorm();
    if (!(norm <= kMaxMagnitude)) {
      invalid("import: input " + std::to_string(i) + " has norm " + num(norm) +
              ", above the 1e150 update() accepts");
    }
  }
  // Counters and admission numbers as update() produces them: every admission is an
  // update, every eviction an admission, and the dictionary keeps admission order.
  if (st.admitted > st.updates || st.evicted > st.admitted || st.since_recompute > st.updates) {
    invalid("import: inconsistent counters: updates " + std::to_string(st.updates) + ", admitted " +
            std::to_string(st.admitted) + ", evicted " + std::to_string(st.evicted) +
            ", since_recompute " + std::to_string(st.since_recompute));
  }
  for (std::size_t i = 0; i < st.samples.size(); ++i) {
    if (st.samples[i] >= st.updates || (i > 0 && st.samples[i] <= st.samples[i - 1])) {
      invalid(
          "import: samples must increase and stay below updates = " + std::to_string(st.updates) +
          ", got " + std::to_string(st.samples[i]) + " at index " + std::to_string(i));
    }
  }
  if (!(st.last_drift >= 0.0) || !std::isfinite(st.last_drift)) {
    invalid("import: last_drift must be finite and >= 0, got " + num(st.last_drift));
  }
  if (s.chol.assign(st.factor) != CholeskyInfo::kSuccess) {
    invalid("import: factor has a non-positive, subnormal or non-finite entry in row " +
            std::to_string(s.chol.failed_index()));
  }
  s.m = m;
  for (Index i = 0; i < m; ++i) {
    s.kernel->prepare(st.inputs.row(i).transpose(), s.ws.xcache);
    s.in.push(i, st.inputs.row(i).transpose(), s.ws.xcache,
              st.samples[static_cast<std::size_t>(i)]);
  }
  // gram is validated above; it is state only when K_D is maintained (forgetting < 1),
  // otherwise the model recomputes it from the inputs when needed.
  if (s.keep_gram) s.K.topLeftCorner(m, m) = st.gram;
  s.mu.head(m) = st.mu;
  s.npend = no_pending ? 0 : st.sigma_pending.cols();
  for (Index i = 0; i < m; ++i) {
    const Index a = st.slots.empty() ? i : st.slots[static_cast<std::size_t>(i)];
    s.slot[static_cast<std::size_t>(i)] = a;
    s.used[static_cast<std::size_t>(a)] = 1;
    s.hw = std::max(s.hw, a + 1);
    if (!no_pending) s.U.row(a).head(s.npend) = st.sigma_pending.row(i);
  }
  for (Index j = 0; j < m; ++j) {
    for (Index i = 0; i <= j; ++i) {
      s.sig(s.slot[static_cast<std::size_t>(i)], s.slot[static_cast<std::size_t>(j)]) =
          st.sigma(i, j);
    }
  }
  if (s.track_qdiag) s.qdiag.head(m) = st.qdiag;
  s.s2_num = st.s2_num;
  s.s2_den = st.s2_den;
  s.counters.updates = st.updates;
  s.counters.admitted = st.admitted;
  s.counters.evicted = st.evicted;
  s.counters.recomputes = st.recomputes;
  s.counters.pivot_failures = st.pivot_failures;
  s.counters.covariance_repairs = st.covariance_repairs;
  s.counters.resets = st.resets;
  s.since_recompute = st.since_recompute;
  s.last_drift = st.last_drift;
  s.check_imported(st);
  return gp;
}

std::size_t OnlineGP::memory_bytes(const ModelConfig& config, int dim) {
  config.validate();
  if (dim < 1) invalid("dimension must be >= 1, got " + std::to_string(dim));
  return sizeof(OnlineGP) + Impl::memory_bytes(config, dim, *make_kernel(config.kernel));
}

std::size_t OnlineGP::memory_bytes() const {
  return sizeof(OnlineGP) + Impl::memory_bytes(impl_->config, impl_->dim, *impl_->kernel);
}

const ModelConfig& OnlineGP::config() const { return impl_->config; }
int OnlineGP::dim() const { return impl_->dim; }
int OnlineGP::budget() const { return impl_->config.budget; }
int OnlineGP::dictionary_size() const { return static_cast<int>(impl_->m); }
const ModelCounters& OnlineGP::counters() const { return impl_->counters; }
double OnlineGP::signal_power() const { return impl_->signal_power(); }
double OnlineGP::last_drift() const { return impl_->last_drift; }
void OnlineGP::recompute() { impl_->recompute(); }

double OnlineGP::drift() const {
  impl_->settle();  // logically const (see Impl::settle)
  const Impl& s = *impl_;
  const Index m = s.m;
  if (m == 0) return 0.0;
  const MatrixXd Kfresh = s.kernel->gram(s.in.points(m));
  const MatrixXd L = s.chol.matrixL().triangularView<Eigen::Lower>();
  MatrixXd E = L * L.transpose() - Kfresh;
  E.diagonal().array() -= s.config.jitter;
  MatrixXd Kj = Kfresh;
  Kj.diagonal().array() += s.config.jitter;
  const double scale = Kj.stableNorm();
  return scale > 0.0 ? E.stableNorm() / scale : E.stableNorm();
}

void OnlineGP::check_invariants(double tol) const {
  impl_->settle();  // logically const (see Impl::settle)
  const Impl& s = *impl_;
  const Index m = s.m;
  const auto fail = [](const std::string& what) {
    throw std::logic_error("OnlineGP invariant violated: " + what);
  };
  if (m > s.config.budget) fail("dictionary size " + std::to_string(m) + " > budget");
  if (s.chol.size() != m) fail("factor size differs from dictionary size");
  if (m == 0) return;
  const MatrixXd Kfresh = s.kernel->gram(s.in.points(m));
  const double kscale = std::max(Kfresh.stableNorm(), std::numeric_limits<double>::min());
  // K_D as the model uses it: the maintained one, or (forgetting == 1) as recompute()
  // builds it from the stored inputs.
  const MatrixXd K = s.keep_gram ? MatrixXd(s.K.topLeftCorner(m, m)) : export_state().gram;
  if ((K - K.transpose()).norm() != 0.0) fail("K_D not bitwise symmetric");
  if ((K - Kfresh).stableNorm() > tol * kscale) {
    fail("stored K_D differs from the kernel of the inputs");
  }
  // L relative to K_D + jitter I, the matrix it factors (IncrementalCholesky::drift).
  MatrixXd Kj = K;
  Kj.diagonal().array() += s.config.jitter;
  const double lscale = std::max(Kj.stableNorm(), std::numeric_limits<double>::min());
  const MatrixXd L = s.chol.matrixL().triangularView<Eigen::Lower>();
  const double lerr = (L * L.transpose() - Kj).stableNorm();
  if (lerr > tol * lscale) fail("L L^T != K_D + jitter I (error " + num(lerr / lscale) + ")");
  // Sigma is stored as its upper triangle, so it is symmetric by construction; what can
  // still go wrong is checked instead: finiteness, and that it is a covariance up to
  // rounding (non-negative diagonal, every 2 x 2 principal minor |S_ij| <= sqrt(S_ii S_jj)).
  // The slot layout: distinct taken slots, hw just above the highest, and zero rows and
  // columns of Sigma and zero rows of U at the free slots below hw.
  std::vector<unsigned char> taken(static_cast<std::size_t>(s.cap), 0);
  Index top = 0;
  for (Index i = 0; i < m; ++i) {
    const Index a = s.slot[static_cast<std::size_t>(i)];
    if (a < 0 || a >= s.cap || taken[static_cast<std::size_t>(a)]) fail("slot map is not 1-1");
    taken[static_cast<std::size_t>(a)] = 1;
    top = std::max(top, a + 1);
  }
  if (taken != s.used) fail("used slots differ from the slot map");
  if (top != s.hw) fail("hw is not 1 + the highest taken slot");
  if (s.npend >= kPending) fail("more pending updates than kPending - 1 after an update");
  for (Index a = 0; a < s.hw; ++a) {
    if (taken[static_cast<std::size_t>(a)]) continue;
    for (Index b = 0; b < s.hw; ++b) {
      if (s.sig(a, b) != 0.0) fail("Sigma is not zero at free slot " + std::to_string(a));
    }
    if (s.npend > 0 && s.U.row(a).head(s.npend).cwiseAbs().maxCoeff() != 0.0) {
      fail("U is not zero at free slot " + std::to_string(a));
    }
  }
  const MatrixXd S = covariance();
  if (!S.allFinite() || !s.mu.head(m).allFinite()) fail("posterior has non-finite entries");
  const double sscale = std::max(S.diagonal().cwiseAbs().maxCoeff(), 1e-300);
  for (Index j = 0; j < m; ++j) {
    if (S(j, j) < -tol * sscale) fail("Sigma has a negative variance at " + std::to_string(j));
    for (Index i = 0; i < j; ++i) {
      const double bound = std::sqrt(std::max(S(i, i), 0.0) * std::max(S(j, j), 0.0));
      if (std::abs(S(i, j)) > bound + tol * sscale) {
        fail("Sigma is not a covariance: |Sigma(" + std::to_string(i) + ", " + std::to_string(j) +
             ")| = " + num(std::abs(S(i, j))) + " > sqrt(Sigma_ii Sigma_jj) = " + num(bound));
      }
    }
  }
  if (s.track_qdiag) {
    const VectorXd fresh = Kj.llt().solve(MatrixXd::Identity(m, m)).diagonal();
    if ((s.qdiag.head(m) - fresh).norm() > tol * fresh.norm()) {
      fail("diag(Q) differs from a fresh inverse (error " +
           num((s.qdiag.head(m) - fresh).norm() / fresh.norm()) + ")");
    }
    if (s.ahat_valid) {
      // (K_D + jI)^{-1} mu = ahat + e, |e_i| <= sqrt(Q_ii) abeta (CONVENTION).
      const VectorXd alpha = Kj.llt().solve(s.mu.head(m));
      const double ascale = tol * alpha.cwiseAbs().maxCoeff();
      for (Index i = 0; i < m; ++i) {
        const double err = std::abs(alpha(i) - s.ahat(i));
        const double bound = std::sqrt(fresh(i)) * s.abeta;
        if (err > bound * (1.0 + 1e-6) + ascale) {
          fail("alpha estimate off its bound at " + std::to_string(i) + ": |error| " + num(err) +
               " > " + num(bound));
        }
      }
    }
  }
}

Eigen::Ref<const RowMatrixXd> OnlineGP::inputs() const { return impl_->in.points(impl_->m); }
Eigen::Ref<const VectorXd> OnlineGP::mean_vector() const { return impl_->mu.head(impl_->m); }
MatrixXd OnlineGP::covariance() const {
  const Impl& s = *impl_;
  MatrixXd S(s.m, s.m);
  for (Index j = 0; j < s.m; ++j) {
    for (Index i = 0; i < s.m; ++i) S(i, j) = s.posterior_cov(i, j);
  }
  return S;
}
const IncrementalCholesky& OnlineGP::factor() const {
  impl_->settle();
  return impl_->chol;
}

}  // namespace ntk
