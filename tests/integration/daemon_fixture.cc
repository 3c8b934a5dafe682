#include "daemon_fixture.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include <toml++/toml.h>

#include "grpc/health/v1/health.grpc.pb.h"

namespace inferbox::testing {

std::string TestConfig(std::string_view extra_server_keys) {
  return "[server]\n"
         "grpc_listen = \"127.0.0.1:0\"\n"
         "metrics_listen = \"127.0.0.1:0\"\n"
         "http_listen = \"127.0.0.1:0\"\n"
         "shutdown_timeout_seconds = 5\n" +
         std::string(extra_server_keys) +
         "[log]\n"
         "level = \"debug\"\n";
}

DaemonProcess::DaemonProcess(const TempDir& dir, const DaemonOptions& options, std::string name)
    : config_path_(dir / (name + ".toml")),
      runtime_dir_(dir / (name + "-run")),
      grpc_credentials_(options.grpc_credentials ? options.grpc_credentials
                                                 : grpc::InsecureChannelCredentials()) {
  std::ofstream(config_path_) << options.config_text;
  notify_ = std::make_unique<NotifySocket>(dir / (name + ".notify"));

  SubprocessOptions spawn;
  spawn.argv = {INFERBOXD_PATH,
                "--config",
                config_path_.string(),
                "--state-dir",
                (dir / (name + "-state")).string(),
                "--runtime-dir",
                runtime_dir_.string()};
  spawn.argv.insert(spawn.argv.end(), options.extra_args.begin(), options.extra_args.end());
  spawn.set_env = {notify_->EnvAssignment()};
  spawn.set_env.insert(spawn.set_env.end(), options.extra_env.begin(), options.extra_env.end());
  // Whatever the test runner inherited from a systemd session must not leak into the
  // daemon (set_env is applied after unset_env, so the test's own values still get through).
  spawn.unset_env = {"JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS"};
  spawn.stdout_path = dir / (name + ".stdout");
  spawn.stderr_path = dir / (name + ".stderr");
  process_ = std::make_unique<Subprocess>(spawn);
}

::testing::AssertionResult DaemonProcess::WaitReady(std::chrono::milliseconds timeout) {
  auto ready = notify_->WaitFor("READY=1", timeout);
  if (!ready) {
    return ::testing::AssertionFailure()
           << "inferboxd sent no READY=1 within " << timeout.count() << " ms; its log:\n"
           << Logs();
  }
  ready_message_ = *ready;
  toml::table listeners;
  try {
    listeners = toml::parse_file((runtime_dir_ / "listeners.toml").string());
  } catch (const toml::parse_error& error) {
    return ::testing::AssertionFailure()
           << "cannot read listeners.toml after READY=1: " << error.description();
  }
  grpc_address_ = listeners["grpc"].value_or(std::string());
  http_address_ = listeners["http"].value_or(std::string());
  metrics_address_ = listeners["metrics"].value_or(std::string());
  if (grpc_address_.empty() || http_address_.empty() || metrics_address_.empty()) {
    return ::testing::AssertionFailure() << "listeners.toml lacks grpc, http or metrics";
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult DaemonProcess::WaitInferenceServing(
    std::chrono::milliseconds timeout) const {
  return WaitInferenceHealth(grpc::health::v1::HealthCheckResponse::SERVING, timeout);
}

::testing::AssertionResult DaemonProcess::WaitInferenceHealth(
    grpc::health::v1::HealthCheckResponse::ServingStatus status,
    std::chrono::milliseconds timeout) const {
  auto health =
      grpc::health::v1::Health::NewStub(grpc::CreateChannel(grpc_address_, grpc_credentials_));
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    grpc::health::v1::HealthCheckRequest request;
    request.set_service("inferbox.v1.Inference");
    grpc::health::v1::HealthCheckResponse response;
    if (health->Check(&context, request, &response).ok() && response.status() == status) {
      return ::testing::AssertionSuccess();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return ::testing::AssertionFailure()
         << "inferbox.v1.Inference never "
         << grpc::health::v1::HealthCheckResponse::ServingStatus_Name(status) << "; log:\n"
         << Logs();
}

inferbox::v1::ChatRequest TinyChat(uint32_t max_tokens, std::string model) {
  inferbox::v1::ChatRequest request;
  request.set_model(std::move(model));
  auto* message = request.add_messages();
  message->set_role("user");
  message->set_content("Write me a poem about the sea.");
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_stop()->set_max_tokens(max_tokens);
  request.mutable_stop()->set_ignore_eos(true);
  return request;
}

ChatResult RunChat(inferbox::v1::Inference::Stub& inference,
                   const inferbox::v1::ChatRequest& request, const std::string& api_key) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  if (!api_key.empty()) context.AddMetadata("authorization", "Bearer " + api_key);
  auto reader = inference.Chat(&context, request);
  ChatResult result;
  inferbox::v1::GenerateChunk chunk;
  while (reader->Read(&chunk)) {
    result.tokens += static_cast<size_t>(chunk.token_ids_size());
    result.chunks.push_back(chunk);
  }
  result.status = reader->Finish();
  return result;
}

bool AcceptsConnections(const std::string& host_port) {
  const auto colon = host_port.rfind(':');
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(std::stoi(host_port.substr(colon + 1))));
  if (inet_pton(AF_INET, host_port.substr(0, colon).c_str(), &address.sin_addr) != 1) return false;
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const bool connected = ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  ::close(fd);
  return connected;
}

bool WaitForStatus(inferbox::v1::Admin::Stub& admin,
                   const std::function<bool(const inferbox::v1::GetStatusResponse&)>& done,
                   std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    inferbox::v1::GetStatusResponse status;
    if (admin.GetStatus(&context, inferbox::v1::GetStatusRequest(), &status).ok() && done(status))
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

bool AllEnginesReady(const inferbox::v1::GetStatusResponse& status, int engines) {
  if (status.engines_size() != engines) return false;
  for (const auto& engine : status.engines()) {
    if (engine.state() != inferbox::v1::ENGINE_STATE_READY) return false;
  }
  return true;
}

}  // namespace inferbox::testing
