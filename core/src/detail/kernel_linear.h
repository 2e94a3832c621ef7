// LinearKernel: x.y (internal; see kernel.h). The row is the GEMV itself.
//
// THREAD SAFETY: immutable after construction.
#pragma once

#include "ntk/core/kernel.h"

namespace ntk::detail {

class LinearKernel final : public Kernel {
 public:
  // requires: spec.type == kLinear (checked).
  explicit LinearKernel(const KernelSpec& spec);

  // Cache: |x|^2 = k(x, x).
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
};

}  // namespace ntk::detail
