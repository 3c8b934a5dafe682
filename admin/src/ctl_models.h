// `inferboxctl models list|install|remove|load|unload|default|plan`: the model store and the
// served set, over the Admin model RPCs. Human output by default (a progress bar for
// installs on a terminal, one line per step otherwise), --json for scripts.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>
#include <CLI/CLI.hpp>

#include "inferbox/v1/admin.pb.h"

namespace inferbox::ctl {

// What the commands need from inferboxctl's main: its connection, credentials, error
// reporting and JSON printer, so every command behaves alike.
struct AdminCalls {
  std::function<std::shared_ptr<grpc::Channel>()> connect;
  // Credentials and a deadline of `seconds` from now (0: the --timeout given).
  std::function<void(grpc::ClientContext*, double seconds)> prepare;
  // Says why `command` failed; returns the exit code.
  std::function<int(grpc::Channel&, std::string_view command, const grpc::Status&)> report_error;
  std::function<bool(const google::protobuf::Message&)> print_json;
};

class ModelsCommand {
 public:
  // Adds `models` and its subcommands to `app`.
  explicit ModelsCommand(CLI::App& app);
  // After parsing: the exit code when a models command was given, else nullopt.
  std::optional<int> Run(const AdminCalls& calls) const;

 private:
  CLI::App* models_ = nullptr;
  CLI::App* list_ = nullptr;
  CLI::App* install_ = nullptr;
  CLI::App* remove_ = nullptr;
  CLI::App* load_ = nullptr;
  CLI::App* unload_ = nullptr;
  CLI::App* default_ = nullptr;
  CLI::App* plan_ = nullptr;

  bool json_ = false;
  std::string id_;
  std::string from_;
  std::string signature_;
  bool require_signature_ = false;
  bool replace_ = false;
  bool clear_ = false;
  std::string device_;
  std::vector<uint32_t> gpus_;
  uint32_t replicas_ = 0;
  uint32_t tensor_parallel_ = 0;
  double kv_cache_gib_ = 0;
  std::string quantization_;    // Empty: the daemon's default (none).
  std::string kv_cache_dtype_;  // Empty: the daemon's default (auto).
  int64_t max_model_len_ = 0;
  double queue_timeout_ = 0.0;     // 0: the daemon's default (no limit).
  std::string sampling_defaults_;  // Empty: the daemon's default (model).
  uint32_t ready_timeout_ = 0;
  uint32_t drain_timeout_ = 0;
  uint32_t context_length_ = 0;
};

// Pure formatting, unit-tested without a daemon.
std::string ModelsTable(const inferbox::v1::ListInstalledModelsResponse& models);
std::string PlanReport(const inferbox::v1::PlanModelResponse& plan);
// "1.5 GiB", "12.0 MiB", "512 B".
std::string FormatBytes(uint64_t bytes);
// One line of install progress: a bar of `width` cells when `bar`, else plain text.
std::string ProgressLine(const inferbox::v1::InstallModelProgress& progress, bool bar,
                         size_t width = 30);

}  // namespace inferbox::ctl
