// ntk-kernel: the kernel matrix of a set of points, as CSV.
//
//   ntk-kernel --kernel SPEC --x A.csv [--y B.csv]
//
// Without --y it prints the Gram matrix K(A, A), n x n; with --y the cross matrix
// K(A, B), one row per point of A and one column per point of B. Values are printed with
// 17 significant digits, so every double reads back exactly.
//
// Input files: one point per line, coordinates separated by commas (surrounding spaces
// allowed), no header; blank lines and lines starting with '#' are skipped; a UTF-8 byte
// order mark at the start is skipped; "-" reads standard input. Every point of both files
// must have the same number of coordinates.
//
// Exit status: 0 on success; 2 for a bad command line, a bad kernel spec or a bad input
// file (including coordinates so large that a kernel value comes out NaN: nothing is
// printed then), with one line on stderr ("ntk-kernel: A.csv:7: reason"); 1 when the output
// cannot be written.
#include <Eigen/Core>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "ntk/core/kernel.h"

namespace {

constexpr int kExitFailure = 1;
constexpr int kExitBadInput = 2;

constexpr const char* kUsage = R"(usage: ntk-kernel --kernel SPEC --x A.csv [--y B.csv]

Prints the kernel matrix of the points in A.csv (the Gram matrix K(A, A)) or, with
--y, the cross matrix K(A, B) (row i, column j: k(a_i, b_j)) as CSV with 17
significant digits.

  --kernel SPEC   the kernel, in the text form shared by every ntkstream program
  --x FILE        the points: one per line, coordinates separated by commas, no header;
                  blank lines and lines starting with # are skipped, and a UTF-8
                  byte order mark at the start; - is stdin
  --y FILE        a second set of points of the same dimension (optional)
  --help          this text

SPEC is  type[:key=value,key=value,...]  with the keys of that type; keys not given
take their defaults:
  ntk         activation=relu|erf|gelu  depth=N (hidden layers, 0 allowed)
              w_std=S  b_std=B|none (none: no bias parameter)
              parameterization=ntk|standard  width=N (required by standard)
              output=ntk|nngp (the NTK, or the NNGP/GP-prior kernel)
              conventions of neural-tangents' stax.serial(Dense, Act, ..., Dense);
              the input kernel is x.x'/d
  rbf         lengthscale=L  variance=V         V exp(-|x - x'|^2 / (2 L^2))
  polynomial  degree=P  gamma=G  coef0=C        (G x.x' + C)^P
  linear                                        x.x'
Examples:
  ntk:activation=relu,depth=3,w_std=1.5,b_std=0.1,parameterization=ntk,output=ntk
  ntk:activation=erf,depth=2,w_std=1.5,b_std=none,parameterization=standard,width=512,output=nngp
  rbf:lengthscale=0.5,variance=1
  polynomial:degree=3,gamma=1,coef0=1
  linear

Exit status: 0 on success; 2 for a bad command line, spec or file (one line on stderr,
naming the file and line; also for coordinates so large that a kernel value is NaN);
1 when the output cannot be written.
)";

// A bad command line or input; what() is the one-line reason.
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Options {
  bool help = false;
  std::string kernel;
  std::string x_path;
  std::optional<std::string> y_path;
};

Options parse_args(int argc, char** argv) {
  Options o;
  bool have_kernel = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      o.help = true;
      continue;
    }
    // --flag VALUE or --flag=VALUE.
    std::string_view flag = arg;
    std::optional<std::string_view> value;
    if (const auto eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      flag = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    }
    if (flag != "--kernel" && flag != "--x" && flag != "--y") {
      throw InputError("unknown argument '" + std::string(arg) + "' (see --help)");
    }
    if (!value) {
      if (i + 1 >= argc) throw InputError(std::string(flag) + ": missing value");
      value = argv[++i];
    }
    const auto set_once = [&](bool given, auto& field) {
      if (given) throw InputError(std::string(flag) + " given twice");
      field = std::string(*value);
    };
    if (flag == "--kernel") {
      set_once(have_kernel, o.kernel);
      have_kernel = true;
    } else if (flag == "--x") {
      set_once(!o.x_path.empty(), o.x_path);
      if (o.x_path.empty()) throw InputError("--x: empty file name");
    } else {
      set_once(o.y_path.has_value(), o.y_path);
      if (o.y_path->empty()) throw InputError("--y: empty file name");
    }
  }
  if (o.help) return o;
  if (!have_kernel) throw InputError("--kernel is required (see --help)");
  if (o.x_path.empty()) throw InputError("--x is required (see --help)");
  if (o.y_path && o.x_path == "-" && *o.y_path == "-") {
    throw InputError("--x and --y cannot both read standard input");
  }
  return o;
}

