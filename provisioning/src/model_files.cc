#include "model_files.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <set>

#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>

#include "file_ops.h"
#include "inferbox/common/posix_file.h"
#include "inferbox/provisioning/bundle.h"

namespace inferbox::provisioning {
namespace {

constexpr size_t kMaxNameBytes = 255;

// Paths from outside are quoted in errors, cut short so a hostile one cannot flood a log.
std::string Quote(std::string_view text) {
  std::string quoted = "\"";
  for (const char c : text.substr(0, 120)) {
    const auto byte = static_cast<unsigned char>(c);
    quoted += byte < 0x20 || byte == 0x7f ? '?' : c;
  }
  if (text.size() > 120) quoted += "...";
  return quoted + "\"";
}

}  // namespace

Status ValidateModelPath(std::string_view path, const StoreLimits& limits) {
  auto bad = [&](std::string_view why) {
    return InvalidArgumentError(fmt::format("file path {} {}", Quote(path), why));
  };
  if (path.empty()) return bad("is empty");
  if (path.size() > limits.max_path_bytes) {
    return bad(fmt::format("is longer than {} bytes", limits.max_path_bytes));
  }
  if (path.front() == '/') return bad("is absolute; model files are relative to the model");
  for (const char c : path) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) return bad("holds a control character");
    if (c == '\\') return bad("holds a backslash");
  }
  size_t depth = 0;
  size_t start = 0;
  while (start <= path.size()) {
    const size_t slash = std::min(path.find('/', start), path.size());
    const std::string_view part = path.substr(start, slash - start);
    if (part.empty()) return bad("has an empty part (\"//\" or a trailing '/')");
    if (part == "..") return bad("leaves the model folder (\"..\")");
    if (part.front() == '.') return bad("has a part starting with '.'");
    if (part.size() > kMaxNameBytes) return bad("has a part longer than 255 bytes");
    if (++depth > limits.max_path_depth) {
      return bad(fmt::format("is more than {} folders deep", limits.max_path_depth));
    }
    start = slash + 1;
  }
  return Status::Ok();
}

Status ValidateFileList(const std::vector<ModelFile>& files, const StoreLimits& limits,
                        bool require_digests) {
  if (files.empty()) return InvalidArgumentError("the model has no files");
  if (files.size() > limits.max_files) {
    return InvalidArgumentError(fmt::format("the model has {} files; at most {} are allowed",
                                            files.size(), limits.max_files));
  }
  std::set<std::string_view> paths;
  uint64_t total = 0;
  for (const ModelFile& file : files) {
    if (Status valid = ValidateModelPath(file.path(), limits); !valid.ok()) return valid;
    if (!paths.insert(file.path()).second) {
      return InvalidArgumentError(fmt::format("file {} is listed twice", Quote(file.path())));
    }
    if (file.size_bytes() > limits.max_file_bytes) {
      return InvalidArgumentError(fmt::format("file {} is {}; at most {} are allowed",
                                              Quote(file.path()), FormatBytes(file.size_bytes()),
                                              FormatBytes(limits.max_file_bytes)));
    }
    total += file.size_bytes();
    if (total > limits.max_model_bytes) {
      return InvalidArgumentError(fmt::format("the model's files add up to more than {}",
                                              FormatBytes(limits.max_model_bytes)));
    }
    if (require_digests && !IsSha256Hex(file.sha256())) {
      return InvalidArgumentError(
          fmt::format("file {} has no sha256 (64 lower-case hex digits)", Quote(file.path())));
    }
  }
  // "a" and "a/b" cannot both be files. In sorted order a folder's name is followed by its
  // contents, possibly after names such as "a-b" or "a.b" that sort between.
  for (auto it = paths.begin(); it != paths.end(); ++it) {
    const std::string folder = std::string(*it) + "/";
    const auto next = paths.lower_bound(folder);
    if (next != paths.end() && next->starts_with(folder)) {
      return InvalidArgumentError(
          fmt::format("{} is both a file and a folder in the file list", Quote(*it)));
    }
  }
  return Status::Ok();
}

