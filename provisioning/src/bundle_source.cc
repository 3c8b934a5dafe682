// A bundle file (bundle.h): read once, front to back, with libarchive. The manifest and its
// signature come first and are checked before any model file is written; each file is
// checked against the manifest as it is unpacked. Only regular files under model/ are
// accepted: a symlink, a hard link, a device or a path leaving the model is an error.
#include <archive.h>
#include <archive_entry.h>

#include <set>

#include <fmt/format.h>

#include "file_ops.h"
#include "inferbox/common/atomic_file.h"
#include "inferbox/provisioning/bundle.h"
#include "sources.h"

namespace inferbox::provisioning {
namespace {

constexpr size_t kReadChunkBytes = 1 << 20;
constexpr uint64_t kMaxSignatureBytes = 1024;

struct ArchiveFree {
  void operator()(archive* handle) const { archive_read_free(handle); }
};

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
    archive_.reset(archive_read_new());
    INFERBOX_CHECK(archive_ != nullptr);
    archive_read_support_format_tar(archive_.get());
    archive_read_support_filter_zstd(archive_.get());
    if (archive_read_open_filename(archive_.get(), source_.path.c_str(), kReadChunkBytes) !=
        ARCHIVE_OK) {
      return Damaged("cannot open it");
    }

    auto first = NextMember();
    if (!first.ok()) return first.status();
    if (*first != kBundleManifestName) {
      return InvalidArgumentError(fmt::format(
          "{} is not a model bundle: its first member is \"{}\", not {}", source_.path.string(),
          first->value_or("").substr(0, 120), kBundleManifestName));
    }
    auto manifest_text = ReadSmallMember(limits_.max_manifest_bytes);
    if (!manifest_text.ok()) return manifest_text.status();

    std::vector<std::string> signatures;
    auto next = NextMember();
    if (!next.ok()) return next.status();
    if (*next == kBundleSignatureName) {
      auto signature = ReadSmallMember(kMaxSignatureBytes);
      if (!signature.ok()) return signature.status();
      signatures.push_back(std::move(signature).value());
      next = NextMember();
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
    std::string buffer(kReadChunkBytes, '\0');
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
      if (Status copied = Unpack(planned->second, staging, buffer); !copied.ok()) return copied;
      auto next = NextMember();
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
  Status Damaged(std::string_view what) const {
    return InvalidArgumentError(fmt::format(
        "bundle {} is damaged or not a tar archive: {}: {}", source_.path.string(), what,
        archive_error_string(archive_.get()) != nullptr ? archive_error_string(archive_.get())
                                                        : "unknown error"));
  }

  // The next member's path ("./" prefix dropped), skipping folder members; nullopt at the
  // end. Refuses anything but regular files and folders.
  Result<std::optional<std::string>> NextMember() {
    for (;;) {
      archive_entry* entry = nullptr;
      const int read = archive_read_next_header(archive_.get(), &entry);
      if (read == ARCHIVE_EOF) return std::optional<std::string>();
      if (read < ARCHIVE_WARN) return Damaged("cannot read the next member");
      const char* name = archive_entry_pathname(entry);
      if (name == nullptr) name = archive_entry_pathname_utf8(entry);
      if (name == nullptr) return Damaged("a member has no readable name");
      std::string path = name;
      if (path.starts_with("./")) path.erase(0, 2);
      const auto type = archive_entry_filetype(entry);
      if (type == AE_IFDIR) continue;
      auto refuse = [&](std::string_view what) {
        return InvalidArgumentError(
            fmt::format("{}: member \"{}\" is {}; a bundle holds only "
                        "regular files",
                        source_.path.string(), path.substr(0, 120), what));
      };
      if (archive_entry_hardlink(entry) != nullptr) return refuse("a hard link");
      if (type == AE_IFLNK) return refuse("a symlink");
      if (type != AE_IFREG) return refuse("a special file");
      if (!archive_entry_size_is_set(entry) || archive_entry_size(entry) < 0) {
        return refuse("of unknown size");
      }
      member_size_ = static_cast<uint64_t>(archive_entry_size(entry));
      return std::optional<std::string>(std::move(path));
    }
  }

  Result<std::string> ReadSmallMember(uint64_t max_bytes) {
    if (member_size_ > max_bytes) {
      return InvalidArgumentError(fmt::format("{}: a member is {}, larger than the {} allowed",
                                              source_.path.string(), FormatBytes(member_size_),
                                              FormatBytes(max_bytes)));
    }
    std::string text(member_size_, '\0');
    size_t done = 0;
    while (done < text.size()) {
      const la_ssize_t n =
          archive_read_data(archive_.get(), text.data() + done, text.size() - done);
      if (n < 0) return Damaged("cannot read a member");
      if (n == 0) return Damaged("a member ends early");
      done += static_cast<size_t>(n);
    }
    return text;
  }

  Status Unpack(const ModelFile& planned, Staging& staging, std::string& buffer) {
    if (member_size_ != planned.size_bytes()) {
      return InvalidArgumentError(fmt::format("{}: {}{} is {} bytes, its manifest says {}",
                                              source_.path.string(), kBundleModelPrefix,
                                              planned.path(), member_size_, planned.size_bytes()));
    }
    if (Status begun = staging.BeginFile(planned.path()); !begun.ok()) return begun;
    auto linked = staging.LinkExisting(planned);
    if (!linked.ok()) return linked.status();
    if (*linked) {
      if (archive_read_data_skip(archive_.get()) != ARCHIVE_OK)
        return Damaged("cannot skip a member");
      return Status::Ok();
    }
    auto out = HashingFileWriter::Create(staging.PathOf(planned.path()));
    if (!out.ok()) return out.status();
    for (;;) {
      const la_ssize_t n = archive_read_data(archive_.get(), buffer.data(), buffer.size());
      if (n < 0) return Damaged(fmt::format("cannot unpack {}", planned.path()));
      if (n == 0) break;
      if (Status written = out->Append(std::string_view(buffer.data(), static_cast<size_t>(n)));
          !written.ok()) {
        return written;
      }
      if (Status counted = staging.AddBytes(static_cast<uint64_t>(n)); !counted.ok())
        return counted;
    }
    const uint64_t size = out->size();
    auto sha256 = out->Finish();
    if (!sha256.ok()) return sha256.status();
    return staging.FinishFile(planned, size, *sha256).WithContext(source_.path.string());
  }

  const BundleSource source_;
  const StoreLimits& limits_;
  const SignatureCheck check_signatures_;
  std::unique_ptr<archive, ArchiveFree> archive_;
  uint64_t member_size_ = 0;
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