std::string_view trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t");
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(" \t") - first + 1);
}

// The points of one CSV file, one per row, and the line each came from.
struct Points {
  ntk::RowMatrixXd X;
  std::vector<long> lines;
};

// `dim` (when set) is the required dimension.
Points read_points(const std::string& path, std::optional<Eigen::Index> dim,
                   const std::string& dim_source) {
  std::ifstream file;
  std::istream* in = &std::cin;
  const std::string name = path == "-" ? "<stdin>" : path;
  if (path != "-") {
    file.open(path, std::ios::binary);
    if (!file) throw InputError(name + ": cannot open: " + std::strerror(errno));
    in = &file;
  }
  std::vector<double> values;
  std::vector<long> lines;
  Eigen::Index cols = dim.value_or(0);
  long first_line = 0;  // the line that fixed the dimension (0: the other file did)
  std::string line;
  for (long line_no = 1; std::getline(*in, line); ++line_no) {
    std::string_view rest(line);
    if (!rest.empty() && rest.back() == '\r') rest.remove_suffix(1);
    // Spreadsheets' "CSV UTF-8" export starts the file with a byte order mark.
    if (line_no == 1 && rest.starts_with("\xEF\xBB\xBF")) rest.remove_prefix(3);
    if (trim(rest).empty() || trim(rest).front() == '#') continue;
    const std::string where = name + ":" + std::to_string(line_no) + ": ";
    Eigen::Index count = 0;
    while (true) {
      const auto comma = rest.find(',');
      const std::string_view cell = trim(rest.substr(0, comma));
      double v = 0.0;
      const auto [ptr, ec] = std::from_chars(cell.data(), cell.data() + cell.size(), v);
      if (cell.empty()) {
        throw InputError(where + "empty value in column " + std::to_string(count + 1));
      }
      if (ec == std::errc::result_out_of_range && ptr == cell.data() + cell.size()) {
        throw InputError(where + "'" + std::string(cell) + "' in column " +
                         std::to_string(count + 1) + " is out of range for a double");
      }
      if (ec != std::errc() || ptr != cell.data() + cell.size()) {
        throw InputError(where + "'" + std::string(cell) + "' in column " +
                         std::to_string(count + 1) + " is not a number");
      }
      if (!std::isfinite(v)) {
        throw InputError(where + "'" + std::string(cell) + "' in column " +
                         std::to_string(count + 1) + " is not finite");
      }
      values.push_back(v);
      ++count;
      if (comma == std::string_view::npos) break;
      rest = rest.substr(comma + 1);
    }
    lines.push_back(line_no);
    if (cols == 0) {
      cols = count;
      first_line = line_no;
    } else if (count != cols) {
      throw InputError(
          where + std::to_string(count) + (count == 1 ? " value" : " values") + ", expected " +
          std::to_string(cols) + " (as " +
          (first_line > 0 ? "on line " + std::to_string(first_line) : "in " + dim_source) + ")");
    }
  }
  if (in->bad()) throw InputError(name + ": read error");
  if (values.empty()) throw InputError(name + ": no points");
  const Eigen::Index rows = static_cast<Eigen::Index>(values.size()) / cols;
  return {Eigen::Map<const ntk::RowMatrixXd>(values.data(), rows, cols), std::move(lines)};
}

// One row of the matrix as CSV: 17 significant digits, so that every value round-trips.
void write_row(std::FILE* out, const double* v, Eigen::Index n, std::string& buf) {
  buf.clear();
  char num[32];
  for (Eigen::Index j = 0; j < n; ++j) {
    if (j > 0) buf += ',';
    const auto [end, ec] =
        std::to_chars(num, num + sizeof num, v[j], std::chars_format::general, 17);
    buf.append(num, ec == std::errc() ? end : num);
  }
  buf += '\n';
  std::fwrite(buf.data(), 1, buf.size(), out);
}

