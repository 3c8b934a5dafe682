// The engine loop: one thread owns the EngineCore (scheduler, KV cache, model) and runs
// steps while there is work; any thread submits and cancels requests and reads stats.
// Output reaches each request's callback as deltas (token ids, text, logprobs), the last one
// with the finish reason, usage and timings, or with the error that ended it. Every
// accepted request gets exactly one final delta, whatever happens (finish, cancel, abort,
// a failed step, Stop). Used by the engine server and by inferbox-bench.
//
// The engine thread detokenizes and matches stop strings, then hands each step's deltas to
// a second thread that calls the callbacks while the next step runs: a callback's work
// (the engine server starts a gRPC write in it; a thread waiting per stream, as the server
// once had, costs a system call to wake: ~2.5 ms of the engine thread per step at 256
// streams on a 2-core machine, inferbox-loop-bench) is then no time the GPU spends idle.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/engine/runtime/engine_core.h"
#include "inferbox/engine/tokenizer/tokenizer.h"

namespace inferbox::engine {

struct RuntimeOptions {
  int32_t num_blocks = 0;
  int32_t block_size = 16;
  SchedulerLimits limits;
  // Requests accepted but not yet running, at most; more are RESOURCE_EXHAUSTED.
  int64_t max_waiting = 1024;
  // Prompt tokens of those requests still to prefill, at most (CONVENTIONS R6.5: a bounded
  // queue in tokens too, so that long prompts cannot pile up work and memory); a request
  // that would pass it is RESOURCE_EXHAUSTED, unless nothing waits. 0: no limit.
  int64_t max_waiting_tokens = 0;
  // A request that has waited this long without starting ends with RESOURCE_EXHAUSTED (the
  // engine is overloaded: retry shortly), checked every step; 0: it waits as long as it takes.
  // One that started and was preempted has started: it never expires.
  std::chrono::milliseconds queue_timeout{0};
  // Fault injection for supervision tests (0: off): after this many steps the loop stops
  // forever (a hung device), or its next step fails (a device fault).
  int64_t fault_stall_after_steps = 0;
  int64_t fault_fail_after_steps = 0;
};

struct RequestOptions {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  StopCriteria stop;  // eos_token_ids included; max_tokens > 0.
  std::vector<std::string> stop_strings;
  bool include_stop_string = false;
  Lane lane = Lane::kInteractive;
  bool logprobs = false;  // Fill Delta::logprobs (top alternatives: sampling.num_top_logprobs).
  bool skip_special_tokens = true;
};

struct TokenLogprobs {
  int32_t token = 0;
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top;
};

struct RequestUsage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_prompt_tokens = 0;
};

// Seconds. queue: accepted → first scheduled; prefill: first scheduled → first token;
// decode: first token → last token; first_token and total count from acceptance.
struct RequestTimings {
  double queue = 0;
  double prefill = 0;
  double decode = 0;
  double first_token = 0;
  double total = 0;
};

struct Delta {
  std::vector<int32_t> token_ids;
  // Text of the new tokens; whole UTF-8 characters; withheld while it could still become a
  // stop string. Empty without a tokenizer.
  std::string text;
  std::vector<TokenLogprobs> logprobs;  // One per token id, when requested.
  bool finished = false;
  // Set on the final delta: kStop/kLength with an ok error, or kNone with the error that
  // ended the request (CANCELLED, UNAVAILABLE, INTERNAL).
  FinishReason finish = FinishReason::kNone;
  std::string matched_stop;
  Status error;
  RequestUsage usage;
  RequestTimings timings;

  // Appends `next` (a later delta of the same request) to this one.
  void Merge(Delta&& next);
};

// Called on the runtime's delivery thread (one for all requests; each request's deltas in
// order), holding none of the runtime's locks. It may call Submit, Cancel and stats; it
// must return quickly (a callback that blocks holds up every request's deltas, though not
// the engine's steps) and must not wait for the runtime (WaitIdle) or destroy it.
using DeltaCallback = std::function<void(Delta&&)>;

struct RuntimeStats {
  int64_t num_running = 0;
  int64_t num_waiting = 0;  // Includes accepted requests the loop has not picked up yet.
  int64_t num_waiting_tokens = 0;
  int64_t num_blocks = 0;
  int64_t num_blocks_used = 0;
  int64_t block_size = 0;
  int64_t prompt_tokens_total = 0;
  int64_t generation_tokens_total = 0;
  int64_t prefix_queried_tokens_total = 0;
  int64_t prefix_hit_tokens_total = 0;
  int64_t preemptions_total = 0;
  int64_t steps_total = 0;
  int64_t requests_in_flight = 0;
  StepTimings step_seconds_total;  // Sums over all steps.
  bool failed = false;
  std::string failure;
};

