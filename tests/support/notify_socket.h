// A test-owned systemd notification socket: the test sets NOTIFY_SOCKET to its path and
// reads the datagrams (READY=1, STATUS=..., STOPPING=1, WATCHDOG=1) the daemon sends.
#pragma once

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace inferbox::testing {

class NotifySocket {
 public:
  explicit NotifySocket(std::filesystem::path path);
  ~NotifySocket();
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // "NOTIFY_SOCKET=<path>", for the child's environment.
  std::string EnvAssignment() const { return "NOTIFY_SOCKET=" + path_.string(); }

  // Waits for the next datagram whose lines include `assignment` (e.g. "READY=1"); earlier
  // datagrams are kept in received(). Returns the whole datagram, or nullopt on timeout.
  std::optional<std::string> WaitFor(std::string_view assignment,
                                     std::chrono::milliseconds timeout);

  // Reads the datagrams already queued, without waiting (after the sender exited, that is
  // everything it sent).
  void ReceivePending();

  // Every datagram received so far, in order.
  const std::vector<std::string>& received() const { return received_; }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  std::vector<std::string> received_;
};

// The value of `KEY=` in a notification datagram, if present.
std::optional<std::string> NotifyField(const std::string& datagram, std::string_view key);

}  // namespace inferbox::testing
