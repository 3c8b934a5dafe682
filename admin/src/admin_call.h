// AdminServiceImpl::AdminCall, shared by the files that implement the service's RPCs.
#pragma once

#include <string>

#include "inferbox/admin/admin_service.h"
#include "inferbox/daemon/grpc_auth.h"

namespace inferbox::admin {

struct AdminServiceImpl::AdminCall {
  daemon::Caller caller;
  // What the call changed that its request does not say (AuditEvent.detail).
  std::string detail;
};

}  // namespace inferbox::admin
