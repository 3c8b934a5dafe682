// Tensor parallelism on the CPU with the in-process communicator: a model split over 2 and 4
// ranks gives the same greedy tokens as the whole model on one backend, for every tiny
// architecture, with its logits within 1e-4 of the row's largest logit (float32 sums taken
// in another order), step by step through EngineCore with chunked prefill and a shared
// prefix served from the prefix cache. The cases cover KV heads split among the ranks, KV
// heads replicated on several ranks (fewer KV heads than ranks), and both LM heads: sliced
// by vocabulary where the ranks divide it (the Llama 3 tokenizer's 128256 ids) and whole on
// every rank where they do not (151669 Qwen and 128815 DeepSeek ids).
#include "inferbox/engine/parallel/tensor_parallel_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <random>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "inferbox/engine/runtime/engine_core.h"
#include "inferbox/engine/runtime/runtime.h"
#include "temp_dir.h"
#include "tiny_model.h"

namespace inferbox::engine {
namespace {

constexpr double kLogitTolerance = 1e-4;  // Of the largest |logit| in the row.

using Case = inferbox::testing::TinyModelCase;

// Every architecture of the forward tests, whose 4 query heads and 2 KV heads give 1 KV head
// per rank at 2 ranks and, at 4 ranks, each KV head held by the two ranks whose query heads
// use it; and two shapes more.
std::vector<Case> Cases() {
  std::vector<Case> cases = inferbox::testing::TinyArchitectures();
  // 8 query heads and 4 KV heads: 2 KV heads per rank at 2 ranks.
  cases.push_back({"llama_f32_8heads_4kv",
                   {"--arch", "llama", "--num-heads", "8", "--num-kv-heads", "4", "--seed", "6"},
                   "llama3_1"});
  // One KV head (multi-query) with its bias, replicated on every rank.
  cases.push_back(
      {"qwen2_f32_1kv", {"--arch", "qwen2", "--num-kv-heads", "1", "--seed", "8"}, "qwen3"});
  return cases;
}

Result<std::unique_ptr<TensorParallelModel>> LoadParallel(const std::filesystem::path& dir,
                                                          int32_t world_size) {
  return TensorParallelModel::Load(
      dir, MakeLocalCommunicators(world_size),
      [](int32_t) -> Result<std::unique_ptr<Backend>> { return MakeCpuBackend(); });
}

// Passes every step through and keeps a host copy of its logits; for a tensor-parallel
// model also counts the steps where a rank's logits differ from rank 0's in any bit.
class RecordingRunner final : public ForwardingModelRunner {
 public:
  RecordingRunner(ModelRunner& inner, const TensorParallelModel* parallel)
      : ForwardingModelRunner(inner), parallel_(parallel) {}

  Result<std::span<const float>> ForwardOnBackend(std::span<const ForwardSequence> batch,
                                                  KvCache& cache, bool all_positions) override {
    auto logits = inner().ForwardOnBackend(batch, cache, all_positions);
    if (!logits.ok()) return logits;
    std::vector<float> scratch;
    const std::span<const float> host = inner().logits_backend().ReadBack(*logits, scratch);
    steps.emplace_back(host.begin(), host.end());
    if (parallel_ != nullptr) {
      for (int32_t r = 1; r < parallel_->world_size(); ++r) {
        const std::span<const float> other = parallel_->rank_logits(r);
        if (other.size() != host.size() ||
            std::memcmp(other.data(), host.data(), host.size_bytes()) != 0)
          ++num_rank_mismatches;
      }
    }
    return logits;
  }

  std::vector<std::vector<float>> steps;
  int num_rank_mismatches = 0;

