#include "inferbox/daemon/placement.h"

#include <algorithm>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "model_plan.h"

namespace inferbox::daemon {

// The engine's limit on ranks in one process.
constexpr uint32_t kMaxTensorParallel = 64;
constexpr uint32_t kMaxReplicas = 64;

std::optional<PlacementError> CheckGpuSettings(const ModelServeConfig& model, Placed placed) {
  if (model.tensor_parallel > kMaxTensorParallel) {
    return PlacementError{
        "tensor_parallel",
        fmt::format("must be 1 to {}, not {}", kMaxTensorParallel, model.tensor_parallel)};
  }
  if (model.replicas > kMaxReplicas)
    return PlacementError{"replicas",
                          fmt::format("must be 1 to {}, not {}", kMaxReplicas, model.replicas)};
  if (model.device == "cuda" && model.gpus.empty() && placed == Placed::kRequired)
    return PlacementError{"gpus", "device cuda needs the GPUs it was placed on"};
  const bool to_place = model.device == "cuda" && model.gpus.empty();
  // 0 replicas: as many as the free GPUs allow, which only placement by profile decides.
  if (model.replicas == 0 && !to_place) {
    return PlacementError{"replicas",
                          "must be 1 to 64 (it may be left out only for a cuda model placed by "
                          "profile, which then gets as many replicas as free GPUs allow)"};
  }
  if (model.device == "cpu") {
    if (!model.gpus.empty()) return PlacementError{"gpus", "only applies with device = \"cuda\""};
    return std::nullopt;
  }
  if (model.device != "cuda")
    return PlacementError{"device", fmt::format("\"{}\" is not \"cpu\" or \"cuda\"", model.device)};
  if (model.gpus.empty()) return std::nullopt;
  const std::set<uint32_t> distinct(model.gpus.begin(), model.gpus.end());
  if (distinct.size() != model.gpus.size())
    return PlacementError{"gpus",
                          fmt::format("lists a GPU twice: [{}]", fmt::join(model.gpus, ", "))};
  if (model.tensor_parallel == 0) {
    if (model.gpus.size() % model.replicas != 0) {
      return PlacementError{"gpus", fmt::format("{} GPUs do not split evenly into {} replicas",
                                                model.gpus.size(), model.replicas)};
    }
    return std::nullopt;
  }
  const uint64_t needed = uint64_t{model.replicas} * model.tensor_parallel;
  if (model.gpus.size() != needed) {
    return PlacementError{
        "gpus", fmt::format("lists {} GPUs, but replicas x tensor_parallel = {} x {} needs {}",
                            model.gpus.size(), model.replicas, model.tensor_parallel, needed)};
  }
  return std::nullopt;
}

uint32_t TensorParallelOf(const ModelServeConfig& model) {
  if (model.tensor_parallel > 0) return model.tensor_parallel;
  if (!model.gpus.empty() && model.replicas > 0)
    return std::max<uint32_t>(1, static_cast<uint32_t>(model.gpus.size() / model.replicas));
  return 1;
}

Status CheckGpusFree(const ModelServeConfig& model, std::span<const ModelServeConfig> others) {
  for (const ModelServeConfig& other : others) {
    if (other.name == model.name) continue;
    for (const uint32_t gpu : model.gpus) {
      if (std::find(other.gpus.begin(), other.gpus.end(), gpu) != other.gpus.end()) {
        return FailedPreconditionError(fmt::format(
            "model {}: GPU {} is already used by model {}; two models cannot share a GPU",
            model.name, gpu, other.name));
      }
    }
  }
  return Status::Ok();
}

Result<ModelFootprint> ReadModelFootprint(const std::filesystem::path& dir,
                                          std::string_view quantization) {
  ModelFootprint footprint;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    if (entry.path().extension() == ".safetensors" && entry.is_regular_file(error))
      footprint.weight_bytes += entry.file_size(error);
  }
  if (error)
    return NotFoundError(
        fmt::format("cannot read the model folder {}: {}", dir.string(), error.message()));
  if (footprint.weight_bytes == 0)
    return NotFoundError(fmt::format("the model folder {} has no *.safetensors", dir.string()));
  // Without a readable config.json the files' size stands (the engine will say what is wrong).
  if (auto shape = ReadModelShape(dir / "config.json", ""); shape.ok())
    footprint.weight_bytes = shape->LoadedWeightBytes(footprint.weight_bytes, quantization);
  return footprint;
}

