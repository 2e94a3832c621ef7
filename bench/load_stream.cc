// ntk-load: the streaming server under load over loopback TCP.
//
// N client connections pipeline Observations (d features and a target) over K keys and
// report messages/s and the latency percentiles p50/p99/p999 (request written -> its
// response read). By default the server runs in this process (ntk::stream::Server on its
// own threads, models of budget M); --connect measures a running ntkd instead.
//
//   ntk-load [--connect HOST:PORT] [--server-threads 2] [--connections 8] [--keys 1000]
//            [--dim 7] [--budget 64] [--messages 2000000] [--window 512]
//            [--rate MSGS_PER_S] [--tick-us 100] [--warmup-fraction 0.2]
//            [--client-threads 1]
//            [--kernel SPEC] [--noise R | --race] [--model-only]
//
// Each key runs one model with the noise ratio R (default 0.01): the figures are those of
// one model update per message. --race gives keys the default noise-ratio race instead
// (up to four models per key during its first 2000 samples, see core/series.h).
//
// --model-only runs the same requests through in-process ntk::SeriesPredictors, one
// thread, no sockets: the cost of the models alone, to set the server's figures against.
//
// Two modes:
//   closed loop (default): each connection keeps up to --window requests in flight; the
//     throughput is the server's capacity. Latency counts from the write of a request's
//     batch.
//   open loop (--rate R): requests are due at a fixed total rate R (spread over the
//     connections; each is written when due, or as soon as the previous write is done)
//     whatever the answers do; latency counts from when a request was due,
//     so that a stalled server is not hidden by a stalled client (no coordinated
//     omission). In-flight requests are still capped at --window per connection. A
//     connection wakes at most every --tick-us microseconds and writes all that is due
//     in one batch; the wait counts in the latency.
//
// The request frames are encoded before the run (a pool per connection, cycled), without
// seq, so that the client spends its time on the socket, not on protobuf. Responses are
// counted by their length prefixes; one in 1024 is parsed and must be a Prediction, and
// the server's error counters must stay at zero.
//
// Exit status: 0 on success; 1 for errors in the responses or the server's counters, or a
// failed connection; 2 for a bad command line.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// clang-format off
#include <utility>  // first: Boost 1.74's asio/awaitable.hpp uses std::exchange
#include <boost/asio.hpp>
// clang-format on

#include "ntk/core/series.h"
#include "ntk/stream/client.h"
#include "ntk/stream/convert.h"
#include "ntk/stream/frame_codec.h"
#include "ntk/stream/server.h"

