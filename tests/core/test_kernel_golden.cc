// The NTK/NNGP kernels against independently computed golden values
// (tests/golden/golden_ntk_public.json, conventions in tests/golden/README.md), through
// both code paths: the scalar operator() and prepare() + row(). Errors are measured
// relative to the diagonal scale sqrt(G_ii G_jj) (absolutely where that is 0), as the
// README prescribes; tolerances 1e-12 (relu, erf) and 1e-10 (gelu).
#include <doctest/doctest.h>

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "detail/kernel_ntk.h"
#include "ntk/core/kernel.h"

namespace {

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using json = nlohmann::json;
using ntk::RowMatrixXd;

const json& golden() {
  static const json j = [] {
    std::ifstream in(std::string(NTK_TEST_DATA_DIR) + "/golden/golden_ntk_public.json");
    REQUIRE(in.good());
    return json::parse(in);
  }();
  return j;
}

RowMatrixXd to_points(const json& rows) {
  const Index n = static_cast<Index>(rows.size());
  const Index d = n > 0 ? static_cast<Index>(rows[0].size()) : 0;
  RowMatrixXd X(n, d);
  for (Index i = 0; i < n; ++i) {
    REQUIRE(static_cast<Index>(rows[i].size()) == d);
    for (Index j = 0; j < d; ++j) X(i, j) = rows[i][j].get<double>();
  }
  return X;
}

MatrixXd to_matrix(const json& rows) {
  MatrixXd A(static_cast<Index>(rows.size()), static_cast<Index>(rows[0].size()));
  for (Index i = 0; i < A.rows(); ++i) {
    for (Index j = 0; j < A.cols(); ++j) A(i, j) = rows[i][j].get<double>();
  }
  return A;
}

// A per-layer field: one value for every layer, or a list of `layers` values.
std::vector<std::optional<double>> per_layer(const json& v, int layers) {
  std::vector<std::optional<double>> out;
  const auto one = [](const json& e) -> std::optional<double> {
    if (e.is_null()) return std::nullopt;
    return e.get<double>();
  };
  if (v.is_array()) {
    REQUIRE(static_cast<int>(v.size()) == layers);
    for (const json& e : v) out.push_back(one(e));
  } else {
    out.assign(static_cast<std::size_t>(layers), one(v));
  }
  return out;
}

ntk::Activation activation_of(const std::string& s) {
  if (s == "relu") return ntk::Activation::kRelu;
  if (s == "erf") return ntk::Activation::kErf;
  REQUIRE(s == "gelu");
  return ntk::Activation::kGelu;
}

// NtkParams of a golden case (or gd_mse kernel) description.
ntk::detail::NtkParams params_of(const json& c, ntk::KernelOutput output) {
  ntk::detail::NtkParams p;
  p.activation = activation_of(c.at("activation").get<std::string>());
  p.depth = c.at("depth").get<int>();
  p.output = output;
  p.parameterization = c.at("parameterization").get<std::string>() == "standard"
                           ? ntk::Parameterization::kStandard
                           : ntk::Parameterization::kNtk;
  for (const auto& w : per_layer(c.at("W_std"), p.depth + 1)) {
    REQUIRE(w.has_value());
    p.w_std.push_back(*w);
  }
  p.b_std = per_layer(c.at("b_std"), p.depth + 1);
  if (p.parameterization == ntk::Parameterization::kStandard) {
    const json& hw = c.at("hidden_width");
    if (hw.is_array()) {
      // The widths of the hidden layers; a trailing readout width (1) may be listed too.
      REQUIRE(
          (static_cast<int>(hw.size()) == p.depth || static_cast<int>(hw.size()) == p.depth + 1));
      for (int l = 0; l < p.depth; ++l)
        p.width.push_back(hw[static_cast<std::size_t>(l)].get<double>());
    } else {
      p.width.assign(static_cast<std::size_t>(p.depth), hw.get<double>());
    }
  }
  return p;
}

// max_ij |K - G| / sqrt(G_ii G_jj) (absolute where the scale is 0).
double scaled_error(const MatrixXd& K, const MatrixXd& G) {
  REQUIRE(K.rows() == G.rows());
  REQUIRE(K.cols() == G.cols());
  double worst = 0.0;
  for (Index i = 0; i < G.rows(); ++i) {
    for (Index j = 0; j < G.cols(); ++j) {
      const double scale = std::sqrt(G(i, i) * G(j, j));
      const double err = std::abs(K(i, j) - G(i, j));
      worst = std::max(worst, scale > 0.0 ? err / scale : err);
    }
  }
  return worst;
}

// The kernel matrix of X through the scalar path.
MatrixXd scalar_matrix(const ntk::Kernel& k, const RowMatrixXd& X) {
  MatrixXd K(X.rows(), X.rows());
  for (Index i = 0; i < X.rows(); ++i) {
    for (Index j = 0; j < X.rows(); ++j) K(i, j) = k(X.row(i).transpose(), X.row(j).transpose());
  }
  return K;
}

// The kernel matrix of X through prepare() + row(), one column per row() call.
MatrixXd row_matrix(const ntk::Kernel& k, const RowMatrixXd& X) {
  const MatrixXd caches = k.prepare_all(X);
  MatrixXd K(X.rows(), X.rows());
  MatrixXd scratch(X.rows(), std::max<Index>(1, k.scratch_cols()));
  VectorXd out(X.rows());
  for (Index j = 0; j < X.rows(); ++j) {
    const VectorXd xj = X.row(j).transpose();
    const VectorXd cj = caches.row(j).transpose();
    k.row(X, caches, xj, cj, out, scratch);
    K.col(j) = out;
    // self() is the diagonal from the cache alone.
    CHECK(k.self(xj, cj) == doctest::Approx(k(xj, xj)).epsilon(1e-13));
  }
  return K;
}

double tolerance(ntk::Activation a) { return a == ntk::Activation::kGelu ? 1e-10 : 1e-12; }

}  // namespace

