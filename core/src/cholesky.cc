// IncrementalCholesky. See cholesky.h for the contract.
//
// CONVENTION (restated from the header; every method preserves it)
//   L_ is ld x capacity, column-major, with ld = capacity rounded up to a multiple of 8
//   doubles: every column starts on a cache line (the solves run ~10% faster than with an
//   odd ld such as budget + 1, whose columns straddle lines). When that is a multiple of
//   64 doubles (512 bytes), 8 more: otherwise columns at most 8 apart start a multiple of
//   4 KiB apart (two apart at ld = 256) and remove()'s stores alias its loads in the
//   store buffer (remove at n = 256 ran 1.5x slower).
//   L_.topLeftCorner(n_, n_) restricted to its lower triangle is L, L L^T = K + jitter_ I.
//   The strict upper triangle of the WHOLE buffer is zero: it is zeroed at construction
//   and no method writes above the diagonal. Hence column n_ has zeros above row n_ and
//   append only has to write row n_; matrixL() reads as a lower-triangular matrix.
//   Entries on or below the diagonal outside the leading block are stale.
//   L_(k, k) > 0 and finite for k < n_.
//
// Nothing here allocates after construction: the triangular solves and matrix-vector
// products used are Eigen's level-2 kernels on direct-access operands with unit inner
// stride destinations, which neither copy nor allocate (the tests count malloc).
#include "ntk/core/cholesky.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

