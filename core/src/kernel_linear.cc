// Linear kernel x.y: the row is the GEMV.
#include "detail/kernel_linear.h"

#include <stdexcept>

#include "detail/kernel_common.h"

namespace ntk::detail {

LinearKernel::LinearKernel(const KernelSpec& spec) : Kernel(spec) {
  spec.validate();
  if (spec.type != KernelType::kLinear) {
    throw std::invalid_argument("linear kernel: spec type is not linear");
  }
}

void LinearKernel::prepare(Eigen::Ref<const Eigen::VectorXd> x,
                           Eigen::Ref<Eigen::VectorXd> cache) const {
  cache(0) = x.squaredNorm();
}

double LinearKernel::self(Eigen::Ref<const Eigen::VectorXd> /*x*/,
                          Eigen::Ref<const Eigen::VectorXd> cache) const {
  return cache(0);
}

void LinearKernel::row(const Eigen::Ref<const RowMatrixXd>& points,
                       const Eigen::Ref<const Eigen::MatrixXd>& caches,
                       Eigen::Ref<const Eigen::VectorXd> x,
                       Eigen::Ref<const Eigen::VectorXd> x_cache, Eigen::Ref<Eigen::VectorXd> out,
                       Eigen::Ref<Eigen::MatrixXd> /*scratch*/) const {
  assert_row_shapes(*this, points, caches, x.size(), x_cache.size(), out.size());
  if (points.rows() == 0) return;
  dot_rows(points, x, out);
}

double LinearKernel::operator()(Eigen::Ref<const Eigen::VectorXd> x,
                                Eigen::Ref<const Eigen::VectorXd> y) const {
  check_pair("linear", x.size(), y.size());
  return x.dot(y);
}

}  // namespace ntk::detail
