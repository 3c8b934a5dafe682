// The CPU forward pass against an independent float64 reference of Hugging Face's modeling
// semantics (tests/reference/forward_reference.py), on tiny models that
// tools/inferbox-make-model writes at test time for every architecture. Greedy ids must be
// identical for 32 tokens and the reference's top-20 logits within 1e-4 relative at every
// position. The prompt goes in as two prefill chunks and decoding runs one token per step,
// through a shuffled block table with small blocks, so the paged KV cache is exercised as
// the scheduler will use it.
#include <algorithm>
#include <numeric>
#include <random>

#include <gtest/gtest.h>
#include <boost/json.hpp>

#include "inferbox/common/atomic_file.h"
#include "inferbox/engine/model/model.h"
#include "subprocess.h"
#include "temp_dir.h"
#include "tiny_model.h"

namespace inferbox::engine {
namespace {

using Case = inferbox::testing::TinyModelCase;

const std::vector<int32_t> kPrompt = {1, 100, 2000, 30000, 42, 7, 99, 512, 4096, 12345, 3};
constexpr int kSteps = 32;
constexpr int kTop = 20;
constexpr double kRelativeTolerance = 1e-4;

class ForwardReferenceTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    const Case& c = GetParam();
    model_dir_ = scratch_.path() / "model";
    ASSERT_NO_FATAL_FAILURE(inferbox::testing::MakeTinyModel(model_dir_, c.tokenizer,
                                                             c.make_model_args, scratch_.path()));

    std::string prompt;
    for (const int32_t id : kPrompt) prompt += (prompt.empty() ? "" : ",") + std::to_string(id);
    const auto reference = inferbox::testing::RunCommand(
        {"/usr/bin/python3",
         std::string(INFERBOX_SOURCE_DIR) + "/tests/reference/forward_reference.py", "--model",
         model_dir_.string(), "--prompt-ids", prompt, "--steps", std::to_string(kSteps), "--top",
         std::to_string(kTop)},
        scratch_.path(), std::chrono::seconds(300));
    ASSERT_EQ(reference.exit_code, 0) << "reference failed: " << reference.err;
    reference_ = boost::json::parse(reference.out).as_object();
  }

  inferbox::testing::TempDir scratch_;
  std::filesystem::path model_dir_;
  boost::json::object reference_;
};

TEST_P(ForwardReferenceTest, GreedyIdsAndTopLogitsMatchTheReference) {
  auto backend = MakeCpuBackend();
  auto model = Model::Load(model_dir_, *backend);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const int64_t vocab = (*model)->config().vocab_size;

  // Blocks of 4 slots, handed out in a scrambled order.
  constexpr int64_t kBlockSize = 4;
  const int64_t num_blocks = (static_cast<int64_t>(kPrompt.size()) + kSteps) / kBlockSize + 2;
  auto cache = backend->AllocateKvCache((*model)->KvShape(num_blocks, kBlockSize));
  std::vector<int32_t> block_table(static_cast<size_t>(num_blocks));
  std::iota(block_table.begin(), block_table.end(), 0);
  std::shuffle(block_table.begin(), block_table.end(), std::mt19937(5));

  std::vector<std::vector<float>> position_logits;
  // Prefill in two chunks (chunked prefill), keeping every position's logits.
  const size_t split = kPrompt.size() / 2;
  for (const auto& [begin, end] : {std::pair<size_t, size_t>{0, split}, {split, kPrompt.size()}}) {
    const ForwardSequence chunk{std::span<const int32_t>(kPrompt).subspan(begin, end - begin),
                                static_cast<int64_t>(begin), block_table};
    auto result = (*model)->Forward(std::span(&chunk, 1), *cache, true);
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    const std::span<const float> logits = *result;
    for (size_t t = 0; t < end - begin; ++t) {
      position_logits.emplace_back(logits.begin() + static_cast<int64_t>(t) * vocab,
                                   logits.begin() + static_cast<int64_t>(t + 1) * vocab);
    }
  }
  // Greedy decode, one token per step, feeding back our own choice.
  std::vector<int32_t> generated;
  for (int step = 0; step < kSteps; ++step) {
    const auto& last = position_logits.back();
    const auto token =
        static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin());
    generated.push_back(token);
    if (step + 1 == kSteps) break;
    const ForwardSequence decode{std::span<const int32_t>(&generated.back(), 1),
                                 static_cast<int64_t>(kPrompt.size()) + step, block_table};
    auto logits = (*model)->Forward(std::span(&decode, 1), *cache, false);
    ASSERT_TRUE(logits.ok()) << logits.status().ToString();
    position_logits.emplace_back(logits->begin(), logits->end());
  }

  std::vector<int32_t> expected_ids;
  for (const auto& id : reference_.at("greedy_ids").as_array())
    expected_ids.push_back(static_cast<int32_t>(id.to_number<int64_t>()));
  EXPECT_EQ(generated, expected_ids) << "greedy ids differ from the reference";

  const auto& positions = reference_.at("positions").as_array();
  ASSERT_EQ(positions.size(), position_logits.size());
  double worst = 0.0;
  size_t worst_position = 0;
  for (size_t p = 0; p < positions.size(); ++p) {
    const auto& ids = positions[p].as_object().at("top_ids").as_array();
    const auto& values = positions[p].as_object().at("top_logits").as_array();
    for (size_t i = 0; i < ids.size(); ++i) {
      const double expected = values[i].to_number<double>();
      const double ours = position_logits[p][static_cast<size_t>(ids[i].to_number<int64_t>())];
      const double error = std::abs(ours - expected) / std::max(1.0, std::abs(expected));
      if (error > worst) {
        worst = error;
        worst_position = p;
      }
    }
  }
  EXPECT_LE(worst, kRelativeTolerance)
      << "largest relative error of a top-" << kTop << " logit, at position " << worst_position;
  RecordProperty("max_relative_error", std::to_string(worst));
}

