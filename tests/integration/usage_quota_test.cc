// Quotas, the usage ledger and the audit log through the real daemon, a real engine and
// inferboxctl, on a box that requires keys (made in its database before it starts): a key's
// limits refuse both APIs alike (HTTP 429 + Retry-After, gRPC RESOURCE_EXHAUSTED + RetryInfo
// + QuotaFailure) and still do after a restart; the ledger's rows are exactly what the
// clients received, cancelled and failed requests included; `inferboxctl usage` exports them
// as CSV; every Admin call needs an admin key and is audited.
#include <signal.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <thread>

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "daemon_fixture.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "http_client.h"
#include "inferbox/daemon/key_store.h"
#include "inferbox/daemon/usage_ledger.h"
#include "inferbox/v1/admin.grpc.pb.h"
#include "inferbox/v1/inference.grpc.pb.h"
#include "openai_client.h"
#include "tiny_model.h"

namespace inferbox::testing {
namespace {

namespace api = ::inferbox::v1;
namespace json = boost::json;
using daemon::openai_test::Reply;
using namespace std::chrono_literals;
using ::testing::HasSubstr;

// What a RESOURCE_EXHAUSTED carried in its details.
struct Refusal {
  std::chrono::nanoseconds retry_delay{0};
  std::string quota_subject;
};

Refusal DetailsOf(const grpc::Status& status) {
  Refusal refusal;
  google::rpc::Status details;
  EXPECT_TRUE(details.ParseFromString(status.error_details())) << "no google.rpc.Status details";
  for (const auto& detail : details.details()) {
    google::rpc::RetryInfo retry;
    google::rpc::QuotaFailure quota;
    if (detail.UnpackTo(&retry)) {
      refusal.retry_delay = std::chrono::seconds(retry.retry_delay().seconds()) +
                            std::chrono::nanoseconds(retry.retry_delay().nanos());
    } else if (detail.UnpackTo(&quota) && quota.violations_size() == 1) {
      refusal.quota_subject = quota.violations(0).subject();
    }
  }
  return refusal;
}

// Seconds from `now` to the next 00:00 UTC.
int64_t SecondsToUtcMidnight(std::chrono::system_clock::time_point now) {
  const int64_t seconds =
      std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  return 86400 - seconds % 86400;
}

class UsageQuotaTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new TempDir();
    MakeTinyModel(scratch_->path() / "model", "qwen3", {"--arch", "qwen3", "--seed", "5"},
                  scratch_->path());
  }
  static void TearDownTestSuite() { delete scratch_; }

  std::filesystem::path database() const { return dir_ / "daemon-state" / "inferbox.db"; }

  // Keys are made in the box's database before the daemon starts (it reads them at start).
  std::string CreateKey(const std::string& name, api::KeyRole role, api::KeyLimits limits = {}) {
    std::filesystem::create_directories(database().parent_path());
    auto store = daemon::KeyStore::Open(database(), true);
    EXPECT_TRUE(store.ok()) << store.status().ToString();
    if (!store.ok()) return "";
    auto created = (*store)->Create(name, role, limits);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    return created.ok() ? created->secret() : "";
  }
  static std::string IdOf(const std::string& token) { return token.substr(0, token.find('.')); }

  // A box that requires keys and serves the tiny model (none with `with_model` false).
  void Start(bool with_model = true) {
    ASSERT_TRUE(std::filesystem::exists(scratch_->path() / "model" / "config.json"));
    std::string config = TestConfig() + "[auth]\nrequire_keys = true\n";
    if (with_model) {
      config += "[engines]\nexecutable = \"" + std::string(INFERBOX_ENGINE_PATH) +
                "\"\n[[models]]\nname = \"tiny\"\npath = \"" +
                (scratch_->path() / "model").string() + "\"\nkv_cache_gib = 0.1\n";
    }
    daemon_ = std::make_unique<DaemonProcess>(dir_, DaemonOptions{.config_text = config});
    ASSERT_TRUE(daemon_->WaitReady());
    if (with_model) {
      ASSERT_TRUE(daemon_->WaitInferenceServing());
    }
    channel_ = grpc::CreateChannel(daemon_->grpc_address(), grpc::InsecureChannelCredentials());
    inference_ = api::Inference::NewStub(channel_);
    admin_stub_ = api::Admin::NewStub(channel_);
  }

