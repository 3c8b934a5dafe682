#include "inferbox/daemon/model_manager.h"

#include <algorithm>

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>

#include "inferbox/daemon/placement.h"
#include "inferbox/daemon/supervisor.h"
#include "model_plan.h"
#include "served_models_file.h"

namespace inferbox::daemon {
namespace {

namespace api = ::inferbox::v1;
namespace prov = ::inferbox::provisioning;
using namespace std::chrono_literals;

constexpr std::chrono::seconds kDefaultReadyTimeout{600};
constexpr std::chrono::seconds kDefaultDrain{30};
constexpr std::string_view kModelsFolder = "models";

std::chrono::milliseconds SecondsOr(uint32_t seconds, std::chrono::seconds fallback) {
  return seconds == 0 ? std::chrono::milliseconds(fallback)
                      : std::chrono::milliseconds(seconds * 1000LL);
}

// Bytes of a model's weights: its *.safetensors files (all its files where none is).
uint64_t WeightBytes(const prov::ModelManifest& manifest) {
  uint64_t bytes = 0;
  for (const auto& file : manifest.files()) {
    if (file.path().ends_with(".safetensors")) bytes += file.size_bytes();
  }
  return bytes == 0 ? manifest.size_bytes() : bytes;
}

api::InstalledModel ToInstalled(const prov::ModelManifest& manifest) {
  api::InstalledModel model;
  model.set_id(manifest.id());
  model.set_digest(manifest.digest());
  model.set_size_bytes(manifest.size_bytes());
  model.set_architecture(manifest.architecture());
  *model.mutable_installed_at() = manifest.installed_at();
  model.set_num_parameters(manifest.num_parameters());
  model.set_dtype(manifest.dtype());
  model.set_source(manifest.source());
  model.set_signed_by(manifest.signed_by());
  return model;
}

// The [[models]] entry LoadModel serves: the store's served view, with the request's options
// over the config file's defaults.
ModelServeConfig ServeConfigFor(const api::LoadModelRequest& request) {
  ModelServeConfig config;
  config.name = request.id();
  config.path = std::filesystem::path(kModelsFolder) / request.id();
  const api::ModelServeOptions& options = request.options();
  if (!options.device().empty()) config.device = options.device();
  config.gpus.assign(options.gpus().begin(), options.gpus().end());
  if (options.replicas() > 0) config.replicas = options.replicas();
  // Placed by profile (no GPUs listed) without a replica count: as many as fit.
  if (config.device == "cuda" && config.gpus.empty() && options.replicas() == 0)
    config.replicas = 0;
  config.tensor_parallel = options.tensor_parallel();
  if (options.kv_cache_gib() > 0) config.kv_cache_gib = options.kv_cache_gib();
  if (options.gpu_memory_fraction() > 0) config.gpu_memory_fraction = options.gpu_memory_fraction();
  if (options.max_running() > 0) config.max_running = options.max_running();
  if (options.token_budget() > 0) config.token_budget = options.token_budget();
  if (options.max_model_len() > 0) config.max_model_len = options.max_model_len();
  if (options.max_waiting() > 0) config.max_waiting = options.max_waiting();
  if (!options.quantization().empty()) config.quantization = options.quantization();
  if (!options.kv_cache_dtype().empty()) config.kv_cache_dtype = options.kv_cache_dtype();
  if (options.queue_timeout_seconds() != 0)
    config.queue_timeout_seconds = options.queue_timeout_seconds();
  if (!options.sampling_defaults().empty()) config.sampling_defaults = options.sampling_defaults();
  return config;
}

// The same checks the config file applies to [[models]] options (config.cc).
Status CheckServeOptions(const ModelServeConfig& config) {
  if (config.device != "cpu" && config.device != "cuda")
    return InvalidArgumentError("options.device: \"" + config.device + "\" is not cpu or cuda");
  if (!IsQuantization(config.quantization)) {
    return InvalidArgumentError("options.quantization: \"" + config.quantization +
                                "\" is not none or fp8");
  }
  if (!IsKvCacheDType(config.kv_cache_dtype)) {
    return InvalidArgumentError("options.kv_cache_dtype: \"" + config.kv_cache_dtype +
                                "\" is not auto or fp8");
  }
  if (!IsSamplingDefaults(config.sampling_defaults)) {
    return InvalidArgumentError("options.sampling_defaults: \"" + config.sampling_defaults +
                                "\" is not model or openai");
  }
  // Written so that NaN fails it too.
  if (!(config.queue_timeout_seconds >= 0 && config.queue_timeout_seconds <= 86400))
    return InvalidArgumentError("options.queue_timeout_seconds: from 0 to 86400");
  if (auto error = CheckGpuSettings(config, Placed::kNotYet))
    return InvalidArgumentError("options." + error->key + ": " + error->message);
  if (config.kv_cache_gib > 4096) return InvalidArgumentError("options.kv_cache_gib: at most 4096");
  if (config.gpu_memory_fraction < 0.05 || config.gpu_memory_fraction > 0.99)
    return InvalidArgumentError("options.gpu_memory_fraction: from 0.05 to 0.99");
  if (config.max_running > 4096) return InvalidArgumentError("options.max_running: at most 4096");
  if (config.token_budget > (1 << 20))
    return InvalidArgumentError("options.token_budget: at most 1048576");
  if (config.max_model_len > (1 << 24))
    return InvalidArgumentError("options.max_model_len: at most 16777216");
  if (config.max_waiting > (1 << 20))
    return InvalidArgumentError("options.max_waiting: at most 1048576");
  return Status::Ok();
}

Result<prov::InstallSource> SourceOf(const api::InstallModelRequest& request) {
  auto absolute = [](const std::string& path, std::string_view field) -> Status {
    if (path.empty() || !std::filesystem::path(path).is_absolute())
      return InvalidArgumentError(std::string(field) + ": must be an absolute path on the box");
    return Status::Ok();
  };
  switch (request.source_case()) {
    case api::InstallModelRequest::kDirectory:
      if (Status status = absolute(request.directory(), "directory"); !status.ok()) return status;
      return prov::InstallSource(prov::DirectorySource{request.directory()});
    case api::InstallModelRequest::kBundlePath: {
      if (Status status = absolute(request.bundle_path(), "bundle_path"); !status.ok())
        return status;
      prov::BundleSource bundle{request.bundle_path(), std::nullopt};
      if (!request.signature_path().empty()) {
        if (Status status = absolute(request.signature_path(), "signature_path"); !status.ok())
          return status;
        bundle.signature_path = request.signature_path();
      }
      return prov::InstallSource(std::move(bundle));
    }
    case api::InstallModelRequest::kMirrorUrl:
      return prov::InstallSource(prov::MirrorSource{request.mirror_url()});
    default:
      return InvalidArgumentError(
          "source: one of directory, bundle_path or mirror_url is required");
  }
}

}  // namespace

Result<std::unique_ptr<ModelManager>> ModelManager::Open(ModelManagerOptions options,
                                                         prometheus::Registry& registry) {
  prov::ModelStoreOptions store_options;
  store_options.trusted_public_keys_pem = options.store.trusted_keys_pem;
  store_options.require_signatures = options.store.require_signatures;
  store_options.mirror.allowed_url_prefixes = options.store.mirrors;
  if (options.store.ca_file) store_options.mirror.ca_file = options.store.ca_file->string();
  store_options.mirror.proxy = options.store.proxy;
  const std::filesystem::path models_dir = options.state_dir / kModelsFolder;
  auto store = prov::ModelStore::Open(models_dir, std::move(store_options));
  if (!store.ok())
    return store.status().WithContext("cannot open the model store in " + models_dir.string());

  auto served = ReadServedModels(options.state_dir / kServedModelsFileName);
  if (!served.ok()) return served.status().WithContext("cannot read the models loaded last run");

  auto& bytes = prometheus::BuildCounter()
                    .Name("inferbox_model_install_bytes_total")
                    .Help("Bytes model installs transferred and verified.")
                    .Register(registry)
                    .Add({});
  auto& in_progress = prometheus::BuildGauge()
                          .Name("inferbox_model_installs_in_progress")
                          .Help("Model installs running now.")
                          .Register(registry)
                          .Add({});
  auto& installs = prometheus::BuildCounter()
                       .Name("inferbox_model_installs_total")
                       .Help("Model installs that ended, by result.")
                       .Register(registry);
  Metrics metrics{bytes, in_progress, installs.Add({{"result", "installed"}}),
                  installs.Add({{"result", "failed"}}), installs.Add({{"result", "cancelled"}})};
  return std::unique_ptr<ModelManager>(
      new ModelManager(std::move(options), std::move(store).value(), std::move(served->models),
                       std::move(served->default_model), metrics));
}

ModelManager::ModelManager(ModelManagerOptions options,
                           std::unique_ptr<provisioning::ModelStore> store,
                           std::vector<ModelServeConfig> loaded, std::string default_model,
                           Metrics metrics)
    : options_(std::move(options)),
      store_(std::move(store)),
      served_file_(options_.state_dir / kServedModelsFileName),
      metrics_(metrics),
      loaded_(std::move(loaded)),
      default_model_(std::move(default_model)) {}

ModelManager::~ModelManager() = default;

std::vector<ModelServeConfig> ModelManager::ModelsToServe(
    const std::vector<ModelServeConfig>& configured) {
  std::lock_guard lock(state_mutex_);
  std::vector<std::string> overridden;
  auto merged = MergeServedModels(configured, loaded_, &overridden);
  for (const auto& name : overridden) {
    spdlog::warn(
        "model {} was loaded at run time and is also in the config file's [[models]]: the "
        "config file's entry is served",
        name);
    std::erase_if(loaded_, [&](const auto& model) { return model.name == name; });
  }
  // The engines start from the versions installed now.
  for (const auto& model : merged) {
    if (auto manifest = store_->Get(model.name);
        manifest.ok() && ServesStoreModel(model, model.name))
      served_digest_[model.name] = manifest->digest();
  }
  return merged;
}

void ModelManager::Attach(Supervisor& supervisor) {
  supervisor_ = &supervisor;
  if (options_.on_default_changed) options_.on_default_changed(default_model());
}

std::string ModelManager::default_model() const {
  std::lock_guard lock(state_mutex_);
  return default_model_;
}

bool ModelManager::ServesStoreModel(const ModelServeConfig& served, std::string_view id) const {
  const std::filesystem::path path =
      served.path.is_absolute() ? served.path : options_.state_dir / served.path;
  return path.lexically_normal() == store_->ModelPath(id).lexically_normal();
}

bool ModelManager::IsServed(std::string_view id) const {
  if (supervisor_ == nullptr) return false;
  for (const auto& model : supervisor_->models()) {
    if (model.name == id || ServesStoreModel(model, id)) return true;
  }
  return false;
}

Status ModelManager::PersistLocked() const {
  return WriteServedModels(served_file_, ServedModels{loaded_, default_model_});
}

Result<api::ListInstalledModelsResponse> ModelManager::ListInstalled() const {
  auto manifests = store_->List();
  if (!manifests.ok()) return manifests.status();
  api::ListInstalledModelsResponse response;
  std::lock_guard lock(state_mutex_);
  response.set_default_model(default_model_);
  for (const auto& manifest : *manifests) {
    api::InstalledModel model = ToInstalled(manifest);
    if (supervisor_ != nullptr) {
      if (auto served = supervisor_->FindModel(manifest.id());
          served != nullptr && ServesStoreModel(*served, manifest.id())) {
        model.set_served(true);
        model.set_state(supervisor_->ModelStateOf(manifest.id()));
        if (auto found = served_digest_.find(manifest.id());
            found != served_digest_.end() && found->second != manifest.digest())
          model.set_served_digest(found->second);
      }
    }
    *response.add_models() = std::move(model);
  }
  return response;
}

Result<api::InstalledModel> ModelManager::Install(
    const api::InstallModelRequest& request,
    const std::function<bool(const api::InstallModelProgress&)>& progress) {
  auto source = SourceOf(request);
  if (!source.ok()) return source.status();
  prov::InstallOptions options;
  options.require_signature = request.require_signature();
  options.replace = request.replace();
  uint64_t counted = 0;  // Of this install's done_bytes, what the metric already has.
  options.progress = [&](const prov::InstallProgress& step) {
    if (step.done_bytes > counted) {
      metrics_.bytes.Increment(static_cast<double>(step.done_bytes - counted));
      counted = step.done_bytes;
    }
    api::InstallModelProgress message;
    message.set_phase(std::string(prov::InstallPhaseName(step.phase)));
    message.set_done_bytes(step.done_bytes);
    message.set_total_bytes(step.total_bytes);
    message.set_current_file(step.current_file);
    return progress(message);
  };
  metrics_.in_progress.Increment();
  auto installed = store_->Install(request.id(), *source, options);
  metrics_.in_progress.Decrement();
  if (!installed.ok()) {
    (installed.status().code() == StatusCode::kCancelled ? metrics_.cancelled : metrics_.failed)
        .Increment();
    return installed.status();
  }
  metrics_.installed.Increment();
  return ToInstalled(*installed);
}

Result<api::RemoveModelResponse> ModelManager::Remove(const api::RemoveModelRequest& request) {
  std::lock_guard change(change_mutex_);
  if (IsServed(request.id())) {
    return FailedPreconditionError(
        fmt::format("model {} is served: unload it first (inferboxctl models unload {})",
                    request.id(), request.id()));
  }
  Status removed =
      store_->Remove(request.id(), [this](std::string_view id) { return IsServed(id); });
  if (!removed.ok()) return removed;
  api::RemoveModelResponse response;
  auto collected = store_->CollectGarbage();
  if (collected.ok()) {
    response.set_bytes_freed(collected->bytes_freed);
  } else {
    // The model is gone; its blobs go at the next collection.
    spdlog::warn("model {} removed, but collecting its blobs failed: {}", request.id(),
                 collected.status().message());
  }
  return response;
}

Result<api::LoadModelResponse> ModelManager::Load(const api::LoadModelRequest& request) {
  if (supervisor_ == nullptr) return UnavailableError("the daemon is still starting");
  std::lock_guard change(change_mutex_);
  auto manifest = store_->Get(request.id());
  if (!manifest.ok()) {
    if (manifest.status().code() != StatusCode::kNotFound) return manifest.status();
    return NotFoundError(fmt::format(
        "model {} is not installed (inferboxctl models list; inferboxctl models install)",
        request.id()));
  }
  ModelServeConfig next = ServeConfigFor(request);
  if (Status valid = CheckServeOptions(next); !valid.ok()) return valid;
  if (next.device == "cuda" && next.gpus.empty()) {
    auto placed = PlaceOnFreeGpus(std::move(next), *manifest);
    if (!placed.ok()) return placed.status();
    next = std::move(placed).value();
  }

  api::LoadModelResponse response;
  response.set_digest(manifest->digest());
  auto served = supervisor_->FindModel(request.id());
  if (served == nullptr) {
    if (Status added = supervisor_->AddModel(next); !added.ok()) return added;
    response.set_action(api::LOAD_ACTION_LOADED);
  } else {
    if (!ServesStoreModel(*served, request.id())) {
      return FailedPreconditionError(fmt::format(
          "a model named {} is served from {} (the config file's [[models]]), not from the "
          "model store",
          request.id(), served->path.string()));
    }
    std::string served_digest;
    {
      std::lock_guard lock(state_mutex_);
      served_digest = served_digest_[request.id()];
    }
    if (served_digest == manifest->digest() && *served == next) {
      response.set_action(api::LOAD_ACTION_UNCHANGED);
      return response;
    }
    Status replaced = supervisor_->ReplaceModel(
        next, SecondsOr(request.ready_timeout_seconds(), kDefaultReadyTimeout),
        SecondsOr(request.drain_timeout_seconds(), kDefaultDrain));
    if (!replaced.ok()) return replaced.WithContext("the old version keeps serving");
    response.set_action(api::LOAD_ACTION_SWAPPED);
  }

  std::lock_guard lock(state_mutex_);
  served_digest_[request.id()] = manifest->digest();
  std::erase_if(loaded_, [&](const auto& model) { return model.name == next.name; });
  loaded_.push_back(next);
  if (Status persisted = PersistLocked(); !persisted.ok()) {
    spdlog::error("model {} is served but will not be after a restart: {}", request.id(),
                  persisted.message());
  }
  return response;
}

Status ModelManager::Unload(const api::UnloadModelRequest& request) {
  if (supervisor_ == nullptr) return UnavailableError("the daemon is still starting");
  std::lock_guard change(change_mutex_);
  const Status removed = supervisor_->RemoveModel(
      request.id(), SecondsOr(request.drain_timeout_seconds(), kDefaultDrain));
  std::lock_guard lock(state_mutex_);
  // A model loaded at run time that was not served after a start (it no longer fitted:
  // daemon.cc) is not the supervisor's, but unloading it still forgets it.
  const bool remembered = std::any_of(loaded_.begin(), loaded_.end(), [&](const auto& model) {
    return model.name == request.id();
  });
  if (!removed.ok() && !(removed.code() == StatusCode::kNotFound && remembered)) return removed;
  served_digest_.erase(request.id());
  const size_t erased =
      std::erase_if(loaded_, [&](const auto& model) { return model.name == request.id(); });
  if (erased == 0) {
    spdlog::warn(
        "model {} unloaded; it is in the config file's [[models]], so it is served "
        "again after a restart",
        request.id());
    return Status::Ok();
  }
  return PersistLocked();
}

Status ModelManager::SetDefault(const api::SetDefaultModelRequest& request) {
  if (supervisor_ == nullptr) return UnavailableError("the daemon is still starting");
  if (!request.id().empty() && supervisor_->FindModel(request.id()) == nullptr) {
    return FailedPreconditionError(fmt::format(
        "model {} is not served (inferboxctl models load {} first)", request.id(), request.id()));
  }
  {
    std::lock_guard lock(state_mutex_);
    default_model_ = request.id();
    if (Status persisted = PersistLocked(); !persisted.ok()) return persisted;
  }
  if (options_.on_default_changed) options_.on_default_changed(request.id());
  return Status::Ok();
}

Result<ModelServeConfig> ModelManager::PlaceOnFreeGpus(ModelServeConfig model,
                                                       const prov::ModelManifest& manifest) const {
  ModelFootprint footprint;
  footprint.weight_bytes = WeightBytes(manifest);
  if (auto shape = ReadModelShape(store_->ModelPath(model.name) / "config.json", manifest.dtype());
      shape.ok()) {
    footprint.weight_bytes = shape->LoadedWeightBytes(footprint.weight_bytes, model.quantization);
  }
  // The GPUs of every other served model are taken; its own (a swap) are free to reuse.
  std::vector<uint32_t> claimed;
  for (const ModelServeConfig& served : supervisor_->models()) {
    if (served.name != model.name)
      claimed.insert(claimed.end(), served.gpus.begin(), served.gpus.end());
  }
  const std::vector<uint64_t> memory =
      options_.gpu_memory ? options_.gpu_memory() : std::vector<uint64_t>();
  return PlaceByProfile(std::move(model), footprint, memory, claimed);
}

Result<api::PlanModelResponse> ModelManager::Plan(const api::PlanModelRequest& request) const {
  const std::string quantization = request.quantization().empty() ? "none" : request.quantization();
  if (!IsQuantization(quantization)) {
    return InvalidArgumentError("quantization: \"" + quantization + "\" is not none or fp8");
  }
  const std::string kv_cache_dtype =
      request.kv_cache_dtype().empty() ? "auto" : request.kv_cache_dtype();
  if (!IsKvCacheDType(kv_cache_dtype)) {
    return InvalidArgumentError("kv_cache_dtype: \"" + kv_cache_dtype + "\" is not auto or fp8");
  }
  auto manifest = store_->Get(request.id());
  if (!manifest.ok()) return manifest.status();
  auto shape = ReadModelShape(store_->ModelPath(request.id()) / "config.json", manifest->dtype());
  if (!shape.ok()) return shape.status();
  PlanInputs inputs;
  inputs.id = request.id();
  inputs.shape = *shape;
  inputs.context_length = request.context_length();
  inputs.weight_bytes = shape->LoadedWeightBytes(WeightBytes(*manifest), quantization);
  inputs.quantization = quantization;
  inputs.kv_cache_dtype = kv_cache_dtype;
  if (options_.gpu_memory) inputs.gpu_memory_bytes = options_.gpu_memory();
  return PlanModel(inputs);
}

}  // namespace inferbox::daemon