INSTANTIATE_TEST_SUITE_P(TinyModels, ForwardReferenceTest,
                         ::testing::ValuesIn(inferbox::testing::TinyArchitectures()),
                         [](const auto& test_info) { return test_info.param.name; });

TEST(ModelForward, RefusesBadBatchesBeforeComputing) {
  inferbox::testing::TempDir scratch;
  ASSERT_NO_FATAL_FAILURE(inferbox::testing::MakeTinyModel(scratch.path() / "model", "qwen3",
                                                           {"--arch", "qwen3"}, scratch.path()));
  auto backend = MakeCpuBackend();
  auto model = Model::Load(scratch.path() / "model", *backend);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  auto cache = backend->AllocateKvCache((*model)->KvShape(2, 4));
  const std::vector<int32_t> table = {0, 1};
  const std::vector<int32_t> bad_id = {static_cast<int32_t>((*model)->config().vocab_size)};
  ForwardSequence sequence{bad_id, 0, table};
  EXPECT_EQ((*model)->Forward(std::span(&sequence, 1), *cache, false).status().code(),
            StatusCode::kInvalidArgument);
  const std::vector<int32_t> too_long(9, 1);  // 2 blocks of 4 hold 8 positions.
  sequence = {too_long, 0, table};
  EXPECT_EQ((*model)->Forward(std::span(&sequence, 1), *cache, false).status().code(),
            StatusCode::kInvalidArgument);
  KvCacheShape other = (*model)->KvShape(2, 4);
  other.num_layers += 1;
  auto foreign_cache = backend->AllocateKvCache(other);
  const std::vector<int32_t> one = {1};
  sequence = {one, 0, table};
  const Status foreign = (*model)->Forward(std::span(&sequence, 1), *foreign_cache, false).status();
  EXPECT_EQ(foreign.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(foreign.message().find("was not made for this model"), std::string::npos)
      << foreign.message();
}

TEST(ModelLoad, MissingOrMisshapenWeightsAreNamed) {
  inferbox::testing::TempDir scratch;
  const auto dir = scratch.path() / "model";
  ASSERT_NO_FATAL_FAILURE(
      inferbox::testing::MakeTinyModel(dir, "qwen3", {"--arch", "qwen2"}, scratch.path()));
  // A config that promises a larger MLP than the weights hold.
  auto config = boost::json::parse(*ReadFile(dir / "config.json")).as_object();
  config["intermediate_size"] = 256;
  ASSERT_TRUE(WriteFileAtomically(dir / "config.json", boost::json::serialize(config)).ok());
  auto backend = MakeCpuBackend();
  auto model = Model::Load(dir, *backend);
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("model.layers.0.mlp.gate_proj.weight\" has shape [128, "
                                          "64], the config implies [256, 64]"),
            std::string::npos)
      << model.status().message();
}

}  // namespace
}  // namespace inferbox::engine
