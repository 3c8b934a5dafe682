// `inferboxctl diagnostics`: a support bundle written on the box, for a person who was not
// there. A directory (or a .tar.gz of one) with:
//   README.txt    what this is, when and by what it was made
//   versions.txt  inferboxctl's and the daemon's versions, the kernel, the OS release
//   status.json   Admin.GetStatus: state, listeners, engines (state, pid, restarts, last
//                 exit), paths, economics; or why it could not be read
//   config.toml   the daemon's configuration file, secrets redacted (when readable here)
//   gpus.txt      `nvidia-smi -q`, when there is one
//   daemon.log    the last 5000 lines of the daemon's journal, when journalctl can read it
// Nothing in it is fetched over the network; nothing the daemon stores (keys, usage, audit)
// is included.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/v1/admin.pb.h"

namespace inferbox::ctl {

// The text of a TOML configuration with the values of secret-named keys (see
// inferbox::IsSecretName) replaced, and credentials in URLs removed.
std::string RedactConfig(std::string_view toml);

struct DiagnosticsInputs {
  // "inferboxctl 0.1.0 (abc1234)".
  std::string ctl_version;
  // The daemon's status; unset with `status_error` saying why.
  std::optional<inferbox::v1::GetStatusResponse> status;
  std::string status_error;
  // Commands run for gpus.txt and daemon.log (replaceable by tests); each is run with its
  // output (stdout and stderr) into that file, at most `command_timeout_seconds` each.
  std::vector<std::string> gpu_command = {"nvidia-smi", "-q"};
  std::vector<std::string> log_command = {"journalctl", "--unit",     "inferbox", "--lines",
                                          "5000",       "--no-pager", "--output", "short-iso"};
  int command_timeout_seconds = 20;
};

// Writes the bundle to `output`: a new directory, or a .tar.gz / .tgz archive of one.
// FAILED_PRECONDITION when `output` exists already.
Status WriteDiagnostics(const std::filesystem::path& output, const DiagnosticsInputs& inputs);

}  // namespace inferbox::ctl
