// Mlp and its empirical NTK, against independent oracles:
//   - a naive loop implementation of the documented network and parameter layout;
//   - central finite differences of forward() for the Jacobian;
//   - the explicit J J^T for the factored empirical NTK;
//   - an independent (Python, reference MT19937-64) run of the documented normal generator;
//   - the analytic infinite-width NTK/NNGP of make_kernel() for the convergence in width
//     (NTK) and over random draws (NNGP).
#include <doctest/doctest.h>

#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "ntk/core/empirical.h"
#include "ntk/core/kernel.h"

namespace {

using ntk::Activation;
using ntk::KernelOutput;
using ntk::KernelSpec;
using ntk::Mlp;
using ntk::Parameterization;
using ntk::RowMatrixXd;

constexpr Activation kActivations[] = {Activation::kRelu, Activation::kErf, Activation::kGelu};
constexpr Parameterization kParameterizations[] = {Parameterization::kNtk,
                                                   Parameterization::kStandard};

// The spec of a net of hidden width `width` (recorded in spec.width for the standard
// parameterization, whose analytic kernel depends on it).
KernelSpec net_spec(Activation activation, int depth, Parameterization parameterization,
                    std::optional<double> b_std, int width, double w_std = 1.3) {
  KernelSpec spec;
  spec.type = ntk::KernelType::kNtk;
  spec.activation = activation;
  spec.depth = depth;
  spec.w_std = w_std;
  spec.b_std = b_std;
  spec.parameterization = parameterization;
  if (parameterization == Parameterization::kStandard) spec.width = width;
  return spec;
}

std::string describe(const KernelSpec& spec, int width) {
  std::ostringstream os;
  os << ntk::to_string(spec.activation) << " depth=" << spec.depth << ' '
     << ntk::to_string(spec.parameterization) << " b_std=";
  if (spec.b_std) {
    os << *spec.b_std;
  } else {
    os << "none";
  }
  if (width > 0) os << " width=" << width;
  return os.str();
}

// Points with i.i.d. coordinates uniform on [-scale, scale), from mt19937_64 bits directly
// (the standard fixes the engine's sequence, not the distributions'), so the inputs are
// the same on every platform.
RowMatrixXd uniform_points(Eigen::Index m, Eigen::Index d, std::uint64_t seed, double scale = 1.0) {
  std::mt19937_64 engine(seed);
  RowMatrixXd X(m, d);
  for (Eigen::Index i = 0; i < m; ++i) {
    for (Eigen::Index j = 0; j < d; ++j) {
      const double u = std::ldexp(static_cast<double>(engine() >> 11), -53);  // [0, 1)
      X(i, j) = scale * (2.0 * u - 1.0);
    }
  }
  return X;
}

// The network of golden/README.md written out with plain loops over the documented
// parameter layout (W_l row-major, then b_l), and activations from their textbook forms.
double oracle_forward(const KernelSpec& spec, int width, const Eigen::VectorXd& theta,
                      const Eigen::VectorXd& x, Eigen::Index* consumed) {
  std::vector<double> h(x.data(), x.data() + x.size());
  Eigen::Index offset = 0;
  double f = 0.0;
  for (int l = 0; l <= spec.depth; ++l) {
    const std::size_t n_in = h.size();
    const std::size_t n_out = l == spec.depth ? 1 : static_cast<std::size_t>(width);
    const bool ntk_param = spec.parameterization == Parameterization::kNtk;
    const double c = ntk_param ? spec.w_std / std::sqrt(static_cast<double>(n_in)) : 1.0;
    const double beta = ntk_param ? spec.b_std.value_or(0.0) : 1.0;
    std::vector<double> z(n_out, 0.0);
    for (std::size_t j = 0; j < n_out; ++j) {
      double sum = 0.0;
      for (std::size_t i = 0; i < n_in; ++i) {
        sum += h[i] * theta[offset + static_cast<Eigen::Index>(i * n_out + j)];
      }
      z[j] = c * sum;
    }
    offset += static_cast<Eigen::Index>(n_in * n_out);
    if (spec.b_std) {
      for (std::size_t j = 0; j < n_out; ++j) {
        z[j] += beta * theta[offset + static_cast<Eigen::Index>(j)];
      }
      offset += static_cast<Eigen::Index>(n_out);
    }
    if (l == spec.depth) {
      f = z[0];
      break;
    }
    for (double& v : z) {
      switch (spec.activation) {
        case Activation::kRelu:
          v = std::max(v, 0.0);
          break;
        case Activation::kErf:
          v = std::erf(v);
          break;
        case Activation::kGelu:
          v = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
          break;
      }
    }
    h = z;
  }
  *consumed = offset;
  return f;
}

// |A - B| relative to the diagonal scale of B (golden/README.md), max over entries.
double max_scaled_error(const Eigen::MatrixXd& A, const Eigen::MatrixXd& B) {
  double err = 0.0;
  for (Eigen::Index i = 0; i < B.rows(); ++i) {
    for (Eigen::Index j = 0; j < B.cols(); ++j) {
      err = std::max(err, std::abs(A(i, j) - B(i, j)) / std::sqrt(B(i, i) * B(j, j)));
    }
  }
  return err;
}

// The same, averaged over the pairs i <= j.
double mean_scaled_error(const Eigen::MatrixXd& A, const Eigen::MatrixXd& B) {
  double sum = 0.0;
  int pairs = 0;
  for (Eigen::Index i = 0; i < B.rows(); ++i) {
    for (Eigen::Index j = i; j < B.cols(); ++j) {
      sum += std::abs(A(i, j) - B(i, j)) / std::sqrt(B(i, i) * B(j, j));
      ++pairs;
    }
  }
  return sum / pairs;
}

}  // namespace

