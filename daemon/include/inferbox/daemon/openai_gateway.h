// The OpenAI-compatible HTTP/1.1 API of inferboxd: POST /v1/chat/completions and
// /v1/completions (JSON or SSE streams), GET /v1/models[/{id}], and the anonymous probes
// GET /health, /health/ready and /health/live. Requests are translated to inferbox.v1
// messages and served by an InferenceFrontend, so this API behaves as the gRPC one does.
//
// Threads: one acceptor thread, and one thread per connection doing blocking reads and writes.
// A streamed completion's events are written by the stream's own thread (its Sink: a gRPC
// thread for an engine) while the socket takes them at once; the connection's thread wakes
// only to write what it did not (a slow client's full socket holds the stream, which holds
// the engine once the engine call's flow-control window is full), for keep-alive comments, the
// client leaving, the stop and the end. The frontend and the authenticator are called from
// connection threads, concurrently; both must outlive the gateway. The public methods may be called
// from any thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "inferbox/common/status.h"
#include "inferbox/daemon/frontend.h"
#include "inferbox/daemon/tls.h"

namespace inferbox::daemon {

class OpenAiGateway {
 public:
  struct Options {
    // Address to listen on: an IP address or a host name; port 0 picks a free port.
    std::string host = "127.0.0.1";
    uint16_t port = 0;
    // Connections served at once; one more is answered 503 and closed.
    int max_connections = 1024;
    // A connection that does not send a complete request within this is closed, and a
    // client that takes none of a response's bytes for this long is dropped.
    std::chrono::seconds idle_timeout{60};
    // Larger request bodies are answered 413.
    size_t max_body_bytes = size_t{16} << 20;
    // A stream that has sent nothing for this long sends an SSE comment (": ping"), so that
    // proxies and clients do not time out while a request waits in the queue.
    std::chrono::milliseconds sse_keepalive_interval{10'000};
    // Set: connections speak TLS on it (a plain HTTP request is answered 400 in the clear,
    // naming https). A connection over max_connections is then closed without an answer.
    std::shared_ptr<const TlsServerContext> tls;
    // Fault injection for the daemon's watchdog tests (INFERBOX_TEST_FAULT_STALL=http): this
    // long after the start the acceptor stops turning (it neither accepts nor joins) until
    // Stop. Negative: never.
    std::chrono::milliseconds fault_stall_acceptor_after{-1};
  };

  // Binds the listener and starts serving. UNAVAILABLE when the address cannot be bound.
  static Result<std::unique_ptr<OpenAiGateway>> Start(Options options, InferenceFrontend& frontend,
                                                      const Authenticator& authenticator);
  OpenAiGateway(const OpenAiGateway&) = delete;
  OpenAiGateway& operator=(const OpenAiGateway&) = delete;
  // Stops as Stop(0) does.
  ~OpenAiGateway();

  // The bound port (the one picked when Options.port was 0).
  uint16_t port() const;

  // How long since the acceptor's loop last turned: it turns at least once a second while it
  // runs (a poll of at most 1 s), so much longer means it is stuck, and with it every new
  // connection (the daemon's systemd watchdog stops on it).
  std::chrono::steady_clock::duration AcceptorIdle() const;

  // While false, new /v1 requests are answered 503 service_unavailable_error with
  // Retry-After, and /health and /health/ready 503 {"status":"draining"} (used while
  // draining). True at start.
  void SetServing(bool serving);

  // Stops accepting connections and closes idle ones; requests in flight (streams included)
  // may finish until `drain` has passed, then they are cancelled and their connections
  // closed. Returns when every connection thread has ended. Idempotent.
  void Stop(std::chrono::milliseconds drain);

 private:
  class Impl;
  explicit OpenAiGateway(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace inferbox::daemon
