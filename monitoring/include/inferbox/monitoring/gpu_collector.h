// GPU telemetry for /metrics through NVML, loaded at run time (libnvidia-ml.so.1 comes with
// the NVIDIA driver; there is no build-time dependency). Without the library, a driver or a
// GPU, the collector exports nothing and logs that once: the daemon runs the same on a CPU
// box. Names do not clash with dcgm-exporter's DCGM_FI_* (which may run beside it); the
// catalogue (docs/metrics.md) maps them. Functions an older driver lacks, and readings a GPU
// does not support, leave their series out without a log line per scrape. Xid events come
// from an NVML event set polled (without blocking) at every scrape and health check.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include "inferbox/monitoring/gpu_health.h"

namespace inferbox::monitoring {

// $INFERBOX_NVML_LIBRARY when set (tests point it at a fake NVML), else the driver's
// "libnvidia-ml.so.1".
std::string DefaultNvmlLibrary();

// Thread-safe: Collect, CountAndPower and Health may run on any threads at once;
// WatchHealth and StopWatchingHealth are for the owner's thread.
class GpuCollector final : public prometheus::Collectable {
 public:
  // Loads `library`, initialises NVML, finds the GPUs and registers for their Xid events.
  explicit GpuCollector(const std::string& library = DefaultNvmlLibrary());
  ~GpuCollector() override;
  GpuCollector(const GpuCollector&) = delete;
  GpuCollector& operator=(const GpuCollector&) = delete;

  // Whether NVML loaded and initialised (the GPUs may still be zero).
  bool available() const { return nvml_ != nullptr; }
  // Why not, when not: "libnvidia-ml.so.1: cannot open shared object file", ...
  const std::string& unavailable_reason() const { return reason_; }
  // The NVIDIA driver's version ("580.95.05"), read once at start; empty without NVML or
  // where the driver does not say.
  const std::string& driver_version() const { return driver_version_; }

  std::vector<prometheus::MetricFamily> Collect() const override;
  // GPUs found and their summed power draw in watts (0 and 0 without NVML).
  std::pair<int, double> CountAndPower() const;

  // Each GPU's verdict, read from NVML now (Xid events queued since the last look included).
  // A fatal Xid stays until the daemon restarts (after the GPU reset NVIDIA prescribes);
  // the other causes last as long as NVML reports them. Logs each change of a verdict once.
  GpuHealth Health() const;

  // Checks Health() every `interval` on a thread of the collector's and calls `on_change`
  // there with the new verdict whenever it differs from the previous one (the first call
  // compares with the verdict when watching began). One watcher at a time; does nothing
  // without NVML.
  void WatchHealth(std::chrono::milliseconds interval,
                   std::function<void(const GpuHealth&)> on_change);
  // Stops the watcher and waits for a call of `on_change` in progress to return; after it,
  // `on_change` is never called again. Idempotent; the destructor does it too. Not from
  // `on_change` itself.
  void StopWatchingHealth();

 private:
  struct Nvml;
  std::unique_ptr<Nvml> nvml_;
  std::string reason_;
  std::string driver_version_;
  // Declared last: stopped and joined before the NVML it polls is shut down.
  std::jthread watcher_;
};

}  // namespace inferbox::monitoring
