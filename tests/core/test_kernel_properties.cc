// Properties of every kernel type (NTK and NNGP x relu/erf/gelu x ntk/standard
// parameterization x depth 0..3 x b_std none/0/value, plus deeper and degenerate
// networks; rbf; polynomial; linear), through both code paths (the scalar operator(),
// used by gram() and cross(), and prepare() + row()):
//   - agreement with an independent oracle: the textbook formulas (neural-tangents'
//     recursion as tests/golden/README.md writes it, the closed forms of rbf, polynomial
//     and linear) evaluated in 113-bit floating point (Boost.Multiprecision), where their
//     cancellations cost nothing at the tolerance used (the input layer's determinant is
//     formed exactly); errors relative to the diagonal scale sqrt(K_ii K_jj), 1e-12
//     (GELU 1e-10; 5e-8 for GELU of depth >= 2 at norms ~1e150, see
//     tolerance_at_huge_norms);
//   - symmetry, positive semi-definiteness of Gram matrices (smallest eigenvalue >=
//     -1e-10 trace), Cauchy-Schwarz, row() against gram(), cross() against row();
//   - on random points and adversarial sets: the zero vector, identical, near-identical,
//     antipodal and near-antipodal points, huge (1e150) and tiny (1e-150) norms, and
//     norms from subnormal to 1e150 where no NaN may appear;
//   - exact relations: depth 0 is the linear kernel, relu depth 1 the arc-cosine kernel
//     of Cho & Saul, bias-free relu kernels are homogeneous of degree 2, bias-free erf
//     kernels are odd; closed forms of rbf, polynomial and linear;
//   - row(): any M (packet tails, chunk boundaries), strided inputs, writes exactly M
//     values, allocates nothing (counting global operator new and, on glibc and under
//     ASan, malloc/calloc/realloc, so that Eigen temporaries would be caught);
//   - simd::atan_ratio and simd::atan_unit_ratio against atan2 (the transcendentals the
//     row path adds);
//   - rbf row(): duplicates of points of norm 1e150, where the row path's |x - y|^2 is all
//     rounding, still give the variance.
#include <doctest/doctest.h>

#include <Eigen/Eigenvalues>
#include <algorithm>
#include <atomic>
#include <bit>
#include <boost/math/constants/constants.hpp>
#include <boost/multiprecision/cpp_bin_float.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <map>
#include <new>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "detail/kernel_common.h"
#include "detail/row_loop.h"
#include "detail/simd.h"
#include "ntk/core/kernel.h"
#include "support/alloc_count.h"

namespace {
const void* volatile g_sink = nullptr;  // where the sanity check's pointers escape
}  // namespace

