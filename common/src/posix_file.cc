#include "inferbox/common/posix_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace inferbox {

int UniqueFd::Close() {
  const int result = ::close(fd_);
  fd_ = -1;
  return result;
}

void UniqueFd::Reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

Status ErrnoStatus(std::string_view what, const std::filesystem::path& path, int error) {
  std::string message(what);
  message += " ";
  message += path.string();
  message += ": ";
  message += std::strerror(error);
  StatusCode code = StatusCode::kFailedPrecondition;
  if (error == ENOENT) code = StatusCode::kNotFound;
  if (error == ENOSPC || error == EDQUOT) code = StatusCode::kResourceExhausted;
  return {code, std::move(message)};
}

Status SyncDirectory(const std::filesystem::path& directory) {
  UniqueFd dir(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir.valid() || ::fsync(dir.get()) != 0) {
    return ErrnoStatus("cannot sync the directory", directory, errno);
  }
  return Status::Ok();
}

}  // namespace inferbox
