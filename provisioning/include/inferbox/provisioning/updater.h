// Software updates of the box with a health-gated commit (CONVENTIONS R6.8 for package
// hosts). Apply():
//
//   1. takes the update lock; refuses while an earlier update is unfinished (current.json);
//   2. checks the bundle (signature, manifest, digests, architecture, a new version), that the
//      service can be restarted and that the state folder's disk has room for the unpacked
//      packages and the rollback copy, before anything is written outside the staging folder;
//   3. keeps the installed packages for a rollback (packages/<version>/; rebuilt from the
//      package database when the version was installed by hand);
//   4. records the update in current.json (fsynced), installs, restarts the service and waits
//      until a daemon started after the restart reports ready AND the new version;
//   5. commits (history line, current.json removed) or, on any failure, reinstalls the
//      previous packages, restarts, waits for them the same way and records rolled_back, or
//      rollback_failed when the way back fails too (current.json then stays).
//
// Rollback() goes back the same way to the version the installed one replaced. The state
// folder holds: lock, current.json, history.jsonl (append-only, one UpdateRecord per line,
// fsynced), packages/<version>/ (the installed version and its predecessor), staging/.
// One Updater per process; the lock keeps processes apart. Not thread-safe.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "inferbox/common/logging.h"
#include "inferbox/common/posix_file.h"
#include "inferbox/common/status.h"
#include "inferbox/provisioning/update_bundle.h"
#include "inferbox/provisioning/update_system.h"
#include "inferbox/provisioning/v1/update.pb.h"

namespace inferbox::provisioning {

using UpdateRecord = inferbox::provisioning::v1::UpdateRecord;
using UpdateStatus = inferbox::provisioning::v1::UpdateStatus;
using UpdateHistory = inferbox::provisioning::v1::UpdateHistory;

// Journal MESSAGE_IDs of the update events (docs/updates.md).
namespace message_ids {
inline constexpr MessageId kUpdateCommitted{"15db2fabb6674b589fc25adc1f12f662"};
inline constexpr MessageId kUpdateRolledBack{"f0d5dcc9cb284dbdb1bf66b7bf2c90b4"};
inline constexpr MessageId kUpdateRollbackFailed{"f49d1f66219741dea93ee3050eb56715"};
inline constexpr MessageId kUpdateRefused{"48529734393247388a119ec66fa8e00d"};
}  // namespace message_ids

struct UpdaterOptions {
  std::filesystem::path state_dir = "/var/lib/inferbox/updates";
  // How long a restarted daemon has to report ready with the expected version.
  std::chrono::milliseconds ready_deadline = std::chrono::seconds(300);
  // The least the previous version gets on the way back: it served before, so a slow start is
  // likelier than a broken one, and giving up on it leaves the box down.
  std::chrono::milliseconds min_rollback_deadline = std::chrono::seconds(300);
  // A bundle older than the installed version is refused unless this is set: an old signed
  // bundle replayed must not take the box back to a version with known flaws.
  bool allow_downgrade = false;
  // Free bytes where `state_dir` is (tests); unset: statvfs. Apply() refuses a bundle whose
  // unpacking and the rollback copy of the installed packages would not fit there.
  std::function<Result<uint64_t>(const std::filesystem::path&)> free_space;
};

// What the updater acts on; borrowed, and must outlive it. `keys` may be null for
// Rollback(), Status() and History().
struct UpdateSystem {
  PackageManager& packages;
  ServiceControl& service;
  ReadinessProbe& readiness;
  const TrustedKeys* keys = nullptr;
  std::function<std::chrono::system_clock::time_point()> now = [] {
    return std::chrono::system_clock::now();
  };
};

class Updater {
 public:
  Updater(UpdaterOptions options, UpdateSystem system);

  // An error status when the update was refused and nothing was changed (a bad bundle, the
  // same version, an older one without allow_downgrade, another update running, no way to
  // restart). Otherwise the record of what
  // happened: outcome COMMITTED, ROLLED_BACK or ROLLBACK_FAILED, with the reason.
  Result<UpdateRecord> Apply(const std::filesystem::path& bundle);

  // Goes back to the version the installed one replaced (as history says), or finishes an
  // interrupted update or a failed rollback by reinstalling what was there before it. Same
  // results as Apply(); FAILED_PRECONDITION when there is nothing to go back to.
  Result<UpdateRecord> Rollback();

  // The installed and running versions, an unfinished update, the last outcome.
  Result<UpdateStatus> ReadStatus();
  // Oldest first. A torn last line (a crash while appending) is skipped.
  Result<UpdateHistory> History();

 private:
  struct Transition;
  // The update lock, held as long as the descriptor stays open.
  Result<UniqueFd> Lock();
  Result<std::optional<UpdateRecord>> ReadPending() const;
  // The installed version of `name` as a stored package file (rebuilt when there is none).
  Result<v1::PackageVersion> KeepInstalled(const std::string& name);
  Result<UpdateRecord> Run(Transition& transition);
  // Whether every package is installed at exactly its version ("": not installed).
  bool IsInstalled(const google::protobuf::RepeatedPtrField<v1::PackageVersion>& packages);
  inferbox::Status Switch(const google::protobuf::RepeatedPtrField<v1::PackageVersion>& to);
  // `install_failed` (when given) is set when the package manager failed, before any restart.
  inferbox::Status SwitchAndWait(const google::protobuf::RepeatedPtrField<v1::PackageVersion>& to,
                                 std::chrono::milliseconds deadline,
                                 bool* install_failed = nullptr);
  inferbox::Status AppendHistory(const UpdateRecord& record);
  void PruneStoredPackages();
  std::filesystem::path PackagesDir(std::string_view version) const;

  UpdaterOptions options_;
  UpdateSystem system_;
};

}  // namespace inferbox::provisioning
