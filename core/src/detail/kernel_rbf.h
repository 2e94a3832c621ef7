// RbfKernel: variance * exp(-|x - y|^2 / (2 lengthscale^2)) (internal; see kernel.h).
//
// Scalar path: |x - y|^2 from the explicit differences.
// Row path: |x_i|^2 + |x|^2 - 2 x_i.x from the cached squared norms and the GEMV, clamped
// at 0. Its absolute error is at most about (d + 3) eps (|x_i|^2 + |x|^2), so the kernel's
// is k (d + 3) eps (|x_i|^2 + |x|^2) / (2 lengthscale^2); wherever that bound exceeds
// 5e-14 variance (near-identical points far from the origin, relative to the
// lengthscale) the entry is recomputed from the differences, and so is every entry whose
// exponent is uncertain by more than 0.5, (d + 3) eps (|x_i|^2 + |x|^2) / (2 lengthscale^2)
// > 0.5, where the bound above no longer linearizes (e.g. a duplicate of a point of norm
// 1e150, whose computed |x - y|^2 is all rounding and whose computed k may be 0 instead
// of variance). Every entry of row() is thus within ~5e-14 variance of the exact value
// (plus exp's own rounding).
//
// THREAD SAFETY: immutable after construction.
#pragma once

#include "ntk/core/kernel.h"

namespace ntk::detail {

class RbfKernel final : public Kernel {
 public:
  // requires: spec.type == kRbf and spec.validate() does not throw (checked).
  explicit RbfKernel(const KernelSpec& spec);

  // Cache: |x|^2.
  Eigen::Index cache_size() const override { return 1; }
  Eigen::Index scratch_cols() const override { return 0; }
  void prepare(Eigen::Ref<const Eigen::VectorXd> x,
               Eigen::Ref<Eigen::VectorXd> cache) const override;
  double self(Eigen::Ref<const Eigen::VectorXd> x,
              Eigen::Ref<const Eigen::VectorXd> cache) const override;
  void row(const Eigen::Ref<const RowMatrixXd>& points,
           const Eigen::Ref<const Eigen::MatrixXd>& caches, Eigen::Ref<const Eigen::VectorXd> x,
           Eigen::Ref<const Eigen::VectorXd> x_cache, Eigen::Ref<Eigen::VectorXd> out,
           Eigen::Ref<Eigen::MatrixXd> scratch) const override;
  using Kernel::operator();
  double operator()(Eigen::Ref<const Eigen::VectorXd> x,
                    Eigen::Ref<const Eigen::VectorXd> y) const override;

 private:
  double variance_;
  double gamma_;  // 1 / (2 lengthscale^2)
};

}  // namespace ntk::detail