namespace ntk {

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

namespace {

std::string num(double v) {
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

[[noreturn]] void invalid(const std::string& what) {
  throw std::invalid_argument("IncrementalCholesky: " + what);
}

Index checked_capacity(Index capacity) {
  if (capacity < 1) invalid("capacity must be >= 1, got " + std::to_string(capacity));
  return capacity;
}

double checked_jitter(double jitter) {
  if (!(jitter >= 0.0) || !std::isfinite(jitter)) {
    invalid("jitter must be finite and >= 0, got " + num(jitter));
  }
  return jitter;
}

void check_vector_size(const char* what, Index got, Index n) {
  if (got != n) {
    invalid(std::string(what) + ".size() must equal size() = " + std::to_string(n) + ", got " +
            std::to_string(got));
  }
}

void check_square_fits(const char* what, Index rows, Index cols, Index capacity) {
  if (rows != cols || rows > capacity) {
    invalid(std::string(what) +
            " must be square with at most capacity() = " + std::to_string(capacity) +
            " rows, got " + std::to_string(rows) + " x " + std::to_string(cols));
  }
}

// A usable pivot^2 gives a diagonal entry that is positive and finite.
bool acceptable_pivot2(double p2) { return p2 > 0.0 && std::isfinite(p2); }

using Packet = Eigen::internal::packet_traits<double>::type;
constexpr Index kPacket = static_cast<Index>(sizeof(Packet) / sizeof(double));

// Panels of kFactorPanel columns (factor_lower_in_place, panel_products).
constexpr Index kFactorPanel = 8;

// out(r - r0, c) = init(r, c) - sum_{k < kend} A(r, k) A(j0 + c, k) for rows r in [r0, r1)
// and the nc <= kFactorPanel columns c of the panel at j0 (A column-major, leading
// dimension ld; init and out column-major with leading dimensions ldi and ldo; out may be
// init). A packet of rows keeps its nc sums in registers through all k: each column of A
// is read once per panel, not once per output column as by matrix-vector products, and
// the kernel is bound by its multiply-adds, not by memory.
void panel_products(const double* A, Index ld, Index r0, Index r1, Index j0, Index nc, Index kend,
                    const double* init, Index ldi, double* out, Index ldo) {
  using namespace Eigen::internal;
  Index r = r0;
  if (nc == kFactorPanel) {
    // Two packets of rows share each column's broadcasts.
    for (; r + 2 * kPacket <= r1; r += 2 * kPacket) {
      Packet acc0[kFactorPanel], acc1[kFactorPanel];
      _Pragma("GCC unroll 8") for (Index c = 0; c < kFactorPanel; ++c) {
        acc0[c] = ploadu<Packet>(init + c * ldi + r);
        acc1[c] = ploadu<Packet>(init + c * ldi + r + kPacket);
      }
      for (Index k = 0; k < kend; ++k) {
        const Packet l0 = pnegate(ploadu<Packet>(A + k * ld + r));
        const Packet l1 = pnegate(ploadu<Packet>(A + k * ld + r + kPacket));
        const double* s = A + k * ld + j0;
        _Pragma("GCC unroll 8") for (Index c = 0; c < kFactorPanel; ++c) {
          const Packet sc = pset1<Packet>(s[c]);
          acc0[c] = pmadd(l0, sc, acc0[c]);
          acc1[c] = pmadd(l1, sc, acc1[c]);
        }
      }
      _Pragma("GCC unroll 8") for (Index c = 0; c < kFactorPanel; ++c) {
        pstoreu(out + c * ldo + (r - r0), acc0[c]);
        pstoreu(out + c * ldo + (r - r0) + kPacket, acc1[c]);
      }
    }
    for (; r + kPacket <= r1; r += kPacket) {
      Packet acc[kFactorPanel];
      _Pragma("GCC unroll 8") for (Index c = 0; c < kFactorPanel; ++c) {
        acc[c] = ploadu<Packet>(init + c * ldi + r);
      }
      for (Index k = 0; k < kend; ++k) {
        const Packet l = pnegate(ploadu<Packet>(A + k * ld + r));
        const double* s = A + k * ld + j0;
        _Pragma("GCC unroll 8") for (Index c = 0; c < kFactorPanel; ++c) {
          acc[c] = pmadd(l, pset1<Packet>(s[c]), acc[c]);
        }
      }
      _Pragma("GCC unroll 8") for (Index c = 0; c < kFactorPanel; ++c) {
        pstoreu(out + c * ldo + (r - r0), acc[c]);
      }
    }
  }
  for (; r < r1; ++r) {
    for (Index c = 0; c < nc; ++c) {
      double acc = init[c * ldi + r];
      for (Index k = 0; k < kend; ++k) acc -= A[k * ld + r] * A[k * ld + j0 + c];
      out[c * ldo + (r - r0)] = acc;
    }
  }
}

// Left-looking Cholesky of the lower triangle of A in place, kFactorPanel columns at a
// time: the panel's columns first take the products with all earlier columns
// (panel_products, below the panel's diagonal block; entry by entry within it), then are
// factored among themselves:
//   l_kk         = sqrt(a_kk - |l_(k, 0:k)|^2)
//   l_(k+1:n, k) = (a_(k+1:n, k) - L_(k+1:n, 0:k) l_(k, 0:k)^T) / l_kk
// No allocation; the strict upper triangle is neither read nor written. Returns -1, or the
// first k whose pivot^2 is not positive and finite (then pivot2 holds it; A is partially
// overwritten). At n = 256, 192 us against 301 us with one matrix-vector product per column.
Index factor_lower_in_place(Eigen::Ref<MatrixXd> A, double& pivot2) {
  const Index n = A.rows();
  const Index ld = A.outerStride();
  double* a = A.data();
  for (Index j0 = 0; j0 < n; j0 += kFactorPanel) {
    const Index nc = std::min(kFactorPanel, n - j0);
    double* panel = a + j0 * ld;
    // The diagonal block's lower triangle, entry by entry.
    for (Index c = 0; c < nc; ++c) {
      for (Index r = j0 + c; r < j0 + nc; ++r) {
        double acc = panel[c * ld + r];
        for (Index k = 0; k < j0; ++k) acc -= a[k * ld + r] * a[k * ld + j0 + c];
        panel[c * ld + r] = acc;
      }
    }
    if (j0 > 0) {
      panel_products(a, ld, j0 + nc, n, j0, nc, j0, panel, ld, panel + j0 + nc, ld);
    }
    // The panel's own columns.
    for (Index c = 0; c < nc; ++c) {
      const Index k = j0 + c;
      double* col = a + k * ld;
      double p2 = col[k];
      for (Index c2 = 0; c2 < c; ++c2) p2 -= a[(j0 + c2) * ld + k] * a[(j0 + c2) * ld + k];
      if (!acceptable_pivot2(p2)) {
        pivot2 = p2;
        return k;
      }
      const double lkk = std::sqrt(p2);
      col[k] = lkk;
      const Index rest = n - k - 1;
      if (rest == 0) continue;
      Eigen::Map<VectorXd> below(col + k + 1, rest);
      for (Index c2 = 0; c2 < c; ++c2) {
        const double* prev = a + (j0 + c2) * ld;
        below -= prev[k] * Eigen::Map<const VectorXd>(prev + k + 1, rest);
      }
      below *= 1.0 / lkk;
    }
  }
  return -1;
}

// Blocked triangular solves on the column-major lower L (n x n, leading dimension ld),
// with dinv[k] = 1 / L(k, k). Blocks of kPanel columns: the part of each block's work
// that is a rectangle (kPanel columns against the rest of the vector) runs as kPanel
// independent FMA streams over contiguous columns, one SIMD packet of rows at a time; the
// kPanel x kPanel triangle is the only dependency chain, and it multiplies by dinv instead
// of dividing. Measured at n = 256 (AVX-512): 3.0 us (lower) and 3.5 us (upper) against
// 3.5 and 4.4 us for Eigen's triangularView solves; without -march=native (SSE2) 5.2 and
// 5.2 against 6.0 and 7.3 us. The results differ from Eigen's by rounding only.
constexpr Index kPanel = 8;

// x <- L^{-1} x: column-oriented (each block's columns update the rows below it).
void lower_solve(const double* L, Index ld, const double* dinv, Index n, double* x) {
  using namespace Eigen::internal;
  for (Index lo = 0; lo < n; lo += kPanel) {
    const Index hi = std::min(n, lo + kPanel);
    for (Index j = lo; j < hi; ++j) {
      const double* c = L + j * ld;
      const double xj = x[j] * dinv[j];
      x[j] = xj;
      for (Index r = j + 1; r < hi; ++r) x[r] -= c[r] * xj;
    }
    Index r = hi;
    if (hi - lo == kPanel) {
      Packet xs[kPanel];
      _Pragma("GCC unroll 16") for (Index j = 0; j < kPanel; ++j) {
        xs[j] = pset1<Packet>(-x[lo + j]);
      }
      const Index vend = hi + (n - hi) / kPacket * kPacket;
      for (; r < vend; r += kPacket) {
        Packet a = ploadu<Packet>(x + r);
        _Pragma("GCC unroll 16") for (Index j = 0; j < kPanel; ++j) {
          a = pmadd(ploadu<Packet>(L + (lo + j) * ld + r), xs[j], a);
        }
        pstoreu(x + r, a);
      }
    }
    for (; r < n; ++r) {
      double a = x[r];
      for (Index j = lo; j < hi; ++j) a -= L[j * ld + r] * x[j];
      x[r] = a;
    }
  }
}

// x <- L^{-T} x: block by block from the bottom; each block first subtracts the dot
// products of its columns (below the block) with the solved part of x. kRhs right-hand
// sides xs[0 .. kRhs) in one pass over L (each packet of a column loaded once for all).
// Block boundaries are multiples of kPanel (the bottom block takes n mod kPanel columns),
// so every rectangle starts at an aligned row: with n = 257 (a full dictionary plus the
// admitted sample) blocks counted from n made every AVX-512 load straddle two cache
// lines.
template <int kRhs>
void upper_solve_n(const double* L, Index ld, const double* dinv, Index n, double* const* xs) {
  using namespace Eigen::internal;
  for (Index hi = n; hi > 0;) {
    const Index lo = (hi - 1) / kPanel * kPanel;
    const Index len = n - hi;
    if (len > 0) {
      // Only the bottom block can be narrower than kPanel, and it has nothing below it.
      eigen_assert(hi - lo == kPanel);
      Packet acc[kRhs][kPanel];
      _Pragma("GCC unroll 16") for (int q = 0; q < kRhs; ++q) {
        _Pragma("GCC unroll 16") for (Index j = 0; j < kPanel; ++j) acc[q][j] = pset1<Packet>(0.0);
      }
      Index r = hi;
      const Index vend = hi + len / kPacket * kPacket;
      for (; r < vend; r += kPacket) {
        Packet xv[kRhs];
        _Pragma("GCC unroll 16") for (int q = 0; q < kRhs; ++q) xv[q] = ploadu<Packet>(xs[q] + r);
        _Pragma("GCC unroll 16") for (Index j = 0; j < kPanel; ++j) {
          const Packet l = ploadu<Packet>(L + (lo + j) * ld + r);
          _Pragma("GCC unroll 16") for (int q = 0; q < kRhs; ++q) {
            acc[q][j] = pmadd(l, xv[q], acc[q][j]);
          }
        }
      }
      for (int q = 0; q < kRhs; ++q) {
        double* x = xs[q];
        double dot[kPanel];
        _Pragma("GCC unroll 16") for (Index j = 0; j < kPanel; ++j) dot[j] = predux(acc[q][j]);
        for (Index rr = r; rr < n; ++rr) {
          const double xr = x[rr];
          for (Index j = 0; j < kPanel; ++j) dot[j] += L[(lo + j) * ld + rr] * xr;
        }
        for (Index j = 0; j < kPanel; ++j) x[lo + j] -= dot[j];
      }
    }
    // The triangle, right-looking: row j of L within the block.
    for (int q = 0; q < kRhs; ++q) {
      double* x = xs[q];
      for (Index j = hi - 1; j >= lo; --j) {
        const double xj = x[j] * dinv[j];
        x[j] = xj;
        for (Index i = lo; i < j; ++i) x[i] -= L[i * ld + j] * xj;
      }
    }
    hi = lo;
  }
}

void upper_solve(const double* L, Index ld, const double* dinv, Index n, double* x) {
  double* const xs[1] = {x};
  upper_solve_n<1>(L, ld, dinv, n, xs);
}

Index leading_dimension(Index capacity) {
  Index ld = (capacity + 7) / 8 * 8;
  if (ld % 64 == 0) ld += 8;
  return ld;
}

}  // namespace

std::size_t IncrementalCholesky::memory_bytes(Index capacity) {
  const Index cap = checked_capacity(capacity);
  return static_cast<std::size_t>(leading_dimension(cap) * cap + 2 * cap) * sizeof(double);
}

IncrementalCholesky::IncrementalCholesky(Index capacity, double jitter)
    : L_(MatrixXd::Zero(leading_dimension(checked_capacity(capacity)), capacity)),
      jitter_(checked_jitter(jitter)),
      dinv_(VectorXd::Zero(capacity)),
      work_(VectorXd::Zero(capacity)) {}

CholeskyInfo IncrementalCholesky::append(Eigen::Ref<const VectorXd> k_row, double k_self) {
  check_vector_size("k_row", k_row.size(), n_);
  if (n_ == capacity()) return CholeskyInfo::kFull;
  Eigen::Ref<VectorXd> v = work_.head(n_);
  v = k_row;
  solve_lower_in_place(v);
  return append_pivot(v, k_self);
}

CholeskyInfo IncrementalCholesky::append(Eigen::Ref<const VectorXd> k_row, double k_self,
                                         Eigen::Ref<VectorXd> v_out) {
  check_vector_size("k_row", k_row.size(), n_);
  check_vector_size("v_out", v_out.size(), n_);
  if (n_ == capacity()) return CholeskyInfo::kFull;
  // Through work_ so that v_out may alias k_row.
  Eigen::Ref<VectorXd> v = work_.head(n_);
  v = k_row;
  solve_lower_in_place(v);
  v_out = v;
  return append_pivot(v, k_self);
}

CholeskyInfo IncrementalCholesky::append_solved(Eigen::Ref<const VectorXd> v, double k_self) {
  check_vector_size("v", v.size(), n_);
  if (n_ == capacity()) return CholeskyInfo::kFull;
  return append_pivot(v, k_self);
}

// [K k; k^T kss] + jitter I = [L 0; v^T l] [L^T v; 0 l] with L v = k, l^2 = kss + jitter - v.v.
CholeskyInfo IncrementalCholesky::append_pivot(Eigen::Ref<const VectorXd> v, double k_self) {
  const double p2 = k_self + jitter_ - v.squaredNorm();
  if (!acceptable_pivot2(p2)) {
    failed_pivot_ = p2;
    failed_index_ = n_;
    return CholeskyInfo::kNotPositiveDefinite;
  }
  L_.row(n_).head(n_) = v.transpose();
  L_(n_, n_) = std::sqrt(p2);
  dinv_(n_) = 1.0 / L_(n_, n_);
  ++n_;
  return CholeskyInfo::kSuccess;
}

CholeskyInfo IncrementalCholesky::assign(const Eigen::Ref<const MatrixXd>& L) {
  check_square_fits("L", L.rows(), L.cols(), capacity());
  const Index n = L.rows();
  for (Index j = 0; j < n; ++j) {
    const double d = L(j, j);
    // 1 / d must be finite too (the solves multiply by it): a subnormal d is refused.
    if (!(d > 0.0 && std::isfinite(d) && std::isfinite(1.0 / d))) {
      failed_index_ = j;
      return CholeskyInfo::kNotPositiveDefinite;
    }
  }
  // First row (not column) holding a non-finite entry of the strict lower triangle.
  Index bad = n;
  for (Index j = 0; j + 1 < n; ++j) {
    for (Index i = j + 1; i < std::min(n, bad); ++i) {
      if (!std::isfinite(L(i, j))) bad = i;
    }
  }
  if (bad < n) {
    failed_index_ = bad;
    return CholeskyInfo::kNotPositiveDefinite;
  }
  L_.topLeftCorner(n, n).triangularView<Eigen::Lower>() = L;
  dinv_.head(n) = L.diagonal().cwiseInverse();
  n_ = n;
  return CholeskyInfo::kSuccess;
}

// Deleting row/column i. With the partition (1 = rows < i, 2 = row i, 3 = rows > i)
//   L = [L11 0 0; l21^T l22 0; L31 l32 L33],
// K with row/column i deleted is [K11 K13; K31 K33] with K33 = L31 L31^T + l32 l32^T +
// L33 L33^T, so its factor is [L11 0; L31 L33'] where L33' L33'^T = L33 L33^T + l32 l32^T:
// a rank-1 update, done in place while each column moves one column left and one row up.
//
// The update is Gill, Golub, Murray and Saunders' method C1 ("Methods for modifying
// matrix factorizations", Math. Comp. 28, 1974), stable for positive updates, written for
// L L^T. With p = L33^{-1} l32 and s_j = 1 + p_0^2 + ... + p_j^2 (s_{-1} = 1),
//   L33 L33^T + l32 l32^T = L33 (I + p p^T) L33^T,  I + p p^T = M M^T,
//   M_jj = sqrt(s_j / s_{j-1}),  M_rj = p_r p_j / sqrt(s_{j-1} s_j)  (r > j),
// so column j of L33' = L33 M is, with w_j = l32 - (columns 0..j-1 of L33) p_{0:j-1},
//   L33'_j = sqrt(s_{j-1} / s_j) L33_j + p_j / sqrt(s_{j-1} s_j) w_j,   L33'_jj = L33_jj
//   sqrt(s_j / s_{j-1}),  and  w_{j+1} = w_j - p_j L33_j,  p_j = (w_j)_j / L33_jj.
// w is the forward substitution for p run alongside the update. The only dependency
// chain from column to column is p_j -> w_{j+1} -> p_{j+1}, one multiply-add and one
// multiply; the square roots and divisions of each column are off it. (The textbook
// alternative, LINPACK dchud's Givens rotations, puts a sqrt and a divide of every column
// on the chain: blocked the same way, 1.2x slower at n = 256.) Equivalent to those rotations in
// exact arithmetic; the tests compare the result with fresh factorizations.
//
// Blocked by kCols columns: a block's scalars are made on its kCols x kCols triangle,
// then its columns are updated together in one sweep over the rows below, a packet of w
// held in registers through all of them (loaded and stored once per block, not per
// column). The next block's triangle is computed as soon as the sweep has passed its
// rows, so out-of-order execution overlaps that short chain with the rest of the sweep.
namespace {

// 4 x 4 measured best of {2, 4, 8} x {4, 8} at n = 64 and 256 (bench_cholesky).
constexpr Index kCols = 4;  // columns per block
constexpr Index kRows = 4;  // rows per packet of the sweep

// Column k (0 <= k < ncols) of the block starting at t0 reads old column i + t0 + k + 1
// at old row i + 1 + j (j indexes w) and writes new column i + t0 + k at new row i + j.
// A column's writes land one row above the previous column's reads of the same memory,
// so rows in increasing order, columns in increasing order at each row, read every entry
// before it is overwritten. Within a block that is the order of make() then sweep().
// Across the pipelined blocks: the next block's make() writes, in the memory of this
// block's last column, only the rows of its own triangle, which this block has already
// read (in its make() and the sweep of those rows, both run first); and this block's
// remaining sweep finishes before the next block's sweep starts.
struct RemoveBlock {
  double* a;        // L_.data()
  Index ld;         // leading dimension
  Index i;          // the removed index
  Index t0;         // first column of the block
  Index ncols;      // columns in the block, <= kCols
  double c[kCols];  // sqrt(s_{j-1} / s_j)
  double g[kCols];  // p_j / sqrt(s_{j-1} s_j)
  double p[kCols];  // p_j
  // remove_solve_lower(): the right-hand side, indexed like w (x[j] is row i + j), or null.
  double* x = nullptr;
  // The removal's u (see remove_impl), indexed like w, or null; u_j = l22 g_j.
  double* u = nullptr;
  double l22 = 0.0;

