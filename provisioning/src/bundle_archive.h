// Writing a bundle archive (pax tar, optionally zstd) member by member into an open file:
// the model bundles (bundle_writer.cc) and the update bundles (update_bundle.cc).
#pragma once

#include <archive.h>

#include <cstdint>
#include <filesystem>
#include <memory>
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

}  // namespace inferbox::provisioning
