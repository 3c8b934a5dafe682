#include "inferbox/common/atomic_file.h"

#include <sys/stat.h>

#include <gtest/gtest.h>

#include "temp_dir.h"

namespace inferbox {
namespace {

using inferbox::testing::TempDir;

size_t EntriesIn(const std::filesystem::path& directory) {
  size_t count = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(directory)) ++count;
  return count;
}

TEST(AtomicFile, WritesNewFileWithMode) {
  TempDir dir;
  const auto path = dir / "listeners.toml";
  ASSERT_TRUE(WriteFileAtomically(path, "grpc = \"127.0.0.1:1\"\n", 0600).ok());
  auto contents = ReadFile(path);
  ASSERT_TRUE(contents.ok()) << contents.status().ToString();
  EXPECT_EQ(*contents, "grpc = \"127.0.0.1:1\"\n");
  struct stat info {};
  ASSERT_EQ(::stat(path.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  EXPECT_EQ(EntriesIn(dir.path()), 1u) << "a temporary file was left behind";
}

TEST(AtomicFile, ReplacesExistingContentsWhole) {
  TempDir dir;
  const auto path = dir / "config.toml";
  ASSERT_TRUE(WriteFileAtomically(path, std::string(10000, 'a')).ok());
  ASSERT_TRUE(WriteFileAtomically(path, "short").ok());
  EXPECT_EQ(*ReadFile(path), "short");
  EXPECT_EQ(EntriesIn(dir.path()), 1u);
}

TEST(AtomicFile, MissingDirectoryIsAnErrorNamingThePath) {
  TempDir dir;
  const auto path = dir / "no-such-dir" / "file";
  const Status status = WriteFileAtomically(path, "x");
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find(path.string()), std::string::npos) << status.message();
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(AtomicFile, ReadingAMissingFileIsNotFound) {
  TempDir dir;
  auto contents = ReadFile(dir / "absent");
  ASSERT_FALSE(contents.ok());
  EXPECT_EQ(contents.status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace inferbox
