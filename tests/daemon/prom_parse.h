// A strict reader of the Prometheus text exposition format 0.0.4, written from the
// format's description (https://prometheus.io/docs/instrumenting/exposition_formats/),
// independently of the daemon's writer: tests parse what ntkd serves with it.
//
// Checked: line grammar (metric and label names, quoted label values with \\ \" \n
// escapes, float values incl. +Inf/-Inf/NaN, optional integer timestamp), one TYPE per
// family and before its samples, HELP/TYPE names valid, every sample belonging to a
// declared family (histogram/summary suffixes _bucket/_sum/_count), no duplicate series,
// histogram buckets cumulative with le="+Inf" equal to _count. Throws std::runtime_error
// with the line number on the first violation.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ntk::test {

struct PromExposition {
  std::map<std::string, std::string> types;  // family -> type
  std::map<std::string, std::string> help;   // family -> help text
  // "name" or "name{a=\"x\",b=\"y\"}" (labels sorted by name) -> value
  std::map<std::string, double> samples;

  double at(const std::string& series) const {
    const auto it = samples.find(series);
    if (it == samples.end()) throw std::runtime_error("no series " + series);
    return it->second;
  }
  bool has(const std::string& series) const { return samples.count(series) > 0; }
};

// [a-zA-Z_:][a-zA-Z0-9_:]* for metric names (colon allowed), without ':' for labels.
inline bool valid_name(const std::string& name, bool colon) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool letter =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
    if (!letter && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

inline PromExposition parse_prometheus(const std::string& text) {
  PromExposition out;
  std::istringstream in(text);
  std::string line;
  int lineno = 0;
  std::map<std::string, bool> family_has_samples;
  auto fail = [&](const std::string& why) {
    throw std::runtime_error("exposition line " + std::to_string(lineno) + ": " + why + ": " +
                             line);
  };
  auto family_of = [&](const std::string& name) -> std::string {
    if (out.types.count(name)) return name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string s = suffix;
      if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
        const std::string base = name.substr(0, name.size() - s.size());
        const auto it = out.types.find(base);
        if (it != out.types.end() && (it->second == "histogram" || it->second == "summary")) {
          return base;
        }
      }
    }
    return "";
  };
  if (!text.empty() && text.back() != '\n') throw std::runtime_error("no final newline");
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream ls(line);
      std::string hash, kind, name;
      ls >> hash >> kind >> name;
      if (kind != "HELP" && kind != "TYPE") continue;  // a plain comment
      if (!valid_name(name, true)) fail("bad metric name in " + kind);
      std::string rest;
      std::getline(ls, rest);
      if (!rest.empty() && rest[0] == ' ') rest.erase(0, 1);
      if (kind == "TYPE") {
        if (out.types.count(name)) fail("second TYPE for " + name);
        if (family_has_samples.count(name)) fail("TYPE after samples of " + name);
        if (rest != "counter" && rest != "gauge" && rest != "histogram" && rest != "summary" &&
            rest != "untyped") {
          fail("unknown type " + rest);
        }
        out.types[name] = rest;
      } else {
        if (out.help.count(name)) fail("second HELP for " + name);
        out.help[name] = rest;
      }
      continue;
    }
    // name [{labels}] value [timestamp]
    std::size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    const std::string name = line.substr(0, i);
    if (!valid_name(name, true)) fail("bad metric name");
    std::map<std::string, std::string> labels;
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        std::size_t j = i;
        while (j < line.size() && line[j] != '=') ++j;
        const std::string lname = line.substr(i, j - i);
        if (!valid_name(lname, false)) fail("bad label name '" + lname + "'");
        if (j + 1 >= line.size() || line[j + 1] != '"') fail("label value not quoted");
        std::string value;
        std::size_t k = j + 2;
        for (; k < line.size() && line[k] != '"'; ++k) {
          if (line[k] == '\\') {
            if (k + 1 >= line.size()) fail("dangling escape");
            const char e = line[++k];
            if (e == 'n') {
              value += '\n';
            } else if (e == '\\' || e == '"') {
              value += e;
            } else {
              fail("bad escape");
            }
          } else {
            value += line[k];
          }
        }
        if (k >= line.size()) fail("unterminated label value");
        if (labels.count(lname)) fail("duplicate label " + lname);
        labels[lname] = value;
        i = k + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size()) fail("unterminated label set");
      ++i;
    }
    if (i >= line.size() || line[i] != ' ') fail("no value");
    std::istringstream vs(line.substr(i + 1));
    std::string value_text, timestamp;
    vs >> value_text >> timestamp;
    double value = 0;
    if (value_text == "+Inf") {
      value = INFINITY;
    } else if (value_text == "-Inf") {
      value = -INFINITY;
    } else if (value_text == "NaN") {
      value = NAN;
    } else {
      char* end = nullptr;
      value = std::strtod(value_text.c_str(), &end);
      if (value_text.empty() || *end != '\0') fail("bad value '" + value_text + "'");
    }
    if (!timestamp.empty() && timestamp.find_first_not_of("-0123456789") != std::string::npos) {
      fail("bad timestamp");
    }
    const std::string family = family_of(name);
    if (family.empty()) fail("sample without a TYPE-declared family");
    family_has_samples[family] = true;
    std::string key = name;
    if (!labels.empty()) {
      key += '{';
      bool first = true;
      for (const auto& [k, v] : labels) {
        if (!first) key += ',';
        first = false;
        key += k + "=\"" + v + "\"";
      }
      key += '}';
    }
    if (out.samples.count(key)) fail("duplicate series " + key);
    out.samples[key] = value;
  }
  // Histograms: cumulative buckets ending in +Inf == _count (series without other labels).
  for (const auto& [family, type] : out.types) {
    if (type != "histogram") continue;
    std::vector<std::pair<double, double>> buckets;  // (le, count)
    for (const auto& [key, value] : out.samples) {
      if (key.rfind(family + "_bucket{", 0) != 0) continue;
      const auto at = key.find("le=\"");
      if (at == std::string::npos) throw std::runtime_error(key + ": bucket without le");
      const std::string le = key.substr(at + 4, key.find('"', at + 4) - (at + 4));
      buckets.emplace_back(le == "+Inf" ? INFINITY : std::strtod(le.c_str(), nullptr), value);
    }
    std::sort(buckets.begin(), buckets.end());
    if (buckets.empty() || !std::isinf(buckets.back().first)) {
      throw std::runtime_error(family + ": no le=\"+Inf\" bucket");
    }
    for (std::size_t b = 1; b < buckets.size(); ++b) {
      if (buckets[b].second < buckets[b - 1].second) {
        throw std::runtime_error(family + ": buckets not cumulative");
      }
    }
    if (buckets.back().second != out.at(family + "_count")) {
      throw std::runtime_error(family + ": +Inf bucket differs from _count");
    }
  }
  return out;
}

}  // namespace ntk::test
