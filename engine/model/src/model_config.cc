#include "inferbox/engine/model/model_config.h"
#include "inferbox/common/json.h"

#include <cmath>
#include <tuple>

#include <fmt/format.h>

#include <boost/json.hpp>

namespace inferbox::engine {
namespace json = boost::json;
namespace {

Status ConfigError(std::string_view message) {
  return InvalidArgumentError("config.json: " + std::string(message));
}

// The largest shape a config may give (sizes, counts, head_dim; the daemon's planner takes the
// same bound): a file the box did not write must not size tables or caches from an absurd
// value (head_dim = 2^62 made the engine allocate 2^61 floats and abort).
constexpr int64_t kMaxDimension = int64_t{1} << 20;
// max_position_embeddings may exceed it (10M-token models exist); nothing is sized from it
// alone.
constexpr int64_t kMaxPositions = int64_t{1} << 26;

struct Reader {
  const json::object& object;

  Result<int64_t> PositiveInt(std::string_view key, int64_t max = kMaxDimension) const {
    const auto* value = object.if_contains(key);
    if (value == nullptr) return ConfigError(fmt::format("{} is missing", key));
    if (!value->is_int64() || value->as_int64() <= 0 || value->as_int64() > max) {
      return ConfigError(fmt::format("{} must be an integer from 1 to {}", key, max));
    }
    return value->as_int64();
  }
  Result<int64_t> OptionalPositiveInt(std::string_view key, int64_t fallback) const {
    const auto* value = object.if_contains(key);
    if (value == nullptr || value->is_null()) return fallback;
    return PositiveInt(key);
  }
  Result<double> PositiveNumber(std::string_view key, double fallback) const {
    const auto* value = object.if_contains(key);
    if (value == nullptr || value->is_null()) return fallback;
    // Boost.JSON reads a literal past double's range (1e400) as infinity.
    if (!value->is_number() || !(value->to_number<double>() > 0) ||
        !std::isfinite(value->to_number<double>())) {
      return ConfigError(fmt::format("{} must be a positive finite number", key));
    }
    return value->to_number<double>();
  }
  bool Bool(std::string_view key, bool fallback) const {
    const auto* value = object.if_contains(key);
    return value != nullptr && value->is_bool() ? value->as_bool() : fallback;
  }
};

}  // namespace

std::string_view ArchitectureName(Architecture architecture) {
  switch (architecture) {
    case Architecture::kLlama: return "LlamaForCausalLM";
    case Architecture::kMistral: return "MistralForCausalLM";
    case Architecture::kQwen2: return "Qwen2ForCausalLM";
    case Architecture::kQwen3: return "Qwen3ForCausalLM";
  }
  return "?";
}

Result<ModelConfig> ParseModelConfig(std::string_view config_json) {
  boost::system::error_code error;
  const json::value root = inferbox::ParseJson(config_json, error);
  if (auto problem = JsonObjectProblem(root, error); !problem.empty()) return ConfigError(problem);
  const auto& object = root.as_object();
  const Reader read{object};
  ModelConfig config;

  const auto* architectures = object.if_contains("architectures");
  if (architectures == nullptr || !architectures->is_array() ||
      architectures->as_array().size() != 1 || !architectures->as_array()[0].is_string()) {
    return ConfigError("architectures must list exactly one architecture");
  }
  const std::string_view name = architectures->as_array()[0].as_string();
  bool known = false;
  for (const auto candidate :
       {Architecture::kLlama, Architecture::kMistral, Architecture::kQwen2, Architecture::kQwen3}) {
    if (name == ArchitectureName(candidate)) {
      config.architecture = candidate;
      known = true;
    }
  }
  if (!known) {
    return ConfigError(
        fmt::format("architecture \"{}\" is not supported (supported: LlamaForCausalLM, "
                    "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)",
                    name));
  }

  auto assign = [](int64_t& field, Result<int64_t> value) -> Status {
    if (!value.ok()) return value.status();
    field = *value;
    return Status::Ok();
  };
  for (const auto& [key, field] : std::initializer_list<std::pair<const char*, int64_t*>>{
           {"vocab_size", &config.vocab_size},
           {"hidden_size", &config.hidden_size},
           {"intermediate_size", &config.intermediate_size},
           {"num_hidden_layers", &config.num_hidden_layers},
           {"num_attention_heads", &config.num_attention_heads}}) {
    if (Status status = assign(*field, read.PositiveInt(key)); !status.ok()) return status;
  }
  if (Status status = assign(config.max_position_embeddings,
                             read.PositiveInt("max_position_embeddings", kMaxPositions));
      !status.ok()) {
    return status;
  }
  if (Status status =
          assign(config.num_key_value_heads,
                 read.OptionalPositiveInt("num_key_value_heads", config.num_attention_heads));
      !status.ok()) {
    return status;
  }
  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    return ConfigError(
        fmt::format("num_key_value_heads ({}) does not divide num_attention_heads ({})",
                    config.num_key_value_heads, config.num_attention_heads));
  }
  const bool explicit_head_dim = object.contains("head_dim") && !object.at("head_dim").is_null();
  if (!explicit_head_dim && config.hidden_size % config.num_attention_heads != 0) {
    return ConfigError(fmt::format(
        "num_attention_heads ({}) does not divide hidden_size ({}) and no head_dim is given",
        config.num_attention_heads, config.hidden_size));
  }
  if (Status status = assign(
          config.head_dim,
          read.OptionalPositiveInt("head_dim", config.hidden_size / config.num_attention_heads));
      !status.ok()) {
    return status;
  }
  if (config.head_dim % 2 != 0)
    return ConfigError(fmt::format("head_dim ({}) must be even for RoPE", config.head_dim));