TEST_CASE("Mlp: parameter count, layout and forward pass match a loop implementation") {
  const int d = 4;
  const int width = 6;
  const RowMatrixXd X = uniform_points(3, d, 11, 1.5);
  for (const Activation activation : kActivations) {
    for (const Parameterization parameterization : kParameterizations) {
      for (const std::optional<double> b_std : {std::optional<double>(), std::optional(0.4)}) {
        for (int depth = 0; depth <= 3; ++depth) {
          const KernelSpec spec = net_spec(activation, depth, parameterization, b_std, width);
          const Mlp net(spec, d, width, 7);
          CAPTURE(describe(spec, width));
          const Eigen::Index bias = b_std ? 1 : 0;
          const Eigen::Index expected_count =
              depth == 0 ? d + bias
                         : d * width + bias * width + (depth - 1) * (width * width + bias * width) +
                               width + bias;
          CHECK(net.parameter_count() == expected_count);
          CHECK(net.input_dim() == d);
          CHECK(net.width() == width);
          CHECK(net.depth() == depth);
          for (Eigen::Index i = 0; i < X.rows(); ++i) {
            const Eigen::VectorXd x = X.row(i).transpose();
            Eigen::Index consumed = 0;
            const double expected = oracle_forward(spec, width, net.parameters(), x, &consumed);
            CHECK(consumed == net.parameter_count());
            CHECK(std::abs(net.forward(x) - expected) <= 1e-13 * std::max(1.0, std::abs(expected)));
          }
        }
      }
    }
  }
}

TEST_CASE("Mlp: depth 0 is the linear model of the input layer") {
  const int d = 3;
  const Eigen::Vector3d x(0.5, -2.0, 1.25);
  {
    const KernelSpec spec = net_spec(Activation::kRelu, 0, Parameterization::kNtk, 0.3, 1, 1.5);
    const Mlp net(spec, d, 1, 5);
    const Eigen::VectorXd& t = net.parameters();
    REQUIRE(t.size() == d + 1);
    const double expected =
        1.5 / std::sqrt(3.0) * (x[0] * t[0] + x[1] * t[1] + x[2] * t[2]) + 0.3 * t[3];
    CHECK(net.forward(x) == doctest::Approx(expected).epsilon(1e-15));
  }
  {
    const KernelSpec spec = net_spec(Activation::kErf, 0, Parameterization::kStandard, {}, 1, 1.5);
    const Mlp net(spec, d, 1, 5);
    const Eigen::VectorXd& t = net.parameters();
    REQUIRE(t.size() == d);
    CHECK(net.forward(x) == doctest::Approx(x.dot(t)).epsilon(1e-15));
  }
}

