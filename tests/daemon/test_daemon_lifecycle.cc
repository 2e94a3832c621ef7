// ntkd run as users run it: a child process on loopback port 0, fed over TCP.
//
// The oracle for every prediction is core/series run in-process on the same values with
// the configuration the daemon reports for the key: predictions must be bit-identical,
// before and after a restart from a snapshot (clean SIGTERM, kill -9, a corrupted newest
// snapshot), which is what "continues from the snapshot" means.
#include <doctest/doctest.h>
#include <google/protobuf/stubs/common.h>  // GOOGLE_PROTOBUF_VERSION
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "../support/control_requests.h"
#include "daemon_harness.h"
#include "ntk/core/build_info.h"
#include "ntk/core/series.h"
#include "ntk/stream/convert.h"
#include "ntk/stream/server.h"
#include "prom_parse.h"
#include "temp_dir.h"

namespace {

namespace v1 = ntk::v1;
using ntk::test::Client;
using ntk::test::Process;
using ntk::test::TempDir;

constexpr std::uint64_t kT0 = 1700000000000000000ull;
constexpr std::uint64_t kStep = 1000000000ull;  // 1 s

// A deterministic series with structure to learn: two tones and a little noise.
std::vector<double> make_series(int n) {
  std::mt19937_64 rng(12345);
  std::normal_distribution<double> noise(0.0, 0.05);
  std::vector<double> y(static_cast<std::size_t>(n));
  for (int t = 0; t < n; ++t) {
    y[static_cast<std::size_t>(t)] = std::sin(0.21 * t) + 0.5 * std::sin(0.047 * t) + noise(rng);
  }
  return y;
}

struct Daemon {
  TempDir& dir;
  std::vector<std::string> extra_args;
  std::vector<std::string> env;
  std::unique_ptr<Process> process;
  ntk::test::Ports ports;

  void start(const std::string& log_name) {
    std::vector<std::string> argv = {NTK_NTKD_BIN,
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--metrics",
                                     "127.0.0.1:0",
                                     "--snapshot-dir",
                                     (dir / "snapshots").string(),
                                     "--snapshot-interval",
                                     "0",
                                     "--threads",
                                     "2",
                                     "--port-file",
                                     (dir / "ports").string()};
    argv.insert(argv.end(), extra_args.begin(), extra_args.end());
    std::filesystem::remove(dir / "ports");  // a killed daemon's file would be stale
    process = std::make_unique<Process>(argv, dir / log_name, env);
    ports = ntk::test::wait_for_ports(*process, dir / "ports");
  }
  std::uint16_t tcp() const { return ports.port("tcp"); }
  std::uint16_t metrics() const { return ports.port("metrics"); }
  int stop() {
    process->signal(SIGTERM);
    return process->wait_exit();
  }
};

// The reference: the key's resolved config, the same values, in-process.
class Reference {
 public:
  explicit Reference(const v1::KeyConfig& resolved)
      : predictor_(ntk::stream::resolve_key_config(resolved).series) {}
  ntk::Outcome observe(std::uint64_t seq, double value) {
    return predictor_.observe(seq, kT0 + seq * kStep, value);
  }

