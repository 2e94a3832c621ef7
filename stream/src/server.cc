// The Asio server: acceptors, sessions, UDP ingest, shard actors, drained shutdown.
//
// Everything runs on one io_context served by `threads` threads; every actor has a strand:
//   acceptor   accepts, registers a Session, accepts again (transient errors: retry later)
//   Session    one TCP connection: read -> frames -> slots -> shards; answers -> write
//   UdpPort    one UDP socket: datagram -> slot -> shard; answer -> reply datagram (opt.)
//   ShardActor a Shard (keyspace.h) of predictors; runs batches of slots, posts them back
//   control    Control.Snapshot's writer (serialized)
//
// SLOTS. An owner (Session or UdpPort) keeps a fixed array of slots, each holding one
// decoded Request and later its serialized Response. A slot given to a shard is touched
// only by that shard until the shard posts its id back; a request that feeds several
// shards (a multi-channel reading, a Stats or Snapshot over all keys) has Parts: each
// shard fills its own part and the one that finishes last completes the slot.
//
// SESSION STATE (one strand; n = next slot number to assign, h = oldest unwritten,
// w = end of the write in flight; slot number k lives in slots_[k % capacity]):
//
//     h <= w <= n,  n - h <= capacity (= max_queued_responses)
//     [h, w): being written   [w, n): at shards or answered, waiting for the write
//
//   reading --(n - h == capacity)--> paused --(a write completes)--> reading
//   reading --(EOF / framing error / drain)--> flushing --(h == n)--> lingering --> closed
//   any --(socket error, timeout, drain deadline)--> closed
#include "ntk/stream/server.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio.hpp>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <latch>
#include <limits>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>

#include "keyspace.h"

namespace ntk::stream {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using udp = asio::ip::udp;
using Clock = std::chrono::steady_clock;
using ErrorCode = boost::system::error_code;
using Strand = asio::strand<asio::io_context::executor_type>;

std::string_view to_string(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------
// Options

namespace {

struct HostPort {
  std::string host;
  std::uint16_t port = 0;
};

// "host:port", "[v6]:port".
HostPort parse_address(const std::string& text, const std::string& field) {
  const auto bad = [&](const std::string& why) {
    return std::invalid_argument(field + " '" + text + "': " + why);
  };
  const std::size_t colon = text.rfind(':');
  if (colon == std::string::npos) throw bad("expected host:port");
  std::string host = text.substr(0, colon);
  const std::string port = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) throw bad("empty host");
  if (port.empty() || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    throw bad("the port must be a number in [0, 65535]");
  }
  const unsigned long p = std::stoul(port);
  if (p > 65535) throw bad("the port must be a number in [0, 65535]");
  return HostPort{host, static_cast<std::uint16_t>(p)};
}

}  // namespace

std::size_t memory_available() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGE_SIZE);
  std::size_t bytes = pages > 0 && page > 0
                          ? static_cast<std::size_t>(pages) * static_cast<std::size_t>(page)
                          : std::size_t{16} << 30;  // unknown: 16 GiB
  // The cgroup's limit, from the process's line of /proc/self/cgroup: v2 "0::/path" has it
  // in /sys/fs/cgroup/path/memory.max ("max" for none), v1 "N:...memory...:/path" in
  // /sys/fs/cgroup/memory/path/memory.limit_in_bytes (or at that hierarchy's root, where a
  // container sees its own cgroup).
  const auto limit_in = [&](const std::string& file) {
    std::ifstream in(file);
    unsigned long long limit = 0;
    if (in >> limit && limit > 0) bytes = std::min<std::size_t>(bytes, limit);
  };
  std::ifstream cgroup("/proc/self/cgroup");
  std::string line;
  while (std::getline(cgroup, line)) {
    const std::size_t a = line.find(':');
    const std::size_t b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    const std::string path = line.substr(b + 1);
    if (line.rfind("0::", 0) == 0) {
      limit_in("/sys/fs/cgroup" + path + "/memory.max");
    } else if (("," + controllers + ",").find(",memory,") != std::string::npos) {
      limit_in("/sys/fs/cgroup/memory" + path + "/memory.limit_in_bytes");
      limit_in("/sys/fs/cgroup/memory/memory.limit_in_bytes");
    }
  }
  return bytes;
}

std::size_t default_max_model_bytes() { return std::max(kMinModelBytes, memory_available() / 4); }

void ServerOptions::validate() const {
  if (tcp_listen.empty()) throw std::invalid_argument("tcp_listen: at least one address needed");
  for (std::size_t i = 0; i < tcp_listen.size(); ++i) {
    parse_address(tcp_listen[i], "tcp_listen[" + std::to_string(i) + "]");
  }
  for (std::size_t i = 0; i < udp_listen.size(); ++i) {
    parse_address(udp_listen[i], "udp_listen[" + std::to_string(i) + "]");
  }
  const auto range = [](const char* field, std::size_t v, std::size_t lo, std::size_t hi) {
    if (v < lo || v > hi) {
      throw std::invalid_argument(std::string(field) + " must be in [" + std::to_string(lo) + ", " +
                                  std::to_string(hi) + "], got " + std::to_string(v));
    }
  };
  range("threads", threads, 0, 1024);
  range("shards", shards, 0, 65536);
  // Below 64 bytes hardly a SensorReading fits: every request would be FRAME_TOO_LARGE.
  range("max_frame_bytes", max_frame_bytes, 64, kMaxFrameBytesLimit);
  range("max_keys", max_keys, 1, std::numeric_limits<std::uint32_t>::max());
  range("max_queued_responses", max_queued_responses, 1, 1 << 20);
  range("max_connections", max_connections, 1, 1 << 20);
  range("read_buffer_bytes", read_buffer_bytes, 512, 64 << 20);
  const auto nonneg = [](const char* field, std::chrono::milliseconds v) {
    if (v.count() < 0) {
      throw std::invalid_argument(std::string(field) + " must be >= 0 ms, got " +
                                  std::to_string(v.count()));
    }
  };
  nonneg("idle_timeout", idle_timeout);
  nonneg("read_timeout", read_timeout);
  nonneg("write_timeout", write_timeout);
  nonneg("drain_timeout", drain_timeout);
  range("max_model_bytes", max_model_bytes, kMinModelBytes,
        std::numeric_limits<std::size_t>::max());
  detail::ConfigTable check(defaults, overrides, max_model_bytes);
}

ServerOptions options_from_config(const v1::ServerConfig& config) {
  ServerOptions o;
  if (config.tcp_listen_size() > 0) {
    o.tcp_listen.assign(config.tcp_listen().begin(), config.tcp_listen().end());
  } else {
    o.tcp_listen = {"127.0.0.1:7420"};
  }
  o.udp_listen.assign(config.udp_listen().begin(), config.udp_listen().end());
  if (config.has_threads()) {
    if (config.threads() < 1) throw std::invalid_argument("threads must be >= 1, got 0");
    o.threads = config.threads();
  }
  o.defaults = config.defaults();
  o.overrides.assign(config.overrides().begin(), config.overrides().end());
  if (config.has_max_frame_bytes()) o.max_frame_bytes = config.max_frame_bytes();
  if (config.has_max_keys()) o.max_keys = config.max_keys();
  if (config.has_max_queued_responses()) o.max_queued_responses = config.max_queued_responses();
  if (config.has_max_connections()) o.max_connections = config.max_connections();
  if (config.has_max_model_bytes()) {
    if (config.max_model_bytes() > std::numeric_limits<std::size_t>::max()) {
      throw std::invalid_argument("max_model_bytes is above this machine's address space");
    }
    o.max_model_bytes = static_cast<std::size_t>(config.max_model_bytes());
  }
  if (config.has_idle_timeout_seconds()) {
    o.idle_timeout = std::chrono::seconds(config.idle_timeout_seconds());
  }
  if (config.has_read_timeout_seconds()) {
    o.read_timeout = std::chrono::seconds(config.read_timeout_seconds());
  }
  if (config.has_write_timeout_seconds()) {
    o.write_timeout = std::chrono::seconds(config.write_timeout_seconds());
  }
  if (config.has_drain_timeout_seconds()) {
    o.drain_timeout = std::chrono::seconds(config.drain_timeout_seconds());
  }
  if (config.has_udp_replies()) o.udp_replies = config.udp_replies();
  o.validate();
  return o;
}

