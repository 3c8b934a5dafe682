// A GPU fault stops only the engines on the faulty GPU (Supervisor::SetGpuHealth), with real
// engine processes. There is no GPU here: the model is configured for CUDA on GPUs 0 and 1
// (one replica each), and the engine executable is a wrapper that runs the real engine on the
// CPU, keeping the environment the supervisor gave it (CUDA_VISIBLE_DEVICES,
// CUDA_DEVICE_ORDER). The GPU verdicts are what the daemon's NVML watcher would pass.
#include <condition_variable>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cpu_engine.h"
#include "inferbox/daemon/engine_frontend.h"
#include "inferbox/daemon/supervisor.h"
#include "temp_dir.h"
#include "tiny_model.h"

namespace inferbox::testing {
namespace {

namespace api = ::inferbox::v1;
namespace wire = ::inferbox::engine::v1;
using daemon::EngineFrontend;
using daemon::ModelServeConfig;
using daemon::Supervisor;
using monitoring::GpuHealth;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr auto kTimeout = 60s;

GpuHealth Gpus(std::vector<std::pair<uint32_t, std::string>> gpus) {
  GpuHealth health;
  for (auto& [index, fault] : gpus) {
    health.gpus.push_back({.index = index,
                           .uuid = fmt::format("GPU-{}", index),
                           .name = "NVIDIA H100",
                           .healthy = fault.empty(),
                           .reason = fault});
  }
  return health;
}

class GpuFenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MakeTinyModel(dir_ / "model", "qwen3", {"--arch", "qwen3", "--seed", "5"}, dir_.path());
    WriteCpuEngineWrapper(dir_ / "engine-on-cpu", INFERBOX_ENGINE_PATH, dir_ / "devices.log");
    daemon::SupervisorOptions options;
    options.engine_executable = dir_ / "engine-on-cpu";
    options.runtime_dir = dir_ / "run";
    options.state_dir = dir_ / "state";
    options.supervision.health_interval = 200ms;
    options.supervision.health_timeout = 1s;
    ModelServeConfig model;
    model.name = "tiny";
    model.path = dir_ / "model";
    model.kv_cache_gib = 0.1;
    model.device = "cuda";
    model.gpus = {0, 1};
    model.replicas = 2;
    supervisor_ = std::make_unique<Supervisor>(options, std::vector<ModelServeConfig>{model});
    supervisor_->SetStateListener([this] {
      { std::lock_guard lock(mutex_); }
      changed_.notify_all();
    });
    supervisor_->SetGpuHealth(Gpus({{0, ""}, {1, ""}}));
    frontend_ = std::make_unique<EngineFrontend>(*supervisor_, nullptr);
    supervisor_->Start();
  }

  void TearDown() override {
    supervisor_->SetStateListener(nullptr);
    supervisor_->Stop(0ms);
  }

  api::EngineInfo Engine(uint32_t replica) {
    return supervisor_->Replicas("tiny").at(replica)->Info();
  }

  // True once `done` holds (checked on every state change, and every 100 ms).
  bool WaitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout = kTimeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::unique_lock lock(mutex_);
    for (;;) {
      lock.unlock();
      if (done()) return true;
      lock.lock();
      if (std::chrono::steady_clock::now() >= deadline) return false;
      changed_.wait_for(lock, 100ms);
    }
  }

  bool BothReady() {
    return Engine(0).state() == api::ENGINE_STATE_READY &&
           Engine(1).state() == api::ENGINE_STATE_READY;
  }

  // A request through the router: it must succeed with every token.
  ::testing::AssertionResult Serves() {
    api::GenerateRequest request;
    request.set_model("tiny");
    for (const int id : {1, 2, 3}) request.mutable_token_ids()->add_ids(id);
    request.mutable_stop()->set_max_tokens(4);
    request.mutable_stop()->set_ignore_eos(true);
    auto stream = frontend_->Generate(request, daemon::Caller(), std::nullopt);
    if (!stream.ok()) return ::testing::AssertionFailure() << stream.status().message();
    api::GenerateChunk chunk;
    int tokens = 0;
    while ((*stream)->Read(&chunk, 60s) == daemon::GenerationStream::Next::kChunk)
      tokens += chunk.token_ids_size();
    if (!(*stream)->status().ok())
      return ::testing::AssertionFailure() << (*stream)->status().message();
    if (tokens != 4) return ::testing::AssertionFailure() << tokens << " tokens, not 4";
    return ::testing::AssertionSuccess();
  }

  TempDir dir_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::unique_ptr<Supervisor> supervisor_;
  std::unique_ptr<EngineFrontend> frontend_;
};

