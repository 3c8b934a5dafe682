// Our Status to and from gRPC's, keeping the message: one table for every gRPC server and
// client of the box (daemon, engine, admin). A separate library (inferbox_grpc_status), so
// that inferbox_common stays free of gRPC.
#pragma once

#include <grpcpp/support/status.h>

#include "inferbox/common/status.h"

namespace inferbox {

// A message past 1 KiB is cut (on a character boundary, saying how much was cut): it travels
// as a header, and one that quotes a huge client field would exceed the peer's header limit.
// A status with a reason carries it as a google.rpc.ErrorInfo (domain kErrorDomain) in the
// details, which FromGrpcStatus reads back.
grpc::Status ToGrpcStatus(const Status& status);
Status FromGrpcStatus(const grpc::Status& status);

}  // namespace inferbox
