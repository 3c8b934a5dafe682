// The profile planner's arithmetic and the served-models file, without a daemon or a GPU.
#include "model_plan.h"

#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "served_models_file.h"
#include "temp_dir.h"

namespace inferbox::daemon {
namespace {

using ::testing::HasSubstr;
constexpr uint64_t kGiB = uint64_t{1} << 30;

// A Llama-3-8B-like shape: 32 layers, 8 KV heads of 128, BF16: 128 KiB per token.
ModelShape EightB() {
  return {.num_layers = 32, .num_kv_heads = 8, .head_dim = 128};
}

TEST(ModelPlan, CpuPlanUsesOneEngineAndTheCpuKvBudget) {
  PlanInputs inputs{
      .id = "m", .weight_bytes = 16 * kGiB, .shape = EightB(), .context_length = 4096};
  const auto plan = PlanModel(inputs);
  EXPECT_EQ(plan.device(), "cpu");
  EXPECT_EQ(plan.tensor_parallel(), 1u);
  EXPECT_EQ(plan.replicas(), 1u);
  // The CPU backend keeps keys and values in float32 whatever the weights' dtype (BF16 here).
  EXPECT_EQ(plan.kv_bytes_per_token(), 2u * 32 * 8 * 128 * 4);
  EXPECT_EQ(plan.kv_cache_tokens_per_replica(), kGiB / (256 * 1024));
  EXPECT_EQ(plan.concurrent_sequences(), 4096u / 4096);
}

TEST(ModelPlan, ChoosesTheSmallestPowerOfTwoWithKvHeadroom) {
  // 16 GiB of weights on 80 GiB GPUs: one GPU holds them with room to spare: TP 1, 8 replicas.
  PlanInputs inputs{.id = "m", .weight_bytes = 16 * kGiB, .shape = EightB()};
  inputs.gpu_memory_bytes.assign(8, 80 * kGiB);
  auto plan = PlanModel(inputs);
  ASSERT_TRUE(plan.fits()) << plan.note();
  EXPECT_EQ(plan.tensor_parallel(), 1u);
  EXPECT_EQ(plan.replicas(), 8u);
  EXPECT_EQ(plan.kv_cache_bytes_per_replica(), static_cast<uint64_t>(80 * kGiB * 0.9) - 16 * kGiB);
  EXPECT_EQ(plan.options().gpus_size(), 8);

  // 140 GiB (a 70B in BF16): 72 GiB usable per GPU, 80% of 2 GPUs is 115 GiB: too little;
  // 4 GPUs hold it: TP 4, 2 replicas.
  inputs.weight_bytes = 140 * kGiB;
  plan = PlanModel(inputs);
  ASSERT_TRUE(plan.fits()) << plan.note();
  EXPECT_EQ(plan.tensor_parallel(), 4u);
  EXPECT_EQ(plan.replicas(), 2u);
  EXPECT_EQ(plan.options().tensor_parallel(), 4u)
      << "LoadModel takes the plan's options as they are";
  EXPECT_EQ(plan.concurrent_sequences(),
            2 * (plan.kv_cache_bytes_per_replica() / plan.kv_bytes_per_token() / 4096));

  // Three GPUs: TP 2 at most, one replica (the third GPU is left over).
  inputs.weight_bytes = 100 * kGiB;
  inputs.gpu_memory_bytes.assign(3, 80 * kGiB);
  plan = PlanModel(inputs);
  EXPECT_EQ(plan.tensor_parallel(), 2u);
  EXPECT_EQ(plan.replicas(), 1u);

  inputs.weight_bytes = 1000 * kGiB;
  plan = PlanModel(inputs);
  EXPECT_FALSE(plan.fits());
  EXPECT_THAT(plan.note(), HasSubstr("does not fit"));
}

TEST(ModelPlan, ReadsTheShapeFromConfigJson) {
  inferbox::testing::TempDir dir;
  std::ofstream(dir / "config.json") << R"({"num_hidden_layers": 28, "num_attention_heads": 16,
      "num_key_value_heads": 8, "hidden_size": 2048, "head_dim": 128})";
  auto shape = ReadModelShape(dir / "config.json", "F32");
  ASSERT_TRUE(shape.ok()) << shape.status().ToString();
  // The cache's precision is the backend's, not the weights' (F32 here).
  EXPECT_EQ(shape->kv_bytes_per_token("auto", "cuda"), 2u * 28 * 8 * 128 * 2);
  EXPECT_EQ(shape->kv_bytes_per_token("auto", "cpu"), 2u * 28 * 8 * 128 * 4);
  // kv_cache_dtype = "fp8": a byte per value and a 4-byte scale per KV head, on both.
  EXPECT_EQ(shape->kv_bytes_per_token("fp8", "cuda"), 2u * 28 * 8 * (128 + 4));
  EXPECT_EQ(shape->kv_bytes_per_token("fp8", "cpu"), 2u * 28 * 8 * (128 + 4));

  std::ofstream(dir / "config.json") << R"({"num_hidden_layers": 2, "num_attention_heads": 4,
      "hidden_size": 64, "torch_dtype": "bfloat16"})";
  shape = ReadModelShape(dir / "config.json", "");
  ASSERT_TRUE(shape.ok()) << shape.status().ToString();
  EXPECT_EQ(shape->kv_bytes_per_token("auto", "cuda"), 2u * 2 * 4 * 16 * 2)
      << "defaults: kv heads = heads";

  std::ofstream(dir / "config.json") << R"({"num_hidden_layers": -1})";
  EXPECT_THAT(ReadModelShape(dir / "config.json", "").status().message(),
              HasSubstr("num_hidden_layers"));
}

TEST(ServedModelsFile, RoundTripsAndMergesWithTheConfigWinning) {
  inferbox::testing::TempDir dir;
  const auto file = dir / "served-models.toml";
  auto empty = ReadServedModels(file);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, ServedModels{}) << "no file: nothing loaded";

  ServedModels served;
  served.default_model = "b";
  ModelServeConfig a{.name = "a", .path = "models/a"};
  ModelServeConfig b{.name = "b",
                     .path = "models/b",
                     .device = "cuda",
                     .gpus = {0, 1, 2, 3},
                     .replicas = 2,
                     .tensor_parallel = 2,
                     .kv_cache_gib = 4.5,
                     .max_model_len = 8192,
                     .queue_timeout_seconds = 30,
                     .quantization = "fp8",
                     .sampling_defaults = "openai"};
  served.models = {a, b};
  ASSERT_TRUE(WriteServedModels(file, served).ok());
  auto read = ReadServedModels(file);
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(*read, served);

  ModelServeConfig configured_b{.name = "b", .path = "/srv/b"};
  std::vector<std::string> overridden;
  const auto merged = MergeServedModels({configured_b}, served.models, &overridden);
  ASSERT_EQ(merged.size(), 2u);
  EXPECT_EQ(merged[0], configured_b) << "the config file's entry wins";
  EXPECT_EQ(merged[1], a);
  EXPECT_EQ(overridden, std::vector<std::string>{"b"});

  std::ofstream(file) << "[[models]]\nname = \"Bad!\"\npath = \"x\"\n";
  EXPECT_THAT(ReadServedModels(file).status().message(), HasSubstr("models[0].name"));
}

}  // namespace
}  // namespace inferbox::daemon
