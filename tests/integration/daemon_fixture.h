// Starts the real inferboxd binary on loopback with port 0 listeners, a test-owned
// NOTIFY_SOCKET and its own state/runtime directories, and tells the test where it listens.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "inferbox/v1/admin.grpc.pb.h"
#include "inferbox/v1/inference.grpc.pb.h"
#include "notify_socket.h"
#include "subprocess.h"
#include "temp_dir.h"

namespace inferbox::testing {

// Generous: a daemon starts in well under a second, but CI machines are shared.
inline constexpr std::chrono::seconds kStartTimeout{30};

// A config with every listener on a free loopback port and a short shutdown deadline.
std::string TestConfig(std::string_view extra_server_keys = "");

struct DaemonOptions {
  std::string config_text = TestConfig();
  std::vector<std::string> extra_args;
  std::vector<std::string> extra_env;
  // How the fixture's own gRPC calls (WaitInferenceHealth) connect; unset: plain TCP.
  std::shared_ptr<grpc::ChannelCredentials> grpc_credentials;
};

class DaemonProcess {
 public:
  // Writes the config into `dir` and starts inferboxd; does not wait for it.
  DaemonProcess(const TempDir& dir, const DaemonOptions& options, std::string name = "daemon");

  // Waits for READY=1 on the notify socket, then reads the bound addresses from the
  // daemon's listeners file. False (with the daemon's log in the failure) on timeout.
  ::testing::AssertionResult WaitReady(std::chrono::milliseconds timeout = kStartTimeout);

  const std::filesystem::path& config_path() const { return config_path_; }
  const std::filesystem::path& runtime_dir() const { return runtime_dir_; }
  const std::string& grpc_address() const { return grpc_address_; }
  const std::string& http_address() const { return http_address_; }
  const std::string& metrics_address() const { return metrics_address_; }
  // After WaitReady: waits until gRPC health says inferbox.v1.Inference is SERVING (a model
  // can generate). False (with the daemon's log) on timeout.
  ::testing::AssertionResult WaitInferenceServing(
      std::chrono::milliseconds timeout = std::chrono::seconds(60)) const;
  // The same for any status (NOT_SERVING: no model can generate).
  ::testing::AssertionResult WaitInferenceHealth(
      grpc::health::v1::HealthCheckResponse::ServingStatus status,
      std::chrono::milliseconds timeout) const;

  // The READY=1 datagram (with its STATUS=), once WaitReady succeeded.
  const std::string& ready_message() const { return ready_message_; }

  Subprocess& process() { return *process_; }
  NotifySocket& notify() { return *notify_; }
  // What the daemon logged to stderr so far.
  std::string Logs() const { return process_->ReadStderr(); }

 private:
  std::filesystem::path config_path_;
  std::filesystem::path runtime_dir_;
  std::unique_ptr<NotifySocket> notify_;
  std::unique_ptr<Subprocess> process_;
  std::string grpc_address_;
  std::string http_address_;
  std::string metrics_address_;
  std::string ready_message_;
  std::shared_ptr<grpc::ChannelCredentials> grpc_credentials_;
};

// True when a TCP connection to host:port is accepted.
bool AcceptsConnections(const std::string& host_port);

// Asks Admin GetStatus every 20 ms until `done` holds for an answer; false after `timeout`.
bool WaitForStatus(inferbox::v1::Admin::Stub& admin,
                   const std::function<bool(const inferbox::v1::GetStatusResponse&)>& done,
                   std::chrono::milliseconds timeout = std::chrono::seconds(60));

// Whether `status` lists exactly `engines` engines, every one READY.
bool AllEnginesReady(const inferbox::v1::GetStatusResponse& status, int engines);

// A greedy chat for the tiny test model that generates exactly `max_tokens` tokens (EOS
// ignored).
inferbox::v1::ChatRequest TinyChat(uint32_t max_tokens, std::string model = "tiny");

// What a client of Inference.Chat received.
struct ChatResult {
  std::vector<inferbox::v1::GenerateChunk> chunks;
  size_t tokens = 0;
  grpc::Status status;
};

// Runs `request` to its end (deadline 120 s), with `api_key` as the bearer token if set.
ChatResult RunChat(inferbox::v1::Inference::Stub& inference,
                   const inferbox::v1::ChatRequest& request, const std::string& api_key = "");

}  // namespace inferbox::testing
