// Several engine replicas of a model behind the real daemon: a shared system prompt keeps
// landing on one replica (whose prefix cache then has it), a replica killed while requests
// stream loses none of them silently and the other one takes every new request until it is
// back, a CPU model runs tensor-parallel through the daemon, and the daemon places a cuda
// model that lists no GPUs on the GPUs (fake NVML) other models leave free.
#include <signal.h>

#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <thread>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "daemon_fixture.h"
#include "inferbox/engine/v1/engine.grpc.pb.h"
#include "inferbox/v1/admin.grpc.pb.h"
#include "inferbox/v1/inference.grpc.pb.h"
#include "tiny_model.h"

namespace inferbox::testing {
namespace {

namespace api = ::inferbox::v1;
namespace wire = ::inferbox::engine::v1;
using ::testing::AllOf;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

// A long system prompt many requests share: what prefix affinity is for.
constexpr std::string_view kSharedSystemPrompt =
    "You are the assistant of the credit risk team of a regional bank. Answer in short, "
    "plain sentences, cite the internal policy number when one applies, never guess a "
    "figure you were not given, and say so when a question is outside credit risk.";

std::string EnginesConfig(std::string_view engines_extra = "") {
  // No periodic canary during a test: only the requests it sends move the engines' counters.
  return TestConfig() +
         "[engines]\nexecutable = \"" INFERBOX_ENGINE_PATH
         "\"\nhealth_interval_seconds = 0.2\nhealth_timeout_seconds = 1\n"
         "canary_interval_seconds = 3600\n"
         "max_restarts = 3\nrestart_window_seconds = 60\n" +
         std::string(engines_extra);
}

std::string ModelEntry(std::string_view name, const std::filesystem::path& path,
                       std::string_view extra) {
  return "[[models]]\nname = \"" + std::string(name) + "\"\npath = \"" + path.string() +
         "\"\nkv_cache_gib = 0.1\n" + std::string(extra);
}

api::ChatRequest SystemChat(std::string_view system, std::string user, uint32_t max_tokens) {
  api::ChatRequest request;
  request.set_model("tiny");
  auto* first = request.add_messages();
  first->set_role("system");
  first->set_content(std::string(system));
  auto* second = request.add_messages();
  second->set_role("user");
  second->set_content(std::move(user));
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_stop()->set_max_tokens(max_tokens);
  request.mutable_stop()->set_ignore_eos(true);
  return request;
}

class ReplicaRoutingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new TempDir();
    MakeTinyModel(scratch_->path() / "model", "qwen3", {"--arch", "qwen3", "--seed", "5"},
                  scratch_->path());
  }
  static void TearDownTestSuite() { delete scratch_; }
  static std::filesystem::path model() { return scratch_->path() / "model"; }

  void Start(const std::string& config, std::vector<std::string> extra_env = {}) {
    ASSERT_TRUE(std::filesystem::exists(model() / "config.json")) << "no tiny model";
    daemon_ = std::make_unique<DaemonProcess>(
        dir_, DaemonOptions{.config_text = config, .extra_env = std::move(extra_env)});
    ASSERT_TRUE(daemon_->WaitReady());
    channel_ = grpc::CreateChannel(daemon_->grpc_address(), grpc::InsecureChannelCredentials());
    inference_ = api::Inference::NewStub(channel_);
    admin_ = api::Admin::NewStub(channel_);
  }

  api::GetStatusResponse Status() {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 5s);
    api::GetStatusResponse status;
    EXPECT_TRUE(admin_->GetStatus(&context, api::GetStatusRequest(), &status).ok());
    return status;
  }

  // The engine of that name ("tiny/0") in GetStatus; a default EngineInfo when absent.
  api::EngineInfo Engine(const std::string& name) {
    const api::GetStatusResponse status = Status();
    for (const auto& engine : status.engines()) {
      if (engine.name() == name) return engine;
    }
    return {};
  }

  // Replica r's own counters, straight from its socket.
  wire::StatsResponse EngineStats(int replica) {
    auto stub = wire::Engine::NewStub(grpc::CreateChannel(
        "unix:" +
            (daemon_->runtime_dir() / "engines" / ("tiny-" + std::to_string(replica) + ".sock"))
                .string(),
        grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 5s);
    wire::StatsResponse stats;
    EXPECT_TRUE(stub->Stats(&context, wire::StatsRequest(), &stats).ok());
    return stats;
  }

  ChatResult RunChat(const api::ChatRequest& request) {
    return testing::RunChat(*inference_, request);
  }

  static TempDir* scratch_;
  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<api::Inference::Stub> inference_;
  std::unique_ptr<api::Admin::Stub> admin_;
};

