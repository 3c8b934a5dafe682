#include "inferbox/daemon/systemd_notifier.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
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
  // A path, or "@name" in the abstract namespace (sd_notify(3)); other forms (vsock) get no
  // progress lines.
  const char* path = std::getenv("NOTIFY_SOCKET");
  sockaddr_un address{};
  if (path != nullptr && (path[0] == '/' || path[0] == '@') &&
      std::strlen(path) < sizeof(address.sun_path)) {
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, path, std::strlen(path));
    if (path[0] == '@') address.sun_path[0] = '\0';
    const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + std::strlen(path));
    if (fd >= 0 && ::connect(fd, reinterpret_cast<const sockaddr*>(&address), length) == 0) {
      progress_socket_ = fd;
    } else if (fd >= 0) {
      ::close(fd);
    }
  }
#endif
}

SystemdNotifier::~SystemdNotifier() {
  if (progress_socket_ >= 0) ::close(progress_socket_);
}

bool SystemdNotifier::Progress(std::string_view status) {
  if (progress_socket_ < 0) return false;
  const std::string text = "STATUS=" + OneLine(status);
  // EAGAIN: systemd is behind; the caller tries again with its next line.
  return ::send(progress_socket_, text.data(), text.size(), MSG_NOSIGNAL | MSG_DONTWAIT) ==
         static_cast<ssize_t>(text.size());
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
