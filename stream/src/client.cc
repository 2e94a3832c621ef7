// Client library: the blocking Client (asynchronous operations on a private io_context,
// run until done or timed out, as in Asio's blocking_tcp_client example) and AsyncClient.
#include "ntk/stream/client.h"

#include <boost/asio.hpp>
#include <deque>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <utility>

namespace ntk::stream {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using ErrorCode = boost::system::error_code;

namespace {

constexpr std::size_t kReadChunk = std::size_t{64} << 10;

ErrorCode bad_message() { return make_error_code(boost::system::errc::bad_message); }

// The reading side of a response stream: bytes in, Responses out.
class ResponseReader {
 public:
  explicit ResponseReader(std::size_t max_frame_bytes)
      : decoder_(std::min(max_frame_bytes, kMaxFrameBytesLimit)), buffer_(kReadChunk) {}

  asio::mutable_buffer buffer() { return asio::buffer(buffer_); }
  // n bytes were read into buffer().
  void fed(std::size_t n) {
    decoder_.feed(std::span<const std::uint8_t>(buffer_.data(), n));
    input_ = true;
  }
  // The next response if one is complete: true with `out` set; false when more bytes
  // are needed; an error for a framing violation or an unparseable response, and from
  // then on at every call: the answers after it could not be matched to the requests.
  bool next(v1::Response& out, ErrorCode& ec) {
    if (failed_) {
      ec = bad_message();
      return false;
    }
    if (!input_) return false;
    const FrameResult r = decoder_.next();
    if (r.status == FrameStatus::kNeedMore) {
      input_ = false;
      return false;
    }
    if (r.status == FrameStatus::kError ||
        !out.ParseFromArray(r.frame.data(), static_cast<int>(r.frame.size()))) {
      input_ = false;
      failed_ = true;
      ec = bad_message();
      return false;
    }
    return true;
  }
  // The decoder holds unread input: call next() before reading more.
  bool has_input() const { return input_; }
  // A response could not be matched to its request: the stream is over, as for a framing
  // violation.
  void fail() {
    input_ = false;
    failed_ = true;
  }

