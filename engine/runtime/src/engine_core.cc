#include "inferbox/engine/runtime/engine_core.h"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>
#include <omp.h>

namespace inferbox::engine {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point& mark) {
  const auto now = std::chrono::steady_clock::now();
  const double seconds = std::chrono::duration<double>(now - mark).count();
  mark = now;
  return seconds;
}

}  // namespace

EngineCore::EngineCore(ModelRunner& model, int32_t num_blocks, int32_t block_size,
                       SchedulerLimits limits)
    : model_(model),
      backend_(model.logits_backend()),
      cache_(model.AllocateKvCache(num_blocks, block_size)),
      blocks_(num_blocks, block_size),
      scheduler_(blocks_, limits) {}

EngineCore::EngineCore(Model& model, Backend& backend, int32_t num_blocks, int32_t block_size,
                       SchedulerLimits limits)
    : EngineCore(model, num_blocks, block_size, limits) {
  INFERBOX_CHECK(&backend == &model.logits_backend());
}

Status EngineCore::Validate(const GenerationRequest& request) const {
  if (Status status = ValidateSamplingParams(request.sampling); !status.ok()) return status;
  if (request.stop.max_tokens <= 0) return InvalidArgumentError("max_tokens must be positive");
  for (const int32_t token : request.prompt) {
    if (token < 0 || token >= model_.config().vocab_size) {
      return InvalidArgumentError(fmt::format("prompt token {} is outside the vocabulary", token));
    }
  }
  return scheduler_.Validate(static_cast<int64_t>(request.prompt.size()), request.stop.max_tokens);
}

Status EngineCore::Add(GenerationRequest request) {
  if (Status status = Validate(request); !status.ok()) return status;
  if (requests_.contains(request.id))
    return InvalidArgumentError(fmt::format("request {} already exists", request.id));
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

Result<StepOutput> EngineCore::Step() {
  StepOutput output;
  auto mark = std::chrono::steady_clock::now();

  // schedule
  const std::vector<ScheduledWork> work = scheduler_.Schedule();
  for (const auto& cancelled : scheduler_.TakeCancelled()) {
    requests_.erase(cancelled->id);
    output.cancelled.push_back(cancelled->id);
  }
  output.timings.schedule = SecondsSince(mark);
  if (work.empty()) return output;

  // run
  std::vector<ForwardSequence> batch;
  batch.reserve(work.size());
  for (const ScheduledWork& item : work) {
    RequestState& state = requests_.at(item.sequence->id);
    if (!state.started) {
      state.started = true;
      output.started.emplace_back(item.sequence->id, item.sequence->kv.num_cached_tokens);
    }
    batch.push_back(
        {std::span<const int32_t>(item.sequence->tokens)
             .subspan(static_cast<size_t>(item.start), static_cast<size_t>(item.num_tokens)),
         item.start, item.sequence->kv.block_table});
    output.num_tokens += item.num_tokens;
  }
  auto logits = model_.ForwardOnBackend(batch, *cache_, false);
  if (!logits.ok()) return logits.status();
  output.timings.forward = SecondsSince(mark);

  // sample: where the logits are when the backend can (only ids come back), plain greedy
  // steps with the backend's argmax, else on the host from a copy of the logits.
  const auto vocab = static_cast<int64_t>(model_.config().vocab_size);
  const auto rows = static_cast<int64_t>(work.size());
  bool plain_greedy = true;
  bool logprobs_wanted = false;
  for (const ScheduledWork& item : work) {
    if (!item.samples) continue;
    const Sampler& sampler = requests_.at(item.sequence->id).sampler;
    plain_greedy = plain_greedy && sampler.is_plain_greedy();
    logprobs_wanted = logprobs_wanted || sampler.wants_logprob();
  }
  std::vector<int32_t> greedy_tokens;
  std::vector<float> greedy_logprobs;
  std::vector<SampledRow> sampled_rows;
  std::span<const float> host_logits;
  const bool on_backend = !plain_greedy && backend_.can_sample();
  if (plain_greedy) {
    greedy_tokens.resize(static_cast<size_t>(rows));
    greedy_logprobs.resize(logprobs_wanted ? static_cast<size_t>(rows) : 0);
    backend_.GreedyRows(*logits, rows, vocab, greedy_tokens, greedy_logprobs);
  } else if (on_backend) {
    // Every row is sampled (rows that do not sample are sampled greedily and ignored).
    std::vector<RowSampling> row_sampling(static_cast<size_t>(rows));
    for (size_t i = 0; i < work.size(); ++i) {
      if (work[i].samples) {
        row_sampling[i] = requests_.at(work[i].sequence->id).sampler.PrepareRow();
      } else {
        row_sampling[i].temperature = 0.0f;
      }
    }
    sampled_rows.resize(static_cast<size_t>(rows));
    backend_.SampleRows(*logits, vocab, row_sampling, sampled_rows);
  }
  // Rows sampled on the host (a backend that cannot sample: the CPU), each by its own
  // request's Sampler: a sampled row is several passes over the vocabulary (softmax, filters,
  // draw), 1.5 ms for 150k logits on this project's development machine, so the rows run in
  // parallel on the process's OpenMP share of the cores; nothing is shared between them.
  std::vector<TokenChoice> host_choices;
  if (!plain_greedy && !on_backend) {
    host_logits = backend_.ReadBack(*logits, host_logits_);
    std::vector<Sampler*> samplers(work.size(), nullptr);
    for (size_t i = 0; i < work.size(); ++i) {
      if (work[i].samples) samplers[i] = &requests_.at(work[i].sequence->id).sampler;
    }
    host_choices.resize(work.size());
    if (host_sampling_ == nullptr)
      host_sampling_ = std::make_unique<WorkerPool>(std::max(omp_get_max_threads(), 1) - 1);
    host_sampling_->ForEach(static_cast<int64_t>(work.size()), [&](int64_t i) {
      const auto row = static_cast<size_t>(i);
      if (samplers[row] == nullptr) return;
      host_choices[row] = samplers[row]->Next(
          host_logits.subspan(row * static_cast<size_t>(vocab), static_cast<size_t>(vocab)));
    });
  }
  std::vector<int32_t> sampled;
  for (size_t i = 0; i < work.size(); ++i) {
    if (!work[i].samples) continue;
    Sequence& sequence = *work[i].sequence;
    RequestState& state = requests_.at(sequence.id);
    TokenChoice choice;
    if (plain_greedy) {
      choice.token = greedy_tokens[i];
      if (state.sampler.wants_logprob()) choice.logprob = greedy_logprobs[i];
      state.sampler.Record(choice.token);
    } else if (on_backend) {
      choice = state.sampler.ChoiceFrom(sampled_rows[i]);
      state.sampler.Record(choice.token);
    } else {
      choice = std::move(host_choices[i]);
    }
    state.finish = CheckTokenStop(state.stop, choice.token, sequence.num_generated() + 1);
    sampled.push_back(choice.token);
    output.events.push_back(
        {sequence.id, choice.token, choice.logprob, std::move(choice.top_logprobs), state.finish});
  }
  output.timings.sample = SecondsSince(mark);

  // commit
  auto finished = scheduler_.Commit(work, sampled, [this](const Sequence& sequence) {
    return requests_.at(sequence.id).finish != FinishReason::kNone;
  });
  for (const auto& sequence : finished) requests_.erase(sequence->id);
  output.timings.commit = SecondsSince(mark);
  return output;
}

}  // namespace inferbox::engine
