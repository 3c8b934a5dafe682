// One engine step, in the spirit of nano-vllm's three lines: schedule, run the model on the
// batch, sample, commit. Drives Scheduler + Model + Sampler on the calling thread; the
// runtime thread and the engine process (#5) wrap it. Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/engine/model/model.h"
#include "inferbox/engine/sampling/sampler.h"
#include "inferbox/engine/sampling/stop.h"
#include "inferbox/engine/scheduler/scheduler.h"

namespace inferbox::engine {

struct GenerationRequest {
  int64_t id = 0;
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  StopCriteria stop;  // stop.max_tokens > 0 is required.
  Lane lane = Lane::kInteractive;
};

// What one step produced for one request.
struct TokenEvent {
  int64_t id = 0;
  int32_t token = 0;
  float logprob = 0.0f;
  FinishReason finish = FinishReason::kNone;  // Set on the request's last token.
};

class EngineCore {
 public:
  // `model` and its backend must outlive the core; the KV cache is allocated here.
  EngineCore(Model& model, Backend& backend, int32_t num_blocks, int32_t block_size,
             SchedulerLimits limits);

  Status Add(GenerationRequest request);
  bool Cancel(int64_t id);
  bool has_work() const { return scheduler_.num_running() + scheduler_.num_waiting() > 0; }

  // Runs one step; returns the tokens it generated (in scheduling order).
  Result<std::vector<TokenEvent>> Step();

  const BlockManager& blocks() const { return blocks_; }
  const Scheduler& scheduler() const { return scheduler_; }

 private:
  struct RequestState {
    Sampler sampler;
    StopCriteria stop;
    FinishReason finish = FinishReason::kNone;
  };

  Model& model_;
  std::unique_ptr<KvCache> cache_;
  BlockManager blocks_;
  Scheduler scheduler_;
  std::unordered_map<int64_t, RequestState> requests_;
  std::vector<float> logits_;
};

}  // namespace inferbox::engine