TEST_CASE("Mlp: a bias-free ReLU net is positively homogeneous of degree 1") {
  const KernelSpec spec = net_spec(Activation::kRelu, 3, Parameterization::kNtk, {}, 32);
  const Mlp net(spec, 5, 32, 3);
  const RowMatrixXd X = uniform_points(4, 5, 12);
  for (Eigen::Index i = 0; i < X.rows(); ++i) {
    const Eigen::VectorXd x = X.row(i).transpose();
    const double f = net.forward(x);
    CHECK(net.forward(4.0 * x) == doctest::Approx(4.0 * f).epsilon(1e-13));
    CHECK(net.forward(0.125 * x) == doctest::Approx(0.125 * f).epsilon(1e-13));
    // and the empirical NTK is homogeneous of degree 2 in each argument jointly
    CHECK(net.empirical_ntk(2.0 * x, 2.0 * x) ==
          doctest::Approx(4.0 * net.empirical_ntk(x, x)).epsilon(1e-13));
  }
}

TEST_CASE("Mlp: the Jacobian matches central finite differences of forward()") {
  const int d = 3;
  const int width = 5;
  const RowMatrixXd X = uniform_points(2, d, 21, 1.2);
  const double h = 1e-6;
  for (const Activation activation : kActivations) {
    for (const Parameterization parameterization : kParameterizations) {
      for (const std::optional<double> b_std : {std::optional<double>(), std::optional(0.4)}) {
        for (int depth = 0; depth <= 3; ++depth) {
          const KernelSpec spec = net_spec(activation, depth, parameterization, b_std, width);
          const Mlp net(spec, d, width, 100 + static_cast<std::uint64_t>(depth));
          Mlp probe = net;
          CAPTURE(describe(spec, width));
          for (Eigen::Index p = 0; p < X.rows(); ++p) {
            const Eigen::VectorXd x = X.row(p).transpose();
            Eigen::VectorXd J(net.parameter_count());
            const double f = net.jacobian(x, J);
            CHECK(f == net.forward(x));
            const double scale = J.cwiseAbs().maxCoeff();
            REQUIRE(scale > 0.0);
            double worst = 0.0;
            Eigen::VectorXd theta = net.parameters();
            for (Eigen::Index k = 0; k < theta.size(); ++k) {
              const double saved = theta[k];
              theta[k] = saved + h;
              probe.set_parameters(theta);
              const double f_plus = probe.forward(x);
              theta[k] = saved - h;
              probe.set_parameters(theta);
              const double f_minus = probe.forward(x);
              theta[k] = saved;
              const double fd = (f_plus - f_minus) / (2.0 * h);
              // relative 1e-6, with entries below 1% of the largest judged on that scale
              worst = std::max(worst, std::abs(fd - J[k]) / std::max(std::abs(J[k]), 1e-2 * scale));
            }
            CAPTURE(worst);
            CHECK(worst < 1e-6);
          }
        }
      }
    }
  }
}

TEST_CASE("Mlp: empirical_ntk and empirical_ntk_gram equal the explicit J J^T") {
  const int d = 4;
  const int width = 7;
  const RowMatrixXd X = uniform_points(5, d, 31, 2.0);
  for (const Activation activation : kActivations) {
    for (const Parameterization parameterization : kParameterizations) {
      for (const std::optional<double> b_std : {std::optional<double>(), std::optional(0.2)}) {
        for (int depth = 0; depth <= 3; ++depth) {
          const KernelSpec spec = net_spec(activation, depth, parameterization, b_std, width);
          const Mlp net(spec, d, width, 200 + static_cast<std::uint64_t>(depth));
          CAPTURE(describe(spec, width));
          Eigen::MatrixXd J(X.rows(), net.parameter_count());
          for (Eigen::Index i = 0; i < X.rows(); ++i) {
            Eigen::VectorXd row(net.parameter_count());
            net.jacobian(X.row(i).transpose(), row);
            J.row(i) = row.transpose();
          }
          const Eigen::MatrixXd explicit_gram = J * J.transpose();
          const Eigen::MatrixXd gram = net.empirical_ntk_gram(X);
          CHECK(max_scaled_error(gram, explicit_gram) < 1e-13);
          CHECK(gram == gram.transpose());
          for (Eigen::Index i = 0; i < X.rows(); ++i) {
            for (Eigen::Index j = 0; j < X.rows(); ++j) {
              const double k = net.empirical_ntk(X.row(i).transpose(), X.row(j).transpose());
              CHECK(std::abs(k - explicit_gram(i, j)) <=
                    1e-13 * std::sqrt(explicit_gram(i, i) * explicit_gram(j, j)));
            }
          }
          const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(gram);
          CHECK(eig.eigenvalues().minCoeff() >= -1e-12 * eig.eigenvalues().maxCoeff());
        }
      }
    }
  }
}

