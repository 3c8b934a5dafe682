#include "inferbox/engine/model/model_config.h"

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <boost/json.hpp>

namespace inferbox::engine {
namespace {

using ::testing::HasSubstr;

// config.json of meta-llama/Llama-3.1-8B-Instruct, as published.
constexpr std::string_view kLlama31 = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})";

// config.json of Qwen/Qwen2.5-7B-Instruct.
constexpr std::string_view kQwen25 = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
  "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
  "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28,
  "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 131072, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.1", "use_cache": true, "use_sliding_window": false,
  "vocab_size": 152064})";

// config.json of Qwen/Qwen3-8B.
constexpr std::string_view kQwen3 = R"({
  "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 12288,
  "max_position_embeddings": 40960, "max_window_layers": 36, "model_type": "qwen3",
  "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 151936})";

std::string With(std::string_view base, std::string_view key, boost::json::value value) {
  auto object = boost::json::parse(base).as_object();
  object[key] = std::move(value);
  return boost::json::serialize(object);
}

std::string ErrorOf(const std::string& text) {
  auto config = ParseModelConfig(text);
  EXPECT_FALSE(config.ok()) << text;
  return config.ok() ? "" : config.status().message();
}

TEST(ModelConfig, Llama31WithLlama3RopeScaling) {
  auto config = ParseModelConfig(kLlama31);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->architecture, Architecture::kLlama);
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_EQ(config->num_key_value_heads, 8);
  ASSERT_TRUE(config->rope_scaling);
  EXPECT_EQ(config->rope_scaling->factor, 8.0);
  EXPECT_EQ(config->rope_scaling->original_max_position_embeddings, 8192);
  EXPECT_EQ(config->rope_theta, 500000.0);
  EXPECT_EQ(config->eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_FALSE(config->attention_bias);
  EXPECT_FALSE(config->qk_norm);
}

TEST(ModelConfig, Qwen25HasQkvBias) {
  auto config = ParseModelConfig(kQwen25);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->architecture, Architecture::kQwen2);
  EXPECT_TRUE(config->attention_bias);
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_FALSE(config->rope_scaling);
  EXPECT_EQ(config->eos_token_ids, (std::vector<int64_t>{151645}));
}

TEST(ModelConfig, Qwen3HasQkNormAndExplicitHeadDim) {
  auto config = ParseModelConfig(With(kQwen3, "head_dim", 64));
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->architecture, Architecture::kQwen3);
  EXPECT_TRUE(config->qk_norm);
  EXPECT_EQ(config->head_dim, 64) << "Qwen3's head_dim is not hidden_size / heads";
}

