// Choosing the next token from a row of logits, per request: penalties, temperature,
// min-p / top-k / top-p filtering, a seeded draw, and log-probabilities. Pure CPU logic on
// one logits row; the CUDA backend will sample on the device with the same semantics and be
// tested against this.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/engine/backend/backend.h"

namespace inferbox::engine {

struct SamplingParams {
  float temperature = 1.0f;         // 0: greedy (argmax, lowest id on ties).
  float top_p = 1.0f;               // (0, 1]
  int32_t top_k = 0;                // 0: off.
  float min_p = 0.0f;               // [0, 1]
  float repetition_penalty = 1.0f;  // (0, 2]; HF: divides positive logits, multiplies negative.
  float presence_penalty = 0.0f;    // [-2, 2]; OpenAI: subtracted once per token already generated.
  float frequency_penalty = 0.0f;   // [-2, 2]; subtracted per occurrence in the output.
  uint64_t seed = 0;
  int32_t num_top_logprobs = 0;  // [0, 20]
  // Report TokenChoice::logprob. Off saves a pass over the vocabulary per token (a
  // log-softmax), which is most of a greedy step's sampling time on a large vocabulary.
  bool compute_logprob = true;
};

// INVALID_ARGUMENT naming the parameter and its range when a value is outside it.
Status ValidateSamplingParams(const SamplingParams& params);

struct TokenChoice {
  int32_t token = 0;
  // Log-probability of `token` under the model's distribution (log-softmax of the raw
  // logits, before penalties, temperature and filtering, as vLLM reports by default).
  float logprob = 0.0f;
  // The most likely tokens under the same distribution, most likely first.
  std::vector<std::pair<int32_t, float>> top_logprobs;
};

// One request's sampling state: its RNG and the tokens it has seen. Owned by the engine
// thread; not thread-safe.
class Sampler {
 public:
  // `prompt` counts for the repetition penalty (as in HF); the output so far for all three.
  Sampler(const SamplingParams& params, std::span<const int32_t> prompt);

  // Picks the next token from `logits` (one row, vocab entries) and records it.
  TokenChoice Next(std::span<const float> logits);

  // Plain greedy: temperature 0, no penalties, no top log-probabilities. The choice is then
  // the row's argmax (lowest id on ties) and its log-softmax alone, which a backend can find
  // where the logits are (Backend::GreedyRows); Record keeps the state as Next would.
  bool is_plain_greedy() const;
  bool wants_logprob() const { return params_.compute_logprob; }
  void Record(int32_t token);

  // For a backend that samples where the logits are (Backend::SampleRows): this request's
  // parameters and penalty state, and the next draw taken from its generator as Next would
  // take it. The spans stay valid until the next Record. Record the chosen token after.
  RowSampling PrepareRow();
  // The top log-probabilities (top_logprobs, then logprob) a TokenChoice carries, from what
  // a backend sampled.
  TokenChoice ChoiceFrom(const SampledRow& row) const;

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  // Penalty state as lists a backend can take: distinct prompt and output tokens, and the
  // distinct output tokens with their counts (indexed through output_index_).
  std::unordered_set<int32_t> seen_;
  std::vector<int32_t> seen_list_;
  std::unordered_map<int32_t, size_t> output_index_;
  std::vector<int32_t> output_tokens_;
  std::vector<int32_t> output_counts_;
  // Draws from work_ (processed logits) with the filters of params_; `uniform` in [0, 1).
  int32_t Draw(double uniform);
  // The next draw in [0, 1) (one per token sampled with a temperature).
  double NextUniform();

  std::vector<float> work_;
  std::vector<int32_t> order_;  // Candidate ids.
  std::vector<double> probs_;   // Their probabilities, parallel to order_.
  std::vector<size_t> rank_;    // Positions in order_ of the candidates kept.
  struct Ranked {
    double probability;
    int32_t id;
    size_t position;  // In order_.
  };
  std::vector<Ranked> ranked_;  // top-p's selection.
};

}  // namespace inferbox::engine
