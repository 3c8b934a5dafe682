#include "inferbox/monitoring/daemon_metrics.h"

#include <gtest/gtest.h>
#include <prometheus/text_serializer.h>

namespace inferbox::monitoring {
namespace {

std::string Scrape(const DaemonMetrics& metrics) {
  return prometheus::TextSerializer().Serialize(metrics.registry()->Collect());
}

TEST(DaemonMetrics, BuildInfoCarriesVersionCommitCudaAndDriver) {
  DaemonMetrics metrics({"1.2.3", "abcdef123456", "13.0", "580.95.05"});
  EXPECT_NE(Scrape(metrics).find("inferbox_build_info{commit=\"abcdef123456\",cuda=\"13.0\","
                                 "driver=\"580.95.05\",version=\"1.2.3\"} 1"),
            std::string::npos)
      << Scrape(metrics);
  DaemonMetrics cpu_only({"1.2.3", "abc"});
  EXPECT_NE(Scrape(cpu_only).find("inferbox_build_info{commit=\"abc\",cuda=\"none\","
                                  "driver=\"none\",version=\"1.2.3\"} 1"),
            std::string::npos)
      << Scrape(cpu_only);
}

TEST(DaemonMetrics, ReloadsCountedByResult) {
  DaemonMetrics metrics({"1.2.3", "abc"});
  metrics.RecordConfigReload(false);
  metrics.RecordConfigReload(false);
  metrics.RecordConfigReload(true);
  const std::string text = Scrape(metrics);
  EXPECT_NE(text.find("inferbox_config_reloads_total{result=\"rejected\"} 2"), std::string::npos)
      << text;
  EXPECT_NE(text.find("inferbox_config_reloads_total{result=\"applied\"} 1"), std::string::npos)
      << text;
}

}  // namespace
}  // namespace inferbox::monitoring
