// KernelSpec text form: parse, canonical printing and validation.
//
// Grammar (whitespace around the type, keys and values is ignored):
//   spec  := type [ ':' pair { ',' pair } ]
//   pair  := key '=' value
// Numbers are read with std::from_chars (the whole value must be consumed, no leading '+',
// finite values only) and printed with std::to_chars in shortest round-trip form, so
// parse(s.to_string()) == s for every valid s.
#include "ntk/core/kernel_spec.h"

#include <array>
#include <charconv>
#include <cmath>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace ntk {

namespace {

constexpr std::string_view kPrefix = "kernel spec: ";

[[noreturn]] void fail(const std::string& what) {
  throw std::invalid_argument(std::string(kPrefix) + what);
}

// Not "'" + std::string(s) + "'": GCC 12 flags that with a false -Wrestrict at -O2
// -march=native (GCC bug 105651).
std::string quoted(std::string_view s) { return std::string(1, '\'').append(s).append(1, '\''); }

std::string format_double(double v) {
  std::array<char, 64> buf{};
  const auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  if (ec != std::errc()) return "?";  // cannot happen: 64 chars hold any double
  return std::string(buf.data(), end);
}

std::string format_int(int v) { return std::to_string(v); }

std::string_view trim(std::string_view s) {
  constexpr std::string_view kSpace = " \t\r\n";
  const auto first = s.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(kSpace);
  return s.substr(first, last - first + 1);
}

double parse_double(std::string_view key, std::string_view value) {
  double v = 0.0;
  const char* first = value.data();
  const char* last = value.data() + value.size();
  const auto [ptr, ec] = std::from_chars(first, last, v);
  if (value.empty() || ec != std::errc() || ptr != last) {
    fail(std::string(key) + " must be a number, got " + quoted(value));
  }
  if (!std::isfinite(v)) fail(std::string(key) + " must be finite, got " + quoted(value));
  return v;
}

int parse_int(std::string_view key, std::string_view value) {
  int v = 0;
  const char* first = value.data();
  const char* last = value.data() + value.size();
  const auto [ptr, ec] = std::from_chars(first, last, v);
  if (value.empty() || ec != std::errc() || ptr != last) {
    fail(std::string(key) + " must be an integer, got " + quoted(value));
  }
  return v;
}

// The keys each kernel type accepts, in canonical (to_string) order.
constexpr std::array<std::string_view, 7> kNtkKeys = {"activation",       "depth", "w_std", "b_std",
                                                      "parameterization", "width", "output"};
constexpr std::array<std::string_view, 2> kRbfKeys = {"lengthscale", "variance"};
constexpr std::array<std::string_view, 3> kPolynomialKeys = {"degree", "gamma", "coef0"};

template <std::size_t N>
bool contains(const std::array<std::string_view, N>& keys, std::string_view key) {
  for (std::string_view k : keys) {
    if (k == key) return true;
  }
  return false;
}

bool is_known_key(std::string_view key) {
  return contains(kNtkKeys, key) || contains(kRbfKeys, key) || contains(kPolynomialKeys, key);
}

bool type_accepts(KernelType type, std::string_view key) {
  switch (type) {
    case KernelType::kNtk:
      return contains(kNtkKeys, key);
    case KernelType::kRbf:
      return contains(kRbfKeys, key);
    case KernelType::kPolynomial:
      return contains(kPolynomialKeys, key);
    case KernelType::kLinear:
      return false;
  }
  return false;
}

KernelType parse_type(std::string_view name) {
  if (name == "ntk") return KernelType::kNtk;
  if (name == "rbf") return KernelType::kRbf;
  if (name == "polynomial") return KernelType::kPolynomial;
  if (name == "linear") return KernelType::kLinear;
  fail("unknown kernel type " + quoted(name) + " (expected ntk, rbf, polynomial or linear)");
}

void set_field(KernelSpec& spec, std::string_view key, std::string_view value) {
  if (key == "activation") {
    if (value == "relu") {
      spec.activation = Activation::kRelu;
    } else if (value == "erf") {
      spec.activation = Activation::kErf;
    } else if (value == "gelu") {
      spec.activation = Activation::kGelu;
    } else {
      fail("activation must be relu, erf or gelu, got " + quoted(value));
    }
  } else if (key == "depth") {
    spec.depth = parse_int(key, value);
  } else if (key == "w_std") {
    spec.w_std = parse_double(key, value);
  } else if (key == "b_std") {
    if (value == "none") {
      spec.b_std.reset();
    } else {
      spec.b_std = parse_double(key, value);
    }
  } else if (key == "parameterization") {
    if (value == "ntk") {
      spec.parameterization = Parameterization::kNtk;
    } else if (value == "standard") {
      spec.parameterization = Parameterization::kStandard;
    } else {
      fail("parameterization must be ntk or standard, got " + quoted(value));
    }
  } else if (key == "width") {
    spec.width = parse_int(key, value);
  } else if (key == "output") {
    if (value == "ntk") {
      spec.output = KernelOutput::kNtk;
    } else if (value == "nngp") {
      spec.output = KernelOutput::kNngp;
    } else {
      fail("output must be ntk or nngp, got " + quoted(value));
    }
  } else if (key == "lengthscale") {
    spec.lengthscale = parse_double(key, value);
  } else if (key == "variance") {
    spec.variance = parse_double(key, value);
  } else if (key == "degree") {
    spec.degree = parse_int(key, value);
  } else if (key == "gamma") {
    spec.gamma = parse_double(key, value);
  } else if (key == "coef0") {
    spec.coef0 = parse_double(key, value);
  }
}

void require_finite(std::string_view field, double v) {
  if (!std::isfinite(v)) fail(std::string(field) + " must be finite, got " + format_double(v));
}

}  // namespace

