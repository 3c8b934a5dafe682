#include "inferbox/engine/runtime/runtime.h"

#include <fmt/format.h>

#include "inferbox/engine/tokenizer/incremental_decoder.h"

namespace inferbox::engine {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

}  // namespace

void Delta::Merge(Delta&& next) {
  token_ids.insert(token_ids.end(), next.token_ids.begin(), next.token_ids.end());
  text += next.text;
  for (auto& entry : next.logprobs) logprobs.push_back(std::move(entry));
  if (next.finished) {
    finished = true;
    finish = next.finish;
    matched_stop = std::move(next.matched_stop);
    error = std::move(next.error);
    usage = next.usage;
    timings = next.timings;
  }
}

struct Runtime::Active {
  explicit Active(StopStringMatcher stop_matcher) : matcher(std::move(stop_matcher)) {}

  RequestOptions options;
  std::shared_ptr<DeltaCallback> callback;
  std::optional<IncrementalDecoder> decoder;
  StopStringMatcher matcher;
  Clock::time_point accepted;
  std::optional<Clock::time_point> scheduled;
  std::optional<Clock::time_point> first_token;
  Clock::time_point last_token;
  RequestUsage usage;
  // Set when Cancel reached the core: the final delta to send once the core lets go.
  std::optional<Status> cancel_reason;
  // The final delta went out (stop string); waiting for the core to drop the sequence.
  bool done = false;
};

Runtime::Runtime(ModelRunner& model, const Tokenizer* tokenizer, RuntimeOptions options)
    : tokenizer_(tokenizer),
      options_(options),
      core_(model, options.num_blocks, options.block_size, options.limits) {
  PublishStats();
  delivery_thread_ = std::thread([this] { DeliveryLoop(); });
  thread_ = std::thread([this] { Loop(); });
}

Runtime::Runtime(Model& model, Backend& backend, const Tokenizer* tokenizer, RuntimeOptions options)
    : Runtime(model, tokenizer, options) {
  INFERBOX_CHECK(&backend == &model.logits_backend());
}

Runtime::~Runtime() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
  // The loop's last deltas (every request still in flight ends) go out before this returns.
  {
    std::lock_guard lock(delivery_mutex_);
    delivery_stopping_ = true;
  }
  delivery_wake_.notify_one();
  delivery_thread_.join();
}

Result<int64_t> Runtime::Submit(RequestOptions request, DeltaCallback callback) {
  GenerationRequest generation{0, std::move(request.prompt), request.sampling, request.stop,
                               request.lane};
  generation.sampling.compute_logprob = request.logprobs;
  if (Status status = core_.Validate(generation); !status.ok()) return status;
  std::lock_guard lock(mutex_);
  if (stopping_) return UnavailableError("the engine is stopping");
  if (stats_.failed) return UnavailableError("the engine failed: " + stats_.failure);
  // Accepted and not running (the running count is the last step's, so this errs towards
  // refusing).
  if (unfinished_ - stats_.num_running >= options_.max_waiting) {
    return Status(StatusCode::kResourceExhausted,
                  fmt::format("{} requests are already waiting", options_.max_waiting))
        .WithReason(error_reason::kQueueFull);
  }
  const auto tokens = static_cast<int64_t>(generation.prompt.size());
  const int64_t waiting_tokens = stats_.num_waiting_tokens + inbox_tokens_ + admitting_tokens_;
  if (options_.max_waiting_tokens > 0 && waiting_tokens > 0 &&
      waiting_tokens + tokens > options_.max_waiting_tokens) {
    return Status(StatusCode::kResourceExhausted,
                  fmt::format("{} prompt tokens are already waiting; this request's {} would pass "
                              "the engine's limit of {}",
                              waiting_tokens, tokens, options_.max_waiting_tokens))
        .WithReason(error_reason::kQueueFull);
  }
  inbox_tokens_ += tokens;
  const int64_t id = next_id_++;
  generation.id = id;
  inbox_.push_back(
      {id, std::move(generation), std::move(request), std::move(callback), Clock::now()});
  ++in_flight_;
  ++unfinished_;
  loop_idle_ = false;
  wake_.notify_one();
  return id;
}

