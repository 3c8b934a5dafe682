// Per-engine gauges and counters for /metrics, from what the supervisor last learned from
// each engine (state, restarts, and its Stats: running and waiting requests, KV cache use,
// prefix cache, preemptions). Labels: model and replica. Read at scrape time; no RPC.
#pragma once

#include <prometheus/collectable.h>

#include "inferbox/daemon/supervisor.h"
#include "inferbox/monitoring/economics.h"
#include "inferbox/monitoring/gpu_collector.h"
#include "inferbox/monitoring/serving_metrics.h"
#include "inferbox/v1/admin.pb.h"

namespace inferbox::daemon {

class EngineMetricsCollector final : public prometheus::Collectable {
 public:
  // `supervisor` must outlive the collector's registration.
  explicit EngineMetricsCollector(const Supervisor& supervisor) : supervisor_(supervisor) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const Supervisor& supervisor_;
};

// The box's throughput and cost per million output tokens (monitoring/economics.h), on
// /metrics and for Admin.GetStatus. Samples the throughput whenever asked.
class EconomicsCollector final : public prometheus::Collectable {
 public:
  // Both must outlive the collector's registration.
  EconomicsCollector(monitoring::EconomicsConfig config, const monitoring::ServingMetrics& serving,
                     const monitoring::GpuCollector& gpus)
      : config_(std::move(config)), serving_(serving), gpus_(gpus) {}

  inferbox::v1::Economics Snapshot() const;
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  monitoring::Economics Compute() const;

  const monitoring::EconomicsConfig config_;
  const monitoring::ServingMetrics& serving_;
  const monitoring::GpuCollector& gpus_;
  mutable monitoring::ThroughputTracker tracker_;
};

}  // namespace inferbox::daemon
