#include "inferbox/monitoring/filesystem_collector.h"

#include <sys/statvfs.h>

#include <gtest/gtest.h>

#include "temp_dir.h"

namespace inferbox::monitoring {
namespace {

TEST(FilesystemCollector, ReportsFreeAndTotalBytesOfEachDirectory) {
  testing::TempDir dir;
  std::filesystem::create_directories(dir / "models");
  const auto families =
      FilesystemCollector({{"state", dir.path()}, {"models", dir / "models"}}).Collect();
  ASSERT_EQ(families.size(), 2u);
  EXPECT_EQ(families[0].name, "inferbox_filesystem_free_bytes");
  EXPECT_EQ(families[1].name, "inferbox_filesystem_size_bytes");
  struct statvfs stats {};
  ASSERT_EQ(statvfs(dir.path().c_str(), &stats), 0);
  const double size = static_cast<double>(stats.f_blocks) * static_cast<double>(stats.f_frsize);
  for (const auto& family : families) {
    ASSERT_EQ(family.metric.size(), 2u) << family.name;
    EXPECT_EQ(family.metric[0].label[0].value, "state");
    EXPECT_EQ(family.metric[0].label[1].value, dir.path().string());
    EXPECT_EQ(family.metric[1].label[0].value, "models");
    EXPECT_GT(family.metric[0].gauge.value, 0) << family.name;
  }
  EXPECT_EQ(families[1].metric[0].gauge.value, size) << "the size is the file system's";
  EXPECT_LE(families[0].metric[0].gauge.value, size) << "free space is at most the size";
}

TEST(FilesystemCollector, LeavesOutADirectoryThatDoesNotExist) {
  testing::TempDir dir;
  const auto families = FilesystemCollector({{"models", dir / "not-there"}}).Collect();
  for (const auto& family : families) EXPECT_TRUE(family.metric.empty()) << family.name;
}

}  // namespace
}  // namespace inferbox::monitoring
