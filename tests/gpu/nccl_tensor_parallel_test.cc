// The NCCL path of tensor parallelism on the GPUs of this machine:
// - the collectives on device memory over every visible GPU (one thread per rank, as the
//   engine runs them): sums, gathers in rank order, broadcasts, barriers;
// - a tiny model through TensorParallelModel over NCCL at TP = 1 on GPU 0 (the CUDA
//   backend on a rank thread behind the NCCL communicator, as `--device cuda
//   --tensor-parallel N` runs it), its prompt logits within 1e-2 of the CPU reference's
//   largest logit (BF16 GEMMs and KV cache on the GPU, float32 on the CPU;
//   cuda_forward_test.cc states the same bound). One rank's model makes no collective call
//   (nothing to sum): on one GPU the first test is what runs NCCL's collectives;
// - the same at TP = 2 where two GPUs are visible: the model's all-reduces over NCCL.
// Skips, saying why, where no CUDA device is visible or NCCL (libnccl.so.2) is missing.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <thread>

#include <gtest/gtest.h>

#include "inferbox/engine/cuda/cuda_backend.h"
#include "inferbox/engine/cuda/device_query.h"
#include "inferbox/engine/parallel/nccl_communicator.h"
#include "inferbox/engine/parallel/tensor_parallel_model.h"
#include "temp_dir.h"
#include "tiny_model.h"

