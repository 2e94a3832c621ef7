// ntk-replay --connect against a real ntkd gives the predictions of --offline, byte for
// byte, on shipped real series; --record captures the session and replaying the
// recording gives them again.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "daemon_harness.h"
#include "temp_dir.h"

namespace {

using ntk::test::Process;
using ntk::test::TempDir;

int replay(TempDir& dir, const std::string& name, std::vector<std::string> args) {
  args.insert(args.begin(), NTK_REPLAY_BIN);
  Process p(args, dir / (name + ".log"));
  return p.wait_exit(std::chrono::seconds(120));
}

std::string field_columns(const std::string& csv, int first, int last) {
  // Columns first..last (0-based) of every line: the recording's rows and stream names
  // differ from the CSV's, the numbers must not.
  std::string out;
  std::size_t pos = 0;
  while (pos < csv.size()) {
    const std::size_t end = csv.find('\n', pos);
    const std::string line = csv.substr(pos, end - pos);
    int col = 0;
    std::size_t start = 0;
    for (std::size_t i = 0; i <= line.size(); ++i) {
      if (i == line.size() || line[i] == ',') {
        if (col >= first && col <= last) out += line.substr(start, i - start) + ',';
        ++col;
        start = i + 1;
      }
    }
    out += '\n';
    pos = end == std::string::npos ? csv.size() : end + 1;
  }
  return out;
}

}  // namespace

TEST_CASE("replay --connect: bit-identical to --offline, recordings replay the same") {
  TempDir dir;
  Process ntkd({NTK_NTKD_BIN, "--listen", "127.0.0.1:0", "--port-file", (dir / "ports").string()},
               dir / "ntkd.log");
  const auto ports = ntk::test::wait_for_ports(ntkd, dir / "ports");
  const std::string address = "127.0.0.1:" + std::to_string(ports.port("tcp"));
  const std::string data = NTK_SOURCE_DIR "/data";

  struct Case {
    std::string name, input;
    std::vector<std::string> flags;
  };
  const std::vector<Case> cases = {
      {"ec2",
       data + "/nab/ec2_request_latency_system_failure.csv",
       {"--time-column", "timestamp", "--value-column", "value", "--budget", "32", "--lags", "6"}},
      {"stocks",
       data + "/market/eustockmarkets.csv",
       {"--value-column", "DAX,FTSE", "--kernel", "rbf:lengthscale=2", "--target", "level",
        "--horizon", "2", "--exclude-anomalies"}},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    std::vector<std::string> offline = {"--offline",      "--input",
                                        c.input,          "--no-progress",
                                        "--predictions",  (dir / (c.name + "-off.csv")).string(),
                                        "--summary-json", (dir / (c.name + "-off.json")).string()};
    offline.insert(offline.end(), c.flags.begin(), c.flags.end());
    REQUIRE(replay(dir, c.name + "-off", offline) == 0);

    std::vector<std::string> online = {"--connect",
                                       address,
                                       "--input",
                                       c.input,
                                       "--no-progress",
                                       "--predictions",
                                       (dir / (c.name + "-on.csv")).string(),
                                       "--summary-json",
                                       (dir / (c.name + "-on.json")).string(),
                                       "--record",
                                       (dir / (c.name + ".pb")).string()};
    online.insert(online.end(), c.flags.begin(), c.flags.end());
    REQUIRE(replay(dir, c.name + "-on", online) == 0);

    const std::string off = ntk::test::slurp(dir / (c.name + "-off.csv"));
    const std::string on = ntk::test::slurp(dir / (c.name + "-on.csv"));
    CHECK(off.size() > 10000);
    CHECK(on == off);  // every prediction, to the last bit of its shortest decimal form

    // The summaries agree too (scores and counters come from the daemon's GetStats).
    auto strip_timing = [](std::string json) {
      for (const char* key : {"\"updates_per_second\"", "\"seconds\""}) {
        const auto at = json.find(key);
        if (at != std::string::npos) json.erase(at, json.find_first_of(",}", at) - at);
      }
      return json;
    };
    CHECK(strip_timing(ntk::test::slurp(dir / (c.name + "-on.json"))) ==
          strip_timing(ntk::test::slurp(dir / (c.name + "-off.json"))));

    // The recording, replayed: the same numbers (time,truth,mean,sd,z,anomaly) per line.
    REQUIRE(replay(dir, c.name + "-rec",
                   {"--connect", address, "--input", (dir / (c.name + ".pb")).string(),
                    "--no-progress", "--predictions", (dir / (c.name + "-rec.csv")).string()}) ==
            0);
    const std::string rec = ntk::test::slurp(dir / (c.name + "-rec.csv"));
    CHECK(field_columns(rec, 1, 5) == field_columns(off, 1, 5));
  }

  // Mistakes are reported with the usual exit codes.
  CHECK(replay(dir, "both",
               {"--offline", "--connect", address, "--input", cases[0].input, "--value-column",
                "value"}) == 2);
  CHECK(replay(dir, "speed",
               {"--connect", address, "--input", cases[0].input, "--value-column", "value",
                "--speed", "-1"}) == 2);
  CHECK(replay(dir, "record",
               {"--offline", "--input", cases[0].input, "--value-column", "value", "--record",
                (dir / "x.pb").string()}) == 2);
  CHECK(replay(dir, "address",
               {"--connect", "nowhere", "--input", cases[0].input, "--value-column", "value"}) ==
        2);
  ntkd.signal(SIGTERM);
  CHECK(ntkd.wait_exit() == 0);
  // Nobody listening: a runtime failure (1) with the reason.
  CHECK(replay(dir, "refused",
               {"--connect", address, "--input", cases[0].input, "--value-column", "value"}) == 1);
  CHECK(ntk::test::slurp(dir / "refused.log").find("ntk-replay: ") == 0);
}
