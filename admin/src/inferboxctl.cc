// inferboxctl: the administrator's command line for inferboxd, over the Admin gRPC service.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <grpcpp/grpcpp.h>
#include <CLI/CLI.hpp>

#include "ctl_diagnostics.h"
#include "ctl_models.h"
#include "ctl_reports.h"
#include "ctl_status.h"
#include "ctl_update.h"
#include "inferbox/common/atomic_file.h"
#include "inferbox/common/version.h"
#include "inferbox/v1/admin.grpc.pb.h"

namespace {

using inferbox::ctl::FormatTable;
using inferbox::ctl::FormatTime;

struct GlobalOptions {
  std::string address = "127.0.0.1:7070";
  double timeout_seconds = 5;
  // Sent as "authorization: Bearer <key>" on every RPC; empty: none.
  std::string api_key;
  // TLS ([server.tls] on the daemon): on with --tls or any of the files below. PEM files:
  // the CA that signed the daemon's certificate (unset: the system's CAs), and this client's
  // certificate and key where the daemon asks for one (client_ca).
  bool tls = false;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  // The name the daemon's certificate must carry; unset: the host of --address.
  std::string tls_server_name;
  grpc::SslCredentialsOptions tls_files;  // The files' text (ReadTlsFiles).
};

// Reads the TLS files named in `options`; false (after saying why) when one cannot be read.
bool ReadTlsFiles(GlobalOptions& options) {
  options.tls = options.tls || !options.tls_ca.empty() || !options.tls_cert.empty() ||
                !options.tls_key.empty() || !options.tls_server_name.empty();
  if (!options.tls) return true;
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    fmt::print(stderr,
               "inferboxctl: --tls-cert and --tls-key go together (a client certificate "
               "and its key)\n");
    return false;
  }
  for (auto [path, pem] : {std::pair{&options.tls_ca, &options.tls_files.pem_root_certs},
                           std::pair{&options.tls_cert, &options.tls_files.pem_cert_chain},
                           std::pair{&options.tls_key, &options.tls_files.pem_private_key}}) {
    if (path->empty()) continue;
    auto text = inferbox::ReadFile(*path);
    if (!text.ok()) {
      fmt::print(stderr, "inferboxctl: {}\n", text.status().message());
      return false;
    }
    *pem = std::move(text).value();
  }
  return true;
}

std::shared_ptr<grpc::Channel> Connect(const GlobalOptions& options) {
  grpc::ChannelArguments arguments;
  // Keepalive as documented in docs/operations.md; matches the server's ping policy.
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  // Without this, gRPC stops pinging after two pings with nothing else sent, and a long idle
  // stream behind a NAT would lose its connection all the same.
  arguments.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  if (!options.tls_server_name.empty()) arguments.SetSslTargetNameOverride(options.tls_server_name);
  auto channel = grpc::CreateCustomChannel(
      options.address,
      options.tls ? grpc::SslCredentials(options.tls_files) : grpc::InsecureChannelCredentials(),
      arguments);
  // A connection refused once (a daemon restarting, a busy machine) is tried again within
  // --timeout before the command fails; a daemon that stays unreachable is reported by the
  // command's RPC with gRPC's own reason.
  channel->WaitForConnected(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<long long>(options.timeout_seconds * 1000)));
  return channel;
}

// Deadline and credentials for one RPC.
void PrepareContext(const GlobalOptions& options, grpc::ClientContext* context) {
  context->set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<long long>(options.timeout_seconds * 1000)));
  if (!options.api_key.empty()) context->AddMetadata("authorization", "Bearer " + options.api_key);
}

