// Online GP update and prediction throughput, steady state (dictionary full, evicting),
// d = 7, against dlib::krls (radial_basis_kernel, max dictionary size M) on the same
// streams. Samples that enter the dictionary and samples that do not are measured
// separately, since their costs differ (by about 30x for dlib with Debian's reference
// BLAS, 10x with OpenBLAS; the blas context line names the one loaded). BM_reference_pieces times
// the yardstick (plain Eigen pieces of one step) on the same machine. After the
// benchmarks the program prints the ratios dlib time / ntkstream time and ntkstream time /
// reference time from this one run (CPU time; medians with --benchmark_repetitions).
//
//   cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DNTK_NATIVE=ON
//         -DNTK_BUILD_BENCH=ON
//   cmake --build build-bench --target bench_model
//   build-bench/bench/bench_model --benchmark_min_time=0.2
#include <benchmark/benchmark.h>
#include <dlib/svm.h>
#include <link.h>

#include <Eigen/Cholesky>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "bench_context.h"
#include "ntk/core/model.h"

namespace {

constexpr int kDim = 7;
constexpr double kRbfLengthscale = 1.0;
// The NTK for this benchmark (relu, depth 3); the default kernel (erf, depth 1)
// costs less per row.
const char* const kNtkSpec =
    "ntk:activation=relu,depth=3,w_std=1.5,b_std=0.1,parameterization=ntk,output=ntk";

using DlibSample = dlib::matrix<double, kDim, 1>;
using DlibKernel = dlib::radial_basis_kernel<DlibSample>;

std::vector<Eigen::VectorXd> gaussian_points(int n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g;
  std::vector<Eigen::VectorXd> xs;
  for (int i = 0; i < n; ++i) {
    Eigen::VectorXd x(kDim);
    for (int j = 0; j < kDim; ++j) x(j) = g(rng);
    xs.push_back(x);
  }
  return xs;
}

double target(const Eigen::VectorXd& x) { return std::sin(x(0)) + 0.5 * x(1) * x(2); }

ntk::ModelConfig config(int M, bool ntk_kernel, ntk::EvictionPolicy policy) {
  ntk::ModelConfig c;
  c.kernel = ntk_kernel ? ntk::KernelSpec::parse(kNtkSpec)
                        : ntk::KernelSpec::parse("rbf:lengthscale=1,variance=1");
  c.budget = M;
  c.eviction = policy;
  c.admission_threshold = 1e-4;
  return c;
}

enum class Path { kAdmit, kReject };

// ntkstream: steady state at a full dictionary. kAdmit feeds fresh Gaussian points (every
// one enters and one basis is evicted); kReject feeds copies of dictionary points (the ALD
// test rejects them; the posterior is still updated).
void BM_ntk_update(benchmark::State& state, bool ntk_kernel, ntk::EvictionPolicy policy,
                   Path path) {
  const int M = static_cast<int>(state.range(0));
  ntk::OnlineGP gp(config(M, ntk_kernel, policy), kDim);
  const auto warm = gaussian_points(4 * M, 1);
  for (const auto& x : warm) gp.update(x, target(x));
  const auto fresh = gaussian_points(1 << 14, 2);
  std::vector<Eigen::VectorXd> stream = fresh;
  if (path == Path::kReject) {
    stream.clear();
    for (int i = 0; i < gp.dictionary_size(); ++i) stream.push_back(gp.inputs().row(i).transpose());
  }
  std::size_t i = 0;
  std::uint64_t admitted = 0, newcomer_evicted = 0;
  for (auto _ : state) {
    const Eigen::VectorXd& x = stream[i];
    const ntk::UpdateResult r = gp.update(x, target(x));
    admitted += r.admitted;
    newcomer_evicted += r.evicted == M;  // the sample just admitted left again at once
    benchmark::DoNotOptimize(r.prediction.mean);
    if (++i == stream.size()) i = 0;
  }
  const auto n = static_cast<double>(state.iterations());
  state.counters["admitted_fraction"] = static_cast<double>(admitted) / n;
  // Under min_loss most admitted samples are the least useful basis and leave in the same
  // update (a removal of the last row, O(M)); oldest-first always moves the whole factor.
  state.counters["newcomer_evicted"] = static_cast<double>(newcomer_evicted) / n;
  state.counters["updates_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

void BM_ntk_predict(benchmark::State& state, bool ntk_kernel) {
  const int M = static_cast<int>(state.range(0));
  ntk::OnlineGP gp(config(M, ntk_kernel, ntk::EvictionPolicy::kMinLoss), kDim);
  for (const auto& x : gaussian_points(4 * M, 1)) gp.update(x, target(x));
  const auto probes = gaussian_points(1024, 3);
  std::size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(gp.predict(probes[i]).var_y);
    i = (i + 1) & 1023;
  }
  state.counters["predictions_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

// The periodic recomputation (every recompute_every updates, 1000 by default): K_D from
// the stored inputs, the drift of L, a fresh factor (and diag(Q) under min_loss), at a
// full dictionary. Its cost is the latency spike of the update that triggers it.
void BM_ntk_recompute(benchmark::State& state, bool ntk_kernel, ntk::EvictionPolicy policy) {
  const int M = static_cast<int>(state.range(0));
  ntk::OnlineGP gp(config(M, ntk_kernel, policy), kDim);
  for (const auto& x : gaussian_points(4 * M, 1)) gp.update(x, target(x));
  for (auto _ : state) {
    gp.recompute();
    benchmark::DoNotOptimize(gp.last_drift());
  }
}

// The BLAS libraries loaded into this process, by their real paths. dlib's matrix
// products call the system BLAS, and its admitting path is dominated by one O(M^3)
// product (in krls::remove_dictionary_vector), so its time depends on which BLAS
// Debian's alternatives resolve libblas.so.3 to: the reference BLAS (libblas3, what
// libdlib-dev pulls in) or an optimized one (OpenBLAS, BLIS), which is several times faster.
std::string loaded_blas() {
  std::string found;
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* out) {
        const std::string name = info->dlpi_name ? info->dlpi_name : "";
        const std::string file = name.substr(name.find_last_of('/') + 1);  // npos + 1 == 0
        if (file.find("blas") == std::string::npos && file.find("blis") == std::string::npos &&
            file.find("mkl") == std::string::npos) {
          return 0;
        }
        char* real = ::realpath(name.c_str(), nullptr);
        auto& s = *static_cast<std::string*>(out);
        s += (s.empty() ? "" : ", ") + std::string(real ? real : name.c_str());
        std::free(real);
        return 0;
      },
      &found);
  return found.empty() ? "none loaded" : found;
}

DlibSample to_dlib(const Eigen::VectorXd& x) {
  DlibSample s;
  for (int j = 0; j < kDim; ++j) s(j) = x(j);
  return s;
}

void BM_dlib_krls(benchmark::State& state, Path path) {
  const int M = static_cast<int>(state.range(0));
  const double gamma = 1.0 / (2.0 * kRbfLengthscale * kRbfLengthscale);
  dlib::krls<DlibKernel> krls(DlibKernel(gamma), 1e-4, static_cast<unsigned long>(M));
  std::vector<DlibSample> warm;
  for (const auto& x : gaussian_points(4 * M, 1)) {
    warm.push_back(to_dlib(x));
    krls.train(warm.back(), target(x));
  }
  std::vector<DlibSample> stream;
  std::vector<double> ys;
  if (path == Path::kAdmit) {
    for (const auto& x : gaussian_points(1 << 14, 2)) {
      stream.push_back(to_dlib(x));
      ys.push_back(target(x));
    }
  } else {
    // The last M warm-up points are the dictionary (dlib evicts the oldest).
    for (std::size_t k = warm.size() - static_cast<std::size_t>(M); k < warm.size(); ++k) {
      stream.push_back(warm[k]);
      ys.push_back(0.5);
    }
  }
  std::size_t i = 0;
  for (auto _ : state) {
    krls.train(stream[i], ys[i]);
    if (++i == stream.size()) i = 0;
  }
  benchmark::DoNotOptimize(krls(stream[0]));
  state.counters["updates_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

// The yardstick, timed in the same run: the O(M^2) pieces of one full-budget step,
// each by a plain Eigen call, as the issue lists them: the RBF kernel row; append (forward
// solve L^{-1}k, pivot, new row); a second solve (L^{-T}); remove-oldest (the factor shifted
// by one row and column, then Eigen's rank-1 update of the trailing block, the routine
// behind LLT::rankUpdate); a rank-1 update of the covariance. The issue measured these at
// about 3, 7, 19-22 and 70-90 us at M = 64, 128, 256, 512 on its machine and set the goal
// for a full update at M = 256 against them (<= 20 us); their time here is the scale on
// which that goal is read on another machine (main() prints the ratios).
void BM_reference_pieces(benchmark::State& state) {
  const int M = static_cast<int>(state.range(0));
  constexpr double kJitter = 1e-6;
  const double gamma = 1.0 / (2.0 * kRbfLengthscale * kRbfLengthscale);
  const auto warm = gaussian_points(M, 1);
  Eigen::MatrixXd X(M + 1, kDim), K(M, M), L = Eigen::MatrixXd::Zero(M + 1, M + 1);
  for (int i = 0; i < M; ++i) X.row(i) = warm[static_cast<std::size_t>(i)].transpose();
  const auto window_gram = [&] {  // K <- k(X, X) + jitter I over the window
    for (int i = 0; i < M; ++i) {
      for (int j = 0; j < M; ++j) K(i, j) = std::exp(-gamma * (X.row(i) - X.row(j)).squaredNorm());
      K(i, i) += kJitter;
    }
  };
  window_gram();
  L.topLeftCorner(M, M) = Eigen::LLT<Eigen::MatrixXd>(K).matrixL();
  Eigen::MatrixXd sigma = 0.5 * K;
  Eigen::VectorXd k(M), v(M), q(M), w(M);
  const auto stream = gaussian_points(1 << 14, 2);
  std::size_t s = 0;
  for (auto _ : state) {
    const Eigen::VectorXd& x = stream[s];
    if (++s == stream.size()) s = 0;
    // Kernel row.
    for (int i = 0; i < M; ++i) k(i) = std::exp(-gamma * (X.row(i).transpose() - x).squaredNorm());
    // Append: the forward solve and the pivot.
    v = k;
    L.topLeftCorner(M, M).triangularView<Eigen::Lower>().solveInPlace(v);
    L.row(M).head(M) = v.transpose();
    L(M, M) = std::sqrt(std::max(1.0 + kJitter - v.squaredNorm(), kJitter));
    X.row(M) = x.transpose();
    // The second solve.
    q = v;
    L.topLeftCorner(M, M).triangularView<Eigen::Lower>().transpose().solveInPlace(q);
    // Covariance rank-1 update.
    sigma.selfadjointView<Eigen::Lower>().rankUpdate(q, -1e-9);
    // Remove the oldest: shift by one row and column, rank-1 update of the trailing block.
    w = L.col(0).tail(M);
    for (int j = 0; j < M; ++j) L.col(j).segment(j, M - j) = L.col(j + 1).segment(j + 1, M - j);
    for (int j = 0; j < kDim; ++j) {
      for (int i = 0; i < M; ++i) X(i, j) = X(i + 1, j);
    }
    auto trailing = L.topLeftCorner(M, M);
    Eigen::internal::llt_inplace<double, Eigen::Lower>::rankUpdate(trailing, w, 1.0);
    benchmark::DoNotOptimize(L(M - 1, M - 1));
  }
  benchmark::DoNotOptimize(sigma(0, 0));
  // The steps are real: L is still the factor of the window's Gram matrix.
  window_gram();
  const auto Lm = L.topLeftCorner(M, M).triangularView<Eigen::Lower>();
  state.counters["factor_error"] =
      (Eigen::MatrixXd(Lm) * Eigen::MatrixXd(Lm).transpose() - K).norm() / K.norm();
}

void sizes(benchmark::internal::Benchmark* b) {
  for (int M : {32, 64, 128, 256, 512}) b->Arg(M);
  b->Unit(benchmark::kMicrosecond);
}

BENCHMARK_CAPTURE(BM_ntk_update, rbf_minloss_admit, false, ntk::EvictionPolicy::kMinLoss,
                  Path::kAdmit)
    ->Apply(sizes);
BENCHMARK_CAPTURE(BM_ntk_update, rbf_oldest_admit, false, ntk::EvictionPolicy::kOldest,
                  Path::kAdmit)
    ->Apply(sizes);
BENCHMARK_CAPTURE(BM_ntk_update, rbf_reject, false, ntk::EvictionPolicy::kMinLoss, Path::kReject)
    ->Apply(sizes);
BENCHMARK_CAPTURE(BM_ntk_update, ntk_minloss_admit, true, ntk::EvictionPolicy::kMinLoss,
                  Path::kAdmit)
    ->Apply(sizes);
BENCHMARK_CAPTURE(BM_ntk_update, ntk_oldest_admit, true, ntk::EvictionPolicy::kOldest, Path::kAdmit)
    ->Apply(sizes);
BENCHMARK_CAPTURE(BM_ntk_update, ntk_reject, true, ntk::EvictionPolicy::kMinLoss, Path::kReject)
    ->Apply(sizes);
BENCHMARK_CAPTURE(BM_ntk_predict, rbf, false)->Apply(sizes);
BENCHMARK_CAPTURE(BM_ntk_predict, ntk, true)->Apply(sizes);
BENCHMARK_CAPTURE(BM_ntk_recompute, rbf_oldest, false, ntk::EvictionPolicy::kOldest)->Apply(sizes);
BENCHMARK_CAPTURE(BM_ntk_recompute, rbf_minloss, false, ntk::EvictionPolicy::kMinLoss)
    ->Apply(sizes);
BENCHMARK(BM_reference_pieces)->Apply(sizes);
BENCHMARK_CAPTURE(BM_dlib_krls, admit, Path::kAdmit)->Apply(sizes);
BENCHMARK_CAPTURE(BM_dlib_krls, reject, Path::kReject)->Apply(sizes);

}  // namespace

int main(int argc, char** argv) {
  const bool like_for_like = ntk::bench::add_build_context();
  benchmark::AddCustomContext("blas", loaded_blas());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  ntk::bench::TimeCollector collector;
  benchmark::RunSpecifiedBenchmarks(&collector);
  benchmark::Shutdown();
  if (collector.empty()) return 0;  // --benchmark_list_tests, or a filter that matched nothing
  const auto t = [&](const std::string& name, int M) {
    return collector.time(name + "/" + std::to_string(M));
  };
  if (!like_for_like) {
    std::printf(
        "\nNote: ntk::core runs wider SIMD than this program (see ntk_core and\n"
        "program_double_lanes above), so dlib and the reference pieces below run narrower\n"
        "code than ntkstream. For like-for-like ratios configure with NTK_ARCH (or\n"
        "NTK_NATIVE), or hide AVX2 from the loader: GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2.\n");
  }
  std::printf(
      "\nRatios from this run (dlib::krls CPU time / ntkstream CPU time, same stream, RBF;\n"
      "dlib's admitting path depends on the BLAS, see blas above; oldest-first is like for\n"
      "like, min_loss mostly evicts the newcomer again, see newcomer_evicted):\n");
  std::printf("%6s %26s %26s %22s\n", "M", "admit: dlib/ours(oldest)", "admit: dlib/ours(minloss)",
              "reject: dlib/ours");
  for (int M : {32, 64, 128, 256, 512}) {
    const double da = t("BM_dlib_krls/admit", M), dr = t("BM_dlib_krls/reject", M);
    const double oo = t("BM_ntk_update/rbf_oldest_admit", M);
    const double om = t("BM_ntk_update/rbf_minloss_admit", M);
    const double orj = t("BM_ntk_update/rbf_reject", M);
    if (da > 0 && oo > 0 && om > 0 && dr > 0 && orj > 0) {
      std::printf("%6d %26.1f %26.1f %22.1f\n", M, da / oo, da / om, dr / orj);
    }
  }
  // The goal, <= 20 us where its machine took 19-22 us for the reference pieces at
  // M = 256, is <= 0.91-1.05 times the reference on any machine.
  std::printf(
      "\nRatios from this run (ntkstream CPU time / reference pieces CPU time, see "
      "BM_reference_pieces):\n");
  const char* const paths[] = {"rbf_minloss_admit", "rbf_oldest_admit", "rbf_reject",
                               "ntk_minloss_admit", "ntk_oldest_admit", "ntk_reject"};
  std::printf("%6s", "M");
  for (const char* path : paths) std::printf(" %18s", path);
  std::printf("\n");
  for (int M : {32, 64, 128, 256, 512}) {
    const double ref = t("BM_reference_pieces", M);
    if (ref <= 0) continue;
    std::printf("%6d", M);
    for (const char* path : paths) {
      const double ours = t(std::string("BM_ntk_update/") + path, M);
      if (ours > 0) {
        std::printf(" %18.2f", ours / ref);
      } else {
        std::printf(" %18s", "-");
      }
    }
    std::printf("\n");
  }
  return 0;
}
