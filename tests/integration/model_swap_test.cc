// The supervisor's model set changing at run time, with real engine processes and tiny
// models: AddModel serves a new model, RemoveModel lets a stream in flight finish and then
// answers NOT_FOUND, ReplaceModel swaps a model's engines blue/green under a continuous
// load without a failed request, and a replacement whose engines cannot load leaves the old
// ones serving. Driven in-process through the Supervisor and the EngineFrontend (the Admin
// RPCs that call them are tested with the daemon).
#include <signal.h>

#include <atomic>
#include <condition_variable>
#include <fstream>
#include <future>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "inferbox/daemon/engine_frontend.h"
#include "inferbox/daemon/supervisor.h"
#include "temp_dir.h"
#include "tiny_model.h"

namespace inferbox::testing {
namespace {

namespace api = ::inferbox::v1;
using daemon::EngineFrontend;
using daemon::ModelServeConfig;
using daemon::Supervisor;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr auto kReadyTimeout = 60s;
constexpr auto kDrain = 10s;

// Wakes a waiting test thread whenever the supervisor reports a change.
class ChangeWaiter {
 public:
  explicit ChangeWaiter(Supervisor& supervisor) {
    supervisor.SetStateListener([this] {
      { std::lock_guard lock(mutex_); }
      changed_.notify_all();
    });
  }
  // True once `done` holds; false if it did not within `timeout`.
  bool WaitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    // The predicate reads the supervisor, which may call the listener: do not hold the
    // mutex while it runs, and re-check on a short period in case a change slipped by.
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      lock.unlock();
      if (done()) return true;
      lock.lock();
      if (std::chrono::steady_clock::now() >= deadline) return false;
      changed_.wait_for(lock, 100ms);
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
};

// A greedy completion of exactly `max_tokens` tokens (EOS ignored).
api::GenerateRequest Completion(const std::string& model, uint32_t max_tokens) {
  api::GenerateRequest request;
  request.set_model(model);
  for (const int id : {1, 2, 3, 4}) request.mutable_token_ids()->add_ids(id);
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_stop()->set_max_tokens(max_tokens);
  request.mutable_stop()->set_ignore_eos(true);
  return request;
}

struct Outcome {
  Status status;
  int tokens = 0;
};

// Reads `stream` to its end.
Outcome Finish(daemon::GenerationStream& stream) {
  Outcome outcome;
  api::GenerateChunk chunk;
  for (;;) {
    const auto next = stream.Read(&chunk, 60s);
    if (next == daemon::GenerationStream::Next::kEnd) break;
    if (next == daemon::GenerationStream::Next::kTimeout) {
      outcome.status = InternalError("no chunk within 60 s");
      return outcome;
    }
    outcome.tokens += chunk.token_ids_size();
  }
  outcome.status = stream.status();
  return outcome;
}

Outcome Request(EngineFrontend& frontend, const std::string& model, uint32_t max_tokens) {
  auto stream = frontend.Generate(Completion(model, max_tokens), daemon::Caller(), std::nullopt);
  if (!stream.ok()) return {stream.status(), 0};
  return Finish(**stream);
}

// Short requests in a loop on its own thread until destroyed; counts what failed and why.
class Load {
 public:
  Load(EngineFrontend& frontend, std::string model)
      : thread_([this, &frontend, model] {
          while (!stop_.load()) {
            const Outcome outcome = Request(frontend, model, 4);
            std::lock_guard lock(mutex_);
            ++done_;
            if (!outcome.status.ok() || outcome.tokens != 4) {
              failures_.push_back(outcome.status.ok() ? fmt::format("{} tokens", outcome.tokens)
                                                      : outcome.status.message());
            }
          }
        }) {}
  ~Load() { Stop(); }

  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  int done() {
    std::lock_guard lock(mutex_);
    return done_;
  }
  std::vector<std::string> failures() {
    std::lock_guard lock(mutex_);
    return failures_;
  }

 private:
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  int done_ = 0;
  std::vector<std::string> failures_;
  std::thread thread_;
};

bool ProcessExists(int64_t pid) {
  return pid > 0 && (kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH);
}

class ModelSwapTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new TempDir();
    MakeTinyModel(scratch_->path() / "blue", "qwen3",
                  {"--arch", "qwen3", "--seed", "5", "--max-position-embeddings", "512"},
                  scratch_->path());
    MakeTinyModel(scratch_->path() / "green", "qwen3",
                  {"--arch", "qwen3", "--seed", "7", "--max-position-embeddings", "1024"},
                  scratch_->path());
    // A folder the engine refuses: its config.json is not JSON.
    std::filesystem::create_directories(scratch_->path() / "broken");
    std::ofstream(scratch_->path() / "broken" / "config.json") << "{ not json";
  }
  static void TearDownTestSuite() { delete scratch_; }
  static std::filesystem::path folder(const char* name) { return scratch_->path() / name; }

