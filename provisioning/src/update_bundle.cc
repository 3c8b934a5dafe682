// Update bundles (update_bundle.h): the manifest's checks, the signed reader that unpacks
// packages into a staging folder, and the writer of inferbox-bundle update.
#include "inferbox/provisioning/update_bundle.h"

#include <archive.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <map>
#include <set>

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>

#include "bundle_archive.h"
#include "file_ops.h"
#include "inferbox/common/atomic_file.h"
#include "inferbox/common/posix_file.h"
#include "inferbox/provisioning/bundle.h"
#include "model_files.h"
#include "signatures.h"

namespace inferbox::provisioning {
namespace {

constexpr uint64_t kMaxManifestBytes = 1 << 20;
constexpr uint64_t kMaxSignatureBytes = 1024;
constexpr int kMaxPackages = 64;
constexpr size_t kMaxNameChars = 200;

bool IsPackageName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameChars) return false;
  if (!std::isalnum(static_cast<unsigned char>(name.front()))) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '+' || c == '-' ||
           c == '_';
  });
}

bool IsPlainFileName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameChars || name.front() == '.') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '+' || c == '-' ||
           c == '_' || c == '~' || c == ':';
  });
}

// Unpacks the archive's current member into `out`, checking its size and SHA-256 against the
// signed manifest.
Status UnpackPackage(BundleArchiveReader& reader, const std::filesystem::path& bundle,
                     const UpdatePackage& package, const std::filesystem::path& out) {
  if (reader.member_size() != package.size_bytes()) {
    return InvalidArgumentError(fmt::format(
        "update bundle {}: {} is {} bytes, its signed manifest says {}: the bundle was changed",
        bundle.string(), package.file_name(), reader.member_size(), package.size_bytes()));
  }
  auto writer = HashingFileWriter::Create(out);
  if (!writer.ok()) return writer.status();
  if (Status read = reader.Read(package.file_name(),
                                [&](std::string_view bytes) { return writer->Append(bytes); });
      !read.ok()) {
    return read;
  }
  const uint64_t size = writer->size();
  auto sha256 = writer->Finish();
  if (!sha256.ok()) return sha256.status();
  if (size != package.size_bytes() || *sha256 != package.sha256()) {
    return InvalidArgumentError(fmt::format(
        "update bundle {}: {} has SHA-256 {}, its signed manifest says {}: the bundle was "
        "changed or damaged",
        bundle.string(), package.file_name(), *sha256, package.sha256()));
  }
  return Status::Ok();
}