std::string ModelDigest(const std::vector<ModelFile>& files) {
  std::vector<const ModelFile*> sorted;
  sorted.reserve(files.size());
  for (const ModelFile& file : files) sorted.push_back(&file);
  std::sort(sorted.begin(), sorted.end(),
            [](const ModelFile* a, const ModelFile* b) { return a->path() < b->path(); });
  Sha256 hash;
  for (const ModelFile* file : sorted)
    hash.Update(fmt::format("{}  {}\n", file->sha256(), file->path()));
  return "sha256:" + hash.FinishHex();
}

std::string_view DigestHex(std::string_view digest) {
  constexpr std::string_view kPrefix = "sha256:";
  return digest.starts_with(kPrefix) ? digest.substr(kPrefix.size()) : digest;
}

Result<BundleManifest> ParseBundleManifest(std::string_view json, const StoreLimits& limits) {
  if (json.size() > limits.max_manifest_bytes) {
    return InvalidArgumentError(fmt::format("{} is larger than {}", kBundleManifestName,
                                            FormatBytes(limits.max_manifest_bytes)));
  }
  BundleManifest manifest;
  if (Status parsed = ParseJson(json, manifest, kBundleManifestName); !parsed.ok()) return parsed;
  if (manifest.format_version() != kBundleFormatVersion) {
    return InvalidArgumentError(fmt::format("{} has format_version {}; this box reads version {}",
                                            kBundleManifestName, manifest.format_version(),
                                            kBundleFormatVersion));
  }
  const std::vector<ModelFile> files(manifest.files().begin(), manifest.files().end());
  if (Status valid = ValidateFileList(files, limits, /*require_digests=*/true); !valid.ok()) {
    return valid.WithContext(kBundleManifestName);
  }
  return manifest;
}

Result<std::vector<ModelFile>> ListModelFolder(const std::filesystem::path& dir,
                                               const StoreLimits& limits) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (!fs::is_directory(dir, error)) {
    return NotFoundError(fmt::format("{} is not a folder", dir.string()));
  }
  std::vector<ModelFile> files;
  fs::recursive_directory_iterator it(dir, error);
  for (const fs::recursive_directory_iterator end; !error && it != end; it.increment(error)) {
    const fs::path& path = it->path();
    const std::string relative = path.lexically_relative(dir).generic_string();
    if (path.filename().string().starts_with('.')) {
      if (it->is_directory(error)) it.disable_recursion_pending();
      continue;
    }
    struct stat info {};
    if (::lstat(path.c_str(), &info) != 0) return ErrnoStatus("cannot read", path, errno);
    if (S_ISDIR(info.st_mode)) continue;
    if (S_ISLNK(info.st_mode) && ::stat(path.c_str(), &info) != 0) {
      return ErrnoStatus("cannot follow the symlink", path, errno);
    }
    if (!S_ISREG(info.st_mode)) {
      return InvalidArgumentError(fmt::format(
          "{} is neither a file nor a folder (nor a symlink to a file); copy what it points to",
          path.string()));
    }
    if (files.size() == limits.max_files) {
      return InvalidArgumentError(
          fmt::format("{} holds more than {} files", dir.string(), limits.max_files));
    }
    ModelFile& file = files.emplace_back();
    file.set_path(relative);
    file.set_size_bytes(static_cast<uint64_t>(info.st_size));
  }
  if (error) return ErrnoStatus("cannot list", dir, error.value());
  std::sort(files.begin(), files.end(),
            [](const ModelFile& a, const ModelFile& b) { return a.path() < b.path(); });
  if (Status valid = ValidateFileList(files, limits, /*require_digests=*/false); !valid.ok()) {
    return valid.WithContext(dir.string());
  }
  return files;
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  std::string json;
  const auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  INFERBOX_CHECK(status.ok());
  if (!json.ends_with('\n')) json += '\n';
  return json;
}

Status ParseJson(std::string_view json, google::protobuf::Message& message, std::string_view what) {
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  const auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), &message, options);
  if (!status.ok()) {
    return InvalidArgumentError(
        fmt::format("{} is not valid: {}", what, std::string(status.message())));
  }
  return Status::Ok();
}

}  // namespace inferbox::provisioning
