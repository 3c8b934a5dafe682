// Where a model's engines run: the GPU settings of a [[models]] entry (device, gpus,
// replicas, tensor_parallel), checked by one function for the config file, Admin LoadModel
// and the supervisor, and the placement by profile of a cuda model that lists no GPUs.
//
// A replica is one engine process with tensor_parallel ranks; with cuda, each rank is a GPU
// and replica r gets gpus[r*tp, (r+1)*tp) as its CUDA_VISIBLE_DEVICES. Two models never
// share a GPU. Everything here but ReadModelFootprint is pure: it tests without a GPU.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/daemon/config.h"

namespace inferbox::daemon {

// A GPU setting that does not hold: the key ("gpus", "tensor_parallel", "replicas") and
// what is wrong with it, for the caller to prefix ("models[0].gpus", "options.gpus", ...).
struct PlacementError {
  std::string key;
  std::string message;
};

// Whether a cuda model may leave `gpus` empty (to be placed by profile): the config file
// and LoadModel allow it; the supervisor only runs placed models.
enum class Placed { kNotYet, kRequired };

std::optional<PlacementError> CheckGpuSettings(const ModelServeConfig& model, Placed placed);

// The tensor-parallel degree of a model CheckGpuSettings accepted: tensor_parallel when set;
// else, with GPUs listed, gpus / replicas (a config from before the key existed); else 1.
uint32_t TensorParallelOf(const ModelServeConfig& model);

// FAILED_PRECONDITION naming the GPU and both models when `model` lists a GPU that one of
// `others` (other models, placed) lists too.
Status CheckGpusFree(const ModelServeConfig& model, std::span<const ModelServeConfig> others);

// What placement by profile needs to know of a model.
struct ModelFootprint {
  // The *.safetensors files together; with quantization = "fp8", less the bytes the linear
  // layers' weights save at one byte per parameter (from config.json's sizes).
  uint64_t weight_bytes = 0;
};

// Reads the footprint of the model folder `dir` as `quantization` ("none", "fp8") loads it.
// NOT_FOUND when it has no weights.
Result<ModelFootprint> ReadModelFootprint(const std::filesystem::path& dir,
                                          std::string_view quantization = "none");

// Places a cuda model that lists no GPUs on GPUs that none of `claimed` is: its tensor
// parallel degree is its tensor_parallel when set, else the profile's (model_plan.h: the
// smallest power of two of the free GPUs that holds the weights with KV headroom); then
// replicas = as many as the free GPUs allow when replicas is 0, else replicas (which must
// fit). `gpu_memory_bytes[i]` is the memory of GPU i. Returns the model with gpus,
// tensor_parallel and replicas set; FAILED_PRECONDITION saying why it cannot be placed (no
// GPU found, none free, too small, too few).
Result<ModelServeConfig> PlaceByProfile(ModelServeConfig model, const ModelFootprint& footprint,
                                        std::span<const uint64_t> gpu_memory_bytes,
                                        std::span<const uint32_t> claimed);

// Places every model of a configuration: those that list GPUs first (checked against the
// GPUs found when any were found), then those to be placed by profile in order, each on
// GPUs no earlier one claimed. `footprint` reads a model's footprint (called only for models
// placed by profile). Errors name the model.
Result<std::vector<ModelServeConfig>> PlaceModels(
    std::vector<ModelServeConfig> models, std::span<const uint64_t> gpu_memory_bytes,
    const std::function<Result<ModelFootprint>(const ModelServeConfig&)>& footprint);

// What a daemon starts with: the config file's models, placed as PlaceModels does (an error
// there stops the start: the operator's file is wrong), then each model loaded at run time
// before, in order, where it still fits beside those already placed. One that does not (the
// config file took its GPUs since, or the box has fewer GPUs now) is left out and listed in
// `dropped` with the reason: it must not keep the whole box from starting.
struct StartPlacement {
  std::vector<ModelServeConfig> served;
  std::vector<std::pair<std::string, Status>> dropped;
};
Result<StartPlacement> PlaceForStart(
    std::vector<ModelServeConfig> configured, const std::vector<ModelServeConfig>& loaded,
    std::span<const uint64_t> gpu_memory_bytes,
    const std::function<Result<ModelFootprint>(const ModelServeConfig&)>& footprint);

}  // namespace inferbox::daemon