Result<VerifiedUpdate> ReadAndUnpack(const std::filesystem::path& path, const TrustedKeys& keys,
                                     const UpdateTarget& target,
                                     const std::filesystem::path& staging_dir) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    return NotFoundError(fmt::format("no update bundle at {}", path.string()));
  }
  BundleArchiveReader reader("update bundle " + path.string());
  if (Status opened = reader.Open(path); !opened.ok()) return opened;
  auto first = reader.Next();
  if (!first.ok()) return first.status();
  if (*first != kUpdateManifestName) {
    return InvalidArgumentError(
        fmt::format("{} is not an inferbox update bundle: its first member "
                    "is \"{}\", not {}",
                    path.string(), first->value_or("").substr(0, 120), kUpdateManifestName));
  }
  auto manifest_text = reader.ReadSmall(kMaxManifestBytes);
  if (!manifest_text.ok()) return manifest_text.status();
  auto second = reader.Next();
  if (!second.ok()) return second.status();
  if (*second != kUpdateSignatureName) {
    return InvalidArgumentError(fmt::format(
        "update bundle {} is not signed (no {}); updates are accepted only when signed by a "
        "trusted key (inferbox-bundle update --sign-key)",
        path.string(), kUpdateSignatureName));
  }
  auto signature = reader.ReadSmall(kMaxSignatureBytes);
  if (!signature.ok()) return signature.status();
  if (keys.empty()) {
    return FailedPreconditionError("the box has no trusted update keys to check the bundle with");
  }
  auto signer = keys.Verify(*manifest_text, *signature);
  if (!signer.ok()) {
    return InvalidArgumentError(fmt::format(
        "update bundle {}: its signature verifies with none of the trusted update keys: the "
        "manifest was changed after signing, or its signer's public key is not trusted here",
        path.string()));
  }

  VerifiedUpdate update;
  update.signed_by = std::move(signer).value();
  if (Status parsed = ParseJson(*manifest_text, update.manifest, kUpdateManifestName);
      !parsed.ok()) {
    return parsed.WithContext(path.string());
  }
  if (Status valid = ValidateUpdateManifest(update.manifest, target); !valid.ok()) {
    return valid.WithContext(path.string());
  }

  std::map<std::string, int> planned;
  for (int i = 0; i < update.manifest.packages_size(); ++i) {
    planned[update.manifest.packages(i).file_name()] = i;
  }
  update.files.resize(static_cast<size_t>(update.manifest.packages_size()));
  if (Status made = MakeDirectories(staging_dir); !made.ok()) return made;
  std::set<std::string> seen;
  for (;;) {
    auto member = reader.Next();
    if (!member.ok()) return member.status();
    if (!member->has_value()) break;
    const std::string& name = **member;
    const auto found = name.starts_with(kUpdatePackagePrefix)
                           ? planned.find(name.substr(kUpdatePackagePrefix.size()))
                           : planned.end();
    if (found == planned.end()) {
      return InvalidArgumentError(
          fmt::format("update bundle {}: member \"{}\" is not in its manifest", path.string(),
                      name.substr(0, 120)));
    }
    if (!seen.insert(found->first).second) {
      return InvalidArgumentError(
          fmt::format("update bundle {}: member {} appears twice", path.string(), name));
    }
    const std::filesystem::path out = staging_dir / found->first;
    if (Status unpacked = UnpackPackage(reader, path, update.manifest.packages(found->second), out);
        !unpacked.ok()) {
      return unpacked;
    }
    update.files[static_cast<size_t>(found->second)] = out;
  }
  for (const auto& [file_name, index] : planned) {
    if (!seen.contains(file_name)) {
      return InvalidArgumentError(
          fmt::format("update bundle {} lacks {}{}, which its manifest lists", path.string(),
                      kUpdatePackagePrefix, file_name));
    }
  }
  if (Status synced = SyncDirectory(staging_dir); !synced.ok()) return synced;
  return update;
}

}  // namespace

bool IsPackageVersion(std::string_view version) {
  if (version.empty() || version.size() > kMaxNameChars) return false;
  if (!std::isdigit(static_cast<unsigned char>(version.front()))) return false;
  return std::all_of(version.begin(), version.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '+' || c == '~' ||
           c == ':' || c == '-' || c == '_';
  });
}

std::string UpstreamVersion(std::string_view package_version) {
  if (const auto colon = package_version.find(':'); colon != std::string_view::npos) {
    package_version.remove_prefix(colon + 1);
  }
  if (const auto dash = package_version.rfind('-'); dash != std::string_view::npos) {
    package_version = package_version.substr(0, dash);
  }
  return std::string(package_version);
}

