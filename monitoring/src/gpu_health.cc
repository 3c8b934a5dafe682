#include "inferbox/monitoring/gpu_health.h"

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
