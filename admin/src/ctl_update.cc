#include "ctl_update.h"

#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <iostream>
#include <memory>

#include <fmt/format.h>

#include "ctl_reports.h"
#include "inferbox/common/logging.h"
#include "inferbox/provisioning/update_bundle.h"
#include "inferbox/provisioning/update_system.h"
#include "inferbox/provisioning/updater.h"

namespace inferbox::ctl {
namespace {

namespace pv = ::inferbox::provisioning;

constexpr int kExitRefused = 1;
constexpr int kExitRolledBack = 3;
constexpr int kExitRollbackFailed = 4;

int ExitCode(const pv::v1::UpdateRecord& record) {
  switch (record.outcome()) {
    case pv::v1::UPDATE_OUTCOME_COMMITTED: return 0;
    case pv::v1::UPDATE_OUTCOME_ROLLED_BACK: return kExitRolledBack;
    default: return kExitRollbackFailed;
  }
}

}  // namespace

std::string OutcomeName(pv::v1::UpdateOutcome outcome) {
  switch (outcome) {
    case pv::v1::UPDATE_OUTCOME_IN_PROGRESS: return "in_progress";
    case pv::v1::UPDATE_OUTCOME_COMMITTED: return "committed";
    case pv::v1::UPDATE_OUTCOME_ROLLED_BACK: return "rolled_back";
    case pv::v1::UPDATE_OUTCOME_ROLLBACK_FAILED: return "rollback_failed";
    default: return "unknown";
  }
}

std::string UpdateReport(const pv::v1::UpdateRecord& record) {
  const std::string what = record.action() == "rollback" ? "rollback" : "update";
  switch (record.outcome()) {
    case pv::v1::UPDATE_OUTCOME_COMMITTED:
      return fmt::format("{} {}: {} -> {} committed; inferboxd {} is ready.\n", what, record.id(),
                         record.from_version(), record.to_version(),
                         pv::UpstreamVersion(record.to_version()));
    case pv::v1::UPDATE_OUTCOME_ROLLED_BACK:
      return fmt::format(
          "{} {}: {} FAILED and was rolled back: {}\n{} is installed again and serves.\n", what,
          record.id(), record.to_version(), record.reason(), record.from_version());
    default:
      return fmt::format(
          "{} {}: {} FAILED and the rollback to {} FAILED too: {}\nThe box needs attention: see "
          "`inferboxctl update status`, then `inferboxctl update rollback` to try again.\n",
          what, record.id(), record.to_version(), record.from_version(), record.reason());
  }
}

std::string UpdateStatusReport(const pv::v1::UpdateStatus& status) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"installed", !status.installed_error().empty()
                                   ? "(unknown: " + status.installed_error() + ")"
                               : status.installed_version().empty() ? "(not installed)"
                                                                    : status.installed_version()});
  rows.push_back({"running", status.running_version().empty()
                                 ? "(unknown: " + status.running_error() + ")"
                                 : status.running_version()});
  if (status.has_pending()) {
    const auto& pending = status.pending();
    std::string state = status.pending_active() ? "running now"
                        : pending.outcome() == pv::v1::UPDATE_OUTCOME_ROLLBACK_FAILED
                            ? "its rollback FAILED; run `inferboxctl update rollback`"
                            : "INTERRUPTED; run `inferboxctl update rollback`";
    rows.push_back(
        {"unfinished", fmt::format("{} {} {} -> {}: {}", pending.action(), pending.id(),
                                   pending.from_version(), pending.to_version(), state)});
  }
  if (status.has_last()) {
    const auto& last = status.last();
    std::string line =
        fmt::format("{} {} -> {}: {} ({})", last.action(), last.from_version(), last.to_version(),
                    OutcomeName(last.outcome()), FormatTime(last.finished_at()));
    if (!last.reason().empty()) line += ": " + last.reason();
    rows.push_back({"last", line});
  } else {
    rows.push_back({"last", "(no update recorded)"});
  }
  std::string stored;
  for (const auto& version : status.stored_versions()) {
    stored += (stored.empty() ? "" : ", ") + version;
  }
  rows.push_back({"kept", stored.empty() ? "(none)" : stored});
  return FormatTable(rows);
}

std::string UpdateHistoryTable(const pv::v1::UpdateHistory& history) {
  std::vector<std::vector<std::string>> rows = {
      {"FINISHED", "ACTION", "FROM", "TO", "OUTCOME", "REASON"}};
  for (const auto& record : history.records()) {
    rows.push_back({FormatTime(record.finished_at()), record.action(), record.from_version(),
                    record.to_version(), OutcomeName(record.outcome()), record.reason()});
  }
  return FormatTable(rows);
}

