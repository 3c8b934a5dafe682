// Which CUDA devices this process can use. The first piece of the CUDA backend; also how
// GPU tests decide to skip themselves on machines without a GPU.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "inferbox/common/status.h"

namespace inferbox::engine::cuda {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  // Compute capability, e.g. 9.0 for H100.
  int compute_major = 0;
  int compute_minor = 0;
  uint64_t total_memory_bytes = 0;
  int multiprocessor_count = 0;
};

// The visible devices. No GPU or no driver is not an error: the list is empty and
// `why_none` (when given) says why. Other CUDA failures are errors.
Result<std::vector<CudaDeviceInfo>> QueryCudaDevices(std::string* why_none = nullptr);

}  // namespace inferbox::engine::cuda
