// The Admin service's key RPCs and who may call them (R2.4: UNAUTHENTICATED without a valid
// key, PERMISSION_DENIED with a valid key of the wrong role), over an in-process channel.
#include <grpcpp/grpcpp.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "inferbox/admin/admin_service.h"
#include "inferbox/daemon/key_store.h"
#include "temp_dir.h"

namespace inferbox::admin {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

enum class Rpc { kGetStatus, kCreateKey, kListKeys, kRevokeKey };

std::string RpcName(Rpc rpc) {
  switch (rpc) {
    case Rpc::kGetStatus: return "GetStatus";
    case Rpc::kCreateKey: return "CreateKey";
    case Rpc::kListKeys: return "ListKeys";
    case Rpc::kRevokeKey: return "RevokeKey";
  }
  return "?";
}

class AdminServer {
 public:
  AdminServer(daemon::KeyStore* keys, const daemon::Authenticator* authenticator)
      : board_("0.0.0-test", "test"), service_(board_, keys, authenticator) {
    grpc::ServerBuilder builder;
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    stub_ = inferbox::v1::Admin::NewStub(server_->InProcessChannel(grpc::ChannelArguments()));
  }
  ~AdminServer() { server_->Shutdown(); }

  // Calls `rpc` with one authorization metadata entry per element of `authorization`.
  // CreateKey asks for an inference key named "new"; RevokeKey revokes `revoke_id`.
  grpc::Status Call(Rpc rpc, const std::vector<std::string>& authorization,
                    const std::string& revoke_id = "ibx_aaaaaaaaaaaa") {
    grpc::ClientContext context;
    for (const auto& value : authorization) context.AddMetadata("authorization", value);
    switch (rpc) {
      case Rpc::kGetStatus: {
        inferbox::v1::GetStatusResponse response;
        return stub_->GetStatus(&context, {}, &response);
      }
      case Rpc::kCreateKey: {
        inferbox::v1::CreateKeyRequest request;
        request.set_name("new");
        return stub_->CreateKey(&context, request, &last_created_);
      }
      case Rpc::kListKeys: {
        inferbox::v1::ListKeysRequest request;
        request.set_include_revoked(true);
        return stub_->ListKeys(&context, request, &last_listed_);
      }
      case Rpc::kRevokeKey: {
        inferbox::v1::RevokeKeyRequest request;
        request.set_id(revoke_id);
        inferbox::v1::RevokeKeyResponse response;
        return stub_->RevokeKey(&context, request, &response);
      }
    }
    return grpc::Status::CANCELLED;
  }

  inferbox::v1::Admin::Stub& stub() { return *stub_; }
  const inferbox::v1::CreateKeyResponse& last_created() const { return last_created_; }
  const inferbox::v1::ListKeysResponse& last_listed() const { return last_listed_; }

 private:
  StatusBoard board_;
  AdminServiceImpl service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<inferbox::v1::Admin::Stub> stub_;
  inferbox::v1::CreateKeyResponse last_created_;
  inferbox::v1::ListKeysResponse last_listed_;
};

class AdminKeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = daemon::KeyStore::Open(dir_ / "inferbox.db", /*require_keys=*/true);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    keys_ = std::move(store).value();
    inference_key_ = Create("inference", inferbox::v1::KEY_ROLE_INFERENCE);
    admin_key_ = Create("admin", inferbox::v1::KEY_ROLE_ADMIN);
    revoked_admin_key_ = Create("revoked", inferbox::v1::KEY_ROLE_ADMIN);
    auto revoked_id = revoked_admin_key_.substr(7, revoked_admin_key_.find('.') - 7);
    ASSERT_TRUE(keys_->Revoke(revoked_id).ok());
  }

  // "Bearer <token>" for a new key.
  std::string Create(const std::string& name, inferbox::v1::KeyRole role) {
    auto created = keys_->Create(name, role, {});
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    return created.ok() ? "Bearer " + created->secret() : "";
  }

  inferbox::testing::TempDir dir_;
  std::unique_ptr<daemon::KeyStore> keys_;
  std::string inference_key_;
  std::string admin_key_;
  std::string revoked_admin_key_;
};

