// The update state machine (updater.h).
#include "inferbox/provisioning/updater.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <set>
#include <sstream>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>

#include "file_ops.h"
#include "inferbox/common/atomic_file.h"
#include "model_files.h"
#include "signatures.h"

namespace inferbox::provisioning {

using inferbox::provisioning::v1::PackageVersion;
using inferbox::provisioning::v1::UpdateOutcome;

namespace {

constexpr std::string_view kPendingName = "current.json";
constexpr std::string_view kHistoryName = "history.jsonl";
constexpr std::string_view kPackagesName = "packages";
constexpr std::string_view kStagingName = "staging";
constexpr uint64_t kFreeSpaceMargin = uint64_t{64} << 20;

google::protobuf::Timestamp ToTimestamp(std::chrono::system_clock::time_point time) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
      std::chrono::duration_cast<std::chrono::nanoseconds>(time.time_since_epoch()).count());
}

std::string OneLineJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string json;
  INFERBOX_CHECK(google::protobuf::util::MessageToJsonString(message, &json, options).ok());
  return json;
}

// Every stored package file of `dir` on disk, and `dir` in its parent: a power cut after
// the update starts must find the copy a rollback needs whole.
Status SyncStoredPackages(const std::filesystem::path& dir) {
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    if (!entry.is_regular_file(error)) continue;
    UniqueFd fd(::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return ErrnoStatus("cannot open", entry.path(), errno);
    if (::fsync(fd.get()) != 0) return ErrnoStatus("cannot sync", entry.path(), errno);
  }
  if (error) return ErrnoStatus("cannot list", dir, error.value());
  if (Status synced = SyncDirectory(dir); !synced.ok()) return synced;
  return SyncDirectory(dir.parent_path());
}

// The version of the package "inferbox" in `packages`; "" when it is not there.
std::string MainVersion(const google::protobuf::RepeatedPtrField<PackageVersion>& packages) {
  for (const PackageVersion& package : packages) {
    if (package.name() == kMainPackage) return package.version();
  }
  return {};
}

}  // namespace

struct Updater::Transition {
  UpdateRecord record;
  // Whether record.previous can be reinstalled when record.target fails.
  bool can_revert = false;
};

Updater::Updater(UpdaterOptions options, UpdateSystem system)
    : options_(std::move(options)), system_(std::move(system)) {}

std::filesystem::path Updater::PackagesDir(std::string_view version) const {
  return options_.state_dir / kPackagesName / version;
}

Result<UniqueFd> Updater::Lock() {
  if (Status made = MakeDirectories(options_.state_dir); !made.ok()) return made;
  auto lock = FileLock::TryAcquire(options_.state_dir);
  if (!lock.ok()) {
    if (lock.status().code() == StatusCode::kUnavailable) {
      return UnavailableError(fmt::format("another update or rollback is running ({} is locked)",
                                          options_.state_dir.string()));
    }
    return lock.status();
  }
  return lock->Release();
}

Result<std::optional<UpdateRecord>> Updater::ReadPending() const {
  auto text = ReadFile(options_.state_dir / kPendingName);
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound) return std::optional<UpdateRecord>();
    return text.status();
  }
  UpdateRecord record;
  if (Status parsed = ParseJson(*text, record, kPendingName); !parsed.ok()) return parsed;
  return std::optional<UpdateRecord>(std::move(record));
}

