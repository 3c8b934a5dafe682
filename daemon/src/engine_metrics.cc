#include "inferbox/daemon/engine_metrics.h"

#include <prometheus/metric_family.h>

namespace inferbox::daemon {
namespace {

namespace api = ::inferbox::v1;

prometheus::MetricFamily Family(const std::string& name, const std::string& help,
                                prometheus::MetricType type) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  return family;
}

void Add(prometheus::MetricFamily& family,
         const std::vector<prometheus::ClientMetric::Label>& labels, double value) {
  prometheus::ClientMetric metric;
  metric.label = labels;
  if (family.type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
}

}  // namespace

std::vector<prometheus::MetricFamily> EngineMetricsCollector::Collect() const {
  using prometheus::MetricType;
  auto up = Family("inferbox_engine_up",
                   "1 while the engine is ready to generate, else 0 (starting, restarting, "
                   "failed, draining).",
                   MetricType::Gauge);
  auto restarts = Family("inferbox_engine_restarts_total",
                         "Times the supervisor restarted the engine since the daemon started.",
                         MetricType::Counter);
  auto running = Family("inferbox_num_requests_running", "Requests in the engine's running batch.",
                        MetricType::Gauge);
  auto waiting = Family("inferbox_num_requests_waiting", "Requests waiting to be scheduled.",
                        MetricType::Gauge);
  auto kv_usage =
      Family("inferbox_kv_cache_usage_ratio",
             "Share of the engine's KV cache blocks in use, 0 to 1.", MetricType::Gauge);
  auto prefix_queries = Family("inferbox_prefix_cache_queries_total",
                               "Prompt tokens looked up in the prefix cache (since the engine "
                               "started).",
                               MetricType::Counter);
  auto prefix_hits = Family("inferbox_prefix_cache_hits_total",
                            "Prompt tokens found in the prefix cache (since the engine started).",
                            MetricType::Counter);
  auto preemptions = Family("inferbox_num_preemptions_total",
                            "Sequences preempted for lack of KV blocks (since the engine "
                            "started).",
                            MetricType::Counter);
  for (const auto& model : supervisor_.models()) {
    for (const auto& replica : supervisor_.Replicas(model.name)) {
      const std::vector<prometheus::ClientMetric::Label> labels = {
          {"model", model.name}, {"replica", std::to_string(replica->replica())}};
      const api::EngineInfo info = replica->Info();
      Add(up, labels, info.state() == api::ENGINE_STATE_READY ? 1 : 0);
      Add(restarts, labels, info.restarts());
      const auto stats = replica->stats();
      if (!stats) continue;
      Add(running, labels, stats->num_requests_running());
      Add(waiting, labels, stats->num_requests_waiting());
      Add(kv_usage, labels,
          stats->num_kv_blocks_total() == 0
              ? 0.0
              : static_cast<double>(stats->num_kv_blocks_used()) / stats->num_kv_blocks_total());
      Add(prefix_queries, labels, static_cast<double>(stats->prefix_cache_queried_tokens_total()));
      Add(prefix_hits, labels, static_cast<double>(stats->prefix_cache_hit_tokens_total()));
      Add(preemptions, labels, static_cast<double>(stats->num_preemptions_total()));
    }
  }
  return {up, restarts, running, waiting, kv_usage, prefix_queries, prefix_hits, preemptions};
}

}  // namespace inferbox::daemon
