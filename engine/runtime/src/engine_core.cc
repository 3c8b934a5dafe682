#include "inferbox/engine/runtime/engine_core.h"

#include <fmt/format.h>

namespace inferbox::engine {

EngineCore::EngineCore(Model& model, Backend& backend, int32_t num_blocks, int32_t block_size,
                       SchedulerLimits limits)
    : model_(model),
      cache_(backend.AllocateKvCache(model.KvShape(num_blocks, block_size))),
      blocks_(num_blocks, block_size),
      scheduler_(blocks_, limits) {}

Status EngineCore::Add(GenerationRequest request) {
  if (Status status = ValidateSamplingParams(request.sampling); !status.ok()) return status;
  if (request.stop.max_tokens <= 0) return InvalidArgumentError("max_tokens must be positive");
  if (requests_.contains(request.id))
    return InvalidArgumentError(fmt::format("request {} already exists", request.id));
  for (const int32_t token : request.prompt) {
    if (token < 0 || token >= model_.config().vocab_size) {
      return InvalidArgumentError(fmt::format("prompt token {} is outside the vocabulary", token));
    }
  }
  auto sequence = std::make_unique<Sequence>();
  sequence->id = request.id;
  sequence->lane = request.lane;
  sequence->tokens = request.prompt;
  sequence->max_new_tokens = request.stop.max_tokens;
  if (Status status = scheduler_.Add(std::move(sequence)); !status.ok()) return status;
  requests_.emplace(
      request.id, RequestState{Sampler(request.sampling, request.prompt), std::move(request.stop)});
  return Status::Ok();
}

bool EngineCore::Cancel(int64_t id) {
  return scheduler_.Cancel(id);
}

Result<std::vector<TokenEvent>> EngineCore::Step() {
  // schedule
  const std::vector<ScheduledWork> work = scheduler_.Schedule();
  for (const auto& cancelled : scheduler_.TakeCancelled()) requests_.erase(cancelled->id);
  if (work.empty()) return std::vector<TokenEvent>();

  // run
  std::vector<ForwardSequence> batch;
  batch.reserve(work.size());
  for (const ScheduledWork& item : work) {
    batch.push_back(
        {std::span<const int32_t>(item.sequence->tokens)
             .subspan(static_cast<size_t>(item.start), static_cast<size_t>(item.num_tokens)),
         item.start, item.sequence->kv.block_table});
  }
  if (Status status = model_.Forward(batch, *cache_, false, logits_); !status.ok()) return status;

  // sample
  const auto vocab = static_cast<size_t>(model_.config().vocab_size);
  std::vector<int32_t> sampled;
  std::vector<TokenEvent> events;
  for (size_t i = 0; i < work.size(); ++i) {
    if (!work[i].samples) continue;
    Sequence& sequence = *work[i].sequence;
    RequestState& state = requests_.at(sequence.id);
    const TokenChoice choice =
        state.sampler.Next(std::span<const float>(logits_).subspan(i * vocab, vocab));
    state.finish = CheckTokenStop(state.stop, choice.token, sequence.num_generated() + 1);
    sampled.push_back(choice.token);
    events.push_back({sequence.id, choice.token, choice.logprob, state.finish});
  }

  // commit
  auto finished = scheduler_.Commit(work, sampled, [this](const Sequence& sequence) {
    return requests_.at(sequence.id).finish != FinishReason::kNone;
  });
  for (const auto& sequence : finished) requests_.erase(sequence->id);
  return events;
}

}  // namespace inferbox::engine