Result<ModelServeConfig> PlaceByProfile(ModelServeConfig model, const ModelFootprint& footprint,
                                        std::span<const uint64_t> gpu_memory_bytes,
                                        std::span<const uint32_t> claimed) {
  auto refuse = [&](const std::string& why) {
    return FailedPreconditionError(fmt::format(
        "model {}: device cuda lists no gpus and cannot be placed by profile: {}; give its "
        "gpus (and tensor_parallel) explicitly",
        model.name, why));
  };
  if (gpu_memory_bytes.empty()) return refuse("no GPU was found (NVML)");
  std::vector<uint32_t> free;
  std::vector<uint64_t> free_memory;
  for (uint32_t gpu = 0; gpu < gpu_memory_bytes.size(); ++gpu) {
    if (std::find(claimed.begin(), claimed.end(), gpu) != claimed.end()) continue;
    free.push_back(gpu);
    free_memory.push_back(gpu_memory_bytes[gpu]);
  }
  if (free.empty())
    return refuse(fmt::format("all {} GPUs are used by other models", gpu_memory_bytes.size()));

  uint32_t tensor_parallel = model.tensor_parallel;
  if (tensor_parallel == 0) {
    PlanInputs inputs;
    inputs.id = model.name;
    inputs.weight_bytes = footprint.weight_bytes;
    inputs.gpu_memory_bytes = free_memory;
    inputs.gpu_memory_fraction = model.gpu_memory_fraction;
    const auto plan = PlanModel(inputs);
    if (!plan.fits())
      return refuse(fmt::format("on the {} free GPU(s), {}", free.size(), plan.note()));
    tensor_parallel = plan.tensor_parallel();
  }
  if (tensor_parallel > free.size()) {
    return refuse(fmt::format("tensor_parallel {} needs {} GPUs, {} are free", tensor_parallel,
                              tensor_parallel, free.size()));
  }
  const auto fitting = static_cast<uint32_t>(free.size() / tensor_parallel);
  const uint32_t replicas = model.replicas == 0 ? std::min(fitting, kMaxReplicas) : model.replicas;
  if (replicas > fitting) {
    return refuse(fmt::format("{} replicas of tensor_parallel {} need {} GPUs, {} are free",
                              replicas, tensor_parallel, replicas * tensor_parallel, free.size()));
  }
  model.tensor_parallel = tensor_parallel;
  model.replicas = replicas;
  model.gpus.assign(free.begin(),
                    free.begin() + static_cast<ptrdiff_t>(replicas * tensor_parallel));
  return model;
}

Result<std::vector<ModelServeConfig>> PlaceModels(
    std::vector<ModelServeConfig> models, std::span<const uint64_t> gpu_memory_bytes,
    const std::function<Result<ModelFootprint>(const ModelServeConfig&)>& footprint) {
  std::vector<ModelServeConfig> placed;
  for (const ModelServeConfig& model : models) {
    if (model.device != "cuda" || model.gpus.empty()) continue;
    if (!gpu_memory_bytes.empty()) {
      for (const uint32_t gpu : model.gpus) {
        if (gpu >= gpu_memory_bytes.size()) {
          return FailedPreconditionError(
              fmt::format("model {}: lists GPU {}, but the box has {} GPU(s) (0 to {})", model.name,
                          gpu, gpu_memory_bytes.size(), gpu_memory_bytes.size() - 1));
        }
      }
    }
    if (Status free = CheckGpusFree(model, placed); !free.ok()) return free;
    placed.push_back(model);
  }
  for (ModelServeConfig& model : models) {
    if (model.device != "cuda" || !model.gpus.empty()) continue;
    std::vector<uint32_t> claimed;
    for (const ModelServeConfig& other : placed)
      claimed.insert(claimed.end(), other.gpus.begin(), other.gpus.end());
    auto read = footprint(model);
    if (!read.ok()) return read.status().WithContext("model " + model.name);
    auto result = PlaceByProfile(model, *read, gpu_memory_bytes, claimed);
    if (!result.ok()) return result.status();
    model = std::move(result).value();
    placed.push_back(model);
  }
  return models;
}

Result<StartPlacement> PlaceForStart(
    std::vector<ModelServeConfig> configured, const std::vector<ModelServeConfig>& loaded,
    std::span<const uint64_t> gpu_memory_bytes,
    const std::function<Result<ModelFootprint>(const ModelServeConfig&)>& footprint) {
  auto placed = PlaceModels(std::move(configured), gpu_memory_bytes, footprint);
  if (!placed.ok()) return placed.status();
  StartPlacement start{.served = std::move(placed).value(), .dropped = {}};
  for (const ModelServeConfig& model : loaded) {
    // Those placed so far list their GPUs now: placing again only checks them.
    std::vector<ModelServeConfig> with = start.served;
    with.push_back(model);
    auto again = PlaceModels(std::move(with), gpu_memory_bytes, footprint);
    if (!again.ok()) {
      start.dropped.emplace_back(model.name, again.status());
      continue;
    }
    start.served = std::move(again).value();
  }
  return start;
}

}  // namespace inferbox::daemon
