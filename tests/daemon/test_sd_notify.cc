// sd_notify by hand: datagrams reach a path socket and an abstract one, as systemd's
// NOTIFY_SOCKET would receive them.
#include <doctest/doctest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "sd_notify.h"
#include "temp_dir.h"

namespace {

// Binds a datagram socket at `name` ("/path" or "@abstract").
int bind_notify_socket(const std::string& name) {
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, name.data(), name.size());
  if (name[0] == '@') addr.sun_path[0] = '\0';
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) == 0);
  return fd;
}

std::string receive(int fd) {
  pollfd p{fd, POLLIN, 0};
  REQUIRE(::poll(&p, 1, 10000) == 1);
  char buf[512];
  const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
  REQUIRE(n > 0);
  return std::string(buf, static_cast<std::size_t>(n));
}

}  // namespace

TEST_CASE("sd_notify: unset, path socket, abstract socket, bad values") {
  ::unsetenv("NOTIFY_SOCKET");
  CHECK(!ntk::daemon::sd_notify("READY=1"));

  ntk::test::TempDir dir;
  const std::string path = (dir / "notify").string();
  int fd = bind_notify_socket(path);
  ::setenv("NOTIFY_SOCKET", path.c_str(), 1);
  CHECK(ntk::daemon::sd_notify("READY=1\nSTATUS=listening"));
  CHECK(receive(fd) == "READY=1\nSTATUS=listening");
  ::close(fd);

  const std::string abstract = "@ntk-test-notify-" + std::to_string(::getpid());
  fd = bind_notify_socket(abstract);
  ::setenv("NOTIFY_SOCKET", abstract.c_str(), 1);
  CHECK(ntk::daemon::sd_notify("STOPPING=1"));
  CHECK(receive(fd) == "STOPPING=1");
  ::close(fd);

  // An abstract name may fill sun_path (108 bytes, the '@' standing for its leading NUL);
  // one byte more does not fit.
  std::string longest = "@ntk-" + std::to_string(::getpid()) + "-";
  longest.resize(sizeof(sockaddr_un{}.sun_path), 'n');
  fd = bind_notify_socket(longest);
  ::setenv("NOTIFY_SOCKET", longest.c_str(), 1);
  CHECK(ntk::daemon::sd_notify("READY=1"));
  CHECK(receive(fd) == "READY=1");
  ::close(fd);
  ::setenv("NOTIFY_SOCKET", (longest + "n").c_str(), 1);
  CHECK_THROWS_WITH_AS(ntk::daemon::sd_notify("READY=1"),
                       doctest::Contains("not an absolute path or @abstract name that fits"),
                       std::runtime_error);

  // Set but unusable: nobody listens there, or not a socket name at all.
  ::setenv("NOTIFY_SOCKET", (dir / "nobody").c_str(), 1);
  CHECK_THROWS_AS(ntk::daemon::sd_notify("READY=1"), std::system_error);
  ::setenv("NOTIFY_SOCKET", "relative/name", 1);
  CHECK_THROWS_AS(ntk::daemon::sd_notify("READY=1"), std::runtime_error);
  ::unsetenv("NOTIFY_SOCKET");
}

TEST_CASE("sd_notify: an empty NOTIFY_SOCKET is the same as none") {
  ::setenv("NOTIFY_SOCKET", "", 1);
  bool sent = true;
  CHECK_NOTHROW(sent = ntk::daemon::sd_notify("READY=1"));
  CHECK(!sent);
  ::unsetenv("NOTIFY_SOCKET");
}