 private:
  const TensorParallelModel* parallel_;
};

struct RecordedRun {
  std::map<int64_t, std::vector<int32_t>> tokens;
  std::vector<std::vector<float>> step_logits;
  int64_t prefix_hit_tokens = 0;
  int num_rank_mismatches = 0;
};

// Six requests with a 12-token shared prefix, at most two running and 8 tokens per step:
// prompts are prefilled in chunks, and later requests find the prefix's blocks cached.
std::vector<GenerationRequest> Requests() {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> token(1, 100000);
  const std::vector<int32_t> prefix = {11, 22, 33, 44, 55, 66, 77, 88, 99, 111, 122, 133};
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 6; ++i) {
    GenerationRequest request;
    request.id = i;
    request.prompt = prefix;
    for (int t = 0; t < 2 + (i * 5) % 13; ++t) request.prompt.push_back(token(rng));
    request.sampling.temperature = 0.0f;
    request.stop.max_tokens = 2 + i % 3;
    request.stop.ignore_eos = true;
    requests.push_back(std::move(request));
  }
  return requests;
}

RecordedRun RunRequests(ModelRunner& model, const TensorParallelModel* parallel) {
  RecordingRunner recorder(model, parallel);
  EngineCore core(recorder, 64, 4, {2, 8, 512});
  for (const GenerationRequest& request : Requests()) EXPECT_TRUE(core.Add(request).ok());
  RecordedRun run;
  for (int step = 0; step < 1000 && core.has_work(); ++step) {
    auto output = core.Step();
    EXPECT_TRUE(output.ok()) << output.status().ToString();
    if (!output.ok()) break;
    for (const TokenEvent& event : output->events) run.tokens[event.id].push_back(event.token);
  }
  EXPECT_FALSE(core.has_work()) << "requests never finished";
  run.step_logits = std::move(recorder.steps);
  run.prefix_hit_tokens = core.blocks().num_prefix_hit_tokens();
  run.num_rank_mismatches = recorder.num_rank_mismatches;
  return run;
}

// The largest |a - b| of any logit over the largest |logit| of its row, over all steps.
double WorstRelativeError(const std::vector<std::vector<float>>& expected,
                          const std::vector<std::vector<float>>& actual, int64_t vocab) {
  double worst = 0.0;
  for (size_t s = 0; s < std::min(expected.size(), actual.size()); ++s) {
    if (expected[s].size() != actual[s].size()) return INFINITY;
    for (size_t row = 0; row * static_cast<size_t>(vocab) < expected[s].size(); ++row) {
      const auto begin = static_cast<int64_t>(row) * vocab;
      double largest = 0.0;
      double difference = 0.0;
      for (int64_t i = begin; i < begin + vocab; ++i) {
        const auto at = static_cast<size_t>(i);
        largest = std::max(largest, std::abs(static_cast<double>(expected[s][at])));
        difference =
            std::max(difference, std::abs(static_cast<double>(expected[s][at]) - actual[s][at]));
      }
      worst = std::max(worst, difference / std::max(largest, 1e-30));
    }
  }
  return worst;
}

class TensorParallelTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    model_dir_ = scratch_.path() / "model";
    ASSERT_NO_FATAL_FAILURE(inferbox::testing::MakeTinyModel(
        model_dir_, GetParam().tokenizer, GetParam().make_model_args, scratch_.path()));
  }

  inferbox::testing::TempDir scratch_;
  std::filesystem::path model_dir_;
};

TEST_P(TensorParallelTest, TwoAndFourRanksGiveTheTokensAndLogitsOfOne) {
  auto backend = MakeCpuBackend();
  auto whole = Model::Load(model_dir_, *backend);
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  const ModelConfig& config = (*whole)->config();
  const RecordedRun expected = RunRequests(**whole, nullptr);
  ASSERT_GT(expected.prefix_hit_tokens, 0) << "the shared prefix should come from the cache";

  for (const int32_t world_size : {2, 4}) {
    SCOPED_TRACE(::testing::Message() << "tensor parallel size " << world_size);
    auto parallel = LoadParallel(model_dir_, world_size);
    ASSERT_TRUE(parallel.ok()) << parallel.status().ToString();
    // Each rank caches its KV heads only: a share of them, or one when they are fewer than
    // the ranks.
    const int64_t kv_heads_per_rank = std::max<int64_t>(1, config.num_key_value_heads / world_size);
    for (int32_t r = 0; r < world_size; ++r) {
      EXPECT_EQ((*parallel)->shard(r).KvShape(1, 4).num_kv_heads, kv_heads_per_rank);
    }
    EXPECT_EQ((*parallel)->KvCacheBytesPerBlock(4),
              world_size * backend->KvCacheBytes({config.num_hidden_layers, 1, 4, kv_heads_per_rank,
                                                  config.head_dim}));

    const RecordedRun actual = RunRequests(**parallel, parallel->get());
    EXPECT_EQ(actual.tokens, expected.tokens) << "greedy tokens differ from one rank's";
    EXPECT_EQ(actual.prefix_hit_tokens, expected.prefix_hit_tokens);
    ASSERT_EQ(actual.step_logits.size(), expected.step_logits.size());
    EXPECT_EQ(actual.num_rank_mismatches, 0)
        << "every rank should compute the same logits, bit for bit";
    const double worst =
        WorstRelativeError(expected.step_logits, actual.step_logits, config.vocab_size);
    EXPECT_LE(worst, kLogitTolerance) << "logits drift from one rank's";
    RecordProperty("max_relative_logit_error_tp" + std::to_string(world_size),
                   fmt::format("{:.3g}", worst));
    std::printf("%s: tensor parallel %d: max logit error %.3g of the row's largest logit\n",
                GetParam().name.c_str(), world_size, worst);
  }
}

INSTANTIATE_TEST_SUITE_P(TinyModels, TensorParallelTest, ::testing::ValuesIn(Cases()),
                         [](const auto& test_info) { return test_info.param.name; });

TEST(TensorParallel, RunsAgainWithTheSameBits) {
  inferbox::testing::TempDir scratch;
  const auto dir = scratch.path() / "model";
  ASSERT_NO_FATAL_FAILURE(inferbox::testing::MakeTinyModel(
      dir, "llama3_1", {"--arch", "llama", "--seed", "4"}, scratch.path()));
  auto first = LoadParallel(dir, 4);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  const RecordedRun once = RunRequests(**first, first->get());
  const RecordedRun again = RunRequests(**first, first->get());
  EXPECT_EQ(once.tokens, again.tokens);
  EXPECT_EQ(once.step_logits, again.step_logits) << "a rerun should reproduce every logit";
}

