#include "inferbox/engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include <fmt/format.h>

namespace inferbox::engine {

Status ValidateSamplingParams(const SamplingParams& p) {
  auto out_of_range = [](std::string_view name, double value, std::string_view range) {
    return InvalidArgumentError(fmt::format("{} = {} is outside {}", name, value, range));
  };
  if (!(p.temperature >= 0.0f && p.temperature <= 100.0f))
    return out_of_range("temperature", p.temperature, "[0, 100]");
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) return out_of_range("top_p", p.top_p, "(0, 1]");
  if (p.top_k < 0) return out_of_range("top_k", p.top_k, "[0, vocabulary size]");
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) return out_of_range("min_p", p.min_p, "[0, 1]");
  if (!(p.repetition_penalty > 0.0f && p.repetition_penalty <= 2.0f)) {
    return out_of_range("repetition_penalty", p.repetition_penalty, "(0, 2]");
  }
  if (!(p.presence_penalty >= -2.0f && p.presence_penalty <= 2.0f)) {
    return out_of_range("presence_penalty", p.presence_penalty, "[-2, 2]");
  }
  if (!(p.frequency_penalty >= -2.0f && p.frequency_penalty <= 2.0f)) {
    return out_of_range("frequency_penalty", p.frequency_penalty, "[-2, 2]");
  }
  if (p.num_top_logprobs < 0 || p.num_top_logprobs > 20)
    return out_of_range("top_logprobs", p.num_top_logprobs, "[0, 20]");
  return Status::Ok();
}

Sampler::Sampler(const SamplingParams& params, std::span<const int32_t> prompt)
    : params_(params), rng_(params.seed) {
  for (const int32_t token : prompt) {
    if (seen_.insert(token).second) seen_list_.push_back(token);
  }
}

double Sampler::NextUniform() {
  // As std::uniform_real_distribution<double>(0, 1) draws it.
  return std::generate_canonical<double, std::numeric_limits<double>::digits>(rng_);
}

RowSampling Sampler::PrepareRow() {
  RowSampling row;
  row.temperature = params_.temperature;
  row.top_p = params_.top_p;
  row.top_k = params_.top_k;
  row.min_p = params_.min_p;
  row.repetition_penalty = params_.repetition_penalty;
  row.presence_penalty = params_.presence_penalty;
  row.frequency_penalty = params_.frequency_penalty;
  row.num_top_logprobs = params_.num_top_logprobs;
  row.uniform = params_.temperature == 0.0f ? 0.0 : NextUniform();
  if (params_.repetition_penalty != 1.0f) row.repetition_tokens = seen_list_;
  if (params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) {
    row.output_tokens = output_tokens_;
    row.output_counts = output_counts_;
  }
  return row;
}

TokenChoice Sampler::ChoiceFrom(const SampledRow& row) const {
  TokenChoice choice;
  choice.token = row.token;
  if (params_.compute_logprob) choice.logprob = row.logprob;
  choice.top_logprobs = row.top_logprobs;
  return choice;
}

// Filters the candidates (top-k, then min-p, then top-p, each as defined on SamplingParams)
// and draws one with probability proportional to its softmax weight. Sorting is done only as
// far as a filter needs it: plain temperature sampling is two passes over the vocabulary,
// where a full sort of 150k logits per token used to cost more than a small model's forward
// pass. The draw walks the kept candidates in ascending id order.
int32_t Sampler::Draw(double uniform) {
  const auto vocab = static_cast<int32_t>(work_.size());
  auto by_logit = [this](int32_t a, int32_t b) {
    const float la = work_[static_cast<size_t>(a)];
    const float lb = work_[static_cast<size_t>(b)];
    return la != lb ? la > lb : a < b;
  };
  // top-k: the k best (ties by lower id); else every token.
  order_.resize(static_cast<size_t>(vocab));
  std::iota(order_.begin(), order_.end(), 0);
  if (params_.top_k > 0 && params_.top_k < vocab) {
    std::nth_element(order_.begin(), order_.begin() + params_.top_k - 1, order_.end(), by_logit);
    order_.resize(static_cast<size_t>(params_.top_k));
  }
  // Probabilities over those candidates.
  float top = -std::numeric_limits<float>::infinity();
  for (const int32_t id : order_) top = std::max(top, work_[static_cast<size_t>(id)]);
  probs_.resize(order_.size());
  double sum = 0.0;
  for (size_t i = 0; i < order_.size(); ++i) {
    probs_[i] = std::exp(static_cast<double>(work_[static_cast<size_t>(order_[i])] - top));
    sum += probs_[i];
  }
  for (double& p : probs_) p /= sum;
  const double top_prob = 1.0 / sum;  // The best candidate's probability (exp(0) / sum).
  // min-p: drop what is below min_p × the top probability (the top one always stays).
  if (params_.min_p > 0.0f) {
    const double threshold = params_.min_p * top_prob;
    size_t remaining = 0;
    for (size_t i = 0; i < order_.size(); ++i) {
      if (probs_[i] >= threshold) {
        order_[remaining] = order_[i];
        probs_[remaining++] = probs_[i];
      }
    }
    order_.resize(remaining);
    probs_.resize(remaining);
  }
  // top-p: the smallest set of most likely candidates whose mass reaches top_p. Selected
  // only as deep as needed: the best 64 (nth_element, then sorted), then the next 448, and so
  // on, 8 times deeper each round, until the mass is reached: a peaked distribution costs
  // two passes, a flat one about a full sort.
  rank_.resize(order_.size());
  std::iota(rank_.begin(), rank_.end(), 0);
  size_t kept = order_.size();
  bool in_id_order = !(params_.top_k > 0 && params_.top_k < vocab);
  if (params_.top_p < 1.0f && order_.size() > 1) {
    in_id_order = false;
    ranked_.resize(order_.size());
    for (size_t i = 0; i < order_.size(); ++i) ranked_[i] = {probs_[i], order_[i], i};
    auto by_probability = [](const Ranked& a, const Ranked& b) {
      return a.probability != b.probability ? a.probability > b.probability : a.id < b.id;
    };
    size_t sorted = 0;
    size_t nucleus = 0;
    double mass = 0.0;
    for (size_t depth = 64; nucleus == sorted && sorted < ranked_.size(); depth *= 8) {
      const auto first = ranked_.begin() + static_cast<ptrdiff_t>(sorted);
      const auto limit = ranked_.begin() + static_cast<ptrdiff_t>(std::min(depth, ranked_.size()));
      if (limit != ranked_.end()) std::nth_element(first, limit - 1, ranked_.end(), by_probability);
      std::sort(first, limit, by_probability);
      sorted = static_cast<size_t>(limit - ranked_.begin());
      while (nucleus < sorted && mass < params_.top_p) mass += ranked_[nucleus++].probability;
    }
    kept = std::max<size_t>(nucleus, 1);
    for (size_t i = 0; i < kept; ++i) rank_[i] = ranked_[i].position;
  }
  // The kept candidates in ascending id order (top-k and top-p left them in another).
  if (!in_id_order) {
    std::sort(rank_.begin(), rank_.begin() + static_cast<ptrdiff_t>(kept),
              [this](size_t a, size_t b) { return order_[a] < order_[b]; });
  }
  double kept_mass = 0.0;
  for (size_t i = 0; i < kept; ++i) kept_mass += probs_[rank_[i]];
  const double draw = uniform * kept_mass;
  double cumulative = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    cumulative += probs_[rank_[i]];
    if (draw < cumulative) return order_[rank_[i]];
  }
  return order_[rank_[kept - 1]];
}