namespace {

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using ntk::Activation;
using ntk::KernelOutput;
using ntk::KernelSpec;
using ntk::KernelType;
using ntk::Parameterization;
using ntk::RowMatrixXd;

// ---------------------------------------------------------------------------------------
// The specs under test.

std::vector<std::string> ntk_grid() {
  std::vector<std::string> specs;
  for (const char* act : {"relu", "erf", "gelu"}) {
    for (const char* out : {"ntk", "nngp"}) {
      for (const char* param : {"ntk", "standard"}) {
        for (int depth = 0; depth <= 3; ++depth) {
          // b_std=0 (a bias with zero variance) differs from none only in the standard
          // parameterization's NTK.
          std::vector<const char*> biases = {"none", "0.3"};
          if (std::string(param) == "standard") biases.push_back("0");
          for (const char* b : biases) {
            std::ostringstream s;
            s << "ntk:activation=" << act << ",depth=" << depth << ",w_std=1.3,b_std=" << b
              << ",parameterization=" << param;
            if (std::string(param) == "standard") s << ",width=50";
            s << ",output=" << out;
            specs.push_back(s.str());
          }
        }
      }
    }
  }
  return specs;
}

std::vector<std::string> all_specs() {
  std::vector<std::string> specs = ntk_grid();
  for (const char* extra : {
           // deeper networks, other weight scales
           "ntk:activation=relu,depth=12,w_std=1.4142135623730951,b_std=none",
           "ntk:activation=relu,depth=7,w_std=1.5,b_std=0.1,parameterization=standard,width=512",
           "ntk:activation=erf,depth=6,w_std=2.5,b_std=0.05",
           "ntk:activation=gelu,depth=5,w_std=0.7,b_std=1,output=nngp",
           "ntk:activation=gelu,depth=4,w_std=1.6,b_std=none,parameterization=standard,width=8",
           // degenerate weights: the kernel is a constant, or zero
           "ntk:activation=relu,depth=2,w_std=0,b_std=0.5",
           "ntk:activation=erf,depth=1,w_std=0,b_std=none,output=nngp",
           // the classical kernels
           "rbf:lengthscale=0.5,variance=1",
           "rbf:lengthscale=3,variance=2.5",
           "rbf:lengthscale=0.001,variance=1",
           "polynomial:degree=3,gamma=1,coef0=1",
           "polynomial:degree=1,gamma=0.5,coef0=0",
           "polynomial:degree=6,gamma=0.2,coef0=0.5",
           "linear",
       }) {
    specs.emplace_back(extra);
  }
  return specs;
}

// Agreement with the oracle and between the paths, relative to the diagonal scale.
double tolerance(const KernelSpec& s) {
  return s.type == KernelType::kNtk && s.activation == Activation::kGelu ? 1e-10 : 1e-12;
}

// The same on point sets with norms near 1e150. GELU past its first hidden layer is the
// exception: both paths form the determinant of the post-activation covariance by
// subtraction, and its error eps q^2 outweighs the 1 + q11 + q22 it is added to in the
// next layer's Delta^2 once q >~ 1e6; the error grows like eps sqrt(q) up to ~sqrt(eps)
// (measured 1.7e-8 at norm 1e150, 1.5e-11 at norm 1e6 in tests/golden/README.md).
double tolerance_at_huge_norms(const KernelSpec& s) {
  const bool deep_gelu =
      s.type == KernelType::kNtk && s.activation == Activation::kGelu && s.depth >= 2;
  return deep_gelu ? 5e-8 : tolerance(s);
}

// ---------------------------------------------------------------------------------------
// The oracle: the textbook formulas in 113-bit floating point.

using Q = boost::multiprecision::cpp_bin_float_quad;

const Q& qpi() {
  static const Q pi = boost::math::constants::pi<Q>();
  return pi;
}

Q qdot(const VectorXd& x, const VectorXd& y) {
  Q s = 0;
  for (Index i = 0; i < x.size(); ++i) s += Q(x(i)) * Q(y(i));  // products exact
  return s;
}

struct QMoments {
  Q s11, s22, s12, sdot;  // E[phi(u)^2], E[phi(v)^2], E[phi(u) phi(v)], E[phi'(u) phi'(v)]
};

// The moments take the pair's det = q11 q22 - q12^2 as well: at the input layer it is
// formed exactly (below), since near-parallel pairs at large norms with a bias have det
// far below q11 q22 and the erf kernels depend on it there.

// ReLU: Cho & Saul's arc-cosine kernels of degrees 1 and 0; NT's convention theta = pi/2
// for a zero-variance input.
QMoments relu_moments(const Q& q11, const Q& q22, const Q& q12, const Q& det) {
  const Q& pi = qpi();
  Q t = pi / 2;
  if (q11 != 0 && q22 != 0) t = atan2(sqrt(det), q12);
  return {q11 / 2, q22 / 2, sqrt(q11 * q22) * (sin(t) + (pi - t) * cos(t)) / (2 * pi),
          (pi - t) / (2 * pi)};
}

// erf: Williams' arcsine kernel; (1+2q11)(1+2q22) - 4q12^2 = 1 + 2q11 + 2q22 + 4 det.
QMoments erf_moments(const Q& q11, const Q& q22, const Q& q12, const Q& det) {
  const Q& pi = qpi();
  const Q D = 1 + 2 * q11 + 2 * q22 + 4 * det;
  return {2 / pi * asin(2 * q11 / (1 + 2 * q11)), 2 / pi * asin(2 * q22 / (1 + 2 * q22)),
          2 / pi * atan2(2 * q12, sqrt(D)), 4 / (pi * sqrt(D))};
}

// GELU x Phi(x): Tsuchida et al.'s formulas as tests/golden/README.md writes them, with
// Delta^2 = (1 + q11)(1 + q22) - q12^2 = 1 + q11 + q22 + det.
void gelu_pair(const Q& q11, const Q& q22, const Q& q12, const Q& det, Q* s12, Q* sdot) {
  const Q& pi = qpi();
  const Q P = q11 * q22;
  const Q Pp = (1 + q11) * (1 + q22);
  const Q delta2 = 1 + q11 + q22 + det;
  const Q delta = sqrt(delta2);
  const Q alpha = atan2(q12, delta);
  *s12 = q12 / 4 + ((q12 * q12 + P * delta2) / (Pp * delta) + q12 * alpha) / (2 * pi);
  *sdot =
      Q(1) / 4 + alpha / (2 * pi) + q12 / (2 * pi * delta) * (1 / delta2 + (2 + q11 + q22) / Pp);
}
QMoments gelu_moments(const Q& q11, const Q& q22, const Q& q12, const Q& det) {
  QMoments m;
  Q unused;
  gelu_pair(q11, q22, q12, det, &m.s12, &m.sdot);
  gelu_pair(q11, q11, q11, 0, &m.s11, &unused);
  gelu_pair(q22, q22, q22, 0, &m.s22, &unused);
  return m;
}

// NTK / NNGP of stax.serial(Dense, Act, ..., Dense), tests/golden/README.md's recursion.
Q ntk_oracle(const KernelSpec& s, const VectorXd& x, const VectorXd& y) {
  const Q w2 = Q(s.w_std) * Q(s.w_std);
  const Q b2 = s.b_std ? Q(*s.b_std) * Q(*s.b_std) : Q(0);
  const Q bias = s.b_std ? 1 : 0;  // [bias] of the standard NTK
  const Index n = x.size();
  const Q d = static_cast<double>(n);
  const bool standard = s.parameterization == Parameterization::kStandard;
  const Q a = w2 / d;
  Q q11 = a * qdot(x, x) + b2;
  Q q22 = a * qdot(y, y) + b2;
  Q q12 = a * qdot(x, y) + b2;
  // det_1 = a^2 (|x|^2 |y|^2 - (x.y)^2) + a b^2 |x - y|^2, the first term by Lagrange's
  // identity: sums of squares, exact to the working precision.
  Q lagrange = 0;
  Q dist2 = 0;
  for (Index i = 0; i < n; ++i) {
    for (Index j = i + 1; j < n; ++j) {
      const Q t = Q(x(i)) * Q(y(j)) - Q(x(j)) * Q(y(i));
      lagrange += t * t;
    }
    dist2 += (Q(x(i)) - Q(y(i))) * (Q(x(i)) - Q(y(i)));
  }
  Q det = a * a * lagrange + a * b2 * dist2;
  Q theta = standard ? qdot(x, y) + bias : q12;
  for (int l = 0; l < s.depth; ++l) {
    QMoments m;
    switch (s.activation) {
      case Activation::kRelu:
        m = relu_moments(q11, q22, q12, det);
        break;
      case Activation::kErf:
        m = erf_moments(q11, q22, q12, det);
        break;
      case Activation::kGelu:
        m = gelu_moments(q11, q22, q12, det);
        break;
    }
    q11 = w2 * m.s11 + b2;
    q22 = w2 * m.s22 + b2;
    q12 = w2 * m.s12 + b2;
    // Past the first layer the naive det is accurate enough: relu uses it only through
    // the angle, erf's post-activation covariances are bounded, and where GELU's are
    // large the det's error enters terms of relative size 1/sqrt(q).
    det = std::max(Q(0), q11 * q22 - q12 * q12);
    theta = standard ? Q(*s.width) * m.s12 + w2 * m.sdot * theta + bias : q12 + w2 * m.sdot * theta;
  }
  return s.output == KernelOutput::kNngp ? q12 : theta;
}

double oracle(const KernelSpec& s, const VectorXd& x, const VectorXd& y) {
  switch (s.type) {
    case KernelType::kNtk:
      return static_cast<double>(ntk_oracle(s, x, y));
    case KernelType::kRbf: {
      Q r2 = 0;
      for (Index i = 0; i < x.size(); ++i) r2 += (Q(x(i)) - Q(y(i))) * (Q(x(i)) - Q(y(i)));
      return static_cast<double>(Q(s.variance) *
                                 exp(-r2 / (2 * Q(s.lengthscale) * Q(s.lengthscale))));
    }
    case KernelType::kPolynomial: {
      const Q base = Q(s.gamma) * qdot(x, y) + Q(s.coef0);
      Q p = 1;
      for (int i = 0; i < s.degree; ++i) p *= base;
      return static_cast<double>(p);
    }
    case KernelType::kLinear:
      return static_cast<double>(qdot(x, y));
  }
  return std::numeric_limits<double>::quiet_NaN();
}

MatrixXd oracle_matrix(const KernelSpec& s, const RowMatrixXd& X) {
  MatrixXd O(X.rows(), X.rows());
  for (Index j = 0; j < X.rows(); ++j) {
    for (Index i = j; i < X.rows(); ++i) {
      O(i, j) = oracle(s, X.row(i).transpose(), X.row(j).transpose());
      O(j, i) = O(i, j);
    }
  }
  return O;
}

// ---------------------------------------------------------------------------------------
// Point sets (one point per row).

constexpr Index kDim = 5;

VectorXd gaussian_vector(Index d, std::mt19937_64& rng) {
  std::normal_distribution<double> g;
  VectorXd v(d);
  for (Index i = 0; i < d; ++i) v(i) = g(rng);
  return v;
}

RowMatrixXd gaussian_points(Index n, Index d, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  RowMatrixXd X(n, d);
  for (Index i = 0; i < n; ++i) X.row(i) = gaussian_vector(d, rng).transpose();
  return X;
}

RowMatrixXd stack(const std::vector<VectorXd>& rows) {
  RowMatrixXd X(static_cast<Index>(rows.size()), rows.front().size());
  for (std::size_t i = 0; i < rows.size(); ++i) X.row(static_cast<Index>(i)) = rows[i].transpose();
  return X;
}

// Unit-scale points that stress the formulas: zero, duplicates, near-duplicates,
// antipodal and near-antipodal pairs, collinear points of different norms, tiny angles,
// mixed magnitudes. `with_small` adds a point of norm ~1e-6 (left out where the set is
// scaled down to 1e-150, whose kernel values would leave the normal range).
RowMatrixXd adversarial_points(bool with_small = true) {
  std::mt19937_64 rng(7);
  const VectorXd a = gaussian_vector(kDim, rng);
  const VectorXd r1 = gaussian_vector(kDim, rng);
  const VectorXd r2 = gaussian_vector(kDim, rng);
  const VectorXd b = gaussian_vector(kDim, rng);
  VectorXd c = gaussian_vector(kDim, rng);
  // c orthogonal to b with the same norm, so that cos(phi) b + sin(phi) c is b turned by
  // the angle phi.
  c -= c.dot(b) / b.squaredNorm() * b;
  c *= b.norm() / c.norm();
  std::vector<VectorXd> rows;
  rows.push_back(VectorXd::Zero(kDim));
  rows.push_back(a);
  rows.push_back(a);  // duplicate
  rows.push_back(-a);
  rows.push_back(a + 1e-9 * r1);
  VectorXd a1 = a;
  a1(0) = std::nextafter(a1(0), 10.0);  // one ulp away
  rows.push_back(a1);
  rows.push_back(2.5 * a);
  rows.push_back(-0.5 * a + 1e-12 * r2);
  rows.push_back(VectorXd::Unit(kDim, 0));
  rows.push_back(-VectorXd::Unit(kDim, 0));
  rows.push_back(VectorXd::Unit(kDim, 1));
  rows.push_back(b);
  rows.push_back(std::cos(1e-7) * b + std::sin(1e-7) * c);
  VectorXd mixed(kDim);
  mixed << 3e2, -1e-3, 4e-7, 0.0, 1.0;
  rows.push_back(mixed);
  if (with_small) rows.push_back(1e-6 * c);
  return stack(rows);
}

// Points of norms 1e150, 1, 1e-150 and 0 together.
RowMatrixXd mixed_scale_points() {
  std::mt19937_64 rng(11);
  const VectorXd u = gaussian_vector(kDim, rng);
  const VectorXd v = gaussian_vector(kDim, rng);
  return stack(
      {VectorXd::Zero(kDim), 1e150 * u, 1e-150 * v, u, -1e150 * u, 1e-150 * u, v + 1e-10 * u});
}

struct PointSet {
  std::string name;
  RowMatrixXd X;
  bool huge = false;  // norms near 1e150
};

std::vector<PointSet> point_sets(const KernelSpec& spec) {
  std::vector<PointSet> sets;
  sets.push_back({"gaussian", gaussian_points(10, kDim, 3), false});
  sets.push_back({"adversarial", adversarial_points(), false});
  // (gamma x.y + coef0)^degree overflows at norm 1e150; it is checked for NaN only there.
  if (spec.type != KernelType::kPolynomial) {
    sets.push_back({"huge (x 1e150)", 1e150 * adversarial_points(), true});
    sets.push_back({"mixed scales", mixed_scale_points(), true});
  }
  sets.push_back({"tiny (x 1e-150)", 1e-150 * adversarial_points(false), false});
  return sets;
}

// ---------------------------------------------------------------------------------------
// Both code paths as matrices.

struct RowBuffers {
  MatrixXd caches;
  VectorXd x_cache;
  VectorXd out;
  MatrixXd scratch;
  RowBuffers(const ntk::Kernel& k, const RowMatrixXd& X)
      : caches(k.prepare_all(X)),
        x_cache(k.cache_size()),
        out(X.rows()),
        scratch(X.rows(), k.scratch_cols()) {}
};

// R(i, j) = k(X_i, Y_j) through row(): the stored set is X, the queries are Y's rows.
MatrixXd row_matrix(const ntk::Kernel& k, const RowMatrixXd& X, const RowMatrixXd& Y) {
  RowBuffers b(k, X);
  MatrixXd R(X.rows(), Y.rows());
  for (Index j = 0; j < Y.rows(); ++j) {
    k.prepare(Y.row(j).transpose(), b.x_cache);
    k.row(X, b.caches, Y.row(j).transpose(), b.x_cache, b.out, b.scratch);
    R.col(j) = b.out;
  }
  return R;
}

// max over entries of |A - B| / scale_ij, scale_ij = sqrt(S_ii S_jj) of the reference S
// (absolute where the scale is 0); also where it happens.
struct ScaledError {
  double value = 0.0;
  Index i = 0, j = 0;
};
ScaledError scaled_error(const MatrixXd& A, const MatrixXd& B, const VectorXd& diag_rows,
                         const VectorXd& diag_cols) {
  ScaledError e;
  for (Index j = 0; j < A.cols(); ++j) {
    for (Index i = 0; i < A.rows(); ++i) {
      const double scale = std::sqrt(diag_rows(i)) * std::sqrt(diag_cols(j));
      const double diff = std::abs(A(i, j) - B(i, j));
      const double err = scale > 0.0 ? diff / scale : diff;
      if (!(err <= e.value)) e = {err, i, j};  // NaN counts as the worst
    }
  }
  return e;
}

bool all_finite(const MatrixXd& A) { return A.allFinite(); }

double min_eigenvalue(const MatrixXd& G) {
  Eigen::SelfAdjointEigenSolver<MatrixXd> es(G, Eigen::EigenvaluesOnly);
  REQUIRE(es.info() == Eigen::Success);
  return es.eigenvalues().minCoeff();
}

}  // namespace

