// The Admin service's model RPCs: the model store and the served set, through ModelAdmin.
// Every one goes through Serve (admin key, audit event) like the rest of the service.
#include <string>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "admin_call.h"
#include "inferbox/admin/admin_service.h"
#include "inferbox/common/grpc_status.h"

namespace inferbox::admin {
namespace {

namespace api = ::inferbox::v1;

const grpc::Status kNoModelStore{grpc::StatusCode::UNAVAILABLE, "model store not configured"};

std::string CallerName(const daemon::Caller& caller) {
  return caller.key_id.empty() ? "anonymous caller" : "key " + caller.key_id;
}

std::string SourceName(const api::InstallModelRequest& request) {
  switch (request.source_case()) {
    case api::InstallModelRequest::kDirectory: return "folder " + request.directory();
    case api::InstallModelRequest::kBundlePath: return "bundle " + request.bundle_path();
    case api::InstallModelRequest::kMirrorUrl: return "mirror " + request.mirror_url();
    default: return "no source";
  }
}

}  // namespace

grpc::Status AdminServiceImpl::ListInstalledModels(grpc::ServerContext* context,
                                                   const api::ListInstalledModelsRequest* request,
                                                   api::ListInstalledModelsResponse* response) {
  return Serve(*context, "ListInstalledModels", *request, [&](AdminCall&) -> grpc::Status {
    if (models_ == nullptr) return kNoModelStore;
    auto listed = models_->ListInstalled();
    if (!listed.ok()) return ToGrpcStatus(listed.status());
    *response = std::move(listed).value();
    return grpc::Status::OK;
  });
}

grpc::Status AdminServiceImpl::InstallModel(grpc::ServerContext* context,
                                            const api::InstallModelRequest* request,
                                            grpc::ServerWriter<api::InstallModelProgress>* writer) {
  return Serve(*context, "InstallModel", *request, [&](AdminCall& call) -> grpc::Status {
    if (models_ == nullptr) return kNoModelStore;
    // The install runs on this thread; a client that goes away (or a failed write) cancels
    // it, and nothing becomes visible.
    auto installed = models_->Install(*request, [&](const api::InstallModelProgress& progress) {
      if (context->IsCancelled()) return false;
      return writer->Write(progress);
    });
    if (!installed.ok()) return ToGrpcStatus(installed.status());
    spdlog::info("model {} ({}) installed from {} by {}", installed->id(), installed->digest(),
                 SourceName(*request), CallerName(call.caller));
    call.detail = fmt::format("installed {} {}", installed->id(), installed->digest());
    api::InstallModelProgress last;
    last.set_phase("done");
    last.set_done_bytes(installed->size_bytes());
    last.set_total_bytes(installed->size_bytes());
    *last.mutable_installed() = std::move(installed).value();
    writer->Write(last);
    return grpc::Status::OK;
  });
}

grpc::Status AdminServiceImpl::RemoveModel(grpc::ServerContext* context,
                                           const api::RemoveModelRequest* request,
                                           api::RemoveModelResponse* response) {
  return Serve(*context, "RemoveModel", *request, [&](AdminCall& call) -> grpc::Status {
    if (models_ == nullptr) return kNoModelStore;
    auto removed = models_->Remove(*request);
    if (!removed.ok()) return ToGrpcStatus(removed.status());
    spdlog::info("model {} removed by {} ({} bytes freed)", request->id(), CallerName(call.caller),
                 removed->bytes_freed());
    call.detail =
        fmt::format("removed model {}; {} bytes freed", request->id(), removed->bytes_freed());
    *response = std::move(removed).value();
    return grpc::Status::OK;
  });
}

grpc::Status AdminServiceImpl::LoadModel(grpc::ServerContext* context,
                                         const api::LoadModelRequest* request,
                                         api::LoadModelResponse* response) {
  return Serve(*context, "LoadModel", *request, [&](AdminCall& call) -> grpc::Status {
    if (models_ == nullptr) return kNoModelStore;
    auto loaded = models_->Load(*request);
    if (!loaded.ok()) return ToGrpcStatus(loaded.status());
    const std::string_view action = loaded->action() == api::LOAD_ACTION_SWAPPED  ? "swapped"
                                    : loaded->action() == api::LOAD_ACTION_LOADED ? "loaded"
                                                                                  : "unchanged";
    spdlog::info("model {} {} ({}) by {}", request->id(), action, loaded->digest(),
                 CallerName(call.caller));
    call.detail = fmt::format("{} {} {}", action, request->id(), loaded->digest());
    *response = std::move(loaded).value();
    return grpc::Status::OK;
  });
}

grpc::Status AdminServiceImpl::UnloadModel(grpc::ServerContext* context,
                                           const api::UnloadModelRequest* request,
                                           api::UnloadModelResponse* /*response*/) {
  return Serve(*context, "UnloadModel", *request, [&](AdminCall& call) -> grpc::Status {
    if (models_ == nullptr) return kNoModelStore;
    if (Status unloaded = models_->Unload(*request); !unloaded.ok()) return ToGrpcStatus(unloaded);
    spdlog::info("model {} unloaded by {}", request->id(), CallerName(call.caller));
    return grpc::Status::OK;
  });
}

grpc::Status AdminServiceImpl::SetDefaultModel(grpc::ServerContext* context,
                                               const api::SetDefaultModelRequest* request,
                                               api::SetDefaultModelResponse* /*response*/) {
  return Serve(*context, "SetDefaultModel", *request, [&](AdminCall& call) -> grpc::Status {
    if (models_ == nullptr) return kNoModelStore;
    if (Status set = models_->SetDefault(*request); !set.ok()) return ToGrpcStatus(set);
    spdlog::info("default model set to '{}' by {}", request->id(), CallerName(call.caller));
    return grpc::Status::OK;
  });
}

grpc::Status AdminServiceImpl::PlanModel(grpc::ServerContext* context,
                                         const api::PlanModelRequest* request,
                                         api::PlanModelResponse* response) {
  return Serve(*context, "PlanModel", *request, [&](AdminCall&) -> grpc::Status {
    if (models_ == nullptr) return kNoModelStore;
    auto plan = models_->Plan(*request);
    if (!plan.ok()) return ToGrpcStatus(plan.status());
    *response = std::move(plan).value();
    return grpc::Status::OK;
  });
}

}  // namespace inferbox::admin
