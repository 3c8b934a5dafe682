#include "inferbox/daemon/systemd_notifier.h"

#include <ctime>
#include <string>

#include <spdlog/spdlog.h>

#if INFERBOX_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace inferbox::daemon {
namespace {

// STATUS= is one line; a newline would start a new assignment.
std::string OneLine(std::string_view text) {
  std::string line(text);
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return line;
}

}  // namespace

SystemdNotifier::SystemdNotifier() {
#if INFERBOX_HAVE_SYSTEMD
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    watchdog_ping_interval_ = std::chrono::microseconds(usec / 2);
  }
#endif
}

void SystemdNotifier::Send(std::string_view message) {
#if INFERBOX_HAVE_SYSTEMD
  const std::string text(message);
  const int result = sd_notify(0, text.c_str());
  if (result < 0) spdlog::warn("sd_notify failed: {}", -result);
#else
  (void)message;
#endif
}

void SystemdNotifier::Ready(std::string_view status) {
  Send("READY=1\nSTATUS=" + OneLine(status));
}

void SystemdNotifier::Status(std::string_view status) {
  Send("STATUS=" + OneLine(status));
}

void SystemdNotifier::Reloading(std::string_view status) {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const long long usec = static_cast<long long>(now.tv_sec) * 1000000 + now.tv_nsec / 1000;
  Send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec) + "\nSTATUS=" + OneLine(status));
}

void SystemdNotifier::Stopping(std::string_view status) {
  Send("STOPPING=1\nSTATUS=" + OneLine(status));
}

void SystemdNotifier::PingWatchdog() {
  Send("WATCHDOG=1");
}

}  // namespace inferbox::daemon
