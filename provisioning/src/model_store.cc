#include "inferbox/provisioning/model_store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <set>

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>

#include "file_ops.h"
#include "inferbox/common/atomic_file.h"
#include "inferbox/common/model_id.h"
#include "inferbox/common/posix_file.h"
#include "model_files.h"
#include "model_validation.h"
#include "signatures.h"
#include "sources.h"

namespace inferbox::provisioning {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kManifestFormatVersion = 1;
constexpr std::string_view kReservedId = "store";
constexpr std::string_view kManifestName = "manifest.json";
constexpr std::string_view kFilesName = "files";
constexpr std::string_view kDownloadsName = "downloads";
constexpr uint32_t kDefaultTensorParallel = 1;
constexpr double kDefaultKvCacheMemoryFraction = 0.9;

// What models/<id> is.
struct ModelEntry {
  enum class Kind { kAbsent, kManaged, kUnmanaged } kind = Kind::kAbsent;
  std::string version;  // kManaged: the version's hex.
};

Status ValidateId(std::string_view id) {
  if (!IsModelId(id)) {
    return InvalidArgumentError(
        fmt::format("\"{}\" is not a model id ({})", id.substr(0, 80), kModelIdPattern));
  }
  if (id == kReservedId) {
    return InvalidArgumentError(
        fmt::format("\"{}\" is reserved for the model store's own folder", kReservedId));
  }
  return Status::Ok();
}

Status Notify(const ProgressCallback& progress, InstallPhase phase, uint64_t done, uint64_t total) {
  if (progress && !progress({.phase = phase, .done_bytes = done, .total_bytes = total})) {
    return {StatusCode::kCancelled, "the install was cancelled"};
  }
  return Status::Ok();
}

// An install's staging folder: locked while the install runs (so cleaning skips it), removed
// when the install fails. A committed install has moved it into the store.
class StagingFolder {
 public:
  StagingFolder(fs::path path, FileLock lock) : path_(std::move(path)), lock_(std::move(lock)) {}
  ~StagingFolder() {
    if (!committed_) {
      if (Status removed = RemoveTree(path_); !removed.ok()) spdlog::warn("{}", removed.message());
    }
  }
  StagingFolder(const StagingFolder&) = delete;
  StagingFolder& operator=(const StagingFolder&) = delete;

  const fs::path& path() const { return path_; }
  void set_committed() { committed_ = true; }

 private:
  const fs::path path_;
  FileLock lock_;
  bool committed_ = false;
};

}  // namespace

class ModelStore::Impl {
 public:
  Impl(fs::path models_dir, ModelStoreOptions options, std::unique_ptr<TrustedKeys> keys)
      : models_dir_(std::move(models_dir)),
        store_dir_(models_dir_ / "store"),
        blobs_dir_(store_dir_ / "blobs" / "sha256"),
        versions_dir_(store_dir_ / "versions"),
        lock_path_(store_dir_ / "lock"),
        staging_dir_(models_dir_ / ".staging"),
        downloads_dir_(staging_dir_ / kDownloadsName),
        options_(std::move(options)),
        keys_(std::move(keys)) {}

  const fs::path& models_dir() const { return models_dir_; }

  Status Initialize() {
    for (const fs::path& dir : {blobs_dir_, versions_dir_, downloads_dir_}) {
      if (Status made = MakeDirectories(dir); !made.ok()) return made;
    }
    auto lock = FileLock::Acquire(lock_path_);
    if (!lock.ok()) return lock.status();
    CleanStaging();
    return RemoveOrphanVersions();
  }

