#include "bench/in_process_runner.h"

#include <condition_variable>
#include <deque>
#include <mutex>

#include <fmt/format.h>

#include "inferbox/engine/backend/factory.h"

namespace inferbox::engine::bench {
namespace {

// Indices of finished requests, handed from the runtime's delivery thread to the submitting
// thread.
class Completions {
 public:
  // Notifies under the lock: once Pop has returned the last index, the waiting thread may
  // destroy this object, and must not find the delivery thread still inside it.
  void Push(size_t index) {
    std::lock_guard lock(mutex_);
    finished_.push_back(index);
    ready_.notify_one();
  }
  size_t Pop() {
    std::unique_lock lock(mutex_);
    ready_.wait(lock, [this] { return !finished_.empty(); });
    const size_t index = finished_.front();
    finished_.pop_front();
    return index;
  }

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<size_t> finished_;
};

RequestOptions BenchRequest(std::vector<int32_t> prompt, int64_t output_len, float temperature,
                            uint64_t seed) {
  RequestOptions request;
  request.prompt = std::move(prompt);
  request.sampling.temperature = temperature;
  request.sampling.seed = seed;
  request.stop.max_tokens = output_len;
  request.stop.ignore_eos = true;
  return request;
}

}  // namespace

Result<LoadedModel> LoadModel(const std::filesystem::path& dir, const std::string& device,
                              int32_t tensor_parallel, Quantization quantization,
                              KvCacheDType kv_cache_dtype) {
  LoadedModel loaded;
  if (tensor_parallel > 1) {
    if (device != "cpu") {
      return InvalidArgumentError(fmt::format(
          "--tensor-parallel {} needs --device cpu (inferbox-bench does not open NCCL yet)",
          tensor_parallel));
    }
    TensorParallelOptions options;
    options.quantization = quantization;
    options.kv_cache_dtype = kv_cache_dtype;
    auto model = TensorParallelModel::Load(
        dir, MakeLocalCommunicators(tensor_parallel),
        [&device](int32_t) { return MakeBackend(device); }, options);
    if (!model.ok()) return model.status();
    loaded.parallel_model = std::move(model).value();
    return loaded;
  }
  auto backend = MakeBackend(device);
  if (!backend.ok()) return InvalidArgumentError(backend.status().message());
  loaded.backend = std::move(backend).value();
  auto model = Model::Load(dir, *loaded.backend, {}, quantization, kv_cache_dtype);
  if (!model.ok()) return model.status();
  loaded.model = std::move(model).value();
  return loaded;
}

Status RunInProcess(Runtime& runtime, const std::vector<std::vector<int32_t>>& prompts,
                    int64_t output_len, int64_t concurrency, std::vector<RequestRecord>& records,
                    float temperature) {
  records.assign(prompts.size(), RequestRecord{});
  Completions completions;
  size_t next = 0;
  int64_t in_flight = 0;
  Status failure;
  while (next < prompts.size() || in_flight > 0) {
    while (failure.ok() && next < prompts.size() && in_flight < concurrency) {
      RequestRecord& record = records[next];
      record.arrivals.reserve(static_cast<size_t>(output_len));
      auto callback = [&record, &completions, index = next](Delta&& delta) {
        const Clock::time_point now = Clock::now();
        record.arrivals.insert(record.arrivals.end(), delta.token_ids.size(), now);
        record.num_tokens += static_cast<int64_t>(delta.token_ids.size());
        if (!delta.finished) return;
        record.finished = now;
        record.finished_by_length = delta.finish == FinishReason::kLength;
        record.error = std::move(delta.error);
        completions.Push(index);
      };
      record.submitted = Clock::now();
      Result<int64_t> id =
          runtime.Submit(BenchRequest(prompts[next], output_len, temperature, next), callback);
      if (!id.ok()) {
        failure = id.status();
        break;
      }
      ++next;
      ++in_flight;
    }
    if (in_flight == 0) break;
    completions.Pop();
    --in_flight;
  }
  return failure;
}

}  // namespace inferbox::engine::bench
