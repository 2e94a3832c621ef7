// ntk-kernel run as a user runs it: Gram and cross matrices of CSV files (and stdin)
// against the library's scalar path (gram(), cross()), exact 17-digit output checked
// against values computed by hand, --help, and every kind of bad input: one line on
// stderr naming the file and line, exit status 2, nothing on stdout; an unwritable
// output exits with status 1.
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "ntk/core/kernel.h"
#include "support/cli.h"

namespace {

namespace fs = std::filesystem;
using Eigen::Index;
using Eigen::MatrixXd;
using ntk::RowMatrixXd;

using ntk::test::read_file;
using ntk::test::Run;
using ntk::test::scratch;
using ntk::test::write_file;

// Runs ntk-kernel with the given arguments, standard input from `stdin_path` (or
// /dev/null) and standard output to `stdout_path` (or a file that is read back).
Run ntk_kernel(const std::vector<std::string>& args, const std::string& stdin_path = "/dev/null",
               const std::string& stdout_path = "") {
  return ntk::test::run_program(NTK_KERNEL_BIN, args, stdin_path, stdout_path);
}

// Exit status 2, nothing on stdout, exactly one line on stderr that starts with
// "ntk-kernel: " and contains each of `parts`.
void check_rejected(const Run& r, const std::vector<std::string>& parts) {
  CAPTURE(r.err);
  CHECK(r.status == 2);
  CHECK(r.out.empty());
  CHECK(r.err.starts_with("ntk-kernel: "));
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  for (const std::string& p : parts) CHECK(r.err.find(p) != std::string::npos);
}

// The printed CSV as a matrix (every cell must be a number; rows of equal length).
MatrixXd parse_csv(const std::string& text) {
  std::vector<std::vector<double>> rows;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::vector<double> row;
    std::string_view rest(line);
    while (true) {
      const auto comma = rest.find(',');
      const std::string_view cell = rest.substr(0, comma);
      double v = 0.0;
      const auto [ptr, ec] = std::from_chars(cell.data(), cell.data() + cell.size(), v);
      REQUIRE(ec == std::errc());
      REQUIRE(ptr == cell.data() + cell.size());
      row.push_back(v);
      if (comma == std::string_view::npos) break;
      rest = rest.substr(comma + 1);
    }
    rows.push_back(row);
  }
  REQUIRE_FALSE(rows.empty());
  MatrixXd M(static_cast<Index>(rows.size()), static_cast<Index>(rows[0].size()));
  for (Index i = 0; i < M.rows(); ++i) {
    REQUIRE(static_cast<Index>(rows[static_cast<std::size_t>(i)].size()) == M.cols());
    for (Index j = 0; j < M.cols(); ++j)
      M(i, j) = rows[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)];
  }
  return M;
}

// max |A - B| / sqrt(da_i db_j), the error relative to the diagonal scale.
double scaled_error(const MatrixXd& A, const MatrixXd& B, const Eigen::VectorXd& da,
                    const Eigen::VectorXd& db) {
  double worst = 0.0;
  for (Index i = 0; i < A.rows(); ++i) {
    for (Index j = 0; j < A.cols(); ++j) {
      const double scale = std::sqrt(da(i) * db(j));
      const double err = std::abs(A(i, j) - B(i, j));
      worst = std::max(worst, scale > 0.0 ? err / scale : err);
    }
  }
  return worst;
}

// Points as the CSV ntk-kernel reads, and as a matrix.
const char* const kPointsA =
    "# six points in R^3\n"
    "0.5, -1.25, 2\n"
    "\n"
    "0,0,0\r\n"
    "  -0.5 ,1.25,-2\n"
    "3e-1,4.5E0,-7.25\n"
    "# a comment between points\n"
    "1e150,-2e150,5e149\n"
    "1e-150,1e-150,-3e-150\n";
