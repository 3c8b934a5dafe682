// GPU telemetry without a GPU: a missing NVML (this machine, CI, every CPU box) means no GPU
// series and no failure, with the reason kept; a library that is not NVML is refused the
// same way. With a GPU the values come from the driver (checked on the GPU machine).
#include "inferbox/monitoring/gpu_collector.h"

#include <gtest/gtest.h>

namespace inferbox::monitoring {
namespace {

TEST(GpuCollector, WithoutNvmlThereAreNoSeriesAndNoErrors) {
  GpuCollector collector("libnvidia-ml-that-does-not-exist.so.1");
  EXPECT_FALSE(collector.available());
  EXPECT_NE(collector.unavailable_reason().find("libnvidia-ml-that-does-not-exist"),
            std::string::npos)
      << collector.unavailable_reason();
  EXPECT_TRUE(collector.Collect().empty());
}

TEST(GpuCollector, ALibraryThatIsNotNvmlIsRefused) {
  GpuCollector collector("libm.so.6");
  EXPECT_FALSE(collector.available());
  EXPECT_NE(collector.unavailable_reason().find("lacks an NVML function"), std::string::npos)
      << collector.unavailable_reason();
  EXPECT_TRUE(collector.Collect().empty());
}

TEST(GpuCollector, TheDriversNvmlLoadsWhereThereIsOne) {
  GpuCollector collector;
  if (!collector.available()) {
    GTEST_SKIP() << "no NVML here (" << collector.unavailable_reason() << ")";
  }
  const auto families = collector.Collect();
  ASSERT_FALSE(families.empty());
  EXPECT_EQ(families[0].name, "inferbox_gpu_utilization_ratio");
  for (const auto& metric : families[0].metric) {
    EXPECT_GE(metric.gauge.value, 0.0);
    EXPECT_LE(metric.gauge.value, 1.0);
  }
}

}  // namespace
}  // namespace inferbox::monitoring