// ---------------------------------------------------------------------------------------
// Slots and owners

namespace {

constexpr std::size_t kRetainedBytes = std::size_t{64} << 10;

// A request answered by several shards.
struct Parts {
  enum class Kind { kChannels, kStats, kSnapshot };
  Kind kind = Kind::kChannels;
  std::atomic<int> remaining{0};
  v1::Response response;  // echo; kChannels: one ChannelResult per channel, pre-sized
  std::string prefix;     // kStats
  std::vector<std::vector<v1::KeyStats>> stats;    // kStats: per shard
  std::vector<std::vector<v1::KeySnapshot>> keys;  // kSnapshot: per shard
};

struct Slot {
  v1::Request request;
  std::string response;  // the answer's bytes: framed (TCP) or bare (UDP)
  std::unique_ptr<Parts> parts;
  std::size_t frame_bytes = 0;

  // Back to empty, releasing what a large request or answer left behind.
  void release() {
    parts.reset();
    if (response.capacity() > kRetainedBytes) {
      std::string().swap(response);
    } else {
      response.clear();
    }
    if (frame_bytes > kRetainedBytes) request = v1::Request();
    frame_bytes = 0;
  }
};

// Serializes an answer into a slot.
void write_response(const v1::Response& response, bool framed, std::string& out) {
  out.clear();
  if (framed) {
    encode_delimited(response, out);
  } else {
    response.AppendToString(&out);
  }
}

// One unit of shard work: slot `slot` of the batch's owner; `part` is the channel of a
// multi-channel reading (-1: the whole request; Stats/Snapshot parts: unused).
struct Work {
  std::uint32_t slot = 0;
  std::int32_t part = -1;
};

}  // namespace

struct Server::Impl {
  class Owner;
  class Session;
  class UdpPort;
  struct ShardActor;

  explicit Impl(ServerOptions o);

  // --- lifecycle
  void start();
  void stop();
  void log(LogLevel level, const std::string& message) const {
    if (options.log) options.log(level, message);
  }

  // --- request routing (on the owner's strand)
  using Batches = std::vector<std::vector<Work>>;
  // Routes decoded and validated slot `id`; returns true when it was answered inline.
  bool route(Owner& owner, std::uint32_t id, Batches& batches);
  void post_batches(const std::shared_ptr<Owner>& owner, Batches& batches);
  void run_batch(ShardActor& actor, Owner& owner, const std::vector<Work>& work);
  // The last part of slot `id` is done: serialize (or, for a snapshot, write it first).
  void finish_parts(const std::shared_ptr<Owner>& owner, std::uint32_t id,
                    std::vector<std::uint32_t>& done);
  // Answers slot `id` inline with an Error (counted).
  void inline_error(Owner& owner, std::uint32_t id, v1::ErrorCode code, std::string message,
                    bool connection_closed = false);

  // --- blocking access to every shard from outside the server threads
  template <typename Fn>
  void on_each_shard(Fn&& fn) const;
  ModelSnapshot collect_snapshot(std::vector<std::vector<v1::KeySnapshot>>&& parts) const;
  // Server::stats with `lifecycle` held shared.
  v1::Stats stats_locked(const v1::Control::GetStats& scope) const;

  // --- sessions registry (not the hot path)
  void add_session(const std::shared_ptr<Session>& s);
  void remove_session(std::uint64_t id);

  void do_accept(std::size_t i);

  ServerOptions options;
  unsigned thread_count = 1;
  mutable detail::Counters counters;
  detail::ConfigTable configs;
  asio::io_context io;
  std::vector<std::unique_ptr<ShardActor>> shards;
  Strand control;
  std::mutex snapshot_mutex;  // held while the writer runs (Control.Snapshot or export)
  // A Control.Snapshot is being exported or written: another one meanwhile is answered
  // OVERLOADED instead of copying every key's state once more.
  std::atomic<bool> snapshot_busy{false};

  struct Listener {
    tcp::acceptor acceptor;
    asio::steady_timer retry;
    std::uint16_t port = 0;
  };
  std::vector<std::unique_ptr<Listener>> listeners;
  std::vector<std::shared_ptr<UdpPort>> udp_ports;
  std::vector<std::uint16_t> udp_port_numbers;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_guard;
  std::vector<std::thread> threads;

  mutable std::shared_mutex lifecycle;  // unique: start/stop; shared: blocking accessors
  enum class State { kIdle, kRunning, kStopped } state = State::kIdle;
  std::atomic<bool> draining{false};

  std::mutex sessions_mutex;
  std::condition_variable sessions_cv;
  std::unordered_map<std::uint64_t, std::weak_ptr<Session>> sessions;
  std::uint64_t next_session_id = 1;
  // Accept errors and refusals in a row (reset by a connection accepted): logged at the
  // 1st, 2nd, 4th, ... of each episode (EMFILE lasts, 20 errors a second).
  std::atomic<std::uint64_t> accept_errors{0};
  std::atomic<std::uint64_t> refusals_in_a_row{0};
};

// ---------------------------------------------------------------------------------------
// Shard actor

struct Server::Impl::ShardActor {
  ShardActor(Impl& impl, std::size_t i)
      : strand(asio::make_strand(impl.io)),
        shard(impl.configs, impl.counters, impl.options.max_keys),
        index(i) {}
  Strand strand;
  detail::Shard shard;
  std::size_t index;
  v1::Response scratch;  // not state: reused for every answer
};

// ---------------------------------------------------------------------------------------
// Owner: what slots belong to.

class Server::Impl::Owner : public std::enable_shared_from_this<Owner> {
 public:
  Owner(Impl& impl, std::size_t slots, bool framed)
      : impl_(impl), slots_(slots), framed_(framed), batches_(impl.shards.size()) {}
  virtual ~Owner() = default;
  Slot& slot(std::uint32_t id) { return slots_[id]; }
  bool framed() const { return framed_; }
  // Called on a shard or the control strand: the slots `ids` hold their answers.
  virtual void complete(std::vector<std::uint32_t> ids) = 0;

 protected:
  Impl& impl_;
  std::vector<Slot> slots_;
  bool framed_;
  Batches batches_;  // not state: the per-shard work of one read, reused
};

// ---------------------------------------------------------------------------------------
// Session

class Server::Impl::Session final : public Owner {
 public:
  Session(Impl& impl, tcp::socket socket, std::uint64_t id)
      : Owner(impl, impl.options.max_queued_responses, true),
        id_(id),
        socket_(std::move(socket)),
        strand_(socket_.get_executor()),
        timer_(strand_),
        decoder_(impl.options.max_frame_bytes),
        read_buffer_(impl.options.read_buffer_bytes),
        ready_(impl.options.max_queued_responses, false) {}

  std::uint64_t id() const { return id_; }

