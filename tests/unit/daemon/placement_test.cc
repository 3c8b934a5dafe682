// Placement of models on GPUs: the GPU settings check shared by the config file, LoadModel
// and the supervisor, and placement by profile (smallest tensor-parallel degree that holds
// the weights with KV headroom, then as many replicas as the free GPUs allow).
#include "inferbox/daemon/placement.h"

#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "temp_dir.h"

namespace inferbox::daemon {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr uint64_t kGiB = uint64_t{1} << 30;

ModelServeConfig Cuda(std::string name, std::vector<uint32_t> gpus = {}, uint32_t replicas = 0,
                      uint32_t tensor_parallel = 0) {
  ModelServeConfig model;
  model.name = std::move(name);
  model.path = "models/" + model.name;
  model.device = "cuda";
  model.gpus = std::move(gpus);
  model.replicas = replicas;
  model.tensor_parallel = tensor_parallel;
  return model;
}

std::string ErrorOf(const ModelServeConfig& model, Placed placed = Placed::kNotYet) {
  auto error = CheckGpuSettings(model, placed);
  return error ? error->key + ": " + error->message : "";
}

TEST(CheckGpuSettings, GpusMustBeReplicasTimesTensorParallel) {
  EXPECT_EQ(ErrorOf(Cuda("a", {0, 1, 2, 3}, 2, 2)), "");
  EXPECT_EQ(ErrorOf(Cuda("a", {0, 1, 2, 3}, 2)), "") << "tensor_parallel unset: gpus / replicas";
  EXPECT_EQ(TensorParallelOf(Cuda("a", {0, 1, 2, 3}, 2)), 2u);
  EXPECT_EQ(ErrorOf(Cuda("a", {0, 1, 2}, 2, 2)),
            "gpus: lists 3 GPUs, but replicas x tensor_parallel = 2 x 2 needs 4");
  EXPECT_EQ(ErrorOf(Cuda("a", {0, 1, 2}, 2)), "gpus: 3 GPUs do not split evenly into 2 replicas");
  EXPECT_THAT(ErrorOf(Cuda("a", {3, 3}, 1, 2)), HasSubstr("gpus: lists a GPU twice"));
  EXPECT_THAT(ErrorOf(Cuda("a", {0}, 1, 65)), HasSubstr("tensor_parallel: must be 1 to 64"));
}

TEST(CheckGpuSettings, OnlyAnUnplacedCudaModelMayLeaveGpusAndReplicasOpen) {
  EXPECT_EQ(ErrorOf(Cuda("a")), "");
  EXPECT_EQ(ErrorOf(Cuda("a"), Placed::kRequired),
            "gpus: device cuda needs the GPUs it was placed on");
  EXPECT_THAT(ErrorOf(Cuda("a", {0}, 0)), HasSubstr("replicas: must be 1 to 64"));

  ModelServeConfig cpu;
  cpu.name = "c";
  cpu.tensor_parallel = 4;
  EXPECT_EQ(ErrorOf(cpu, Placed::kRequired), "") << "CPU tensor parallelism: threads";
  EXPECT_EQ(TensorParallelOf(cpu), 4u);
  cpu.gpus = {0};
  EXPECT_EQ(ErrorOf(cpu), "gpus: only applies with device = \"cuda\"");
  cpu.gpus.clear();
  cpu.replicas = 0;
  EXPECT_THAT(ErrorOf(cpu), HasSubstr("replicas: must be 1 to 64"));
  cpu.replicas = 1;
  cpu.device = "tpu";
  EXPECT_EQ(ErrorOf(cpu), "device: \"tpu\" is not \"cpu\" or \"cuda\"");
}

TEST(CheckGpusFree, TwoModelsNeverShareAGpu) {
  const std::vector<ModelServeConfig> served = {Cuda("a", {0, 1}, 1, 2), Cuda("b", {2}, 1)};
  EXPECT_TRUE(CheckGpusFree(Cuda("c", {3}, 1), served).ok());
  const Status shared = CheckGpusFree(Cuda("c", {3, 1}, 1, 2), served);
  EXPECT_EQ(shared.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(shared.message(),
            "model c: GPU 1 is already used by model a; two models cannot share a GPU");
  // A model replaced blue/green reuses its own GPUs.
  EXPECT_TRUE(CheckGpusFree(Cuda("a", {0, 1}, 2, 1), served).ok());
}

TEST(PlaceByProfile, SmallestTensorParallelThatFitsThenAsManyReplicasAsGpusAllow) {
  const std::vector<uint64_t> four_80g(4, 80 * kGiB);
  // 16 GB of weights fit one GPU: four replicas of one GPU each.
  auto placed = PlaceByProfile(Cuda("small"), {16 * kGiB}, four_80g, {});
  ASSERT_TRUE(placed.ok()) << placed.status().message();
  EXPECT_EQ(placed->tensor_parallel, 1u);
  EXPECT_EQ(placed->replicas, 4u);
  EXPECT_EQ(placed->gpus, (std::vector<uint32_t>{0, 1, 2, 3}));
  EXPECT_EQ(ErrorOf(*placed, Placed::kRequired), "");

  // 100 GB need two GPUs (80% of 0.9 x 160 GB holds them): two replicas of TP 2.
  placed = PlaceByProfile(Cuda("large"), {100 * kGiB}, four_80g, {});
  ASSERT_TRUE(placed.ok()) << placed.status().message();
  EXPECT_EQ(placed->tensor_parallel, 2u);
  EXPECT_EQ(placed->replicas, 2u);
  EXPECT_EQ(placed->gpus, (std::vector<uint32_t>{0, 1, 2, 3}));

  // 200 GB need four.
  placed = PlaceByProfile(Cuda("huge"), {200 * kGiB}, four_80g, {});
  ASSERT_TRUE(placed.ok()) << placed.status().message();
  EXPECT_EQ(placed->tensor_parallel, 4u);
  EXPECT_EQ(placed->replicas, 1u);
}

// quantization = "fp8": the footprint is the files' bytes less what the linear layers save
// at one byte per parameter (config.json's sizes), so Llama-3.1-70B in BF16 (141 GB of
// files) takes one 141 GB GPU per replica where BF16 takes two.
TEST(PlaceByProfile, AnFp8ModelIsSizedByItsFp8Weights) {
  inferbox::testing::TempDir dir;
  std::ofstream(dir.path() / "config.json") << R"({"num_hidden_layers": 80, "hidden_size": 8192,
      "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128,
      "intermediate_size": 28672, "torch_dtype": "bfloat16"})";
  constexpr uint64_t kFileBytes = 141'107'412'992;  // Sparse: no disk is used.
  std::ofstream(dir.path() / "model.safetensors").close();
  std::filesystem::resize_file(dir.path() / "model.safetensors", kFileBytes);
  const uint64_t linear_parameters =
      80 * (8192 * (2 * 64 * 128 + 2 * 8 * 128) + uint64_t{3} * 8192 * 28672);
  ASSERT_EQ(linear_parameters, 68'451'041'280u);

  auto bf16 = ReadModelFootprint(dir.path());
  auto fp8 = ReadModelFootprint(dir.path(), "fp8");
  ASSERT_TRUE(bf16.ok() && fp8.ok());
  EXPECT_EQ(bf16->weight_bytes, kFileBytes);
  EXPECT_EQ(fp8->weight_bytes, kFileBytes - linear_parameters);

  const std::vector<uint64_t> two_141g(2, 141 * kGiB);
  auto placed = PlaceByProfile(Cuda("llama-70b"), *bf16, two_141g, {});
  ASSERT_TRUE(placed.ok()) << placed.status().message();
  EXPECT_EQ(placed->tensor_parallel, 2u);
  ModelServeConfig fp8_model = Cuda("llama-70b-fp8");
  fp8_model.quantization = "fp8";
  placed = PlaceByProfile(fp8_model, *fp8, two_141g, {});
  ASSERT_TRUE(placed.ok()) << placed.status().message();
  EXPECT_EQ(placed->tensor_parallel, 1u);
  EXPECT_EQ(placed->replicas, 2u);
}

TEST(PlaceByProfile, UsesOnlyFreeGpusAndHonoursGivenReplicasAndTensorParallel) {
  const std::vector<uint64_t> four_80g(4, 80 * kGiB);
  // GPU 1 is another model's: the free ones are 0, 2, 3.
  auto placed = PlaceByProfile(Cuda("m"), {100 * kGiB}, four_80g, std::vector<uint32_t>{1});
  ASSERT_TRUE(placed.ok()) << placed.status().message();
  EXPECT_EQ(placed->tensor_parallel, 2u);
  EXPECT_EQ(placed->replicas, 1u);
  EXPECT_EQ(placed->gpus, (std::vector<uint32_t>{0, 2}));

  // One replica asked for: the other GPUs stay free for other models.
  placed = PlaceByProfile(Cuda("m", {}, 1), {16 * kGiB}, four_80g, {});
  ASSERT_TRUE(placed.ok());
  EXPECT_EQ(placed->gpus, (std::vector<uint32_t>{0}));

  // tensor_parallel given: the profile does not choose it.
  placed = PlaceByProfile(Cuda("m", {}, 0, 2), {16 * kGiB}, four_80g, {});
  ASSERT_TRUE(placed.ok());
  EXPECT_EQ(placed->tensor_parallel, 2u);
  EXPECT_EQ(placed->replicas, 2u);
}

TEST(PlaceByProfile, SaysWhyAModelCannotBePlaced) {
  const std::vector<uint64_t> two_24g(2, 24 * kGiB);
  auto refused = [](const Result<ModelServeConfig>& placed) {
    EXPECT_FALSE(placed.ok());
    EXPECT_EQ(placed.status().code(), StatusCode::kFailedPrecondition);
    return std::string(placed.status().message());
  };
  EXPECT_THAT(refused(PlaceByProfile(Cuda("m"), {kGiB}, {}, {})),
              AllOf(HasSubstr("model m"), HasSubstr("no GPU was found")));
  EXPECT_THAT(refused(PlaceByProfile(Cuda("m"), {kGiB}, two_24g, std::vector<uint32_t>{0, 1})),
              HasSubstr("all 2 GPUs are used by other models"));
  EXPECT_THAT(refused(PlaceByProfile(Cuda("m"), {100 * kGiB}, two_24g, {})),
              HasSubstr("does not fit"));
  EXPECT_THAT(refused(PlaceByProfile(Cuda("m", {}, 3), {kGiB}, two_24g, {})),
              HasSubstr("3 replicas of tensor_parallel 1 need 3 GPUs, 2 are free"));
  EXPECT_THAT(refused(PlaceByProfile(Cuda("m", {}, 0, 4), {kGiB}, two_24g, {})),
              HasSubstr("tensor_parallel 4 needs 4 GPUs, 2 are free"));
}

TEST(PlaceModels, ListedGpusFirstThenProfilesOnWhatIsLeft) {
  const std::vector<uint64_t> four_80g(4, 80 * kGiB);
  ModelServeConfig cpu;
  cpu.name = "cpu-model";
  std::vector<ModelServeConfig> models = {Cuda("auto", {}, 0), cpu, Cuda("pinned", {2}, 1)};
  int footprints_read = 0;
  auto placed = PlaceModels(models, four_80g, [&](const ModelServeConfig& model) {
    ++footprints_read;
    EXPECT_EQ(model.name, "auto");
    return Result<ModelFootprint>(ModelFootprint{16 * kGiB});
  });
  ASSERT_TRUE(placed.ok()) << placed.status().message();
  EXPECT_EQ(footprints_read, 1);
  ASSERT_EQ(placed->size(), 3u);
  EXPECT_EQ((*placed)[0].name, "auto") << "the order of the config stays";
  EXPECT_EQ((*placed)[0].gpus, (std::vector<uint32_t>{0, 1, 3}));
  EXPECT_EQ((*placed)[0].replicas, 3u);
  EXPECT_EQ((*placed)[1], cpu);
  EXPECT_EQ((*placed)[2].gpus, (std::vector<uint32_t>{2}));

  auto missing = PlaceModels({Cuda("pinned", {4}, 1)}, four_80g, nullptr);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().message(),
            "model pinned: lists GPU 4, but the box has 4 GPU(s) (0 to 3)");
  // Without NVML the listed GPUs are taken as they are (the engine reports a bad one).
  EXPECT_TRUE(PlaceModels({Cuda("pinned", {4}, 1)}, {}, nullptr).ok());
  auto shared = PlaceModels({Cuda("a", {0}, 1), Cuda("b", {0}, 1)}, four_80g, nullptr);
  ASSERT_FALSE(shared.ok());
  EXPECT_THAT(shared.status().message(), HasSubstr("GPU 0 is already used by model a"));
}

