// One engine step, in the spirit of nano-vllm's three lines: schedule, run the model on the
// batch, sample, commit. Drives Scheduler + ModelRunner (a Model, or a TensorParallelModel
// whose ranks run the step in lockstep) + Sampler on the calling thread; Runtime
// (runtime.h) runs it on the engine loop thread. Not thread-safe, except Validate.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/engine/model/model.h"
#include "inferbox/engine/runtime/worker_pool.h"
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
  std::vector<std::pair<int32_t, float>> top_logprobs;  // sampling.num_top_logprobs of them.
  FinishReason finish = FinishReason::kNone;            // Set on the request's last token.
};

// Wall time of one step's phases, in seconds.
struct StepTimings {
  double schedule = 0;
  double forward = 0;
  double sample = 0;
  double commit = 0;
};

struct StepOutput {
  std::vector<TokenEvent> events;  // In scheduling order.
  // Requests scheduled for the first time this step, with the prompt tokens whose KV came
  // from the prefix cache.
  std::vector<std::pair<int64_t, int64_t>> started;
  // Requests whose cancellation took effect (their blocks are free again).
  std::vector<int64_t> cancelled;
  int64_t num_tokens = 0;  // Tokens fed to the model.
  StepTimings timings;
};

class EngineCore {
 public:
  // `model` (and its backends) must outlive the core; the KV cache is allocated here, and
  // the logits are sampled on model.logits_backend().
  EngineCore(ModelRunner& model, int32_t num_blocks, int32_t block_size, SchedulerLimits limits);
  // `backend` is the model's own.
  EngineCore(Model& model, Backend& backend, int32_t num_blocks, int32_t block_size,
             SchedulerLimits limits);

  // Whether Add would take the request (parameters, vocabulary, model length, KV capacity),
  // without changing anything: safe to call from any thread.
  Status Validate(const GenerationRequest& request) const;
  Status Add(GenerationRequest request);
  bool Cancel(int64_t id);
  bool has_work() const { return scheduler_.num_running() + scheduler_.num_waiting() > 0; }

  Result<StepOutput> Step();

  const BlockManager& blocks() const { return blocks_; }
  const Scheduler& scheduler() const { return scheduler_; }
  const ModelRunner& model() const { return model_; }

 private:
  struct RequestState {
    Sampler sampler;
    StopCriteria stop;
    FinishReason finish = FinishReason::kNone;
    bool started = false;
  };

  ModelRunner& model_;
  Backend& backend_;
  std::unique_ptr<KvCache> cache_;
  BlockManager blocks_;
  Scheduler scheduler_;
  std::unordered_map<int64_t, RequestState> requests_;
  std::vector<float> host_logits_;  // Where the backend's logits must be read on the host.
  // Samples the rows of a step on the host in parallel (made at the first such step: a
  // backend that samples where its logits are never needs it).
  std::unique_ptr<WorkerPool> host_sampling_;
};

}  // namespace inferbox::engine
