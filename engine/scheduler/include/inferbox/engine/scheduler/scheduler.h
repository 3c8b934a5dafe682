// Iteration-level (continuous) batching: each step, running decodes first (one token each),
// then prefill chunks (partly prefilled sequences, then waiting ones) within a token
// budget, so a long prompt never stalls running streams. When KV blocks run out the
// lowest-priority running sequence is preempted: its blocks are freed and it is recomputed
// later from its tokens, finishing with the same output. The interactive lane always goes
// before the batch lane. Pure policy over (sequences, block manager): no model, no clock.
// Owned by the engine loop thread; not thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/engine/scheduler/block_manager.h"

namespace inferbox::engine {

enum class Lane { kInteractive, kBatch };

struct Sequence {
  int64_t id = 0;
  Lane lane = Lane::kInteractive;
  std::vector<int32_t> tokens;  // The prompt, then every generated token.
  int64_t num_prompt_tokens = 0;
  int64_t max_new_tokens = 0;
  // Tokens whose KV is in the cache (tokens[0, num_computed)).
  int64_t num_computed = 0;
  KvAllocation kv;
  int64_t num_preemptions = 0;

  int64_t num_generated() const { return static_cast<int64_t>(tokens.size()) - num_prompt_tokens; }
};

// One sequence's share of a step: feed tokens[start, start + num_tokens).
struct ScheduledWork {
  Sequence* sequence = nullptr;
  int64_t start = 0;
  int64_t num_tokens = 0;
  // The chunk reaches the sequence's last token: the step's logits give its next token.
  bool samples = false;
};

struct SchedulerLimits {
  int64_t max_running = 64;      // Sequences holding KV at once.
  int64_t token_budget = 512;    // Tokens fed per step (decodes + prefill chunks).
  int64_t max_model_len = 4096;  // Prompt + new tokens.
};

class Scheduler {
 public:
  Scheduler(BlockManager& blocks, SchedulerLimits limits) : blocks_(blocks), limits_(limits) {}

  // Whether a request of this shape could ever run: INVALID_ARGUMENT for an empty prompt,
  // one longer than the model length with its max_new_tokens, or one the whole KV cache
  // could never hold. Reads only what is fixed at construction: safe from any thread.
  Status Validate(int64_t num_prompt_tokens, int64_t max_new_tokens) const;
  // Queues a sequence (checked with Validate).
  Status Add(std::unique_ptr<Sequence> sequence);
  // Marks a sequence cancelled; its blocks are freed at the next Schedule. False if unknown.
  bool Cancel(int64_t id);

  // The work of the next step (empty when idle). Sequences cancelled since the last step
  // are removed and returned by TakeCancelled.
  std::vector<ScheduledWork> Schedule();

  // After the step ran: `sampled` holds one token per work item with samples = true, in
  // order. `is_finished` decides, after each appended token, whether that sequence ends
  // (EOS, stop string, max tokens); finished sequences are freed and returned.
  std::vector<std::unique_ptr<Sequence>> Commit(
      std::span<const ScheduledWork> work, std::span<const int32_t> sampled,
      const std::function<bool(const Sequence&)>& is_finished);

  std::vector<std::unique_ptr<Sequence>> TakeCancelled();

  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_preemptions() const { return num_preemptions_; }
  // Tokens the waiting sequences still have to prefill (the router's load signal).
  int64_t num_waiting_tokens() const;
  const SchedulerLimits& limits() const { return limits_; }

 private:
  // Frees the lowest-priority running sequence's blocks and puts it back at the head of the
  // waiting queue. False when nothing is running.
  bool PreemptLowest();
  void InsertWaiting(std::unique_ptr<Sequence> sequence, bool at_front);

  BlockManager& blocks_;
  SchedulerLimits limits_;
  std::vector<std::unique_ptr<Sequence>> running_;  // In admission order.
  std::deque<std::unique_ptr<Sequence>> waiting_;   // Interactive first, FIFO within a lane.
  std::vector<int64_t> cancel_requests_;
  std::vector<std::unique_ptr<Sequence>> cancelled_;
  int64_t num_preemptions_ = 0;
};

}  // namespace inferbox::engine