UpdateCommand::UpdateCommand(CLI::App& app) {
  update_ = app.add_subcommand(
      "update", "Update this box's software from a signed update bundle, with automatic rollback");
  update_->require_subcommand(1);
  update_
      ->add_option("--keys-dir", keys_dir_,
                   "Folder of trusted update signing keys (ed25519 public keys, *.pem)")
      ->capture_default_str();
  update_->add_option("--state-dir", state_dir_, "Where updates keep packages and history")
      ->capture_default_str();
  update_->add_option("--runtime-dir", runtime_dir_, "inferboxd's runtime folder (listeners.toml)")
      ->capture_default_str();

  apply_ = update_->add_subcommand(
      "apply",
      "Verify and install an update bundle, restart, and roll back if the new version is not "
      "ready within the deadline (root)");
  apply_->add_option("FILE", bundle_, "The update bundle (inferbox-bundle update makes one)")
      ->required();
  apply_->add_flag("--allow-downgrade", allow_downgrade_,
                   "Install a bundle older than the installed version (refused otherwise)");
  status_ = update_->add_subcommand(
      "status", "Installed and running versions, an unfinished update, the last outcome");
  history_ = update_->add_subcommand("history", "Every update and rollback, oldest first");
  rollback_ = update_->add_subcommand(
      "rollback",
      "Go back to the version the installed one replaced, or finish an interrupted update (root)");
  for (CLI::App* command : {apply_, rollback_}) {
    command
        ->add_option("--deadline", deadline_seconds_,
                     "Seconds the restarted daemon has to be ready with the new version (the "
                     "previous version gets at least 300 on the way back)")
        ->check(CLI::Range(1.0, 86400.0))
        ->capture_default_str();
  }
  for (CLI::App* command : {apply_, status_, history_, rollback_}) {
    command->add_flag("--json", json_, "Print the result as JSON (field names as in update.proto)");
    // --keys-dir, --state-dir and --runtime-dir may also follow the subcommand.
    command->fallthrough();
  }
}

std::optional<int> UpdateCommand::Run(
    const std::function<bool(const google::protobuf::Message&)>& print_json) const {
  if (!*update_) return std::nullopt;
  const bool changes = *apply_ || *rollback_;
  if (changes && ::geteuid() != 0) {
    fmt::print(stderr,
               "inferboxctl: update {} installs packages and restarts the service: run it as "
               "root (sudo)\n",
               *apply_ ? "apply" : "rollback");
    return kExitRefused;
  }
  // Progress and the journal's MESSAGE_IDs go to stderr or journald; stdout stays the result.
  InitLogging("inferboxctl", spdlog::level::info);

  auto packages = pv::MakeSystemPackageManager();
  const char* restart_command = std::getenv("INFERBOX_UPDATE_RESTART_COMMAND");
  auto service = pv::MakeServiceControl(restart_command != nullptr ? restart_command : "");
  auto readiness = pv::MakeHttpReadinessProbe(runtime_dir_);
  std::shared_ptr<const pv::TrustedKeys> keys;
  if (*apply_) {
    auto loaded = pv::LoadUpdateKeys(keys_dir_);
    if (!loaded.ok()) {
      fmt::print(stderr, "inferboxctl: update refused, nothing changed: {}\n",
                 loaded.status().message());
      return kExitRefused;
    }
    keys = std::move(loaded).value();
  }
  pv::UpdaterOptions options;
  options.state_dir = state_dir_;
  options.allow_downgrade = allow_downgrade_;
  options.ready_deadline =
      std::chrono::milliseconds(static_cast<long long>(deadline_seconds_ * 1000));
  pv::Updater updater(
      options,
      pv::UpdateSystem{
          .packages = *packages, .service = *service, .readiness = *readiness, .keys = keys.get()});

  if (*status_) {
    auto status = updater.ReadStatus();
    if (!status.ok()) {
      fmt::print(stderr, "inferboxctl: update status: {}\n", status.status().message());
      return 1;
    }
    if (json_) return print_json(*status) ? 0 : 1;
    std::cout << UpdateStatusReport(*status);
    return 0;
  }
  if (*history_) {
    auto history = updater.History();
    if (!history.ok()) {
      fmt::print(stderr, "inferboxctl: update history: {}\n", history.status().message());
      return 1;
    }
    if (json_) return print_json(*history) ? 0 : 1;
    std::cout << UpdateHistoryTable(*history);
    return 0;
  }
  // From here to the end the update must not be cut short: Ctrl-C, a closed SSH session or a
  // TERM would leave packages half-installed, or a good update marked interrupted. dpkg and rpm
  // inherit the ignored signals.
  for (const int signal_number : {SIGINT, SIGHUP, SIGTERM, SIGQUIT, SIGPIPE}) {
    std::signal(signal_number, SIG_IGN);
  }
  auto record = *apply_ ? updater.Apply(bundle_) : updater.Rollback();
  if (!record.ok()) {
    if (*apply_) {
      LogEvent(spdlog::level::warn, pv::message_ids::kUpdateRefused,
               fmt::format("update {} refused: {}", bundle_, record.status().message()));
    }
    fmt::print(stderr, "inferboxctl: update {} refused, nothing changed: {}\n",
               *apply_ ? "apply" : "rollback", record.status().message());
    return kExitRefused;
  }
  if (json_) {
    print_json(*record);
  } else {
    std::cout << UpdateReport(*record);
  }
  return ExitCode(*record);
}

}  // namespace inferbox::ctl