std::string_view to_string(KernelType t) {
  switch (t) {
    case KernelType::kNtk:
      return "ntk";
    case KernelType::kRbf:
      return "rbf";
    case KernelType::kPolynomial:
      return "polynomial";
    case KernelType::kLinear:
      return "linear";
  }
  return "?";
}

std::string_view to_string(Activation a) {
  switch (a) {
    case Activation::kRelu:
      return "relu";
    case Activation::kErf:
      return "erf";
    case Activation::kGelu:
      return "gelu";
  }
  return "?";
}

std::string_view to_string(Parameterization p) {
  switch (p) {
    case Parameterization::kNtk:
      return "ntk";
    case Parameterization::kStandard:
      return "standard";
  }
  return "?";
}

std::string_view to_string(KernelOutput o) {
  switch (o) {
    case KernelOutput::kNtk:
      return "ntk";
    case KernelOutput::kNngp:
      return "nngp";
  }
  return "?";
}

KernelSpec KernelSpec::parse(std::string_view text) {
  const std::string_view body = trim(text);
  if (body.empty()) fail("empty specification (expected e.g. 'rbf:lengthscale=1,variance=1')");

  const auto colon = body.find(':');
  KernelSpec spec;
  spec.type = parse_type(trim(body.substr(0, colon)));

  if (colon != std::string_view::npos) {
    std::vector<std::string_view> seen;
    std::string_view rest = body.substr(colon + 1);
    while (true) {
      const auto comma = rest.find(',');
      const std::string_view pair = trim(rest.substr(0, comma));
      const auto eq = pair.find('=');
      if (eq == std::string_view::npos) fail("expected key=value, got " + quoted(pair));
      const std::string_view key = trim(pair.substr(0, eq));
      const std::string_view value = trim(pair.substr(eq + 1));
      if (!is_known_key(key)) {
        fail("unknown key " + quoted(key) + " (value " + quoted(value) + ") for kernel type " +
             std::string(ntk::to_string(spec.type)));
      }
      if (!type_accepts(spec.type, key)) {
        fail("key " + quoted(key) + " (value " + quoted(value) +
             ") does not apply to kernel type " + std::string(ntk::to_string(spec.type)));
      }
      for (std::string_view k : seen) {
        if (k == key)
          fail("duplicate key " + quoted(key) + " (second value " + quoted(value) + ")");
      }
      seen.push_back(key);
      set_field(spec, key, value);
      if (comma == std::string_view::npos) break;
      rest = rest.substr(comma + 1);
    }
  }
  spec.validate();
  return spec;
}

