#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>

#include "file_ops.h"
#include "inferbox/common/atomic_file.h"
#include "inferbox/common/posix_file.h"
#include "inferbox/provisioning/bundle.h"
#include "model_files.h"

namespace inferbox::provisioning {
namespace {

struct ArchiveWriteFree {
  void operator()(archive* handle) const { archive_write_free(handle); }
};
struct EntryFree {
  void operator()(archive_entry* entry) const { archive_entry_free(entry); }
};

class BundleArchive {
 public:
  BundleArchive(const std::filesystem::path& path, int fd, int64_t mtime)
      : path_(path), fd_(fd), mtime_(mtime), archive_(archive_write_new()) {
    INFERBOX_CHECK(archive_ != nullptr);
  }

  Status Open(BundleCompression compression) {
    if (archive_write_set_format_pax_restricted(archive_.get()) != ARCHIVE_OK ||
        (compression == BundleCompression::kZstd &&
         archive_write_add_filter_zstd(archive_.get()) != ARCHIVE_OK) ||
        archive_write_open_fd(archive_.get(), fd_) != ARCHIVE_OK) {
      return Error("cannot start");
    }
    return Status::Ok();
  }

  Status BeginMember(const std::string& name, uint64_t size) {
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

  Status Write(std::string_view bytes) {
    if (archive_write_data(archive_.get(), bytes.data(), bytes.size()) !=
        static_cast<la_ssize_t>(bytes.size())) {
      return Error("cannot write");
    }
    return Status::Ok();
  }

  Status AddMember(const std::string& name, std::string_view contents) {
    if (Status begun = BeginMember(name, contents.size()); !begun.ok()) return begun;
    return Write(contents);
  }

  Status Close() {
    if (archive_write_close(archive_.get()) != ARCHIVE_OK) return Error("cannot finish");
    return Status::Ok();
  }

 private:
  Status Error(std::string_view what) const {
    const char* detail = archive_error_string(archive_.get());
    return FailedPreconditionError(fmt::format("{} the bundle {}: {}", what, path_.string(),
                                               detail != nullptr ? detail : "unknown error"));
  }

  const std::filesystem::path path_;
  const int fd_;
  const int64_t mtime_;
  std::unique_ptr<archive, ArchiveWriteFree> archive_;
};

}  // namespace

Result<BundleManifest> WriteBundle(const std::filesystem::path& model_dir,
                                   const std::filesystem::path& bundle_path,
                                   const BundleWriteOptions& options) {
  const StoreLimits limits;
  auto files = ListModelFolder(model_dir, limits);
  if (!files.ok()) return files.status();
  for (ModelFile& file : *files) {
    auto sha256 =
        ReadChunks(model_dir / file.path(), [](std::string_view) { return Status::Ok(); });
    if (!sha256.ok()) return sha256.status();
    file.set_sha256(std::move(sha256).value());
  }

  BundleManifest manifest;
  manifest.set_format_version(kBundleFormatVersion);
  manifest.set_name(
      !options.name.empty()
          ? options.name
          : std::filesystem::absolute(model_dir).lexically_normal().filename().string());
  for (const ModelFile& file : *files) *manifest.add_files() = file;
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  *manifest.mutable_created_at() = google::protobuf::util::TimeUtil::SecondsToTimestamp(now);
  const std::string manifest_json = ToJson(manifest);
  std::string signature;
  if (!options.signing_key_pem.empty()) {
    auto signed_text = SignEd25519(manifest_json, options.signing_key_pem);
    if (!signed_text.ok()) return signed_text.status().WithContext("signing key");
    signature = std::move(signed_text).value() + "\n";
  }

  const std::filesystem::path directory =
      bundle_path.has_parent_path() ? bundle_path.parent_path() : std::filesystem::path(".");
  std::string temp_name =
      (directory / ("." + bundle_path.filename().string() + ".XXXXXX")).string();
  UniqueFd fd(::mkostemp(temp_name.data(), O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("cannot create a temporary file beside", bundle_path, errno);
  const std::filesystem::path temp_path = temp_name;
  auto written = [&]() -> Status {
    if (::fchmod(fd.get(), 0644) != 0)
      return ErrnoStatus("cannot set the mode of", temp_path, errno);
    BundleArchive bundle(bundle_path, fd.get(), now);
    if (Status opened = bundle.Open(options.compression); !opened.ok()) return opened;
    if (Status added = bundle.AddMember(std::string(kBundleManifestName), manifest_json);
        !added.ok()) {
      return added;
    }
    if (!signature.empty()) {
      if (Status added = bundle.AddMember(std::string(kBundleSignatureName), signature);
          !added.ok()) {
        return added;
      }
    }
    for (const ModelFile& file : *files) {
      const std::string name = std::string(kBundleModelPrefix) + file.path();
      if (Status begun = bundle.BeginMember(name, file.size_bytes()); !begun.ok()) return begun;
      uint64_t size = 0;
      auto sha256 = ReadChunks(model_dir / file.path(), [&](std::string_view chunk) {
        size += chunk.size();
        if (size > file.size_bytes()) return Status::Ok();  // Reported below.
        return bundle.Write(chunk);
      });
      if (!sha256.ok()) return sha256.status();
      if (size != file.size_bytes() || *sha256 != file.sha256()) {
        return FailedPreconditionError(fmt::format(
            "{} changed while the bundle was written; write it again once the model is complete",
            (model_dir / file.path()).string()));
      }
    }
    if (Status closed = bundle.Close(); !closed.ok()) return closed;
    if (::fsync(fd.get()) != 0) return ErrnoStatus("cannot sync", temp_path, errno);
    if (fd.Close() != 0) return ErrnoStatus("cannot close", temp_path, errno);
    if (::rename(temp_path.c_str(), bundle_path.c_str()) != 0) {
      return ErrnoStatus("cannot rename into place", bundle_path, errno);
    }
    return SyncDirectory(directory);
  }();
  if (!written.ok()) {
    ::unlink(temp_path.c_str());
    return written;
  }
  if (options.detached_signature && !signature.empty()) {
    const std::filesystem::path signature_path = bundle_path.string() + ".sig";
    if (Status saved = WriteFileAtomically(signature_path, signature); !saved.ok()) return saved;
  }
  return manifest;
}

}  // namespace inferbox::provisioning
