#include <gtest/gtest.h>

#include "inferbox/engine/cuda/device_query.h"

namespace inferbox::engine::cuda {
namespace {

TEST(CudaDeviceQuery, ReportsVisibleDevicesOrWhyNone) {
  std::string why_none;
  auto devices = QueryCudaDevices(&why_none);
  ASSERT_TRUE(devices.ok()) << devices.status().ToString();
  if (devices->empty()) {
    GTEST_SKIP() << "no CUDA device on this machine (" << why_none
                 << "); GPU tests run on a machine with one";
  }
  for (const auto& device : *devices) {
    EXPECT_FALSE(device.name.empty()) << "device " << device.index << " has no name";
    EXPECT_GE(device.compute_major, 7) << device.name << " is older than the box supports";
    EXPECT_GT(device.total_memory_bytes, 1ull << 30) << device.name << " reports under 1 GiB";
    EXPECT_GT(device.multiprocessor_count, 0);
  }
}

}  // namespace
}  // namespace inferbox::engine::cuda
