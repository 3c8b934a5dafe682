// The box's economics: what an hour of the box costs (amortised hardware plus power) and
// what a million output tokens cost at the observed load and at the best load seen, from
// the operator's prices ([economics] in inferbox.toml). Exported on /metrics and in
// Admin.GetStatus. The throughput is measured by the daemon itself over a sliding window, so
// the numbers need no Prometheus.
#pragma once

#include <chrono>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

namespace inferbox::monitoring {

struct EconomicsConfig {
  std::string currency = "USD";
  // 0: no cost metrics (throughput only).
  double hardware_price = 0;
  double amortization_months = 36;
  double power_price_per_kwh = 0;
  // The box's power draw when no GPU power is measured; 0: measured GPU power only.
  double power_watts = 0;

  bool operator==(const EconomicsConfig&) const = default;
};

struct Economics {
  double output_tokens_per_second = 0;       // Over the window.
  double peak_output_tokens_per_second = 0;  // The best window since start.
  int gpus = 0;
  double output_tokens_per_second_per_gpu = 0;  // Per GPU, or for the whole box without GPUs.
  double power_watts = 0;                       // What the cost counts.
  std::optional<double> cost_per_hour;          // With a hardware price.
  std::optional<double> cost_per_million_output_tokens;          // At the observed load.
  std::optional<double> cost_per_million_output_tokens_at_peak;  // At the peak load.
};

// Pure arithmetic: an hour is amortisation (price over months of 730 h) plus power.
Economics ComputeEconomics(const EconomicsConfig& config, double tokens_per_second,
                           double peak_tokens_per_second, int gpus, double measured_power_watts);

// Output tokens per second over a sliding window, from a cumulative token count sampled
// whenever someone asks. Thread-safe.
class ThroughputTracker {
 public:
  // Counting starts at `start` with 0 tokens (the daemon's start), so the first question
  // already has an answer.
  explicit ThroughputTracker(
      std::chrono::seconds window = std::chrono::minutes(5),
      std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now())
      : window_(window) {
    samples_.emplace_back(start, 0.0);
  }

  // Records the cumulative count at `now`; returns (rate over the window, best rate seen).
  std::pair<double, double> Sample(double total_tokens, std::chrono::steady_clock::time_point now =
                                                            std::chrono::steady_clock::now());

 private:
  const std::chrono::seconds window_;
  std::mutex mutex_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, double>> samples_;
  double peak_ = 0;
};

}  // namespace inferbox::monitoring