Status ValidateUpdateManifest(const UpdateManifest& manifest, const UpdateTarget& target) {
  if (manifest.kind() != kUpdateKind) {
    return InvalidArgumentError(
        fmt::format("{} is of kind \"{}\", not \"{}\": not an update bundle", kUpdateManifestName,
                    manifest.kind().substr(0, 60), kUpdateKind));
  }
  if (manifest.format_version() != kUpdateFormatVersion) {
    return InvalidArgumentError(
        fmt::format("update bundle format version {} is not supported (this box reads version {})",
                    manifest.format_version(), kUpdateFormatVersion));
  }
  if (manifest.package_format() != target.package_format) {
    return InvalidArgumentError(fmt::format("the bundle holds {} packages, this box uses {}",
                                            manifest.package_format().substr(0, 20),
                                            target.package_format));
  }
  if (manifest.architecture() != target.architecture) {
    return InvalidArgumentError(fmt::format("the bundle is for architecture {}, this box is {}",
                                            manifest.architecture().substr(0, 40),
                                            target.architecture));
  }
  if (!IsPackageVersion(manifest.version())) {
    return InvalidArgumentError(fmt::format("the bundle's version \"{}\" is not a package version",
                                            manifest.version().substr(0, 60)));
  }
  if (manifest.packages_size() == 0 || manifest.packages_size() > kMaxPackages) {
    return InvalidArgumentError(fmt::format("the bundle lists {} packages (1 to {} allowed)",
                                            manifest.packages_size(), kMaxPackages));
  }
  std::set<std::string> file_names;
  std::set<std::string> names;
  bool has_main = false;
  for (const UpdatePackage& package : manifest.packages()) {
    if (!IsPlainFileName(package.file_name())) {
      return InvalidArgumentError(fmt::format("the bundle's file name \"{}\" is not a plain name",
                                              package.file_name().substr(0, 120)));
    }
    if (!IsPackageName(package.name()) || !IsPackageVersion(package.version())) {
      return InvalidArgumentError(fmt::format("{}: package \"{}\" version \"{}\" is not valid",
                                              package.file_name(), package.name().substr(0, 60),
                                              package.version().substr(0, 60)));
    }
    if (!IsSha256Hex(package.sha256())) {
      return InvalidArgumentError(
          fmt::format("{}: the digest is not 64 lower-case hex digits", package.file_name()));
    }
    if (!file_names.insert(package.file_name()).second || !names.insert(package.name()).second) {
      return InvalidArgumentError(fmt::format("the bundle lists {} or package {} twice",
                                              package.file_name(), package.name()));
    }
    if (package.name() == kMainPackage) {
      if (package.version() != manifest.version()) {
        return InvalidArgumentError(
            fmt::format("the bundle's version is {}, but its package {} is {}", manifest.version(),
                        kMainPackage, package.version()));
      }
      has_main = true;
    }
  }
  if (!has_main) {
    return InvalidArgumentError(fmt::format("the bundle has no package {}", kMainPackage));
  }
  return Status::Ok();
}

Result<std::shared_ptr<const TrustedKeys>> LoadUpdateKeys(const std::filesystem::path& dir) {
  std::error_code error;
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    if (entry.path().extension() == ".pem" && entry.is_regular_file(error)) {
      files.push_back(entry.path());
    }
  }
  if (files.empty()) {
    return FailedPreconditionError(fmt::format(
        "no trusted update keys in {}: put the update signer's ed25519 public key (PEM, "
        "*.pem) there; updates are never installed unsigned",
        dir.string()));
  }
  std::sort(files.begin(), files.end());
  std::vector<std::string> pems;
  for (const auto& file : files) {
    auto pem = ReadFile(file);
    if (!pem.ok()) return pem.status();
    pems.push_back(std::move(pem).value());
  }
  auto keys = TrustedKeys::Load(pems);
  if (!keys.ok()) return keys.status().WithContext(dir.string());
  return std::shared_ptr<const TrustedKeys>(std::move(keys).value());
}

Result<VerifiedUpdate> ReadUpdateBundle(const std::filesystem::path& path, const TrustedKeys& keys,
                                        const UpdateTarget& target,
                                        const std::filesystem::path& staging_dir) {
  std::error_code error;
  if (std::filesystem::exists(staging_dir, error)) {
    return FailedPreconditionError(
        fmt::format("the staging folder {} exists already", staging_dir.string()));
  }
  auto update = ReadAndUnpack(path, keys, target, staging_dir);
  if (!update.ok()) std::filesystem::remove_all(staging_dir, error);
  return update;
}