  auto eps = read.PositiveNumber("rms_norm_eps", 1e-6);
  if (!eps.ok()) return eps.status();
  config.rms_norm_eps = *eps;
  auto theta = read.PositiveNumber("rope_theta", 10000.0);
  if (!theta.ok()) return theta.status();
  config.rope_theta = *theta;

  if (const auto* act = object.if_contains("hidden_act");
      act != nullptr && !(act->is_string() && act->as_string() == "silu")) {
    return ConfigError("hidden_act must be \"silu\" (the MLP the engine implements)");
  }
  if (const auto* scaling = object.if_contains("rope_scaling");
      scaling != nullptr && !scaling->is_null()) {
    if (!scaling->is_object()) return ConfigError("rope_scaling must be an object or null");
    const Reader scaling_reader{scaling->as_object()};
    const auto* type = scaling->as_object().if_contains("rope_type");
    if (type == nullptr) type = scaling->as_object().if_contains("type");
    const std::string_view rope_type =
        type != nullptr && type->is_string() ? std::string_view(type->as_string()) : "";
    if (rope_type == "llama3") {
      Llama3RopeScaling llama3;
      auto factor = scaling_reader.PositiveNumber("factor", llama3.factor);
      auto low = scaling_reader.PositiveNumber("low_freq_factor", llama3.low_freq_factor);
      auto high = scaling_reader.PositiveNumber("high_freq_factor", llama3.high_freq_factor);
      auto original = scaling_reader.OptionalPositiveInt("original_max_position_embeddings",
                                                         llama3.original_max_position_embeddings);
      for (const Status& status :
           {factor.status(), low.status(), high.status(), original.status()}) {
        if (!status.ok()) return status.WithContext("rope_scaling");
      }
      if (!(*high > *low))
        return ConfigError("rope_scaling: high_freq_factor must exceed low_freq_factor");
      llama3 = {*factor, *low, *high, *original};
      config.rope_scaling = llama3;
    } else if (rope_type != "default") {
      return ConfigError(fmt::format(
          "rope_scaling type \"{}\" is not supported (supported: llama3, default)", rope_type));
    }
  }

