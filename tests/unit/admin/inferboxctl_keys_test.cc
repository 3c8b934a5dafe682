// inferboxctl's keys commands and --api-key, run as the real binary against the Admin service
// served by this test process on a loopback port (no daemon needed).
#include <grpcpp/grpcpp.h>

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "inferbox/admin/admin_service.h"
#include "inferbox/daemon/key_store.h"
#include "subprocess.h"
#include "temp_dir.h"

namespace inferbox::admin {
namespace {

using inferbox::testing::CommandResult;
using inferbox::testing::RunCommand;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;

class InferboxctlKeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = daemon::KeyStore::Open(dir_ / "inferbox.db", /*require_keys=*/false);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    keys_ = std::move(store).value();
    service_ = std::make_unique<AdminServiceImpl>(board_, keys_.get());
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    address_ = "127.0.0.1:" + std::to_string(port);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  CommandResult Ctl(std::vector<std::string> arguments, std::vector<std::string> env = {}) {
    arguments.insert(arguments.begin(), {INFERBOXCTL_PATH, "--address", address_});
    return RunCommand(arguments, dir_.path(), std::chrono::seconds(30), env);
  }

  // Creates a key through inferboxctl --json and returns the response.
  inferbox::v1::CreateKeyResponse CreateWithCtl(const std::string& name, const std::string& role,
                                                std::vector<std::string> env = {}) {
    const auto result = Ctl({"keys", "create", "--name", name, "--role", role, "--json"}, env);
    EXPECT_EQ(result.exit_code, 0) << result.err;
    inferbox::v1::CreateKeyResponse created;
    const auto parsed = google::protobuf::util::JsonStringToMessage(result.out, &created);
    EXPECT_TRUE(parsed.ok()) << parsed.ToString() << "\n" << result.out;
    return created;
  }

