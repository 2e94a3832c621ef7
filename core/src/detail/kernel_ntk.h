// NtkKernel: the infinite-width NTK / NNGP of a fully connected network (internal).
//
// WHAT THIS OBJECT REPRESENTS
//   The kernel of stax.serial(Dense, Act, ..., Dense) in the conventions of
//   tests/golden/README.md (Google's neural-tangents): depth L hidden layers, L + 1 Dense
//   layers indexed k = 0..L (input layer first, readout last), input kernel x.x'/d.
//   Per layer (s_k = w_std[k], beta_k = b_std[k], 0 when the layer has no bias):
//     Sigma_1 = s_0^2 x.x'/d + beta_0^2,  Sigma_{k+1} = s_k^2 Shat_k + beta_k^2,
//     ntk:      Theta_1 = Sigma_1,  Theta_{k+1} = Sigma_{k+1} + s_k^2 Sdot_k Theta_k,
//     standard: Theta_1 = x.x' + [bias_0],
//               Theta_{k+1} = width[k-1] Shat_k + s_k^2 Sdot_k Theta_k + [bias_k],
//   with Shat = E[phi(u) phi(v)], Sdot = E[phi'(u) phi'(v)] (relu, erf, gelu) and
//   [bias_k] = 1 when layer k has a bias parameter (b_std[k] has a value, 0 included).
//   NtkParams carries the per-layer values: KernelSpec's scalars are the uniform case,
//   and the golden cases with per-layer lists use NtkParams directly.
//
// TWO INDEPENDENT CODE PATHS
//   operator()(x, y): the README's stable formulation literally, one pair at a time,
//     carrying sqrt(det) of each 2x2 layer covariance (std::atan2, std::sin, std::cos;
//     series for sin t - t cos t at small angles).
//   prepare() + row(): the same recursion in normalized form, vectorized over the M
//     stored points (see kernel_ntk.cc): per pair only the correlation rho = q12 /
//     sqrt(q11 q22) and the normalized determinant sigma^2 = det / (q11 q22) are carried,
//     both built from non-negative terms so that no nearly equal numbers are subtracted;
//     everything per point (sqrt(q_k(x, x)), the signal and bias fractions of q_k(x, x),
//     Theta(x, x)) comes from the caches.
//   Both are accurate to about 1e-15 relative to sqrt(k(x, x) k(y, y)) (GELU: 1e-11) and
//   agree with each other to that accuracy; the tests check both against the golden values
//   and a 113-bit oracle. Exception: GELU of depth >= 2 at huge norms (~1e150). There
//   GELU acts like relu on huge pre-activations, but the post-activation correlation c is
//   carried with 1 - c formed by subtraction (valid for erf and for GELU at moderate
//   norms, where the terms >= 1 in D and Delta^2 absorb it), so both paths lose accuracy
//   like eps sqrt(q): about 2e-8 relative at norms 1e150 (test_kernel_properties bounds it
//   by 5e-8).
//
// THREAD SAFETY: immutable after construction.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "ntk/core/kernel.h"

namespace ntk::detail {

struct NtkParams {
  Activation activation = Activation::kRelu;
  Parameterization parameterization = Parameterization::kNtk;
  KernelOutput output = KernelOutput::kNtk;
  int depth = 0;
  std::vector<double> w_std;                 // depth + 1 values, input layer first
  std::vector<std::optional<double>> b_std;  // depth + 1 values; nullopt: no bias parameter
  std::vector<double> width;                 // depth hidden widths (standard only)

  // The uniform network a validated KernelSpec of type ntk describes.
  static NtkParams from_spec(const KernelSpec& spec);
  // Throws std::invalid_argument naming the offending field, layer and value.
  void validate() const;
  // A KernelSpec summarizing the params: exact when every layer has the same w_std and
  // b_std and every hidden layer the same width; otherwise it reports layer 0's values.
  KernelSpec summary() const;
};

// Per Dense layer constants, derived once from NtkParams.
struct NtkLayer {
  double s = 0.0;               // w_std
  double s2 = 0.0;              // w_std^2
  double beta = 0.0;            // b_std, 0 when the layer has no bias parameter
  double bias_ntk = 0.0;        // [bias_k] of the standard-parameterization NTK: 1 or 0
  double width_in = 0.0;        // width of the hidden layer feeding the layer (k >= 1)
  bool may_degenerate = false;  // beta == 0: q_k(x, x) = 0 is possible
};

class NtkKernel final : public Kernel {
 public:
  // requires: spec.type == kNtk and spec.validate() does not throw (checked;
  // std::invalid_argument). ensures: spec() == spec.
  explicit NtkKernel(const KernelSpec& spec);
  // requires: params.validate() does not throw (checked). ensures: spec() ==
  // params.summary().
  explicit NtkKernel(NtkParams params);

  const NtkParams& params() const { return p_; }
  const std::vector<NtkLayer>& layers() const { return layers_; }

  Eigen::Index cache_size() const override { return cache_size_; }
  // row() works in place in `out`: no scratch columns.
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

  // Cache layout (columns of the M x cache_size() cache matrix).
  // Per point: |x|, 1/|x| (0 for x = 0), k(x, x); then per Dense layer k = 0..depth a
  // block of kDenseCols at dense_col(k): sqrt(q_k(x, x)), a_k = sqrt(signal_k / q_k),
  // b_k = beta_k / sqrt(q_k) (a_k^2 + b_k^2 = 1; both 0 when q_k = 0), z_k = 1 when
  // q_k(x, x) = 0 else 0; then, for erf and gelu, per hidden layer l = 0..depth-1 a
  // block of kActCols at act_col(l) with the activation's per-point quantities
  // (erf: sqrt(e), f, sqrt(f), sqrt(V), 1/sqrt(V) with e = 2q/(1+2q), f = 1/(1+2q);
  //  gelu: sqrt(k), g, k, sqrt(V), 1/sqrt(V) with k = q/(1+q), g = 1/(1+q);
  //  V = Shat(x, x), 1/sqrt(V) = 0 when V = 0).
  static constexpr Eigen::Index kColNorm = 0;
  static constexpr Eigen::Index kColInvNorm = 1;
  static constexpr Eigen::Index kColSelf = 2;
  static constexpr Eigen::Index kDenseCols = 4;
  static constexpr Eigen::Index kActCols = 5;
  Eigen::Index dense_col(int k) const { return 3 + kDenseCols * k; }
  Eigen::Index act_col(int l) const { return 3 + kDenseCols * (p_.depth + 1) + kActCols * l; }

 private:
  NtkKernel(KernelSpec spec, const NtkParams& params);

  NtkParams p_;
  std::vector<NtkLayer> layers_;
  Eigen::Index cache_size_ = 0;
};

std::shared_ptr<const Kernel> make_ntk_kernel(NtkParams params);

}  // namespace ntk::detail
