// Polynomial kernel (gamma x.y + coef0)^degree.
#include "detail/kernel_polynomial.h"

#include <cmath>
#include <stdexcept>

#include "detail/kernel_common.h"
#include "detail/row_loop.h"
#include "detail/simd.h"

namespace ntk::detail {

using Eigen::Index;

PolynomialKernel::PolynomialKernel(const KernelSpec& spec)
    : Kernel(spec), degree_(spec.degree), gamma_(spec.gamma), coef0_(spec.coef0) {
  spec.validate();
  if (spec.type != KernelType::kPolynomial) {
    throw std::invalid_argument("polynomial kernel: spec type is not polynomial");
  }
}

void PolynomialKernel::prepare(Eigen::Ref<const Eigen::VectorXd> x,
                               Eigen::Ref<Eigen::VectorXd> cache) const {
  cache(0) = std::pow(gamma_ * x.squaredNorm() + coef0_, degree_);
}

double PolynomialKernel::self(Eigen::Ref<const Eigen::VectorXd> /*x*/,
                              Eigen::Ref<const Eigen::VectorXd> cache) const {
  return cache(0);
}

void PolynomialKernel::row(const Eigen::Ref<const RowMatrixXd>& points,
                           const Eigen::Ref<const Eigen::MatrixXd>& caches,
                           Eigen::Ref<const Eigen::VectorXd> x,
                           Eigen::Ref<const Eigen::VectorXd> x_cache,
                           Eigen::Ref<Eigen::VectorXd> out,
                           Eigen::Ref<Eigen::MatrixXd> /*scratch*/) const {
  assert_row_shapes(*this, points, caches, x.size(), x_cache.size(), out.size());
  const Index m = points.rows();
  if (m == 0) return;
  dot_rows(points, x, out);
  const RowSource src{out.data(), caches.data(), caches.outerStride()};
  for_each_block(src, m, [&](const auto& blk) {
    using namespace simd;
    // base^degree by repeated squaring.
    Packet base = madd(set1(gamma_), blk.dot(), set1(coef0_));
    Packet result = set1(1.0);
    for (int e = degree_; e > 0; e >>= 1) {
      if (e & 1) result = mul(result, base);
      if (e > 1) base = mul(base, base);
    }
    blk.store(result);
  });
}

double PolynomialKernel::operator()(Eigen::Ref<const Eigen::VectorXd> x,
                                    Eigen::Ref<const Eigen::VectorXd> y) const {
  check_pair("polynomial", x.size(), y.size());
  return std::pow(gamma_ * x.dot(y) + coef0_, degree_);
}

}  // namespace ntk::detail
