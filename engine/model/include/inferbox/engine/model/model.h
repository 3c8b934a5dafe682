// A loaded dense decoder (Llama, Mistral, Qwen2, Qwen3) bound to a backend. The four
// families share one implementation: they differ only in what the config turns on (q/k/v
// bias, per-head q/k norm, head_dim, RoPE scaling), so one file serves them, with the
// differences named where they apply. The model never branches on the backend.
#pragma once

#include <filesystem>
#include <memory>
#include <span>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/engine/backend/backend.h"
#include "inferbox/engine/model/model_config.h"
#include "inferbox/engine/model/model_runner.h"

namespace inferbox::engine {

class Communicator;

// How the linear layers' weights (q, k, v, o, gate, up, down) are kept; the embedding, norms
// and LM head stay as the file has them.
enum class Quantization {
  kNone,  // As the backend keeps the file's weights (BF16 on CUDA).
  kFp8,   // FP8 E4M3, one scale per Linears group (Backend::LoadFp8Weights).
};

// Which rank of a tensor-parallel group a Model is (the Megatron split). The rank holds
// num_attention_heads / world_size query heads with their q/k/v rows (and biases), the KV
// heads those use (a share of them, or one KV head that other ranks hold too when there are
// fewer KV heads than ranks), intermediate_size / world_size MLP columns, and the matching
// columns of o_proj and down_proj, whose partial sums it all-reduces with `communicator`.
// Embedding and norms are whole on every rank. The LM head is vocabulary-parallel where the
// ranks divide vocab_size evenly (each computes its slice of the logits; an all-gather
// assembles them), else whole on every rank; either way every rank ends a step with the
// same logits. The default is the whole model.
struct TensorParallelShard {
  int32_t rank = 0;
  int32_t world_size = 1;
  Communicator* communicator = nullptr;  // Required past one rank; called on the rank's thread.
};

class Model final : public ModelRunner {
 public:
  // Reads config.json, generation_config.json (if present) and the weights of `dir`, checking every
  // tensor's name, dtype and shape against the config. `backend` must outlive the model.
  // INVALID_ARGUMENT, naming the sizes, when the model does not split into `shard.world_size`
  // ranks (heads, KV heads or MLP columns).
  static Result<std::unique_ptr<Model>> Load(const std::filesystem::path& dir, Backend& backend,
                                             const TensorParallelShard& shard = {},
                                             Quantization quantization = Quantization::kNone,
                                             KvCacheDType kv_cache_dtype = KvCacheDType::kAuto);
  ~Model() override;

  const ModelConfig& config() const override;
  const TensorParallelShard& shard() const;
  // generation_config.json, or defaults when the folder has none.
  const GenerationConfig& generation_config() const;
  // Ids that end a generation: config.json's and generation_config.json's eos ids together.
  std::vector<int32_t> EosTokenIds() const;
  // Bytes of weights one decode step reads (every layer, the final norm and the LM head;
  // one embedding row): the numerator of the memory-bandwidth floor of decoding.
  int64_t WeightBytesPerDecodeStep() const;
  // This rank's KV cache: its KV heads only.
  KvCacheShape KvShape(int64_t num_blocks, int64_t block_size) const;

  Backend& logits_backend() override;
  int64_t KvCacheBytesPerBlock(int64_t block_size) const override;
  std::unique_ptr<KvCache> AllocateKvCache(int64_t num_blocks, int64_t block_size) override;

  // Runs one step and returns, per sequence, the logits of its last token ([batch, vocab]),
  // or with all_positions the logits of every token ([Σ tokens, vocab]), in host memory
  // valid until the next Forward. INVALID_ARGUMENT when a token id or position is out of
  // range or a block table is short; nothing has run then.
  Result<std::span<const float>> Forward(std::span<const ForwardSequence> batch, KvCache& cache,
                                         bool all_positions);
  // Forward, with the logits left in the backend's memory (for Backend::GreedyRows or
  // Backend::ReadBack): no copy to the host.
  Result<std::span<const float>> ForwardOnBackend(std::span<const ForwardSequence> batch,
                                                  KvCache& cache, bool all_positions) override;

  struct Impl;

 private:
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Inverse RoPE frequencies for the config, with Llama 3 scaling applied (exposed for tests).
RopeTable MakeRopeTable(const ModelConfig& config);

}  // namespace inferbox::engine
