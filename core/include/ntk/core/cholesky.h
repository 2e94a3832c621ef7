// IncrementalCholesky: a Cholesky factor maintained under appends and removals.
//
// WHAT THIS OBJECT REPRESENTS
//   A lower-triangular L (size() x size()) with L L^T = K + jitter I for a symmetric
//   positive definite K whose rows/columns are appended and removed one at a time —
//   the Gram matrix K_D of a kernel dictionary. Storage is one capacity x capacity
//   buffer allocated at construction; no method allocates afterwards.
//   append(k, k_self)  O(n^2)        forward solve + new pivot
//   remove(i)          O((n-i)^2)    delete row/column i, restore the trailing block
//                                    with a rank-1 update (Givens rotations)
//   rebuild(K)         O(n^3)        full refactorization (periodic recomputation)
//
// CONVENTION (checked by tests after every operation)
//   0 <= size() <= capacity();  L is lower triangular with a strictly positive diagonal;
//   L L^T == K + jitter() I up to rounding, where K is the matrix of the appended rows.
//   A non-positive pivot is reported as a status and leaves the object unchanged.
//
// INITIAL VALUE: size() == 0.
// THREAD SAFETY: const methods may run concurrently; mutation needs exclusive access.
#pragma once

#include <Eigen/Core>

namespace ntk {

enum class CholeskyInfo {
  kSuccess = 0,
  kNotPositiveDefinite,  // a pivot was <= 0 (or not finite); nothing changed
  kFull,                 // append on size() == capacity(); nothing changed
};

class IncrementalCholesky {
 public:
  // requires: capacity >= 1, jitter >= 0 (std::invalid_argument otherwise).
  explicit IncrementalCholesky(Eigen::Index capacity, double jitter = 0.0);

  Eigen::Index size() const { return n_; }
  Eigen::Index capacity() const { return L_.rows(); }
  double jitter() const { return jitter_; }

  // Appends row/column n: k_row = K(n, 0:n) (size() entries), k_self = K(n, n).
  // ensures: on kSuccess #size() == size()+1 and the factor includes the new row;
  //          otherwise nothing changes. failed_pivot() holds the offending pivot^2
  //          (k_self + jitter - |v|^2) after kNotPositiveDefinite.
  CholeskyInfo append(Eigen::Ref<const Eigen::VectorXd> k_row, double k_self);

  // Same as append, but also returns v = L^{-1} k_row (size() entries) in v_out, which
  // callers that already need the solve (the GP model) reuse.
  CholeskyInfo append(Eigen::Ref<const Eigen::VectorXd> k_row, double k_self,
                      Eigen::Ref<Eigen::VectorXd> v_out);

  // Removes row/column i (0 <= i < size()). ensures: #size() == size()-1 and the
  // factor is that of K with row/column i deleted (later indices shift down by one).
  void remove(Eigen::Index i);

  // Full refactorization of K (n x n, n <= capacity) + jitter I.
  // ensures: kSuccess, or kNotPositiveDefinite and size() == 0 (failed_index() set).
  CholeskyInfo rebuild(const Eigen::Ref<const Eigen::MatrixXd>& K);

  void clear() { n_ = 0; }

  // The factor, a view into the buffer (size() x size()).
  Eigen::Block<const Eigen::MatrixXd> matrixL() const { return L_.topLeftCorner(n_, n_); }

  // In-place solves: b <- L^{-1} b, b <- L^{-T} b, b <- (L L^T)^{-1} b. b.size() == size().
  void solve_lower_in_place(Eigen::Ref<Eigen::VectorXd> b) const;
  void solve_upper_in_place(Eigen::Ref<Eigen::VectorXd> b) const;
  void solve_in_place(Eigen::Ref<Eigen::VectorXd> b) const;

  // log det(K + jitter I) = 2 sum log L_ii.
  double log_determinant() const;

  // |L L^T - (K + jitter I)|_F / |K|_F for the caller's current K (size() x size());
  // 0 when K is 0. O(n^3): for periodic checks, not per update.
  double drift(const Eigen::Ref<const Eigen::MatrixXd>& K) const;

  double failed_pivot() const { return failed_pivot_; }
  Eigen::Index failed_index() const { return failed_index_; }

 private:
  Eigen::MatrixXd L_;       // capacity x capacity; only the lower triangle of the
                            // leading n_ x n_ block is meaningful
  Eigen::Index n_ = 0;
  double jitter_ = 0.0;
  double failed_pivot_ = 0.0;
  Eigen::Index failed_index_ = -1;

  // Scratch, not state: never part of a snapshot.
  Eigen::VectorXd work_;    // capacity
};

}  // namespace ntk
