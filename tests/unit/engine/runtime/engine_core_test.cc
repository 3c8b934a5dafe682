// The whole step (schedule, batched forward, sample, commit) on a real tiny model: requests
// batched together, chunked, preempted or sharing prefixes produce exactly the greedy tokens
// each produces alone.
#include "inferbox/engine/runtime/engine_core.h"

#include <map>
#include <random>

#include <gtest/gtest.h>

#include "temp_dir.h"
#include "tiny_model.h"

namespace inferbox::engine {
namespace {

class EngineCoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new inferbox::testing::TempDir();
    inferbox::testing::MakeTinyModel(scratch_->path() / "model", "qwen3",
                                     {"--arch", "qwen3", "--seed", "4"}, scratch_->path());
    backend_ = MakeCpuBackend().release();
    auto model = Model::Load(scratch_->path() / "model", *backend_);
    if (model.ok()) model_ = std::move(model).value().release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete backend_;
    delete scratch_;
  }
  void SetUp() override { ASSERT_NE(model_, nullptr) << "the tiny model did not load"; }

  struct Spec {
    std::vector<int32_t> prompt;
    int64_t max_tokens;
    uint64_t seed = 0;
  };

  // Runs the requests together, greedy or sampled at `temperature` (each with its spec's
  // seed); returns each one's tokens.
  std::map<int64_t, std::vector<int32_t>> RunAll(const std::vector<Spec>& specs, int32_t num_blocks,
                                                 SchedulerLimits limits,
                                                 EngineCore** core_out = nullptr,
                                                 float temperature = 0.0f) {
    core_ = std::make_unique<EngineCore>(*model_, *backend_, num_blocks, 4, limits);
    for (size_t i = 0; i < specs.size(); ++i) {
      GenerationRequest request;
      request.id = static_cast<int64_t>(i);
      request.prompt = specs[i].prompt;
      request.sampling.temperature = temperature;
      request.sampling.seed = specs[i].seed;
      request.stop.max_tokens = specs[i].max_tokens;
      request.stop.ignore_eos = true;
      EXPECT_TRUE(core_->Add(request).ok());
    }
    std::map<int64_t, std::vector<int32_t>> outputs;
    for (int step = 0; step < 10000 && core_->has_work(); ++step) {
      auto events = core_->Step();
      EXPECT_TRUE(events.ok()) << events.status().ToString();
      if (!events.ok()) break;
      for (const TokenEvent& event : events->events) outputs[event.id].push_back(event.token);
    }
    EXPECT_FALSE(core_->has_work()) << "requests never finished";
    if (core_out != nullptr) *core_out = core_.get();
    return outputs;
  }

  std::vector<int32_t> Alone(const Spec& spec, float temperature = 0.0f) {
    return RunAll({spec}, 256, {1, 4096, 512}, nullptr, temperature)[0];
  }

  static std::vector<Spec> Specs(int count, int seed, std::vector<int32_t> prefix = {}) {
    std::mt19937 rng(static_cast<uint32_t>(seed));
    std::uniform_int_distribution<int32_t> token(1, 150000);
    std::vector<Spec> specs;
    for (int i = 0; i < count; ++i) {
      std::vector<int32_t> prompt = prefix;
      const int length = 2 + (i * 7) % 29;
      for (int t = 0; t < length; ++t) prompt.push_back(token(rng));
      specs.push_back({prompt, 3 + i % 6, static_cast<uint64_t>(1000 + i)});
    }
    return specs;
  }

  void ExpectSameAsAlone(const std::vector<Spec>& specs,
                         const std::map<int64_t, std::vector<int32_t>>& together,
                         float temperature = 0.0f) {
    for (size_t i = 0; i < specs.size(); ++i) {
      EXPECT_EQ(together.at(static_cast<int64_t>(i)), Alone(specs[i], temperature))
          << "request " << i << " differs from alone";
    }
  }

  static inferbox::testing::TempDir* scratch_;
  static Backend* backend_;
  static Model* model_;
  std::unique_ptr<EngineCore> core_;
};

inferbox::testing::TempDir* EngineCoreTest::scratch_ = nullptr;
Backend* EngineCoreTest::backend_ = nullptr;
Model* EngineCoreTest::model_ = nullptr;

TEST_F(EngineCoreTest, BatchedAndChunkedRequestsGiveTheirTokensAlone) {
  const auto specs = Specs(24, 1);
  EngineCore* core = nullptr;
  const auto together = RunAll(specs, 512, {24, 32, 512}, &core);  // Small budget: chunked prefill.
  const int32_t free_blocks = core->blocks().num_free_blocks();
  EXPECT_EQ(free_blocks, 512);
  ExpectSameAsAlone(specs, together);
}

// Sampled rows are drawn on the host (the CPU backend), in parallel: each request's tokens
// are those its seed gives it alone, whatever shares its steps, and seeds matter.
TEST_F(EngineCoreTest, SampledRequestsGiveTheirTokensAloneWhateverTheBatch) {
  const auto specs = Specs(16, 5);
  const auto together = RunAll(specs, 512, {16, 256, 512}, nullptr, 1.0f);
  ExpectSameAsAlone(specs, together, 1.0f);
  auto reseeded = specs;
  for (auto& spec : reseeded) spec.seed += 1;
  EXPECT_NE(RunAll(reseeded, 512, {16, 256, 512}, nullptr, 1.0f), together)
      << "other seeds drew the same tokens: was anything sampled?";
}

TEST_F(EngineCoreTest, PreemptionKeepsOutputsExact) {
  const auto specs = Specs(12, 2);
  EngineCore* core = nullptr;
  const auto together = RunAll(specs, 14, {12, 64, 512}, &core);
  EXPECT_GT(core->scheduler().num_preemptions(), 0)
      << "the small KV cache should have forced preemption";
  ExpectSameAsAlone(specs, together);
}

TEST_F(EngineCoreTest, SharedPrefixesHitTheCacheAndKeepOutputsExact) {
  const auto specs =
      Specs(8, 3, std::vector<int32_t>{11, 22, 33, 44, 55, 66, 77, 88, 99, 111, 122, 133});
  EngineCore* core = nullptr;
  const auto together = RunAll(specs, 256, {2, 64, 512}, &core);
  EXPECT_GE(core->blocks().num_prefix_hit_tokens(), 8 * 6)
      << "later requests should reuse the 12-token prefix";
  ExpectSameAsAlone(specs, together);
}

TEST_F(EngineCoreTest, BadRequestsAreRefusedBeforeTheyQueue) {
  EngineCore core(*model_, *backend_, 16, 4, {4, 64, 512});
  GenerationRequest request;
  request.id = 1;
  request.prompt = {static_cast<int32_t>(model_->config().vocab_size)};
  request.stop.max_tokens = 4;
  EXPECT_EQ(core.Add(request).code(), StatusCode::kInvalidArgument);
  request.prompt = {1, 2, 3};
  request.stop.max_tokens = 0;
  EXPECT_EQ(core.Add(request).code(), StatusCode::kInvalidArgument);
  request.stop.max_tokens = 4;
  request.sampling.top_p = 0.0f;
  EXPECT_EQ(core.Add(request).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(core.has_work());
}

}  // namespace
}  // namespace inferbox::engine
