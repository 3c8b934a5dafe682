// inferbox-bundle, the real binary: a signed zstd bundle it writes installs on a box that
// requires signatures, and its errors are plain.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "inferbox/provisioning/model_store.h"
#include "model_fixtures.h"
#include "subprocess.h"
#include "temp_dir.h"

namespace inferbox::provisioning {
namespace {

using inferbox::testing::RunCommand;
using ::testing::HasSubstr;

TEST(BundleTool, WritesASignedZstdBundleThatInstalls) {
  inferbox::testing::TempDir dir;
  testing::WriteFakeModel(dir / "qwen3-tiny");
  const auto key = testing::GenerateEd25519();
  testing::WriteFile(dir / "key.pem", key.private_pem);

  const auto made =
      RunCommand({INFERBOX_BUNDLE_PATH, "create", "--model", (dir / "qwen3-tiny").string(), "--out",
                  (dir / "tiny.ibx").string(), "--zstd", "--sign-key", (dir / "key.pem").string(),
                  "--detached-signature"},
                 dir.path());
  ASSERT_EQ(made.exit_code, 0) << made.err;
  EXPECT_THAT(made.out, HasSubstr("model \"qwen3-tiny\", 5 files"));
  EXPECT_THAT(made.out, HasSubstr("signed"));
  EXPECT_TRUE(std::filesystem::exists(dir / "tiny.ibx.sig"));

  ModelStoreOptions options;
  options.trusted_public_keys_pem = {key.public_pem};
  options.require_signatures = true;
  auto store = ModelStore::Open(dir / "models", options);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto installed = (*store)->Install("qwen3-tiny", BundleSource{dir / "tiny.ibx"});
  ASSERT_TRUE(installed.ok()) << installed.status().ToString();
  EXPECT_FALSE(installed->signed_by().empty());
}

TEST(BundleTool, ReportsErrorsAndExitsNonZero) {
  inferbox::testing::TempDir dir;
  const auto missing = RunCommand({INFERBOX_BUNDLE_PATH, "create", "--model",
                                   (dir / "absent").string(), "--out", (dir / "x.ibx").string()},
                                  dir.path());
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_THAT(missing.err, HasSubstr("is not a folder"));
  EXPECT_FALSE(std::filesystem::exists(dir / "x.ibx"));

  testing::WriteFakeModel(dir / "m");
  testing::WriteFile(dir / "bad.pem", "not a key");
  const auto bad_key =
      RunCommand({INFERBOX_BUNDLE_PATH, "create", "--model", (dir / "m").string(), "--out",
                  (dir / "x.ibx").string(), "--sign-key", (dir / "bad.pem").string()},
                 dir.path());
  EXPECT_NE(bad_key.exit_code, 0);
  EXPECT_THAT(bad_key.err, HasSubstr("signing key"));
}

}  // namespace
}  // namespace inferbox::provisioning
