// The inferbox.v1.Admin gRPC service. RPCs not overridden here answer UNIMPLEMENTED (the
// generated base class does that) until the issue that owns them lands.
#pragma once

#include "inferbox/admin/status_board.h"
#include "inferbox/v1/admin.grpc.pb.h"

namespace inferbox::admin {

class AdminServiceImpl final : public inferbox::v1::Admin::Service {
 public:
  // `board` must outlive the service.
  explicit AdminServiceImpl(const StatusBoard& board) : board_(board) {}

  grpc::Status GetStatus(grpc::ServerContext* context,
                         const inferbox::v1::GetStatusRequest* request,
                         inferbox::v1::GetStatusResponse* response) override;

 private:
  const StatusBoard& board_;
};

}  // namespace inferbox::admin