  Result<ModelManifest> Install(std::string_view id, const InstallSource& source,
                                const InstallOptions& options) {
    if (Status valid = ValidateId(id); !valid.ok()) return valid;
    const bool required = options_.require_signatures || options.require_signature;
    if (required && std::holds_alternative<DirectorySource>(source)) {
      return Status(
          StatusCode::kPermissionDenied,
          "this install requires a signed model, and a folder carries no signature: "
          "make a signed bundle of it (inferbox-bundle create --sign-key) and install that");
    }
    if (ReadEntry(id).kind == ModelEntry::Kind::kUnmanaged) return UnmanagedError(id);
    if (Status notified = Notify(options.progress, InstallPhase::kPreparing, 0, 0);
        !notified.ok()) {
      return notified;
    }

    auto reader = MakeReader(source, required);
    auto plan = reader->Plan();
    if (!plan.ok()) return plan.status();
    uint64_t total = 0;
    for (const ModelFile& file : plan->files) total += file.size_bytes();

    const bool digests_known =
        std::all_of(plan->files.begin(), plan->files.end(),
                    [](const ModelFile& file) { return !file.sha256().empty(); });
    if (digests_known) {
      auto settled = AlreadySettled(id, ModelDigest(plan->files), options.replace);
      if (!settled.ok()) return settled.status();
      if (*settled) {
        if (Status notified = Notify(options.progress, InstallPhase::kDone, total, total);
            !notified.ok()) {
          return notified;
        }
        return std::move(*settled).value();
      }
    }
    if (Status space = CheckFreeSpace(*plan); !space.ok()) return space;

    auto folder = CreateStagingFolder();
    if (!folder.ok()) return folder.status();
    Staging staging((*folder)->path() / kFilesName, blobs_dir_, options_.limits, options.progress,
                    total);
    if (Status transferred = reader->Transfer(staging); !transferred.ok()) return transferred;
    INFERBOX_CHECK(staging.files().size() == plan->files.size());
    Hook("transfer-done");

    if (Status notified = staging.Report(InstallPhase::kValidating); !notified.ok())
      return notified;
    auto facts = ValidateModelFolder(staging.files_dir(), staging.files(), options_.limits);
    if (!facts.ok()) return facts.status();

    ModelManifest manifest;
    manifest.set_format_version(kManifestFormatVersion);
    manifest.set_id(std::string(id));
    manifest.set_digest(ModelDigest(staging.files()));
    for (const ModelFile& file : plan->files) {
      const auto staged = std::find_if(staging.files().begin(), staging.files().end(),
                                       [&](const ModelFile& f) { return f.path() == file.path(); });
      INFERBOX_CHECK(staged != staging.files().end());
      *manifest.add_files() = *staged;
    }
    manifest.set_size_bytes(total);
    manifest.set_architecture(facts->architecture);
    manifest.set_num_parameters(facts->num_parameters);
    manifest.set_dtype(facts->dtype);
    manifest.mutable_recommended_profile()->set_tensor_parallel(kDefaultTensorParallel);
    manifest.mutable_recommended_profile()->set_kv_cache_memory_fraction(
        kDefaultKvCacheMemoryFraction);
    const auto now = options_.clock ? options_.clock() : std::chrono::system_clock::now();
    *manifest.mutable_installed_at() = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
        std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count());
    manifest.set_source(plan->description);
    manifest.set_signed_by(plan->signed_by);

