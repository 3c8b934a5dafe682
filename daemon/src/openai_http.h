// One connection of the OpenAI gateway: reads HTTP/1.1 requests, routes, authenticates,
// and answers, streaming completions as SSE (through an SsePump: openai_sse.h). Runs on the
// connection's own thread.
#pragma once

#include <atomic>

#include "inferbox/daemon/frontend.h"
#include "inferbox/daemon/openai_gateway.h"
#include "openai_json.h"
#include "openai_socket.h"

namespace inferbox::daemon::openai {

// What every connection thread shares; owned by the gateway, which outlives its threads.
struct GatewayContext {
  const OpenAiGateway::Options& options;
  InferenceFrontend& frontend;
  const Authenticator& authenticator;
  const std::atomic<bool>& serving;
  // Raised when Stop begins: connections waiting for a request close, others close after
  // their response.
  const Signal& drain;
  // Raised at the drain deadline: streams are cancelled and every wait gives up.
  const Signal& abort;
};

// Serves requests on `socket` until the client closes it, it idles past the timeout, or the
// gateway stops.
void ServeConnection(UniqueFd socket, const GatewayContext& context);

// Answers `error` on a fresh connection nobody serves (over the connection limit), without
// blocking, and closes it.
void RejectConnection(UniqueFd socket, const ApiError& error);

}  // namespace inferbox::daemon::openai