// Prints why `command` failed in words a person can act on; returns the exit code (1).
int ReportRpcError(const GlobalOptions& options, grpc::Channel& channel, std::string_view command,
                   const grpc::Status& result) {
  const auto code = result.error_code();
  // A daemon that answered leaves the channel READY; one that could not be reached does not.
  const bool reached = channel.GetState(false) == GRPC_CHANNEL_READY;
  if (!reached &&
      (code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED)) {
    fmt::print(stderr,
               "inferboxctl: cannot reach inferboxd at {}: {}\n"
               "Is the daemon running (systemctl status inferbox)? Use --address to name "
               "another one.{}\n",
               options.address, result.error_message(),
               options.tls ? " Check --tls-ca (the CA of the daemon's certificate) and, where "
                             "the daemon asks for client certificates, --tls-cert and --tls-key."
                           : " If the daemon serves TLS ([server.tls]), pass --tls-ca.");
  } else if (code == grpc::StatusCode::UNAUTHENTICATED) {
    fmt::print(stderr, "inferboxctl: {} refused: {}\n{}\n", command, result.error_message(),
               options.api_key.empty()
                   ? "The daemon requires an API key: pass one with --api-key or set "
                     "INFERBOX_API_KEY."
                   : "Check the key given with --api-key or INFERBOX_API_KEY.");
  } else if (code == grpc::StatusCode::PERMISSION_DENIED) {
    fmt::print(stderr, "inferboxctl: {} refused: {}\n", command, result.error_message());
  } else if (code == grpc::StatusCode::INVALID_ARGUMENT || code == grpc::StatusCode::NOT_FOUND) {
    fmt::print(stderr, "inferboxctl: {}: {}\n", command, result.error_message());
  } else {
    fmt::print(stderr, "inferboxctl: {} failed: {} (gRPC code {})\n", command,
               result.error_message(), static_cast<int>(code));
  }
  return 1;
}

// JSON with the field names of admin.proto; false (after saying why) if it cannot be made.
bool PrintJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions print_options;
  print_options.add_whitespace = true;
  print_options.always_print_primitive_fields = true;
  print_options.preserve_proto_field_names = true;
  std::string text;
  const auto converted = google::protobuf::util::MessageToJsonString(message, &text, print_options);
  if (!converted.ok()) {
    fmt::print(stderr, "inferboxctl: cannot print the reply as JSON: {}\n", converted.ToString());
    return false;
  }
  std::cout << text;
  return true;
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
    row(first ? "listeners" : "",
        fmt::format("{:<9}{}{}", listener.name(), listener.address(),
                    listener.security().empty() ? "" : " (" + listener.security() + ")"));
    first = false;
  }
  first = true;
  for (const auto& engine : status.engines()) {
    std::string state = inferbox::v1::EngineState_Name(engine.state());
    state = state.substr(state.rfind('_') + 1);
    std::transform(state.begin(), state.end(), state.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    std::string line = fmt::format("{:<20}{:<11}pid {:<8}restarts {}", engine.name(), state,
                                   engine.pid(), engine.restarts());
    if (!engine.last_exit().empty()) line += "  last exit: " + engine.last_exit();
    row(first ? "engines" : "", line);
    first = false;
  }
  if (status.engines().empty()) row("engines", "none (no [[models]] configured)");
  for (const auto& [label, text] :
       inferbox::ctl::HealthRows(status, std::chrono::system_clock::now())) {
    row(label, text);
  }
  const auto& economics = status.economics();
  std::string throughput =
      fmt::format("{:.1f} output tokens/s (5 min), best {:.1f}",
                  economics.output_tokens_per_second(), economics.peak_output_tokens_per_second());
  if (economics.gpus() > 0) {
    throughput += fmt::format(", {:.1f} per GPU on {} GPUs",
                              economics.output_tokens_per_second_per_gpu(), economics.gpus());
  }
  row("throughput", throughput);
  if (economics.has_cost_per_hour()) {
    std::string cost =
        fmt::format("{:.2f} {}/hour", economics.cost_per_hour(), economics.currency());
    if (economics.has_cost_per_million_output_tokens()) {
      cost += fmt::format(", {:.2f} {} per million output tokens now",
                          economics.cost_per_million_output_tokens(), economics.currency());
    }
    if (economics.has_cost_per_million_output_tokens_at_peak()) {
      cost += fmt::format(", {:.2f} at the best load seen",
                          economics.cost_per_million_output_tokens_at_peak());
    }
    row("cost", cost);
  }
}

// Calls one Admin RPC on a fresh connection. On failure reports it (as `what`) and returns
// the exit code; nullopt on success.
template <typename Request, typename Response>
std::optional<int> CallAdmin(const GlobalOptions& options, std::string_view what,
                             grpc::Status (inferbox::v1::Admin::Stub::*rpc)(grpc::ClientContext*,
                                                                            const Request&,
                                                                            Response*),
                             const Request& request, Response* response) {
  const auto channel = Connect(options);
  auto admin = inferbox::v1::Admin::NewStub(channel);
  grpc::ClientContext context;
  PrepareContext(options, &context);
  const grpc::Status result = ((*admin).*rpc)(&context, request, response);
  if (result.ok()) return std::nullopt;
  return ReportRpcError(options, *channel, what, result);
}

