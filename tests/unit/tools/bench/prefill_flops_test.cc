#include "bench/prefill_flops.h"

#include <gtest/gtest.h>

namespace inferbox::engine::bench {
namespace {

// Llama-3.1-8B's shape (config.json as published).
ModelConfig Llama31_8B() {
  ModelConfig config;
  config.vocab_size = 128256;
  config.hidden_size = 4096;
  config.intermediate_size = 14336;
  config.num_hidden_layers = 32;
  config.num_attention_heads = 32;
  config.num_key_value_heads = 8;
  config.head_dim = 128;
  config.max_position_embeddings = 131072;
  return config;
}

TEST(PrefillFlops, CountsTheLayerWeightsOfLlama31_8B) {
  // q and o 4096 x 4096, k and v 4096 x 1024, gate, up and down 4096 x 14336, 32 layers:
  // 6.98 B of its 8.03 B parameters (the rest are the embedding and the LM head).
  EXPECT_EQ(LayerMatmulParams(Llama31_8B()),
            int64_t{32} * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * int64_t{4096} * 14336));
  EXPECT_EQ(LayerMatmulParams(Llama31_8B()), 6'979'321'856);
}

TEST(PrefillFlops, AnEightThousandTokenPromptOfLlama31_8B) {
  const PrefillFlops flops = CountPrefillFlops(Llama31_8B(), 8192);
  EXPECT_DOUBLE_EQ(flops.matmul, 2.0 * 6'979'321'856.0 * 8192 + 2.0 * 128256 * 4096)
      << "the layers for every token, the LM head for the last one only";
  // 4 FLOPs per (query, key) pair and head dimension, 32 heads, 32 layers, 8192 * 8193 / 2
  // causal pairs.
  EXPECT_DOUBLE_EQ(flops.attention, 4.0 * 32 * 32 * 128 * (8192.0 * 8193.0 / 2));
  // About 132 TFLOP: at 60% of 989 TFLOP/s that is a 222 ms prefill.
  EXPECT_NEAR(flops.total() / 1e12, 132.0, 0.5);
}

TEST(PrefillFlops, AttentionGrowsWithTheSquareOfThePrompt) {
  const PrefillFlops short_prompt = CountPrefillFlops(Llama31_8B(), 1024);
  const PrefillFlops long_prompt = CountPrefillFlops(Llama31_8B(), 4096);
  EXPECT_NEAR(long_prompt.attention / short_prompt.attention, 16.0, 0.1);
  EXPECT_NEAR(
      (long_prompt.matmul - 2.0 * 128256 * 4096) / (short_prompt.matmul - 2.0 * 128256 * 4096), 4.0,
      1e-9);
}

}  // namespace
}  // namespace inferbox::engine::bench