namespace {

namespace asio = boost::asio;
namespace v1 = ntk::v1;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using ErrorCode = boost::system::error_code;

struct Args {
  std::string connect;  // empty: in-process server
  unsigned server_threads = 2;
  int connections = 8;
  int keys = 1000;
  int dim = 7;
  int budget = 64;
  std::uint64_t messages = 2'000'000;
  int window = 512;
  double rate = 0.0;  // 0: closed loop
  int tick_us = 100;  // open loop: shortest wait between two batches of a connection
  double warmup_fraction = 0.2;
  unsigned client_threads = 1;
  int pool = 0;        // frames per connection; 0: 128 per key the connection feeds (>= 4096)
  std::string kernel;  // empty: the default (NTK, erf, depth 1)
  double noise = 0.01;
  bool race = false;  // the default noise-ratio race instead of one model with `noise`
  bool model_only = false;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "ntk-load: %s\n"
               "usage: ntk-load [--connect HOST:PORT] [--server-threads T] [--connections N]\n"
               "                [--keys K] [--dim D] [--budget M] [--messages TOTAL]\n"
               "                [--window W] [--rate MSGS_PER_S] [--tick-us T]\n"
               "                [--warmup-fraction F]\n"
               "                [--client-threads C] [--kernel SPEC] [--noise R | --race]\n"
               "                [--model-only]\n",
               why);
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--model-only") {
      a.model_only = true;
      continue;
    }
    if (flag == "--race") {
      a.race = true;
      continue;
    }
    if (i + 1 >= argc) usage(("missing value for " + flag).c_str());
    const std::string value = argv[++i];
    try {
      if (flag == "--connect") {
        a.connect = value;
      } else if (flag == "--server-threads") {
        a.server_threads = static_cast<unsigned>(std::stoul(value));
      } else if (flag == "--connections") {
        a.connections = std::stoi(value);
      } else if (flag == "--keys") {
        a.keys = std::stoi(value);
      } else if (flag == "--dim") {
        a.dim = std::stoi(value);
      } else if (flag == "--budget") {
        a.budget = std::stoi(value);
      } else if (flag == "--messages") {
        a.messages = std::stoull(value);
      } else if (flag == "--window") {
        a.window = std::stoi(value);
      } else if (flag == "--rate") {
        a.rate = std::stod(value);
      } else if (flag == "--tick-us") {
        a.tick_us = std::stoi(value);
      } else if (flag == "--warmup-fraction") {
        a.warmup_fraction = std::stod(value);
      } else if (flag == "--kernel") {
        a.kernel = value;
      } else if (flag == "--noise") {
        a.noise = std::stod(value);
      } else if (flag == "--client-threads") {
        a.client_threads = static_cast<unsigned>(std::stoul(value));
      } else {
        usage(("unknown flag " + flag).c_str());
      }
    } catch (const std::logic_error&) {
      usage(("bad value for " + flag + ": " + value).c_str());
    }
  }
  if (a.connections < 1 || a.keys < 1 || a.dim < 1 || a.budget < 1 || a.window < 1 ||
      a.messages < static_cast<std::uint64_t>(a.connections) || a.rate < 0 || a.tick_us < 1 ||
      a.warmup_fraction < 0 || a.warmup_fraction >= 1 || a.client_threads < 1 || !(a.noise > 0)) {
    usage("a value is out of range");
  }
  // After the checks: it divides by the number of connections.
  if (a.pool == 0) a.pool = std::max(4096, 128 * ((a.keys + a.connections - 1) / a.connections));
  return a;
}

// Per-connection pool of encoded request frames, contiguous.
struct Pool {
  std::string bytes;
  std::vector<std::size_t> offsets;  // frame i is bytes[offsets[i], offsets[i + 1])
  std::size_t frames() const { return offsets.size() - 1; }
};

Pool make_pool(const Args& a, int connection) {
  Pool pool;
  std::mt19937_64 rng(static_cast<std::uint64_t>(connection) * 7919 + 1);
  std::normal_distribution<double> normal(0.0, 1.0);
  v1::Request r;
  v1::Observation* o = r.mutable_observation();
  pool.offsets.push_back(0);
  for (int i = 0; i < a.pool; ++i) {
    const int key = (connection + a.connections * i) % a.keys;
    o->set_key("k" + std::to_string(key));
    o->set_time_unix_nano(1'700'000'000'000'000'000ull + static_cast<std::uint64_t>(i));
    o->clear_features();
    double s = 0.0;
    for (int j = 0; j < a.dim; ++j) {
      const double x = normal(rng);
      o->add_features(x);
      s += x;
    }
    o->set_target(std::sin(0.5 * s) + 0.1 * normal(rng));
    ntk::stream::encode_delimited(r, pool.bytes);
    pool.offsets.push_back(pool.bytes.size());
  }
  return pool;
}

// Latencies in nanoseconds of the measured responses, per connection (merged at the end).
struct Recorder {
  // 64 bits: an overloaded open-loop run queues requests for seconds, and 32 bits of
  // nanoseconds would cap every latency above 4.29 s at that value.
  std::vector<std::uint64_t> ns;
  void add(Clock::duration d) {
    const auto n = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
    ns.push_back(static_cast<std::uint64_t>(std::max<std::int64_t>(n, 0)));
  }
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(asio::io_context& io, const Args& args, int index, std::uint64_t total,
             std::uint64_t warmup, Clock::time_point start, std::atomic<int>& finished)
      : args_(args),
        socket_(asio::make_strand(io)),
        timer_(socket_.get_executor()),
        pool_(make_pool(args, index)),
        total_(total),
        warmup_(warmup),
        start_(start),
        finished_(finished),
        rate_(args.rate / args.connections),
        read_buffer_(256 << 10) {
    recorder_.ns.reserve(static_cast<std::size_t>(total - std::min(total, warmup)));
  }