TEST_CASE("every kernel on every point set: oracle, symmetry, PSD, row() = gram() = cross()") {
  std::map<std::string, double> worst;  // per kernel family and path, for the record
  for (const std::string& text : all_specs()) {
    const KernelSpec spec = KernelSpec::parse(text);
    const auto kernel = ntk::make_kernel(spec);
    const ntk::Kernel& k = *kernel;
    for (const PointSet& set : point_sets(spec)) {
      CAPTURE(text);
      CAPTURE(set.name);
      const double tol = set.huge ? tolerance_at_huge_norms(spec) : tolerance(spec);
      const RowMatrixXd& X = set.X;
      const MatrixXd O = oracle_matrix(spec, X);
      const VectorXd od = O.diagonal();
      REQUIRE(all_finite(O));
      REQUIRE((od.array() >= 0.0).all());

      // The scalar path (gram) and the row path, both against the oracle.
      const MatrixXd G = k.gram(X);
      const MatrixXd R = row_matrix(k, X, X);
      REQUIRE(all_finite(G));
      REQUIRE(all_finite(R));
      const ScaledError eg = scaled_error(G, O, od, od);
      const ScaledError er = scaled_error(R, O, od, od);
      CAPTURE(eg.i);
      CAPTURE(eg.j);
      CHECK(eg.value <= tol);
      CAPTURE(er.i);
      CAPTURE(er.j);
      CHECK(er.value <= tol);
      // Appended piece by piece: GCC 12 at -O3 warns (-Wrestrict, a false positive, GCC
      // bug 105329) on " " + std::string(...).
      std::string family(ntk::to_string(spec.type));
      if (spec.type == KernelType::kNtk) family.append(" ").append(ntk::to_string(spec.activation));
      if (set.huge) family += " (norms ~1e150)";
      worst[family + " scalar"] = std::max(worst[family + " scalar"], eg.value);
      worst[family + " row   "] = std::max(worst[family + " row   "], er.value);

      // row() against gram(), entry by entry; self() and k(x) are the diagonal.
      CHECK(scaled_error(R, G, od, od).value <= tol);
      const MatrixXd C = k.prepare_all(X);
      for (Index i = 0; i < X.rows(); ++i) {
        const VectorXd xi = X.row(i).transpose();
        CHECK(k(xi) == G(i, i));
        const VectorXd ci = C.row(i).transpose();
        const double self = k.self(xi, ci);
        CHECK(std::abs(self - O(i, i)) <= tol * O(i, i));
      }

      // Symmetry of each path: k(x, y) = k(y, x). gram() fills one triangle, so the
      // scalar path's symmetry is checked on the full matrix of operator() calls.
      MatrixXd S(X.rows(), X.rows());
      for (Index i = 0; i < X.rows(); ++i) {
        for (Index j = 0; j < X.rows(); ++j)
          S(i, j) = k(X.row(i).transpose(), X.row(j).transpose());
      }
      const double tol_sym = std::max(1e-13, tol);
      CHECK(scaled_error(S, S.transpose(), od, od).value <= tol_sym);
      CHECK(scaled_error(R, R.transpose(), od, od).value <= tol_sym);
      CHECK(G == G.transpose());

      // Cauchy-Schwarz and positive semi-definiteness.
      for (Index i = 0; i < X.rows(); ++i) {
        for (Index j = 0; j < X.rows(); ++j) {
          CHECK(std::abs(G(i, j)) <= std::sqrt(G(i, i)) * std::sqrt(G(j, j)) * (1 + tol));
        }
      }
      const double trace = G.trace();
      CHECK(trace >= 0.0);
      // Scaled by the largest diagonal entry so that values near the ends of the double
      // range keep their eigenvalues in range; the criterion is scale invariant.
      const double top = G.diagonal().maxCoeff();
      if (top > 0.0) {
        const MatrixXd Gs = G / top;
        CHECK(min_eigenvalue(Gs) >= -1e-10 * Gs.trace());
      } else {
        CHECK(G.cwiseAbs().maxCoeff() == 0.0);
      }

      // cross(): against the row path with the roles swapped (itself checked against the
      // oracle above), against gram(), shapes.
      const RowMatrixXd Y = gaussian_points(4, kDim, 99) * X.row(1).norm();
      const MatrixXd XY = k.cross(X, Y);
      REQUIRE(XY.rows() == X.rows());
      REQUIRE(XY.cols() == Y.rows());
      const MatrixXd YX_row = row_matrix(k, Y, X);  // (j, i) = k(Y_j, X_i)
      VectorXd yd(Y.rows());
      for (Index j = 0; j < Y.rows(); ++j)
        yd(j) = oracle(spec, Y.row(j).transpose(), Y.row(j).transpose());
      CHECK(scaled_error(XY, YX_row.transpose(), od, yd).value <= tol);
      CHECK(scaled_error(k.cross(X, X), G, od, od).value <= 1e-14);
    }
  }
  for (const auto& [family, err] : worst)
    MESSAGE("max scaled error vs oracle, " << family << ": " << err);
}