TEST_F(GpuFenceTest, AFaultyGpuStopsOnlyItsEngineUntilItHeals) {
  ASSERT_TRUE(WaitFor([&] { return BothReady(); })) << "both replicas should become READY";
  const int64_t untouched_pid = Engine(0).pid();

  // A stream in flight on the replica whose GPU is about to fail.
  const auto stub = supervisor_->Replicas("tiny").at(1)->stub();
  ASSERT_NE(stub, nullptr);
  wire::GenerateRequest in_flight;
  in_flight.set_request_id("in-flight");
  for (const int id : {1, 2, 3}) in_flight.mutable_completion()->mutable_token_ids()->add_ids(id);
  in_flight.mutable_completion()->mutable_stop()->set_max_tokens(200);
  in_flight.mutable_completion()->mutable_stop()->set_ignore_eos(true);
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, in_flight);
  wire::GenerateChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk)) << "the stream should start";
  int tokens = chunk.chunk().token_ids_size();

  supervisor_->SetGpuHealth(Gpus({{0, ""}, {1, "Xid 79: GPU has fallen off the bus"}}));
  // Its engine leaves READY; the request in flight finishes (drain), then the engine stops.
  while (reader->Read(&chunk)) tokens += chunk.chunk().token_ids_size();
  EXPECT_TRUE(reader->Finish().ok()) << "the request in flight drains to its end";
  EXPECT_EQ(tokens, 200);
  ASSERT_TRUE(WaitFor([&] {
    const api::EngineInfo held = Engine(1);
    return held.state() == api::ENGINE_STATE_RESTARTING && !held.process_live();
  })) << "the engine on GPU 1 should be stopped and held";
  const api::EngineInfo held = Engine(1);
  EXPECT_EQ(held.gpu_fault(), "GPU 1 (GPU-1): Xid 79: GPU has fallen off the bus");
  EXPECT_EQ(held.pid(), 0);
  EXPECT_THAT(supervisor_->Replicas("tiny").at(1)->Unavailability(), HasSubstr("Xid 79"));

  // The other replica never noticed, and the model keeps serving through it.
  EXPECT_EQ(Engine(0).state(), api::ENGINE_STATE_READY);
  EXPECT_EQ(Engine(0).pid(), untouched_pid);
  EXPECT_EQ(Engine(0).restarts(), 0u);
  EXPECT_EQ(supervisor_->ModelStateOf("tiny"), api::MODEL_STATE_READY);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(Serves());
  // Held, not crash-looping: still down a while later.
  std::this_thread::sleep_for(1s);
  EXPECT_EQ(Engine(1).state(), api::ENGINE_STATE_RESTARTING);
  EXPECT_FALSE(Engine(1).process_live());

  // The GPU heals (after its reset): the engine starts afresh.
  supervisor_->SetGpuHealth(Gpus({{0, ""}, {1, ""}}));
  ASSERT_TRUE(WaitFor([&] { return BothReady(); })) << "the engine on GPU 1 should come back";
  EXPECT_EQ(Engine(1).gpu_fault(), "");
  EXPECT_EQ(Engine(1).restarts(), 1u);
  EXPECT_EQ(Engine(0).pid(), untouched_pid);

  // Each engine saw only its own GPU, numbered in PCI bus order as NVML numbers them.
  std::ifstream log(dir_ / "devices.log");
  std::stringstream devices;
  devices << log.rdbuf();
  EXPECT_THAT(devices.str(), HasSubstr("0 PCI_BUS_ID\n"));
  EXPECT_THAT(devices.str(), HasSubstr("1 PCI_BUS_ID\n"));
}

// Fails closed: while a fault is known, a GPU NVML does not list cannot be told apart from
// the faulty one, so its engine stops too and the model cannot serve.
TEST_F(GpuFenceTest, AnEngineOnAGpuNvmlDoesNotListStopsWhileAnyGpuIsFaulty) {
  ASSERT_TRUE(WaitFor([&] { return BothReady(); }));
  supervisor_->SetGpuHealth(Gpus({{0, "GPU lost"}}));
  ASSERT_TRUE(WaitFor([&] {
    return !Engine(0).process_live() && !Engine(1).process_live() &&
           Engine(0).state() == api::ENGINE_STATE_RESTARTING &&
           Engine(1).state() == api::ENGINE_STATE_RESTARTING;
  })) << "both engines should be held";
  EXPECT_EQ(Engine(0).gpu_fault(), "GPU 0 (GPU-0): GPU lost");
  EXPECT_THAT(Engine(1).gpu_fault(), HasSubstr("GPU 1: not among the GPUs NVML lists"));
  EXPECT_EQ(supervisor_->ModelStateOf("tiny"), api::MODEL_STATE_RESTARTING);
  EXPECT_FALSE(Serves()) << "no engine may serve";

  supervisor_->SetGpuHealth(Gpus({{0, ""}, {1, ""}}));
  EXPECT_TRUE(WaitFor([&] { return BothReady(); }));
  EXPECT_TRUE(Serves());
}

}  // namespace
}  // namespace inferbox::testing