TempDir* ReplicaRoutingTest::scratch_ = nullptr;

TEST_F(ReplicaRoutingTest, ASharedSystemPromptStaysOnOneReplicaAndHitsItsPrefixCache) {
  ASSERT_NO_FATAL_FAILURE(Start(EnginesConfig() + ModelEntry("tiny", model(), "replicas = 2\n")));
  ASSERT_TRUE(WaitForStatus(*admin_, [](const auto& status) { return AllEnginesReady(status, 2); }))
      << daemon_->Logs();

  const wire::StatsResponse before[2] = {EngineStats(0), EngineStats(1)};
  // One after the other, so that load never outweighs affinity.
  constexpr int kRequests = 8;
  for (int i = 0; i < kRequests; ++i) {
    const ChatResult result =
        RunChat(SystemChat(kSharedSystemPrompt, "Question " + std::to_string(i) + "?", 3));
    ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  }
  const wire::StatsResponse after[2] = {EngineStats(0), EngineStats(1)};
  uint64_t prompt[2];
  for (int r = 0; r < 2; ++r)
    prompt[r] = after[r].prompt_tokens_total() - before[r].prompt_tokens_total();
  const int affine = prompt[0] > 0 ? 0 : 1;
  EXPECT_EQ(prompt[1 - affine], 0u) << "every request with the shared system prompt must land "
                                       "on one replica; replica 0 got "
                                    << prompt[0] << " prompt tokens, replica 1 got " << prompt[1];
  EXPECT_EQ(after[affine].generation_tokens_total() - before[affine].generation_tokens_total(),
            uint64_t{kRequests} * 3);
  // That replica served the shared prefix from its cache from the second request on: at
  // least one full KV block (16 tokens) of the ~55-token system prompt per request.
  EXPECT_GT(after[affine].prefix_cache_hit_tokens_total() -
                before[affine].prefix_cache_hit_tokens_total(),
            uint64_t{kRequests - 1} * 16)
      << "the affine replica's prefix cache should have served the system prompt";

  // Different system prompts, also one after the other, go to both replicas.
  const wire::StatsResponse spread_before[2] = {EngineStats(0), EngineStats(1)};
  for (int i = 0; i < 12; ++i) {
    const ChatResult result = RunChat(
        SystemChat("You are assistant number " + std::to_string(i * 7919) + ".", "Hello?", 2));
    ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  }
  for (int r = 0; r < 2; ++r) {
    EXPECT_GT(EngineStats(r).prompt_tokens_total(), spread_before[r].prompt_tokens_total())
        << "replica " << r << " got none of 12 different system prompts";
  }
}

