#include "notify_socket.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <sstream>
#include <stdexcept>

namespace inferbox::testing {

NotifySocket::NotifySocket(std::filesystem::path path) : path_(std::move(path)) {
  fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path_.string().size() >= sizeof(address.sun_path)) {
    throw std::runtime_error("notify socket path too long: " + path_.string());
  }
  std::strcpy(address.sun_path, path_.c_str());
  if (::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    throw std::runtime_error("cannot bind notify socket " + path_.string() + ": " +
                             std::strerror(errno));
  }
}

NotifySocket::~NotifySocket() {
  ::close(fd_);
  ::unlink(path_.c_str());
}

std::optional<std::string> NotifySocket::WaitFor(std::string_view assignment,
                                                 std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd descriptor{fd_, POLLIN, 0};
    const int ready = ::poll(&descriptor, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return std::nullopt;
    char buffer[4096];
    const ssize_t size = ::recv(fd_, buffer, sizeof(buffer), 0);
    if (size < 0) continue;
    std::string datagram(buffer, static_cast<size_t>(size));
    received_.push_back(datagram);
    std::istringstream lines(datagram);
    for (std::string line; std::getline(lines, line);) {
      if (line == assignment) return datagram;
    }
  }
}

void NotifySocket::ReceivePending() {
  char buffer[4096];
  while (true) {
    const ssize_t size = ::recv(fd_, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (size < 0) return;
    received_.emplace_back(buffer, static_cast<size_t>(size));
  }
}

std::optional<std::string> NotifyField(const std::string& datagram, std::string_view key) {
  std::istringstream lines(datagram);
  const std::string prefix = std::string(key) + "=";
  for (std::string line; std::getline(lines, line);) {
    if (line.starts_with(prefix)) return line.substr(prefix.size());
  }
  return std::nullopt;
}

}  // namespace inferbox::testing