  void Restart() {
    channel_.reset();
    inference_.reset();
    admin_stub_.reset();
    daemon_->process().Signal(SIGTERM);
    const auto exit_code = daemon_->process().WaitForExit(15s);
    ASSERT_TRUE(exit_code) << "inferboxd still running after SIGTERM";
    ASSERT_EQ(*exit_code, 0) << daemon_->Logs();
    daemon_.reset();
    ASSERT_NO_FATAL_FAILURE(Start());
  }

  static api::ChatRequest Chat(uint32_t max_tokens) { return TinyChat(max_tokens); }
  ChatResult GrpcChat(const std::string& key, const api::ChatRequest& request) {
    return RunChat(*inference_, request, key);
  }
  // The usage the last chunk of a finished chat carried.
  static api::Usage UsageOf(const ChatResult& chat) {
    return chat.chunks.empty() ? api::Usage() : chat.chunks.back().usage();
  }

  Reply Http(const std::string& key, const std::string& path, const std::string& body) {
    daemon::openai_test::Client client;
    return client.Request("POST", "http://" + daemon_->http_address() + path, &body,
                          {"Authorization: Bearer " + key});
  }
  Reply HttpChat(const std::string& key, uint32_t max_tokens, bool stream = false) {
    return Http(key, "/v1/chat/completions",
                fmt::format(R"({{"model":"tiny","messages":[{{"role":"user","content":)"
                            R"("Write me a poem about the sea."}}],"max_tokens":{},)"
                            R"("ignore_eos":true,"temperature":0,"stream":{})"
                            R"({}}})",
                            max_tokens, stream ? "true" : "false",
                            stream ? R"(,"stream_options":{"include_usage":true})" : ""));
  }

  // GetUsage (which writes what the ledger still queues) until `requests` requests are
  // recorded for the key: a cancelled request ends in the daemon after its client has gone.
  api::GetUsageResponse WaitForUsage(const std::string& admin_key, const std::string& key_id,
                                     uint64_t requests) {
    api::GetUsageResponse usage;
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < deadline) {
      grpc::ClientContext context;
      context.AddMetadata("authorization", "Bearer " + admin_key);
      api::GetUsageRequest request;
      request.set_key_id(key_id);
      request.add_group_by(api::USAGE_DIMENSION_KEY);
      usage.Clear();
      EXPECT_TRUE(admin_stub_->GetUsage(&context, request, &usage).ok());
      if (usage.rows_size() == 1 && usage.rows(0).requests() >= requests) return usage;
      std::this_thread::sleep_for(20ms);
    }
    ADD_FAILURE() << "the ledger never showed " << requests << " requests for " << key_id;
    return usage;
  }

  // Every row of the ledger, read through the ledger's own code from the daemon's file.
  std::vector<daemon::UsageRecord> LedgerRows() {
    auto ledger = daemon::UsageLedger::Open(database());
    EXPECT_TRUE(ledger.ok()) << ledger.status().ToString();
    if (!ledger.ok()) return {};
    auto rows = (*ledger)->Records(std::chrono::system_clock::time_point::min(),
                                   std::chrono::system_clock::time_point::max());
    EXPECT_TRUE(rows.ok()) << rows.status().ToString();
    return rows.ok() ? std::move(rows).value() : std::vector<daemon::UsageRecord>();
  }

  CommandResult Ctl(const std::string& api_key, std::vector<std::string> arguments) {
    arguments.insert(arguments.begin(), {INFERBOXCTL_PATH, "--address", daemon_->grpc_address(),
                                         "--api-key", api_key});
    return RunCommand(arguments, dir_.path());
  }

  static TempDir* scratch_;
  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<api::Inference::Stub> inference_;
  std::unique_ptr<api::Admin::Stub> admin_stub_;
};

TempDir* UsageQuotaTest::scratch_ = nullptr;

