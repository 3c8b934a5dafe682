// The real daemon supervising real engine processes: gRPC Inference through the router to
// an engine, cancellation reaching the engine, an engine killed mid-stream (the client gets
// a terminal error at once, the engine comes back), a model that cannot load (degraded,
// daemon up), and SIGTERM draining a stream before exit.
#include <signal.h>

#include <algorithm>

#include <fstream>
#include <set>
#include <thread>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "daemon_fixture.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "http_client.h"
#include "inferbox/common/grpc_status.h"
#include "inferbox/engine/v1/engine.grpc.pb.h"
#include "inferbox/v1/admin.grpc.pb.h"
#include "inferbox/v1/inference.grpc.pb.h"
#include "openai_client.h"
#include "tiny_model.h"

namespace inferbox::testing {
namespace {

namespace api = ::inferbox::v1;
namespace wire = ::inferbox::engine::v1;
using grpc::health::v1::HealthCheckResponse;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

std::string ModelsConfig(const std::filesystem::path& model, std::string_view extra = "",
                         std::string_view extra_server_keys = "") {
  return TestConfig(extra_server_keys) +
         "[engines]\nexecutable = \"" INFERBOX_ENGINE_PATH
         "\"\nhealth_interval_seconds = 0.2\nhealth_timeout_seconds = 1\n"
         "max_restarts = 2\nrestart_window_seconds = 60\n"
         "[[models]]\nname = \"tiny\"\npath = \"" +
         model.string() + "\"\nkv_cache_gib = 0.1\n" + std::string(extra);
}

class DaemonEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new TempDir();
    MakeTinyModel(scratch_->path() / "model", "qwen3", {"--arch", "qwen3", "--seed", "5"},
                  scratch_->path());
  }
  static void TearDownTestSuite() { delete scratch_; }
  static std::filesystem::path model() { return scratch_->path() / "model"; }

  void Start(const std::string& config) {
    ASSERT_TRUE(std::filesystem::exists(model() / "config.json")) << "no tiny model";
    daemon_ = std::make_unique<DaemonProcess>(dir_, DaemonOptions{.config_text = config});
    ASSERT_TRUE(daemon_->WaitReady());
    channel_ = grpc::CreateChannel(daemon_->grpc_address(), grpc::InsecureChannelCredentials());
    inference_ = api::Inference::NewStub(channel_);
    admin_ = api::Admin::NewStub(channel_);
  }

  HealthCheckResponse::ServingStatus Health(const std::string& service) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 2s);
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    HealthCheckResponse response;
    if (!grpc::health::v1::Health::NewStub(channel_)->Check(&context, request, &response).ok())
      return HealthCheckResponse::UNKNOWN;
    return response.status();
  }

  ::testing::AssertionResult WaitServing() { return daemon_->WaitInferenceServing(); }

  // The daemon's /metrics once it holds `line` (metrics are written as calls end), or after
  // 5 s without it.
  std::string MetricsHolding(const std::string& line) {
    std::string metrics;
    for (int i = 0; i < 100 && metrics.find(line) == std::string::npos; ++i) {
      if (i > 0) std::this_thread::sleep_for(50ms);
      metrics = HttpGet("http://" + daemon_->metrics_address() + "/metrics").body;
    }
    return metrics;
  }

  api::GetStatusResponse Status() {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 5s);
    api::GetStatusResponse status;
    EXPECT_TRUE(admin_->GetStatus(&context, api::GetStatusRequest(), &status).ok());
    return status;
  }

  // The engine's own stats, straight from its socket.
  wire::StatsResponse EngineStats() {
    auto stub = wire::Engine::NewStub(
        grpc::CreateChannel("unix:" + (daemon_->runtime_dir() / "engines" / "tiny-0.sock").string(),
                            grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 5s);
    wire::StatsResponse stats;
    EXPECT_TRUE(stub->Stats(&context, wire::StatsRequest(), &stats).ok());
    return stats;
  }

  // The engine's stats once it runs nothing and holds no KV blocks, or after 5 s.
  // Long requests holding an engine of max_running = 1 and max_waiting = 1 full: one runs,
  // one waits. Cancelled and ended when it goes.
  struct FullEngine {
    std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
    std::vector<std::unique_ptr<grpc::ClientReader<api::GenerateChunk>>> readers;
    ~FullEngine() {
      for (auto& context : contexts) context->TryCancel();
      api::GenerateChunk chunk;
      for (auto& reader : readers) {
        while (reader->Read(&chunk)) {
        }
        reader->Finish();
      }
    }
  };
  void Fill(FullEngine& full) {
    api::GenerateChunk chunk;
    for (int i = 0; i < 2; ++i) {
      full.contexts.push_back(std::make_unique<grpc::ClientContext>());
      full.readers.push_back(inference_->Chat(full.contexts.back().get(), Chat(3000)));
      if (i == 0) {
        ASSERT_TRUE(full.readers[0]->Read(&chunk))
            << "the first one runs: " << full.readers[0]->Finish().error_message();
      }
    }
    // Polled for up to 10 s: on a loaded machine the second request may take a while to queue.
    for (int i = 0; i < 500 && EngineStats().num_requests_waiting() < 1; ++i)
      std::this_thread::sleep_for(20ms);
    ASSERT_EQ(EngineStats().num_requests_waiting(), 1u);
  }

  wire::StatsResponse EngineStatsOnceIdle() {
    wire::StatsResponse stats;
    for (int i = 0; i < 100; ++i) {
      stats = EngineStats();
      if (stats.num_requests_running() == 0 && stats.num_kv_blocks_used() == 0) break;
      std::this_thread::sleep_for(50ms);
    }
    return stats;
  }

  static api::ChatRequest Chat(uint32_t max_tokens, std::string model = "tiny") {
    return TinyChat(max_tokens, std::move(model));
  }

  using Streamed = ChatResult;
  Streamed RunChat(const api::ChatRequest& request) {
    return testing::RunChat(*inference_, request);
  }

  static TempDir* scratch_;
  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<api::Inference::Stub> inference_;
  std::unique_ptr<api::Admin::Stub> admin_;
};

