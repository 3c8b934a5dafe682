#include <unistd.h>

#include <cerrno>

#include <fmt/format.h>

#include "file_ops.h"
#include "sources.h"

namespace inferbox::provisioning {
namespace {

// Progress is reported at most once per this many bytes within a file.
constexpr uint64_t kReportEveryBytes = 4 << 20;

}  // namespace

Staging::Staging(std::filesystem::path files_dir, std::filesystem::path blobs_dir,
                 const StoreLimits& limits, const ProgressCallback& progress, uint64_t total_bytes)
    : files_dir_(std::move(files_dir)),
      blobs_dir_(std::move(blobs_dir)),
      limits_(limits),
      progress_(progress),
      total_bytes_(total_bytes) {}

Result<bool> Staging::LinkExisting(const ModelFile& file) {
  std::filesystem::path existing;
  if (const auto staged = staged_by_digest_.find(file.sha256());
      staged != staged_by_digest_.end()) {
    existing = files_dir_ / staged->second;
  } else {
    existing = blobs_dir_ / file.sha256();
    if (RegularFileSize(existing) != file.size_bytes()) return false;
  }
  const std::filesystem::path target = PathOf(file.path());
  if (Status made = MakeDirectories(target.parent_path()); !made.ok()) return made;
  if (::link(existing.c_str(), target.c_str()) != 0) {
    // The blob went away since it was looked at (garbage collection): transfer it instead.
    if (errno == ENOENT) return false;
    return ErrnoStatus("cannot link " + existing.string() + " to", target, errno);
  }
  files_.push_back(file);
  staged_by_digest_.emplace(file.sha256(), file.path());
  done_bytes_ += file.size_bytes();
  return true;
}

Status Staging::BeginFile(std::string_view path) {
  current_file_ = path;
  return Send(InstallPhase::kTransferring, current_file_);
}

Status Staging::AddBytes(uint64_t bytes) {
  done_bytes_ += bytes;
  if (done_bytes_ - reported_bytes_ < kReportEveryBytes) return Status::Ok();
  return Send(InstallPhase::kTransferring, current_file_);
}

Status Staging::FinishFile(const ModelFile& planned, uint64_t size, std::string_view sha256) {
  if (size != planned.size_bytes()) {
    return InvalidArgumentError(
        fmt::format("{}: {} bytes arrived, {} were expected (the source "
                    "changed or is corrupt)",
                    planned.path(), size, planned.size_bytes()));
  }
  if (!planned.sha256().empty() && planned.sha256() != sha256) {
    return InvalidArgumentError(
        fmt::format("{}: sha256 is {}, the manifest says {} (corrupt or tampered file)",
                    planned.path(), sha256, planned.sha256()));
  }
  ModelFile& file = files_.emplace_back(planned);
  file.set_sha256(std::string(sha256));
  staged_by_digest_.emplace(file.sha256(), file.path());
  return Send(InstallPhase::kTransferring, planned.path());
}

Status Staging::Report(InstallPhase phase) {
  return Send(phase, {});
}

Status Staging::Send(InstallPhase phase, std::string_view current_file) {
  reported_bytes_ = done_bytes_;
  if (!progress_) return Status::Ok();
  InstallProgress progress{.phase = phase,
                           .done_bytes = done_bytes_,
                           .total_bytes = total_bytes_,
                           .current_file = std::string(current_file)};
  if (!progress_(progress)) return {StatusCode::kCancelled, "the install was cancelled"};
  return Status::Ok();
}

}  // namespace inferbox::provisioning