void Runtime::Cancel(int64_t id, Status reason) {
  {
    std::lock_guard lock(mutex_);
    cancels_.emplace_back(id, std::move(reason));
  }
  wake_.notify_one();
}

void Runtime::CancelAll(Status reason) {
  {
    std::lock_guard lock(mutex_);
    cancel_all_ = std::move(reason);
  }
  wake_.notify_one();
}

bool Runtime::WaitIdle(Clock::time_point deadline) {
  std::unique_lock lock(mutex_);
  return idle_.wait_until(lock, deadline, [this] { return in_flight_ == 0 && loop_idle_; });
}

RuntimeStats Runtime::stats() const {
  std::lock_guard lock(mutex_);
  RuntimeStats stats = stats_;
  stats.num_waiting += static_cast<int64_t>(inbox_.size()) + admitting_;
  stats.num_waiting_tokens += inbox_tokens_ + admitting_tokens_;
  stats.requests_in_flight = in_flight_;
  return stats;
}

void Runtime::Loop() {
  bool failed = false;
  for (;;) {
    Post();
    std::vector<Pending> inbox;
    std::vector<std::pair<int64_t, Status>> cancels;
    std::optional<Status> cancel_all;
    {
      std::unique_lock lock(mutex_);
      // has_work() is engine-thread state, read here by the engine thread itself.
      if (failed || !core_.has_work()) {
        loop_idle_ = true;
        idle_.notify_all();
      }
      wake_.wait(lock, [&] {
        return stopping_ || !inbox_.empty() || !cancels_.empty() || cancel_all_.has_value() ||
               (!failed && core_.has_work());
      });
      if (stopping_) break;
      loop_idle_ = false;
      inbox.swap(inbox_);
      admitting_ = static_cast<int64_t>(inbox.size());
      admitting_tokens_ = std::exchange(inbox_tokens_, 0);
      cancels.swap(cancels_);
      cancel_all.swap(cancel_all_);
    }
    for (Pending& pending : inbox) {
      if (failed) {
        Reject(pending, UnavailableError("the engine failed"));
        continue;
      }
      Admit(std::move(pending));
    }
    if (cancel_all) {
      for (const auto& [id, active] : active_) cancels.emplace_back(id, *cancel_all);
    }
    for (auto& [id, reason] : cancels) {
      auto it = active_.find(id);
      if (it == active_.end() || it->second->done || it->second->cancel_reason) continue;
      it->second->cancel_reason = std::move(reason);
      core_.Cancel(id);
    }
    if (options_.queue_timeout > Clock::duration::zero()) ExpireQueued();
    if (failed || !core_.has_work()) {
      PublishStats();
      continue;
    }
    if (options_.fault_stall_after_steps > 0 && steps_total_ >= options_.fault_stall_after_steps) {
      // Injected hang: the loop never comes back (only killing the process ends it).
      for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
    }
    Result<StepOutput> output =
        options_.fault_fail_after_steps > 0 && steps_total_ >= options_.fault_fail_after_steps
            ? Result<StepOutput>(
                  InternalError("injected fault (INFERBOX_TEST_FAULT_FAIL_AFTER_STEPS)"))
            : core_.Step();
    if (!output.ok()) {
      failed = true;
      const std::string failure = output.status().ToString();
      {
        std::lock_guard lock(mutex_);
        stats_.failed = true;
        stats_.failure = failure;
        admitting_ = 0;  // Nothing is on its way into the scheduler any more.
        admitting_tokens_ = 0;
      }
      // The process is lost for serving (its supervisor restarts it): a retryable error.
      FinishAll(UnavailableError("the engine failed (" + failure + "); it is being restarted"));
      continue;
    }
    ++steps_total_;
    step_seconds_total_.schedule += output->timings.schedule;
    step_seconds_total_.forward += output->timings.forward;
    step_seconds_total_.sample += output->timings.sample;
    step_seconds_total_.commit += output->timings.commit;
    generation_tokens_total_ += static_cast<int64_t>(output->events.size());
    // Stats first: a client that has seen its last token finds them current.
    PublishStats();
    HandleStep(*output);
  }

  // Stopping: nothing accepted goes unanswered.
  std::vector<Pending> inbox;
  {
    std::lock_guard lock(mutex_);
    inbox.swap(inbox_);
    inbox_tokens_ = 0;
  }
  for (Pending& pending : inbox) Reject(pending, UnavailableError("the engine stopped"));
  FinishAll(UnavailableError("the engine stopped"));
  Post();
  std::lock_guard lock(mutex_);
  loop_idle_ = true;
  idle_.notify_all();
}