    if (Status notified = staging.Report(InstallPhase::kCommitting); !notified.ok())
      return notified;
    auto committed = Commit(manifest, **folder, options.replace);
    if (!committed.ok()) return committed.status();
    reader->OnCommitted();
    if (Status notified = Notify(options.progress, InstallPhase::kDone, total, total);
        !notified.ok()) {
      // Installed all the same: the callback's stop came too late to matter.
      spdlog::info("model {} installed; the cancel that came after the commit is ignored", id);
    }
    spdlog::info("installed model {} ({}, {}, {} parameters) from {}", id, committed->digest(),
                 FormatBytes(committed->size_bytes()), committed->num_parameters(),
                 committed->source());
    return committed;
  }

  Status Remove(std::string_view id, const std::function<bool(std::string_view)>& is_loaded) {
    if (Status valid = ValidateId(id); !valid.ok()) return valid;
    auto lock = FileLock::Acquire(lock_path_);
    if (!lock.ok()) return lock.status();
    const ModelEntry entry = ReadEntry(id);
    if (entry.kind == ModelEntry::Kind::kAbsent) {
      return NotFoundError(fmt::format("model {} is not installed", id));
    }
    if (entry.kind == ModelEntry::Kind::kUnmanaged) {
      return FailedPreconditionError(
          fmt::format("{} was not installed through the model store; remove it by hand",
                      ModelPath(id).string()));
    }
    if (is_loaded && is_loaded(id)) {
      return FailedPreconditionError(
          fmt::format("model {} is loaded; unload it before removing it", id));
    }
    const fs::path link = ModelPath(id);
    if (::unlink(link.c_str()) != 0) return ErrnoStatus("cannot remove", link, errno);
    if (Status synced = SyncDirectory(models_dir_); !synced.ok()) return synced;
    // Invisible from here on; whatever a failure leaves is cleaned at the next open.
    RemoveVersion(id, entry.version);
    spdlog::info("removed model {} (sha256:{})", id, entry.version);
    return Status::Ok();
  }

  Result<std::vector<ModelManifest>> List() const {
    auto lock = FileLock::Acquire(lock_path_);
    if (!lock.ok()) return lock.status();
    std::vector<ModelManifest> models;
    std::error_code error;
    for (fs::directory_iterator it(models_dir_, error), end; !error && it != end;
         it.increment(error)) {
      const std::string id = it->path().filename().string();
      if (!IsModelId(id) || id == kReservedId) continue;
      const ModelEntry entry = ReadEntry(id);
      if (entry.kind != ModelEntry::Kind::kManaged) continue;
      auto manifest = ReadManifest(id, entry.version);
      if (!manifest.ok()) return manifest.status();
      models.push_back(std::move(manifest).value());
    }
    if (error) return ErrnoStatus("cannot list", models_dir_, error.value());
    std::sort(models.begin(), models.end(),
              [](const ModelManifest& a, const ModelManifest& b) { return a.id() < b.id(); });
    return models;
  }

  Result<ModelManifest> Get(std::string_view id) const {
    if (Status valid = ValidateId(id); !valid.ok()) return valid;
    auto lock = FileLock::Acquire(lock_path_);
    if (!lock.ok()) return lock.status();
    const ModelEntry entry = ReadEntry(id);
    if (entry.kind != ModelEntry::Kind::kManaged) {
      return NotFoundError(fmt::format("model {} is not installed", id));
    }
    return ReadManifest(id, entry.version);
  }

  Result<GarbageStats> CollectGarbage() {
    auto lock = FileLock::Acquire(lock_path_);
    if (!lock.ok()) return lock.status();
    if (Status removed = RemoveOrphanVersions(); !removed.ok()) return removed;
    auto referenced = ReferencedBlobs();
    if (!referenced.ok()) return referenced.status();

    GarbageStats stats;
    std::error_code error;
    for (fs::directory_iterator it(blobs_dir_, error), end; !error && it != end;
         it.increment(error)) {
      if (referenced->contains(it->path().filename().string())) continue;
      const uint64_t size = RegularFileSize(it->path()).value_or(0);
      if (::unlink(it->path().c_str()) != 0) return ErrnoStatus("cannot remove", it->path(), errno);
      ++stats.num_blobs_removed;
      stats.bytes_freed += size;
    }
    if (error) return ErrnoStatus("cannot list", blobs_dir_, error.value());
    if (Status synced = SyncDirectory(blobs_dir_); !synced.ok()) return synced;

    for (fs::directory_iterator it(downloads_dir_, error), end; !error && it != end;
         it.increment(error)) {
      auto part = FileLock::TryAcquire(it->path());
      if (!part.ok()) continue;  // An install is downloading it.
      const uint64_t size = RegularFileSize(it->path()).value_or(0);
      if (::unlink(it->path().c_str()) != 0) return ErrnoStatus("cannot remove", it->path(), errno);
      ++stats.num_partial_downloads_removed;
      stats.bytes_freed += size;
    }
    spdlog::info(
        "model store garbage collection: {} blobs and {} partial downloads removed, {} freed",
        stats.num_blobs_removed, stats.num_partial_downloads_removed,
        FormatBytes(stats.bytes_freed));
    return stats;
  }

  fs::path ModelPath(std::string_view id) const { return models_dir_ / id; }

 private:
  std::unique_ptr<ModelSourceReader> MakeReader(const InstallSource& source, bool required) const {
    SignatureCheck check = [this, required](std::string_view manifest,
                                            const std::vector<std::string>& signatures) {
      return CheckManifestSignatures(*keys_, manifest, signatures, required);
    };
    if (const auto* directory = std::get_if<DirectorySource>(&source)) {
      return MakeDirectoryReader(*directory, options_.limits);
    }
    if (const auto* bundle = std::get_if<BundleSource>(&source)) {
      return MakeBundleReader(*bundle, options_.limits, std::move(check));
    }
    return MakeMirrorReader(std::get<MirrorSource>(source), options_.mirror, options_.limits,
                            std::move(check), downloads_dir_);
  }

  fs::path VersionDir(std::string_view id, std::string_view version) const {
    return versions_dir_ / id / version;
  }

  // The symlink text that makes models/<id> serve `version`: relative, so the state
  // directory may move.
  static std::string LinkTarget(std::string_view id, std::string_view version) {
    return fmt::format("store/versions/{}/{}/{}", id, version, kFilesName);
  }

  ModelEntry ReadEntry(std::string_view id) const {
    const fs::path path = ModelPath(id);
    struct stat info {};
    if (::lstat(path.c_str(), &info) != 0) return {};
    if (!S_ISLNK(info.st_mode)) return {.kind = ModelEntry::Kind::kUnmanaged};
    std::error_code error;
    const std::string target = fs::read_symlink(path, error).string();
    const std::string prefix = fmt::format("store/versions/{}/", id);
    const std::string suffix = fmt::format("/{}", kFilesName);
    if (error || !target.starts_with(prefix) || !target.ends_with(suffix)) {
      return {.kind = ModelEntry::Kind::kUnmanaged};
    }
    std::string version =
        target.substr(prefix.size(), target.size() - prefix.size() - suffix.size());
    if (!IsSha256Hex(version)) return {.kind = ModelEntry::Kind::kUnmanaged};
    return {.kind = ModelEntry::Kind::kManaged, .version = std::move(version)};
  }

  Status UnmanagedError(std::string_view id) const {
    return Status(StatusCode::kAlreadyExists,
                  fmt::format("{} exists and was not installed through the model store; choose "
                              "another id or move it away",
                              ModelPath(id).string()));
  }

  Result<ModelManifest> ReadManifest(std::string_view id, std::string_view version) const {
    const fs::path path = VersionDir(id, version) / kManifestName;
    auto text = ReadFile(path);
    if (!text.ok()) return text.status();
    ModelManifest manifest;
    if (Status parsed = ParseJson(*text, manifest, path.string()); !parsed.ok()) return parsed;
    return manifest;
  }

  // The installed manifest when `id` already has exactly this digest; nullopt when the
  // install should go on; ALREADY_EXISTS when it has another and `replace` is off.
  Result<std::optional<ModelManifest>> AlreadySettled(std::string_view id, std::string_view digest,
                                                      bool replace) const {
    const ModelEntry entry = ReadEntry(id);
    if (entry.kind == ModelEntry::Kind::kUnmanaged) return UnmanagedError(id);
    if (entry.kind == ModelEntry::Kind::kAbsent) return std::optional<ModelManifest>();
    if (entry.version == DigestHex(digest)) {
      auto manifest = ReadManifest(id, entry.version);
      if (!manifest.ok()) return manifest.status();
      return std::optional<ModelManifest>(std::move(manifest).value());
    }
    if (!replace) {
      return Status(StatusCode::kAlreadyExists,
                    fmt::format("model {} is installed with other contents (sha256:{}); remove it "
                                "first or install with replace",
                                id, entry.version));
    }
    return std::optional<ModelManifest>();
  }

  Status CheckFreeSpace(const SourcePlan& plan) const {
    uint64_t needed = 0;
    for (const ModelFile& file : plan.files) {
      const bool stored = !file.sha256().empty() &&
                          RegularFileSize(blobs_dir_ / file.sha256()) == file.size_bytes();
      if (!stored) needed += file.size_bytes();
    }
    needed -= std::min(needed, plan.partial_bytes);
    auto free = options_.free_space ? options_.free_space(models_dir_) : FreeBytes(models_dir_);
    if (!free.ok()) return free.status();
    if (needed > *free) {
      return Status(StatusCode::kResourceExhausted,
                    fmt::format("not enough disk space in {}: the model needs {}, {} is free",
                                models_dir_.string(), FormatBytes(needed), FormatBytes(*free)));
    }
    return Status::Ok();
  }

  Result<std::unique_ptr<StagingFolder>> CreateStagingFolder() {
    // Under the store lock, so that a store opening elsewhere never sees the folder unlocked.
    auto store_lock = FileLock::Acquire(lock_path_);
    if (!store_lock.ok()) return store_lock.status();
    std::string name = (staging_dir_ / "install-XXXXXX").string();
    if (::mkdtemp(name.data()) == nullptr) {
      return ErrnoStatus("cannot create a staging folder in", staging_dir_, errno);
    }
    auto lock = FileLock::TryAcquire(name);
    if (!lock.ok()) return lock.status();
    return std::make_unique<StagingFolder>(name, std::move(lock).value());
  }

  // Makes every staged file a hard link to its blob (adding the blobs that are new), writes
  // the manifest, moves the version into store/versions and swaps models/<id> to it.
  Result<ModelManifest> Commit(const ModelManifest& manifest, StagingFolder& folder, bool replace) {
    auto lock = FileLock::Acquire(lock_path_);
    if (!lock.ok()) return lock.status();
    const std::string& id = manifest.id();
    const std::string version(DigestHex(manifest.digest()));
    auto settled = AlreadySettled(id, manifest.digest(), replace);
    if (!settled.ok()) return settled.status();
    if (*settled) return std::move(*settled).value();
    const ModelEntry previous = ReadEntry(id);

    const fs::path files_dir = folder.path() / kFilesName;
    for (const ModelFile& file : manifest.files()) {
      if (Status linked = LinkBlob(files_dir / file.path(), file.sha256()); !linked.ok()) {
        return linked;
      }
    }
    if (Status synced = SyncDirectory(blobs_dir_); !synced.ok()) return synced;
    if (Status written = WriteFileAtomically(folder.path() / kManifestName, ToJson(manifest));
        !written.ok()) {
      return written;
    }
    if (Status synced = SyncTree(files_dir); !synced.ok()) return synced;

    const fs::path version_dir = VersionDir(id, version);
    if (Status made = MakeDirectories(version_dir.parent_path()); !made.ok()) return made;
    if (Status cleared = RemoveTree(version_dir); !cleared.ok()) return cleared;  // An orphan.
    if (::rename(folder.path().c_str(), version_dir.c_str()) != 0) {
      return ErrnoStatus("cannot move the staged model to", version_dir, errno);
    }
    folder.set_committed();
    if (Status synced = SyncDirectory(version_dir.parent_path()); !synced.ok()) return synced;
    if (Status synced = SyncDirectory(versions_dir_); !synced.ok()) return synced;
    Hook("before-commit");

    const fs::path temporary_link = staging_dir_ / ("link-" + folder.path().filename().string());
    ::unlink(temporary_link.c_str());
    if (::symlink(LinkTarget(id, version).c_str(), temporary_link.c_str()) != 0) {
      return ErrnoStatus("cannot create the symlink", temporary_link, errno);
    }
    const fs::path link = ModelPath(id);
    if (::rename(temporary_link.c_str(), link.c_str()) != 0) {
      const int error = errno;
      ::unlink(temporary_link.c_str());
      return ErrnoStatus("cannot rename the new model into place at", link, error);
    }
    if (Status synced = SyncDirectory(models_dir_); !synced.ok()) return synced;
    if (previous.kind == ModelEntry::Kind::kManaged) RemoveVersion(id, previous.version);
    return manifest;
  }

  // Makes `staged` and the blob of `sha256` one file: a new blob is the staged file itself;
  // an existing blob replaces the staged copy. Blobs are read-only.
  Status LinkBlob(const fs::path& staged, const std::string& sha256) const {
    const fs::path blob = blobs_dir_ / sha256;
    struct stat blob_info {};
    struct stat staged_info {};
    if (::lstat(staged.c_str(), &staged_info) != 0)
      return ErrnoStatus("cannot read", staged, errno);
    if (::lstat(blob.c_str(), &blob_info) == 0) {
      if (blob_info.st_ino == staged_info.st_ino && blob_info.st_dev == staged_info.st_dev) {
        return Status::Ok();
      }
      const fs::path temporary = staged.parent_path() / (".link-" + staged.filename().string());
      if (::link(blob.c_str(), temporary.c_str()) != 0) {
        return ErrnoStatus("cannot link " + blob.string() + " to", temporary, errno);
      }
      if (::rename(temporary.c_str(), staged.c_str()) != 0) {
        return ErrnoStatus("cannot replace", staged, errno);
      }
      return Status::Ok();
    }
    if (::chmod(staged.c_str(), 0444) != 0)
      return ErrnoStatus("cannot make read-only", staged, errno);
    if (::link(staged.c_str(), blob.c_str()) != 0) {
      return ErrnoStatus("cannot add " + staged.string() + " to the store as", blob, errno);
    }
    return Status::Ok();
  }

  // Removes a version no symlink names any more. Failures only leave an orphan, which the
  // next open removes.
  void RemoveVersion(std::string_view id, std::string_view version) const {
    if (Status removed = RemoveTree(VersionDir(id, version)); !removed.ok()) {
      spdlog::warn("{}", removed.message());
    }
    std::error_code ignored;
    fs::remove(versions_dir_ / id, ignored);  // Only when empty.
  }

  // Removes every staging folder no install holds. Partial downloads stay for resuming.
  // Needs the store lock.
  void CleanStaging() const {
    std::error_code error;
    for (fs::directory_iterator it(staging_dir_, error), end; !error && it != end;
         it.increment(error)) {
      if (it->path().filename() == kDownloadsName) continue;
      if (it->is_directory(error) && !it->is_symlink(error)) {
        auto held = FileLock::TryAcquire(it->path());
        if (!held.ok()) continue;  // A live install.
      }
      spdlog::info("model store: removing {} left by an interrupted install", it->path().string());
      if (Status removed = RemoveTree(it->path()); !removed.ok())
        spdlog::warn("{}", removed.message());
    }
  }

  // Removes versions that models/<id> does not name (left by a crash). Needs the store lock.
  Status RemoveOrphanVersions() const {
    std::error_code error;
    for (fs::directory_iterator ids(versions_dir_, error), end; !error && ids != end;
         ids.increment(error)) {
      const std::string id = ids->path().filename().string();
      const ModelEntry entry = IsModelId(id) ? ReadEntry(id) : ModelEntry{};
      std::error_code inner;
      for (fs::directory_iterator versions(ids->path(), inner), last; !inner && versions != last;
           versions.increment(inner)) {
        if (entry.kind == ModelEntry::Kind::kManaged &&
            versions->path().filename() == entry.version) {
          continue;
        }
        spdlog::info("model store: removing {}, which no model names", versions->path().string());
        if (Status removed = RemoveTree(versions->path()); !removed.ok()) return removed;
      }
      fs::remove(ids->path(), inner);  // Only when empty.
    }
    if (error) return ErrnoStatus("cannot list", versions_dir_, error.value());
    return Status::Ok();
  }

  // Every blob an installed manifest lists. Needs the store lock.
  Result<std::set<std::string>> ReferencedBlobs() const {
    std::set<std::string> referenced;
    std::error_code error;
    for (fs::directory_iterator ids(versions_dir_, error), end; !error && ids != end;
         ids.increment(error)) {
      const std::string id = ids->path().filename().string();
      const ModelEntry entry = ReadEntry(id);
      if (entry.kind != ModelEntry::Kind::kManaged) continue;
      // A manifest that cannot be read stops the collection: it might reference anything.
      auto manifest = ReadManifest(id, entry.version);
      if (!manifest.ok()) return manifest.status();
      for (const ModelFile& file : manifest->files()) referenced.insert(file.sha256());
    }
    if (error) return ErrnoStatus("cannot list", versions_dir_, error.value());
    return referenced;
  }

  void Hook(std::string_view point) const {
    if (options_.fault_hook) options_.fault_hook(point);
  }

  const fs::path models_dir_;
  const fs::path store_dir_;
  const fs::path blobs_dir_;
  const fs::path versions_dir_;
  const fs::path lock_path_;
  const fs::path staging_dir_;
  const fs::path downloads_dir_;
  const ModelStoreOptions options_;
  const std::unique_ptr<TrustedKeys> keys_;
};