RowMatrixXd points_a() {
  RowMatrixXd A(6, 3);
  A << 0.5, -1.25, 2, 0, 0, 0, -0.5, 1.25, -2, 0.3, 4.5, -7.25, 1e150, -2e150, 5e149, 1e-150,
      1e-150, -3e-150;
  return A;
}
const char* const kPointsB = "1,2,3\n-0.5,1.25,-2\n0.25,0.25,0.25\n";
RowMatrixXd points_b() {
  RowMatrixXd B(3, 3);
  B << 1, 2, 3, -0.5, 1.25, -2, 0.25, 0.25, 0.25;
  return B;
}

const char* const kSpecs[] = {
    "ntk:activation=relu,depth=3,w_std=1.5,b_std=0.1,parameterization=ntk,output=ntk",
    ("ntk:activation=erf,depth=2,w_std=1.5,b_std=none,parameterization=standard,width=512,"
     "output=nngp"),
    "ntk:activation=gelu,depth=1,w_std=1.2,b_std=0.2",
    "rbf:lengthscale=0.5,variance=1",
    "polynomial:degree=3,gamma=1,coef0=1",
    "linear",
};

}  // namespace

TEST_CASE("--help explains the spec syntax with examples") {
  for (const char* flag : {"--help", "-h"}) {
    const Run r = ntk_kernel({flag});
    CHECK(r.status == 0);
    CHECK(r.err.empty());
    CHECK(r.out.starts_with("usage: ntk-kernel --kernel SPEC --x A.csv [--y B.csv]"));
    for (const char* example :
         {"ntk:activation=relu,depth=3,w_std=1.5,b_std=0.1,parameterization=ntk,output=ntk",
          "ntk:activation=erf,depth=2,w_std=1.5,b_std=none,parameterization=standard,width=512,"
          "output=nngp",
          "rbf:lengthscale=0.5,variance=1", "polynomial:degree=3,gamma=1,coef0=1", "linear",
          "b_std=B|none", "parameterization=ntk|standard", "output=ntk|nngp"}) {
      CAPTURE(example);
      CHECK(r.out.find(example) != std::string::npos);
    }
    // Every example in the help text is a valid spec.
    CHECK_NOTHROW((void)ntk::make_kernel(
        "ntk:activation=erf,depth=2,w_std=1.5,b_std=none,parameterization=standard,width=512,"
        "output=nngp"));
  }
}

TEST_CASE("Gram matrices agree with the library, are symmetric, and read back exactly") {
  const std::string a = write_file("a.csv", kPointsA);
  const RowMatrixXd A = points_a();
  for (const char* spec : kSpecs) {
    CAPTURE(spec);
    const Run r = ntk_kernel({"--kernel", spec, "--x", a});
    CAPTURE(r.err);
    REQUIRE(r.status == 0);
    CHECK(r.err.empty());
    const MatrixXd K = parse_csv(r.out);
    REQUIRE(K.rows() == A.rows());
    REQUIRE(K.cols() == A.rows());
    CHECK(K == K.transpose());
    const auto k = ntk::make_kernel(spec);
    const MatrixXd G = k->gram(A);  // the scalar path, independent of row()
    if (k->spec().type == ntk::KernelType::kPolynomial) {
      // (x.x' + 1)^3 overflows at norm 1e150: compare the other entries, check the rest
      // overflowed the same way.
      for (Index i = 0; i < A.rows(); ++i) {
        for (Index j = 0; j < A.rows(); ++j) {
          if (std::isfinite(G(i, j))) {
            CHECK(K(i, j) == doctest::Approx(G(i, j)).epsilon(1e-14));
          } else {
            CHECK(K(i, j) == G(i, j));
          }
        }
      }
    } else {
      CHECK(scaled_error(K, G, G.diagonal(), G.diagonal()) <= 1e-12);
    }
    // Standard input gives the same bytes.
    const Run s = ntk_kernel({"--kernel=" + std::string(spec), "--x=-"}, a);
    CHECK(s.status == 0);
    CHECK(s.out == r.out);
  }
}

