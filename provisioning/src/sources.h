// Model sources: each stages a model's files under an install's staging folder, checking
// every file against the digests its manifest promised. A source object and the Staging it
// fills belong to the installing thread.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/provisioning/model_store.h"
#include "model_files.h"

namespace inferbox::provisioning {

// One install's staging folder, and what sources share while they fill it: progress reports,
// digest checks, reuse of contents the store already holds.
class Staging {
 public:
  Staging(std::filesystem::path files_dir, std::filesystem::path blobs_dir,
          const StoreLimits& limits, const ProgressCallback& progress, uint64_t total_bytes);

  const std::filesystem::path& files_dir() const { return files_dir_; }
  const StoreLimits& limits() const { return limits_; }
  std::filesystem::path PathOf(std::string_view relative) const { return files_dir_ / relative; }

  // Stages `file` (its sha256 known) as a hard link to the same contents in the blob store or
  // staged earlier by this install, and counts it done. False when there is no such copy.
  Result<bool> LinkExisting(const ModelFile& file);

  // Reports that `path` is being transferred now.
  Status BeginFile(std::string_view path);
  // Counts transferred bytes, reporting every few MiB. CANCELLED when the callback says stop.
  Status AddBytes(uint64_t bytes);
  // Records a staged file, checking it against what was planned: its size, and its digest
  // when the plan had one (INVALID_ARGUMENT naming the file and both digests).
  Status FinishFile(const ModelFile& planned, uint64_t size, std::string_view sha256);

  // Reports a phase change. CANCELLED when the callback says stop.
  Status Report(InstallPhase phase);

  // The files staged so far, with their digests.
  const std::vector<ModelFile>& files() const { return files_; }

 private:
  Status Send(InstallPhase phase, std::string_view current_file);

  const std::filesystem::path files_dir_;
  const std::filesystem::path blobs_dir_;
  const StoreLimits& limits_;
  const ProgressCallback& progress_;
  const uint64_t total_bytes_;
  uint64_t done_bytes_ = 0;
  uint64_t reported_bytes_ = 0;
  std::string current_file_;
  std::vector<ModelFile> files_;
  std::map<std::string, std::string> staged_by_digest_;  // sha256 -> relative path
};

// What a source will stage, known before any byte is written.
struct SourcePlan {
  // Sorted by path. sha256 is empty where the source learns it only by reading the file (a
  // folder has no manifest).
  std::vector<ModelFile> files;
  // The trusted key that signed the source's manifest; empty when unsigned.
  std::string signed_by;
  // ModelManifest.source.
  std::string description;
  // Bytes of the planned files already on disk (partial downloads), not needed again.
  uint64_t partial_bytes = 0;
};

class ModelSourceReader {
 public:
  virtual ~ModelSourceReader() = default;
  // Reads the source's file list and checks its signature. Writes nothing.
  virtual Result<SourcePlan> Plan() = 0;
  // Stages every planned file under staging.files_dir(). Called once, after Plan().
  virtual Status Transfer(Staging& staging) = 0;
  // The staged model is installed: drop what was kept for retrying (partial downloads).
  virtual void OnCommitted() {}
};

// Applies the box's signature policy to a manifest and its signatures; returns the signer
// ("" for unsigned). See CheckManifestSignatures.
using SignatureCheck = std::function<Result<std::string>(
    std::string_view manifest, const std::vector<std::string>& signatures)>;

std::unique_ptr<ModelSourceReader> MakeDirectoryReader(const DirectorySource& source,
                                                       const StoreLimits& limits);
std::unique_ptr<ModelSourceReader> MakeBundleReader(const BundleSource& source,
                                                    const StoreLimits& limits,
                                                    SignatureCheck check_signatures);
// `downloads_dir` keeps partial files (<sha256>.part) between tries.
std::unique_ptr<ModelSourceReader> MakeMirrorReader(const MirrorSource& source,
                                                    const MirrorOptions& options,
                                                    const StoreLimits& limits,
                                                    SignatureCheck check_signatures,
                                                    std::filesystem::path downloads_dir);

}  // namespace inferbox::provisioning
