// The daemon's relay of one engine Generate call (EngineFrontend's streams) read both ways,
// against a real engine process and a tiny model: pulled with Read, and pushed to a Sink on
// gRPC's threads (what the HTTP gateway's SSE streams use). A sink may hold the stream and
// resume it from another thread; chunks that came before Watch are handed over; a stream
// given up while held ends without hanging and frees the engine's request.
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "inferbox/daemon/engine_frontend.h"
#include "inferbox/daemon/supervisor.h"
#include "temp_dir.h"
#include "tiny_model.h"

namespace inferbox::testing {
namespace {

namespace api = ::inferbox::v1;
using daemon::GenerationStream;
using namespace std::chrono_literals;

constexpr uint32_t kTokens = 48;

// A greedy completion of exactly `max_tokens` tokens (EOS ignored).
api::GenerateRequest Completion(uint32_t max_tokens) {
  api::GenerateRequest request;
  request.set_model("tiny");
  for (const int id : {5, 6, 7, 8}) request.mutable_token_ids()->add_ids(id);
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_stop()->set_max_tokens(max_tokens);
  request.mutable_stop()->set_ignore_eos(true);
  return request;
}

// Records what a stream pushes; holds it after every `hold_every`-th chunk (0: never) and,
// when `resume_after` is set, resumes it from a thread of its own after that long.
class RecordingSink : public GenerationStream::Sink {
 public:
  RecordingSink(int hold_every, std::optional<std::chrono::milliseconds> resume_after)
      : hold_every_(hold_every), resume_after_(resume_after) {}
  ~RecordingSink() override {
    for (std::thread& thread : resumers_) thread.join();
  }

  void set_stream(GenerationStream* stream) { stream_ = stream; }

  bool OnChunk(api::GenerateChunk& chunk) override {
    std::lock_guard lock(mutex_);
    if (ended_) chunk_after_end_ = true;
    for (const int id : chunk.token_ids()) tokens_.push_back(id);
    ++chunks_;
    changed_.notify_all();
    if (hold_every_ == 0 || chunks_ % hold_every_ != 0) return true;
    ++holds_;
    if (resume_after_) {
      resumers_.emplace_back([this, wait = *resume_after_] {
        std::this_thread::sleep_for(wait);
        stream_->Resume();
      });
    }
    return false;
  }
  void OnEnd() override {
    std::lock_guard lock(mutex_);
    ++ends_;
    ended_ = true;
    changed_.notify_all();
  }

  bool WaitEnded(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [this] { return ended_; });
  }
  bool WaitChunks(int count, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return chunks_ >= count; });
  }
  std::vector<int> tokens() {
    std::lock_guard lock(mutex_);
    return tokens_;
  }
  int holds() {
    std::lock_guard lock(mutex_);
    return holds_;
  }
  int ends() {
    std::lock_guard lock(mutex_);
    return ends_;
  }
  bool chunk_after_end() {
    std::lock_guard lock(mutex_);
    return chunk_after_end_;
  }

 private:
  const int hold_every_;
  const std::optional<std::chrono::milliseconds> resume_after_;
  GenerationStream* stream_ = nullptr;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<int> tokens_;
  int chunks_ = 0;
  int holds_ = 0;
  int ends_ = 0;
  bool ended_ = false;
  bool chunk_after_end_ = false;
  std::vector<std::thread> resumers_;
};

class EngineStreamTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new TempDir();
    MakeTinyModel(scratch_->path() / "tiny", "qwen3",
                  {"--arch", "qwen3", "--seed", "5", "--max-position-embeddings", "512"},
                  scratch_->path());
  }
  static void TearDownTestSuite() { delete scratch_; }

  void SetUp() override {
    ASSERT_TRUE(std::filesystem::exists(scratch_->path() / "tiny" / "config.json"))
        << "no tiny model";
    daemon::SupervisorOptions options;
    options.engine_executable = INFERBOX_ENGINE_PATH;
    options.runtime_dir = dir_ / "run";
    options.state_dir = dir_ / "state";
    daemon::ModelServeConfig model;
    model.name = "tiny";
    model.path = scratch_->path() / "tiny";
    model.kv_cache_gib = 0.1;
    supervisor_ = std::make_unique<daemon::Supervisor>(options, std::vector{model});
    frontend_ = std::make_unique<daemon::EngineFrontend>(*supervisor_, nullptr);
    supervisor_->Start();
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (supervisor_->ModelStateOf("tiny") != api::MODEL_STATE_READY) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the tiny model never got READY";
      std::this_thread::sleep_for(50ms);
    }
  }
  void TearDown() override { supervisor_->Stop(0ms); }

  std::unique_ptr<GenerationStream> Start(uint32_t max_tokens = kTokens) {
    auto stream = frontend_->Generate(Completion(max_tokens), daemon::Caller(), std::nullopt);
    EXPECT_TRUE(stream.ok()) << stream.status().message();
    return stream.ok() ? std::move(stream).value() : nullptr;
  }

  // The tokens of a request read with Read, and how it ended.
  std::pair<std::vector<int>, Status> Pull(uint32_t max_tokens = kTokens) {
    std::unique_ptr<GenerationStream> stream = Start(max_tokens);
    if (stream == nullptr) return {{}, InternalError("not started")};
    std::vector<int> tokens;
    api::GenerateChunk chunk;
    for (;;) {
      const GenerationStream::Next next = stream->Read(&chunk, 30s);
      if (next == GenerationStream::Next::kTimeout) return {tokens, InternalError("timed out")};
      if (next == GenerationStream::Next::kEnd) break;
      tokens.insert(tokens.end(), chunk.token_ids().begin(), chunk.token_ids().end());
    }
    return {tokens, stream->status()};
  }

  int64_t Outstanding() {
    const auto replicas = supervisor_->Replicas("tiny");
    return replicas.size() == 1 ? replicas[0]->outstanding_tokens.load() : -1;
  }

  static TempDir* scratch_;
  TempDir dir_;
  std::unique_ptr<daemon::Supervisor> supervisor_;
  std::unique_ptr<daemon::EngineFrontend> frontend_;
};

