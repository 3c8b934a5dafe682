#include "inferbox/admin/admin_service.h"

#include <string>
#include <string_view>

#include <spdlog/spdlog.h>

#include "inferbox/common/grpc_status.h"
#include "inferbox/daemon/grpc_auth.h"
#include "inferbox/daemon/key_store.h"

namespace inferbox::admin {
namespace {

std::string CallerName(const daemon::Caller& caller) {
  return caller.key_id.empty() ? "anonymous caller" : "key " + caller.key_id;
}

std::string RoleName(inferbox::v1::KeyRole role) {
  switch (role) {
    case inferbox::v1::KEY_ROLE_INFERENCE: return "inference";
    case inferbox::v1::KEY_ROLE_ADMIN: return "admin";
    default: return "unspecified";
  }
}

}  // namespace

AdminServiceImpl::AdminServiceImpl(const StatusBoard& board, daemon::KeyStore* keys,
                                   const daemon::Authenticator* authenticator)
    : board_(board), keys_(keys), authenticator_(authenticator != nullptr ? authenticator : keys) {}

grpc::Status AdminServiceImpl::GetStatus(grpc::ServerContext* context,
                                         const inferbox::v1::GetStatusRequest* /*request*/,
                                         inferbox::v1::GetStatusResponse* response) {
  if (authenticator_ != nullptr) {
    auto caller = daemon::AuthenticateGrpc(*context, *authenticator_);
    if (!caller.ok()) return ToGrpcStatus(caller.status());
  }
  *response = board_.Snapshot();
  return grpc::Status::OK;
}

grpc::Status AdminServiceImpl::AuthorizeAdmin(const grpc::ServerContext& context,
                                              std::string_view rpc,
                                              std::string* caller_name) const {
  if (authenticator_ == nullptr) {
    *caller_name = "anonymous caller";
    return grpc::Status::OK;
  }
  auto caller = daemon::AuthenticateGrpc(context, *authenticator_);
  if (!caller.ok()) {
    spdlog::warn("Admin RPC {} refused: {}", rpc, caller.status().message());
    return ToGrpcStatus(caller.status());
  }
  if (caller->role != inferbox::v1::KEY_ROLE_ADMIN) {
    const std::string message = "managing API keys needs a key with role admin; " +
                                CallerName(*caller) + " has role " + RoleName(caller->role);
    spdlog::warn("Admin RPC {} refused: {}", rpc, message);
    return {grpc::StatusCode::PERMISSION_DENIED, message};
  }
  *caller_name = CallerName(*caller);
  return grpc::Status::OK;
}

grpc::Status AdminServiceImpl::CreateKey(grpc::ServerContext* context,
                                         const inferbox::v1::CreateKeyRequest* request,
                                         inferbox::v1::CreateKeyResponse* response) {
  std::string caller;
  if (grpc::Status allowed = AuthorizeAdmin(*context, "CreateKey", &caller); !allowed.ok())
    return allowed;
  if (keys_ == nullptr) return {grpc::StatusCode::UNAVAILABLE, "key store not configured"};
  auto created = keys_->Create(request->name(), request->role(), request->limits());
  if (!created.ok()) return ToGrpcStatus(created.status());
  spdlog::info("API key {} (\"{}\", role {}) created by {}", created->key().id(),
               created->key().name(), RoleName(created->key().role()), caller);
  *response = std::move(created).value();
  return grpc::Status::OK;
}

grpc::Status AdminServiceImpl::ListKeys(grpc::ServerContext* context,
                                        const inferbox::v1::ListKeysRequest* request,
                                        inferbox::v1::ListKeysResponse* response) {
  std::string caller;
  if (grpc::Status allowed = AuthorizeAdmin(*context, "ListKeys", &caller); !allowed.ok())
    return allowed;
  if (keys_ == nullptr) return {grpc::StatusCode::UNAVAILABLE, "key store not configured"};
  auto keys = keys_->List(request->include_revoked());
  if (!keys.ok()) return ToGrpcStatus(keys.status());
  for (auto& key : *keys) *response->add_keys() = std::move(key);
  return grpc::Status::OK;
}

grpc::Status AdminServiceImpl::RevokeKey(grpc::ServerContext* context,
                                         const inferbox::v1::RevokeKeyRequest* request,
                                         inferbox::v1::RevokeKeyResponse* /*response*/) {
  std::string caller;
  if (grpc::Status allowed = AuthorizeAdmin(*context, "RevokeKey", &caller); !allowed.ok())
    return allowed;
  if (keys_ == nullptr) return {grpc::StatusCode::UNAVAILABLE, "key store not configured"};
  if (Status revoked = keys_->Revoke(request->id()); !revoked.ok()) {
    return ToGrpcStatus(revoked);
  }
  spdlog::info("API key {} revoked by {}", request->id(), caller);
  return grpc::Status::OK;
}

}  // namespace inferbox::admin
