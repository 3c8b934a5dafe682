// Small POSIX file helpers shared by the code that writes crash-safe files: an owning file
// descriptor, errno as a Status, and fsync of a directory (what makes a rename durable).
#pragma once

#include <filesystem>
#include <string_view>
#include <utility>

#include "inferbox/common/status.h"

namespace inferbox {

// Owns a file descriptor; closes it on destruction. -1 is "none".
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Closes now and returns close()'s result: 0, or -1 with errno set (a delayed write error).
  int Close();
  void Reset();

 private:
  int fd_ = -1;
};

// Writes all of `data`, going on after short writes and EINTR. False, with errno set, when a
// write fails.
bool WriteAll(int fd, std::string_view data);

// "<what> <path>: <strerror>", as NOT_FOUND for ENOENT, RESOURCE_EXHAUSTED for a full disk
// or quota, FAILED_PRECONDITION otherwise.
Status ErrnoStatus(std::string_view what, const std::filesystem::path& path, int error);

// fsyncs a directory, so that the entries created, renamed or removed in it survive a crash.
Status SyncDirectory(const std::filesystem::path& directory);

}  // namespace inferbox
