#include "ctl_models.h"

#include <unistd.h>

#include <filesystem>
#include <iostream>

#include <fmt/format.h>

#include "ctl_reports.h"
#include "inferbox/v1/admin.grpc.pb.h"

namespace inferbox::ctl {
namespace {

namespace api = ::inferbox::v1;

// Installs copy gigabytes and loads wait for engines: deadlines far beyond --timeout.
constexpr double kInstallDeadlineSeconds = 24 * 3600;
constexpr double kLoadDeadlineSeconds = 3600;

std::string ModelStateName(api::ModelState state) {
  switch (state) {
    case api::MODEL_STATE_READY: return "ready";
    case api::MODEL_STATE_LOADING: return "loading";
    case api::MODEL_STATE_RESTARTING: return "restarting";
    case api::MODEL_STATE_FAILED: return "failed";
    default: return "starting";
  }
}

std::string ShortDigest(const std::string& digest) {
  constexpr size_t kShown = std::string_view("sha256:").size() + 12;
  return digest.size() > kShown ? digest.substr(0, kShown) : digest;
}

template <typename Request, typename Response>
std::optional<int> Call(const AdminCalls& calls, std::string_view what,
                        grpc::Status (api::Admin::Stub::*rpc)(grpc::ClientContext*, const Request&,
                                                              Response*),
                        const Request& request, Response* response, double seconds = 0) {
  const auto channel = calls.connect();
  auto admin = api::Admin::NewStub(channel);
  grpc::ClientContext context;
  calls.prepare(&context, seconds);
  const grpc::Status result = ((*admin).*rpc)(&context, request, response);
  if (result.ok()) return std::nullopt;
  return calls.report_error(*channel, what, result);
}

int RunInstall(const AdminCalls& calls, api::InstallModelRequest request, bool json) {
  const auto channel = calls.connect();
  auto admin = api::Admin::NewStub(channel);
  grpc::ClientContext context;
  calls.prepare(&context, kInstallDeadlineSeconds);
  auto reader = admin->InstallModel(&context, request);
  const bool bar = !json && isatty(STDOUT_FILENO) == 1;
  api::InstallModelProgress progress;
  std::optional<api::InstalledModel> installed;
  std::string last_step;
  while (reader->Read(&progress)) {
    if (progress.has_installed()) {
      installed = progress.installed();
      continue;
    }
    if (json) continue;
    if (bar) {
      fmt::print("\r{}\033[K", ProgressLine(progress, true));
      std::fflush(stdout);
    } else if (const std::string step = progress.phase() + progress.current_file();
               step != last_step) {
      // One line per phase and file: readable in a log, not a line per chunk.
      fmt::print("{}\n", ProgressLine(progress, false));
      last_step = step;
    }
  }
  if (bar) fmt::print("\n");
  const grpc::Status result = reader->Finish();
  if (!result.ok()) return calls.report_error(*channel, "models install", result);
  if (!installed) {
    fmt::print(stderr, "inferboxctl: models install: the daemon ended without the manifest\n");
    return 1;
  }
  if (json) return calls.print_json(*installed) ? 0 : 1;
  fmt::print("installed {} {} ({}, {})\n", installed->id(), ShortDigest(installed->digest()),
             FormatBytes(installed->size_bytes()),
             installed->signed_by().empty() ? "unsigned" : "signed by " + installed->signed_by());
  return 0;
}

}  // namespace

std::string FormatBytes(uint64_t bytes) {
  constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  auto value = static_cast<double>(bytes);
  size_t unit = 0;
  while (value >= 1024 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", value, kUnits[unit]);
}

std::string ProgressLine(const api::InstallModelProgress& progress, bool bar, size_t width) {
  const double fraction = progress.total_bytes() == 0
                              ? 0.0
                              : static_cast<double>(progress.done_bytes()) /
                                    static_cast<double>(progress.total_bytes());
  const std::string amounts = fmt::format("{} / {}", FormatBytes(progress.done_bytes()),
                                          FormatBytes(progress.total_bytes()));
  if (!bar) {
    return fmt::format("{:<12} {:>5.1f}%  {}{}", progress.phase(), fraction * 100, amounts,
                       progress.current_file().empty() ? "" : "  " + progress.current_file());
  }
  const auto filled = static_cast<size_t>(fraction * static_cast<double>(width));
  return fmt::format("[{}{}] {:>5.1f}%  {}  {} {}", std::string(filled, '#'),
                     std::string(width - std::min(filled, width), '-'), fraction * 100, amounts,
                     progress.phase(), progress.current_file());
}

std::string ModelsTable(const api::ListInstalledModelsResponse& models) {
  std::vector<std::vector<std::string>> rows = {
      {"ID", "DIGEST", "SIZE", "ARCHITECTURE", "DTYPE", "SERVED", "INSTALLED"}};
  for (const auto& model : models.models()) {
    std::string served = model.served() ? ModelStateName(model.state()) : "-";
    if (!model.served_digest().empty())
      served += " (older version " + ShortDigest(model.served_digest()) + ")";
    if (model.id() == models.default_model()) served += ", default";
    rows.push_back({model.id(), ShortDigest(model.digest()), FormatBytes(model.size_bytes()),
                    model.architecture(), model.dtype(), served, FormatTime(model.installed_at())});
  }
  std::string text = FormatTable(rows);
  if (models.models().empty()) text += "(no models installed: inferboxctl models install)\n";
  if (!models.default_model().empty())
    text += fmt::format("default model: {}\n", models.default_model());
  return text;
}

std::string PlanReport(const api::PlanModelResponse& plan) {
  std::string text;
  auto row = [&](std::string_view name, const std::string& value) {
    text += fmt::format("{:<22}{}\n", name, value);
  };
  row("model", plan.id());
  row("weights", plan.options().quantization() == "fp8"
                     ? FormatBytes(plan.weight_bytes()) + " (linear layers in FP8)"
                     : FormatBytes(plan.weight_bytes()));
  row("gpus found", plan.gpus_found() == 0 ? std::string("none (CPU plan)")
                                           : fmt::format("{} x {}", plan.gpus_found(),
                                                         FormatBytes(plan.gpu_memory_bytes())));
  if (!plan.fits()) {
    row("fits", "no");
    row("why", plan.note());
    return text;
  }
  row("device", plan.device());
  row("tensor parallel", std::to_string(plan.tensor_parallel()));
  row("replicas", std::to_string(plan.replicas()));
  row("KV bytes per token", plan.options().kv_cache_dtype() == "fp8"
                                ? fmt::format("{} (FP8 KV cache)", plan.kv_bytes_per_token())
                                : std::to_string(plan.kv_bytes_per_token()));
  row("KV cache per replica",
      fmt::format("{} ({} tokens)", FormatBytes(plan.kv_cache_bytes_per_replica()),
                  plan.kv_cache_tokens_per_replica()));
  row("concurrent sequences",
      fmt::format("{} at {} tokens each", plan.concurrent_sequences(), plan.context_length()));
  row("how", plan.note());
  return text;
}

ModelsCommand::ModelsCommand(CLI::App& app) {
  models_ =
      app.add_subcommand("models",
                         "Install, list, remove, load, unload and plan models (needs an admin "
                         "key when the daemon requires keys)");
  models_->require_subcommand(1);
  auto add_json = [&](CLI::App* command) {
    command->add_flag("--json", json_, "Print the reply as JSON (field names as in admin.proto)");
  };
  auto add_id = [&](CLI::App* command, std::string_view what) {
    command->add_option("ID", id_, std::string(what))->required();
  };

  list_ = models_->add_subcommand("list", "Installed models, their versions and serving state");
  add_json(list_);

  install_ = models_->add_subcommand(
      "install", "Install a model from a folder, a bundle file or an allow-listed mirror URL");
  add_id(install_, "Id to install it under, [a-z0-9][a-z0-9._-]{0,63}");
  install_
      ->add_option("--from", from_,
                   "A folder or bundle file on the box, or an http(s) URL under a configured "
                   "mirror")
      ->required();
  install_->add_option("--signature", signature_,
                       "A bundle's detached signature (default: <bundle>.sig when present)");
  install_->add_flag("--require-signature", require_signature_,
                     "Refuse the model unless a trusted key signed it");
  install_->add_flag("--replace", replace_,
                     "Install a new version over an installed model of that id (then `models "
                     "load` swaps a served one to it)");
  add_json(install_);

  remove_ = models_->add_subcommand("remove", "Remove an installed model that is not served");
  add_id(remove_, "The model's id");
  add_json(remove_);

  load_ = models_->add_subcommand(
      "load", "Serve an installed model, or swap a served one to its newly installed version");
  add_id(load_, "The model's id");
  load_->add_option("--device", device_, "cpu (default) or cuda")
      ->transform(CLI::IsMember({"cpu", "cuda"}));
  load_->add_option("--gpus", gpus_, "GPU indices, comma-separated (cuda)")->delimiter(',');
  load_->add_option("--replicas", replicas_,
                    "Engine processes (default 1; cuda without --gpus: as many as fit)");
  load_->add_option("--tensor-parallel", tensor_parallel_,
                    "GPUs (cuda) or CPU ranks of each engine (default: 1, or the profile's)");
  load_->add_option("--kv-cache-gib", kv_cache_gib_, "KV cache per engine, GiB");
  load_
      ->add_option("--quantization", quantization_,
                   "The linear layers' weights: none (default) or fp8 (FP8 E4M3, quantised at "
                   "load; GPUs of compute capability 8.9 or later)")
      ->transform(CLI::IsMember({"none", "fp8"}));
  load_
      ->add_option("--kv-cache-dtype", kv_cache_dtype_,
                   "The KV cache: auto (default: BF16 on a GPU, float32 on the CPU) or fp8 (E4M3 "
                   "with a scale per token and KV head: twice the tokens in the same memory)")
      ->transform(CLI::IsMember({"auto", "fp8"}));
  load_->add_option("--max-model-len", max_model_len_, "Longest sequence (default: the model's)");
  load_
      ->add_option("--queue-timeout", queue_timeout_,
                   "Seconds a request may wait to be started before it is refused as a full "
                   "queue (0, the default: no limit)")
      ->check(CLI::Range(0.0, 86400.0));
  load_
      ->add_option("--sampling-defaults", sampling_defaults_,
                   "What a request leaves unset: model (default: the model's "
                   "generation_config.json) or openai (temperature 1, top_p 1)")
      ->transform(CLI::IsMember({"model", "openai"}));
  load_->add_option("--ready-timeout", ready_timeout_,
                    "Swap: seconds the new engines have to become ready (default 600)");
  load_->add_option("--drain-timeout", drain_timeout_,
                    "Swap: seconds the old engines drain (default 30)");
  add_json(load_);

  unload_ = models_->add_subcommand("unload", "Stop serving a model (in-flight requests finish)");
  add_id(unload_, "The model's id");
  unload_->add_option("--drain-timeout", drain_timeout_,
                      "Seconds in-flight requests may take (default 30)");

  default_ = models_->add_subcommand(
      "default", "Set the model requests get when they name none or \"default\"");
  default_->add_option("ID", id_, "A served model; omit it with --clear");
  default_->add_flag("--clear", clear_, "No default model");
  default_->callback([this] {
    if (id_.empty() && !clear_)
      throw CLI::ValidationError("default", "give a model id, or --clear");
  });

  plan_ = models_->add_subcommand(
      "plan", "How a model would run on the GPUs found: TP degree, replicas, KV budget");
  add_id(plan_, "The model's id");
  plan_
      ->add_option("--quantization", quantization_,
                   "The weights as models load --quantization would load them: none (default) "
                   "or fp8")
      ->transform(CLI::IsMember({"none", "fp8"}));
  plan_
      ->add_option("--kv-cache-dtype", kv_cache_dtype_,
                   "The KV cache as models load --kv-cache-dtype would keep it: auto (default) "
                   "or fp8")
      ->transform(CLI::IsMember({"auto", "fp8"}));
  plan_->add_option("--context-length", context_length_,
                    "Tokens per sequence for the concurrency prediction (default 4096)");
  add_json(plan_);
}

std::optional<int> ModelsCommand::Run(const AdminCalls& calls) const {
  if (!*models_) return std::nullopt;
  if (*list_) {
    api::ListInstalledModelsResponse response;
    if (auto failed = Call(calls, "models list", &api::Admin::Stub::ListInstalledModels,
                           api::ListInstalledModelsRequest(), &response))
      return *failed;
    if (json_) return calls.print_json(response) ? 0 : 1;
    std::cout << ModelsTable(response);
    return 0;
  }
  if (*install_) {
    api::InstallModelRequest request;
    request.set_id(id_);
    request.set_require_signature(require_signature_);
    request.set_replace(replace_);
    if (from_.starts_with("http://") || from_.starts_with("https://")) {
      request.set_mirror_url(from_);
    } else {
      std::error_code error;
      const auto path = std::filesystem::absolute(from_, error);
      if (std::filesystem::is_directory(path, error)) {
        request.set_directory(path.string());
      } else {
        request.set_bundle_path(path.string());
        if (!signature_.empty())
          request.set_signature_path(std::filesystem::absolute(signature_, error).string());
      }
    }
    return RunInstall(calls, request, json_);
  }
  if (*remove_) {
    api::RemoveModelRequest request;
    request.set_id(id_);
    api::RemoveModelResponse response;
    if (auto failed =
            Call(calls, "models remove", &api::Admin::Stub::RemoveModel, request, &response))
      return *failed;
    if (json_) return calls.print_json(response) ? 0 : 1;
    fmt::print("removed {} ({} freed)\n", id_, FormatBytes(response.bytes_freed()));
    return 0;
  }
  if (*load_) {
    api::LoadModelRequest request;
    request.set_id(id_);
    auto* options = request.mutable_options();
    options->set_device(device_);
    for (uint32_t gpu : gpus_) options->add_gpus(gpu);
    options->set_replicas(replicas_);
    options->set_tensor_parallel(tensor_parallel_);
    options->set_kv_cache_gib(kv_cache_gib_);
    options->set_max_model_len(max_model_len_);
    options->set_quantization(quantization_);
    options->set_kv_cache_dtype(kv_cache_dtype_);
    options->set_queue_timeout_seconds(queue_timeout_);
    options->set_sampling_defaults(sampling_defaults_);
    request.set_ready_timeout_seconds(ready_timeout_);
    request.set_drain_timeout_seconds(drain_timeout_);
    api::LoadModelResponse response;
    if (auto failed = Call(calls, "models load", &api::Admin::Stub::LoadModel, request, &response,
                           kLoadDeadlineSeconds))
      return *failed;
    if (json_) return calls.print_json(response) ? 0 : 1;
    const std::string_view action = response.action() == api::LOAD_ACTION_SWAPPED ? "swapped to"
                                    : response.action() == api::LOAD_ACTION_UNCHANGED
                                        ? "already serving"
                                        : "loading";
    fmt::print("{} {} {}\n", id_, action, ShortDigest(response.digest()));
    return 0;
  }
  if (*unload_) {
    api::UnloadModelRequest request;
    request.set_id(id_);
    request.set_drain_timeout_seconds(drain_timeout_);
    api::UnloadModelResponse response;
    if (auto failed = Call(calls, "models unload", &api::Admin::Stub::UnloadModel, request,
                           &response, kLoadDeadlineSeconds))
      return *failed;
    fmt::print("unloaded {}\n", id_);
    return 0;
  }
  if (*default_) {
    api::SetDefaultModelRequest request;
    request.set_id(id_);
    api::SetDefaultModelResponse response;
    if (auto failed =
            Call(calls, "models default", &api::Admin::Stub::SetDefaultModel, request, &response))
      return *failed;
    if (id_.empty()) {
      fmt::print("no default model\n");
    } else {
      fmt::print("default model: {}\n", id_);
    }
    return 0;
  }
  if (*plan_) {
    api::PlanModelRequest request;
    request.set_id(id_);
    request.set_context_length(context_length_);
    request.set_quantization(quantization_);
    request.set_kv_cache_dtype(kv_cache_dtype_);
    api::PlanModelResponse response;
    if (auto failed = Call(calls, "models plan", &api::Admin::Stub::PlanModel, request, &response))
      return *failed;
    if (json_) return calls.print_json(response) ? 0 : 1;
    std::cout << PlanReport(response);
    return 0;
  }
  return 1;
}

}  // namespace inferbox::ctl
