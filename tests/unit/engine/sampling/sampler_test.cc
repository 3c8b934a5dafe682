// Sampling: exact where it is deterministic (greedy, penalties, log-probabilities, seeds),
// statistical where it is random (a fixed seed, many draws, observed against expected
// frequencies with a chi-square bound; the seed makes the outcome repeatable, not lucky).
#include "inferbox/engine/sampling/sampler.h"

#include <cmath>
#include <map>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace inferbox::engine {
namespace {

using ::testing::HasSubstr;

// Logits whose softmax is exactly `probs`.
std::vector<float> LogitsFor(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (const double p : probs) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

// Draws `n` tokens (penalties off, so draws are independent) and returns the frequencies.
std::vector<double> Frequencies(const SamplingParams& params, const std::vector<float>& logits,
                                int n) {
  Sampler sampler(params, {});
  std::vector<double> counts(logits.size(), 0.0);
  for (int i = 0; i < n; ++i) counts[static_cast<size_t>(sampler.Next(logits).token)] += 1;
  for (double& c : counts) c /= n;
  return counts;
}

// Pearson's chi-square of observed frequencies against expected probabilities over n draws.
double ChiSquare(const std::vector<double>& observed, const std::vector<double>& expected, int n) {
  double chi = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (expected[i] == 0.0) {
      EXPECT_EQ(observed[i], 0.0) << "token " << i << " has probability 0 but was drawn";
      continue;
    }
    chi += n * std::pow(observed[i] - expected[i], 2) / expected[i];
  }
  return chi;
}

// 99.9th percentile of chi-square with 3 degrees of freedom is 16.27.
constexpr double kChiSquare3Dof = 16.27;

TEST(Sampler, GreedyTakesTheArgmaxAndTheLowestIdOnTies) {
  SamplingParams params;
  params.temperature = 0.0f;
  Sampler sampler(params, {});
  EXPECT_EQ(sampler.Next(std::vector<float>{0.1f, 3.0f, -1.0f, 3.0f}).token, 1);
}

TEST(Sampler, DrawsFollowTheSoftmax) {
  const std::vector<double> probs = {0.5, 0.3, 0.15, 0.05};
  SamplingParams params;
  params.seed = 7;
  const int n = 40000;
  EXPECT_LT(ChiSquare(Frequencies(params, LogitsFor(probs), n), probs, n), kChiSquare3Dof);
}

TEST(Sampler, TemperatureSharpensOrFlattens) {
  const std::vector<double> probs = {0.5, 0.3, 0.15, 0.05};
  SamplingParams params;
  params.seed = 11;
  params.temperature = 2.0f;
  // softmax(log p / 2) ∝ sqrt(p).
  std::vector<double> expected;
  double sum = 0;
  for (const double p : probs) sum += std::sqrt(p);
  for (const double p : probs) expected.push_back(std::sqrt(p) / sum);
  const int n = 40000;
  EXPECT_LT(ChiSquare(Frequencies(params, LogitsFor(probs), n), expected, n), kChiSquare3Dof);
}

TEST(Sampler, TopKTopPAndMinPKeepOnlyTheirCandidates) {
  const std::vector<float> logits = LogitsFor({0.5, 0.3, 0.15, 0.05});
  const int n = 20000;
  const std::vector<double> top_two = {0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0};

  SamplingParams top_k;
  top_k.seed = 1;
  top_k.top_k = 2;
  EXPECT_LT(ChiSquare(Frequencies(top_k, logits, n), top_two, n), kChiSquare3Dof);

  SamplingParams top_p;  // 0.5 < 0.7 <= 0.5 + 0.3: the nucleus is the first two.
  top_p.seed = 2;
  top_p.top_p = 0.7f;
  EXPECT_LT(ChiSquare(Frequencies(top_p, logits, n), top_two, n), kChiSquare3Dof);

  SamplingParams min_p;  // Threshold 0.35 × 0.5 = 0.175 keeps 0.5 and 0.3.
  min_p.seed = 3;
  min_p.min_p = 0.35f;
  EXPECT_LT(ChiSquare(Frequencies(min_p, logits, n), top_two, n), kChiSquare3Dof);
}

// The nucleus is selected in rounds (64, then 512, ... candidates): a flat distribution
// needs several, and the tie order (lower id first) decides which half is kept.
TEST(Sampler, TopPReachesDeepIntoAFlatDistribution) {
  const std::vector<float> flat(1000, 0.0f);
  SamplingParams params;
  params.seed = 5;
  params.top_p = 0.5f;
  Sampler sampler(params, {});
  std::vector<int> counts(flat.size(), 0);
  for (int i = 0; i < 20000; ++i) ++counts[static_cast<size_t>(sampler.Next(flat).token)];
  int distinct = 0;
  for (size_t id = 0; id < counts.size(); ++id) {
    if (id >= 500) {
      EXPECT_EQ(counts[id], 0) << "token " << id << " is outside the nucleus of ids 0..499";
    } else if (counts[id] > 0) {
      ++distinct;
    }
  }
  EXPECT_GT(distinct, 490) << "the nucleus should be all of ids 0..499";
}

TEST(Sampler, TheSameSeedGivesTheSameTokens) {
  const std::vector<float> logits = LogitsFor({0.25, 0.25, 0.25, 0.25});
  auto draw = [&](uint64_t seed) {
    SamplingParams params;
    params.seed = seed;
    Sampler sampler(params, {});
    std::vector<int32_t> tokens;
    for (int i = 0; i < 64; ++i) tokens.push_back(sampler.Next(logits).token);
    return tokens;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

TEST(Sampler, SkippingTheLogprobChangesNoChoice) {
  std::vector<float> logits;
  for (int i = 0; i < 1000; ++i) logits.push_back(static_cast<float>((i * 7919) % 1009) / 100.0f);
  for (const float temperature : {0.0f, 0.8f}) {
    for (const float penalty : {1.0f, 1.3f}) {
      SamplingParams with;
      with.temperature = temperature;
      with.repetition_penalty = penalty;
      with.seed = 9;
      SamplingParams without = with;
      without.compute_logprob = false;
      const std::vector<int32_t> prompt = {1, 2, 3};
      Sampler a(with, prompt);
      Sampler b(without, prompt);
      for (int step = 0; step < 50; ++step) {
        const TokenChoice expected = a.Next(logits);
        const TokenChoice got = b.Next(logits);
        ASSERT_EQ(got.token, expected.token) << "temperature " << temperature << " step " << step;
        EXPECT_LT(expected.logprob, 0.0f);
        EXPECT_EQ(got.logprob, 0.0f);
      }
    }
  }
}

TEST(Sampler, PenaltiesChangeTheGreedyChoiceAsDefined) {
  SamplingParams params;
  params.temperature = 0.0f;
  params.repetition_penalty = 2.0f;
  // Token 0 is in the prompt: its logit 3 becomes 1.5 < 2.
  Sampler repetition(params, std::vector<int32_t>{0});
  EXPECT_EQ(repetition.Next(std::vector<float>{3.0f, 2.0f}).token, 1);

  SamplingParams frequency;
  frequency.temperature = 0.0f;
  frequency.frequency_penalty = 0.6f;
  frequency.presence_penalty = 0.5f;
  Sampler sampler(frequency, {});
  const std::vector<float> logits = {2.0f, 1.0f};
  EXPECT_EQ(sampler.Next(logits).token, 0);  // Nothing generated yet: 2 > 1.
  EXPECT_EQ(sampler.Next(logits).token, 1);  // 2 − 0.5 − 0.6 = 0.9 < 1.
}

TEST(Sampler, LogprobsAreTheRawModelDistribution) {
  SamplingParams params;
  params.temperature = 0.0f;
  params.num_top_logprobs = 3;
  params.repetition_penalty = 1.5f;  // Must not change the reported log-probabilities.
  Sampler sampler(params, std::vector<int32_t>{2});
  const std::vector<double> probs = {0.1, 0.2, 0.6, 0.1};
  const TokenChoice choice = sampler.Next(LogitsFor(probs));
  EXPECT_NEAR(choice.logprob, std::log(probs[static_cast<size_t>(choice.token)]), 1e-5);
  ASSERT_EQ(choice.top_logprobs.size(), 3u);
  EXPECT_EQ(choice.top_logprobs[0].first, 2);
  EXPECT_NEAR(choice.top_logprobs[0].second, std::log(0.6), 1e-5);
  EXPECT_EQ(choice.top_logprobs[1].first, 1);
  EXPECT_EQ(choice.top_logprobs[2].first, 0) << "ties go to the lower id";
}

TEST(Sampler, PromptIdsOutsideTheRowAreIgnoredNotIndexed) {
  SamplingParams params;
  params.temperature = 0.0f;
  params.repetition_penalty = 1.5f;
  Sampler sampler(params, std::vector<int32_t>{-1, 1, 1000000});
  EXPECT_EQ(sampler.Next(std::vector<float>{1.0f, 1.2f}).token, 0)
      << "only id 1 is penalised: 1.2 / 1.5 < 1";
}

TEST(Sampler, OutOfRangeParametersAreNamed) {
  SamplingParams params;
  EXPECT_TRUE(ValidateSamplingParams(params).ok());
  params.top_p = 0.0f;
  EXPECT_THAT(ValidateSamplingParams(params).message(), HasSubstr("top_p = 0 is outside (0, 1]"));
  params = {};
  params.temperature = -1.0f;
  EXPECT_THAT(ValidateSamplingParams(params).message(), HasSubstr("temperature"));
  params = {};
  params.num_top_logprobs = 21;
  EXPECT_THAT(ValidateSamplingParams(params).message(), HasSubstr("top_logprobs"));
  params = {};
  params.frequency_penalty = std::nanf("");
  EXPECT_FALSE(ValidateSamplingParams(params).ok()) << "NaN must be refused";
}

}  // namespace
}  // namespace inferbox::engine
