#include "inferbox/daemon/grpc_auth.h"

#include <iterator>
#include <string_view>

namespace inferbox::daemon {

Result<Caller> AuthenticateGrpc(const grpc::ServerContextBase& context,
                                const Authenticator& authenticator) {
  // gRPC lower-cases metadata keys on the wire, so "Authorization" arrives as this too.
  const auto [first, last] = context.client_metadata().equal_range("authorization");
  if (first != last && std::next(first) != last) {
    return Status(StatusCode::kUnauthenticated,
                  "more than one authorization metadata entry; send exactly one: "
                  "authorization: Bearer <key>");
  }
  Result<Caller> caller = authenticator.Authenticate(
      first == last ? std::string_view()
                    : std::string_view(first->second.data(), first->second.size()));
  if (caller.ok()) caller->api = "grpc";
  return caller;
}

}  // namespace inferbox::daemon
