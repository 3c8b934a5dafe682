#include "inferbox/daemon/engine_metrics.h"

#include <google/protobuf/util/time_util.h>

#include "inferbox/monitoring/metric_family.h"

namespace inferbox::daemon {
namespace {

namespace api = ::inferbox::v1;
using monitoring::AddSample;
using monitoring::MakeFamily;

}  // namespace

std::vector<prometheus::MetricFamily> EngineMetricsCollector::Collect() const {
  using prometheus::MetricType;
  auto up = MakeFamily("inferbox_engine_up",
                       "1 while the engine is ready to generate, else 0 (starting, restarting, "
                       "failed, draining).",
                       MetricType::Gauge);
  auto restarts = MakeFamily("inferbox_engine_restarts_total",
                             "Times the supervisor restarted the engine since the daemon started.",
                             MetricType::Counter);
  auto running = MakeFamily("inferbox_num_requests_running",
                            "Requests in the engine's running batch.", MetricType::Gauge);
  auto waiting = MakeFamily("inferbox_num_requests_waiting", "Requests waiting to be scheduled.",
                            MetricType::Gauge);
  auto kv_usage =
      MakeFamily("inferbox_kv_cache_usage_ratio",
                 "Share of the engine's KV cache blocks in use, 0 to 1.", MetricType::Gauge);
  auto prefix_queries = MakeFamily("inferbox_prefix_cache_queries_total",
                                   "Prompt tokens looked up in the prefix cache (since the engine "
                                   "started).",
                                   MetricType::Counter);
  auto prefix_hits = MakeFamily(
      "inferbox_prefix_cache_hits_total",
      "Prompt tokens found in the prefix cache (since the engine started).", MetricType::Counter);
  auto preemptions = MakeFamily("inferbox_num_preemptions_total",
                                "Sequences preempted for lack of KV blocks (since the engine "
                                "started).",
                                MetricType::Counter);
  auto canaries = MakeFamily("inferbox_engine_canaries_total",
                             "Canary generations (one token, at startup and every "
                             "canary_interval_seconds) by result, passed or failed.",
                             MetricType::Counter);
  auto last_canary =
      MakeFamily("inferbox_engine_last_canary_timestamp_seconds",
                 "When a canary generation last passed, Unix time (absent before the first).",
                 MetricType::Gauge);
  auto gpu_fault =
      MakeFamily("inferbox_engine_gpu_fault",
                 "1 while the engine is stopped because a GPU it uses is unhealthy, else 0.",
                 MetricType::Gauge);
  for (const auto& model : supervisor_.models()) {
    for (const auto& replica : supervisor_.Replicas(model.name)) {
      const std::vector<prometheus::ClientMetric::Label> labels = {
          {"model", model.name}, {"replica", std::to_string(replica->replica())}};
      const api::EngineInfo info = replica->Info();
      AddSample(up, labels, info.state() == api::ENGINE_STATE_READY ? 1 : 0);
      AddSample(restarts, labels, info.restarts());
      AddSample(gpu_fault, labels, info.gpu_fault().empty() ? 0 : 1);
      const auto [passed, failed] = replica->canaries();
      auto with_result = labels;
      with_result.push_back({"result", "passed"});
      AddSample(canaries, with_result, passed);
      with_result.back().value = "failed";
      AddSample(canaries, with_result, failed);
      if (info.has_last_canary_at()) {
        AddSample(last_canary, labels,
                  static_cast<double>(google::protobuf::util::TimeUtil::TimestampToMilliseconds(
                      info.last_canary_at())) /
                      1000.0);
      }
      const auto stats = replica->stats();
      if (!stats) continue;
      AddSample(running, labels, stats->num_requests_running());
      AddSample(waiting, labels, stats->num_requests_waiting());
      AddSample(
          kv_usage, labels,
          stats->num_kv_blocks_total() == 0
              ? 0.0
              : static_cast<double>(stats->num_kv_blocks_used()) / stats->num_kv_blocks_total());
      AddSample(prefix_queries, labels,
                static_cast<double>(stats->prefix_cache_queried_tokens_total()));
      AddSample(prefix_hits, labels, static_cast<double>(stats->prefix_cache_hit_tokens_total()));
      AddSample(preemptions, labels, static_cast<double>(stats->num_preemptions_total()));
    }
  }
  return {up,          restarts,    running,  waiting,     kv_usage, prefix_queries,
          prefix_hits, preemptions, canaries, last_canary, gpu_fault};
}

monitoring::Economics EconomicsCollector::Compute() const {
  const auto [rate, peak] = tracker_.Sample(serving_.generation_tokens());
  const auto [gpus, watts] = gpus_.CountAndPower();
  return monitoring::ComputeEconomics(config_, rate, peak, gpus, watts);
}

api::Economics EconomicsCollector::Snapshot() const {
  const monitoring::Economics economics = Compute();
  api::Economics out;
  out.set_output_tokens_per_second(economics.output_tokens_per_second);
  out.set_peak_output_tokens_per_second(economics.peak_output_tokens_per_second);
  out.set_gpus(static_cast<uint32_t>(economics.gpus));
  out.set_output_tokens_per_second_per_gpu(economics.output_tokens_per_second_per_gpu);
  out.set_power_watts(economics.power_watts);
  if (economics.cost_per_hour) {
    out.set_currency(config_.currency);
    out.set_cost_per_hour(*economics.cost_per_hour);
  }
  if (economics.cost_per_million_output_tokens)
    out.set_cost_per_million_output_tokens(*economics.cost_per_million_output_tokens);
  if (economics.cost_per_million_output_tokens_at_peak)
    out.set_cost_per_million_output_tokens_at_peak(
        *economics.cost_per_million_output_tokens_at_peak);
  return out;
}

std::vector<prometheus::MetricFamily> EconomicsCollector::Collect() const {
  using prometheus::MetricType;
  const monitoring::Economics economics = Compute();
  auto rate =
      MakeFamily("inferbox_output_tokens_per_second",
                 "Output tokens delivered per second over the last 5 minutes, the whole box.",
                 MetricType::Gauge);
  auto peak =
      MakeFamily("inferbox_peak_output_tokens_per_second",
                 "The best 5-minute output rate since the daemon started.", MetricType::Gauge);
  auto per_gpu =
      MakeFamily("inferbox_output_tokens_per_second_per_gpu",
                 "The 5-minute output rate per GPU (per box without GPUs).", MetricType::Gauge);
  AddSample(rate, {}, economics.output_tokens_per_second);
  AddSample(peak, {}, economics.peak_output_tokens_per_second);
  AddSample(per_gpu, {}, economics.output_tokens_per_second_per_gpu);
  std::vector<prometheus::MetricFamily> families = {rate, peak, per_gpu};
  if (economics.cost_per_hour) {
    auto hour = MakeFamily("inferbox_cost_per_hour",
                           "What an hour of the box costs: amortised hardware plus power, in the "
                           "configured currency.",
                           MetricType::Gauge);
    AddSample(hour, {{"currency", config_.currency}}, *economics.cost_per_hour);
    auto million =
        MakeFamily("inferbox_cost_per_million_output_tokens",
                   "Cost of a million output tokens at the observed load and at the peak "
                   "load seen (absent while no tokens flow).",
                   MetricType::Gauge);
    if (economics.cost_per_million_output_tokens) {
      AddSample(million, {{"currency", config_.currency}, {"load", "observed"}},
                *economics.cost_per_million_output_tokens);
    }
    if (economics.cost_per_million_output_tokens_at_peak) {
      AddSample(million, {{"currency", config_.currency}, {"load", "peak"}},
                *economics.cost_per_million_output_tokens_at_peak);
    }
    families.push_back(hour);
    if (!million.metric.empty()) families.push_back(million);
  }
  return families;
}

}  // namespace inferbox::daemon
