// What the Admin service's model RPCs ask of the daemon: the model store and the served set
// behind one interface, so the service (admin/) stays free of the daemon's types. The daemon
// implements it (daemon/include/inferbox/daemon/model_manager.h).
//
// Thread-safe: gRPC threads call every method concurrently.
#pragma once

#include <functional>
#include <string>

#include "inferbox/common/status.h"
#include "inferbox/v1/admin.pb.h"

namespace inferbox::admin {

class ModelAdmin {
 public:
  virtual ~ModelAdmin() = default;

  virtual Result<inferbox::v1::ListInstalledModelsResponse> ListInstalled() const = 0;
  // Runs the install on the calling thread; `progress` sees every step (its `installed` is
  // never set) and returns false to cancel (CANCELLED, nothing installed).
  virtual Result<inferbox::v1::InstalledModel> Install(
      const inferbox::v1::InstallModelRequest& request,
      const std::function<bool(const inferbox::v1::InstallModelProgress&)>& progress) = 0;
  virtual Result<inferbox::v1::RemoveModelResponse> Remove(
      const inferbox::v1::RemoveModelRequest& request) = 0;
  virtual Result<inferbox::v1::LoadModelResponse> Load(
      const inferbox::v1::LoadModelRequest& request) = 0;
  virtual Status Unload(const inferbox::v1::UnloadModelRequest& request) = 0;
  virtual Status SetDefault(const inferbox::v1::SetDefaultModelRequest& request) = 0;
  virtual Result<inferbox::v1::PlanModelResponse> Plan(
      const inferbox::v1::PlanModelRequest& request) const = 0;
};

}  // namespace inferbox::admin