TEST_CASE("Mlp: relu'(0) = 1/2, the analytic kernels' convention at the zero input") {
  // Standard parameterization with a zero-variance bias (b_std = 0): at x = 0 every hidden
  // pre-activation is exactly 0, so df/db_0 = relu'(0) W_1 and df/db_1 = 1; all other
  // entries vanish. The analytic limit is Theta(0, 0) = w^2/4 + 1 (golden/README.md).
  const int d = 3;
  const int width = 8;
  const KernelSpec spec =
      net_spec(Activation::kRelu, 1, Parameterization::kStandard, 0.0, width, 1.0);
  const Mlp net(spec, d, width, 9);
  const Eigen::VectorXd zero = Eigen::VectorXd::Zero(d);
  Eigen::VectorXd J(net.parameter_count());
  CHECK(net.jacobian(zero, J) == 0.0);
  // layout: W_0 (d x width), b_0 (width), W_1 (width x 1), b_1 (1)
  const Eigen::VectorXd W1 = net.parameters().segment(d * width + width, width);
  Eigen::VectorXd expected = Eigen::VectorXd::Zero(net.parameter_count());
  expected.segment(d * width, width) = 0.5 * W1;
  expected[net.parameter_count() - 1] = 1.0;
  CHECK(J == expected);
  CHECK(net.empirical_ntk(zero, zero) == doctest::Approx(0.25 * W1.squaredNorm() + 1.0));
}

