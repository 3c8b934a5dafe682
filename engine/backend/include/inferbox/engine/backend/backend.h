// The op interface every backend implements (CPU now, CUDA next). Model code is written
// once against it and never branches on the backend. The CPU backend is the reference each
// other backend is compared with, op by op.
//
// Activations are float32, row-major; weights stay in their stored dtype (F32, BF16, F16)
// and are widened inside the ops. Which thread: a backend is driven by one engine thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "inferbox/engine/model/safetensors.h"

namespace inferbox::engine {

// A weight matrix [rows, cols] (a vector is rows = 1) as stored in the model file.
struct Weight {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;

  static Weight FromView(const TensorView& view);
};

// Paged KV cache: `num_blocks` blocks of `block_size` token slots per layer. A sequence's
// block table lists its blocks in order; token position p lives in slot
// block_table[p / block_size] * block_size + p % block_size.
struct KvCacheShape {
  int64_t num_layers = 0;
  int64_t num_blocks = 0;
  int64_t block_size = 16;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;

  int64_t num_slots() const { return num_blocks * block_size; }
};

class KvCache {
 public:
  virtual ~KvCache() = default;
  virtual const KvCacheShape& shape() const = 0;
};

// The sequences of one forward step. Each contributes `num_query_tokens` consecutive
// tokens starting at `start_position` (a prefill chunk, or 1 for decode) and attends to
// every position before its last query token through its block table.
struct AttentionSequence {
  int64_t start_position = 0;
  int64_t num_query_tokens = 0;
  std::span<const int32_t> block_table;
};

// Rotary embedding frequencies (inverse frequencies per rotated pair), precomputed from
// the config (including Llama 3 scaling).
struct RopeTable {
  std::vector<float> inv_freq;  // head_dim / 2 entries.
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;

  virtual std::unique_ptr<KvCache> AllocateKvCache(const KvCacheShape& shape) = 0;

  // out[m, w.rows] = x[m, w.cols] · wᵀ (+ bias, a [1, w.rows] weight, when given).
  virtual void Linear(std::span<const float> x, int64_t m, const Weight& w, const Weight* bias,
                      std::span<float> out) = 0;
  // out[i, :] = table[ids[i], :].
  virtual void Embedding(std::span<const int32_t> ids, const Weight& table,
                         std::span<float> out) = 0;
  // residual[m, n] += delta (skipped when delta is empty); out = RMSNorm(residual) ⊙ weight.
  virtual void AddRmsNorm(std::span<float> residual, std::span<const float> delta, int64_t m,
                          const Weight& weight, float eps, std::span<float> out) = 0;
  // RMSNorm in place over each consecutive group of weight.cols values (Qwen3's per-head
  // q/k norm).
  virtual void RmsNormGroups(std::span<float> x, const Weight& weight, float eps) = 0;
  // Rotary embedding ("rotate_half" layout) in place on q [m, num_heads, d] and
  // k [m, num_kv_heads, d], token i at positions[i].
  virtual void Rope(std::span<float> q, std::span<float> k, std::span<const int64_t> positions,
                    int64_t num_heads, int64_t num_kv_heads, const RopeTable& table) = 0;
  // Writes k, v [m, num_kv_heads, d] of `layer` into cache slots[i].
  virtual void WriteKv(KvCache& cache, int64_t layer, std::span<const float> k,
                       std::span<const float> v, std::span<const int64_t> slots) = 0;
  // Causal attention of q [Σ num_query_tokens, num_heads, d] over the cache, sequence by
  // sequence; out has q's shape. scale multiplies q·k.
  virtual void PagedAttention(const KvCache& cache, int64_t layer, std::span<const float> q,
                              std::span<const AttentionSequence> sequences, int64_t num_heads,
                              float scale, std::span<float> out) = 0;
  // out = silu(gate) ⊙ up.
  virtual void SiluMul(std::span<const float> gate, std::span<const float> up,
                       std::span<float> out) = 0;
};

std::unique_ptr<Backend> MakeCpuBackend();

}  // namespace inferbox::engine
