// ntk-replay against ntkd, and session recordings. See remote.h.
#include "remote.h"

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <stdexcept>
#include <thread>
#include <tuple>

#include "ntk/stream/client.h"
#include "ntk/stream/convert.h"
#include "ntk/stream/frame_codec.h"

namespace ntk::replay {
namespace {

using Clock = std::chrono::steady_clock;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The session's requests, as sent, to a recording file (if one was asked for).
class Recorder {
 public:
  explicit Recorder(const std::optional<std::string>& path) {
    if (!path) return;
    out_.emplace(*path, std::ios::binary | std::ios::trunc);
    if (!*out_) throw std::runtime_error(*path + ": cannot write the recording");
    path_ = *path;
  }
  void add(const v1::Request& request) {
    if (!out_) return;
    buffer_.clear();
    stream::encode_delimited(request, buffer_);
    out_->write(buffer_.data(), static_cast<std::streamsize>(buffer_.size()));
  }
  void close() {
    if (!out_) return;
    out_->close();
    if (!*out_) throw std::runtime_error(path_ + ": write failed");
  }

 private:
  std::optional<std::ofstream> out_;
  std::string path_;
  std::string buffer_;
};

// One connection; every request also goes to the recorder.
class Session {
 public:
  Session(const ConnectOptions& o, Recorder& recorder)
      : client_(o.host, o.port, stream::ClientOptions{.timeout = std::chrono::seconds(60)}),
        recorder_(recorder) {}
  void send(const v1::Request& r) {
    recorder_.add(r);
    client_.send(r);
  }
  v1::Response receive() { return client_.receive(); }
  v1::Response call(const v1::Request& r) {
    send(r);
    return receive();
  }
  std::size_t pending() const { return client_.pending(); }

 private:
  stream::Client client_;
  Recorder& recorder_;
};

std::string error_text(const v1::Error& e) {
  return std::string(v1::ErrorCode_Name(e.code())) + ": " + e.message();
}

// The Outcome that core/series returned inside the daemon, from its Prediction.
Outcome to_outcome(const v1::Prediction& p) {
  Outcome o;
  switch (p.status()) {
    case v1::Prediction::STATUS_SCORED:
      o.status = OutcomeStatus::kScored;
      break;
    case v1::Prediction::STATUS_WARMING_UP:
      o.status = OutcomeStatus::kWarmingUp;
      break;
    case v1::Prediction::STATUS_MISSING:
      o.status = OutcomeStatus::kMissing;
      break;
    case v1::Prediction::STATUS_UNLABELLED:
      o.status = OutcomeStatus::kUnlabelled;
      break;
    default:
      throw std::runtime_error("ntkd sent a prediction with an unknown status " +
                               std::to_string(p.status()));
  }
  o.value = p.has_value() ? p.value() : kNaN;
  o.imputed = p.has_imputed() ? p.imputed() : kNaN;
  o.has_prediction = p.has_mean();
  o.mean = p.has_mean() ? p.mean() : kNaN;
  // variance = sd * sd in the daemon; the square root gives sd back exactly.
  o.sd = p.has_variance() ? std::sqrt(p.variance()) : kNaN;
  o.z = p.has_z() ? p.z() : kNaN;
  o.anomaly = p.anomaly();
  o.excluded = p.excluded();
  o.learned = p.learned();
  o.gap = p.gap();
  return o;
}

// A Response to one value of one stream.
Outcome outcome_of(const v1::Response& r, double sent) {
  if (r.has_prediction()) return to_outcome(r.prediction());
  if (r.has_error()) {
    Outcome o;
    o.value = sent;
    o.imputed = o.mean = o.sd = o.z = kNaN;
    if (r.error().code() == v1::ERROR_CODE_DUPLICATE_SEQ) {
      o.status = OutcomeStatus::kDuplicate;
      return o;
    }
    if (r.error().code() == v1::ERROR_CODE_OUT_OF_ORDER_SEQ) {
      o.status = OutcomeStatus::kOutOfOrder;
      return o;
    }
    throw std::runtime_error("ntkd refused the value of key '" + r.key() + "' seq " +
                             std::to_string(r.seq()) + ": " + error_text(r.error()));
  }
  throw std::runtime_error("ntkd answered a value of key '" + r.key() +
                           "' with something other than a prediction or an error");
}

StreamSummary stream_summary(Session& session, const std::string& key, const std::string& name) {
  v1::Request r;
  r.mutable_control()->mutable_stats()->set_key(key);
  const v1::Response resp = session.call(r);
  if (resp.has_error()) {
    throw std::runtime_error("ntkd: stats of key '" + key + "': " + error_text(resp.error()));
  }
  if (!resp.has_stats() || resp.stats().keys_size() != 1) {
    throw std::runtime_error("ntkd: no stats for key '" + key + "'");
  }
  const v1::KeyStats& k = resp.stats().keys(0);
  return {name, stream::from_proto(k.counters()), stream::from_proto(k.score()), k.noise_variance(),
          static_cast<int>(k.racing())};
}

// Sleeps until the data time `t_ns` is due at `speed` x the recorded pace.
class Pacer {
 public:
  explicit Pacer(double speed) : speed_(speed) {}
  bool active() const { return speed_ > 0.0; }
  void wait(std::int64_t t_ns) {
    if (!active()) return;
    if (!started_) {
      started_ = true;
      start_ = Clock::now();
      first_ = t_ns;
      return;
    }
    const double offset_s = static_cast<double>(t_ns - first_) * 1e-9 / speed_;
    if (offset_s <= 0) return;
    std::this_thread::sleep_until(start_ + std::chrono::duration_cast<Clock::duration>(
                                               std::chrono::duration<double>(offset_s)));
  }