TempDir* DaemonEngineTest::scratch_ = nullptr;

TEST_F(DaemonEngineTest, ServesChatTokenizeAndModelsThroughTheEngine) {
  ASSERT_NO_FATAL_FAILURE(Start(ModelsConfig(model())));
  ASSERT_TRUE(WaitServing());
  EXPECT_EQ(Health(""), HealthCheckResponse::SERVING);

  const Streamed chat = RunChat(Chat(20));
  ASSERT_TRUE(chat.status.ok()) << chat.status.error_message();
  EXPECT_EQ(chat.tokens, 20u);
  EXPECT_GT(chat.chunks.size(), 1u);
  EXPECT_EQ(chat.chunks.back().finish_reason(), api::FINISH_REASON_LENGTH);
  EXPECT_EQ(chat.chunks.back().usage().completion_tokens(), 20u);
  EXPECT_EQ(chat.chunks.back().model(), "tiny");

  grpc::ClientContext tokenize_context;
  api::TokenizeRequest tokenize;
  tokenize.set_model("tiny");
  tokenize.set_text("Hello world");
  api::TokenizeResponse tokens;
  ASSERT_TRUE(inference_->Tokenize(&tokenize_context, tokenize, &tokens).ok());
  EXPECT_EQ(tokens.token_ids_size(), 2) << "Qwen3: 'Hello', ' world'";
  EXPECT_EQ(tokens.tokens(1), " world");

  grpc::ClientContext list_context;
  api::ListModelsResponse models;
  ASSERT_TRUE(inference_->ListModels(&list_context, api::ListModelsRequest(), &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).id(), "tiny");
  EXPECT_EQ(models.models(0).state(), api::MODEL_STATE_READY);
  EXPECT_GT(models.models(0).max_model_len(), 0u);

  const api::GetStatusResponse status = Status();
  EXPECT_EQ(status.state(), api::DAEMON_STATE_SERVING);
  ASSERT_EQ(status.engines_size(), 1);
  EXPECT_EQ(status.engines(0).name(), "tiny/0");
  EXPECT_EQ(status.engines(0).state(), api::ENGINE_STATE_READY);
  EXPECT_GT(status.engines(0).pid(), 0);

  const Streamed unknown = RunChat(Chat(4, "no-such-model"));
  EXPECT_EQ(unknown.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(unknown.status.error_message(), HasSubstr("no-such-model"));
  api::ChatRequest bad = Chat(4);
  bad.mutable_messages(0)->set_role("wizard");
  EXPECT_EQ(RunChat(bad).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// quantization = "fp8" reaches the engine (--quantization fp8: the CPU reference's FP8 linear
// layers), which serves as before.
TEST_F(DaemonEngineTest, ServesAModelWithFp8LinearLayers) {
  ASSERT_NO_FATAL_FAILURE(Start(ModelsConfig(model(), "quantization = \"fp8\"\n")));
  ASSERT_TRUE(WaitServing()) << daemon_->Logs();
  const Streamed chat = RunChat(Chat(12));
  ASSERT_TRUE(chat.status.ok()) << chat.status.error_message();
  EXPECT_EQ(chat.tokens, 12u);
  EXPECT_THAT(daemon_->Logs(), HasSubstr("linear layers in FP8 E4M3 (--quantization fp8)"));
}

// kv_cache_dtype = "fp8" reaches the engine (--kv-cache-dtype fp8: the CPU reference's FP8
// KV cache), which serves as before.
TEST_F(DaemonEngineTest, ServesAModelWithAnFp8KvCache) {
  ASSERT_NO_FATAL_FAILURE(Start(ModelsConfig(model(), "kv_cache_dtype = \"fp8\"\n")));
  ASSERT_TRUE(WaitServing()) << daemon_->Logs();
  const Streamed chat = RunChat(Chat(12));
  ASSERT_TRUE(chat.status.ok()) << chat.status.error_message();
  EXPECT_EQ(chat.tokens, 12u);
  EXPECT_THAT(daemon_->Logs(), HasSubstr("MiB, FP8 E4M3 with a scale per token and KV head)"));
}

TEST_F(DaemonEngineTest, ClientCancelReachesTheEngine) {
  ASSERT_NO_FATAL_FAILURE(Start(ModelsConfig(model())));
  ASSERT_TRUE(WaitServing());
  grpc::ClientContext context;
  auto reader = inference_->Chat(&context, Chat(3000));
  api::GenerateChunk chunk;
  int chunks = 0;
  while (chunks < 3 && reader->Read(&chunk)) ++chunks;
  ASSERT_EQ(chunks, 3);
  EXPECT_EQ(EngineStats().num_requests_running(), 1u);
  context.TryCancel();
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  const wire::StatsResponse stats = EngineStatsOnceIdle();
  EXPECT_EQ(stats.num_requests_running(), 0u);
  EXPECT_EQ(stats.num_kv_blocks_used(), 0u);
  EXPECT_LT(stats.generation_tokens_total(), 3000u);
}

TEST_F(DaemonEngineTest, ADeadlinePassingMidStreamEndsItAndFreesTheEngine) {
  ASSERT_NO_FATAL_FAILURE(Start(ModelsConfig(model())));
  ASSERT_TRUE(WaitServing());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 1500ms);
  auto reader = inference_->Chat(&context, Chat(100000));
  api::GenerateChunk chunk;
  int chunks = 0;
  while (reader->Read(&chunk)) ++chunks;
  EXPECT_GT(chunks, 0) << "tokens came before the deadline";
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  const wire::StatsResponse stats = EngineStatsOnceIdle();
  EXPECT_EQ(stats.num_requests_running(), 0u) << "the engine still runs the request";
  EXPECT_EQ(stats.num_kv_blocks_used(), 0u);
}

TEST_F(DaemonEngineTest, AnEngineKilledMidStreamFailsItsRequestsAndComesBack) {
  ASSERT_NO_FATAL_FAILURE(Start(ModelsConfig(model())));
  ASSERT_TRUE(WaitServing());
  const int64_t pid = Status().engines(0).pid();
  ASSERT_GT(pid, 0);

  grpc::ClientContext context;
  auto reader = inference_->Chat(&context, Chat(3000));
  api::GenerateChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  ASSERT_EQ(::kill(static_cast<pid_t>(pid), SIGKILL), 0);
  const auto killed = std::chrono::steady_clock::now();
  // Health tells load balancers within a second (CONVENTIONS R6.1 b): gRPC Health and /health.
  EXPECT_TRUE(daemon_->WaitInferenceHealth(grpc::health::v1::HealthCheckResponse::NOT_SERVING, 1s))
      << "gRPC Health still said SERVING 1 s after the only engine died";
  {
    daemon::openai_test::Client http;
    const auto health =
        http.Request("GET", "http://" + daemon_->http_address() + "/health", nullptr, {});
    EXPECT_EQ(health.status, 503) << health.body;
  }
  while (reader->Read(&chunk)) {
  }
  const grpc::Status status = reader->Finish();
  const auto ended = std::chrono::steady_clock::now();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("engine"));
  EXPECT_LT(ended - killed, 5s) << "the client must learn of the death at once";

  // The supervisor restarts it: a new process, READY again.
  api::GetStatusResponse status_after;
  for (int i = 0; i < 600; ++i) {
    status_after = Status();
    if (status_after.engines_size() == 1 && status_after.engines(0).pid() != pid &&
        status_after.engines(0).state() == api::ENGINE_STATE_READY) {
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(status_after.engines_size(), 1);
  ASSERT_EQ(status_after.engines(0).state(), api::ENGINE_STATE_READY) << daemon_->Logs();
  EXPECT_TRUE(WaitServing());
  EXPECT_EQ(status_after.engines(0).restarts(), 1u);
  EXPECT_NE(status_after.engines(0).pid(), pid);
  EXPECT_THAT(status_after.engines(0).last_exit(), HasSubstr("signal 9"));
  const Streamed next = RunChat(Chat(8));
  ASSERT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_EQ(next.tokens, 8u);
}

TEST_F(DaemonEngineTest, AnEngineKilledMidHttpStreamEndsItWithAnErrorEventNotDone) {
  ASSERT_NO_FATAL_FAILURE(Start(ModelsConfig(model())));
  ASSERT_TRUE(WaitServing());
  const auto pid = static_cast<pid_t>(Status().engines(0).pid());
  const std::string url = "http://" + daemon_->http_address() + "/v1/chat/completions";
  const std::string body =
      R"({"model":"tiny","messages":[{"role":"user","content":"Go on and on."}],)"
      R"("max_tokens":3000,"ignore_eos":true,"temperature":0,"stream":true})";
  daemon::openai_test::Reply reply;
  std::thread client([&] {
    daemon::openai_test::Client http;
    reply = http.Request("POST", url, &body, {});
  });
  while (EngineStats().generation_tokens_total() < 5) std::this_thread::sleep_for(5ms);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  client.join();
  ASSERT_TRUE(reply.error.empty()) << reply.error;
  EXPECT_EQ(reply.status, 200) << "the stream had started";
  const auto events = daemon::openai_test::ParseSse(reply.body);
  ASSERT_GE(events.data.size(), 2u) << reply.body;
  EXPECT_THAT(events.data.back(), HasSubstr("\"error\"")) << reply.body;
  EXPECT_THAT(events.data.back(), HasSubstr("engine"));
  EXPECT_EQ(std::count(events.data.begin(), events.data.end(), "[DONE]"), 0)
      << "a cut stream must not look complete";
  // A key event names the stream by the id its client saw (journal REQUEST_ID=, R4.5).
  const std::string id(boost::json::parse(events.data.front()).at("id").as_string());
  EXPECT_THAT(daemon_->Logs(), HasSubstr("[MODEL=tiny REQUEST_ID=" + id + "]"));

  // While the engine restarts (at least the supervisor's 0.5 s back-off, then the load), a
  // new request is refused before streaming: 503 + Retry-After, not queued.
  daemon::openai_test::Client http;
  const daemon::openai_test::Reply refused = http.Request("POST", url, &body, {});
  EXPECT_EQ(refused.status, 503) << refused.body;
  EXPECT_THAT(refused.body, HasSubstr("service_unavailable_error"));
  EXPECT_FALSE(refused.Header("retry-after").empty());
}

TEST_F(DaemonEngineTest, AModelThatCannotLoadDegradesTheBoxButNotTheDaemon) {
  ASSERT_NO_FATAL_FAILURE(
      Start(ModelsConfig(model()) + "[[models]]\nname = \"broken\"\npath = \"no-such-folder\"\n"));
  ASSERT_TRUE(WaitServing()) << "the good model serves";
  api::GetStatusResponse status;
  for (int i = 0; i < 200; ++i) {
    status = Status();
    if (status.state() == api::DAEMON_STATE_DEGRADED) break;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(status.state(), api::DAEMON_STATE_DEGRADED);
  ASSERT_EQ(status.engines_size(), 2);
  EXPECT_EQ(status.engines(1).name(), "broken/0");
  EXPECT_EQ(status.engines(1).state(), api::ENGINE_STATE_FAILED);
  EXPECT_THAT(status.engines(1).last_exit(), HasSubstr("78"));
  EXPECT_EQ(Health(""), HealthCheckResponse::NOT_SERVING) << "not every model can serve";
  EXPECT_EQ(Health("inferbox.v1.Inference"), HealthCheckResponse::SERVING);

  const Streamed broken = RunChat(Chat(4, "broken"));
  EXPECT_EQ(broken.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(broken.status.error_message(), HasSubstr("failed"));
  EXPECT_TRUE(RunChat(Chat(4)).status.ok()) << "the other model keeps serving";
  EXPECT_FALSE(daemon_->process().WaitForExit(0ms).has_value());
  EXPECT_THAT(daemon_->Logs(), HasSubstr("[MODEL=broken ENGINE=broken/0]"))
      << "the engine's key events name the model and the replica (R4.5)";
  // `systemctl status` says so too (R4.1).
  EXPECT_TRUE(daemon_->notify().WaitFor(
      "STATUS=degraded: 1 of 2 models ready (broken failed); 0 running, 0 waiting", 15s))
      << daemon_->Logs();
}

TEST_F(DaemonEngineTest, AnEngineThatKeepsCrashingIsMarkedFailedInsteadOfSpinning) {
  // An "engine" that dies at once, every time.
  const auto crasher = dir_.path() / "crashing-engine";
  std::ofstream(crasher) << "#!/bin/sh\necho 'crashing on purpose' >&2\nexit 3\n";
  std::filesystem::permissions(crasher, std::filesystem::perms::owner_all);
  std::string config = ModelsConfig(model());
  config.replace(config.find(INFERBOX_ENGINE_PATH), std::string(INFERBOX_ENGINE_PATH).size(),
                 crasher.string());
  ASSERT_NO_FATAL_FAILURE(Start(config));
  api::GetStatusResponse status;
  for (int i = 0; i < 200; ++i) {
    status = Status();
    if (status.engines_size() == 1 && status.engines(0).state() == api::ENGINE_STATE_FAILED) break;
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(status.engines_size(), 1);
  EXPECT_EQ(status.engines(0).state(), api::ENGINE_STATE_FAILED) << daemon_->Logs();
  EXPECT_EQ(status.engines(0).restarts(), 2u) << "max_restarts = 2, then it gives up";
  EXPECT_THAT(status.engines(0).last_exit(), HasSubstr("exited with status 3"));
  EXPECT_EQ(status.state(), api::DAEMON_STATE_DEGRADED);
  EXPECT_THAT(daemon_->Logs(), HasSubstr("not restarted"));
  // Nothing restarts it any more.
  std::this_thread::sleep_for(1500ms);
  EXPECT_EQ(Status().engines(0).restarts(), 2u);
  EXPECT_EQ(RunChat(Chat(4)).status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

// R6.1: an engine whose loop hangs (a stuck device) or fails mid-generation: every request
// in flight ends with UNAVAILABLE at once, the engine is restarted, health recovers.
TEST_F(DaemonEngineTest, AStuckOrFailingEngineLoopEndsItsRequestsAndIsRestarted) {
  for (const std::string fault :
       {"INFERBOX_TEST_FAULT_STALL_AFTER_STEPS", "INFERBOX_TEST_FAULT_FAIL_AFTER_STEPS"}) {
    SCOPED_TRACE(fault);
    TempDir dir;
    // Quick stall detection for the test.
    std::string config = ModelsConfig(model());
    config.insert(config.find("[[models]]"), "stall_timeout_seconds = 1\n");
    daemon_ = std::make_unique<DaemonProcess>(
        dir, DaemonOptions{.config_text = config, .extra_env = {fault + "=40"}});
    ASSERT_TRUE(daemon_->WaitReady());
    channel_ = grpc::CreateChannel(daemon_->grpc_address(), grpc::InsecureChannelCredentials());
    inference_ = api::Inference::NewStub(channel_);
    admin_ = api::Admin::NewStub(channel_);
    ASSERT_TRUE(WaitServing());

    const auto started = std::chrono::steady_clock::now();
    const Streamed doomed = RunChat(Chat(3000));
    EXPECT_EQ(doomed.status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << doomed.status.error_message();
    EXPECT_THAT(doomed.status.error_message(), HasSubstr("engine"));
    EXPECT_LT(std::chrono::steady_clock::now() - started, 20s);
    EXPECT_LT(doomed.tokens, 3000u);

    api::GetStatusResponse status;
    for (int i = 0; i < 600; ++i) {
      status = Status();
      if (status.engines(0).restarts() >= 1 && status.engines(0).state() == api::ENGINE_STATE_READY)
        break;
      std::this_thread::sleep_for(50ms);
    }
    EXPECT_GE(status.engines(0).restarts(), 1u);
    EXPECT_EQ(status.engines(0).state(), api::ENGINE_STATE_READY) << daemon_->Logs();
    const Streamed after = RunChat(Chat(8));
    EXPECT_TRUE(after.status.ok()) << after.status.error_message();
    daemon_->process().Signal(SIGTERM);
    EXPECT_EQ(daemon_->process().WaitForExit(30s), std::optional<int>(0)) << daemon_->Logs();
    daemon_.reset();
  }
}

// An idle engine whose loop is stuck is found by the canary generation (no request needed):
// it is killed and restarted, and readiness returns.
TEST_F(DaemonEngineTest, AFailedCanaryRestartsAnIdleEngine) {
  std::string config = ModelsConfig(model());
  config.insert(config.find("[[models]]"),
                "canary_interval_seconds = 0.3\ncanary_timeout_seconds = 1\n");
  daemon_ = std::make_unique<DaemonProcess>(
      dir_, DaemonOptions{.config_text = config,
                          .extra_env = {"INFERBOX_TEST_FAULT_STALL_AFTER_STEPS=3"}});
  ASSERT_TRUE(daemon_->WaitReady());
  channel_ = grpc::CreateChannel(daemon_->grpc_address(), grpc::InsecureChannelCredentials());
  inference_ = api::Inference::NewStub(channel_);
  admin_ = api::Admin::NewStub(channel_);
  api::GetStatusResponse status;
  for (int i = 0; i < 400; ++i) {
    status = Status();
    if (status.engines_size() == 1 && status.engines(0).restarts() >= 1) break;
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(status.engines_size(), 1);
  EXPECT_GE(status.engines(0).restarts(), 1u) << daemon_->Logs();
  EXPECT_THAT(status.engines(0).last_exit(), HasSubstr("signal 9"));
  EXPECT_THAT(status.engines(0).last_exit(), HasSubstr("canary generation failed"))
      << "the exit says why the supervisor killed it";
  EXPECT_THAT(daemon_->Logs(), HasSubstr("canary generation failed"));
  // Each new engine serves (3 steps are enough for a short request) before it stalls again.
  EXPECT_TRUE(WaitServing());
}

// A canary that waits on a stuck engine (its whole timeout, a minute here) does not hold up
// the daemon's stop: Stop cancels it, and the stop takes the drain and the engine's grace.
TEST_F(DaemonEngineTest, StoppingDoesNotWaitForACanaryInFlight) {
  std::string config = ModelsConfig(model());
  config.insert(config.find("[[models]]"),
                "canary_interval_seconds = 0.3\ncanary_timeout_seconds = 60\n");
  config.replace(config.find("shutdown_timeout_seconds = 5"), 28, "shutdown_timeout_seconds = 1");
  daemon_ = std::make_unique<DaemonProcess>(
      dir_, DaemonOptions{.config_text = config,
                          .extra_env = {"INFERBOX_TEST_FAULT_STALL_AFTER_STEPS=3"}});
  ASSERT_TRUE(daemon_->WaitReady());
  // The startup canary took a step; the next canaries take the rest, then one waits.
  std::this_thread::sleep_for(3s);
  const auto stopped_at = std::chrono::steady_clock::now();
  daemon_->process().Signal(SIGTERM);
  EXPECT_EQ(daemon_->process().WaitForExit(90s), std::optional<int>(0)) << daemon_->Logs();
  EXPECT_LT(std::chrono::steady_clock::now() - stopped_at, 30s)
      << "the stop waited for the canary\n"
      << daemon_->Logs();
  daemon_.reset();
}

// A full queue refuses the periodic canary as it refuses any request (RESOURCE_EXHAUSTED);
// an engine that still completes steps is busy, not broken, and is left serving.
TEST_F(DaemonEngineTest, AFullQueueDoesNotFailTheCanary) {
  std::string config = ModelsConfig(model(), "max_running = 1\nmax_waiting = 1\n");
  config.insert(config.find("[[models]]"),
                "canary_interval_seconds = 0.3\ncanary_timeout_seconds = 5\n");
  ASSERT_NO_FATAL_FAILURE(Start(config));
  ASSERT_TRUE(WaitServing());
  FullEngine full;
  ASSERT_NO_FATAL_FAILURE(Fill(full));
  // Canaries come every 0.3 s; before this was fixed the first one killed the engine.
  for (int i = 0; i < 300 && daemon_->Logs().find("busy, not stuck") == std::string::npos; ++i)
    std::this_thread::sleep_for(20ms);
  EXPECT_THAT(daemon_->Logs(), HasSubstr("busy, not stuck"));
  const api::GetStatusResponse status = Status();
  ASSERT_EQ(status.engines_size(), 1);
  EXPECT_EQ(status.engines(0).restarts(), 0u) << daemon_->Logs();
  EXPECT_EQ(status.engines(0).state(), api::ENGINE_STATE_READY);
  api::GenerateChunk chunk;
  EXPECT_TRUE(full.readers[0]->Read(&chunk)) << "the running request still streams";
}

TEST_F(DaemonEngineTest, AFullQueueIsResourceExhaustedWithRetryInfo) {
  ASSERT_NO_FATAL_FAILURE(Start(ModelsConfig(model(), "max_running = 1\nmax_waiting = 1\n")));
  ASSERT_TRUE(WaitServing());
  FullEngine full;
  ASSERT_NO_FATAL_FAILURE(Fill(full));

  api::GenerateChunk chunk;
  grpc::ClientContext context;
  auto refused_reader = inference_->Chat(&context, Chat(4));
  while (refused_reader->Read(&chunk)) {
  }
  const grpc::Status refused = refused_reader->Finish();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(refused.error_details())) << "no google.rpc.Status details";
  ASSERT_EQ(details.details_size(), 2) << details.DebugString();
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(std::any_of(details.details().begin(), details.details().end(),
                          [&](const auto& detail) { return detail.UnpackTo(&retry); }));
  EXPECT_GE(retry.retry_delay().seconds(), 1);
  EXPECT_LE(retry.retry_delay().seconds(), 3);
  EXPECT_EQ(FromGrpcStatus(refused).reason(), "QUEUE_FULL")
      << "the engine's reason reaches the client";
}

// R6.5: the queue is bounded in prompt tokens too (max_waiting_tokens). With a limit of one
// token, one request may wait (nothing waited), and the next is refused as a full queue:
// HTTP 503 server_is_overloaded with Retry-After, counted as queue_full.
TEST_F(DaemonEngineTest, QueuedPromptTokensAreBoundedToo) {
  ASSERT_NO_FATAL_FAILURE(
      Start(ModelsConfig(model(), "max_running = 1\nmax_waiting = 100\nmax_waiting_tokens = 1\n")));
  ASSERT_TRUE(WaitServing());
  FullEngine full;
  ASSERT_NO_FATAL_FAILURE(Fill(full));  // One runs, one waits.

  daemon::openai_test::Client http;
  const std::string body =
      R"({"model":"tiny","messages":[{"role":"user","content":"Hi"}],"max_tokens":4})";
  const daemon::openai_test::Reply refused =
      http.Request("POST", "http://" + daemon_->http_address() + "/v1/chat/completions", &body, {});
  EXPECT_EQ(refused.status, 503) << refused.body;
  EXPECT_THAT(refused.body, HasSubstr("server_is_overloaded"));
  EXPECT_THAT(refused.body, HasSubstr("prompt tokens are already waiting"));
  EXPECT_FALSE(refused.Header("retry-after").empty());
  const std::string series = "inferbox_requests_rejected_total{reason=\"queue_full\"} 1";
  EXPECT_THAT(MetricsHolding(series), HasSubstr(series));
}

// A prompt longer than the model's context: the engine's reason (PROMPT_TOO_LONG), not the
// words of its message, makes it OpenAI's 400 context_length_exceeded, gRPC INVALID_ARGUMENT
// with that ErrorInfo, and a "too_long" rejection in the metrics.
TEST_F(DaemonEngineTest, APromptPastTheContextIsContextLengthExceeded) {
  ASSERT_NO_FATAL_FAILURE(Start(ModelsConfig(model(), "max_model_len = 64\n")));
  ASSERT_TRUE(WaitServing());
  std::string words;
  for (int i = 0; i < 100; ++i) words += " word";
  const std::string url = "http://" + daemon_->http_address() + "/v1/chat/completions";
  const std::string body =
      R"({"model":"tiny","messages":[{"role":"user","content":")" + words + R"("}]})";
  daemon::openai_test::Client http;
  const auto refused = http.Request("POST", url, &body, {});
  EXPECT_EQ(refused.status, 400) << refused.body;
  EXPECT_THAT(refused.body, HasSubstr(R"("code":"context_length_exceeded")"));
  EXPECT_THAT(refused.body, HasSubstr("the model's context is 64 tokens"));

  api::ChatRequest request = Chat(4);
  request.mutable_messages(0)->set_content(words);
  const grpc::Status status = RunChat(request).status;
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_EQ(FromGrpcStatus(status).reason(), "PROMPT_TOO_LONG");

  const std::string series = "inferbox_requests_rejected_total{reason=\"too_long\"} 2";
  EXPECT_THAT(MetricsHolding(series), HasSubstr(series));
}

// R1.11: a request's unset sampling parameters come from the model's generation_config.json
// unless its [[models]] table says sampling_defaults = "openai". With a generation_config
// of temperature 0, requests that differ only in their seed give one greedy text; with the
// OpenAI defaults (temperature 1) they do not.
TEST_F(DaemonEngineTest, SamplingDefaultsComeFromTheModelUnlessSwitchedOff) {
  const std::filesystem::path greedy = dir_.path() / "greedy-model";
  std::filesystem::copy(model(), greedy, std::filesystem::copy_options::recursive);
  {
    std::ofstream generation(greedy / "generation_config.json", std::ios::trunc);
    generation << R"({"temperature": 0.0, "top_p": 1.0})";
  }
  ASSERT_NO_FATAL_FAILURE(Start(ModelsConfig(greedy) + "[[models]]\nname = \"openai\"\npath = \"" +
                                greedy.string() +
                                "\"\nkv_cache_gib = 0.1\nsampling_defaults = \"openai\"\n"));
  ASSERT_TRUE(WaitServing());
  // SERVING once a model is; both must be.
  ASSERT_TRUE(WaitForStatus(*admin_, [](const auto& status) { return AllEnginesReady(status, 2); }))
      << daemon_->Logs();
  auto texts = [&](const std::string& model_name) {
    std::set<std::string> distinct;
    for (uint64_t seed = 1; seed <= 4; ++seed) {
      api::ChatRequest request = Chat(16, model_name);
      request.mutable_sampling()->clear_temperature();  // Chat() asks for greedy.
      request.mutable_sampling()->set_seed(seed);
      const Streamed streamed = RunChat(request);
      EXPECT_TRUE(streamed.status.ok()) << streamed.status.error_message();
      std::string text;
      for (const auto& chunk : streamed.chunks) text += chunk.text();
      distinct.insert(text);
    }
    return distinct;
  };
  EXPECT_EQ(texts("tiny").size(), 1u) << "generation_config.json's temperature 0 is greedy";
  EXPECT_GT(texts("openai").size(), 1u)
      << "the OpenAI default temperature 1 samples: four seeds, four draws of 16 tokens";
}

// R6.6: with queue_timeout_seconds, a request that cannot start in time is shed with 503 and
// Retry-After (gRPC RESOURCE_EXHAUSTED) instead of waiting on; the running one goes on.
TEST_F(DaemonEngineTest, AQueueTimeoutShedsWhatCannotStartInTime) {
  ASSERT_NO_FATAL_FAILURE(Start(
      ModelsConfig(model(), "max_running = 1\nmax_waiting = 8\nqueue_timeout_seconds = 0.5\n")));
  ASSERT_TRUE(WaitServing());
  grpc::ClientContext running_context;
  auto running = inference_->Chat(&running_context, Chat(100000));
  api::GenerateChunk chunk;
  ASSERT_TRUE(running->Read(&chunk)) << running->Finish().error_message();

  const std::string url = "http://" + daemon_->http_address() + "/v1/chat/completions";
  const std::string body =
      R"({"model":"tiny","messages":[{"role":"user","content":"Hi"}],"max_tokens":4})";
  daemon::openai_test::Client http;
  const auto started = std::chrono::steady_clock::now();
  const auto shed = http.Request("POST", url, &body, {});
  const auto waited = std::chrono::steady_clock::now() - started;
  EXPECT_EQ(shed.status, 503) << shed.body;
  EXPECT_THAT(shed.body, HasSubstr("server_is_overloaded"));
  EXPECT_THAT(shed.body, HasSubstr("in the queue without starting"));
  EXPECT_FALSE(shed.Header("retry-after").empty());
  EXPECT_GE(waited, 500ms) << "shed before its queue timeout";
  EXPECT_LT(waited, 20s);

  const grpc::Status refused = RunChat(Chat(4)).status;
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_EQ(FromGrpcStatus(refused).reason(), "QUEUE_TIMEOUT");
  // Counted as shed by the timeout, not as a full queue (the metric is written as the call ends).
  const std::string shed_series = "inferbox_requests_rejected_total{reason=\"queue_timeout\"} 2";
  EXPECT_THAT(MetricsHolding(shed_series), HasSubstr(shed_series));

  const uint64_t tokens_then = EngineStats().generation_tokens_total();
  ASSERT_TRUE(running->Read(&chunk)) << "the running request was ended too";
  for (int i = 0; i < 200 && EngineStats().generation_tokens_total() < tokens_then + 5; ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_GE(EngineStats().generation_tokens_total(), tokens_then + 5);
  running_context.TryCancel();
  while (running->Read(&chunk)) {
  }
  running->Finish();
}

// R6.6: [server] request_timeout_seconds ends a generation that runs too long, whether or not
// its client set a deadline: HTTP 504 (an error event once a stream has started), gRPC
// DEADLINE_EXCEEDED, and the engine lets the request go.
TEST_F(DaemonEngineTest, TheBoxsRequestTimeoutEndsLongGenerations) {
  ASSERT_NO_FATAL_FAILURE(Start(ModelsConfig(model(), "", "request_timeout_seconds = 1\n")));
  ASSERT_TRUE(WaitServing());
  const std::string url = "http://" + daemon_->http_address() + "/v1/chat/completions";
  const std::string body =
      R"({"model":"tiny","messages":[{"role":"user","content":"Go on."}],"max_tokens":100000,)"
      R"("ignore_eos":true,"temperature":0)";
  daemon::openai_test::Client http;
  const std::string whole = body + "}";
  const auto timed_out = http.Request("POST", url, &whole, {});
  EXPECT_EQ(timed_out.status, 504) << timed_out.body;
  EXPECT_THAT(timed_out.body, HasSubstr("timeout_error"));
  EXPECT_THAT(timed_out.body, HasSubstr("request_timeout_seconds"));

  const std::string streamed = body + R"(,"stream":true})";
  const auto stream = http.Request("POST", url, &streamed, {});
  EXPECT_EQ(stream.status, 200);
  const auto events = daemon::openai_test::ParseSse(stream.body);
  ASSERT_GE(events.data.size(), 2u) << stream.body;
  EXPECT_THAT(events.data.back(), HasSubstr("request_timeout_seconds")) << stream.body;
  EXPECT_EQ(std::count(events.data.begin(), events.data.end(), "[DONE]"), 0);

  const Streamed chat = RunChat(Chat(100000));  // RunChat's own deadline is 120 s.
  EXPECT_EQ(chat.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(chat.status.error_message(), HasSubstr("request timeout"));
  EXPECT_GT(chat.tokens, 0u);
  const wire::StatsResponse stats = EngineStatsOnceIdle();
  EXPECT_EQ(stats.num_requests_running(), 0u) << "the engine still runs a timed-out request";
  EXPECT_EQ(stats.num_kv_blocks_used(), 0u);
}

TEST_F(DaemonEngineTest, ReplicasShareTheLoad) {
  ASSERT_NO_FATAL_FAILURE(Start(ModelsConfig(model(), "replicas = 2\n")));
  api::GetStatusResponse status;
  for (int i = 0; i < 600; ++i) {
    status = Status();
    if (status.engines_size() == 2 && status.engines(0).state() == api::ENGINE_STATE_READY &&
        status.engines(1).state() == api::ENGINE_STATE_READY) {
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(status.engines_size(), 2);
  ASSERT_EQ(status.engines(1).state(), api::ENGINE_STATE_READY) << daemon_->Logs();
  EXPECT_EQ(status.engines(1).name(), "tiny/1");
  // Different prompts (different prefixes) at once: both replicas get work.
  std::vector<std::thread> clients;
  std::vector<Streamed> results(16);
  for (int i = 0; i < 16; ++i) {
    clients.emplace_back([&, i] {
      api::ChatRequest request = Chat(6);
      request.mutable_messages(0)->set_content("Question number " + std::to_string(i * 7919));
      results[static_cast<size_t>(i)] = RunChat(request);
    });
  }
  for (auto& client : clients) client.join();
  for (const auto& result : results)
    EXPECT_TRUE(result.status.ok()) << result.status.error_message();
  uint64_t per_engine[2] = {0, 0};
  for (int r = 0; r < 2; ++r) {
    auto stub = wire::Engine::NewStub(grpc::CreateChannel(
        "unix:" +
            (daemon_->runtime_dir() / "engines" / ("tiny-" + std::to_string(r) + ".sock")).string(),
        grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    wire::StatsResponse stats;
    ASSERT_TRUE(stub->Stats(&context, wire::StatsRequest(), &stats).ok());
    // Less the one token of the supervisor's startup canary.
    per_engine[r] = stats.generation_tokens_total() - 1;
  }
  EXPECT_EQ(per_engine[0] + per_engine[1], 16u * 6u);
  EXPECT_GT(per_engine[0], 0u);
  EXPECT_GT(per_engine[1], 0u);
}

TEST_F(DaemonEngineTest, SigtermFinishesTheStreamThenStopsEngineAndDaemon) {
  ASSERT_NO_FATAL_FAILURE(Start(ModelsConfig(model())));
  ASSERT_TRUE(WaitServing());
  const auto pid = static_cast<pid_t>(Status().engines(0).pid());
  Streamed streamed;
  std::thread client([&] { streamed = RunChat(Chat(60)); });
  const uint64_t before = EngineStats().generation_tokens_total();  // The canary's.
  while (EngineStats().generation_tokens_total() <= before) std::this_thread::sleep_for(5ms);
  daemon_->process().Signal(SIGTERM);
  client.join();
  ASSERT_TRUE(streamed.status.ok()) << streamed.status.error_message();
  EXPECT_EQ(streamed.tokens, 60u);
  EXPECT_EQ(daemon_->process().WaitForExit(30s), std::optional<int>(0)) << daemon_->Logs();
  EXPECT_NE(::kill(pid, 0), 0) << "the engine must not outlive the daemon";
}

// R4.1: `systemctl status` says what the box does as it goes (the STATUS= line, refreshed
// every 2 s when it changed): models ready, requests running and waiting.
TEST_F(DaemonEngineTest, TheStatusLineFollowsTheRequestsRunning) {
  ASSERT_NO_FATAL_FAILURE(Start(ModelsConfig(model())));
  ASSERT_TRUE(WaitServing());
  daemon_->notify().ReceivePending();  // Lines from before the stream (a canary) do not count.
  grpc::ClientContext context;
  auto reader = inference_->Chat(&context, Chat(3000));
  api::GenerateChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk)) << reader->Finish().error_message();
  EXPECT_TRUE(
      daemon_->notify().WaitFor("STATUS=serving: 1 of 1 model ready; 1 running, 0 waiting", 15s))
      << "no STATUS= line with the stream running";
  context.TryCancel();
  while (reader->Read(&chunk)) {
  }
  reader->Finish();
  EXPECT_TRUE(
      daemon_->notify().WaitFor("STATUS=serving: 1 of 1 model ready; 0 running, 0 waiting", 15s))
      << "the STATUS= line did not follow the cancelled stream";
}

// True when `pid` has exited: no such process, or a zombie nobody reaped yet (an orphan's
// new parent may be slow to, or may never).
bool ProcessGone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!std::getline(stat, text)) return true;
  const size_t name_end = text.rfind(')');
  return name_end == std::string::npos || text.substr(name_end + 2, 1) == "Z";
}

// R6.2: an engine never outlives its daemon, even one killed without a chance to stop it
// (SIGKILL, the OOM killer): the engine exits at once (PR_SET_PDEATHSIG), which frees its
// memory and GPUs, the client of a stream in flight gets an error rather than a hang, and a
// daemon started again on the same directories serves again (the dead engine's socket and
// the stale listeners file do not stand in its way).
TEST_F(DaemonEngineTest, AnEngineDiesWithItsKilledDaemonAndTheNextDaemonServes) {
  ASSERT_NO_FATAL_FAILURE(Start(ModelsConfig(model())));
  ASSERT_TRUE(WaitServing());
  const auto pid = static_cast<pid_t>(Status().engines(0).pid());
  ASSERT_GT(pid, 0);
  Streamed streamed;
  std::thread client([&] { streamed = RunChat(Chat(3000)); });
  const uint64_t before = EngineStats().generation_tokens_total();  // The canary's.
  const auto streaming_by = std::chrono::steady_clock::now() + 30s;
  while (EngineStats().generation_tokens_total() <= before &&
         std::chrono::steady_clock::now() < streaming_by)
    std::this_thread::sleep_for(5ms);
  ASSERT_GT(EngineStats().generation_tokens_total(), before) << "the stream never started";

  daemon_->process().Signal(SIGKILL);
  ASSERT_TRUE(daemon_->process().WaitForExit(10s).has_value());
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!ProcessGone(pid) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(20ms);
  EXPECT_TRUE(ProcessGone(pid)) << "the engine (pid " << pid << ") outlived its killed daemon";
  client.join();
  EXPECT_EQ(streamed.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << "the stream in flight should fail, not end as if complete: "
      << streamed.status.error_message();
  EXPECT_LT(streamed.tokens, 3000u);

  inference_.reset();
  admin_.reset();
  channel_.reset();
  daemon_.reset();
  ASSERT_NO_FATAL_FAILURE(Start(ModelsConfig(model())));
  ASSERT_TRUE(WaitServing());
  const Streamed again = RunChat(Chat(4));
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_EQ(again.tokens, 4u);
  EXPECT_NE(Status().engines(0).pid(), pid);
}

}  // namespace
}  // namespace inferbox::testing
