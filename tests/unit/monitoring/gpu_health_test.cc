// Which Xid events take a GPU out of service (NVIDIA's Xid catalog: a GPU reset or a reboot
// is the immediate action), and how a verdict reads for a person.
#include "inferbox/monitoring/gpu_health.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace inferbox::monitoring {
namespace {

TEST(FatalXidReason, XidsNvidiaResolvesWithAResetOrRebootAreFatal) {
  for (const unsigned long long xid : {48, 64, 74, 79, 95, 119, 120, 154}) {
    const auto reason = FatalXidReason(xid);
    ASSERT_TRUE(reason.has_value()) << "Xid " << xid << " should take the GPU out of service";
    EXPECT_TRUE(reason->starts_with("Xid " + std::to_string(xid) + ": ")) << *reason;
  }
  EXPECT_EQ(FatalXidReason(79), "Xid 79: GPU has fallen off the bus");
}

TEST(FatalXidReason, ApplicationFaultsContainedErrorsAndRecordedRemapsAreNot) {
  // 13/31/43/45: an application's fault or end; 63: a row remap recorded for the next reset;
  // 92: high single-bit error rate; 94: a contained ECC error (only its application restarts).
  for (const unsigned long long xid : {13, 31, 43, 45, 63, 92, 94, 999}) {
    EXPECT_FALSE(FatalXidReason(xid).has_value())
        << "Xid " << xid << " should leave the GPU in service";
  }
}

TEST(GpuHealth, HealthyUnlessAGpuIsNot) {
  GpuHealth health;
  EXPECT_TRUE(health.healthy()) << "no GPUs (a CPU box) is healthy";
  EXPECT_EQ(health.Summary(), "");
  health.gpus = {{.index = 0, .uuid = "GPU-a", .name = "H100"},
                 {.index = 1, .uuid = "GPU-b", .name = "H100"}};
  EXPECT_TRUE(health.healthy());
  health.gpus[1].healthy = false;
  health.gpus[1].reason = "Xid 79: GPU has fallen off the bus";
  EXPECT_FALSE(health.healthy());
  EXPECT_EQ(health.Summary(), "GPU 1 (GPU-b): Xid 79: GPU has fallen off the bus");
  health.gpus[0].healthy = false;
  health.gpus[0].reason = "GPU lost";
  EXPECT_EQ(health.Summary(),
            "GPU 0 (GPU-a): GPU lost; GPU 1 (GPU-b): Xid 79: GPU has fallen off the bus");
}

GpuHealth TwoGpusTheSecondFallenOff() {
  GpuHealth health;
  health.gpus = {{.index = 0, .uuid = "GPU-a", .name = "H100"},
                 {.index = 1,
                  .uuid = "GPU-b",
                  .name = "H100",
                  .healthy = false,
                  .reason = "Xid 79: GPU has fallen off the bus"}};
  return health;
}

TEST(GpuFaultFor, OnlyEnginesOnTheFaultyGpuAreUnfit) {
  const GpuHealth health = TwoGpusTheSecondFallenOff();
  const std::vector<uint32_t> first = {0};
  const std::vector<uint32_t> second = {1};
  const std::vector<uint32_t> both = {0, 1};
  EXPECT_EQ(GpuFaultFor(first, health), std::nullopt) << "GPU 0 is healthy";
  EXPECT_EQ(GpuFaultFor(second, health), "GPU 1 (GPU-b): Xid 79: GPU has fallen off the bus");
  EXPECT_EQ(GpuFaultFor(both, health), "GPU 1 (GPU-b): Xid 79: GPU has fallen off the bus")
      << "a tensor-parallel engine with one faulty GPU is unfit";
  EXPECT_EQ(GpuFaultFor({}, health), std::nullopt) << "a CPU engine uses no GPU";
}

TEST(GpuFaultFor, FailsClosedForAGpuNvmlDoesNotList) {
  const GpuHealth health = TwoGpusTheSecondFallenOff();
  const std::vector<uint32_t> unknown = {7};
  const auto fault = GpuFaultFor(unknown, health);
  ASSERT_TRUE(fault.has_value()) << "while a GPU is faulty, one NVML does not list may be it";
  EXPECT_EQ(*fault,
            "GPU 7: not among the GPUs NVML lists while GPU 1 (GPU-b): Xid 79: GPU has fallen "
            "off the bus");
  GpuHealth healthy = TwoGpusTheSecondFallenOff();
  healthy.gpus[1].healthy = true;
  EXPECT_EQ(GpuFaultFor(unknown, healthy), std::nullopt) << "no fault anywhere: nothing to fence";
  EXPECT_EQ(GpuFaultFor(unknown, GpuHealth()), std::nullopt)
      << "without NVML there is no verdict to act on";
}

}  // namespace
}  // namespace inferbox::monitoring