std::string KernelSpec::to_string() const {
  std::string s(ntk::to_string(type));
  switch (type) {
    case KernelType::kNtk:
      s += ":activation=" + std::string(ntk::to_string(activation));
      s += ",depth=" + format_int(depth);
      s += ",w_std=" + format_double(w_std);
      s += ",b_std=" + (b_std ? format_double(*b_std) : std::string("none"));
      s += ",parameterization=" + std::string(ntk::to_string(parameterization));
      if (width) s += ",width=" + format_int(*width);
      s += ",output=" + std::string(ntk::to_string(output));
      break;
    case KernelType::kRbf:
      s += ":lengthscale=" + format_double(lengthscale);
      s += ",variance=" + format_double(variance);
      break;
    case KernelType::kPolynomial:
      s += ":degree=" + format_int(degree);
      s += ",gamma=" + format_double(gamma);
      s += ",coef0=" + format_double(coef0);
      break;
    case KernelType::kLinear:
      break;
  }
  return s;
}

void KernelSpec::validate() const {
  switch (type) {
    case KernelType::kNtk:
      if (activation != Activation::kRelu && activation != Activation::kErf &&
          activation != Activation::kGelu) {
        fail("activation must be relu, erf or gelu, got " +
             format_int(static_cast<int>(activation)));
      }
      if (depth < 0) fail("depth must be >= 0, got " + format_int(depth));
      if (depth > kMaxDepth) {
        fail("depth must be <= " + format_int(kMaxDepth) + ", got " + format_int(depth));
      }
      require_finite("w_std", w_std);
      if (w_std < 0.0) fail("w_std must be >= 0, got " + format_double(w_std));
      if (b_std) {
        require_finite("b_std", *b_std);
        if (*b_std < 0.0) fail("b_std must be >= 0 or none, got " + format_double(*b_std));
      }
      if (parameterization != Parameterization::kNtk &&
          parameterization != Parameterization::kStandard) {
        fail("parameterization must be ntk or standard, got " +
             format_int(static_cast<int>(parameterization)));
      }
      if (width && *width <= 0) fail("width must be > 0, got " + format_int(*width));
      if (parameterization == Parameterization::kStandard && !width) {
        fail("width is required when parameterization=standard (got none)");
      }
      if (output != KernelOutput::kNtk && output != KernelOutput::kNngp) {
        fail("output must be ntk or nngp, got " + format_int(static_cast<int>(output)));
      }
      break;
    case KernelType::kRbf:
      require_finite("lengthscale", lengthscale);
      if (!(lengthscale > 0.0)) fail("lengthscale must be > 0, got " + format_double(lengthscale));
      require_finite("variance", variance);
      if (variance < 0.0) fail("variance must be >= 0, got " + format_double(variance));
      break;
    case KernelType::kPolynomial:
      if (degree < 1) fail("degree must be >= 1, got " + format_int(degree));
      require_finite("gamma", gamma);
      if (gamma < 0.0) fail("gamma must be >= 0, got " + format_double(gamma));
      require_finite("coef0", coef0);
      if (coef0 < 0.0) fail("coef0 must be >= 0, got " + format_double(coef0));
      break;
    case KernelType::kLinear:
      break;
    default:
      fail("type must be ntk, rbf, polynomial or linear, got " +
           format_int(static_cast<int>(type)));
  }
}

}  // namespace ntk
