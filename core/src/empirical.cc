// Mlp: finite-width fully connected network, its Jacobian by back-propagation and its
// empirical NTK. The conventions (layout, parameterizations, initialization) are stated
// in ntk/core/empirical.h; this file implements them.
//
// CONVENTION
//   layers_.size() == depth + 1; layers_[l] maps n_l = layers_[l].n_in units to
//   n_{l+1} = layers_[l].n_out units with n_0 = input_dim_, n_1..n_depth = width_ and
//   n_{depth+1} = 1; the blocks W_0, [b_0], W_1, [b_1], ... tile theta_ in order without
//   gaps, and theta_.size() is their total size.
#include "ntk/core/empirical.h"

#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace ntk {

namespace {

// Standard normals by Marsaglia's polar method on integer coordinates, so that the
// acceptance test is exact integer arithmetic (see "RANDOM INITIALIZATION" in the header).
// Values are produced in pairs: the first from k1, then the second from k2. The scalings
// by powers of two are exact.
class PolarNormal {
 public:
  explicit PolarNormal(std::uint64_t seed) : engine_(seed) {}

  // ensures: out[k] = scale N_k for the next out.size() normals of the stream.
  void fill(double scale, Eigen::Ref<Eigen::VectorXd> out) {
    const Eigen::Index n = out.size();
    Eigen::Index k = 0;
    if (k < n && has_spare_) {
      out[k++] = scale * spare_;
      has_spare_ = false;
    }
    double first = 0.0;
    double second = 0.0;
    for (; k + 1 < n; k += 2) {
      next_pair(first, second);
      out[k] = scale * first;
      out[k + 1] = scale * second;
    }
    if (k < n) {
      next_pair(first, second);
      out[k] = scale * first;
      spare_ = second;
      has_spare_ = true;
    }
  }

 private:
  void next_pair(double& first, double& second) {
    constexpr std::int64_t kHalf = std::int64_t{1} << 31;
    constexpr std::uint64_t kRadius2 = std::uint64_t{1} << 62;  // (2^31)^2
    constexpr double kTwoToMinus31 = 0x1p-31;
    constexpr double kTwoToMinus62 = 0x1p-62;
    for (;;) {
      const std::uint64_t r = engine_();
      const std::int64_t k1 = static_cast<std::int64_t>(r >> 32) - kHalf;
      const std::int64_t k2 = static_cast<std::int64_t>(r & 0xffffffffU) - kHalf;
      // |k| <= 2^31, so each square is <= 2^62 and the sum <= 2^63: exact in uint64.
      const std::uint64_t s =
          static_cast<std::uint64_t>(k1 * k1) + static_cast<std::uint64_t>(k2 * k2);
      if (s == 0 || s >= kRadius2) continue;
      // log(s / 2^62); near s = 2^62, where log(s') would lose the relative accuracy of its
      // small result, log1p(-(2^62 - s) / 2^62) with the argument formed exactly in integers.
      const double s_unit = static_cast<double>(s) * kTwoToMinus62;
      const double log_s = s_unit <= 0.5
                               ? std::log(s_unit)
                               : std::log1p(-static_cast<double>(kRadius2 - s) * kTwoToMinus62);
      const double factor = std::sqrt(-2.0 * log_s / s_unit);
      first = static_cast<double>(k1) * kTwoToMinus31 * factor;
      second = static_cast<double>(k2) * kTwoToMinus31 * factor;
      return;
    }
  }