bool Sampler::is_plain_greedy() const {
  const bool penalties = params_.repetition_penalty != 1.0f || params_.presence_penalty != 0.0f ||
                         params_.frequency_penalty != 0.0f;
  return params_.temperature == 0.0f && !penalties && params_.num_top_logprobs == 0;
}

void Sampler::Record(int32_t token) {
  const auto [entry, added] = output_index_.try_emplace(token, output_tokens_.size());
  if (added) {
    output_tokens_.push_back(token);
    output_counts_.push_back(0);
  }
  ++output_counts_[entry->second];
  if (seen_.insert(token).second) seen_list_.push_back(token);
}

TokenChoice Sampler::Next(std::span<const float> logits) {
  const auto vocab = static_cast<int32_t>(logits.size());
  TokenChoice choice;

  // Log-softmax of the raw logits, for the reported log-probabilities.
  double log_total = 0.0;
  if (params_.compute_logprob || params_.num_top_logprobs > 0) {
    const float max_logit = *std::max_element(logits.begin(), logits.end());
    double total = 0.0;
    for (const float logit : logits) total += std::exp(static_cast<double>(logit - max_logit));
    log_total = std::log(total) + max_logit;
  }
  auto logprob_of = [&](int32_t token) {
    return static_cast<float>(logits[static_cast<size_t>(token)] - log_total);
  };
  auto finish = [&](TokenChoice& chosen) {
    if (params_.compute_logprob) chosen.logprob = logprob_of(chosen.token);
    Record(chosen.token);
  };

  if (is_plain_greedy()) {
    // Plain greedy: the argmax of the raw row, no copy.
    choice.token =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    finish(choice);
    return choice;
  }

  // Penalties, then temperature.
  work_.assign(logits.begin(), logits.end());
  // Tokens outside this row (a caller's bad id) are ignored rather than indexed.
  auto in_row = [vocab](int32_t token) { return token >= 0 && token < vocab; };
  if (params_.repetition_penalty != 1.0f) {
    for (const int32_t token : seen_list_) {
      if (!in_row(token)) continue;
      float& logit = work_[static_cast<size_t>(token)];
      logit = logit > 0 ? logit / params_.repetition_penalty : logit * params_.repetition_penalty;
    }
  }
  for (size_t i = 0; i < output_tokens_.size(); ++i) {
    const int32_t token = output_tokens_[i];
    if (!in_row(token)) continue;
    work_[static_cast<size_t>(token)] -=
        params_.presence_penalty +
        params_.frequency_penalty * static_cast<float>(output_counts_[i]);
  }

  if (params_.temperature == 0.0f) {
    choice.token =
        static_cast<int32_t>(std::max_element(work_.begin(), work_.end()) - work_.begin());
  } else {
    for (float& logit : work_) logit /= params_.temperature;
    choice.token = Draw(NextUniform());
  }

  if (params_.num_top_logprobs > 0) {
    std::vector<int32_t> best(static_cast<size_t>(vocab));
    std::iota(best.begin(), best.end(), 0);
    const auto n = std::min<int32_t>(params_.num_top_logprobs, vocab);
    std::partial_sort(best.begin(), best.begin() + n, best.end(), [&](int32_t a, int32_t b) {
      return logits[static_cast<size_t>(a)] != logits[static_cast<size_t>(b)]
                 ? logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)]
                 : a < b;
    });
    for (int32_t i = 0; i < n; ++i)
      choice.top_logprobs.emplace_back(best[static_cast<size_t>(i)],
                                       logprob_of(best[static_cast<size_t>(i)]));
  }

  finish(choice);
  return choice;
}

}  // namespace inferbox::engine
