// ntk-client: talk to ntkd from the shell with the ntk.v1 protobuf protocol.
//
//   ntk-client [--connect HOST:PORT] send --key KEY [--start-seq N] [FILE]
//       one value per line ("value" or "time,value" with time in Unix seconds; empty or
//       NA: missing) from FILE or stdin, as SensorReadings; prints one CSV line per answer:
//       seq,key,status,value,mean,sd,z,anomaly
//   ntk-client [--connect HOST:PORT] stats [--key KEY | --prefix P]   KeyStats, text format
//   ntk-client [--connect HOST:PORT] snapshot                        writes a snapshot now
//   ntk-client [--connect HOST:PORT] configure --key KEY|--prefix P 'TEXT'
//       TEXT: an ntk.v1.KeyConfig in text format, e.g. 'series { lags: 4 }'
//   ntk-client [--connect HOST:PORT] drop --key KEY
//
// Exit status: 0 success; 1 an Error answer or a connection failure; 2 bad usage.
// Numbers are printed in the shortest form that reads back to the same double.
#include <google/protobuf/text_format.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "ntk/stream/client.h"

namespace {

namespace v1 = ntk::v1;

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

struct Usage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* kUsage = R"(usage: ntk-client [--connect HOST:PORT] COMMAND [options]

commands:
  send --key KEY [--start-seq N] [FILE]   values from FILE or stdin, one per line: "value"
                                          or "time,value" with the time in Unix seconds;
                                          an empty value or NA: missing; no header line,
                                          '#' starts a comment line. Prints
                                          seq,key,status,value,mean,sd,z,anomaly
  stats [--key KEY | --prefix P]          statistics (all keys by default), text format
  snapshot                                write a snapshot now; prints its path
  configure (--key KEY | --prefix P) TEXT configure with an ntk.v1.KeyConfig in text
                                          format, e.g. 'series { lags: 4 }'
  drop --key KEY                          forget a key
options:
  --connect HOST:PORT                     the daemon (default 127.0.0.1:7420)
  --help                                  this text
Exit status: 0 on success; 1 when the daemon answers an Error (after printing every
answer) or cannot be reached; 2 for a bad command line or input line (the values
before a bad line are sent and answered first).
)";

std::string num(double v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

std::string error_text(const v1::Error& e) {
  return std::string(v1::ErrorCode_Name(e.code())) + ": " + e.message();
}

// An Error answer ends the command with status 1 (after the message).
int report_error(const v1::Response& r) {
  std::cerr << "ntk-client: " << (r.key().empty() ? "" : r.key() + ": ") << error_text(r.error())
            << "\n";
  return kExitError;
}

std::optional<double> parse_number(std::string_view text) {
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return v;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) s.pop_back();
  std::size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  return s.substr(i);
}

const char* status_name(v1::Prediction::Status s) {
  switch (s) {
    case v1::Prediction::STATUS_SCORED:
      return "scored";
    case v1::Prediction::STATUS_WARMING_UP:
      return "warming_up";
    case v1::Prediction::STATUS_MISSING:
      return "missing";
    case v1::Prediction::STATUS_UNLABELLED:
      return "unlabelled";
    default:
      return "unknown";
  }
}

// The "send" command: values in, one line per answer out, pipelined in windows.
int send_values(ntk::stream::Client& client, const std::string& key, std::uint64_t seq,
                std::istream& in) {
  std::cout << "seq,key,status,value,mean,sd,z,anomaly\n";
  int status = 0;
  std::vector<v1::Request> window;
  auto flush = [&] {
    for (const v1::Response& r : client.call_many(window)) {
      if (r.has_error()) {
        std::cout << r.seq() << ',' << r.key() << ",error:" << v1::ErrorCode_Name(r.error().code())
                  << ",,,,,\n";
        report_error(r);
        status = kExitError;
        continue;
      }
      const v1::Prediction& p = r.prediction();
      std::cout << r.seq() << ',' << r.key() << ',' << status_name(p.status()) << ','
                << (p.has_value() ? num(p.value()) : "") << ','
                << (p.has_mean() ? num(p.mean()) : "") << ','
                << (p.has_variance() ? num(std::sqrt(p.variance())) : "") << ','
                << (p.has_z() ? num(p.z()) : "") << ',' << (p.anomaly() ? 1 : 0) << '\n';
    }
    window.clear();
    std::cout.flush();
  };
  // The window is sent when it is full, and also whenever no more input is ready (a live
  // source, e.g. a pipe from a sensor): the answers do not wait for values that have not
  // come yet. A file or a fast pipe still goes in windows of 512.
  const auto input_ready = [&] { return in.rdbuf()->in_avail() > 0; };
  std::string line;
  std::uint64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    line = trim(line);
    if (!line.empty() && line[0] == '#') {
      if (!input_ready()) flush();
      continue;
    }
    // A bad line ends the command; what came before it is sent and answered first.
    const auto bad_line = [&](const std::string& what) {
      flush();
      throw Usage("line " + std::to_string(line_no) + ": " + what);
    };
    std::string time_text, value_text = line;
    if (const auto comma = line.find(','); comma != std::string::npos) {
      time_text = trim(line.substr(0, comma));
      value_text = trim(line.substr(comma + 1));
    }
    v1::Request r;
    r.set_seq(seq++);
    auto* s = r.mutable_sensor_reading();
    s->set_sensor_id(key);
    if (!time_text.empty()) {
      const auto t = parse_number(time_text);
      if (!t || !(*t >= 0) || *t > 1.8e10) {
        bad_line("bad time '" + time_text + "' (Unix seconds expected)");
      }
      s->set_time_unix_nano(static_cast<std::uint64_t>(std::llround(*t * 1e9)));
    }
    if (!value_text.empty() && value_text != "NA" && value_text != "NaN" && value_text != "nan") {
      const auto v = parse_number(value_text);
      if (!v) bad_line("bad value '" + value_text + "'");
      s->set_value(*v);
    }
    window.push_back(std::move(r));
    if (window.size() == 512 || !input_ready()) flush();
  }
  flush();
  return status;
}

