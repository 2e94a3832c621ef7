// IncrementalCholesky operations at a steady size n, on RBF Gram matrices of 5-d Gaussian
// points (jitter 1e-6) — the dictionary Gram matrix of the GP model:
//   append      n-1 -> n (followed by remove(n-1), O(1), to keep the size constant)
//   remove_*    n -> n-1 at index 0 (sliding window), n/2, n-1; the factor is refilled
//               by an untimed append of a fresh point (manual timing of the remove only)
//   solve       solve_in_place, b <- (L L^T)^{-1} b
//   solve_lower / solve_upper   b <- L^{-1} b and b <- L^{-T} b; the /eigen variants run
//               Eigen's triangularView solves on matrixL(), for reference
//   rebuild     full refactorization (the periodic recomputation), for reference
// Times are per operation.
//
//   cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DNTK_NATIVE=ON
//         -DNTK_BUILD_BENCH=ON
//   cmake --build build-bench --target bench_cholesky
//   build-bench/bench/bench_cholesky
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <vector>

#include "bench_context.h"
#include "ntk/core/cholesky.h"

namespace {

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using ntk::CholeskyInfo;
using ntk::IncrementalCholesky;

constexpr Index kDim = 5;
constexpr double kJitter = 1e-6;

// A dictionary of points (rows of X, in factor order) with its factor.
class Dictionary {
 public:
  Dictionary(Index n, std::uint64_t seed) : X_(n, kDim), chol_(n, kJitter), rng_(seed) {
    for (Index i = 0; i < n; ++i) append_fresh();
  }

  IncrementalCholesky& chol() { return chol_; }

  // k(x, X_j) = exp(-|x - X_j|^2 / 2) for the current dictionary.
  void kernel_row(const VectorXd& x, VectorXd& k) const {
    const Index n = chol_.size();
    k.resize(n);
    for (Index j = 0; j < n; ++j) k(j) = std::exp(-0.5 * (X_.row(j).transpose() - x).squaredNorm());
  }

  VectorXd fresh_point() {
    VectorXd x(kDim);
    for (Index k = 0; k < kDim; ++k) x(k) = gauss_(rng_);
    return x;
  }

  void append_fresh() {
    const VectorXd x = fresh_point();
    kernel_row(x, k_);
    if (chol_.append(k_, 1.0) != CholeskyInfo::kSuccess) {
      throw std::runtime_error("bench_cholesky: a Gaussian point was refused");
    }
    X_.row(chol_.size() - 1) = x.transpose();
  }

  // Removes basis i from the factor (timed by the caller) and from X (untimed).
  void erase_point(Index i) {
    const Index n = chol_.size() + 1;  // the factor has already dropped it
    for (Index r = i; r + 1 < n; ++r) X_.row(r) = X_.row(r + 1);
  }

 private:
  MatrixXd X_;
  IncrementalCholesky chol_;
  std::mt19937_64 rng_;
  std::normal_distribution<double> gauss_;
  VectorXd k_;
};

void BM_append(benchmark::State& state) {
  const Index n = state.range(0);
  Dictionary dict(n, 1);
  IncrementalCholesky& chol = dict.chol();
  chol.remove(n - 1);
  // Candidate rows against the fixed (n-1)-point dictionary, cycled through.
  constexpr int kRows = 64;
  std::vector<VectorXd> rows(kRows);
  for (VectorXd& r : rows) dict.kernel_row(dict.fresh_point(), r);
  int next = 0;
  for (auto _ : state) {
    const CholeskyInfo info = chol.append(rows[static_cast<std::size_t>(next)], 1.0);
    benchmark::DoNotOptimize(info);
    chol.remove(n - 1);
    next = (next + 1) % kRows;
  }
}

enum class Where { kFirst, kMiddle, kLast };

void BM_remove(benchmark::State& state, Where where) {
  const Index n = state.range(0);
  Dictionary dict(n, 2);
  IncrementalCholesky& chol = dict.chol();
  const Index i = where == Where::kFirst ? 0 : where == Where::kMiddle ? n / 2 : n - 1;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    chol.remove(i);
    benchmark::ClobberMemory();
    const auto t1 = std::chrono::steady_clock::now();
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
    dict.erase_point(i);
    dict.append_fresh();
  }
}

// remove(i) followed by the forward solve the next model update makes with the new
// factor: separately (fused = false) or in one pass over L (remove_solve_lower).
void BM_remove_then_solve(benchmark::State& state, Where where, bool fused) {
  const Index n = state.range(0);
  Dictionary dict(n, 2);
  IncrementalCholesky& chol = dict.chol();
  const Index i = where == Where::kFirst ? 0 : where == Where::kMiddle ? n / 2 : n - 1;
  VectorXd b = VectorXd::Ones(n - 1);
  for (auto _ : state) {
    b.setOnes();
    const auto t0 = std::chrono::steady_clock::now();
    if (fused) {
      chol.remove_solve_lower(i, b);
    } else {
      chol.remove(i);
      chol.solve_lower_in_place(b);
    }
    benchmark::ClobberMemory();
    const auto t1 = std::chrono::steady_clock::now();
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
    dict.erase_point(i);
    dict.append_fresh();
  }
}

