// File primitives of the model store: SHA-256, files written with their digest computed on
// the way, flock(2) locks, free space. Every object here belongs to the thread that made it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "inferbox/common/posix_file.h"
#include "inferbox/common/status.h"

struct evp_md_ctx_st;

namespace inferbox::provisioning {

// Incremental SHA-256 (OpenSSL EVP).
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(std::string_view bytes);
  // 64 lower-case hex digits. The object is spent afterwards.
  std::string FinishHex();

 private:
  evp_md_ctx_st* context_;
};

std::string Sha256Hex(std::string_view bytes);
bool IsSha256Hex(std::string_view text);

// Writes one file, hashing every byte written. Finish() fsyncs and closes it.
class HashingFileWriter {
 public:
  // Creates `path`, which must not exist, and the folders above it up to an existing one.
  static Result<HashingFileWriter> Create(const std::filesystem::path& path, mode_t mode = 0644);
  // Takes an open, writable file: hashes what it already holds and appends after it (a
  // download resumed from its partial file).
  static Result<HashingFileWriter> Resume(UniqueFd fd, const std::filesystem::path& path);

  HashingFileWriter(HashingFileWriter&&) = default;
  HashingFileWriter& operator=(HashingFileWriter&&) = default;

  Status Append(std::string_view bytes);
  // Empties the file and restarts the digest (a server that ignored a Range request).
  Status Truncate();
  uint64_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }
  // fsyncs and closes the file; returns its SHA-256 (hex).
  Result<std::string> Finish();

 private:
  HashingFileWriter(UniqueFd fd, std::filesystem::path path);

  UniqueFd fd_;
  std::filesystem::path path_;
  std::unique_ptr<Sha256> hash_;
  uint64_t size_ = 0;
};

// An exclusive flock(2) on a file or folder, held until destruction or process death (so a
// crash never leaves a lock behind).
class FileLock {
 public:
  // Locks `path`, creating it as an empty file when missing; waits for another holder.
  static Result<FileLock> Acquire(const std::filesystem::path& path);
  // Locks the folder or file `path` if no one holds it; UNAVAILABLE when someone does.
  static Result<FileLock> TryAcquire(const std::filesystem::path& path);
  // Locks an open file (the lock goes with the descriptor); UNAVAILABLE when someone holds it.
  static Result<FileLock> TryAcquire(UniqueFd fd, const std::filesystem::path& path);

  FileLock(FileLock&&) = default;
  FileLock& operator=(FileLock&&) = default;
  int fd() const { return fd_.get(); }
  // Hands back the descriptor, still locked.
  UniqueFd Release() { return std::move(fd_); }

 private:
  explicit FileLock(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

// Reads the open file `fd` (named `path` in errors) from its offset to its end, handing
// `consume` one chunk (up to 1 MiB) at a time; stops at the first error `consume` returns.
Status ReadChunks(int fd, const std::filesystem::path& path,
                  const std::function<Status(std::string_view chunk)>& consume);
// The same for the file at `path`; returns its SHA-256 (hex).
Result<std::string> ReadChunks(const std::filesystem::path& path,
                               const std::function<Status(std::string_view chunk)>& consume);

// Bytes available to an unprivileged writer on the file system of `path` (statvfs f_bavail).
Result<uint64_t> FreeBytes(const std::filesystem::path& path);

// "1.5 GiB (1610612736 bytes)".
std::string FormatBytes(uint64_t bytes);

// create_directories, as a Status naming the path.
Status MakeDirectories(const std::filesystem::path& path);
// remove_all, as a Status naming the path; a missing path is fine.
Status RemoveTree(const std::filesystem::path& path);
// fsyncs `root` and every folder below it.
Status SyncTree(const std::filesystem::path& root);
// The size of a regular file, or nullopt when `path` is no regular file.
std::optional<uint64_t> RegularFileSize(const std::filesystem::path& path);

}  // namespace inferbox::provisioning