TEST_CASE("golden file: format and coverage") {
  const json& g = golden();
  CHECK(g.at("format").get<std::string>() == "ntkstream-golden-ntk-v1");
  CHECK(g.at("cases").size() == 58);  // the whole public file, as copied (PROVENANCE.md)
  CHECK(g.at("gd_mse").size() >= 1);
}

TEST_CASE("NTK and NNGP reproduce every golden case through both code paths") {
  const json& g = golden();
  // Worst error per activation, output and path, printed for the record.
  std::map<std::string, double> worst;
  int checked = 0;
  for (const json& c : g.at("cases")) {
    const std::string id = c.at("id").get<std::string>();
    CAPTURE(id);
    const RowMatrixXd X =
        to_points(g.at("input_sets").at(c.at("input_set").get<std::string>()).at("x"));
    for (const ntk::KernelOutput out : {ntk::KernelOutput::kNngp, ntk::KernelOutput::kNtk}) {
      const bool nngp = out == ntk::KernelOutput::kNngp;
      const MatrixXd G = to_matrix(c.at(nngp ? "nngp" : "ntk"));
      const ntk::detail::NtkParams p = params_of(c, out);
      const ntk::detail::NtkKernel k(p);
      const double tol = tolerance(p.activation);
      const std::string key = c.at("activation").get<std::string>() + (nngp ? " nngp" : " ntk ");
      const double e_scalar = scaled_error(scalar_matrix(k, X), G);
      const double e_row = scaled_error(row_matrix(k, X), G);
      const double e_gram = scaled_error(k.gram(X), G);
      CHECK(e_scalar <= tol);
      CHECK(e_row <= tol);
      CHECK(e_gram <= tol);
      worst[key + " scalar"] = std::max(worst[key + " scalar"], e_scalar);
      worst[key + " row   "] = std::max(worst[key + " row   "], e_row);
      ++checked;
    }
  }
  CHECK(checked == 2 * static_cast<int>(g.at("cases").size()));
  for (const auto& [key, err] : worst) {
    MESSAGE("max scaled error " << key << ": " << err);
  }
}