int RunStatus(const GlobalOptions& options, bool json) {
  inferbox::v1::GetStatusResponse status;
  if (auto failed = CallAdmin(options, "status", &inferbox::v1::Admin::Stub::GetStatus,
                              inferbox::v1::GetStatusRequest(), &status)) {
    return *failed;
  }
  if (json) return PrintJson(status) ? 0 : 1;
  PrintStatusTable(status);
  return 0;
}

std::string RoleName(inferbox::v1::KeyRole role) {
  switch (role) {
    case inferbox::v1::KEY_ROLE_INFERENCE: return "inference";
    case inferbox::v1::KEY_ROLE_ADMIN: return "admin";
    default: return "unspecified";
  }
}

std::string FormatLimits(const inferbox::v1::KeyLimits& limits) {
  std::vector<std::string> parts;
  if (limits.models_size() > 0) {
    parts.push_back("models=" + fmt::format("{}", fmt::join(limits.models(), ",")));
  }
  if (limits.tokens_per_minute() > 0) {
    parts.push_back(fmt::format("tokens/min={}", limits.tokens_per_minute()));
  }
  if (limits.tokens_per_day() > 0)
    parts.push_back(fmt::format("tokens/day={}", limits.tokens_per_day()));
  if (limits.max_concurrent_requests() > 0) {
    parts.push_back(fmt::format("concurrent={}", limits.max_concurrent_requests()));
  }
  if (parts.empty()) return "-";
  return fmt::format("{}", fmt::join(parts, " "));
}

struct CreateKeyOptions {
  std::string name;
  std::string role = "inference";
  std::vector<std::string> models;
  uint64_t tokens_per_minute = 0;
  uint64_t tokens_per_day = 0;
  uint32_t max_concurrent = 0;
};

int RunKeysCreate(const GlobalOptions& options, const CreateKeyOptions& create, bool json) {
  inferbox::v1::CreateKeyRequest request;
  request.set_name(create.name);
  request.set_role(create.role == "admin" ? inferbox::v1::KEY_ROLE_ADMIN
                                          : inferbox::v1::KEY_ROLE_INFERENCE);
  auto& limits = *request.mutable_limits();
  for (const auto& model : create.models) limits.add_models(model);
  limits.set_tokens_per_minute(create.tokens_per_minute);
  limits.set_tokens_per_day(create.tokens_per_day);
  limits.set_max_concurrent_requests(create.max_concurrent);

  inferbox::v1::CreateKeyResponse response;
  if (auto failed = CallAdmin(options, "keys create", &inferbox::v1::Admin::Stub::CreateKey,
                              request, &response)) {
    return *failed;
  }

  constexpr std::string_view kShownOnce =
      "This is the only time the key is shown: the box keeps only a hash of it. Store it now "
      "(for example in a secrets manager); if it is lost, revoke it and create another.";
  if (json) {
    if (!PrintJson(response)) return 1;
    fmt::print(stderr, "inferboxctl: {}\n", kShownOnce);
    return 0;
  }
  fmt::print("Created API key {} (name \"{}\", role {}).\n\n    {}\n\n{}\n", response.key().id(),
             response.key().name(), RoleName(response.key().role()), response.secret(), kShownOnce);
  return 0;
}

void PrintKeysTable(const inferbox::v1::ListKeysResponse& keys) {
  std::vector<std::vector<std::string>> rows = {
      {"ID", "NAME", "ROLE", "CREATED", "REVOKED", "LIMITS"}};
  for (const auto& key : keys.keys()) {
    rows.push_back({key.id(), key.name(), RoleName(key.role()), FormatTime(key.created_at()),
                    FormatTime(key.revoked_at()), FormatLimits(key.limits())});
  }
  fmt::print("{}", FormatTable(rows));
}

int RunKeysList(const GlobalOptions& options, bool include_revoked, bool json) {
  inferbox::v1::ListKeysRequest request;
  request.set_include_revoked(include_revoked);
  inferbox::v1::ListKeysResponse response;
  if (auto failed = CallAdmin(options, "keys list", &inferbox::v1::Admin::Stub::ListKeys, request,
                              &response)) {
    return *failed;
  }
  if (json) return PrintJson(response) ? 0 : 1;
  if (response.keys().empty()) {
    fmt::print("No {}API keys. Create one with: inferboxctl keys create --name NAME\n",
               include_revoked ? "" : "valid ");
    return 0;
  }
  PrintKeysTable(response);
  return 0;
}

