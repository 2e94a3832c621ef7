// 50 concurrent clients x 10^4 observations over 1000 keys, over loopback: every request
// answered exactly once, in order, and every prediction identical to core/series run
// in-process on the same per-key sequences.
//
// Size: NTK_LOAD_PER_CLIENT requests per client (default 10000, the full run, labelled
// `slow`); ctest also runs a scaled copy (1000 per client) that the sanitizer pass keeps.
#include <doctest/doctest.h>

#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "ntk/stream/client.h"
#include "ntk/stream/server.h"
#include "stream_test_util.h"

namespace {

namespace v1 = ntk::v1;
using namespace ntk::stream::test;  // NOLINT: test helpers

constexpr int kClients = 50;
constexpr int kKeys = 1000;
constexpr int kKeysPerClient = kKeys / kClients;
constexpr int kFeatureDim = 3;

int per_client() {
  const char* env = std::getenv("NTK_LOAD_PER_CLIENT");
  const int n = env != nullptr ? std::atoi(env) : 10000;
  return n > 0 ? n : 10000;
}

// Keys [0, 500) are fed Observations with 3 features, [500, 1000) SensorReadings.
bool is_observation_key(int k) { return k < kKeys / 2; }
std::string key_name(int k) {
  return (is_observation_key(k) ? "obs/" : "sensor/") + std::to_string(k);
}

std::vector<double> features(int k, std::uint64_t t) {
  const auto key = static_cast<std::uint64_t>(k);
  return {signal(key, t), signal(key + 1, t + 1), signal(key + 2, t + 2)};
}

// The j-th request of client c: key c * 20 + j % 20, its (j / 20 + 1)-th value.
v1::Request request_of(int c, int j) {
  const int k = c * kKeysPerClient + j % kKeysPerClient;
  const auto seq = static_cast<std::uint64_t>(j / kKeysPerClient + 1);
  v1::Request r = is_observation_key(k)
                      ? observation(key_name(k), seq, features(k, seq),
                                    signal(static_cast<std::uint64_t>(k) + 7, seq + 3))
                      : reading(key_name(k), seq, signal(static_cast<std::uint64_t>(k), seq));
  r.set_tag("c" + std::to_string(c) + "-" + std::to_string(j));
  return r;
}

v1::KeyConfig load_config() {
  v1::KeyConfig c;
  c.mutable_series()->set_lags(4);
  c.mutable_series()->set_warmup(10);
  c.mutable_series()->mutable_model()->set_budget(16);
  return c;
}

}  // namespace

TEST_CASE("50 clients x observations over 1000 keys: exactly once, identical to core/series") {
  const int n = per_client();
  MESSAGE("requests per client: " << n);
  ntk::stream::ServerOptions options;
  options.threads = 2;
  options.defaults = load_config();
  ntk::stream::Server server(options);
  server.start();

  std::vector<std::vector<v1::Request>> requests(kClients);
  std::vector<std::vector<v1::Response>> responses(kClients);
  std::vector<std::string> failures(kClients);
  for (int c = 0; c < kClients; ++c) {
    requests[static_cast<std::size_t>(c)].reserve(static_cast<std::size_t>(n));
    for (int j = 0; j < n; ++j) requests[static_cast<std::size_t>(c)].push_back(request_of(c, j));
  }
  {
    std::vector<std::thread> threads;
    for (int c = 0; c < kClients; ++c) {
      threads.emplace_back([&, c] {
        const auto i = static_cast<std::size_t>(c);
        try {
          ntk::stream::ClientOptions co;
          co.timeout = std::chrono::seconds(300);
          ntk::stream::Client client("127.0.0.1", server.port(), co);
          responses[i] = client.call_many(requests[i]);
        } catch (const std::exception& e) {
          failures[i] = e.what();
        }
      });
    }
    for (std::thread& t : threads) t.join();
  }
  for (int c = 0; c < kClients; ++c) {
    CAPTURE(c);
    REQUIRE(failures[static_cast<std::size_t>(c)].empty());
  }

  // Exactly once and in order: the i-th response carries the i-th request's seq and tag.
  for (int c = 0; c < kClients; ++c) {
    const auto& req = requests[static_cast<std::size_t>(c)];
    const auto& resp = responses[static_cast<std::size_t>(c)];
    REQUIRE(resp.size() == req.size());
    for (std::size_t j = 0; j < req.size(); ++j) {
      REQUIRE(resp[j].seq() == req[j].seq());
      REQUIRE(resp[j].tag() == req[j].tag());
      REQUIRE(resp[j].has_prediction());
    }
  }
  const v1::ServerCounters counters = server.counters();
  const auto total = static_cast<std::uint64_t>(kClients) * static_cast<std::uint64_t>(n);
  CHECK(counters.requests() == total);
  CHECK(counters.responses() == total);
  CHECK(counters.errors_size() == 0);
  CHECK(counters.keys() == static_cast<std::uint64_t>(std::min(kKeys, kClients * n)));

  // The oracle: each key's sequence through its own in-process predictor.
  const ntk::SeriesConfig config = series_of(load_config());
  for (int c = 0; c < kClients; ++c) {
    std::vector<ntk::SeriesPredictor> oracles;
    for (int m = 0; m < kKeysPerClient; ++m) {
      const int k = c * kKeysPerClient + m;
      oracles.push_back(is_observation_key(k) ? ntk::SeriesPredictor(config, kFeatureDim)
                                              : ntk::SeriesPredictor(config));
    }
    const auto& req = requests[static_cast<std::size_t>(c)];
    const auto& resp = responses[static_cast<std::size_t>(c)];
    for (std::size_t j = 0; j < req.size(); ++j) {
      ntk::SeriesPredictor& oracle = oracles[j % kKeysPerClient];
      const v1::Request& r = req[j];
      ntk::Outcome o;
      if (r.has_observation()) {
        const v1::Observation& obs = r.observation();
        const Eigen::Map<const Eigen::VectorXd> x(obs.features().data(), obs.features_size());
        o = oracle.observe(r.seq(), obs.time_unix_nano(), x, obs.target());
      } else {
        o = oracle.observe(r.seq(), r.sensor_reading().time_unix_nano(),
                           r.sensor_reading().value());
      }
      CAPTURE(r.DebugString());
      check_prediction(resp[j].prediction(), o, oracle);
    }
  }
}