TEST_F(ReplicaRoutingTest, AKilledReplicaLosesNoRequestSilentlyAndTheOtherTakesOver) {
  ASSERT_NO_FATAL_FAILURE(Start(EnginesConfig() + ModelEntry("tiny", model(), "replicas = 2\n")));
  ASSERT_TRUE(WaitForStatus(*admin_, [](const auto& status) { return AllEnginesReady(status, 2); }))
      << daemon_->Logs();
  const int64_t killed_pid = Engine("tiny/0").pid();
  ASSERT_GT(killed_pid, 0);

  // Streams on both replicas, long enough to be running when replica 0 dies.
  constexpr int kStreams = 8;
  constexpr uint32_t kStreamTokens = 400;
  std::vector<ChatResult> streams(kStreams);
  std::vector<std::thread> clients;
  for (int i = 0; i < kStreams; ++i) {
    clients.emplace_back([&, i] {
      streams[static_cast<size_t>(i)] = RunChat(SystemChat(
          "Stream " + std::to_string(i) + " of the failover test.", "Go on.", kStreamTokens));
    });
  }
  // Every stream running, some on each replica.
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  for (;;) {
    const uint32_t running[2] = {EngineStats(0).num_requests_running(),
                                 EngineStats(1).num_requests_running()};
    if (running[0] > 0 && running[1] > 0 && running[0] + running[1] == kStreams) break;
    ASSERT_LT(std::chrono::steady_clock::now(), deadline)
        << "the streams did not all run, spread over both replicas (" << running[0] << " and "
        << running[1] << " running)";
    std::this_thread::sleep_for(5ms);
  }
  ASSERT_EQ(::kill(static_cast<pid_t>(killed_pid), SIGKILL), 0);

  // As soon as the daemon has seen the death, new requests go to replica 1 and succeed,
  // while replica 1's streams still run and replica 0 restarts.
  ASSERT_TRUE(WaitForStatus(*admin_, [&](const auto& status) {
    for (const auto& engine : status.engines()) {
      if (engine.name() == "tiny/0")
        return engine.state() != api::ENGINE_STATE_READY || engine.pid() != killed_pid;
    }
    return false;
  }));
  constexpr int kAfter = 6;
  const uint64_t survivor_prompt_tokens = EngineStats(1).prompt_tokens_total();
  std::vector<ChatResult> after(kAfter);
  std::vector<std::thread> burst;
  for (int i = 0; i < kAfter; ++i) {
    burst.emplace_back([&, i] {
      after[static_cast<size_t>(i)] =
          RunChat(SystemChat("After the failover, request " + std::to_string(i), "Hi.", 4));
    });
  }
  for (auto& client : burst) client.join();
  uint64_t burst_prompt_tokens = 0;
  for (const ChatResult& result : after) {
    EXPECT_TRUE(result.status.ok())
        << "a request after the failover failed: " << result.status.error_message();
    EXPECT_EQ(result.tokens, 4u);
    if (!result.chunks.empty()) burst_prompt_tokens += result.chunks.back().usage().prompt_tokens();
  }
  // Replica 0 goes RESTARTING, STARTING, READY in that order: not READY now means it was not
  // READY during the burst, so replica 1 took all of it.
  const api::EngineState after_burst = Engine("tiny/0").state();
  RecordProperty("replica_0_after_the_burst", api::EngineState_Name(after_burst));
  if (after_burst != api::ENGINE_STATE_READY) {
    EXPECT_EQ(EngineStats(1).prompt_tokens_total() - survivor_prompt_tokens, burst_prompt_tokens)
        << "while replica 0 restarts, replica 1 must take every new request";
  }

  for (auto& client : clients) client.join();
  int completed = 0;
  int failed = 0;
  for (const ChatResult& stream : streams) {
    if (stream.status.ok()) {
      EXPECT_EQ(stream.tokens, kStreamTokens) << "a stream that ends OK must be complete";
      ++completed;
      continue;
    }
    ++failed;
    EXPECT_EQ(stream.status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << stream.status.error_message();
    EXPECT_THAT(stream.status.error_message(), AllOf(HasSubstr("engine"), HasSubstr("retry")));
    EXPECT_LT(stream.tokens, kStreamTokens);
  }
  EXPECT_GT(failed, 0) << "replica 0 had streams running when it was killed";
  EXPECT_GT(completed, 0) << "replica 1's streams must finish";

  // Replica 0 comes back (a new process) and both serve again.
  ASSERT_TRUE(WaitForStatus(*admin_, [&](const auto& status) {
    if (!AllEnginesReady(status, 2)) return false;
    for (const auto& engine : status.engines()) {
      if (engine.pid() == killed_pid) return false;
    }
    return true;
  })) << daemon_->Logs();
  const api::EngineInfo restarted = Engine("tiny/0");
  EXPECT_EQ(restarted.restarts(), 1u);
  EXPECT_THAT(restarted.last_exit(), HasSubstr("signal 9"));
  const uint64_t generated_before[2] = {EngineStats(0).generation_tokens_total(),
                                        EngineStats(1).generation_tokens_total()};
  for (int i = 0; i < 12; ++i) {
    const ChatResult result =
        RunChat(SystemChat("Back to two replicas, prompt " + std::to_string(i * 104729), "Hi.", 2));
    ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  }
  for (int r = 0; r < 2; ++r) {
    EXPECT_GT(EngineStats(r).generation_tokens_total(), generated_before[r])
        << "replica " << r << " served none of 12 requests after the restart";
  }
}

TEST_F(ReplicaRoutingTest, ACpuModelRunsTensorParallelThroughTheDaemon) {
  ASSERT_NO_FATAL_FAILURE(
      Start(EnginesConfig() + ModelEntry("tiny", model(), "tensor_parallel = 2\n")));
  ASSERT_TRUE(daemon_->WaitInferenceServing()) << daemon_->Logs();
  const ChatResult result = RunChat(SystemChat(kSharedSystemPrompt, "Split me in two.", 8));
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.tokens, 8u);

  const api::EngineInfo engine = Engine("tiny/0");
  ASSERT_GT(engine.pid(), 0);
  std::ifstream cmdline("/proc/" + std::to_string(engine.pid()) + "/cmdline");
  std::string arguments((std::istreambuf_iterator<char>(cmdline)),
                        std::istreambuf_iterator<char>());
  EXPECT_THAT(arguments, HasSubstr(std::string("--tensor-parallel") + '\0' + "2" + '\0'))
      << "the engine must run with --tensor-parallel 2";
}

