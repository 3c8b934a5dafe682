// Per-key series of ServingMetrics: absent unless switched on, counted by key id and model
// when on, and bounded: past kMaxKeySeries keys, requests count under key="other".
#include "inferbox/monitoring/serving_metrics.h"

#include <map>
#include <string>

#include <gtest/gtest.h>

namespace inferbox::monitoring {
namespace {

// "family{key=...,model=...}" to value, for the inferbox_key_* families of `registry`.
std::map<std::string, double> KeySeries(prometheus::Registry& registry) {
  std::map<std::string, double> series;
  for (const auto& family : registry.Collect()) {
    if (!family.name.starts_with("inferbox_key_")) continue;
    series[family.name];  // The family exists, even without samples.
    for (const auto& metric : family.metric) {
      std::string name = family.name + "{";
      for (const auto& label : metric.label) name += label.name + "=" + label.value + ",";
      series[name + "}"] = metric.counter.value;
    }
  }
  return series;
}

RequestRecord Finished(const std::string& key, int64_t prompt, int64_t generated) {
  RequestRecord record;
  record.model = "tiny";
  record.key = key;
  record.finish_reason = "stop";
  record.prompt_tokens = prompt;
  record.generation_tokens = generated;
  return record;
}

TEST(ServingMetricsPerKey, OffByDefault) {
  prometheus::Registry registry;
  ServingMetrics metrics(registry);
  metrics.Record(Finished("ibk_team", 3, 4));
  EXPECT_TRUE(KeySeries(registry).empty()) << "no per-key family unless switched on";
}

TEST(ServingMetricsPerKey, CountsRequestsAndTokensByKeyAndModel) {
  prometheus::Registry registry;
  ServingMetrics metrics(registry, /*per_key_series=*/true);
  metrics.Record(Finished("ibk_team", 3, 4));
  metrics.Record(Finished("ibk_team", 5, 6));
  RequestRecord cancelled = Finished("ibk_team", 7, 1);
  cancelled.finish_reason.clear();
  cancelled.failure = "cancelled";
  metrics.Record(cancelled);
  metrics.Record(Finished("", 2, 2));
  auto series = KeySeries(registry);
  EXPECT_EQ(series["inferbox_key_requests_total{key=ibk_team,model=tiny,}"], 3);
  EXPECT_EQ(series["inferbox_key_prompt_tokens_total{key=ibk_team,model=tiny,}"], 15);
  EXPECT_EQ(series["inferbox_key_generation_tokens_total{key=ibk_team,model=tiny,}"], 11);
  EXPECT_EQ(series["inferbox_key_requests_total{key=anonymous,model=tiny,}"], 1)
      << "a keyless caller counts as anonymous";
}

TEST(ServingMetricsPerKey, KeysPastTheLimitCountAsOther) {
  prometheus::Registry registry;
  ServingMetrics metrics(registry, /*per_key_series=*/true);
  for (size_t i = 0; i < ServingMetrics::kMaxKeySeries; ++i)
    metrics.Record(Finished("ibk_" + std::to_string(i), 1, 1));
  metrics.Record(Finished("ibk_late", 1, 1));
  metrics.Record(Finished("ibk_later", 1, 1));
  metrics.Record(Finished("ibk_0", 1, 1));
  auto series = KeySeries(registry);
  EXPECT_EQ(series["inferbox_key_requests_total{key=other,model=tiny,}"], 2);
  EXPECT_EQ(series["inferbox_key_requests_total{key=ibk_0,model=tiny,}"], 2)
      << "a key that has series keeps them";
  EXPECT_FALSE(series.contains("inferbox_key_requests_total{key=ibk_late,model=tiny,}"));
}

}  // namespace
}  // namespace inferbox::monitoring
