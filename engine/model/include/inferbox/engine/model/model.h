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

namespace inferbox::engine {

// One sequence's share of a forward step: `tokens` at positions start_position onwards,
// whose KV is written through `block_table` (which must already cover every position).
struct ForwardSequence {
  std::span<const int32_t> tokens;
  int64_t start_position = 0;
  std::span<const int32_t> block_table;
};

class Model {
 public:
  // Reads config.json, generation_config.json (if present) and the weights of `dir`, checking every
  // tensor's name, dtype and shape against the config. `backend` must outlive the model.
  static Result<std::unique_ptr<Model>> Load(const std::filesystem::path& dir, Backend& backend);
  ~Model();

  const ModelConfig& config() const;
  // generation_config.json, or defaults when the folder has none.
  const GenerationConfig& generation_config() const;
  // Ids that end a generation: config.json's and generation_config.json's eos ids together.
  std::vector<int32_t> EosTokenIds() const;
  // Bytes of weights one decode step reads (every layer, the final norm and the LM head;
  // one embedding row): the numerator of the memory-bandwidth floor of decoding.
  int64_t WeightBytesPerDecodeStep() const;
  KvCacheShape KvShape(int64_t num_blocks, int64_t block_size) const;

  // Runs one step and returns, per sequence, the logits of its last token ([batch, vocab]),
  // or with all_positions the logits of every token ([Σ tokens, vocab]), in host memory
  // valid until the next Forward. INVALID_ARGUMENT when a token id or position is out of
  // range or a block table is short; nothing has run then.
  Result<std::span<const float>> Forward(std::span<const ForwardSequence> batch, KvCache& cache,
                                         bool all_positions);
  // Forward, with the logits left in the backend's memory (for Backend::GreedyRows or
  // Backend::ReadBack): no copy to the host.
  Result<std::span<const float>> ForwardOnBackend(std::span<const ForwardSequence> batch,
                                                  KvCache& cache, bool all_positions);

  struct Impl;

 private:
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Inverse RoPE frequencies for the config, with Llama 3 scaling applied (exposed for tests).
RopeTable MakeRopeTable(const ModelConfig& config);

}  // namespace inferbox::engine