std::string_view InstallPhaseName(InstallPhase phase) {
  switch (phase) {
    case InstallPhase::kPreparing: return "preparing";
    case InstallPhase::kTransferring: return "transferring";
    case InstallPhase::kValidating: return "validating";
    case InstallPhase::kCommitting: return "committing";
    case InstallPhase::kDone: return "done";
  }
  return "unknown";
}

Result<std::unique_ptr<ModelStore>> ModelStore::Open(const fs::path& models_dir,
                                                     ModelStoreOptions options) {
  for (const std::string& prefix : options.mirror.allowed_url_prefixes) {
    if (Status valid = CheckMirrorPrefix(prefix); !valid.ok()) return valid;
  }
  auto keys = TrustedKeys::Load(options.trusted_public_keys_pem);
  if (!keys.ok()) return keys.status();
  if (options.require_signatures && (*keys)->empty()) {
    return InvalidArgumentError(
        "the model store requires signatures but has no trusted keys to check them with");
  }
  auto impl =
      std::make_unique<Impl>(fs::absolute(models_dir), std::move(options), std::move(keys).value());
  if (Status ready = impl->Initialize(); !ready.ok()) return ready;
  return std::unique_ptr<ModelStore>(new ModelStore(std::move(impl)));
}

ModelStore::ModelStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ModelStore::~ModelStore() = default;

Result<ModelManifest> ModelStore::Install(std::string_view id, const InstallSource& source,
                                          const InstallOptions& options) {
  return impl_->Install(id, source, options);
}

Status ModelStore::Remove(std::string_view id,
                          const std::function<bool(std::string_view)>& is_loaded) {
  return impl_->Remove(id, is_loaded);
}

Result<std::vector<ModelManifest>> ModelStore::List() const {
  return impl_->List();
}

Result<ModelManifest> ModelStore::Get(std::string_view id) const {
  return impl_->Get(id);
}

Result<GarbageStats> ModelStore::CollectGarbage() {
  return impl_->CollectGarbage();
}

fs::path ModelStore::ModelPath(std::string_view id) const {
  return impl_->ModelPath(id);
}

const fs::path& ModelStore::models_dir() const {
  return impl_->models_dir();
}

}  // namespace inferbox::provisioning
