// A model's config.json, as Hugging Face transformers writes it, validated for the dense
// decoder architectures the engine implements. Anything the engine would compute wrongly
// (an unknown architecture, activation or RoPE scaling) is refused at load, by name.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "inferbox/common/status.h"

namespace inferbox::engine {

enum class Architecture {
  kLlama,    // LlamaForCausalLM (Llama 2/3.x, DeepSeek-R1-Distill-Llama)
  kMistral,  // MistralForCausalLM
  kQwen2,    // Qwen2ForCausalLM (q/k/v projections carry a bias; Qwen2.5, R1-Distill-Qwen)
  kQwen3,    // Qwen3ForCausalLM (RMSNorm on q and k per head, explicit head_dim)
};

std::string_view ArchitectureName(Architecture architecture);

// Llama 3's "rope_type": "llama3" frequency scaling.
struct Llama3RopeScaling {
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // GQA: divides num_attention_heads.
  int64_t head_dim = 0;             // hidden_size / num_attention_heads unless given.
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<Llama3RopeScaling> rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections have a bias (Qwen2 always).
  bool qk_norm = false;         // Per-head RMSNorm on q and k (Qwen3).
  std::string torch_dtype;      // "bfloat16", "float16" or "float32".
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> bos_token_id;
};

// generation_config.json: the model author's sampling defaults and end-of-sequence ids.
// Unset fields stay unset; whether the defaults apply to requests is the caller's policy.
struct GenerationConfig {
  std::vector<int64_t> eos_token_ids;
  std::optional<float> temperature;
  std::optional<float> top_p;
  std::optional<int32_t> top_k;
  std::optional<float> min_p;
  std::optional<float> repetition_penalty;
  bool do_sample = false;
};

// Parses generation_config.json text; errors name the key. Ids must lie in `vocab_size`.
Result<GenerationConfig> ParseGenerationConfig(std::string_view json_text, int64_t vocab_size);

// Parses config.json text. Errors name the key: "config.json: num_key_value_heads (5) does
// not divide num_attention_heads (32)".
Result<ModelConfig> ParseModelConfig(std::string_view config_json);

}  // namespace inferbox::engine
