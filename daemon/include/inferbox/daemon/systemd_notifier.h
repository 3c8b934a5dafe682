// The sd_notify protocol: tells systemd (Type=notify) when the daemon is ready, reloading
// or stopping, what it is doing (STATUS=), and that its main loop is alive (WATCHDOG=1).
// Every call is a no-op when NOTIFY_SOCKET is unset or inferbox was built without
// libsystemd. Called from the daemon's main thread only.
#pragma once

#include <chrono>
#include <optional>
#include <string_view>

namespace inferbox::daemon {

class SystemdNotifier {
 public:
  SystemdNotifier();

  SystemdNotifier(const SystemdNotifier&) = delete;
  SystemdNotifier& operator=(const SystemdNotifier&) = delete;
  ~SystemdNotifier();

  void Ready(std::string_view status);
  void Status(std::string_view status);
  // STATUS= as the box goes (requests running and waiting), without waiting: dropped when
  // systemd has not taken the previous ones yet, so that the main loop, the watchdog's
  // heartbeat, never blocks on a line of text (sd_notify waits while the socket is full).
  // False when the line was not sent (systemd behind, or no NOTIFY_SOCKET).
  bool Progress(std::string_view status);
  // Whether Progress lines go anywhere.
  bool has_progress() const { return progress_socket_ >= 0; }
  // RELOADING=1 with MONOTONIC_USEC, as systemd's reload protocol asks; follow with Ready().
  void Reloading(std::string_view status);
  void Stopping(std::string_view status);
  void PingWatchdog();

  // How often PingWatchdog() must be called (half of WATCHDOG_USEC), when systemd enabled
  // the watchdog for this process.
  std::optional<std::chrono::microseconds> watchdog_ping_interval() const {
    return watchdog_ping_interval_;
  }

 private:
  void Send(std::string_view message);

  std::optional<std::chrono::microseconds> watchdog_ping_interval_;
  // Progress's own socket to NOTIFY_SOCKET (non-blocking); -1 without one.
  int progress_socket_ = -1;
};

}  // namespace inferbox::daemon