TEST_F(AdminKeysTest, EachCallerGetsTheCodeItsKeyEntitlesItTo) {
  struct Case {
    std::string caller;
    bool require_keys;
    std::vector<std::string> authorization;
    Rpc rpc;
    grpc::StatusCode expected;
  };
  const std::vector<std::string> none;
  const std::vector<std::string> inference = {inference_key_};
  const std::vector<std::string> admin = {admin_key_};
  const std::vector<std::string> revoked = {revoked_admin_key_};
  const std::vector<std::string> garbage = {"Bearer not-a-key"};
  const std::vector<std::string> two = {admin_key_, admin_key_};
  using enum grpc::StatusCode;
  const std::vector<Case> cases = {
      // A keyless box: anonymous callers are admins; a presented key is still checked.
      {"anonymous, keys optional", false, none, Rpc::kGetStatus, OK},
      {"anonymous, keys optional", false, none, Rpc::kListKeys, OK},
      {"anonymous, keys optional", false, none, Rpc::kCreateKey, OK},
      {"anonymous, keys optional", false, none, Rpc::kRevokeKey, NOT_FOUND},
      {"inference key, keys optional", false, inference, Rpc::kCreateKey, PERMISSION_DENIED},
      // A keyless box serves whoever reaches it: a key it does not accept counts as none.
      {"garbage key, keys optional", false, garbage, Rpc::kGetStatus, OK},
      {"garbage key, keys optional", false, garbage, Rpc::kCreateKey, OK},
      {"revoked key, keys optional", false, revoked, Rpc::kListKeys, OK},
      // Keys required.
      {"anonymous", true, none, Rpc::kGetStatus, UNAUTHENTICATED},
      {"anonymous", true, none, Rpc::kCreateKey, UNAUTHENTICATED},
      {"anonymous", true, none, Rpc::kListKeys, UNAUTHENTICATED},
      {"anonymous", true, none, Rpc::kRevokeKey, UNAUTHENTICATED},
      {"garbage key", true, garbage, Rpc::kListKeys, UNAUTHENTICATED},
      {"revoked admin key", true, revoked, Rpc::kListKeys, UNAUTHENTICATED},
      {"two authorization entries", true, two, Rpc::kListKeys, UNAUTHENTICATED},
      // Every Admin RPC needs role admin, GetStatus included (R6.10).
      {"inference key", true, inference, Rpc::kGetStatus, PERMISSION_DENIED},
      {"inference key", true, inference, Rpc::kCreateKey, PERMISSION_DENIED},
      {"inference key", true, inference, Rpc::kListKeys, PERMISSION_DENIED},
      {"inference key", true, inference, Rpc::kRevokeKey, PERMISSION_DENIED},
      {"admin key", true, admin, Rpc::kGetStatus, OK},
      {"admin key", true, admin, Rpc::kCreateKey, OK},
      {"admin key", true, admin, Rpc::kListKeys, OK},
      {"admin key", true, admin, Rpc::kRevokeKey, NOT_FOUND},
  };
  AdminServer server(keys_.get(), nullptr);
  for (const auto& c : cases) {
    keys_->set_require_keys(c.require_keys);
    const grpc::Status status = server.Call(c.rpc, c.authorization);
    EXPECT_EQ(status.error_code(), c.expected)
        << c.caller << " calling " << RpcName(c.rpc) << " expected code " << c.expected << ", got "
        << status.error_code() << ": " << status.error_message();
  }
}

TEST_F(AdminKeysTest, RefusalsSayWhatIsMissing) {
  AdminServer server(keys_.get(), nullptr);
  const grpc::Status anonymous = server.Call(Rpc::kListKeys, {});
  EXPECT_THAT(anonymous.error_message(), HasSubstr("missing API key"));
  const grpc::Status inference = server.Call(Rpc::kListKeys, {inference_key_});
  EXPECT_THAT(inference.error_message(), HasSubstr("needs a key with role admin"));
  EXPECT_THAT(inference.error_message(), HasSubstr("has role inference"));
  const grpc::Status two = server.Call(Rpc::kListKeys, {admin_key_, admin_key_});
  EXPECT_THAT(two.error_message(), HasSubstr("more than one authorization"));
  EXPECT_THAT(two.error_message(), Not(HasSubstr(admin_key_.substr(25))));
}

