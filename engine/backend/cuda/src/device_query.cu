#include "inferbox/engine/cuda/device_query.h"

#include <cuda_runtime.h>

namespace inferbox::engine::cuda {

Result<std::vector<CudaDeviceInfo>> QueryCudaDevices(std::string* why_none) {
  std::vector<CudaDeviceInfo> devices;
  int count = 0;
  const cudaError_t count_error = cudaGetDeviceCount(&count);
  if (count_error == cudaErrorNoDevice || count_error == cudaErrorInsufficientDriver ||
      count_error == cudaErrorInitializationError || count_error == cudaErrorSystemDriverMismatch ||
      count_error == cudaErrorCompatNotSupportedOnDevice) {
    if (why_none != nullptr) *why_none = cudaGetErrorString(count_error);
    cudaGetLastError();  // Clear the sticky-free error so later calls start clean.
    return devices;
  }
  if (count_error != cudaSuccess) {
    return UnavailableError(std::string("cudaGetDeviceCount failed: ") +
                            cudaGetErrorString(count_error));
  }
  if (count == 0 && why_none != nullptr) *why_none = "no CUDA device is visible";
  for (int index = 0; index < count; ++index) {
    cudaDeviceProp properties{};
    if (const cudaError_t error = cudaGetDeviceProperties(&properties, index);
        error != cudaSuccess) {
      return UnavailableError("cudaGetDeviceProperties(" + std::to_string(index) +
                              ") failed: " + cudaGetErrorString(error));
    }
    devices.push_back({index, properties.name, properties.major, properties.minor,
                       static_cast<uint64_t>(properties.totalGlobalMem),
                       properties.multiProcessorCount});
  }
  return devices;
}

}  // namespace inferbox::engine::cuda