int RunKeysRevoke(const GlobalOptions& options, const std::string& id) {
  inferbox::v1::RevokeKeyRequest request;
  request.set_id(id);
  inferbox::v1::RevokeKeyResponse response;
  if (auto failed = CallAdmin(options, "keys revoke", &inferbox::v1::Admin::Stub::RevokeKey,
                              request, &response)) {
    return *failed;
  }
  fmt::print("Revoked API key {}; requests with it are refused from now on.\n", id);
  return 0;
}

// What `keys update` changes; unset options keep the key's value.
struct UpdateKeyOptions {
  std::string id;
  std::optional<std::string> name;
  std::optional<std::string> role;
  std::optional<std::vector<std::string>> models;
  bool all_models = false;
  std::optional<uint64_t> tokens_per_minute;
  std::optional<uint64_t> tokens_per_day;
  std::optional<uint32_t> max_concurrent;

  bool changes_limits() const {
    return models || all_models || tokens_per_minute || tokens_per_day || max_concurrent;
  }
};

int RunKeysUpdate(const GlobalOptions& options, const UpdateKeyOptions& update, bool json) {
  inferbox::v1::UpdateKeyRequest request;
  request.set_id(update.id);
  if (update.name) request.set_name(*update.name);
  if (update.role) {
    request.set_role(*update.role == "admin" ? inferbox::v1::KEY_ROLE_ADMIN
                                             : inferbox::v1::KEY_ROLE_INFERENCE);
  }
  if (update.changes_limits()) {
    // The RPC replaces the limits whole: start from the key's current ones. (An admin
    // changing the same key at the same moment may lose one of the two changes.)
    inferbox::v1::ListKeysRequest list_request;
    list_request.set_include_revoked(true);
    inferbox::v1::ListKeysResponse keys;
    if (auto failed = CallAdmin(options, "keys update", &inferbox::v1::Admin::Stub::ListKeys,
                                list_request, &keys)) {
      return *failed;
    }
    const auto key =
        std::find_if(keys.keys().begin(), keys.keys().end(),
                     [&](const auto& candidate) { return candidate.id() == update.id; });
    inferbox::v1::KeyLimits& limits = *request.mutable_limits();
    if (key != keys.keys().end()) limits = key->limits();  // Else the daemon says NOT_FOUND.
    if (update.all_models) limits.clear_models();
    if (update.models) {
      limits.clear_models();
      for (const auto& model : *update.models) limits.add_models(model);
    }
    if (update.tokens_per_minute) limits.set_tokens_per_minute(*update.tokens_per_minute);
    if (update.tokens_per_day) limits.set_tokens_per_day(*update.tokens_per_day);
    if (update.max_concurrent) limits.set_max_concurrent_requests(*update.max_concurrent);
  }
  inferbox::v1::UpdateKeyResponse response;
  if (auto failed = CallAdmin(options, "keys update", &inferbox::v1::Admin::Stub::UpdateKey,
                              request, &response)) {
    return *failed;
  }
  if (json) return PrintJson(response) ? 0 : 1;
  const auto& key = response.key();
  fmt::print("Updated API key {}: name \"{}\", role {}, limits {}. Its secret is unchanged.\n",
             key.id(), key.name(), RoleName(key.role()), FormatLimits(key.limits()));
  return 0;
}

struct UsageOptions {
  std::string by = "key,model";
  std::string since;
  std::string until;
  std::string key_id;
  std::string model;
  std::string format = "table";
};

