// A dense decoder split over the ranks of a tensor-parallel group inside one engine process
// (Megatron: column-parallel q/k/v and gate/up, row-parallel o_proj and down_proj with an
// all-reduce after each; see TensorParallelShard in model.h). Rank r is a Model shard on its
// own backend, with its own communicator and its share of the KV cache, driven by its own
// thread: the thread makes the backend, loads the shard, runs every step and destroys both.
//
// The scheduler stays single: the engine loop sees one ModelRunner. ForwardOnBackend hands
// the same step to every rank thread, the ranks run it in lockstep (meeting at the
// collectives) and rank 0's logits come back. Every rank ends the step with the same logits,
// bit for bit: the all-reduce gives every rank the same sums, and the LM head is either
// vocabulary-parallel (slices all-gathered) or whole on every rank (TensorParallelShard).
//
// Memory: q/k/v, gate/up and the LM head slices are views of the mapped file (contiguous
// rows); o_proj and down_proj columns are strided, so each rank copies its columns (kept by
// a host backend, released once a device backend has its own copy).
//
// Which thread: one caller at a time (the engine loop). Between steps the rank threads are
// idle, so the caller may use rank 0's backend on the logits (sampling, ReadBack).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/engine/model/model.h"
#include "inferbox/engine/parallel/communicator.h"

namespace inferbox::engine {

struct TensorParallelOptions {
  // OpenMP threads of each rank's ops. 0: the process's share, omp_get_max_threads() (the
  // cores, or OMP_NUM_THREADS) over the number of ranks, at least 1.
  int32_t threads_per_rank = 0;
  Quantization quantization = Quantization::kNone;  // Every rank's (Model::Load).
  KvCacheDType kv_cache_dtype = KvCacheDType::kAuto;
};

class TensorParallelModel final : public ModelRunner {
 public:
  // Makes rank r's backend; called on rank r's thread.
  using BackendFactory = std::function<Result<std::unique_ptr<Backend>>(int32_t rank)>;

  // Loads the shards of the model in `dir`, each on its rank's thread, with rank r's backend
  // from make_backend(r) and communicators[r] (rank r of a group of communicators.size()).
  // INVALID_ARGUMENT when the model does not split into that many ranks (heads, KV heads,
  // MLP columns); FAILED_PRECONDITION when a backend computes in memory the communicators
  // cannot move (the in-process communicator and a GPU backend); a backend's or the model
  // folder's error otherwise.
  static Result<std::unique_ptr<TensorParallelModel>> Load(
      const std::filesystem::path& dir, std::vector<std::unique_ptr<Communicator>> communicators,
      const BackendFactory& make_backend, const TensorParallelOptions& options = {});
  ~TensorParallelModel() override;
  TensorParallelModel(const TensorParallelModel&) = delete;
  TensorParallelModel& operator=(const TensorParallelModel&) = delete;

  int32_t world_size() const { return static_cast<int32_t>(ranks_.size()); }
  int32_t threads_per_rank() const { return threads_per_rank_; }
  // Rank r's shard: the config, generation config and eos ids are every rank's.
  const Model& shard(int32_t rank) const;
  Backend& backend(int32_t rank);
  // Bytes of weights every rank reads in one decode step, together.
  int64_t WeightBytesPerDecodeStep() const;

  const ModelConfig& config() const override;
  Backend& logits_backend() override;  // Rank 0's.
  int64_t KvCacheBytesPerBlock(int64_t block_size) const override;
  // One part per rank, each on its rank's backend with the rank's KV heads.
  std::unique_ptr<KvCache> AllocateKvCache(int64_t num_blocks, int64_t block_size) override;
  Result<std::span<const float>> ForwardOnBackend(std::span<const ForwardSequence> batch,
                                                  KvCache& cache, bool all_positions) override;
  // ForwardOnBackend with rank 0's logits copied to the host where they are not there.
  Result<std::span<const float>> Forward(std::span<const ForwardSequence> batch, KvCache& cache,
                                         bool all_positions);
  // The logits rank r computed in the last step, in its backend's memory (tests check that
  // every rank has the same).
  std::span<const float> rank_logits(int32_t rank) const;

 private:
  struct Rank;
  class ShardedKvCache;

  TensorParallelModel();

  std::vector<std::unique_ptr<Rank>> ranks_;
  int32_t threads_per_rank_ = 1;
  std::vector<float> host_logits_;  // Forward's copy where rank 0's memory is not the host's.
};

}  // namespace inferbox::engine
