#include "bundle_archive.h"

#include <archive_entry.h>

#include <fmt/format.h>

namespace inferbox::provisioning {
namespace {

struct EntryFree {
  void operator()(archive_entry* entry) const { archive_entry_free(entry); }
};

}  // namespace

BundleArchive::BundleArchive(const std::filesystem::path& path, int fd, int64_t mtime)
    : path_(path), fd_(fd), mtime_(mtime), archive_(archive_write_new()) {
  INFERBOX_CHECK(archive_ != nullptr);
}

Status BundleArchive::Open(BundleCompression compression) {
  if (archive_write_set_format_pax_restricted(archive_.get()) != ARCHIVE_OK ||
      (compression == BundleCompression::kZstd &&
       archive_write_add_filter_zstd(archive_.get()) != ARCHIVE_OK) ||
      archive_write_open_fd(archive_.get(), fd_) != ARCHIVE_OK) {
    return Error("cannot start");
  }
  return Status::Ok();
}

Status BundleArchive::BeginMember(const std::string& name, uint64_t size) {
  std::unique_ptr<archive_entry, EntryFree> entry(archive_entry_new());
  INFERBOX_CHECK(entry != nullptr);
  archive_entry_set_pathname(entry.get(), name.c_str());
  archive_entry_set_filetype(entry.get(), AE_IFREG);
  archive_entry_set_perm(entry.get(), 0644);
  archive_entry_set_size(entry.get(), static_cast<la_int64_t>(size));
  archive_entry_set_mtime(entry.get(), mtime_, 0);
  if (archive_write_header(archive_.get(), entry.get()) != ARCHIVE_OK) {
    return Error("cannot add " + name + " to");
  }
  return Status::Ok();
}

Status BundleArchive::Write(std::string_view bytes) {
  if (archive_write_data(archive_.get(), bytes.data(), bytes.size()) !=
      static_cast<la_ssize_t>(bytes.size())) {
    return Error("cannot write");
  }
  return Status::Ok();
}

Status BundleArchive::AddMember(const std::string& name, std::string_view contents) {
  if (Status begun = BeginMember(name, contents.size()); !begun.ok()) return begun;
  return Write(contents);
}

Status BundleArchive::Close() {
  if (archive_write_close(archive_.get()) != ARCHIVE_OK) return Error("cannot finish");
  return Status::Ok();
}

Status BundleArchive::Error(std::string_view what) const {
  const char* detail = archive_error_string(archive_.get());
  return FailedPreconditionError(fmt::format("{} the bundle {}: {}", what, path_.string(),
                                             detail != nullptr ? detail : "unknown error"));
}

}  // namespace inferbox::provisioning
