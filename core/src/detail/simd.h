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
// mask lanes: a, other lanes: b.
inline Packet select(const Packet& mask, const Packet& a, const Packet& b) {
  return Eigen::internal::pselect(mask, a, b);
}
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

// atan2(y, x) for x >= 0 (any sign of y; not both zero): an angle in [-pi/2, pi/2].
inline Packet atan2_right_half(const Packet& y, const Packet& x) {
  const Packet a = atan_ratio(abs(y), x);
  return select(lt(y, set1(0.0)), sub(set1(0.0), a), a);
}

}  // namespace ntk::detail::simd
