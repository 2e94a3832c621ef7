// IncrementalCholesky against independent oracles: a fresh Eigen::LLT of the matrix the
// test tracks itself, LU factorizations (log-determinant, Sylvester's criterion for the
// failing pivot), dense L L^T products and residuals. The CONVENTION of cholesky.h
// (size, lower triangular with exact zeros above, positive diagonal) is checked after
// every operation of long random sequences; heap allocations are counted.
#include <doctest/doctest.h>

#include <Eigen/Cholesky>
#include <Eigen/LU>
#include <Eigen/QR>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "ntk/core/cholesky.h"

// ---------------------------------------------------------------------------------------
// Heap-allocation counting. Every global operator new is counted. Eigen allocates with
// std::malloc, not operator new, so on glibc without a sanitizer (which owns malloc) the
// test also interposes malloc itself and forwards to glibc's __libc_malloc: then every heap
// allocation of the process is counted, Eigen's internal ones included.
namespace {
std::atomic<long> g_heap_calls{0};
}  // namespace

void* operator new(std::size_t n) {
  g_heap_calls.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  g_heap_calls.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
// GCC pairs the library's operator new with free() when these are inlined into callers
// and warns; here operator new is malloc, so the pairing is right.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define NTK_TEST_SANITIZER_OWNS_MALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define NTK_TEST_SANITIZER_OWNS_MALLOC 1
#endif
#endif

#if defined(__GLIBC__) && !defined(NTK_TEST_SANITIZER_OWNS_MALLOC)
#define NTK_TEST_COUNTS_MALLOC 1
extern "C" void* __libc_malloc(std::size_t size);
extern "C" void* malloc(std::size_t size) noexcept {
  g_heap_calls.fetch_add(1, std::memory_order_relaxed);
  return __libc_malloc(size);
}
#endif

namespace {

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using ntk::CholeskyInfo;
using ntk::IncrementalCholesky;

long heap_calls() { return g_heap_calls.load(std::memory_order_relaxed); }

// Where the sanity checks publish their buffers, so the allocations cannot be elided.
const void* volatile g_sink = nullptr;

// ---------------------------------------------------------------------------------------
// Matrices the factor is tested on: items with a kernel between them, so that rows can be
// appended and removed while the test keeps the exact matrix.
//   kRandomSpd: K_ab = s_a s_b z_a.z_b / 8 + [a == b] e_a, z ~ N(0, I_8), s log-uniform in
//               [0.3, 3], e uniform in [0.05, 1]: SPD with condition number up to ~1e4.
//   kRbf:       K_ab = exp(-|x_a - x_b|^2 / 2), x ~ N(0, I_5): a real kernel Gram matrix,
//               numerically singular for large n, made definite by the factor's jitter.
enum class Family { kRandomSpd, kRbf };

std::string family_name(Family f) { return f == Family::kRandomSpd ? "random SPD" : "RBF"; }

struct Item {
  VectorXd z;
  double extra = 0.0;
};

class Source {
 public:
  Source(Family family, std::uint64_t seed) : family_(family), rng_(seed) {}

  Item draw() {
    Item it;
    std::normal_distribution<double> g;
    if (family_ == Family::kRandomSpd) {
      std::uniform_real_distribution<double> u(0.0, 1.0);
      const double scale = 0.3 * std::pow(10.0, u(rng_));
      it.z.resize(8);
      for (Index k = 0; k < 8; ++k) it.z(k) = scale * g(rng_) / std::sqrt(8.0);
      it.extra = 0.05 + 0.95 * u(rng_);
    } else {
      it.z.resize(5);
      for (Index k = 0; k < 5; ++k) it.z(k) = g(rng_);
    }
    return it;
  }

  // Kernel between two distinct items, and of an item with itself.
  double k(const Item& a, const Item& b) const {
    if (family_ == Family::kRandomSpd) return a.z.dot(b.z);
    return std::exp(-0.5 * (a.z - b.z).squaredNorm());
  }
  double self(const Item& a) const {
    return family_ == Family::kRandomSpd ? a.z.squaredNorm() + a.extra : 1.0;
  }

  VectorXd row(const std::vector<Item>& items, const Item& x) const {
    VectorXd r(static_cast<Index>(items.size()));
    for (std::size_t j = 0; j < items.size(); ++j) r(static_cast<Index>(j)) = k(items[j], x);
    return r;
  }

  MatrixXd gram(const std::vector<Item>& items) const {
    const Index n = static_cast<Index>(items.size());
    MatrixXd K(n, n);
    for (Index i = 0; i < n; ++i) {
      const auto ui = static_cast<std::size_t>(i);
      K(i, i) = self(items[ui]);
      for (Index j = 0; j < i; ++j) {
        K(i, j) = K(j, i) = k(items[ui], items[static_cast<std::size_t>(j)]);
      }
    }
    return K;
  }

  std::mt19937_64& rng() { return rng_; }

 private:
  Family family_;
  std::mt19937_64 rng_;
};

// The oracle: a fresh Cholesky factor of K + jitter I.
MatrixXd fresh_factor(const MatrixXd& K, double jitter) {
  MatrixXd A = K;
  A.diagonal().array() += jitter;
  const Eigen::LLT<MatrixXd> llt(A);
  REQUIRE(llt.info() == Eigen::Success);
  return llt.matrixL();
}

// |L - L_fresh|_F / |L_fresh|_F.
double factor_error(const IncrementalCholesky& c, const MatrixXd& K) {
  const MatrixXd Lf = fresh_factor(K, c.jitter());
  return (MatrixXd(c.matrixL()) - Lf).norm() / Lf.norm();
}

// |L L^T - (K + jitter I)|_F / |K + jitter I|_F, computed densely.
double dense_drift(const MatrixXd& L, const MatrixXd& K, double jitter) {
  MatrixXd Kj = K;
  Kj.diagonal().array() += jitter;
  return (L * L.transpose() - Kj).norm() / Kj.norm();
}

// The CONVENTION of cholesky.h.
void check_invariants(const IncrementalCholesky& c, Index expected_size) {
  REQUIRE(c.size() == expected_size);
  REQUIRE(c.size() <= c.capacity());
  const Eigen::Block<const MatrixXd> L = c.matrixL();
  bool zero_above = true;
  bool positive_diagonal = true;
  for (Index j = 0; j < L.cols(); ++j) {
    if (!(L(j, j) > 0.0 && std::isfinite(L(j, j)))) positive_diagonal = false;
    for (Index i = 0; i < j; ++i) zero_above = zero_above && L(i, j) == 0.0;
  }
  CHECK(zero_above);
  CHECK(positive_diagonal);
}

bool bitwise_equal(const MatrixXd& a, const MatrixXd& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  // memcmp must not see the null data() of an empty matrix.
  return a.size() == 0 ||
         std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<std::size_t>(a.size())) == 0;
}

// Message of the std::invalid_argument thrown by f ("" if none was thrown).
template <class F>
std::string invalid_argument_message(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

double relative_difference(double a, double b) {
  return std::abs(a - b) / std::max(std::abs(a), std::abs(b));
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// ---------------------------------------------------------------------------------------
// Random sequences of appends and removals.
struct SequencePlan {
  Family family;
  Index capacity;
  int ops;            // operations after the initial fill
  Index low_water;    // appends are forced below this size (the initial fill goes to it)
  int compare_every;  // fresh-factor comparison period, in operations
  int sweep;          // appends are likely (3/4) in the first half of each sweep of this
                      // many operations and unlikely (1/4) in the second: the size sweeps
                      // between low_water and capacity
  double jitter;
  double factor_tolerance;  // |L - L_fresh|_F / |L_fresh|_F
  std::uint64_t seed;
};

// Removal positions: first, middle, last, uniformly random.
constexpr int kFirst = 0;
constexpr int kMiddle = 1;
constexpr int kLast = 2;
constexpr int kRandom = 3;
constexpr int kRemovalKinds = 4;

struct SequenceResult {
  double max_factor_error = 0.0;
  double max_drift = 0.0;
  int comparisons = 0;
  int appends = 0;
  int full = 0;
  std::array<int, kRemovalKinds> removals{};
};

SequenceResult run_sequence(const SequencePlan& plan) {
  Source src(plan.family, plan.seed);
  std::mt19937_64& rng = src.rng();
  std::uniform_real_distribution<double> u(0.0, 1.0);
  IncrementalCholesky chol(plan.capacity, plan.jitter);
  IncrementalCholesky probe(plan.capacity, plan.jitter);
  std::vector<Item> items;
  SequenceResult res;
  VectorXd v;

  const auto compare = [&] {
    if (items.empty()) return;
    const MatrixXd K = src.gram(items);
    const double err = factor_error(chol, K);
    const double drift = chol.drift(K);
    CHECK(err <= plan.factor_tolerance);
    CHECK(drift <= 1e-13);
    res.max_factor_error = std::max(res.max_factor_error, err);
    res.max_drift = std::max(res.max_drift, drift);
    // The cached reciprocal pivots are exactly 1 / L(k, k) however L was reached: a
    // factor assigned from the same L solves bit for bit alike (model snapshots rely on
    // it).
    REQUIRE(probe.assign(chol.matrixL()) == CholeskyInfo::kSuccess);
    VectorXd b1 = VectorXd::LinSpaced(chol.size(), -1.0, 2.0);
    VectorXd b2 = b1;
    chol.solve_in_place(b1);
    probe.solve_in_place(b2);
    CHECK(bitwise_equal(b1, b2));
    ++res.comparisons;
  };

  const auto append = [&] {
    const Index n = chol.size();
    const Item x = src.draw();
    const VectorXd k_row = src.row(items, x);
    const double k_self = src.self(x);
    if (n == chol.capacity()) {
      const MatrixXd before = chol.matrixL();
      CHECK(chol.append(k_row, k_self) == CholeskyInfo::kFull);
      CHECK(bitwise_equal(chol.matrixL(), before));
      ++res.full;
      return false;
    }
    // The three entry points in turn; each must yield the row [v^T, pivot].
    v.resize(n);
    CholeskyInfo info = CholeskyInfo::kSuccess;
    switch (res.appends % 3) {
      case 0:
        info = chol.append(k_row, k_self);
        break;
      case 1:
        info = chol.append(k_row, k_self, v);
        break;
      default:
        v = k_row;
        chol.solve_lower_in_place(v);
        info = chol.append_solved(v, k_self);
        break;
    }
    REQUIRE(info == CholeskyInfo::kSuccess);
    if (res.appends % 3 != 0) CHECK(bitwise_equal(chol.matrixL().row(n).head(n), v.transpose()));
    items.push_back(x);
    ++res.appends;
    return true;
  };

  const auto remove = [&] {
    const Index n = chol.size();
    const int kind = std::min(kRemovalKinds - 1, static_cast<int>(u(rng) * kRemovalKinds));
    Index i = 0;
    switch (kind) {
      case kFirst:
        i = 0;
        break;
      case kMiddle:
        i = n / 2;
        break;
      case kLast:
        i = n - 1;
        break;
      default:
        i = std::min<Index>(n - 1, static_cast<Index>(u(rng) * static_cast<double>(n)));
        break;
    }
    chol.remove(i);
    items.erase(items.begin() + static_cast<std::ptrdiff_t>(i));
    ++res.removals[static_cast<std::size_t>(kind)];
  };

  while (chol.size() < plan.low_water) {
    append();
    check_invariants(chol, static_cast<Index>(items.size()));
  }
  compare();
  for (int op = 1; op <= plan.ops; ++op) {
    const Index n = chol.size();
    const double p_append = (op % plan.sweep) < plan.sweep / 2 ? 0.75 : 0.25;
    if (n == 0 || n < plan.low_water || u(rng) < p_append) {
      if (!append()) remove();  // full: the kFull check was the operation's first half
    } else {
      remove();
    }
    check_invariants(chol, static_cast<Index>(items.size()));
    if (op % plan.compare_every == 0) compare();
  }
  compare();
  return res;
}

// ---------------------------------------------------------------------------------------

TEST_CASE("constructor validates capacity and jitter") {
  const IncrementalCholesky c(5, 1e-8);
  CHECK(c.size() == 0);
  CHECK(c.capacity() == 5);
  CHECK(c.jitter() == 1e-8);
  CHECK(c.matrixL().size() == 0);
  CHECK(c.log_determinant() == 0.0);

  CHECK(contains(invalid_argument_message([] { IncrementalCholesky(0); }), "capacity"));
  CHECK(contains(invalid_argument_message([] { IncrementalCholesky(-3); }), "-3"));
  CHECK(contains(invalid_argument_message([] { IncrementalCholesky(4, -0.5); }), "-0.5"));
  CHECK(contains(invalid_argument_message([] { IncrementalCholesky(4, std::nan("")); }), "jitter"));
  CHECK(contains(invalid_argument_message(
                     [] { IncrementalCholesky(4, std::numeric_limits<double>::infinity()); }),
                 "inf"));
  CHECK_NOTHROW(IncrementalCholesky(1, 0.0));
}

TEST_CASE("precondition violations throw std::invalid_argument naming the values") {
  Source src(Family::kRandomSpd, 11);
  std::vector<Item> items;
  for (int i = 0; i < 4; ++i) items.push_back(src.draw());
  const MatrixXd K = src.gram(items);
  IncrementalCholesky c(6, 1e-9);
  REQUIRE(c.rebuild(K) == CholeskyInfo::kSuccess);
  const MatrixXd before = c.matrixL();

  VectorXd v3(3), v4(4), v5(5);
  v3.setOnes();
  v4.setOnes();
  v5.setOnes();
  CHECK(contains(invalid_argument_message([&] { c.append(v3, 1.0); }), "got 3"));
  CHECK(contains(invalid_argument_message([&] { c.append(v5, 1.0); }), "k_row"));
  CHECK(contains(invalid_argument_message([&] { c.append(v4, 1.0, v3); }), "v_out"));
  CHECK(contains(invalid_argument_message([&] { c.append_solved(v5, 1.0); }), "got 5"));
  CHECK(contains(invalid_argument_message([&] { c.remove(4); }), "got 4"));
  CHECK(contains(invalid_argument_message([&] { c.remove(-1); }), "got -1"));
  CHECK(contains(invalid_argument_message([&] { c.rebuild(MatrixXd::Identity(7, 7)); }), "7 x 7"));
  CHECK(contains(invalid_argument_message([&] { c.rebuild(MatrixXd::Identity(3, 2)); }), "3 x 2"));
  CHECK(contains(invalid_argument_message([&] { c.assign(MatrixXd::Identity(2, 3)); }), "2 x 3"));
  CHECK(contains(invalid_argument_message([&] { c.assign(MatrixXd::Identity(7, 7)); }),
                 "capacity() = 6"));
  CHECK(contains(invalid_argument_message([&] { c.solve_lower_in_place(v3); }), "got 3"));
  CHECK(contains(invalid_argument_message([&] { c.solve_upper_in_place(v5); }), "got 5"));
  CHECK(contains(invalid_argument_message([&] { c.solve_in_place(v3); }), "size() = 4"));
  CHECK(contains(invalid_argument_message([&] { (void)c.drift(MatrixXd::Identity(3, 3)); }),
                 "3 x 3"));
  // Nothing changed.
  CHECK(c.size() == 4);
  CHECK(bitwise_equal(c.matrixL(), before));
}

TEST_CASE("random append/remove sequences match a fresh factorization") {
  // Sizes 1, 2, 64 and 512 with 10^4 operations each.
  // The fill (low_water) for 512 keeps the size in [384, 512] so that the O(n^2)
  // operations are really at n ~ 512.
  for (const Family family : {Family::kRandomSpd, Family::kRbf}) {
    // RBF Gram matrices of 5-d Gaussian points are numerically singular; jitter 1e-6
    // bounds the condition number of K + jitter I by ~1e8 at n = 512.
    const double jitter = family == Family::kRandomSpd ? 0.0 : 1e-6;
    const double tol = 1e-10;
    const std::vector<SequencePlan> plans = {
        {family, 1, 10000, 0, 7, 20, jitter, tol, 101},
        {family, 2, 10000, 0, 7, 20, jitter, tol, 102},
        {family, 64, 10000, 0, 10, 400, jitter, tol, 103},
        {family, 512, 10000, 384, 600, 600, jitter, tol, 104},
    };
    for (const SequencePlan& plan : plans) {
      CAPTURE(family_name(family));
      CAPTURE(plan.capacity);
      const SequenceResult r = run_sequence(plan);
      MESSAGE(family_name(family) << " capacity " << plan.capacity << ": max |L - L_fresh|/|L| "
                                  << r.max_factor_error << ", max drift " << r.max_drift << " over "
                                  << r.comparisons << " comparisons; appends " << r.appends
                                  << ", kFull " << r.full << ", removals first "
                                  << r.removals[kFirst] << " middle " << r.removals[kMiddle]
                                  << " last " << r.removals[kLast] << " random "
                                  << r.removals[kRandom]);
      CHECK(r.comparisons >= 10);
      CHECK(r.full > 0);
      for (const int count : r.removals) CHECK(count > 0);
    }
  }
}

// A factor of capacity n built by n appends of fresh points from src (returned in items).
IncrementalCholesky appended_factor(Source& src, Index n, double jitter, std::vector<Item>& items) {
  IncrementalCholesky c(n, jitter);
  for (Index i = 0; i < n; ++i) {
    const Item x = src.draw();
    REQUIRE(c.append(src.row(items, x), src.self(x)) == CholeskyInfo::kSuccess);
    items.push_back(x);
  }
  return c;
}

TEST_CASE("remove at every index equals the factor of the reduced matrix") {
  for (const Family family : {Family::kRandomSpd, Family::kRbf}) {
    for (const Index n : {1, 2, 3, 9, 40}) {
      CAPTURE(family_name(family));
      CAPTURE(n);
      Source src(family, 200 + static_cast<std::uint64_t>(n));
      std::vector<Item> items;
      const IncrementalCholesky full = appended_factor(src, n, 1e-8, items);
      for (Index i = 0; i < n; ++i) {
        IncrementalCholesky c = full;
        c.remove(i);
        check_invariants(c, n - 1);
        std::vector<Item> reduced = items;
        reduced.erase(reduced.begin() + static_cast<std::ptrdiff_t>(i));
        if (n > 1) CHECK(factor_error(c, src.gram(reduced)) <= 1e-13);
        // The leading i x i block (L11) is untouched, bitwise.
        CHECK(bitwise_equal(c.matrixL().topLeftCorner(i, i), full.matrixL().topLeftCorner(i, i)));
      }
    }
  }
}

TEST_CASE("remove_solve_lower equals remove, then a forward solve with the fresh factor") {
  for (const Family family : {Family::kRandomSpd, Family::kRbf}) {
    for (const Index n : {1, 2, 3, 5, 9, 40, 130}) {
      CAPTURE(family_name(family));
      CAPTURE(n);
      Source src(family, 300 + static_cast<std::uint64_t>(n));
      std::vector<Item> items;
      const IncrementalCholesky full = appended_factor(src, n, 1e-8, items);
      std::mt19937_64 rng(static_cast<std::uint64_t>(n));
      std::normal_distribution<double> g;
      for (Index i = 0; i < n; ++i) {
        CAPTURE(i);
        VectorXd b(n - 1);
        for (Index k = 0; k < n - 1; ++k) b(k) = g(rng);
        IncrementalCholesky fused = full, plain = full;
        VectorXd x = b;
        fused.remove_solve_lower(i, x);
        plain.remove(i);
        check_invariants(fused, n - 1);
        // The factor is remove()'s, bitwise (the solve only reads the new values).
        CHECK(bitwise_equal(fused.matrixL(), plain.matrixL()));
        VectorXd probe = VectorXd::Ones(n - 1), probe_plain = probe;
        fused.solve_in_place(probe);
        plain.solve_in_place(probe_plain);
        CHECK(bitwise_equal(probe, probe_plain));
        if (n == 1) continue;
        // x against a triangular solve with a fresh factor of the reduced matrix.
        std::vector<Item> reduced = items;
        reduced.erase(reduced.begin() + static_cast<std::ptrdiff_t>(i));
        const MatrixXd Lf = fresh_factor(src.gram(reduced), 1e-8);
        const VectorXd expect = Lf.triangularView<Eigen::Lower>().solve(b);
        CHECK((x - expect).norm() <= 1e-9 * expect.norm());
        // and against remove() + solve_lower_in_place: the same sums in another order.
        VectorXd y = b;
        plain.solve_lower_in_place(y);
        CHECK((x - y).norm() <= 1e-13 * y.norm());
      }
      IncrementalCholesky c = full;
      VectorXd wrong(n);
      const std::string msg = invalid_argument_message([&] { c.remove_solve_lower(0, wrong); });
      CHECK(contains(msg, "b.size() must equal size() - 1 = " + std::to_string(n - 1)));
      VectorXd right(n - 1);
      CHECK(contains(invalid_argument_message([&] { c.remove_solve_lower(n, right); }),
                     "remove index must be in [0, size() = " + std::to_string(n) + "), got " +
                         std::to_string(n)));
      CHECK(c.size() == n);
    }
  }
}

TEST_CASE("remove(i, u): u = L'^{-1} k_i and Q_ii, and with them column i of the inverse") {
  // Oracles: a fresh factor of the reduced matrix (u), and the inverse of the full matrix
  // by LU (its column i, which the block inverse rebuilds from u).
  for (const Family family : {Family::kRandomSpd, Family::kRbf}) {
    for (const Index n : {1, 2, 3, 5, 9, 40, 130}) {
      CAPTURE(family_name(family));
      CAPTURE(n);
      Source src(family, 700 + static_cast<std::uint64_t>(n));
      std::vector<Item> items;
      const IncrementalCholesky full = appended_factor(src, n, 1e-8, items);
      MatrixXd K = src.gram(items);
      K.diagonal().array() += 1e-8;
      const MatrixXd Kinv = K.partialPivLu().inverse();
      std::mt19937_64 rng(static_cast<std::uint64_t>(n));
      std::normal_distribution<double> g;
      for (Index i = 0; i < n; ++i) {
        CAPTURE(i);
        IncrementalCholesky with_u = full, fused = full, plain = full;
        VectorXd u(n - 1), u_fused(n - 1);
        const double qii = with_u.remove(i, u);
        VectorXd b(n - 1);
        for (Index k = 0; k < n - 1; ++k) b(k) = g(rng);
        VectorXd x = b, x_plain = b;
        const double qii_fused = fused.remove_solve_lower(i, x, u_fused);
        plain.remove_solve_lower(i, x_plain);
        check_invariants(with_u, n - 1);
        // The factor and the solve are those of the calls without u, bitwise; u is the
        // same whichever removal computed it.
        CHECK(bitwise_equal(with_u.matrixL(), plain.matrixL()));
        CHECK(bitwise_equal(fused.matrixL(), plain.matrixL()));
        CHECK(bitwise_equal(x, x_plain));
        CHECK(bitwise_equal(u, u_fused));
        CHECK(qii == qii_fused);
        CHECK(std::abs(qii - Kinv(i, i)) <= 1e-7 * Kinv.col(i).norm());
        if (n == 1) continue;
        VectorXd k_i(n - 1);
        for (Index r = 0, k = 0; r < n; ++r) {
          if (r != i) k_i(k++) = K(r, i);
        }
        std::vector<Item> reduced = items;
        reduced.erase(reduced.begin() + static_cast<std::ptrdiff_t>(i));
        const MatrixXd Lf = fresh_factor(src.gram(reduced), 1e-8);
        const VectorXd expect = Lf.triangularView<Eigen::Lower>().solve(k_i);
        CHECK((u - expect).norm() <= 1e-9 * expect.norm() + 1e-300);
        // Column i of K^{-1}: Q_ii at i, -Q_ii L'^{-T} u elsewhere.
        VectorXd y = u;
        with_u.solve_upper_in_place(y);
        const double scale = Kinv.col(i).norm();
        for (Index r = 0, k = 0; r < n; ++r) {
          if (r != i) CHECK(std::abs(-qii * y(k++) - Kinv(r, i)) <= 1e-7 * scale);
        }
      }
      IncrementalCholesky c = full;
      VectorXd wrong(n), right(n - 1);
      CHECK(contains(invalid_argument_message([&] { c.remove(0, wrong); }),
                     "u.size() must equal size() - 1 = " + std::to_string(n - 1)));
      CHECK(contains(invalid_argument_message([&] { c.remove_solve_lower(0, right, wrong); }),
                     "u.size() must equal size() - 1 = " + std::to_string(n - 1)));
      CHECK(c.size() == n);
    }
  }
}

TEST_CASE("solve_upper_in_place(b, c) equals two single solves, bitwise") {
  for (const Index n : {1, 7, 8, 9, 64, 131}) {
    CAPTURE(n);
    Source src(Family::kRbf, 900 + static_cast<std::uint64_t>(n));
    std::vector<Item> items;
    const IncrementalCholesky c = appended_factor(src, n, 1e-6, items);
    std::mt19937_64 rng(static_cast<std::uint64_t>(n));
    std::normal_distribution<double> g;
    VectorXd b(n), d(n);
    for (Index k = 0; k < n; ++k) {
      b(k) = g(rng);
      d(k) = g(rng);
    }
    VectorXd b1 = b, d1 = d;
    c.solve_upper_in_place(b1);
    c.solve_upper_in_place(d1);
    c.solve_upper_in_place(b, d);
    CHECK(bitwise_equal(b, b1));
    CHECK(bitwise_equal(d, d1));
    VectorXd wrong(n + 1);
    CHECK(contains(invalid_argument_message([&] { c.solve_upper_in_place(b, wrong); }),
                   "c.size() must equal size() = " + std::to_string(n)));
  }
}

TEST_CASE("remove on extremely ill-conditioned factors: finite, backward stable") {
  // Factors installed by assign() (a snapshot can hold any valid factor) whose pivots span
  // many decades make p = L33^{-1} l32 huge; |p|^2 overflows past 1e154.
  SUBCASE("pivot ratio 1e-155: |p| = 1e155") {
    MatrixXd L(2, 2);
    L << 1.0, 0.0, 1.0, 1e-155;
    IncrementalCholesky c(2, 0.0);
    REQUIRE(c.assign(L) == CholeskyInfo::kSuccess);
    c.remove(0);
    check_invariants(c, 1);
    // K without row/column 0 is [1 + 1e-310] = [1] in double.
    CHECK(std::abs(c.matrixL()(0, 0) - 1.0) <= 4 * std::numeric_limits<double>::epsilon());
  }
  SUBCASE("entries near 1e160: the factor is representable, its Gram matrix is not") {
    MatrixXd L(2, 2);
    L << 1.0, 0.0, 1e160, 1e10;
    IncrementalCholesky c(2, 0.0);
    REQUIRE(c.assign(L) == CholeskyInfo::kSuccess);
    c.remove(0);
    check_invariants(c, 1);
    // sqrt(1e320 + 1e20) = 1e160 to double precision.
    CHECK(std::abs(c.matrixL()(0, 0) / 1e160 - 1.0) <= 4 * std::numeric_limits<double>::epsilon());
  }
  SUBCASE("s overflows mid-sweep: remove(i, u) switches to hypot, u and Q_ii stay exact") {
    // Removing row 0 with a trailing pivot of 1e-160 at trailing column 2: p_2 ~ 1e160, so
    // s = 1 + |p|^2 overflows there and the sweep carries sqrt(s) by hypot from then on.
    // l22 = 1e20 keeps Q_00 = (1 + |p|^2) / l22^2 ~ 1e280 finite. Checked in long double.
    using MatL = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;
    using VecL = Eigen::Matrix<long double, Eigen::Dynamic, 1>;
    const Index n = 7;
    MatrixXd L = MatrixXd::Zero(n, n);
    const double diag[n] = {1e20, 1.0, 0.5, 1e-160, 2.0, 1.0, 0.75};
    std::mt19937_64 rng(11);
    std::uniform_real_distribution<double> unif(0.5, 1.5);
    for (Index j = 0; j < n; ++j) {
      L(j, j) = diag[j];
      for (Index r = j + 1; r < n; ++r) L(r, j) = unif(rng);
    }
    IncrementalCholesky c(n, 0.0);
    REQUIRE(c.assign(L) == CholeskyInfo::kSuccess);
    VectorXd u(n - 1);
    const double q00 = c.remove(0, u);
    check_invariants(c, n - 1);
    const MatL Ll = L.cast<long double>();
    const MatL K = Ll * Ll.transpose();
    // Q_00 = |L^{-1} e_0|^2.
    VecL e = VecL::Zero(n);
    e(0) = 1.0L;
    const VecL z = Ll.triangularView<Eigen::Lower>().solve(e);
    const long double q00_true = z.squaredNorm();
    CHECK(std::isfinite(q00));
    CHECK(std::abs(static_cast<long double>(q00) / q00_true - 1.0L) <= 1e-12L);
    // L' u = k_0 (column 0 of K without entry 0), relative to |L'| |u|.
    const MatL Ln = MatrixXd(c.matrixL()).cast<long double>();
    const VecL ul = u.cast<long double>();
    const VecL k0 = K.col(0).tail(n - 1);
    const long double res = (Ln * ul - k0).norm() / (Ln.norm() * ul.norm());
    CHECK(res <= 1e-14L);
  }
  SUBCASE("random factors with pivots in [1e-6, 1]: L' L'^T = the reduced L L^T") {
    // Checked in long double against (P L)(P L)^T, P deleting row i, relative to its norm.
    using MatL = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;
    std::mt19937_64 rng(20261202);
    std::normal_distribution<double> normal(0.0, 1.0);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    double worst = 0.0;
    for (int trial = 0; trial < 300; ++trial) {
      const Index n = 2 + static_cast<Index>(rng() % 40);
      MatrixXd L = MatrixXd::Zero(n, n);
      for (Index j = 0; j < n; ++j) {
        L(j, j) = std::pow(10.0, -6.0 * u(rng)) * (0.5 + u(rng));
        for (Index r = j + 1; r < n; ++r) L(r, j) = normal(rng);
      }
      const Index i =
          trial % 3 == 0 ? 0 : static_cast<Index>(rng() % static_cast<std::uint64_t>(n));
      CAPTURE(trial);
      CAPTURE(n);
      CAPTURE(i);
      IncrementalCholesky c(n, 0.0);
      REQUIRE(c.assign(L) == CholeskyInfo::kSuccess);
      c.remove(i);
      check_invariants(c, n - 1);
      MatL PL(n - 1, n);
      for (Index r = 0, k = 0; r < n; ++r) {
        if (r != i) PL.row(k++) = L.row(r).cast<long double>();
      }
      const MatL target = PL * PL.transpose();
      const MatL Ln = MatrixXd(c.matrixL()).cast<long double>();
      const double err = static_cast<double>((Ln * Ln.transpose() - target).norm() / target.norm());
      CHECK(err <= 1e-14);
      worst = std::max(worst, err);
    }
    MESSAGE("worst backward error of remove on ill-conditioned factors: " << worst);
  }
}

TEST_CASE("append returns v = L^{-1} k_row, and the three append paths agree bitwise") {
  Source src(Family::kRbf, 7);
  std::vector<Item> items;
  IncrementalCholesky a(50, 1e-6), b(50, 1e-6), c(50, 1e-6);
  for (int i = 0; i < 50; ++i) {
    const Item x = src.draw();
    const VectorXd k_row = src.row(items, x);
    const double k_self = src.self(x);
    VectorXd v(a.size());
    if (i > 0) {
      // v against the oracle's forward solve, before the append.
      const MatrixXd Lf = fresh_factor(src.gram(items), 1e-6);
      const VectorXd v_ref = Lf.triangularView<Eigen::Lower>().solve(k_row);
      REQUIRE(a.append(k_row, k_self, v) == CholeskyInfo::kSuccess);
      CHECK((v - v_ref).norm() <= 1e-10 * v_ref.norm());
    } else {
      REQUIRE(a.append(k_row, k_self, v) == CholeskyInfo::kSuccess);
    }
    REQUIRE(b.append(k_row, k_self) == CholeskyInfo::kSuccess);
    VectorXd w = k_row;
    c.solve_lower_in_place(w);
    REQUIRE(c.append_solved(w, k_self) == CholeskyInfo::kSuccess);
    items.push_back(x);
  }
  CHECK(bitwise_equal(a.matrixL(), b.matrixL()));
  CHECK(bitwise_equal(a.matrixL(), c.matrixL()));
  CHECK(factor_error(a, src.gram(items)) <= 1e-10);

  // v_out may alias k_row.
  IncrementalCholesky d(3, 0.0);
  REQUIRE(d.append(VectorXd(0), 4.0) == CholeskyInfo::kSuccess);  // L = [2]
  VectorXd kv(1);
  kv << 2.0;
  REQUIRE(d.append(kv, 5.0, kv) == CholeskyInfo::kSuccess);  // v = 1, pivot^2 = 4
  CHECK(kv(0) == 1.0);
  CHECK(d.matrixL()(1, 0) == 1.0);
  CHECK(d.matrixL()(1, 1) == 2.0);
}

TEST_CASE("solves and log-determinant against LLT, LU and residuals") {
  // 9 and 131: a narrow bottom block above full ones (the upper solve's blocks are
  // aligned to multiples of 8 from the top).
  for (const Index n : {1, 5, 9, 64, 131, 200}) {
    CAPTURE(n);
    Source src(Family::kRandomSpd, 300 + static_cast<std::uint64_t>(n));
    std::vector<Item> items;
    for (Index i = 0; i < n; ++i) items.push_back(src.draw());
    const MatrixXd K = src.gram(items);
    const double jitter = 1e-7;
    IncrementalCholesky c(n, jitter);
    for (Index i = 0; i < n; ++i) {
      const std::vector<Item> head(items.begin(), items.begin() + static_cast<std::ptrdiff_t>(i));
      const Item& x = items[static_cast<std::size_t>(i)];
      REQUIRE(c.append(src.row(head, x), src.self(x)) == CholeskyInfo::kSuccess);
    }
    MatrixXd A = K;
    A.diagonal().array() += jitter;
    const Eigen::LLT<MatrixXd> llt(A);
    REQUIRE(llt.info() == Eigen::Success);

    std::mt19937_64 rng(9);
    std::normal_distribution<double> g;
    VectorXd b(n);
    for (Index i = 0; i < n; ++i) b(i) = g(rng);

    VectorXd lo = b;
    c.solve_lower_in_place(lo);
    const VectorXd lo_ref = llt.matrixL().solve(b);
    CHECK((lo - lo_ref).norm() <= 1e-11 * lo_ref.norm());

    VectorXd up = b;
    c.solve_upper_in_place(up);
    const VectorXd up_ref = llt.matrixU().solve(b);
    CHECK((up - up_ref).norm() <= 1e-11 * up_ref.norm());

    VectorXd x = b;
    c.solve_in_place(x);
    const VectorXd x_ref = llt.solve(b);
    CHECK((x - x_ref).norm() <= 1e-10 * x_ref.norm());
    // Backward error, independent of any factorization.
    CHECK((A * x - b).norm() <= 1e-13 * (A.norm() * x.norm() + b.norm()));

    // log det from LU with partial pivoting.
    const Eigen::PartialPivLU<MatrixXd> lu(A);
    const double logdet_ref = lu.matrixLU().diagonal().array().abs().log().sum();
    CHECK(std::abs(c.log_determinant() - logdet_ref) <= 1e-12 * (1.0 + std::abs(logdet_ref)));
  }
  // Known closed form: K = diag(1, 4, 9) → log det = log 36.
  IncrementalCholesky d(3);
  REQUIRE(d.rebuild(Eigen::Vector3d(1.0, 4.0, 9.0).asDiagonal().toDenseMatrix()) ==
          CholeskyInfo::kSuccess);
  CHECK(relative_difference(d.log_determinant(), std::log(36.0)) <= 1e-15);
}

TEST_CASE("solve_lower_trailing_in_place: the tail of a forward solve of [0; b]") {
  // Oracle: a fresh LLT's forward solve of the right-hand side that is zero above `from`;
  // its tail is the trailing block's solve. n = 21 crosses the solves' 8-column panels;
  // from = n (an empty trailing block) is in the documented range [0, size()].
  const Index n = 21;
  Source src(Family::kRandomSpd, 77);
  std::vector<Item> items;
  for (Index i = 0; i < n; ++i) items.push_back(src.draw());
  const MatrixXd K = src.gram(items);
  const double jitter = 1e-6;
  IncrementalCholesky c(n + 3, jitter);
  REQUIRE(c.rebuild(K) == CholeskyInfo::kSuccess);
  const MatrixXd Lf = fresh_factor(K, jitter);
  std::mt19937_64 rng(13);
  std::normal_distribution<double> g;
  for (Index from = 0; from <= n; ++from) {
    CAPTURE(from);
    VectorXd b(n - from);
    for (Index i = 0; i < b.size(); ++i) b(i) = g(rng);
    VectorXd z = VectorXd::Zero(n);
    z.tail(n - from) = b;
    const VectorXd ref = Lf.triangularView<Eigen::Lower>().solve(z).tail(n - from);
    VectorXd x = b;
    CHECK_NOTHROW(c.solve_lower_trailing_in_place(from, x));
    CHECK((x - ref).norm() <= 1e-12 * std::max(1.0, ref.norm()));
  }
  VectorXd empty(0), one(1), two(2);
  CHECK(contains(invalid_argument_message([&] { c.solve_lower_trailing_in_place(-1, one); }),
                 "from must be in [0, size() = 21], got -1"));
  CHECK(contains(invalid_argument_message([&] { c.solve_lower_trailing_in_place(n + 1, empty); }),
                 "got 22"));
  CHECK(contains(invalid_argument_message([&] { c.solve_lower_trailing_in_place(n - 1, two); }),
                 "b.size() must equal size() - from = 1, got 2"));
}

TEST_CASE("assign reports the first row holding a non-finite entry, not the last found") {
  // The strict lower triangle is scanned column by column; the status names the lowest row
  // index among all the bad entries, even when a later column holds a bad entry further
  // down.
  Source src(Family::kRandomSpd, 45);
  std::vector<Item> items;
  for (int i = 0; i < 12; ++i) items.push_back(src.draw());
  const MatrixXd Lf = fresh_factor(src.gram(items), 1e-3);
  IncrementalCholesky c(12, 1e-3);
  MatrixXd bad = Lf;
  bad(8, 2) = std::numeric_limits<double>::infinity();
  bad(9, 6) = std::nan("");
  CHECK(c.assign(bad) == CholeskyInfo::kNotPositiveDefinite);
  CHECK(c.failed_index() == 8);
  bad = Lf;
  bad(5, 0) = std::nan("");
  bad(11, 4) = -std::numeric_limits<double>::infinity();
  bad(10, 9) = std::nan("");
  CHECK(c.assign(bad) == CholeskyInfo::kNotPositiveDefinite);
  CHECK(c.failed_index() == 5);
  CHECK(c.size() == 0);
}

TEST_CASE("drift is ~1e-16 after a rebuild and measures a perturbed factor") {
  Source src(Family::kRandomSpd, 17);
  std::vector<Item> items;
  for (int i = 0; i < 120; ++i) items.push_back(src.draw());
  const MatrixXd K = src.gram(items);
  const double jitter = 1e-5;
  IncrementalCholesky c(128, jitter);
  REQUIRE(c.rebuild(K) == CholeskyInfo::kSuccess);
  const double d0 = c.drift(K);
  MESSAGE("drift after rebuild (n = 120): " << d0);
  CHECK(d0 <= 1e-15);
  CHECK(dense_drift(c.matrixL(), K, jitter) <= 1e-15);
  CHECK(factor_error(c, K) <= 1e-13);

  // A perturbed factor, installed with assign: drift equals the dense value.
  MatrixXd P = c.matrixL();
  P(70, 30) += 1e-4;
  P(5, 5) *= 1.001;
  REQUIRE(c.assign(P) == CholeskyInfo::kSuccess);
  const double dp = c.drift(K);
  const double dp_ref = dense_drift(P, K, jitter);
  CHECK(dp > 1e-6);
  CHECK(relative_difference(dp, dp_ref) <= 1e-10);

  // Both triangles of K are measured: an asymmetric K is not symmetrized.
  MatrixXd Ka = K;
  Ka(3, 100) += 0.25;
  CHECK(relative_difference(c.drift(Ka), dense_drift(P, Ka, jitter)) <= 1e-10);

  // K == 0: no scale, drift is 0 by definition.
  IncrementalCholesky z(4, 1.0);
  REQUIRE(z.rebuild(MatrixXd::Zero(4, 4)) == CholeskyInfo::kSuccess);
  CHECK(bitwise_equal(z.matrixL(), MatrixXd::Identity(4, 4)));
  CHECK(z.drift(MatrixXd::Zero(4, 4)) == 0.0);
  IncrementalCholesky e(4);
  CHECK(e.drift(MatrixXd(0, 0)) == 0.0);
}

TEST_CASE("drift is scale-invariant down to 1e-170 and up to 1e290, and exact in between") {
  // Kernel values of accepted inputs reach 1e300 (linear or NTK kernels at |x| = 1e150):
  // squared unscaled they overflowed (NaN), and near 1e-170 they underflowed (0).
  Source src(Family::kRandomSpd, 23);
  std::vector<Item> items;
  for (int i = 0; i < 40; ++i) items.push_back(src.draw());
  const MatrixXd K = src.gram(items);
  IncrementalCholesky c(40, 0.0);
  REQUIRE(c.rebuild(K) == CholeskyInfo::kSuccess);
  MatrixXd P = c.matrixL();
  P(20, 10) += 1e-3;
  REQUIRE(c.assign(P) == CholeskyInfo::kSuccess);
  const double d1 = c.drift(K);
  CHECK(relative_difference(d1, dense_drift(P, K, 0.0)) <= 1e-10);
  for (const double s : {1e-170, 1e-100, 0x1p-300, 1e100, 1e290}) {
    CAPTURE(s);
    IncrementalCholesky cs(40, 0.0);
    REQUIRE(cs.assign(P * std::sqrt(s)) == CholeskyInfo::kSuccess);
    const double ds = cs.drift(K * s);
    CHECK(std::isfinite(ds));
    CHECK(relative_difference(ds, d1) <= 1e-12);
  }
  // A power-of-two scale changes nothing at all.
  IncrementalCholesky c4(40, 0.0);
  REQUIRE(c4.assign(P * 0x1p-40) == CholeskyInfo::kSuccess);
  CHECK(c4.drift(K * 0x1p-80) == d1);
}

TEST_CASE("drift with a jitter far above K: relative to K + jitter I, finite and exact") {
  // The factor approximates K + jitter I. Relative to |K|_F, its rounding read as a drift
  // of 1e-3 at K near 1e-19 under jitter 1e-6, and overflowed at K near 1e-199.
  Source src(Family::kRandomSpd, 29);
  std::vector<Item> items;
  for (int i = 0; i < 30; ++i) items.push_back(src.draw());
  const MatrixXd K = src.gram(items);
  for (const double s : {1.0, 1e-13, 1e-199}) {
    CAPTURE(s);
    const double jitter = 1e-6;
    IncrementalCholesky c(30, jitter);
    REQUIRE(c.rebuild(K * s) == CholeskyInfo::kSuccess);
    const double d0 = c.drift(K * s);
    CHECK(std::isfinite(d0));
    CHECK(d0 <= 1e-15);
    // A perturbed factor: the dense value, whose norms neither overflow nor underflow here.
    MatrixXd P = c.matrixL();
    P(20, 10) += 1e-6;
    REQUIRE(c.assign(P) == CholeskyInfo::kSuccess);
    CHECK(relative_difference(c.drift(K * s), dense_drift(P, K * s, jitter)) <= 1e-10);
  }
}

TEST_CASE("assign refuses a diagonal whose reciprocal overflows") {
  // The solves multiply by the stored 1 / L_kk: a subnormal pivot gave inf, then NaN.
  MatrixXd L(2, 2);
  L << 1.0, 0.0, 0.5, 1e-310;
  IncrementalCholesky c(2);
  CHECK(c.assign(L) == CholeskyInfo::kNotPositiveDefinite);
  CHECK(c.failed_index() == 1);
  CHECK(c.size() == 0);
  L(1, 1) = 1e-300;  // small but normal: accepted, and solves stay finite
  REQUIRE(c.assign(L) == CholeskyInfo::kSuccess);
  VectorXd b = VectorXd::Ones(2);
  c.solve_lower_in_place(b);
  CHECK(b.allFinite());
}

TEST_CASE("a non-positive pivot is a status and leaves the factor bitwise unchanged") {
  // RBF points, jitter 0. Appending a copy of point 0: L(:, 0) = K(:, 0) exactly (L00 = 1),
  // so the forward solve gives v = e_0 exactly and pivot^2 = 1 - 1 = 0 exactly.
  Source src(Family::kRbf, 23);
  std::vector<Item> items;
  IncrementalCholesky c(40, 0.0);
  for (int i = 0; i < 30; ++i) {
    const Item x = src.draw();
    REQUIRE(c.append(src.row(items, x), src.self(x)) == CholeskyInfo::kSuccess);
    items.push_back(x);
  }
  c.remove(17);  // removals after index 0 keep column 0 intact
  items.erase(items.begin() + 17);
  c.remove(28);
  items.erase(items.begin() + 28);
  const Index n = c.size();
  const MatrixXd before = c.matrixL();
  const VectorXd dup = src.row(items, items[0]);
  // src.row() evaluates k(x_j, x_0); for j = 0 that is the self value 1 as well.
  REQUIRE(dup(0) == 1.0);

  CHECK(c.append(dup, 1.0) == CholeskyInfo::kNotPositiveDefinite);
  CHECK(c.failed_pivot() == 0.0);
  CHECK(c.failed_index() == n);
  CHECK(c.size() == n);
  CHECK(bitwise_equal(c.matrixL(), before));

  VectorXd v(n);
  CHECK(c.append(dup, 0.75, v) == CholeskyInfo::kNotPositiveDefinite);
  CHECK(c.failed_pivot() == -0.25);
  CHECK(bitwise_equal(v, VectorXd::Unit(n, 0)));
  CHECK(c.append_solved(v, 1.0) == CholeskyInfo::kNotPositiveDefinite);
  CHECK(bitwise_equal(c.matrixL(), before));

  // Non-finite inputs are refused the same way.
  CHECK(c.append(dup, std::nan("")) == CholeskyInfo::kNotPositiveDefinite);
  CHECK(std::isnan(c.failed_pivot()));
  CHECK(c.append(dup, std::numeric_limits<double>::infinity()) ==
        CholeskyInfo::kNotPositiveDefinite);
  VectorXd bad = src.row(items, src.draw());
  bad(3) = std::numeric_limits<double>::infinity();
  CHECK(c.append(bad, 1.0) == CholeskyInfo::kNotPositiveDefinite);
  CHECK(c.size() == n);
  CHECK(bitwise_equal(c.matrixL(), before));

  // The object is still usable: a genuine new point is accepted.
  const Item x = src.draw();
  REQUIRE(c.append(src.row(items, x), src.self(x)) == CholeskyInfo::kSuccess);
  items.push_back(x);
  check_invariants(c, n + 1);
  CHECK(dense_drift(c.matrixL(), src.gram(items), 0.0) <= 1e-14);
}

TEST_CASE("append on a full factor returns kFull and changes nothing") {
  IncrementalCholesky c(3, 0.5);
  REQUIRE(c.append(VectorXd(0), 1.0) == CholeskyInfo::kSuccess);
  REQUIRE(c.append(VectorXd::Constant(1, 0.5), 1.0) == CholeskyInfo::kSuccess);
  REQUIRE(c.append(VectorXd::Constant(2, 0.25), 1.0) == CholeskyInfo::kSuccess);
  const MatrixXd before = c.matrixL();
  VectorXd v = VectorXd::Constant(3, 7.0);
  CHECK(c.append(VectorXd::Constant(3, 0.1), 1.0) == CholeskyInfo::kFull);
  CHECK(c.append(VectorXd::Constant(3, 0.1), 1.0, v) == CholeskyInfo::kFull);
  CHECK(c.append_solved(VectorXd::Constant(3, 0.1), 1.0) == CholeskyInfo::kFull);
  CHECK(bitwise_equal(v, VectorXd::Constant(3, 7.0)));
  CHECK(c.size() == 3);
  CHECK(bitwise_equal(c.matrixL(), before));
  // K = [[1 .5 .25] [.5 1 .25] [.25 .25 1]] + 0.5 I.
  MatrixXd K(3, 3);
  K << 1.0, 0.5, 0.25, 0.5, 1.0, 0.25, 0.25, 0.25, 1.0;
  CHECK(factor_error(c, K) <= 1e-15);
}

TEST_CASE("rebuild: factor of K + jitter I, failure at Sylvester's first non-positive minor") {
  std::mt19937_64 rng(31);
  std::normal_distribution<double> g;
  const Index n = 60;
  MatrixXd Q = MatrixXd::NullaryExpr(n, n, [&] { return g(rng); });
  Q = Eigen::HouseholderQR<MatrixXd>(Q).householderQ();
  VectorXd eig = VectorXd::LinSpaced(n, 0.5, 3.0);
  eig(41) = -0.7;  // one negative eigenvalue: indefinite
  const MatrixXd Kind = Q * eig.asDiagonal() * Q.transpose();
  const double jitter = 0.1;

  // Oracle: the first k whose leading (k+1) x (k+1) minor of Kind + jitter I is <= 0,
  // and pivot^2 = det_(k+1) / det_k (both from LU).
  MatrixXd A = Kind;
  A.diagonal().array() += jitter;
  Index k_ref = -1;
  double p2_ref = 0.0;
  double det_prev = 1.0;
  for (Index k = 0; k < n; ++k) {
    const double det = Eigen::PartialPivLU<MatrixXd>(A.topLeftCorner(k + 1, k + 1)).determinant();
    if (det <= 0.0) {
      k_ref = k;
      p2_ref = det / det_prev;
      break;
    }
    det_prev = det;
  }
  REQUIRE(k_ref >= 1);

  IncrementalCholesky c(64, jitter);
  CHECK(c.rebuild(Kind) == CholeskyInfo::kNotPositiveDefinite);
  CHECK(c.size() == 0);
  CHECK(c.failed_index() == k_ref);
  CHECK(relative_difference(c.failed_pivot(), p2_ref) <= 1e-8);

  // A NaN in the lower triangle fails at its row; one in the upper triangle is not read.
  MatrixXd Kspd = Q * VectorXd::LinSpaced(n, 0.5, 3.0).asDiagonal() * Q.transpose();
  MatrixXd Knan = Kspd;
  Knan(33, 12) = std::nan("");
  CHECK(c.rebuild(Knan) == CholeskyInfo::kNotPositiveDefinite);
  CHECK(c.failed_index() == 33);
  CHECK(c.size() == 0);
  Knan = Kspd;
  Knan(12, 33) = std::nan("");
  REQUIRE(c.rebuild(Knan) == CholeskyInfo::kSuccess);
  const MatrixXd L_from_lower = c.matrixL();
  REQUIRE(c.rebuild(Kspd) == CholeskyInfo::kSuccess);
  CHECK(bitwise_equal(c.matrixL(), L_from_lower));
  check_invariants(c, n);
  CHECK(factor_error(c, Kspd) <= 1e-13);

  // Reuse after a larger factor: a smaller rebuild sees none of the old contents.
  const MatrixXd Ksmall = Kspd.topLeftCorner(17, 17);
  REQUIRE(c.rebuild(Ksmall) == CholeskyInfo::kSuccess);
  check_invariants(c, 17);
  CHECK(factor_error(c, Ksmall) <= 1e-13);
  // ... and appends continue from the rebuilt factor.
  REQUIRE(c.append(Kspd.col(17).head(17), Kspd(17, 17)) == CholeskyInfo::kSuccess);
  CHECK(factor_error(c, Kspd.topLeftCorner(18, 18)) <= 1e-13);

  REQUIRE(c.rebuild(MatrixXd(0, 0)) == CholeskyInfo::kSuccess);
  CHECK(c.size() == 0);
}

TEST_CASE("assign installs a factor, reading only its lower triangle") {
  Source src(Family::kRandomSpd, 41);
  std::vector<Item> items;
  for (int i = 0; i < 12; ++i) items.push_back(src.draw());
  const MatrixXd K = src.gram(items);
  const MatrixXd Lf = fresh_factor(K, 1e-3);

  IncrementalCholesky c(16, 1e-3);
  MatrixXd with_garbage = Lf;
  with_garbage.triangularView<Eigen::StrictlyUpper>().setConstant(std::nan(""));
  REQUIRE(c.assign(with_garbage) == CholeskyInfo::kSuccess);
  check_invariants(c, 12);
  CHECK(bitwise_equal(c.matrixL(), Lf));

  // Refusals leave the installed factor alone.
  MatrixXd bad = Lf;
  bad(4, 4) = 0.0;
  bad(7, 7) = -1.0;
  CHECK(c.assign(bad) == CholeskyInfo::kNotPositiveDefinite);
  CHECK(c.failed_index() == 4);
  bad = Lf;
  bad(9, 2) = std::numeric_limits<double>::infinity();
  bad(8, 6) = std::nan("");
  CHECK(c.assign(bad) == CholeskyInfo::kNotPositiveDefinite);
  CHECK(c.failed_index() == 8);
  CHECK(c.size() == 12);
  CHECK(bitwise_equal(c.matrixL(), Lf));

  // The assigned factor keeps working: remove and append against the oracle.
  c.remove(3);
  items.erase(items.begin() + 3);
  const Item x = src.draw();
  REQUIRE(c.append(src.row(items, x), src.self(x)) == CholeskyInfo::kSuccess);
  items.push_back(x);
  CHECK(factor_error(c, src.gram(items)) <= 1e-13);
}

TEST_CASE("no heap allocation after construction") {
#if defined(NTK_TEST_COUNTS_MALLOC)
  // The counter sees Eigen's own allocations (std::malloc), not only operator new.
  long before = heap_calls();
  {
    const VectorXd tmp = VectorXd::Zero(1000);
    g_sink = tmp.data();
  }
  CHECK(heap_calls() > before);
#else
  long before = heap_calls();
  {
    const std::vector<int> tmp(1000);
    g_sink = tmp.data();
  }
  CHECK(heap_calls() > before);
#endif

  // Everything the operations need is prepared before counting starts.
  const Index cap = 300;
  Source src(Family::kRbf, 53);
  std::vector<Item> items;
  for (Index i = 0; i < cap + 1; ++i) items.push_back(src.draw());
  const MatrixXd K = src.gram(items);
  const double jitter = 1e-6;
  const MatrixXd Lf = fresh_factor(K.topLeftCorner(cap, cap), jitter);
  VectorXd v(cap), b(cap);
  b.setOnes();

  IncrementalCholesky c(cap, jitter);
  const long start = heap_calls();
  bool all_ok = true;
  for (Index i = 0; i < cap; ++i) {
    CholeskyInfo info = CholeskyInfo::kSuccess;
    const Eigen::Ref<const VectorXd> k_row = K.col(i).head(i);  // contiguous: no copy
    if (i % 3 == 0) {
      info = c.append(k_row, K(i, i));
    } else if (i % 3 == 1) {
      info = c.append(k_row, K(i, i), v.head(i));
    } else {
      v.head(i) = k_row;
      c.solve_lower_in_place(v.head(i));
      info = c.append_solved(v.head(i), K(i, i));
    }
    all_ok = all_ok && info == CholeskyInfo::kSuccess;
  }
  all_ok = all_ok && c.append(K.col(cap).head(cap), K(cap, cap)) == CholeskyInfo::kFull;
  c.solve_lower_in_place(b);
  c.solve_upper_in_place(b);
  c.solve_in_place(b);
  const double logdet = c.log_determinant();
  const double drift = c.drift(K.topLeftCorner(cap, cap));
  all_ok = all_ok && c.assign(Lf) == CholeskyInfo::kSuccess;
  c.remove(0);
  c.remove(c.size() / 2);
  c.remove(c.size() - 1);
  c.remove(77);
  c.remove_solve_lower(0, b.head(c.size() - 1));
  c.remove_solve_lower(c.size() / 2, b.head(c.size() - 1));
  c.remove(3, v.head(c.size() - 1));
  c.remove_solve_lower(5, b.head(c.size() - 1), v.head(c.size() - 1));
  c.solve_upper_in_place(b.head(c.size()), v.head(c.size()));
  all_ok = all_ok && c.rebuild(K.topLeftCorner(cap, cap)) == CholeskyInfo::kSuccess;
  const long allocations = heap_calls() - start;

  CHECK(allocations == 0);
  CHECK(all_ok);
  CHECK(std::isfinite(logdet));
  CHECK(drift <= 1e-13);
  CHECK(factor_error(c, K.topLeftCorner(cap, cap)) <= 1e-10);
}

}  // namespace
