// What the updater (updater.h) does to the box, behind three small interfaces so that its
// state machine is tested with fakes: the package manager, the service restart and the
// readiness probe; and their real implementations (dpkg or rpm, systemctl or a configured
// command, HTTP probes of the running daemon). Objects belong to the thread that uses them.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/provisioning/update_bundle.h"

namespace inferbox::provisioning {

class PackageManager {
 public:
  virtual ~PackageManager() = default;
  // "deb" or "rpm".
  virtual std::string format() const = 0;
  // The architecture packages must have: "amd64" (dpkg --print-architecture).
  virtual Result<std::string> Architecture() = 0;
  // The installed version of `name`, "" when it is not installed. FAILED_PRECONDITION when
  // the package is half-installed (an interrupted dpkg run).
  virtual Result<std::string> InstalledVersion(const std::string& name) = 0;
  // What a package file says of itself.
  virtual Result<PackageInfo> Inspect(const std::filesystem::path& file) = 0;
  // Negative, zero or positive as version `a` is older than, equal to or newer than `b`, by
  // the package manager's own rules (epochs, revisions, "~"). INVALID_ARGUMENT for a version
  // it cannot read.
  virtual Result<int> CompareVersions(const std::string& a, const std::string& b) = 0;
  // Rebuilds the installed package `name` from the package database and the installed files
  // into a package file in `dir` (as dpkg-repack does): the copy a rollback reinstalls of a
  // version that was installed by hand. FAILED_PRECONDITION where that cannot be done.
  virtual Result<std::filesystem::path> RebuildInstalled(const std::string& name,
                                                         const std::filesystem::path& dir) = 0;
  // Installs (upgrades or downgrades to) the package files, keeping locally edited
  // configuration files.
  virtual Status Install(const std::vector<std::filesystem::path>& files) = 0;
  virtual Status Remove(const std::vector<std::string>& names) = 0;
};

class ServiceControl {
 public:
  virtual ~ServiceControl() = default;
  // OK when Restart() can work here; checked before an update touches anything.
  virtual Status CheckUsable() = 0;
  // Restarts inferboxd with the installed binaries; returns once the restart was requested
  // (readiness is the probe's job).
  virtual Status Restart() = 0;
};

class ReadinessProbe {
 public:
  virtual ~ReadinessProbe() = default;
  // Waits until a daemon started after `restarted_at` reports ready and reports
  // `expected_version`, for at most `deadline`. DEADLINE_EXCEEDED saying what it saw last
  // (no new daemon, not ready, another version).
  virtual Status WaitReady(std::string_view expected_version,
                           std::chrono::system_clock::time_point restarted_at,
                           std::chrono::milliseconds deadline) = 0;
  // The version the running daemon reports now.
  virtual Result<std::string> RunningVersion() = 0;
  // Called before packages change: remembers what the running daemon serves, which WaitReady
  // then requires of the new one (the models ready now must be ready again; a box that has
  // no model ready, say before its first model is installed, needs only to be live).
  virtual void NoteBaseline() {}
};

// The package manager of this host: dpkg where dpkg-query is installed, else rpm.
std::unique_ptr<PackageManager> MakeSystemPackageManager();
std::unique_ptr<PackageManager> MakeDebPackageManager();
std::unique_ptr<PackageManager> MakeRpmPackageManager();

// Runs `restart_command` with /bin/sh -c when it is not empty (boxes without systemd, and the
// tests); else `systemctl --no-block restart inferbox.service`, which needs a running systemd
// (the readiness probe then waits, within its own deadline).
std::unique_ptr<ServiceControl> MakeServiceControl(std::string restart_command);

// Probes the daemon through the listeners it writes to `runtime_dir`/listeners.toml: a new
// daemon is one whose listeners.toml was written after the restart; it is ready when its
// /metrics has inferbox_build_info{version="<expected>"} and /health/ready on its metrics
// listener answers 200 with every model that was ready at NoteBaseline ready again (or, when
// none was, /health/live answers 200).
std::unique_ptr<ReadinessProbe> MakeHttpReadinessProbe(std::filesystem::path runtime_dir);

// Runs a program (argv[0] searched in PATH) with stdin from /dev/null and waits for it.
struct ProgramResult {
  int exit_code = -1;  // 128 + signal when a signal ended it.
  std::string output;  // stdout and stderr together.
};
Result<ProgramResult> RunProgram(const std::vector<std::string>& argv);

}  // namespace inferbox::provisioning
