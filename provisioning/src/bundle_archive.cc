#include "bundle_archive.h"

#include <archive_entry.h>

#include <fmt/format.h>

#include "file_ops.h"

namespace inferbox::provisioning {
namespace {

constexpr size_t kReadChunkBytes = 1 << 20;

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

BundleArchiveReader::BundleArchiveReader(std::string label)
    : label_(std::move(label)), archive_(archive_read_new()) {
  INFERBOX_CHECK(archive_ != nullptr);
}

Status BundleArchiveReader::Open(const std::filesystem::path& path) {
  archive_read_support_format_tar(archive_.get());
  archive_read_support_filter_zstd(archive_.get());
  if (archive_read_open_filename(archive_.get(), path.c_str(), kReadChunkBytes) != ARCHIVE_OK) {
    return Damaged("cannot open it");
  }
  return Status::Ok();
}

Result<std::optional<std::string>> BundleArchiveReader::Next() {
  for (;;) {
    archive_entry* entry = nullptr;
    const int read = archive_read_next_header(archive_.get(), &entry);
    if (read == ARCHIVE_EOF) return std::optional<std::string>();
    if (read < ARCHIVE_WARN) return Damaged("cannot read the next member");
    const char* name = archive_entry_pathname(entry);
    if (name == nullptr) name = archive_entry_pathname_utf8(entry);
    if (name == nullptr) return Damaged("a member has no readable name");
    std::string path = name;
    if (path.starts_with("./")) path.erase(0, 2);
    const auto type = archive_entry_filetype(entry);
    if (type == AE_IFDIR) continue;
    auto refuse = [&](std::string_view what) {
      return InvalidArgumentError(
          fmt::format("{}: member \"{}\" is {}; a bundle holds only regular files", label_,
                      path.substr(0, 120), what));
    };
    if (archive_entry_hardlink(entry) != nullptr) return refuse("a hard link");
    if (type == AE_IFLNK) return refuse("a symlink");
    if (type != AE_IFREG) return refuse("a special file");
    if (!archive_entry_size_is_set(entry) || archive_entry_size(entry) < 0) {
      return refuse("of unknown size");
    }
    member_size_ = static_cast<uint64_t>(archive_entry_size(entry));
    return std::optional<std::string>(std::move(path));
  }
}

Result<std::string> BundleArchiveReader::ReadSmall(uint64_t max_bytes) {
  if (member_size_ > max_bytes) {
    return InvalidArgumentError(fmt::format("{}: a member is {}, larger than the {} allowed",
                                            label_, FormatBytes(member_size_),
                                            FormatBytes(max_bytes)));
  }
  std::string text(member_size_, '\0');
  size_t done = 0;
  while (done < text.size()) {
    const la_ssize_t n = archive_read_data(archive_.get(), text.data() + done, text.size() - done);
    if (n < 0) return Damaged("cannot read a member");
    if (n == 0) return Damaged("a member ends early");
    done += static_cast<size_t>(n);
  }
  return text;
}

Status BundleArchiveReader::Read(std::string_view what,
                                 const std::function<Status(std::string_view)>& sink) {
  buffer_.resize(kReadChunkBytes);
  for (;;) {
    const la_ssize_t n = archive_read_data(archive_.get(), buffer_.data(), buffer_.size());
    if (n < 0) return Damaged(fmt::format("cannot unpack {}", what));
    if (n == 0) return Status::Ok();
    if (Status taken = sink(std::string_view(buffer_.data(), static_cast<size_t>(n)));
        !taken.ok()) {
      return taken;
    }
  }
}

Status BundleArchiveReader::Skip() {
  if (archive_read_data_skip(archive_.get()) != ARCHIVE_OK) return Damaged("cannot skip a member");
  return Status::Ok();
}

Status BundleArchiveReader::Damaged(std::string_view what) const {
  const char* detail = archive_error_string(archive_.get());
  return InvalidArgumentError(fmt::format("{} is damaged or not a tar archive: {}: {}", label_,
                                          what, detail != nullptr ? detail : "unknown error"));
}

}  // namespace inferbox::provisioning
