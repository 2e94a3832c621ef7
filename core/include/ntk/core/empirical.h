// Mlp: a finite-width fully connected network and its empirical neural tangent kernel.
//
// WHAT THIS OBJECT REPRESENTS
//   One random draw of the network that a KernelSpec of type ntk describes in the
//   infinite-width limit (tests/golden/README.md; neural-tangents' stax.serial(Dense, Act, ...,
//   Dense)), at a finite hidden width n:
//
//     h_0 = x (size d),  layer l = 0..L with L = spec.depth:
//       z_l     = c_l W_l^T h_l + beta_l b_l        W_l is n_l x n_{l+1}, b_l has n_{l+1}
//       h_{l+1} = phi(z_l)                          (l < L)
//     f(x) = z_L, a scalar (readout width 1);  n_0 = d, n_1 = ... = n_L = n, n_{L+1} = 1.
//
//   parameterization ntk:      c_l = w_std / sqrt(n_l), beta_l = b_std, the trainable
//                              W_l and b_l are drawn i.i.d. N(0, 1);
//   parameterization standard: c_l = 1, beta_l = 1, W_l is drawn N(0, w_std^2 / n_l)
//                              and b_l N(0, b_std^2).
//   b_std = none: the layers have no bias parameter (the b_l terms are absent).
//   phi is relu, erf or gelu (exact x Phi(x)); relu'(0) is taken as 1/2, the value
//   jnp.maximum gives at a tie and the convention of the analytic kernels.
//
//   The empirical NTK is Theta(x, y) = J(x) . J(y) with J = df/dtheta over all weights
//   and biases (neural-tangents' empirical_ntk_fn). As n grows it converges to the
//   analytic NTK of make_kernel(spec) with output = ntk (for standard: with spec.width =
//   n, the analytic kernel itself growing like n), with fluctuations of relative size
//   O(1/sqrt(n)) (Jacot et al. 2018, "Neural Tangent Kernel: Convergence and
//   Generalization in Neural Networks"); over independent draws f(x) is a centred process
//   whose covariance converges to the NNGP (output = nngp; exactly equal to it at any
//   width when depth <= 1).
//
// PARAMETER LAYOUT
//   theta (parameters(), and the entries of a Jacobian) holds, for l = 0..L in order
//   (input layer first, readout last): W_l row-major, i.e. W_l(i, j) (from unit i of
//   h_l to unit j of z_l) at offset_l + i n_{l+1} + j; then b_l (n_{l+1} entries) when
//   spec.b_std has a value.
//
// RANDOM INITIALIZATION (platform-independent)
//   theta_k = scale_k N_k, k = 0, 1, ..., with scale_k = 1 (ntk), w_std / sqrt(n_l) or
//   b_std (standard), and N_0, N_1, ... standard normals from Marsaglia's polar method
//   on a std::mt19937_64 seeded with `seed` (whose output sequence the C++ standard fixes):
//   each draw r gives the integer point (k1, k2) = (r >> 32, r & 0xffffffff) - 2^31;
//   the point is rejected unless 0 < s = k1^2 + k2^2 < 2^62 (exact integer test);
//   otherwise it yields N = k1 2^-31 F then k2 2^-31 F with F = sqrt(-2 log(s') / s'),
//   s' = s 2^-62, where log(s') is std::log(s') for s' <= 1/2 and otherwise
//   std::log1p(-(2^62 - s) 2^-62) (from the exact integer 2^62 - s, so that small
//   results keep their relative accuracy). Every other step is exactly specified integer
//   or IEEE arithmetic: the parameters are bit-identical for a given C library and agree
//   across platforms to within the accuracy of its log and log1p (about an ulp).
//   std::normal_distribution is not used: its algorithm differs between libraries.
//
// INITIAL VALUE: parameters drawn from `seed` as above.
//
// THREAD SAFETY
//   const methods may be called concurrently (each call allocates its own workspace);
//   set_parameters() needs exclusive access.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <vector>

#include "ntk/core/kernel.h"
#include "ntk/core/kernel_spec.h"

