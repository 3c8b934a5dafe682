// Model bundles: one file that carries a model to a box without a network (USB, air-gapped
// sites). A bundle is a POSIX tar archive, optionally zstd-compressed, whose members are, in
// this order:
//
//   inferbox-bundle.json       the BundleManifest (manifest.proto): every file's path, size
//                              and SHA-256
//   inferbox-bundle.json.sig   optional: an ed25519 signature over inferbox-bundle.json's
//                              exact bytes, base64 on one line
//   model/<path>               the model's files, regular files only
//
// A detached signature (same format) may travel beside the bundle as "<bundle>.sig". The
// manifest comes first so that a box checks the signature before it writes a byte, and each
// file's digest as it is unpacked. Unpacking a bundle on a web server makes a mirror
// (mirror.h).
//
// Keys are the PEM files OpenSSL writes:
//   openssl genpkey -algorithm ed25519 -out signing-key.pem
//   openssl pkey -in signing-key.pem -pubout -out signing-key.pub.pem
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

#include "inferbox/common/status.h"
#include "inferbox/provisioning/v1/manifest.pb.h"

namespace inferbox::provisioning {

inline constexpr std::string_view kBundleManifestName = "inferbox-bundle.json";
inline constexpr std::string_view kBundleSignatureName = "inferbox-bundle.json.sig";
inline constexpr std::string_view kBundleModelPrefix = "model/";
inline constexpr uint32_t kBundleFormatVersion = 1;

enum class BundleCompression { kNone, kZstd };

struct BundleWriteOptions {
  BundleCompression compression = BundleCompression::kNone;
  // The suggested model id recorded in the manifest; empty: the folder's name.
  std::string name;
  // An ed25519 private key (PEM, "-----BEGIN PRIVATE KEY-----"); empty: unsigned.
  std::string signing_key_pem;
  // With a key: also write the signature to "<bundle>.sig" (it is embedded either way).
  bool detached_signature = false;
};

// Writes a bundle of the model folder `model_dir` (files and folders starting with '.' are
// left out, as installs from a folder leave them out) to `bundle_path`, atomically: a
// temporary file beside it is renamed into place once complete and synced. Returns the
// manifest written.
Result<inferbox::provisioning::v1::BundleManifest> WriteBundle(
    const std::filesystem::path& model_dir, const std::filesystem::path& bundle_path,
    const BundleWriteOptions& options = {});

// Signs `message` with an ed25519 private key (PEM); returns the signature as a bundle
// carries it (base64, no newline). INVALID_ARGUMENT for a key that is not ed25519.
Result<std::string> SignEd25519(std::string_view message, std::string_view private_key_pem);

}  // namespace inferbox::provisioning
