// The profile planner: how an installed model would run on the GPUs found (tensor parallel
// degree, replicas, KV cache budget) and how many sequences that budget holds. Pure
// arithmetic over the model's shape and the GPUs' memory, so it tests without a GPU.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string_view>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/v1/admin.pb.h"

namespace inferbox::daemon {

// What the KV cache of one token costs, from config.json.
struct ModelShape {
  uint64_t num_layers = 0;
  uint64_t num_heads = 0;
  uint64_t num_kv_heads = 0;
  uint64_t head_dim = 0;
  uint32_t dtype_bytes = 2;
  uint64_t hidden_size = 0;        // 0: config.json does not say.
  uint64_t intermediate_size = 0;  // 0: config.json does not say.

  // Parameters of the linear layers (q, k, v, o, gate, up, down of every layer), which
  // quantization = "fp8" keeps in one byte each; 0 when the config lacks a size.
  uint64_t linear_parameters() const {
    const uint64_t q = num_heads * head_dim;
    const uint64_t kv = num_kv_heads * head_dim;
    return num_layers * (hidden_size * (2 * q + 2 * kv) + 3 * hidden_size * intermediate_size);
  }
  // Bytes of weights `file_bytes` of this model take once loaded with `quantization`: the
  // linear layers one byte per parameter with "fp8" (never more than the files).
  uint64_t LoadedWeightBytes(uint64_t file_bytes, std::string_view quantization) const {
    if (quantization != "fp8" || intermediate_size == 0 || dtype_bytes <= 1) return file_bytes;
    const uint64_t saved = linear_parameters() * (dtype_bytes - 1);
    return saved < file_bytes ? file_bytes - saved : file_bytes;
  }

  // Bytes a token's keys and values take in an engine's KV cache on `device` ("cpu" or
  // "cuda"): 2 (K and V) x layers x kv_heads x head_dim values, each in the backend's
  // precision with kv_cache_dtype "auto" whatever the weights' dtype (float32 on the CPU,
  // BF16 on a GPU), or with "fp8" a byte per value and a 4-byte scale per KV head.
  uint64_t kv_bytes_per_token(std::string_view kv_cache_dtype, std::string_view device) const {
    if (kv_cache_dtype == "fp8") return 2 * num_layers * num_kv_heads * (head_dim + 4);
    return 2 * num_layers * num_kv_heads * head_dim * (device == "cpu" ? 4 : 2);
  }
};

// Reads num_hidden_layers, num_key_value_heads (default: num_attention_heads) and head_dim
// (default: hidden_size / num_attention_heads) from a model's config.json; `dtype` is the
// manifest's ("BF16", "F32", ...; else config.json's torch_dtype). INVALID_ARGUMENT naming
// the key that is missing or out of range.
Result<ModelShape> ReadModelShape(const std::filesystem::path& config_json, std::string_view dtype);

struct PlanInputs {
  std::string id;
  uint64_t weight_bytes = 0;
  ModelShape shape;
  // Memory of each GPU found, in bytes; empty: a CPU plan.
  std::vector<uint64_t> gpu_memory_bytes;
  uint32_t context_length = 4096;
  // Share of each GPU's memory the engine takes ([[models]] gpu_memory_fraction).
  double gpu_memory_fraction = 0.9;
  // The CPU engine's KV cache when kv_cache_gib is unset.
  uint64_t cpu_kv_cache_bytes = uint64_t{1} << 30;
  // ModelServeConfig::quantization; weight_bytes are already as it loads them.
  std::string quantization = "none";
  // ModelServeConfig::kv_cache_dtype.
  std::string kv_cache_dtype = "auto";
};

inline constexpr uint32_t kDefaultPlanContextLength = 4096;
// The weights may take at most this share of a tensor-parallel group's usable memory: the
// rest (at least 20%) is the KV cache.
inline constexpr double kMaxWeightShare = 0.8;

inferbox::v1::PlanModelResponse PlanModel(const PlanInputs& inputs);

}  // namespace inferbox::daemon