 private:
  ntk::SeriesPredictor predictor_;
};

v1::KeyConfig resolved_config(Client& c, const std::string& key) {
  v1::Request r;
  r.mutable_control()->mutable_stats()->set_key(key);
  const v1::Response resp = c.call(r);
  REQUIRE(resp.has_stats());
  REQUIRE(resp.stats().keys_size() == 1);
  return resp.stats().keys(0).config();
}

// Creates `key` in the daemon with the series' first value, and returns the in-process
// reference for it: built from the key's resolved config, having seen that value too.
Reference open_key(Client& c, const std::string& key, const std::vector<double>& values) {
  c.send(ntk::test::sensor_reading(key, 0, kT0, values[0]));
  REQUIRE(c.receive().has_prediction());
  Reference ref(resolved_config(c, key));
  ref.observe(0, values[0]);
  return ref;
}

// Sends values[from, to) as key `key` (pipelined) and checks every answer against ref.
void feed_and_check(Client& c, Reference& ref, const std::string& key,
                    const std::vector<double>& values, std::uint64_t from, std::uint64_t to) {
  std::vector<v1::Request> batch;
  for (std::uint64_t i = from; i < to; ++i) {
    batch.push_back(ntk::test::sensor_reading(key, i, kT0 + i * kStep, values[i]));
  }
  c.send_all(batch);
  int scored = 0;
  for (std::uint64_t i = from; i < to; ++i) {
    const v1::Response resp = c.receive();
    INFO("seq ", i);
    REQUIRE(resp.seq() == i);
    REQUIRE(resp.key() == key);
    REQUIRE(resp.has_prediction());
    const v1::Prediction& p = resp.prediction();
    const ntk::Outcome o = ref.observe(i, values[i]);
    REQUIRE(p.status() == (o.status == ntk::OutcomeStatus::kScored
                               ? v1::Prediction::STATUS_SCORED
                               : v1::Prediction::STATUS_WARMING_UP));
    REQUIRE(p.has_mean() == o.has_prediction);
    if (o.has_prediction) {
      // Bit-identical, not close: the same arithmetic on the same state.
      REQUIRE(p.mean() == o.mean);
      REQUIRE(p.variance() == o.sd * o.sd);
      REQUIRE(std::sqrt(p.variance()) == o.sd);
    }
    if (o.status == ntk::OutcomeStatus::kScored) {
      REQUIRE(p.z() == o.z);
      ++scored;
    }
    REQUIRE(p.anomaly() == o.anomaly);
    REQUIRE(p.learned() == o.learned);
  }
  if (to - from > 50) CHECK(scored > 0);
}

std::vector<std::filesystem::path> snapshot_files(const TempDir& dir) {
  std::vector<std::filesystem::path> out;
  for (const auto& e : std::filesystem::directory_iterator(dir / "snapshots")) {
    if (e.path().extension() == ".ntks") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

v1::Request snapshot_request() {
  v1::Request r;
  r.mutable_control()->mutable_snapshot();
  return r;
}

// sd_notify: a datagram socket standing in for systemd's.
struct NotifySocket {
  std::string path;
  int fd = -1;
  explicit NotifySocket(const TempDir& dir)
      : path((dir / "notify.sock").string()), fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  }
  ~NotifySocket() { ::close(fd); }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;
  // The next datagram (30 s at most).
  std::string next() const {
    pollfd p{fd, POLLIN, 0};
    REQUIRE(::poll(&p, 1, 30000) == 1);
    char buf[512];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    REQUIRE(n > 0);
    return std::string(buf, static_cast<std::size_t>(n));
  }
};

}  // namespace

TEST_CASE("lifecycle: port 0, feed, SIGTERM, restart from the snapshot, identical predictions") {
  TempDir dir;
  const std::vector<double> y = make_series(400);

  NotifySocket notify(dir);
  const auto next_notification = [&] { return notify.next(); };

  Daemon d{dir, {}, {"NOTIFY_SOCKET=" + notify.path}, nullptr, {}};
  d.start("first.log");
  CHECK(next_notification() == "READY=1\nSTATUS=listening");
  CHECK(d.tcp() != 0);
  CHECK(ntk::test::http_get(d.metrics(), "/readyz") == std::make_pair(200, std::string("ready\n")));
  CHECK(ntk::test::http_get(d.metrics(), "/livez") == std::make_pair(200, std::string("ok\n")));
  std::optional<Reference> ref;
  {
    Client c(d.tcp());
    ref.emplace(open_key(c, "s1", y));
    feed_and_check(c, *ref, "s1", y, 1, 250);
  }
  CHECK(d.stop() == 0);
  CHECK(next_notification() == "STOPPING=1\nSTATUS=draining");
  const std::string log1 = d.process->log();
  CHECK(log1.find("msg=\"snapshot written\" reason=shutdown") != std::string::npos);
  CHECK(log1.find("level=info msg=draining signal=SIGTERM") != std::string::npos);
  CHECK(!std::filesystem::exists(dir / "ports"));  // removed at a clean exit
  REQUIRE(snapshot_files(dir).size() == 1);

  // The same directory again: the model, its counters and the last seq come back.
  d.start("second.log");
  CHECK(next_notification() == "READY=1\nSTATUS=listening");
  const std::string log2 = d.process->log();
  CHECK(log2.find("msg=\"snapshot restored\"") != std::string::npos);
  CHECK(log2.find(" keys=1 ") != std::string::npos);
  {
    Client c(d.tcp());
    // The last applied seq survived: 249 again is a duplicate.
    const v1::Response dup =
        c.call(ntk::test::sensor_reading("s1", 249, kT0 + 249 * kStep, y[249]));
    REQUIRE(dup.has_error());
    CHECK(dup.error().code() == v1::ERROR_CODE_DUPLICATE_SEQ);
    feed_and_check(c, *ref, "s1", y, 250, 400);
  }
  const auto metrics =
      ntk::test::parse_prometheus(ntk::test::http_get(d.metrics(), "/metrics").second);
  CHECK(metrics.at("ntkd_snapshot_restored_keys") == 1);
  CHECK(d.stop() == 0);
}

TEST_CASE("a snapshot written by the x86-64-v3 copy of ntk::core restores in the baseline copy") {
  // Moving a snapshot directory to an older machine: the state is plain data, so the
  // daemon that restores it on the baseline (SSE2) copy predicts what the x86-64-v3 copy
  // would have predicted, to rounding (the two do not round alike: FMA, 2- against
  // 4-wide sums).
  if (ntk::core_build().target != "x86-64-v3") {
    MESSAGE("this process does not run the x86-64-v3 copy of ntk::core; nothing to compare");
    return;
  }
  TempDir dir;
  const std::vector<double> y = make_series(400);
  Daemon d{dir, {}, {}, nullptr, {}};
  d.start("v3.log");
  std::optional<Reference> ref;
  {
    Client c(d.tcp());
    ref.emplace(open_key(c, "s1", y));
    feed_and_check(c, *ref, "s1", y, 1, 250);
  }
  CHECK(d.stop() == 0);
  CHECK(d.process->log().find("core=x86-64-v3") != std::string::npos);
  REQUIRE(snapshot_files(dir).size() == 1);

  // GLIBC_TUNABLES hides AVX2 from the dynamic loader, which loads the baseline copy.
  d.env = {"GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2"};
  d.start("baseline.log");
  const std::string log = d.process->log();
  CHECK(log.find("core=x86-64 ") != std::string::npos);
  CHECK(log.find("msg=\"snapshot restored\"") != std::string::npos);
  double max_diff = 0.0, max_sd_ratio = 0.0;
  {
    Client c(d.tcp());
    for (std::uint64_t i = 250; i < 400; ++i) {
      const v1::Response resp = c.call(ntk::test::sensor_reading("s1", i, kT0 + i * kStep, y[i]));
      REQUIRE(resp.has_prediction());
      const ntk::Outcome o = ref->observe(i, y[i]);
      REQUIRE(resp.prediction().has_mean() == o.has_prediction);
      if (!o.has_prediction) continue;
      max_diff = std::max(max_diff, std::abs(resp.prediction().mean() - o.mean));
      max_sd_ratio =
          std::max(max_sd_ratio, std::abs(std::sqrt(resp.prediction().variance()) / o.sd - 1));
    }
  }
  MESSAGE("baseline against x86-64-v3 after restore: |mean difference| <= "
          << max_diff << ", |sd ratio - 1| <= " << max_sd_ratio);
  // The series has amplitude 1.5. Measured: 3e-14 for both over these 150 steps.
  CHECK(max_diff <= 1e-10);
  CHECK(max_sd_ratio <= 1e-10);
  CHECK(d.stop() == 0);
}

TEST_CASE("kill -9: predictions continue from the last snapshot") {
  TempDir dir;
  const std::vector<double> y = make_series(300);
  Daemon d{dir, {}, {}, nullptr, {}};
  d.start("first.log");
  std::optional<Reference> ref;
  std::optional<Reference> lost;  // the state that was never saved
  {
    Client c(d.tcp());
    ref.emplace(open_key(c, "k", y));
    feed_and_check(c, *ref, "k", y, 1, 150);
    // A snapshot on request: the Ack comes once it is durable.
    const v1::Response ack = c.call(snapshot_request());
    REQUIRE(ack.has_ack());
    CHECK(ack.ack().keys_affected() == 1u);
    CHECK(std::filesystem::exists(ack.ack().snapshot_path()));
    // More values after the snapshot: answered, then lost with the process.
    lost.emplace(*ref);
    feed_and_check(c, *lost, "k", y, 150, 200);
  }
  d.process->signal(SIGKILL);
  CHECK(d.process->wait_exit() == 128 + SIGKILL);
  // The port file of the killed daemon is stale; a new start replaces it.
  d.start("second.log");
  {
    Client c(d.tcp());
    // The restored key resumes after seq 149: values 150.. are new to it again.
    feed_and_check(c, *ref, "k", y, 150, 300);
  }
  CHECK(d.stop() == 0);
}

TEST_CASE("Control.Configure of a key and of a prefix survive a restart") {
  TempDir dir;
  Daemon d{dir, {}, {}, nullptr, {}};
  const auto configure = [](bool prefix, const std::string& target, int lags, int horizon) {
    return ntk::test::control_configure(prefix, target, lags, 0, horizon);
  };
  d.start("first.log");
  {
    Client c(d.tcp());
    REQUIRE(c.call(configure(false, "x", 3, 0)).has_ack());
    REQUIRE(c.call(configure(true, "p/", 4, 0)).has_ack());
    // A key configured before its first value, which comes only after the restart.
    REQUIRE(c.call(configure(false, "later", 5, 0)).has_ack());
    REQUIRE(c.call(ntk::test::sensor_reading("x", 1, kT0, 1.0)).has_prediction());
    CHECK(resolved_config(c, "x").series().lags() == 3);
  }
  CHECK(d.stop() == 0);
  d.start("second.log");
  {
    Client c(d.tcp());
    CHECK(resolved_config(c, "x").series().lags() == 3);
    // Merges onto the key's first Configure, as it would have without the restart.
    const v1::Response ack = c.call(configure(false, "x", 0, 2));
    REQUIRE(ack.has_ack());
    CHECK(ack.ack().keys_affected() == 1u);
    REQUIRE(c.call(ntk::test::sensor_reading("x", 2, kT0 + kStep, 1.0)).has_prediction());
    const v1::KeyConfig x = resolved_config(c, "x");
    CHECK(x.series().lags() == 3);  // not the default 8
    CHECK(x.series().horizon() == 2);
    REQUIRE(c.call(ntk::test::sensor_reading("p/1", 1, kT0, 1.0)).has_prediction());
    CHECK(resolved_config(c, "p/1").series().lags() == 4);
    // Its config was kept (it used to be lost: the key came up with the default 8 lags).
    REQUIRE(c.call(ntk::test::sensor_reading("later", 1, kT0, 1.0)).has_prediction());
    CHECK(resolved_config(c, "later").series().lags() == 5);
  }
  CHECK(d.stop() == 0);
}

TEST_CASE("a corrupt or truncated newest snapshot is refused and the previous one is used") {
  TempDir dir;
  const std::vector<double> y = make_series(260);
  Daemon d{dir, {}, {}, nullptr, {}};
  d.start("first.log");
  std::optional<Reference> at100;
  {
    Client c(d.tcp());
    at100.emplace(open_key(c, "c", y));
    feed_and_check(c, *at100, "c", y, 1, 100);
    REQUIRE(c.call(snapshot_request()).has_ack());  // generation 1: 100 values
    Reference later = *at100;
    feed_and_check(c, later, "c", y, 100, 180);
  }
  CHECK(d.stop() == 0);  // generation 2: 180 values
  auto files = snapshot_files(dir);
  REQUIRE(files.size() == 2);

  SUBCASE("a flipped byte") {
    std::string bytes = ntk::test::slurp(files[1]);
    bytes[bytes.size() / 2] = static_cast<char>(bytes[bytes.size() / 2] ^ 0x01);
    std::ofstream(files[1], std::ios::binary | std::ios::trunc) << bytes;
  }
  SUBCASE("a torn write") {
    const std::string bytes = ntk::test::slurp(files[1]);
    std::ofstream(files[1], std::ios::binary | std::ios::trunc)
        << bytes.substr(0, bytes.size() / 3);
  }
  d.start("second.log");
  const std::string log = d.process->log();
  CHECK(log.find("level=error msg=\"snapshot refused\" path=" + files[1].string()) !=
        std::string::npos);
  const bool says_why = log.find("checksum mismatch") != std::string::npos ||
                        log.find("truncated") != std::string::npos;
  CHECK(says_why);
  CHECK(log.find("msg=\"snapshot restored\" path=" + files[0].string()) != std::string::npos);
  {
    Client c(d.tcp());
    feed_and_check(c, *at100, "c", y, 100, 260);  // continues from 100, not 180
  }
  CHECK(d.stop() == 0);
}

// A snapshot refused at start because of the config (here: more keys than a lowered
// max_keys) must survive the snapshots the daemon writes afterwards: a restart with the
// original config brings the original keys back.
TEST_CASE("a snapshot refused at start is kept and restored once the config allows it") {
  TempDir dir;
  auto live_keys = [](Client& c) {
    v1::Request r;
    r.mutable_control()->mutable_stats();
    const v1::Response resp = c.call(r);
    REQUIRE(resp.has_stats());
    return resp.stats().server().keys();
  };
  Daemon d{dir, {}, {}, nullptr, {}};
  d.start("first.log");
  {
    Client c(d.tcp());
    for (int k = 0; k < 5; ++k) {
      REQUIRE(
          c.call(ntk::test::sensor_reading("k" + std::to_string(k), 1, kT0, 1.0)).has_prediction());
    }
  }
  CHECK(d.stop() == 0);  // generation 1: 5 keys
  const auto files = snapshot_files(dir);
  REQUIRE(files.size() == 1);
  const std::string original = ntk::test::slurp(files[0]);

  std::ofstream(dir / "small.textproto") << "max_keys: 4\n";
  Daemon small{dir, {"--config", (dir / "small.textproto").string()}, {}, nullptr, {}};
  small.start("small.log");
  const std::string log = small.process->log();
  CHECK(log.find("level=error msg=\"snapshot refused\" path=" + files[0].string()) !=
        std::string::npos);
  CHECK(log.find("more than max_keys") != std::string::npos);
  CHECK(log.find("msg=\"no usable snapshot: starting with no keys\"") != std::string::npos);
  {
    Client c(small.tcp());
    CHECK(live_keys(c) == 0);
    // More snapshots than the store keeps (3): none of them may cost the refused one.
    for (int i = 0; i < 4; ++i) REQUIRE(c.call(snapshot_request()).has_ack());
  }
  CHECK(small.stop() == 0);
  // The refused file is still there, byte for byte (set aside under a name that says so).
  const std::filesystem::path aside = files[0].string() + ".refused";
  CHECK(std::filesystem::exists(aside));
  CHECK(ntk::test::slurp(aside) == original);

  // The original config again: the refused snapshot is tried first and restored; it is
  // the newest generation from now on, so later starts keep it too.
  for (const char* name : {"third.log", "fourth.log"}) {
    d.start(name);
    CHECK(d.process->log().find("msg=\"snapshot restored\"") != std::string::npos);
    {
      Client c(d.tcp());
      CHECK(live_keys(c) == 5);
    }
    CHECK(d.stop() == 0);
  }
  CHECK(!std::filesystem::exists(aside));
}

TEST_CASE("metrics: scraped over HTTP and parsed; counters match the traffic") {
  TempDir dir;
  const std::vector<double> y = make_series(120);
  // Frequent refactorizations: every key measures its drift several times.
  const auto config = dir / "ntkd.textproto";
  std::ofstream(config) << "defaults { series { model { recompute_every: 10 } } }\n";
  Daemon d{dir, {"--config", config.string()}, {}, nullptr, {}};
  d.start("ntkd.log");
  v1::Stats stats;
  {
    Client c(d.tcp());
    std::vector<v1::Request> batch;
    for (std::uint64_t i = 0; i < 120; ++i) {
      batch.push_back(
          ntk::test::sensor_reading(i % 2 ? "odd" : "even", i / 2, kT0 + i * kStep, y[i]));
    }
    c.send_all(batch);
    for (int i = 0; i < 120; ++i) REQUIRE(c.receive().has_prediction());
    // One bad request of each of two kinds, answered with their codes.
    v1::Request nan = ntk::test::sensor_reading("odd", 999, kT0, std::nan(""));
    CHECK(c.call(nan).error().code() == v1::ERROR_CODE_NON_FINITE_VALUE);
    CHECK(c.call(ntk::test::sensor_reading("odd", 3, kT0, 1.0)).error().code() ==
          v1::ERROR_CODE_OUT_OF_ORDER_SEQ);
    // Other kinds: 3 observations (one key), 2 market ticks, 1 request without payload, and
    // the Control below.
    for (std::uint64_t i = 0; i < 3; ++i) {
      v1::Request r;
      r.set_seq(i);
      r.mutable_observation()->set_key("obs");
      r.mutable_observation()->set_time_unix_nano(kT0 + i * kStep);
      r.mutable_observation()->add_features(0.5 * static_cast<double>(i));
      r.mutable_observation()->set_target(y[i]);
      REQUIRE(c.call(r).has_prediction());
    }
    for (std::uint64_t i = 0; i < 2; ++i) {
      v1::Request r;
      r.set_seq(i);
      r.mutable_market_tick()->set_symbol("tick");
      r.mutable_market_tick()->set_time_unix_nano(kT0 + i * kStep);
      r.mutable_market_tick()->set_price(100.0 + static_cast<double>(i));
      REQUIRE(c.call(r).has_prediction());
    }
    v1::Request empty;
    empty.set_seq(1);
    CHECK(c.call(empty).error().code() == v1::ERROR_CODE_MISSING_FIELD);
    v1::Request all;
    all.mutable_control()->mutable_stats()->set_key_prefix("");
    const v1::Response r = c.call(all);
    REQUIRE(r.has_stats());
    stats = r.stats();
  }
  const auto [status, body] = ntk::test::http_get(d.metrics(), "/metrics");
  REQUIRE(status == 200);
  const auto e = ntk::test::parse_prometheus(body);
  CHECK(e.at("ntkd_keys") == 4);
  CHECK(!e.has("ntkd_requests_total"));
  CHECK(e.at("ntkd_requests_total{kind=\"sensor_reading\"}") == 122);
  CHECK(e.at("ntkd_requests_total{kind=\"observation\"}") == 3);
  CHECK(e.at("ntkd_requests_total{kind=\"market_tick\"}") == 2);
  CHECK(e.at("ntkd_requests_total{kind=\"control\"}") == 1);
  CHECK(e.at("ntkd_requests_total{kind=\"none\"}") == 1);
  // The kinds add up to the server's total (as the Stats answer counted it, itself included).
  const v1::ServerCounters& sc = stats.server();
  CHECK(sc.requests() == 129);
  CHECK(sc.requests_observation() + sc.requests_sensor_reading() + sc.requests_market_tick() +
            sc.requests_control() + sc.requests_no_payload() ==
        sc.requests());
  CHECK(e.at("ntkd_frames_total{transport=\"tcp\"}") == 129);
  CHECK(e.at("ntkd_errors_total{code=\"NON_FINITE_VALUE\"}") == 1);
  CHECK(e.at("ntkd_errors_total{code=\"OUT_OF_ORDER_SEQ\"}") == 1);
  CHECK(e.at("ntkd_errors_total{code=\"MALFORMED_MESSAGE\"}") == 0);
  CHECK(e.at("ntkd_errors_total{code=\"MISSING_FIELD\"}") == 1);

  // Update latency: one observation per value learned, so its count is the number of model
  // updates (the sum over the keys' ModelCounters); buckets cumulative and monotone.
  std::uint64_t updates = 0, recomputes = 0, models = 0, racing_keys = 0;
  double drift_max = 0;
  for (const v1::KeyStats& k : stats.keys()) {
    updates += k.model().updates();
    recomputes += k.model().recomputes();
    drift_max = std::max(drift_max, k.last_drift());
    CHECK(k.racing() >= 1);
    CHECK(k.racing() <= 4);  // the default race: four noise ratios
    models += k.racing();
    racing_keys += k.racing() > 1;
  }
  CHECK(e.at("ntkd_models") == static_cast<double>(models));
  CHECK(e.at("ntkd_keys_racing") == static_cast<double>(racing_keys));
  REQUIRE(updates > 50);  // 4 keys, warm-up and lags excluded
  CHECK(e.types.at("ntkd_update_latency_seconds") == "histogram");
  CHECK(e.at("ntkd_update_latency_seconds_count") == static_cast<double>(updates));
  CHECK(e.at("ntkd_model_updates_total") == static_cast<double>(updates));
  CHECK(sc.update_latency().count() == updates);
  std::vector<std::pair<double, double>> buckets;  // (le, cumulative count)
  for (const auto& [series, value] : e.samples) {
    const std::string prefix = "ntkd_update_latency_seconds_bucket{le=\"";
    if (series.rfind(prefix, 0) != 0) continue;
    const std::string le = series.substr(prefix.size(), series.size() - prefix.size() - 2);
    buckets.emplace_back(le == "+Inf" ? INFINITY : std::stod(le), value);
  }
  std::sort(buckets.begin(), buckets.end());
  REQUIRE(buckets.size() == 14);  // 1 us .. 10 ms, +Inf
  CHECK(buckets.front().first == 1e-6);
  CHECK(buckets[12].first == 1e-2);
  for (std::size_t b = 1; b < buckets.size(); ++b)
    CHECK(buckets[b].second >= buckets[b - 1].second);
  CHECK(buckets.back().second == static_cast<double>(updates));
  CHECK(e.at("ntkd_update_latency_seconds_sum") > 0);
  // Per-bucket counts of the proto, summed, are the cumulative buckets.
  std::uint64_t cumulative = 0;
  for (int b = 0; b < sc.update_latency().counts_size(); ++b) {
    cumulative += sc.update_latency().counts(b);
  }
  CHECK(cumulative == sc.update_latency().count());

  // Drift: measured at the keys' refactorizations and rendered live (no snapshot yet).
  CHECK(recomputes > 0);
  CHECK(e.at("ntkd_snapshots_written_total") == 0);
  CHECK(e.at("ntkd_model_drift_max") == drift_max);
  CHECK(e.at("ntkd_series_values_total{outcome=\"offered\"}") == 121 + 3 + 2);  // + out-of-order
  CHECK(e.at("ntkd_series_values_total{outcome=\"out_of_order\"}") == 1);
  CHECK(e.at("ntkd_dictionary_points") > 0);
  CHECK(e.at("ntkd_dictionary_size_max") <= 64);
  CHECK(e.at("ntkd_ready") == 1);
  CHECK(e.at("ntkd_snapshot_restored_keys") == 0);
  // The daemon runs the copy of ntk::core this test process runs: same machine, same
  // environment, same loader (test_build checks which copy that is).
  const ntk::CoreBuild core = ntk::core_build();
  // The protobuf runtime's version, from its header (3021012 is 3.21.12).
  const std::string protobuf = std::to_string(GOOGLE_PROTOBUF_VERSION / 1000000) + "." +
                               std::to_string(GOOGLE_PROTOBUF_VERSION / 1000 % 1000) + "." +
                               std::to_string(GOOGLE_PROTOBUF_VERSION % 1000);
  CHECK(e.has("ntkd_build_info{core=\"" + std::string(core.target) +
              "\",format=\"ntk.v1\",protobuf=\"" + protobuf + "\",simd=\"" +
              std::string(core.simd) + "\",version=\"" NTK_PROJECT_VERSION "\"}"));
  // The process's own resources, read from its /proc entry.
  CHECK(e.at("process_resident_memory_bytes") > 1e6);
  CHECK(e.at("process_open_fds") >= 5);  // stdio, listeners, the scrape's connection
  CHECK(e.at("process_cpu_seconds_total") >= 0);
  CHECK(ntk::test::http_get(d.metrics(), "/nope").first == 404);
  CHECK(d.stop() == 0);
}

TEST_CASE("SIGHUP reloads the key defaults for new keys; a bad reload keeps the old ones") {
  TempDir dir;
  const auto config = dir / "ntkd.textproto";
  std::ofstream(config) << "defaults { series { lags: 4 } }\n";
  NotifySocket notify(dir);
  Daemon d{dir, {"--config", config.string()}, {"NOTIFY_SOCKET=" + notify.path}, nullptr, {}};
  d.start("ntkd.log");
  CHECK(notify.next() == "READY=1\nSTATUS=listening");
  // systemd's reload protocol (sd_notify(3)): RELOADING=1 with the monotonic time, then
  // READY=1 once done, with the outcome in STATUS.
  const auto reloading = [&] {
    const std::string n = notify.next();
    CHECK(n.rfind("RELOADING=1\nMONOTONIC_USEC=", 0) == 0);
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC, &now);
    const double usec = std::stod(n.substr(n.find('=', 12) + 1));
    CHECK(usec <= 1e6 * static_cast<double>(now.tv_sec) + 1e-3 * static_cast<double>(now.tv_nsec));
    CHECK(usec > 1e6 * static_cast<double>(now.tv_sec - 60));
  };
  Client c(d.tcp());
  REQUIRE(c.call(ntk::test::sensor_reading("before", 0, kT0, 1.0)).has_prediction());
  CHECK(resolved_config(c, "before").series().lags() == 4);