TEST_CASE("cross matrices: one row per point of --x, one column per point of --y") {
  const std::string a = write_file("a.csv", kPointsA);
  const std::string b = write_file("b.csv", kPointsB);
  const RowMatrixXd A = points_a();
  const RowMatrixXd B = points_b();
  for (const char* spec : kSpecs) {
    CAPTURE(spec);
    const auto k = ntk::make_kernel(spec);
    if (k->spec().type == ntk::KernelType::kPolynomial) continue;  // overflows at 1e150
    const Run r = ntk_kernel({"--kernel", spec, "--x", a, "--y", b});
    CAPTURE(r.err);
    REQUIRE(r.status == 0);
    const MatrixXd K = parse_csv(r.out);
    REQUIRE(K.rows() == A.rows());
    REQUIRE(K.cols() == B.rows());
    Eigen::VectorXd da(A.rows()), db(B.rows());
    for (Index i = 0; i < A.rows(); ++i) da(i) = (*k)(A.row(i).transpose());
    for (Index j = 0; j < B.rows(); ++j) db(j) = (*k)(B.row(j).transpose());
    CHECK(scaled_error(K, k->cross(A, B), da, db) <= 1e-12);
    // Swapping the files transposes the matrix.
    const Run t = ntk_kernel({"--kernel", spec, "--x", b, "--y", a});
    REQUIRE(t.status == 0);
    CHECK(scaled_error(parse_csv(t.out).transpose(), K, da, db) <= 1e-12);
  }
}

TEST_CASE("17 significant digits: hand-computed linear kernel values, byte for byte") {
  const std::string x = write_file("x1.csv", "0.1\n0.2\n");
  const std::string y = write_file("y1.csv", "1\n-3\n");
  // 0.1 * 0.1 = 0.010000000000000002 in double, and so on (Python's '%.17g').
  Run r = ntk_kernel({"--kernel", "linear", "--x", x});
  CHECK(r.status == 0);
  CHECK(r.out ==
        "0.010000000000000002,0.020000000000000004\n"
        "0.020000000000000004,0.040000000000000008\n");
  r = ntk_kernel({"--kernel", "linear", "--x", x, "--y", y});
  CHECK(r.status == 0);
  CHECK(r.out ==
        "0.10000000000000001,-0.30000000000000004\n"
        "0.20000000000000001,-0.60000000000000009\n");
  // rbf: the variance exactly at distance 0; 3 exp(-16 / 8) at distance 4 (to an ulp:
  // the row path's vectorized exp may round differently from std::exp).
  r = ntk_kernel({"--kernel", "rbf:lengthscale=2,variance=3", "--x", y});
  CHECK(r.status == 0);
  const MatrixXd K = parse_csv(r.out);
  CHECK(r.out.starts_with("3,0.40600584970983"));
  CHECK(K(0, 0) == 3.0);
  CHECK(K(1, 1) == 3.0);
  CHECK(K(0, 1) == K(1, 0));
  CHECK(std::abs(K(0, 1) - 3.0 * std::exp(-2.0)) <= 2.3e-16 * K(0, 1));
}