Result<PackageVersion> Updater::KeepInstalled(const std::string& name) {
  PackageVersion kept;
  kept.set_name(name);
  auto version = system_.packages.InstalledVersion(name);
  if (!version.ok()) return version.status();
  if (version->empty()) return kept;
  kept.set_version(*version);
  auto box_version = system_.packages.InstalledVersion(std::string(kMainPackage));
  if (!box_version.ok()) return box_version.status();
  const std::filesystem::path dir = PackagesDir(box_version->empty() ? *version : *box_version);
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    if (!entry.is_regular_file(error) || entry.path().filename().string().starts_with(".")) {
      continue;
    }
    auto info = system_.packages.Inspect(entry.path());
    if (info.ok() && info->name == name && info->version == *version) {
      kept.set_file(entry.path().string());
      return kept;
    }
  }
  if (Status made = MakeDirectories(dir); !made.ok()) return made;
  spdlog::info(
      "update: keeping the installed {} {} for a rollback (rebuilt from the package "
      "database)",
      name, *version);
  auto rebuilt = system_.packages.RebuildInstalled(name, dir);
  if (!rebuilt.ok()) return rebuilt.status();
  auto info = system_.packages.Inspect(*rebuilt);
  if (!info.ok()) return info.status();
  if (info->name != name || info->version != *version) {
    return InternalError(fmt::format("the rebuilt package {} is {} {}, not {} {}",
                                     rebuilt->string(), info->name, info->version, name, *version));
  }
  if (Status synced = SyncStoredPackages(dir); !synced.ok()) return synced;
  kept.set_file(rebuilt->string());
  return kept;
}

bool Updater::IsInstalled(const google::protobuf::RepeatedPtrField<PackageVersion>& packages) {
  for (const PackageVersion& package : packages) {
    auto installed = system_.packages.InstalledVersion(package.name());
    if (!installed.ok() || *installed != package.version()) return false;
  }
  return true;
}

Status Updater::Switch(const google::protobuf::RepeatedPtrField<PackageVersion>& to) {
  std::vector<std::filesystem::path> files;
  std::vector<std::string> removals;
  for (const PackageVersion& package : to) {
    if (!package.version().empty()) {
      files.emplace_back(package.file());
      continue;
    }
    auto installed = system_.packages.InstalledVersion(package.name());
    if (!installed.ok()) return installed.status();
    if (!installed->empty()) removals.push_back(package.name());
  }
  if (Status installed = system_.packages.Install(files); !installed.ok()) {
    return installed.WithContext("installing");
  }
  if (!removals.empty()) {
    if (Status removed = system_.packages.Remove(removals); !removed.ok()) {
      return removed.WithContext("removing");
    }
  }
  return Status::Ok();
}

// Installs `to`, restarts the service and waits for its daemon.
Status Updater::SwitchAndWait(const google::protobuf::RepeatedPtrField<PackageVersion>& to,
                              std::chrono::milliseconds deadline, bool* install_failed) {
  spdlog::info("update: installing {}", MainVersion(to));
  if (Status switched = Switch(to); !switched.ok()) {
    if (install_failed != nullptr) *install_failed = true;
    return switched;
  }
  const auto restarted_at = system_.now();
  spdlog::info("update: restarting inferboxd");
  if (Status restarted = system_.service.Restart(); !restarted.ok()) return restarted;
  const std::string expected = UpstreamVersion(MainVersion(to));
  spdlog::info("update: waiting up to {} s for inferboxd {} to be ready",
               std::chrono::duration_cast<std::chrono::seconds>(deadline).count(), expected);
  return system_.readiness.WaitReady(expected, restarted_at, deadline);
}

