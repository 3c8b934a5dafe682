// inferboxctl: the administrator's command line for inferboxd, over the Admin gRPC service.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <grpcpp/grpcpp.h>
#include <CLI/CLI.hpp>

#include "inferbox/common/version.h"
#include "inferbox/v1/admin.grpc.pb.h"

namespace {

struct GlobalOptions {
  std::string address = "127.0.0.1:7070";
  double timeout_seconds = 5;
};

std::shared_ptr<grpc::Channel> Connect(const GlobalOptions& options) {
  grpc::ChannelArguments arguments;
  // Keepalive as documented in docs/operations.md; matches the server's ping policy.
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  return grpc::CreateCustomChannel(options.address, grpc::InsecureChannelCredentials(), arguments);
}

std::string StateName(inferbox::v1::DaemonState state) {
  switch (state) {
    case inferbox::v1::DAEMON_STATE_STARTING: return "starting";
    case inferbox::v1::DAEMON_STATE_SERVING: return "serving";
    case inferbox::v1::DAEMON_STATE_DEGRADED: return "degraded";
    case inferbox::v1::DAEMON_STATE_DRAINING: return "draining";
    default: return "unknown";
  }
}

std::string FormatUptime(double seconds) {
  auto total = static_cast<long long>(seconds);
  const long long days = total / 86400;
  const long long hours = total / 3600 % 24;
  const long long minutes = total / 60 % 60;
  const long long secs = total % 60;
  if (days > 0) return fmt::format("{}d {}h {}m {}s", days, hours, minutes, secs);
  if (hours > 0) return fmt::format("{}h {}m {}s", hours, minutes, secs);
  if (minutes > 0) return fmt::format("{}m {}s", minutes, secs);
  return fmt::format("{}s", secs);
}

void PrintStatusTable(const inferbox::v1::GetStatusResponse& status) {
  auto row = [](std::string_view name, const std::string& value) {
    fmt::print("{:<13}{}\n", name, value);
  };
  row("version", fmt::format("{} (commit {})", status.version(), status.commit()));
  row("state", StateName(status.state()));
  row("uptime", FormatUptime(status.uptime_seconds()));
  row("started", google::protobuf::util::TimeUtil::ToString(status.started_at()));
  row("pid", std::to_string(status.pid()));
  row("config",
      fmt::format("{} (generation {})", status.config_path(), status.config_generation()));
  if (!status.last_reload_error().empty()) {
    row("last reload", "refused: " + status.last_reload_error());
  }
  row("state dir", status.state_dir());
  row("runtime dir", status.runtime_dir());
  bool first = true;
  for (const auto& listener : status.listeners()) {
    row(first ? "listeners" : "", fmt::format("{:<9}{}", listener.name(), listener.address()));
    first = false;
  }
}

int RunStatus(const GlobalOptions& options, bool json) {
  auto stub = inferbox::v1::Admin::NewStub(Connect(options));
  grpc::ClientContext context;
  context.set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<long long>(options.timeout_seconds * 1000)));
  inferbox::v1::GetStatusResponse status;
  const grpc::Status result = stub->GetStatus(&context, inferbox::v1::GetStatusRequest(), &status);
  if (!result.ok()) {
    if (result.error_code() == grpc::StatusCode::UNAVAILABLE ||
        result.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      fmt::print(stderr,
                 "inferboxctl: cannot reach inferboxd at {}: {}\n"
                 "Is the daemon running (systemctl status inferbox)? Use --address to name "
                 "another one.\n",
                 options.address, result.error_message());
    } else {
      fmt::print(stderr, "inferboxctl: status failed: {} (gRPC code {})\n", result.error_message(),
                 static_cast<int>(result.error_code()));
    }
    return 1;
  }
  if (json) {
    google::protobuf::util::JsonPrintOptions print_options;
    print_options.add_whitespace = true;
    print_options.always_print_primitive_fields = true;
    print_options.preserve_proto_field_names = true;
    std::string text;
    const auto converted =
        google::protobuf::util::MessageToJsonString(status, &text, print_options);
    if (!converted.ok()) {
      fmt::print(stderr, "inferboxctl: cannot print status as JSON: {}\n", converted.ToString());
      return 1;
    }
    std::cout << text;
  } else {
    PrintStatusTable(status);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"inferboxctl: administer an inferbox appliance (inferboxd) over gRPC"};
  app.set_version_flag(
      "--version", fmt::format("inferboxctl {} ({})", inferbox::kVersion, inferbox::kGitCommit));
  app.require_subcommand(1);

  GlobalOptions options;
  if (const char* address = std::getenv("INFERBOX_ADDRESS")) options.address = address;
  app.add_option(
      "--address", options.address,
      "inferboxd gRPC address, host:port (default 127.0.0.1:7070, or $INFERBOX_ADDRESS)");
  app.add_option("--timeout", options.timeout_seconds, "Seconds to wait for the daemon")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();

  bool json = false;
  auto* status = app.add_subcommand("status", "Show the daemon's version, state and listeners");
  status->add_flag("--json", json, "Print the status as JSON (field names as in admin.proto)");

  CLI11_PARSE(app, argc, argv);
  if (*status) return RunStatus(options, json);
  return 1;
}
