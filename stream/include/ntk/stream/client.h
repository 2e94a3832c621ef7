// Client library for the ntk.v1 protocol over TCP: a blocking Client and an AsyncClient on
// the caller's Asio executor. Both frame requests as the server expects (length-delimited,
// frame_codec.h) and rely on the server answering every request exactly once, in request
// order on a connection: the n-th Response read answers the n-th Request sent.
//
// PIPELINING
//   Requests may be sent without waiting for the answers of earlier ones. The server reads
//   ahead by at most its max_queued_responses (default 1024) unanswered requests plus what
//   the socket buffers hold, then stops reading until its answers are read: a client that
//   sends without reading eventually blocks. Client::send()/receive() therefore suit
//   windows of up to about a thousand requests; Client::call_many() and AsyncClient read
//   and write at the same time and take any number.
//
// ERRORS
//   Transport failures are boost::system::error_code values (std::system_error in the
//   blocking Client): connection refused, reset, timeouts, and
//   boost::asio::error::eof when the server closed the connection. A response stream the
//   client cannot read (a frame above max_frame_bytes, bytes that are not a Response) or
//   cannot match is boost::system::errc::bad_message and ends the connection: the answers
//   after it could not be matched either. Cannot match: a Response whose seq is not the
//   seq of the request it would answer, or one read when every request has its answer
//   (AsyncClient; call_many: one already received with the last answer). A Response
//   without a seq answers any request (the server could not parse it). Errors of a
//   request (an Error response) are ordinary responses, not failures.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/system/error_code.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ntk/stream/frame_codec.h"
#include "ntk/v1/request.pb.h"
#include "ntk/v1/response.pb.h"

namespace ntk::stream {

struct ClientOptions {
  // Largest Response frame accepted (a Stats of many keys can be large).
  std::size_t max_frame_bytes = std::size_t{64} << 20;
  // Blocking Client only: connect, and every blocking send/receive, give up after this
  // (std::system_error with boost::asio::error::timed_out); call_many once this passes
  // without a byte sent or received; 0: wait forever.
  std::chrono::milliseconds timeout{0};
};

// Client
//
// WHAT THIS OBJECT REPRESENTS
//   One blocking TCP connection to an ntk.v1 server.
// INITIAL VALUE: connected, nothing sent.
// THREAD SAFETY: none; one thread at a time.
class Client {
 public:
  // Connects to host:port (a name or an address). Throws std::system_error on failure.
  Client(const std::string& host, std::uint16_t port, ClientOptions options = {});
  ~Client();
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;

  // Writes one request; blocks until it is handed to the kernel.
  // ensures: #pending() == pending() + 1.
  void send(const v1::Request& request);
  // Writes pre-framed bytes (one or more encode_delimited frames) as they are; `frames`
  // is the number of requests they hold. For load tools and byte-level tests.
  void send_raw(std::span<const std::uint8_t> bytes, std::size_t frames);
  // The next response, in request order. Blocks.
  // requires: pending() > 0 (std::logic_error).
  // Throws std::system_error (eof: the server closed the connection).
  v1::Response receive();
  // send + receive.
  v1::Response call(const v1::Request& request);
  // Sends every request while reading the responses (no deadlock for any count);
  // result[i] answers requests[i].
  // requires: pending() == 0 (std::logic_error).
  std::vector<v1::Response> call_many(std::span<const v1::Request> requests);

  // Requests sent and not yet received.
  std::size_t pending() const;
  // Half-closes the connection (the server answers what it read, then closes); receive()
  // still returns the outstanding responses.
  void shutdown_send();
  void close();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// AsyncClient
//
// WHAT THIS OBJECT REPRESENTS
//   One TCP connection to an ntk.v1 server driven by the caller's Asio executor: requests
//   are queued and written back to back, responses complete the handlers in request order.
// INITIAL VALUE: not connected.
// THREAD SAFETY: every member may be called from any thread; handlers run on the client's
//   strand (of the executor given to create()), one at a time, in request order. A
//   handler that throws leaves the executor's run() (Asio's rule); the client is not
//   affected, and the other handlers run when run() is called again.
// LIFETIME: pending operations keep the client alive (shared_ptr).
class AsyncClient : public std::enable_shared_from_this<AsyncClient> {
 public:
  using ConnectHandler = std::function<void(boost::system::error_code)>;
  using ResponseHandler = std::function<void(boost::system::error_code, v1::Response)>;

  static std::shared_ptr<AsyncClient> create(const boost::asio::any_io_executor& executor,
                                             ClientOptions options = {});
  ~AsyncClient();

  // Resolves host and connects; the handler gets the outcome.
  void async_connect(std::string host, std::uint16_t port, ConnectHandler handler);

  // Queues request; `handler` gets its Response (or the transport error that ended the
  // connection, then with an empty Response). Calls made before the connect completes
  // are sent once it does (and fail with its error if it fails).
  void async_call(v1::Request request, ResponseHandler handler);

  // Closes the connection; pending handlers get boost::asio::error::operation_aborted.
  void close();

  // Requests queued or sent whose handler has not run yet (approximate when called from
  // outside the strand).
  std::size_t pending() const;

 private:
  struct Impl;
  explicit AsyncClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ntk::stream
