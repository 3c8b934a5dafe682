#include "inferbox/engine/scheduler/scheduler.h"

#include <algorithm>

#include <fmt/format.h>

namespace inferbox::engine {

Status Scheduler::Validate(int64_t num_prompt_tokens, int64_t max_new_tokens) const {
  if (num_prompt_tokens == 0) return InvalidArgumentError("the prompt is empty");
  if (num_prompt_tokens + max_new_tokens > limits_.max_model_len) {
    return InvalidArgumentError(
               fmt::format("{} prompt tokens + {} new tokens exceed the model's context of {}",
                           num_prompt_tokens, max_new_tokens, limits_.max_model_len))
        .WithReason(error_reason::kPromptTooLong);
  }
  const int64_t blocks_needed =
      (num_prompt_tokens + max_new_tokens + blocks_.block_size() - 1) / blocks_.block_size();
  if (blocks_needed > blocks_.num_blocks()) {
    return InvalidArgumentError(fmt::format("the request needs {} KV blocks; the cache has {}",
                                            blocks_needed, blocks_.num_blocks()))
        .WithReason(error_reason::kPromptTooLong);
  }
  return Status::Ok();
}

int64_t Scheduler::num_waiting_tokens() const {
  int64_t tokens = 0;
  for (const auto& sequence : waiting_)
    tokens += static_cast<int64_t>(sequence->tokens.size()) - sequence->num_computed;
  return tokens;
}

Status Scheduler::Add(std::unique_ptr<Sequence> sequence) {
  const auto prompt = static_cast<int64_t>(sequence->tokens.size());
  if (Status status = Validate(prompt, sequence->max_new_tokens); !status.ok()) return status;
  sequence->num_prompt_tokens = prompt;
  sequence->num_computed = 0;
  InsertWaiting(std::move(sequence), false);
  return Status::Ok();
}

void Scheduler::InsertWaiting(std::unique_ptr<Sequence> sequence, bool at_front) {
  const Lane lane = sequence->lane;
  if (at_front) {
    // Ahead of everything in its lane (and, for interactive, of the whole batch lane).
    auto it = waiting_.begin();
    if (lane == Lane::kBatch) {
      while (it != waiting_.end() && (*it)->lane == Lane::kInteractive) ++it;
    }
    waiting_.insert(it, std::move(sequence));
    return;
  }
  // Behind everything in its lane.
  auto it = waiting_.end();
  if (lane == Lane::kInteractive) {
    it = std::find_if(waiting_.begin(), waiting_.end(),
                      [](const auto& s) { return s->lane == Lane::kBatch; });
  }
  waiting_.insert(it, std::move(sequence));
}

bool Scheduler::Cancel(int64_t id) {
  auto matches = [id](const std::unique_ptr<Sequence>& s) { return s->id == id; };
  if (std::none_of(running_.begin(), running_.end(), matches) &&
      std::none_of(waiting_.begin(), waiting_.end(), matches)) {
    return false;
  }
  cancel_requests_.push_back(id);
  return true;
}

bool Scheduler::PreemptLowest() {
  if (running_.empty()) return false;
  // Lowest priority: the batch lane before interactive, the latest admitted first.
  auto victim = running_.end() - 1;
  for (auto it = running_.end(); it != running_.begin();) {
    --it;
    if ((*it)->lane == Lane::kBatch) {
      victim = it;
      break;
    }
  }
  std::unique_ptr<Sequence> sequence = std::move(*victim);
  running_.erase(victim);
  blocks_.Free(sequence->kv);
  sequence->num_computed = 0;
  ++sequence->num_preemptions;
  ++num_preemptions_;
  InsertWaiting(std::move(sequence), true);
  return true;
}

std::vector<ScheduledWork> Scheduler::Schedule() {
  // Cancellations take effect first, wherever the sequence is.
  for (const int64_t id : cancel_requests_) {
    auto matches = [id](const std::unique_ptr<Sequence>& s) { return s->id == id; };
    if (auto it = std::find_if(running_.begin(), running_.end(), matches); it != running_.end()) {
      blocks_.Free((*it)->kv);
      cancelled_.push_back(std::move(*it));
      running_.erase(it);
    } else if (auto waiting = std::find_if(waiting_.begin(), waiting_.end(), matches);
               waiting != waiting_.end()) {
      cancelled_.push_back(std::move(*waiting));
      waiting_.erase(waiting);
    }
  }
  cancel_requests_.clear();

  std::vector<ScheduledWork> work;
  int64_t budget = limits_.token_budget;

  // Decodes first, interactive before batch. A decode that needs a block nobody has
  // preempts the lowest-priority running sequence (possibly itself).
  std::stable_sort(running_.begin(), running_.end(), [](const auto& a, const auto& b) {
    return a->lane == Lane::kInteractive && b->lane == Lane::kBatch;
  });
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence& sequence = *running_[i];
    const auto length = static_cast<int64_t>(sequence.tokens.size());
    if (length - sequence.num_computed != 1) {  // Still prefilling: handled below.
      ++i;
      continue;
    }
    if (!blocks_.CanAppend(sequence.kv, length)) {
      // The victim sorts at or after i (batch lane last, latest admitted last), so the loop
      // retries index i: the same sequence with more room, or the one after a preempted i.
      PreemptLowest();
      continue;
    }
    blocks_.Append(sequence.kv, length);
    work.push_back({&sequence, sequence.num_computed, 1, true});
    --budget;
    ++i;
  }

