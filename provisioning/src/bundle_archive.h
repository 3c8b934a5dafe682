// Bundle archives (pax tar, optionally zstd), written member by member into an open file and
// read front to back: the model bundles (bundle_writer.cc, bundle_source.cc) and the update
// bundles (update_bundle.cc).
#pragma once

#include <archive.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "inferbox/common/status.h"
#include "inferbox/provisioning/bundle.h"

namespace inferbox::provisioning {

class BundleArchive {
 public:
  // Writes to `fd` (owned by the caller); `path` names the bundle in errors; every member
  // gets `mtime`.
  BundleArchive(const std::filesystem::path& path, int fd, int64_t mtime);

  Status Open(BundleCompression compression);
  // A regular member of `size` bytes, whose bytes follow with Write.
  Status BeginMember(const std::string& name, uint64_t size);
  Status Write(std::string_view bytes);
  Status AddMember(const std::string& name, std::string_view contents);
  Status Close();

 private:
  struct ArchiveWriteFree {
    void operator()(archive* handle) const { archive_write_free(handle); }
  };
  Status Error(std::string_view what) const;

  const std::filesystem::path path_;
  const int fd_;
  const int64_t mtime_;
  std::unique_ptr<archive, ArchiveWriteFree> archive_;
};

// Reads a bundle archive front to back. Only regular members are returned: folders are
// skipped; hard links, symlinks, special files and members of unknown size are refused.
class BundleArchiveReader {
 public:
  // `label` names the bundle in errors ("bundle /x.tar").
  explicit BundleArchiveReader(std::string label);

  Status Open(const std::filesystem::path& path);
  // The next regular member's path ("./" dropped), nullopt at the end.
  Result<std::optional<std::string>> Next();
  uint64_t member_size() const { return member_size_; }
  // The current member, refused when it holds more than `max_bytes`.
  Result<std::string> ReadSmall(uint64_t max_bytes);
  // The current member's bytes to `sink`, a chunk at a time; `what` names it in errors.
  Status Read(std::string_view what, const std::function<Status(std::string_view)>& sink);
  Status Skip();
  // INVALID_ARGUMENT "<label> is damaged or not a tar archive: <what>: <libarchive's reason>".
  Status Damaged(std::string_view what) const;

 private:
  struct ArchiveReadFree {
    void operator()(archive* handle) const { archive_read_free(handle); }
  };

  const std::string label_;
  std::unique_ptr<archive, ArchiveReadFree> archive_;
  uint64_t member_size_ = 0;
  std::string buffer_;
};

}  // namespace inferbox::provisioning