int run(int argc, char** argv) {
  std::string host = "127.0.0.1";
  std::uint16_t port = 7420;
  std::vector<std::string> args(argv + 1, argv + argc);
  std::size_t i = 0;
  auto value = [&](const std::string& flag) {
    if (i + 1 >= args.size()) throw Usage(flag + ": missing value");
    return args[++i];
  };
  std::string command;
  std::optional<std::string> key, prefix, file, text;
  std::uint64_t start_seq = 0;
  for (; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 0;
    } else if (a == "--connect") {
      const std::string hp = value(a);
      const auto colon = hp.rfind(':');
      unsigned p = 0;
      const std::string ps = colon == std::string::npos ? "" : hp.substr(colon + 1);
      const auto [end, ec] = std::from_chars(ps.data(), ps.data() + ps.size(), p);
      if (colon == std::string::npos || colon == 0 || ec != std::errc() ||
          end != ps.data() + ps.size() || p == 0 || p > 65535) {
        throw Usage("--connect: expected HOST:PORT, got '" + hp + "'");
      }
      host = hp.substr(0, colon);
      if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
      }
      port = static_cast<std::uint16_t>(p);
    } else if (a == "--key") {
      key = value(a);
    } else if (a == "--prefix") {
      prefix = value(a);
    } else if (a == "--start-seq") {
      const std::string s = value(a);
      const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), start_seq);
      if (ec != std::errc() || end != s.data() + s.size() || s.empty()) {
        throw Usage("--start-seq: expected a non-negative integer, got '" + s + "'");
      }
    } else if (!a.empty() && a[0] == '-' && a != "-") {
      throw Usage("unknown option '" + a + "' (see --help)");
    } else if (command.empty()) {
      command = a;
    } else if (command == "send" && !file) {
      file = a;
    } else if (command == "configure" && !text) {
      text = a;
    } else {
      throw Usage("unexpected argument '" + a + "'");
    }
  }
  if (command.empty()) throw Usage("a command is required (see --help)");

  // The command is checked, and its request built, before connecting: a usage error is
  // one (status 2) whether or not the daemon is up.
  v1::Request r;
  std::ifstream file_in;
  if (command == "send") {
    if (!key) throw Usage("send: --key is required");
    if (file && *file != "-") {
      file_in.open(*file);
      if (!file_in) throw Usage(*file + ": cannot open");
    }
  } else if (command == "stats") {
    if (key && prefix) throw Usage("stats: --key and --prefix exclude each other");
    auto* s = r.mutable_control()->mutable_stats();
    if (key) {
      s->set_key(*key);
    } else {
      s->set_key_prefix(prefix.value_or(""));
    }
  } else if (command == "snapshot") {
    r.mutable_control()->mutable_snapshot();
  } else if (command == "configure") {
    if (!text) throw Usage("configure: the KeyConfig text is required");
    if (key.has_value() == prefix.has_value()) {
      throw Usage("configure: exactly one of --key and --prefix");
    }
    auto* c = r.mutable_control()->mutable_configure();
    if (key) c->set_key(*key);
    if (prefix) c->set_key_prefix(*prefix);
    if (!google::protobuf::TextFormat::ParseFromString(*text, c->mutable_config())) {
      throw Usage("configure: not an ntk.v1.KeyConfig in text format: '" + *text + "'");
    }
  } else if (command == "drop") {
    if (!key) throw Usage("drop: --key is required");
    r.mutable_control()->mutable_drop_key()->set_key(*key);
  } else {
    throw Usage("unknown command '" + command + "' (see --help)");
  }

  // Every command is a few requests on one connection.
  ntk::stream::Client client(host, port, {.timeout = std::chrono::seconds(60)});
  if (command == "send") {
    return send_values(client, *key, start_seq, file_in.is_open() ? file_in : std::cin);
  }
  const v1::Response resp = client.call(r);
  if (resp.has_error()) return report_error(resp);
  if (command == "stats" && resp.has_stats()) {
    std::string out;
    google::protobuf::TextFormat::PrintToString(resp.stats(), &out);
    std::cout << out;
  } else if (command != "stats" && resp.has_ack()) {
    if (command == "snapshot") {
      std::cout << resp.ack().snapshot_path() << "\n";
      std::cerr << "ntk-client: snapshot of " << resp.ack().keys_affected() << " keys written\n";
    } else {
      std::cout << "ok: " << resp.ack().keys_affected() << " keys affected\n";
    }
  } else {
    // Not what the command asks for (a server of another version, or not ntkd): said,
    // rather than an empty output and status 0.
    std::string answer;
    google::protobuf::TextFormat::PrintToString(resp, &answer);
    std::cerr << "ntk-client: unexpected answer to " << command << ": {" << answer << "}\n";
    return kExitError;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // std::cin on its own buffer, whose in_avail() tells how much input is ready (the
  // stdio-synchronized one always says 0). Only iostreams are used.
  std::ios::sync_with_stdio(false);
  try {
    return run(argc, argv);
  } catch (const Usage& e) {
    std::cerr << "ntk-client: " << e.what() << "\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "ntk-client: " << e.what() << "\n";
    return kExitError;
  }
}
