// The box's economics: the arithmetic of cost per hour and per million tokens, and the
// sliding-window throughput.
#include "inferbox/monitoring/economics.h"

#include <gtest/gtest.h>

namespace inferbox::monitoring {
namespace {

using namespace std::chrono_literals;

TEST(Economics, CostPerMillionTokensIsAmortisationPlusPowerOverThroughput) {
  EconomicsConfig config;
  config.currency = "EUR";
  config.hardware_price = 262800;  // Over 36 months of 730 h: 10 per hour.
  config.amortization_months = 36;
  config.power_price_per_kwh = 0.25;  // 2 kW: 0.5 per hour.
  config.power_watts = 2000;
  const Economics economics = ComputeEconomics(config, 1000.0, 2500.0, 8, 1234.0);
  ASSERT_TRUE(economics.cost_per_hour.has_value());
  EXPECT_DOUBLE_EQ(*economics.cost_per_hour, 10.5);
  EXPECT_DOUBLE_EQ(economics.power_watts, 2000) << "configured power wins over measured";
  // 1000 tokens/s = 3.6 M tokens/hour.
  EXPECT_NEAR(*economics.cost_per_million_output_tokens, 10.5 / 3.6, 1e-12);
  EXPECT_NEAR(*economics.cost_per_million_output_tokens_at_peak, 10.5 / 9.0, 1e-12);
  EXPECT_DOUBLE_EQ(economics.output_tokens_per_second_per_gpu, 125.0);
}

TEST(Economics, WithoutAPriceOrTrafficThereIsNoCost) {
  EconomicsConfig config;
  const Economics free_box = ComputeEconomics(config, 100.0, 100.0, 0, 0.0);
  EXPECT_FALSE(free_box.cost_per_hour.has_value());
  EXPECT_DOUBLE_EQ(free_box.output_tokens_per_second_per_gpu, 100.0) << "a CPU box: per box";
  config.hardware_price = 1000;
  config.power_price_per_kwh = 0.2;
  const Economics idle = ComputeEconomics(config, 0.0, 0.0, 2, 700.0);
  ASSERT_TRUE(idle.cost_per_hour.has_value());
  EXPECT_DOUBLE_EQ(idle.power_watts, 700.0) << "measured GPU power when none is configured";
  EXPECT_FALSE(idle.cost_per_million_output_tokens.has_value()) << "no tokens, no price per token";
}

TEST(ThroughputTracker, TheFirstQuestionCountsFromTheStart) {
  const auto start = std::chrono::steady_clock::now();
  ThroughputTracker tracker(300s, start);
  EXPECT_DOUBLE_EQ(tracker.Sample(600, start + 20s).first, 30.0);
}

TEST(ThroughputTracker, RateOverTheWindowAndTheBestWindow) {
  const auto start = std::chrono::steady_clock::now();
  ThroughputTracker tracker(60s, start);
  EXPECT_EQ(tracker.Sample(0, start).first, 0.0);
  EXPECT_EQ(tracker.Sample(10, start + 2s).first, 0.0) << "under 5 s is too short to say";
  EXPECT_DOUBLE_EQ(tracker.Sample(600, start + 30s).first, 20.0);
  EXPECT_DOUBLE_EQ(tracker.Sample(3000, start + 60s).first, 50.0);
  // The window slides: the early slow part leaves it.
  const auto [rate, peak] = tracker.Sample(3000, start + 150s);
  EXPECT_DOUBLE_EQ(rate, 0.0) << "nothing generated in the last 90 s";
  EXPECT_DOUBLE_EQ(peak, 50.0);
}

}  // namespace
}  // namespace inferbox::monitoring
