// ntkd's metrics: the exposition parses under an independent reader of the 0.0.4 text
// format, its aggregates equal sums computed here from the same key stats, no series is
// per key; and the HTTP endpoint answers as HTTP/1.1 should.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cmath>
#include <set>
#include <string>

#include "http_server.h"
#include "metrics.h"
#include "prom_parse.h"

namespace {

namespace v1 = ntk::v1;
using ntk::test::parse_prometheus;

v1::Stats make_stats(int keys) {
  v1::Stats s;
  v1::ServerCounters* c = s.mutable_server();
  c->set_connections_accepted(7);
  c->set_connections_open(2);
  c->set_connections_refused(4);
  c->set_idle_timeouts(5);
  c->set_read_timeouts(6);
  c->set_write_timeouts(8);
  c->set_tcp_frames(1000);
  c->set_udp_datagrams(30);
  c->set_requests(1030);
  c->set_requests_observation(400);
  c->set_requests_sensor_reading(600);
  c->set_requests_market_tick(20);
  c->set_requests_control(7);
  c->set_requests_no_payload(3);
  // Per-bucket counts over bounds 1e-6, 1e-5, 1e-4 (and +Inf): cumulative 3, 3, 10, 11.
  v1::LatencyHistogram* h = c->mutable_update_latency();
  for (const double b : {1e-6, 1e-5, 1e-4}) h->add_upper_bounds_seconds(b);
  for (const std::uint64_t n : {3, 0, 7, 1}) h->add_counts(n);
  h->set_sum_seconds(0.25);
  h->set_count(11);
  c->set_responses(1029);
  c->set_bytes_received(123456);
  c->set_bytes_sent(654321);
  c->set_keys(static_cast<std::uint64_t>(keys));
  auto* e = c->add_errors();
  e->set_code(v1::ERROR_CODE_DUPLICATE_SEQ);
  e->set_count(5);
  e = c->add_errors();
  e->set_code(v1::ERROR_CODE_NON_FINITE_VALUE);
  e->set_count(2);
  for (int i = 0; i < keys; ++i) {
    v1::KeyStats* k = s.add_keys();
    k->set_key("sensor-\"" + std::to_string(i) + "\"\n");  // hostile names must not leak
    k->set_dictionary_size(static_cast<std::uint32_t>(10 + i));
    k->mutable_config()->mutable_series()->mutable_model()->set_budget(64);
    k->mutable_model()->set_updates(100u + static_cast<std::uint64_t>(i));
    k->mutable_model()->set_recomputes(static_cast<std::uint64_t>(i % 3));
    k->mutable_counters()->set_observations(200u + static_cast<std::uint64_t>(i));
    k->mutable_counters()->set_anomalies(static_cast<std::uint64_t>(i % 2));
    k->mutable_counters()->set_duplicates(1);
    k->set_last_drift(i == 2 ? 3.5e-13 : 1e-15 * i);  // the largest is not the last key's
    // Models racing per key: 4, 1, 3, unset (a server that predates the race: 1), 2.
    if (i != 3) k->set_racing(static_cast<std::uint32_t>(i == 0 ? 4 : i == 1 ? 1 : i == 2 ? 3 : 2));
  }
  return s;
}

ntk::daemon::DaemonStatus make_status() {
  ntk::daemon::DaemonStatus st;
  st.version = "0.1.0";
  st.core_target = "x86-64-v3";
  st.core_simd = "AVX2+FMA";
  st.start_time_unix_seconds = 1700000000.5;
  st.now_unix_seconds = 1700000100.0;
  st.ready = true;
  st.restored_keys = 3;
  st.last_snapshot_unix_seconds = 1700000040.0;
  st.snapshots_written = 4;
  st.snapshot_failures = 1;
  st.last_snapshot_duration_seconds = 0.0125;
  st.reloads_ok = 2;
  return st;
}

// One HTTP/1.1 exchange on an open socket; returns the raw response (headers and body).
std::string exchange(boost::asio::ip::tcp::socket& s, const std::string& request,
                     bool expect_body = true) {
  boost::asio::write(s, boost::asio::buffer(request));
  boost::asio::streambuf buf;
  boost::asio::read_until(s, buf, "\r\n\r\n");
  std::string data(boost::asio::buffers_begin(buf.data()), boost::asio::buffers_end(buf.data()));
  const auto header_end = data.find("\r\n\r\n") + 4;
  std::string headers = data.substr(0, header_end);
  std::size_t length = 0;
  const auto cl = headers.find("Content-Length: ");
  if (cl != std::string::npos) length = std::stoul(headers.substr(cl + 16));
  std::string body = data.substr(header_end);
  if (expect_body && body.size() < length) {
    std::string more(length - body.size(), '\0');
    boost::asio::read(s, boost::asio::buffer(more));
    body += more;
  }
  return headers + body;
}

// Whether the peer closed `s` within `ms` milliseconds (end of stream or reset), without
// consuming data; false if it is still open then.
bool closed_within(boost::asio::ip::tcp::socket& s, int ms) {
  pollfd p{s.native_handle(), POLLIN, 0};
  if (::poll(&p, 1, ms) != 1) return false;
  char byte;
  const ssize_t n = ::recv(s.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

}  // namespace

TEST_CASE("metrics: the exposition parses and its numbers are the aggregates") {
  const v1::Stats stats = make_stats(5);
  const auto e = parse_prometheus(ntk::daemon::render_metrics(stats, make_status()));

  CHECK(e.types.at("ntkd_build_info") == "gauge");
  CHECK(e.at("ntkd_build_info{core=\"x86-64-v3\",format=\"ntk.v1\",protobuf=\"3.21.12\","
             "simd=\"AVX2+FMA\",version=\"0.1.0\"}") == 1);
  CHECK(!e.has("ntkd_requests_total"));  // by kind only: no unlabelled total to double-count
  CHECK(e.at("ntkd_requests_total{kind=\"observation\"}") == 400);
  CHECK(e.at("ntkd_requests_total{kind=\"sensor_reading\"}") == 600);
  CHECK(e.at("ntkd_requests_total{kind=\"market_tick\"}") == 20);
  CHECK(e.at("ntkd_requests_total{kind=\"control\"}") == 7);
  CHECK(e.at("ntkd_requests_total{kind=\"none\"}") == 3);
  double by_kind = 0;
  for (const auto& [k, v] : e.samples) {
    if (k.rfind("ntkd_requests_total{", 0) == 0) by_kind += v;
  }
  CHECK(by_kind == 1030);
  // The histogram: cumulative buckets, le of the bounds as written, _count = +Inf bucket.
  CHECK(e.types.at("ntkd_update_latency_seconds") == "histogram");
  CHECK(e.at("ntkd_update_latency_seconds_bucket{le=\"1e-06\"}") == 3);
  CHECK(e.at("ntkd_update_latency_seconds_bucket{le=\"1e-05\"}") == 3);
  CHECK(e.at("ntkd_update_latency_seconds_bucket{le=\"1e-04\"}") == 10);
  CHECK(e.at("ntkd_update_latency_seconds_bucket{le=\"+Inf\"}") == 11);
  CHECK(e.at("ntkd_update_latency_seconds_count") == 11);
  CHECK(e.at("ntkd_update_latency_seconds_sum") == 0.25);
  CHECK(e.at("ntkd_responses_total") == 1029);
  CHECK(e.at("ntkd_frames_total{transport=\"tcp\"}") == 1000);
  CHECK(e.at("ntkd_frames_total{transport=\"udp\"}") == 30);
  CHECK(e.at("ntkd_connections_open") == 2);
  CHECK(e.at("ntkd_connections_refused_total") == 4);
  CHECK(e.at("ntkd_connection_timeouts_total{kind=\"idle\"}") == 5);
  CHECK(e.at("ntkd_connection_timeouts_total{kind=\"read\"}") == 6);
  CHECK(e.at("ntkd_connection_timeouts_total{kind=\"write\"}") == 8);
  CHECK(e.at("ntkd_received_bytes_total") == 123456);
  CHECK(e.at("ntkd_errors_total{code=\"DUPLICATE_SEQ\"}") == 5);
  CHECK(e.at("ntkd_errors_total{code=\"NON_FINITE_VALUE\"}") == 2);
  CHECK(e.at("ntkd_errors_total{code=\"TOO_MANY_KEYS\"}") == 0);
  CHECK(!e.has("ntkd_errors_total{code=\"UNSPECIFIED\"}"));
  // Every error code of the protocol has its series.
  int codes = 0;
  for (const auto& [k, v] : e.samples) codes += k.rfind("ntkd_errors_total{", 0) == 0;
  CHECK(codes == v1::ErrorCode_descriptor()->value_count() - 1);

  // Aggregates recomputed from the key stats: sizes 10..14, updates 100..104, ...
  CHECK(e.at("ntkd_keys") == 5);
  CHECK(e.at("ntkd_dictionary_points") == 10 + 11 + 12 + 13 + 14);
  CHECK(e.at("ntkd_dictionary_size_max") == 14);
  CHECK(e.at("ntkd_dictionary_budget_points") == 5 * 64);
  CHECK(e.at("ntkd_models") == 4 + 1 + 3 + 1 + 2);
  CHECK(e.at("ntkd_keys_racing") == 3);
  CHECK(e.at("ntkd_model_updates_total") == 100 + 101 + 102 + 103 + 104);
  CHECK(e.at("ntkd_model_recomputes_total") == 0 + 1 + 2 + 0 + 1);
  CHECK(e.at("ntkd_anomalies_total") == 2);
  CHECK(e.at("ntkd_series_values_total{outcome=\"offered\"}") == 200 + 201 + 202 + 203 + 204);
  CHECK(e.at("ntkd_series_values_total{outcome=\"duplicate\"}") == 5);
  CHECK(e.at("ntkd_model_drift_max") == 3.5e-13);
  {
    // Counters of keys no longer held count too: a dropped key takes nothing away.
    v1::Stats with_retired = stats;
    with_retired.mutable_server()->mutable_retired_model()->set_updates(1000);
    with_retired.mutable_server()->mutable_retired_series()->set_observations(7);
    const auto r = parse_prometheus(ntk::daemon::render_metrics(with_retired, make_status()));
    CHECK(r.at("ntkd_model_updates_total") == 1000 + 100 + 101 + 102 + 103 + 104);
    CHECK(r.at("ntkd_series_values_total{outcome=\"offered\"}") == 7 + 200 + 201 + 202 + 203 + 204);
    CHECK(r.at("ntkd_keys") == 5);
    // What the keys restored at start carried in does not count: the totals run from the
    // process's start (600 accepted before a restart are not 600 new ones after it).
    with_retired.mutable_server()->mutable_restored_model()->set_updates(400);
    with_retired.mutable_server()->mutable_restored_series()->set_observations(1000);
    with_retired.mutable_server()->mutable_restored_series()->set_duplicates(9);  // > 5: 0
    const auto b = parse_prometheus(ntk::daemon::render_metrics(with_retired, make_status()));
    CHECK(b.at("ntkd_model_updates_total") == 1000 + 100 + 101 + 102 + 103 + 104 - 400);
    CHECK(b.at("ntkd_series_values_total{outcome=\"offered\"}") ==
          7 + 200 + 201 + 202 + 203 + 204 - 1000);
    CHECK(b.at("ntkd_series_values_total{outcome=\"duplicate\"}") == 0);
  }

  CHECK(e.at("ntkd_ready") == 1);
  CHECK(e.at("ntkd_start_time_seconds") == 1700000000.5);
  CHECK(e.at("ntkd_snapshot_age_seconds") == 60);
  CHECK(e.at("ntkd_snapshots_written_total") == 4);
  CHECK(e.at("ntkd_snapshot_failures_total") == 1);
  CHECK(e.at("ntkd_snapshot_duration_seconds") == 0.0125);
  CHECK(e.at("ntkd_config_reloads_total{result=\"ok\"}") == 2);

  // Conventions: counters end in _total, every family has HELP, no key names leak.
  for (const auto& [family, type] : e.types) {
    if (type == "counter") CHECK(family.size() > 6);
    if (type == "counter") CHECK(family.substr(family.size() - 6) == "_total");
    CHECK(e.help.count(family) == 1);
  }
  for (const auto& [k, v] : e.samples) CHECK(k.find("sensor-") == std::string::npos);
}

TEST_CASE("process metrics: rendered as Prometheus clients do, read from /proc") {
  auto st = make_status();
  const v1::Stats stats = make_stats(1);
  CHECK(!parse_prometheus(ntk::daemon::render_metrics(stats, st)).has("process_open_fds"));
  st.process = ntk::daemon::ProcessStats{12.5, 4096.0 * 1024, 8192.0 * 1024, 17, 1024};
  const auto e = parse_prometheus(ntk::daemon::render_metrics(stats, st));
  CHECK(e.types.at("process_cpu_seconds_total") == "counter");
  CHECK(e.at("process_cpu_seconds_total") == 12.5);
  CHECK(e.at("process_resident_memory_bytes") == 4096.0 * 1024);
  CHECK(e.at("process_virtual_memory_bytes") == 8192.0 * 1024);
  CHECK(e.at("process_open_fds") == 17);
  CHECK(e.at("process_max_fds") == 1024);
  CHECK(e.at("process_start_time_seconds") == 1700000000.5);

  // The reader, against the kernel's other accounts of this process.
  const std::optional<ntk::daemon::ProcessStats> before = ntk::daemon::read_process_stats();
  REQUIRE(before);
  const int fd = ::open("/proc/self/stat", O_RDONLY);
  REQUIRE(fd >= 0);
  const std::optional<ntk::daemon::ProcessStats> after = ntk::daemon::read_process_stats();
  ::close(fd);
  REQUIRE(after);
  REQUIRE(before->open_fds);
  REQUIRE(after->open_fds);
  CHECK(*after->open_fds == *before->open_fds + 1);
  // Exactly the descriptors open: counted here by probing each number up to the limit.
  int open_now = 0;
  for (int i = 0; i < 4096; ++i) open_now += ::fcntl(i, F_GETFD) != -1;
  const std::optional<ntk::daemon::ProcessStats> now = ntk::daemon::read_process_stats();
  REQUIRE(now);
  REQUIRE(now->open_fds);
  CHECK(*now->open_fds == open_now);
  rlimit limit{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &limit) == 0);
  CHECK(after->max_fds == static_cast<double>(limit.rlim_cur));
  rusage usage{};
  REQUIRE(::getrusage(RUSAGE_SELF, &usage) == 0);
  const double peak = static_cast<double>(usage.ru_maxrss) * 1024.0;  // kB
  CHECK(after->resident_memory_bytes > 0);
  CHECK(after->resident_memory_bytes <= peak);
  CHECK(after->virtual_memory_bytes >= after->resident_memory_bytes);
  const double cpu = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                     1e-6 * static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
  CHECK(after->cpu_seconds >= 0);
  CHECK(after->cpu_seconds <= cpu + 0.05);  // clock ticks round down; rusage is finer
}

TEST_CASE("metrics: the set of series does not grow with the number of keys") {
  auto names = [](int keys) {
    std::set<std::string> out;
    for (const auto& [k, v] :
         parse_prometheus(ntk::daemon::render_metrics(make_stats(keys), make_status())).samples) {
      out.insert(k);
    }
    return out;
  };
  CHECK(names(1) == names(200));
  // Without snapshots configured, and no snapshot restored, no age: nothing to alert on.
  auto st = make_status();
  st.last_snapshot_unix_seconds.reset();
  v1::Stats empty = make_stats(0);
  empty.mutable_server()->clear_update_latency();
  const auto e = parse_prometheus(ntk::daemon::render_metrics(empty, st));
  CHECK(!e.has("ntkd_snapshot_age_seconds"));
  CHECK(!e.has("ntkd_snapshot_last_success_timestamp_seconds"));
  // Configured but never written (every write failed since start): the age runs from the
  // start, so that "snapshot too old" fires; there is no success timestamp to show.
  st.snapshots_enabled = true;
  const auto never = parse_prometheus(ntk::daemon::render_metrics(empty, st));
  CHECK(never.at("ntkd_snapshot_age_seconds") == 99.5);
  CHECK(!never.has("ntkd_snapshot_last_success_timestamp_seconds"));
  CHECK(e.at("ntkd_dictionary_size_max") == 0);
  CHECK(e.at("ntkd_model_drift_max") == 0);  // no key: nothing drifted
  // A server that sent no buckets still renders a valid histogram (everything in +Inf).
  CHECK(e.at("ntkd_update_latency_seconds_bucket{le=\"+Inf\"}") == 0);
  CHECK(e.at("ntkd_update_latency_seconds_count") == 0);
}

TEST_CASE("prometheus number and label formatting") {
  using ntk::daemon::prom_number;
  CHECK(prom_number(0) == "0");
  CHECK(prom_number(12345678901234.0) == "12345678901234");
  CHECK(prom_number(0.1) == "0.1");
  CHECK(prom_number(1e300) == "1e+300");
  CHECK(prom_number(INFINITY) == "+Inf");
  CHECK(prom_number(-INFINITY) == "-Inf");
  CHECK(prom_number(NAN) == "NaN");
  CHECK(ntk::daemon::prom_escape_label("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
}

TEST_CASE("http endpoint: GET, HEAD, 404, 405, keep-alive") {
  int calls = 0;
  ntk::daemon::HttpServer http("127.0.0.1:0", [&](std::string_view path) {
    ++calls;
    if (path == "/metrics") {
      return ntk::daemon::HttpReply{200, "text/plain; version=0.0.4; charset=utf-8", "m 1\n"};
    }
    if (path == "/boom") throw std::runtime_error("kaput");
    return ntk::daemon::HttpReply{404, "text/plain; charset=utf-8", "nope\n"};
  });
  http.start();
  REQUIRE(http.port() != 0);
  CHECK(http.bound_address() == "127.0.0.1:" + std::to_string(http.port()));

  boost::asio::io_context io;
  boost::asio::ip::tcp::socket s(io);
  s.connect({boost::asio::ip::make_address("127.0.0.1"), http.port()});
  std::string r = exchange(s, "GET /metrics?x=1 HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(r.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(r.find("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n") != std::string::npos);
  CHECK(r.substr(r.size() - 4) == "m 1\n");
  // Same connection (keep-alive): a HEAD has the length but no body.
  r = exchange(s, "HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n", false);
  CHECK(r.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(r.find("Content-Length: 4\r\n") != std::string::npos);
  CHECK(r.substr(r.size() - 4) == "\r\n\r\n");
  r = exchange(s, "GET /elsewhere HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(r.rfind("HTTP/1.1 404 Not Found\r\n", 0) == 0);
  r = exchange(s, "POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
  CHECK(r.rfind("HTTP/1.1 405 Method Not Allowed\r\n", 0) == 0);
  CHECK(r.find("Allow: GET, HEAD\r\n") != std::string::npos);
  r = exchange(s, "GET /boom HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(r.rfind("HTTP/1.1 500 Internal Server Error\r\n", 0) == 0);
  CHECK(r.find("internal error: kaput") != std::string::npos);
  CHECK(calls == 4);  // the 405 never reached the handler
  http.stop();
  http.stop();  // idempotent
}

TEST_CASE("http endpoint: idle connections at the limit make room for a probe") {
  // 64 connections that never send a request (or stop halfway) held every place for the
  // 30 s request timeout, and /livez was refused. The longest idle one now gives way.
  ntk::daemon::HttpServer http("127.0.0.1:0", [](std::string_view) {
    return ntk::daemon::HttpReply{200, "text/plain; charset=utf-8", "ok\n"};
  });
  http.start();
  boost::asio::io_context io;
  std::vector<boost::asio::ip::tcp::socket> idle;
  for (int i = 0; i < 64; ++i) {
    idle.emplace_back(io).connect({boost::asio::ip::make_address("127.0.0.1"), http.port()});
    if (i % 2 == 1) boost::asio::write(idle.back(), boost::asio::buffer(std::string("GET /li")));
  }
  // Each probe (connections 65, 66, 67) is answered.
  for (int round = 0; round < 3; ++round) {
    boost::asio::ip::tcp::socket s(io);
    s.connect({boost::asio::ip::make_address("127.0.0.1"), http.port()});
    const std::string r = exchange(s, "GET /livez HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(r.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
    if (round == 0) {
      // The 65th connection closed the one idle the longest (oldest first): at once, not
      // by the 30 s request timeout; the second oldest is still open.
      CHECK(closed_within(idle[0], 5000));
      CHECK_FALSE(closed_within(idle[1], 200));
    }
  }
  http.stop();
}

TEST_CASE("metrics: every counter and gauge is its own field, every *_total a counter") {
  // Each source field a distinct value, so that a sample showing another field's value,
  // or none, is seen.
  v1::Stats stats;
  v1::ServerCounters* c = stats.mutable_server();
  c->set_connections_accepted(11);
  c->set_connections_open(12);
  c->set_keys(2);
  c->set_model_bytes(13);
  c->set_max_model_bytes(14);
  for (int i = 0; i < 2; ++i) {
    v1::KeyStats* k = stats.add_keys();
    k->set_key("k" + std::to_string(i));
    v1::ModelCounters* m = k->mutable_model();
    m->set_updates(100 + i);
    m->set_admitted(200 + i);
    m->set_evicted(300 + i);
    m->set_recomputes(400 + i);
    m->set_pivot_failures(500 + i);
    m->set_covariance_repairs(550 + i);
    m->set_resets(560 + i);
    v1::SeriesCounters* s = k->mutable_counters();
    s->set_observations(1000 + i);
    s->set_accepted(1100 + i);
    s->set_missing(1200 + i);
    s->set_duplicates(1300 + i);
    s->set_out_of_order(1400 + i);
    s->set_gaps(1500 + i);
    s->set_time_reversals(1600 + i);
    s->set_scored(1700 + i);
    s->set_anomalies(1800 + i);
    s->set_excluded(1900 + i);
  }
  ntk::daemon::DaemonStatus st = make_status();
  st.ready = false;
  st.restored_keys = 21;
  st.snapshots_written = 22;
  st.snapshot_failures = 23;
  st.last_snapshot_keys = 24;
  st.last_snapshot_bytes = 25;
  st.reloads_ok = 26;
  st.reloads_failed = 27;
  const auto e = parse_prometheus(ntk::daemon::render_metrics(stats, st));
  CHECK(e.at("ntkd_connections_accepted_total") == 11);
  CHECK(e.at("ntkd_connections_open") == 12);
  CHECK(e.at("ntkd_model_bytes") == 13);
  CHECK(e.at("ntkd_model_bytes_limit") == 14);
  CHECK(e.types.at("ntkd_model_bytes") == "gauge");
  CHECK(e.at("ntkd_model_updates_total") == 201);
  CHECK(e.at("ntkd_model_admitted_total") == 401);
  CHECK(e.at("ntkd_model_evicted_total") == 601);
  CHECK(e.at("ntkd_model_recomputes_total") == 801);
  CHECK(e.at("ntkd_model_pivot_failures_total") == 1001);
  CHECK(e.at("ntkd_model_covariance_repairs_total") == 1101);
  CHECK(e.at("ntkd_model_resets_total") == 1121);
  CHECK(e.at("ntkd_series_values_total{outcome=\"offered\"}") == 2001);
  CHECK(e.at("ntkd_series_values_total{outcome=\"accepted\"}") == 2201);
  CHECK(e.at("ntkd_series_values_total{outcome=\"missing\"}") == 2401);
  CHECK(e.at("ntkd_series_values_total{outcome=\"duplicate\"}") == 2601);
  CHECK(e.at("ntkd_series_values_total{outcome=\"out_of_order\"}") == 2801);
  CHECK(e.at("ntkd_series_values_total{outcome=\"scored\"}") == 3401);
  CHECK(e.at("ntkd_series_gaps_total") == 3001);
  CHECK(e.at("ntkd_series_time_reversals_total") == 3201);
  CHECK(e.at("ntkd_anomalies_total") == 3601);
  CHECK(e.at("ntkd_anomalies_excluded_total") == 3801);
  CHECK(e.at("ntkd_ready") == 0);
  CHECK(e.at("ntkd_snapshot_restored_keys") == 21);
  CHECK(e.at("ntkd_snapshots_written_total") == 22);
  CHECK(e.at("ntkd_snapshot_failures_total") == 23);
  CHECK(e.at("ntkd_snapshot_keys") == 24);
  CHECK(e.at("ntkd_snapshot_bytes") == 25);
  CHECK(e.at("ntkd_snapshot_last_success_timestamp_seconds") == 1700000040.0);
  CHECK(e.at("ntkd_config_reloads_total{result=\"ok\"}") == 26);
  CHECK(e.at("ntkd_config_reloads_total{result=\"failed\"}") == 27);
  // The naming convention both ways: a *_total family is a counter, a counter ends in
  // _total; gauges, histograms and the rest do not end in _total.
  for (const auto& [family, type] : e.types) {
    CAPTURE(family);
    const bool total = family.size() > 6 && family.substr(family.size() - 6) == "_total";
    CHECK(total == (type == "counter"));
  }
  CHECK(e.types.at("ntkd_snapshots_written_total") == "counter");
  CHECK(e.types.at("ntkd_connections_open") == "gauge");
}

TEST_CASE("prometheus HELP text: backslash and newline escaped, quotes not") {
  ntk::daemon::PromText p;
  p.family("m", "gauge", "a \\ b\nc \"q\"");
  p.sample("m", 1);
  CHECK(p.text() == "# HELP m a \\\\ b\\nc \"q\"\n# TYPE m gauge\nm 1\n");
}

TEST_CASE("http endpoint: a request above the 8 KiB limit is refused, one below it answered") {
  ntk::daemon::HttpServer http("127.0.0.1:0", [](std::string_view) {
    return ntk::daemon::HttpReply{200, "text/plain; charset=utf-8", "ok\n"};
  });
  http.start();
  boost::asio::io_context io;
  {
    boost::asio::ip::tcp::socket s(io);
    s.connect({boost::asio::ip::make_address("127.0.0.1"), http.port()});
    const std::string r = ::exchange(
        s, "GET /livez HTTP/1.1\r\nHost: t\r\nX-Pad: " + std::string(7000, 'a') + "\r\n\r\n");
    CHECK(r.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  }
  boost::asio::ip::tcp::socket s(io);
  s.connect({boost::asio::ip::make_address("127.0.0.1"), http.port()});
  boost::asio::write(s, boost::asio::buffer("GET /livez HTTP/1.1\r\nHost: t\r\nX-Pad: " +
                                            std::string(9000, 'a') + "\r\n\r\n"));
  // Closed without an answer (the first read ends the stream, or brings the answer).
  char buf[512];
  boost::system::error_code ec;
  const std::size_t n = s.read_some(boost::asio::buffer(buf), ec);
  CHECK(n == 0);
  CHECK((ec == boost::asio::error::eof || ec == boost::asio::error::connection_reset));
  http.stop();
}