  void start() {
    asio::dispatch(strand_, [self = self()] {
      ErrorCode ec;
      self->socket_.set_option(tcp::no_delay(true), ec);
      self->last_activity_ = Clock::now();
      self->arm_timer();
      self->do_read();
    });
  }

  // stop(): stop reading, answer what was read, close.
  void drain() {
    asio::dispatch(strand_, [self = self()] {
      if (self->closed_ || self->draining_) return;
      self->draining_ = true;
      self->stop_reading();
      self->process_input();
      self->do_write();
    });
  }

  void force_close() {
    asio::dispatch(strand_, [self = self()] { self->do_close("drain deadline"); });
  }

  void complete(std::vector<std::uint32_t> ids) override {
    // defer: a continuation of the shard's work, queued on this thread (never run inline,
    // never waking another thread just for it).
    asio::defer(strand_, [self = self(), ids = std::move(ids)] {
      if (self->closed_) return;
      for (const std::uint32_t id : ids) self->mark_ready(id);
      self->flush_counters();
      self->do_write();
    });
  }

 private:
  std::shared_ptr<Session> self() { return std::static_pointer_cast<Session>(shared_from_this()); }
  std::size_t capacity() const { return slots_.size(); }
  std::uint32_t index(std::uint64_t n) const { return static_cast<std::uint32_t>(n % capacity()); }
  // Reading (and decoding) waits while the ring is full, and while an answer from every
  // shard (Stats of a prefix, Snapshot) is unwritten: such an answer can be megabytes, and
  // a client that pipelines them without reading must not make the server hold one per
  // slot.
  bool ring_full() const { return next_ - head_ >= capacity() || head_ < barrier_end_; }
  void count_request(const v1::Request& request) {
    ++uncounted_requests_[static_cast<std::size_t>(detail::request_kind(request))];
  }
  void mark_ready(std::uint32_t id) {
    ready_[id] = true;
    ++uncounted_responses_;
  }
  // Adds what this session counted locally to the server's counters (one atomic update
  // per read or completion, not per message).
  void flush_counters() {
    auto& c = impl_.counters;
    if (uncounted_responses_ > 0)
      c.responses.fetch_add(uncounted_responses_, std::memory_order_relaxed);
    if (uncounted_frames_ > 0) c.tcp_frames.fetch_add(uncounted_frames_, std::memory_order_relaxed);
    for (std::size_t k = 0; k < detail::kRequestKinds; ++k) {
      if (uncounted_requests_[k] == 0) continue;
      c.count_requests(static_cast<detail::RequestKind>(k), uncounted_requests_[k]);
      uncounted_requests_[k] = 0;
    }
    uncounted_responses_ = uncounted_frames_ = 0;
  }

  void do_read() {
    if (reading_ || closed_ || input_pending_ || stop_reading_ || flushing_ || ring_full()) return;
    reading_ = true;
    socket_.async_read_some(
        asio::buffer(read_buffer_),
        asio::bind_executor(
            strand_, [self = self()](ErrorCode ec, std::size_t n) { self->on_read(ec, n); }));
  }

  void on_read(ErrorCode ec, std::size_t n) {
    reading_ = false;
    if (closed_) return;
    if (ec == asio::error::operation_aborted) {
      // stop_reading() cancelled the read: whatever was read before is being answered.
      do_write();
      return;
    }
    if (ec == asio::error::eof) return on_eof();
    if (ec) {
      // A peer that resets (health checkers often close that way) is routine: debug.
      const bool routine = ec == asio::error::connection_reset || ec == asio::error::broken_pipe;
      return do_close("read: " + ec.message(), routine ? LogLevel::kDebug : LogLevel::kInfo);
    }
    impl_.counters.bytes_received.fetch_add(n, std::memory_order_relaxed);
    last_activity_ = Clock::now();
    decoder_.feed(std::span<const std::uint8_t>(read_buffer_.data(), n));
    input_pending_ = true;
    process_input();
    do_read();
    do_write();
  }

  void on_eof() {
    stop_reading_ = true;
    const StreamEnd end = decoder_.finish();
    if (end == StreamEnd::kTruncated) {
      // The peer closed its side inside a frame: tell it, if it still reads.
      const std::uint32_t id = index(next_++);
      slots_[id].request.Clear();
      impl_.inline_error(*this, id, v1::ERROR_CODE_MALFORMED_MESSAGE,
                         "the connection ended inside a frame (" +
                             std::to_string(decoder_.buffered_bytes()) +
                             " bytes of an incomplete frame discarded)",
                         true);
      mark_ready(id);
      flush_counters();
    }
    flushing_ = true;
    do_write();
  }

  // Turns the fed bytes into slots while there is room. Frames left in the decoder when
  // the ring is full wait there (reading paused) until writes free slots.
  void process_input() {
    if (!input_pending_ || closed_) return;
    const std::uint64_t first_slot = next_;
    for (;;) {
      if (ring_full()) break;
      const FrameResult r = decoder_.next();
      if (r.status == FrameStatus::kNeedMore) {
        input_pending_ = false;
        break;
      }
      const std::uint32_t id = index(next_++);
      if (r.status == FrameStatus::kError) {
        input_pending_ = false;
        slots_[id].request.Clear();
        impl_.inline_error(*this, id, error_code(r.error),
                           r.error == FrameError::kFrameTooLarge
                               ? "frame of " + std::to_string(r.length) +
                                     " bytes exceeds the limit of " +
                                     std::to_string(decoder_.max_frame_bytes()) + " bytes"
                               : "the length prefix is not a valid varint (more than 10 bytes "
                                 "or above 2^64 - 1)",
                           true);
        mark_ready(id);
        stop_reading_ = true;
        flushing_ = true;
        break;
      }
      ++uncounted_frames_;
      Slot& s = slots_[id];
      s.frame_bytes = r.frame.size();
      if (draining_) {
        decode_request(r.frame, s.request);  // for the seq and tag, if it parses
        impl_.inline_error(*this, id, v1::ERROR_CODE_SHUTTING_DOWN,
                           "the server is shutting down: request not processed", true);
        mark_ready(id);
        continue;
      }
      if (auto error = decode_request(r.frame, s.request)) {
        if (error->code != v1::ERROR_CODE_MALFORMED_MESSAGE) count_request(s.request);
        impl_.inline_error(*this, id, error->code, std::move(error->message));
        mark_ready(id);
        continue;
      }
      count_request(s.request);
      if (impl_.route(*this, id, batches_)) {
        mark_ready(id);
      } else if (s.parts && s.parts->kind != Parts::Kind::kChannels) {
        barrier_end_ = next_;  // not yet posted: s.parts is still this strand's
      }
    }
    flush_counters();
    impl_.post_batches(shared_from_this(), batches_);
    if (decoder_.buffered_bytes() > 0) {
      // The read timeout runs from the start of the incomplete frame: from now if a frame
      // completed in this call (or none was partial), else from when it was first seen.
      if (!partial_ || next_ != first_slot) partial_since_ = Clock::now();
      partial_ = true;
    } else {
      partial_ = false;
    }
  }

  void stop_reading() {
    stop_reading_ = true;
    // Cancelling also aborts a write in flight (no per-operation cancellation in this
    // Asio): only cancel when none is; otherwise on_write does it.
    if (reading_ && !writing_) {
      ErrorCode ec;
      socket_.cancel(ec);
    }
  }

