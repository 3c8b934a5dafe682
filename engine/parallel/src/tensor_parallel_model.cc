#include "inferbox/engine/parallel/tensor_parallel_model.h"

#include <omp.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <thread>

#include <fmt/format.h>

namespace inferbox::engine {
namespace {

// A thread that runs the tasks posted to it one at a time, in order. The destructor runs
// what is still queued, then joins.
class RankThread {
 public:
  RankThread() : thread_([this] { Loop(); }) {}
  ~RankThread() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }
  RankThread(const RankThread&) = delete;
  RankThread& operator=(const RankThread&) = delete;

  std::future<void> Post(std::function<void()> task) {
    std::packaged_task<void()> packaged(std::move(task));
    std::future<void> done = packaged.get_future();
    {
      std::lock_guard lock(mutex_);
      tasks_.push_back(std::move(packaged));
    }
    wake_.notify_one();
    return done;
  }

 private:
  void Loop() {
    for (;;) {
      std::packaged_task<void()> task;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  std::mutex mutex_;  // Guards tasks_ and stopping_.
  std::condition_variable wake_;
  std::deque<std::packaged_task<void()>> tasks_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace

// Everything of one rank. The backend and model are made, used and destroyed on `thread`
// (rank 0's backend also by the caller between steps).
struct TensorParallelModel::Rank {
  std::unique_ptr<Communicator> communicator;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Model> model;
  std::span<const float> logits;  // The last step's, in the backend's memory.
  std::unique_ptr<RankThread> thread;
};

class TensorParallelModel::ShardedKvCache final : public KvCache {
 public:
  ShardedKvCache(const TensorParallelModel& owner, const KvCacheShape& shape)
      : owner_(owner), shape_(shape) {}
  // The whole model's shape: every KV head, however the ranks hold them.
  const KvCacheShape& shape() const override { return shape_; }
  bool made_by(const TensorParallelModel& model) const { return &owner_ == &model; }

  std::vector<std::unique_ptr<KvCache>> parts;  // Rank r's at index r.

 private:
  const TensorParallelModel& owner_;
  KvCacheShape shape_;
};

TensorParallelModel::TensorParallelModel() = default;

TensorParallelModel::~TensorParallelModel() {
  for (const auto& rank : ranks_) {
    Rank* r = rank.get();
    r->thread->Post([r] {
      r->model.reset();
      r->backend.reset();
    });
  }
  for (const auto& rank : ranks_) rank->thread.reset();
}

Result<std::unique_ptr<TensorParallelModel>> TensorParallelModel::Load(
    const std::filesystem::path& dir, std::vector<std::unique_ptr<Communicator>> communicators,
    const BackendFactory& make_backend, const TensorParallelOptions& options) {
  const auto world_size = static_cast<int32_t>(communicators.size());
  INFERBOX_CHECK(world_size >= 1);
  auto model = std::unique_ptr<TensorParallelModel>(new TensorParallelModel());
  model->threads_per_rank_ = options.threads_per_rank > 0
                                 ? options.threads_per_rank
                                 : std::max(1, omp_get_max_threads() / world_size);
  std::vector<Status> statuses(static_cast<size_t>(world_size));
  std::vector<std::future<void>> loaded;
  for (int32_t r = 0; r < world_size; ++r) {
    INFERBOX_CHECK(communicators[static_cast<size_t>(r)]->rank() == r &&
                   communicators[static_cast<size_t>(r)]->world_size() == world_size);
    auto rank = std::make_unique<Rank>();
    rank->communicator = std::move(communicators[static_cast<size_t>(r)]);
    rank->thread = std::make_unique<RankThread>();
    Rank* rank_state = rank.get();
    Status* status = &statuses[static_cast<size_t>(r)];
    const int32_t threads = model->threads_per_rank_;
    loaded.push_back(rank->thread->Post([=, &dir, &make_backend] {
      // The OpenMP team size is per thread: this rank's ops use `threads` cores.
      omp_set_num_threads(threads);
      auto backend = make_backend(r);
      if (!backend.ok()) {
        *status = backend.status();
        return;
      }
      rank_state->backend = std::move(backend).value();
      const bool on_host = !rank_state->backend->device_memory().has_value();
      if (on_host != (rank_state->communicator->memory() == CommunicatorMemory::kHost)) {
        *status = FailedPreconditionError(fmt::format(
            "tensor parallelism: the {} backend computes in {} memory, which this communicator "
            "cannot move",
            rank_state->backend->name(), on_host ? "host" : "device"));
        return;
      }
      auto shard =
          Model::Load(dir, *rank_state->backend, {r, world_size, rank_state->communicator.get()},
                      options.quantization, options.kv_cache_dtype);
      if (!shard.ok()) {
        *status = shard.status();
        return;
      }
      rank_state->model = std::move(shard).value();
    }));
    model->ranks_.push_back(std::move(rank));
  }
  for (auto& done : loaded) done.get();
  for (const Status& status : statuses) {
    if (!status.ok()) return status;
  }
  return model;
}

const Model& TensorParallelModel::shard(int32_t rank) const {
  return *ranks_.at(static_cast<size_t>(rank))->model;
}

Backend& TensorParallelModel::backend(int32_t rank) {
  return *ranks_.at(static_cast<size_t>(rank))->backend;
}

int64_t TensorParallelModel::WeightBytesPerDecodeStep() const {
  int64_t total = 0;
  for (const auto& rank : ranks_) total += rank->model->WeightBytesPerDecodeStep();
  return total;
}

const ModelConfig& TensorParallelModel::config() const {
  return ranks_.front()->model->config();
}

Backend& TensorParallelModel::logits_backend() {
  return *ranks_.front()->backend;
}

int64_t TensorParallelModel::KvCacheBytesPerBlock(int64_t block_size) const {
  int64_t total = 0;
  for (const auto& rank : ranks_) total += rank->model->KvCacheBytesPerBlock(block_size);
  return total;
}

std::unique_ptr<KvCache> TensorParallelModel::AllocateKvCache(int64_t num_blocks,
                                                              int64_t block_size) {
  const ModelConfig& c = config();
  auto cache = std::make_unique<ShardedKvCache>(
      *this, KvCacheShape{c.num_hidden_layers, num_blocks, block_size, c.num_key_value_heads,
                          c.head_dim, ranks_.front()->model->KvShape(1, block_size).dtype});
  cache->parts.resize(ranks_.size());
  std::vector<std::future<void>> allocated;
  for (size_t r = 0; r < ranks_.size(); ++r) {
    Rank* rank = ranks_[r].get();
    std::unique_ptr<KvCache>* part = &cache->parts[r];
    allocated.push_back(
        rank->thread->Post([=] { *part = rank->model->AllocateKvCache(num_blocks, block_size); }));
  }
  for (auto& done : allocated) done.get();
  return cache;
}

Result<std::span<const float>> TensorParallelModel::ForwardOnBackend(
    std::span<const ForwardSequence> batch, KvCache& cache, bool all_positions) {
  auto* sharded = dynamic_cast<ShardedKvCache*>(&cache);
  if (sharded == nullptr || !sharded->made_by(*this)) {
    return InvalidArgumentError("the KV cache was not made by this tensor-parallel model");
  }
  // Every rank checks the same batch the same way before its first collective, so either
  // all of them run the step or none does.
  std::vector<std::optional<Result<std::span<const float>>>> outcomes(ranks_.size());
  std::vector<std::future<void>> done;
  for (size_t r = 0; r < ranks_.size(); ++r) {
    Rank* rank = ranks_[r].get();
    KvCache* part = sharded->parts[r].get();
    auto* outcome = &outcomes[r];
    done.push_back(rank->thread->Post(
        [=] { outcome->emplace(rank->model->ForwardOnBackend(batch, *part, all_positions)); }));
  }
  for (auto& finished : done) finished.get();
  for (const auto& outcome : outcomes) INFERBOX_CHECK(outcome->ok() == outcomes.front()->ok());
  if (!outcomes.front()->ok()) return outcomes.front()->status();
  for (size_t r = 0; r < ranks_.size(); ++r) ranks_[r]->logits = **outcomes[r];
  return ranks_.front()->logits;
}

Result<std::span<const float>> TensorParallelModel::Forward(std::span<const ForwardSequence> batch,
                                                            KvCache& cache, bool all_positions) {
  auto logits = ForwardOnBackend(batch, cache, all_positions);
  if (!logits.ok()) return logits.status();
  return ranks_.front()->backend->ReadBack(*logits, host_logits_);
}

std::span<const float> TensorParallelModel::rank_logits(int32_t rank) const {
  return ranks_.at(static_cast<size_t>(rank))->logits;
}

}  // namespace inferbox::engine