  // Prefill chunks: sequences already admitted first, then the waiting queue in order.
  for (auto& running : running_) {
    if (budget <= 0) break;
    Sequence& sequence = *running;
    const int64_t remaining = static_cast<int64_t>(sequence.tokens.size()) - sequence.num_computed;
    if (remaining <= 1) continue;
    const int64_t chunk = std::min(remaining, budget);
    work.push_back({&sequence, sequence.num_computed, chunk, chunk == remaining});
    budget -= chunk;
  }
  while (budget > 0 && !waiting_.empty() && num_running() < limits_.max_running) {
    Sequence& next = *waiting_.front();
    if (!blocks_.CanAllocate(next.tokens)) break;  // FIFO: nothing overtakes the head.
    std::unique_ptr<Sequence> sequence = std::move(waiting_.front());
    waiting_.pop_front();
    sequence->kv = blocks_.Allocate(sequence->tokens);
    sequence->num_computed = sequence->kv.num_cached_tokens;
    const int64_t remaining =
        static_cast<int64_t>(sequence->tokens.size()) - sequence->num_computed;
    const int64_t chunk = std::min(remaining, budget);
    work.push_back({sequence.get(), sequence->num_computed, chunk, chunk == remaining});
    budget -= chunk;
    running_.push_back(std::move(sequence));
  }
  return work;
}

std::vector<std::unique_ptr<Sequence>> Scheduler::Commit(
    std::span<const ScheduledWork> work, std::span<const int32_t> sampled,
    const std::function<bool(const Sequence&)>& is_finished) {
  std::vector<std::unique_ptr<Sequence>> finished;
  size_t next_sample = 0;
  std::vector<const Sequence*> done;
  for (const ScheduledWork& item : work) {
    Sequence& sequence = *item.sequence;
    sequence.num_computed = item.start + item.num_tokens;
    blocks_.Commit(sequence.kv, sequence.tokens, sequence.num_computed);
    if (!item.samples) continue;
    INFERBOX_CHECK(next_sample < sampled.size());
    sequence.tokens.push_back(sampled[next_sample++]);
    if (is_finished(sequence) || sequence.num_generated() >= sequence.max_new_tokens)
      done.push_back(&sequence);
  }
  for (const Sequence* sequence : done) {
    auto it = std::find_if(running_.begin(), running_.end(),
                           [sequence](const auto& s) { return s.get() == sequence; });
    INFERBOX_CHECK(it != running_.end());
    blocks_.Free((*it)->kv);
    finished.push_back(std::move(*it));
    running_.erase(it);
  }
  return finished;
}

std::vector<std::unique_ptr<Sequence>> Scheduler::TakeCancelled() {
  std::vector<std::unique_ptr<Sequence>> taken;
  taken.swap(cancelled_);
  return taken;
}

}  // namespace inferbox::engine