TEST_CASE("Mlp: initialization is the documented, platform-independent draw") {
  const int d = 10;
  SUBCASE("pinned against an independent implementation of the generator") {
    // First normals of seed 42 and of seed 2024, computed by a separate implementation of
    // the reference MT19937-64 algorithm (Matsumoto & Nishimura) and of the integer polar
    // method described in empirical.h (Python 3, `normals(42, 6)`):
    //   M = 2**64 - 1
    //   def mt64(seed):
    //       mt = [seed & M]
    //       for i in range(1, 312):
    //           mt.append((6364136223846793005 * (mt[-1] ^ (mt[-1] >> 62)) + i) & M)
    //       while True:
    //           for k in range(312):
    //               x = (mt[k] & ~0x7FFFFFFF & M) | (mt[(k + 1) % 312] & 0x7FFFFFFF)
    //               mt[k] = mt[(k + 156) % 312] ^ (x >> 1) ^ (0xB5026F5AA96619E9 if x & 1 else 0)
    //           for y in mt:
    //               y ^= (y >> 29) & 0x5555555555555555
    //               y ^= (y << 17) & 0x71D67FFFEDA60000
    //               y ^= (y << 37) & 0xFFF7EEE000000000
    //               yield (y ^ (y >> 43)) & M
    //   def normals(seed, count):
    //       out = []
    //       for r in mt64(seed):
    //           k1, k2 = (r >> 32) - 2**31, (r & 0xFFFFFFFF) - 2**31
    //           s = k1 * k1 + k2 * k2
    //           if s == 0 or s >= 2**62: continue
    //           su = math.ldexp(s, -62)
    //           ls = math.log(su) if su <= 0.5 else math.log1p(-math.ldexp(2**62 - s, -62))
    //           f = math.sqrt(-2 * ls / su)
    //           out += [math.ldexp(k1, -31) * f, math.ldexp(k2, -31) * f]
    //           if len(out) >= count: return out[:count]
    const double seed42[] = {1.5473244318306445, -0.4051198473154147, 0.8475655273553032,
                             1.3608035250002366, -1.1112409011201196, 0.12059227463931668};
    const double seed2024[] = {1.0366155908205437, 1.577414773164813, 1.44765397930929,
                               -0.09782254987352478, -1.0846347441367326};
    const Mlp a(net_spec(Activation::kRelu, 1, Parameterization::kNtk, {}, 4), d, 4, 42);
    for (int k = 0; k < 6; ++k) {
      CHECK(a.parameters()[k] == doctest::Approx(seed42[k]).epsilon(4e-16));
    }
    // A block of odd size leaves the second normal of its last pair to the next block:
    // W_0 (1 x 3) takes normals 0..2, b_0 continues with 3, 4, 5.
    const Mlp odd(net_spec(Activation::kRelu, 1, Parameterization::kNtk, 0.1, 3), 1, 3, 42);
    for (int k = 0; k < 6; ++k) {
      CAPTURE(k);
      CHECK(odd.parameters()[k] == doctest::Approx(seed42[k]).epsilon(4e-16));
    }
    // standard: W_0 ~ N(0, w^2 / d), the same stream scaled
    const Mlp b(net_spec(Activation::kErf, 2, Parameterization::kStandard, 0.1, 4), d, 4, 2024);
    for (int k = 0; k < 5; ++k) {
      CHECK(b.parameters()[k] ==
            doctest::Approx(1.3 / std::sqrt(static_cast<double>(d)) * seed2024[k]).epsilon(4e-16));
    }
  }
  SUBCASE("deterministic in the seed") {
    const KernelSpec spec = net_spec(Activation::kGelu, 2, Parameterization::kNtk, 0.1, 16);
    const Mlp a(spec, d, 16, 77);
    const Mlp b(spec, d, 16, 77);
    const Mlp c(spec, d, 16, 78);
    CHECK(a.parameters() == b.parameters());
    CHECK((a.parameters() - c.parameters()).cwiseAbs().maxCoeff() > 0.5);
  }
  SUBCASE("ntk parameterization: every parameter i.i.d. N(0, 1)") {
    const Mlp net(net_spec(Activation::kRelu, 2, Parameterization::kNtk, 0.1, 300), d, 300, 5);
    const Eigen::VectorXd& t = net.parameters();
    const double n = static_cast<double>(t.size());
    const double mean = t.mean();
    const double var = t.squaredNorm() / n;
    const double m4 = t.array().pow(4).mean();
    const double lag1 = t.head(t.size() - 1).dot(t.tail(t.size() - 1)) / (n - 1);
    const double lag2 = t.head(t.size() - 2).dot(t.tail(t.size() - 2)) / (n - 2);
    CAPTURE(n);
    // 5 standard errors each: Var(x) = 1, Var(x^2) = 2, Var(x^4) = 96, Var(x y) = 1.
    CHECK(std::abs(mean) < 5.0 / std::sqrt(n));
    CHECK(std::abs(var - 1.0) < 5.0 * std::sqrt(2.0 / n));
    CHECK(std::abs(m4 - 3.0) < 5.0 * std::sqrt(96.0 / n));
    CHECK(std::abs(lag1) < 5.0 / std::sqrt(n));  // pairs of the polar method independent
    CHECK(std::abs(lag2) < 5.0 / std::sqrt(n));
    // tail mass beyond 3: 2 (1 - Phi(3)) = 0.0026998
    const double tail = static_cast<double>((t.array().abs() > 3.0).count()) / n;
    CHECK(std::abs(tail - 0.0026998) < 5.0 * std::sqrt(0.0026998 / n));
  }
  SUBCASE("standard parameterization: W_l ~ N(0, w^2 / n_l), b_l ~ N(0, b^2)") {
    const int width = 300;
    const double w = 1.7;
    const double b = 0.6;
    const Mlp net(net_spec(Activation::kRelu, 2, Parameterization::kStandard, b, width, w), d,
                  width, 6);
    const Eigen::VectorXd& t = net.parameters();
    // blocks: W_0 (d x width), b_0, W_1 (width x width), b_1, W_2 (width x 1), b_2
    struct Block {
      Eigen::Index offset, size;
      double variance;
    };
    const Eigen::Index w0 = d * width;
    const Eigen::Index w1 = width * width;
    const Block blocks[] = {{0, w0, w * w / d},
                            {w0, width, b * b},
                            {w0 + width, w1, w * w / width},
                            {w0 + width + w1, width, b * b},
                            {w0 + 2 * width + w1, width, w * w / width},
                            {w0 + 3 * width + w1, 1, b * b}};
    REQUIRE(t.size() == w0 + 3 * width + w1 + 1);
    for (const Block& block : blocks) {
      if (block.size < 100) continue;
      const Eigen::VectorXd v = t.segment(block.offset, block.size);
      const double n = static_cast<double>(block.size);
      CAPTURE(block.offset);
      CHECK(std::abs(v.mean()) < 5.0 * std::sqrt(block.variance / n));
      CHECK(std::abs(v.squaredNorm() / n / block.variance - 1.0) < 5.0 * std::sqrt(2.0 / n));
    }
  }
}