void BM_solve_in_place(benchmark::State& state) {
  const Index n = state.range(0);
  Dictionary dict(n, 3);
  const IncrementalCholesky& chol = dict.chol();
  VectorXd b = VectorXd::Ones(n);
  for (auto _ : state) {
    chol.solve_in_place(b);
    benchmark::DoNotOptimize(b.data());
    benchmark::ClobberMemory();
    b.normalize();  // keeps the values bounded; O(n)
  }
}

enum class Tri { kLower, kUpper };

void BM_solve_tri(benchmark::State& state, Tri tri, bool eigen) {
  const Index n = state.range(0);
  Dictionary dict(n, 3);
  const IncrementalCholesky& chol = dict.chol();
  const auto L = chol.matrixL();
  VectorXd b = VectorXd::Ones(n);
  for (auto _ : state) {
    if (tri == Tri::kLower) {
      if (eigen) {
        L.triangularView<Eigen::Lower>().solveInPlace(b);
      } else {
        chol.solve_lower_in_place(b);
      }
    } else {
      if (eigen) {
        L.triangularView<Eigen::Lower>().transpose().solveInPlace(b);
      } else {
        chol.solve_upper_in_place(b);
      }
    }
    benchmark::DoNotOptimize(b.data());
    benchmark::ClobberMemory();
    b.normalize();  // keeps the values bounded; O(n)
  }
}

// Two right-hand sides in one pass over L (the model's upper solve after a min_loss
// eviction); compare with twice BM_solve_tri/upper.
void BM_solve_upper_pair(benchmark::State& state) {
  const Index n = state.range(0);
  Dictionary dict(n, 3);
  const IncrementalCholesky& chol = dict.chol();
  VectorXd b = VectorXd::Ones(n), c = VectorXd::LinSpaced(n, 1.0, 2.0);
  for (auto _ : state) {
    chol.solve_upper_in_place(b, c);
    benchmark::DoNotOptimize(b.data());
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
    b.normalize();  // keeps the values bounded; O(n)
    c.normalize();
  }
}

void BM_rebuild(benchmark::State& state) {
  const Index n = state.range(0);
  Dictionary dict(n, 4);
  IncrementalCholesky& chol = dict.chol();
  const MatrixXd L = chol.matrixL();
  MatrixXd K = L * L.transpose();
  K.diagonal().array() -= kJitter;
  for (auto _ : state) {
    const CholeskyInfo info = chol.rebuild(K);
    benchmark::DoNotOptimize(info);
  }
}

void sizes(benchmark::internal::Benchmark* b) {
  b->RangeMultiplier(2)->Range(32, 512)->Unit(benchmark::kMicrosecond);
}

BENCHMARK(BM_append)->Apply(sizes);
BENCHMARK_CAPTURE(BM_remove, first, Where::kFirst)->Apply(sizes)->UseManualTime();
BENCHMARK_CAPTURE(BM_remove, middle, Where::kMiddle)->Apply(sizes)->UseManualTime();
BENCHMARK_CAPTURE(BM_remove, last, Where::kLast)->Apply(sizes)->UseManualTime();
BENCHMARK_CAPTURE(BM_remove_then_solve, first_separate, Where::kFirst, false)
    ->Apply(sizes)
    ->UseManualTime();
BENCHMARK_CAPTURE(BM_remove_then_solve, first_fused, Where::kFirst, true)
    ->Apply(sizes)
    ->UseManualTime();
BENCHMARK_CAPTURE(BM_remove_then_solve, middle_separate, Where::kMiddle, false)
    ->Apply(sizes)
    ->UseManualTime();
BENCHMARK_CAPTURE(BM_remove_then_solve, middle_fused, Where::kMiddle, true)
    ->Apply(sizes)
    ->UseManualTime();
BENCHMARK(BM_solve_in_place)->Apply(sizes);
BENCHMARK_CAPTURE(BM_solve_tri, lower, Tri::kLower, false)->Apply(sizes);
BENCHMARK_CAPTURE(BM_solve_tri, lower_eigen, Tri::kLower, true)->Apply(sizes);
BENCHMARK_CAPTURE(BM_solve_tri, upper, Tri::kUpper, false)->Apply(sizes);
BENCHMARK_CAPTURE(BM_solve_tri, upper_eigen, Tri::kUpper, true)->Apply(sizes);
BENCHMARK(BM_solve_upper_pair)->Apply(sizes);
BENCHMARK(BM_rebuild)->Apply(sizes);

}  // namespace

int main(int argc, char** argv) {
  ntk::bench::add_build_context();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
