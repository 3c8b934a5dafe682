// The Admin service's audit log and who may call it: every method of inferbox.v1.Admin (from
// its descriptor, so that an RPC added later is covered too) needs an admin key and leaves an
// audit event, refusals included; the log is append-only and holds no secrets. Also the
// GetUsage RPC over the ledger.
#include <sqlite3.h>

#include <fstream>
#include <iterator>

#include <gmock/gmock.h>
#include <google/protobuf/descriptor.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "inferbox/admin/admin_service.h"
#include "inferbox/admin/audit_log.h"
#include "inferbox/daemon/key_store.h"
#include "inferbox/daemon/usage_ledger.h"
#include "temp_dir.h"

namespace inferbox::admin {
namespace {

namespace api = ::inferbox::v1;
using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::Not;

// 2026-01-01T12:00:00Z, advanced by a second per reading.
struct FakeClock {
  std::chrono::system_clock::time_point now{std::chrono::seconds(1767268800)};
  AuditLog::Clock AsClock() {
    return [this] {
      now += 1s;
      return now;
    };
  }
};

std::string ReadBytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Calls any method by its full name with an empty request message, as a generic streaming
// call (which serves unary and server-streaming methods alike), and returns its status.
grpc::Status CallByName(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                        const std::vector<std::string>& authorization) {
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue queue;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 10s);
  for (const auto& value : authorization) context.AddMetadata("authorization", value);
  auto call = stub.PrepareCall(&context, method, &queue);
  void* tag = nullptr;
  bool ok = false;
  auto step = [&] {
    EXPECT_TRUE(queue.Next(&tag, &ok));
    return ok;
  };
  call->StartCall(nullptr);
  step();
  grpc::Slice nothing("");
  const grpc::ByteBuffer empty(&nothing, 1);  // An empty message: every field at its default.
  call->Write(empty, nullptr);
  step();
  call->WritesDone(nullptr);
  step();
  grpc::ByteBuffer response;
  do {
    call->Read(&response, nullptr);
  } while (step());
  grpc::Status status;
  call->Finish(&status, nullptr);
  step();
  return status;
}

class AdminAuditTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto keys = daemon::KeyStore::Open(database(), /*require_keys=*/true);
    ASSERT_TRUE(keys.ok()) << keys.status().ToString();
    keys_ = std::move(keys).value();
    auto ledger = daemon::UsageLedger::Open(database());
    ASSERT_TRUE(ledger.ok()) << ledger.status().ToString();
    ledger_ = std::move(ledger).value();
    auto audit = AuditLog::Open(database(), clock_.AsClock());
    ASSERT_TRUE(audit.ok()) << audit.status().ToString();
    audit_ = std::move(audit).value();
    admin_ = Create("ops", api::KEY_ROLE_ADMIN);
    inference_ = Create("risk-team", api::KEY_ROLE_INFERENCE);

    service_ = std::make_unique<AdminServiceImpl>(board_, keys_.get(), nullptr, ledger_.get(),
                                                  audit_.get());
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    channel_ = server_->InProcessChannel(grpc::ChannelArguments());
    stub_ = api::Admin::NewStub(channel_);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  std::filesystem::path database() const { return dir_ / "inferbox.db"; }

  api::CreateKeyResponse Create(const std::string& name, api::KeyRole role) {
    auto created = keys_->Create(name, role, {});
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    return created.ok() ? std::move(created).value() : api::CreateKeyResponse();
  }
  static std::string Bearer(const api::CreateKeyResponse& key) { return "Bearer " + key.secret(); }

  std::vector<api::AuditEvent> Events(uint32_t limit) {
    auto events = audit_->List(limit, std::nullopt);
    EXPECT_TRUE(events.ok()) << events.status().ToString();
    return events.ok() ? std::move(events).value() : std::vector<api::AuditEvent>();
  }