void Runtime::Post() {
  if (outbox_.empty()) return;
  {
    std::lock_guard lock(delivery_mutex_);
    if (deliveries_.empty()) {
      deliveries_.swap(outbox_);
    } else {
      std::move(outbox_.begin(), outbox_.end(), std::back_inserter(deliveries_));
      outbox_.clear();
    }
  }
  delivery_wake_.notify_one();
}

void Runtime::DeliveryLoop() {
  std::vector<Delivery> batch;
  for (;;) {
    {
      std::unique_lock lock(delivery_mutex_);
      delivery_wake_.wait(lock, [this] { return !deliveries_.empty() || delivery_stopping_; });
      if (deliveries_.empty()) return;  // Stopping, and everything went out.
      batch.swap(deliveries_);
    }
    int64_t finals = 0;
    for (Delivery& delivery : batch) {
      finals += delivery.delta.finished ? 1 : 0;
      (*delivery.callback)(std::move(delivery.delta));
    }
    batch.clear();
    if (finals > 0) {
      // A request stops counting as in flight once its final delta is delivered: WaitIdle
      // (and a drain) returns only when every client has its answer.
      std::lock_guard lock(mutex_);
      in_flight_ -= finals;
      idle_.notify_all();
    }
  }
}

void Runtime::Reject(Pending& pending, Status error) {
  Delta delta;
  delta.finished = true;
  delta.error = std::move(error);
  outbox_.push_back(
      {std::make_shared<DeltaCallback>(std::move(pending.callback)), std::move(delta)});
  std::lock_guard lock(mutex_);
  --unfinished_;
}

void Runtime::FinishAll(const Status& error) {
  std::vector<int64_t> ids;
  for (const auto& [id, active] : active_) {
    if (!active->done) ids.push_back(id);
  }
  for (const int64_t id : ids) {
    Delta delta;
    delta.error = error;
    Finish(id, std::move(delta));
  }
  active_.clear();
}

void Runtime::Admit(Pending&& pending) {
  auto active = std::make_unique<Active>(
      StopStringMatcher(pending.options.stop_strings, pending.options.include_stop_string));
  active->options = std::move(pending.options);
  active->callback = std::make_shared<DeltaCallback>(std::move(pending.callback));
  active->accepted = pending.accepted;
  active->usage.prompt_tokens = static_cast<int64_t>(pending.request.prompt.size());
  if (tokenizer_ != nullptr)
    active->decoder.emplace(*tokenizer_, active->options.skip_special_tokens);
  const int64_t id = pending.id;
  active_.emplace(id, std::move(active));
  if (Status status = core_.Add(std::move(pending.request)); !status.ok()) {
    Delta delta;
    delta.error = status;
    Finish(id, std::move(delta));
    return;
  }
  prompt_tokens_total_ += active_.at(id)->usage.prompt_tokens;
}

void Runtime::ExpireQueued() {
  const Clock::time_point now = Clock::now();
  for (auto& [id, active] : active_) {
    if (active->scheduled || active->done || active->cancel_reason) continue;
    if (now - active->accepted < options_.queue_timeout) continue;
    active->cancel_reason =
        Status(
            StatusCode::kResourceExhausted,
            fmt::format("the request waited {:.1f} s in the queue without starting (the model's "
                        "queue_timeout_seconds is {:g}): the engine is overloaded; retry shortly",
                        Seconds(active->accepted, now), options_.queue_timeout.count() / 1000.0))
            .WithReason(error_reason::kQueueTimeout);
    core_.Cancel(id);
  }
}