  void do_write() {
    if (writing_ || closed_) return;
    if (stop_reading_ && reading_) {
      ErrorCode ec;
      socket_.cancel(ec);  // no write in flight: only the read is aborted
      return;              // on_read (aborted) calls do_write again
    }
    // Contiguous answered slots from the head, in request order.
    buffers_.clear();
    std::size_t bytes = 0;
    std::uint64_t end = head_;
    while (end < next_ && ready_[index(end)] && buffers_.size() < 256 && bytes < (1u << 20)) {
      const std::string& r = slots_[index(end)].response;
      buffers_.emplace_back(r.data(), r.size());
      bytes += r.size();
      ++end;
    }
    if (buffers_.empty()) {
      if ((flushing_ || draining_) && head_ == next_ && !input_pending_) linger_and_close();
      return;
    }
    write_end_ = end;
    writing_ = true;
    write_started_ = Clock::now();
    asio::async_write(socket_, buffers_,
                      asio::bind_executor(strand_, [self = self()](ErrorCode ec, std::size_t n) {
                        self->on_write(ec, n);
                      }));
  }

  void on_write(ErrorCode ec, std::size_t n) {
    writing_ = false;
    if (closed_) return;
    if (ec) return do_close("write: " + ec.message());
    impl_.counters.bytes_sent.fetch_add(n, std::memory_order_relaxed);
    for (std::uint64_t k = head_; k < write_end_; ++k) {
      const std::uint32_t id = index(k);
      ready_[id] = false;
      slots_[id].release();
    }
    head_ = write_end_;
    last_activity_ = Clock::now();
    process_input();  // frames waiting for room (reading was paused)
    do_read();
    do_write();
  }

  // Every answer is written: send FIN, then read and discard until the peer closes too
  // (closing with unread bytes would reset the connection and could destroy the answers
  // in flight), at most write_timeout or 2 s.
  void linger_and_close() {
    if (lingering_ || closed_) return;
    lingering_ = true;
    ErrorCode ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    if (ec) return do_close("");
    linger_deadline_ = Clock::now() + std::chrono::seconds(2);
    arm_timer();
    discard();
  }

  void discard() {
    socket_.async_read_some(
        asio::buffer(read_buffer_),
        asio::bind_executor(strand_, [self = self()](ErrorCode ec, std::size_t) {
          if (self->closed_) return;
          if (ec) return self->do_close("");
          self->discard();
        }));
  }

  void arm_timer() {
    if (closed_) return;
    const auto& o = impl_.options;
    std::chrono::milliseconds period{0};
    for (const auto t : {o.idle_timeout, o.read_timeout, o.write_timeout}) {
      if (t.count() > 0 && (period.count() == 0 || t < period)) period = t;
    }
    if (lingering_) period = std::chrono::milliseconds(100);
    if (period.count() == 0) return;
    period = std::clamp(period / 4, std::chrono::milliseconds(5), std::chrono::milliseconds(1000));
    timer_.expires_after(period);
    timer_.async_wait([self = self()](ErrorCode ec) {
      if (ec || self->closed_) return;
      self->on_timer();
    });
  }

  void on_timer() {
    const auto now = Clock::now();
    const auto& o = impl_.options;
    if (lingering_ && now >= linger_deadline_) return do_close("");
    if (!lingering_) {
      auto& c = impl_.counters;
      if (o.write_timeout.count() > 0 && writing_ && now - write_started_ > o.write_timeout) {
        c.write_timeouts.fetch_add(1, std::memory_order_relaxed);
        return do_close("write timeout: the peer does not read");
      }
      // Not while the server holds unprocessed input: reading is paused then (a full ring
      // stops process_input before it looks at a partial frame), and the timeout starts
      // again from when that input is processed.
      if (o.read_timeout.count() > 0 && partial_ && !input_pending_ &&
          now - partial_since_ > o.read_timeout) {
        c.read_timeouts.fetch_add(1, std::memory_order_relaxed);
        return do_close("read timeout: a frame was not completed in time");
      }
      const bool idle = head_ == next_ && !input_pending_ && !writing_;
      if (o.idle_timeout.count() > 0 && idle && now - last_activity_ > o.idle_timeout) {
        c.idle_timeouts.fetch_add(1, std::memory_order_relaxed);
        return do_close("idle timeout");
      }
    }
    arm_timer();
  }

  void do_close(const std::string& why, LogLevel level = LogLevel::kInfo) {
    if (closed_) return;
    closed_ = true;
    ErrorCode ec;
    timer_.cancel();
    // The place among max_connections is free before the peer can see the close (a
    // client that reconnects at once must not be refused); the log line comes last.
    impl_.counters.connections_open.fetch_sub(1, std::memory_order_relaxed);
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    impl_.remove_session(id_);
    if (!why.empty()) impl_.log(level, "connection " + std::to_string(id_) + " closed: " + why);
  }

  std::uint64_t id_;
  tcp::socket socket_;
  asio::any_io_executor strand_;  // the socket's: a strand made at accept
  asio::steady_timer timer_;
  FrameDecoder decoder_;
  std::vector<std::uint8_t> read_buffer_;
  std::vector<bool> ready_;
  std::vector<asio::const_buffer> buffers_;  // not state: the write in flight's buffers

  std::uint64_t head_ = 0, write_end_ = 0, next_ = 0;
  std::uint64_t barrier_end_ = 0;  // reading waits until head_ reaches it (ring_full)
  bool reading_ = false;           // a read is in flight
  bool writing_ = false;           // a write is in flight
  bool input_pending_ = false;     // the decoder holds fed bytes not yet consumed
  bool stop_reading_ = false;      // EOF, framing error or drain: no more reads
  bool flushing_ = false;          // close once every answer is written
  bool draining_ = false;
  bool lingering_ = false;
  bool closed_ = false;
  bool partial_ = false;  // the decoder holds an incomplete frame
  std::uint64_t uncounted_responses_ = 0, uncounted_frames_ = 0;
  std::array<std::uint64_t, detail::kRequestKinds> uncounted_requests_{};  // by RequestKind
  Clock::time_point last_activity_, partial_since_, write_started_, linger_deadline_;
};

// ---------------------------------------------------------------------------------------
// UDP

class Server::Impl::UdpPort final : public Owner {
 public:
  UdpPort(Impl& impl, udp::socket socket)
      : Owner(impl, impl.options.max_queued_responses, false),
        socket_(std::move(socket)),
        strand_(socket_.get_executor()),
        buffer_(std::min<std::size_t>(impl.options.max_frame_bytes, 65507) + 1),
        senders_(slots_.size()) {
    for (std::uint32_t i = 0; i < slots_.size(); ++i)
      free_.push_back(static_cast<std::uint32_t>(slots_.size() - 1 - i));
  }

  void start() {
    asio::dispatch(strand_, [self = self()] { self->receive(); });
  }

  void close() {
    asio::dispatch(strand_, [self = self()] {
      self->closed_ = true;
      ErrorCode ec;
      self->socket_.close(ec);
    });
  }

  void complete(std::vector<std::uint32_t> ids) override {
    asio::defer(strand_, [self = self(), ids = std::move(ids)] {
      for (const std::uint32_t id : ids) self->answered(id);
    });
  }

 private:
  std::shared_ptr<UdpPort> self() { return std::static_pointer_cast<UdpPort>(shared_from_this()); }

  void receive() {
    if (closed_) return;
    socket_.async_receive_from(
        asio::buffer(buffer_), sender_,
        asio::bind_executor(
            strand_, [self = self()](ErrorCode ec, std::size_t n) { self->on_receive(ec, n); }));
  }

