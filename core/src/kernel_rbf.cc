// RBF kernel; see detail/kernel_rbf.h for the accuracy argument of the row path.
#include "detail/kernel_rbf.h"

#include <cmath>
#include <limits>
#include <stdexcept>

#include "detail/kernel_common.h"
#include "detail/row_loop.h"
#include "detail/simd.h"

namespace ntk::detail {

using Eigen::Index;

RbfKernel::RbfKernel(const KernelSpec& spec)
    : Kernel(spec),
      variance_(spec.variance),
      gamma_(1.0 / (2.0 * spec.lengthscale * spec.lengthscale)) {
  spec.validate();
  if (spec.type != KernelType::kRbf)
    throw std::invalid_argument("rbf kernel: spec type is not rbf");
}

void RbfKernel::prepare(Eigen::Ref<const Eigen::VectorXd> x,
                        Eigen::Ref<Eigen::VectorXd> cache) const {
  cache(0) = x.squaredNorm();
}

double RbfKernel::self(Eigen::Ref<const Eigen::VectorXd> /*x*/,
                       Eigen::Ref<const Eigen::VectorXd> /*cache*/) const {
  return variance_;
}

void RbfKernel::row(const Eigen::Ref<const RowMatrixXd>& points,
                    const Eigen::Ref<const Eigen::MatrixXd>& caches,
                    Eigen::Ref<const Eigen::VectorXd> x, Eigen::Ref<const Eigen::VectorXd> x_cache,
                    Eigen::Ref<Eigen::VectorXd> out,
                    Eigen::Ref<Eigen::MatrixXd> /*scratch*/) const {
  assert_row_shapes(*this, points, caches, x.size(), x_cache.size(), out.size());
  const Index m = points.rows();
  if (m == 0) return;
  dot_rows(points, x, out);

  const Index d = x.size();
  const double nx = x_cache(0);
  // Entries whose error bound k (d + 3) eps (n_i + n_x) gamma exceeds 5e-14 variance are
  // recomputed from the differences (also any NaN from overflowing norms). That bound is
  // k times delta, delta = gamma (d + 3) eps (n_i + n_x) the exponent's own uncertainty,
  // valid while delta is small; once delta > 0.5 the computed k may be off by any factor
  // (e.g. 0 for a duplicate of a point of norm 1e150, where r2 is all rounding), so
  // entries with n_i + n_x > 0.5 / (gamma (d + 3) eps) are always recomputed (norms above
  // ~1e7 lengthscale for d = 8: far outside standardized data).
  const double limit =
      5e-14 * variance_ /
      ((static_cast<double>(d) + 3.0) * std::numeric_limits<double>::epsilon() * gamma_);
  const double unsure_sum =
      0.5 / (gamma_ * (static_cast<double>(d) + 3.0) * std::numeric_limits<double>::epsilon());
  const RowSource src{out.data(), caches.data(), caches.outerStride()};
  const double* pts = points.data();
  const Index ld = points.outerStride();
  const double* xv = x.data();
  for_each_block(src, m, [&](const auto& blk) {
    using namespace simd;
    const Packet sum = add(blk.col(0), set1(nx));
    const Packet r2 = max(sub(sum, add(blk.dot(), blk.dot())), set1(0.0));
    Packet k = mul(set1(variance_), exp(mul(set1(-gamma_), r2)));
    const Packet need = mask_or(lt_or_nan(set1(limit), mul(k, sum)), lt(set1(unsure_sum), sum));
    if (any(need)) {
      const LaneFlags flags(need);
      double kb[kLanes];
      storeu(kb, k);
      for (int l = 0; l < kLanes; ++l) {
        if (!flags.set[l]) continue;
        const double* xi = pts + blk.point(l) * ld;
        double s = 0.0;
        for (Index j = 0; j < d; ++j) s += (xi[j] - xv[j]) * (xi[j] - xv[j]);
        kb[l] = variance_ * std::exp(-gamma_ * s);
      }
      k = loadu(kb);
    }
    blk.store(k);
  });
}

double RbfKernel::operator()(Eigen::Ref<const Eigen::VectorXd> x,
                             Eigen::Ref<const Eigen::VectorXd> y) const {
  check_pair("rbf", x.size(), y.size());
  double s = 0.0;
  for (Index j = 0; j < x.size(); ++j) s += (x(j) - y(j)) * (x(j) - y(j));
  return variance_ * std::exp(-gamma_ * s);
}

}  // namespace ntk::detail