void Runtime::HandleStep(const StepOutput& output) {
  const Clock::time_point now = Clock::now();
  for (const auto& [id, cached] : output.started) {
    Active& active = *active_.at(id);
    if (!active.scheduled) active.scheduled = now;
    active.usage.cached_prompt_tokens = cached;
  }
  for (const int64_t id : output.cancelled) {
    auto it = active_.find(id);
    if (it == active_.end()) continue;
    if (it->second->done) {
      active_.erase(it);
      continue;
    }
    Delta delta;
    delta.error = it->second->cancel_reason.value_or(Status(StatusCode::kCancelled, "cancelled"));
    Finish(id, std::move(delta));
  }
  for (const TokenEvent& event : output.events) {
    Active& active = *active_.at(event.id);
    if (active.done) continue;
    ++active.usage.completion_tokens;
    if (!active.first_token) active.first_token = now;
    active.last_token = now;

    Delta delta;
    delta.token_ids.push_back(event.token);
    if (active.options.logprobs)
      delta.logprobs.push_back({event.token, event.logprob, event.top_logprobs});
    FinishReason finish = event.finish;
    if (active.decoder) {
      Result<std::string> text = active.decoder->Append(std::span(&event.token, 1));
      if (!text.ok()) {
        // The model produced an id the tokenizer does not know: a broken model folder.
        delta.error = InternalError("detokenizing: " + text.status().message());
        if (event.finish == FinishReason::kNone && core_.Cancel(event.id)) active.done = true;
        Finish(event.id, std::move(delta));
        continue;
      }
      delta.text = active.matcher.Feed(*text);
      if (!active.matcher.stopped() && finish != FinishReason::kNone) {
        delta.text += active.matcher.Feed(active.decoder->Finish());
        if (!active.matcher.stopped()) delta.text += active.matcher.Flush();
      }
      if (active.matcher.stopped()) {
        // A stop string ended it before the core did: the core drops it at the next step.
        if (finish == FinishReason::kNone && core_.Cancel(event.id)) active.done = true;
        finish = FinishReason::kStop;
        delta.matched_stop = active.matcher.matched();
      }
    }
    if (finish == FinishReason::kNone) {
      outbox_.push_back({active.callback, std::move(delta)});
      continue;
    }
    delta.finish = finish;
    Finish(event.id, std::move(delta));
  }
}

void Runtime::Finish(int64_t id, Delta&& delta) {
  auto it = active_.find(id);
  if (it == active_.end() || it->second->callback == nullptr) return;  // Already finished.
  Active& active = *it->second;
  const Clock::time_point now = Clock::now();
  delta.finished = true;
  delta.usage = active.usage;
  const Clock::time_point scheduled = active.scheduled.value_or(now);
  const Clock::time_point first_token = active.first_token.value_or(now);
  delta.timings.queue = Seconds(active.accepted, scheduled);
  delta.timings.prefill = active.first_token ? Seconds(scheduled, first_token) : 0.0;
  delta.timings.decode = active.first_token ? Seconds(first_token, active.last_token) : 0.0;
  delta.timings.first_token = active.first_token ? Seconds(active.accepted, first_token) : 0.0;
  delta.timings.total = Seconds(active.accepted, now);
  outbox_.push_back({std::move(active.callback), std::move(delta)});
  // A sequence the core still holds stays known (done) until the core drops it.
  if (!active.done) active_.erase(it);
  std::lock_guard lock(mutex_);
  --unfinished_;
}

void Runtime::PublishStats() {
  const BlockManager& blocks = core_.blocks();
  const Scheduler& scheduler = core_.scheduler();
  std::lock_guard lock(mutex_);
  admitting_ = 0;  // Those are in the scheduler's numbers now.
  admitting_tokens_ = 0;
  stats_.num_running = scheduler.num_running();
  stats_.num_waiting = scheduler.num_waiting();
  stats_.num_waiting_tokens = scheduler.num_waiting_tokens();
  stats_.num_blocks = blocks.num_blocks();
  stats_.num_blocks_used = blocks.num_blocks() - blocks.num_free_blocks();
  stats_.block_size = blocks.block_size();
  stats_.prompt_tokens_total = prompt_tokens_total_;
  stats_.generation_tokens_total = generation_tokens_total_;
  stats_.prefix_queried_tokens_total = blocks.num_prefix_queried_tokens();
  stats_.prefix_hit_tokens_total = blocks.num_prefix_hit_tokens();
  stats_.preemptions_total = scheduler.num_preemptions();
  stats_.steps_total = steps_total_;
  stats_.step_seconds_total = step_seconds_total_;
}

}  // namespace inferbox::engine