TEST_CASE("uniform golden cases through the public KernelSpec path") {
  // The same kernels built from the spec text give the same values.
  const json& g = golden();
  for (const json& c : g.at("cases")) {
    if (c.at("W_std").is_array() || c.at("b_std").is_array() || c.at("hidden_width").is_array()) {
      continue;
    }
    CAPTURE(c.at("id").get<std::string>());
    ntk::KernelSpec s;
    s.type = ntk::KernelType::kNtk;
    s.activation = activation_of(c.at("activation").get<std::string>());
    s.depth = c.at("depth").get<int>();
    s.w_std = c.at("W_std").get<double>();
    s.b_std =
        c.at("b_std").is_null() ? std::nullopt : std::optional<double>(c.at("b_std").get<double>());
    if (c.at("parameterization").get<std::string>() == "standard") {
      s.parameterization = ntk::Parameterization::kStandard;
      s.width = c.at("hidden_width").get<int>();
    }
    s.output = ntk::KernelOutput::kNtk;
    // Round trip through the text form first: the text carries the exact doubles.
    const auto k = ntk::make_kernel(ntk::KernelSpec::parse(s.to_string()));
    CHECK(k->spec() == s);
    const RowMatrixXd X =
        to_points(g.at("input_sets").at(c.at("input_set").get<std::string>()).at("x"));
    CHECK(scaled_error(row_matrix(*k, X), to_matrix(c.at("ntk"))) <= tolerance(s.activation));
  }
}

TEST_CASE("per-layer lists of W_std, b_std and widths are honoured") {
  // No public case uses lists; check the list code path against the uniform one and
  // against a hand recursion with different layers.
  const RowMatrixXd X = to_points(golden().at("input_sets").at("d5").at("x"));
  ntk::detail::NtkParams p;
  p.activation = ntk::Activation::kRelu;
  p.depth = 2;
  p.parameterization = ntk::Parameterization::kStandard;
  p.w_std = {1.3, 1.3, 1.3};
  p.b_std = {0.1, 0.1, 0.1};
  p.width = {64, 64};
  const ntk::detail::NtkKernel uniform(p);
  ntk::KernelSpec s = ntk::KernelSpec::parse(
      "ntk:activation=relu,depth=2,w_std=1.3,b_std=0.1,parameterization=standard,width=64,"
      "output=ntk");
  const auto from_spec = ntk::make_kernel(s);
  CHECK(scaled_error(scalar_matrix(uniform, X), scalar_matrix(*from_spec, X)) == 0.0);

  // Different layers: depth 1, x = e1 in d = 3, per-layer W = (2, 3), b = (none, 0.5),
  // widths (10): Sigma_1(e1, e1) = 4/3, relu: Shat = 2/3, Sdot = 1/2;
  // NNGP = 9 * 2/3 + 0.25 = 6.25; standard NTK = x.x + 0 -> Theta_1 = 1,
  // Theta_2 = 10 * 2/3 + 9 * 1/2 * 1 + 1 = 12.1666...; ntk NTK = 6.25 + 9/2 * 4/3 = 12.25.
  ntk::detail::NtkParams q;
  q.activation = ntk::Activation::kRelu;
  q.depth = 1;
  q.w_std = {2.0, 3.0};
  q.b_std = {std::nullopt, 0.5};
  const VectorXd e1 = VectorXd::Unit(3, 0);
  RowMatrixXd E(1, 3);
  E.row(0) = e1.transpose();
  q.output = ntk::KernelOutput::kNngp;
  CHECK(ntk::detail::NtkKernel(q)(e1, e1) == doctest::Approx(6.25).epsilon(1e-15));
  CHECK(row_matrix(ntk::detail::NtkKernel(q), E)(0, 0) == doctest::Approx(6.25).epsilon(1e-15));
  q.output = ntk::KernelOutput::kNtk;
  CHECK(ntk::detail::NtkKernel(q)(e1, e1) == doctest::Approx(12.25).epsilon(1e-15));
  CHECK(row_matrix(ntk::detail::NtkKernel(q), E)(0, 0) == doctest::Approx(12.25).epsilon(1e-15));
  q.parameterization = ntk::Parameterization::kStandard;
  q.width = {10.0};
  CHECK(ntk::detail::NtkKernel(q)(e1, e1) ==
        doctest::Approx(10.0 * 2 / 3 + 4.5 + 1).epsilon(1e-15));
  CHECK(row_matrix(ntk::detail::NtkKernel(q), E)(0, 0) ==
        doctest::Approx(10.0 * 2 / 3 + 4.5 + 1).epsilon(1e-15));
}

