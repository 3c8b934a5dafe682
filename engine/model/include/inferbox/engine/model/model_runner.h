// What the engine loop drives (EngineCore, Runtime): one model's forward pass over a KV cache
// it allocates, with the logits left on a backend where the step samples them. A Model is
// one on its backend; TensorParallelModel (engine/parallel) is one over several ranks that
// run each step in lockstep, each rank with its own backend and its share of the KV cache.
//
// Which thread: one caller at a time (the engine loop thread).
#pragma once

#include <cstdint>
#include <memory>
#include <span>

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

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;

  // The whole model's config (not a rank's share of it).
  virtual const ModelConfig& config() const = 0;
  // The backend that holds the logits ForwardOnBackend returns: the step samples there.
  virtual Backend& logits_backend() = 0;
  // Memory one KV block of `block_size` tokens takes, over every backend that holds a part.
  virtual int64_t KvCacheBytesPerBlock(int64_t block_size) const = 0;
  // A paged KV cache of `num_blocks` blocks for ForwardOnBackend (block ids are the same on
  // every backend that holds a part of it).
  virtual std::unique_ptr<KvCache> AllocateKvCache(int64_t num_blocks, int64_t block_size) = 0;
  // Runs one step and returns, per sequence, the logits of its last token ([batch, vocab]),
  // or with all_positions the logits of every token ([Σ tokens, vocab]), in the memory of
  // logits_backend(), valid until the next step. INVALID_ARGUMENT when a token id or
  // position is out of range, a block table is short or `cache` was not made here; nothing
  // has run then.
  virtual Result<std::span<const float>> ForwardOnBackend(std::span<const ForwardSequence> batch,
                                                          KvCache& cache, bool all_positions) = 0;
};

// Passes everything to another runner: the base of wrappers that change one part (tests
// that hold or record steps, a benchmark that replaces the forward pass).
class ForwardingModelRunner : public ModelRunner {
 public:
  explicit ForwardingModelRunner(ModelRunner& inner) : inner_(inner) {}

  const ModelConfig& config() const override { return inner_.config(); }
  Backend& logits_backend() override { return inner_.logits_backend(); }
  int64_t KvCacheBytesPerBlock(int64_t block_size) const override {
    return inner_.KvCacheBytesPerBlock(block_size);
  }
  std::unique_ptr<KvCache> AllocateKvCache(int64_t num_blocks, int64_t block_size) override {
    return inner_.AllocateKvCache(num_blocks, block_size);
  }
  Result<std::span<const float>> ForwardOnBackend(std::span<const ForwardSequence> batch,
                                                  KvCache& cache, bool all_positions) override {
    return inner_.ForwardOnBackend(batch, cache, all_positions);
  }

 protected:
  ModelRunner& inner() { return inner_; }

 private:
  ModelRunner& inner_;
};

}  // namespace inferbox::engine
