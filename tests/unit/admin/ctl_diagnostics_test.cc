// inferboxctl diagnostics' bundle, written from a given status with stand-in commands: every
// file is there, the configuration has no secrets, an archive unpacks to the same files.
#include "ctl_diagnostics.h"

#include <fstream>
#include <iterator>

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "subprocess.h"
#include "temp_dir.h"

namespace inferbox::ctl {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Read(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(CtlDiagnosticsTest, ConfigSecretsAreRedacted) {
  const std::string config =
      "[server]\n"
      "grpc_listen = \"127.0.0.1:7070\"\n"
      "# password = \"a comment stays\"\n"
      "[mirror]\n"
      "url = \"https://ops:hunter2@mirror.example/models?sig=abc\"\n"
      "api_token = \"s3cr3t\"\n"
      "tls.private_key_password = 'x'\n"
      "tokens_per_minute = 5\n";
  const std::string redacted = RedactConfig(config);
  EXPECT_THAT(redacted, Not(HasSubstr("hunter2")));
  EXPECT_THAT(redacted, Not(HasSubstr("s3cr3t")));
  EXPECT_THAT(redacted, Not(HasSubstr("sig=abc")));
  EXPECT_THAT(redacted, HasSubstr("api_token = \"[redacted]\""));
  EXPECT_THAT(redacted, HasSubstr("tls.private_key_password = \"[redacted]\""));
  EXPECT_THAT(redacted, HasSubstr("https://[redacted]@mirror.example/models?[redacted]"));
  EXPECT_THAT(redacted, HasSubstr("tokens_per_minute = 5"));
  EXPECT_THAT(redacted, HasSubstr("grpc_listen = \"127.0.0.1:7070\""));
  EXPECT_THAT(redacted, HasSubstr("# password = \"a comment stays\""));
}

class CtlDiagnosticsBundleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ofstream(dir_ / "inferbox.toml") << "[auth]\nrequire_keys = true\nsecret = \"abc\"\n";
    inferbox::v1::GetStatusResponse status;
    status.set_version("9.9.9");
    status.set_commit("feedbee");
    status.set_config_path((dir_ / "inferbox.toml").string());
    auto* engine = status.add_engines();
    engine->set_name("tiny/0");
    engine->set_state(inferbox::v1::ENGINE_STATE_READY);
    inputs_.ctl_version = "inferboxctl 9.9.9 (feedbee)";
    inputs_.status = status;
    inputs_.gpu_command = {"echo", "GPU 0: none here"};
    inputs_.log_command = {"no-such-journalctl-command"};
  }

  void ExpectBundle(const std::filesystem::path& bundle) {
    EXPECT_THAT(Read(bundle / "README.txt"), HasSubstr("inferboxctl 9.9.9"));
    EXPECT_THAT(Read(bundle / "versions.txt"), HasSubstr("inferboxd 9.9.9 (feedbee)"));
    inferbox::v1::GetStatusResponse status;
    ASSERT_TRUE(
        google::protobuf::util::JsonStringToMessage(Read(bundle / "status.json"), &status).ok());
    EXPECT_EQ(status.engines(0).name(), "tiny/0");
    const std::string config = Read(bundle / "config.toml");
    EXPECT_THAT(config, HasSubstr("require_keys = true"));
    EXPECT_THAT(config, HasSubstr("secret = \"[redacted]\""));
    EXPECT_THAT(Read(bundle / "gpus.txt"), HasSubstr("GPU 0: none here"));
    EXPECT_THAT(Read(bundle / "daemon.log"), HasSubstr("not found on this machine"));
  }

  inferbox::testing::TempDir dir_;
  DiagnosticsInputs inputs_;
};

TEST_F(CtlDiagnosticsBundleTest, ADirectoryWithEveryFile) {
  ASSERT_TRUE(WriteDiagnostics(dir_ / "bundle", inputs_).ok());
  ExpectBundle(dir_ / "bundle");
  EXPECT_EQ(WriteDiagnostics(dir_ / "bundle", inputs_).code(), StatusCode::kFailedPrecondition)
      << "an existing bundle is never overwritten";
}

TEST_F(CtlDiagnosticsBundleTest, AnArchiveThatUnpacksToTheSameFiles) {
  ASSERT_TRUE(WriteDiagnostics(dir_ / "support.tar.gz", inputs_).ok());
  std::filesystem::create_directory(dir_ / "unpacked");
  const auto untar = inferbox::testing::RunCommand(
      {"/bin/tar", "-xzf", (dir_ / "support.tar.gz").string(), "-C", (dir_ / "unpacked").string()},
      dir_.path());
  ASSERT_EQ(untar.exit_code, 0) << untar.err;
  ExpectBundle(dir_ / "unpacked" / "support");
  for (const auto& entry : std::filesystem::directory_iterator(dir_.path())) {
    EXPECT_FALSE(entry.path().filename().string().starts_with(".inferbox-diagnostics"))
        << "the staging directory is removed";
  }
}

TEST_F(CtlDiagnosticsBundleTest, WithoutTheDaemonItStillWritesWhatItCan) {
  inputs_.status.reset();
  inputs_.status_error = "GetStatus failed: \"connection refused\"";
  ASSERT_TRUE(WriteDiagnostics(dir_ / "bundle", inputs_).ok());
  EXPECT_THAT(Read(dir_ / "bundle" / "status.json"), HasSubstr("connection refused"));
  EXPECT_THAT(Read(dir_ / "bundle" / "versions.txt"), HasSubstr("inferboxd: unknown"));
}

}  // namespace
}  // namespace inferbox::ctl
