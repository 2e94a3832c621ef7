// The systemd notification protocol (sd_notify(3)) without libsystemd: a datagram with
// newline-separated assignments ("READY=1", "STOPPING=1", "STATUS=...") to the AF_UNIX
// socket named by $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace).
#pragma once

#include <string>
#include <string_view>

namespace ntk::daemon {

// Sends `state` to $NOTIFY_SOCKET. Returns false when the variable is unset (not run by
// systemd: nothing to do); throws std::runtime_error when it is set but sending fails
// (the unit would hang in "activating", so the caller should know).
bool sd_notify(std::string_view state);

}  // namespace ntk::daemon