  void on_receive(ErrorCode ec, std::size_t n) {
    if (closed_ || ec == asio::error::operation_aborted) return;
    if (ec) {
      // ICMP errors of earlier replies and the like: report, keep receiving.
      impl_.log(LogLevel::kWarning, "udp receive: " + ec.message());
      return receive();
    }
    impl_.counters.udp_datagrams.fetch_add(1, std::memory_order_relaxed);
    impl_.counters.bytes_received.fetch_add(n, std::memory_order_relaxed);
    if (free_.empty()) {
      impl_.counters.count_error(v1::ERROR_CODE_OVERLOADED);
      return receive();  // no room: dropped (UDP has no backpressure)
    }
    const std::uint32_t id = free_.back();
    free_.pop_back();
    senders_[id] = sender_;
    Slot& s = slots_[id];
    s.frame_bytes = n;
    if (n > impl_.options.max_frame_bytes) {
      s.request.Clear();
      impl_.inline_error(*this, id, v1::ERROR_CODE_FRAME_TOO_LARGE,
                         "datagram of " + std::to_string(n) +
                             " or more bytes exceeds the limit of " +
                             std::to_string(impl_.options.max_frame_bytes) + " bytes");
      answered(id);
    } else if (auto error =
                   decode_request(std::span<const std::uint8_t>(buffer_.data(), n), s.request)) {
      if (error->code != v1::ERROR_CODE_MALFORMED_MESSAGE) {
        impl_.counters.count_requests(detail::request_kind(s.request));
      }
      impl_.inline_error(*this, id, error->code, std::move(error->message));
      answered(id);
    } else if (s.request.has_control()) {
      // Configure, DropKey and Snapshot change state, Stats answers in bulk: none of them
      // from a source address that anyone on the path can forge.
      impl_.counters.count_requests(detail::request_kind(s.request));
      impl_.inline_error(*this, id, v1::ERROR_CODE_TCP_ONLY,
                         "a Control is not carried out over UDP (source addresses can be "
                         "forged): send it over TCP");
      answered(id);
    } else {
      impl_.counters.count_requests(detail::request_kind(s.request));
      if (impl_.route(*this, id, batches_)) answered(id);
      impl_.post_batches(shared_from_this(), batches_);
    }
    receive();
  }

  // Slot `id` holds its answer: reply if asked to, then free the slot.
  void answered(std::uint32_t id) {
    impl_.counters.responses.fetch_add(1, std::memory_order_relaxed);
    if (!impl_.options.udp_replies || closed_) return release(id);
    const std::string& r = slots_[id].response;
    socket_.async_send_to(
        asio::buffer(r), senders_[id],
        asio::bind_executor(strand_, [self = self(), id](ErrorCode ec, std::size_t n) {
          if (!ec) {
            self->impl_.counters.bytes_sent.fetch_add(n, std::memory_order_relaxed);
          } else if (ec != asio::error::operation_aborted) {
            self->impl_.log(LogLevel::kWarning,
                            "udp reply of " + std::to_string(self->slots_[id].response.size()) +
                                " bytes not sent: " + ec.message());
          }
          self->release(id);
        }));
  }

  void release(std::uint32_t id) {
    slots_[id].release();
    free_.push_back(id);
  }

  udp::socket socket_;
  asio::any_io_executor strand_;  // the socket's: a strand
  std::vector<std::uint8_t> buffer_;
  udp::endpoint sender_;
  std::vector<udp::endpoint> senders_;
  std::vector<std::uint32_t> free_;
  bool closed_ = false;
};

// ---------------------------------------------------------------------------------------
// Impl

Server::Impl::Impl(ServerOptions o)
    : options((o.validate(), std::move(o))),
      configs(options.defaults, options.overrides, options.max_model_bytes),
      control(asio::make_strand(io)) {
  counters.max_model_bytes = options.max_model_bytes;
  thread_count =
      options.threads > 0 ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  const unsigned n = options.shards > 0 ? options.shards : 8 * thread_count;
  shards.reserve(n);
  for (unsigned i = 0; i < n; ++i) shards.push_back(std::make_unique<ShardActor>(*this, i));
}

void Server::Impl::inline_error(Owner& owner, std::uint32_t id, v1::ErrorCode code,
                                std::string message, bool connection_closed) {
  Slot& s = owner.slot(id);
  v1::Response r;
  detail::echo_request(s.request, r);
  detail::set_error(r, code, std::move(message), connection_closed);
  counters.count_error(code);
  write_response(r, owner.framed(), s.response);
}

bool Server::Impl::route(Owner& owner, std::uint32_t id, Batches& batches) {
  Slot& s = owner.slot(id);
  const v1::Request& r = s.request;
  const auto to_shard = [&](const std::string& key, std::int32_t part) {
    batches[detail::shard_of(key, shards.size())].push_back(Work{id, part});
  };
  const auto all_shards = [&] {
    for (auto& b : batches) b.push_back(Work{id, -1});
  };
  switch (r.payload_case()) {
    case v1::Request::kObservation:
      to_shard(r.observation().key(), -1);
      return false;
    case v1::Request::kSensorReading: {
      const v1::SensorReading& reading = r.sensor_reading();
      if (reading.values_size() == 0) {
        to_shard(reading.sensor_id(), -1);
        return false;
      }
      auto parts = std::make_unique<Parts>();
      parts->kind = Parts::Kind::kChannels;
      detail::echo_request(r, parts->response);
      v1::ChannelResults* channels = parts->response.mutable_channels();
      for (int i = 0; i < reading.values_size(); ++i) channels->add_channels();
      parts->remaining.store(reading.values_size(), std::memory_order_relaxed);
      s.parts = std::move(parts);
      for (int i = 0; i < reading.values_size(); ++i) {
        to_shard(detail::channel_key(reading.sensor_id(), i), i);
      }
      return false;
    }
    case v1::Request::kMarketTick:
      to_shard(r.market_tick().symbol(), -1);
      return false;
    case v1::Request::kControl:
      break;
    case v1::Request::PAYLOAD_NOT_SET:
      inline_error(owner, id, v1::ERROR_CODE_MISSING_FIELD, "request has no payload");
      return true;
  }
  const v1::Control& c = r.control();
  switch (c.operation_case()) {
    case v1::Control::kConfigure:
      if (c.configure().has_key()) {
        to_shard(c.configure().key(), -1);
        return false;
      } else {
        v1::Response response;
        detail::echo_request(r, response);
        if (auto error =
                configs.configure_prefix(c.configure().key_prefix(), c.configure().config())) {
          detail::set_error(response, error->code, std::move(error->message));
          counters.count_error(error->code);
        } else {
          response.mutable_ack()->set_keys_affected(0);
        }
        write_response(response, owner.framed(), s.response);
        return true;
      }
    case v1::Control::kStats:
      if (c.stats().has_key()) {
        to_shard(c.stats().key(), -1);
        return false;
      }
      if (!c.stats().has_key_prefix()) {
        v1::Response response;
        detail::echo_request(r, response);
        *response.mutable_stats()->mutable_server() = counters.to_proto();
        write_response(response, owner.framed(), s.response);
        return true;
      } else {
        auto parts = std::make_unique<Parts>();
        parts->kind = Parts::Kind::kStats;
        detail::echo_request(r, parts->response);
        parts->prefix = c.stats().key_prefix();
        parts->stats.resize(shards.size());
        parts->remaining.store(static_cast<int>(shards.size()), std::memory_order_relaxed);
        s.parts = std::move(parts);
        all_shards();
        return false;
      }
    case v1::Control::kSnapshot: {
      if (snapshot_busy.exchange(true, std::memory_order_acq_rel)) {
        inline_error(owner, id, v1::ERROR_CODE_OVERLOADED,
                     "another Control.Snapshot is being written: retry when it is answered");
        return true;
      }
      auto parts = std::make_unique<Parts>();
      parts->kind = Parts::Kind::kSnapshot;
      detail::echo_request(r, parts->response);
      parts->keys.resize(shards.size());
      parts->remaining.store(static_cast<int>(shards.size()), std::memory_order_relaxed);
      s.parts = std::move(parts);
      all_shards();
      return false;
    }
    case v1::Control::kDropKey:
      to_shard(c.drop_key().key(), -1);
      return false;
    case v1::Control::OPERATION_NOT_SET:
      break;
  }
  inline_error(owner, id, v1::ERROR_CODE_UNKNOWN_CONTROL, "control has no known operation");
  return true;
}