TEST_CASE("bad files: one line naming the file and line, exit status 2") {
  const std::string a = write_file("good.csv", "1,2,3\n4,5,6\n");
  const auto bad = [&](const std::string& name, const std::string& text,
                       const std::vector<std::string>& parts) {
    const std::string path = write_file(name, text);
    CAPTURE(text);
    std::vector<std::string> expected = parts;
    for (std::string& p : expected) {
      if (p.starts_with(":")) p = path + p;  // ":3:" -> "/tmp/.../name.csv:3:"
    }
    check_rejected(ntk_kernel({"--kernel", "linear", "--x", path}), expected);
    // The same file as --y, against a good --x of the same dimension (which then sets
    // the expected dimension: "as in good.csv" rather than "as on line 1").
    std::vector<std::string> as_y;
    for (const std::string& p : expected) {
      if (!p.starts_with("line ")) as_y.push_back(p);
    }
    check_rejected(ntk_kernel({"--kernel", "linear", "--x", a, "--y", path}), as_y);
  };
  bad("ragged.csv", "1,2,3\n4,5,6\n7,8\n", {":3:", "2 values, expected 3", "line 1"});
  bad("ragged2.csv", "# header comment\n\n1,2,3\n4,5,6,7\n",
      {":4:", "4 values, expected 3", "line 3"});
  bad("word.csv", "1,2,3\n4,abc,6\n", {":2:", "'abc'", "column 2", "not a number"});
  bad("header.csv", "x,y,z\n1,2,3\n", {":1:", "'x'", "not a number"});
  bad("plus.csv", "1,2,3\n+4,5,6\n", {":2:", "'+4'", "not a number"});
  bad("junk.csv", "1,2,3\n4,5,6x\n", {":2:", "'6x'", "column 3"});
  bad("empty_cell.csv", "1,,3\n", {":1:", "empty value in column 2"});
  bad("trailing_comma.csv", "1,2,3,\n", {":1:", "empty value in column 4"});
  bad("nan.csv", "1,2,3\n4,nan,6\n", {":2:", "'nan'", "not finite"});
  bad("inf.csv", "1,2,3\n4,5,-inf\n", {":2:", "'-inf'", "not finite"});
  bad("overflow.csv", "1,2,1e999\n", {":1:", "'1e999'", "column 3", "out of range"});
  bad("underflow.csv", "1,2,1e-400\n", {":1:", "'1e-400'", "column 3", "out of range"});
  bad("semicolon.csv", "1;2;3\n", {":1:", "'1;2;3'"});

  // No points at all.
  for (const char* text : {"", "\n\n", "# only a comment\n"}) {
    const std::string path = write_file("empty.csv", text);
    check_rejected(ntk_kernel({"--kernel", "linear", "--x", path}), {path, "no points"});
  }
  // --y of another dimension than --x: named with the line and the other file.
  const std::string b = write_file("b2.csv", "1,2\n");
  check_rejected(ntk_kernel({"--kernel", "linear", "--x", a, "--y", b}),
                 {b + ":1:", "2 values, expected 3", "in " + a});
  // Missing and unreadable files.
  const std::string missing = (scratch() / "missing.csv").string();
  check_rejected(ntk_kernel({"--kernel", "linear", "--x", missing}), {missing, "cannot open"});
  check_rejected(ntk_kernel({"--kernel", "linear", "--x", a, "--y", missing}),
                 {missing, "cannot open"});
  // Standard input is named as such.
  const std::string bad_stdin = write_file("bad_stdin.csv", "1,2\n3\n");
  check_rejected(ntk_kernel({"--kernel", "linear", "--x", "-"}, bad_stdin),
                 {"<stdin>:2:", "1 value, expected 2"});
}

TEST_CASE("coordinates too large for the kernel: one line naming the point, exit status 2") {
  // Finite inputs whose NTK values overflow (kernel.h: beyond |x| ~ 1e154) give NaN,
  // which must not be printed with exit status 0. (An overflow to inf is printed; see
  // the polynomial kernel above.)
  const std::string big = write_file("big.csv", "1,1\n1e300,1e300\n");
  for (const char* spec :
       {"ntk", "ntk:activation=erf,depth=1", "ntk:activation=gelu,output=nngp"}) {
    CAPTURE(spec);
    check_rejected(ntk_kernel({"--kernel", spec, "--x", big}), {big + ":2:", "NaN", "scale"});
  }
  // Cross matrices: nothing is printed, not even the rows before the bad one.
  // (k(a, b) is finite here unless both points are large.)
  const std::string big2 = write_file("big2.csv", "2,2\n3e300,1e300\n");
  check_rejected(ntk_kernel({"--kernel", "ntk", "--x", big, "--y", big2}),
                 {big + ":2:", big2 + ":2", "NaN"});
  check_rejected(ntk_kernel({"--kernel", "ntk", "--x", big2, "--y", big}),
                 {big2 + ":2:", big + ":2", "NaN"});
  // Values that overflow to inf are printed as such.
  const Run r = ntk_kernel({"--kernel", "linear", "--x", big});
  CHECK(r.status == 0);
  CHECK(r.out.ends_with(",inf\n"));
}