  const double* src(Index k) const { return a + (i + t0 + k + 1) * ld + (i + 1); }
  double* dst(Index k) const { return a + (i + t0 + k) * ld + i; }

  // The block's triangle (w indices t0 .. t0 + ncols - 1): its scalars, diagonal and the
  // entries of its columns within it. s = s_{t0-1}, root_s = sqrt(s_{t0-1}) and
  // inv_root_s = 1 / root_s on entry, those of the block's last column on return (s is
  // then infinite if it has overflowed; root_s is not). dinv holds the old 1 / L_(k, k) at
  // k > i + t0 and receives the new ones.
  //
  // s is carried (s_j = s_{j-1} + p_j^2, one multiply-add on the chain from column to
  // column), and sqrt(s) and its reciprocal are computed from it off that chain: 6%
  // faster at n = 256 and 13% at n = 64 on an AMD EPYC (Zen 5) than carrying sqrt(s),
  // where a square root sat on the chain (no difference on an Intel Sapphire Rapids).
  // s overflows once |p| > 1e154, which an assigned factor with a pivot ratio near
  // 1e-155 reaches; from there on (s stays infinite) sqrt(s) is carried as
  // root_s = hypot(root_s, p_j), finite up to |p| = 1e308.
  void make(double* w, double* dinv, double& s, double& root_s, double& inv_root_s) {
    for (Index k = 0; k < ncols; ++k) {
      const Index t = t0 + k;
      const double* sk = src(k);
      double* dk = dst(k);
      const double inv_old = dinv[i + t + 1];
      const double pk = w[t] * inv_old;
      s += pk * pk;
      const double root_new =
          s <= std::numeric_limits<double>::max() ? std::sqrt(s) : std::hypot(root_s, pk);
      const double inv_new = 1.0 / root_new;
      c[k] = root_s * inv_new;
      g[k] = pk * inv_new * inv_root_s;
      if (u != nullptr) u[t] = l22 * g[k];
      p[k] = pk;
      dk[t] = sk[t] * (root_new * inv_root_s);
      // Exactly 1 / L_(k, k), not inv_old * c: an imported state sets dinv from the
      // diagonal, and the round trip must predict bit-identically. Off the chain.
      dinv[i + t] = 1.0 / dk[t];
      root_s = root_new;
      inv_root_s = inv_new;
      for (Index j = t + 1; j < t0 + ncols; ++j) {
        const double l = sk[j];
        dk[j] = c[k] * l + g[k] * w[j];
        w[j] -= pk * l;
      }
    }
    if (x == nullptr) return;
    // The forward substitution's triangle for the block's columns (the sweeps of earlier
    // blocks have already subtracted their columns from these rows).
    for (Index k = 0; k < ncols; ++k) {
      const Index t = t0 + k;
      const double* dk = dst(k);
      const double xt = x[t] * dinv[i + t];
      x[t] = xt;
      for (Index j = t + 1; j < t0 + ncols; ++j) x[j] -= dk[j] * xt;
    }
  }

