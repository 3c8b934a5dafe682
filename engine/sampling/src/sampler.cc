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
  seen_.insert(prompt.begin(), prompt.end());
}

bool Sampler::is_plain_greedy() const {
  const bool penalties = params_.repetition_penalty != 1.0f || params_.presence_penalty != 0.0f ||
                         params_.frequency_penalty != 0.0f;
  return params_.temperature == 0.0f && !penalties && params_.num_top_logprobs == 0;
}

void Sampler::Record(int32_t token) {
  ++output_counts_[token];
  seen_.insert(token);
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
    for (const int32_t token : seen_) {
      if (!in_row(token)) continue;
      float& logit = work_[static_cast<size_t>(token)];
      logit = logit > 0 ? logit / params_.repetition_penalty : logit * params_.repetition_penalty;
    }
  }
  for (const auto& [token, count] : output_counts_) {
    if (!in_row(token)) continue;
    work_[static_cast<size_t>(token)] -=
        params_.presence_penalty + params_.frequency_penalty * static_cast<float>(count);
  }

  if (params_.temperature == 0.0f) {
    choice.token =
        static_cast<int32_t>(std::max_element(work_.begin(), work_.end()) - work_.begin());
  } else {
    for (float& logit : work_) logit /= params_.temperature;
    // Candidates in descending order of (processed) logit; ties by lower id.
    order_.resize(static_cast<size_t>(vocab));
    std::iota(order_.begin(), order_.end(), 0);
    int32_t keep = vocab;
    if (params_.top_k > 0 && params_.top_k < vocab) keep = params_.top_k;
    auto by_logit = [&](int32_t a, int32_t b) {
      const float la = work_[static_cast<size_t>(a)];
      const float lb = work_[static_cast<size_t>(b)];
      return la != lb ? la > lb : a < b;
    };
    if (keep < vocab) {
      std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(), by_logit);
    } else {
      std::sort(order_.begin(), order_.end(), by_logit);
    }
    order_.resize(static_cast<size_t>(keep));
    // Probabilities over the kept candidates.
    const float top = work_[static_cast<size_t>(order_.front())];
    std::vector<double> probs(order_.size());
    double sum = 0.0;
    for (size_t i = 0; i < order_.size(); ++i) {
      probs[i] = std::exp(static_cast<double>(work_[static_cast<size_t>(order_[i])] - top));
      sum += probs[i];
    }
    for (double& p : probs) p /= sum;
    // min-p: drop tokens below min_p × the top probability.
    size_t count = probs.size();
    if (params_.min_p > 0.0f) {
      const double threshold = params_.min_p * probs.front();
      while (count > 1 && probs[count - 1] < threshold) --count;
    }
    // top-p: the smallest prefix whose mass reaches top_p.
    if (params_.top_p < 1.0f) {
      double mass = 0.0;
      size_t nucleus = 0;
      while (nucleus < count) {
        mass += probs[nucleus++];
        if (mass >= params_.top_p) break;
      }
      count = std::max<size_t>(nucleus, 1);
    }
    double kept_mass = 0.0;
    for (size_t i = 0; i < count; ++i) kept_mass += probs[i];
    const double draw = std::uniform_real_distribution<double>(0.0, kept_mass)(rng_);
    double cumulative = 0.0;
    choice.token = order_[count - 1];
    for (size_t i = 0; i < count; ++i) {
      cumulative += probs[i];
      if (draw < cumulative) {
        choice.token = order_[i];
        break;
      }
    }
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