TEST_CASE("a UTF-8 byte order mark at the start of a file is skipped") {
  // Spreadsheets' "CSV UTF-8" export starts the file with one.
  const std::string plain = write_file("plain.csv", "1,2\n3,4\n");
  const std::string bom = write_file("bom.csv",
                                     "\xEF\xBB\xBF"
                                     "1,2\n3,4\n");
  const Run expected = ntk_kernel({"--kernel", "linear", "--x", plain});
  const Run r = ntk_kernel({"--kernel", "linear", "--x", bom});
  CAPTURE(r.err);
  CHECK(r.status == 0);
  CHECK(r.out == expected.out);
  CHECK(ntk_kernel({"--kernel", "linear", "--x", bom}, bom).out == expected.out);
  CHECK(ntk_kernel({"--kernel", "linear", "--x", "-"}, bom).out == expected.out);
  // Only at the start of the file: elsewhere it is a bad value.
  const std::string late = write_file("late_bom.csv",
                                      "1,2\n\xEF\xBB\xBF"
                                      "3,4\n");
  check_rejected(ntk_kernel({"--kernel", "linear", "--x", late}), {late + ":2:", "column 1"});
}

TEST_CASE("bad command lines and specs: one line, exit status 2") {
  const std::string a = write_file("good.csv", "1,2,3\n4,5,6\n");
  check_rejected(ntk_kernel({"--kernel", "ntk:depth=-1", "--x", a}), {"--kernel", "depth", "-1"});
  check_rejected(ntk_kernel({"--kernel", "ntk:activation=tanh", "--x", a}),
                 {"--kernel", "activation", "tanh"});
  check_rejected(ntk_kernel({"--kernel", "ntk:parameterization=standard", "--x", a}),
                 {"--kernel", "width"});
  check_rejected(ntk_kernel({"--kernel", "sigmoid", "--x", a}), {"--kernel", "sigmoid"});
  check_rejected(ntk_kernel({"--kernel", "rbf:depth=3", "--x", a}), {"--kernel", "depth"});
  check_rejected(ntk_kernel({"--x", a}), {"--kernel is required"});
  check_rejected(ntk_kernel({"--kernel", "linear"}), {"--x is required"});
  check_rejected(ntk_kernel({}), {"--kernel is required"});
  check_rejected(ntk_kernel({"--kernel", "linear", "--x"}), {"--x: missing value"});
  check_rejected(ntk_kernel({"--kernel", "linear", "--x", a, "--z", a}),
                 {"unknown argument '--z'"});
  check_rejected(ntk_kernel({"--kernel", "linear", "--x", a, "extra"}),
                 {"unknown argument 'extra'"});
  check_rejected(ntk_kernel({"--kernel", "linear", "--x", a, "--x", a}), {"--x given twice"});
  check_rejected(ntk_kernel({"--kernel", "linear", "--kernel", "rbf", "--x", a}),
                 {"--kernel given twice"});
  check_rejected(ntk_kernel({"--kernel", "linear", "--x", "-", "--y", "-"}), {"standard input"});
  check_rejected(ntk_kernel({"--kernel", "linear", "--x="}), {"--x: empty file name"});
}

TEST_CASE("an output that cannot be written: exit status 1") {
  if (!fs::exists("/dev/full")) return;  // Linux: every write fails with ENOSPC
  const std::string a = write_file("good.csv", "1,2,3\n4,5,6\n");
  const Run r = ntk_kernel({"--kernel", "linear", "--x", a}, "/dev/null", "/dev/full");
  CHECK(r.status == 1);
  CHECK(r.err.starts_with("ntk-kernel: cannot write the output"));
  // --help too.
  const Run help = ntk_kernel({"--help"}, "/dev/null", "/dev/full");
  CHECK(help.status == 1);
  CHECK(help.err.starts_with("ntk-kernel: cannot write the output"));
}