// 4 fake GPUs of 80 GB (fake NVML). The tiny model fits one, so a cuda model that lists no
// GPUs gets one replica per GPU the pinned model leaves free. The engines cannot start on a
// box without a GPU; the placement is what is checked.
std::string FakeGpus(int count) {
  std::string state = "gpus " + std::to_string(count) + "\n";
  for (int i = 0; i < count; ++i)
    state += "gpu" + std::to_string(i) + ".memory_total 85899345920\n";
  return state;
}

TEST_F(ReplicaRoutingTest, ACudaModelWithoutGpusIsPlacedOnTheFreeOnesByItsProfile) {
  const auto state = dir_ / "nvml-state";
  std::ofstream(state) << FakeGpus(4);
  ASSERT_NO_FATAL_FAILURE(Start(
      EnginesConfig() + ModelEntry("pinned", model(), "device = \"cuda\"\ngpus = [1]\n") +
          ModelEntry("tiny", model(), "device = \"cuda\"\n"),
      {"INFERBOX_NVML_LIBRARY=" FAKE_NVML_PATH, "INFERBOX_FAKE_NVML_STATE=" + state.string()}));
  std::map<std::string, std::vector<uint32_t>> gpus;
  const api::GetStatusResponse status = Status();
  for (const auto& engine : status.engines())
    gpus[engine.name()].assign(engine.gpus().begin(), engine.gpus().end());
  EXPECT_EQ(gpus["pinned/0"], (std::vector<uint32_t>{1}));
  EXPECT_EQ(gpus["tiny/0"], (std::vector<uint32_t>{0}));
  EXPECT_EQ(gpus["tiny/1"], (std::vector<uint32_t>{2}));
  EXPECT_EQ(gpus["tiny/2"], (std::vector<uint32_t>{3}));
  EXPECT_EQ(gpus.size(), 4u) << daemon_->Logs();
  EXPECT_THAT(daemon_->Logs(), HasSubstr("model tiny: 3 replica(s) of tensor parallel 1 on GPUs "
                                         "[0, 2, 3]"));
}

TEST_F(ReplicaRoutingTest, AModelOnAGpuTheBoxDoesNotHaveStopsTheDaemonWithWhy) {
  const auto state = dir_ / "nvml-state";
  std::ofstream(state) << FakeGpus(2);
  daemon_ = std::make_unique<DaemonProcess>(
      dir_, DaemonOptions{.config_text = EnginesConfig() + ModelEntry("tiny", model(),
                                                                      "device = \"cuda\"\n"
                                                                      "gpus = [2, 3]\n"
                                                                      "tensor_parallel = 2\n"),
                          .extra_env = {"INFERBOX_NVML_LIBRARY=" FAKE_NVML_PATH,
                                        "INFERBOX_FAKE_NVML_STATE=" + state.string()}});
  const std::optional<int> exit_code = daemon_->process().WaitForExit(30s);
  ASSERT_TRUE(exit_code.has_value()) << "the daemon should refuse to start";
  EXPECT_NE(*exit_code, 0);
  EXPECT_THAT(daemon_->Logs(), HasSubstr("model tiny: lists GPU 2, but the box has 2 GPU(s)"));
}

}  // namespace
}  // namespace inferbox::testing
