// IncrementalCholesky: a Cholesky factor maintained under appends and removals.
//
// WHAT THIS OBJECT REPRESENTS
//   A lower-triangular L (size() x size()) with L L^T = K + jitter I for a symmetric
//   positive definite K whose rows/columns are appended and removed one at a time —
//   the Gram matrix K_D of a kernel dictionary. Storage is one ld x capacity column-major
//   buffer (ld: capacity rounded up to a multiple of 8, +8 when that is a multiple of 64)
//   allocated at construction; no method allocates afterwards.
//   append(k, k_self)  O(n^2)        forward solve + new pivot
//   remove(i)          O((n-i)^2)    delete row/column i, restore the trailing block
//                                    with a rank-1 update (Gill-Golub-Murray-Saunders
//                                    method C1); O(i (n-i)) more to close the gap;
//                                    remove(i, u) also yields what the inverse's update
//                                    needs, remove_solve_lower(i, b[, u]) also solves
//   rebuild(K)         O(n^3)        full refactorization (periodic recomputation)
//   Reference: Golub & Van Loan, Matrix Computations (4th ed.), 6.5.4 (updating the
//   Cholesky factorization); Seeger, "Low rank updates for the Cholesky decomposition"
//   (2004) for the deletion of a row/column.
//
// CONVENTION (checked by tests after every operation)
//   0 <= size() <= capacity();  L is lower triangular with a strictly positive diagonal;
//   its strictly upper triangle is stored as exact zeros, so matrixL() can be used as a
//   plain matrix; L L^T == K + jitter() I up to rounding, where K is the matrix of the
//   appended rows. A non-positive pivot is reported as a status and leaves the object
//   unchanged.
//
// ERRORS
//   Violated preconditions (wrong sizes, index out of range, bad constructor arguments)
//   throw std::invalid_argument naming the offending value. Data-dependent numerical
//   outcomes (a non-positive or non-finite pivot, a full buffer) are CholeskyInfo values.
//
// INITIAL VALUE: size() == 0.
// THREAD SAFETY: const methods may run concurrently (they use no shared scratch);
//   mutation needs exclusive access.
#pragma once

#include <Eigen/Core>
#include <cstddef>

#include "ntk/core/abi.h"

namespace ntk {

enum class CholeskyInfo {
  kSuccess = 0,
  kNotPositiveDefinite,  // a pivot was <= 0 (or not finite); nothing changed
  kFull,                 // append on size() == capacity(); nothing changed
};

class IncrementalCholesky {
 public:
  // requires: capacity >= 1, jitter >= 0 and finite (std::invalid_argument otherwise).
  // ensures: size() == 0; the ld x capacity buffer is the only allocation.
  explicit IncrementalCholesky(Eigen::Index capacity, double jitter = 0.0);

  // Heap bytes an object of this capacity holds (the buffer and two vectors of capacity
  // doubles, all allocated by the constructor). requires: capacity >= 1.
  static std::size_t memory_bytes(Eigen::Index capacity);

  Eigen::Index size() const { return n_; }
  Eigen::Index capacity() const { return L_.cols(); }
  double jitter() const { return jitter_; }

  // Appends row/column n: k_row = K(n, 0:n) (size() entries), k_self = K(n, n).
  // requires: k_row.size() == size() (std::invalid_argument otherwise).
  // ensures: v = L^{-1} k_row, pivot^2 = k_self + jitter - |v|^2 and
  //          - kSuccess: #size() == size()+1, new row of L = [v^T, sqrt(pivot^2)];
  //          - kFull: size() == capacity(), nothing changed;
  //          - kNotPositiveDefinite: pivot^2 <= 0 or not finite (also for non-finite
  //            inputs); nothing changed except failed_pivot() == pivot^2 and
  //            failed_index() == size().
  CholeskyInfo append(Eigen::Ref<const Eigen::VectorXd> k_row, double k_self);

  // Same as append, but also returns v = L^{-1} k_row (size() entries) in v_out, which
  // callers that already need the solve (the GP model) reuse.
  // requires: v_out.size() == size() (v_out may alias k_row).
  // ensures: v_out == v after kSuccess and kNotPositiveDefinite; untouched after kFull.
  CholeskyInfo append(Eigen::Ref<const Eigen::VectorXd> k_row, double k_self,
                      Eigen::Ref<Eigen::VectorXd> v_out);

  // Same as append, with the forward solve already done by the caller:
  // requires v = L^{-1} k_row (size() entries). Saves the O(n^2) solve when the caller
  // needs v anyway (the GP model computes it to decide admission). O(n).
  CholeskyInfo append_solved(Eigen::Ref<const Eigen::VectorXd> v, double k_self);

  // Replaces the factor by L (n x n, n <= capacity; only the lower triangle is read),
  // e.g. restored from a snapshot.
  // requires: L square with L.rows() <= capacity() (std::invalid_argument otherwise).
  // ensures: kSuccess and matrixL() == the lower triangle of L; or kNotPositiveDefinite,
  //          nothing changed and failed_index() == the first row holding a diagonal entry
  //          that is not (finite and > 0) or a non-finite entry of the lower triangle.
  CholeskyInfo assign(const Eigen::Ref<const Eigen::MatrixXd>& L);