TEST_CASE("erf and gelu row(): small angles (1 - c^2 ~ 1e-4 .. 1e-2) at large norms") {
  // Pairs at angles 0.01 .. 0.12 rad: 1 - c^2 is above the relu path's recomputation floor
  // but, divided by the tiny D~ or Delta~^2 of large norms, not accurate enough from the
  // GEMV for erf and gelu. Oracle: the 113-bit recursion.
  std::mt19937_64 rng(23);
  std::vector<VectorXd> rows;
  for (int base = 0; base < 4; ++base) {
    const VectorXd b = gaussian_vector(kDim, rng);
    VectorXd c = gaussian_vector(kDim, rng);
    c -= c.dot(b) / b.squaredNorm() * b;
    c *= b.norm() / c.norm();
    for (const double phi : {0.0, 0.0078, 0.008, 0.0085, 0.009, 0.01, 0.012, 0.02, 0.05, 0.12}) {
      rows.push_back(std::cos(phi) * b + std::sin(phi) * c);
    }
  }
  for (const double norm : {1e2, 1e4, 1e6, 1e8, 1e150}) {
    CAPTURE(norm);
    const RowMatrixXd X = norm * stack(rows);
    for (const char* text : {"ntk:activation=erf,depth=2,w_std=1.3,b_std=0.3",
                             "ntk:activation=erf,depth=1,w_std=1.3,b_std=none",
                             "ntk:activation=erf,depth=3,w_std=2.5,b_std=none,output=nngp",
                             "ntk:activation=gelu,depth=1,w_std=1.3,b_std=0.3"}) {
      CAPTURE(text);
      const KernelSpec spec = KernelSpec::parse(text);
      const auto k = ntk::make_kernel(spec);
      const MatrixXd O = oracle_matrix(spec, X);
      const VectorXd od = O.diagonal();
      CHECK(scaled_error(row_matrix(*k, X, X), O, od, od).value <= tolerance_at_huge_norms(spec));
    }
  }
}

TEST_CASE("no NaN anywhere: the zero vector, subnormal to 1e150 norms, all directions") {
  // Directions: random, the same, opposite, orthogonal; every norm against every norm,
  // through gram(), row(), prepare() and self(). The largest norm is 1e150: from about
  // 1e154 on, the input layer's covariance w^2 |x|^2 / d itself overflows (and so do the
  // relu, gelu, polynomial and linear kernels' values).
  std::mt19937_64 rng(5);
  const VectorXd u = gaussian_vector(kDim, rng).normalized();
  VectorXd v = gaussian_vector(kDim, rng);
  v -= v.dot(u) * u;
  v.normalize();
  const VectorXd w = gaussian_vector(kDim, rng).normalized();
  std::vector<VectorXd> rows = {VectorXd::Zero(kDim)};
  for (const double norm : {1e-320, 1e-300, 1e-200, 1e-150, 1e-100, 1e-8, 1.0, 1e8, 1e100, 1e150}) {
    for (const VectorXd* dir : std::initializer_list<const VectorXd*>{&u, &v, &w}) {
      rows.push_back(norm * *dir);
      rows.push_back(-norm * *dir);
    }
  }
  VectorXd spread(kDim);  // entries from the smallest subnormal to 1e150
  spread << std::numeric_limits<double>::denorm_min(), -1e-310, 1.0, -1e150, 3e-200;
  rows.push_back(spread);
  const RowMatrixXd X = stack(rows);
  for (const std::string& text : all_specs()) {
    CAPTURE(text);
    const auto k = ntk::make_kernel(text);
    const MatrixXd G = k->gram(X);
    const MatrixXd R = row_matrix(*k, X, X);
    CHECK_FALSE(G.array().isNaN().any());
    CHECK_FALSE(R.array().isNaN().any());
    const MatrixXd C = k->prepare_all(X);
    CHECK_FALSE(C.array().isNaN().any());
    for (Index i = 0; i < X.rows(); ++i) {
      CHECK_FALSE(std::isnan(k->self(X.row(i).transpose(), C.row(i).transpose())));
    }
    // Apart from the polynomial kernel, whose (gamma x.y + coef0)^degree overflows at
    // these norms, every value is finite.
    if (k->spec().type != KernelType::kPolynomial) {
      CHECK(G.allFinite());
      CHECK(R.allFinite());
    }
  }
}

