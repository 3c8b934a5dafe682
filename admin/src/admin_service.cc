#include "inferbox/admin/admin_service.h"

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>

#include "admin_call.h"
#include "inferbox/common/grpc_status.h"
#include "inferbox/daemon/grpc_auth.h"
#include "inferbox/daemon/key_store.h"
#include "inferbox/daemon/usage_ledger.h"

namespace inferbox::admin {
namespace {

// Where a call came from: the client's address and, when it presented a certificate the
// daemon verified (mutual TLS), that certificate's identity as gRPC's AuthContext has it (its
// subject alternative names, else its common name), never anything the client chose to send.
std::string PeerOf(const grpc::ServerContext& context) {
  std::string peer = context.peer();
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return peer;
  std::vector<std::string> names;
  for (const grpc::string_ref& name : auth->GetPeerIdentity())
    names.emplace_back(name.data(), name.size());
  return fmt::format("{} (certificate {})", peer, fmt::join(names, ", "));
}

// How long GetUsage waits for usage rows still queued to be written.
constexpr std::chrono::seconds kUsageFlushTimeout{5};
constexpr uint32_t kDefaultAuditEvents = 100;
constexpr uint32_t kMaxAuditEvents = 10000;

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
                                   const daemon::Authenticator* authenticator,
                                   daemon::UsageLedger* usage, AuditLog* audit, ModelAdmin* models)
    : board_(board),
      keys_(keys),
      authenticator_(authenticator != nullptr ? authenticator : keys),
      usage_(usage),
      audit_(audit),
      models_(models) {}

grpc::Status AdminServiceImpl::AuthorizeAdmin(const grpc::ServerContext& context,
                                              std::string_view rpc, daemon::Caller* caller) const {
  if (authenticator_ == nullptr) {
    *caller = daemon::Caller{.role = inferbox::v1::KEY_ROLE_ADMIN};
    return grpc::Status::OK;
  }
  auto authenticated = daemon::AuthenticateGrpc(context, *authenticator_);
  if (!authenticated.ok()) {
    spdlog::warn("Admin RPC {} refused: {}", rpc, authenticated.status().message());
    return ToGrpcStatus(authenticated.status());
  }
  // Known from here on, refused or not: the audit log says who tried.
  *caller = std::move(authenticated).value();
  if (caller->role != inferbox::v1::KEY_ROLE_ADMIN) {
    const std::string message = fmt::format("{} needs a key with role admin; {} has role {}", rpc,
                                            CallerName(*caller), RoleName(caller->role));
    spdlog::warn("Admin RPC {} refused: {}", rpc, message);
    return {grpc::StatusCode::PERMISSION_DENIED, message};
  }
  return grpc::Status::OK;
}

grpc::Status AdminServiceImpl::Serve(grpc::ServerContext& context, std::string_view rpc,
                                     const google::protobuf::Message& request,
                                     const std::function<grpc::Status(AdminCall&)>& handler) {
  AdminCall call;
  grpc::Status status = AuthorizeAdmin(context, rpc, &call.caller);
  if (status.ok()) status = handler(call);
  if (audit_ == nullptr) return status;
  inferbox::v1::AuditEvent event;
  event.set_caller_key_id(call.caller.key_id);
  event.set_peer(PeerOf(context));
  event.set_rpc(std::string(rpc));
  event.set_request(SummarizeRequest(request));
  event.set_code(std::string(GrpcCodeName(status.error_code())));
  event.set_message(status.error_message());
  event.set_detail(call.detail);
  if (Status recorded = audit_->Append(std::move(event)); !recorded.ok()) {
    // The call already took effect: answering it as failed would mislead the caller.
    spdlog::error("Admin RPC {} by {} was not recorded in the audit log: {}", rpc,
                  CallerName(call.caller), recorded.message());
  }
  return status;
}

grpc::Status AdminServiceImpl::GetStatus(grpc::ServerContext* context,
                                         const inferbox::v1::GetStatusRequest* request,
                                         inferbox::v1::GetStatusResponse* response) {
  return Serve(*context, "GetStatus", *request, [&](AdminCall&) {
    *response = board_.Snapshot();
    return grpc::Status::OK;
  });
}

grpc::Status AdminServiceImpl::CreateKey(grpc::ServerContext* context,
                                         const inferbox::v1::CreateKeyRequest* request,
                                         inferbox::v1::CreateKeyResponse* response) {
  return Serve(*context, "CreateKey", *request, [&](AdminCall& call) -> grpc::Status {
    if (keys_ == nullptr) return {grpc::StatusCode::UNAVAILABLE, "key store not configured"};
    auto created = keys_->Create(request->name(), request->role(), request->limits());
    if (!created.ok()) return ToGrpcStatus(created.status());
    spdlog::info("API key {} (\"{}\", role {}) created by {}", created->key().id(),
                 created->key().name(), RoleName(created->key().role()), CallerName(call.caller));
    call.detail = "created key " + created->key().id();
    *response = std::move(created).value();
    return grpc::Status::OK;
  });
}

grpc::Status AdminServiceImpl::ListKeys(grpc::ServerContext* context,
                                        const inferbox::v1::ListKeysRequest* request,
                                        inferbox::v1::ListKeysResponse* response) {
  return Serve(*context, "ListKeys", *request, [&](AdminCall&) -> grpc::Status {
    if (keys_ == nullptr) return {grpc::StatusCode::UNAVAILABLE, "key store not configured"};
    auto keys = keys_->List(request->include_revoked());
    if (!keys.ok()) return ToGrpcStatus(keys.status());
    for (auto& key : *keys) *response->add_keys() = std::move(key);
    return grpc::Status::OK;
  });
}

grpc::Status AdminServiceImpl::RevokeKey(grpc::ServerContext* context,
                                         const inferbox::v1::RevokeKeyRequest* request,
                                         inferbox::v1::RevokeKeyResponse* /*response*/) {
  return Serve(*context, "RevokeKey", *request, [&](AdminCall& call) -> grpc::Status {
    if (keys_ == nullptr) return {grpc::StatusCode::UNAVAILABLE, "key store not configured"};
    if (Status revoked = keys_->Revoke(request->id()); !revoked.ok()) {
      return ToGrpcStatus(revoked);
    }
    spdlog::info("API key {} revoked by {}", request->id(), CallerName(call.caller));
    return grpc::Status::OK;
  });
}

grpc::Status AdminServiceImpl::UpdateKey(grpc::ServerContext* context,
                                         const inferbox::v1::UpdateKeyRequest* request,
                                         inferbox::v1::UpdateKeyResponse* response) {
  return Serve(*context, "UpdateKey", *request, [&](AdminCall& call) -> grpc::Status {
    if (keys_ == nullptr) return {grpc::StatusCode::UNAVAILABLE, "key store not configured"};
    auto updated = keys_->Update(*request);
    if (!updated.ok()) return ToGrpcStatus(updated.status());
    spdlog::info("API key {} (\"{}\", role {}) updated by {}", updated->id(), updated->name(),
                 RoleName(updated->role()), CallerName(call.caller));
    *response->mutable_key() = std::move(updated).value();
    return grpc::Status::OK;
  });
}

grpc::Status AdminServiceImpl::GetUsage(grpc::ServerContext* context,
                                        const inferbox::v1::GetUsageRequest* request,
                                        inferbox::v1::GetUsageResponse* response) {
  return Serve(*context, "GetUsage", *request, [&](AdminCall&) -> grpc::Status {
    if (usage_ == nullptr) return {grpc::StatusCode::UNAVAILABLE, "usage ledger not configured"};
    // Requests that just ended are counted too: their rows may still be queued.
    if (Status flushed = usage_->Flush(kUsageFlushTimeout); !flushed.ok())
      return ToGrpcStatus(flushed);
    auto usage = usage_->Aggregate(*request);
    if (!usage.ok()) return ToGrpcStatus(usage.status());
    *response = std::move(usage).value();
    if (keys_ == nullptr) return grpc::Status::OK;
    auto keys = keys_->List(/*include_revoked=*/true);
    if (!keys.ok()) return ToGrpcStatus(keys.status());
    std::map<std::string, std::string, std::less<>> names;
    for (const auto& key : *keys) names.emplace(key.id(), key.name());
    for (auto& row : *response->mutable_rows()) {
      if (auto found = names.find(row.key_id()); found != names.end())
        row.set_key_name(found->second);
    }
    return grpc::Status::OK;
  });
}

grpc::Status AdminServiceImpl::ListAuditEvents(grpc::ServerContext* context,
                                               const inferbox::v1::ListAuditEventsRequest* request,
                                               inferbox::v1::ListAuditEventsResponse* response) {
  return Serve(*context, "ListAuditEvents", *request, [&](AdminCall&) -> grpc::Status {
    if (audit_ == nullptr) return {grpc::StatusCode::UNAVAILABLE, "audit log not configured"};
    if (request->limit() > kMaxAuditEvents) {
      return {grpc::StatusCode::INVALID_ARGUMENT,
              fmt::format("limit: at most {} events at a time", kMaxAuditEvents)};
    }
    std::optional<std::chrono::system_clock::time_point> since;
    if (request->has_since()) {
      since = std::chrono::system_clock::time_point(std::chrono::milliseconds(
          google::protobuf::util::TimeUtil::TimestampToMilliseconds(request->since())));
    }
    auto events =
        audit_->List(request->limit() == 0 ? kDefaultAuditEvents : request->limit(), since);
    if (!events.ok()) return ToGrpcStatus(events.status());
    for (auto& event : *events) *response->add_events() = std::move(event);
    return grpc::Status::OK;
  });
}

}  // namespace inferbox::admin
