// The inferbox.v1.Admin gRPC service. RPCs not overridden here answer UNIMPLEMENTED (the
// generated base class does that) until the issue that owns them lands.
//
// Who may call: a caller with role ADMIN only, every RPC (R2.4, R6.10: UNAUTHENTICATED
// without a valid key, PERMISSION_DENIED with a valid key of another role); on a keyless
// box anonymous callers are admins. Every call is recorded in the audit log, refusals
// included. Both happen in Serve, which every RPC goes through: a new RPC must too
// (tests/unit/admin/admin_audit_test.cc calls every method of the service to check).
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include <google/protobuf/message.h>

#include "inferbox/admin/audit_log.h"
#include "inferbox/admin/model_admin.h"
#include "inferbox/admin/status_board.h"
#include "inferbox/v1/admin.grpc.pb.h"

namespace inferbox::daemon {
class Authenticator;
class KeyStore;
class UsageLedger;
struct Caller;
}  // namespace inferbox::daemon

namespace inferbox::admin {

class AdminServiceImpl final : public inferbox::v1::Admin::Service {
 public:
  // Everything passed must outlive the service. `keys`: the key store behind CreateKey,
  // ListKeys, UpdateKey and RevokeKey; nullptr: they answer UNAVAILABLE. `authenticator`: who is
  // calling; nullptr: `keys` authenticates, and with no key store either every caller is an
  // anonymous admin (a keyless box, as before keys existed). `usage`: the ledger behind
  // GetUsage, `audit`: where calls are recorded and what ListAuditEvents reads; nullptr:
  // those RPCs answer UNAVAILABLE (and nothing is recorded).
  // `models`: the model store and served set behind the model RPCs; nullptr: they answer
  // UNAVAILABLE.
  explicit AdminServiceImpl(const StatusBoard& board, daemon::KeyStore* keys = nullptr,
                            const daemon::Authenticator* authenticator = nullptr,
                            daemon::UsageLedger* usage = nullptr, AuditLog* audit = nullptr,
                            ModelAdmin* models = nullptr);

  grpc::Status GetStatus(grpc::ServerContext* context,
                         const inferbox::v1::GetStatusRequest* request,
                         inferbox::v1::GetStatusResponse* response) override;

  grpc::Status CreateKey(grpc::ServerContext* context,
                         const inferbox::v1::CreateKeyRequest* request,
                         inferbox::v1::CreateKeyResponse* response) override;
  grpc::Status ListKeys(grpc::ServerContext* context, const inferbox::v1::ListKeysRequest* request,
                        inferbox::v1::ListKeysResponse* response) override;
  grpc::Status RevokeKey(grpc::ServerContext* context,
                         const inferbox::v1::RevokeKeyRequest* request,
                         inferbox::v1::RevokeKeyResponse* response) override;
  grpc::Status UpdateKey(grpc::ServerContext* context,
                         const inferbox::v1::UpdateKeyRequest* request,
                         inferbox::v1::UpdateKeyResponse* response) override;

  grpc::Status GetUsage(grpc::ServerContext* context, const inferbox::v1::GetUsageRequest* request,
                        inferbox::v1::GetUsageResponse* response) override;
  grpc::Status ListAuditEvents(grpc::ServerContext* context,
                               const inferbox::v1::ListAuditEventsRequest* request,
                               inferbox::v1::ListAuditEventsResponse* response) override;

  // Model RPCs (admin_model_rpcs.cc).
  grpc::Status ListInstalledModels(grpc::ServerContext* context,
                                   const inferbox::v1::ListInstalledModelsRequest* request,
                                   inferbox::v1::ListInstalledModelsResponse* response) override;
  grpc::Status InstallModel(
      grpc::ServerContext* context, const inferbox::v1::InstallModelRequest* request,
      grpc::ServerWriter<inferbox::v1::InstallModelProgress>* writer) override;
  grpc::Status RemoveModel(grpc::ServerContext* context,
                           const inferbox::v1::RemoveModelRequest* request,
                           inferbox::v1::RemoveModelResponse* response) override;
  grpc::Status LoadModel(grpc::ServerContext* context,
                         const inferbox::v1::LoadModelRequest* request,
                         inferbox::v1::LoadModelResponse* response) override;
  grpc::Status UnloadModel(grpc::ServerContext* context,
                           const inferbox::v1::UnloadModelRequest* request,
                           inferbox::v1::UnloadModelResponse* response) override;
  grpc::Status SetDefaultModel(grpc::ServerContext* context,
                               const inferbox::v1::SetDefaultModelRequest* request,
                               inferbox::v1::SetDefaultModelResponse* response) override;
  grpc::Status PlanModel(grpc::ServerContext* context,
                         const inferbox::v1::PlanModelRequest* request,
                         inferbox::v1::PlanModelResponse* response) override;

 private:
  // One call being served, as its handler sees it (who calls; what to add to its audit
  // event). Defined in the .cc.
  struct AdminCall;

  // Serves one RPC: authorizes the caller (role ADMIN), runs `handler`, and records the
  // call in the audit log whatever the outcome. Every RPC goes through here.
  grpc::Status Serve(grpc::ServerContext& context, std::string_view rpc,
                     const google::protobuf::Message& request,
                     const std::function<grpc::Status(AdminCall&)>& handler);
  // OK with the caller, or the refusal to return (logged, naming `rpc`); a caller with a
  // valid key of another role is filled in too.
  grpc::Status AuthorizeAdmin(const grpc::ServerContext& context, std::string_view rpc,
                              daemon::Caller* caller) const;

  const StatusBoard& board_;
  daemon::KeyStore* const keys_;
  const daemon::Authenticator* const authenticator_;
  daemon::UsageLedger* const usage_;
  AuditLog* const audit_;
  ModelAdmin* const models_;
};

}  // namespace inferbox::admin