TEST_CASE("depth 0 is the linear kernel: w^2 x.x'/d + b^2, standard NTK x.x' + [bias]") {
  const RowMatrixXd X = adversarial_points();
  for (const char* act : {"relu", "erf", "gelu"}) {
    for (const char* b : {"none", "0", "0.7"}) {
      for (const char* param : {"ntk", "standard"}) {
        for (const char* out : {"ntk", "nngp"}) {
          const std::string text = std::string("ntk:activation=") + act +
                                   ",depth=0,w_std=1.7,b_std=" + b + ",parameterization=" + param +
                                   ",width=3,output=" + out;
          CAPTURE(text);
          const KernelSpec s = KernelSpec::parse(text);
          const auto k = ntk::make_kernel(s);
          const double beta = s.b_std.value_or(0.0);
          const bool standard_ntk =
              s.parameterization == Parameterization::kStandard && s.output == KernelOutput::kNtk;
          const auto expected = [&](const VectorXd& x, const VectorXd& y) {
            if (standard_ntk) return x.dot(y) + (s.b_std ? 1.0 : 0.0);
            return 1.7 * 1.7 * x.dot(y) / static_cast<double>(kDim) + beta * beta;
          };
          const MatrixXd R = row_matrix(*k, X, X);
          for (Index i = 0; i < X.rows(); ++i) {
            for (Index j = 0; j < X.rows(); ++j) {
              const VectorXd xi = X.row(i).transpose();
              const VectorXd xj = X.row(j).transpose();
              const double scale = std::sqrt(std::abs(expected(xi, xi) * expected(xj, xj)));
              const double want = expected(xi, xj);
              CHECK(std::abs((*k)(xi, xj) - want) <= 1e-14 * scale + 1e-300);
              CHECK(std::abs(R(i, j) - want) <= 1e-14 * scale + 1e-300);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("relu depth 1: the arc-cosine kernel of degree 1 (Cho & Saul 2009)") {
  // NNGP = w^2 sqrt(q11 q22) (sin t + (pi - t) cos t) / (2 pi) + b^2 with q = w^2 x.x/d + b^2
  // and t the angle between the pre-activations; NTK = NNGP + w^2 (pi - t)/(2 pi) Sigma_1.
  // In long double, on random points at well-separated angles.
  const RowMatrixXd X = gaussian_points(12, 4, 17);
  for (const double b : {0.0, 0.4}) {
    for (const char* out : {"ntk", "nngp"}) {
      const std::string text =
          "ntk:activation=relu,depth=1,w_std=1.2,b_std=" + std::to_string(b) + ",output=" + out;
      CAPTURE(text);
      const auto k = ntk::make_kernel(text);
      const MatrixXd R = row_matrix(*k, X, X);
      const long double w2 = 1.2L * 1.2L;
      const long double b2 = static_cast<long double>(b) * b;
      const long double pi = 3.141592653589793238462643383279502884L;
      const auto sigma1 = [&](const VectorXd& x, const VectorXd& y) {
        long double s = 0;
        for (Index i = 0; i < x.size(); ++i) s += static_cast<long double>(x(i)) * y(i);
        return w2 * s / x.size() + b2;
      };
      for (Index i = 0; i < X.rows(); ++i) {
        for (Index j = 0; j < X.rows(); ++j) {
          const VectorXd x = X.row(i).transpose();
          const VectorXd y = X.row(j).transpose();
          const long double q11 = sigma1(x, x), q22 = sigma1(y, y), q12 = sigma1(x, y);
          const long double t = i == j ? 0.0L : std::acos(q12 / std::sqrt(q11 * q22));
          const long double nngp =
              w2 * std::sqrt(q11 * q22) * (std::sin(t) + (pi - t) * std::cos(t)) / (2 * pi) + b2;
          const long double ntk = nngp + w2 * (pi - t) / (2 * pi) * q12;
          const double want = static_cast<double>(std::string(out) == "ntk" ? ntk : nngp);
          const double scale = std::sqrt((*k)(x) * (*k)(y));
          CHECK(std::abs((*k)(x, y) - want) <= 1e-13 * scale);
          CHECK(std::abs(R(i, j) - want) <= 1e-13 * scale);
        }
      }
      // The diagonal in closed form: NNGP(x, x) = w^2 q / 2 + b^2, NTK = NNGP + w^2 q / 2.
      const VectorXd x = X.row(0).transpose();
      const double q = static_cast<double>(sigma1(x, x));
      const double diag = 1.44 * q / 2 + b * b + (std::string(out) == "ntk" ? 1.44 * q / 2 : 0.0);
      CHECK((*k)(x) == doctest::Approx(diag).epsilon(1e-14));
    }
  }
}

TEST_CASE("bias-free relu kernels are homogeneous: k(s x, s y) = s^2 k(x, y), s = 2^500, 2^-500") {
  const RowMatrixXd X = adversarial_points(false);
  for (const char* param : {"ntk", "standard"}) {
    for (const char* out : {"ntk", "nngp"}) {
      for (int depth = 0; depth <= 3; ++depth) {
        const std::string text = "ntk:activation=relu,depth=" + std::to_string(depth) +
                                 ",w_std=1,b_std=none,parameterization=" + param +
                                 ",width=10,output=" + out;
        CAPTURE(text);
        const auto k = ntk::make_kernel(text);
        const MatrixXd G = k->gram(X);
        const MatrixXd R = row_matrix(*k, X, X);
        const VectorXd g = G.diagonal();
        for (const int e : {-500, 500}) {
          CAPTURE(e);
          const double s = std::ldexp(1.0, e);  // exact scaling
          const RowMatrixXd Xs = s * X;
          const MatrixXd Gs = k->gram(Xs) / (s * s);
          const MatrixXd Rs = row_matrix(*k, Xs, Xs) / (s * s);
          CHECK(scaled_error(Gs, G, g, g).value <= 1e-13);
          CHECK(scaled_error(Rs, R, g, g).value <= 1e-13);
        }
        // Bias-free relu NNGP and NTK vanish at antipodal points after one layer.
        if (depth == 1) {
          for (Index i = 1; i < X.rows(); ++i) {
            const VectorXd x = X.row(i).transpose();
            CHECK(std::abs((*k)(x, -x)) <= 1e-15 * (*k)(x));
          }
          CHECK(std::abs(R(1, 3)) <= 1e-15 * R(1, 1));  // rows 1 and 3 are a and -a
        }
      }
    }
  }
}

TEST_CASE("row(): a query of norm ~1e-307 against small points (x.y underflows in the GEMV)") {
  // x of norm ~2^-1020 against points of norm ~2^-40: every product x_j y_j of the GEMV is
  // subnormal (~14 bits), so the input correlation must come from the unit vectors for every
  // lane, although each point's own norm is in the safe range. Bias-free relu at depth 1 is
  // homogeneous in each argument and scales like w^4, so with w = 2^300 the exact answer is
  // 2^(1200 - 1020 - 40) = 2^140 times the kernel at w = 1 of the unscaled points.
  const RowMatrixXd X = adversarial_points(false);
  for (const char* out : {"ntk", "nngp"}) {
    CAPTURE(out);
    const std::string tail = ",b_std=none,output=" + std::string(out);
    const auto k1 = ntk::make_kernel("ntk:activation=relu,depth=1,w_std=1" + tail);
    const auto kw = ntk::make_kernel(
        "ntk:activation=relu,depth=1,w_std=" + std::to_string(std::ldexp(1.0, 300)) + tail);
    const MatrixXd G = k1->gram(X);
    const VectorXd g = G.diagonal();
    const RowMatrixXd Xq = std::ldexp(1.0, -1020) * X;  // the queries
    const RowMatrixXd Xs = std::ldexp(1.0, -40) * X;    // the stored points
    const MatrixXd R = row_matrix(*kw, Xs, Xq) / std::ldexp(1.0, 140);
    CHECK(scaled_error(R, G, g, g).value <= 1e-13);
  }
}

TEST_CASE("bias-free erf kernels are odd: k(x, -y) = -k(x, y)") {
  const RowMatrixXd X = adversarial_points();
  const RowMatrixXd Xn = -X;
  for (const char* param : {"ntk", "standard"}) {
    for (const char* out : {"ntk", "nngp"}) {
      for (int depth = 0; depth <= 3; ++depth) {
        const std::string text = "ntk:activation=erf,depth=" + std::to_string(depth) +
                                 ",w_std=1.4,b_std=none,parameterization=" + param +
                                 ",width=20,output=" + out;
        CAPTURE(text);
        const auto k = ntk::make_kernel(text);
        const MatrixXd G = k->gram(X);
        const VectorXd g = G.diagonal();
        const MatrixXd mixed = k->cross(X, Xn);
        CHECK(scaled_error(mixed, -G, g, g).value <= 1e-14);
        CHECK(scaled_error(row_matrix(*k, X, Xn), -G, g, g).value <= 1e-14);
        CHECK(scaled_error(k->gram(Xn), G, g, g).value <= 1e-14);
      }
    }
  }
}

TEST_CASE("rbf row(): duplicates of points of norm 1e150 give the variance") {
  // |x_i|^2 + |x|^2 - 2 x_i.x is pure rounding (~1e284) for a duplicate of a huge point,
  // so exp of it is 0 unless the row path recomputes such entries from the differences.
  for (const Index d : {Index{8}, Index{64}}) {
    CAPTURE(d);
    const RowMatrixXd X = 1e150 * gaussian_points(16, d, 47);
    const auto k = ntk::make_kernel("rbf:lengthscale=1,variance=2");
    const MatrixXd R = row_matrix(*k, X, X);
    for (Index i = 0; i < X.rows(); ++i) {
      CHECK(R(i, i) == 2.0);
      for (Index j = 0; j < X.rows(); ++j) {
        CHECK(std::abs(R(i, j) - (*k)(X.row(i).transpose(), X.row(j).transpose())) <= 1e-13);
      }
    }
  }
}

TEST_CASE("rbf row(): never above the variance, also where |x_i|^2 + |x|^2 - 2 x_i.x < 0") {
  // For duplicates the row path's squared distance is pure rounding of either sign (the
  // norms and the GEMV sum in different orders); exp(-gamma r2) <= 1 needs r2 >= 0.
  const RowMatrixXd X = gaussian_points(64, 8, 29);
  const auto k = ntk::make_kernel("rbf:lengthscale=1,variance=2");
  const MatrixXd R = row_matrix(*k, X, X);
  for (Index i = 0; i < X.rows(); ++i) {
    CAPTURE(i);
    CHECK(R.col(i).maxCoeff() <= 2.0);
    CHECK(R(i, i) == doctest::Approx(2.0).epsilon(1e-14));
  }
}

TEST_CASE("rbf, polynomial and linear: hand-computed values") {
  VectorXd x(2), y(2);
  x << 1.0, 2.0;
  y << 3.0, -1.0;  // x.y = 1, |x - y|^2 = 13
  const RowMatrixXd P = stack({x, y});
  const auto check_pair = [&](const std::string& text, double xy, double xx, double yy) {
    CAPTURE(text);
    const auto k = ntk::make_kernel(text);
    CHECK((*k)(x, y) == doctest::Approx(xy).epsilon(1e-15));
    CHECK((*k)(y, x) == doctest::Approx(xy).epsilon(1e-15));
    CHECK((*k)(x) == doctest::Approx(xx).epsilon(1e-15));
    const MatrixXd R = row_matrix(*k, P, P);
    CHECK(R(0, 1) == doctest::Approx(xy).epsilon(1e-15));
    CHECK(R(1, 0) == doctest::Approx(xy).epsilon(1e-15));
    CHECK(R(0, 0) == doctest::Approx(xx).epsilon(1e-15));
    CHECK(R(1, 1) == doctest::Approx(yy).epsilon(1e-15));
  };
  check_pair("rbf:lengthscale=2,variance=3", 3.0 * std::exp(-13.0 / 8.0), 3.0, 3.0);
  check_pair("polynomial:degree=3,gamma=0.5,coef0=1", 1.5 * 1.5 * 1.5, 3.5 * 3.5 * 3.5,
             6.0 * 6.0 * 6.0);
  check_pair("polynomial:degree=2,gamma=1,coef0=0", 1.0, 25.0, 100.0);
  check_pair("linear", 1.0, 5.0, 10.0);

  // rbf: k(x, x) = variance exactly, also far from the origin where the row path's
  // |x|^2 + |y|^2 - 2 x.y would cancel; and far points give 0, not a negative number.
  const auto rbf = ntk::make_kernel("rbf:lengthscale=0.5,variance=2");
  const VectorXd far = VectorXd::Constant(3, 1e8);
  VectorXd near = far;
  near(0) += 1e-3;
  const double delta = near(0) - far(0);  // exact (Sterbenz); about 1e-3
  const RowMatrixXd F = stack({far, near});
  const MatrixXd R = row_matrix(*rbf, F, F);
  CHECK(R(0, 0) == 2.0);
  CHECK(R(1, 1) == 2.0);
  CHECK(R(0, 1) == doctest::Approx(2.0 * std::exp(-2.0 * delta * delta)).epsilon(1e-14));
  CHECK(R(1, 0) == doctest::Approx(2.0 * std::exp(-2.0 * delta * delta)).epsilon(1e-14));
  CHECK((*rbf)(far, -far) == 0.0);
}

TEST_CASE("row(): any M, strided inputs, exactly M values written") {
  // M: every packet tail (0 .. 2 kLanes + 3), and around the chunk boundaries of the NTK
  // row loop (chunks of kChunkPackets packets, a partial chunk, a tail packet after them).
  constexpr Index kLanes = ntk::detail::simd::kLanes;
  constexpr Index kChunk = ntk::detail::kChunkPackets * kLanes;
  std::vector<Index> sizes;
  for (Index m = 0; m <= 2 * kLanes + 3; ++m) sizes.push_back(m);
  for (const Index m :
       {kChunk - 1, kChunk, kChunk + 1, kChunk + kLanes + 1, 2 * kChunk + 2 * kLanes + 3}) {
    if (m > sizes.back()) sizes.push_back(m);
  }
  const RowMatrixXd X = gaussian_points(sizes.back(), kDim, 23);
  const RowMatrixXd Q = adversarial_points();
  for (const std::string& text : all_specs()) {
    CAPTURE(text);
    const auto kernel = ntk::make_kernel(text);
    const ntk::Kernel& k = *kernel;
    const double tol = tolerance(k.spec());
    const MatrixXd all_caches = k.prepare_all(X);
    VectorXd xc(k.cache_size());
    // Via the leading rows of the stored set.
    for (const Index m : sizes) {
      CAPTURE(m);
      VectorXd buf = VectorXd::Constant(m + 4, 12345.0);
      MatrixXd scratch(m, k.scratch_cols());
      for (Index q = 0; q < Q.rows(); ++q) {
        const VectorXd x = Q.row(q).transpose();
        k.prepare(x, xc);
        k.row(X.topRows(m), all_caches.topRows(m), x, xc, buf.segment(2, m), scratch);
        CHECK(buf(0) == 12345.0);
        CHECK(buf(1) == 12345.0);
        CHECK(buf(m + 2) == 12345.0);
        CHECK(buf(m + 3) == 12345.0);
        for (Index i = 0; i < m; ++i) {
          const VectorXd xi = X.row(i).transpose();
          const double want = k(xi, x);
          const double scale = std::sqrt(k(xi) * k(x));
          CHECK(std::abs(buf(2 + i) - want) <= tol * scale);
        }
      }
    }
    // Strided points (a block of a wider row-major matrix), caches with a leading
    // dimension larger than M (rows of a taller matrix), an offset output.
    const Index m = X.rows();
    RowMatrixXd wide = RowMatrixXd::Constant(m, kDim + 3, 7.0);
    wide.leftCols(kDim) = X;
    MatrixXd tall = MatrixXd::Constant(m + 5, k.cache_size(), -3.0);
    tall.topRows(m) = all_caches;
    VectorXd out(m + 1);
    MatrixXd scratch(m + 2, k.scratch_cols() + 1);
    for (Index q = 0; q < Q.rows(); ++q) {
      const VectorXd x = Q.row(q).transpose();
      k.prepare(x, xc);
      VectorXd ref(m);
      MatrixXd ref_scratch(m, k.scratch_cols());
      k.row(X, all_caches, x, xc, ref, ref_scratch);
      const Eigen::Ref<const RowMatrixXd> pts = wide.leftCols(kDim);
      const Eigen::Ref<const MatrixXd> cs = tall.topRows(m);
      REQUIRE(pts.outerStride() == kDim + 3);
      if (k.cache_size() > 1) REQUIRE(cs.outerStride() == m + 5);
      k.row(pts, cs, x, xc, out.tail(m), scratch);
      CHECK(out.tail(m) == ref);
    }
  }
}

TEST_CASE("dot_rows: the M dot products of row(), every path, any M and d, strided points") {
  // dot_rows picks dot_rows_by_four below the SIMD packet size and Eigen's GEMV above it;
  // both are checked for every M around the groups of four and d on both sides of 2, 4
  // and 8 (the packet sizes of SSE2, AVX and AVX-512), against each dot product summed
  // in long double, on a block of a wider matrix so that the stride differs from d.
  std::mt19937_64 rng(41);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (const Index d : {1, 2, 3, 4, 5, 7, 8, 9, 17}) {
    for (const Index m : {0, 1, 3, 4, 5, 8, 13, 64}) {
      CAPTURE(d);
      CAPTURE(m);
      RowMatrixXd wide(m, d + 3);
      for (Index i = 0; i < wide.size(); ++i) wide.data()[i] = normal(rng);
      VectorXd x(d);
      for (Index c = 0; c < d; ++c) x(c) = normal(rng);
      const Eigen::Ref<const RowMatrixXd> pts = wide.leftCols(d);
      if (m > 1) REQUIRE(pts.outerStride() == d + 3);
      VectorXd by_four = VectorXd::Constant(m + 2, 99.0);
      VectorXd chosen = VectorXd::Constant(m, 99.0);
      ntk::detail::dot_rows_by_four(pts, x, by_four.segment(1, m));
      ntk::detail::dot_rows(pts, x, chosen);
      CHECK(by_four(0) == 99.0);
      CHECK(by_four(m + 1) == 99.0);
      for (Index i = 0; i < m; ++i) {
        long double exact = 0.0L;
        double magnitude = 0.0;
        for (Index c = 0; c < d; ++c) {
          exact += static_cast<long double>(pts(i, c)) * static_cast<long double>(x(c));
          magnitude += std::abs(pts(i, c) * x(c));
        }
        const double bound = 2.0 * static_cast<double>(d) * 0x1p-53 * magnitude;
        CHECK(std::abs(by_four(1 + i) - static_cast<double>(exact)) <= bound);
        CHECK(std::abs(chosen(i) - static_cast<double>(exact)) <= bound);
      }
    }
  }
}

TEST_CASE("row() allocates nothing") {
  if (!ntk::test::allocations_include_malloc()) {
    MESSAGE("counting operator new only (malloc is not counted on this platform)");
  }
  // Sanity: the counter sees the standard library's allocations and, where it counts
  // malloc, Eigen's (the pointers escape so that the allocations cannot be elided).
  {
    const long before = ntk::test::allocations();
    std::vector<int> s(10);
    g_sink = s.data();
    CHECK(ntk::test::allocations() - before >= 1);
  }
  {
    const long before = ntk::test::allocations();
    VectorXd v(1000);
    g_sink = v.data();
    if (ntk::test::allocations_include_malloc()) {
      CHECK(ntk::test::allocations() - before == 1);
    }
  }
  for (const std::string& text : all_specs()) {
    CAPTURE(text);
    const auto kernel = ntk::make_kernel(text);
    const ntk::Kernel& k = *kernel;
    for (const Index m : {1, 64, 257}) {
      const RowMatrixXd X = gaussian_points(m, 16, 31);
      const MatrixXd caches = k.prepare_all(X);
      const RowMatrixXd Q = gaussian_points(8, 16, 37);
      VectorXd xc(k.cache_size());
      VectorXd out(m);
      MatrixXd scratch(m, k.scratch_cols());
      // Also near-duplicates of stored points and huge and tiny queries, which take the
      // exact per-point paths inside row().
      RowMatrixXd specials(3, 16);
      specials.row(0) = X.row(0);
      specials(0, 3) += 1e-12;
      specials.row(1) = 1e150 * Q.row(1);
      specials.row(2) = 1e-150 * Q.row(2);
      const long before = ntk::test::allocations();
      for (Index q = 0; q < Q.rows(); ++q) {
        k.prepare(Q.row(q).transpose(), xc);
        k.row(X, caches, Q.row(q).transpose(), xc, out, scratch);
      }
      for (Index q = 0; q < specials.rows(); ++q) {
        k.prepare(specials.row(q).transpose(), xc);
        k.row(X, caches, specials.row(q).transpose(), xc, out, scratch);
      }
      const long allocations = ntk::test::allocations() - before;
      CAPTURE(m);
      CHECK(allocations == 0);
      CHECK_FALSE(out.array().isNaN().any());
    }
  }
}

TEST_CASE("scalar paths check their arguments") {
  for (const std::string& text : all_specs()) {
    CAPTURE(text);
    const auto k = ntk::make_kernel(text);
    const VectorXd a = VectorXd::Ones(3);
    const VectorXd b = VectorXd::Ones(4);
    CHECK_THROWS_AS((void)(*k)(a, b), std::invalid_argument);
    CHECK_THROWS_AS((void)(*k)(VectorXd(), VectorXd()), std::invalid_argument);
    CHECK_THROWS_WITH_AS((void)k->cross(RowMatrixXd::Ones(2, 3), RowMatrixXd::Ones(2, 4)),
                         "kernel cross: X has 3 columns but Y has 4", std::invalid_argument);
    CHECK(k->cross(RowMatrixXd(0, 3), RowMatrixXd::Ones(2, 3)).rows() == 0);
    CHECK(k->gram(RowMatrixXd(0, 3)).size() == 0);
  }
}

TEST_CASE("simd::atan_ratio agrees with std::atan2 to a few ulp") {
  using namespace ntk::detail::simd;
  std::vector<std::pair<double, double>> cases = {{0.0, 1.0},
                                                  {1.0, 0.0},
                                                  {1.0, 1.0},
                                                  {0.66, 1.0},
                                                  {std::nextafter(0.66, 1.0), 1.0},
                                                  {2.414213562373095, 1.0},
                                                  {2.4142135623730954, 1.0},
                                                  {5e-324, 1.0},
                                                  {1.0, 1e308},
                                                  {1e308, 1.0},
                                                  {1e-300, 1e-300},
                                                  {3.0, 7.0}};
  std::mt19937_64 rng(41);
  std::uniform_real_distribution<double> exponent(-300.0, 300.0);
  for (int i = 0; i < 20000; ++i) {
    cases.emplace_back(std::pow(10.0, exponent(rng)) * (1 + (rng() % 1000) / 1000.0),
                       std::pow(10.0, exponent(rng) / 100) * (1 + (rng() % 1000) / 1000.0));
  }
  double worst = 0.0;
  for (std::size_t c = 0; c + kLanes <= cases.size(); c += kLanes) {
    double n[kLanes], d[kLanes], r[kLanes], red[kLanes], mid[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      n[l] = cases[c + static_cast<std::size_t>(l)].first;
      d[l] = cases[c + static_cast<std::size_t>(l)].second;
    }
    Packet reduced, mid_or_big;
    storeu(r, atan_ratio(loadu(n), loadu(d), &reduced, &mid_or_big));
    storeu(red, reduced);
    storeu(mid, mid_or_big);
    double yn[kLanes];
    for (int l = 0; l < kLanes; ++l) yn[l] = -n[l];
    double neg[kLanes];
    storeu(neg, atan2_right_half(loadu(yn), loadu(d)));
    for (int l = 0; l < kLanes; ++l) {
      CAPTURE(n[l]);
      CAPTURE(d[l]);
      const long double ref = std::atan2(static_cast<long double>(n[l]), d[l]);
      const double err = static_cast<double>(std::abs(r[l] - ref) / ref);
      if (ref > 0) worst = std::max(worst, err);
      CHECK(std::abs(r[l] - ref) <= 4 * std::numeric_limits<double>::epsilon() * ref);
      CHECK(neg[l] == -r[l]);
      // Where the ratio was not range-reduced, the reduced argument is n / d itself.
      if (n[l] <= 0.66 * d[l]) {
        CHECK(std::bit_cast<std::uint64_t>(mid[l]) == 0);
        CHECK(red[l] == n[l] / d[l]);
      }
    }
  }
  MESSAGE("atan_ratio: max relative error " << worst << " (" << worst / 2.220446049250313e-16
                                            << " eps)");
}

TEST_CASE("simd::atan_unit_ratio (relu row loop) agrees with atan2 to 2 ulp on [0, 1]") {
  // The relu half-angle tangent n / d is in [0, 1]: random ratios, dense near 0 (relative
  // accuracy), around the reduction point tan(pi/8) and near 1, and exact edge cases.
  using namespace ntk::detail::simd;
  const double tan_pi_8 = 0.41421356237309504880;
  std::vector<std::pair<double, double>> cases = {{0.0, 1.0},
                                                  {1.0, 1.0},
                                                  {2.0, 2.0},
                                                  {5e-324, 1.0},
                                                  {1e-300, 2.0},
                                                  {tan_pi_8, 1.0},
                                                  {std::nextafter(tan_pi_8, 1.0), 1.0},
                                                  {std::nextafter(tan_pi_8, 0.0), 1.0},
                                                  {std::nextafter(1.0, 0.0), 1.0},
                                                  {1.0, std::nextafter(1.0, 2.0)}};
  std::mt19937_64 rng(43);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::uniform_real_distribution<double> den(1.0, 2.0);  // relu: d = 1 + |rho|
  for (int i = 0; i < 40000; ++i) {
    const double d = den(rng);
    double t = unit(rng);
    if (i % 4 == 1) t = std::pow(10.0, -20.0 * unit(rng));            // small angles
    if (i % 4 == 2) t = tan_pi_8 * (1.0 + 1e-3 * (unit(rng) - 0.5));  // reduction point
    if (i % 4 == 3) t = 1.0 - 1e-3 * unit(rng);                       // near pi/4
    cases.emplace_back(t * d <= d ? t * d : d, d);
  }
  double worst = 0.0;
  for (std::size_t c = 0; c + kLanes <= cases.size(); c += kLanes) {
    double n[kLanes], d[kLanes], r[kLanes], xs[kLanes], red[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      n[l] = cases[c + static_cast<std::size_t>(l)].first;
      d[l] = cases[c + static_cast<std::size_t>(l)].second;
    }
    Packet x, reduced;
    storeu(r, atan_unit_ratio(loadu(n), loadu(d), &x, &reduced));
    storeu(xs, x);
    storeu(red, reduced);
    for (int l = 0; l < kLanes; ++l) {
      CAPTURE(n[l]);
      CAPTURE(d[l]);
      const long double ref = std::atan2(static_cast<long double>(n[l]), d[l]);
      if (ref == 0) {
        CHECK(r[l] == 0.0);
        continue;
      }
      const double err = static_cast<double>(std::abs(r[l] - ref) / ref);
      worst = std::max(worst, err);
      CHECK(err <= 2 * std::numeric_limits<double>::epsilon());
      // Where the ratio was not range-reduced, the polynomial's argument is n / d itself.
      if (n[l] <= tan_pi_8 * d[l]) {
        CHECK(std::bit_cast<std::uint64_t>(red[l]) == 0);
        CHECK(xs[l] == n[l] / d[l]);
      } else {
        CHECK(std::bit_cast<std::uint64_t>(red[l]) != 0);
      }
    }
  }
  MESSAGE("atan_unit_ratio: max relative error " << worst << " (" << worst / 2.220446049250313e-16
                                                 << " eps)");
}
