#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>

#include "bundle_archive.h"
#include "file_ops.h"
#include "inferbox/common/atomic_file.h"
#include "inferbox/common/posix_file.h"
#include "inferbox/provisioning/bundle.h"
#include "model_files.h"

namespace inferbox::provisioning {

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
