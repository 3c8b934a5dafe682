// Update bundles: the box's own packages, carried as one signed file. A bundle is a POSIX tar
// archive whose members are, in this order:
//
//   inferbox-update.json       the UpdateManifest (update.proto): kind, version,
//                              architecture, package format and every package file's name,
//                              package, version, size and SHA-256
//   inferbox-update.json.sig   an ed25519 signature over inferbox-update.json's exact bytes,
//                              base64 on one line (required: updates run as root)
//   packages/<file_name>       the package files
//
// The reader checks the signature before it writes a byte, the manifest against the box
// (format, architecture), and each package's size and digest as it is unpacked. Keys are the
// PEM files `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` write.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/provisioning/v1/update.pb.h"

namespace inferbox::provisioning {

class TrustedKeys;

using UpdateManifest = inferbox::provisioning::v1::UpdateManifest;
using UpdatePackage = inferbox::provisioning::v1::UpdatePackage;

inline constexpr std::string_view kUpdateManifestName = "inferbox-update.json";
inline constexpr std::string_view kUpdateSignatureName = "inferbox-update.json.sig";
inline constexpr std::string_view kUpdatePackagePrefix = "packages/";
inline constexpr std::string_view kUpdateKind = "inferbox-update";
inline constexpr uint32_t kUpdateFormatVersion = 1;
// The package whose version is the box's version: the daemon, engine and CLI.
inline constexpr std::string_view kMainPackage = "inferbox";

// What a package file says of itself (dpkg-deb -f, rpm -qp).
struct PackageInfo {
  std::string name;
  std::string version;
  std::string architecture;
};

// What the box accepts: its package format ("deb", "rpm") and architecture ("amd64").
struct UpdateTarget {
  std::string package_format;
  std::string architecture;
};

// The manifest's own consistency and its fit to `target`: kind, format version, format,
// architecture, a package "inferbox" at the manifest's version, plain unique file names,
// package names and versions a package manager accepts, well-formed digests.
// INVALID_ARGUMENT naming the problem.
Status ValidateUpdateManifest(const UpdateManifest& manifest, const UpdateTarget& target);

// A package version that is safe as a folder name and that dpkg and rpm accept:
// [A-Za-z0-9.+~:_-], starting with a digit.
bool IsPackageVersion(std::string_view version);

// The upstream part of a package version, which is what inferboxd reports: the epoch
// ("1:") and the package revision (from the last '-') removed. "1:0.2.0-3" -> "0.2.0".
std::string UpstreamVersion(std::string_view package_version);

// The ed25519 public keys (*.pem, sorted by name) in `dir`. FAILED_PRECONDITION when the
// folder is missing or holds none: updates are never accepted unsigned. Shared, so that
// callers need not see TrustedKeys' definition.
Result<std::shared_ptr<const TrustedKeys>> LoadUpdateKeys(const std::filesystem::path& dir);

struct VerifiedUpdate {
  UpdateManifest manifest;
  // "ed25519:<hex>" of the trusted key that signed it.
  std::string signed_by;
  // The unpacked package files, in the manifest's order, inside the staging folder.
  std::vector<std::filesystem::path> files;
};

// Reads and checks the bundle at `path` (see the top of this file) and unpacks its packages
// into `staging_dir`, a folder that must not exist yet. On any error `staging_dir` is removed
// again, so a refused bundle leaves nothing behind. INVALID_ARGUMENT for a bundle that is
// damaged, tampered with, unsigned or signed by an unknown key, or not for this box.
Result<VerifiedUpdate> ReadUpdateBundle(const std::filesystem::path& path, const TrustedKeys& keys,
                                        const UpdateTarget& target,
                                        const std::filesystem::path& staging_dir);

struct UpdateBundleInput {
  std::filesystem::path file;
  PackageInfo info;
};

// Writes a signed update bundle of `packages` to `out`, atomically; the version is that of
// the package "inferbox", which must be among them. Returns the manifest written.
Result<UpdateManifest> WriteUpdateBundle(const std::vector<UpdateBundleInput>& packages,
                                         std::string_view package_format,
                                         const std::filesystem::path& out,
                                         std::string_view signing_key_pem);

}  // namespace inferbox::provisioning