  std::mt19937_64 engine_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

std::string format_double(double v) {
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument(message); }

// phi and phi' of a layer, element-wise: on entry h holds z; on exit h = phi(z) and
// dphi = phi'(z).
void activate(Activation activation, Eigen::Ref<Eigen::VectorXd> h,
              Eigen::Ref<Eigen::VectorXd> dphi) {
  constexpr double kTwoOverSqrtPi = 1.1283791670955126;  // 2 / sqrt(pi)
  constexpr double kInvSqrt2 = 0.70710678118654752;      // 1 / sqrt(2)
  constexpr double kInvSqrt2Pi = 0.39894228040143268;    // 1 / sqrt(2 pi)
  const Eigen::Index n = h.size();
  switch (activation) {
    case Activation::kRelu:
      // relu'(0) = 1/2: jnp.maximum's tie value and the analytic kernels' convention.
      for (Eigen::Index i = 0; i < n; ++i) {
        const double z = h[i];
        h[i] = z > 0.0 ? z : 0.0;
        dphi[i] = z > 0.0 ? 1.0 : (z < 0.0 ? 0.0 : 0.5);
      }
      return;
    case Activation::kErf:
      for (Eigen::Index i = 0; i < n; ++i) {
        const double z = h[i];
        h[i] = std::erf(z);
        dphi[i] = kTwoOverSqrtPi * std::exp(-z * z);
      }
      return;
    case Activation::kGelu:
      // gelu(z) = z Phi(z), gelu'(z) = Phi(z) + z phi(z); Phi by erfc, accurate for z < 0.
      for (Eigen::Index i = 0; i < n; ++i) {
        const double z = h[i];
        const double cdf = 0.5 * std::erfc(-z * kInvSqrt2);
        const double pdf = kInvSqrt2Pi * std::exp(-0.5 * z * z);
        h[i] = z * cdf;
        dphi[i] = cdf + z * pdf;
      }
      return;
  }
  fail("Mlp: unknown activation " + std::to_string(static_cast<int>(activation)));
}

}  // namespace

struct Mlp::Trace {
  std::vector<Eigen::VectorXd> h;  // h[l] = h_l, n_l entries
  std::vector<Eigen::VectorXd> g;  // g[l] = df/dz_l, n_{l+1} entries
  Eigen::VectorXd back;            // W_l g_l during the backward pass (max n_l entries)
};

Mlp::Mlp(const KernelSpec& spec, int input_dim, int width, std::uint64_t seed)
    : spec_(spec), input_dim_(input_dim), width_(width), has_bias_(spec.b_std.has_value()) {
  if (spec.type != KernelType::kNtk) {
    fail("Mlp: spec.type must be ntk, got " + std::string(to_string(spec.type)));
  }
  spec.validate();
  if (input_dim < 1) fail("Mlp: input_dim must be >= 1, got " + std::to_string(input_dim));
  if (width < 1) fail("Mlp: width must be >= 1, got " + std::to_string(width));
  const bool standard = spec.parameterization == Parameterization::kStandard;
  if (standard && *spec.width != width) {
    fail("Mlp: spec.width = " + std::to_string(*spec.width) + " differs from the hidden width = " +
         std::to_string(width) + " (standard parameterization)");
  }

  // Layer shapes and offsets, with an overflow-checked parameter count. Each block is at
  // most 2^31 x 2^31 entries, so only the running sum can overflow (and does so within a
  // few layers for absurd sizes, before much is stored).
  constexpr Eigen::Index kMaxIndex = std::numeric_limits<Eigen::Index>::max();
  Eigen::Index count = 0;
  for (int l = 0; l <= spec.depth; ++l) {
    Layer layer{};
    layer.n_in = l == 0 ? input_dim : width;
    layer.n_out = l == spec.depth ? 1 : width;
    const Eigen::Index block = layer.n_in * layer.n_out + (has_bias_ ? layer.n_out : 0);
    if (count > kMaxIndex - block) {
      fail("Mlp: the parameter count of depth = " + std::to_string(spec.depth) +
           ", width = " + std::to_string(width) + " overflows Eigen::Index");
    }
    layer.w_offset = count;
    layer.b_offset = count + layer.n_in * layer.n_out;
    count += block;
    const double fan_in_scale = spec.w_std / std::sqrt(static_cast<double>(layer.n_in));
    layer.weight_mult = standard ? 1.0 : fan_in_scale;
    layer.bias_mult = standard ? 1.0 : spec.b_std.value_or(0.0);
    layers_.push_back(layer);
  }

  // theta_k = scale_k N_k in layout order: ntk draws the trainable N(0, 1) parameters,
  // standard draws W_l ~ N(0, w_std^2 / n_l) and b_l ~ N(0, b_std^2).
  theta_.resize(count);
  PolarNormal normal(seed);
  for (const Layer& layer : layers_) {
    const double w_scale = standard ? spec.w_std / std::sqrt(static_cast<double>(layer.n_in)) : 1.0;
    normal.fill(w_scale, theta_.segment(layer.w_offset, layer.n_in * layer.n_out));
    if (has_bias_) {
      normal.fill(standard ? *spec.b_std : 1.0, theta_.segment(layer.b_offset, layer.n_out));
    }
  }
}

void Mlp::set_parameters(Eigen::Ref<const Eigen::VectorXd> theta) {
  if (theta.size() != theta_.size()) {
    fail("Mlp::set_parameters: theta has size " + std::to_string(theta.size()) +
         ", expected parameter_count() = " + std::to_string(theta_.size()));
  }
  for (Eigen::Index k = 0; k < theta.size(); ++k) {
    if (!std::isfinite(theta[k])) {
      fail("Mlp::set_parameters: theta(" + std::to_string(k) + ") = " + format_double(theta[k]) +
           " is not finite");
    }
  }
  theta_ = theta;
}

void Mlp::check_point(Eigen::Ref<const Eigen::VectorXd> x, const char* what) const {
  if (x.size() != input_dim_) {
    fail(std::string(what) + " has size " + std::to_string(x.size()) + ", expected input_dim " +
         std::to_string(input_dim_));
  }
  for (Eigen::Index i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i])) {
      fail(std::string(what) + "(" + std::to_string(i) + ") = " + format_double(x[i]) +
           " is not finite");
    }
  }
}