class Runtime {
 public:
  // `model` (and its backends) and `tokenizer` (may be null: no text) must outlive the
  // runtime. The loop thread starts here.
  Runtime(ModelRunner& model, const Tokenizer* tokenizer, RuntimeOptions options);
  // `backend` is the model's own.
  Runtime(Model& model, Backend& backend, const Tokenizer* tokenizer, RuntimeOptions options);
  // Stops the loop: requests still in flight end with UNAVAILABLE.
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Accepts a request and returns its id, or INVALID_ARGUMENT (bad request),
  // RESOURCE_EXHAUSTED (queue full), UNAVAILABLE (stopped or failed). After acceptance the
  // callback receives every delta, and exactly one with finished set.
  Result<int64_t> Submit(RequestOptions request, DeltaCallback callback);
  // Ends the request at the next step with `reason` (default CANCELLED) as its final delta.
  // Unknown or finished ids are ignored.
  void Cancel(int64_t id, Status reason = Status(StatusCode::kCancelled, "request cancelled"));
  // Ends every request in flight with `reason`.
  void CancelAll(Status reason);
  // Waits until no request is in flight and the loop has nothing left to do (stats are
  // final), or the deadline passes; true when idle.
  bool WaitIdle(std::chrono::steady_clock::time_point deadline);

  RuntimeStats stats() const;
  const ModelConfig& model_config() const { return core_.model().config(); }
  const SchedulerLimits& limits() const { return options_.limits; }

 private:
  struct Pending {
    int64_t id;
    GenerationRequest request;
    RequestOptions options;
    DeltaCallback callback;
    std::chrono::steady_clock::time_point accepted;
  };
  struct Active;
  struct Delivery {
    std::shared_ptr<DeltaCallback> callback;
    Delta delta;
  };

  void Loop();
  void Admit(Pending&& pending);
  // Cancels the requests that waited past options_.queue_timeout without starting.
  void ExpireQueued();
  void HandleStep(const StepOutput& output);
  // Sends the final delta and forgets the request.
  void Finish(int64_t id, Delta&& delta);
  // Ends every active request with `error`.
  void FinishAll(const Status& error);
  // Ends a request the core never saw.
  void Reject(Pending& pending, Status error);
  void PublishStats();
  // Hands the deltas the engine thread made to the delivery thread.
  void Post();
  void DeliveryLoop();

  const Tokenizer* tokenizer_;
  const RuntimeOptions options_;
  EngineCore core_;

  mutable std::mutex mutex_;  // Guards everything below up to the thread.
  std::condition_variable wake_;
  std::condition_variable idle_;
  std::vector<Pending> inbox_;
  std::vector<std::pair<int64_t, Status>> cancels_;
  std::optional<Status> cancel_all_;
  bool stopping_ = false;
  int64_t next_id_ = 1;
  // Taken from the inbox by the loop, not yet in the published scheduler numbers (stats count
  // them as waiting: a request is never missing from the stats).
  int64_t admitting_ = 0;
  // Prompt tokens of the inbox's requests, and of those being admitted (as admitting_).
  int64_t inbox_tokens_ = 0;
  int64_t admitting_tokens_ = 0;
  int64_t in_flight_ = 0;  // Accepted, final delta not yet delivered (WaitIdle, stats).
  // Accepted, final delta not yet made (admission: a request that has finished is not
  // waiting, even while its final delta waits for the delivery thread).
  int64_t unfinished_ = 0;
  bool loop_idle_ = false;  // The loop waits with nothing to do; stats_ are current.
  RuntimeStats stats_;

  // Engine thread only.
  std::unordered_map<int64_t, std::unique_ptr<Active>> active_;
  int64_t prompt_tokens_total_ = 0;
  int64_t generation_tokens_total_ = 0;
  int64_t steps_total_ = 0;
  StepTimings step_seconds_total_;
  std::vector<Delivery> outbox_;  // This step's deltas, not yet posted.

  std::mutex delivery_mutex_;  // Guards the two below.
  std::condition_variable delivery_wake_;
  std::vector<Delivery> deliveries_;  // Posted, in order; the delivery thread calls them.
  bool delivery_stopping_ = false;

  std::thread delivery_thread_;
  std::thread thread_;
};

}  // namespace inferbox::engine