namespace ntk {

class Mlp {
 public:
  // requires: spec.type == kNtk and spec.validate() passes; input_dim >= 1; width >= 1
  //           (the hidden width n, unused when depth == 0); for the standard
  //           parameterization spec.width == width (the analytic kernel of that spec is then
  //           this net's limit); the parameter count fits in Eigen::Index.
  //           std::invalid_argument naming the field and its value otherwise.
  //           spec.output and, for the ntk parameterization, spec.width are not used.
  // ensures:  parameters() holds the draw from `seed` described above.
  Mlp(const KernelSpec& spec, int input_dim, int width, std::uint64_t seed);

  const KernelSpec& spec() const { return spec_; }
  int input_dim() const { return input_dim_; }
  int width() const { return width_; }
  int depth() const { return spec_.depth; }

  // Number of trainable weights and biases:
  // sum_l n_l n_{l+1} (+ n_{l+1} per layer with a bias).
  Eigen::Index parameter_count() const { return theta_.size(); }

  // The trainable parameters theta in the layout above.
  const Eigen::VectorXd& parameters() const { return theta_; }

  // requires: theta.size() == parameter_count(), all entries finite
  //           (std::invalid_argument otherwise; nothing changes then).
  // ensures:  #parameters() == theta.
  void set_parameters(Eigen::Ref<const Eigen::VectorXd> theta);

  // requires: x.size() == input_dim(), all entries finite (std::invalid_argument).
  // ensures:  returns f(x).
  double forward(Eigen::Ref<const Eigen::VectorXd> x) const;

  // Exact gradient by back-propagation: one forward pass storing h_l and phi'(z_l), one
  // backward pass g_L = 1, g_{l-1} = phi'(z_{l-1}) .* (c_l W_l g_l); then
  // df/dW_l = c_l h_l g_l^T and df/db_l = beta_l g_l.
  // requires: x as for forward(); J.size() == parameter_count() (std::invalid_argument).
  // ensures:  J = df(x)/dtheta in the layout of parameters(); returns f(x).
  double jacobian(Eigen::Ref<const Eigen::VectorXd> x, Eigen::Ref<Eigen::VectorXd> J) const;

  // requires: x and y as for forward().
  // ensures:  returns J(x) . J(y), computed without forming J: the weight block of layer l
  //           contributes c_l^2 (h_l(x) . h_l(y)) (g_l(x) . g_l(y)) and its bias
  //           beta_l^2 g_l(x) . g_l(y), so the cost is that of two forward/backward
  //           passes plus O(depth n).
  double empirical_ntk(Eigen::Ref<const Eigen::VectorXd> x,
                       Eigen::Ref<const Eigen::VectorXd> y) const;

  // requires: X is M x input_dim() (points as rows), all entries finite
  //           (std::invalid_argument).
  // ensures:  returns the M x M Gram matrix K(i, j) = J(X_i) . J(X_j) = J J^T where J is
  //           the M x parameter_count() matrix of the Jacobians, evaluated in the factored
  //           form of empirical_ntk() (O(M depth n) memory instead of O(M n^2 depth)).
  //           K is exactly symmetric and positive semi-definite up to rounding.
  Eigen::MatrixXd empirical_ntk_gram(const Eigen::Ref<const RowMatrixXd>& X) const;

 private:
  // Per-point record of one forward/backward pass: h[l] = h_l and g[l] = df/dz_l,
  // l = 0..depth. Scratch, not state.
  struct Trace;
  double propagate(Eigen::Ref<const Eigen::VectorXd> x, Trace& trace) const;
  void check_point(Eigen::Ref<const Eigen::VectorXd> x, const char* what) const;

  KernelSpec spec_;
  int input_dim_;
  int width_;
  // Per layer l = 0..depth: fan-in n_l, fan-out n_{l+1}, the offsets of W_l and b_l in
  // theta_, and the multipliers c_l and beta_l of the parameterization.
  struct Layer {
    Eigen::Index n_in;
    Eigen::Index n_out;
    Eigen::Index w_offset;
    Eigen::Index b_offset;  // == w_offset + n_in * n_out; unused without bias
    double weight_mult;     // c_l
    double bias_mult;       // beta_l
  };
  std::vector<Layer> layers_;
  bool has_bias_;
  Eigen::VectorXd theta_;
};

}  // namespace ntk
