// Running the real ntkd in tests: a child process with its stderr in a file, readiness
// by polling its --port-file (never a fixed sleep), a blocking protobuf client on raw
// sockets (frames encoded and decoded with stream/frame_codec), and HTTP GET.
//
// Every wait has a deadline (kTimeout) and fails with the daemon's log attached, so a
// broken daemon makes a test fail quickly instead of hanging.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "ntk/stream/frame_codec.h"
#include "ntk/v1/request.pb.h"
#include "ntk/v1/response.pb.h"

extern char** environ;

namespace ntk::test {

inline constexpr std::chrono::seconds kTimeout{30};

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A child process (posix_spawn) with stdout and stderr appended to log_path.
class Process {
 public:
  Process(const std::vector<std::string>& argv, const std::filesystem::path& log_path,
          const std::vector<std::string>& extra_env = {})
      : log_path_(log_path) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(),
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    std::vector<std::string> env_strings;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string entry = *e;
      if (entry.rfind("NOTIFY_SOCKET=", 0) == 0) continue;  // only what the test sets
      env_strings.push_back(entry);
    }
    for (const auto& e : extra_env) env_strings.push_back(e);
    std::vector<char*> env;
    for (auto& e : env_strings) env.push_back(e.data());
    env.push_back(nullptr);
    const int rc = posix_spawn(&pid_, argv[0].c_str(), &actions, nullptr, args.data(), env.data());
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) throw std::runtime_error("posix_spawn " + argv[0] + ": " + std::strerror(rc));
  }
  ~Process() {
    if (pid_ > 0 && !status_) {
      ::kill(pid_, SIGKILL);
      int st = 0;
      ::waitpid(pid_, &st, 0);
    }
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  void signal(int signo) const { ::kill(pid_, signo); }
  std::string log() const { return slurp(log_path_); }

  // The exit status if it has exited (polls without blocking).
  std::optional<int> poll_exit() {
    if (status_) return status_;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    return status_;
  }
  // Waits for the exit; throws after the deadline (the process is then killed).
  int wait_exit(std::chrono::seconds timeout = kTimeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!poll_exit()) {
      if (std::chrono::steady_clock::now() > deadline) {
        throw std::runtime_error("process did not exit in time; log:\n" + log());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return *status_;
  }

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
  std::filesystem::path log_path_;
};

// "tcp=127.0.0.1:40000" lines of ntkd's --port-file.
struct Ports {
  std::map<std::string, std::vector<std::string>> addresses;
  std::uint16_t port(const std::string& kind, std::size_t i = 0) const {
    const std::string& a = addresses.at(kind).at(i);
    return static_cast<std::uint16_t>(std::stoi(a.substr(a.rfind(':') + 1)));
  }
};

// Polls until the port file appears (ntkd writes it atomically once it listens and its
// snapshot is restored) and the log holds the ready line (written just after it, with the
// version and the ntk::core copy that runs); fails early if the daemon exits.
inline Ports wait_for_ports(Process& daemon, const std::filesystem::path& port_file) {
  const auto deadline = std::chrono::steady_clock::now() + kTimeout;
  while (!std::filesystem::exists(port_file) ||
         daemon.log().find(" msg=ready ") == std::string::npos) {
    if (auto st = daemon.poll_exit()) {
      throw std::runtime_error("ntkd exited with status " + std::to_string(*st) +
                               " before listening; log:\n" + daemon.log());
    }
    if (std::chrono::steady_clock::now() > deadline) {
      throw std::runtime_error("ntkd did not write its port file and ready line in time; log:\n" +
                               daemon.log());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  Ports ports;
  std::istringstream in(slurp(port_file));
  std::string line;
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq != std::string::npos) ports.addresses[line.substr(0, eq)].push_back(line.substr(eq + 1));
  }
  return ports;
}

inline int connect_loopback(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("socket failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    throw std::runtime_error("connect to 127.0.0.1:" + std::to_string(port) + " failed");
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

// Reads whatever arrives within the deadline; "" at end of stream.
inline std::string read_some(int fd, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) throw std::runtime_error("read timed out");
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char buf[65536];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) throw std::runtime_error("read failed");
    return std::string(buf, static_cast<std::size_t>(n));
  }
}

inline void write_all(int fd, const std::string& bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) throw std::runtime_error("write failed");
    done += static_cast<std::size_t>(n);
  }
}

// A blocking ntk.v1 client over one TCP connection.
class Client {
 public:
  explicit Client(std::uint16_t port) : fd_(connect_loopback(port)) {}
  ~Client() { ::close(fd_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  void send(const v1::Request& request) {
    std::string bytes;
    stream::encode_delimited(request, bytes);
    write_all(fd_, bytes);
  }
  void send_all(const std::vector<v1::Request>& requests) {
    std::string bytes;
    for (const auto& r : requests) stream::encode_delimited(r, bytes);
    write_all(fd_, bytes);
  }
  v1::Response receive() {
    const auto deadline = std::chrono::steady_clock::now() + kTimeout;
    for (;;) {
      if (pending_.empty()) {
        buffer_ = read_some(fd_, deadline);
        if (buffer_.empty()) throw std::runtime_error("connection closed by ntkd");
        decoder_.feed({reinterpret_cast<const std::uint8_t*>(buffer_.data()), buffer_.size()});
        for (;;) {
          const auto r = decoder_.next();
          if (r.status == stream::FrameStatus::kNeedMore) break;
          if (r.status == stream::FrameStatus::kError) throw std::runtime_error("bad frame");
          v1::Response resp;
          if (!resp.ParseFromArray(r.frame.data(), static_cast<int>(r.frame.size()))) {
            throw std::runtime_error("unparseable response");
          }
          pending_.push_back(std::move(resp));
        }
      }
      if (!pending_.empty()) {
        v1::Response out = std::move(pending_.front());
        pending_.erase(pending_.begin());
        return out;
      }
    }
  }
  v1::Response call(const v1::Request& request) {
    send(request);
    return receive();
  }

 private:
  int fd_;
  stream::FrameDecoder decoder_;
  std::string buffer_;
  std::vector<v1::Response> pending_;
};

// GET over HTTP/1.0 (the server closes after the answer): status code and body.
inline std::pair<int, std::string> http_get(std::uint16_t port, const std::string& path) {
  const int fd = connect_loopback(port);
  write_all(fd, "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  std::string data;
  const auto deadline = std::chrono::steady_clock::now() + kTimeout;
  for (;;) {
    const std::string chunk = read_some(fd, deadline);
    if (chunk.empty()) break;
    data += chunk;
  }
  ::close(fd);
  const auto sp = data.find(' ');
  const auto body = data.find("\r\n\r\n");
  if (sp == std::string::npos || body == std::string::npos) {
    throw std::runtime_error("bad HTTP response: " + data);
  }
  return {std::stoi(data.substr(sp + 1, 3)), data.substr(body + 4)};
}

inline v1::Request sensor_reading(const std::string& id, std::uint64_t seq, std::uint64_t time,
                                  std::optional<double> value) {
  v1::Request r;
  r.set_seq(seq);
  auto* s = r.mutable_sensor_reading();
  s->set_sensor_id(id);
  s->set_time_unix_nano(time);
  if (value) s->set_value(*value);
  return r;
}

}  // namespace ntk::test
