// KernelSpec's text form: the issue's example specs parse to the intended fields and
// print back character for character; defaults; canonical printing and round trips of
// hand-picked and random specs (every field of the type, shortest round-trip numbers);
// every bad spec throws std::invalid_argument whose message names the field and the
// offending value; validate() on specs built in code; make_kernel() uses the same checks.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "ntk/core/kernel.h"
#include "ntk/core/kernel_spec.h"

namespace {

using ntk::Activation;
using ntk::KernelOutput;
using ntk::KernelSpec;
using ntk::KernelType;
using ntk::Parameterization;

// The specs the issue (and README, DESIGN.md) write; each is already canonical.
const char* const kIssueExamples[] = {
    "ntk:activation=relu,depth=3,w_std=1.5,b_std=0.1,parameterization=ntk,output=ntk",
    ("ntk:activation=erf,depth=2,w_std=1.5,b_std=none,parameterization=standard,width=512,"
     "output=nngp"),
    "rbf:lengthscale=0.5,variance=1",
    "polynomial:degree=3,gamma=1,coef0=1",
    "linear",
};

// A spec of the given type with every field at its default.
KernelSpec of_type(KernelType type) {
  KernelSpec s;
  s.type = type;
  return s;
}

// The message of the std::invalid_argument that parse(text) throws ("" if none).
std::string parse_error(const std::string& text) {
  try {
    (void)KernelSpec::parse(text);
  } catch (const std::invalid_argument& e) {
    return e.what();
  } catch (...) {
    return "<an exception other than std::invalid_argument>";
  }
  return "";
}

std::string validate_error(const KernelSpec& s) {
  try {
    s.validate();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

// parse(text) throws std::invalid_argument naming `field` and `value`.
void check_rejected(const std::string& text, const std::string& field, const std::string& value) {
  CAPTURE(text);
  const std::string msg = parse_error(text);
  CAPTURE(msg);
  REQUIRE_FALSE(msg.empty());
  CHECK(msg.starts_with("kernel spec: "));
  CHECK(msg.find(field) != std::string::npos);
  CHECK(msg.find(value) != std::string::npos);
  // make_kernel(text) goes through the same parser.
  CHECK_THROWS_AS((void)ntk::make_kernel(text), std::invalid_argument);
}

}  // namespace

TEST_CASE("the issue's example specs parse to the intended fields") {
  const KernelSpec a = KernelSpec::parse(kIssueExamples[0]);
  CHECK(a.type == KernelType::kNtk);
  CHECK(a.activation == Activation::kRelu);
  CHECK(a.depth == 3);
  CHECK(a.w_std == 1.5);
  REQUIRE(a.b_std.has_value());
  CHECK(*a.b_std == 0.1);
  CHECK(a.parameterization == Parameterization::kNtk);
  CHECK_FALSE(a.width.has_value());
  CHECK(a.output == KernelOutput::kNtk);

  const KernelSpec b = KernelSpec::parse(kIssueExamples[1]);
  CHECK(b.type == KernelType::kNtk);
  CHECK(b.activation == Activation::kErf);
  CHECK(b.depth == 2);
  CHECK(b.w_std == 1.5);
  CHECK_FALSE(b.b_std.has_value());
  CHECK(b.parameterization == Parameterization::kStandard);
  REQUIRE(b.width.has_value());
  CHECK(*b.width == 512);
  CHECK(b.output == KernelOutput::kNngp);

  const KernelSpec c = KernelSpec::parse(kIssueExamples[2]);
  CHECK(c.type == KernelType::kRbf);
  CHECK(c.lengthscale == 0.5);
  CHECK(c.variance == 1.0);

  const KernelSpec d = KernelSpec::parse(kIssueExamples[3]);
  CHECK(d.type == KernelType::kPolynomial);
  CHECK(d.degree == 3);
  CHECK(d.gamma == 1.0);
  CHECK(d.coef0 == 1.0);

  const KernelSpec e = KernelSpec::parse(kIssueExamples[4]);
  CHECK(e.type == KernelType::kLinear);
  CHECK(e == of_type(KernelType::kLinear));
}

TEST_CASE("the issue's example specs print back character for character") {
  for (const char* text : kIssueExamples) {
    CAPTURE(text);
    const KernelSpec s = KernelSpec::parse(text);
    CHECK(s.to_string() == text);
    CHECK(KernelSpec::parse(s.to_string()) == s);
    // The factory builds a kernel carrying the same spec.
    CHECK(ntk::make_kernel(text)->spec() == s);
  }
}

TEST_CASE("keys not given take the documented defaults") {
  // The defaults written in kernel_spec.h (ntkstream's default kernel, the erf NTK).
  const KernelSpec def;
  CHECK(def.type == KernelType::kNtk);
  CHECK(def.activation == Activation::kErf);
  CHECK(def.depth == 1);
  CHECK(def.w_std == 0.7);
  CHECK(def.b_std == std::optional<double>(0.7));
  CHECK(def.parameterization == Parameterization::kNtk);
  CHECK_FALSE(def.width.has_value());
  CHECK(def.output == KernelOutput::kNtk);
  CHECK(def.lengthscale == 1.0);
  CHECK(def.variance == 1.0);
  CHECK(def.degree == 3);
  CHECK(def.gamma == 1.0);
  CHECK(def.coef0 == 1.0);

  CHECK(KernelSpec::parse("ntk") == def);
  CHECK(KernelSpec::parse("ntk").to_string() ==
        "ntk:activation=erf,depth=1,w_std=0.7,b_std=0.7,parameterization=ntk,output=ntk");
  CHECK(KernelSpec::parse("rbf") == of_type(KernelType::kRbf));
  CHECK(KernelSpec::parse("rbf").to_string() == "rbf:lengthscale=1,variance=1");
  CHECK(KernelSpec::parse("polynomial") == of_type(KernelType::kPolynomial));
  CHECK(KernelSpec::parse("polynomial").to_string() == "polynomial:degree=3,gamma=1,coef0=1");

  // One key given: only that field differs from the defaults.
  KernelSpec depth1;
  depth1.depth = 1;
  CHECK(KernelSpec::parse("ntk:depth=1") == depth1);
  KernelSpec var2 = of_type(KernelType::kRbf);
  var2.variance = 2.0;
  CHECK(KernelSpec::parse("rbf:variance=2") == var2);
}

TEST_CASE("parsing: whitespace, key order, b_std none versus 0, numeric forms") {
  // Whitespace around the type, keys and values is ignored; keys may come in any order;
  // printing puts them in canonical order.
  const KernelSpec s = KernelSpec::parse(
      "  ntk : output = nngp , depth=1,activation= gelu ,\tw_std=2 , b_std = 0 \n");
  CHECK(s.activation == Activation::kGelu);
  CHECK(s.depth == 1);
  CHECK(s.w_std == 2.0);
  CHECK(s.b_std == std::optional<double>(0.0));
  CHECK(s.output == KernelOutput::kNngp);
  CHECK(s.to_string() ==
        "ntk:activation=gelu,depth=1,w_std=2,b_std=0,parameterization=ntk,output=nngp");

  // b_std=none (no bias parameter) and b_std=0 (a bias with zero variance) are different
  // networks (they differ in the standard-parameterization NTK) and print differently.
  const KernelSpec none = KernelSpec::parse("ntk:b_std=none");
  const KernelSpec zero = KernelSpec::parse("ntk:b_std=0");
  CHECK_FALSE(none.b_std.has_value());
  CHECK(zero.b_std == std::optional<double>(0.0));
  CHECK_FALSE(none == zero);
  CHECK(none.to_string().find("b_std=none") != std::string::npos);
  CHECK(zero.to_string().find("b_std=0,") != std::string::npos);

  // Decimal and scientific forms; the value is the correctly rounded double.
  CHECK(KernelSpec::parse("rbf:lengthscale=2.5e-3").lengthscale == 2.5e-3);
  CHECK(KernelSpec::parse("rbf:lengthscale=1E+2").lengthscale == 100.0);
  CHECK(KernelSpec::parse("rbf:lengthscale=.25").lengthscale == 0.25);
  CHECK(KernelSpec::parse("rbf:lengthscale=0.1").lengthscale == 0.1);
  CHECK(KernelSpec::parse("ntk:w_std=1.4142135623730951").w_std == std::sqrt(2.0));
  CHECK(KernelSpec::parse("ntk:b_std=-0").b_std == std::optional<double>(0.0));
  // The width is kept for the ntk parameterization too (unused there) and printed.
  const KernelSpec w = KernelSpec::parse("ntk:width=7");
  CHECK(w.width == std::optional<int>(7));
  CHECK(w.to_string() ==
        "ntk:activation=erf,depth=1,w_std=0.7,b_std=0.7,parameterization=ntk,width=7,output=ntk");
  // Depth 0 (a single Dense layer) and the deepest accepted network.
  CHECK(KernelSpec::parse("ntk:depth=0").depth == 0);
  CHECK(KernelSpec::parse("ntk:depth=1000").depth == KernelSpec::kMaxDepth);
}

TEST_CASE("printing uses shortest round-trip numbers") {
  KernelSpec s;
  s.w_std = 0.1 + 0.2;  // 0.30000000000000004: needs all 17 digits
  s.b_std = 1e-300;
  CHECK(s.to_string() ==
        "ntk:activation=erf,depth=1,w_std=0.30000000000000004,b_std=1e-300,"
        "parameterization=ntk,output=ntk");
  CHECK(KernelSpec::parse(s.to_string()) == s);

  KernelSpec r = of_type(KernelType::kRbf);
  r.lengthscale = 1.0 / 3.0;
  r.variance = 1e300;
  CHECK(r.to_string() == "rbf:lengthscale=0.3333333333333333,variance=1e+300");
  CHECK(KernelSpec::parse(r.to_string()) == r);

  KernelSpec p = of_type(KernelType::kPolynomial);
  p.degree = 12;
  p.gamma = 0.0;
  p.coef0 = std::numeric_limits<double>::denorm_min();
  CHECK(p.to_string() == "polynomial:degree=12,gamma=0,coef0=5e-324");
  CHECK(KernelSpec::parse(p.to_string()) == p);
}

TEST_CASE("random valid specs survive parse(to_string()) in every field") {
  std::mt19937_64 rng(20240607);
  // Doubles over many binades, including exact integers and values needing 17 digits.
  const auto any_nonneg = [&]() -> double {
    switch (rng() % 4) {
      case 0:
        return static_cast<double>(rng() % 100);
      case 1:
        return std::uniform_real_distribution<double>(0.0, 10.0)(rng);
      case 2:
        return std::ldexp(std::uniform_real_distribution<double>(0.5, 1.0)(rng),
                          static_cast<int>(rng() % 1200) - 600);
      default:
        return std::nextafter(std::uniform_real_distribution<double>(0.0, 1.0)(rng), 2.0);
    }
  };
  const auto positive = [&]() {
    double v = 0.0;
    while (!(v > 0.0)) v = any_nonneg();
    return v;
  };
  for (int trial = 0; trial < 2000; ++trial) {
    KernelSpec s;
    s.type = static_cast<KernelType>(rng() % 4);
    switch (s.type) {
      case KernelType::kNtk:
        s.activation = static_cast<Activation>(rng() % 3);
        s.depth = static_cast<int>(rng() % (KernelSpec::kMaxDepth + 1));
        s.w_std = any_nonneg();
        s.b_std = rng() % 3 == 0 ? std::nullopt : std::optional<double>(any_nonneg());
        s.parameterization = static_cast<Parameterization>(rng() % 2);
        if (s.parameterization == Parameterization::kStandard || rng() % 4 == 0) {
          s.width = 1 + static_cast<int>(rng() % 100000);
        }
        s.output = static_cast<KernelOutput>(rng() % 2);
        break;
      case KernelType::kRbf:
        s.lengthscale = positive();
        s.variance = any_nonneg();
        break;
      case KernelType::kPolynomial:
        s.degree = 1 + static_cast<int>(rng() % 20);
        s.gamma = any_nonneg();
        s.coef0 = any_nonneg();
        break;
      case KernelType::kLinear:
        break;
    }
    const std::string text = s.to_string();
    CAPTURE(text);
    REQUIRE_NOTHROW(s.validate());
    const KernelSpec back = KernelSpec::parse(text);
    CHECK(back == s);
    CHECK(back.to_string() == text);
  }
}

TEST_CASE("the enum names") {
  CHECK(ntk::to_string(KernelType::kNtk) == "ntk");
  CHECK(ntk::to_string(KernelType::kRbf) == "rbf");
  CHECK(ntk::to_string(KernelType::kPolynomial) == "polynomial");
  CHECK(ntk::to_string(KernelType::kLinear) == "linear");
  CHECK(ntk::to_string(Activation::kRelu) == "relu");
  CHECK(ntk::to_string(Activation::kErf) == "erf");
  CHECK(ntk::to_string(Activation::kGelu) == "gelu");
  CHECK(ntk::to_string(Parameterization::kNtk) == "ntk");
  CHECK(ntk::to_string(Parameterization::kStandard) == "standard");
  CHECK(ntk::to_string(KernelOutput::kNtk) == "ntk");
  CHECK(ntk::to_string(KernelOutput::kNngp) == "nngp");
}

TEST_CASE("bad values are rejected naming the field and the value") {
  // Out of range.
  check_rejected("ntk:depth=-1", "depth", "-1");
  check_rejected("ntk:depth=1001", "depth", "1001");
  check_rejected("ntk:w_std=-0.5", "w_std", "-0.5");
  check_rejected("ntk:b_std=-0.1", "b_std", "-0.1");
  check_rejected("ntk:width=0,parameterization=standard", "width", "0");
  check_rejected("ntk:width=-3", "width", "-3");
  check_rejected("rbf:lengthscale=0", "lengthscale", "0");
  check_rejected("rbf:lengthscale=-2", "lengthscale", "-2");
  check_rejected("rbf:variance=-1", "variance", "-1");
  check_rejected("polynomial:degree=0", "degree", "0");
  check_rejected("polynomial:degree=-2", "degree", "-2");
  check_rejected("polynomial:gamma=-1", "gamma", "-1");
  check_rejected("polynomial:coef0=-0.25", "coef0", "-0.25");
  // Unknown names.
  check_rejected("ntk:activation=tanh", "activation", "tanh");
  check_rejected("ntk:activation=ReLU", "activation", "ReLU");
  check_rejected("ntk:parameterization=mup", "parameterization", "mup");
  check_rejected("ntk:output=gp", "output", "gp");
  // Malformed numbers: fractions or exponents in integers, words, signs, trailing junk,
  // empty values, out of range, non-finite.
  check_rejected("ntk:depth=2.5", "depth", "2.5");
  check_rejected("ntk:depth=1e2", "depth", "1e2");
  check_rejected("ntk:depth=three", "depth", "three");
  check_rejected("ntk:depth=", "depth", "''");
  check_rejected("ntk:depth=99999999999", "depth", "99999999999");
  check_rejected("ntk:depth=3x", "depth", "3x");
  check_rejected("ntk:width=512.0,parameterization=standard", "width", "512.0");
  check_rejected("ntk:w_std=abc", "w_std", "abc");
  check_rejected("ntk:w_std=+1", "w_std", "+1");
  check_rejected("ntk:w_std=1.5.2", "w_std", "1.5.2");
  check_rejected("ntk:w_std=1,5", "expected key=value", "'5'");
  check_rejected("ntk:w_std=inf", "w_std", "inf");
  check_rejected("ntk:w_std=nan", "w_std", "nan");
  check_rejected("ntk:w_std=1e999", "w_std", "1e999");
  check_rejected("ntk:b_std=None", "b_std", "None");
  check_rejected("ntk:b_std=", "b_std", "''");
  check_rejected("rbf:lengthscale=0x10", "lengthscale", "0x10");
  check_rejected("polynomial:degree=2.0", "degree", "2.0");
}

TEST_CASE("width is required by the standard parameterization") {
  const std::string msg = parse_error("ntk:parameterization=standard");
  CAPTURE(msg);
  CHECK(msg.starts_with("kernel spec: "));
  CHECK(msg.find("width") != std::string::npos);
  CHECK(msg.find("standard") != std::string::npos);
  CHECK(msg.find("none") != std::string::npos);
  CHECK(parse_error(
            "ntk:activation=erf,depth=2,w_std=1.5,b_std=none,parameterization=standard,output=nngp")
            .find("width") != std::string::npos);
  CHECK_NOTHROW(KernelSpec::parse("ntk:parameterization=standard,width=1"));
}

TEST_CASE("unknown, misplaced and repeated keys; unknown types; malformed text") {
  // Unknown key: named with its value.
  check_rejected("ntk:foo=1", "foo", "1");
  check_rejected("ntk:depth=3,lengthscal=0.5", "lengthscal", "0.5");
  check_rejected("rbf:Lengthscale=1", "Lengthscale", "1");
  // A key of another kernel type.
  check_rejected("rbf:depth=3", "depth", "3");
  check_rejected("ntk:lengthscale=0.5", "lengthscale", "0.5");
  check_rejected("polynomial:variance=2", "variance", "2");
  check_rejected("linear:gamma=1", "gamma", "1");
  // Each key at most once.
  check_rejected("ntk:depth=3,depth=4", "depth", "4");
  check_rejected("rbf:variance=1,lengthscale=2,variance=1", "variance", "1");
  // Unknown kernel types (names are case sensitive).
  check_rejected("sigmoid:depth=1", "kernel type", "sigmoid");
  check_rejected("NTK", "kernel type", "NTK");
  check_rejected("rbf2", "kernel type", "rbf2");
  check_rejected(":depth=1", "kernel type", "''");
  // Not key=value.
  check_rejected("ntk:depth", "key=value", "depth");
  check_rejected("ntk:", "key=value", "''");
  check_rejected("ntk:depth=3,", "key=value", "''");
  check_rejected("ntk:,depth=3", "key=value", "''");
  check_rejected("ntk:depth=3;w_std=1", "depth", "3;w_std=1");
  check_rejected("ntk:=3", "unknown key", "'3'");
  // Nothing at all.
  for (const char* blank : {"", "   ", "\t\n"}) {
    CAPTURE(blank);
    const std::string msg = parse_error(blank);
    CHECK(msg.starts_with("kernel spec: "));
    CHECK(msg.find("empty") != std::string::npos);
  }
}

TEST_CASE("validate() checks specs built in code; only the fields of the type") {
  const auto rejects = [](const KernelSpec& s, const std::string& field, const std::string& value) {
    const std::string msg = validate_error(s);
    CAPTURE(msg);
    CHECK(msg.starts_with("kernel spec: "));
    CHECK(msg.find(field) != std::string::npos);
    CHECK(msg.find(value) != std::string::npos);
    CHECK_THROWS_AS((void)ntk::make_kernel(s), std::invalid_argument);
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  KernelSpec s;
  s.depth = -7;
  rejects(s, "depth", "-7");
  s = {};
  s.w_std = nan;
  rejects(s, "w_std", "nan");
  s = {};
  s.w_std = -inf;
  rejects(s, "w_std", "inf");
  s = {};
  s.b_std = inf;
  rejects(s, "b_std", "inf");
  s = {};
  s.b_std = -1e-3;
  rejects(s, "b_std", "-0.001");
  s = {};
  s.parameterization = Parameterization::kStandard;
  rejects(s, "width", "standard");
  s.width = 0;
  rejects(s, "width", "0");
  s = {};
  s.activation = static_cast<Activation>(7);
  rejects(s, "activation", "7");
  s = {};
  s.parameterization = static_cast<Parameterization>(5);
  rejects(s, "parameterization", "5");
  s = {};
  s.output = static_cast<KernelOutput>(9);
  rejects(s, "output", "9");

  KernelSpec r = of_type(KernelType::kRbf);
  r.lengthscale = nan;
  rejects(r, "lengthscale", "nan");
  r.lengthscale = 1.0;
  r.variance = -0.5;
  rejects(r, "variance", "-0.5");
  KernelSpec p = of_type(KernelType::kPolynomial);
  p.gamma = inf;
  rejects(p, "gamma", "inf");
  p.gamma = 1.0;
  p.coef0 = nan;
  rejects(p, "coef0", "nan");
  KernelSpec bad_type;
  bad_type.type = static_cast<KernelType>(11);
  rejects(bad_type, "type", "11");

  // Fields of other kernel types are ignored: an rbf spec with a negative depth is valid
  // (the ntk fields are unused), and so is a linear spec with nonsense everywhere.
  KernelSpec other = of_type(KernelType::kRbf);
  other.depth = -1;
  other.w_std = nan;
  CHECK_NOTHROW(other.validate());
  CHECK_NOTHROW((void)ntk::make_kernel(other));
  KernelSpec lin = of_type(KernelType::kLinear);
  lin.lengthscale = -1.0;
  lin.degree = 0;
  CHECK_NOTHROW(lin.validate());
  // The round-trip guarantee is about the fields of the type: the ignored fields are not
  // printed, so parsing gives the defaults back.
  CHECK(KernelSpec::parse(other.to_string()) == of_type(KernelType::kRbf));
}
