// ntkd's flags and config file.
#include "daemon_config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <cctype>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <ios>
#include <iterator>
#include <sstream>

#include "ntk/stream/convert.h"
#include "ntk/stream/server.h"

namespace ntk::daemon {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::TextFormat;

// Collects the first syntax error of the text-format parser (lines 0-based there).
class FirstError : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (!message_) {
      line_ = line;
      column_ = column;
      message_ = message;
    }
  }
  void AddWarning(int, google::protobuf::io::ColumnNumber, const std::string&) override {}
  bool has_error() const { return message_.has_value(); }
  int line() const { return line_; }
  int column() const { return column_; }
  const std::string& message() const { return *message_; }

 private:
  int line_ = -1;
  int column_ = -1;
  std::optional<std::string> message_;
};

std::uint32_t parse_u32(const std::string& flag, const std::string& text) {
  std::uint32_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) {
    throw ConfigError(flag + ": expected a non-negative integer, got \"" + text + "\"");
  }
  return v;
}

// A position in the file, for the field `path` (a chain of (field, index) pairs from the
// root; index -1 for a singular field). Falls back to the deepest ancestor that was
// written in the file.
using Path = std::vector<std::pair<const FieldDescriptor*, int>>;

std::string position(const std::string& file, const TextFormat::ParseInfoTree* tree,
                     const Path& path) {
  TextFormat::ParseLocation best;
  for (const auto& [field, given] : path) {
    if (tree == nullptr) break;
    // A repeated field named without an index (noise_candidates: [0.1, -1]): its first
    // value (protobuf aborts the lookup of a repeated field without an index; an index
    // past its values gives no location).
    const int index = field->is_repeated() && given < 0 ? 0 : given;
    const TextFormat::ParseLocation here = tree->GetLocation(field, index);
    if (here.line < 0) break;
    best = here;
    tree = field->type() == FieldDescriptor::TYPE_MESSAGE ? tree->GetTreeForNested(field, index)
                                                          : nullptr;
  }
  if (best.line < 0) return file + ": ";
  return file + ":" + std::to_string(best.line + 1) + ":" + std::to_string(best.column + 1) + ": ";
}

const FieldDescriptor* field_of(const google::protobuf::Descriptor* d, const char* name) {
  const FieldDescriptor* f = d->FindFieldByName(name);
  if (f == nullptr) throw std::logic_error(std::string("no field ") + name);
  return f;
}

// The field inside a KeyConfig that a validation message is about, as far as it can be
// told: messages start with "series: <field>", "series: model.<field>", "model: <field>"
// or "kernel spec: ..." (core's validate() functions).
Path key_config_field(const std::string& message) {
  const auto* key = v1::KeyConfig::descriptor();
  const auto* series = v1::SeriesConfig::descriptor();
  const auto* model = v1::ModelConfig::descriptor();
  Path path{{field_of(key, "series"), -1}};
  std::string rest = message;
  for (const char* prefix : {"series: ", "model: "}) {
    if (rest.rfind(prefix, 0) == 0) rest = rest.substr(std::char_traits<char>::length(prefix));
  }
  if (message.rfind("kernel", 0) == 0 || rest.rfind("kernel", 0) == 0 ||
      rest.rfind("model.kernel", 0) == 0) {
    path.push_back({field_of(series, "model"), -1});
    path.push_back({field_of(model, "kernel"), -1});
    // The text form is the usual culprit; the structured fields fall back to `kernel`.
    path.push_back({field_of(v1::KernelConfig::descriptor(), "spec"), -1});
    return path;
  }
  std::size_t n = 0;
  while (n < rest.size() &&
         (std::isalnum(static_cast<unsigned char>(rest[n])) || rest[n] == '_' || rest[n] == '.')) {
    ++n;
  }
  std::string name = rest.substr(0, n);
  if (name.rfind("model.", 0) == 0) {
    path.push_back({field_of(series, "model"), -1});
    name = name.substr(6);
    if (const FieldDescriptor* f = model->FindFieldByName(name)) path.push_back({f, -1});
    return path;
  }
  if (const FieldDescriptor* f = series->FindFieldByName(name)) {
    path.push_back({f, -1});
  } else if (const FieldDescriptor* g = model->FindFieldByName(name)) {
    path.push_back({field_of(series, "model"), -1});
    path.push_back({g, -1});
  } else if (message.find("tick_value") != std::string::npos) {
    path = {{field_of(key, "tick_value"), -1}};
  }
  return path;
}

void check_address(const std::string& text, const std::string& where, const char* what) {
  try {
    parse_host_port(text);
  } catch (const std::invalid_argument& e) {
    throw ConfigError(where + what + ": " + e.what());
  }
}

// Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      ++i;
      continue;
    }
    int n = 0;
    std::uint32_t cp = 0, min = 0;
    if ((b & 0xE0) == 0xC0) {
      n = 1, cp = b & 0x1F, min = 0x80;
    } else if ((b & 0xF0) == 0xE0) {
      n = 2, cp = b & 0x0F, min = 0x800;
    } else if ((b & 0xF8) == 0xF0) {
      n = 3, cp = b & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (s.size() - i <= static_cast<std::size_t>(n)) return false;  // cut short
    for (int k = 1; k <= n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += static_cast<std::size_t>(n) + 1;
  }
  return true;
}

// Every string field of `m` (recursively) must be UTF-8: the config is stored in each
// snapshot's header, and a proto3 string that is not UTF-8 would make that header
// unreadable (the snapshot refused at the next start, its keys lost). Bytes from the
// command line (a --snapshot-dir in Latin-1, say) are the usual way in.
void check_utf8(const google::protobuf::Message& m, Path& path, const std::string& name,
                const std::function<std::string(const Path&)>& at) {
  const auto* r = m.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    const int count = f->is_repeated() ? r->FieldSize(m, f) : 1;
    for (int i = 0; i < count; ++i) {
      const int index = f->is_repeated() ? i : -1;
      const std::string here = (name.empty() ? "" : name + ".") + f->name() +
                               (f->is_repeated() ? "[" + std::to_string(i) + "]" : "");
      path.push_back({f, index});
      if (f->type() == FieldDescriptor::TYPE_STRING) {
        std::string scratch;
        const std::string& v = f->is_repeated() ? r->GetRepeatedStringReference(m, f, i, &scratch)
                                                : r->GetStringReference(m, f, &scratch);
        if (!valid_utf8(v)) {
          throw ConfigError(at(path) + here +
                            ": not valid UTF-8 (ntkd keeps its config in every snapshot, "
                            "where text must be UTF-8)");
        }
      } else if (f->type() == FieldDescriptor::TYPE_MESSAGE) {
        check_utf8(f->is_repeated() ? r->GetRepeatedMessage(m, f, i) : r->GetMessage(m, f), path,
                   here, at);
      }
      path.pop_back();
    }
  }
}

// check_config with file positions (tree may be null: positions are then omitted).
void check_config_at(const v1::ServerConfig& c, const std::string& file,
                     const TextFormat::ParseInfoTree* tree) {
  const auto* d = v1::ServerConfig::descriptor();
  auto at = [&](const Path& path) { return position(file, tree, path); };
  {
    Path path;
    check_utf8(c, path, "", at);
  }
  for (int i = 0; i < c.tcp_listen_size(); ++i) {
    check_address(c.tcp_listen(i), at({{field_of(d, "tcp_listen"), i}}), "tcp_listen");
  }
  for (int i = 0; i < c.udp_listen_size(); ++i) {
    check_address(c.udp_listen(i), at({{field_of(d, "udp_listen"), i}}), "udp_listen");
  }
  if (!c.metrics_listen().empty()) {
    check_address(c.metrics_listen(), at({{field_of(d, "metrics_listen"), -1}}), "metrics_listen");
  }
  if (c.has_threads() && c.threads() < 1) {
    throw ConfigError(at({{field_of(d, "threads"), -1}}) + "threads must be >= 1, got 0");
  }
  // Key configs, resolved as the server will resolve them for a new key.
  const FieldDescriptor* defaults = field_of(d, "defaults");
  try {
    stream::resolve_key_config(c.defaults());
  } catch (const std::invalid_argument& e) {
    Path p{{defaults, -1}};
    for (auto& step : key_config_field(e.what())) p.push_back(step);
    throw ConfigError(at(p) + "defaults: " + e.what());
  }
  const FieldDescriptor* overrides = field_of(d, "overrides");
  const FieldDescriptor* override_config = field_of(v1::PrefixOverride::descriptor(), "config");
  for (int i = 0; i < c.overrides_size(); ++i) {
    const std::string name = "overrides[" + std::to_string(i) + "]";
    if (c.overrides(i).key_prefix().empty()) {
      throw ConfigError(at({{overrides, i}}) + name + ": key_prefix must not be empty");
    }
    for (int j = 0; j < i; ++j) {
      if (c.overrides(j).key_prefix() == c.overrides(i).key_prefix()) {
        // Silently, the first would win and the second be ignored.
        throw ConfigError(at({{overrides, i}}) + name + ": key_prefix \"" +
                          c.overrides(i).key_prefix() + "\" repeats overrides[" +
                          std::to_string(j) + "]'s: give each prefix once");
      }
    }
    v1::KeyConfig merged = c.defaults();
    stream::merge_key_config(merged, c.overrides(i).config());
    try {
      stream::resolve_key_config(merged);
    } catch (const std::invalid_argument& e) {
      Path p{{overrides, i}, {override_config, -1}};
      for (auto& step : key_config_field(e.what())) p.push_back(step);
      throw ConfigError(at(p) + name + " (key_prefix \"" + c.overrides(i).key_prefix() +
                        "\"): " + e.what());
    }
  }
  // Everything else the server checks (limits, ...).
  try {
    stream::options_from_config(c).validate();
  } catch (const std::invalid_argument& e) {
    throw ConfigError(file + ": " + e.what());
  }
}

}  // namespace

