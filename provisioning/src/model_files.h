// Model file lists: what a path inside a model may look like, the model digest, the bundle
// manifest, and listing a model folder. Pure functions; any thread.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/message.h>

#include "inferbox/common/status.h"
#include "inferbox/provisioning/model_store.h"
#include "inferbox/provisioning/v1/manifest.pb.h"

namespace inferbox::provisioning {

using ModelFile = inferbox::provisioning::v1::ModelFile;
using BundleManifest = inferbox::provisioning::v1::BundleManifest;

// OK when `path` names a file inside a model folder: relative, '/'-separated, each part a
// plain name (not empty, ".", "..", nor starting with '.'), no control characters or
// backslashes, within the limits' length and depth. INVALID_ARGUMENT naming the problem.
Status ValidateModelPath(std::string_view path, const StoreLimits& limits);

// Checks a file list from outside: its length, every path, no path listed twice or used both
// as a file and as a folder, each size and the total within the limits, and (when
// `require_digests`) every sha256 well-formed.
Status ValidateFileList(const std::vector<ModelFile>& files, const StoreLimits& limits,
                        bool require_digests);

// ModelManifest.digest of these files ("sha256:<hex>"); their order does not matter.
std::string ModelDigest(const std::vector<ModelFile>& files);
// The hex part of a "sha256:<hex>" digest.
std::string_view DigestHex(std::string_view digest);

// Parses and checks inferbox-bundle.json (format version, file list with digests).
Result<BundleManifest> ParseBundleManifest(std::string_view json, const StoreLimits& limits);

// The files of a model folder, sorted by path, sizes set, digests not computed. Names that
// start with '.' are skipped; symlinks to regular files count as those files; any other
// special file (a symlink to a folder, a device, a socket) is INVALID_ARGUMENT.
Result<std::vector<ModelFile>> ListModelFolder(const std::filesystem::path& dir,
                                               const StoreLimits& limits);

// Protobuf JSON with the .proto's field names, indented, ending in a newline.
std::string ToJson(const google::protobuf::Message& message);
// Parses protobuf JSON, ignoring unknown fields; INVALID_ARGUMENT prefixed with `what`.
Status ParseJson(std::string_view json, google::protobuf::Message& message, std::string_view what);

}  // namespace inferbox::provisioning
