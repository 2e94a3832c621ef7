// sd_notify(3) by hand.
#include "sd_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <system_error>

namespace ntk::daemon {

bool sd_notify(std::string_view state) {
  const char* env = std::getenv("NOTIFY_SOCKET");
  if (env == nullptr || *env == '\0') return false;
  const std::string_view name(env);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  // A path needs its terminating NUL in sun_path; an abstract name (its '@' becomes the
  // leading NUL) may fill all of it, as systemd allows.
  const bool fits =
      name[0] == '@' ? name.size() <= sizeof addr.sun_path : name.size() < sizeof addr.sun_path;
  if (!fits || (name[0] != '/' && name[0] != '@')) {
    throw std::runtime_error("NOTIFY_SOCKET=\"" + std::string(name) +
                             "\": not an absolute path or @abstract name that fits sun_path");
  }
  std::memcpy(addr.sun_path, name.data(), name.size());
  if (name[0] == '@') addr.sun_path[0] = '\0';  // abstract namespace
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "sd_notify: socket");
  const ssize_t n = ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL,
                             reinterpret_cast<sockaddr*>(&addr), len);
  const int err = errno;
  ::close(fd);
  if (n < 0) {
    throw std::system_error(err, std::generic_category(), "sd_notify: sendto " + std::string(name));
  }
  return true;
}

}  // namespace ntk::daemon
