#include "inferbox/monitoring/metrics_server.h"

#include <CivetServer.h>
#include <civetweb.h>

#include <exception>
#include <map>
#include <mutex>
#include <string_view>

#include <fmt/format.h>
#include <prometheus/exposer.h>

namespace inferbox::monitoring {
namespace {

// Probes by listening port. prometheus-cpp gives its civetweb server no user data of ours,
// so the request callback finds the probes of the listener a request came in on here.
struct ProbeTable {
  std::mutex mutex;
  std::map<int, std::map<std::string, std::function<ProbeResponse()>, std::less<>>> by_port;
};

ProbeTable& Probes() {
  static ProbeTable* table =
      new ProbeTable();  // Never destroyed: server threads may outlive statics.
  return *table;
}

std::string_view ReasonPhrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 404: return "Not Found";
    case 503: return "Service Unavailable";
    default: return "Status";
  }
}

// civetweb's begin_request: nonzero when the request was answered here, 0 to let the
// exposer serve it (/metrics).
int AnswerProbe(mg_connection* connection) {
  const mg_request_info* request = mg_get_request_info(connection);
  if (request == nullptr || request->local_uri == nullptr) return 0;
  std::function<ProbeResponse()> probe;
  {
    ProbeTable& table = Probes();
    std::lock_guard lock(table.mutex);
    const auto port = table.by_port.find(request->server_port);
    if (port == table.by_port.end()) return 0;
    const auto found = port->second.find(std::string_view(request->local_uri));
    if (found == port->second.end()) return 0;
    probe = found->second;
  }
  const std::string_view method = request->request_method == nullptr ? "" : request->request_method;
  ProbeResponse response;
  if (method == "GET" || method == "HEAD") {
    response = probe();
  } else {
    response = {405, "text/plain", "method not allowed\n"};
  }
  const std::string head = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n"
      "Connection: close\r\n\r\n",
      response.status, ReasonPhrase(response.status), response.content_type, response.body.size());
  mg_write(connection, head.data(), head.size());
  if (method != "HEAD") mg_write(connection, response.body.data(), response.body.size());
  return response.status;  // civetweb logs it as the status code; nonzero = handled.
}

}  // namespace

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& host_port) {
  static const CivetCallbacks callbacks = [] {
    CivetCallbacks value;
    value.begin_request = AnswerProbe;
    return value;
  }();
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    // Two threads: a scrape is cheap, and a second one keeps a slow client from blocking it.
    exposer = std::make_unique<prometheus::Exposer>(host_port, 2, &callbacks);
  } catch (const std::exception& error) {
    return UnavailableError("cannot listen for metrics on " + host_port +
                            " (address in use, or not an address of this host): " + error.what());
  }
  const auto ports = exposer->GetListeningPorts();
  if (ports.empty() || ports.front() <= 0) {
    return InternalError("metrics listener on " + host_port + " reports no bound port");
  }
  const auto port = static_cast<uint16_t>(ports.front());
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(exposer), port));
}

MetricsServer::MetricsServer(std::unique_ptr<prometheus::Exposer> exposer, uint16_t port)
    : exposer_(std::move(exposer)), port_(port) {}

MetricsServer::~MetricsServer() {
  exposer_.reset();  // Stops the server threads first: no probe runs after this.
  ProbeTable& table = Probes();
  std::lock_guard lock(table.mutex);
  table.by_port.erase(port_);
}

void MetricsServer::Register(const std::shared_ptr<prometheus::Collectable>& collectable) {
  exposer_->RegisterCollectable(collectable);
}

void MetricsServer::AddProbe(const std::string& path, std::function<ProbeResponse()> probe) {
  ProbeTable& table = Probes();
  std::lock_guard lock(table.mutex);
  table.by_port[port_][path] = std::move(probe);
}

}  // namespace inferbox::monitoring
