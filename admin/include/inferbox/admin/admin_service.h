// The inferbox.v1.Admin gRPC service. RPCs not overridden here answer UNIMPLEMENTED (the
// generated base class does that) until the issue that owns them lands.
//
// Who may call: GetStatus any caller the authenticator accepts (on a keyless box, anyone);
// the key RPCs a caller with role ADMIN only (R2.4: UNAUTHENTICATED without a valid key,
// PERMISSION_DENIED with a valid key of another role).
#pragma once

#include <string>
#include <string_view>

#include "inferbox/admin/status_board.h"
#include "inferbox/v1/admin.grpc.pb.h"

namespace inferbox::daemon {
class Authenticator;
class KeyStore;
}  // namespace inferbox::daemon

namespace inferbox::admin {

class AdminServiceImpl final : public inferbox::v1::Admin::Service {
 public:
  // Everything passed must outlive the service. `keys`: the key store behind CreateKey,
  // ListKeys and RevokeKey; nullptr: they answer UNAVAILABLE. `authenticator`: who is
  // calling; nullptr: `keys` authenticates, and with no key store either every caller is an
  // anonymous admin (a keyless box, as before keys existed).
  explicit AdminServiceImpl(const StatusBoard& board, daemon::KeyStore* keys = nullptr,
                            const daemon::Authenticator* authenticator = nullptr);

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

 private:
  // OK with the caller's name for the audit log ("key <id>" or "anonymous caller"), or
  // the refusal to return (logged, naming `rpc`).
  grpc::Status AuthorizeAdmin(const grpc::ServerContext& context, std::string_view rpc,
                              std::string* caller) const;

  const StatusBoard& board_;
  daemon::KeyStore* const keys_;
  const daemon::Authenticator* const authenticator_;
};

}  // namespace inferbox::admin
