// A small HTTP/1.1 server (Boost.Beast) for ntkd's operational endpoints: /metrics,
// /livez, /readyz. GET and HEAD only; keep-alive; one thread of its own, so that a slow
// scrape never touches the stream server's threads.
//
//   accept --> session: read request (30 s, 8 KiB) --> handler(path) --> write --+
//                 ^                                                             |
//                 +------------------ keep-alive -------------------------------+
//
// THREAD SAFETY: start()/stop() from one controlling thread; the handler runs on the
//   HTTP thread, one request at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace ntk::daemon {

struct HttpReply {
  unsigned status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

// Called with the request path (query string removed); must not throw (a throw becomes
// a 500 reply).
using HttpHandler = std::function<HttpReply(std::string_view path)>;

class HttpServer {
 public:
  // address: "host:port" (port 0: any free port).
  HttpServer(std::string address, HttpHandler handler);
  ~HttpServer();  // stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and starts the thread. Throws std::system_error naming the address on failure.
  void start();
  // Closes the listener and every connection, joins the thread. Idempotent.
  void stop();
  std::uint16_t port() const;         // requires: started
  std::string bound_address() const;  // "host:port" with the actual port

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ntk::daemon
