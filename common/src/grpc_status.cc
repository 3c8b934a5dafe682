#include "inferbox/common/grpc_status.h"

#include <string>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace inferbox {

namespace {

Status FromGrpcCode(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::OK: return Status::Ok();
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE: return InvalidArgumentError(status.error_message());
    case grpc::StatusCode::NOT_FOUND: return NotFoundError(status.error_message());
    case grpc::StatusCode::ALREADY_EXISTS:
      return Status(StatusCode::kAlreadyExists, status.error_message());
    case grpc::StatusCode::FAILED_PRECONDITION:
      return FailedPreconditionError(status.error_message());
    case grpc::StatusCode::PERMISSION_DENIED:
      return Status(StatusCode::kPermissionDenied, status.error_message());
    case grpc::StatusCode::UNAUTHENTICATED:
      return Status(StatusCode::kUnauthenticated, status.error_message());
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return Status(StatusCode::kResourceExhausted, status.error_message());
    case grpc::StatusCode::UNAVAILABLE: return UnavailableError(status.error_message());
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return Status(StatusCode::kDeadlineExceeded, status.error_message());
    case grpc::StatusCode::CANCELLED: return Status(StatusCode::kCancelled, status.error_message());
    default: return InternalError(status.error_message());
  }
}

// The reason of the status details' ErrorInfo of our domain, if any.
std::string ReasonOf(const grpc::Status& status) {
  if (status.error_details().empty()) return {};
  google::rpc::Status details;
  if (!details.ParseFromString(status.error_details())) return {};
  for (const auto& detail : details.details()) {
    google::rpc::ErrorInfo info;
    if (detail.UnpackTo(&info) && info.domain() == kErrorDomain) return info.reason();
  }
  return {};
}

// A gRPC status message travels as the grpc-message header, percent-encoded (up to three bytes
// per byte), and a peer refuses headers past its limit (8 KiB by default): an error that
// quotes a client's 100 KB field would reach the client as "received initial metadata size
// exceeds limit" instead of itself. Longer messages are cut, on a UTF-8 character boundary.
constexpr size_t kMaxMessageBytes = 1024;

std::string BoundedMessage(const std::string& message) {
  if (message.size() <= kMaxMessageBytes) return message;
  size_t cut = kMaxMessageBytes;
  while (cut > 0 && (static_cast<unsigned char>(message[cut]) & 0xC0) == 0x80) --cut;
  return message.substr(0, cut) + "... (" + std::to_string(message.size() - cut) +
         " more bytes cut)";
}

}  // namespace

grpc::Status ToGrpcStatus(const Status& status) {
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  switch (status.code()) {
    case StatusCode::kOk: return grpc::Status::OK;
    case StatusCode::kInvalidArgument: code = grpc::StatusCode::INVALID_ARGUMENT; break;
    case StatusCode::kNotFound: code = grpc::StatusCode::NOT_FOUND; break;
    case StatusCode::kAlreadyExists: code = grpc::StatusCode::ALREADY_EXISTS; break;
    case StatusCode::kFailedPrecondition: code = grpc::StatusCode::FAILED_PRECONDITION; break;
    case StatusCode::kPermissionDenied: code = grpc::StatusCode::PERMISSION_DENIED; break;
    case StatusCode::kUnauthenticated: code = grpc::StatusCode::UNAUTHENTICATED; break;
    case StatusCode::kResourceExhausted: code = grpc::StatusCode::RESOURCE_EXHAUSTED; break;
    case StatusCode::kUnavailable: code = grpc::StatusCode::UNAVAILABLE; break;
    case StatusCode::kDeadlineExceeded: code = grpc::StatusCode::DEADLINE_EXCEEDED; break;
    case StatusCode::kCancelled: code = grpc::StatusCode::CANCELLED; break;
    case StatusCode::kInternal: code = grpc::StatusCode::INTERNAL; break;
  }
  std::string message = BoundedMessage(status.message());
  if (status.reason().empty()) return {code, std::move(message)};
  google::rpc::ErrorInfo info;
  info.set_reason(status.reason());
  info.set_domain(std::string(kErrorDomain));
  google::rpc::Status details;
  details.set_code(static_cast<int>(code));
  details.set_message(message);
  details.add_details()->PackFrom(info);
  return {code, std::move(message), details.SerializeAsString()};
}

Status FromGrpcStatus(const grpc::Status& status) {
  return FromGrpcCode(status).WithReason(ReasonOf(status));
}

}  // namespace inferbox