int run(const Options& o) {
  // The spec is parsed and validated by the one factory every ntkstream program uses, so
  // the same text means the same kernel here, in config files and on the wire.
  std::shared_ptr<const ntk::Kernel> kernel;
  try {
    kernel = ntk::make_kernel(o.kernel);
  } catch (const std::invalid_argument& e) {
    throw InputError(std::string("--kernel: ") + e.what());
  }
  const ntk::Kernel& k = *kernel;

  // The points; the second file must match the first's dimension.
  const Points a_points = read_points(o.x_path, std::nullopt, "");
  const ntk::RowMatrixXd& A = a_points.X;
  const std::string a_name = o.x_path == "-" ? "<stdin>" : o.x_path;
  std::optional<Points> b_points;
  if (o.y_path) b_points = read_points(*o.y_path, A.cols(), a_name);
  const ntk::RowMatrixXd* B = b_points ? &b_points->X : nullptr;

  // Row evaluation is the library's hot path: the per-point quantities (norms, the
  // diagonal of the layer recursion) are computed once per point, then each row of the
  // matrix costs one matrix-vector product plus vectorized work per entry.
  const ntk::RowMatrixXd& stored = B ? *B : A;
  const Eigen::MatrixXd caches = k.prepare_all(stored);
  Eigen::VectorXd query_cache(k.cache_size());
  Eigen::MatrixXd scratch(stored.rows(), k.scratch_cols());

  // The whole matrix is computed before anything is printed, so that a NaN (kernel.h:
  // finite inputs beyond |x| ~ 1e154 may give inf or NaN) is reported as a bad input
  // with nothing on stdout. An overflow to inf is printed: it is the value, rounded.
  // Column i holds k(a_i, p_j) for the stored points p_j (B, or A itself) and is
  // printed as row i.
  const Eigen::Index n = A.rows();
  Eigen::MatrixXd K(stored.rows(), n);
  if (B) {
    // Cross matrix: column i holds k(a_i, b_j) for every b_j.
    for (Eigen::Index i = 0; i < n; ++i) {
      k.prepare(A.row(i).transpose(), query_cache);
      k.row(*B, caches, A.row(i).transpose(), query_cache, K.col(i), scratch);
    }
  } else {
    // Gram matrix: each pair is evaluated once (point j against the points 0..j) and
    // mirrored, so the printed matrix is exactly symmetric.
    for (Eigen::Index j = 0; j < n; ++j) {
      k.prepare(A.row(j).transpose(), query_cache);
      k.row(A.topRows(j + 1), caches.topRows(j + 1), A.row(j).transpose(), query_cache,
            K.col(j).head(j + 1), scratch);
      K.row(j).head(j) = K.col(j).head(j).transpose();
    }
  }
  if (K.hasNaN()) {
    const std::string b_name = !B ? "" : *o.y_path == "-" ? "<stdin>" : *o.y_path;
    const std::vector<long>& b_lines = B ? b_points->lines : a_points.lines;
    // In a Gram matrix a NaN k(p, p) names the point at fault; look there first.
    for (Eigen::Index i = 0; !B && i < n; ++i) {
      if (std::isnan(K(i, i))) {
        throw InputError(a_name + ":" + std::to_string(a_points.lines[i]) +
                         ": the kernel value of the point with itself is NaN: the "
                         "coordinates are too large for this kernel (scale the inputs)");
      }
    }
    for (Eigen::Index i = 0; i < n; ++i) {
      for (Eigen::Index j = 0; j < K.rows(); ++j) {
        if (!std::isnan(K(j, i))) continue;
        const std::string other =
            B ? b_name + ":" + std::to_string(b_lines[j]) : "line " + std::to_string(b_lines[j]);
        throw InputError(a_name + ":" + std::to_string(a_points.lines[i]) +
                         ": the kernel value with the point on " + other +
                         " is NaN: the coordinates are too large for this kernel "
                         "(scale the inputs)");
      }
    }
  }
  std::string buf;
  for (Eigen::Index i = 0; i < n; ++i) write_row(stdout, K.col(i).data(), K.rows(), buf);
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
    std::cerr << "ntk-kernel: cannot write the output: " << std::strerror(errno) << '\n';
    return kExitFailure;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse_args(argc, argv);
    if (o.help) {
      std::cout << kUsage << std::flush;
      // The exit status promised for an output that cannot be written holds here too.
      if (!std::cout) {
        std::cerr << "ntk-kernel: cannot write the output: " << std::strerror(errno) << '\n';
        return kExitFailure;
      }
      return 0;
    }
    return run(o);
  } catch (const InputError& e) {
    std::cerr << "ntk-kernel: " << e.what() << '\n';
    return kExitBadInput;
  } catch (const std::exception& e) {
    std::cerr << "ntk-kernel: " << e.what() << '\n';
    return kExitFailure;
  }
}