void Server::Impl::post_batches(const std::shared_ptr<Owner>& owner, Batches& batches) {
  for (std::size_t i = 0; i < batches.size(); ++i) {
    if (batches[i].empty()) continue;
    ShardActor& actor = *shards[i];
    // dispatch, not post: an idle shard runs the batch right here, on this thread, instead
    // of waking another one (the answers are posted back, so the session is not
    // re-entered); a busy one queues it behind its current work.
    asio::dispatch(actor.strand, [this, &actor, owner, work = std::move(batches[i])] {
      run_batch(actor, *owner, work);
    });
    batches[i].clear();  // moved-from: make it a valid empty vector again
  }
}

void Server::Impl::run_batch(ShardActor& actor, Owner& owner, const std::vector<Work>& work) {
  std::vector<std::uint32_t> done;
  done.reserve(work.size());
  for (const Work& w : work) {
    Slot& s = owner.slot(w.slot);
    if (!s.parts) {
      try {
        // Clear the scratch answer but keep its Prediction's allocation for this one.
        v1::Prediction* reuse =
            actor.scratch.has_prediction() ? actor.scratch.release_prediction() : nullptr;
        actor.scratch.Clear();
        if (reuse != nullptr) {
          reuse->Clear();
          actor.scratch.set_allocated_prediction(reuse);
        }
        actor.shard.handle(s.request, actor.scratch);
      } catch (const std::exception& e) {
        // A bug, not bad input: still exactly one answer.
        actor.scratch.Clear();
        detail::echo_request(s.request, actor.scratch);
        detail::set_error(actor.scratch, v1::ERROR_CODE_INTERNAL, e.what());
        counters.count_error(v1::ERROR_CODE_INTERNAL);
        log(LogLevel::kError, std::string("internal error: ") + e.what());
      }
      write_response(actor.scratch, owner.framed(), s.response);
      done.push_back(w.slot);
      continue;
    }
    Parts& p = *s.parts;
    try {
      switch (p.kind) {
        case Parts::Kind::kChannels:
          actor.shard.handle_channel(s.request, w.part,
                                     *p.response.mutable_channels()->mutable_channels(w.part));
          break;
        case Parts::Kind::kStats:
          actor.shard.collect_stats(p.prefix, p.stats[actor.index]);
          break;
        case Parts::Kind::kSnapshot:
          actor.shard.export_keys(p.keys[actor.index]);
          break;
      }
    } catch (const std::exception& e) {
      if (p.kind == Parts::Kind::kChannels) {
        v1::ChannelResult* c = p.response.mutable_channels()->mutable_channels(w.part);
        c->clear_prediction();
        c->mutable_error()->set_code(v1::ERROR_CODE_INTERNAL);
        c->mutable_error()->set_message(e.what());
      }
      counters.count_error(v1::ERROR_CODE_INTERNAL);
      log(LogLevel::kError, std::string("internal error: ") + e.what());
    }
    if (p.remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      finish_parts(owner.shared_from_this(), w.slot, done);
    }
  }
  if (!done.empty()) owner.complete(std::move(done));
}

void Server::Impl::finish_parts(const std::shared_ptr<Owner>& owner, std::uint32_t id,
                                std::vector<std::uint32_t>& done) {
  Slot& s = owner->slot(id);
  Parts& p = *s.parts;
  switch (p.kind) {
    case Parts::Kind::kChannels:
      write_response(p.response, owner->framed(), s.response);
      s.parts.reset();  // only the bytes wait for the write
      done.push_back(id);
      return;
    case Parts::Kind::kStats: {
      v1::Stats* stats = p.response.mutable_stats();
      *stats->mutable_server() = counters.to_proto();
      std::vector<v1::KeyStats> all;
      for (auto& part : p.stats) {
        for (auto& k : part) all.push_back(std::move(k));
      }
      std::sort(all.begin(), all.end(),
                [](const v1::KeyStats& a, const v1::KeyStats& b) { return a.key() < b.key(); });
      for (auto& k : all) *stats->add_keys() = std::move(k);
      write_response(p.response, owner->framed(), s.response);
      s.parts.reset();  // the Response can be as large as its bytes
      done.push_back(id);
      return;
    }
    case Parts::Kind::kSnapshot:
      // The writer may block (files, fsync): on the control strand, not this shard's.
      asio::post(control, [this, owner, id] {
        Slot& slot = owner->slot(id);
        Parts& parts = *slot.parts;
        const ModelSnapshot snapshot = collect_snapshot(std::move(parts.keys));
        v1::Response& response = parts.response;
        if (!options.snapshot_writer) {
          detail::set_error(response, v1::ERROR_CODE_SNAPSHOT_FAILED,
                            "this server has no snapshot writer (no snapshot_dir)");
          counters.count_error(v1::ERROR_CODE_SNAPSHOT_FAILED);
        } else {
          try {
            std::lock_guard lock(snapshot_mutex);
            const std::string path = options.snapshot_writer(snapshot);
            v1::Ack* ack = response.mutable_ack();
            ack->set_keys_affected(snapshot.keys.size());
            ack->set_snapshot_path(path);
          } catch (const std::exception& e) {
            detail::set_error(response, v1::ERROR_CODE_SNAPSHOT_FAILED,
                              std::string("snapshot failed: ") + e.what());
            counters.count_error(v1::ERROR_CODE_SNAPSHOT_FAILED);
          }
        }
        write_response(response, owner->framed(), slot.response);
        slot.parts.reset();
        snapshot_busy.store(false, std::memory_order_release);
        owner->complete({id});
      });
      return;
  }
}

ModelSnapshot Server::Impl::collect_snapshot(
    std::vector<std::vector<v1::KeySnapshot>>&& parts) const {
  ModelSnapshot snapshot;
  snapshot.configured_prefixes = configs.configured();
  for (auto& part : parts) {
    for (auto& k : part) {
      (k.has_series() ? snapshot.keys : snapshot.pending_keys).push_back(std::move(k));
    }
  }
  const auto by_key = [](const v1::KeySnapshot& a, const v1::KeySnapshot& b) {
    return a.key() < b.key();
  };
  std::sort(snapshot.keys.begin(), snapshot.keys.end(), by_key);
  std::sort(snapshot.pending_keys.begin(), snapshot.pending_keys.end(), by_key);
  return snapshot;
}

