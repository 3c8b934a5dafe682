// API keys through the real inferboxd and inferboxctl: the first admin key is created on a
// keyless (loopback) box, then the box is restarted with [auth] require_keys = true.
//
// Assumes the daemon wiring: the key store at state_dir/inferbox.db, `[auth] require_keys`
// (default false), the Admin service given the key store, and gRPC health left anonymous.
#include <signal.h>
#include <sys/stat.h>

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "daemon_fixture.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "inferbox/v1/admin.pb.h"

namespace inferbox::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string RequireKeysConfig() {
  return TestConfig() + "[auth]\nrequire_keys = true\n";
}

std::string SecretPart(const std::string& token) {
  return token.substr(token.find('.') + 1);
}

class KeysTest : public ::testing::Test {
 protected:
  CommandResult Ctl(const DaemonProcess& daemon, std::vector<std::string> arguments,
                    const std::string& api_key = "") {
    std::vector<std::string> argv = {INFERBOXCTL_PATH, "--address", daemon.grpc_address()};
    if (!api_key.empty()) argv.insert(argv.end(), {"--api-key", api_key});
    argv.insert(argv.end(), arguments.begin(), arguments.end());
    return RunCommand(argv, dir_.path());
  }

  // Creates a key with `inferboxctl keys create --json`; the whole bearer token.
  std::string CreateKey(const DaemonProcess& daemon, const std::string& name,
                        const std::string& role, const std::string& api_key = "") {
    const auto result =
        Ctl(daemon, {"keys", "create", "--name", name, "--role", role, "--json"}, api_key);
    EXPECT_EQ(result.exit_code, 0) << result.err;
    inferbox::v1::CreateKeyResponse created;
    const auto parsed = google::protobuf::util::JsonStringToMessage(result.out, &created);
    EXPECT_TRUE(parsed.ok()) << parsed.ToString() << "\n" << result.out;
    EXPECT_THAT(created.secret(), ::testing::StartsWith(created.key().id() + "."));
    return created.secret();
  }

  static void Stop(DaemonProcess& daemon) {
    daemon.process().Signal(SIGTERM);
    const auto exit_code = daemon.process().WaitForExit(std::chrono::seconds(10));
    ASSERT_TRUE(exit_code) << "inferboxd still running after SIGTERM; log:\n" << daemon.Logs();
    EXPECT_EQ(*exit_code, 0) << daemon.Logs();
  }

  TempDir dir_;
};

TEST_F(KeysTest, FirstAdminKeyOnAKeylessBoxThenRequiredKeys) {
  std::string admin_key;
  std::string daemon_logs;
  {
    DaemonProcess keyless(dir_, {});
    ASSERT_TRUE(keyless.WaitReady());
    admin_key = CreateKey(keyless, "ops", "admin");
    const std::string admin_id = admin_key.substr(0, admin_key.find('.'));

    const auto listed = Ctl(keyless, {"keys", "list"});
    ASSERT_EQ(listed.exit_code, 0) << listed.err;
    EXPECT_THAT(listed.out, HasSubstr(admin_id + "  ops   admin"));
    EXPECT_THAT(listed.out, Not(HasSubstr(SecretPart(admin_key))));
    Stop(keyless);
    daemon_logs = keyless.Logs();
  }
  const auto database = dir_ / "daemon-state" / "inferbox.db";
  struct stat info {};
  ASSERT_EQ(::stat(database.c_str(), &info), 0) << "the key database is state_dir/inferbox.db";
  EXPECT_EQ(info.st_mode & 0777, 0600u);

  DaemonProcess daemon(dir_, {.config_text = RequireKeysConfig()});
  ASSERT_TRUE(daemon.WaitReady());

  const auto anonymous = Ctl(daemon, {"keys", "list"});
  EXPECT_EQ(anonymous.exit_code, 1);
  EXPECT_THAT(anonymous.err, HasSubstr("keys list refused: missing API key"));
  const auto anonymous_status = Ctl(daemon, {"status"});
  EXPECT_EQ(anonymous_status.exit_code, 1) << "the Admin service is not anonymous (R6.10)";
  EXPECT_THAT(anonymous_status.err, HasSubstr("missing API key"));

  const auto status = Ctl(daemon, {"status"}, admin_key);
  EXPECT_EQ(status.exit_code, 0) << status.err;

  {
    // gRPC health stays anonymous (R6.10). Scoped: a call still held open would hold up the
    // daemon's drain when the test stops it.
    auto channel = grpc::CreateChannel(daemon.grpc_address(), grpc::InsecureChannelCredentials());
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::health::v1::HealthCheckResponse health;
    EXPECT_TRUE(grpc::health::v1::Health::NewStub(channel)
                    ->Check(&context, grpc::health::v1::HealthCheckRequest(), &health)
                    .ok());
  }

  const std::string inference_key = CreateKey(daemon, "risk-team", "inference", admin_key);
  const std::string inference_id = inference_key.substr(0, inference_key.find('.'));
  const auto wrong_role = Ctl(daemon, {"keys", "list"}, inference_key);
  EXPECT_EQ(wrong_role.exit_code, 1);
  EXPECT_THAT(wrong_role.err, HasSubstr("needs a key with role admin"));

  const auto revoke = Ctl(daemon, {"keys", "revoke", inference_id}, admin_key);
  ASSERT_EQ(revoke.exit_code, 0) << revoke.err;
  const auto revoked = Ctl(daemon, {"status"}, inference_key);
  EXPECT_EQ(revoked.exit_code, 1) << "a revoked key must stop working at once";
  EXPECT_THAT(revoked.err, HasSubstr(inference_id + " has been revoked"));

  const auto all = Ctl(daemon, {"keys", "list", "--all", "--json"}, admin_key);
  ASSERT_EQ(all.exit_code, 0) << all.err;
  inferbox::v1::ListKeysResponse keys;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(all.out, &keys).ok()) << all.out;
  ASSERT_EQ(keys.keys_size(), 2);
  EXPECT_EQ(keys.keys(0).name(), "ops");
  EXPECT_FALSE(keys.keys(0).has_revoked_at());
  EXPECT_EQ(keys.keys(1).id(), inference_id);
  EXPECT_TRUE(keys.keys(1).has_revoked_at());

  std::string forged = admin_key;
  forged.back() = forged.back() == 'A' ? 'B' : 'A';
  const auto bad = Ctl(daemon, {"keys", "list"}, forged);
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.err, HasSubstr("is not valid"));

  Stop(daemon);
  // R2.9: the authorization header is never logged.
  for (const std::string& logs : {daemon_logs, daemon.Logs()}) {
    EXPECT_THAT(logs, Not(HasSubstr(SecretPart(admin_key))));
    EXPECT_THAT(logs, Not(HasSubstr(SecretPart(inference_key))));
    EXPECT_THAT(logs, Not(HasSubstr(SecretPart(forged))));
  }
}

TEST_F(KeysTest, KeylessBoxServesStatusWithOrWithoutAKey) {
  DaemonProcess daemon(dir_, {});
  ASSERT_TRUE(daemon.WaitReady());
  const auto status = Ctl(daemon, {"status"});
  EXPECT_EQ(status.exit_code, 0) << status.err;
  // A keyless box ignores a key it does not know (OpenAI SDKs always send one).
  const auto unknown = Ctl(daemon, {"status"}, "ibx_aaaaaaaaaaaa.not-a-real-secret");
  EXPECT_EQ(unknown.exit_code, 0) << unknown.err;
}

}  // namespace
}  // namespace inferbox::testing