int RunUsage(const GlobalOptions& options, const UsageOptions& usage) {
  auto group_by = inferbox::ctl::ParseUsageDimensions(usage.by);
  if (!group_by.ok()) {
    fmt::print(stderr, "inferboxctl: usage: {}\n", group_by.status().message());
    return 1;
  }
  inferbox::v1::GetUsageRequest request;
  for (const auto dimension : *group_by) request.add_group_by(dimension);
  const auto now = std::chrono::system_clock::now();
  auto parse_time = [&](std::string_view flag, const std::string& text,
                        google::protobuf::Timestamp* time) {
    auto parsed = inferbox::ctl::ParseTimeArgument(text, now);
    if (!parsed.ok()) {
      fmt::print(stderr, "inferboxctl: usage: {}: {}\n", flag, parsed.status().message());
      return false;
    }
    *time = *parsed;
    return true;
  };
  if (!usage.since.empty() && !parse_time("--since", usage.since, request.mutable_since()))
    return 1;
  if (!usage.until.empty() && !parse_time("--until", usage.until, request.mutable_until()))
    return 1;
  request.set_key_id(usage.key_id);
  request.set_model(usage.model);
  inferbox::v1::GetUsageResponse response;
  if (auto failed =
          CallAdmin(options, "usage", &inferbox::v1::Admin::Stub::GetUsage, request, &response)) {
    return *failed;
  }
  if (usage.format == "json") return PrintJson(response) ? 0 : 1;
  if (usage.format == "csv") {
    std::cout << inferbox::ctl::UsageCsv(response, *group_by);
    return 0;
  }
  if (response.rows().empty()) {
    fmt::print("No usage recorded{}.\n",
               usage.since.empty() && usage.until.empty() ? "" : " in that interval");
    return 0;
  }
  std::cout << inferbox::ctl::UsageTable(response, *group_by);
  return 0;
}

int RunAudit(const GlobalOptions& options, uint32_t limit, const std::string& since, bool json) {
  inferbox::v1::ListAuditEventsRequest request;
  request.set_limit(limit);
  if (!since.empty()) {
    auto time = inferbox::ctl::ParseTimeArgument(since, std::chrono::system_clock::now());
    if (!time.ok()) {
      fmt::print(stderr, "inferboxctl: audit: --since: {}\n", time.status().message());
      return 1;
    }
    *request.mutable_since() = *time;
  }
  inferbox::v1::ListAuditEventsResponse response;
  if (auto failed = CallAdmin(options, "audit", &inferbox::v1::Admin::Stub::ListAuditEvents,
                              request, &response)) {
    return *failed;
  }
  if (json) return PrintJson(response) ? 0 : 1;
  std::cout << inferbox::ctl::AuditTable(response);
  return 0;
}

int RunDiagnostics(const GlobalOptions& options, const std::string& output) {
  inferbox::ctl::DiagnosticsInputs inputs;
  inputs.ctl_version = fmt::format("inferboxctl {} ({})", inferbox::kVersion, inferbox::kGitCommit);
  inferbox::v1::GetStatusResponse status;
  if (CallAdmin(options, "diagnostics: status", &inferbox::v1::Admin::Stub::GetStatus,
                inferbox::v1::GetStatusRequest(), &status)) {
    inputs.status_error = "GetStatus failed at " + options.address + " (see inferboxctl's message)";
    fmt::print(stderr,
               "inferboxctl: diagnostics: writing the bundle without the daemon's status\n");
  } else {
    inputs.status = std::move(status);
  }
  if (inferbox::Status written = inferbox::ctl::WriteDiagnostics(output, inputs); !written.ok()) {
    fmt::print(stderr, "inferboxctl: diagnostics: {}\n", written.message());
    return 1;
  }
  fmt::print("Wrote {}. Check it before sending it: it holds host details and logs.\n", output);
  return 0;
}