TEST_CASE("NtkParams: per-layer lists are validated, naming the field, layer and value") {
  // The per-layer lists come from code, not from a spec string: each is checked on its
  // own (a short b_std list would otherwise be read past its end).
  const auto base = [] {
    ntk::detail::NtkParams p;
    p.depth = 2;
    p.parameterization = ntk::Parameterization::kStandard;
    p.w_std = {1.0, 1.5, 2.0};
    p.b_std = {0.1, std::nullopt, 0.3};
    p.width = {16.0, 32.0};
    return p;
  };
  CHECK_NOTHROW(ntk::detail::NtkKernel{base()});
  const auto refused = [&](auto&& mutate, const char* text) {
    ntk::detail::NtkParams p = base();
    mutate(p);
    CHECK_THROWS_WITH_AS(ntk::detail::NtkKernel{p}, doctest::Contains(text), std::invalid_argument);
  };
  refused([](ntk::detail::NtkParams& p) { p.depth = -1; }, "depth must be in [0, 1000], got -1");
  refused([](ntk::detail::NtkParams& p) { p.w_std.pop_back(); },
          "w_std must have depth + 1 = 3 values, got 2");
  refused([](ntk::detail::NtkParams& p) { p.b_std.pop_back(); },
          "b_std must have depth + 1 = 3 values, got 2");
  refused([](ntk::detail::NtkParams& p) { p.b_std.push_back(0.5); },
          "b_std must have depth + 1 = 3 values, got 4");
  refused([](ntk::detail::NtkParams& p) { p.w_std[1] = -1.0; },
          "w_std[1] must be finite and >= 0, got -1");
  refused([](ntk::detail::NtkParams& p) { p.b_std[2] = std::nan(""); }, "b_std[2] must be finite");
  refused([](ntk::detail::NtkParams& p) { p.width.pop_back(); },
          "width must have depth = 2 values for parameterization=standard, got 1");
  refused([](ntk::detail::NtkParams& p) { p.width[1] = 0.0; },
          "width[1] must be finite and > 0, got 0");
  refused([](ntk::detail::NtkParams& p) { p.width[0] = -4.0; }, "width[0] must be finite");
  // from_spec takes ntk specs only.
  CHECK_THROWS_WITH_AS(ntk::detail::NtkParams::from_spec(ntk::KernelSpec::parse("rbf")),
                       doctest::Contains("spec type must be ntk, got rbf"), std::invalid_argument);
  // A uniform network's summary is the spec it came from, bias included; a kernel built
  // from params reports that summary.
  for (const char* text :
       {"ntk:activation=erf,depth=3,w_std=1.7,b_std=0.2,parameterization=ntk,output=nngp",
        "ntk:activation=relu,depth=2,w_std=1.1,b_std=none,parameterization=standard,width=9,"
        "output=ntk"}) {
    CAPTURE(text);
    const ntk::KernelSpec spec = ntk::KernelSpec::parse(text);
    const ntk::detail::NtkParams p = ntk::detail::NtkParams::from_spec(spec);
    CHECK(p.summary() == spec);
    CHECK(ntk::detail::NtkKernel(p).spec() == spec);
  }
}

TEST_CASE("README hand checks (d = 3, W_std = 1, b_std = 0, depth 1, x = e1)") {
  const VectorXd e1 = VectorXd::Unit(3, 0);
  const VectorXd zero = VectorXd::Zero(3);
  RowMatrixXd P(3, 3);
  P.row(0) = e1.transpose();
  P.row(1) = -e1.transpose();
  P.row(2) = zero.transpose();

  const auto nngp = ntk::make_kernel(
      "ntk:activation=relu,depth=1,w_std=1,b_std=0,parameterization=ntk,output=nngp");
  const auto ntk_k = ntk::make_kernel(
      "ntk:activation=relu,depth=1,w_std=1,b_std=0,parameterization=ntk,output=ntk");
  const auto std_k = ntk::make_kernel(
      "ntk:activation=relu,depth=1,w_std=1,b_std=0,parameterization=standard,width=512,"
      "output=ntk");

  CHECK((*nngp)(e1, e1) == doctest::Approx(1.0 / 6).epsilon(1e-15));
  CHECK((*ntk_k)(e1, e1) == doctest::Approx(1.0 / 3).epsilon(1e-15));
  CHECK(std::abs((*ntk_k)(e1, VectorXd(-e1))) <= 1e-16);
  CHECK((*std_k)(e1, e1) == doctest::Approx(512.0 / 6 + 1 + 1).epsilon(1e-15));
  CHECK((*std_k)(zero, zero) == doctest::Approx(1.25).epsilon(1e-15));

  // The same through row().
  const MatrixXd Kn = row_matrix(*nngp, P);
  const MatrixXd Kt = row_matrix(*ntk_k, P);
  const MatrixXd Ks = row_matrix(*std_k, P);
  CHECK(Kn(0, 0) == doctest::Approx(1.0 / 6).epsilon(1e-15));
  CHECK(Kt(0, 0) == doctest::Approx(1.0 / 3).epsilon(1e-15));
  CHECK(std::abs(Kt(0, 1)) <= 1e-16);
  CHECK(Ks(0, 0) == doctest::Approx(512.0 / 6 + 2).epsilon(1e-15));
  CHECK(Ks(2, 2) == doctest::Approx(1.25).epsilon(1e-15));
}

