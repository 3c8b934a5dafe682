// The Prometheus endpoint: GET /metrics on its own listener, served by prometheus-cpp's
// exposer threads, plus plain probes on the same listener (the daemon's /health/live and
// /health/ready). It keeps answering while engines are down, so outages show on dashboards
// and load balancers see the box leave readiness.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <prometheus/collectable.h>

#include "inferbox/common/status.h"

namespace prometheus {
class Exposer;
}

namespace inferbox::monitoring {

struct ProbeResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

class MetricsServer {
 public:
  // Listens on `host_port` ("127.0.0.1:9400", "[::1]:9400"; port 0 picks a free port).
  static Result<std::unique_ptr<MetricsServer>> Start(const std::string& host_port);
  ~MetricsServer();

  // Adds a source of metric families to /metrics; the server holds a weak reference, so the
  // caller keeps `collectable` alive.
  void Register(const std::shared_ptr<prometheus::Collectable>& collectable);

  // Answers GET (and HEAD) of exactly `path` with `probe`, called on a server thread per
  // request; it must be thread-safe and quick. Set before the daemon reports ready; a path
  // without a probe answers 404.
  void AddProbe(const std::string& path, std::function<ProbeResponse()> probe);

  // The port actually bound.
  uint16_t port() const { return port_; }

 private:
  MetricsServer(std::unique_ptr<prometheus::Exposer> exposer, uint16_t port);

  std::unique_ptr<prometheus::Exposer> exposer_;
  uint16_t port_;
};

}  // namespace inferbox::monitoring
