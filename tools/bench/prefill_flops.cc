#include "bench/prefill_flops.h"

namespace inferbox::engine::bench {

int64_t LayerMatmulParams(const ModelConfig& config) {
  const int64_t q_width = config.num_attention_heads * config.head_dim;
  const int64_t kv_width = config.num_key_value_heads * config.head_dim;
  const int64_t attention =
      config.hidden_size * (q_width + 2 * kv_width) + q_width * config.hidden_size;
  const int64_t mlp = 3 * config.hidden_size * config.intermediate_size;
  return config.num_hidden_layers * (attention + mlp);
}

PrefillFlops CountPrefillFlops(const ModelConfig& config, int64_t num_tokens) {
  const auto tokens = static_cast<double>(num_tokens);
  PrefillFlops flops;
  flops.matmul =
      2.0 * static_cast<double>(LayerMatmulParams(config)) * tokens +
      2.0 * static_cast<double>(config.vocab_size) * static_cast<double>(config.hidden_size);
  const double pairs = tokens * (tokens + 1.0) / 2.0;
  flops.attention = 4.0 * static_cast<double>(config.num_hidden_layers) *
                    static_cast<double>(config.num_attention_heads) *
                    static_cast<double>(config.head_dim) * pairs;
  return flops;
}

}  // namespace inferbox::engine::bench