  void connect(const tcp::endpoint& endpoint) {
    socket_.connect(endpoint);
    socket_.set_option(tcp::no_delay(true));
  }

  void run() {
    asio::dispatch(socket_.get_executor(), [self = shared_from_this()] {
      self->read();
      if (self->rate_ > 0) {
        self->tick();
      } else {
        self->send_more();
      }
    });
  }

  const Recorder& recorder() const { return recorder_; }
  std::uint64_t parsed_errors() const { return parsed_errors_; }
  Clock::time_point first_measured() const { return first_measured_; }
  Clock::time_point last_response() const { return last_response_; }
  std::uint64_t late_sends() const { return late_; }

 private:
  struct Batch {
    std::uint64_t first = 0;  // index of its first request
    std::uint64_t end = 0;    // one past its last
    Clock::time_point sent;
  };

  // Closed loop: fill the window.
  void send_more() {
    if (writing_ || sent_ >= total_) return;
    const std::uint64_t room = static_cast<std::uint64_t>(args_.window) - (sent_ - received_);
    // A full window waits for answers even when --window < 4 makes the refill threshold 0:
    // an empty batch would never leave batches_ (later latencies would count from it) and
    // its zero-byte write would call send_more() again at once.
    if (room == 0) return;
    if (room < static_cast<std::uint64_t>(args_.window) / 4 && sent_ != received_) return;
    write_batch(std::min(room, total_ - sent_), Clock::now());
  }

  // Open loop: send what is due by now (request i is due at start + i / rate).
  void send_due() {
    if (writing_ || sent_ >= total_) return;
    const auto now = Clock::now();
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const auto due = std::min(total_, static_cast<std::uint64_t>(elapsed * rate_) + 1);
    if (due <= sent_) return;
    const std::uint64_t room = static_cast<std::uint64_t>(args_.window) -
                               std::min<std::uint64_t>(args_.window, sent_ - received_);
    if (room < due - sent_) ++late_;
    if (room > 0) write_batch(std::min(room, due - sent_), now);
  }

  // Wakes when the next request is due (writes and answers also call send_due()).
  void tick() {
    send_due();
    if (sent_ >= total_) return;
    timer_.expires_at(
        std::max(due_time(sent_), Clock::now() + std::chrono::microseconds(args_.tick_us)));
    timer_.async_wait([self = shared_from_this()](ErrorCode ec) {
      if (!ec) self->tick();
    });
  }

  Clock::time_point due_time(std::uint64_t i) const {
    return start_ + std::chrono::duration_cast<Clock::duration>(
                        std::chrono::duration<double>(static_cast<double>(i) / rate_));
  }

  void write_batch(std::uint64_t n, Clock::time_point now) {
    // Contiguous frames of the pool from position next_ (no wrap inside one write).
    const std::size_t begin = next_;
    const std::size_t end = std::min<std::size_t>(pool_.frames(), begin + n);
    const std::uint64_t count = end - begin;
    batches_.push_back(Batch{sent_, sent_ + count, now});
    sent_ += count;
    next_ = end == pool_.frames() ? 0 : end;
    writing_ = true;
    asio::async_write(socket_,
                      asio::buffer(pool_.bytes.data() + pool_.offsets[begin],
                                   pool_.offsets[end] - pool_.offsets[begin]),
                      [self = shared_from_this()](ErrorCode ec, std::size_t) {
                        self->writing_ = false;
                        if (ec) return self->fail("write", ec);
                        if (self->rate_ == 0) {
                          self->send_more();
                        } else {
                          self->send_due();
                        }
                      });
  }

  void read() {
    socket_.async_read_some(asio::buffer(read_buffer_),
                            [self = shared_from_this()](ErrorCode ec, std::size_t n) {
                              if (ec) return self->fail("read", ec);
                              self->on_bytes(n);
                            });
  }

