#include "inferbox/common/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

namespace inferbox {
namespace {

Status ErrnoStatus(std::string_view what, const std::filesystem::path& path, int error) {
  std::string message(what);
  message += " ";
  message += path.string();
  message += ": ";
  message += std::strerror(error);
  return {error == ENOENT ? StatusCode::kNotFound : StatusCode::kFailedPrecondition,
          std::move(message)};
}

class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }
  // Closes now, reporting the error close() may carry for buffered writes.
  int Close() {
    const int result = ::close(fd_);
    fd_ = -1;
    return result;
  }

 private:
  int fd_;
};

}  // namespace

Status WriteFileAtomically(const std::filesystem::path& path, std::string_view contents,
                           mode_t mode) {
  const std::filesystem::path directory =
      path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  std::string temp_template = (directory / ("." + path.filename().string() + ".XXXXXX")).string();
  FileDescriptor file(::mkostemp(temp_template.data(), O_CLOEXEC));
  if (file.get() < 0) return ErrnoStatus("cannot create a temporary file for", path, errno);
  const std::filesystem::path temp_path = temp_template;

  auto fail = [&](std::string_view what) {
    const int error = errno;
    ::unlink(temp_path.c_str());
    return ErrnoStatus(what, path, error);
  };
  if (::fchmod(file.get(), mode) != 0) return fail("cannot set the mode of");
  for (size_t written = 0; written < contents.size();) {
    const ssize_t n = ::write(file.get(), contents.data() + written, contents.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("cannot write");
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(file.get()) != 0) return fail("cannot sync");
  if (file.Close() != 0) return fail("cannot close");
  if (::rename(temp_path.c_str(), path.c_str()) != 0) return fail("cannot rename into place");

  FileDescriptor dir(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() < 0 || ::fsync(dir.get()) != 0) {
    return ErrnoStatus("cannot sync the directory of", path, errno);
  }
  return Status::Ok();
}

Result<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoStatus("cannot open", path, errno);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return ErrnoStatus("cannot read", path, errno);
  return std::move(buffer).str();
}

}  // namespace inferbox