  inferbox::testing::TempDir dir_;
  StatusBoard board_{"0.0.0-test", "test"};
  std::unique_ptr<daemon::KeyStore> keys_;
  std::unique_ptr<AdminServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

TEST_F(InferboxctlKeysTest, CreateJsonIsTheAdminMessageAndWarnsOnStderr) {
  const auto result = Ctl({"keys", "create", "--name", "ops", "--role", "ADMIN", "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  inferbox::v1::CreateKeyResponse created;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(result.out, &created).ok())
      << "stdout must be nothing but the JSON:\n"
      << result.out;
  EXPECT_EQ(created.key().name(), "ops");
  EXPECT_EQ(created.key().role(), inferbox::v1::KEY_ROLE_ADMIN);
  EXPECT_THAT(result.out, HasSubstr("\"secret\": \"ibx_"));
  EXPECT_THAT(result.err, HasSubstr("only time the key is shown"));
  EXPECT_TRUE(keys_->Authenticate("Bearer " + created.secret()).ok());
}

TEST_F(InferboxctlKeysTest, CreatePrintsTheKeyOnceWithLimits) {
  const auto result =
      Ctl({"keys", "create", "--name", "risk-team", "--models", "qwen3-0.6b,llama-3.1-8b",
           "--tokens-per-minute", "1000", "--tokens-per-day", "50000", "--max-concurrent", "4"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.out, HasSubstr("Created API key ibx_"));
  EXPECT_THAT(result.out, HasSubstr("(name \"risk-team\", role inference)"));
  EXPECT_THAT(result.out, HasSubstr("only time the key is shown"));
  EXPECT_THAT(result.out,
              MatchesRegex("(.|\n)*\n    ibx_[a-z2-7]{12}\\.[A-Za-z0-9_-]{43}\n(.|\n)*"));

  auto listed = keys_->List(false);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  const auto& limits = (*listed)[0].limits();
  EXPECT_THAT(limits.models(), ::testing::ElementsAre("qwen3-0.6b", "llama-3.1-8b"));
  EXPECT_EQ(limits.tokens_per_minute(), 1000u);
  EXPECT_EQ(limits.tokens_per_day(), 50000u);
  EXPECT_EQ(limits.max_concurrent_requests(), 4u);
}

TEST_F(InferboxctlKeysTest, ListShowsATableAndRevokedKeysOnlyWithAll) {
  const auto kept = CreateWithCtl("kept", "inference");
  const auto gone = CreateWithCtl("gone", "admin");
  const auto revoke = Ctl({"keys", "revoke", gone.key().id()});
  ASSERT_EQ(revoke.exit_code, 0) << revoke.err;
  EXPECT_THAT(revoke.out, HasSubstr("Revoked API key " + gone.key().id()));

  const auto valid = Ctl({"keys", "list"});
  ASSERT_EQ(valid.exit_code, 0) << valid.err;
  EXPECT_THAT(valid.out, MatchesRegex("ID +NAME +ROLE +CREATED +REVOKED +LIMITS\n(.|\n)*"));
  EXPECT_THAT(valid.out, HasSubstr(kept.key().id() + "  kept  inference  "));
  EXPECT_THAT(valid.out, Not(HasSubstr(gone.key().id())));

  const auto all = Ctl({"keys", "list", "--all"});
  ASSERT_EQ(all.exit_code, 0) << all.err;
  EXPECT_THAT(all.out, HasSubstr(gone.key().id()));
  EXPECT_THAT(all.out, MatchesRegex("(.|\n)*ibx_[a-z2-7]{12} +gone +admin +[0-9-]+ [0-9:]+Z +"
                                    "[0-9-]+ [0-9:]+Z(.|\n)*"))
      << "a revoked key shows when it was revoked";
  for (const auto& key : {kept, gone}) {
    EXPECT_THAT(all.out, Not(HasSubstr(key.secret().substr(key.secret().find('.') + 1))));
  }

  const auto json = Ctl({"keys", "list", "--all", "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  inferbox::v1::ListKeysResponse parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json.out, &parsed).ok()) << json.out;
  ASSERT_EQ(parsed.keys_size(), 2);
  EXPECT_TRUE(parsed.keys(1).has_revoked_at());
}

TEST_F(InferboxctlKeysTest, UpdateChangesOnlyWhatItNamesAndKeepsTheSecret) {
  const auto created =
      Ctl({"keys", "create", "--name", "risk-team", "--models", "qwen3-0.6b,llama-3.1-8b",
           "--tokens-per-minute", "1000", "--max-concurrent", "4", "--json"});
  ASSERT_EQ(created.exit_code, 0) << created.err;
  inferbox::v1::CreateKeyResponse key;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(created.out, &key).ok());

  const auto lowered = Ctl({"keys", "update", key.key().id(), "--tokens-per-minute", "200"});
  ASSERT_EQ(lowered.exit_code, 0) << lowered.err;
  EXPECT_THAT(lowered.out, HasSubstr("Updated API key " + key.key().id()));
  EXPECT_THAT(lowered.out, HasSubstr("tokens/min=200"));
  EXPECT_THAT(lowered.out, HasSubstr("secret is unchanged"));
  auto caller = keys_->Authenticate("Bearer " + key.secret());
  ASSERT_TRUE(caller.ok()) << caller.status().ToString();
  EXPECT_EQ(caller->tokens_per_minute, 200u);
  EXPECT_THAT(caller->models, ::testing::ElementsAre("qwen3-0.6b", "llama-3.1-8b"))
      << "limits the command did not name are kept";
  EXPECT_EQ(caller->max_concurrent_requests, 4u);

  const auto widened =
      Ctl({"keys", "update", key.key().id(), "--all-models", "--name", "risk", "--json"});
  ASSERT_EQ(widened.exit_code, 0) << widened.err;
  inferbox::v1::UpdateKeyResponse updated;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(widened.out, &updated).ok())
      << widened.out;
  EXPECT_EQ(updated.key().name(), "risk");
  EXPECT_EQ(updated.key().limits().models_size(), 0);
  EXPECT_EQ(updated.key().limits().tokens_per_minute(), 200u);

  const auto both = Ctl({"keys", "update", key.key().id(), "--all-models", "--models", "x"});
  EXPECT_NE(both.exit_code, 0) << "--models and --all-models exclude each other";
  const auto unknown = Ctl({"keys", "update", "ibx_aaaaaaaaaaaa", "--max-concurrent", "1"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_THAT(unknown.err, HasSubstr("keys update: no API key with id ibx_aaaaaaaaaaaa"));
}

TEST_F(InferboxctlKeysTest, AnEmptyListSaysHowToCreateAKey) {
  const auto result = Ctl({"keys", "list"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.out, HasSubstr("inferboxctl keys create --name NAME"));
}

TEST_F(InferboxctlKeysTest, RevokeErrorsAreClearAndExitNonZero) {
  const auto unknown = Ctl({"keys", "revoke", "ibx_aaaaaaaaaaaa"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_THAT(unknown.err, HasSubstr("keys revoke: no API key with id ibx_aaaaaaaaaaaa"));
  EXPECT_EQ(unknown.out, "");

  const auto key = CreateWithCtl("k", "inference");
  const auto token = Ctl({"keys", "revoke", key.secret()});
  EXPECT_EQ(token.exit_code, 1);
  EXPECT_THAT(token.err, HasSubstr("not a key id"));
  EXPECT_THAT(token.err, Not(HasSubstr(key.secret().substr(key.secret().find('.') + 1))));
}

TEST_F(InferboxctlKeysTest, RequiredKeysComeFromTheFlagOrTheEnvironment) {
  const auto admin = CreateWithCtl("admin", "admin");
  const auto inference = CreateWithCtl("inference", "inference");
  keys_->set_require_keys(true);

  const auto without = Ctl({"keys", "list"});
  EXPECT_EQ(without.exit_code, 1);
  EXPECT_THAT(without.err, HasSubstr("keys list refused: missing API key"));
  EXPECT_THAT(without.err, HasSubstr("pass one with --api-key or set INFERBOX_API_KEY"));
  EXPECT_EQ(without.out, "");

  const auto status_without = Ctl({"status"});
  EXPECT_EQ(status_without.exit_code, 1);
  EXPECT_THAT(status_without.err, HasSubstr("status refused: missing API key"));

  const auto flag = Ctl({"--api-key", admin.secret(), "keys", "list"});
  EXPECT_EQ(flag.exit_code, 0) << flag.err;
  EXPECT_THAT(flag.out, HasSubstr(admin.key().id()));

  // A key read from a file often ends in a newline.
  const auto env = Ctl({"keys", "list"}, {"INFERBOX_API_KEY=" + admin.secret() + "\n"});
  EXPECT_EQ(env.exit_code, 0) << env.err;

  const auto status = Ctl({"--api-key", inference.secret(), "status"});
  EXPECT_EQ(status.exit_code, 1) << "every Admin RPC needs an admin key (R6.10)";
  EXPECT_THAT(status.err, HasSubstr("status refused: GetStatus needs a key with role admin"));

  const auto wrong_role =
      Ctl({"keys", "create", "--name", "x"}, {"INFERBOX_API_KEY=" + inference.secret()});
  EXPECT_EQ(wrong_role.exit_code, 1);
  EXPECT_THAT(wrong_role.err, HasSubstr("keys create refused: CreateKey needs a key with role "
                                        "admin; key " +
                                        inference.key().id() + " has role inference"));

  std::string forged = admin.secret();
  forged.back() = forged.back() == 'A' ? 'B' : 'A';
  const auto bad = Ctl({"--api-key", forged, "keys", "list"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.err, HasSubstr("is not valid"));
  EXPECT_THAT(bad.err, HasSubstr("Check the key given with --api-key or INFERBOX_API_KEY"));
  EXPECT_THAT(bad.err, Not(HasSubstr(forged.substr(forged.find('.') + 1))));
}

TEST_F(InferboxctlKeysTest, AKeyThatCannotBeSentIsRefusedBeforeConnecting) {
  const auto result = Ctl({"--api-key", "ibx_abc def", "keys", "list"});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr("contains spaces or characters that cannot be sent"));
}

TEST_F(InferboxctlKeysTest, UsageErrorsAreRefusedByTheParser) {
  EXPECT_NE(Ctl({"keys", "create"}).exit_code, 0) << "--name is required";
  EXPECT_NE(Ctl({"keys", "create", "--name", "x", "--role", "root"}).exit_code, 0);
  EXPECT_NE(Ctl({"keys", "create", "--name", "x", "--tokens-per-day", "-5"}).exit_code, 0);
  EXPECT_NE(Ctl({"keys", "revoke"}).exit_code, 0) << "the id is required";
  EXPECT_NE(Ctl({"keys"}).exit_code, 0) << "a keys subcommand is required";
  auto listed = keys_->List(true);
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->empty());
}

}  // namespace
}  // namespace inferbox::admin