TEST(PlaceForStart, ARunTimeModelThatNoLongerFitsIsLeftOutNotTheBox) {
  const std::vector<uint64_t> three_80g(3, 80 * kGiB);
  // The config file now pins GPU 1, which a model loaded at run time before also lists.
  auto start = PlaceForStart(
      {Cuda("configured", {0, 1}, 1)},
      {Cuda("stale", {1}, 1), Cuda("auto", {}, 0), Cuda("gone", {7}, 1)}, three_80g,
      [](const ModelServeConfig&) { return Result<ModelFootprint>(ModelFootprint{16 * kGiB}); });
  ASSERT_TRUE(start.ok()) << start.status().message();
  ASSERT_EQ(start->served.size(), 2u);
  EXPECT_EQ(start->served[0].name, "configured");
  EXPECT_EQ(start->served[1].name, "auto");
  EXPECT_EQ(start->served[1].gpus, (std::vector<uint32_t>{2})) << "placed on the GPU left free";
  ASSERT_EQ(start->dropped.size(), 2u);
  EXPECT_EQ(start->dropped[0].first, "stale");
  EXPECT_THAT(start->dropped[0].second.message(), HasSubstr("GPU 1 is already used"));
  EXPECT_EQ(start->dropped[1].first, "gone");
  EXPECT_THAT(start->dropped[1].second.message(), HasSubstr("lists GPU 7"));

  // A conflict inside the config file itself still stops the start, naming it.
  auto broken = PlaceForStart({Cuda("a", {0}, 1), Cuda("b", {0}, 1)}, {}, three_80g, nullptr);
  ASSERT_FALSE(broken.ok());
  EXPECT_THAT(broken.status().message(), HasSubstr("GPU 0 is already used by model a"));
}

}  // namespace
}  // namespace inferbox::daemon
