// PolynomialKernel: (gamma x.y + coef0)^degree (internal; see kernel.h).
//
// Scalar path: the dot product then std::pow. Row path: the GEMV then the integer power
// by repeated squaring, vectorized.
//
// THREAD SAFETY: immutable after construction.
#pragma once

#include "ntk/core/kernel.h"

namespace ntk::detail {

class PolynomialKernel final : public Kernel {
 public:
  // requires: spec.type == kPolynomial and spec.validate() does not throw (checked).
  explicit PolynomialKernel(const KernelSpec& spec);

  // Cache: k(x, x).
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
  int degree_;
  double gamma_;
  double coef0_;
};

}  // namespace ntk::detail