HostPort parse_host_port(const std::string& text) {
  std::string host;
  std::string port;
  if (!text.empty() && text[0] == '[') {
    const auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      throw std::invalid_argument("expected HOST:PORT or [IPv6]:PORT, got \"" + text + "\"");
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string::npos || text.find(':') != colon) {
      throw std::invalid_argument("expected HOST:PORT or [IPv6]:PORT, got \"" + text + "\"");
    }
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (host.empty() || port.empty() || ec != std::errc() || end != port.data() + port.size() ||
      value > 65535) {
    throw std::invalid_argument("expected HOST:PORT with a port in [0, 65535], got \"" + text +
                                "\"");
  }
  return {host, static_cast<std::uint16_t>(value)};
}

std::string daemon_usage() {
  return R"(usage: ntkd [options]

The ntkstream daemon: one online NTK regressor per stream key, fed over TCP (length-
delimited ntk.v1.Request frames) and UDP, with snapshots, Prometheus metrics and
structured logs.

options:
  --config FILE            ServerConfig in protobuf text format (proto/ntk/v1/server.proto)
  --listen HOST:PORT       TCP address (repeatable; replaces the file's tcp_listen);
                           port 0 picks a free port. Default 127.0.0.1:7420
  --udp HOST:PORT          UDP address (repeatable; replaces the file's udp_listen)
  --metrics HOST:PORT      HTTP endpoint for /metrics, /livez, /readyz ('' to disable)
  --snapshot-dir DIR       where snapshots are written and restored from
  --snapshot-interval S    seconds between periodic snapshots (0: only at shutdown and
                           on request; default 300)
  --threads N              I/O and model threads (default: the number of CPU cores)
  --port-file FILE         write the bound addresses (tcp=, udp=, metrics= lines) once
                           listening, e.g. when port 0 was asked for; removed at exit
                           if it still holds them
  --log-level LEVEL        debug, info, warning or error (default info)
  --help                   this text
  --version                the version

signals: SIGTERM/SIGINT drain (stop accepting, answer what was read, final snapshot,
exit 0); SIGHUP re-reads --config and applies its key defaults and overrides to keys
created afterwards.
exit status: 0 after a clean shutdown, 1 on a runtime failure, 2 on a bad command line
or configuration (the message names the flag, or FILE:LINE:COLUMN).
)";
}

DaemonOptions parse_daemon_args(int argc, const char* const* argv) {
  DaemonOptions o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::optional<std::string> inline_value;
    if (arg.rfind("--", 0) == 0) {
      if (const auto eq = arg.find('='); eq != std::string::npos) {
        inline_value = arg.substr(eq + 1);
        arg = arg.substr(0, eq);
      }
    }
    auto value = [&]() -> std::string {
      if (inline_value) return *inline_value;
      if (i + 1 >= argc) throw ConfigError(arg + ": missing value");
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      o.help = true;
    } else if (arg == "--version") {
      o.version = true;
    } else if (arg == "--config") {
      o.config_path = value();
    } else if (arg == "--listen" || arg == "--udp" || arg == "--metrics") {
      std::string v = value();
      if (!(arg == "--metrics" && v.empty())) {
        try {
          parse_host_port(v);
        } catch (const std::invalid_argument& e) {
          throw ConfigError(arg + ": " + e.what());
        }
      }
      if (arg == "--listen") o.flags.listen.push_back(v);
      if (arg == "--udp") o.flags.udp.push_back(v);
      if (arg == "--metrics") o.flags.metrics = v;
    } else if (arg == "--snapshot-dir") {
      o.flags.snapshot_dir = value();
      if (o.flags.snapshot_dir->empty()) throw ConfigError("--snapshot-dir: empty path");
    } else if (arg == "--snapshot-interval") {
      o.flags.snapshot_interval_seconds = parse_u32(arg, value());
    } else if (arg == "--threads") {
      o.flags.threads = parse_u32(arg, value());
      if (*o.flags.threads < 1) throw ConfigError("--threads: must be >= 1, got 0");
    } else if (arg == "--port-file") {
      o.port_file = value();
      if (o.port_file->empty()) throw ConfigError("--port-file: empty path");
      // ntkd removes the file at exit and renames its new version over it: as
      // root, --port-file /dev/stdout or /dev/null would delete the device. (A symlink is
      // harmless: the link is what goes.)
      std::error_code ec;
      const std::filesystem::file_status st = std::filesystem::symlink_status(*o.port_file, ec);
      if (!ec && std::filesystem::exists(st) && !std::filesystem::is_regular_file(st) &&
          !std::filesystem::is_symlink(st)) {
        throw ConfigError("--port-file: " + *o.port_file +
                          " is not a regular file; ntkd replaces and removes this file, so it "
                          "needs a path of its own");
      }
      // Its directory must exist: found out only after the restore, the error exited 1.
      const std::filesystem::path dir = std::filesystem::path(*o.port_file).parent_path();
      if (!dir.empty() && !std::filesystem::is_directory(dir, ec)) {
        throw ConfigError("--port-file: the directory " + dir.string() + " does not exist");
      }
    } else if (arg == "--log-level") {
      try {
        o.log_level = parse_level(value());
      } catch (const std::invalid_argument& e) {
        throw ConfigError(arg + ": " + e.what());
      }
    } else {
      throw ConfigError(arg + ": unknown option (see --help)");
    }
  }
  return o;
}

