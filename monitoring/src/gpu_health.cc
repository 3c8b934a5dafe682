#include "inferbox/monitoring/gpu_health.h"

#include <algorithm>

#include <fmt/format.h>

namespace inferbox::monitoring {

bool GpuHealth::healthy() const {
  for (const GpuVerdict& gpu : gpus) {
    if (!gpu.healthy) return false;
  }
  return true;
}

std::string GpuHealth::Summary() const {
  std::string summary;
  for (const GpuVerdict& gpu : gpus) {
    if (gpu.healthy) continue;
    if (!summary.empty()) summary += "; ";
    summary += fmt::format("GPU {} ({}): {}", gpu.index, gpu.uuid, gpu.reason);
  }
  return summary;
}

std::optional<std::string> GpuFaultFor(std::span<const uint32_t> gpus, const GpuHealth& health) {
  if (gpus.empty() || health.healthy()) return std::nullopt;
  std::string fault;
  for (const uint32_t index : gpus) {
    const auto verdict = std::find_if(health.gpus.begin(), health.gpus.end(),
                                      [&](const GpuVerdict& gpu) { return gpu.index == index; });
    std::string why;
    if (verdict == health.gpus.end()) {
      why = fmt::format("GPU {}: not among the GPUs NVML lists while {}", index, health.Summary());
    } else if (!verdict->healthy) {
      why = fmt::format("GPU {} ({}): {}", verdict->index, verdict->uuid, verdict->reason);
    } else {
      continue;
    }
    fault += (fault.empty() ? "" : "; ") + why;
  }
  if (fault.empty()) return std::nullopt;
  return fault;
}

std::optional<std::string> FatalXidReason(unsigned long long xid) {
  // NVIDIA's Xid catalog (docs.nvidia.com/deploy/xid-errors): the Xids whose immediate action
  // is a GPU reset or a node reboot. 154 is the driver itself saying so.
  std::string_view what;
  switch (xid) {
    case 48: what = "double-bit ECC error"; break;
    case 64: what = "row remapping or page retirement failed"; break;
    case 74: what = "NVLink error"; break;
    case 79: what = "GPU has fallen off the bus"; break;
    case 95: what = "uncontained ECC error"; break;
    case 119: what = "GSP RPC timeout"; break;
    case 120: what = "GSP error"; break;
    case 154: what = "the driver requires a GPU reset or a reboot"; break;
    default: return std::nullopt;
  }
  return fmt::format("Xid {}: {}", xid, what);
}

}  // namespace inferbox::monitoring
