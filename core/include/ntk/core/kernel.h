// Kernels: NTK/NNGP of fully connected networks, RBF, polynomial, linear.
//
// DATA LAYOUT (the whole library): a set of points is a matrix with one point per ROW,
// M x d. Stored sets (dictionaries) are RowMatrixXd so that one point is contiguous.
// Per-point cached quantities (norms, the diagonal of the layer recursion) are stored
// column-wise, M x cache_size(), so that each cached quantity is contiguous over the
// points and the row evaluation is vectorized over the M points.
//
// WHAT THIS OBJECT REPRESENTS
//   A positive semi-definite function k(x, x') on R^d, built from a KernelSpec by
//   make_kernel(). NTK/NNGP conventions are exactly those of Google's neural-tangents
//   for stax.serial(Dense, Act, ..., Dense) (input kernel x.x'/d; see
//   tests/golden/README.md), evaluated with a cancellation-free formulation that keeps
//   the determinant of every 2x2 layer covariance without subtracting nearly equal
//   numbers, so values are accurate to ~1e-15 relative to sqrt(k(x,x) k(x',x'))
//   (GELU: 1e-11, degrading to ~2e-8 at norms ~1e150 for depth >= 2; see
//   core/src/detail/kernel_ntk.h).
//   No NaN ever leaves a kernel for finite inputs of norm at most 1e150 (zero vectors,
//   identical and antipodal points, subnormal to 1e150 norms included) while the values
//   themselves fit in a double: they overflow once w_std^2 |x|^2 / d (NTK kernels) or
//   |x|^2 (linear) passes ~1e308, i.e. beyond about 1e154 for w_std ~ 1, and the
//   polynomial kernel once (gamma |x|^2 + coef0)^degree does, from |x| ~ 1e51 at degree
//   3. Then inf or NaN may come out: callers that accept unbounded inputs must scale
//   them (standardized inputs are the intended use).
//
// THREAD SAFETY
//   Immutable after construction: all const methods may be called concurrently.
//   Scratch space for row() is owned by the caller.
#pragma once

#include <Eigen/Core>
#include <memory>

#include "ntk/core/abi.h"
#include "ntk/core/kernel_spec.h"

namespace ntk {

using RowMatrixXd = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

class Kernel {
 public:
  virtual ~Kernel() = default;

  const KernelSpec& spec() const { return spec_; }

  // Number of doubles cached per point (>= 1).
  virtual Eigen::Index cache_size() const = 0;
  // Number of scratch columns (each of at least M rows) row() needs for M points.
  virtual Eigen::Index scratch_cols() const = 0;

  // ensures: cache (size cache_size()) holds the per-point quantities of x.
  virtual void prepare(Eigen::Ref<const Eigen::VectorXd> x,
                       Eigen::Ref<Eigen::VectorXd> cache) const = 0;
  // ensures: returns k(x, x), given cache = prepare(x).
  virtual double self(Eigen::Ref<const Eigen::VectorXd> x,
                      Eigen::Ref<const Eigen::VectorXd> cache) const = 0;

  // Row evaluation against a stored set, the hot path.
  // requires: points is M x d; caches is M x cache_size() with caches.row(i) =
  //           prepare(points.row(i)); x_cache = prepare(x); out.size() == M;
  //           scratch.rows() >= M and scratch.cols() >= scratch_cols().
  // ensures:  out(i) = k(points.row(i), x). Allocates nothing.
  virtual void row(const Eigen::Ref<const RowMatrixXd>& points,
                   const Eigen::Ref<const Eigen::MatrixXd>& caches,
                   Eigen::Ref<const Eigen::VectorXd> x, Eigen::Ref<const Eigen::VectorXd> x_cache,
                   Eigen::Ref<Eigen::VectorXd> out, Eigen::Ref<Eigen::MatrixXd> scratch) const = 0;

  // Scalar evaluation of one pair through an independent (non-vectorized) code path.
  virtual double operator()(Eigen::Ref<const Eigen::VectorXd> x,
                            Eigen::Ref<const Eigen::VectorXd> y) const = 0;

  // Convenience (allocating) forms.
  double operator()(Eigen::Ref<const Eigen::VectorXd> x) const;        // k(x, x)
  Eigen::MatrixXd gram(const Eigen::Ref<const RowMatrixXd>& X) const;  // pairwise, symmetric
  Eigen::MatrixXd cross(const Eigen::Ref<const RowMatrixXd>& X,
                        const Eigen::Ref<const RowMatrixXd>& Y) const;  // X.rows() x Y.rows()
  // Caches of a whole set: M x cache_size().
  Eigen::MatrixXd prepare_all(const Eigen::Ref<const RowMatrixXd>& X) const;

 protected:
  explicit Kernel(KernelSpec spec) : spec_(std::move(spec)) {}

 private:
  KernelSpec spec_;
};

// The one factory. Validates spec (std::invalid_argument naming field and value).
std::shared_ptr<const Kernel> make_kernel(const KernelSpec& spec);
inline std::shared_ptr<const Kernel> make_kernel(std::string_view spec_text) {
  return make_kernel(KernelSpec::parse(spec_text));
}

}  // namespace ntk