  // Counts the responses in the bytes read (length prefixes), records their latencies.
  void on_bytes(std::size_t n) {
    const auto now = Clock::now();
    std::size_t pos = 0;
    while (pos < n) {
      if (remaining_body_ > 0) {
        const std::size_t take = std::min<std::size_t>(remaining_body_, n - pos);
        if (sample_) sample_bytes_.append(reinterpret_cast<const char*>(&read_buffer_[pos]), take);
        remaining_body_ -= take;
        pos += take;
        if (remaining_body_ == 0) complete_response(now);
        continue;
      }
      const std::uint8_t b = read_buffer_[pos++];
      length_ |= static_cast<std::uint64_t>(b & 0x7f) << (7 * varint_bytes_);
      ++varint_bytes_;
      if (b & 0x80) continue;
      remaining_body_ = length_;
      length_ = 0;
      varint_bytes_ = 0;
      sample_ = received_ % 1024 == 0;
      sample_bytes_.clear();
      if (remaining_body_ == 0) complete_response(now);
    }
    if (received_ < total_) {
      read();
    } else {
      finished_.fetch_add(1);
      ErrorCode ignored;
      timer_.cancel();
      socket_.shutdown(tcp::socket::shutdown_both, ignored);
    }
    if (rate_ == 0) {
      send_more();
    } else {
      send_due();
    }
  }

  void complete_response(Clock::time_point now) {
    if (sample_) {
      v1::Response r;
      if (!r.ParseFromString(sample_bytes_) || !r.has_prediction()) ++parsed_errors_;
    }
    const Batch& b = batches_.front();
    if (received_ >= warmup_) {
      if (received_ == warmup_) first_measured_ = now;
      recorder_.add(now - (rate_ > 0 ? due_time(received_) : b.sent));
    }
    ++received_;
    last_response_ = now;
    if (received_ == b.end) batches_.pop_front();
  }

  void fail(const char* what, ErrorCode ec) {
    std::fprintf(stderr, "ntk-load: %s: %s\n", what, ec.message().c_str());
    std::exit(1);
  }

  const Args& args_;
  tcp::socket socket_;
  asio::steady_timer timer_;
  Pool pool_;
  std::uint64_t total_, warmup_;
  Clock::time_point start_;
  std::atomic<int>& finished_;
  double rate_;  // per connection; 0: closed loop
  std::vector<std::uint8_t> read_buffer_;

  std::uint64_t sent_ = 0, received_ = 0;
  std::size_t next_ = 0;
  bool writing_ = false;
  std::deque<Batch> batches_;
  // Response framing state.
  std::uint64_t length_ = 0, remaining_body_ = 0;
  int varint_bytes_ = 0;
  bool sample_ = false;
  std::string sample_bytes_;
  std::uint64_t parsed_errors_ = 0;
  std::uint64_t late_ = 0;
  Recorder recorder_;
  Clock::time_point first_measured_, last_response_;
};

