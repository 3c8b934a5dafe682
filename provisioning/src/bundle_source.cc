// A bundle file (bundle.h): read once, front to back, with libarchive. The manifest and its
// signature come first and are checked before any model file is written; each file is
// checked against the manifest as it is unpacked. Only regular files under model/ are
// accepted: a symlink, a hard link, a device or a path leaving the model is an error.
#include <set>

#include <fmt/format.h>

#include "bundle_archive.h"
#include "file_ops.h"
#include "inferbox/common/atomic_file.h"
#include "inferbox/provisioning/bundle.h"
#include "sources.h"

namespace inferbox::provisioning {
namespace {

constexpr uint64_t kMaxSignatureBytes = 1024;

class BundleReader final : public ModelSourceReader {
 public:
  BundleReader(BundleSource source, const StoreLimits& limits, SignatureCheck check_signatures)
      : source_(std::move(source)),
        limits_(limits),
        check_signatures_(std::move(check_signatures)) {}

  Result<SourcePlan> Plan() override {
    std::error_code error;
    if (!std::filesystem::is_regular_file(source_.path, error)) {
      return NotFoundError(fmt::format("no bundle file at {}", source_.path.string()));
    }
    if (Status opened = archive_.Open(source_.path); !opened.ok()) return opened;

    auto first = archive_.Next();
    if (!first.ok()) return first.status();
    if (*first != kBundleManifestName) {
      return InvalidArgumentError(fmt::format(
          "{} is not a model bundle: its first member is \"{}\", not {}", source_.path.string(),
          first->value_or("").substr(0, 120), kBundleManifestName));
    }
    auto manifest_text = archive_.ReadSmall(limits_.max_manifest_bytes);
    if (!manifest_text.ok()) return manifest_text.status();

    std::vector<std::string> signatures;
    auto next = archive_.Next();
    if (!next.ok()) return next.status();
    if (*next == kBundleSignatureName) {
      auto signature = archive_.ReadSmall(kMaxSignatureBytes);
      if (!signature.ok()) return signature.status();
      signatures.push_back(std::move(signature).value());
      next = archive_.Next();
      if (!next.ok()) return next.status();
    }
    pending_member_ = std::move(next).value();
    const std::filesystem::path detached =
        source_.signature_path.value_or(std::filesystem::path(source_.path.string() + ".sig"));
    if (source_.signature_path || std::filesystem::exists(detached, error)) {
      auto signature = ReadFile(detached);
      if (!signature.ok()) return signature.status().WithContext("detached signature");
      if (signature->size() > kMaxSignatureBytes) {
        return InvalidArgumentError(
            fmt::format("{} is too large for a signature", detached.string()));
      }
      signatures.push_back(std::move(signature).value());
    }

    auto signer = check_signatures_(*manifest_text, signatures);
    if (!signer.ok()) return signer.status().WithContext(source_.path.string());
    auto manifest = ParseBundleManifest(*manifest_text, limits_);
    if (!manifest.ok()) return manifest.status().WithContext(source_.path.string());

    SourcePlan plan;
    plan.files.assign(manifest->files().begin(), manifest->files().end());
    std::sort(plan.files.begin(), plan.files.end(),
              [](const ModelFile& a, const ModelFile& b) { return a.path() < b.path(); });
    plan.signed_by = std::move(signer).value();
    plan.description = "bundle:" + std::filesystem::absolute(source_.path).string();
    for (const ModelFile& file : plan.files) planned_[file.path()] = file;
    return plan;
  }

  Status Transfer(Staging& staging) override {
    std::set<std::string> seen;
    for (std::optional<std::string> member = std::move(pending_member_); member;) {
      if (!member->starts_with(kBundleModelPrefix)) {
        return InvalidArgumentError(
            fmt::format("{}: unexpected member \"{}\" (model files "
                        "belong under {})",
                        source_.path.string(), member->substr(0, 120), kBundleModelPrefix));
      }
      const std::string path = member->substr(kBundleModelPrefix.size());
      if (Status valid = ValidateModelPath(path, limits_); !valid.ok()) {
        return valid.WithContext(source_.path.string());
      }
      const auto planned = planned_.find(path);
      if (planned == planned_.end()) {
        return InvalidArgumentError(
            fmt::format("{}: member {} is not in its manifest", source_.path.string(), *member));
      }
      if (!seen.insert(path).second) {
        return InvalidArgumentError(
            fmt::format("{}: member {} appears twice", source_.path.string(), *member));
      }
      if (Status copied = Unpack(planned->second, staging); !copied.ok()) return copied;
      auto next = archive_.Next();
      if (!next.ok()) return next.status();
      member = std::move(next).value();
    }
    for (const auto& [path, file] : planned_) {
      if (!seen.contains(path)) {
        return InvalidArgumentError(fmt::format("{} lacks {}{}, which its manifest lists",
                                                source_.path.string(), kBundleModelPrefix, path));
      }
    }
    return Status::Ok();
  }

 private:
  Status Unpack(const ModelFile& planned, Staging& staging) {
    if (archive_.member_size() != planned.size_bytes()) {
      return InvalidArgumentError(fmt::format(
          "{}: {}{} is {} bytes, its manifest says {}", source_.path.string(), kBundleModelPrefix,
          planned.path(), archive_.member_size(), planned.size_bytes()));
    }
    if (Status begun = staging.BeginFile(planned.path()); !begun.ok()) return begun;
    auto linked = staging.LinkExisting(planned);
    if (!linked.ok()) return linked.status();
    if (*linked) return archive_.Skip();
    auto out = HashingFileWriter::Create(staging.PathOf(planned.path()));
    if (!out.ok()) return out.status();
    if (Status read = archive_.Read(planned.path(),
                                    [&](std::string_view bytes) {
                                      if (Status written = out->Append(bytes); !written.ok())
                                        return written;
                                      return staging.AddBytes(bytes.size());
                                    });
        !read.ok()) {
      return read;
    }
    const uint64_t size = out->size();
    auto sha256 = out->Finish();
    if (!sha256.ok()) return sha256.status();
    return staging.FinishFile(planned, size, *sha256).WithContext(source_.path.string());
  }

  const BundleSource source_;
  const StoreLimits& limits_;
  const SignatureCheck check_signatures_;
  BundleArchiveReader archive_{"bundle " + source_.path.string()};
  // The first model member, read while looking for the signature.
  std::optional<std::string> pending_member_;
  std::map<std::string, ModelFile> planned_;
};

}  // namespace

std::unique_ptr<ModelSourceReader> MakeBundleReader(const BundleSource& source,
                                                    const StoreLimits& limits,
                                                    SignatureCheck check_signatures) {
  return std::make_unique<BundleReader>(source, limits, std::move(check_signatures));
}

}  // namespace inferbox::provisioning