// A request without a valid key is refused on both APIs and counted as such
// (inferbox_requests_rejected_total{reason="unauthenticated"}, CONVENTIONS R3.3), where a
// dashboard sees a misconfigured client or a scan.
TEST_F(UsageQuotaTest, RequestsWithoutAValidKeyAreCountedAsUnauthenticated) {
  ASSERT_NO_FATAL_FAILURE(Start());
  EXPECT_EQ(HttpChat("", 4).status, 401);
  EXPECT_EQ(HttpChat("ibx_nope.not-a-key", 4).status, 401);
  EXPECT_EQ(GrpcChat("ibx_nope.not-a-key", Chat(4)).status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  const HttpResponse metrics = HttpGet("http://" + daemon_->metrics_address() + "/metrics");
  EXPECT_THAT(metrics.body,
              HasSubstr("inferbox_requests_rejected_total{reason=\"unauthenticated\"} 3"));
}

TEST_F(UsageQuotaTest, TokensPerMinuteRefusesBothApisAndSurvivesARestart) {
  api::KeyLimits limits;
  limits.set_tokens_per_minute(30);
  const std::string key = CreateKey("per-minute", api::KEY_ROLE_INFERENCE, limits);
  const std::string unlimited = CreateKey("unlimited", api::KEY_ROLE_INFERENCE);
  ASSERT_NO_FATAL_FAILURE(Start());

  const ChatResult first = GrpcChat(key, Chat(20));
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  const auto charged_at = std::chrono::steady_clock::now();
  ASSERT_GE(UsageOf(first).prompt_tokens() + UsageOf(first).completion_tokens(), 30u)
      << "the first request must use up the minute";

  const Reply http = HttpChat(key, 4);
  ASSERT_EQ(http.status, 429) << http.body;
  const json::object error = http.Json().at("error").as_object();
  EXPECT_EQ(error.at("type"), "rate_limit_error");
  EXPECT_EQ(error.at("code"), "rate_limit_exceeded");
  EXPECT_THAT(std::string(error.at("message").as_string()), HasSubstr(IdOf(key)));
  const int retry_after = std::stoi(http.Header("retry-after"));
  EXPECT_GE(retry_after, 1);
  EXPECT_LE(retry_after, 60);

  const ChatResult grpc_refused = GrpcChat(key, Chat(4));
  ASSERT_EQ(grpc_refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  const Refusal refusal = DetailsOf(grpc_refused.status);
  EXPECT_GT(refusal.retry_delay, 0s);
  EXPECT_LE(refusal.retry_delay, std::chrono::seconds(retry_after))
      << "the window frees at one time: the later answer waits no longer";
  EXPECT_GT(refusal.retry_delay, std::chrono::seconds(retry_after) - 5s)
      << "the delay is the real time until the window frees, not a guess";
  EXPECT_EQ(refusal.quota_subject, "api_key:" + IdOf(key));

  EXPECT_EQ(HttpChat(unlimited, 4).status, 200) << "other keys are not affected";
  const HttpResponse metrics = HttpGet("http://" + daemon_->metrics_address() + "/metrics");
  EXPECT_THAT(metrics.body,
              HasSubstr("inferbox_requests_rejected_total{reason=\"quota_tokens_per_minute\"} 2"));

  ASSERT_NO_FATAL_FAILURE(Restart());
  const ChatResult after_restart = GrpcChat(key, Chat(4));
  if (std::chrono::steady_clock::now() - charged_at > 55s) {
    GTEST_SKIP() << "the restart took so long that the minute passed";
  }
  ASSERT_EQ(after_restart.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << "the quota state is rebuilt from the ledger at start";
  EXPECT_LT(DetailsOf(after_restart.status).retry_delay, refusal.retry_delay);
  EXPECT_GT(DetailsOf(after_restart.status).retry_delay, 0s);
}

TEST_F(UsageQuotaTest, ConcurrentStreamsAndTheDailyBudget) {
  api::KeyLimits one_stream;
  one_stream.set_max_concurrent_requests(1);
  const std::string key = CreateKey("one-stream", api::KEY_ROLE_INFERENCE, one_stream);
  api::KeyLimits daily;
  daily.set_tokens_per_day(60);
  const std::string budget_key = CreateKey("daily", api::KEY_ROLE_INFERENCE, daily);
  const std::string admin = CreateKey("ops", api::KEY_ROLE_ADMIN);
  ASSERT_NO_FATAL_FAILURE(Start());

  {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer " + key);
    auto reader = inference_->Chat(&context, Chat(3000));
    api::GenerateChunk chunk;
    ASSERT_TRUE(reader->Read(&chunk)) << "the stream started";

    const Reply second = HttpChat(key, 4);
    ASSERT_EQ(second.status, 429) << second.body;
    EXPECT_EQ(second.Json().at("error").at("code"), "concurrency_limit_exceeded");
    EXPECT_EQ(second.Header("retry-after"), "1");
    const ChatResult grpc_second = GrpcChat(key, Chat(4));
    ASSERT_EQ(grpc_second.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_EQ(DetailsOf(grpc_second.status).retry_delay, 1s);

    context.TryCancel();
    while (reader->Read(&chunk)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // The stream's slot is free once the daemon has ended it (and recorded it).
  WaitForUsage(admin, IdOf(key), 1);
  EXPECT_EQ(HttpChat(key, 4).status, 200);

  const ChatResult spend = GrpcChat(budget_key, Chat(60));
  ASSERT_TRUE(spend.status.ok()) << spend.status.error_message();
  const auto now = std::chrono::system_clock::now();
  const Reply over = HttpChat(budget_key, 4);
  ASSERT_EQ(over.status, 429) << over.body;
  EXPECT_EQ(over.Json().at("error").at("code"), "daily_budget_exceeded");
  const int64_t expected = SecondsToUtcMidnight(now);
  if (expected < 10) GTEST_SKIP() << "too close to midnight UTC to check the retry time";
  EXPECT_NEAR(std::stoll(over.Header("retry-after")), expected, 5)
      << "the budget renews at 00:00 UTC";
}

TEST_F(UsageQuotaTest, LedgerRowsAreWhatTheClientsReceived) {
  const std::string key = CreateKey("chargeback, \"team\"", api::KEY_ROLE_INFERENCE);
  const std::string admin = CreateKey("ops", api::KEY_ROLE_ADMIN);
  ASSERT_NO_FATAL_FAILURE(Start());

  const ChatResult grpc_chat = GrpcChat(key, Chat(12));
  ASSERT_TRUE(grpc_chat.status.ok()) << grpc_chat.status.error_message();
  const Reply http_chat = HttpChat(key, 7);
  ASSERT_EQ(http_chat.status, 200) << http_chat.body;
  const json::object http_usage = http_chat.Json().at("usage").as_object();
  const Reply http_stream = HttpChat(key, 5, /*stream=*/true);
  ASSERT_EQ(http_stream.status, 200) << http_stream.body;
  const auto events = daemon::openai_test::ParseSse(http_stream.body);
  ASSERT_GE(events.data.size(), 2u);
  const json::object stream_usage =
      json::parse(events.data[events.data.size() - 2]).at("usage").as_object();

  size_t cancelled_tokens = 0;
  {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer " + key);
    auto reader = inference_->Chat(&context, Chat(3000));
    api::GenerateChunk chunk;
    for (int i = 0; i < 3 && reader->Read(&chunk); ++i) {
      cancelled_tokens += static_cast<size_t>(chunk.token_ids_size());
    }
    context.TryCancel();
    while (reader->Read(&chunk)) cancelled_tokens += static_cast<size_t>(chunk.token_ids_size());
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // Wait for the cancelled request's row, so that the rows below come in a known order.
  WaitForUsage(admin, IdOf(key), 4);

  api::ChatRequest bad = Chat(4);
  bad.mutable_messages(0)->set_role("wizard");
  EXPECT_EQ(GrpcChat(key, bad).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  const Reply completion =
      Http(key, "/v1/completions",
           R"({"model":"tiny","prompt":"Once upon a time","max_tokens":4,"ignore_eos":true})");
  ASSERT_EQ(completion.status, 200) << completion.body;
  const json::object completion_usage = completion.Json().at("usage").as_object();
  const api::GetUsageResponse usage = WaitForUsage(admin, IdOf(key), 6);

  const std::vector<daemon::UsageRecord> rows = LedgerRows();
  ASSERT_EQ(rows.size(), 6u);
  for (const daemon::UsageRecord& row : rows) {
    EXPECT_EQ(row.key_id, IdOf(key));
    EXPECT_EQ(row.model, "tiny");
    EXPECT_GE(row.latency.count(), 0);
  }
  auto expect_row = [&](const daemon::UsageRecord& row, std::string_view api,
                        std::string_view outcome, uint64_t prompt, uint64_t completion_tokens,
                        uint64_t cached) {
    EXPECT_EQ(row.api, api);
    EXPECT_EQ(row.outcome, outcome);
    EXPECT_EQ(row.prompt_tokens, prompt);
    EXPECT_EQ(row.completion_tokens, completion_tokens);
    EXPECT_EQ(row.cached_prompt_tokens, cached);
  };
  auto count = [](const json::object& object, const char* name) {
    return static_cast<uint64_t>(object.at(name).as_int64());
  };
  expect_row(rows[0], "grpc", "length", UsageOf(grpc_chat).prompt_tokens(), 12,
             UsageOf(grpc_chat).cached_prompt_tokens());
  EXPECT_EQ(UsageOf(grpc_chat).completion_tokens(), 12u);
  expect_row(rows[1], "http", "length", count(http_usage, "prompt_tokens"),
             count(http_usage, "completion_tokens"), rows[1].cached_prompt_tokens);
  EXPECT_EQ(count(http_usage, "completion_tokens"), 7u);
  expect_row(rows[2], "http", "length", count(stream_usage, "prompt_tokens"),
             count(stream_usage, "completion_tokens"), rows[2].cached_prompt_tokens);
  // A cancelled stream: its prompt (the same chat as the first row's) and the tokens
  // generated up to the cancel, at least those the client read.
  EXPECT_EQ(rows[3].api, "grpc");
  EXPECT_EQ(rows[3].outcome, "cancelled");
  EXPECT_EQ(rows[3].prompt_tokens, UsageOf(grpc_chat).prompt_tokens());
  EXPECT_GE(rows[3].completion_tokens, cancelled_tokens);
  EXPECT_LT(rows[3].completion_tokens, 3000u);
  expect_row(rows[4], "grpc", "invalid", 0, 0, 0);
  expect_row(rows[5], "http", "length", count(completion_usage, "prompt_tokens"), 4,
             rows[5].cached_prompt_tokens);

  uint64_t prompt = 0;
  uint64_t generated = 0;
  for (const daemon::UsageRecord& row : rows) {
    prompt += row.prompt_tokens;
    generated += row.completion_tokens;
  }
  ASSERT_EQ(usage.rows_size(), 1);
  EXPECT_EQ(usage.rows(0).requests(), 6u);
  EXPECT_EQ(usage.rows(0).failed_requests(), 2u);
  EXPECT_EQ(usage.rows(0).cancelled_requests(), 1u);
  EXPECT_EQ(usage.rows(0).prompt_tokens(), prompt);
  EXPECT_EQ(usage.rows(0).completion_tokens(), generated);
  EXPECT_EQ(usage.rows(0).key_name(), "chargeback, \"team\"");

  // Chargeback export: CSV with a header row, one row per key and model.
  const CommandResult csv = Ctl(admin, {"usage", "--by", "key,model", "--format", "csv"});
  ASSERT_EQ(csv.exit_code, 0) << csv.err;
  EXPECT_EQ(
      csv.out,
      "key_id,key_name,model,requests,failed_requests,cancelled_requests,prompt_tokens,"
      "cached_prompt_tokens,completion_tokens,total_tokens\r\n" +
          fmt::format("{},\"chargeback, \"\"team\"\"\",tiny,6,2,1,{},{},{},{}\r\n", IdOf(key),
                      prompt, usage.rows(0).cached_prompt_tokens(), generated, prompt + generated));
  const CommandResult by_day =
      Ctl(admin, {"usage", "--by", "day", "--since", "1d", "--format", "json"});
  ASSERT_EQ(by_day.exit_code, 0) << by_day.err;
  api::GetUsageResponse days;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(by_day.out, &days).ok()) << by_day.out;
  ASSERT_GE(days.rows_size(), 1);
  EXPECT_EQ(days.rows(days.rows_size() - 1).completion_tokens(), generated);
  const CommandResult table = Ctl(admin, {"usage"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_THAT(table.out, HasSubstr("chargeback, \"team\""));
  EXPECT_THAT(table.out, HasSubstr("total"));
}

TEST_F(UsageQuotaTest, AdminCallsNeedAnAdminKeyAndAreAllAudited) {
  const std::string admin = CreateKey("ops", api::KEY_ROLE_ADMIN);
  const std::string inference = CreateKey("risk-team", api::KEY_ROLE_INFERENCE);
  ASSERT_NO_FATAL_FAILURE(Start(/*with_model=*/false));

  struct Call {
    std::string key;
    std::vector<std::string> arguments;
    std::string rpc;
    std::string code;
  };
  const std::vector<Call> calls = {
      {admin, {"status"}, "GetStatus", "OK"},
      {admin, {"keys", "create", "--name", "batch", "--json"}, "CreateKey", "OK"},
      {admin, {"keys", "list"}, "ListKeys", "OK"},
      {admin, {"keys", "revoke", "ibx_aaaaaaaaaaaa"}, "RevokeKey", "NOT_FOUND"},
      {admin, {"usage"}, "GetUsage", "OK"},
      {admin, {"audit"}, "ListAuditEvents", "OK"},
      {inference, {"status"}, "GetStatus", "PERMISSION_DENIED"},
      {inference, {"keys", "list"}, "ListKeys", "PERMISSION_DENIED"},
      {inference, {"usage"}, "GetUsage", "PERMISSION_DENIED"},
      {inference, {"audit"}, "ListAuditEvents", "PERMISSION_DENIED"},
      {"", {"status"}, "GetStatus", "UNAUTHENTICATED"},
  };
  std::string created_secret;
  for (const Call& call : calls) {
    const CommandResult result = Ctl(call.key, call.arguments);
    EXPECT_EQ(result.exit_code, call.code == "OK" ? 0 : 1)
        << call.rpc << " by " << (call.key.empty() ? "nobody" : IdOf(call.key)) << ": "
        << result.err;
    if (call.code == "PERMISSION_DENIED") {
      EXPECT_THAT(result.err, HasSubstr(call.rpc + " needs a key with role admin"));
    }
    if (call.rpc == "CreateKey") {
      api::CreateKeyResponse created;
      ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(result.out, &created).ok());
      created_secret = created.secret().substr(created.secret().find('.') + 1);
    }
  }

  const CommandResult audit = Ctl(admin, {"audit", "--limit", "100", "--json"});
  ASSERT_EQ(audit.exit_code, 0) << audit.err;
  api::ListAuditEventsResponse events;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(audit.out, &events).ok()) << audit.out;
  ASSERT_EQ(events.events_size(), static_cast<int>(calls.size()))
      << "one event per Admin call, refusals included:\n"
      << audit.out;
  for (size_t i = 0; i < calls.size(); ++i) {
    // Newest first.
    const api::AuditEvent& event = events.events(static_cast<int>(calls.size() - 1 - i));
    EXPECT_EQ(event.rpc(), calls[i].rpc) << i;
    EXPECT_EQ(event.code(), calls[i].code) << i;
    EXPECT_EQ(event.caller_key_id(), calls[i].key.empty() ? "" : IdOf(calls[i].key)) << i;
    EXPECT_THAT(event.peer(), HasSubstr("127.0.0.1")) << i;
  }
  EXPECT_THAT(events.events(calls.size() - 2).detail(), HasSubstr("created key ibx_"));
  EXPECT_THAT(audit.out, ::testing::Not(HasSubstr(created_secret)));
  const CommandResult table = Ctl(admin, {"audit"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_THAT(table.out, HasSubstr("CreateKey"));
  EXPECT_THAT(table.out, HasSubstr("PERMISSION_DENIED"));

  daemon_->process().Signal(SIGTERM);
  ASSERT_TRUE(daemon_->process().WaitForExit(15s));
  EXPECT_THAT(daemon_->Logs(), ::testing::Not(HasSubstr(created_secret)));
}

TEST_F(UsageQuotaTest, DiagnosticsBundleDescribesTheRunningBox) {
  const std::string admin = CreateKey("ops", api::KEY_ROLE_ADMIN);
  ASSERT_NO_FATAL_FAILURE(Start());
  const CommandResult made =
      Ctl(admin, {"diagnostics", "--output", (dir_ / "support.tar.gz").string()});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  std::filesystem::create_directory(dir_ / "unpacked");
  const CommandResult untar = RunCommand(
      {"/bin/tar", "-xzf", (dir_ / "support.tar.gz").string(), "-C", (dir_ / "unpacked").string()},
      dir_.path());
  ASSERT_EQ(untar.exit_code, 0) << untar.err;
  const std::filesystem::path bundle = dir_ / "unpacked" / "support";
  std::ifstream status_file(bundle / "status.json");
  const std::string status_json((std::istreambuf_iterator<char>(status_file)),
                                std::istreambuf_iterator<char>());
  api::GetStatusResponse status;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(status_json, &status).ok())
      << status_json;
  ASSERT_EQ(status.engines_size(), 1);
  EXPECT_EQ(status.engines(0).name(), "tiny/0");
  EXPECT_EQ(status.engines(0).state(), api::ENGINE_STATE_READY);
  for (const char* file : {"README.txt", "versions.txt", "config.toml", "gpus.txt", "daemon.log"}) {
    EXPECT_TRUE(std::filesystem::exists(bundle / file)) << file;
  }
  std::ifstream config_file(bundle / "config.toml");
  const std::string config((std::istreambuf_iterator<char>(config_file)),
                           std::istreambuf_iterator<char>());
  EXPECT_THAT(config, HasSubstr("require_keys = true")) << "the daemon's own config file";
}

}  // namespace
}  // namespace inferbox::testing