// One forward pass storing h_l and phi'(z_l), then the backward pass
//   g_L = 1,  g_{l-1} = phi'(z_{l-1}) .* (c_l W_l g_l)   (l = L..1).
// requires: x checked. ensures: trace holds h_0..h_L and g_0..g_L; returns f(x).
double Mlp::propagate(Eigen::Ref<const Eigen::VectorXd> x, Trace& trace) const {
  using ConstWeights = Eigen::Map<const RowMatrixXd>;
  const std::size_t depth = layers_.size() - 1;
  trace.h.resize(depth + 1);
  trace.g.resize(depth + 1);
  trace.h[0] = x;

  // Forward: z_l = c_l W_l^T h_l + beta_l b_l; hidden layers keep h_{l+1} = phi(z_l) and
  // phi'(z_l) (in g[l], completed by the backward pass).
  double f = 0.0;
  for (std::size_t l = 0; l <= depth; ++l) {
    const Layer& layer = layers_[l];
    const ConstWeights W(theta_.data() + layer.w_offset, layer.n_in, layer.n_out);
    Eigen::VectorXd z(layer.n_out);
    z.noalias() = W.transpose() * trace.h[l];
    z *= layer.weight_mult;
    if (has_bias_) z += layer.bias_mult * theta_.segment(layer.b_offset, layer.n_out);
    if (l == depth) {
      f = z[0];
      trace.g[l].setOnes(1);
    } else {
      trace.g[l].resize(layer.n_out);
      activate(spec_.activation, z, trace.g[l]);
      trace.h[l + 1] = std::move(z);
    }
  }

  // Backward.
  for (std::size_t l = depth; l >= 1; --l) {
    const Layer& layer = layers_[l];
    const ConstWeights W(theta_.data() + layer.w_offset, layer.n_in, layer.n_out);
    trace.back.resize(layer.n_in);
    trace.back.noalias() = W * trace.g[l];
    trace.g[l - 1].array() *= layer.weight_mult * trace.back.array();
  }
  return f;
}

double Mlp::forward(Eigen::Ref<const Eigen::VectorXd> x) const {
  check_point(x, "Mlp::forward: x");
  Trace trace;
  return propagate(x, trace);
}