TEST_F(AdminKeysTest, CreateListRevokeRoundTrip) {
  AdminServer server(keys_.get(), nullptr);
  grpc::ClientContext create_context;
  create_context.AddMetadata("authorization", admin_key_);
  inferbox::v1::CreateKeyRequest request;
  request.set_name("risk-team");
  request.set_role(inferbox::v1::KEY_ROLE_INFERENCE);
  request.mutable_limits()->add_models("qwen3-0.6b");
  request.mutable_limits()->set_tokens_per_day(100000);
  inferbox::v1::CreateKeyResponse created;
  ASSERT_TRUE(server.stub().CreateKey(&create_context, request, &created).ok());
  EXPECT_EQ(created.key().name(), "risk-team");
  EXPECT_EQ(created.key().limits().tokens_per_day(), 100000u);
  EXPECT_TRUE(created.secret().starts_with(created.key().id() + "."));
  EXPECT_TRUE(keys_->Authenticate("Bearer " + created.secret()).ok());

  ASSERT_TRUE(server.Call(Rpc::kListKeys, {admin_key_}).ok());
  const auto& listed = server.last_listed();
  ASSERT_EQ(listed.keys_size(), 4);
  EXPECT_EQ(listed.keys(3).id(), created.key().id());
  EXPECT_EQ(listed.keys(3).limits().models(0), "qwen3-0.6b");
  const std::string secret = created.secret().substr(created.secret().find('.') + 1);
  EXPECT_THAT(listed.SerializeAsString(), Not(HasSubstr(secret))) << "ListKeys shows no secret";

  ASSERT_TRUE(server.Call(Rpc::kRevokeKey, {admin_key_}, created.key().id()).ok());
  EXPECT_EQ(keys_->Authenticate("Bearer " + created.secret()).status().code(),
            StatusCode::kUnauthenticated);
}

TEST_F(AdminKeysTest, AnAdminWhoRevokesTheirOwnKeyIsLockedOutAtOnce) {
  AdminServer server(keys_.get(), nullptr);
  const std::string id = admin_key_.substr(7, admin_key_.find('.') - 7);
  ASSERT_TRUE(server.Call(Rpc::kRevokeKey, {admin_key_}, id).ok());
  EXPECT_EQ(server.Call(Rpc::kListKeys, {admin_key_}).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(AdminKeysTest, BadRequestsAreInvalidArgument) {
  AdminServer server(keys_.get(), nullptr);
  grpc::ClientContext context;
  context.AddMetadata("authorization", admin_key_);
  inferbox::v1::CreateKeyRequest request;  // No name.
  inferbox::v1::CreateKeyResponse response;
  const grpc::Status status = server.stub().CreateKey(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("needs a name"));

  const grpc::Status revoke = server.Call(Rpc::kRevokeKey, {admin_key_}, "risk-team");
  EXPECT_EQ(revoke.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(revoke.error_message(), HasSubstr("not a key id"));
}

TEST_F(AdminKeysTest, WithoutAKeyStoreKeyRpcsAreUnavailableAndStatusWorksAsBefore) {
  AdminServer server(nullptr, nullptr);
  EXPECT_TRUE(server.Call(Rpc::kGetStatus, {}).ok());
  for (Rpc rpc : {Rpc::kCreateKey, Rpc::kListKeys, Rpc::kRevokeKey}) {
    const grpc::Status status = server.Call(rpc, {});
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << RpcName(rpc);
    EXPECT_EQ(status.error_message(), "key store not configured") << RpcName(rpc);
  }
}

TEST_F(AdminKeysTest, AuthenticationComesBeforeReportingAMissingKeyStore) {
  keys_->set_require_keys(true);
  AdminServer server(nullptr, keys_.get());
  EXPECT_EQ(server.Call(Rpc::kListKeys, {}).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(server.Call(Rpc::kListKeys, {inference_key_}).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(server.Call(Rpc::kListKeys, {admin_key_}).error_code(), grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace inferbox::admin
