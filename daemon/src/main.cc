// inferboxd: the inferbox supervisor daemon (systemd Type=notify service).
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "inferbox/common/grpc_process.h"
#include "inferbox/common/logging.h"
#include "inferbox/common/version.h"
#include "inferbox/daemon/config.h"
#include "inferbox/daemon/daemon.h"

namespace {

using inferbox::daemon::DaemonOptions;

// --check-config: 0 when the configuration would start, 1 (with the reason) when not.
int CheckConfig(const DaemonOptions& options, const std::string& config_name) {
  auto config = options.config_path ? inferbox::daemon::LoadConfigFile(*options.config_path)
                                    : inferbox::daemon::ParseConfig(
                                          inferbox::daemon::EmbeddedDefaultConfig(), config_name);
  inferbox::Status status = config.status();
  if (status.ok()) {
    status = inferbox::daemon::CheckNetworkExposure(*config, options.allow_unauthenticated_remote);
  }
  if (status.ok() && config->tls.enabled()) {
    status = inferbox::daemon::LoadTlsCredentials(config->tls).status();
  }
  if (!status.ok()) {
    fmt::print(stderr, "inferboxd: configuration invalid: {}\n", status.message());
    return 1;
  }
  fmt::print("inferboxd: configuration OK: {}\n", config_name);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  inferbox::DisableMutexDeadlockDetection();
  CLI::App app{
      "inferboxd: the inferbox supervisor daemon (run it under systemd as inferbox.service)"};
  app.set_version_flag("--version",
                       fmt::format("inferboxd {} ({})", inferbox::kVersion, inferbox::kGitCommit));

  std::string config_path(inferbox::daemon::kDefaultConfigPath);
  bool default_config = false;
  bool check_config = false;
  bool print_default_config = false;
  std::string state_dir;
  std::string runtime_dir;
  DaemonOptions options;

  auto* config_option =
      app.add_option("--config", config_path,
                     "Configuration file. Without this option, the default file is used if it "
                     "exists, else the embedded default configuration")
          ->capture_default_str();
  app.add_flag("--default-config", default_config,
               "Use the embedded default configuration, ignoring any file")
      ->excludes(config_option);
  app.add_flag("--check-config", check_config,
               "Validate the configuration and exit: 0 if valid, 1 with the reason if not");
  app.add_flag("--print-default-config", print_default_config,
               "Print the embedded default configuration (the template of inferbox.toml) and exit");
  app.add_option("--state-dir", state_dir, "State directory; overrides [paths] state_dir");
  app.add_option("--runtime-dir", runtime_dir, "Runtime directory; overrides [paths] runtime_dir");
  app.add_flag("--insecure-allow-unauthenticated", options.allow_unauthenticated_remote,
               "Allow a non-loopback gRPC listener although no authentication is configured");
  CLI11_PARSE(app, argc, argv);

  if (print_default_config) {
    std::cout << inferbox::daemon::EmbeddedDefaultConfig();
    return 0;
  }

  // The default path is optional (a box without a config file runs the defaults); a path
  // the operator named must exist.
  const bool explicit_config = config_option->count() > 0;
  if (!default_config && (explicit_config || std::filesystem::exists(config_path))) {
    options.config_path = config_path;
  }
  if (!state_dir.empty()) options.state_dir = state_dir;
  if (!runtime_dir.empty()) options.runtime_dir = runtime_dir;
  const std::string config_name =
      options.config_path ? options.config_path->string() : "(embedded default)";

  if (check_config) return CheckConfig(options, config_name);

  inferbox::InitLogging("inferboxd", spdlog::level::info);
  return inferbox::daemon::RunDaemon(options);
}
