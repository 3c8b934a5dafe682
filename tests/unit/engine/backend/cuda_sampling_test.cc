// Sampling on the CUDA backend against the host Sampler (the reference) with the same draws:
// every configuration of the filters and penalties, over rows of a real vocabulary's width,
// flat and peaked, with ties. The chosen ids must be equal (the draws are the same numbers
// and both sum in double); log-probabilities within float rounding.
#include <cmath>
#include <cstdlib>
#include <random>
#include <regex>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "inferbox/engine/cuda/cuda_backend.h"
#include "inferbox/engine/cuda/device_query.h"
#include "inferbox/engine/sampling/sampler.h"

namespace inferbox::engine {
namespace {

struct Config {
  std::string name;
  SamplingParams params;
};

std::vector<Config> Configs() {
  std::vector<Config> configs;
  auto add = [&](std::string name, auto&& set) {
    SamplingParams params;
    params.num_top_logprobs = 3;
    set(params);
    configs.push_back({std::move(name), params});
  };
  add("greedy_with_penalties", [](SamplingParams& p) {
    p.temperature = 0.0f;
    p.repetition_penalty = 1.3f;
    p.frequency_penalty = 0.5f;
  });
  add("temperature", [](SamplingParams& p) { p.temperature = 0.8f; });
  add("top_k", [](SamplingParams& p) { p.top_k = 40; });
  add("top_p", [](SamplingParams& p) { p.top_p = 0.9f; });
  add("min_p", [](SamplingParams& p) { p.min_p = 0.05f; });
  add("everything", [](SamplingParams& p) {
    p.temperature = 1.3f;
    p.top_k = 500;
    p.top_p = 0.8f;
    p.min_p = 0.01f;
    p.repetition_penalty = 1.1f;
    p.presence_penalty = 0.4f;
    p.frequency_penalty = 0.2f;
    p.num_top_logprobs = 20;
  });
  return configs;
}

TEST(CudaSampling, MatchesTheHostSamplerGivenTheSameDraws) {
  std::string why_none;
  auto devices = cuda::QueryCudaDevices(&why_none);
  ASSERT_TRUE(devices.ok());
  if (devices->empty()) GTEST_SKIP() << "no CUDA device (" << why_none << "): not compared";
  auto backend = cuda::MakeCudaBackend(0);
  ASSERT_TRUE(backend.ok()) << backend.status().ToString();
  ASSERT_TRUE((*backend)->can_sample());

  constexpr int64_t kVocab = 151669;
  constexpr int kRows = 6;
#ifdef INFERBOX_CUDA_EMULATED
  constexpr int kSteps = 3;  // The CPU emulation runs a 1024-thread block as 1024 fibers.
#else
  constexpr int kSteps = 12;
#endif
  std::mt19937 rng(3);
  // Row kinds: peaked (a few large logits), flat (a tiny model's), and with exact ties.
  std::vector<float> logits(static_cast<size_t>(kRows * kVocab));
  for (int r = 0; r < kRows; ++r) {
    std::normal_distribution<float> normal(0.0f, r % 3 == 0 ? 4.0f : 0.5f);
    float* row = logits.data() + static_cast<size_t>(r) * kVocab;
    for (int64_t c = 0; c < kVocab; ++c) row[c] = normal(rng);
    if (r % 3 == 2) {
      for (int64_t c = 0; c < kVocab; c += 7) row[c] = 1.5f;  // Many exact ties.
    }
  }
  auto device_logits = (*backend)->Allocate(static_cast<int64_t>(logits.size()));
  (*backend)->Upload(logits, device_logits->data());

  for (const Config& config : Configs()) {
    const std::vector<int32_t> prompt = {5, 17, 17, 90000, 151668};
    std::vector<Sampler> host, device;
    for (int r = 0; r < kRows; ++r) {
      SamplingParams params = config.params;
      params.seed = 100 + static_cast<uint64_t>(r);
      host.emplace_back(params, prompt);
      device.emplace_back(params, prompt);
    }
    for (int step = 0; step < kSteps; ++step) {
      std::vector<RowSampling> rows;
      for (auto& sampler : device) rows.push_back(sampler.PrepareRow());
      std::vector<SampledRow> sampled(rows.size());
      (*backend)->SampleRows(device_logits->data(), kVocab, rows, sampled);
      for (int r = 0; r < kRows; ++r) {
        const TokenChoice want = host[static_cast<size_t>(r)].Next(
            std::span<const float>(logits).subspan(static_cast<size_t>(r) * kVocab, kVocab));
        const SampledRow& got = sampled[static_cast<size_t>(r)];
        const std::string where = fmt::format("{} row {} step {}", config.name, r, step);
        ASSERT_EQ(got.token, want.token) << where;
        EXPECT_NEAR(got.logprob, want.logprob, 1e-5) << where;
        ASSERT_EQ(got.top_logprobs.size(), want.top_logprobs.size()) << where;
        for (size_t i = 0; i < want.top_logprobs.size(); ++i) {
          EXPECT_EQ(got.top_logprobs[i].first, want.top_logprobs[i].first) << where << " top " << i;
          EXPECT_NEAR(got.top_logprobs[i].second, want.top_logprobs[i].second, 1e-5) << where;
        }
        device[static_cast<size_t>(r)].Record(got.token);
      }
    }
  }
}

// INFERBOX_CUDA_OP_TIMES=1: the backend prints, when destroyed, the GPU time of each op it
// ran (a Linear per weight shape), with how often it ran; off, it prints nothing.
TEST(CudaOpTimes, ThePerOpTableListsEveryOpThatRan) {
  std::string why_none;
  auto devices = cuda::QueryCudaDevices(&why_none);
  ASSERT_TRUE(devices.ok());
  if (devices->empty()) GTEST_SKIP() << "no CUDA device (" << why_none << "): not run";
  auto run_ops = [] {
    auto backend = cuda::MakeCudaBackend(0);
    ASSERT_TRUE(backend.ok()) << backend.status().ToString();
    std::vector<float> host_weight(24, 0.5f);
    auto weight = (*backend)->LoadWeight({DType::kF32, host_weight.data(), 6, 4});
    ASSERT_TRUE(weight.ok()) << weight.status().ToString();
    auto x = (*backend)->Allocate(3 * 4);
    auto out = (*backend)->Allocate(3 * 6);
    (*backend)->Upload(std::vector<float>(12, 1.0f), x->data());
    for (int i = 0; i < 2; ++i) (*backend)->Linear(x->data(), 3, *weight, nullptr, out->data());
    (*backend)->SiluMul(out->data(), out->data(), out->data());
    std::vector<float> scratch;
    const auto result = (*backend)->ReadBack(out->data(), scratch);
    EXPECT_FLOAT_EQ(result[0], 2.0f / (1.0f + std::exp(-2.0f)) * 2.0f);
  };

  ASSERT_EQ(setenv("INFERBOX_CUDA_OP_TIMES", "1", 1), 0);
  testing::internal::CaptureStderr();
  run_ops();
  const std::string table = testing::internal::GetCapturedStderr();
  unsetenv("INFERBOX_CUDA_OP_TIMES");
  EXPECT_NE(table.find("GPU time per op (INFERBOX_CUDA_OP_TIMES): 1 synchronisations"),
            std::string::npos)
      << table;
  // Name, then calls, total ms, mean µs, share.
  EXPECT_TRUE(
      std::regex_search(table, std::regex(R"(\nLinear 6x4 +2 +[0-9.]+ +[0-9.]+ +[0-9.]+%)")))
      << table;
  EXPECT_TRUE(std::regex_search(table, std::regex(R"(\nSiluMul +1 +[0-9.]+ +[0-9.]+ +[0-9.]+%)")))
      << table;

  testing::internal::CaptureStderr();
  run_ops();
  EXPECT_EQ(testing::internal::GetCapturedStderr().find("GPU time per op"), std::string::npos);
}

}  // namespace
}  // namespace inferbox::engine