template <typename Fn>
void Server::Impl::on_each_shard(Fn&& fn) const {
  // Caller holds `lifecycle` shared. Not running: no thread touches the shards.
  if (state != State::kRunning) {
    for (const auto& actor : shards) fn(*actor);
    return;
  }
  std::latch done(static_cast<std::ptrdiff_t>(shards.size()));
  std::vector<std::exception_ptr> errors(shards.size());
  for (const auto& actor : shards) {
    ShardActor* a = actor.get();
    asio::post(a->strand, [&fn, &done, &errors, a] {
      try {
        fn(*a);
      } catch (...) {
        errors[a->index] = std::current_exception();
      }
      done.count_down();
    });
  }
  done.wait();
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

void Server::Impl::add_session(const std::shared_ptr<Session>& s) {
  std::lock_guard lock(sessions_mutex);
  sessions.emplace(s->id(), s);
}

void Server::Impl::remove_session(std::uint64_t id) {
  std::lock_guard lock(sessions_mutex);
  sessions.erase(id);
  if (sessions.empty()) sessions_cv.notify_all();
}

void Server::Impl::do_accept(std::size_t i) {
  Listener& l = *listeners[i];
  l.acceptor.async_accept(asio::make_strand(io), [this, i](ErrorCode ec, tcp::socket socket) {
    Listener& listener = *listeners[i];
    if (ec == asio::error::operation_aborted || !listener.acceptor.is_open()) return;
    if (ec) {
      // Transient (EMFILE, ENFILE, ENOBUFS, ECONNABORTED...): report, retry shortly.
      const std::uint64_t n = accept_errors.fetch_add(1, std::memory_order_relaxed) + 1;
      if ((n & (n - 1)) == 0) {
        log(LogLevel::kWarning, "accept: " + ec.message() + " (" + std::to_string(n) +
                                    " accept errors in a row; retrying every 50 ms)");
      }
      listener.retry.expires_after(std::chrono::milliseconds(50));
      listener.retry.async_wait([this, i](ErrorCode wait_ec) {
        if (!wait_ec && listeners[i]->acceptor.is_open()) do_accept(i);
      });
      return;
    }
    if (draining.load()) {
      ErrorCode ignored;
      socket.close(ignored);
      return;
    }
    if (counters.connections_open.load(std::memory_order_relaxed) >= options.max_connections) {
      // Counted before the close, which the peer may see at once.
      counters.connections_refused.fetch_add(1, std::memory_order_relaxed);
      ErrorCode ignored;
      socket.close(ignored);
      const std::uint64_t n = refusals_in_a_row.fetch_add(1, std::memory_order_relaxed) + 1;
      if ((n & (n - 1)) == 0) {  // 1, 2, 4, ...: a flood logs a few lines only
        log(LogLevel::kWarning, "connection refused: max_connections (" +
                                    std::to_string(options.max_connections) + ") are open; " +
                                    std::to_string(n) + " refused in a row");
      }
      do_accept(i);
      return;
    }
    accept_errors.store(0, std::memory_order_relaxed);  // an episode ends
    refusals_in_a_row.store(0, std::memory_order_relaxed);
    counters.connections_accepted.fetch_add(1, std::memory_order_relaxed);
    counters.connections_open.fetch_add(1, std::memory_order_relaxed);
    std::uint64_t id = 0;
    {
      std::lock_guard lock(sessions_mutex);
      id = next_session_id++;
    }
    auto session = std::make_shared<Session>(*this, std::move(socket), id);
    add_session(session);
    session->start();
    do_accept(i);
  });
}

void Server::Impl::start() {
  std::unique_lock lock(lifecycle);
  if (state != State::kIdle) throw std::logic_error("Server::start: already started");
  counters.start_time_unix_nano =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
  try {
    tcp::resolver tcp_resolver(io);
    for (const std::string& address : options.tcp_listen) {
      const HostPort hp = parse_address(address, "tcp_listen");
      ErrorCode ec;
      const auto results =
          tcp_resolver.resolve(hp.host, std::to_string(hp.port), tcp::resolver::passive, ec);
      if (ec || results.empty()) {
        throw std::system_error(
            static_cast<std::error_code>(ec ? ec : ErrorCode(asio::error::host_not_found)),
            "cannot resolve tcp address " + address);
      }
      const tcp::endpoint endpoint = results.begin()->endpoint();
      // The retry timer shares the acceptor's strand: both are touched by its handlers.
      tcp::acceptor acceptor(asio::make_strand(io));
      asio::steady_timer retry(acceptor.get_executor());
      auto l = std::make_unique<Listener>(Listener{std::move(acceptor), std::move(retry), 0});
      l->acceptor.open(endpoint.protocol(), ec);
      if (!ec) l->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
      if (!ec) l->acceptor.bind(endpoint, ec);
      if (!ec) l->acceptor.listen(asio::socket_base::max_listen_connections, ec);
      if (ec)
        throw std::system_error(static_cast<std::error_code>(ec),
                                "cannot listen on tcp " + address);
      l->port = l->acceptor.local_endpoint().port();
      log(LogLevel::kInfo,
          "listening on tcp " + endpoint.address().to_string() + ":" + std::to_string(l->port));
      listeners.push_back(std::move(l));
    }
    udp::resolver udp_resolver(io);
    for (const std::string& address : options.udp_listen) {
      const HostPort hp = parse_address(address, "udp_listen");
      ErrorCode ec;
      const auto results =
          udp_resolver.resolve(hp.host, std::to_string(hp.port), udp::resolver::passive, ec);
      if (ec || results.empty()) {
        throw std::system_error(
            static_cast<std::error_code>(ec ? ec : ErrorCode(asio::error::host_not_found)),
            "cannot resolve udp address " + address);
      }
      const udp::endpoint endpoint = results.begin()->endpoint();
      udp::socket socket(asio::make_strand(io));
      socket.open(endpoint.protocol(), ec);
      if (!ec) socket.bind(endpoint, ec);
      if (ec)
        throw std::system_error(static_cast<std::error_code>(ec), "cannot bind udp " + address);
      udp_port_numbers.push_back(socket.local_endpoint().port());
      log(LogLevel::kInfo, "listening on udp " + endpoint.address().to_string() + ":" +
                               std::to_string(udp_port_numbers.back()));
      udp_ports.push_back(std::make_shared<UdpPort>(*this, std::move(socket)));
    }
  } catch (...) {
    listeners.clear();
    udp_ports.clear();
    udp_port_numbers.clear();
    throw;
  }
  work_guard.emplace(io.get_executor());
  for (std::size_t i = 0; i < listeners.size(); ++i) do_accept(i);
  for (auto& u : udp_ports) u->start();
  state = State::kRunning;
  for (unsigned t = 0; t < thread_count; ++t) {
    threads.emplace_back([this] {
      for (;;) {
        try {
          io.run();
          return;
        } catch (const std::exception& e) {
          log(LogLevel::kError, std::string("uncaught exception in a handler: ") + e.what());
        }
      }
    });
  }
}

void Server::Impl::stop() {
  std::unique_lock lock(lifecycle);
  if (state != State::kRunning) return;
  draining.store(true);
  // 1. No new connections or datagrams.
  for (auto& l : listeners) {
    Listener* listener = l.get();
    asio::post(listener->acceptor.get_executor(), [listener] {
      ErrorCode ec;
      listener->acceptor.close(ec);
      listener->retry.cancel();
    });
  }
  for (auto& u : udp_ports) u->close();
  // 2. Every connection stops reading, answers what it read, and closes.
  std::vector<std::shared_ptr<Session>> open;
  {
    std::lock_guard guard(sessions_mutex);
    for (auto& [id, weak] : sessions) {
      if (auto s = weak.lock()) open.push_back(std::move(s));
    }
  }
  for (auto& s : open) s->drain();
  open.clear();
  {
    std::unique_lock guard(sessions_mutex);
    if (!sessions_cv.wait_for(guard, options.drain_timeout, [this] { return sessions.empty(); })) {
      for (auto& [id, weak] : sessions) {
        if (auto s = weak.lock()) open.push_back(std::move(s));
      }
    }
  }
  // 3. Past the deadline: close the rest.
  for (auto& s : open) s->force_close();
  open.clear();
  // 4. Let run() return once the last handlers are done.
  work_guard.reset();
  for (std::thread& t : threads) t.join();
  threads.clear();
  state = State::kStopped;
  log(LogLevel::kInfo, "stopped");
}

// ---------------------------------------------------------------------------------------
// Server

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

Server::~Server() {
  try {
    stop();
  } catch (...) {
    // A destructor does not throw; stop() only fails on a broken invariant.
  }
}

void Server::start() { impl_->start(); }
void Server::stop() { impl_->stop(); }

bool Server::running() const {
  std::shared_lock lock(impl_->lifecycle);
  return impl_->state == Impl::State::kRunning;
}

std::uint16_t Server::port(std::size_t i) const {
  std::shared_lock lock(impl_->lifecycle);
  if (impl_->state == Impl::State::kIdle) throw std::logic_error("Server::port: not started");
  if (i >= impl_->listeners.size())
    throw std::out_of_range("Server::port: no listener " + std::to_string(i));
  return impl_->listeners[i]->port;
}

std::uint16_t Server::udp_port(std::size_t i) const {
  std::shared_lock lock(impl_->lifecycle);
  if (impl_->state == Impl::State::kIdle) throw std::logic_error("Server::udp_port: not started");
  if (i >= impl_->udp_port_numbers.size()) {
    throw std::out_of_range("Server::udp_port: no udp listener " + std::to_string(i));
  }
  return impl_->udp_port_numbers[i];
}

v1::ServerCounters Server::counters() const { return impl_->counters.to_proto(); }

v1::Stats Server::stats(const v1::Control::GetStats& scope) const {
  std::shared_lock lock(impl_->lifecycle);
  return impl_->stats_locked(scope);
}

std::optional<v1::Stats> Server::try_stats(const v1::Control::GetStats& scope) const {
  std::shared_lock lock(impl_->lifecycle, std::try_to_lock);
  if (!lock.owns_lock()) return std::nullopt;
  return impl_->stats_locked(scope);
}

v1::Stats Server::Impl::stats_locked(const v1::Control::GetStats& scope) const {
  v1::Stats stats;
  std::vector<std::vector<v1::KeyStats>> parts(shards.size());
  if (scope.has_key()) {
    const std::size_t target = detail::shard_of(scope.key(), shards.size());
    on_each_shard([&](const ShardActor& a) {
      if (a.index != target) return;
      std::vector<v1::KeyStats> found;
      a.shard.collect_stats(scope.key(), found);
      for (auto& k : found) {
        if (k.key() == scope.key()) parts[a.index].push_back(std::move(k));
      }
    });
  } else if (scope.has_key_prefix()) {
    on_each_shard(
        [&](const ShardActor& a) { a.shard.collect_stats(scope.key_prefix(), parts[a.index]); });
  }
  *stats.mutable_server() = counters.to_proto();
  std::vector<v1::KeyStats> all;
  for (auto& p : parts) {
    for (auto& k : p) all.push_back(std::move(k));
  }
  std::sort(all.begin(), all.end(),
            [](const v1::KeyStats& a, const v1::KeyStats& b) { return a.key() < b.key(); });
  for (auto& k : all) *stats.add_keys() = std::move(k);
  return stats;
}

ModelSnapshot Server::export_models() const {
  std::shared_lock lock(impl_->lifecycle);
  std::vector<std::vector<v1::KeySnapshot>> parts(impl_->shards.size());
  impl_->on_each_shard([&](const Impl::ShardActor& a) { a.shard.export_keys(parts[a.index]); });
  return impl_->collect_snapshot(std::move(parts));
}

void Server::import_models(const ModelSnapshot& snapshot) {
  std::unique_lock lock(impl_->lifecycle);
  if (impl_->state != Impl::State::kIdle) {
    throw std::logic_error("Server::import_models: the server was started already");
  }
  if (snapshot.keys.size() + snapshot.pending_keys.size() > impl_->options.max_keys) {
    throw std::invalid_argument("snapshot has " + std::to_string(snapshot.keys.size()) +
                                " keys and " + std::to_string(snapshot.pending_keys.size()) +
                                " configured before their first value, more than max_keys = " +
                                std::to_string(impl_->options.max_keys) + " in all");
  }
  std::vector<std::vector<std::pair<std::string, detail::Shard::Entry>>> per_shard(
      impl_->shards.size());
  std::vector<std::unordered_map<std::string, v1::KeyConfig>> key_configs(impl_->shards.size());
  std::unordered_map<std::string, bool> seen;
  for (const v1::KeySnapshot& k : snapshot.keys) {
    if (!seen.emplace(k.key(), true).second) {
      throw std::invalid_argument("snapshot holds key '" + k.key() + "' twice");
    }
    const std::size_t shard = detail::shard_of(k.key(), impl_->shards.size());
    per_shard[shard].emplace_back(k.key(), detail::Shard::make_entry(k));
    if (k.has_configured()) key_configs[shard].emplace(k.key(), k.configured());
  }
  for (const v1::KeySnapshot& k : snapshot.pending_keys) {
    if (k.key().empty())
      throw std::invalid_argument("snapshot has a pending key config without a key");
    if (!k.has_configured() || k.has_series()) {
      throw std::invalid_argument("snapshot's pending key config for '" + k.key() +
                                  "' must have a config and no state");
    }
    if (!seen.emplace(k.key(), true).second) {
      throw std::invalid_argument("snapshot holds key '" + k.key() + "' twice");
    }
    key_configs[detail::shard_of(k.key(), impl_->shards.size())].emplace(k.key(), k.configured());
  }
  const std::vector<v1::PrefixOverride> saved = impl_->configs.configured();
  impl_->configs.set_configured(snapshot.configured_prefixes);  // checks before changing
  // A pending key config must resolve with the prefixes just restored, as a Configure of
  // it did when it was given (or its key would answer BAD_CONFIG and hold a place).
  for (const v1::KeySnapshot& k : snapshot.pending_keys) {
    v1::KeyConfig merged = impl_->configs.base_for(k.key());
    merge_key_config(merged, k.configured());
    try {
      resolve_key_config(merged);
    } catch (const std::invalid_argument& e) {
      impl_->configs.set_configured(saved);
      throw std::invalid_argument("snapshot's pending key config for '" + k.key() +
                                  "' does not resolve: " + e.what());
    }
  }
  for (std::size_t i = 0; i < per_shard.size(); ++i) {
    impl_->shards[i]->shard.replace_all(std::move(per_shard[i]), std::move(key_configs[i]));
  }
}

Server::ConfigureResult Server::configure(const v1::Control::Configure& configure) {
  std::shared_lock lock(impl_->lifecycle);
  ConfigureResult result;
  v1::Request request;
  *request.mutable_control()->mutable_configure() = configure;
  if (auto error = validate_request(request)) {
    result.error = std::move(error);
    return result;
  }
  if (configure.has_key_prefix()) {
    result.error = impl_->configs.configure_prefix(configure.key_prefix(), configure.config());
    return result;
  }
  const std::size_t target = detail::shard_of(configure.key(), impl_->shards.size());
  v1::Response response;
  impl_->on_each_shard([&](Impl::ShardActor& a) {
    if (a.index == target) a.shard.handle(request, response);
  });
  if (response.has_error()) {
    result.error = RequestError{response.error().code(), response.error().message()};
  } else {
    result.keys_affected = response.ack().keys_affected();
  }
  return result;
}

void Server::set_key_configs(const v1::KeyConfig& defaults,
                             const std::vector<v1::PrefixOverride>& overrides) {
  impl_->configs.set(defaults, overrides);
}

}  // namespace ntk::stream
