// NTK / NNGP of fully connected networks: see detail/kernel_ntk.h for what is computed.
//
// NOTATION (tests/golden/README.md). For one pair (x, y) at a pre-activation layer:
// q11 = Sigma(x, x), q22 = Sigma(y, y), q12 = Sigma(x, y), det = q11 q22 - q12^2.
//
// SCALAR PATH (operator()): the README's stable formulation, carrying sqrt(det):
//   input:  sqrt(det_1) = hypot(a |x||y| sin t_xy, sqrt(a) beta |x - y|), a = s^2/d,
//           sin t_xy = |u - v| |u + v| / 2 with u = x/|x|, v = y/|y|;
//   relu:   t = atan2(sqrt(det), q12), c = J(t)/pi, 1 - c from the series of
//           sin t - t cos t for t < 0.5, sqrt(det^) = r1 r2 sqrt((1-c)(1+c)),
//           e^ = (r1 - r2)^2 + 2 r1 r2 (1 - c);  next: det' = s^4 det^ + s^2 beta^2 e^;
//   erf:    D = 1 + 2q11 + 2q22 + 4det;  gelu: Delta^2 = 1 + q11 + q22 + det;
//   after erf/gelu the post-activation covariances are bounded or enter the next
//   layer's D / Delta^2 only next to terms >= 1, so det' is formed directly.
//
// ROW PATH (prepare + row): the same recursion in normalized variables. Write
//   q_k(x, x) = h + beta^2 with h the signal part, a = sqrt(h / q), b = beta / sqrt(q)
//   (cached per point, a^2 + b^2 = 1). If the layer's inputs have correlation c (with
//   1 - c and 1 - c^2 known without cancellation), the layer's pre-activations have
//     rho     = q12 / sqrt(q11 q22)    = a1 a2 c + b1 b2,
//     sigma^2 = det / (q11 q22)        = a1^2 a2^2 (1 - c^2) + (a1 b2 - a2 b1)^2
//                                        + 2 a1 a2 b1 b2 (1 - c),
//   a sum of non-negative terms (rho^2 + sigma^2 = 1 exactly in real arithmetic). This is
//   the README's det' = s^4 det^ + s^2 beta^2 e^ divided by q11 q22; it never overflows.
//   Input layer: c = x.y / (|x||y|) from the GEMV, 1 - c and 1 - c^2 from it directly
//   unless 1 - c^2 is below the GEMV's rounding bound, or a norm is outside
//   [1e-140, 1e140], in which case they come from |u - v|^2 and |u + v|^2 (O(d) for that
//   point only; near-duplicate points are rare).
//   relu: sigma = sqrt(sigma^2), the angle from the half-angle tangent
//     t = sigma / (1 + |rho|) in [0, 1] (simd::atan_unit_ratio: one division and a
//     polynomial, branch-free, within 2 ulp), 1 - rho = sigma t for rho >= 0, and
//     1 - c = (1 - rho) - (sigma - theta rho) / pi. The latter difference loses relative
//     accuracy eps/theta for small theta, which perturbs the next angle by only ~eps
//     absolutely (sigma' ~ theta), so no series is needed here.
//   erf:  xi = sqrt(e1 e2) rho, D / ((1+2q11)(1+2q22)) = f1 + e1 (f2 + e2 sigma^2).
//   gelu: Delta^2 / ((1+q11)(1+q22)) = g1 + k1 (g2 + k2 sigma^2), alpha =
//     atan2(rho sqrt(k1 k2), Delta~), and the README's Shat, Sdot divided through.
//   Loop structure (ntk_chunk): the points go in chunks of row_loop.h's kChunkPackets
//   packets, and a chunk goes layer by layer, its state (rho, sigma^2, sqrt(q11 q22),
//   Theta) in small arrays over the chunk: each layer is then a loop of independent packet
//   iterations, whose long dependency chains (sqrt, division, polynomial) the CPU
//   overlaps; x's per-layer cache values are broadcast once per chunk and layer, the
//   per-layer bodies are forced inline, and the exact input path is checked once per
//   chunk. Per packet and layer, relu costs one sqrt, one division and ~90 other packet
//   operations (BENCHMARKS.md, "Kernels", for what bounds it).
#include "detail/kernel_ntk.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <numbers>
#include <stdexcept>
#include <string>

#include "detail/kernel_common.h"
#include "detail/row_loop.h"
#include "detail/simd.h"

