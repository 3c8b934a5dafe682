// `inferboxctl update apply|status|history|rollback`: software updates of this box from
// signed update bundles (provisioning/include/inferbox/provisioning/updater.h). Unlike the
// other commands these run locally, as root, with the package manager; not over gRPC.
//
// Exit status of apply and rollback: 0 committed; 1 refused, nothing changed; 3 the new
// version failed and the previous one serves again (rolled back); 4 the rollback failed too
// (the box needs a person: see `update status`).
#pragma once

#include <functional>
#include <optional>
#include <string>

#include <google/protobuf/message.h>
#include <CLI/CLI.hpp>

#include "inferbox/provisioning/v1/update.pb.h"

namespace inferbox::ctl {

class UpdateCommand {
 public:
  // Adds `update` and its subcommands to `app`.
  explicit UpdateCommand(CLI::App& app);
  // After parsing: the exit code when an update command was given, else nullopt.
  std::optional<int> Run(
      const std::function<bool(const google::protobuf::Message&)>& print_json) const;

 private:
  CLI::App* update_ = nullptr;
  CLI::App* apply_ = nullptr;
  CLI::App* status_ = nullptr;
  CLI::App* history_ = nullptr;
  CLI::App* rollback_ = nullptr;

  std::string bundle_;
  double deadline_seconds_ = 300;
  bool json_ = false;
  bool allow_downgrade_ = false;
  std::string keys_dir_ = "/etc/inferbox/update-keys";
  std::string state_dir_ = "/var/lib/inferbox/updates";
  std::string runtime_dir_ = "/run/inferbox";
};

// Pure formatting, unit-tested without a box.
std::string OutcomeName(inferbox::provisioning::v1::UpdateOutcome outcome);
std::string UpdateReport(const inferbox::provisioning::v1::UpdateRecord& record);
std::string UpdateStatusReport(const inferbox::provisioning::v1::UpdateStatus& status);
std::string UpdateHistoryTable(const inferbox::provisioning::v1::UpdateHistory& history);

}  // namespace inferbox::ctl
