// Per-engine gauges and counters for /metrics, from what the supervisor last learned from
// each engine (state, restarts, and its Stats: running and waiting requests, KV cache use,
// prefix cache, preemptions). Labels: model and replica. Read at scrape time; no RPC.
#pragma once

#include <prometheus/collectable.h>

#include "inferbox/daemon/supervisor.h"

namespace inferbox::daemon {

class EngineMetricsCollector final : public prometheus::Collectable {
 public:
  // `supervisor` must outlive the collector's registration.
  explicit EngineMetricsCollector(const Supervisor& supervisor) : supervisor_(supervisor) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const Supervisor& supervisor_;
};

}  // namespace inferbox::daemon