v1::ServerConfig load_config_file(const std::string& path) {
  // A directory opens, then fails at the first read; a FIFO or a device may block. Only
  // regular files (or links to them) are config files.
  std::error_code ec;
  const std::filesystem::file_type type = std::filesystem::status(path, ec).type();
  if (!ec && type != std::filesystem::file_type::regular) {
    throw ConfigError(
        path + ": not a regular file (" +
        (type == std::filesystem::file_type::directory ? "a directory" : "a special file") +
        "), cannot be the config file");
  }
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open the config file: " + std::strerror(errno));
  std::string text;
  try {
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } catch (const std::ios_base::failure& e) {
    // libstdc++'s filebuf throws on a read error whatever the stream's exception mask.
    throw ConfigError(path + ": cannot read the config file: " + e.what());
  }
  if (in.bad()) throw ConfigError(path + ": cannot read the config file");
  // Editors on Windows start UTF-8 files with a byte order mark; protobuf's text format
  // would refuse it as a "non ascii codepoint". (Editors count no column for it either.)
  if (text.starts_with("\xEF\xBB\xBF")) text.erase(0, 3);

  v1::ServerConfig config;
  TextFormat::ParseInfoTree tree;
  FirstError errors;
  TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  parser.WriteLocationsTo(&tree);
  if (!parser.ParseFromString(text, &config)) {
    if (errors.has_error()) {
      throw ConfigError(path + ":" + std::to_string(errors.line() + 1) + ":" +
                        std::to_string(errors.column() + 1) + ": " + errors.message());
    }
    throw ConfigError(path + ": not a valid ntk.v1.ServerConfig in text format");
  }
  check_config_at(config, path, &tree);
  return config;
}

void check_config(const v1::ServerConfig& config, const std::string& prefix) {
  check_config_at(config, prefix, nullptr);  // without a parse tree: "prefix: reason"
}

v1::ServerConfig resolve_config(const DaemonOptions& options) {
  v1::ServerConfig config;
  if (options.config_path) config = load_config_file(*options.config_path);
  const FlagOverrides& f = options.flags;
  if (!f.listen.empty()) {
    config.clear_tcp_listen();
    for (const auto& a : f.listen) config.add_tcp_listen(a);
  }
  if (!f.udp.empty()) {
    config.clear_udp_listen();
    for (const auto& a : f.udp) config.add_udp_listen(a);
  }
  if (f.metrics) config.set_metrics_listen(*f.metrics);
  if (f.snapshot_dir) config.set_snapshot_dir(*f.snapshot_dir);
  if (f.snapshot_interval_seconds)
    config.set_snapshot_interval_seconds(*f.snapshot_interval_seconds);
  if (f.threads) config.set_threads(*f.threads);
  // Flag values were checked when parsed; what remains (limits, key configs) is the
  // file's, already checked with positions. One last pass over the combination.
  check_config(config, options.config_path ? *options.config_path : std::string("flags"));
  return config;
}

}  // namespace ntk::daemon