 private:
  FrameDecoder decoder_;
  std::vector<std::uint8_t> buffer_;
  bool input_ = false;
  bool failed_ = false;
};

[[noreturn]] void throw_error(ErrorCode ec, const std::string& what) {
  throw std::system_error(static_cast<std::error_code>(ec), what);
}

// What the Response to a request must carry: the request's seq, which the server echoes
// (response.proto). Unchecked for pre-framed bytes (Client::send_raw).
struct Expected {
  bool checked = false;
  bool has_seq = false;
  std::uint64_t seq = 0;
};

Expected expected_of(const v1::Request& request) {
  return {true, request.has_seq(), request.seq()};
}

// A Response with a seq answers only a request with that seq; one without answers any (the
// server could not parse the request, e.g. FRAME_TOO_LARGE).
bool answers(const Expected& e, const v1::Response& r) {
  return !e.checked || !r.has_seq() || (e.has_seq && e.seq == r.seq());
}

std::string mismatch(const Expected& e, const v1::Response& r) {
  return "response seq " + std::to_string(r.seq()) + " does not answer the request " +
         (e.has_seq ? "with seq " + std::to_string(e.seq) : std::string("without a seq"));
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Client

struct Client::Impl {
  Impl(const std::string& host, std::uint16_t port, ClientOptions o)
      : options(o), socket(io), reader(o.max_frame_bytes) {
    tcp::resolver resolver(io);
    ErrorCode ec;
    const auto endpoints = resolver.resolve(host, std::to_string(port), ec);
    if (ec) throw_error(ec, "ntk::stream::Client: cannot resolve " + host);
    asio::async_connect(socket, endpoints, [&](ErrorCode e, const tcp::endpoint&) { ec = e; });
    run();
    ec = translate(ec);  // a timeout: timed_out, not the operation_aborted of the close
    if (ec) {
      throw_error(ec,
                  "ntk::stream::Client: cannot connect to " + host + ":" + std::to_string(port));
    }
    socket.set_option(tcp::no_delay(true), ec);
  }

  // Runs the private io_context until the started operations finish, or until a whole
  // timeout passes without progress (a handler that moved bytes counts `progress`; one
  // read or write finishes at its first completion): then the socket is closed (they
  // finish with operation_aborted) and translate() reports timed_out. Progress, not the
  // total time, is what counts: call_many takes any number of requests.
  void run() {
    io.restart();
    if (options.timeout.count() <= 0) {
      io.run();
      return;
    }
    for (;;) {
      const std::uint64_t before = progress;
      io.run_for(options.timeout);
      if (io.stopped()) return;
      if (progress == before) break;
    }
    ErrorCode ignored;
    socket.close(ignored);
    io.run();
    timed_out = true;
  }

  ErrorCode translate(ErrorCode ec) {
    if (timed_out) {
      timed_out = false;
      return asio::error::timed_out;
    }
    return ec;
  }

  void write(asio::const_buffer bytes) {
    ErrorCode ec;
    asio::async_write(socket, bytes, [&](ErrorCode e, std::size_t) { ec = e; });
    run();
    ec = translate(ec);
    if (ec) throw_error(ec, "ntk::stream::Client: write");
  }

  v1::Response read_one() {
    v1::Response response;
    ErrorCode ec;
    for (;;) {
      if (reader.next(response, ec)) return response;
      if (ec) {
        ErrorCode ignored;
        socket.close(ignored);  // the connection is over (header: ERRORS)
        throw_error(ec, "ntk::stream::Client: unreadable response stream");
      }
      socket.async_read_some(reader.buffer(), [&](ErrorCode e, std::size_t n) {
        ec = e;
        if (!e) reader.fed(n);
      });
      run();
      ec = translate(ec);
      if (ec) throw_error(ec, "ntk::stream::Client: read");
    }
  }

  // The next response, which must answer `e`. On a mismatch the connection is over.
  v1::Response read_answer(const Expected& e, const char* who) {
    v1::Response r = read_one();
    if (!answers(e, r)) {
      reader.fail();
      ErrorCode ignored;
      socket.close(ignored);
      throw_error(bad_message(),
                  std::string("ntk::stream::Client::") + who + ": " + mismatch(e, r));
    }
    return r;
  }

  ClientOptions options;
  asio::io_context io;
  tcp::socket socket;
  ResponseReader reader;
  std::string out;                // not state: the frame being written
  std::deque<Expected> expected;  // of the requests sent and not yet received, in order
  std::size_t many = 0;           // requests of the call_many running, or of one that failed
  std::uint64_t progress = 0;     // completed reads and writes, for run()
  bool timed_out = false;
};

Client::Client(const std::string& host, std::uint16_t port, ClientOptions options)
    : impl_(std::make_unique<Impl>(host, port, options)) {}
Client::~Client() = default;
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;

void Client::send(const v1::Request& request) {
  impl_->out.clear();
  encode_delimited(request, impl_->out);
  impl_->write(asio::buffer(impl_->out));
  impl_->expected.push_back(expected_of(request));
}

void Client::send_raw(std::span<const std::uint8_t> bytes, std::size_t frames) {
  impl_->write(asio::buffer(bytes.data(), bytes.size()));
  impl_->expected.insert(impl_->expected.end(), frames, Expected{});
}

v1::Response Client::receive() {
  Impl& d = *impl_;
  if (pending() == 0) throw std::logic_error("Client::receive: no request is pending");
  if (d.expected.empty()) {  // after a failed call_many (its connection is closed)
    v1::Response r = d.read_answer(Expected{}, "receive");
    --d.many;
    return r;
  }
  v1::Response r = d.read_answer(d.expected.front(), "receive");
  d.expected.pop_front();
  return r;
}

v1::Response Client::call(const v1::Request& request) {
  send(request);
  return receive();
}

std::vector<v1::Response> Client::call_many(std::span<const v1::Request> requests) {
  if (pending() != 0) {
    throw std::logic_error("Client::call_many: " + std::to_string(pending()) +
                           " responses are still pending");
  }
  Impl& d = *impl_;
  std::vector<v1::Response> responses;
  responses.reserve(requests.size());
  // Writer: frames in chunks of about 64 KiB; reader: responses as they come.
  std::size_t next_request = 0;
  std::string chunk;
  // The first error of either side. It closes the socket, which ends the other side too:
  // a write can wait forever on a server that waits for its answers to be read, and a
  // read for answers that the server never got the requests of.
  ErrorCode failure;
  std::string mismatch_what;  // a response that answers another request
  const auto fail = [&](ErrorCode e) {
    if (failure) return;
    failure = e;
    ErrorCode ignored;
    d.socket.close(ignored);
  };
  std::function<void()> write_next = [&] {
    chunk.clear();
    while (next_request < requests.size() && chunk.size() < kReadChunk) {
      encode_delimited(requests[next_request++], chunk);
    }
    if (chunk.empty()) return;
    asio::async_write(d.socket, asio::buffer(chunk), [&](ErrorCode e, std::size_t) {
      if (e) return fail(e);
      ++d.progress;
      write_next();
    });
  };
  std::function<void()> read_next = [&] {
    ErrorCode read_ec;
    for (v1::Response r; d.reader.next(r, read_ec);) {
      // Every response read must answer the next request: one beyond them (already in
      // the buffer after the last answer) answers nothing that was sent.
      if (responses.size() == requests.size()) {
        mismatch_what = "a response that answers no request";
      } else if (const Expected e = expected_of(requests[responses.size()]); !answers(e, r)) {
        mismatch_what = mismatch(e, r);
      } else {
        responses.push_back(std::move(r));
        continue;
      }
      d.reader.fail();
      read_ec = bad_message();
      break;
    }
    if (read_ec) return fail(read_ec);
    if (responses.size() == requests.size()) return;
    d.socket.async_read_some(d.reader.buffer(), [&](ErrorCode e, std::size_t n) {
      if (e) return fail(e);
      ++d.progress;
      d.reader.fed(n);
      read_next();
    });
  };
  d.many = requests.size();
  write_next();
  read_next();
  d.run();
  const ErrorCode ec = d.translate(failure);
  if (ec) {
    throw_error(ec, "ntk::stream::Client::call_many" +
                        (mismatch_what.empty() ? std::string() : ": " + mismatch_what));
  }
  d.many = 0;
  return responses;
}

std::size_t Client::pending() const { return impl_->expected.size() + impl_->many; }

void Client::shutdown_send() {
  ErrorCode ignored;
  impl_->socket.shutdown(tcp::socket::shutdown_send, ignored);
}

void Client::close() {
  ErrorCode ignored;
  impl_->socket.close(ignored);
}

// ---------------------------------------------------------------------------------------
// AsyncClient

struct AsyncClient::Impl {
  Impl(const asio::any_io_executor& executor, ClientOptions o)
      : options(o),
        strand(asio::make_strand(executor)),
        socket(strand),
        resolver(strand),
        reader(o.max_frame_bytes) {}

  // Everything below runs on the strand. User-facing entry points post (never dispatch),
  // so a handler that calls async_call does not re-enter these functions.

  // Starts the write and the read that are due.
  void pump(const std::shared_ptr<AsyncClient>& self) {
    if (!connected || failed) return;
    if (!writing && !queued.empty()) {
      std::swap(queued, in_flight);
      queued.clear();
      writing = true;
      asio::async_write(socket, asio::buffer(in_flight),
                        asio::bind_executor(strand, [self](ErrorCode ec, std::size_t) {
                          Impl& d = *self->impl_;
                          d.writing = false;
                          if (d.failed) return;
                          if (ec) return d.fail_all(ec);
                          d.pump(self);
                        }));
    }
    if (!reading && !handlers.empty()) {
      reading = true;
      socket.async_read_some(reader.buffer(),
                             asio::bind_executor(strand, [self](ErrorCode ec, std::size_t n) {
                               Impl& d = *self->impl_;
                               d.reading = false;
                               if (d.failed) return;
                               if (ec) return d.fail_all(ec);
                               d.reader.fed(n);
                               d.deliver();
                               d.pump(self);
                             }));
    }
  }

  // Completes the handlers of the responses that are in.
  void deliver() {
    while (!failed) {
      v1::Response response;
      ErrorCode ec;
      if (!reader.next(response, ec)) {
        if (ec) fail_all(ec);
        return;
      }
      // An answer nobody asked for, or one to another request: the stream is over.
      if (handlers.empty() || !answers(handlers.front().expected, response)) {
        reader.fail();
        return fail_all(bad_message());
      }
      ResponseHandler handler = std::move(handlers.front().handler);
      handlers.pop_front();
      complete(std::move(handler), ErrorCode(), std::move(response));
    }
  }

  // Runs a response handler as a task of its own on the strand (tasks run in the order
  // posted, so handlers keep the request order). A handler that throws propagates out of
  // the executor's run(), as any Asio handler does, and the application may call run()
  // again: called from here, in the middle of deliver() or fail_all(), it would have left
  // the client with no read started and the other handlers never called.
  void complete(ResponseHandler handler, ErrorCode ec, v1::Response response) {
    asio::post(strand, [self = owner->shared_from_this(), handler = std::move(handler), ec,
                        response = std::move(response)]() mutable {
      self->impl_->pending.fetch_sub(1);
      handler(ec, std::move(response));
    });
  }

  void fail_all(ErrorCode ec) {
    if (!failed) {
      failed = true;
      failure = ec;
      ErrorCode ignored;
      socket.close(ignored);
    }
    std::deque<Waiting> waiting;
    waiting.swap(handlers);
    queued.clear();
    for (auto& w : waiting) complete(std::move(w.handler), ec, v1::Response());
  }

  AsyncClient* owner = nullptr;  // whose Impl this is (for shared_from_this)
  ClientOptions options;
  asio::strand<asio::any_io_executor> strand;
  tcp::socket socket;
  tcp::resolver resolver;
  ResponseReader reader;

  bool connected = false;
  bool reading = false;
  bool writing = false;
  bool failed = false;
  ErrorCode failure;
  std::string queued;     // frames waiting for the write in flight
  std::string in_flight;  // the write in flight
  struct Waiting {
    Expected expected;
    ResponseHandler handler;
  };
  std::deque<Waiting> handlers;  // in request order
  std::atomic<std::size_t> pending{0};
};

AsyncClient::AsyncClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {
  impl_->owner = this;
}
AsyncClient::~AsyncClient() = default;

std::shared_ptr<AsyncClient> AsyncClient::create(const asio::any_io_executor& executor,
                                                 ClientOptions options) {
  return std::shared_ptr<AsyncClient>(new AsyncClient(std::make_unique<Impl>(executor, options)));
}

void AsyncClient::async_connect(std::string host, std::uint16_t port, ConnectHandler handler) {
  asio::post(impl_->strand, [self = shared_from_this(), host = std::move(host), port,
                             handler = std::move(handler)]() mutable {
    self->impl_->resolver.async_resolve(
        host, std::to_string(port),
        asio::bind_executor(
            self->impl_->strand,
            [self, handler = std::move(handler)](
                ErrorCode ec, const tcp::resolver::results_type& results) mutable {
              Impl& d = *self->impl_;
              if (ec || d.failed) {
                if (!ec) ec = d.failure;
                d.fail_all(ec);
                return handler(ec);
              }
              asio::async_connect(
                  d.socket, results,
                  asio::bind_executor(d.strand, [self, handler = std::move(handler)](
                                                    ErrorCode e, const tcp::endpoint&) mutable {
                    Impl& dd = *self->impl_;
                    if (!e && dd.failed) e = dd.failure;
                    if (e) {
                      dd.fail_all(e);
                      return handler(e);
                    }
                    ErrorCode ignored;
                    dd.socket.set_option(tcp::no_delay(true), ignored);
                    dd.connected = true;
                    dd.pump(self);  // calls made before the connection completed
                    handler(e);
                  }));
            }));
  });
}

void AsyncClient::async_call(v1::Request request, ResponseHandler handler) {
  impl_->pending.fetch_add(1);
  asio::post(impl_->strand, [self = shared_from_this(), request = std::move(request),
                             handler = std::move(handler)]() mutable {
    Impl& d = *self->impl_;
    if (d.failed) {
      d.pending.fetch_sub(1);
      return handler(d.failure, v1::Response());
    }
    encode_delimited(request, d.queued);
    d.handlers.push_back({expected_of(request), std::move(handler)});
    d.pump(self);
  });
}

void AsyncClient::close() {
  asio::post(impl_->strand, [self = shared_from_this()] {
    self->impl_->fail_all(asio::error::operation_aborted);
  });
}

std::size_t AsyncClient::pending() const { return impl_->pending.load(); }

}  // namespace ntk::stream
