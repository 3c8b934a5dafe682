#include "inferbox/monitoring/process_collector.h"

#include <map>
#include <vector>

#include <gtest/gtest.h>

namespace inferbox::monitoring {
namespace {

std::map<std::string, prometheus::MetricFamily> ByName(
    std::vector<prometheus::MetricFamily> families) {
  std::map<std::string, prometheus::MetricFamily> result;
  for (auto& family : families) result[family.name] = std::move(family);
  return result;
}

TEST(ProcessCollector, ReportsThisProcess) {
  // Allocate and touch 64 MiB so that resident memory is certainly above it.
  std::vector<char> ballast(64 << 20, 1);
  auto families = ByName(ProcessCollector().Collect());
  for (const char* name :
       {"process_cpu_seconds_total", "process_start_time_seconds", "process_virtual_memory_bytes",
        "process_resident_memory_bytes", "process_open_fds", "process_max_fds"}) {
    ASSERT_TRUE(families.count(name)) << "missing " << name;
    ASSERT_EQ(families[name].metric.size(), 1u) << name;
  }
  EXPECT_EQ(families["process_cpu_seconds_total"].type, prometheus::MetricType::Counter);
  EXPECT_GE(families["process_resident_memory_bytes"].metric[0].gauge.value, 64.0 * (1 << 20));
  EXPECT_GE(families["process_virtual_memory_bytes"].metric[0].gauge.value,
            families["process_resident_memory_bytes"].metric[0].gauge.value);
  EXPECT_GE(families["process_open_fds"].metric[0].gauge.value, 3) << "stdin/stdout/stderr";
  const double start = families["process_start_time_seconds"].metric[0].gauge.value;
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_LE(start, now + 1);
  EXPECT_GT(start, now - 3600) << "this test process did not start an hour ago";
  EXPECT_EQ(ballast[12345], 1);
}

}  // namespace
}  // namespace inferbox::monitoring
