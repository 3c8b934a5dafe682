// The official `openai` npm client against the real daemon and a real engine process, as
// users' applications call the box: chat and completions, streamed and not, usage, models,
// the errors people hit, 200 streams at once, and API keys once the box requires them.
#include <signal.h>

#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "daemon_fixture.h"
#include "inferbox/v1/admin.pb.h"
#include "tiny_model.h"

namespace inferbox::testing {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

class OpenAiClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new TempDir();
    MakeTinyModel(scratch_->path() / "model", "qwen3", {"--arch", "qwen3", "--seed", "3"},
                  scratch_->path());
  }
  static void TearDownTestSuite() { delete scratch_; }

  static std::string Config(bool require_keys) {
    return TestConfig() + "[auth]\nrequire_keys = " + (require_keys ? "true" : "false") +
           "\n[engines]\nexecutable = \"" INFERBOX_ENGINE_PATH
           "\"\n[[models]]\nname = "
           "\"tiny\"\npath = \"" +
           (scratch_->path() / "model").string() + "\"\nkv_cache_gib = 0.2\nmax_running = 64\n";
  }

  CommandResult Conformance(const DaemonProcess& daemon, std::vector<std::string> extra) {
    std::vector<std::string> argv = {
        INFERBOX_NODE, std::string(INFERBOX_REFERENCE_DIR) + "/openai_conformance.mjs",
        "--base-url",  "http://" + daemon.http_address() + "/v1",
        "--model",     "tiny"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return RunCommand(argv, dir_.path(), 240s);
  }

  static TempDir* scratch_;
  TempDir dir_;
};

TempDir* OpenAiClientTest::scratch_ = nullptr;

TEST_F(OpenAiClientTest, TheOfficialClientWorksAndTwoHundredStreamsComplete) {
  ASSERT_TRUE(std::filesystem::exists(scratch_->path() / "model" / "config.json"));
  DaemonProcess daemon(dir_, {.config_text = Config(false)});
  ASSERT_TRUE(daemon.WaitReady());
  ASSERT_TRUE(daemon.WaitInferenceServing());
  const CommandResult result = Conformance(daemon, {"--concurrent", "200"});
  EXPECT_EQ(result.exit_code, 0) << result.out << result.err << "\ndaemon log:\n"
                                 << daemon.Logs().substr(0, 20000);
  EXPECT_THAT(result.out, HasSubstr("ok 200 concurrent streams"));
  EXPECT_THAT(result.out, HasSubstr("PASS"));
  // The daemon kept serving through every error case.
  EXPECT_FALSE(daemon.process().WaitForExit(0ms).has_value());
}

TEST_F(OpenAiClientTest, ARequiredKeyIsCheckedOnEveryCall) {
  // The first admin key is made on the keyless loopback box, then keys become required
  // (SIGHUP reload).
  DaemonProcess daemon(dir_, {.config_text = Config(false)});
  ASSERT_TRUE(daemon.WaitReady());
  const CommandResult created =
      RunCommand({INFERBOXCTL_PATH, "--address", daemon.grpc_address(), "keys", "create", "--name",
                  "app", "--role", "inference", "--json"},
                 dir_.path());
  ASSERT_EQ(created.exit_code, 0) << created.err;
  inferbox::v1::CreateKeyResponse key;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(created.out, &key).ok()) << created.out;

  std::ofstream(daemon.config_path()) << Config(true);
  daemon.process().Signal(SIGHUP);
  ASSERT_TRUE(daemon.notify().WaitFor("RELOADING=1", 10s).has_value()) << daemon.Logs();
  ASSERT_TRUE(daemon.notify().WaitFor("READY=1", 10s).has_value()) << daemon.Logs();
  ASSERT_TRUE(daemon.WaitInferenceServing());

  const CommandResult keyed = Conformance(daemon, {"--api-key", key.secret()});
  EXPECT_EQ(keyed.exit_code, 0) << keyed.out << keyed.err;
  EXPECT_THAT(keyed.out, HasSubstr("a wrong API key -> 401"));
  const CommandResult keyless = Conformance(daemon, {});
  EXPECT_NE(keyless.exit_code, 0) << "without the key the client must be refused";
  EXPECT_THAT(keyless.err, HasSubstr("401")) << keyless.out;
  EXPECT_THAT(daemon.Logs(), ::testing::Not(HasSubstr(key.secret())))
      << "the key must never be logged";
}

}  // namespace
}  // namespace inferbox::testing
