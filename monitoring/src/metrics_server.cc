#include "inferbox/monitoring/metrics_server.h"

#include <exception>

#include <prometheus/exposer.h>

namespace inferbox::monitoring {

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& host_port) {
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    // Two threads: a scrape is cheap, and a second one keeps a slow client from blocking it.
    exposer = std::make_unique<prometheus::Exposer>(host_port, 2);
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

MetricsServer::~MetricsServer() = default;

void MetricsServer::Register(const std::shared_ptr<prometheus::Collectable>& collectable) {
  exposer_->RegisterCollectable(collectable);
}

}  // namespace inferbox::monitoring