double percentile(const std::vector<std::uint64_t>& sorted, double p) {
  if (sorted.empty()) return std::nan("");
  const auto i = static_cast<std::size_t>(
      std::min<double>(static_cast<double>(sorted.size() - 1),
                       std::ceil(p * static_cast<double>(sorted.size())) - 1));
  return static_cast<double>(sorted[i]) / 1000.0;  // microseconds
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

v1::KeyConfig key_config(const Args& a) {
  v1::KeyConfig c;
  c.mutable_series()->mutable_model()->set_budget(a.budget);
  if (!a.kernel.empty()) c.mutable_series()->mutable_model()->mutable_kernel()->set_spec(a.kernel);
  // A fixed ratio (model.noise_variance without candidates) turns the race off.
  if (!a.race) c.mutable_series()->mutable_model()->set_noise_variance(a.noise);
  return c;
}

// The requests of the run through in-process predictors, in the order one connection
// after the other (per key the same order as the server sees them).
int model_only(const Args& args) {
  const ntk::SeriesConfig config = ntk::stream::resolve_key_config(key_config(args)).series;
  std::vector<std::optional<ntk::SeriesPredictor>> models(static_cast<std::size_t>(args.keys));
  const std::uint64_t per_connection = args.messages / static_cast<std::uint64_t>(args.connections);
  std::vector<Pool> pools;
  for (int c = 0; c < args.connections; ++c) pools.push_back(make_pool(args, c));
  const auto start = Clock::now();
  const double cpu0 = cpu_seconds();
  std::uint64_t done = 0;
  v1::Request r;
  double checksum = 0.0;
  for (std::uint64_t i = 0; i < per_connection; ++i) {
    for (int c = 0; c < args.connections; ++c) {
      const Pool& pool = pools[static_cast<std::size_t>(c)];
      const std::size_t f = i % pool.frames();
      ntk::stream::FrameDecoder decoder;
      decoder.feed(std::span<const std::uint8_t>(
          reinterpret_cast<const std::uint8_t*>(pool.bytes.data() + pool.offsets[f]),
          pool.offsets[f + 1] - pool.offsets[f]));
      const ntk::stream::FrameResult frame = decoder.next();
      r.ParseFromArray(frame.frame.data(), static_cast<int>(frame.frame.size()));
      const v1::Observation& o = r.observation();
      const int key = std::stoi(o.key().substr(1));
      auto& m = models[static_cast<std::size_t>(key)];
      if (!m) m.emplace(config, o.features_size());
      const Eigen::Map<const Eigen::VectorXd> x(o.features().data(), o.features_size());
      const ntk::Outcome out = m->observe(std::nullopt, o.time_unix_nano(), x, o.target());
      if (out.has_prediction) checksum += out.mean;
      ++done;
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const double cpu = cpu_seconds() - cpu0;
  std::printf(
      "model only: %llu observations in %.3f s wall, %.3f s cpu: %.2f us cpu each, "
      "%.0f per cpu-second (checksum %.6g)\n",
      static_cast<unsigned long long>(done), seconds, cpu, 1e6 * cpu / static_cast<double>(done),
      static_cast<double>(done) / cpu, checksum);
  return 0;
}

int run(const Args& args) {
  if (args.model_only) return model_only(args);

  std::unique_ptr<ntk::stream::Server> server;
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;
  if (args.connect.empty()) {
    ntk::stream::ServerOptions options;
    options.threads = args.server_threads;
    options.defaults = key_config(args);
    options.max_keys = static_cast<std::size_t>(args.keys) + 16;
    options.max_connections = std::max<std::size_t>(
        options.max_connections, static_cast<std::size_t>(args.connections) + 16);
    server = std::make_unique<ntk::stream::Server>(options);
    server->start();
    port = server->port();
  } else {
    const std::size_t colon = args.connect.rfind(':');
    if (colon == std::string::npos) usage("--connect needs HOST:PORT");
    host = args.connect.substr(0, colon);
    const std::string text = args.connect.substr(colon + 1);
    std::size_t used = 0;
    unsigned long number = 0;
    try {
      number = std::stoul(text, &used);
    } catch (const std::logic_error&) {
      used = 0;
    }
    if (used == 0 || used != text.size() || number < 1 || number > 65535) {
      usage("--connect needs HOST:PORT with a port in 1..65535");
    }
    port = static_cast<std::uint16_t>(number);
  }
  // A running server's error counters cover its whole life and every client: the run's
  // errors are the increase.
  const auto remote_errors = [&] {
    ntk::stream::Client client(host, port);
    v1::Request stats;
    stats.mutable_control()->mutable_stats();
    const v1::Response r = client.call(stats);
    std::uint64_t n = 0;
    for (const auto& e : r.stats().server().errors()) n += e.count();
    return n;
  };
  const std::uint64_t remote_errors_before = server ? 0 : remote_errors();

  asio::io_context io;
  tcp::resolver resolver(io);
  const tcp::endpoint endpoint = *resolver.resolve(host, std::to_string(port)).begin();
  const std::uint64_t per_connection = args.messages / static_cast<std::uint64_t>(args.connections);
  const auto warmup =
      static_cast<std::uint64_t>(args.warmup_fraction * static_cast<double>(per_connection));
  std::atomic<int> finished{0};
  std::vector<std::shared_ptr<Connection>> connections;
  // --budget, --kernel, --noise and --race configure the in-process server only; a running
  // server uses its own key configuration.
  const std::string models =
      args.connect.empty()
          ? "budget " + std::to_string(args.budget) + ", noise " +
                (args.race ? std::string("raced") : std::to_string(args.noise)) +
                ", in-process server, " + std::to_string(args.server_threads) + " threads"
          : "the models the server configures, server " + args.connect;
  std::printf("ntk-load: %d connections x %llu observations (d=%d) over %d keys, %s\n",
              args.connections, static_cast<unsigned long long>(per_connection), args.dim,
              args.keys, models.c_str());
  std::printf("mode: %s, window %d per connection\n",
              args.rate > 0 ? ("open loop at " + std::to_string(static_cast<long long>(args.rate)) +
                               " msgs/s")
                                  .c_str()
                            : "closed loop",
              args.window);
  std::fflush(stdout);

  const auto start = Clock::now() + std::chrono::milliseconds(50);
  for (int c = 0; c < args.connections; ++c) {
    connections.push_back(
        std::make_shared<Connection>(io, args, c, per_connection, warmup, start, finished));
    connections.back()->connect(endpoint);
  }
  const double cpu0 = cpu_seconds();
  std::this_thread::sleep_until(start);
  for (auto& c : connections) c->run();
  std::vector<std::thread> threads;
  for (unsigned t = 1; t < args.client_threads; ++t) threads.emplace_back([&] { io.run(); });
  io.run();
  for (auto& t : threads) t.join();
  const double cpu = cpu_seconds() - cpu0;

  // Throughput over the measured part: from the first measured response of any
  // connection to the last response of all.
  std::vector<std::uint64_t> all;
  Clock::time_point first = Clock::time_point::max(), last = Clock::time_point::min();
  std::uint64_t parsed_errors = 0, late = 0;
  for (const auto& c : connections) {
    all.insert(all.end(), c->recorder().ns.begin(), c->recorder().ns.end());
    first = std::min(first, c->first_measured());
    last = std::max(last, c->last_response());
    parsed_errors += c->parsed_errors();
    late += c->late_sends();
  }
  std::sort(all.begin(), all.end());
  // n responses from the first to the last span n - 1 intervals.
  const double seconds = std::chrono::duration<double>(last - first).count();
  const double rate = all.size() > 1 ? static_cast<double>(all.size() - 1) / seconds : 0.0;
  const double total_seconds = std::chrono::duration<double>(last - start).count();

  std::uint64_t server_errors = 0;
  if (server) {
    const v1::ServerCounters counters = server->counters();
    for (const auto& e : counters.errors()) server_errors += e.count();
    v1::Control::GetStats scope;
    scope.set_key_prefix("");
    const v1::Stats stats = server->stats(scope);
    double dictionary = 0.0;
    for (const auto& k : stats.keys()) dictionary += k.dictionary_size();
    std::printf("keys: %d, mean dictionary size %.1f (budget %d)\n", stats.keys_size(),
                dictionary / std::max(1, stats.keys_size()), args.budget);
    server->stop();
  } else {
    server_errors = remote_errors() - remote_errors_before;
  }

  std::printf("measured: %zu responses in %.3f s (after %llu warm-up per connection)\n", all.size(),
              seconds, static_cast<unsigned long long>(warmup));
  std::printf("throughput: %.0f messages/s\n", rate);
  std::printf("latency us: p50 %.1f  p99 %.1f  p999 %.1f  max %.1f\n", percentile(all, 0.50),
              percentile(all, 0.99), percentile(all, 0.999), percentile(all, 1.0));
  std::printf(
      "cpu: %.2f s for %.2f s wall (%.2f cores, %.2f us cpu per message, this process)\n", cpu,
      total_seconds, cpu / total_seconds,
      1e6 * cpu /
          static_cast<double>(per_connection * static_cast<std::uint64_t>(args.connections)));
  if (args.rate > 0)
    std::printf("times the window was full (requests sent late): %llu\n",
                static_cast<unsigned long long>(late));
  std::printf("errors: %llu server, %llu in sampled responses\n",
              static_cast<unsigned long long>(server_errors),
              static_cast<unsigned long long>(parsed_errors));
  // The sampled responses' errors are among the server's (it counts every error it
  // answers); they are counted apart as a check of the server's counters.
  std::printf("RESULT msgs_per_s=%.0f p50_us=%.1f p99_us=%.1f p999_us=%.1f errors=%llu\n", rate,
              percentile(all, 0.50), percentile(all, 0.99), percentile(all, 0.999),
              static_cast<unsigned long long>(std::max(server_errors, parsed_errors)));
  return server_errors + parsed_errors == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  // A refused connection or a failed stats call throws: say so and exit 1 rather than
  // terminate with an abort.
  try {
    return run(args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ntk-load: %s\n", e.what());
    return 1;
  }
}
