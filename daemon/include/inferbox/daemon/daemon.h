// inferboxd's process lifecycle: load the configuration, bind every listener, tell systemd
// READY=1, then run the main loop (signals, watchdog) until SIGTERM/SIGINT drains it.
#pragma once

#include <filesystem>
#include <optional>

namespace inferbox::daemon {

// Exit codes of inferboxd (documented in docs/operations.md). kExitConfig is sysexits'
// EX_CONFIG; the unit's RestartPreventExitStatus= names it so that a broken config does not
// restart in a loop.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitConfig = 78;

struct DaemonOptions {
  // The config file; nullopt: the embedded default configuration.
  std::optional<std::filesystem::path> config_path;
  // Override [paths] of the config (command line beats file beats environment).
  std::optional<std::filesystem::path> state_dir;
  std::optional<std::filesystem::path> runtime_dir;
  // Allow a non-loopback gRPC listener without authentication (see CheckNetworkExposure).
  bool allow_unauthenticated_remote = false;
};

// Runs the daemon on the calling (main) thread until it is told to stop; returns the exit
// code. Must be called before any other thread is started, since it sets the signal mask
// every later thread inherits.
int RunDaemon(const DaemonOptions& options);

}  // namespace inferbox::daemon
