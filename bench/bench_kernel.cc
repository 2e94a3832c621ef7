// Kernel row evaluation k(D, x): one query x against M stored points of dimension d,
// the operation every model update and prediction performs.
//   row/<kernel>    prepare(x) + Kernel::row() with the stored points' cached per-point
//                   quantities (norms, the diagonal of the layer recursion): one GEMV
//                   plus vectorized work per entry, no allocation
//   naive/<kernel>  the same M values re-evaluated from scratch, pair by pair, through
//                   the scalar Kernel::operator()(x_i, x) (no caches: every pair redoes
//                   the norms and both diagonals of the recursion)
// Kernels: NTK (relu depth 1, 3, 5; erf and gelu depth 3; w_std 1.5, b_std 0.1), RBF,
// polynomial (degree 3). M in {64, 256, 1024}, d in {8, 64}. The per_entry counter is the
// time per kernel value. After the benchmarks the program prints, from this one run,
// the time per entry, naive / row, and each kernel's row time / the RBF row time (medians
// with --benchmark_repetitions; CPU time, which a machine shared with other work affects
// least).
//
//   cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DNTK_BUILD_BENCH=ON
//   cmake --build build-bench --target bench_kernel
//   build-bench/bench/bench_kernel
// That build runs the copy of ntk::core the loader picks for this CPU (the ntk_core
// context line); -DNTK_HWCAPS=OFF gives baseline x86-64 code, -DNTK_NATIVE=ON the host's.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_context.h"
#include "ntk/core/kernel.h"

namespace {

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using ntk::RowMatrixXd;

struct Named {
  const char* name;
  const char* spec;
};

const Named kKernels[] = {
    {"ntk_relu_depth1", "ntk:activation=relu,depth=1,w_std=1.5,b_std=0.1"},
    {"ntk_relu_depth3", "ntk:activation=relu,depth=3,w_std=1.5,b_std=0.1"},
    {"ntk_relu_depth5", "ntk:activation=relu,depth=5,w_std=1.5,b_std=0.1"},
    {"ntk_erf_depth3", "ntk:activation=erf,depth=3,w_std=1.5,b_std=0.1"},
    {"ntk_gelu_depth3", "ntk:activation=gelu,depth=3,w_std=1.5,b_std=0.1"},
    {"rbf", "rbf:lengthscale=1,variance=1"},
    {"polynomial", "polynomial:degree=3,gamma=1,coef0=1"},
};
constexpr int kSizes[] = {64, 256, 1024};
constexpr int kDims[] = {8, 64};
constexpr Index kQueries = 64;

// Standard normal points, one per row (standardized inputs, as the model sees them).
RowMatrixXd gaussian_points(Index n, Index d, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g;
  RowMatrixXd X(n, d);
  for (Index i = 0; i < n; ++i) {
    for (Index j = 0; j < d; ++j) X(i, j) = g(rng);
  }
  return X;
}

// The stored set with its caches and the queries, built outside the timed loop.
struct Setup {
  std::shared_ptr<const ntk::Kernel> kernel;
  RowMatrixXd points;
  MatrixXd caches;
  RowMatrixXd queries;
  Setup(const char* spec, Index M, Index d)
      : kernel(ntk::make_kernel(spec)),
        points(gaussian_points(M, d, 1)),
        caches(kernel->prepare_all(points)),
        queries(gaussian_points(kQueries, d, 2)) {}
};

void per_entry_counter(benchmark::State& state, Index M) {
  state.counters["per_entry"] =
      benchmark::Counter(static_cast<double>(M), benchmark::Counter::kIsIterationInvariantRate |
                                                     benchmark::Counter::kInvert);
}

void BM_row(benchmark::State& state, const char* spec) {
  const Index M = state.range(0);
  const Index d = state.range(1);
  const Setup s(spec, M, d);
  const ntk::Kernel& k = *s.kernel;
  VectorXd x_cache(k.cache_size());
  VectorXd out(M);
  MatrixXd scratch(M, k.scratch_cols());
  Index q = 0;
  for (auto _ : state) {
    const Eigen::Ref<const VectorXd> x = s.queries.row(q).transpose();
    k.prepare(x, x_cache);
    k.row(s.points, s.caches, x, x_cache, out, scratch);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    if (++q == kQueries) q = 0;
  }
  per_entry_counter(state, M);
}

void BM_naive(benchmark::State& state, const char* spec) {
  const Index M = state.range(0);
  const Index d = state.range(1);
  const Setup s(spec, M, d);
  const ntk::Kernel& k = *s.kernel;
  VectorXd out(M);
  Index q = 0;
  for (auto _ : state) {
    const Eigen::Ref<const VectorXd> x = s.queries.row(q).transpose();
    for (Index i = 0; i < M; ++i) out(i) = k(s.points.row(i).transpose(), x);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    if (++q == kQueries) q = 0;
  }
  per_entry_counter(state, M);
}

std::string run_name(const std::string& kind, const char* kernel, int M, int d) {
  return kind + "/" + kernel + "/M:" + std::to_string(M) + "/d:" + std::to_string(d);
}

}  // namespace

int main(int argc, char** argv) {
  for (const Named& k : kKernels) {
    for (const char* kind : {"row", "naive"}) {
      auto* b =
          benchmark::RegisterBenchmark((std::string(kind) + "/" + k.name).c_str(),
                                       std::string(kind) == "row" ? BM_row : BM_naive, k.spec);
      b->ArgNames({"M", "d"})->Unit(benchmark::kNanosecond);
      for (const int d : kDims) {
        for (const int M : kSizes) b->Args({M, d});
      }
    }
  }
  ntk::bench::add_build_context();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  ntk::bench::TimeCollector collector;
  benchmark::RunSpecifiedBenchmarks(&collector);
  benchmark::Shutdown();
  if (collector.empty()) return 0;  // --benchmark_list_tests, or a filter that matched nothing

  // Time per entry in ns, naive / row, and row / (RBF row) at the same M and d.
  const auto t = [&](const std::string& name) { return collector.time(name); };
  std::printf("\nFrom this run: ns per entry (row, naive), naive/row, row/(rbf row)\n");
  std::printf("%-17s %5s %3s %9s %9s %9s %9s\n", "kernel", "M", "d", "row", "naive", "naive/row",
              "row/rbf");
  for (const Named& k : kKernels) {
    for (const int d : kDims) {
      for (const int M : kSizes) {
        const double row = t(run_name("row", k.name, M, d));
        const double naive = t(run_name("naive", k.name, M, d));
        const double rbf = t(run_name("row", "rbf", M, d));
        if (row <= 0.0) continue;
        std::printf("%-17s %5d %3d %9.3f", k.name, M, d, row / M);
        if (naive > 0.0) {
          std::printf(" %9.3f %9.1f", naive / M, naive / row);
        } else {
          std::printf(" %9s %9s", "-", "-");
        }
        if (rbf > 0.0) {
          std::printf(" %9.2f\n", row / rbf);
        } else {
          std::printf(" %9s\n", "-");
        }
      }
    }
  }
  return 0;
}
