#include "inferbox/common/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <string>

#include "inferbox/common/posix_file.h"

namespace inferbox {

Status WriteFileAtomically(const std::filesystem::path& path, std::string_view contents,
                           mode_t mode) {
  const std::filesystem::path directory =
      path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  std::string temp_template = (directory / ("." + path.filename().string() + ".XXXXXX")).string();
  UniqueFd file(::mkostemp(temp_template.data(), O_CLOEXEC));
  if (file.get() < 0) return ErrnoStatus("cannot create a temporary file for", path, errno);
  const std::filesystem::path temp_path = temp_template;

  auto fail = [&](std::string_view what) {
    const int error = errno;
    ::unlink(temp_path.c_str());
    return ErrnoStatus(what, path, error);
  };
  if (::fchmod(file.get(), mode) != 0) return fail("cannot set the mode of");
  if (!WriteAll(file.get(), contents)) return fail("cannot write");
  if (::fsync(file.get()) != 0) return fail("cannot sync");
  if (file.Close() != 0) return fail("cannot close");
  if (::rename(temp_path.c_str(), path.c_str()) != 0) return fail("cannot rename into place");

  return SyncDirectory(directory);
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
