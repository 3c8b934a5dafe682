// Model FLOPs of a prefill, the numerator of prefill MFU (model FLOPs utilisation): the work
// the model's arithmetic needs, whatever an implementation does on top. A multiply-add is
// two FLOPs. scripts/gpu/hf_peer_bench.py computes the same numbers for the peer; keep the
// two in step.
#pragma once

#include <cstdint>

#include "inferbox/engine/model/model_config.h"

namespace inferbox::engine::bench {

struct PrefillFlops {
  // 2 x (q, k, v, o, gate, up and down weights of every layer) x tokens, plus the LM head
  // for the last token only (a prefill computes only that token's logits). Embedding
  // lookups, norms, RoPE, biases and activations are not counted.
  double matmul = 0;
  // Causal self-attention from an empty cache: QK^T and PV over the L(L+1)/2 (query, key)
  // pairs of each head and layer, 2 x 2 x head_dim FLOPs per pair.
  double attention = 0;

  double total() const { return matmul + attention; }
};

// Weights a token meets in the matrix multiplies of the layers (no embedding, no LM head).
int64_t LayerMatmulParams(const ModelConfig& config);

// One prompt of `num_tokens` tokens prefilled from an empty KV cache.
PrefillFlops CountPrefillFlops(const ModelConfig& config, int64_t num_tokens);

}  // namespace inferbox::engine::bench
