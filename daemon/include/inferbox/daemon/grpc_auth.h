// Authentication of gRPC calls: the bearer token travels in the "authorization" metadata
// ("authorization: Bearer <key>"), which this reads and hands to an Authenticator. The
// value is never logged.
#pragma once

#include <grpcpp/server_context.h>

#include "inferbox/common/status.h"
#include "inferbox/daemon/frontend.h"

namespace inferbox::daemon {

// The caller of the RPC `context` belongs to (its `api` is "grpc"). UNAUTHENTICATED when the call
// carries more than one authorization entry, or when `authenticator` refuses the one it carries (or
// its absence).
Result<Caller> AuthenticateGrpc(const grpc::ServerContextBase& context,
                                const Authenticator& authenticator);

}  // namespace inferbox::daemon
