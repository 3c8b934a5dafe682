#include "inferbox/monitoring/economics.h"

#include <algorithm>

namespace inferbox::monitoring {

Economics ComputeEconomics(const EconomicsConfig& config, double tokens_per_second,
                           double peak_tokens_per_second, int gpus, double measured_power_watts) {
  Economics economics;
  economics.output_tokens_per_second = tokens_per_second;
  economics.peak_output_tokens_per_second = std::max(peak_tokens_per_second, tokens_per_second);
  economics.gpus = gpus;
  economics.output_tokens_per_second_per_gpu = tokens_per_second / std::max(gpus, 1);
  economics.power_watts = config.power_watts > 0 ? config.power_watts : measured_power_watts;
  if (config.hardware_price <= 0) return economics;
  constexpr double kHoursPerMonth = 730.0;
  const double amortization =
      config.hardware_price / (std::max(config.amortization_months, 1.0) * kHoursPerMonth);
  const double power = economics.power_watts / 1000.0 * config.power_price_per_kwh;
  economics.cost_per_hour = amortization + power;
  auto per_million = [&](double rate) -> std::optional<double> {
    if (rate <= 0) return std::nullopt;
    return *economics.cost_per_hour / (rate * 3600.0 / 1e6);
  };
  economics.cost_per_million_output_tokens = per_million(tokens_per_second);
  economics.cost_per_million_output_tokens_at_peak =
      per_million(economics.peak_output_tokens_per_second);
  return economics;
}

std::pair<double, double> ThroughputTracker::Sample(double total_tokens,
                                                    std::chrono::steady_clock::time_point now) {
  std::lock_guard lock(mutex_);
  samples_.emplace_back(now, total_tokens);
  // Keep one sample at or before the window's start, so the window is always covered.
  while (samples_.size() > 2 && now - samples_[1].first >= window_) samples_.pop_front();
  const auto& [oldest_time, oldest_tokens] = samples_.front();
  const double seconds = std::chrono::duration<double>(now - oldest_time).count();
  // A rate over less than a few seconds is noise.
  const double rate = seconds >= 5.0 ? (total_tokens - oldest_tokens) / seconds : 0.0;
  peak_ = std::max(peak_, rate);
  return {rate, peak_};
}

}  // namespace inferbox::monitoring
