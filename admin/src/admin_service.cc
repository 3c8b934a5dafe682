#include "inferbox/admin/admin_service.h"

namespace inferbox::admin {

grpc::Status AdminServiceImpl::GetStatus(grpc::ServerContext* /*context*/,
                                         const inferbox::v1::GetStatusRequest* /*request*/,
                                         inferbox::v1::GetStatusResponse* response) {
  *response = board_.Snapshot();
  return grpc::Status::OK;
}

}  // namespace inferbox::admin