 private:
  double speed_;
  bool started_ = false;
  Clock::time_point start_{};
  std::int64_t first_ = 0;
};

std::string seconds_text(std::uint64_t ns) {
  std::string s = std::to_string(ns / 1000000000u);
  const std::uint64_t frac = ns % 1000000000u;
  if (frac != 0) {
    std::string f = std::to_string(frac);
    f.insert(0, 9 - f.size(), '0');
    while (f.back() == '0') f.pop_back();
    s += "." + f;
  }
  return s;
}

}  // namespace

std::pair<std::string, std::uint16_t> parse_connect_address(const std::string& text) {
  std::string host, port;
  if (!text.empty() && text[0] == '[') {
    const auto close = text.find(']');
    if (close != std::string::npos && close + 1 < text.size() && text[close + 1] == ':') {
      host = text.substr(1, close - 1);
      port = text.substr(close + 2);
    }
  } else if (const auto colon = text.rfind(':');
             colon != std::string::npos && text.find(':') == colon) {
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (host.empty() || port.empty() || ec != std::errc() || end != port.data() + port.size() ||
      value == 0 || value > 65535) {
    throw std::invalid_argument("expected HOST:PORT with a port in [1, 65535], got '" + text + "'");
  }
  return {host, static_cast<std::uint16_t>(value)};
}

std::string default_stream_key(const std::string& input_path) {
  return std::filesystem::path(input_path).stem().string();
}

bool is_recording(const std::string& input_path) {
  return std::filesystem::path(input_path).extension() == ".pb";
}

ReplaySummary replay_connect(SeriesCsvReader& reader, const SeriesConfig& config,
                             const ConnectOptions& options, const OutcomeCallback& on_outcome,
                             ProgressBar* progress) {
  const Clock::time_point start = Clock::now();
  const std::vector<std::string>& names = reader.columns().values;
  std::vector<std::string> keys;
  for (const std::string& name : names) {
    keys.push_back(names.size() == 1 ? options.key : options.key + "/" + name);
  }
  Recorder recorder(options.record_path);
  Session session(options, recorder);

  // Each key gets the replay's configuration first (and loses any state it had), so that
  // the daemon runs exactly the predictor --offline would.
  v1::KeyConfig key_config;
  *key_config.mutable_series() = stream::to_proto(config);
  for (const std::string& key : keys) {
    v1::Request r;
    auto* c = r.mutable_control()->mutable_configure();
    c->set_key(key);
    *c->mutable_config() = key_config;
    const v1::Response resp = session.call(r);
    if (!resp.has_ack()) {
      throw std::runtime_error("ntkd refused the configuration of key '" + key +
                               "': " + (resp.has_error() ? error_text(resp.error()) : "no Ack"));
    }
  }

  // Values are pipelined: at most `window` in flight, answers matched in order.
  struct InFlight {
    std::shared_ptr<const CsvRow> row;
    std::size_t stream;
    std::uint64_t seq;
  };
  std::deque<InFlight> in_flight;
  auto handle_one = [&] {
    const v1::Response resp = session.receive();
    const InFlight f = in_flight.front();
    in_flight.pop_front();
    if (resp.seq() != f.seq || resp.key() != keys[f.stream]) {
      throw std::runtime_error("ntkd answered key '" + resp.key() + "' seq " +
                               std::to_string(resp.seq()) + " where key '" + keys[f.stream] +
                               "' seq " + std::to_string(f.seq) + " was expected");
    }
    const Outcome o = outcome_of(resp, f.row->values[f.stream]);
    if (on_outcome) on_outcome(*f.row, f.stream, o);
  };

  ReplaySummary summary;
  summary.input = reader.path();
  Pacer pacer(options.speed);
  const std::size_t window = std::max<std::size_t>(1, options.window);
  CsvRow row;
  while (reader.next(row)) {
    if (row.time_ns < 0) {
      throw InputError(reader.path(), row.line,
                       "times before 1970 cannot be sent to ntkd (time_unix_nano is unsigned); "
                       "use --offline");
    }
    if (pacer.active()) {
      while (!in_flight.empty()) handle_one();  // answers first, then wait for the time
      pacer.wait(row.time_ns);
    }
    auto shared = std::make_shared<const CsvRow>(row);
    const std::uint64_t seq = row.seq.value_or(row.index);
    for (std::size_t k = 0; k < keys.size(); ++k) {
      v1::Request r;
      r.set_seq(seq);
      auto* s = r.mutable_sensor_reading();
      s->set_sensor_id(keys[k]);
      s->set_time_unix_nano(static_cast<std::uint64_t>(row.time_ns));
      // A missing cell is an absent value (the wire never carries NaN); core/series treats
      // NaN, infinities and absent values alike.
      if (std::isfinite(row.values[k])) s->set_value(row.values[k]);
      session.send(r);
      in_flight.push_back({shared, k, seq});
      while (in_flight.size() >= window) handle_one();
    }
    ++summary.rows;
    if (progress) progress->update(reader.bytes_read(), reader.file_size(), summary.rows);
  }
  while (!in_flight.empty()) handle_one();
  if (progress) progress->finish();
  if (summary.rows == 0) throw InputError(reader.path(), 1, "no data rows after the header");
  summary.time_reversals = reader.time_reversals();
  summary.first_time_reversal_line = reader.first_time_reversal_line();
  summary.predictor_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (std::size_t k = 0; k < keys.size(); ++k) {
    summary.streams.push_back(stream_summary(session, keys[k], names[k]));
  }
  recorder.close();
  summary.wall_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return summary;
}

ReplaySummary replay_recording(const std::string& path, const ConnectOptions& options,
                               std::vector<std::string>& streams, const OutcomeCallback& on_outcome,
                               ProgressBar* progress) {
  const Clock::time_point start = Clock::now();
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path, "cannot open the recording");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

  Recorder recorder(options.record_path);
  Session session(options, recorder);
  std::map<std::string, std::size_t> stream_index;
  streams.clear();
  Pacer pacer(options.speed);
  ReplaySummary summary;
  summary.input = path;

  stream::FrameDecoder decoder(stream::kMaxFrameBytesLimit);
  decoder.feed({reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()});
  std::deque<std::shared_ptr<const CsvRow>> in_flight;
  auto index_of = [&](const std::string& key) {
    const auto [it, inserted] = stream_index.emplace(key, streams.size());
    if (inserted) streams.push_back(key);
    return it->second;
  };
  auto handle = [&](const v1::Response& resp, const CsvRow& row) {
    if (resp.has_ack() || resp.has_stats()) return;
    if (resp.has_channels()) {
      for (const auto& ch : resp.channels().channels()) {
        if (ch.has_error()) {
          throw std::runtime_error("ntkd refused channel '" + ch.key() +
                                   "': " + error_text(ch.error()));
        }
        if (on_outcome) on_outcome(row, index_of(ch.key()), to_outcome(ch.prediction()));
      }
      return;
    }
    const Outcome o = outcome_of(resp, kNaN);
    if (on_outcome) on_outcome(row, index_of(resp.key()), o);
  };

  v1::Request request;
  std::uint64_t index = 0;
  for (;;) {
    const stream::FrameResult f = decoder.next();
    if (f.status == stream::FrameStatus::kNeedMore) break;
    if (f.status == stream::FrameStatus::kError) {
      throw InputError(
          path, "not a delimited ntk.v1.Request recording (frame " + std::to_string(index) + ")");
    }
    if (!request.ParseFromArray(f.frame.data(), static_cast<int>(f.frame.size()))) {
      throw InputError(path, "frame " + std::to_string(index) + " is not an ntk.v1.Request");
    }
    std::uint64_t time = 0;
    if (request.has_sensor_reading()) time = request.sensor_reading().time_unix_nano();
    if (request.has_market_tick()) time = request.market_tick().time_unix_nano();
    if (request.has_observation()) time = request.observation().time_unix_nano();
    auto row = std::make_shared<CsvRow>();
    row->index = index;
    row->line = index + 1;
    row->time_text = seconds_text(time);
    row->time_ns = static_cast<std::int64_t>(time);
    if (request.has_sensor_reading() && request.sensor_reading().has_value()) {
      row->values.push_back(request.sensor_reading().value());
    }
    if (pacer.active() && !request.has_control()) {
      while (!in_flight.empty()) {
        handle(session.receive(), *in_flight.front());
        in_flight.pop_front();
      }
      pacer.wait(static_cast<std::int64_t>(time));
    }
    session.send(request);
    in_flight.push_back(row);
    while (in_flight.size() >= std::max<std::size_t>(1, options.window)) {
      handle(session.receive(), *in_flight.front());
      in_flight.pop_front();
    }
    ++index;
    if (progress) progress->update(bytes.size() - decoder.buffered_bytes(), bytes.size(), index);
  }
  if (decoder.finish() != stream::StreamEnd::kClean) {
    throw InputError(path, "the recording ends inside a frame (truncated)");
  }
  while (!in_flight.empty()) {
    handle(session.receive(), *in_flight.front());
    in_flight.pop_front();
  }
  if (progress) progress->finish();
  summary.rows = index;
  summary.predictor_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (const std::string& key : streams)
    summary.streams.push_back(stream_summary(session, key, key));
  recorder.close();
  summary.wall_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return summary;
}

ConnectOptions connect_options(const ReplayOptions& options) {
  ConnectOptions c;
  try {
    std::tie(c.host, c.port) = parse_connect_address(*options.connect);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("--connect: ") + e.what());
  }
  c.key = options.key.value_or(default_stream_key(options.input));
  c.speed = options.speed;
  c.record_path = options.record_path;
  return c;
}

