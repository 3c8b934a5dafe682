#include "file_ops.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <optional>

#include <fmt/format.h>
#include <openssl/evp.h>

namespace inferbox::provisioning {
namespace {

constexpr size_t kChunkBytes = 1 << 20;

}  // namespace

Sha256::Sha256() : context_(EVP_MD_CTX_new()) {
  INFERBOX_CHECK(context_ != nullptr);
  INFERBOX_CHECK(EVP_DigestInit_ex(context_, EVP_sha256(), nullptr) == 1);
}

Sha256::~Sha256() {
  EVP_MD_CTX_free(context_);
}

void Sha256::Update(std::string_view bytes) {
  INFERBOX_CHECK(EVP_DigestUpdate(context_, bytes.data(), bytes.size()) == 1);
}

std::string Sha256::FinishHex() {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  INFERBOX_CHECK(EVP_DigestFinal_ex(context_, digest.data(), &length) == 1 && length == 32);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * length);
  for (unsigned int i = 0; i < length; ++i) {
    hex += kHex[digest[i] >> 4];
    hex += kHex[digest[i] & 0xF];
  }
  return hex;
}

std::string Sha256Hex(std::string_view bytes) {
  Sha256 hash;
  hash.Update(bytes);
  return hash.FinishHex();
}

bool IsSha256Hex(std::string_view text) {
  if (text.size() != 64) return false;
  for (const char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

HashingFileWriter::HashingFileWriter(UniqueFd fd, std::filesystem::path path)
    : fd_(std::move(fd)), path_(std::move(path)), hash_(std::make_unique<Sha256>()) {}

Result<HashingFileWriter> HashingFileWriter::Create(const std::filesystem::path& path,
                                                    mode_t mode) {
  if (path.has_parent_path()) {
    if (Status made = MakeDirectories(path.parent_path()); !made.ok()) return made;
  }
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (!fd.valid()) return ErrnoStatus("cannot create", path, errno);
  return HashingFileWriter(std::move(fd), path);
}

Result<HashingFileWriter> HashingFileWriter::Resume(UniqueFd fd,
                                                    const std::filesystem::path& path) {
  HashingFileWriter writer(std::move(fd), path);
  if (::lseek(writer.fd_.get(), 0, SEEK_SET) < 0) return ErrnoStatus("cannot seek", path, errno);
  Status read = ReadChunks(writer.fd_.get(), path, [&](std::string_view chunk) {
    writer.hash_->Update(chunk);
    writer.size_ += chunk.size();
    return Status::Ok();
  });
  if (!read.ok()) return read;
  return writer;
}

Status HashingFileWriter::Append(std::string_view bytes) {
  if (!WriteAll(fd_.get(), bytes)) return ErrnoStatus("cannot write", path_, errno);
  hash_->Update(bytes);
  size_ += bytes.size();
  return Status::Ok();
}

Status HashingFileWriter::Truncate() {
  if (::ftruncate(fd_.get(), 0) != 0 || ::lseek(fd_.get(), 0, SEEK_SET) < 0) {
    return ErrnoStatus("cannot truncate", path_, errno);
  }
  hash_ = std::make_unique<Sha256>();
  size_ = 0;
  return Status::Ok();
}

Result<std::string> HashingFileWriter::Finish() {
  if (::fsync(fd_.get()) != 0) return ErrnoStatus("cannot sync", path_, errno);
  if (fd_.Close() != 0) return ErrnoStatus("cannot close", path_, errno);
  return hash_->FinishHex();
}

Status ReadChunks(int fd, const std::filesystem::path& path,
                  const std::function<Status(std::string_view chunk)>& consume) {
  std::string buffer(kChunkBytes, '\0');
  for (;;) {
    const ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("cannot read", path, errno);
    }
    if (n == 0) return Status::Ok();
    if (Status consumed = consume(std::string_view(buffer.data(), static_cast<size_t>(n)));
        !consumed.ok()) {
      return consumed;
    }
  }
}

Result<std::string> ReadChunks(const std::filesystem::path& path,
                               const std::function<Status(std::string_view chunk)>& consume) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("cannot open", path, errno);
  Sha256 hash;
  Status read = ReadChunks(fd.get(), path, [&](std::string_view chunk) {
    hash.Update(chunk);
    return consume(chunk);
  });
  if (!read.ok()) return read;
  return hash.FinishHex();
}

Result<FileLock> FileLock::Acquire(const std::filesystem::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) return ErrnoStatus("cannot open the lock file", path, errno);
  while (::flock(fd.get(), LOCK_EX) != 0) {
    if (errno != EINTR) return ErrnoStatus("cannot lock", path, errno);
  }
  return FileLock(std::move(fd));
}

Result<FileLock> FileLock::TryAcquire(const std::filesystem::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("cannot open", path, errno);
  return TryAcquire(std::move(fd), path);
}

Result<FileLock> FileLock::TryAcquire(UniqueFd fd, const std::filesystem::path& path) {
  while (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return UnavailableError(fmt::format("{} is in use by another install", path.string()));
    }
    if (errno != EINTR) return ErrnoStatus("cannot lock", path, errno);
  }
  return FileLock(std::move(fd));
}

Result<uint64_t> FreeBytes(const std::filesystem::path& path) {
  struct statvfs info {};
  if (::statvfs(path.c_str(), &info) != 0) {
    return ErrnoStatus("cannot read the free space of", path, errno);
  }
  return static_cast<uint64_t>(info.f_bavail) * static_cast<uint64_t>(info.f_frsize);
}

std::string FormatBytes(uint64_t bytes) {
  constexpr std::array<std::string_view, 5> kUnits = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024) return fmt::format("{} bytes", bytes);
  double value = static_cast<double>(bytes) / 1024;
  size_t unit = 0;
  while (value >= 1024 && unit + 1 < kUnits.size()) {
    value /= 1024;
    ++unit;
  }
  return fmt::format("{:.1f} {} ({} bytes)", value, kUnits[unit], bytes);
}

Status MakeDirectories(const std::filesystem::path& path) {
  std::error_code error;
  std::filesystem::create_directories(path, error);
  if (error) return ErrnoStatus("cannot create the folder", path, error.value());
  return Status::Ok();
}

Status RemoveTree(const std::filesystem::path& path) {
  std::error_code error;
  std::filesystem::remove_all(path, error);
  if (error) return ErrnoStatus("cannot remove", path, error.value());
  return Status::Ok();
}

Status SyncTree(const std::filesystem::path& root) {
  std::error_code error;
  for (std::filesystem::recursive_directory_iterator it(root, error), end; !error && it != end;
       it.increment(error)) {
    if (it->is_directory(error) && !it->is_symlink(error)) {
      if (Status synced = SyncDirectory(it->path()); !synced.ok()) return synced;
    }
  }
  if (error) return ErrnoStatus("cannot walk", root, error.value());
  return SyncDirectory(root);
}

std::optional<uint64_t> RegularFileSize(const std::filesystem::path& path) {
  struct stat info {};
  if (::lstat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) return std::nullopt;
  return static_cast<uint64_t>(info.st_size);
}

}  // namespace inferbox::provisioning
