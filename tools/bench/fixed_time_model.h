#pragma once
// A model whose step takes a set time (a fixed part plus a part per token in the batch) and
// picks known ordinary tokens: what the host
// does around a GPU's step (the engine loop, the engine server, the daemon, a client) can be
// measured on a machine without one. The step is slept, so the host's cores are free
// meanwhile, as while a GPU runs it. Used by inferbox-loop-bench and inferbox-bench
// --fixed-step-ms (in-process) and inferbox-engine-fixed-step (the whole daemon path).
#include <chrono>
#include <iterator>
#include <span>
#include <thread>
#include <vector>

#include "inferbox/engine/model/model_runner.h"

namespace inferbox::engine::bench {

// Milliseconds as the model's clock's duration.
inline std::chrono::steady_clock::duration Milliseconds(double ms) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double, std::milli>(ms));
}

class FixedTimeModel final : public ForwardingModelRunner {
 public:
  using Clock = std::chrono::steady_clock;
  // The tokens the logits pick: kFirstToken + (a mix of position and row) % kTokenRange,
  // ordinary ids of any real vocabulary (the vocabulary seen by the sampler ends there).
  static constexpr int64_t kFirstToken = 300;
  static constexpr int64_t kTokenRange = 500;

  // `shapes`: the loaded model whose config and KV cache shapes this one keeps. A step of n
  // tokens (prompt chunks and decode rows together) takes step + n * per_token.
  FixedTimeModel(ModelRunner& shapes, Clock::duration step,
                 Clock::duration per_token = Clock::duration::zero())
      : ForwardingModelRunner(shapes), step_(step), per_token_(per_token) {
    config_ = shapes.config();
    config_.vocab_size = kFirstToken + kTokenRange;
  }
  const ModelConfig& config() const override { return config_; }
  Result<std::span<const float>> ForwardOnBackend(std::span<const ForwardSequence> batch, KvCache&,
                                                  bool) override {
    int64_t tokens = 0;
    for (const ForwardSequence& sequence : batch) tokens += std::ssize(sequence.tokens);
    const auto end = Clock::now() + step_ + tokens * per_token_;
    const auto vocab = static_cast<size_t>(config_.vocab_size);
    logits_.assign(batch.size() * vocab, 0.0f);
    for (size_t row = 0; row < batch.size(); ++row) {
      const int64_t position =
          batch[row].start_position + static_cast<int64_t>(batch[row].tokens.size());
      const int64_t token =
          kFirstToken + (position * 7 + static_cast<int64_t>(row) * 13) % kTokenRange;
      logits_[row * vocab + static_cast<size_t>(token)] = 1.0f;
    }
    std::this_thread::sleep_until(end);
    return std::span<const float>(logits_);
  }

 private:
  const Clock::duration step_;
  const Clock::duration per_token_;
  ModelConfig config_;
  std::vector<float> logits_;
};

}  // namespace inferbox::engine::bench