Result<UpdateRecord> Updater::Run(Transition& transition) {
  UpdateRecord& record = transition.record;
  record.set_outcome(v1::UPDATE_OUTCOME_IN_PROGRESS);
  *record.mutable_started_at() = ToTimestamp(system_.now());
  record.set_id(fmt::format("{:%Y%m%dT%H%M%SZ}-{}",
                            fmt::gmtime(std::chrono::system_clock::to_time_t(system_.now())),
                            record.to_version()));
  system_.readiness.NoteBaseline();
  // Durable before the first package changes: a crash from here on is found as interrupted.
  if (Status journaled = WriteFileAtomically(options_.state_dir / kPendingName, ToJson(record));
      !journaled.ok()) {
    return journaled;
  }

  bool install_failed = false;
  const Status done = SwitchAndWait(record.target(), options_.ready_deadline, &install_failed);
  if (!done.ok() && install_failed && IsInstalled(record.previous())) {
    // The install failed before it changed a package (dpkg's lock held by another run, say):
    // a refusal, not a rollback. Nothing was restarted.
    std::error_code error;
    std::filesystem::remove(options_.state_dir / kPendingName, error);
    if (Status synced = SyncDirectory(options_.state_dir); !synced.ok()) return synced;
    return FailedPreconditionError(fmt::format("{} (no package was changed; the box still runs {})",
                                               done.message(), record.from_version()));
  }
  if (done.ok()) {
    record.set_outcome(v1::UPDATE_OUTCOME_COMMITTED);
    LogEvent(spdlog::level::info, message_ids::kUpdateCommitted,
             fmt::format("update {}: {} -> {} committed: inferboxd {} is ready", record.id(),
                         record.from_version(), record.to_version(),
                         UpstreamVersion(record.to_version())));
  } else {
    std::string reason = done.message();
    Status back = FailedPreconditionError("nothing was kept to go back to");
    if (transition.can_revert) {
      LogEvent(spdlog::level::warn, message_ids::kUpdateRolledBack,
               fmt::format("update {}: {} failed: {}; going back to {}", record.id(),
                           record.to_version(), reason, record.from_version()));
      back = SwitchAndWait(record.previous(),
                           std::max(options_.ready_deadline, options_.min_rollback_deadline));
    }
    if (back.ok()) {
      record.set_outcome(v1::UPDATE_OUTCOME_ROLLED_BACK);
      LogEvent(spdlog::level::warn, message_ids::kUpdateRolledBack,
               fmt::format("update {}: rolled back to {}, which serves again", record.id(),
                           record.from_version()));
    } else {
      record.set_outcome(v1::UPDATE_OUTCOME_ROLLBACK_FAILED);
      reason +=
          fmt::format("; going back to {} failed too: {}", record.from_version(), back.message());
      LogEvent(spdlog::level::err, message_ids::kUpdateRollbackFailed,
               fmt::format("update {}: {}", record.id(), reason));
    }
    record.set_reason(reason);
  }
  *record.mutable_finished_at() = ToTimestamp(system_.now());
  const Status appended = AppendHistory(record);
  if (!appended.ok()) {
    spdlog::error("update {}: cannot record the outcome in the history: {}", record.id(),
                  appended.ToString());
  }
  const std::filesystem::path pending = options_.state_dir / kPendingName;
  // Packages have changed by now: what fails below is reported with the record (an error
  // status would read as a refusal that changed nothing).
  if (record.outcome() == v1::UPDATE_OUTCOME_ROLLBACK_FAILED) {
    // Stays for `update status` and `update rollback`.
    if (Status kept = WriteFileAtomically(pending, ToJson(record)); !kept.ok()) {
      spdlog::error("update {}: cannot keep {}: {}", record.id(), pending.string(),
                    kept.ToString());
    }
  } else {
    std::error_code error;
    std::filesystem::remove(pending, error);
    if (Status synced = SyncDirectory(options_.state_dir); !synced.ok()) {
      spdlog::error("update {}: {}", record.id(), synced.ToString());
    }
    // Pruning reads the history to know what to keep: without this record it could delete
    // the version a rollback needs.
    if (appended.ok()) PruneStoredPackages();
  }
  return record;
}

Status Updater::AppendHistory(const UpdateRecord& record) {
  const std::filesystem::path path = options_.state_dir / kHistoryName;
  std::error_code error;
  const bool existed = std::filesystem::exists(path, error);
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) return ErrnoStatus("cannot open", path, errno);
  // A line torn by a crash gets its end, so that this record starts a line of its own.
  bool torn = false;
  if (const off_t size = ::lseek(fd.get(), 0, SEEK_END); size > 0) {
    char last = '\n';
    torn = ::pread(fd.get(), &last, 1, size - 1) == 1 && last != '\n';
  }
  const std::string line = std::string(torn ? "\n" : "") + OneLineJson(record) + "\n";
  if (!WriteAll(fd.get(), line)) return ErrnoStatus("cannot write", path, errno);
  if (::fsync(fd.get()) != 0) return ErrnoStatus("cannot sync", path, errno);
  if (fd.Close() != 0) return ErrnoStatus("cannot close", path, errno);
  return existed ? Status::Ok() : SyncDirectory(options_.state_dir);
}