  auto reloads = [&](const char* result) {
    const auto e = ntk::test::parse_prometheus(ntk::test::http_get(d.metrics(), "/metrics").second);
    return e.at(std::string("ntkd_config_reloads_total{result=\"") + result + "\"}");
  };
  auto wait_reloads = [&](const char* result, double n) {
    const auto deadline = std::chrono::steady_clock::now() + ntk::test::kTimeout;
    while (reloads(result) < n) {
      REQUIRE(std::chrono::steady_clock::now() < deadline);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  };
  std::ofstream(config, std::ios::trunc) << "defaults { series { lags: 6 } }\n";
  d.process->signal(SIGHUP);
  reloading();
  CHECK(notify.next() == "READY=1\nSTATUS=listening; config reloaded");
  wait_reloads("ok", 1);
  REQUIRE(c.call(ntk::test::sensor_reading("after", 0, kT0, 1.0)).has_prediction());
  CHECK(resolved_config(c, "after").series().lags() == 6);
  CHECK(resolved_config(c, "before").series().lags() == 4);  // existing keys keep theirs

  std::ofstream(config, std::ios::trunc) << "defaults { series { lags: 0 } }\n";
  d.process->signal(SIGHUP);
  reloading();
  const std::string failed = notify.next();
  CHECK(failed.rfind("READY=1\nSTATUS=listening; config reload failed: ", 0) == 0);
  CHECK(failed.find("lags must be in [1, 4096], got 0") != std::string::npos);
  wait_reloads("failed", 1);
  REQUIRE(c.call(ntk::test::sensor_reading("later", 0, kT0, 1.0)).has_prediction());
  CHECK(resolved_config(c, "later").series().lags() == 6);
  CHECK(d.process->log().find("msg=\"config reload failed: keeping the running config\"") !=
        std::string::npos);
  CHECK(d.stop() == 0);
}

TEST_CASE("start-up: bad config or flag (2), --help and --version (0), busy port or dir (1)") {
  TempDir dir;
  auto run = [&](std::vector<std::string> args, const std::string& log) {
    args.insert(args.begin(), NTK_NTKD_BIN);
    Process p(args, dir / log);
    const int status = p.wait_exit();
    return std::make_pair(status, p.log());
  };
  const auto bad = dir / "bad.textproto";
  std::ofstream(bad) << "threads: 2\ndefaults {\n  series { horizon: 0 }\n}\n";
  auto [status, out] = run({"--config", bad.string()}, "bad.log");
  CHECK(status == 2);
  CHECK(out ==
        "ntkd: " + bad.string() + ":3:12: defaults: series: horizon must be in [1, 4096], got 0\n");

  std::ofstream(dir / "syntax.textproto") << "tcp_listen: 127.0.0.1\n";
  std::tie(status, out) = run({"--config", (dir / "syntax.textproto").string()}, "syntax.log");
  CHECK(status == 2);
  CHECK(out == "ntkd: " + (dir / "syntax.textproto").string() +
                   ":1:18: Already saw decimal point or exponent; can't have another one.\n");

  // A directory given as the config file: a config error too, naming it.
  std::tie(status, out) = run({"--config", dir.path().string()}, "dir.log");
  CHECK(status == 2);
  CHECK(out == "ntkd: " + dir.path().string() +
                   ": not a regular file (a directory), cannot be the config file\n");

  std::tie(status, out) = run({"--listen", "nowhere"}, "flag.log");
  CHECK(status == 2);
  CHECK(out == "ntkd: --listen: expected HOST:PORT or [IPv6]:PORT, got \"nowhere\"\n");

  std::tie(status, out) = run({"--help"}, "help.log");
  CHECK(status == 0);
  CHECK(out.rfind("usage: ntkd [options]", 0) == 0);

  // --version names the copy of ntk::core the daemon runs (the one this process runs).
  std::tie(status, out) = run({"--version"}, "version.log");
  CHECK(status == 0);
  const ntk::CoreBuild core = ntk::core_build();
  CHECK(out == "ntkd " NTK_PROJECT_VERSION " (ntk::core: " + std::string(core.target) + ", " +
                   std::string(core.simd) + ")\n");

  // A port that is taken (with a snapshot directory of its own, and without), and a
  // snapshot directory held by a running daemon. No second start touches the running
  // daemon's port file (it used to delete it first).
  Daemon d{dir, {}, {}, nullptr, {}};
  d.start("running.log");
  const std::string port_file = (dir / "ports").string();
  const std::string ports = ntk::test::slurp(port_file);
  REQUIRE(ports.find("tcp=") != std::string::npos);
  std::tie(status, out) = run(
      {"--listen", "127.0.0.1:" + std::to_string(d.tcp()), "--port-file", port_file}, "busy.log");
  CHECK(status == 1);
  CHECK(out.find("level=error msg=fatal") != std::string::npos);
  CHECK(ntk::test::slurp(port_file) == ports);
  std::tie(status, out) = run({"--listen", "127.0.0.1:" + std::to_string(d.tcp()), "--port-file",
                               port_file, "--snapshot-dir", (dir / "other").string()},
                              "busy2.log");
  CHECK(status == 1);
  CHECK(ntk::test::slurp(port_file) == ports);
  std::tie(status, out) = run({"--listen", "127.0.0.1:0", "--snapshot-dir",
                               (dir / "snapshots").string(), "--port-file", port_file},
                              "locked.log");
  CHECK(status == 1);
  CHECK(out.find("in use by another process") != std::string::npos);
  CHECK(ntk::test::slurp(port_file) == ports);
  CHECK(d.stop() == 0);
  CHECK_FALSE(std::filesystem::exists(port_file));  // its own: removed at exit
  // A port file rewritten by someone else meanwhile is theirs: left in place at exit.
  d.start("again.log");
  std::ofstream(port_file) << "tcp=127.0.0.1:1\n";
  CHECK(d.stop() == 0);
  CHECK(ntk::test::slurp(port_file) == "tcp=127.0.0.1:1\n");
}

TEST_CASE("a flood of connections reset by their peer does not flood the log") {
  // Health checkers and crashed clients close with a reset. Each used to write an info
  // line ("connection N closed: read: Connection reset by peer"): 300 resets, 300 lines.
  TempDir dir;
  Daemon d{dir, {}, {}, nullptr, {}};
  d.start("flood.log");
  for (int i = 0; i < 300; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(d.tcp());
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::write(fd, "\x05\x0a\x03", 3) == 3);  // the start of a frame
    const linger reset{1, 0};                      // close() sends RST
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    ::close(fd);
  }
  {
    Client c(d.tcp());  // answered: the daemon has seen the resets before this request
    REQUIRE(c.call(ntk::test::sensor_reading("k", 0, kT0, 1.0)).has_prediction());
  }
  CHECK(d.stop() == 0);
  const std::string log = d.process->log();
  std::size_t lines = 0;
  for (std::size_t at = log.find("closed: read:"); at != std::string::npos;
       at = log.find("closed: read:", at + 1)) {
    ++lines;
  }
  CHECK(lines == 0);
  CHECK(log.find("level=error") == std::string::npos);
}