int run_recording(const ReplayOptions& options) {
  // The streams are known only once the recording has been read: outcomes are kept for
  // the plot, and the predictions CSV is written as they come.
  std::optional<PredictionCsvWriter> predictions;
  if (options.predictions_path) predictions.emplace(*options.predictions_path);
  struct Kept {
    CsvRow row;
    std::size_t stream;
    Outcome outcome;
  };
  std::vector<Kept> kept;
  std::vector<std::string> streams;
  ProgressBar progress(options.progress);
  const ReplaySummary summary = replay_recording(
      options.input, connect_options(options), streams,
      [&](const CsvRow& row, std::size_t stream, const Outcome& outcome) {
        if (predictions) predictions->write(row, streams[stream], outcome);
        if (options.plot_path && outcome.status == OutcomeStatus::kScored) {
          kept.push_back({row, stream, outcome});
        }
      },
      &progress);
  if (predictions) predictions->close();
  if (options.plot_path) {
    PlotData plot(streams, TimeKind::kNumber);
    for (const Kept& k : kept) plot.add(k.row, k.stream, k.outcome);
    plot.render(*options.plot_path, options.input);
  }
  const std::string json = summary_json(summary, options);
  if (options.summary_path) {
    if (*options.summary_path == "-") {
      std::fputs(json.c_str(), stdout);
      return 0;
    }
    std::ofstream out(*options.summary_path);
    out << json;
    out.close();
    if (!out) throw std::runtime_error(*options.summary_path + ": cannot write the summary");
  }
  const PrequentialScore all = summary.overall();
  std::printf("%s: %llu requests, %llu predictions scored, %llu anomalies, mse=%.6g\n",
              summary.input.c_str(), static_cast<unsigned long long>(summary.rows),
              static_cast<unsigned long long>(all.n),
              static_cast<unsigned long long>(summary.anomalies()), all.mse());
  return 0;
}

}  // namespace ntk::replay
