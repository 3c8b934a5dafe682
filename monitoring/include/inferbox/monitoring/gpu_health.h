// Whether each GPU is fit to serve, for the daemon's readiness: GpuCollector::Health() fills
// it from NVML. A GPU is unhealthy once NVML reports it lost, after an Xid event NVIDIA's Xid
// catalog resolves with a GPU reset or a reboot, after a row-remapping failure, or while
// uncorrected ECC errors count since the driver loaded; see docs/metrics.md.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace inferbox::monitoring {

struct GpuVerdict {
  unsigned int index = 0;  // NVML's device index, the `gpu` label of the GPU metrics.
  std::string uuid;
  std::string name;
  bool healthy = true;
  // Why not, for a person: "Xid 79: GPU has fallen off the bus". Empty while healthy.
  std::string reason;

  bool operator==(const GpuVerdict&) const = default;
};

struct GpuHealth {
  // One per GPU NVML found; none without NVML (a CPU box has no GPU to be unhealthy).
  std::vector<GpuVerdict> gpus;

  // True when no GPU is unhealthy.
  bool healthy() const;
  // The unhealthy GPUs and why, "GPU 1 (GPU-8c2e...): Xid 79: GPU has fallen off the bus";
  // empty when healthy.
  std::string Summary() const;

  bool operator==(const GpuHealth&) const = default;
};

// Why an engine that runs on `gpus` (device indices as NVML numbers them: PCI bus order, the
// order the supervisor gives CUDA) must not serve under `health`, "GPU 1 (GPU-8c2e...): Xid
// 79: GPU has fallen off the bus"; nullopt when it may. Fails closed: while any GPU is
// unhealthy, an engine index that NVML does not list cannot be told apart from the faulty one
// and is unfit too. An engine without GPUs (CPU) is never unfit.
std::optional<std::string> GpuFaultFor(std::span<const uint32_t> gpus, const GpuHealth& health);

// Why Xid `xid` leaves the GPU unfit until it is reset (the reason, "Xid 79: GPU has fallen
// off the bus"), or nullopt for an Xid after which it keeps serving: application faults,
// contained ECC errors (94: only the application that hit it restarts) and recorded row
// remaps (63: applied at the next reset; the pending flag says so).
std::optional<std::string> FatalXidReason(unsigned long long xid);

}  // namespace inferbox::monitoring
