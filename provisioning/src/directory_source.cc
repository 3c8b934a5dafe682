// A model folder on the box (Hugging Face layout). It carries no manifest: each file's digest
// is computed as it is copied, and the file must keep the size it had when listed.
#include <fcntl.h>

#include <cerrno>

#include <fmt/format.h>

#include "file_ops.h"
#include "sources.h"

namespace inferbox::provisioning {
namespace {

class DirectoryReader final : public ModelSourceReader {
 public:
  DirectoryReader(DirectorySource source, const StoreLimits& limits)
      : source_(std::move(source)), limits_(limits) {}

  Result<SourcePlan> Plan() override {
    auto files = ListModelFolder(source_.path, limits_);
    if (!files.ok()) return files.status();
    plan_.files = std::move(files).value();
    plan_.description = "directory:" + std::filesystem::absolute(source_.path).string();
    return plan_;
  }

  Status Transfer(Staging& staging) override {
    for (const ModelFile& planned : plan_.files) {
      if (Status begun = staging.BeginFile(planned.path()); !begun.ok()) return begun;
      const std::filesystem::path from = source_.path / planned.path();
      UniqueFd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
      if (!in.valid()) return ErrnoStatus("cannot open", from, errno);
      auto out = HashingFileWriter::Create(staging.PathOf(planned.path()));
      if (!out.ok()) return out.status();
      Status copied = ReadChunks(in.get(), from, [&](std::string_view chunk) {
        if (out->size() + chunk.size() > planned.size_bytes()) {
          return FailedPreconditionError(
              fmt::format("{} grew while it was being copied; install it again once it is complete",
                          from.string()));
        }
        if (Status written = out->Append(chunk); !written.ok()) return written;
        return staging.AddBytes(chunk.size());
      });
      if (!copied.ok()) return copied;
      const uint64_t size = out->size();
      auto sha256 = out->Finish();
      if (!sha256.ok()) return sha256.status();
      if (Status finished = staging.FinishFile(planned, size, *sha256); !finished.ok()) {
        return finished;
      }
    }
    return Status::Ok();
  }

 private:
  const DirectorySource source_;
  const StoreLimits& limits_;
  SourcePlan plan_;
};

}  // namespace

std::unique_ptr<ModelSourceReader> MakeDirectoryReader(const DirectorySource& source,
                                                       const StoreLimits& limits) {
  return std::make_unique<DirectoryReader>(source, limits);
}

}  // namespace inferbox::provisioning