// Keeps the packages of the installed version and of the version it replaced.
void Updater::PruneStoredPackages() {
  auto installed = system_.packages.InstalledVersion(std::string(kMainPackage));
  auto history = History();
  if (!installed.ok() || !history.ok()) return;
  std::set<std::string> keep = {*installed};
  for (auto record = history->records().rbegin(); record != history->records().rend(); ++record) {
    if (record->outcome() == v1::UPDATE_OUTCOME_COMMITTED && record->to_version() == *installed) {
      keep.insert(record->from_version());
      break;
    }
  }
  std::error_code error;
  for (const auto& entry :
       std::filesystem::directory_iterator(options_.state_dir / kPackagesName, error)) {
    if (!keep.contains(entry.path().filename().string())) {
      std::filesystem::remove_all(entry.path(), error);
    }
  }
}

Result<UpdateRecord> Updater::Apply(const std::filesystem::path& bundle) {
  auto lock = Lock();
  if (!lock.ok()) return lock.status();
  auto pending = ReadPending();
  if (!pending.ok()) return pending.status();
  if (*pending) {
    return FailedPreconditionError(fmt::format(
        "update {} ({} -> {}) is unfinished: {}; run `inferboxctl update rollback` to go back "
        "to {} first",
        (*pending)->id(), (*pending)->from_version(), (*pending)->to_version(),
        (*pending)->outcome() == v1::UPDATE_OUTCOME_ROLLBACK_FAILED ? "its rollback failed"
                                                                    : "it was interrupted",
        (*pending)->from_version()));
  }
  if (system_.keys == nullptr) return FailedPreconditionError("no trusted update keys");
  if (Status usable = system_.service.CheckUsable(); !usable.ok()) return usable;
  // The update is judged by the running daemon: one that cannot be reached now (stopped, or
  // another runtime folder) would turn any update into a rollback.
  if (auto running = system_.readiness.RunningVersion(); !running.ok()) {
    return FailedPreconditionError(fmt::format(
        "cannot reach the running inferboxd, by which the update is judged ({}): start it "
        "(systemctl start inferbox) or name its runtime folder (--runtime-dir)",
        running.status().message()));
  }
  auto architecture = system_.packages.Architecture();
  if (!architecture.ok()) return architecture.status();
  // Removed on every way out: a refused bundle leaves nothing, an installed one is stored.
  struct StagingCleanup {
    std::filesystem::path path;
    ~StagingCleanup() {
      std::error_code ignored;
      std::filesystem::remove_all(path, ignored);
    }
  } cleanup{options_.state_dir / kStagingName};
  std::error_code error;
  std::filesystem::remove_all(cleanup.path, error);
  // Room for the unpacked packages, the installed ones kept for a rollback (about the same
  // size) and a margin, checked before unpacking: a disk that fills half-way through would
  // fail later and with less said.
  if (const uintmax_t bundle_bytes = std::filesystem::file_size(bundle, error); !error) {
    const uint64_t needed = 2 * static_cast<uint64_t>(bundle_bytes) + kFreeSpaceMargin;
    auto free = options_.free_space ? options_.free_space(options_.state_dir)
                                    : FreeBytes(options_.state_dir);
    if (!free.ok()) return free.status();
    if (*free < needed) {
      return Status(
          StatusCode::kResourceExhausted,
          fmt::format("not enough disk space in {}: the update needs {} (its packages "
                      "unpacked, the installed ones kept for a rollback, and a margin), "
                      "{} is free; nothing was changed",
                      options_.state_dir.string(), FormatBytes(needed), FormatBytes(*free)));
    }
  }
  auto update = ReadUpdateBundle(bundle, *system_.keys,
                                 UpdateTarget{system_.packages.format(), *architecture},
                                 cleanup.path / fmt::format("{}", ::getpid()));
  if (!update.ok()) return update.status();

  const UpdateManifest& manifest = update->manifest;
  for (int i = 0; i < manifest.packages_size(); ++i) {
    const UpdatePackage& package = manifest.packages(i);
    auto info = system_.packages.Inspect(update->files[static_cast<size_t>(i)]);
    if (!info.ok()) return info.status().WithContext(package.file_name());
    if (info->name != package.name() || info->version != package.version() ||
        (info->architecture != manifest.architecture() && info->architecture != "all" &&
         info->architecture != "noarch")) {
      return InvalidArgumentError(
          fmt::format("{} holds {} {} ({}), but the bundle's manifest says {} {} ({})",
                      package.file_name(), info->name, info->version, info->architecture,
                      package.name(), package.version(), manifest.architecture()));
    }
  }
  auto installed = system_.packages.InstalledVersion(std::string(kMainPackage));
  if (!installed.ok()) return installed.status();
  if (installed->empty()) {
    return FailedPreconditionError(fmt::format(
        "{} is not installed; an update replaces an installed box (install the packages first)",
        kMainPackage));
  }
  if (*installed == manifest.version()) {
    return FailedPreconditionError(
        fmt::format("{} {} is installed already", kMainPackage, manifest.version()));
  }
  auto order = system_.packages.CompareVersions(manifest.version(), *installed);
  if (!order.ok()) return order.status();
  if (*order < 0 && !options_.allow_downgrade) {
    return FailedPreconditionError(fmt::format(
        "the bundle's {} {} is older than the installed {}: a downgrade must be asked for "
        "(--allow-downgrade), or use `inferboxctl update rollback`",
        kMainPackage, manifest.version(), *installed));
  }

  Transition transition;
  UpdateRecord& record = transition.record;
  record.set_action("apply");
  record.set_from_version(*installed);
  record.set_to_version(manifest.version());
  record.set_signed_by(update->signed_by);
  record.set_bundle(std::filesystem::absolute(bundle).string());
  for (const UpdatePackage& package : manifest.packages()) {
    auto kept = KeepInstalled(package.name());
    if (!kept.ok()) {
      return kept.status().WithContext(
          "keeping the installed packages for a rollback (nothing was installed)");
    }
    *record.add_previous() = std::move(kept).value();
  }
  const std::filesystem::path target_dir = PackagesDir(manifest.version());
  std::filesystem::remove_all(target_dir, error);
  if (Status made = MakeDirectories(target_dir); !made.ok()) return made;
  for (int i = 0; i < manifest.packages_size(); ++i) {
    const std::filesystem::path stored = target_dir / manifest.packages(i).file_name();
    std::filesystem::rename(update->files[static_cast<size_t>(i)], stored, error);
    if (error) return ErrnoStatus("cannot store", stored, error.value());
    PackageVersion& target = *record.add_target();
    target.set_name(manifest.packages(i).name());
    target.set_version(manifest.packages(i).version());
    target.set_file(stored.string());
  }
  if (Status synced = SyncStoredPackages(target_dir); !synced.ok()) return synced;
  if (Status synced = SyncDirectory(options_.state_dir); !synced.ok()) return synced;
  transition.can_revert = true;
  return Run(transition);
}

