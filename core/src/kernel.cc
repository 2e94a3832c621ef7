// Kernel: the allocating convenience forms shared by every variant, and the factory.
#include "ntk/core/kernel.h"

#include <stdexcept>
#include <string>

#include "detail/kernel_linear.h"
#include "detail/kernel_ntk.h"
#include "detail/kernel_polynomial.h"
#include "detail/kernel_rbf.h"

namespace ntk {

using Eigen::Index;
using Eigen::MatrixXd;

double Kernel::operator()(Eigen::Ref<const Eigen::VectorXd> x) const { return (*this)(x, x); }

MatrixXd Kernel::gram(const Eigen::Ref<const RowMatrixXd>& X) const {
  const Index n = X.rows();
  MatrixXd K(n, n);
  for (Index j = 0; j < n; ++j) {
    for (Index i = j; i < n; ++i) {
      K(i, j) = (*this)(X.row(i).transpose(), X.row(j).transpose());
      K(j, i) = K(i, j);
    }
  }
  return K;
}

MatrixXd Kernel::cross(const Eigen::Ref<const RowMatrixXd>& X,
                       const Eigen::Ref<const RowMatrixXd>& Y) const {
  if (X.rows() > 0 && Y.rows() > 0 && X.cols() != Y.cols()) {
    throw std::invalid_argument("kernel cross: X has " + std::to_string(X.cols()) +
                                " columns but Y has " + std::to_string(Y.cols()));
  }
  MatrixXd K(X.rows(), Y.rows());
  for (Index j = 0; j < Y.rows(); ++j) {
    for (Index i = 0; i < X.rows(); ++i) {
      K(i, j) = (*this)(X.row(i).transpose(), Y.row(j).transpose());
    }
  }
  return K;
}

MatrixXd Kernel::prepare_all(const Eigen::Ref<const RowMatrixXd>& X) const {
  MatrixXd C(X.rows(), cache_size());
  Eigen::VectorXd c(cache_size());
  for (Index i = 0; i < X.rows(); ++i) {
    prepare(X.row(i).transpose(), c);
    C.row(i) = c.transpose();
  }
  return C;
}

std::shared_ptr<const Kernel> make_kernel(const KernelSpec& spec) {
  spec.validate();
  switch (spec.type) {
    case KernelType::kNtk:
      return std::make_shared<const detail::NtkKernel>(spec);
    case KernelType::kRbf:
      return std::make_shared<const detail::RbfKernel>(spec);
    case KernelType::kPolynomial:
      return std::make_shared<const detail::PolynomialKernel>(spec);
    case KernelType::kLinear:
      return std::make_shared<const detail::LinearKernel>(spec);
  }
  throw std::invalid_argument("kernel spec: unknown kernel type " +
                              std::to_string(static_cast<int>(spec.type)));
}

}  // namespace ntk
