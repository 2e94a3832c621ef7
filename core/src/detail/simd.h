// Packet arithmetic for the kernel row loops: a thin, named layer over Eigen's packet
// primitives (Eigen::internal, stable within Eigen 3.4), so that one loop body compiles to
// SSE2/AVX/AVX-512/NEON code, or to plain double arithmetic when Eigen does not
// vectorize (EIGEN_DONT_VECTORIZE), and stays readable as math.
//
// Masks are packets whose lanes are all-ones (true) or all-zeros (false), as returned by
// the comparisons; they are consumed by select() and any().
//
// atan_ratio() is the one transcendental function Eigen 3.4 lacks for double packets: the
// Cephes atan (S. L. Moshier, Cephes Math Library; the degree 4/5 rational approximation
// on [0, 0.66] with the tan(3 pi/8) and 0.66 range reductions), written branch-free.
// Its error is within about 2 ulp of the true value, relative, for every ratio (tested
// against std::atan2 in test_kernel_properties).
#pragma once

#include <Eigen/Core>

namespace ntk::detail::simd {

using Packet = Eigen::internal::packet_traits<double>::type;
inline constexpr int kLanes = Eigen::internal::packet_traits<double>::size;

inline Packet set1(double v) { return Eigen::internal::pset1<Packet>(v); }
inline Packet loadu(const double* p) { return Eigen::internal::ploadu<Packet>(p); }
inline void storeu(double* p, const Packet& v) { Eigen::internal::pstoreu(p, v); }

inline Packet add(const Packet& a, const Packet& b) { return Eigen::internal::padd(a, b); }
inline Packet sub(const Packet& a, const Packet& b) { return Eigen::internal::psub(a, b); }
inline Packet mul(const Packet& a, const Packet& b) { return Eigen::internal::pmul(a, b); }
inline Packet div(const Packet& a, const Packet& b) { return Eigen::internal::pdiv(a, b); }
// a * b + c (fused where the target has FMA).
inline Packet madd(const Packet& a, const Packet& b, const Packet& c) {
  return Eigen::internal::pmadd(a, b, c);
}
inline Packet sqrt(const Packet& a) { return Eigen::internal::psqrt(a); }
inline Packet abs(const Packet& a) { return Eigen::internal::pabs(a); }
inline Packet exp(const Packet& a) { return Eigen::internal::pexp(a); }
// Lane-wise min/max; the result is unspecified where an operand is NaN.
inline Packet min(const Packet& a, const Packet& b) { return Eigen::internal::pmin(a, b); }
inline Packet max(const Packet& a, const Packet& b) { return Eigen::internal::pmax(a, b); }
// clamp(a, lo, hi) = min(max(a, lo), hi).
inline Packet clamp(const Packet& a, const Packet& lo, const Packet& hi) {
  return min(max(a, lo), hi);
}

// Masks.
inline Packet lt(const Packet& a, const Packet& b) { return Eigen::internal::pcmp_lt(a, b); }
inline Packet le(const Packet& a, const Packet& b) { return Eigen::internal::pcmp_le(a, b); }
// a < b, or either operand NaN.
inline Packet lt_or_nan(const Packet& a, const Packet& b) {
  return Eigen::internal::pcmp_lt_or_nan(a, b);
}
inline Packet mask_and(const Packet& a, const Packet& b) { return Eigen::internal::pand(a, b); }
inline Packet mask_or(const Packet& a, const Packet& b) { return Eigen::internal::por(a, b); }
// a and not b.
inline Packet mask_andnot(const Packet& a, const Packet& b) {
  return Eigen::internal::pandnot(a, b);
}
// mask lanes: a, other lanes: b.
inline Packet select(const Packet& mask, const Packet& a, const Packet& b) {
  return Eigen::internal::pselect(mask, a, b);
}
// mask lanes: a, other lanes: +0 (one AND where select needs a blend).
inline Packet keep(const Packet& mask, const Packet& a) { return Eigen::internal::pand(mask, a); }
// True when any lane of the mask is set.
inline bool any(const Packet& mask) {
  return Eigen::internal::predux_max(select(mask, set1(1.0), set1(0.0))) > 0.0;
}
// Lane i of a packet (i < kLanes); for the rare per-lane fix-ups.
inline double lane(const Packet& a, int i) {
  alignas(sizeof(Packet)) double buf[kLanes];
  storeu(buf, a);
  return buf[i];
}

// atan(n / d) for n >= 0 and d >= 0, not both zero: an angle in [0, pi/2] with relative
// accuracy (small angles keep their relative precision). One division for the reduction
// and one for the rational function.
//   reduced_x (optional out): the reduced argument the rational function saw; it equals
//   n / d exactly where mid_or_big (optional out) is false, i.e. where n <= 0.66 d.
inline Packet atan_ratio(const Packet& n, const Packet& d, Packet* reduced_x = nullptr,
                         Packet* mid_or_big = nullptr) {
  // Cephes atan.c coefficients: atan(x) = x + x z P(z) / Q(z), z = x^2, |x| <= 0.66.
  constexpr double kP0 = -8.750608600031904122785e-1;
  constexpr double kP1 = -1.615753718733365076637e1;
  constexpr double kP2 = -7.500855792314704667340e1;
  constexpr double kP3 = -1.228866684490136173410e2;
  constexpr double kP4 = -6.485021904942025371773e1;
  constexpr double kQ0 = 2.485846490142306297962e1;
  constexpr double kQ1 = 1.650270098316988542046e2;
  constexpr double kQ2 = 4.328810604912902668951e2;
  constexpr double kQ3 = 4.853903996359136964868e2;
  constexpr double kQ4 = 1.945506571482613964425e2;
  constexpr double kTan3PiOver8 = 2.41421356237309504880;
  constexpr double kMoreBits = 6.123233995736765886130e-17;  // pi/2 - double(pi/2)
  constexpr double kPiOver2 = 1.57079632679489661923;
  constexpr double kPiOver4 = 7.85398163397448309616e-1;

  // Range reduction, as selections of numerator and denominator so that one division
  // serves all three ranges:
  //   n > tan(3pi/8) d:  atan = pi/2 + atan(-d/n)
  //   n > 0.66 d:        atan = pi/4 + atan((n - d)/(n + d))
  //   otherwise:         atan = atan(n/d)
  const Packet big = lt(mul(set1(kTan3PiOver8), d), n);
  const Packet mid = lt(mul(set1(0.66), d), n);
  const Packet num = select(big, sub(set1(0.0), d), select(mid, sub(n, d), n));
  const Packet den = select(big, n, select(mid, add(n, d), d));
  const Packet base = select(big, set1(kPiOver2), select(mid, set1(kPiOver4), set1(0.0)));
  const Packet extra = select(big, set1(kMoreBits), select(mid, set1(0.5 * kMoreBits), set1(0.0)));

  const Packet x = div(num, den);
  const Packet z = mul(x, x);
  Packet p = madd(set1(kP0), z, set1(kP1));
  p = madd(p, z, set1(kP2));
  p = madd(p, z, set1(kP3));
  p = madd(p, z, set1(kP4));
  Packet q = add(z, set1(kQ0));
  q = madd(q, z, set1(kQ1));
  q = madd(q, z, set1(kQ2));
  q = madd(q, z, set1(kQ3));
  q = madd(q, z, set1(kQ4));
  const Packet r = madd(mul(x, z), div(p, q), x);
  if (reduced_x != nullptr) *reduced_x = x;
  if (mid_or_big != nullptr) *mid_or_big = mid;
  return add(base, add(r, extra));
}

// atan(n / d) for 0 <= n <= d, d > 0: an angle in [0, pi/4], with relative accuracy, from
// ONE division and a polynomial (no rational function), for the relu row loop, where the
// half-angle tangent of an angle in [0, pi/2] is always in [0, 1].
//   Reduction: for n > tan(pi/8) d, atan(n/d) = pi/4 + atan((n - d)/(n + d)), so the
//   polynomial only sees |x| <= tan(pi/8) = 0.4142.
//   Polynomial: atan(x) = x + x z g(z), z = x^2, with g of degree 10 interpolating
//   (atan(sqrt z)/sqrt z - 1)/z at the 11 Chebyshev nodes of [0, tan(pi/8)^2]
//   (mpmath, 60 digits; coefficients rounded to double).
//   Approximation error: g is analytic except for the branch point z = -1, i.e. inside the
//   Bernstein ellipse E_25 of [0, A], A = tan(pi/8)^2 (E_25.3 passes through -1), where
//   |g| <= M = 1.95 (max over the boundary, mpmath). The Chebyshev interpolation bound
//   4 M 25^-11 / 24 gives |g - p| <= 1.4e-16, so |atan(x) - (x + x z p)| / atan(x) <=
//   A 1.4e-16 / (1 - A/3) = 2.5e-17; rounding the coefficients to double adds at most
//   A eps/2 sum_j |c_j| A^j < 7e-18: approximation error < 3.2e-17 = 0.15 eps (measured
//   on a 4000-point grid with the rounded coefficients: 7.1e-18).
//   Rounding: x carries 0.5 ulp (1.5 ulp for the reduced quotient), the correction
//   x z g(z) is at most 5.7% of x, so its own few-ulp error costs < 0.3 ulp, and the final
//   add 0.5 ulp: within 2 ulp of atan(n/d) in all (with or without FMA), which
//   test_kernel_properties checks against long double atan2 (measured: 1.5 eps).
//   x_out (optional): the quotient the polynomial saw, n / d exactly where reduced_out
//   (optional, a mask) is false.
inline Packet atan_unit_ratio(const Packet& n, const Packet& d, Packet* x_out = nullptr,
                              Packet* reduced_out = nullptr) {
  constexpr double kG0 = -0.3333333333333333;
  constexpr double kG1 = 0.1999999999999552;
  constexpr double kG2 = -0.14285714284666542;
  constexpr double kG3 = 0.11111111015256361;
  constexpr double kG4 = -0.09090904578123903;
  constexpr double kG5 = 0.07692183190826087;
  constexpr double kG6 = -0.06664511447381948;
  constexpr double kG7 = 0.0585814891280221;
  constexpr double kG8 = -0.0508544973794026;
  constexpr double kG9 = 0.03923165829558719;
  constexpr double kG10 = -0.01917688711906226;
  constexpr double kTanPiOver8 = 0.41421356237309504880;
  constexpr double kPiOver4 = 7.85398163397448309616e-1;
  constexpr double kMoreBits = 3.061616997868382943065e-17;  // pi/4 - double(pi/4)

  const Packet reduced = lt(mul(set1(kTanPiOver8), d), n);
  // Selections by masking (one AND each): num = n - d, den = n + d where reduced.
  const Packet num = sub(n, keep(reduced, d));
  const Packet den = add(d, keep(reduced, n));
  const Packet x = div(num, den);
  const Packet z = mul(x, x);
  Packet g = madd(set1(kG10), z, set1(kG9));
  g = madd(g, z, set1(kG8));
  g = madd(g, z, set1(kG7));
  g = madd(g, z, set1(kG6));
  g = madd(g, z, set1(kG5));
  g = madd(g, z, set1(kG4));
  g = madd(g, z, set1(kG3));
  g = madd(g, z, set1(kG2));
  g = madd(g, z, set1(kG1));
  g = madd(g, z, set1(kG0));
  const Packet r = madd(mul(x, z), g, add(x, keep(reduced, set1(kMoreBits))));
  if (x_out != nullptr) *x_out = x;
  if (reduced_out != nullptr) *reduced_out = reduced;
  return add(keep(reduced, set1(kPiOver4)), r);
}

// atan2(y, x) for x >= 0 (any sign of y; not both zero): an angle in [-pi/2, pi/2].
inline Packet atan2_right_half(const Packet& y, const Packet& x) {
  const Packet a = atan_ratio(abs(y), x);
  return select(lt(y, set1(0.0)), sub(set1(0.0), a), a);
}

}  // namespace ntk::detail::simd