  // Removes row/column i.
  // requires: 0 <= i < size() (std::invalid_argument otherwise).
  // ensures: #size() == size()-1 and the factor is that of K with row/column i deleted
  //          (later indices shift down by one). Cannot fail: the trailing block gets a
  //          positive semi-definite rank-1 update, L33' L33'^T = L33 L33^T + l32 l32^T.
  void remove(Eigen::Index i);
  // remove(i), then b <- L^{-1} b with the new factor (b: size() entries after the
  // removal), the solve riding on the removal's pass over L. Same results as the two calls
  // up to rounding.
  void remove_solve_lower(Eigen::Index i, Eigen::Ref<Eigen::VectorXd> b);
  // remove(i), and u <- L'^{-1} k_i with L' the new factor and k_i column i of L L^T
  // (before the removal) without its entry i; returns Q_ii, Q = (L L^T)^{-1} before the
  // removal. That is what the block inverse needs to update Q for the removal: column i
  // of Q is Q_ii at entry i and -Q_ii L'^{-T} u at the others (Q_ii = 1 / ((L L^T)_ii -
  // u.u), here computed without that cancellation). u and Q_ii come from quantities the
  // removal's pass computes anyway: no solve. Q_ii is +inf where it overflows (a factor
  // whose pivots span more than ~300 decades, possible only through assign()).
  // requires: u.size() == size() - 1 (and b.size() == size() - 1), before the call;
  //           u and b do not overlap.
  double remove(Eigen::Index i, Eigen::Ref<Eigen::VectorXd> u);
  double remove_solve_lower(Eigen::Index i, Eigen::Ref<Eigen::VectorXd> b,
                            Eigen::Ref<Eigen::VectorXd> u);

  // Full refactorization of K (n x n, n <= capacity) + jitter I; only the lower triangle
  // of K is read.
  // requires: K square with K.rows() <= capacity() (std::invalid_argument otherwise).
  // ensures: kSuccess and #size() == n; or kNotPositiveDefinite, size() == 0,
  //          failed_index() == the row whose pivot failed, failed_pivot() == its pivot^2.
  CholeskyInfo rebuild(const Eigen::Ref<const Eigen::MatrixXd>& K);

  void clear() { n_ = 0; }

  // The factor, a view into the buffer (size() x size()); its strictly upper triangle
  // reads as zeros. Invalidated (contents, not the view's validity) by any mutation.
  Eigen::Block<const Eigen::MatrixXd> matrixL() const { return L_.topLeftCorner(n_, n_); }

  // In-place solves: b <- L^{-1} b, b <- L^{-T} b, b <- (L L^T)^{-1} b.
  // requires: b.size() == size() (std::invalid_argument otherwise). O(n^2).
  void solve_lower_in_place(Eigen::Ref<Eigen::VectorXd> b) const;
  void solve_upper_in_place(Eigen::Ref<Eigen::VectorXd> b) const;
  // b <- L^{-T} b and c <- L^{-T} c in one pass over L; b and c must not overlap.
  void solve_upper_in_place(Eigen::Ref<Eigen::VectorXd> b, Eigen::Ref<Eigen::VectorXd> c) const;
  void solve_in_place(Eigen::Ref<Eigen::VectorXd> b) const;
  // b <- L_tt^{-1} b with L_tt = the trailing block of L from row/column `from` on: the
  // forward solve for a right-hand side that is zero above `from`.
  // requires: 0 <= from <= size(), b.size() == size() - from (std::invalid_argument
  // otherwise). O((n - from)^2).
  void solve_lower_trailing_in_place(Eigen::Index from, Eigen::Ref<Eigen::VectorXd> b) const;

  // log det(K + jitter I) = 2 sum log L_ii (0 when size() == 0).
  double log_determinant() const;

  // |L L^T - (K + jitter I)|_F / |K + jitter I|_F for the caller's current K (size() x
  // size(), all of it is read); 0 when K == 0 and jitter == 0 (no scale to be relative to).
  // requires: K.rows() == K.cols() == size() (std::invalid_argument otherwise).
  // O(n^3): for periodic checks, not per update.
  double drift(const Eigen::Ref<const Eigen::MatrixXd>& K) const;

  double failed_pivot() const { return failed_pivot_; }
  Eigen::Index failed_index() const { return failed_index_; }

 private:
  CholeskyInfo append_pivot(Eigen::Ref<const Eigen::VectorXd> v, double k_self);
  // x: null, or the remove_solve_lower rhs; u: null, or remove()'s u.
  double remove_impl(Eigen::Index i, double* x, double* u);
  void check_remove_index(Eigen::Index i) const;

  Eigen::MatrixXd L_;  // ld x capacity, ld = capacity rounded up to a multiple of 8 (every
                       // column starts on a 64-byte line), +8 when that is a multiple of
                       // 64 (see cholesky.cc); the lower triangle of the leading
                       // n_ x n_ block is L; the strict upper triangle of the whole
                       // buffer is kept at exact zeros; the rest is stale
  Eigen::Index n_ = 0;
  double jitter_ = 0.0;
  double failed_pivot_ = 0.0;
  Eigen::Index failed_index_ = -1;

  Eigen::VectorXd dinv_;  // capacity; dinv_(k) == 1 / L_(k, k) for k < n_ (the solves
                          // multiply by it: no division on their dependency chain)

  // Scratch, not state: never part of a snapshot.
  Eigen::VectorXd work_;  // capacity
};

}  // namespace ntk