namespace ntk::detail {

namespace {

using Eigen::Index;
using simd::Packet;

constexpr double kPi = std::numbers::pi;
constexpr double kTwoPi = 2.0 * std::numbers::pi;
constexpr double kInvPi = std::numbers::inv_pi;
constexpr double kInvTwoPi = 0.5 * std::numbers::inv_pi;

// Norms inside [kSafeNormLo, kSafeNormHi] keep x.y accurate in the GEMV (no overflow,
// underflow far below the rounding error); other points take the exact input path.
constexpr double kSafeNormLo = 1e-140;
constexpr double kSafeNormHi = 1e140;

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

[[noreturn]] void invalid(const std::string& what) {
  throw std::invalid_argument("ntk kernel: " + what);
}

// |f(0..n-1)|_2 without overflow or underflow (two passes, scaled by the largest entry).
template <typename F>
double stable_norm(Index n, const F& f) {
  double m = 0.0;
  for (Index i = 0; i < n; ++i) m = std::max(m, std::abs(f(i)));
  if (m == 0.0 || !std::isfinite(m)) return m;
  double s = 0.0;
  for (Index i = 0; i < n; ++i) {
    const double t = f(i) / m;
    s += t * t;
  }
  return m * std::sqrt(s);
}

// ---------------------------------------------------------------------------------------
// Scalar path.

// Pre-activation covariance of one pair; sdet = sqrt(q11 q22 - q12^2) >= 0.
struct Cov {
  double q11, q22, q12, sdet;
};

// Post-activation moments of one pair, and what the next Dense layer needs for its det.
struct Moments {
  double shat11, shat22, shat12;  // E[phi(u)^2], E[phi(v)^2], E[phi(u) phi(v)]
  double sdot;                    // E[phi'(u) phi'(v)]
  bool stable_det;                // relu: det' from sdet_hat and sqrt_ehat below
  double sdet_hat = 0.0;          // sqrt(det of the post-activation covariance)
  double sqrt_ehat = 0.0;         // sqrt(E[(phi(u) - phi(v))^2])
};

// sin t - t cos t = sum_{k>=1} (-1)^(k+1) 2k t^(2k+1) / (2k+1)!, for 0 <= t < 0.5
// (terms through t^23: the next is below 1e-20 of the first).
double sin_minus_t_cos_series(double t) {
  const double t2 = t * t;
  double term = t;  // t^(2k+1) / (2k+1)! for k = 0
  double sum = 0.0;
  double sign = 1.0;
  for (int k = 1; k <= 11; ++k) {
    term *= t2 / ((2.0 * k) * (2.0 * k + 1.0));
    sum += sign * (2.0 * k) * term;
    sign = -sign;
  }
  return sum;
}

Moments relu_moments(const Cov& v) {
  // NT's degenerate convention: det = 0 and q12 = 0 (a zero-variance input) -> pi/2.
  const double t = (v.sdet == 0.0 && v.q12 == 0.0) ? kPi / 2 : std::atan2(v.sdet, v.q12);
  const double pmt = kPi - t;
  Moments m;
  m.shat11 = v.q11 / 2;
  m.shat22 = v.q22 / 2;
  m.shat12 = (v.sdet + pmt * v.q12) / kTwoPi;
  m.sdot = pmt / kTwoPi;
  // c = J(t)/pi, the correlation of the post-activation features, and 1 - c without
  // cancellation: 1 - c = [2 pi sin^2(t/2) - (sin t - t cos t)] / pi.
  const double sn = std::sin(t);
  const double cs = std::cos(t);
  const double smtc = t < 0.5 ? sin_minus_t_cos_series(t) : sn - t * cs;
  const double sh = std::sin(t / 2);
  const double omc = std::clamp((kTwoPi * sh * sh - smtc) / kPi, 0.0, 1.0);
  const double c = std::clamp((sn + pmt * cs) / kPi, 0.0, 1.0);
  const double r1 = std::sqrt(m.shat11);
  const double r2 = std::sqrt(m.shat22);
  m.stable_det = true;
  m.sdet_hat = r1 * r2 * std::sqrt(omc * (1.0 + c));
  m.sqrt_ehat = std::hypot(r1 - r2, std::sqrt(2.0 * r1 * r2 * omc));
  return m;
}

Moments erf_moments(const Cov& v) {
  // D = (1 + 2q11)(1 + 2q22) - 4 q12^2 = 1 + 2q11 + 2q22 + 4 det.
  const double sd = std::hypot(std::sqrt(1.0 + 2.0 * v.q11 + 2.0 * v.q22), 2.0 * v.sdet);
  Moments m;
  m.shat12 = 2.0 * kInvPi * std::atan2(2.0 * v.q12, sd);
  m.shat11 = 2.0 * kInvPi * std::atan2(2.0 * v.q11, std::sqrt(1.0 + 4.0 * v.q11));
  m.shat22 = 2.0 * kInvPi * std::atan2(2.0 * v.q22, std::sqrt(1.0 + 4.0 * v.q22));
  m.sdot = 4.0 * kInvPi / sd;
  m.stable_det = false;
  return m;
}

// GELU (x Phi(x)) moments of a 2x2 covariance, the README's formulas with the products
// P = q11 q22 and P+ = (1 + q11)(1 + q22) divided out so that nothing overflows.
void gelu_pair(double q11, double q22, double q12, double sdet, double* shat, double* sdot) {
  const double delta = std::hypot(std::sqrt(1.0 + q11 + q22), sdet);  // Delta
  const double alpha = std::atan2(q12, delta);
  const double g1 = 1.0 / (1.0 + q11);
  const double g2 = 1.0 / (1.0 + q22);
  const double k1 = q11 * g1;
  const double k2 = q22 * g2;
  // (q12^2 + P Delta^2) / (P+ Delta)
  const double frac = (q12 * g1) * (q12 * g2) / delta + k1 * k2 * delta;
  *shat = q12 / 4 + (frac + q12 * alpha) / kTwoPi;
  // (2 + q11 + q22) / P+ = g1 + g2
  *sdot = 0.25 + alpha / kTwoPi + (q12 / delta) / kTwoPi * (1.0 / (delta * delta) + g1 + g2);
}

Moments gelu_moments(const Cov& v) {
  Moments m;
  gelu_pair(v.q11, v.q22, v.q12, v.sdet, &m.shat12, &m.sdot);
  double unused = 0.0;
  gelu_pair(v.q11, v.q11, v.q11, 0.0, &m.shat11, &unused);
  gelu_pair(v.q22, v.q22, v.q22, 0.0, &m.shat22, &unused);
  m.stable_det = false;
  return m;
}

Moments moments(Activation act, const Cov& v) {
  switch (act) {
    case Activation::kRelu:
      return relu_moments(v);
    case Activation::kErf:
      return erf_moments(v);
    case Activation::kGelu:
      return gelu_moments(v);
  }
  return relu_moments(v);
}

// The Dense layer after an activation: Sigma' = s^2 Shat + beta^2, with its sqrt(det).
Cov dense_after(const NtkLayer& layer, const Moments& m) {
  const double b2 = layer.beta * layer.beta;
  Cov c{layer.s2 * m.shat11 + b2, layer.s2 * m.shat22 + b2, layer.s2 * m.shat12 + b2, 0.0};
  if (m.stable_det) {
    c.sdet = std::hypot(layer.s2 * m.sdet_hat, layer.s * layer.beta * m.sqrt_ehat);
  } else {
    const double g = std::sqrt(c.q11) * std::sqrt(c.q22);
    // A product of roots: (g - q12)(g + q12) itself overflows once q11 q22 > 1e308.
    c.sdet = std::sqrt(std::max(0.0, g - c.q12)) * std::sqrt(std::max(0.0, g + c.q12));
  }
  return c;
}

// Exact correlation of x and y from the unit vectors u, v:
// c = (|u+v|^2 - |u-v|^2)/4, 1 - c = |u-v|^2/2, 1 - c^2 = |u-v|^2 |u+v|^2 / 4.
// Zero vectors: c = 0, 1 - c = 1 - c^2 = 1 (every use multiplies them by 0).
struct InputCosines {
  double c, omc, sin2;
};
InputCosines exact_input_cosines(const double* x, const double* y, Index d, double nx, double ny) {
  if (!(nx > 0.0) || !(ny > 0.0)) return {0.0, 1.0, 1.0};
  double dm2 = 0.0;
  double dp2 = 0.0;
  for (Index j = 0; j < d; ++j) {
    const double u = x[j] / nx;
    const double v = y[j] / ny;
    dm2 += (u - v) * (u - v);
    dp2 += (u + v) * (u + v);
  }
  return {std::clamp((dp2 - dm2) / 4, -1.0, 1.0), std::min(dm2 / 2, 2.0),
          std::min(dm2 * dp2 / 4, 1.0)};
}

// ---------------------------------------------------------------------------------------
// Row path.

enum class Track { kNtkParam, kStandardParam, kNngp };

// Everything row() needs besides the block: the points and caches (for the exact input
// path), x and its cache, and the layer constants.
struct RowContext {
  const double* points;
  Index points_ld;  // outer stride of the row-major points
  const double* caches;
  Index cache_ld;
  const double* x;
  const double* xc;  // x's cache
  Index d;
  double sin2_floor;  // below this, 1 - c^2 from the GEMV is not accurate enough
  bool x_unsafe;      // x's norm is outside the safe range: every point takes the exact path
  const NtkKernel* kernel;
};

// Pre-activation state of a block of pairs at a Dense layer.
struct PairState {
  Packet rho;   // q12 / sqrt(q11 q22)
  Packet sig2;  // det / (q11 q22)
  Packet qq;    // sqrt(q11 q22)
};

// Post-activation state: correlation c of the features with 1 - c and 1 - c^2, and the
// pair's Shat12 and Sdot.
struct PostState {
  Packet c, omc, sin2, shat12, sdot;
};

// Input layer correlations of the block's points with x from the GEMV; *need marks the
// lanes whose 1 - c^2 is within the GEMV's rounding bound of 0, or whose norm is outside
// the safe range (every lane when x's norm is): exact_input_lanes() redoes those.
template <typename Block>
PostState input_cosines(const RowContext& ctx, const Block& blk, Packet* need) {
  using namespace simd;
  const Packet one = set1(1.0);
  const Packet n1 = blk.col(NtkKernel::kColNorm);
  const Packet inv1 = blk.col(NtkKernel::kColInvNorm);
  PostState s;
  s.c = clamp(mul(mul(blk.dot(), inv1), set1(ctx.xc[NtkKernel::kColInvNorm])), set1(-1.0), one);
  s.omc = sub(one, s.c);
  s.sin2 = mul(s.omc, add(one, s.c));
  *need = mask_or(lt_or_nan(s.sin2, set1(ctx.sin2_floor)),
                  mask_or(lt_or_nan(n1, set1(kSafeNormLo)), lt(set1(kSafeNormHi), n1)));
  if (ctx.x_unsafe) *need = lt(set1(0.0), one);  // every lane
  return s;
}

// The lanes of `need` recomputed from the unit vectors (O(d) each; rare).
template <typename Block>
void exact_input_lanes(const RowContext& ctx, const Block& blk, const Packet& need, PostState& s) {
  using namespace simd;
  const LaneFlags flags(need);
  double cb[kLanes], ob[kLanes], sb[kLanes];
  storeu(cb, s.c);
  storeu(ob, s.omc);
  storeu(sb, s.sin2);
  const double nx = ctx.xc[NtkKernel::kColNorm];
  for (int l = 0; l < kLanes; ++l) {
    if (!flags.set[l]) continue;
    const Index i = blk.point(l);
    const double ni = ctx.caches[NtkKernel::kColNorm * ctx.cache_ld + i];
    const InputCosines e =
        exact_input_cosines(ctx.points + i * ctx.points_ld, ctx.x, ctx.d, ni, nx);
    cb[l] = e.c;
    ob[l] = e.omc;
    sb[l] = e.sin2;
  }
  s.c = loadu(cb);
  s.omc = loadu(ob);
  s.sin2 = loadu(sb);
}

// x's cached values of Dense layer k, broadcast once per chunk of packets (per-row
// constants of the packet loops).
struct DenseX {
  Index col;
  Packet sqx, ax, bx, zx;
  bool degenerate;  // the layer has no bias: q_k = 0 is possible
};

DenseX dense_x(const RowContext& ctx, int k) {
  const Index col = ctx.kernel->dense_col(k);
  const double* xd = ctx.xc + col;
  return {col,
          simd::set1(xd[0]),
          simd::set1(xd[1]),
          simd::set1(xd[2]),
          simd::set1(xd[3]),
          ctx.kernel->layers()[static_cast<std::size_t>(k)].may_degenerate};
}

// Dense layer k (x's side in dx) applied to inputs with correlation (c, 1 - c, 1 - c^2).
template <typename Block>
[[gnu::always_inline]] inline PairState dense_block(const DenseX& dx, const Block& blk,
                                                    const PostState& in) {
  using namespace simd;
  const Packet sq1 = blk.col(dx.col);
  const Packet a1 = blk.col(dx.col + 1);
  const Packet b1 = blk.col(dx.col + 2);
  const Packet aa = mul(a1, dx.ax);
  const Packet bb = mul(b1, dx.bx);
  const Packet cross = sub(mul(a1, dx.bx), mul(b1, dx.ax));
  PairState s;
  s.rho = madd(aa, in.c, bb);
  // sigma^2 = aa^2 (1 - c^2) + (a1 b2 - a2 b1)^2 + 2 aa bb (1 - c)
  s.sig2 = madd(mul(aa, aa), in.sin2, madd(cross, cross, mul(add(aa, aa), mul(bb, in.omc))));
  if (dx.degenerate) {
    // A zero-variance point: the pair's angle is pi/2 (NT's convention), i.e. rho = 0
    // (a = b = 0 there) and sigma^2 >= 1 (clamped to 1 by the activation).
    s.sig2 = add(s.sig2, add(blk.col(dx.col + 3), dx.zx));
  }
  s.qq = mul(sq1, dx.sqx);
  return s;
}

[[gnu::always_inline]] inline PostState relu_block(const PairState& s) {
  using namespace simd;
  const Packet zero = set1(0.0);
  const Packet one = set1(1.0);
  const Packet pi = set1(kPi);
  const Packet sig = sqrt(clamp(s.sig2, zero, one));
  const Packet rho = clamp(s.rho, set1(-1.0), one);
  // phi = 2 atan(sigma / (1 + |rho|)) is theta for rho >= 0 and pi - theta otherwise; the
  // half-angle tangent is in [0, 1], so one division and a polynomial give it.
  Packet t;
  Packet reduced;
  const Packet half = atan_unit_ratio(sig, add(one, abs(rho)), &t, &reduced);
  const Packet phi = add(half, half);
  const Packet pos = le(zero, rho);
  const Packet pi_minus_phi = sub(pi, phi);
  const Packet theta = select(pos, phi, pi_minus_phi);
  const Packet pmt = select(pos, pi_minus_phi, phi);  // pi - theta
  PostState o;
  o.sdot = mul(pmt, set1(kInvTwoPi));
  // c = J(theta)/pi = (sin theta + (pi - theta) cos theta) / pi
  const Packet c = mul(madd(pmt, rho, sig), set1(kInvPi));
  // 1 - rho = sigma tan(theta/2) for rho >= 0 where t = tan(theta/2) was not reduced.
  const Packet omr = select(mask_andnot(pos, reduced), mul(sig, t), sub(one, rho));
  // 1 - c = (1 - rho) - (sin theta - theta cos theta) / pi
  const Packet smtc = madd(sub(zero, theta), rho, sig);
  o.c = clamp(c, zero, one);
  o.omc = clamp(sub(omr, mul(smtc, set1(kInvPi))), zero, one);
  o.sin2 = mul(o.omc, add(one, o.c));
  o.shat12 = mul(s.qq, mul(o.c, set1(0.5)));
  return o;
}

// Post-activation correlation from Shat12 and the cached 1/sqrt(Shat(x, x)).
void finish_smooth(PostState& o, const Packet& isv1, double isvx) {
  using namespace simd;
  const Packet one = set1(1.0);
  o.c = clamp(mul(mul(o.shat12, isv1), set1(isvx)), set1(-1.0), one);
  o.omc = sub(one, o.c);
  o.sin2 = mul(o.omc, add(one, o.c));
}

template <typename Block>
[[gnu::always_inline]] inline PostState erf_block(const RowContext& ctx, const Block& blk, int l,
                                                  const PairState& s) {
  using namespace simd;
  const Index col = ctx.kernel->act_col(l);
  const Packet se1 = blk.col(col);
  const Packet f1 = blk.col(col + 1);
  const Packet sf1 = blk.col(col + 2);
  const double* xa = ctx.xc + col;
  const Packet rho = clamp(s.rho, set1(-1.0), set1(1.0));
  const Packet sig2 = clamp(s.sig2, set1(0.0), set1(1.0));
  // xi = 2 q12 / sqrt((1+2q11)(1+2q22)); D~ = D / ((1+2q11)(1+2q22)) = 1 - xi^2.
  const Packet xi = mul(mul(se1, set1(xa[0])), rho);
  const Packet dt = madd(mul(se1, se1), madd(set1(xa[0] * xa[0]), sig2, set1(xa[1])), f1);
  const Packet sd = sqrt(dt);
  PostState o;
  o.shat12 = mul(set1(2.0 * kInvPi), atan2_right_half(xi, sd));
  o.sdot = div(mul(set1(4.0 * kInvPi * xa[2]), sf1), sd);
  finish_smooth(o, blk.col(col + 4), xa[4]);
  return o;
}

template <typename Block>
[[gnu::always_inline]] inline PostState gelu_block(const RowContext& ctx, const Block& blk, int l,
                                                   const PairState& s) {
  using namespace simd;
  const Index col = ctx.kernel->act_col(l);
  const Packet sk1 = blk.col(col);
  const Packet g1 = blk.col(col + 1);
  const Packet k1 = blk.col(col + 2);
  const double* xa = ctx.xc + col;
  const Packet gx = set1(xa[1]);
  const Packet rho = clamp(s.rho, set1(-1.0), set1(1.0));
  const Packet sig2 = clamp(s.sig2, set1(0.0), set1(1.0));
  const Packet skk = mul(sk1, set1(xa[0]));  // sqrt(k1 k2)
  // Delta~^2 = Delta^2 / P+ = g1 g2 + g1 k2 + k1 g2 + k1 k2 sigma^2.
  const Packet dt2 = madd(k1, madd(set1(xa[2]), sig2, gx), g1);
  const Packet dt = sqrt(dt2);
  const Packet idt = div(set1(1.0), dt);
  const Packet y = mul(skk, rho);  // q12 / sqrt(P+)
  const Packet alpha = atan2_right_half(y, dt);
  const Packet g12 = mul(g1, gx);
  // Shat / sqrt(q11 q22) = rho/4 + [sqrt(k1 k2)(rho^2 g1 g2 + Delta~^2)/Delta~ + rho alpha]/(2pi)
  const Packet frac = mul(mul(skk, madd(mul(rho, rho), g12, dt2)), idt);
  PostState o;
  o.shat12 = mul(s.qq, madd(rho, set1(0.25), mul(madd(rho, alpha, frac), set1(kInvTwoPi))));
  // Sdot = 1/4 + alpha/(2pi) + y/(2pi Delta~) (g1 g2/Delta~^2 + g1 + g2)
  const Packet bracket = madd(g12, mul(idt, idt), add(g1, gx));
  o.sdot =
      madd(mul(mul(y, idt), set1(kInvTwoPi)), bracket, madd(alpha, set1(kInvTwoPi), set1(0.25)));
  finish_smooth(o, blk.col(col + 4), xa[4]);
  return o;
}

// One chunk of npk <= kChunkPackets packets (block_at(p) is the block of packet p), layer
// by layer: the state between layers lives in small arrays over the chunk
// (structure of arrays), so that each layer is a loop of independent packet iterations
// whose long dependency chains (sqrt, division, polynomial) the CPU overlaps; per-row
// constants are broadcast once per chunk and layer.
template <Activation A, Track T, typename BlockAt>
void ntk_chunk(const RowContext& ctx, int npk, const BlockAt& block_at) {
  using namespace simd;
  constexpr int K = kChunkPackets;
  const NtkKernel& kn = *ctx.kernel;
  const std::vector<NtkLayer>& layers = kn.layers();
  const int depth = kn.params().depth;
  Packet rho[K], sig2[K], qq[K], theta[K];
  {
    PostState in[K];
    Packet need[K];
    Packet any_need = set1(0.0);
    for (int p = 0; p < npk; ++p) {
      in[p] = input_cosines(ctx, block_at(p), &need[p]);
      any_need = mask_or(any_need, need[p]);
    }
    if (any(any_need)) {
      for (int p = 0; p < npk; ++p) {
        if (any(need[p])) exact_input_lanes(ctx, block_at(p), need[p], in[p]);
      }
    }
    const DenseX dx = dense_x(ctx, 0);
    const Packet norm_x = set1(ctx.xc[NtkKernel::kColNorm]);
    const Packet bias0 = set1(layers[0].bias_ntk);
    for (int p = 0; p < npk; ++p) {
      const auto blk = block_at(p);
      const PairState s = dense_block(dx, blk, in[p]);
      rho[p] = s.rho;
      sig2[p] = s.sig2;
      qq[p] = s.qq;
      if constexpr (T == Track::kNtkParam) {
        theta[p] = mul(s.qq, s.rho);
      } else if constexpr (T == Track::kStandardParam) {
        // Theta_1 = x.y + [bias] with x.y = |x||y| c.
        const Packet xy = mul(mul(blk.col(NtkKernel::kColNorm), norm_x), in[p].c);
        theta[p] = add(xy, bias0);
      }
    }
  }
  for (int l = 0; l < depth; ++l) {
    const NtkLayer& next = layers[static_cast<std::size_t>(l) + 1];
    const DenseX dx = dense_x(ctx, l + 1);
    const Packet s2 = set1(next.s2);
    const Packet width = set1(next.width_in);
    const Packet bias = set1(next.bias_ntk);
    for (int p = 0; p < npk; ++p) {
      const auto blk = block_at(p);
      const PairState s{rho[p], sig2[p], qq[p]};
      PostState post;
      if constexpr (A == Activation::kRelu) {
        post = relu_block(s);
      } else if constexpr (A == Activation::kErf) {
        post = erf_block(ctx, blk, l, s);
      } else {
        post = gelu_block(ctx, blk, l, s);
      }
      const PairState n = dense_block(dx, blk, post);
      rho[p] = n.rho;
      sig2[p] = n.sig2;
      qq[p] = n.qq;
      if constexpr (T == Track::kNtkParam) {
        // Theta' = Sigma' + s^2 Sdot Theta
        theta[p] = madd(mul(s2, post.sdot), theta[p], mul(n.qq, n.rho));
      } else if constexpr (T == Track::kStandardParam) {
        // Theta' = n Shat + s^2 Sdot Theta + [bias]
        theta[p] = madd(mul(s2, post.sdot), theta[p], madd(width, post.shat12, bias));
      }
    }
  }
  for (int p = 0; p < npk; ++p) {
    if constexpr (T == Track::kNngp) {
      block_at(p).store(mul(qq[p], rho[p]));
    } else {
      block_at(p).store(theta[p]);
    }
  }
}

template <Activation A, Track T>
void ntk_row(const RowContext& ctx, const RowSource& src, Index m) {
  for_each_chunk(src, m,
                 [&](int npk, const auto& block_at) { ntk_chunk<A, T>(ctx, npk, block_at); });
}

template <Activation A>
void ntk_row_for(Track t, const RowContext& ctx, const RowSource& src, Index m) {
  switch (t) {
    case Track::kNtkParam:
      return ntk_row<A, Track::kNtkParam>(ctx, src, m);
    case Track::kStandardParam:
      return ntk_row<A, Track::kStandardParam>(ctx, src, m);
    case Track::kNngp:
      return ntk_row<A, Track::kNngp>(ctx, src, m);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------
// NtkParams

NtkParams NtkParams::from_spec(const KernelSpec& spec) {
  spec.validate();
  if (spec.type != KernelType::kNtk) {
    invalid("spec type must be ntk, got " + std::string(to_string(spec.type)));
  }
  NtkParams p;
  p.activation = spec.activation;
  p.parameterization = spec.parameterization;
  p.output = spec.output;
  p.depth = spec.depth;
  p.w_std.assign(static_cast<std::size_t>(spec.depth) + 1, spec.w_std);
  p.b_std.assign(static_cast<std::size_t>(spec.depth) + 1, spec.b_std);
  if (spec.parameterization == Parameterization::kStandard) {
    p.width.assign(static_cast<std::size_t>(spec.depth), static_cast<double>(*spec.width));
  }
  return p;
}

void NtkParams::validate() const {
  if (depth < 0 || depth > KernelSpec::kMaxDepth) {
    invalid("depth must be in [0, " + std::to_string(KernelSpec::kMaxDepth) + "], got " +
            std::to_string(depth));
  }
  const std::size_t layers = static_cast<std::size_t>(depth) + 1;
  if (w_std.size() != layers) {
    invalid("w_std must have depth + 1 = " + std::to_string(layers) + " values, got " +
            std::to_string(w_std.size()));
  }
  if (b_std.size() != layers) {
    invalid("b_std must have depth + 1 = " + std::to_string(layers) + " values, got " +
            std::to_string(b_std.size()));
  }
  for (std::size_t k = 0; k < layers; ++k) {
    if (!std::isfinite(w_std[k]) || w_std[k] < 0.0) {
      invalid("w_std[" + std::to_string(k) + "] must be finite and >= 0, got " + num(w_std[k]));
    }
    if (b_std[k] && (!std::isfinite(*b_std[k]) || *b_std[k] < 0.0)) {
      invalid("b_std[" + std::to_string(k) + "] must be finite and >= 0, got " + num(*b_std[k]));
    }
  }
  if (parameterization == Parameterization::kStandard) {
    if (width.size() != static_cast<std::size_t>(depth)) {
      invalid("width must have depth = " + std::to_string(depth) +
              " values for parameterization=standard, got " + std::to_string(width.size()));
    }
    for (std::size_t l = 0; l < width.size(); ++l) {
      if (!std::isfinite(width[l]) || !(width[l] > 0.0)) {
        invalid("width[" + std::to_string(l) + "] must be finite and > 0, got " + num(width[l]));
      }
    }
  }
}

KernelSpec NtkParams::summary() const {
  KernelSpec s;
  s.type = KernelType::kNtk;
  s.activation = activation;
  s.depth = depth;
  s.w_std = w_std.empty() ? 0.0 : w_std.front();
  s.b_std = b_std.empty() ? std::nullopt : b_std.front();
  s.parameterization = parameterization;
  if (!width.empty()) s.width = static_cast<int>(width.front());
  s.output = output;
  return s;
}

// ---------------------------------------------------------------------------------------
// NtkKernel

NtkKernel::NtkKernel(const KernelSpec& spec) : NtkKernel(spec, NtkParams::from_spec(spec)) {}

NtkKernel::NtkKernel(NtkParams params) : NtkKernel(params.summary(), params) {}

NtkKernel::NtkKernel(KernelSpec spec, const NtkParams& params)
    : Kernel(std::move(spec)), p_(params) {
  p_.validate();
  layers_.resize(static_cast<std::size_t>(p_.depth) + 1);
  for (std::size_t k = 0; k < layers_.size(); ++k) {
    NtkLayer& L = layers_[k];
    L.s = p_.w_std[k];
    L.s2 = L.s * L.s;
    L.beta = p_.b_std[k].value_or(0.0);
    L.bias_ntk = p_.b_std[k] ? 1.0 : 0.0;
    L.width_in = (k >= 1 && !p_.width.empty()) ? p_.width[k - 1] : 0.0;
    L.may_degenerate = L.beta == 0.0;
  }
  const bool smooth = p_.activation != Activation::kRelu;
  cache_size_ = 3 + kDenseCols * (p_.depth + 1) + (smooth ? kActCols * p_.depth : 0);
}

void NtkKernel::prepare(Eigen::Ref<const Eigen::VectorXd> x,
                        Eigen::Ref<Eigen::VectorXd> cache) const {
  const Index d = x.size();
  if (d < 1) invalid("points must have at least one coordinate");
  assert(cache.size() == cache_size_);
  const double n = stable_norm(d, [&](Index i) { return x(i); });
  cache(kColNorm) = n;
  cache(kColInvNorm) = n > 0.0 ? 1.0 / n : 0.0;

  // Dense layer k given the signal root sqrt(s_k^2 V) of its inputs; returns sqrt(q_k).
  const auto set_dense = [&](int k, double signal_root) {
    const Index col = dense_col(k);
    const double beta = layers_[static_cast<std::size_t>(k)].beta;
    const double sq = std::hypot(signal_root, beta);
    cache(col) = sq;
    cache(col + 1) = sq > 0.0 ? signal_root / sq : 0.0;
    cache(col + 2) = sq > 0.0 ? beta / sq : 0.0;
    cache(col + 3) = sq > 0.0 ? 0.0 : 1.0;
    return sq;
  };

  const NtkLayer& first = layers_.front();
  double sq = set_dense(0, first.s * (n / std::sqrt(static_cast<double>(d))));
  const bool standard = p_.parameterization == Parameterization::kStandard;
  double theta = standard ? n * n + first.bias_ntk : sq * sq;
  for (int l = 0; l < p_.depth; ++l) {
    const bool zero_variance = cache(dense_col(l) + 3) != 0.0;
    const double q = sq * sq;
    double vroot = 0.0;  // sqrt(Shat(x, x))
    double sdot = 0.0;   // Sdot(x, x)
    switch (p_.activation) {
      case Activation::kRelu:
        vroot = sq * std::sqrt(0.5);
        sdot = zero_variance ? 0.25 : 0.5;
        break;
      case Activation::kErf: {
        const double f = 1.0 / (1.0 + 2.0 * q);
        const double e = std::isfinite(2.0 * q) ? 2.0 * q * f : 1.0;
        // V = (2/pi) asin(e) with cos(asin e) = sqrt((1 - e)(1 + e)) = sqrt(f (1 + e)).
        const double v = 2.0 * kInvPi * std::atan2(e, std::sqrt(f * (1.0 + e)));
        vroot = std::sqrt(v);
        sdot = 4.0 * kInvPi * std::sqrt(f) / std::sqrt(1.0 + e);
        const Index col = act_col(l);
        cache(col) = std::sqrt(e);
        cache(col + 1) = f;
        cache(col + 2) = std::sqrt(f);
        cache(col + 3) = vroot;
        cache(col + 4) = vroot > 0.0 ? 1.0 / vroot : 0.0;
        break;
      }
      case Activation::kGelu: {
        const double g = 1.0 / (1.0 + q);
        const double k = std::isfinite(q) ? q * g : 1.0;
        const double dt2 = g * (1.0 + k);  // Delta~^2 at rho = 1, sigma = 0
        const double dt = std::sqrt(dt2);
        const double alpha = std::atan2(k, dt);
        const double ratio = 0.25 + (k * (g * g + dt2) / dt + alpha) * kInvTwoPi;  // V / q
        vroot = sq * std::sqrt(ratio);
        sdot = 0.25 + alpha * kInvTwoPi + k / dt * kInvTwoPi * (g * g / dt2 + 2.0 * g);
        const Index col = act_col(l);
        cache(col) = std::sqrt(k);
        cache(col + 1) = g;
        cache(col + 2) = k;
        cache(col + 3) = vroot;
        // 1/sqrt(V) = 0 also where it would overflow (a subnormal V): the correlation it
        // normalizes is then 0, as for V = 0.
        cache(col + 4) = vroot > 0.0 && std::isfinite(1.0 / vroot) ? 1.0 / vroot : 0.0;
        break;
      }
    }
    const NtkLayer& next = layers_[static_cast<std::size_t>(l) + 1];
    sq = set_dense(l + 1, next.s * vroot);
    theta = standard ? next.width_in * vroot * vroot + next.s2 * sdot * theta + next.bias_ntk
                     : sq * sq + next.s2 * sdot * theta;
  }
  cache(kColSelf) = p_.output == KernelOutput::kNngp ? sq * sq : theta;
}

double NtkKernel::self(Eigen::Ref<const Eigen::VectorXd> /*x*/,
                       Eigen::Ref<const Eigen::VectorXd> cache) const {
  return cache(kColSelf);
}

void NtkKernel::row(const Eigen::Ref<const RowMatrixXd>& points,
                    const Eigen::Ref<const Eigen::MatrixXd>& caches,
                    Eigen::Ref<const Eigen::VectorXd> x, Eigen::Ref<const Eigen::VectorXd> x_cache,
                    Eigen::Ref<Eigen::VectorXd> out,
                    Eigen::Ref<Eigen::MatrixXd> /*scratch*/) const {
  const Index m = points.rows();
  assert(points.cols() == x.size() && caches.rows() == m && caches.cols() == cache_size_ &&
         x_cache.size() == cache_size_ && out.size() == m);
  if (m == 0) return;
  // M dot products x . x_i (the row-major points times x).
  dot_rows(points, x, out);

  const Index d = x.size();
  // 1 - c^2 from these dot products carries an absolute error up to about 2 (d + 2) eps
  // |c|; below this floor it is recomputed from the unit vectors. relu needs the angle to
  // ~1e-13 absolutely (sqrt(1 - c^2) error = (d + 2) eps / sin theta); erf and gelu need
  // 1 - c^2 to ~1e-13 relatively (it is divided by D~ or Delta~^2, tiny at large norms).
  const double g = (static_cast<double>(d) + 2.0) * 1.1e-3;
  const double floor = p_.activation == Activation::kRelu ? g * g : 2.0 * g;
  const double nx = x_cache(kColNorm);
  RowContext ctx{points.data(),
                 points.outerStride(),
                 caches.data(),
                 caches.outerStride(),
                 x.data(),
                 x_cache.data(),
                 d,
                 std::min(floor, 1.0),
                 !(nx >= kSafeNormLo && nx <= kSafeNormHi),
                 this};
  const RowSource src{out.data(), caches.data(), caches.outerStride()};
  const Track track = p_.output == KernelOutput::kNngp                     ? Track::kNngp
                      : p_.parameterization == Parameterization::kStandard ? Track::kStandardParam
                                                                           : Track::kNtkParam;
  switch (p_.activation) {
    case Activation::kRelu:
      return ntk_row_for<Activation::kRelu>(track, ctx, src, m);
    case Activation::kErf:
      return ntk_row_for<Activation::kErf>(track, ctx, src, m);
    case Activation::kGelu:
      return ntk_row_for<Activation::kGelu>(track, ctx, src, m);
  }
}

double NtkKernel::operator()(Eigen::Ref<const Eigen::VectorXd> x,
                             Eigen::Ref<const Eigen::VectorXd> y) const {
  const Index d = x.size();
  if (y.size() != d) {
    invalid("points must have the same dimension, got " + std::to_string(d) + " and " +
            std::to_string(y.size()));
  }
  if (d < 1) invalid("points must have at least one coordinate");

  // Input layer: Sigma_1 = a x.y + beta^2 with a = s^2/d, and sqrt(det_1) from
  // det_1 = a^2 |x|^2|y|^2 sin^2 t_xy + a beta^2 |x - y|^2.
  const NtkLayer& first = layers_.front();
  const double nx = stable_norm(d, [&](Index i) { return x(i); });
  const double ny = stable_norm(d, [&](Index i) { return y(i); });
  const double dist = stable_norm(d, [&](Index i) { return x(i) - y(i); });
  double c = 0.0;
  double sin_xy = 0.0;
  if (nx > 0.0 && ny > 0.0) {
    const double dm = stable_norm(d, [&](Index i) { return x(i) / nx - y(i) / ny; });
    const double dp = stable_norm(d, [&](Index i) { return x(i) / nx + y(i) / ny; });
    sin_xy = std::min(dm * dp / 2, 1.0);
    double uv = 0.0;
    for (Index i = 0; i < d; ++i) uv += (x(i) / nx) * (y(i) / ny);
    c = std::clamp(uv, -1.0, 1.0);
  }
  const double a = first.s2 / static_cast<double>(d);
  const double b2 = first.beta * first.beta;
  Cov cov{a * nx * nx + b2, a * ny * ny + b2, a * (nx * ny) * c + b2,
          std::hypot(a * (nx * ny) * sin_xy, std::sqrt(a) * first.beta * dist)};

  const bool standard = p_.parameterization == Parameterization::kStandard;
  double theta = standard ? (nx * ny) * c + first.bias_ntk : cov.q12;
  for (int l = 0; l < p_.depth; ++l) {
    const Moments m = moments(p_.activation, cov);
    const NtkLayer& next = layers_[static_cast<std::size_t>(l) + 1];
    cov = dense_after(next, m);
    theta = standard ? next.width_in * m.shat12 + next.s2 * m.sdot * theta + next.bias_ntk
                     : cov.q12 + next.s2 * m.sdot * theta;
  }
  return p_.output == KernelOutput::kNngp ? cov.q12 : theta;
}

std::shared_ptr<const Kernel> make_ntk_kernel(NtkParams params) {
  return std::make_shared<const NtkKernel>(std::move(params));
}

}  // namespace ntk::detail