  inferbox::testing::TempDir dir_;
  FakeClock clock_;
  std::unique_ptr<daemon::KeyStore> keys_;
  std::unique_ptr<daemon::UsageLedger> ledger_;
  std::unique_ptr<AuditLog> audit_;
  api::CreateKeyResponse admin_;
  api::CreateKeyResponse inference_;
  StatusBoard board_{"0.0.0-test", "test"};
  std::unique_ptr<AdminServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<api::Admin::Stub> stub_;
};

TEST_F(AdminAuditTest, EveryAdminRpcNeedsAnAdminKeyAndIsAudited) {
  const auto* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName("inferbox.v1.Admin");
  ASSERT_NE(service, nullptr);
  std::vector<std::string> implemented;
  for (int i = 0; i < service->method_count(); ++i) {
    const std::string name = service->method(i)->name();
    const std::string path = "/inferbox.v1.Admin/" + name;
    const grpc::Status anonymous = CallByName(channel_, path, {});
    const grpc::Status inference = CallByName(channel_, path, {Bearer(inference_)});
    const grpc::Status admin = CallByName(channel_, path, {Bearer(admin_)});
    if (admin.error_code() == grpc::StatusCode::UNIMPLEMENTED &&
        anonymous.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      // Not served yet (the generated base class answers): nothing it could do.
      continue;
    }
    implemented.push_back(name);
    EXPECT_EQ(anonymous.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << name << " must refuse a caller without a key: " << anonymous.error_message();
    EXPECT_EQ(inference.error_code(), grpc::StatusCode::PERMISSION_DENIED)
        << name << " must refuse an inference key: " << inference.error_message();
    EXPECT_THAT(inference.error_message(), HasSubstr(name + " needs a key with role admin"));
    EXPECT_NE(admin.error_code(), grpc::StatusCode::PERMISSION_DENIED) << name;
    EXPECT_NE(admin.error_code(), grpc::StatusCode::UNAUTHENTICATED) << name;

    const std::vector<api::AuditEvent> events = Events(3);
    ASSERT_EQ(events.size(), 3u);
    // Newest first: the admin's call, the inference key's, the anonymous one.
    for (const auto& event : events) EXPECT_EQ(event.rpc(), name) << "every call is recorded";
    EXPECT_EQ(events[0].code(), GrpcCodeName(admin.error_code()));
    EXPECT_EQ(events[0].caller_key_id(), admin_.key().id());
    EXPECT_EQ(events[1].code(), "PERMISSION_DENIED");
    EXPECT_EQ(events[1].caller_key_id(), inference_.key().id()) << "who tried is recorded";
    EXPECT_THAT(events[1].message(), HasSubstr("has role inference"));
    EXPECT_EQ(events[2].code(), "UNAUTHENTICATED");
    EXPECT_THAT(events[2].message(), HasSubstr("missing API key"));
    EXPECT_EQ(events[0].peer(), events[2].peer());
  }
  for (const char* rpc :
       {"GetStatus", "CreateKey", "ListKeys", "RevokeKey", "GetUsage", "ListAuditEvents"}) {
    EXPECT_THAT(implemented, ::testing::Contains(rpc));
  }
}

TEST_F(AdminAuditTest, EventsSayWhoDidWhatWithoutSecrets) {
  grpc::ClientContext create_context;
  create_context.AddMetadata("authorization", Bearer(admin_));
  api::CreateKeyRequest create;
  create.set_name("batch-jobs");
  create.mutable_limits()->set_tokens_per_minute(5000);
  api::CreateKeyResponse created;
  ASSERT_TRUE(stub_->CreateKey(&create_context, create, &created).ok());

  // An admin pastes a whole token where the id belongs.
  grpc::ClientContext revoke_context;
  revoke_context.AddMetadata("authorization", Bearer(admin_));
  api::RevokeKeyRequest revoke;
  revoke.set_id(created.secret());
  api::RevokeKeyResponse revoked;
  EXPECT_EQ(stub_->RevokeKey(&revoke_context, revoke, &revoked).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  grpc::ClientContext list_context;
  list_context.AddMetadata("authorization", Bearer(admin_));
  api::ListAuditEventsResponse listed;
  ASSERT_TRUE(stub_->ListAuditEvents(&list_context, {}, &listed).ok());
  ASSERT_EQ(listed.events_size(), 2) << "the listing itself is recorded after it answers";
  const api::AuditEvent& failed_revoke = listed.events(0);
  const api::AuditEvent& create_event = listed.events(1);
  EXPECT_GT(failed_revoke.id(), create_event.id());
  EXPECT_GT(failed_revoke.time().seconds(), create_event.time().seconds());

  EXPECT_EQ(create_event.rpc(), "CreateKey");
  EXPECT_EQ(create_event.code(), "OK");
  EXPECT_EQ(create_event.caller_key_id(), admin_.key().id());
  EXPECT_EQ(create_event.detail(), "created key " + created.key().id());
  EXPECT_THAT(create_event.request(), HasSubstr("\"name\":\"batch-jobs\""));
  EXPECT_THAT(create_event.request(), HasSubstr("\"tokens_per_minute\":\"5000\""));

  EXPECT_EQ(failed_revoke.rpc(), "RevokeKey");
  EXPECT_EQ(failed_revoke.code(), "INVALID_ARGUMENT");
  EXPECT_THAT(failed_revoke.message(), HasSubstr("not a key id"));
  EXPECT_THAT(failed_revoke.request(), HasSubstr(created.key().id() + ".[redacted]"));

  const std::string secret = created.secret().substr(created.secret().find('.') + 1);
  for (const auto& event : listed.events()) {
    EXPECT_THAT(event.SerializeAsString(), Not(HasSubstr(secret)));
  }
  for (const char* suffix : {"", "-wal"}) {
    EXPECT_THAT(ReadBytes(database().string() + suffix), Not(HasSubstr(secret)))
        << "no secret in the database file " << suffix;
  }
}

TEST_F(AdminAuditTest, TheLogIsAppendOnly) {
  ASSERT_TRUE(audit_->Append({}).ok());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(database().c_str(), &db), SQLITE_OK);
  for (const char* sql : {"UPDATE audit_events SET code = 'OK'", "DELETE FROM audit_events"}) {
    char* error = nullptr;
    EXPECT_NE(sqlite3_exec(db, sql, nullptr, nullptr, &error), SQLITE_OK) << sql;
    EXPECT_THAT(error != nullptr ? std::string(error) : "", HasSubstr("append-only")) << sql;
    sqlite3_free(error);
  }
  sqlite3_close(db);
  EXPECT_EQ(Events(10).size(), 1u);
}

TEST_F(AdminAuditTest, ListingTakesTheNewestAndASince) {
  for (int i = 0; i < 5; ++i) {
    api::AuditEvent event;
    event.set_rpc("Rpc" + std::to_string(i));
    ASSERT_TRUE(audit_->Append(event).ok());
  }
  const auto newest = Events(2);
  ASSERT_EQ(newest.size(), 2u);
  EXPECT_EQ(newest[0].rpc(), "Rpc4");
  EXPECT_EQ(newest[1].rpc(), "Rpc3");
  // The clock gave the events 12:00:01 .. 12:00:05.
  auto since = audit_->List(
      100, std::chrono::system_clock::time_point(std::chrono::seconds(1767268800 + 4)));
  ASSERT_TRUE(since.ok());
  ASSERT_EQ(since->size(), 2u);
  EXPECT_EQ(since->back().rpc(), "Rpc3");

  grpc::ClientContext context;
  context.AddMetadata("authorization", Bearer(admin_));
  api::ListAuditEventsRequest too_many;
  too_many.set_limit(10001);
  api::ListAuditEventsResponse response;
  EXPECT_EQ(stub_->ListAuditEvents(&context, too_many, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(SummarizeRequestTest, RedactsSecretsAndKeepsTheRest) {
  api::CreateKeyResponse with_secret_field;
  with_secret_field.set_secret("ibx_abcdefghijkl.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
  with_secret_field.mutable_key()->set_name("ops");
  const std::string by_name = SummarizeRequest(with_secret_field);
  EXPECT_THAT(by_name, HasSubstr("\"secret\":\"[redacted]\""));
  EXPECT_THAT(by_name, HasSubstr("\"name\":\"ops\""));

  api::RevokeKeyRequest pasted_token;
  pasted_token.set_id("Bearer ibx_abcdefghijkl.s3cr3t-s3cr3t_s3cr3t and more");
  EXPECT_EQ(SummarizeRequest(pasted_token),
            R"({"id":"Bearer ibx_abcdefghijkl.[redacted] and more"})");

  api::InstallModelRequest mirror;
  mirror.set_id("qwen3-8b");
  mirror.set_mirror_url("https://user:p4ss@mirror.example/models/qwen3?sig=s3cr3t#frag");
  EXPECT_EQ(
      SummarizeRequest(mirror),
      R"({"id":"qwen3-8b","mirror_url":"https://[redacted]@mirror.example/models/qwen3?[redacted]#frag"})");

  api::CreateKeyRequest limits;
  limits.mutable_limits()->set_tokens_per_minute(10);
  EXPECT_THAT(SummarizeRequest(limits), HasSubstr("\"tokens_per_minute\":\"10\""))
      << "tokens_per_minute is not a token";

  api::CreateKeyRequest huge;
  huge.set_name(std::string(5000, 'x'));
  EXPECT_LE(SummarizeRequest(huge).size(), 2048u);
}

TEST_F(AdminAuditTest, GetUsageCountsWhatJustEndedAndNamesTheKeys) {
  const auto now = std::chrono::system_clock::now();
  ledger_->Record({.finished_at = now,
                   .key_id = inference_.key().id(),
                   .model = "qwen",
                   .api = "http",
                   .prompt_tokens = 7,
                   .completion_tokens = 9,
                   .outcome = "stop"});
  grpc::ClientContext context;
  context.AddMetadata("authorization", Bearer(admin_));
  api::GetUsageRequest request;
  request.add_group_by(api::USAGE_DIMENSION_KEY);
  api::GetUsageResponse response;
  ASSERT_TRUE(stub_->GetUsage(&context, request, &response).ok());
  ASSERT_EQ(response.rows_size(), 1) << "GetUsage flushes the rows still queued";
  EXPECT_EQ(response.rows(0).key_id(), inference_.key().id());
  EXPECT_EQ(response.rows(0).key_name(), "risk-team");
  EXPECT_EQ(response.rows(0).prompt_tokens(), 7u);
  EXPECT_EQ(response.rows(0).completion_tokens(), 9u);
  EXPECT_TRUE(response.rows(0).model().empty());
}

TEST(AdminServiceWithoutStoresTest, UsageAndAuditAreUnavailableAndNothingIsRecorded) {
  StatusBoard board("0.0.0-test", "test");
  AdminServiceImpl service(board);
  grpc::ServerBuilder builder;
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  auto stub = api::Admin::NewStub(server->InProcessChannel(grpc::ChannelArguments()));
  grpc::ClientContext usage_context;
  api::GetUsageResponse usage;
  EXPECT_EQ(stub->GetUsage(&usage_context, {}, &usage).error_code(), grpc::StatusCode::UNAVAILABLE);
  grpc::ClientContext audit_context;
  api::ListAuditEventsResponse events;
  EXPECT_EQ(stub->ListAuditEvents(&audit_context, {}, &events).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  grpc::ClientContext status_context;
  api::GetStatusResponse status;
  EXPECT_TRUE(stub->GetStatus(&status_context, {}, &status).ok());
  server->Shutdown();
}

}  // namespace
}  // namespace inferbox::admin