TEST(TensorParallel, ModelsThatDoNotSplitAreRefusedByName) {
  inferbox::testing::TempDir scratch;
  struct Refusal {
    std::vector<std::string> args;
    int32_t world_size;
    std::string message;
  };
  const Refusal refusals[] = {
      {{"--arch", "llama"},
       3,
       "tensor parallel size 3 does not divide the model's 4 attention heads"},
      {{"--arch", "llama", "--num-heads", "6", "--num-kv-heads", "2", "--hidden-size", "96"},
       3,
       "tensor parallel size 3 and the model's 2 KV heads: one must divide the other"},
      {{"--arch", "llama", "--intermediate-size", "130"},
       4,
       "tensor parallel size 4 does not divide the model's intermediate_size 130"},
  };
  int index = 0;
  for (const Refusal& refusal : refusals) {
    const auto dir = scratch.path() / ("model" + std::to_string(index++));
    ASSERT_NO_FATAL_FAILURE(
        inferbox::testing::MakeTinyModel(dir, "llama3_1", refusal.args, scratch.path()));
    auto parallel = LoadParallel(dir, refusal.world_size);
    ASSERT_FALSE(parallel.ok()) << "a model that does not split was loaded";
    EXPECT_EQ(parallel.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(parallel.status().message().find(refusal.message), std::string::npos)
        << parallel.status().message();
    auto backend = MakeCpuBackend();
    EXPECT_TRUE(Model::Load(dir, *backend).ok()) << "the same model should load whole";
  }
}

TEST(TensorParallel, RefusesAKvCacheItDidNotMake) {
  inferbox::testing::TempDir scratch;
  const auto dir = scratch.path() / "model";
  ASSERT_NO_FATAL_FAILURE(
      inferbox::testing::MakeTinyModel(dir, "qwen3", {"--arch", "qwen3"}, scratch.path()));
  auto parallel = LoadParallel(dir, 2);
  ASSERT_TRUE(parallel.ok()) << parallel.status().ToString();
  auto backend = MakeCpuBackend();
  auto whole = Model::Load(dir, *backend);
  ASSERT_TRUE(whole.ok());
  auto foreign = (*whole)->AllocateKvCache(4, 4);
  const std::vector<int32_t> tokens = {1, 2, 3};
  const std::vector<int32_t> table = {0};
  const ForwardSequence sequence{tokens, 0, table};
  const Status status = (*parallel)->Forward(std::span(&sequence, 1), *foreign, false).status();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  // A bad batch fails on every rank alike, before any collective: nothing hangs.
  auto cache = (*parallel)->AllocateKvCache(4, 4);
  const std::vector<int32_t> outside = {static_cast<int32_t>((*parallel)->config().vocab_size)};
  const ForwardSequence bad{outside, 0, table};
  EXPECT_EQ((*parallel)->Forward(std::span(&bad, 1), *cache, false).status().code(),
            StatusCode::kInvalidArgument);
  auto good = (*parallel)->Forward(std::span(&sequence, 1), *cache, false);
  EXPECT_TRUE(good.ok()) << good.status().ToString();
}

TEST(TensorParallel, RuntimeServesFromTheEngineThread) {
  inferbox::testing::TempDir scratch;
  const auto dir = scratch.path() / "model";
  ASSERT_NO_FATAL_FAILURE(
      inferbox::testing::MakeTinyModel(dir, "qwen3", {"--arch", "qwen3"}, scratch.path()));
  auto backend = MakeCpuBackend();
  auto whole = Model::Load(dir, *backend);
  ASSERT_TRUE(whole.ok());
  auto parallel = LoadParallel(dir, 2);
  ASSERT_TRUE(parallel.ok()) << parallel.status().ToString();

  auto generate = [](ModelRunner& model) {
    RuntimeOptions options;
    options.num_blocks = 64;
    options.block_size = 4;
    options.limits = {4, 16, 512};
    std::vector<int32_t> tokens;
    std::mutex mutex;
    {
      Runtime runtime(model, nullptr, options);
      RequestOptions request;
      request.prompt = {5, 6, 7, 8, 9, 10, 11, 12, 13};
      request.sampling.temperature = 0.0f;
      request.stop.max_tokens = 6;
      request.stop.ignore_eos = true;
      auto id = runtime.Submit(request, [&](Delta&& delta) {
        std::lock_guard lock(mutex);
        tokens.insert(tokens.end(), delta.token_ids.begin(), delta.token_ids.end());
      });
      EXPECT_TRUE(id.ok()) << id.status().ToString();
      EXPECT_TRUE(runtime.WaitIdle(std::chrono::steady_clock::now() + std::chrono::seconds(60)));
    }
    return tokens;
  };
  const std::vector<int32_t> expected = generate(**whole);
  EXPECT_EQ(expected.size(), 6u);
  EXPECT_EQ(generate(**parallel), expected);
}

}  // namespace
}  // namespace inferbox::engine