Result<UpdateManifest> WriteUpdateBundle(const std::vector<UpdateBundleInput>& packages,
                                         std::string_view package_format,
                                         const std::filesystem::path& out,
                                         std::string_view signing_key_pem) {
  UpdateManifest manifest;
  manifest.set_format_version(kUpdateFormatVersion);
  manifest.set_kind(std::string(kUpdateKind));
  manifest.set_package_format(std::string(package_format));
  for (const UpdateBundleInput& input : packages) {
    UpdatePackage& package = *manifest.add_packages();
    package.set_file_name(input.file.filename().string());
    package.set_name(input.info.name);
    package.set_version(input.info.version);
    const auto size = RegularFileSize(input.file);
    if (!size) return NotFoundError(fmt::format("no package file {}", input.file.string()));
    package.set_size_bytes(*size);
    auto sha256 = ReadChunks(input.file, [](std::string_view) { return Status::Ok(); });
    if (!sha256.ok()) return sha256.status();
    package.set_sha256(std::move(sha256).value());
    if (input.info.name == kMainPackage) manifest.set_version(input.info.version);
    if (input.info.architecture != "all" &&
        (manifest.architecture().empty() || input.info.name == kMainPackage)) {
      manifest.set_architecture(input.info.architecture);
    }
  }
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  *manifest.mutable_created_at() = google::protobuf::util::TimeUtil::SecondsToTimestamp(now);
  const UpdateTarget target{std::string(package_format), manifest.architecture()};
  if (Status valid = ValidateUpdateManifest(manifest, target); !valid.ok()) return valid;
  const std::string manifest_json = ToJson(manifest);
  auto signature = SignEd25519(manifest_json, signing_key_pem);
  if (!signature.ok()) return signature.status().WithContext("signing key");
  const std::string signature_line = *signature + "\n";

  const std::filesystem::path directory =
      out.has_parent_path() ? out.parent_path() : std::filesystem::path(".");
  std::string temp_name = (directory / ("." + out.filename().string() + ".XXXXXX")).string();
  UniqueFd fd(::mkostemp(temp_name.data(), O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("cannot create a temporary file beside", out, errno);
  const std::filesystem::path temp_path = temp_name;
  auto written = [&]() -> Status {
    if (::fchmod(fd.get(), 0644) != 0)
      return ErrnoStatus("cannot set the mode of", temp_path, errno);
    BundleArchive bundle(out, fd.get(), now);
    if (Status opened = bundle.Open(BundleCompression::kNone); !opened.ok()) return opened;
    if (Status added = bundle.AddMember(std::string(kUpdateManifestName), manifest_json);
        !added.ok()) {
      return added;
    }
    if (Status added = bundle.AddMember(std::string(kUpdateSignatureName), signature_line);
        !added.ok()) {
      return added;
    }
    for (size_t i = 0; i < packages.size(); ++i) {
      const UpdatePackage& package = manifest.packages(static_cast<int>(i));
      if (Status begun = bundle.BeginMember(std::string(kUpdatePackagePrefix) + package.file_name(),
                                            package.size_bytes());
          !begun.ok()) {
        return begun;
      }
      uint64_t size = 0;
      auto sha256 = ReadChunks(packages[i].file, [&](std::string_view chunk) {
        size += chunk.size();
        if (size > package.size_bytes()) return Status::Ok();
        return bundle.Write(chunk);
      });
      if (!sha256.ok()) return sha256.status();
      if (size != package.size_bytes() || *sha256 != package.sha256()) {
        return FailedPreconditionError(
            fmt::format("{} changed while the bundle was written", packages[i].file.string()));
      }
    }
    if (Status closed = bundle.Close(); !closed.ok()) return closed;
    if (::fsync(fd.get()) != 0) return ErrnoStatus("cannot sync", temp_path, errno);
    if (fd.Close() != 0) return ErrnoStatus("cannot close", temp_path, errno);
    if (::rename(temp_path.c_str(), out.c_str()) != 0) {
      return ErrnoStatus("cannot rename into place", out, errno);
    }
    return SyncDirectory(directory);
  }();
  if (!written.ok()) {
    ::unlink(temp_path.c_str());
    return written;
  }
  return manifest;
}

}  // namespace inferbox::provisioning