TEST_CASE("Mlp: invalid arguments throw std::invalid_argument naming the value") {
  const KernelSpec good = net_spec(Activation::kRelu, 2, Parameterization::kNtk, 0.1, 8);
  auto throws_with = [](auto&& make, const std::string& needle) {
    try {
      make();
    } catch (const std::invalid_argument& e) {
      const std::string what = e.what();
      CAPTURE(what);
      CHECK(what.find(needle) != std::string::npos);
      return;
    }
    FAIL("no std::invalid_argument for " << needle);
  };
  KernelSpec rbf = good;
  rbf.type = ntk::KernelType::kRbf;
  throws_with([&] { Mlp(rbf, 3, 8, 0); }, "spec.type");
  KernelSpec neg_depth = good;
  neg_depth.depth = -1;
  throws_with([&] { Mlp(neg_depth, 3, 8, 0); }, "depth must be >= 0, got -1");
  KernelSpec bad_w = good;
  bad_w.w_std = -1.0;
  throws_with([&] { Mlp(bad_w, 3, 8, 0); }, "w_std");
  bad_w.w_std = std::nan("");
  throws_with([&] { Mlp(bad_w, 3, 8, 0); }, "w_std");
  KernelSpec bad_b = good;
  bad_b.b_std = -0.5;
  throws_with([&] { Mlp(bad_b, 3, 8, 0); }, "-0.5");
  throws_with([&] { Mlp(good, 0, 8, 0); }, "input_dim");
  throws_with([&] { Mlp(good, 3, 0, 0); }, "width must be >= 1, got 0");
  KernelSpec standard = good;
  standard.parameterization = Parameterization::kStandard;
  standard.width = 64;
  throws_with([&] { Mlp(standard, 3, 32, 0); }, "64");
  CHECK_NOTHROW(Mlp(standard, 3, 64, 0));
  standard.width.reset();
  throws_with([&] { Mlp(standard, 3, 32, 0); }, "width");
  KernelSpec huge = good;
  huge.depth = KernelSpec::kMaxDepth;
  throws_with([&] { Mlp(huge, 3, 1 << 30, 0); }, "overflows");

  Mlp net(good, 3, 8, 0);
  const Eigen::VectorXd x3 = Eigen::VectorXd::Ones(3);
  throws_with([&] { net.forward(Eigen::VectorXd::Ones(4)); }, "size 4");
  Eigen::VectorXd inf = x3;
  inf[1] = std::numeric_limits<double>::infinity();
  throws_with([&] { net.forward(inf); }, "x(1) = inf");
  Eigen::VectorXd J(net.parameter_count() + 1);
  throws_with([&] { net.jacobian(x3, J); }, std::to_string(net.parameter_count() + 1));
  throws_with([&] { net.empirical_ntk(x3, inf); }, "not finite");
  throws_with([&] { net.empirical_ntk_gram(RowMatrixXd::Ones(2, 4)); }, "4 columns");
  // The bad entry of X is named by its row and column.
  RowMatrixXd X_inf = RowMatrixXd::Ones(4, 3);
  X_inf(2, 1) = std::numeric_limits<double>::infinity();
  throws_with([&] { net.empirical_ntk_gram(X_inf); }, "X(2, 1) = inf");
  throws_with([&] { net.set_parameters(Eigen::VectorXd::Zero(5)); }, "size 5");
  Eigen::VectorXd theta = net.parameters();
  theta[3] = std::nan("");
  throws_with([&] { net.set_parameters(theta); }, "theta(3)");
  CHECK(net.parameters()[3] == Mlp(good, 3, 8, 0).parameters()[3]);  // unchanged
}