double Mlp::jacobian(Eigen::Ref<const Eigen::VectorXd> x, Eigen::Ref<Eigen::VectorXd> J) const {
  check_point(x, "Mlp::jacobian: x");
  if (J.size() != theta_.size()) {
    fail("Mlp::jacobian: J has size " + std::to_string(J.size()) +
         ", expected parameter_count() = " + std::to_string(theta_.size()));
  }
  Trace trace;
  const double f = propagate(x, trace);
  // df/dW_l = c_l h_l g_l^T (row-major block), df/db_l = beta_l g_l.
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    Eigen::Map<RowMatrixXd> dW(J.data() + layer.w_offset, layer.n_in, layer.n_out);
    dW.noalias() = layer.weight_mult * trace.h[l] * trace.g[l].transpose();
    if (has_bias_) J.segment(layer.b_offset, layer.n_out) = layer.bias_mult * trace.g[l];
  }
  return f;
}

double Mlp::empirical_ntk(Eigen::Ref<const Eigen::VectorXd> x,
                          Eigen::Ref<const Eigen::VectorXd> y) const {
  check_point(x, "Mlp::empirical_ntk: x");
  check_point(y, "Mlp::empirical_ntk: y");
  Trace tx;
  Trace ty;
  propagate(x, tx);
  propagate(y, ty);
  // J(x).J(y) block by block: <c h g^T, c h' g'^T>_F = c^2 (h.h')(g.g'), <b g, b g'>.
  double theta = 0.0;
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    const double gg = tx.g[l].dot(ty.g[l]);
    theta += layer.weight_mult * layer.weight_mult * tx.h[l].dot(ty.h[l]) * gg;
    if (has_bias_) theta += layer.bias_mult * layer.bias_mult * gg;
  }
  return theta;
}

Eigen::MatrixXd Mlp::empirical_ntk_gram(const Eigen::Ref<const RowMatrixXd>& X) const {
  if (X.cols() != input_dim_) {
    fail("Mlp::empirical_ntk_gram: X has " + std::to_string(X.cols()) +
         " columns, expected input_dim " + std::to_string(input_dim_));
  }
  const Eigen::Index m = X.rows();
  // Checked here rather than by check_point(), whose message would name the column only.
  for (Eigen::Index i = 0; i < m; ++i) {
    for (Eigen::Index j = 0; j < X.cols(); ++j) {
      if (!std::isfinite(X(i, j))) {
        fail("Mlp::empirical_ntk_gram: X(" + std::to_string(i) + ", " + std::to_string(j) +
             ") = " + format_double(X(i, j)) + " is not finite");
      }
    }
  }

  // H_l (M x n_l) and G_l (M x n_{l+1}) stack the traces of the M points; then
  //   K = sum_l c_l^2 (H_l H_l^T) .* (G_l G_l^T) + beta_l^2 G_l G_l^T,
  // which is J J^T with the Jacobian blocks never formed.
  std::vector<RowMatrixXd> H(layers_.size());
  std::vector<RowMatrixXd> G(layers_.size());
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    H[l].resize(m, layers_[l].n_in);
    G[l].resize(m, layers_[l].n_out);
  }
  Trace trace;
  for (Eigen::Index i = 0; i < m; ++i) {
    propagate(X.row(i).transpose(), trace);
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      H[l].row(i) = trace.h[l].transpose();
      G[l].row(i) = trace.g[l].transpose();
    }
  }
  Eigen::MatrixXd K = Eigen::MatrixXd::Zero(m, m);
  Eigen::MatrixXd hh(m, m);
  Eigen::MatrixXd gg(m, m);
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    hh.noalias() = H[l] * H[l].transpose();
    gg.noalias() = G[l] * G[l].transpose();
    K.array() += (layer.weight_mult * layer.weight_mult) * hh.array() * gg.array();
    if (has_bias_) K += (layer.bias_mult * layer.bias_mult) * gg;
  }
  // Exact symmetry: the upper triangle mirrors the lower one.
  for (Eigen::Index j = 1; j < m; ++j) {
    for (Eigen::Index i = 0; i < j; ++i) K(i, j) = K(j, i);
  }
  return K;
}

}  // namespace ntk