TempDir* EngineStreamTest::scratch_ = nullptr;

TEST_F(EngineStreamTest, ASinkHeldAndResumedGetsWhatReadGetsThenOneEnd) {
  const auto [pulled, pulled_status] = Pull();
  ASSERT_TRUE(pulled_status.ok()) << pulled_status.message();
  ASSERT_EQ(pulled.size(), kTokens);

  std::unique_ptr<GenerationStream> stream = Start();
  ASSERT_NE(stream, nullptr);
  auto sink = std::make_shared<RecordingSink>(/*hold_every=*/3, 20ms);
  sink->set_stream(stream.get());
  stream->Watch(sink);
  ASSERT_TRUE(sink->WaitEnded(30s))
      << "the stream never ended; it got " << sink->tokens().size() << " tokens";
  EXPECT_TRUE(stream->status().ok()) << stream->status().message();
  EXPECT_EQ(sink->tokens(), pulled) << "greedy: the same tokens either way";
  EXPECT_GT(sink->holds(), 0);
  stream.reset();
  EXPECT_EQ(sink->ends(), 1);
  EXPECT_FALSE(sink->chunk_after_end());
}

TEST_F(EngineStreamTest, ChunksThatCameBeforeWatchGoToTheSink) {
  const auto [pulled, pulled_status] = Pull();
  ASSERT_TRUE(pulled_status.ok()) << pulled_status.message();

  std::unique_ptr<GenerationStream> stream = Start();
  ASSERT_NE(stream, nullptr);
  // One chunk read, so that the engine is generating; the next then waits for a consumer (a
  // tiny model's token takes milliseconds).
  api::GenerateChunk first;
  ASSERT_EQ(stream->Read(&first, 30s), GenerationStream::Next::kChunk);
  std::this_thread::sleep_for(300ms);
  auto sink = std::make_shared<RecordingSink>(/*hold_every=*/0, std::nullopt);
  stream->Watch(sink);
  ASSERT_TRUE(sink->WaitEnded(30s));
  EXPECT_TRUE(stream->status().ok()) << stream->status().message();
  std::vector<int> tokens(first.token_ids().begin(), first.token_ids().end());
  for (const int token : sink->tokens()) tokens.push_back(token);
  EXPECT_EQ(tokens, pulled);
}

TEST_F(EngineStreamTest, AStreamGivenUpWhileHeldEndsAndFreesTheEngine) {
  std::unique_ptr<GenerationStream> stream = Start(400);
  ASSERT_NE(stream, nullptr);
  auto sink = std::make_shared<RecordingSink>(/*hold_every=*/1, std::nullopt);  // Never resumed.
  stream->Watch(sink);
  ASSERT_TRUE(sink->WaitChunks(1, 30s));
  EXPECT_GT(Outstanding(), 0);
  // Without Cancel: the stream cancels what it gives up. On a thread of its own, so that a
  // destructor that hangs fails the test instead of hanging it.
  auto released = std::make_shared<std::promise<void>>();
  std::future<void> done = released->get_future();
  std::thread([stream = std::move(stream), released]() mutable {
    stream.reset();
    released->set_value();
  }).detach();
  ASSERT_EQ(done.wait_for(10s), std::future_status::ready) << "giving up a held stream hung";
  EXPECT_LT(sink->tokens().size(), 400u);
  EXPECT_EQ(sink->ends(), 0) << "a stream given up hands nothing more to its sink";
  EXPECT_EQ(Outstanding(), 0);

  const auto [after, after_status] = Pull(8);
  EXPECT_TRUE(after_status.ok()) << after_status.message();
  EXPECT_EQ(after.size(), 8u) << "the engine serves on";
}

}  // namespace
}  // namespace inferbox::testing