  void SetUp() override {
    ASSERT_TRUE(std::filesystem::exists(folder("blue") / "config.json")) << "no tiny model";
    daemon::SupervisorOptions options;
    options.engine_executable = INFERBOX_ENGINE_PATH;
    options.runtime_dir = dir_ / "run";
    options.state_dir = dir_ / "state";
    options.supervision.health_interval = 200ms;
    options.supervision.health_timeout = 1s;
    options.supervision.max_restarts = 2;
    options.supervision.restart_window = 60s;
    supervisor_ = std::make_unique<Supervisor>(options, std::vector<ModelServeConfig>());
    waiter_ = std::make_unique<ChangeWaiter>(*supervisor_);
    frontend_ = std::make_unique<EngineFrontend>(*supervisor_, nullptr);
    supervisor_->Start();
  }

  void TearDown() override {
    supervisor_->SetStateListener(nullptr);
    supervisor_->Stop(0ms);
  }

  static ModelServeConfig Model(const char* folder_name, std::string name = "tiny") {
    ModelServeConfig model;
    model.name = std::move(name);
    model.path = folder(folder_name);
    model.kv_cache_gib = 0.1;
    return model;
  }

  ::testing::AssertionResult WaitReady(const std::string& model) {
    if (waiter_->WaitFor([&] { return supervisor_->ModelStateOf(model) == api::MODEL_STATE_READY; },
                         kReadyTimeout)) {
      return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure()
           << "model " << model << " not READY within " << kReadyTimeout.count() << " s";
  }

  // The pid of the replica `model` routes new requests to (one replica).
  int64_t ServingPid(const std::string& model) {
    const auto replicas = supervisor_->Replicas(model);
    return replicas.size() == 1 ? replicas[0]->Info().pid() : -1;
  }

  static TempDir* scratch_;
  TempDir dir_;
  std::unique_ptr<Supervisor> supervisor_;
  std::unique_ptr<ChangeWaiter> waiter_;
  std::unique_ptr<EngineFrontend> frontend_;
};

TempDir* ModelSwapTest::scratch_ = nullptr;

TEST_F(ModelSwapTest, AddModelServesItAndRefusesDuplicatesAndBadConfigs) {
  EXPECT_TRUE(supervisor_->models().empty());
  EXPECT_EQ(Request(*frontend_, "tiny", 1).status.code(), StatusCode::kNotFound)
      << "a model not added yet is unknown";

  ASSERT_TRUE(supervisor_->AddModel(Model("blue")).ok());
  EXPECT_EQ(supervisor_->AddModel(Model("green")).code(), StatusCode::kAlreadyExists)
      << "a served name cannot be added twice";
  EXPECT_EQ(supervisor_->AddModel(Model("blue", "Bad Name")).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(supervisor_->AddModel(Model("missing", "other")).code(), StatusCode::kInvalidArgument)
      << "a folder that does not exist is refused up front";

  ASSERT_TRUE(WaitReady("tiny"));
  const Outcome outcome = Request(*frontend_, "tiny", 8);
  EXPECT_TRUE(outcome.status.ok()) << outcome.status.message();
  EXPECT_EQ(outcome.tokens, 8);
  ASSERT_EQ(supervisor_->models().size(), 1u);
  EXPECT_EQ(supervisor_->models()[0].path, folder("blue"));
  const auto engines = supervisor_->Engines();
  ASSERT_EQ(engines.size(), 1u);
  EXPECT_EQ(engines[0].generation(), 1u);
  EXPECT_EQ(engines[0].state(), api::ENGINE_STATE_READY);
}

TEST_F(ModelSwapTest, AddModelRefusesAGpuAnotherModelUses) {
  auto cuda = [](std::string name, std::vector<uint32_t> gpus, uint32_t tensor_parallel) {
    ModelServeConfig model = Model("blue", std::move(name));
    model.device = "cuda";
    model.gpus = std::move(gpus);
    model.tensor_parallel = tensor_parallel;
    return model;
  };
  // Their engines cannot start without a GPU; what is checked is which GPUs may be claimed.
  ASSERT_TRUE(supervisor_->AddModel(cuda("first", {0, 1}, 2)).ok());
  const Status shared = supervisor_->AddModel(cuda("second", {1, 2}, 2));
  EXPECT_EQ(shared.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(shared.message(), HasSubstr("GPU 1 is already used by model first"));
  const Status unplaced = supervisor_->AddModel(cuda("third", {}, 1));
  EXPECT_EQ(unplaced.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(unplaced.message(), HasSubstr("gpus: device cuda needs the GPUs it was placed on"));
  const Status uneven = supervisor_->AddModel(cuda("fourth", {2, 3, 4}, 2));
  EXPECT_EQ(uneven.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(uneven.message(), HasSubstr("replicas x tensor_parallel = 1 x 2 needs 2"));
  EXPECT_TRUE(supervisor_->AddModel(cuda("second", {2, 3}, 2)).ok());
  const auto engines = supervisor_->Engines();
  ASSERT_EQ(engines.size(), 2u);
  EXPECT_THAT(engines[1].gpus(), ::testing::ElementsAre(2u, 3u));
}

TEST_F(ModelSwapTest, RemoveModelLetsTheStreamInFlightFinishThenAnswersNotFound) {
  ASSERT_TRUE(supervisor_->AddModel(Model("blue")).ok());
  ASSERT_TRUE(WaitReady("tiny"));
  const int64_t pid = ServingPid("tiny");
  ASSERT_GT(pid, 0);

  constexpr uint32_t kTokens = 200;
  auto stream = frontend_->Generate(Completion("tiny", kTokens), daemon::Caller(), std::nullopt);
  ASSERT_TRUE(stream.ok()) << stream.status().message();
  api::GenerateChunk first;
  ASSERT_EQ((*stream)->Read(&first, 60s), daemon::GenerationStream::Next::kChunk);

  auto removed =
      std::async(std::launch::async, [&] { return supervisor_->RemoveModel("tiny", kDrain); });
  ASSERT_TRUE(waiter_->WaitFor([&] { return supervisor_->FindModel("tiny") == nullptr; }, 10s));
  const Outcome refused = Request(*frontend_, "tiny", 1);
  EXPECT_EQ(refused.status.code(), StatusCode::kNotFound)
      << "a removed model must be unknown to new requests at once: " << refused.status.message();

  Outcome rest = Finish(**stream);
  EXPECT_TRUE(rest.status.ok()) << "the stream in flight must finish: " << rest.status.message();
  EXPECT_EQ(rest.tokens + first.token_ids_size(), static_cast<int>(kTokens));
  stream->reset();

  const Status status = removed.get();
  EXPECT_TRUE(status.ok()) << status.message();
  EXPECT_TRUE(supervisor_->models().empty());
  EXPECT_TRUE(supervisor_->Engines().empty());
  EXPECT_FALSE(ProcessExists(pid)) << "the engine process must be gone once RemoveModel returns";
  EXPECT_EQ(supervisor_->RemoveModel("tiny", kDrain).code(), StatusCode::kNotFound);

  // The name can be served again; its engines are a new generation.
  ASSERT_TRUE(supervisor_->AddModel(Model("blue")).ok());
  ASSERT_TRUE(WaitReady("tiny"));
  EXPECT_EQ(supervisor_->Replicas("tiny").at(0)->generation(), 2u);
  EXPECT_TRUE(Request(*frontend_, "tiny", 2).status.ok());
}

TEST_F(ModelSwapTest, ReplaceModelUnderLoadFailsNoRequestAndMovesNewRequestsToTheNewEngines) {
  ASSERT_TRUE(supervisor_->AddModel(Model("blue")).ok());
  ASSERT_TRUE(WaitReady("tiny"));
  const int64_t old_pid = ServingPid("tiny");
  ASSERT_EQ(supervisor_->Replicas("tiny").at(0)->traits().max_model_len, 512u);

  Load load(*frontend_, "tiny");
  ASSERT_TRUE(waiter_->WaitFor([&] { return load.done() >= 3; }, 30s)) << "no load";

  auto replaced = std::async(std::launch::async, [&] {
    return supervisor_->ReplaceModel(Model("green"), kReadyTimeout, kDrain);
  });
  // While the new engine starts: the old one still takes the requests, and the model cannot
  // be replaced or removed a second time.
  ASSERT_TRUE(waiter_->WaitFor([&] { return supervisor_->Engines().size() == 2; }, 10s));
  EXPECT_EQ(supervisor_->ReplaceModel(Model("green"), kReadyTimeout, kDrain).code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(supervisor_->RemoveModel("tiny", kDrain).code(), StatusCode::kFailedPrecondition);

  const Status status = replaced.get();
  ASSERT_TRUE(status.ok()) << status.message();
  const int done_at_switch = load.done();
  ASSERT_TRUE(waiter_->WaitFor([&] { return load.done() >= done_at_switch + 5; }, 30s));
  load.Stop();

  EXPECT_THAT(load.failures(), ::testing::IsEmpty()) << "a swap must fail no request";
  const auto replicas = supervisor_->Replicas("tiny");
  ASSERT_EQ(replicas.size(), 1u);
  EXPECT_EQ(replicas[0]->generation(), 2u);
  EXPECT_EQ(replicas[0]->traits().max_model_len, 1024u) << "new requests go to the green model";
  EXPECT_NE(replicas[0]->Info().pid(), old_pid);
  EXPECT_FALSE(ProcessExists(old_pid)) << "the old engine must have exited";
  ASSERT_EQ(supervisor_->Engines().size(), 1u);
  EXPECT_EQ(supervisor_->Engines()[0].generation(), 2u);
  EXPECT_EQ(supervisor_->models().at(0).path, folder("green"));
  EXPECT_EQ(frontend_->ListModels().at(0).max_model_len(), 1024u);
}

TEST_F(ModelSwapTest, ReplaceModelWithABrokenFolderKeepsTheOldEnginesServing) {
  ASSERT_TRUE(supervisor_->AddModel(Model("blue")).ok());
  ASSERT_TRUE(WaitReady("tiny"));
  const int64_t old_pid = ServingPid("tiny");

  EXPECT_EQ(supervisor_->ReplaceModel(Model("green", "other"), kReadyTimeout, kDrain).code(),
            StatusCode::kNotFound);
  EXPECT_EQ(supervisor_->ReplaceModel(Model("missing"), kReadyTimeout, kDrain).code(),
            StatusCode::kInvalidArgument);

  Load load(*frontend_, "tiny");
  ASSERT_TRUE(waiter_->WaitFor([&] { return load.done() >= 3; }, 30s)) << "no load";
  const Status status = supervisor_->ReplaceModel(Model("broken"), kReadyTimeout, kDrain);
  const int done_after = load.done();
  ASSERT_TRUE(waiter_->WaitFor([&] { return load.done() >= done_after + 3; }, 30s));
  load.Stop();

  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status.message();
  EXPECT_THAT(status.message(), HasSubstr("the new engine tiny/0 (generation 2)"));
  EXPECT_THAT(status.message(), HasSubstr("exited with status 78"));
  EXPECT_THAT(load.failures(), ::testing::IsEmpty());
  EXPECT_EQ(ServingPid("tiny"), old_pid) << "the old engine keeps serving";
  ASSERT_EQ(supervisor_->Engines().size(), 1u) << "the failed new engine is forgotten";
  EXPECT_EQ(supervisor_->Engines()[0].generation(), 1u);
  EXPECT_EQ(supervisor_->models().at(0).path, folder("blue"));

  // A failed replacement does not block the next one.
  ASSERT_TRUE(supervisor_->ReplaceModel(Model("green"), kReadyTimeout, kDrain).ok());
  EXPECT_EQ(supervisor_->Replicas("tiny").at(0)->generation(), 3u);
}

TEST_F(ModelSwapTest, ReplaceModelTimesOutWhenTheNewEngineIsNotReadyInTime) {
  ASSERT_TRUE(supervisor_->AddModel(Model("blue")).ok());
  ASSERT_TRUE(WaitReady("tiny"));
  const int64_t old_pid = ServingPid("tiny");
  const Status status = supervisor_->ReplaceModel(Model("green"), 1ms, kDrain);
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded) << status.message();
  EXPECT_THAT(status.message(), HasSubstr("not ready within 1 ms"));
  EXPECT_EQ(ServingPid("tiny"), old_pid);
  EXPECT_EQ(supervisor_->Engines().size(), 1u);
  EXPECT_TRUE(Request(*frontend_, "tiny", 2).status.ok());
}

}  // namespace
}  // namespace inferbox::testing
