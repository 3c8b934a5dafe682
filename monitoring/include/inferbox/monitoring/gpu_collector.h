// GPU telemetry for /metrics through NVML, loaded at run time (libnvidia-ml.so.1 comes with
// the NVIDIA driver; there is no build-time dependency). Without the library, a driver or a
// GPU, the collector exports nothing and logs that once: the daemon runs the same on a CPU
// box. Names do not clash with dcgm-exporter's DCGM_FI_* (which may run beside it).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

namespace inferbox::monitoring {

class GpuCollector final : public prometheus::Collectable {
 public:
  // Loads `library` (default: the driver's NVML) and initialises NVML.
  explicit GpuCollector(const std::string& library = "libnvidia-ml.so.1");
  ~GpuCollector() override;
  GpuCollector(const GpuCollector&) = delete;
  GpuCollector& operator=(const GpuCollector&) = delete;

  // Whether NVML loaded and initialised (the GPUs may still be zero).
  bool available() const { return nvml_ != nullptr; }
  // Why not, when not: "libnvidia-ml.so.1: cannot open shared object file", ...
  const std::string& unavailable_reason() const { return reason_; }

  std::vector<prometheus::MetricFamily> Collect() const override;
  // GPUs found and their summed power draw in watts (0 and 0 without NVML).
  std::pair<int, double> CountAndPower() const;

 private:
  struct Nvml;
  std::unique_ptr<Nvml> nvml_;
  std::string reason_;
};

}  // namespace inferbox::monitoring