// Blanks around the key are dropped (a key read from a file often ends in a newline).
std::string TrimKey(std::string_view key) {
  constexpr std::string_view kBlank = " \t\r\n";
  const auto first = key.find_first_not_of(kBlank);
  if (first == std::string_view::npos) return {};
  return std::string(key.substr(first, key.find_last_not_of(kBlank) - first + 1));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"inferboxctl: administer an inferbox appliance (inferboxd) over gRPC"};
  app.set_version_flag(
      "--version", fmt::format("inferboxctl {} ({})", inferbox::kVersion, inferbox::kGitCommit));
  app.require_subcommand(1);

  GlobalOptions options;
  if (const char* address = std::getenv("INFERBOX_ADDRESS")) options.address = address;
  if (const char* key = std::getenv("INFERBOX_API_KEY")) options.api_key = key;
  app.add_option(
      "--address", options.address,
      "inferboxd gRPC address, host:port (default 127.0.0.1:7070, or $INFERBOX_ADDRESS)");
  app.add_option("--timeout", options.timeout_seconds, "Seconds to wait for the daemon")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();
  app.add_option("--api-key", options.api_key,
                 "API key sent with every request (default $INFERBOX_API_KEY; prefer the "
                 "variable: other users can see command lines)");
  if (const char* ca = std::getenv("INFERBOX_TLS_CA")) options.tls_ca = ca;
  if (const char* cert = std::getenv("INFERBOX_TLS_CERT")) options.tls_cert = cert;
  if (const char* key = std::getenv("INFERBOX_TLS_KEY")) options.tls_key = key;
  app.add_flag("--tls", options.tls,
               "Connect with TLS, trusting the system's CAs (implied by the --tls-* options)");
  app.add_option("--tls-ca", options.tls_ca,
                 "PEM file of the CA that signed the daemon's certificate (default "
                 "$INFERBOX_TLS_CA)");
  app.add_option("--tls-cert", options.tls_cert,
                 "PEM client certificate, for a daemon with [server.tls] client_ca (default "
                 "$INFERBOX_TLS_CERT)");
  app.add_option("--tls-key", options.tls_key, "PEM key of --tls-cert (default $INFERBOX_TLS_KEY)");
  app.add_option("--tls-server-name", options.tls_server_name,
                 "Name the daemon's certificate must carry, when --address names it otherwise");

  bool json = false;
  auto* status = app.add_subcommand("status", "Show the daemon's version, state and listeners");
  status->add_flag("--json", json, "Print the status as JSON (field names as in admin.proto)");

  auto* keys = app.add_subcommand("keys",
                                  "Create, list, update and revoke API keys (needs an admin key "
                                  "when the daemon requires keys)");
  keys->require_subcommand(1);

  CreateKeyOptions create;
  // CLI11 would wrap "-5" around into an unsigned option; refuse it instead.
  const CLI::Validator not_negative(
      [](const std::string& value) {
        return value.find('-') == std::string::npos ? std::string()
                                                    : std::string("must be 0 or more");
      },
      "", "not negative");
  auto* keys_create =
      keys->add_subcommand("create", "Create an API key and print it; it is shown only this once");
  keys_create->add_option("--name", create.name, "Who or what the key is for, e.g. risk-team")
      ->required();
  keys_create->add_option("--role", create.role, "inference (default) or admin")
      ->transform(CLI::IsMember({"inference", "admin"}, CLI::ignore_case));
  keys_create
      ->add_option("--models", create.models,
                   "Models the key may use, comma-separated (default: all)")
      ->delimiter(',');
  keys_create
      ->add_option("--tokens-per-minute", create.tokens_per_minute,
                   "Prompt + completion tokens per rolling minute (default 0: unlimited)")
      ->check(not_negative);
  keys_create
      ->add_option("--tokens-per-day", create.tokens_per_day,
                   "Prompt + completion tokens per UTC day (default 0: unlimited)")
      ->check(not_negative);
  keys_create
      ->add_option("--max-concurrent", create.max_concurrent,
                   "Requests in flight at once (default 0: unlimited)")
      ->check(not_negative);
  keys_create->add_flag("--json", json,
                        "Print the new key as JSON (field names as in admin.proto)");

  bool include_revoked = false;
  auto* keys_list = keys->add_subcommand("list", "List API keys (never their secrets)");
  keys_list->add_flag("--all", include_revoked, "Include revoked keys");
  keys_list->add_flag("--json", json, "Print the keys as JSON (field names as in admin.proto)");

  std::string revoke_id;
  auto* keys_revoke = keys->add_subcommand("revoke", "Revoke an API key; it stops working at once");
  keys_revoke->add_option("ID", revoke_id, "The key's id (ibx_..., as keys list shows)")
      ->required();

  UpdateKeyOptions update_key;
  auto* keys_update = keys->add_subcommand(
      "update", "Change a key's name, role or limits; its secret stays the same");
  keys_update->add_option("ID", update_key.id, "The key's id (ibx_..., as keys list shows)")
      ->required();
  keys_update->add_option("--name", update_key.name, "A new name");
  keys_update->add_option("--role", update_key.role, "inference or admin")
      ->transform(CLI::IsMember({"inference", "admin"}, CLI::ignore_case));
  auto* update_models =
      keys_update
          ->add_option("--models", update_key.models,
                       "The only models the key may use from now on, comma-separated")
          ->delimiter(',');
  keys_update->add_flag("--all-models", update_key.all_models, "Let the key use every model")
      ->excludes(update_models);
  keys_update
      ->add_option("--tokens-per-minute", update_key.tokens_per_minute,
                   "Prompt + completion tokens per rolling minute (0: unlimited)")
      ->check(not_negative);
  keys_update
      ->add_option("--tokens-per-day", update_key.tokens_per_day,
                   "Prompt + completion tokens per UTC day (0: unlimited)")
      ->check(not_negative);
  keys_update
      ->add_option("--max-concurrent", update_key.max_concurrent,
                   "Requests in flight at once (0: unlimited)")
      ->check(not_negative);
  keys_update->add_flag("--json", json, "Print the key as JSON (field names as in admin.proto)");

  UsageOptions usage_options;
  auto* usage = app.add_subcommand(
      "usage", "Token usage from the ledger, per key, model and/or day, for chargeback");
  usage
      ->add_option("--by", usage_options.by,
                   "Group by key, model and/or day, comma-separated (default key,model)")
      ->capture_default_str();
  usage->add_option("--since", usage_options.since,
                    "From this time: 2026-01-31 (UTC), 2026-01-31T12:00:00Z, or an age (7d, "
                    "36h, 90m)");
  usage->add_option("--until", usage_options.until, "Up to (not including) this time, as --since");
  usage->add_option("--key", usage_options.key_id, "Only this key id (ibx_...)");
  usage->add_option("--model", usage_options.model, "Only this model");
  usage->add_option("--format", usage_options.format, "table (default), csv or json")
      ->transform(CLI::IsMember({"table", "csv", "json"}, CLI::ignore_case));

  uint32_t audit_limit = 50;
  std::string audit_since;
  auto* audit = app.add_subcommand("audit", "Recent Admin calls (who, what, when, outcome)");
  audit->add_option("--limit", audit_limit, "How many of the newest events (1-10000)")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  audit->add_option("--since", audit_since, "Only events from this time on, as usage --since");
  audit->add_flag("--json", json, "Print the events as JSON, newest first");

  std::string diagnostics_output;
  auto* diagnostics = app.add_subcommand(
      "diagnostics",
      "Write a support bundle: versions, status and engines, redacted config, GPUs, recent log");
  diagnostics
      ->add_option("--output", diagnostics_output,
                   "A new directory, or a file ending in .tar.gz or .tgz")
      ->required();

  const inferbox::ctl::ModelsCommand models(app);
  const inferbox::ctl::UpdateCommand update(app);

  CLI11_PARSE(app, argc, argv);

  options.api_key = TrimKey(options.api_key);
  const bool printable = std::all_of(options.api_key.begin(), options.api_key.end(),
                                     [](char c) { return c > ' ' && c < 0x7f; });
  if (!printable) {
    fmt::print(stderr,
               "inferboxctl: the API key (from --api-key or INFERBOX_API_KEY) contains spaces or "
               "characters that cannot be sent; inferbox keys look like ibx_<id>.<secret>\n");
    return 1;
  }

  if (!ReadTlsFiles(options)) return 1;

  if (auto code = update.Run(PrintJson)) return *code;
  if (*status) return RunStatus(options, json);
  if (*keys_create) return RunKeysCreate(options, create, json);
  if (*keys_list) return RunKeysList(options, include_revoked, json);
  if (*keys_revoke) return RunKeysRevoke(options, revoke_id);
  if (*keys_update) return RunKeysUpdate(options, update_key, json);
  if (*usage) return RunUsage(options, usage_options);
  if (*audit) return RunAudit(options, audit_limit, audit_since, json);
  if (*diagnostics) return RunDiagnostics(options, diagnostics_output);
  const inferbox::ctl::AdminCalls calls{
      .connect = [&] { return Connect(options); },
      .prepare =
          [&](grpc::ClientContext* context, double seconds) {
            GlobalOptions call_options = options;
            if (seconds > 0) call_options.timeout_seconds = seconds;
            PrepareContext(call_options, context);
          },
      .report_error =
          [&](grpc::Channel& channel, std::string_view command, const grpc::Status& result) {
            return ReportRpcError(options, channel, command, result);
          },
      .print_json = [](const google::protobuf::Message& message) { return PrintJson(message); },
  };
  if (auto code = models.Run(calls)) return *code;
  return 1;
}