TEST_CASE("gradient-descent predictions (gd_mse) with the project's kernel") {
  // f_test(t) = K_* V diag((1 - exp(-lambda tau)) / lambda) V^T y with
  // K_train + r I = V diag(lambda) V^T, r = diag_reg trace(K)/n, tau = lr t / m;
  // t = inf is kernel ridge regression (Cholesky). f_0 = g_0 = 0.
  for (const json& c : golden().at("gd_mse")) {
    CAPTURE(c.at("id").get<std::string>());
    const json& kd = c.at("kernel");
    const ntk::KernelOutput out = kd.at("kernel").get<std::string>() == "nngp"
                                      ? ntk::KernelOutput::kNngp
                                      : ntk::KernelOutput::kNtk;
    const ntk::detail::NtkKernel k(params_of(kd, out));
    const RowMatrixXd Xtr = to_points(c.at("x_train"));
    const RowMatrixXd Xte = to_points(c.at("x_test"));
    VectorXd y(static_cast<Index>(c.at("y_train").size()));
    for (Index i = 0; i < y.size(); ++i) {
      const json& yi = c.at("y_train")[static_cast<std::size_t>(i)];
      y(i) = yi.is_array() ? yi[0].get<double>() : yi.get<double>();
    }
    REQUIRE(c.at("fx_train_0").get<double>() == 0.0);
    REQUIRE(c.at("fx_test_0").get<double>() == 0.0);
    REQUIRE_FALSE(c.at("diag_reg_absolute_scale").get<bool>());

    const MatrixXd K = k.gram(Xtr);
    const MatrixXd Ks = k.cross(Xte, Xtr);
    CHECK(scaled_error(K, to_matrix(c.at("K_train"))) <= 1e-12);
    // K_test_train has no diagonal of its own: compare relative to the largest entry.
    const MatrixXd Gs = to_matrix(c.at("K_test_train"));
    CHECK((Ks - Gs).cwiseAbs().maxCoeff() <= 1e-12 * Gs.cwiseAbs().maxCoeff());

    const Index n = K.rows();
    const double r = c.at("diag_reg").get<double>() * K.trace() / static_cast<double>(n);
    const MatrixXd Kr = K + r * MatrixXd::Identity(n, n);
    const double lr = c.at("learning_rate").get<double>();
    const double m = static_cast<double>(y.size());
    const Eigen::SelfAdjointEigenSolver<MatrixXd> eig(Kr);
    REQUIRE(eig.info() == Eigen::Success);
    for (const auto& [t_key, values] : c.at("fx_test_t").items()) {
      const std::string& t_name = t_key;  // Clang < 16 does not capture bindings in lambdas
      CAPTURE(t_name);
      VectorXd expected(static_cast<Index>(values.size()));
      for (Index i = 0; i < expected.size(); ++i) {
        const json& v = values[static_cast<std::size_t>(i)];
        expected(i) = v.is_array() ? v[0].get<double>() : v.get<double>();
      }
      VectorXd f;
      if (t_key == "inf") {
        f = Ks * Kr.llt().solve(y);
      } else {
        const double tau = lr * std::stod(t_key) / m;
        VectorXd w = eig.eigenvectors().transpose() * y;
        for (Index i = 0; i < n; ++i) {
          const double lam = std::max(eig.eigenvalues()(i), 0.0);
          w(i) *= lam > 0.0 ? -std::expm1(-lam * tau) / lam : tau;
        }
        f = Ks * (eig.eigenvectors() * w);
      }
      CHECK((f - expected).cwiseAbs().maxCoeff() <= 1e-10 * expected.cwiseAbs().maxCoeff());
    }
  }
}