TEST_CASE("periodic snapshots and UDP ingest") {
  TempDir dir;
  Daemon d{dir, {"--snapshot-interval", "1", "--udp", "127.0.0.1:0"}, {}, nullptr, {}};
  d.start("ntkd.log");
  REQUIRE(d.ports.addresses.count("udp") == 1);
  const std::uint16_t udp = d.ports.port("udp");
  CHECK(udp != 0);
  // One Request per datagram, no length prefix.
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(udp);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (std::uint64_t i = 0; i < 5; ++i) {
    const std::string bytes =
        ntk::test::sensor_reading("udp-key", i, kT0 + i * kStep, 0.5 * static_cast<double>(i))
            .SerializeAsString();
    REQUIRE(::sendto(fd, bytes.data(), bytes.size(), 0, reinterpret_cast<sockaddr*>(&to),
                     sizeof to) == static_cast<ssize_t>(bytes.size()));
  }
  ::close(fd);
  // Readiness polls, not sleeps: the datagrams are counted, then a periodic snapshot
  // (every second) holds the key.
  const auto deadline = std::chrono::steady_clock::now() + ntk::test::kTimeout;
  for (;;) {
    const auto e = ntk::test::parse_prometheus(ntk::test::http_get(d.metrics(), "/metrics").second);
    if (e.at("ntkd_frames_total{transport=\"udp\"}") == 5 && e.at("ntkd_keys") == 1 &&
        e.at("ntkd_snapshots_written_total") >= 1 && e.at("ntkd_snapshot_keys") == 1) {
      CHECK(e.at("ntkd_snapshot_age_seconds") < 60);
      break;
    }
    REQUIRE(std::chrono::steady_clock::now() < deadline);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(d.process->log().find("msg=\"snapshot written\" reason=periodic") != std::string::npos);
  CHECK(d.stop() == 0);
}

TEST_CASE("a final snapshot that cannot be written: exit status 1") {
  TempDir dir;
  Daemon d{dir, {}, {}, nullptr, {}};
  d.start("final.log");
  // The first snapshot's temp file cannot be created: a directory holds its name.
  std::filesystem::create_directory(dir / "snapshots" /
                                    ("snapshot-" + std::string(19, '0') + "1.ntks.tmp"));
  CHECK(d.stop() == 1);
  CHECK(!std::filesystem::exists(dir / "snapshots" /
                                 ("snapshot-" + std::string(19, '0') + "1.ntks")));
}

TEST_CASE("the ready line gives the effective snapshot interval: 300 s by default") {
  TempDir dir;
  const std::string common[] = {NTK_NTKD_BIN, "--listen", "127.0.0.1:0", "--port-file",
                                (dir / "ports").string()};
  const auto ready_line = [&](std::vector<std::string> extra, const std::string& log_name) {
    std::vector<std::string> argv(std::begin(common), std::end(common));
    argv.insert(argv.end(), extra.begin(), extra.end());
    std::filesystem::remove(dir / "ports");
    Process p(argv, dir / log_name, {});
    ntk::test::wait_for_ports(p, dir / "ports");
    const std::string log = p.log();
    p.signal(SIGTERM);
    CHECK(p.wait_exit() == 0);
    const auto at = log.find(" msg=ready ");
    REQUIRE(at != std::string::npos);
    return log.substr(at, log.find('\n', at) - at);
  };
  const std::string snapshots = (dir / "snapshots").string();
  CHECK(ready_line({"--snapshot-dir", snapshots}, "a.log").find(" snapshot_interval_s=300") !=
        std::string::npos);
  CHECK(ready_line({"--snapshot-dir", snapshots, "--snapshot-interval", "0"}, "b.log")
            .find(" snapshot_interval_s=0") != std::string::npos);
  const std::string plain = ready_line({}, "c.log");
  CHECK(plain.find(" snapshot_interval_s=off") != std::string::npos);
  // And the limit on the models' memory: a quarter of the memory unless configured.
  CHECK(plain.find(" max_model_bytes=" + std::to_string(ntk::stream::default_max_model_bytes())) !=
        std::string::npos);
  std::ofstream(dir / "limit.textproto") << "max_model_bytes: 5242880\n";
  CHECK(ready_line({"--config", (dir / "limit.textproto").string()}, "d.log")
            .find(" max_model_bytes=5242880") != std::string::npos);
}
