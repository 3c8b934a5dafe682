#include "model_plan.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <boost/json.hpp>

#include "inferbox/common/atomic_file.h"
#include "inferbox/common/json.h"

namespace inferbox::daemon {
namespace {

namespace json = boost::json;

// The largest sensible value of any shape key: rejects hostile configs before arithmetic.
constexpr int64_t kMaxShapeValue = 1 << 20;

Result<uint64_t> ShapeKey(const json::object& config, std::string_view key,
                          const std::filesystem::path& file) {
  const json::value* value = config.if_contains(key);
  if (value == nullptr || !value->is_int64() || value->as_int64() <= 0 ||
      value->as_int64() > kMaxShapeValue) {
    return InvalidArgumentError(
        fmt::format("{}: {} must be an integer from 1 to {}", file.string(), key, kMaxShapeValue));
  }
  return static_cast<uint64_t>(value->as_int64());
}

uint32_t DtypeBytes(std::string_view dtype) {
  if (dtype == "F32" || dtype == "float32") return 4;
  if (dtype == "F64" || dtype == "float64") return 8;
  if (dtype.starts_with("F8") || dtype == "I8" || dtype == "U8") return 1;
  return 2;  // BF16, F16 and anything unknown: what serving uses most.
}

uint64_t RoundDownPowerOfTwo(uint64_t value) {
  uint64_t power = 1;
  while (power * 2 <= value) power *= 2;
  return power;
}

}  // namespace

Result<ModelShape> ReadModelShape(const std::filesystem::path& config_json,
                                  std::string_view dtype) {
  auto text = ReadFile(config_json);
  if (!text.ok()) return text.status();
  boost::system::error_code error;
  json::value parsed = inferbox::ParseJson(*text, error);
  if (auto problem = JsonObjectProblem(parsed, error); !problem.empty())
    return InvalidArgumentError(config_json.string() + ": " + problem);
  const json::object& config = parsed.as_object();

  ModelShape shape;
  auto layers = ShapeKey(config, "num_hidden_layers", config_json);
  if (!layers.ok()) return layers.status();
  auto heads = ShapeKey(config, "num_attention_heads", config_json);
  if (!heads.ok()) return heads.status();
  shape.num_layers = *layers;
  shape.num_heads = *heads;
  shape.num_kv_heads = *heads;
  if (config.contains("num_key_value_heads")) {
    auto kv_heads = ShapeKey(config, "num_key_value_heads", config_json);
    if (!kv_heads.ok()) return kv_heads.status();
    shape.num_kv_heads = *kv_heads;
  }
  if (config.contains("head_dim")) {
    auto head_dim = ShapeKey(config, "head_dim", config_json);
    if (!head_dim.ok()) return head_dim.status();
    shape.head_dim = *head_dim;
  } else {
    auto hidden = ShapeKey(config, "hidden_size", config_json);
    if (!hidden.ok()) return hidden.status();
    shape.head_dim = *hidden / *heads;
  }
  for (const auto& [key, field] : {std::pair{"hidden_size", &shape.hidden_size},
                                   std::pair{"intermediate_size", &shape.intermediate_size}}) {
    if (!config.contains(key)) continue;
    auto value = ShapeKey(config, key, config_json);
    if (!value.ok()) return value.status();
    *field = *value;
  }
  std::string torch_dtype;
  if (const auto* value = config.if_contains("torch_dtype"); value && value->is_string())
    torch_dtype = std::string(value->as_string());
  shape.dtype_bytes = DtypeBytes(!dtype.empty() ? dtype : std::string_view(torch_dtype));
  return shape;
}

inferbox::v1::PlanModelResponse PlanModel(const PlanInputs& inputs) {
  inferbox::v1::PlanModelResponse plan;
  plan.set_id(inputs.id);
  if (inputs.quantization != "none") plan.mutable_options()->set_quantization(inputs.quantization);
  if (inputs.kv_cache_dtype != "auto")
    plan.mutable_options()->set_kv_cache_dtype(inputs.kv_cache_dtype);
  plan.set_weight_bytes(inputs.weight_bytes);
  plan.set_gpus_found(static_cast<uint32_t>(inputs.gpu_memory_bytes.size()));
  const uint32_t context =
      inputs.context_length == 0 ? kDefaultPlanContextLength : inputs.context_length;
  plan.set_context_length(context);
  const std::string_view device = inputs.gpu_memory_bytes.empty() ? "cpu" : "cuda";
  const uint64_t bytes_per_token = inputs.shape.kv_bytes_per_token(inputs.kv_cache_dtype, device);
  const uint64_t per_token = std::max<uint64_t>(1, bytes_per_token);
  plan.set_kv_bytes_per_token(bytes_per_token);

  auto fill_kv = [&](uint64_t kv_bytes, uint32_t replicas) {
    plan.set_kv_cache_bytes_per_replica(kv_bytes);
    plan.set_kv_cache_tokens_per_replica(kv_bytes / per_token);
    plan.set_concurrent_sequences(uint64_t{replicas} * (kv_bytes / per_token / context));
  };

  if (inputs.gpu_memory_bytes.empty()) {
    plan.set_device("cpu");
    plan.set_tensor_parallel(1);
    plan.set_replicas(1);
    plan.set_fits(true);
    fill_kv(inputs.cpu_kv_cache_bytes, 1);
    plan.mutable_options()->set_device("cpu");
    plan.mutable_options()->set_replicas(1);
    plan.mutable_options()->set_kv_cache_gib(static_cast<double>(inputs.cpu_kv_cache_bytes) /
                                             static_cast<double>(uint64_t{1} << 30));
    plan.set_note(
        fmt::format("no GPU found: one CPU engine with the CPU's default KV cache of {:.2f} GiB",
                    static_cast<double>(inputs.cpu_kv_cache_bytes) / (uint64_t{1} << 30)));
    return plan;
  }

  plan.set_device("cuda");
  const uint64_t smallest =
      *std::min_element(inputs.gpu_memory_bytes.begin(), inputs.gpu_memory_bytes.end());
  plan.set_gpu_memory_bytes(smallest);
  const auto usable =
      static_cast<uint64_t>(static_cast<double>(smallest) * inputs.gpu_memory_fraction);
  const uint64_t num_gpus = inputs.gpu_memory_bytes.size();
  for (uint64_t tp = 1; tp <= num_gpus; tp *= 2) {
    const uint64_t group = tp * usable;
    if (static_cast<double>(inputs.weight_bytes) > kMaxWeightShare * static_cast<double>(group))
      continue;
    const auto replicas = static_cast<uint32_t>(num_gpus / tp);
    plan.set_tensor_parallel(static_cast<uint32_t>(tp));
    plan.set_replicas(replicas);
    plan.set_fits(true);
    fill_kv(group - inputs.weight_bytes, replicas);
    auto* options = plan.mutable_options();
    options->set_device("cuda");
    options->set_replicas(replicas);
    options->set_tensor_parallel(static_cast<uint32_t>(tp));
    options->set_gpu_memory_fraction(inputs.gpu_memory_fraction);
    for (uint32_t gpu = 0; gpu < replicas * tp; ++gpu) options->add_gpus(gpu);
    plan.set_note(fmt::format(
        "tensor parallel {}: the smallest power of two of GPUs whose {:.0f}% of memory holds "
        "the weights in at most {:.0f}% of it; {} replica(s) use {} of {} GPUs",
        tp, inputs.gpu_memory_fraction * 100, kMaxWeightShare * 100, replicas, replicas * tp,
        num_gpus));
    return plan;
  }
  plan.set_fits(false);
  plan.set_note(fmt::format(
      "does not fit: {} bytes of weights need more than {:.0f}% of the usable memory of {} "
      "GPU(s) of {} bytes",
      inputs.weight_bytes, kMaxWeightShare * 100, RoundDownPowerOfTwo(num_gpus), smallest));
  return plan;
}

}  // namespace inferbox::daemon
