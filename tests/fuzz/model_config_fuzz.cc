// config.json and generation_config.json from untrusted bytes (R6.12); the input is the two
// files separated by a NUL byte. What ParseModelConfig accepts must be a shape the engine can
// build: positive sizes, heads that divide, finite positive norms and RoPE; what
// ParseGenerationConfig accepts must hold ids inside the vocabulary and finite values.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "fuzz_input.h"
#include "inferbox/engine/model/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace inferbox;
  const auto parts = fuzz::SplitParts(fuzz::AsText(data, size), 2);
  int64_t vocab_size = 1000;
  auto config = engine::ParseModelConfig(parts[0]);
  if (config.ok()) {
    const engine::ModelConfig& c = *config;
    if (c.vocab_size <= 0 || c.hidden_size <= 0 || c.intermediate_size <= 0 ||
        c.num_hidden_layers <= 0 || c.num_attention_heads <= 0 || c.num_key_value_heads <= 0 ||
        c.head_dim <= 0 || c.max_position_embeddings <= 0) {
      fuzz::Fail("a size that is not positive was accepted");
    }
    constexpr int64_t kMaxDimension = int64_t{1} << 20;  // model_config.cc's limits.
    if (c.vocab_size > kMaxDimension || c.hidden_size > kMaxDimension ||
        c.intermediate_size > kMaxDimension || c.num_hidden_layers > kMaxDimension ||
        c.num_attention_heads > kMaxDimension || c.head_dim > kMaxDimension ||
        c.max_position_embeddings > (int64_t{1} << 26)) {
      fuzz::Fail("a size past its documented limit was accepted");
    }
    if (c.head_dim % 2 != 0) fuzz::Fail("an odd head_dim was accepted (RoPE needs pairs)");
    if (c.num_attention_heads % c.num_key_value_heads != 0)
      fuzz::Fail("num_key_value_heads does not divide num_attention_heads");
    if (!std::isfinite(c.rms_norm_eps) || c.rms_norm_eps <= 0 || !std::isfinite(c.rope_theta) ||
        c.rope_theta <= 0) {
      fuzz::Fail("rms_norm_eps or rope_theta is not finite and positive");
    }
    if (c.rope_scaling && (!std::isfinite(c.rope_scaling->factor) ||
                           !std::isfinite(c.rope_scaling->low_freq_factor) ||
                           !std::isfinite(c.rope_scaling->high_freq_factor) ||
                           c.rope_scaling->original_max_position_embeddings <= 0)) {
      fuzz::Fail("rope_scaling holds a value that is not finite or a length that is not positive");
    }
    for (const int64_t id : c.eos_token_ids) {
      if (id < 0 || id >= c.vocab_size) fuzz::Fail("an eos_token_id outside the vocabulary");
    }
    vocab_size = c.vocab_size;
    fuzz::Reached("config");
  }
  auto generation = engine::ParseGenerationConfig(parts[1], vocab_size);
  if (generation.ok()) {
    fuzz::Reached("generation config");
    for (const int64_t id : generation->eos_token_ids) {
      if (id < 0 || id >= vocab_size)
        fuzz::Fail("a generation eos_token_id outside the vocabulary");
    }
    for (const auto& value : {generation->temperature, generation->top_p, generation->min_p,
                              generation->repetition_penalty}) {
      if (value && !std::isfinite(*value)) fuzz::Fail("a sampling default that is not finite");
    }
  }
  return 0;
}