TEST(ModelConfig, RefusesWhatTheEngineWouldComputeWrongly) {
  EXPECT_THAT(ErrorOf(With(kQwen3, "architectures", {"DeepseekV3ForCausalLM"})),
              HasSubstr("architecture \"DeepseekV3ForCausalLM\" is not supported"));
  EXPECT_THAT(ErrorOf(With(kLlama31, "hidden_act", "gelu")),
              HasSubstr("hidden_act must be \"silu\""));
  EXPECT_THAT(ErrorOf(With(kLlama31, "rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}})),
              HasSubstr("rope_scaling type \"yarn\" is not supported"));
  EXPECT_THAT(ErrorOf(With(kLlama31, "num_key_value_heads", 5)),
              HasSubstr("num_key_value_heads (5) does not divide num_attention_heads (32)"));
  EXPECT_THAT(ErrorOf(With(kLlama31, "hidden_size", -1)),
              HasSubstr("hidden_size must be an integer from 1 to 1048576"));
  EXPECT_THAT(ErrorOf(With(kLlama31, "vocab_size", "big")),
              HasSubstr("vocab_size must be an integer from 1 to 1048576"));
  // Absurd shapes from a file the box did not write: refused before anything is sized from
  // them (head_dim = 2^62 made the engine allocate a 2^61-float RoPE table and abort).
  EXPECT_THAT(ErrorOf(With(kLlama31, "head_dim", int64_t{1} << 62)),
              HasSubstr("head_dim must be an integer from 1 to 1048576"));
  EXPECT_THAT(ErrorOf(With(kLlama31, "num_attention_heads", int64_t{1} << 62)),
              HasSubstr("num_attention_heads must be an integer from 1 to 1048576"));
  EXPECT_THAT(ErrorOf(With(kLlama31, "max_position_embeddings", int64_t{1} << 40)),
              HasSubstr("max_position_embeddings must be an integer from 1 to 67108864"));
  EXPECT_TRUE(ParseModelConfig(With(kLlama31, "max_position_embeddings", 10'485'760)).ok())
      << "a 10M-token context is a real model's";
  EXPECT_THAT(ErrorOf(With(kLlama31, "eos_token_id", 999999)), HasSubstr("outside the vocabulary"));
  EXPECT_THAT(ErrorOf(With(kLlama31, "torch_dtype", "int4")), HasSubstr("torch_dtype \"int4\""));
  // Boost.JSON alone reads a literal past double's range as infinity, and 0e400 as NaN (found
  // by tests/fuzz/model_config_fuzz): an infinite epsilon or RoPE base would make every
  // activation NaN. The first is refused as JSON, the second reads as the zero it is.
  for (const char* key : {"rms_norm_eps", "rope_theta"}) {
    std::string text = With(kLlama31, key, "HUGE");
    text.replace(text.find("\"HUGE\""), 6, "1e605");
    EXPECT_THAT(ErrorOf(text), HasSubstr("not valid JSON: a number is past the range of a double"));
    text = With(kLlama31, key, "HUGE");
    text.replace(text.find("\"HUGE\""), 6, "0e400");
    EXPECT_THAT(ErrorOf(text), HasSubstr(std::string(key) + " must be a positive finite number"));
  }
  EXPECT_THAT(ErrorOf("[]"), HasSubstr("not a JSON object"));
  auto no_layers = boost::json::parse(kLlama31).as_object();
  no_layers.erase("num_hidden_layers");
  EXPECT_THAT(ErrorOf(boost::json::serialize(no_layers)),
              HasSubstr("num_hidden_layers is missing"));
}

TEST(GenerationConfig, ReadsEosIdsAndSamplingDefaults) {
  auto config = ParseGenerationConfig(R"({"bos_token_id": 128000, "do_sample": true,
      "eos_token_id": [128001, 128008, 128009], "temperature": 0.6, "top_p": 0.9,
      "transformers_version": "4.43.0.dev0"})",
                                      128256);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_TRUE(config->do_sample);
  EXPECT_FLOAT_EQ(*config->temperature, 0.6f);
  EXPECT_FLOAT_EQ(*config->top_p, 0.9f);
  EXPECT_FALSE(config->top_k);

  auto single = ParseGenerationConfig(R"({"eos_token_id": 151645, "top_k": 20})", 151936);
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(single->eos_token_ids, (std::vector<int64_t>{151645}));
  EXPECT_EQ(single->top_k, 20);
}

TEST(GenerationConfig, BadValuesAreNamed) {
  EXPECT_THAT(ParseGenerationConfig(R"({"eos_token_id": 5000})", 100).status().message(),
              HasSubstr("eos_token_id 5000 is not an id of the vocabulary of 100"));
  EXPECT_THAT(ParseGenerationConfig(R"({"top_p": 1.5})", 100).status().message(),
              HasSubstr("top_p must be a number in [0, 1]"));
  EXPECT_THAT(ParseGenerationConfig(R"({"top_k": -1})", 100).status().message(),
              HasSubstr("top_k"));
  // Boost.JSON reads 0e400 as NaN and 1e400 as infinity; neither may become a default.
  EXPECT_THAT(ParseGenerationConfig(R"({"repetition_penalty": 1e400})", 100).status().message(),
              HasSubstr("not valid JSON: a number is past the range of a double"));
  auto zero = ParseGenerationConfig(R"({"temperature": 0e400, "top_p": -0.0e999})", 100);
  ASSERT_TRUE(zero.ok()) << zero.status().ToString();
  EXPECT_EQ(*zero->temperature, 0.0f) << "0e400 is zero (Boost.JSON alone reads NaN)";
  EXPECT_EQ(*zero->top_p, 0.0f);
}

}  // namespace
}  // namespace inferbox::engine