// The empirical NTK of a random net concentrates around the analytic kernel with
// fluctuations of relative size O(1/sqrt(width)).
TEST_CASE("Mlp: the empirical NTK converges to the analytic NTK as the width grows") {
  struct Case {
    Activation activation;
    int depth;
    Parameterization parameterization;
    std::optional<double> b_std;
  };
  const Case cases[] = {
      {Activation::kRelu, 1, Parameterization::kNtk, 0.1},
      {Activation::kErf, 2, Parameterization::kNtk, {}},
      {Activation::kGelu, 1, Parameterization::kStandard, 0.2},
      {Activation::kRelu, 2, Parameterization::kStandard, {}},
  };
  const int widths[] = {256, 1024, 4096};
  const int seeds = 4;
  const int d = 6;
  const RowMatrixXd X = uniform_points(5, d, 41, 1.5);
  for (const Case& c : cases) {
    double err[3] = {};
    KernelSpec spec;
    for (int w = 0; w < 3; ++w) {
      const int width = widths[w];
      spec = net_spec(c.activation, c.depth, c.parameterization, c.b_std, width);
      spec.output = KernelOutput::kNtk;
      const Eigen::MatrixXd analytic = ntk::make_kernel(spec)->gram(X);
      for (int s = 0; s < seeds; ++s) {
        const Mlp net(spec, d, width, 1000 * static_cast<std::uint64_t>(w) + s);
        err[w] += mean_scaled_error(net.empirical_ntk_gram(X), analytic) / seeds;
      }
    }
    // least-squares slope of log err against log width
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (int w = 0; w < 3; ++w) {
      const double lx = std::log(static_cast<double>(widths[w]));
      const double ly = std::log(err[w]);
      sx += lx;
      sy += ly;
      sxx += lx * lx;
      sxy += lx * ly;
    }
    const double slope = (3 * sxy - sx * sy) / (3 * sxx - sx * sx);
    MESSAGE(describe(spec, 0) << ": mean relative error  256: " << err[0] << "  1024: " << err[1]
                              << "  4096: " << err[2] << "  slope " << slope);
    CHECK(err[2] < 0.05);
    CHECK(err[0] / err[2] > 2.0);
    CHECK(slope < -0.3);
    CHECK(slope > -0.8);
  }
}

// Over independent draws, f(x) is a centred process whose covariance is the NNGP (exactly
// at any width for depth <= 1, up to O(1/width) beyond). Each entry is judged against
// the Monte-Carlo standard error estimated from the same draws.
TEST_CASE("Mlp: the covariance of f over random draws is the analytic NNGP") {
  struct Case {
    Activation activation;
    int depth;
    Parameterization parameterization;
    std::optional<double> b_std;
    int width;
    int draws;
  };
  const Case cases[] = {
      {Activation::kRelu, 1, Parameterization::kNtk, 0.3, 16, 4000},
      {Activation::kGelu, 1, Parameterization::kStandard, {}, 32, 4000},
      {Activation::kErf, 2, Parameterization::kStandard, 0.2, 128, 1500},
  };
  const int d = 5;
  const RowMatrixXd X = uniform_points(4, d, 51, 1.5);
  const Eigen::Index m = X.rows();
  for (const Case& c : cases) {
    KernelSpec spec = net_spec(c.activation, c.depth, c.parameterization, c.b_std, c.width);
    spec.output = KernelOutput::kNngp;
    const Eigen::MatrixXd analytic = ntk::make_kernel(spec)->gram(X);
    Eigen::MatrixXd sum = Eigen::MatrixXd::Zero(m, m);
    Eigen::MatrixXd sum_sq = Eigen::MatrixXd::Zero(m, m);
    Eigen::VectorXd f(m);
    for (int s = 0; s < c.draws; ++s) {
      const Mlp net(spec, d, c.width, 5000 + static_cast<std::uint64_t>(s));
      for (Eigen::Index i = 0; i < m; ++i) f[i] = net.forward(X.row(i).transpose());
      const Eigen::MatrixXd products = f * f.transpose();
      sum += products;
      sum_sq += products.cwiseProduct(products);
    }
    const Eigen::MatrixXd covariance = sum / c.draws;
    double worst_z = 0.0;
    for (Eigen::Index i = 0; i < m; ++i) {
      for (Eigen::Index j = 0; j < m; ++j) {
        const double var = sum_sq(i, j) / c.draws - covariance(i, j) * covariance(i, j);
        const double standard_error = std::sqrt(var / c.draws);
        worst_z = std::max(worst_z, std::abs(covariance(i, j) - analytic(i, j)) / standard_error);
      }
    }
    const double err = max_scaled_error(covariance, analytic);
    MESSAGE(describe(spec, c.width)
            << ": " << c.draws << " draws, max relative error " << err << ", max |z| " << worst_z);
    CHECK(worst_z < 5.0);
    CHECK(err < 0.1);
  }
}