Result<UpdateRecord> Updater::Rollback() {
  auto lock = Lock();
  if (!lock.ok()) return lock.status();
  if (Status usable = system_.service.CheckUsable(); !usable.ok()) return usable;
  auto pending = ReadPending();
  if (!pending.ok()) return pending.status();
  auto installed = system_.packages.InstalledVersion(std::string(kMainPackage));
  if (!installed.ok() && !*pending) return installed.status();

  Transition transition;
  UpdateRecord& record = transition.record;
  record.set_action("rollback");
  record.set_from_version(installed.ok() ? *installed : std::string());
  if (*pending) {
    // Finishing an interrupted update or a failed rollback: the box's state is unknown, so
    // there is nothing sound to go back to if this fails too.
    *record.mutable_target() = (*pending)->previous();
    // Kept as this record's own "previous" too, so that if this fails the next rollback
    // still knows where to go.
    *record.mutable_previous() = (*pending)->previous();
    transition.can_revert = false;
  } else {
    auto history = History();
    if (!history.ok()) return history.status();
    const UpdateRecord* last = nullptr;
    for (auto it = history->records().rbegin(); it != history->records().rend(); ++it) {
      if (it->outcome() == v1::UPDATE_OUTCOME_COMMITTED && it->to_version() == *installed) {
        last = &*it;
        break;
      }
    }
    if (last == nullptr || last->previous().empty()) {
      return FailedPreconditionError(
          fmt::format("nothing to roll back to: no update to the installed {} {} is recorded",
                      kMainPackage, *installed));
    }
    *record.mutable_target() = last->previous();
    std::set<std::string> names;
    for (const PackageVersion& package : last->previous()) names.insert(package.name());
    for (const PackageVersion& package : last->target()) names.insert(package.name());
    for (const std::string& name : names) {
      auto kept = KeepInstalled(name);
      if (!kept.ok()) return kept.status().WithContext("keeping the installed packages");
      *record.add_previous() = std::move(kept).value();
    }
    transition.can_revert = true;
  }
  record.set_to_version(MainVersion(record.target()));
  if (record.to_version().empty()) {
    return FailedPreconditionError(
        fmt::format("the version to go back to has no package {}", kMainPackage));
  }
  for (const PackageVersion& package : record.target()) {
    if (!package.version().empty() && !RegularFileSize(package.file())) {
      return FailedPreconditionError(
          fmt::format("the stored package {} of {} {} is gone; cannot roll back", package.file(),
                      package.name(), package.version()));
    }
  }
  return Run(transition);
}