  config.tie_word_embeddings = read.Bool("tie_word_embeddings", false);
  config.attention_bias =
      config.architecture == Architecture::kQwen2 || read.Bool("attention_bias", false);
  config.qk_norm = config.architecture == Architecture::kQwen3;
  if (const auto* dtype = object.if_contains("torch_dtype");
      dtype != nullptr && dtype->is_string()) {
    config.torch_dtype = std::string(dtype->as_string());
    if (config.torch_dtype != "bfloat16" && config.torch_dtype != "float16" &&
        config.torch_dtype != "float32") {
      return ConfigError(fmt::format(
          "torch_dtype \"{}\" is not supported (bfloat16, float16, float32)", config.torch_dtype));
    }
  }
  if (const auto* eos = object.if_contains("eos_token_id"); eos != nullptr) {
    if (eos->is_int64()) {
      config.eos_token_ids.push_back(eos->as_int64());
    } else if (eos->is_array()) {
      for (const auto& id : eos->as_array()) {
        if (!id.is_int64())
          return ConfigError("eos_token_id must be an integer or a list of integers");
        config.eos_token_ids.push_back(id.as_int64());
      }
    }
  }
  if (const auto* bos = object.if_contains("bos_token_id"); bos != nullptr && bos->is_int64()) {
    config.bos_token_id = bos->as_int64();
  }
  for (const int64_t id : config.eos_token_ids) {
    if (id < 0 || id >= config.vocab_size) {
      return ConfigError(
          fmt::format("eos_token_id {} is outside the vocabulary of {}", id, config.vocab_size));
    }
  }
  return config;
}

Result<GenerationConfig> ParseGenerationConfig(std::string_view json_text, int64_t vocab_size) {
  auto error_of = [](std::string_view message) {
    return InvalidArgumentError("generation_config.json: " + std::string(message));
  };
  boost::system::error_code error;
  const json::value root = inferbox::ParseJson(json_text, error);
  if (auto problem = JsonObjectProblem(root, error); !problem.empty()) return error_of(problem);
  const auto& object = root.as_object();
  GenerationConfig config;
  if (const auto* eos = object.if_contains("eos_token_id"); eos != nullptr && !eos->is_null()) {
    const json::array single{*eos};
    for (const auto& id : eos->is_array() ? eos->as_array() : single) {
      if (!id.is_int64() || id.as_int64() < 0 || id.as_int64() >= vocab_size) {
        return error_of(fmt::format("eos_token_id {} is not an id of the vocabulary of {}",
                                    json::serialize(id), vocab_size));
      }
      config.eos_token_ids.push_back(id.as_int64());
    }
  }
  auto number = [&](std::string_view key, double low, double high) -> Result<std::optional<float>> {
    const auto* value = object.if_contains(key);
    if (value == nullptr || value->is_null()) return std::optional<float>();
    if (!value->is_number() || !(value->to_number<double>() >= low) ||
        !(value->to_number<double>() <= high)) {
      return error_of(fmt::format("{} must be a number in [{}, {}]", key, low, high));
    }
    return std::optional<float>(static_cast<float>(value->to_number<double>()));
  };
  for (const auto& [key, field, low, high] :
       std::initializer_list<std::tuple<const char*, std::optional<float>*, double, double>>{
           {"temperature", &config.temperature, 0.0, 100.0},
           {"top_p", &config.top_p, 0.0, 1.0},
           {"min_p", &config.min_p, 0.0, 1.0},
           {"repetition_penalty", &config.repetition_penalty, 0.0, 10.0}}) {
    auto value = number(key, low, high);
    if (!value.ok()) return value.status();
    *field = *value;
  }
  if (const auto* top_k = object.if_contains("top_k"); top_k != nullptr && !top_k->is_null()) {
    if (!top_k->is_int64() || top_k->as_int64() < 0)
      return error_of("top_k must be a non-negative integer");
    config.top_k = static_cast<int32_t>(std::min<int64_t>(top_k->as_int64(), vocab_size));
  }
  if (const auto* do_sample = object.if_contains("do_sample");
      do_sample != nullptr && do_sample->is_bool()) {
    config.do_sample = do_sample->as_bool();
  }
  return config;
}

}  // namespace inferbox::engine