namespace inferbox::engine {
namespace {

constexpr double kLogitTolerance = 1e-2;

// The visible GPUs' indices, or skips the test saying why there are none.
std::vector<int> VisibleGpusOrSkip(std::string* skip) {
  std::string why_none;
  auto devices = cuda::QueryCudaDevices(&why_none);
  if (!devices.ok()) {
    *skip = devices.status().ToString();
    return {};
  }
  if (devices->empty()) *skip = "no CUDA device (" + why_none + ")";
  std::vector<int> indices;
  for (const auto& device : *devices) indices.push_back(device.index);
  return indices;
}

#define SKIP_WITHOUT_NCCL(communicators)                                               \
  if (!(communicators).ok()) {                                                         \
    ASSERT_EQ((communicators).status().code(), StatusCode::kFailedPrecondition)        \
        << (communicators).status().ToString();                                        \
    GTEST_SKIP() << "NCCL is not usable here: " << (communicators).status().message(); \
  }

TEST(NcclCommunicator, CollectivesOnDeviceMemoryOverEveryVisibleGpu) {
  std::string skip;
  const std::vector<int> gpus = VisibleGpusOrSkip(&skip);
  if (gpus.empty()) GTEST_SKIP() << skip << ": the NCCL path is not run";
  auto communicators = MakeNcclCommunicators(gpus);
  SKIP_WITHOUT_NCCL(communicators);
  const auto world = static_cast<int32_t>(gpus.size());
  constexpr size_t kCount = 1000;
  std::vector<std::vector<float>> reduced(gpus.size()), gathered(gpus.size());
  std::vector<std::vector<std::byte>> broadcast(gpus.size());
  std::vector<std::thread> ranks;
  for (int32_t r = 0; r < world; ++r) {
    ranks.emplace_back([&, r] {
      Communicator& communicator = *(*communicators)[static_cast<size_t>(r)];
      ASSERT_EQ(communicator.memory(), CommunicatorMemory::kDevice);
      ASSERT_EQ(cudaSetDevice(gpus[static_cast<size_t>(r)]), cudaSuccess);
      std::vector<float> mine(kCount);
      for (size_t i = 0; i < kCount; ++i) mine[i] = static_cast<float>((r + 1) * 1000 + i);
      void* memory = nullptr;
      ASSERT_EQ(cudaMalloc(&memory, kCount * world * sizeof(float)), cudaSuccess);
      auto* device = static_cast<float*>(memory);
      ASSERT_EQ(cudaMemcpy(device, mine.data(), kCount * sizeof(float), cudaMemcpyHostToDevice),
                cudaSuccess);
      communicator.AllReduceSum(std::span<float>(device, kCount));
      auto& sum = reduced[static_cast<size_t>(r)];
      sum.resize(kCount);
      cudaMemcpy(sum.data(), device, kCount * sizeof(float), cudaMemcpyDeviceToHost);

      // In place: this rank's part of `received` is what it sends.
      float* own_part = device + static_cast<size_t>(r) * kCount;
      cudaMemcpy(own_part, mine.data(), kCount * sizeof(float), cudaMemcpyHostToDevice);
      auto* bytes = reinterpret_cast<std::byte*>(device);
      communicator.AllGather(std::span<const std::byte>(reinterpret_cast<std::byte*>(own_part),
                                                        kCount * sizeof(float)),
                             std::span<std::byte>(bytes, kCount * world * sizeof(float)));
      auto& all = gathered[static_cast<size_t>(r)];
      all.resize(kCount * world);
      cudaMemcpy(all.data(), device, all.size() * sizeof(float), cudaMemcpyDeviceToHost);

      std::vector<std::byte> message(64, std::byte{static_cast<unsigned char>(r + 1)});
      cudaMemcpy(device, message.data(), message.size(), cudaMemcpyHostToDevice);
      communicator.Broadcast(std::span<std::byte>(bytes, message.size()), world - 1);
      broadcast[static_cast<size_t>(r)].resize(message.size());
      cudaMemcpy(broadcast[static_cast<size_t>(r)].data(), device, message.size(),
                 cudaMemcpyDeviceToHost);
      communicator.Barrier();
      cudaFree(device);
    });
  }
  for (auto& rank : ranks) rank.join();

  for (int32_t r = 0; r < world; ++r) {
    const auto& sum = reduced[static_cast<size_t>(r)];
    for (size_t i = 0; i < kCount; ++i) {
      float want = 0;
      for (int32_t s = 0; s < world; ++s) want += static_cast<float>((s + 1) * 1000 + i);
      ASSERT_EQ(sum[i], want) << "rank " << r << " element " << i << " of the all-reduce";
    }
    const auto& all = gathered[static_cast<size_t>(r)];
    for (int32_t s = 0; s < world; ++s) {
      ASSERT_EQ(all[static_cast<size_t>(s) * kCount + 7], static_cast<float>((s + 1) * 1000 + 7))
          << "rank " << r << " holds rank " << s << "'s part of the all-gather";
    }
    EXPECT_EQ(broadcast[static_cast<size_t>(r)][0], std::byte{static_cast<unsigned char>(world)})
        << "rank " << r << " has the root's broadcast";
  }
}

// Every position's logits of `prompt`, fed in two chunks through a scrambled block table.
template <typename Forward>
std::vector<float> PromptLogits(const std::vector<int32_t>& prompt, int64_t block_size,
                                KvCache& cache, Forward forward) {
  const auto num_blocks = static_cast<int64_t>(prompt.size()) / block_size + 2;
  std::vector<int32_t> table(static_cast<size_t>(num_blocks));
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(table.size() - 1 - i);
  std::vector<float> logits;
  const size_t split = prompt.size() / 2 + 1;
  for (const auto& [begin, end] : {std::pair<size_t, size_t>{0, split}, {split, prompt.size()}}) {
    const ForwardSequence chunk{std::span<const int32_t>(prompt).subspan(begin, end - begin),
                                static_cast<int64_t>(begin), table};
    Result<std::span<const float>> result = forward(std::span(&chunk, 1), cache);
    EXPECT_TRUE(result.ok()) << result.status().ToString();
    if (!result.ok()) return {};
    logits.insert(logits.end(), result->begin(), result->end());
  }
  return logits;
}

// The largest logit error of a tiny Qwen3 split over `devices` through NCCL, relative to
// each position's largest CPU logit; fails the test where it cannot run it.
void ExpectTensorParallelMatchesTheCpu(const std::vector<int>& devices) {
  auto communicators = MakeNcclCommunicators(devices);
  SKIP_WITHOUT_NCCL(communicators);
  inferbox::testing::TempDir scratch;
  const auto dir = scratch.path() / "model";
  ASSERT_NO_FATAL_FAILURE(inferbox::testing::MakeTinyModel(
      dir, "qwen3", {"--arch", "qwen3", "--seed", "5"}, scratch.path()));
  auto parallel =
      TensorParallelModel::Load(dir, std::move(communicators).value(),
                                [&devices](int32_t rank) -> Result<std::unique_ptr<Backend>> {
                                  return cuda::MakeCudaBackend(devices[static_cast<size_t>(rank)]);
                                });
  ASSERT_TRUE(parallel.ok()) << parallel.status().ToString();
  ASSERT_EQ((*parallel)->world_size(), static_cast<int32_t>(devices.size()));
  auto cpu = MakeCpuBackend();
  auto reference = Model::Load(dir, *cpu);
  ASSERT_TRUE(reference.ok()) << reference.status().ToString();

  const auto vocab = static_cast<int32_t>((*reference)->config().vocab_size);
  std::vector<int32_t> prompt(37);
  for (size_t i = 0; i < prompt.size(); ++i)
    prompt[i] = static_cast<int32_t>((static_cast<int64_t>(i) * 7919 + 104729) % vocab);
  constexpr int64_t kBlockSize = 4;
  const int64_t num_blocks = static_cast<int64_t>(prompt.size()) / kBlockSize + 2;

  auto cpu_cache = cpu->AllocateKvCache((*reference)->KvShape(num_blocks, kBlockSize));
  const std::vector<float> want = PromptLogits(
      prompt, kBlockSize, *cpu_cache,
      [&](auto batch, KvCache& cache) { return (*reference)->Forward(batch, cache, true); });
  auto nccl_cache = (*parallel)->AllocateKvCache(num_blocks, kBlockSize);
  const std::vector<float> got = PromptLogits(
      prompt, kBlockSize, *nccl_cache,
      [&](auto batch, KvCache& cache) { return (*parallel)->Forward(batch, cache, true); });
  ASSERT_EQ(got.size(), want.size());
  ASSERT_FALSE(want.empty());
  const auto columns = static_cast<size_t>(vocab);
  double worst = 0.0;
  for (size_t p = 0; p < want.size() / columns; ++p) {
    double scale = 0.0;
    double error = 0.0;
    for (size_t v = p * columns; v < (p + 1) * columns; ++v) {
      ASSERT_TRUE(std::isfinite(got[v])) << "position " << p << " token " << v % columns;
      scale = std::max(scale, std::fabs(static_cast<double>(want[v])));
      error = std::max(error, std::fabs(static_cast<double>(got[v]) - want[v]));
    }
    worst = std::max(worst, error / std::max(scale, 1e-30));
  }
  EXPECT_LE(worst, kLogitTolerance) << "largest logit error through NCCL at TP " << devices.size()
                                    << ", relative to the position's largest logit";
  ::testing::Test::RecordProperty("max_relative_error", std::to_string(worst));
}

TEST(NcclTensorParallel, TensorParallelOneOverNcclMatchesTheCpuReference) {
  std::string skip;
  if (VisibleGpusOrSkip(&skip).empty()) GTEST_SKIP() << skip << ": the NCCL path is not run";
  ExpectTensorParallelMatchesTheCpu({0});
}

TEST(NcclTensorParallel, TensorParallelTwoOverNcclMatchesTheCpuReference) {
  std::string skip;
  const std::vector<int> gpus = VisibleGpusOrSkip(&skip);
  if (gpus.size() < 2) {
    GTEST_SKIP() << (gpus.empty() ? skip : "one GPU")
                 << ": TP 2 needs two GPUs (NCCL puts no two ranks on one)";
  }
  ExpectTensorParallelMatchesTheCpu({gpus[0], gpus[1]});
}

}  // namespace
}  // namespace inferbox::engine