Result<UpdateStatus> Updater::ReadStatus() {
  UpdateStatus status;
  // After an interrupted update the package manager may answer with an error: that is when
  // status matters most, so it is shown, not returned.
  auto installed = system_.packages.InstalledVersion(std::string(kMainPackage));
  if (installed.ok()) {
    status.set_installed_version(*installed);
  } else {
    status.set_installed_error(installed.status().message());
  }
  auto running = system_.readiness.RunningVersion();
  if (running.ok()) {
    status.set_running_version(*running);
  } else {
    status.set_running_error(running.status().message());
  }
  auto pending = ReadPending();
  if (!pending.ok()) return pending.status();
  if (*pending) {
    *status.mutable_pending() = **pending;
    auto lock = FileLock::TryAcquire(options_.state_dir);
    status.set_pending_active(!lock.ok() && lock.status().code() == StatusCode::kUnavailable);
  }
  auto history = History();
  if (!history.ok()) return history.status();
  if (!history->records().empty()) {
    *status.mutable_last() = *history->records().rbegin();
  }
  std::error_code error;
  std::vector<std::string> versions;
  for (const auto& entry :
       std::filesystem::directory_iterator(options_.state_dir / kPackagesName, error)) {
    versions.push_back(entry.path().filename().string());
  }
  std::sort(versions.begin(), versions.end());
  for (auto& version : versions) status.add_stored_versions(std::move(version));
  return status;
}

Result<UpdateHistory> Updater::History() {
  UpdateHistory history;
  auto text = ReadFile(options_.state_dir / kHistoryName);
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound) return history;
    return text.status();
  }
  std::istringstream lines(*text);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    UpdateRecord record;
    if (Status parsed = ParseJson(line, record, kHistoryName); !parsed.ok()) {
      spdlog::warn("update history: skipping a line that cannot be read: {}", parsed.message());
      continue;
    }
    *history.add_records() = std::move(record);
  }
  return history;
}

}  // namespace inferbox::provisioning
