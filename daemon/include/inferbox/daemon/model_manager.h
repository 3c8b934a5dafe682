// The model side of the Admin plane: the verified model store (provisioning/) and the set of
// models the supervisor serves, behind admin::ModelAdmin. It installs and removes models,
// loads installed ones (a ModelServeConfig whose path is models/<id> under the state dir),
// swaps a served model to a newly installed version blue/green (Supervisor::ReplaceModel),
// unloads, keeps the default model, and plans profiles from the GPUs found.
//
// What it changes at run time (models loaded, the default) is written to
// <state_dir>/served-models.toml (served_models_file.h) and served again after a restart,
// after the config file's [[models]], which win on a name clash.
//
// Thread-safe. Load, Unload and Remove are serialised (change_mutex_), so a model cannot be
// removed while it is being loaded; installs run concurrently on their callers' threads.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include "inferbox/admin/model_admin.h"
#include "inferbox/daemon/config.h"
#include "inferbox/provisioning/model_store.h"

namespace inferbox::daemon {

class Supervisor;

struct ModelManagerOptions {
  std::filesystem::path state_dir;
  ModelStoreConfig store;
  // Memory of each GPU found, in bytes (empty: none); for PlanModel.
  std::function<std::vector<uint64_t>()> gpu_memory;
  // Called with the new default model (empty: none) when it changes, and once by Attach.
  std::function<void(const std::string&)> on_default_changed;
};

class ModelManager final : public admin::ModelAdmin {
 public:
  // Opens the store in <state_dir>/models and reads the served set the last run left.
  // Errors name what failed: a bad trusted key, an unusable models folder, a broken
  // served-models.toml.
  static Result<std::unique_ptr<ModelManager>> Open(ModelManagerOptions options,
                                                    prometheus::Registry& registry);
  ~ModelManager() override;

  // The models to serve at start: `configured`, then those loaded at run time before the
  // last stop whose names the config does not use (each clash is logged).
  std::vector<ModelServeConfig> ModelsToServe(const std::vector<ModelServeConfig>& configured);
  // Where loads go from now on; `supervisor` must outlive this object's use of it.
  void Attach(Supervisor& supervisor);
  std::string default_model() const;

  Result<inferbox::v1::ListInstalledModelsResponse> ListInstalled() const override;
  Result<inferbox::v1::InstalledModel> Install(
      const inferbox::v1::InstallModelRequest& request,
      const std::function<bool(const inferbox::v1::InstallModelProgress&)>& progress) override;
  Result<inferbox::v1::RemoveModelResponse> Remove(
      const inferbox::v1::RemoveModelRequest& request) override;
  Result<inferbox::v1::LoadModelResponse> Load(
      const inferbox::v1::LoadModelRequest& request) override;
  Status Unload(const inferbox::v1::UnloadModelRequest& request) override;
  Status SetDefault(const inferbox::v1::SetDefaultModelRequest& request) override;
  Result<inferbox::v1::PlanModelResponse> Plan(
      const inferbox::v1::PlanModelRequest& request) const override;

 private:
  struct Metrics {
    prometheus::Counter& bytes;
    prometheus::Gauge& in_progress;
    prometheus::Counter& installed;
    prometheus::Counter& failed;
    prometheus::Counter& cancelled;
  };

  ModelManager(ModelManagerOptions options, std::unique_ptr<provisioning::ModelStore> store,
               std::vector<ModelServeConfig> loaded, std::string default_model, Metrics metrics);

  // Whether `served` serves the store's model `id` (its folder is models/<id>).
  bool ServesStoreModel(const ModelServeConfig& served, std::string_view id) const;
  bool IsServed(std::string_view id) const;
  // A cuda model that lists no GPUs, placed by profile on GPUs no other served model uses.
  Result<ModelServeConfig> PlaceOnFreeGpus(ModelServeConfig model,
                                           const provisioning::ModelManifest& manifest) const;
  // Writes served-models.toml from the fields below; the caller holds state_mutex_.
  Status PersistLocked() const;

  const ModelManagerOptions options_;
  const std::unique_ptr<provisioning::ModelStore> store_;
  const std::filesystem::path served_file_;
  Metrics metrics_;
  Supervisor* supervisor_ = nullptr;  // Set once by Attach, before any RPC.

  std::mutex change_mutex_;  // Held through a whole Load, Unload or Remove.
  mutable std::mutex state_mutex_;
  std::vector<ModelServeConfig> loaded_;              // Guarded by state_mutex_.
  std::string default_model_;                         // Guarded by state_mutex_.
  std::map<std::string, std::string> served_digest_;  // Guarded by state_mutex_.
};

}  // namespace inferbox::daemon
