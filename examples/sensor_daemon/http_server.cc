// HttpServer on Boost.Beast (after Beast's example http_server_async).
#include "http_server.h"

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <system_error>
#include <thread>
#include <vector>

#include "daemon_config.h"

namespace ntk::daemon {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr auto kRequestTimeout = std::chrono::seconds(30);
constexpr std::size_t kMaxRequestBytes = 8 << 10;
constexpr std::size_t kMaxConnections = 64;

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, const HttpHandler& handler, std::atomic<std::size_t>& live)
      : stream_(std::move(socket)), handler_(handler), live_(live) {
    ++live_;
  }
  ~Session() { --live_; }

  void start() { do_read(); }

  // Waiting for (the rest of) a request since idle_since(), not answering one.
  bool idle() const { return idle_; }
  std::chrono::steady_clock::time_point idle_since() const { return idle_since_; }
  // Closes the connection (its pending read then ends, and the session with it).
  void evict() { do_close(); }

 private:
  void do_read() {
    idle_ = true;
    idle_since_ = std::chrono::steady_clock::now();
    parser_.emplace();
    parser_->header_limit(kMaxRequestBytes);
    parser_->body_limit(kMaxRequestBytes);
    stream_.expires_after(kRequestTimeout);
    http::async_read(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    idle_ = false;
    if (ec) return do_close();  // end of stream, timeout, bad request: just close
    const auto& req = parser_->get();
    auto res = std::make_shared<http::response<http::string_body>>();
    res->version(req.version());
    res->keep_alive(req.keep_alive());
    res->set(http::field::server, "ntkd");
    if (req.method() != http::verb::get && req.method() != http::verb::head) {
      res->result(http::status::method_not_allowed);
      res->set(http::field::allow, "GET, HEAD");
      res->set(http::field::content_type, "text/plain; charset=utf-8");
      res->body() = "method not allowed\n";
    } else {
      std::string_view target(req.target().data(), req.target().size());
      if (const auto q = target.find('?'); q != std::string_view::npos)
        target = target.substr(0, q);
      HttpReply reply;
      try {
        reply = handler_(target);
      } catch (const std::exception& e) {
        reply = {500, "text/plain; charset=utf-8",
                 std::string("internal error: ") + e.what() + "\n"};
      }
      res->result(reply.status);
      res->set(http::field::content_type, reply.content_type);
      res->body() = std::move(reply.body);
    }
    res->prepare_payload();
    if (req.method() == http::verb::head) res->body().clear();  // Content-Length kept
    stream_.expires_after(kRequestTimeout);
    http::async_write(stream_, *res,
                      [self = shared_from_this(), res](beast::error_code wec, std::size_t) {
                        if (wec || !res->keep_alive()) return self->do_close();
                        self->do_read();
                      });
  }

  void do_close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.socket().close(ec);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  const HttpHandler& handler_;
  std::atomic<std::size_t>& live_;
  bool idle_ = false;
  std::chrono::steady_clock::time_point idle_since_;
};

}  // namespace

struct HttpServer::Impl {
  // Declaration order matters: sessions abandoned at stop() are destroyed with `io`, and
  // they refer to `handler` and `live`, which must outlive it.
  std::string address;
  HttpHandler handler;
  std::atomic<std::size_t> live{0};
  std::uint16_t port = 0;
  std::string host;
  bool started = false;
  std::thread thread;
  asio::io_context io{1};
  std::optional<tcp::acceptor> acceptor;
  // Every session started, for evict_idlest (the io_context runs on one thread, so no
  // lock: sessions, their handlers and the acceptor's all run there).
  std::vector<std::weak_ptr<Session>> sessions;
  // Paces the accept loop after an accept error (EMFILE: the pending connection stays in
  // the backlog, and accepting again at once would spin a core).
  std::optional<asio::steady_timer> retry;

  bool evict_idlest() {
    std::erase_if(sessions, [](const std::weak_ptr<Session>& w) { return w.expired(); });
    std::shared_ptr<Session> idlest;
    for (const auto& w : sessions) {
      auto p = w.lock();
      if (p && p->idle() && (!idlest || p->idle_since() < idlest->idle_since())) idlest = p;
    }
    if (!idlest) return false;
    idlest->evict();
    return true;
  }

  void do_accept() {
    acceptor->async_accept(asio::make_strand(io), [this](beast::error_code ec, tcp::socket s) {
      if (ec == asio::error::operation_aborted) return;  // stopped
      if (!ec) {
        // At the limit, the connection idle the longest makes room (keep-alive or half-sent
        // requests must not lock probes out for the 30 s request timeout); if none is
        // idle, the new one is refused.
        if (live.load() >= kMaxConnections && !evict_idlest()) {
          beast::error_code ignored;
          s.close(ignored);
        } else {
          auto session = std::make_shared<Session>(std::move(s), handler, live);
          sessions.push_back(session);
          session->start();
        }
      }
      if (ec) {
        // Transient (EMFILE, ENFILE, ENOBUFS, ...): must not end the accept loop, nor spin
        // it, as long as the cause lasts. The daemon logs nothing here: its data port
        // reports the same exhaustion.
        retry.emplace(io);
        retry->expires_after(std::chrono::milliseconds(50));
        retry->async_wait([this](beast::error_code wait_ec) {
          if (!wait_ec && acceptor && acceptor->is_open()) do_accept();
        });
        return;
      }
      do_accept();
    });
  }
};

HttpServer::HttpServer(std::string address, HttpHandler handler) : impl_(std::make_unique<Impl>()) {
  impl_->address = std::move(address);
  impl_->handler = std::move(handler);
}

HttpServer::~HttpServer() { stop(); }

void HttpServer::start() {
  Impl& m = *impl_;
  const HostPort hp = parse_host_port(m.address);
  beast::error_code ec;
  tcp::resolver resolver(m.io);
  auto results =
      resolver.resolve(hp.host, std::to_string(hp.port), tcp::resolver::numeric_service, ec);
  if (ec || results.empty()) {
    throw std::system_error(ec, "metrics address " + m.address + ": cannot resolve");
  }
  const tcp::endpoint endpoint = results.begin()->endpoint();
  m.acceptor.emplace(m.io);
  m.acceptor->open(endpoint.protocol(), ec);
  if (!ec) m.acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) m.acceptor->bind(endpoint, ec);
  if (!ec) m.acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    m.acceptor.reset();
    throw std::system_error(ec, "metrics address " + m.address + ": cannot listen");
  }
  m.port = m.acceptor->local_endpoint().port();
  const auto ip = m.acceptor->local_endpoint().address();
  m.host = ip.is_v6() ? "[" + ip.to_string() + "]" : ip.to_string();
  m.do_accept();
  m.thread = std::thread([&m] { m.io.run(); });
  m.started = true;
}

void HttpServer::stop() {
  Impl& m = *impl_;
  if (!m.started) return;
  m.started = false;
  // Open sessions are abandoned: they are destroyed with the io_context's pending handlers.
  m.io.stop();
  if (m.thread.joinable()) m.thread.join();
  beast::error_code ec;
  if (m.acceptor) m.acceptor->close(ec);
}

std::uint16_t HttpServer::port() const { return impl_->port; }

std::string HttpServer::bound_address() const {
  return impl_->host + ":" + std::to_string(impl_->port);
}

}  // namespace ntk::daemon