  // The block's columns on w indices [lo, hi).
  void sweep(double* w, Index lo, Index hi) const {
    if (x == nullptr) {
      sweep_impl<false>(w, lo, hi);
    } else {
      sweep_impl<true>(w, lo, hi);
    }
  }

  // kSolve: also x -= (the new columns) x_block, from the new values still in registers.
  template <bool kSolve>
  void sweep_impl(double* w, Index lo, Index hi) const {
    using Pack = Eigen::Array<double, kRows, 1>;
    double xs[kCols] = {};
    if constexpr (kSolve) {
      for (Index k = 0; k < ncols; ++k) xs[k] = x[t0 + k];
    }
    Index j = lo;
    for (; j + kRows <= hi; j += kRows) {
      Eigen::Map<Pack> wm(w + j);
      Pack wv = wm;
      Pack xv;
      if constexpr (kSolve) xv = Eigen::Map<Pack>(x + j);
      for (Index k = 0; k < ncols; ++k) {
        const Pack l = Eigen::Map<const Pack>(src(k) + j);
        const Pack nl = c[k] * l + g[k] * wv;
        Eigen::Map<Pack>(dst(k) + j) = nl;
        wv -= p[k] * l;
        if constexpr (kSolve) xv -= xs[k] * nl;
      }
      wm = wv;
      if constexpr (kSolve) Eigen::Map<Pack>(x + j) = xv;
    }
    for (; j < hi; ++j) {
      double wj = w[j];
      double xj = kSolve ? x[j] : 0.0;
      for (Index k = 0; k < ncols; ++k) {
        const double l = src(k)[j];
        const double nl = c[k] * l + g[k] * wj;
        dst(k)[j] = nl;
        wj -= p[k] * l;
        if constexpr (kSolve) xj -= xs[k] * nl;
      }
      w[j] = wj;
      if constexpr (kSolve) x[j] = xj;
    }
  }
};

}  // namespace

void IncrementalCholesky::remove(Index i) { remove_impl(i, nullptr, nullptr); }

namespace {

// A vector sized for the factor after a removal, argument `what` of `fn`.
void check_removal_vector(const char* fn, const char* what, Index got, Index n) {
  if (got != n - 1) {
    invalid(std::string(fn) + ": " + what + ".size() must equal size() - 1 = " +
            std::to_string(n - 1) + ", got " + std::to_string(got));
  }
}

}  // namespace

double IncrementalCholesky::remove(Index i, Eigen::Ref<VectorXd> u) {
  check_remove_index(i);
  check_removal_vector("remove", "u", u.size(), n_);
  return remove_impl(i, nullptr, u.data());
}

void IncrementalCholesky::remove_solve_lower(Index i, Eigen::Ref<VectorXd> b) {
  check_remove_index(i);
  check_removal_vector("remove_solve_lower", "b", b.size(), n_);
  remove_impl(i, b.data(), nullptr);
}

double IncrementalCholesky::remove_solve_lower(Index i, Eigen::Ref<VectorXd> b,
                                               Eigen::Ref<VectorXd> u) {
  check_remove_index(i);
  check_removal_vector("remove_solve_lower", "b", b.size(), n_);
  check_removal_vector("remove_solve_lower", "u", u.size(), n_);
  return remove_impl(i, b.data(), u.data());
}

void IncrementalCholesky::check_remove_index(Index i) const {
  if (i < 0 || i >= n_) {
    invalid("remove index must be in [0, size() = " + std::to_string(n_) + "), got " +
            std::to_string(i));
  }
}

// u (when not null): u = L'^{-1} k_i for the new factor L', with k_i the column i of
// L L^T without its entry i. In the partition above, k_i = [L11 l21; L31 l21 + l32 l22]
// and L' = [L11 0; L31 L33'], so u = [l21; l22 L33'^{-1} l32], and L33'^{-1} l32 =
// M^{-1} L33^{-1} l32 = M^{-1} p has the entries p_j / sqrt(s_{j-1} s_j) = g_j (M y = p
// row by row: sum_{k<j} p_k^2 / (s_{k-1} s_k) telescopes to 1 - 1 / s_{j-1}). Both
// parts come out of the removal's own pass: row i before it moves, g from each column.
// Returns ((L L^T)^{-1})_ii = |L^{-1} e_i|^2 = (1 + |p|^2) / l22^2 = (sqrt(s) / l22)^2,
// L^{-1} e_i being [0; 1; -p] / l22.
double IncrementalCholesky::remove_impl(Index i, double* x, double* u) {
  check_remove_index(i);
  const Index n = n_;
  const Index m = n - 1 - i;  // size of the trailing block L33
  --n_;
  const Index ld = L_.rows();
  double* const a = L_.data();
  const double l22 = L_(i, i);
  if (u != nullptr) {
    for (Index c = 0; c < i; ++c) u[c] = a[c * ld + i];  // l21, before row i is overwritten
  }
  // The rows above i: the leading block is unchanged.
  if (x != nullptr) lower_solve(a, ld, dinv_.data(), i, x);

  // L31 moves up one row (row i of the first i columns is deleted); with a right-hand
  // side, its solved head is subtracted from the rows below in the same pass.
  for (Index c = 0; c < i; ++c) {
    double* col = a + c * ld;
    std::copy(col + i + 1, col + n, col + i);
    if (x != nullptr) {
      Eigen::Map<VectorXd>(x + i, m).noalias() -= x[c] * Eigen::Map<const VectorXd>(col + i, m);
    }
  }
  if (m == 0) return 1.0 / (l22 * l22);  // the last row/column: nothing below it to restore

  // w = l32, copied out: the updated columns overwrite column i.
  double* const w = work_.data();
  std::copy(a + i * ld + i + 1, a + i * ld + n, w);
  double* const dinv = dinv_.data();

  double s = 1.0;
  double root_s = 1.0;
  double inv_root_s = 1.0;
  double* const xt = x == nullptr ? nullptr : x + i;
  double* const ut = u == nullptr ? nullptr : u + i;
  RemoveBlock b{a, ld, i, 0, std::min(kCols, m), {}, {}, {}, xt, ut, l22};
  b.make(w, dinv, s, root_s, inv_root_s);
  while (true) {
    const Index next = b.t0 + b.ncols;
    if (next == m) break;
    const Index next_ncols = std::min(kCols, m - next);
    b.sweep(w, next, next + next_ncols);  // the next block's rows first ...
    RemoveBlock nb{a, ld, i, next, next_ncols, {}, {}, {}, xt, ut, l22};
    // ... so that its chain overlaps the rest of this sweep
    nb.make(w, dinv, s, root_s, inv_root_s);
    b.sweep(w, next + next_ncols, m);
    b = nb;
  }
  const double ratio = root_s / l22;
  return ratio * ratio;
}

CholeskyInfo IncrementalCholesky::rebuild(const Eigen::Ref<const MatrixXd>& K) {
  check_square_fits("K", K.rows(), K.cols(), capacity());
  const Index n = K.rows();
  n_ = 0;
  Eigen::Block<MatrixXd> A = L_.topLeftCorner(n, n);
  A.triangularView<Eigen::Lower>() = K;
  A.diagonal().array() += jitter_;
  double p2 = 0.0;
  const Index bad = factor_lower_in_place(A, p2);
  if (bad >= 0) {
    failed_index_ = bad;
    failed_pivot_ = p2;
    return CholeskyInfo::kNotPositiveDefinite;
  }
  dinv_.head(n) = A.diagonal().cwiseInverse();
  n_ = n;
  return CholeskyInfo::kSuccess;
}

void IncrementalCholesky::solve_lower_in_place(Eigen::Ref<VectorXd> b) const {
  check_vector_size("b", b.size(), n_);
  lower_solve(L_.data(), L_.rows(), dinv_.data(), n_, b.data());
}

void IncrementalCholesky::solve_upper_in_place(Eigen::Ref<VectorXd> b,
                                               Eigen::Ref<VectorXd> c) const {
  check_vector_size("b", b.size(), n_);
  check_vector_size("c", c.size(), n_);
  if constexpr (kPacket >= 8) {
    // 16 accumulators, 2 right-hand sides and a column packet: AVX-512's 32 registers.
    double* const xs[2] = {b.data(), c.data()};
    upper_solve_n<2>(L_.data(), L_.rows(), dinv_.data(), n_, xs);
  } else {
    // With 16 vector registers the pair spills: at n = 256 (SSE2) it took 13.2 us against
    // 6.4 us for one solve, so two passes are cheaper.
    upper_solve(L_.data(), L_.rows(), dinv_.data(), n_, b.data());
    upper_solve(L_.data(), L_.rows(), dinv_.data(), n_, c.data());
  }
}

void IncrementalCholesky::solve_upper_in_place(Eigen::Ref<VectorXd> b) const {
  check_vector_size("b", b.size(), n_);
  upper_solve(L_.data(), L_.rows(), dinv_.data(), n_, b.data());
}

void IncrementalCholesky::solve_in_place(Eigen::Ref<VectorXd> b) const {
  check_vector_size("b", b.size(), n_);
  lower_solve(L_.data(), L_.rows(), dinv_.data(), n_, b.data());
  upper_solve(L_.data(), L_.rows(), dinv_.data(), n_, b.data());
}

void IncrementalCholesky::solve_lower_trailing_in_place(Index from, Eigen::Ref<VectorXd> b) const {
  if (from < 0 || from > n_) {
    invalid("from must be in [0, size() = " + std::to_string(n_) + "], got " +
            std::to_string(from));
  }
  if (b.size() != n_ - from) {
    invalid("b.size() must equal size() - from = " + std::to_string(n_ - from) + ", got " +
            std::to_string(b.size()));
  }
  const Index ld = L_.rows();
  lower_solve(L_.data() + from * ld + from, ld, dinv_.data() + from, n_ - from, b.data());
}

double IncrementalCholesky::log_determinant() const {
  return 2.0 * L_.diagonal().head(n_).array().log().sum();
}

// E = L L^T - (K + jitter I). For column j, rows i >= j: (L L^T)_ij = L_(i, 0:j+1) l_(j, 0:j+1)^T,
// a gemv computed in stack chunks (const and allocation-free, so no shared scratch);
// E_ij and E_ji are both accumulated so that a non-symmetric K is measured as given.
double IncrementalCholesky::drift(const Eigen::Ref<const MatrixXd>& K) const {
  if (K.rows() != n_ || K.cols() != n_) {
    invalid("K must be size() x size() = " + std::to_string(n_) + " x " + std::to_string(n_) +
            ", got " + std::to_string(K.rows()) + " x " + std::to_string(K.cols()));
  }
  // Every difference and entry is scaled by the power of two p ~ 1 / max(|K_ij|, jitter)
  // before it is squared, so that neither squares of kernel values near 1e300 overflow nor
  // those near 1e-170 underflow; the scaling is exact, so at ordinary scales nothing
  // changes.
  if (n_ == 0) return 0.0;
  const double kmax = std::max(K.cwiseAbs().maxCoeff(), jitter_);
  if (kmax == 0.0) return 0.0;
  if (!std::isfinite(kmax)) return std::numeric_limits<double>::infinity();
  const double p = std::ldexp(1.0, -std::max(std::ilogb(kmax), -1000));
  const double jitter = jitter_ * p;
  // |K + jitter I|_F, scaled: the matrix L L^T approximates. (Relative to |K|_F alone, the
  // rounding of a factor whose jitter dwarfs K, e.g. kernel values of 1e-19 under jitter
  // 1e-6, read as a drift of 1e-3, and with K near 1e-200 as infinite.)
  double scale2 = 0.0;
  for (Index j = 0; j < n_; ++j) {
    for (Index i = 0; i < n_; ++i) {
      const double e = K(i, j) * p + (i == j ? jitter : 0.0);
      scale2 += e * e;
    }
  }
  const double scale = std::sqrt(scale2);
  // The lower triangle of D = K - L L^T, kFactorPanel columns and up to kChunk rows at a
  // time (panel_products, into a stack buffer); each entry (r, c), r > c, is checked
  // against both K(r, c) and K(c, r).
  constexpr Index kChunk = 128;
  double buf[kChunk * kFactorPanel];
  const double* l = L_.data();
  const Index ld = L_.rows();
  double err2 = 0.0;
  for (Index j0 = 0; j0 < n_; j0 += kFactorPanel) {
    const Index nc = std::min(kFactorPanel, n_ - j0);
    for (Index r0 = j0; r0 < n_; r0 += kChunk) {
      const Index rows = std::min(kChunk, n_ - r0);
      // buf(r - r0, c) = K(r, j0 + c) - (L L^T)(r, j0 + c)
      panel_products(l, ld, r0, r0 + rows, j0, nc, j0 + nc, K.data() + j0 * K.outerStride(),
                     K.outerStride(), buf, kChunk);
      for (Index c = 0; c < nc; ++c) {
        const Index j = j0 + c;
        for (Index r = std::max(r0, j); r < r0 + rows; ++r) {
          const double d = buf[c * kChunk + r - r0] * p;  // K(r, j) - LL^T(r, j), scaled
          if (r == j) {
            err2 += (d + jitter) * (d + jitter);
          } else {
            // K(j, r) - LL^T(r, j): d itself when K is symmetric there
            const double upper = K(j, r) == K(r, j) ? d : d + (K(j, r) - K(r, j)) * p;
            err2 += d * d + upper * upper;
          }
        }
      }
    }
  }
  return std::sqrt(err2) / scale;
}

}  // namespace ntk
