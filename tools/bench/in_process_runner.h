// inferbox-bench's in-process path: the model loaded on a backend (or split over
// tensor-parallel ranks) and requests run through the engine loop (Runtime) of this process.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "bench/request_record.h"
#include "inferbox/common/status.h"
#include "inferbox/engine/backend/backend.h"
#include "inferbox/engine/model/model.h"
#include "inferbox/engine/parallel/tensor_parallel_model.h"
#include "inferbox/engine/runtime/runtime.h"

namespace inferbox::engine::bench {

// The model on one backend, or split over tensor-parallel ranks (CPU: threads).
struct LoadedModel {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Model> model;
  std::unique_ptr<TensorParallelModel> parallel_model;

  ModelRunner& runner() {
    return parallel_model ? static_cast<ModelRunner&>(*parallel_model) : *model;
  }
  Backend& front_backend() { return parallel_model ? parallel_model->backend(0) : *backend; }
  // Past one rank on the CPU, the ranks share one memory: the weights of every rank count.
  int64_t WeightBytesPerDecodeStep() const {
    return parallel_model ? parallel_model->WeightBytesPerDecodeStep()
                          : model->WeightBytesPerDecodeStep();
  }
};

// Loads `dir` on `device` (cpu, cuda, cuda:N), over `tensor_parallel` ranks past one (CPU
// only), its weights as `quantization` and its KV cache as `kv_cache_dtype` say.
// INVALID_ARGUMENT for a device or split that cannot be; the loader's error otherwise.
Result<LoadedModel> LoadModel(const std::filesystem::path& dir, const std::string& device,
                              int32_t tensor_parallel, Quantization quantization,
                              KvCacheDType kv_cache_dtype = KvCacheDType::kAuto);

// Runs requests through `runtime` (see RequestRunner). Token arrival times are taken in the
// delta callback, on the engine thread: latencies include the loop's own overhead and
// nothing outside it (no network, no detokenizing).
// Greedy, or sampled at `temperature` (each request seeded with its index).
Status RunInProcess(Runtime& runtime, const std::vector<std::vector<int32_t>>& prompts,
                    int64_t output_len, int64_t concurrency, std::vector<RequestRecord>& records,
                    float temperature = 0.0f);

}  // namespace inferbox::engine::bench
