#include "inferbox/engine/cuda/cuda_backend.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include "inferbox/engine/backend/fp8.h"
#include "kernels.h"
#include "lt_gemm.h"

namespace inferbox::engine::cuda {
namespace {

// Linears of up to kMaxStackedLinears weights loaded together run as one GEMM for batches of
// up to kStackedLinearMaxRows rows: there the GEMM reads weights rather than computes, and one
// launch reading them all beats one per weight (for one stream of an 8B model on an H200,
// q, k and v as three GEMMs read their weights at a third of the bandwidth). Larger batches
// keep one GEMM per weight: the stacked output's copy into the outputs would cost more than
// the launches.
constexpr size_t kMaxStackedLinears = kMaxColumnSlices;
constexpr int64_t kStackedLinearMaxRows = 64;

// Decode steps of up to kMaxRecordedBatch sequences run as CUDA graphs (RunRecorded), one per
// padded batch size (RecordedBatchSize) and power-of-two bucket of the longest context (at
// least kRecordedMinContext positions). Larger batches spend far longer computing than
// launching.
constexpr int64_t kMaxRecordedBatch = 256;
constexpr int64_t kRecordedMinContext = 64;

// Allocated and freed in the stream's order: freeing a buffer that queued ops still use is
// safe.
class CudaBuffer final : public Buffer {
 public:
  CudaBuffer(int64_t num_floats, cudaStream_t stream)
      : memory_(num_floats * static_cast<int64_t>(sizeof(float)), stream),
        data_(memory_.as<float>(), static_cast<size_t>(num_floats)) {}
  std::span<float> data() override { return data_; }

 private:
  DeviceAllocation memory_;
  std::span<float> data_;
};

// Keys then values of every layer: [layer][key|value][slot][kv_head][head_dim], BF16, or
// with block_major [layer][key|value][block][kv_head][slot in block][head_dim] (CacheRow); or
// (KvCacheDType::kFp8E4M3) per layer key codes, value codes (that shape, a byte each), key
// scales and value scales (a float per row), each part starting at a multiple of 256 bytes:
// the allocation is the payload (KvCacheBytes, what a block costs) and at most 4 × 255 bytes
// a layer.
class CudaKvCache final : public KvCache {
 public:
  // Zeroed in `stream`'s order, so no op queued after it can be overwritten.
  CudaKvCache(const KvCacheShape& shape, bool block_major, cudaStream_t stream)
      : shape_(shape),
        block_major_(block_major),
        memory_(TotalBytes(shape), nullptr),
        serial_(++last_serial_) {
    INFERBOX_CUDA_CHECK(
        cudaMemsetAsync(memory_.as<void>(), 0, static_cast<size_t>(TotalBytes(shape)), stream));
  }
  const KvCacheShape& shape() const override { return shape_; }
  // Unique in the process: which cache a recorded step was made with.
  int64_t serial() const { return serial_; }

  static int64_t TotalBytes(const KvCacheShape& shape) {
    return shape.num_layers * LayerBytes(shape);
  }
  // The bytes of the values and scales themselves, without the parts' alignment.
  static int64_t PayloadBytes(const KvCacheShape& shape) {
    if (!shape.fp8()) return TotalBytes(shape);
    return shape.num_layers * 2 * (Values(shape) + Scales(shape));
  }
  KvCacheLayer layer(int64_t index) const {
    auto* base = memory_.as<uint8_t>() + index * LayerBytes(shape_);
    KvCacheLayer layer;
    layer.block_major = block_major_;
    if (!shape_.fp8()) {
      layer.keys = reinterpret_cast<uint16_t*>(base);
      layer.values = layer.keys + Values(shape_);
      return layer;
    }
    const int64_t codes = Aligned(Values(shape_));
    layer.key_codes = base;
    layer.value_codes = base + codes;
    layer.key_scales = reinterpret_cast<float*>(base + 2 * codes);
    layer.value_scales = reinterpret_cast<float*>(base + 2 * codes + Aligned(Scales(shape_)));
    return layer;
  }

 private:
  static int64_t Values(const KvCacheShape& shape) {
    return shape.num_slots() * shape.num_kv_heads * shape.head_dim;
  }
  static int64_t Scales(const KvCacheShape& shape) {
    return shape.num_slots() * shape.num_kv_heads * static_cast<int64_t>(sizeof(float));
  }
  static int64_t Aligned(int64_t bytes) { return (bytes + 255) / 256 * 256; }
  static int64_t LayerBytes(const KvCacheShape& shape) {
    if (!shape.fp8()) return 2 * Values(shape) * static_cast<int64_t>(sizeof(uint16_t));
    return 2 * Aligned(Values(shape)) + 2 * Aligned(Scales(shape));
  }
  KvCacheShape shape_;
  bool block_major_;
  DeviceAllocation memory_;
  int64_t serial_;
  static inline std::atomic<int64_t> last_serial_{0};
};

// Where recorded steps keep their inputs: one allocation for all of them, so that a
// recording's addresses stay valid from step to step (it grows only, and moving it drops the
// recordings).
struct RecordedInputs {
  DeviceAllocation memory;
  int64_t bytes = 0;
};

// The step's layout on the device, packed into one allocation copied in one transfer (two for
// a recorded step): its own, or for a recorded step (StepLayout::recorded) `recorded`'s.
class CudaStepInputs final : public StepInputs {
 public:
  CudaStepInputs(const StepLayout& layout, cudaStream_t stream, RecordedInputs& recorded) {
    num_tokens_ = static_cast<int64_t>(layout.token_ids.size());
    recorded_ = layout.recorded;
    for (const int64_t position : layout.positions)
      max_position_ = std::max(max_position_, position);
    // The attention's split of keys among work items is chosen for the end of the longest
    // context's power-of-two bucket (at least kRecordedMinContext positions), so that one
    // recording serves every step of its batch size in the bucket, and a step gives the same
    // bits recorded or not.
    const auto keys = static_cast<uint64_t>(std::max(max_position_ + 1, kRecordedMinContext));
    max_position_ = static_cast<int64_t>(std::bit_ceil(keys)) - 1;
    num_logit_rows_ = static_cast<int64_t>(layout.logit_rows.size());
    half_ = layout.rope == nullptr ? 0 : static_cast<int64_t>(layout.rope->inv_freq.size());

    std::vector<int32_t> host_token_sequence;
    std::vector<int64_t> host_table_offsets;
    std::vector<int32_t> host_block_tables;
    host_token_sequence.reserve(static_cast<size_t>(num_tokens_));
    for (size_t s = 0; s < layout.sequences.size(); ++s) {
      const AttentionSequence& sequence = layout.sequences[s];
      sequence_tokens_.emplace_back(static_cast<int32_t>(host_token_sequence.size()),
                                    static_cast<int32_t>(sequence.num_query_tokens));
      host_table_offsets.push_back(static_cast<int64_t>(host_block_tables.size()));
      host_block_tables.insert(host_block_tables.end(), sequence.block_table.begin(),
                               sequence.block_table.end());
      host_token_sequence.insert(host_token_sequence.end(),
                                 static_cast<size_t>(sequence.num_query_tokens),
                                 static_cast<int32_t>(s));
    }

    // Host image of the device block: each array at a 256-byte aligned offset, the block
    // tables (the only part whose size changes between steps of one batch size) last.
    std::vector<std::byte> image;
    auto place = [&image](const void* data, size_t bytes) {
      const size_t offset = (image.size() + 255) / 256 * 256;
      image.resize(offset + bytes);
      if (data != nullptr && bytes > 0) std::memcpy(image.data() + offset, data, bytes);
      return offset;
    };
    auto place_span = [&place](auto span) { return place(span.data(), span.size_bytes()); };
    const size_t ids_at = place_span(layout.token_ids);
    const size_t positions_at = place_span(layout.positions);
    const size_t slots_at = place_span(layout.slots);
    const size_t sequence_at = place_span(std::span<const int32_t>(host_token_sequence));
    const size_t offsets_at = place_span(std::span<const int64_t>(host_table_offsets));
    const size_t rows_at = place_span(layout.logit_rows);
    // The tokens before the padding of a recorded step (slot −1 at the end).
    auto real_tokens = static_cast<int32_t>(num_tokens_);
    while (recorded_ && real_tokens > 0 && layout.slots[static_cast<size_t>(real_tokens - 1)] < 0)
      --real_tokens;
    const size_t real_tokens_at = place(&real_tokens, sizeof(real_tokens));
    const size_t inv_freq_at =
        half_ == 0 ? place(nullptr, 0) : place_span(std::span<const float>(layout.rope->inv_freq));
    const size_t rope_bytes = static_cast<size_t>(num_tokens_ * half_) * sizeof(float);
    const size_t cos_at = place(nullptr, rope_bytes);
    const size_t sin_at = place(nullptr, rope_bytes);
    const size_t tables_at = place_span(std::span<const int32_t>(host_block_tables));

    std::byte* base = nullptr;
    if (recorded_) {
      if (static_cast<int64_t>(image.size()) > recorded.bytes) {
        recorded.bytes = std::max<int64_t>(2 * recorded.bytes, static_cast<int64_t>(image.size()));
        recorded.memory = DeviceAllocation(recorded.bytes, stream);
      }
      base = recorded.memory.as<std::byte>();
    } else {
      memory_ = DeviceAllocation(static_cast<int64_t>(image.size()), stream);
      base = memory_.as<std::byte>();
    }
    // Pageable source: the copy has left `image` when the call returns. The rotary tables
    // between are computed below.
    INFERBOX_CUDA_CHECK(
        cudaMemcpyAsync(base, image.data(), cos_at, cudaMemcpyHostToDevice, stream));
    INFERBOX_CUDA_CHECK(cudaMemcpyAsync(base + tables_at, image.data() + tables_at,
                                        image.size() - tables_at, cudaMemcpyHostToDevice, stream));
    token_ids = reinterpret_cast<const int32_t*>(base + ids_at);
    positions = reinterpret_cast<const int64_t*>(base + positions_at);
    slots = reinterpret_cast<const int64_t*>(base + slots_at);
    token_sequence = reinterpret_cast<const int32_t*>(base + sequence_at);
    table_offsets = reinterpret_cast<const int64_t*>(base + offsets_at);
    block_tables = reinterpret_cast<const int32_t*>(base + tables_at);
    logit_rows = reinterpret_cast<const int64_t*>(base + rows_at);
    real_rows = reinterpret_cast<const int32_t*>(base + real_tokens_at);
    cos = reinterpret_cast<float*>(base + cos_at);
    sin = reinterpret_cast<float*>(base + sin_at);
    if (half_ > 0) {
      LaunchRopeTables(positions, num_tokens_, reinterpret_cast<const float*>(base + inv_freq_at),
                       half_, cos, sin, stream);
    }
  }
  int64_t num_tokens() const override { return num_tokens_; }
  int64_t num_logit_rows() const override { return num_logit_rows_; }
  int64_t half() const { return half_; }
  // The end of the bucket of the step's largest position.
  int64_t max_position() const { return max_position_; }
  bool recorded() const { return recorded_; }
  // The most query tokens of one sequence in the step (1 when it only decodes).
  int32_t longest_chunk() const {
    int32_t longest = 0;
    for (const auto& [first, count] : sequence_tokens_) longest = std::max(longest, count);
    return longest;
  }

  // The step's tokens for attention in tiles of `tile_tokens_wide` tokens: prefill chunks of
  // at least kTiledMinTokens tokens in tiles, the other tokens listed for the per-token
  // kernels. Made and uploaded once per step (every layer has the same).
  struct AttentionLists {
    DeviceAllocation memory;
    const int32_t* tiles = nullptr;
    int64_t num_tiles = 0;
    const int32_t* token_list = nullptr;
    int64_t num_listed = 0;
  };
  const AttentionLists& ListsFor(int64_t tile_tokens_wide, cudaStream_t stream) const {
    if (auto found = lists_.find(tile_tokens_wide); found != lists_.end()) return found->second;
    std::vector<int32_t> tiles;
    std::vector<int32_t> listed;
    const auto tile_tokens = static_cast<int32_t>(tile_tokens_wide);
    for (const auto& [first, count] : sequence_tokens_) {
      if (count >= kTiledMinTokens) {
        for (int32_t start = 0; start < count; start += tile_tokens) {
          tiles.push_back(first + start);
          tiles.push_back(std::min(tile_tokens, count - start));
        }
      } else {
        for (int32_t i = 0; i < count; ++i) listed.push_back(first + i);
      }
    }
    AttentionLists lists;
    lists.num_tiles = static_cast<int64_t>(tiles.size() / 2);
    lists.num_listed = static_cast<int64_t>(listed.size());
    tiles.insert(tiles.end(), listed.begin(), listed.end());
    tiles.push_back(0);  // Never empty: a null token list would mean every token.
    lists.memory = DeviceAllocation(static_cast<int64_t>(tiles.size() * sizeof(int32_t)), stream);
    INFERBOX_CUDA_CHECK(cudaMemcpyAsync(lists.memory.as<void>(), tiles.data(),
                                        tiles.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                        stream));
    lists.tiles = lists.memory.as<int32_t>();
    lists.token_list = lists.tiles + 2 * lists.num_tiles;
    return lists_.emplace(tile_tokens_wide, std::move(lists)).first->second;
  }

  const int32_t* token_ids = nullptr;
  const int64_t* positions = nullptr;
  const int64_t* slots = nullptr;
  const int32_t* token_sequence = nullptr;
  const int64_t* table_offsets = nullptr;
  const int32_t* block_tables = nullptr;
  const int64_t* logit_rows = nullptr;
  // How many rows come before the padding (all of them but in a recorded step).
  const int32_t* real_rows = nullptr;
  float* cos = nullptr;
  float* sin = nullptr;

 private:
  DeviceAllocation memory_;
  int64_t num_tokens_ = 0;
  int64_t num_logit_rows_ = 0;
  int64_t half_ = 0;
  int64_t max_position_ = 0;
  bool recorded_ = false;
  std::vector<std::pair<int32_t, int32_t>> sequence_tokens_;  // First token, token count.
  mutable std::map<int64_t, AttentionLists> lists_;
};

// INFERBOX_CUDA_OP_TIMES=1 (benchmarks): the GPU time of every op, from a pair of events
// recorded around its launches in the stream, summed per op (a Linear per weight shape) and
// printed to stderr when the backend is destroyed, with the time the GPU sat idle between
// ops while the host prepared the next (the span from the first op after each
// synchronisation to the last before the next, less the ops). Off, it costs a branch per op.
class OpTimes {
 public:
  OpTimes() {
    const char* value = std::getenv("INFERBOX_CUDA_OP_TIMES");
    enabled_ = value != nullptr && *value != '\0' && std::string_view(value) != "0";
  }
  ~OpTimes() {
    if (!enabled_) return;
    Print();
    for (cudaEvent_t event : free_) cudaEventDestroy(event);
    for (const Pending& op : pending_) {
      cudaEventDestroy(op.start);
      cudaEventDestroy(op.stop);
    }
  }
  OpTimes(const OpTimes&) = delete;
  OpTimes& operator=(const OpTimes&) = delete;

  bool enabled() const { return enabled_; }
  void Begin(cudaStream_t stream) {
    pending_.push_back({Event(), Event(), {}});
    INFERBOX_CUDA_CHECK(cudaEventRecord(pending_.back().start, stream));
  }
  void End(cudaStream_t stream, std::string name) {
    pending_.back().name = std::move(name);
    INFERBOX_CUDA_CHECK(cudaEventRecord(pending_.back().stop, stream));
  }
  // Once the stream was synchronised, so that every pending event has completed (nothing is
  // pending when disabled).
  void Collect() {
    if (pending_.empty()) return;
    float span = 0.0f;
    INFERBOX_CUDA_CHECK(cudaEventElapsedTime(&span, pending_.front().start, pending_.back().stop));
    span_ms_ += span;
    ++syncs_;
    for (Pending& op : pending_) {
      float milliseconds = 0.0f;
      INFERBOX_CUDA_CHECK(cudaEventElapsedTime(&milliseconds, op.start, op.stop));
      Total& total = totals_[op.name];
      total.milliseconds += milliseconds;
      ++total.calls;
      free_.push_back(op.start);
      free_.push_back(op.stop);
    }
    pending_.clear();
  }

 private:
  struct Pending {
    cudaEvent_t start;
    cudaEvent_t stop;
    std::string name;
  };
  struct Total {
    double milliseconds = 0.0;
    int64_t calls = 0;
  };
  cudaEvent_t Event() {
    if (!free_.empty()) {
      cudaEvent_t event = free_.back();
      free_.pop_back();
      return event;
    }
    cudaEvent_t event = nullptr;
    INFERBOX_CUDA_CHECK(cudaEventCreate(&event));
    return event;
  }
  void Print() const {
    std::vector<std::pair<std::string, Total>> rows(totals_.begin(), totals_.end());
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
      return a.second.milliseconds > b.second.milliseconds;
    });
    double ops_ms = 0.0;
    for (const auto& [name, total] : rows) ops_ms += total.milliseconds;
    std::string text = fmt::format(
        "GPU time per op (INFERBOX_CUDA_OP_TIMES): {} synchronisations; {:.1f} ms from the first "
        "op after each to the last before the next: {:.1f} ms in ops, {:.1f} ms idle\n"
        "{:<40} {:>8} {:>11} {:>10} {:>7}\n",
        syncs_, span_ms_, ops_ms, span_ms_ - ops_ms, "op", "calls", "total ms", "mean us", "share");
    for (const auto& [name, total] : rows) {
      text += fmt::format("{:<40} {:>8} {:>11.1f} {:>10.1f} {:>6.1f}%\n", name, total.calls,
                          total.milliseconds,
                          1e3 * total.milliseconds / static_cast<double>(total.calls),
                          100.0 * total.milliseconds / std::max(ops_ms, 1e-9));
    }
    std::fputs(text.c_str(), stderr);
  }

  bool enabled_ = false;
  std::vector<Pending> pending_;
  std::vector<cudaEvent_t> free_;
  std::map<std::string, Total> totals_;
  double span_ms_ = 0.0;
  int64_t syncs_ = 0;
};

// Times the launches made in its scope when OpTimes is enabled; `name` is called only then.
template <typename Name>
class OpScope {
 public:
  OpScope(OpTimes& times, cudaStream_t stream, Name name)
      : times_(times), stream_(stream), name_(std::move(name)) {
    if (times_.enabled()) times_.Begin(stream_);
  }
  ~OpScope() {
    if (times_.enabled()) times_.End(stream_, name_());
  }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  OpTimes& times_;
  cudaStream_t stream_;
  Name name_;
};

SourceType SourceTypeOf(DType dtype) {
  switch (dtype) {
    case DType::kF32: return SourceType::kF32;
    case DType::kF16: return SourceType::kF16;
    case DType::kBF16: return SourceType::kBF16;
    default: break;
  }
  FatalCudaError("LoadWeight", "only float weights reach the backend", __FILE__, __LINE__);
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, const CudaBackendOptions& options)
      : device_(device),
        record_steps_(options.cuda_graphs),
        small_batch_linears_(options.small_batch_linears),
        block_major_kv_(options.block_major_kv),
        decode_ldmatrix_(options.decode_ldmatrix),
        max_recordings_(std::max<int64_t>(options.max_recordings, 1)) {
    Use();
    dependent_launches_ = options.dependent_launches && DependentLaunchesRun();
    INFERBOX_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    cudaDeviceProp properties{};
    INFERBOX_CUDA_CHECK(cudaGetDeviceProperties(&properties, device_));
    num_multiprocessors_ = properties.multiProcessorCount;
    compute_capability_ = properties.major * 10 + properties.minor;
    // Memory freed in stream order stays in the pool for the next step instead of going
    // back to the driver at every synchronisation.
    cudaMemPool_t pool = nullptr;
    INFERBOX_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device_));
    uint64_t keep_all = UINT64_MAX;
    INFERBOX_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all));
    gemm_ = std::make_unique<LtGemm>();
    fp8_work_ = DeviceAllocation(kFp8WorkFloats * sizeof(float), nullptr);
  }
  ~CudaBackend() override {
    Use();
    cudaStreamSynchronize(stream_);
    times_.Collect();  // Ops since the last read-back count too.
    recordings_.clear();
    gemm_.reset();
    weights_.clear();
    gemm_input_ = DeviceAllocation();
    fp8_input_ = DeviceAllocation();
    fp8_work_ = DeviceAllocation();
    stacked_output_ = DeviceAllocation();
    attention_workspace_ = DeviceAllocation();
    recorded_inputs_.memory = DeviceAllocation();
    greedy_ = DeviceAllocation();
    sample_work_ = DeviceAllocation();
    cudaStreamDestroy(stream_);
  }

  std::string_view name() const override { return "cuda"; }
  std::optional<DeviceMemory> device_memory() const override {
    Use();
    size_t free_bytes = 0;
    size_t total_bytes = 0;
    INFERBOX_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    return DeviceMemory{static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes)};
  }

  double MeasureCopyBandwidth() override {
    Use();
    constexpr int64_t kBytes = int64_t{1} << 30;
    constexpr int kCopies = 10;
    DeviceAllocation source(kBytes, nullptr);
    DeviceAllocation target(kBytes, nullptr);
    INFERBOX_CUDA_CHECK(cudaMemsetAsync(source.as<void>(), 1, kBytes, stream_));
    cudaEvent_t start = nullptr;
    cudaEvent_t stop = nullptr;
    INFERBOX_CUDA_CHECK(cudaEventCreate(&start));
    INFERBOX_CUDA_CHECK(cudaEventCreate(&stop));
    INFERBOX_CUDA_CHECK(cudaMemcpyAsync(target.as<void>(), source.as<void>(), kBytes,
                                        cudaMemcpyDeviceToDevice, stream_));  // Warm-up.
    INFERBOX_CUDA_CHECK(cudaEventRecord(start, stream_));
    for (int i = 0; i < kCopies; ++i) {
      INFERBOX_CUDA_CHECK(cudaMemcpyAsync(target.as<void>(), source.as<void>(), kBytes,
                                          cudaMemcpyDeviceToDevice, stream_));
    }
    INFERBOX_CUDA_CHECK(cudaEventRecord(stop, stream_));
    INFERBOX_CUDA_CHECK(cudaEventSynchronize(stop));
    float milliseconds = 0;
    INFERBOX_CUDA_CHECK(cudaEventElapsedTime(&milliseconds, start, stop));
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return 2.0 * kCopies * static_cast<double>(kBytes) / (milliseconds / 1e3);
  }

  int64_t KvCacheBytes(const KvCacheShape& shape) const override {
    return CudaKvCache::PayloadBytes(shape);
  }
  std::unique_ptr<KvCache> AllocateKvCache(const KvCacheShape& shape) override {
    Use();
    // The tensor-core decode kernel holds a row index (CacheRow) in 31 bits; no device has the
    // memory for more rows (2³¹ rows of head_dim 64 are 128 GiB a layer in FP8).
    if (shape.num_slots() * shape.num_kv_heads >= (int64_t{1} << 31)) {
      FatalCudaError("AllocateKvCache", "2^31 or more cache rows (slots times KV heads)", __FILE__,
                     __LINE__);
    }
    return std::make_unique<CudaKvCache>(shape, block_major_kv_, stream_);
  }
  std::unique_ptr<Buffer> Allocate(int64_t num_floats) override {
    Use();
    return std::make_unique<CudaBuffer>(num_floats, stream_);
  }

  Result<Weight> LoadWeight(const Weight& host) override {
    Use();
    const int64_t bytes = StoredBytes(host);
    // The stored copy and the staging one.
    if (Status room = CheckRoom(bytes + host.num_bytes()); !room.ok()) return room;
    DeviceAllocation stored(bytes, nullptr);
    Weight weight = Store(host, stored.as<void>());
    weights_.push_back(std::move(stored));
    return weight;
  }

  // Matrices of one width whose byte sizes keep every one 256-byte aligned (every real
  // model's) go into one allocation, one after another, so that Linears can run them as one
  // GEMM (StackedOutputs); anything else as LoadWeight each.
  Result<std::vector<Weight>> LoadWeights(std::span<const Weight> hosts) override {
    Use();
    bool stackable = hosts.size() > 1 && hosts.size() <= kMaxStackedLinears;
    int64_t bytes = 0;
    int64_t largest_host = 0;
    for (const Weight& host : hosts) {
      stackable = stackable && host.rows > 1 && host.cols == hosts.front().cols &&
                  StoredBytes(host) % 256 == 0;
      bytes += StoredBytes(host);
      largest_host = std::max(largest_host, host.num_bytes());
    }
    if (!stackable) return Backend::LoadWeights(hosts);
    if (Status room = CheckRoom(bytes + largest_host); !room.ok()) return room;
    DeviceAllocation stored(bytes, nullptr);
    std::vector<Weight> loaded;
    auto* next = stored.as<std::byte>();
    for (const Weight& host : hosts) {
      loaded.push_back(Store(host, next));
      next += StoredBytes(host);
    }
    stacked_groups_.emplace(loaded.front().data, bytes);
    weights_.push_back(std::move(stored));
    return loaded;
  }

  // Rounded to BF16 as LoadWeights stores them, then quantised on the GPU with one scale,
  // which sits after the codes in their allocation (LaunchQuantizeToFp8's work: the largest
  // magnitude, then the scale 16 bytes in).
  Result<std::vector<Weight>> LoadFp8Weights(std::span<const Weight> hosts) override {
    Use();
    if (compute_capability_ < 89) {
      return FailedPreconditionError(fmt::format(
          "FP8 weights need FP8 tensor cores (compute capability 8.9 or later); GPU {} is {}.{}",
          device_, compute_capability_ / 10, compute_capability_ % 10));
    }
    if (!Fp8Quantizable(hosts)) return LoadWeights(hosts);
    int64_t count = 0;
    for (const Weight& host : hosts) count += host.rows * host.cols;
    const int64_t codes_bytes = (count + 255) / 256 * 256;
    if (Status room = CheckRoom(codes_bytes + 2 * count); !room.ok()) return room;
    DeviceAllocation bf16(2 * count, nullptr);
    int64_t offset = 0;
    for (const Weight& host : hosts) {
      if (Status room = CheckRoom(host.num_bytes()); !room.ok()) return room;
      Store(host, bf16.as<uint16_t>() + offset);
      offset += host.rows * host.cols;
    }
    DeviceAllocation stored(codes_bytes + kFp8WorkFloats * sizeof(float), nullptr);
    auto* work = reinterpret_cast<float*>(stored.as<std::byte>() + codes_bytes);
    LaunchQuantizeToFp8(bf16.as<uint16_t>(), count, 1, nullptr, work, stored.as<uint8_t>(),
                        nullptr);
    INFERBOX_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<Weight> loaded;
    offset = 0;
    for (const Weight& host : hosts) {
      loaded.push_back(Weight{DType::kF8E4M3, stored.as<uint8_t>() + offset, host.rows, host.cols,
                              work + kFp8ScaleSlot});
      offset += host.rows * host.cols;
    }
    if (hosts.size() > 1) stacked_groups_.emplace(loaded.front().data, count);
    weights_.push_back(std::move(stored));
    return loaded;
  }

  std::span<const float> ReadBack(std::span<const float> data,
                                  std::vector<float>& scratch) override {
    Use();
    scratch.resize(data.size());
    INFERBOX_CUDA_CHECK(cudaMemcpyAsync(scratch.data(), data.data(), data.size_bytes(),
                                        cudaMemcpyDeviceToHost, stream_));
    INFERBOX_CUDA_CHECK(cudaStreamSynchronize(stream_));
    times_.Collect();
    return scratch;
  }

  void Upload(std::span<const float> host, std::span<float> data) override {
    Use();
    INFERBOX_CUDA_CHECK(cudaMemcpyAsync(data.data(), host.data(), host.size_bytes(),
                                        cudaMemcpyHostToDevice, stream_));
    INFERBOX_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void ReadKv(const KvCache& cache, int64_t layer, int64_t slot, std::span<float> key,
              std::span<float> value) override {
    Use();
    const KvCacheLayer kv = static_cast<const CudaKvCache&>(cache).layer(layer);
    const int64_t heads = cache.shape().num_kv_heads;
    const int64_t d = cache.shape().head_dim;
    const int64_t row = heads * d;
    // Each KV head's row (CacheRow), its keys then its values, a head after another.
    auto copy_heads = [&](void* to, const void* keys, const void* values, int64_t bytes) {
      auto* target = static_cast<uint8_t*>(to);
      for (int64_t part = 0; part < 2; ++part) {
        const auto* source = static_cast<const uint8_t*>(part == 0 ? keys : values);
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t at = CacheRow(kv, slot, h, heads, cache.shape().block_size);
          INFERBOX_CUDA_CHECK(cudaMemcpyAsync(target + (part * heads + h) * bytes,
                                              source + at * bytes, static_cast<size_t>(bytes),
                                              cudaMemcpyDeviceToHost, stream_));
        }
      }
    };
    if (cache.shape().fp8()) {
      std::vector<uint8_t> codes(static_cast<size_t>(2 * row));
      std::vector<float> scales(static_cast<size_t>(2 * heads));
      copy_heads(codes.data(), kv.key_codes, kv.value_codes, d);
      copy_heads(scales.data(), kv.key_scales, kv.value_scales, 4);
      INFERBOX_CUDA_CHECK(cudaStreamSynchronize(stream_));
      for (int64_t i = 0; i < row; ++i) {
        key[static_cast<size_t>(i)] =
            Fp8E4M3ToFloat(codes[static_cast<size_t>(i)]) * scales[static_cast<size_t>(i / d)];
        value[static_cast<size_t>(i)] = Fp8E4M3ToFloat(codes[static_cast<size_t>(row + i)]) *
                                        scales[static_cast<size_t>(heads + i / d)];
      }
      return;
    }
    std::vector<uint16_t> bits(static_cast<size_t>(2 * row));
    copy_heads(bits.data(), kv.keys, kv.values, d * 2);
    INFERBOX_CUDA_CHECK(cudaStreamSynchronize(stream_));
    auto widen = [](uint16_t b) {
      const uint32_t w = static_cast<uint32_t>(b) << 16;
      float f;
      std::memcpy(&f, &w, sizeof(f));
      return f;
    };
    for (int64_t i = 0; i < row; ++i) {
      key[static_cast<size_t>(i)] = widen(bits[static_cast<size_t>(i)]);
      value[static_cast<size_t>(i)] = widen(bits[static_cast<size_t>(row + i)]);
    }
  }

  // The engine loop runs on its own thread, whose current device is not the constructor's:
  // every step starts by selecting ours (cheap when it already is).
  std::unique_ptr<StepInputs> PrepareStep(const StepLayout& layout) override {
    Use();
    OpScope scope(times_, stream_, [] { return std::string("PrepareStep (upload, rope tables)"); });
    if (layout.recorded && RecordedBatchSize(static_cast<int64_t>(layout.token_ids.size())) !=
                               static_cast<int64_t>(layout.token_ids.size())) {
      FatalCudaError("PrepareStep", "a recorded step not at a recorded batch size", __FILE__,
                     __LINE__);
    }
    const void* recorded_before = recorded_inputs_.memory.as<void>();
    auto inputs = std::make_unique<CudaStepInputs>(layout, stream_, recorded_inputs_);
    buffers_moved_ = buffers_moved_ || recorded_inputs_.memory.as<void>() != recorded_before;
    return inputs;
  }

  // 1, 2, 4, 8, then multiples of 8 up to kMaxRecordedBatch: at most 35 batch sizes and 7
  // padding rows, which cost least where it matters: small batches read weights (padding rows
  // are nearly free), and past 128 sequences, where the GEMMs start to compute, 7 rows are at
  // most 5% of a step. Not while per-op times are taken (their events are not recorded).
  int64_t RecordedBatchSize(int64_t num_sequences) const override {
    if (!record_steps_ || times_.enabled() || num_sequences < 1 ||
        num_sequences > kMaxRecordedBatch) {
      return 0;
    }
    if (num_sequences <= 8)
      return static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(num_sequences)));
    return (num_sequences + 7) / 8 * 8;
  }

  void RunRecorded(const StepInputs& step, const KvCache& cache, int64_t buffers_version,
                   const std::function<void()>& issue) override {
    const auto& inputs = static_cast<const CudaStepInputs&>(step);
    if (!inputs.recorded()) {
      issue();
      return;
    }
    Use();
    // While its ops are issued, the step's padding rows take no part in the scales of FP8
    // GEMM inputs (LinearsOfBf16): a step gives the same bits padded or not.
    struct PaddedStep {
      const CudaStepInputs*& current;
      PaddedStep(const CudaStepInputs*& slot, const CudaStepInputs& step) : current(slot) {
        current = &step;
      }
      ~PaddedStep() { current = nullptr; }
    } padded(padded_step_, inputs);
    // Recordings hold the addresses of every buffer they use: the cache's, the caller's
    // buffers, and the backend's own (GEMM input, stacked output, attention workspace,
    // recorded inputs).
    const int64_t cache_serial = static_cast<const CudaKvCache&>(cache).serial();
    if (buffers_version != recorded_version_ || cache_serial != recorded_cache_ || buffers_moved_) {
      DropRecordings();
      recorded_version_ = buffers_version;
      recorded_cache_ = cache_serial;
    }
    const std::pair<int64_t, int64_t> shape{inputs.num_tokens(), inputs.max_position()};
    if (const auto found = recordings_.find(shape); found != recordings_.end()) {
      found->second.last_used = ++recorded_steps_;
      INFERBOX_CUDA_CHECK(cudaGraphLaunch(found->second.exec, stream_));
      return;
    }
    // The first step of a shape runs as it comes: it sizes the buffers and chooses the GEMM
    // algorithms, so that recording the next allocates nothing.
    if (seen_shapes_.insert(shape).second) {
      issue();
      return;
    }
    INFERBOX_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    std::string failure;
    bool instantiation_failed = false;
    recording_ = true;
    grew_while_recording_ = false;
    {
      const ToleratedLaunchFailures tolerated;  // CUDA fails launches into a spoilt capture.
      issue();
      failure = tolerated.first();
    }
    recording_ = false;
    cudaGraph_t graph = nullptr;
    Recording recording;
    const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
    if (ended != cudaSuccess && failure.empty()) failure = cudaGetErrorString(ended);
    if (graph != nullptr) {
      if (failure.empty() && !grew_while_recording_) {
        if (const cudaError_t made = cudaGraphInstantiate(&recording.exec, graph, 0);
            made != cudaSuccess) {
          recording.exec = nullptr;
          failure = cudaGetErrorString(made);
          instantiation_failed = true;
        }
      }
      INFERBOX_CUDA_CHECK(cudaGraphDestroy(graph));
    }
    if (grew_while_recording_) {
      // Captured with a buffer too small (or not yet made: a null pointer, which a library
      // call may have refused, failing the capture), never to run: op by op now (growing it,
      // which drops the recordings), recorded the next time the shape comes. A failure of its
      // own would come again then, and stop recording there.
      cudaGetLastError();
      issue();
      return;
    }
    if (!failure.empty()) {
      // Nothing was enqueued (a capture runs nothing): the step runs op by op. A driver that
      // refuses to record the small-batch kernel's dependent launches (or to instantiate a
      // graph with them) gets them turned off, the shape recorded the next time it comes;
      // any other failure stops recording: a slower engine rather than one that fails every
      // step the same way.
      cudaGetLastError();
      const bool dependent_launch_refused =
          dependent_launches_ &&
          (failure.starts_with("SmallBatchLinearKernel") || instantiation_failed);
      (dependent_launch_refused ? dependent_launches_ : record_steps_) = false;
      std::fputs(fmt::format("inferbox-engine: recording a decode step as a CUDA graph failed "
                             "({}); {}\n",
                             failure,
                             dependent_launch_refused ? "recording again without dependent launches"
                                                      : "decode steps run op by op from now on")
                     .c_str(),
                 stderr);
      issue();
      return;
    }
    // Recording ran nothing: the step runs now.
    INFERBOX_CUDA_CHECK(cudaGraphLaunch(recording.exec, stream_));
    recording.last_used = ++recorded_steps_;
    if (static_cast<int64_t>(recordings_.size()) >= max_recordings_) {
      // The least recently used goes (its device memory with it), once nothing can run it.
      auto oldest = recordings_.begin();
      for (auto it = recordings_.begin(); it != recordings_.end(); ++it) {
        if (it->second.last_used < oldest->second.last_used) oldest = it;
      }
      INFERBOX_CUDA_CHECK(cudaStreamSynchronize(stream_));
      recordings_.erase(oldest);
    }
    recordings_.emplace(shape, std::move(recording));
  }

  void Linear(std::span<const float> x, int64_t m, const Weight& w, const Weight* bias,
              std::span<float> out) override {
    const LinearOutput one[] = {{&w, bias, out}};
    Linears(x, m, one);
  }

  void Linears(std::span<const float> x, int64_t m,
               std::span<const LinearOutput> outputs) override {
    if (outputs.empty()) return;
    const int64_t cols = CheckedWidth(outputs);
    OpScope scope(times_, stream_, [&outputs] { return LinearsName(outputs); });
    uint16_t* input = GemmInput(m * cols);
    LaunchConvertToBf16(x.data(), SourceType::kF32, input, m * cols, stream_);
    LinearsOfBf16(input, m, cols, outputs, /*layer=*/false);
  }

  // The norm rounds its rows straight into the GEMMs' input; `normed` is not written (unless
  // there are no GEMMs).
  void AddRmsNormLinears(std::span<float> residual, std::span<const float> delta, int64_t m,
                         const Weight& norm, float eps, std::span<float> normed,
                         std::span<const LinearOutput> outputs) override {
    if (outputs.empty()) return AddRmsNorm(residual, delta, m, norm, eps, normed);
    const int64_t cols = CheckedWidth(outputs);
    if (norm.cols != cols) {
      FatalCudaError("AddRmsNormLinears", "the norm's width is not the weights'", __FILE__,
                     __LINE__);
    }
    uint16_t* input = GemmInput(m * cols);
    {
      OpScope scope(times_, stream_, [] { return std::string("AddRmsNorm (into BF16)"); });
      LaunchAddRmsNormToBf16(residual.data(), delta.empty() ? nullptr : delta.data(), m, cols,
                             static_cast<const float*>(norm.data), eps, input, stream_);
    }
    OpScope scope(times_, stream_, [&outputs] { return LinearsName(outputs) + " (BF16 input)"; });
    LinearsOfBf16(input, m, cols, outputs, /*layer=*/true);
  }

  void SiluMulLinear(std::span<float> gate, std::span<const float> up, int64_t m, const Weight& w,
                     std::span<float> out) override {
    const LinearOutput down[] = {{&w, nullptr, out}};
    const int64_t cols = CheckedWidth(down);
    OpScope scope(times_, stream_, [&w] {
      return fmt::format("SiluMulLinear {}x{}{}", w.rows, w.cols,
                         w.dtype == DType::kF8E4M3 ? " FP8" : "");
    });
    uint16_t* input = GemmInput(m * cols);
    LaunchSiluMulToBf16(gate.data(), up.data(), input, m * cols, stream_);
    LinearsOfBf16(input, m, cols, down, /*layer=*/true);
  }

  void Embedding(const StepInputs& step, const Weight& table, std::span<float> out) override {
    OpScope scope(times_, stream_, [] { return std::string("Embedding"); });
    const auto& inputs = static_cast<const CudaStepInputs&>(step);
    LaunchEmbedding(inputs.token_ids, inputs.num_tokens(), static_cast<const uint16_t*>(table.data),
                    table.cols, out.data(), stream_);
  }

  void AddRmsNorm(std::span<float> residual, std::span<const float> delta, int64_t m,
                  const Weight& weight, float eps, std::span<float> out) override {
    OpScope scope(times_, stream_, [] { return std::string("AddRmsNorm"); });
    LaunchAddRmsNorm(residual.data(), delta.empty() ? nullptr : delta.data(), m, weight.cols,
                     static_cast<const float*>(weight.data), eps, out.data(), stream_);
  }

  void RmsNormGroups(std::span<float> x, const Weight& weight, float eps) override {
    OpScope scope(times_, stream_, [] { return std::string("RmsNormGroups"); });
    LaunchRmsNormGroups(x.data(), static_cast<int64_t>(x.size()) / weight.cols, weight.cols,
                        static_cast<const float*>(weight.data), eps, stream_);
  }

  void RopeWriteKv(const StepInputs& step, std::span<float> q, std::span<float> k,
                   std::span<const float> v, int64_t num_heads, KvCache& cache,
                   int64_t layer) override {
    OpScope scope(times_, stream_, [] { return std::string("RopeWriteKv"); });
    const auto& inputs = static_cast<const CudaStepInputs&>(step);
    const auto& kv = static_cast<CudaKvCache&>(cache);
    RopeWriteKvParams params;
    params.q = q.data();
    params.k = k.data();
    params.v = v.data();
    params.cos = inputs.cos;
    params.sin = inputs.sin;
    params.slots = inputs.slots;
    params.cache = kv.layer(layer);
    params.num_tokens = inputs.num_tokens();
    params.num_heads = num_heads;
    params.num_kv_heads = cache.shape().num_kv_heads;
    params.half = inputs.half();
    params.head_dim = cache.shape().head_dim;
    params.block_size = cache.shape().block_size;
    if (params.half != 0 && 2 * params.half != params.head_dim) {
      FatalCudaError("RopeWriteKv", "the step's rotary table does not match the cache's head_dim",
                     __FILE__, __LINE__);
    }
    LaunchRopeWriteKv(params, stream_);
  }

  void PagedAttention(const StepInputs& step, const KvCache& cache, int64_t layer,
                      std::span<const float> q, int64_t num_heads, float scale,
                      std::span<float> out) override {
    LaunchAttention(step, cache, layer, q, num_heads, scale, out.data(), nullptr);
  }

  // The attention writes the o projection's BF16 input; `attention_out` is not written.
  void PagedAttentionLinear(const StepInputs& step, const KvCache& cache, int64_t layer,
                            std::span<const float> q, int64_t num_heads, float scale,
                            std::span<float> /*attention_out*/, const Weight& w,
                            std::span<float> out) override {
    const LinearOutput o[] = {{&w, nullptr, out}};
    const int64_t cols = CheckedWidth(o);
    const int64_t m = step.num_tokens();
    if (num_heads * cache.shape().head_dim != cols) {
      FatalCudaError("PagedAttentionLinear", "the weight's width is not the attention's", __FILE__,
                     __LINE__);
    }
    uint16_t* input = GemmInput(m * cols);
    LaunchAttention(step, cache, layer, q, num_heads, scale, nullptr, input);
    OpScope scope(times_, stream_, [&o] { return LinearsName(o) + " (BF16 input)"; });
    LinearsOfBf16(input, m, cols, o, /*layer=*/true);
  }

  void SiluMul(std::span<const float> gate, std::span<const float> up,
               std::span<float> out) override {
    OpScope scope(times_, stream_, [] { return std::string("SiluMul"); });
    LaunchSiluMul(gate.data(), up.data(), out.data(), static_cast<int64_t>(out.size()), stream_);
  }

  void GatherRows(const StepInputs& step, std::span<const float> x, int64_t cols,
                  std::span<float> out) override {
    OpScope scope(times_, stream_, [] { return std::string("GatherRows"); });
    const auto& inputs = static_cast<const CudaStepInputs&>(step);
    LaunchGatherRows(x.data(), inputs.logit_rows, inputs.num_logit_rows(), cols, out.data(),
                     stream_);
  }

  bool can_sample() const override { return true; }

  void SampleRows(std::span<const float> logits, int64_t cols, std::span<const RowSampling> rows,
                  std::span<SampledRow> out) override {
    Use();
    const auto num_rows = static_cast<int64_t>(rows.size());
    if (num_rows == 0) return;
    // Parameters and penalty lists, packed into one upload.
    std::vector<RowSamplingParams> params(rows.size());
    std::vector<int32_t> repetition, output_tokens, output_counts;
    for (size_t i = 0; i < rows.size(); ++i) {
      const RowSampling& row = rows[i];
      params[i] = {row.temperature,
                   row.top_p,
                   row.min_p,
                   row.repetition_penalty,
                   row.presence_penalty,
                   row.frequency_penalty,
                   row.top_k,
                   row.num_top_logprobs,
                   row.uniform,
                   static_cast<int64_t>(repetition.size()),
                   static_cast<int64_t>(row.repetition_tokens.size()),
                   static_cast<int64_t>(output_tokens.size()),
                   static_cast<int64_t>(row.output_tokens.size())};
      repetition.insert(repetition.end(), row.repetition_tokens.begin(),
                        row.repetition_tokens.end());
      output_tokens.insert(output_tokens.end(), row.output_tokens.begin(), row.output_tokens.end());
      output_counts.insert(output_counts.end(), row.output_counts.begin(), row.output_counts.end());
    }
    std::vector<std::byte> image;
    auto place = [&image](const void* data, size_t bytes) {
      const size_t offset = (image.size() + 255) / 256 * 256;
      image.resize(offset + bytes);
      if (data != nullptr && bytes > 0) std::memcpy(image.data() + offset, data, bytes);
      return offset;
    };
    const size_t params_at = place(params.data(), params.size() * sizeof(RowSamplingParams));
    const size_t repetition_at = place(repetition.data(), repetition.size() * sizeof(int32_t));
    const size_t output_at = place(output_tokens.data(), output_tokens.size() * sizeof(int32_t));
    const size_t counts_at = place(output_counts.data(), output_counts.size() * sizeof(int32_t));
    const size_t inputs_bytes = image.size();
    // Results after the inputs: ids, log-probabilities, top ids, top log-probabilities.
    const auto rows_u = static_cast<size_t>(num_rows);
    const size_t tokens_at = place(nullptr, rows_u * sizeof(int32_t));
    const size_t logprobs_at = place(nullptr, rows_u * sizeof(float));
    const size_t top_tokens_at = place(nullptr, rows_u * kMaxTopLogprobs * sizeof(int32_t));
    const size_t top_logprobs_at = place(nullptr, rows_u * kMaxTopLogprobs * sizeof(float));
    DeviceAllocation memory(static_cast<int64_t>(image.size()), stream_);
    auto* base = memory.as<std::byte>();
    INFERBOX_CUDA_CHECK(
        cudaMemcpyAsync(base, image.data(), inputs_bytes, cudaMemcpyHostToDevice, stream_));
    if (num_rows * cols > sample_work_count_) {
      sample_work_ = DeviceAllocation(num_rows * cols * 4, stream_);
      sample_work_count_ = num_rows * cols;
    }
    SampleRowsParams launch;
    launch.logits = logits.data();
    launch.work = sample_work_.as<float>();
    launch.rows = num_rows;
    launch.cols = cols;
    launch.row_params = reinterpret_cast<const RowSamplingParams*>(base + params_at);
    launch.repetition_tokens = reinterpret_cast<const int32_t*>(base + repetition_at);
    launch.output_tokens = reinterpret_cast<const int32_t*>(base + output_at);
    launch.output_counts = reinterpret_cast<const int32_t*>(base + counts_at);
    launch.tokens = reinterpret_cast<int32_t*>(base + tokens_at);
    launch.logprobs = reinterpret_cast<float*>(base + logprobs_at);
    launch.top_tokens = reinterpret_cast<int32_t*>(base + top_tokens_at);
    launch.top_logprobs = reinterpret_cast<float*>(base + top_logprobs_at);
    {
      OpScope scope(times_, stream_, [] { return std::string("SampleRows"); });
      LaunchSampleRows(launch, stream_);
    }
    std::vector<std::byte> results(image.size() - tokens_at);
    INFERBOX_CUDA_CHECK(cudaMemcpyAsync(results.data(), base + tokens_at, results.size(),
                                        cudaMemcpyDeviceToHost, stream_));
    INFERBOX_CUDA_CHECK(cudaStreamSynchronize(stream_));
    times_.Collect();
    auto read = [&](size_t at, size_t index, auto* value) {
      std::memcpy(value, results.data() + (at - tokens_at) + index * sizeof(*value),
                  sizeof(*value));
    };
    for (size_t i = 0; i < rows_u; ++i) {
      SampledRow& row = out[i];
      read(tokens_at, i, &row.token);
      read(logprobs_at, i, &row.logprob);
      row.top_logprobs.clear();
      const int n = std::min(rows[i].num_top_logprobs, kMaxTopLogprobs);
      for (int j = 0; j < n; ++j) {
        int32_t id = 0;
        float logprob = 0;
        read(top_tokens_at, i * kMaxTopLogprobs + static_cast<size_t>(j), &id);
        read(top_logprobs_at, i * kMaxTopLogprobs + static_cast<size_t>(j), &logprob);
        row.top_logprobs.emplace_back(id, logprob);
      }
    }
  }

  void GreedyRows(std::span<const float> logits, int64_t rows, int64_t cols,
                  std::span<int32_t> tokens, std::span<float> logprobs) override {
    Use();
    // Tokens, then log-probabilities, then (8-byte aligned) the kernel's work.
    const int64_t results_bytes = (rows * 8 + 15) / 16 * 16;
    const int64_t bytes = results_bytes + GreedyRowsWorkBytes(rows, cols);
    if (bytes > greedy_capacity_) {
      greedy_ = DeviceAllocation(bytes, stream_);
      greedy_capacity_ = bytes;
    }
    auto* device_tokens = greedy_.as<int32_t>();
    auto* device_logprobs = reinterpret_cast<float*>(device_tokens + rows);
    {
      OpScope scope(times_, stream_, [] { return std::string("GreedyRows"); });
      LaunchGreedyRows(logits.data(), rows, cols, device_tokens, device_logprobs,
                       greedy_.as<std::byte>() + results_bytes, stream_);
    }
    INFERBOX_CUDA_CHECK(cudaMemcpyAsync(tokens.data(), device_tokens,
                                        static_cast<size_t>(rows) * sizeof(int32_t),
                                        cudaMemcpyDeviceToHost, stream_));
    if (!logprobs.empty()) {
      INFERBOX_CUDA_CHECK(cudaMemcpyAsync(logprobs.data(), device_logprobs,
                                          static_cast<size_t>(rows) * sizeof(float),
                                          cudaMemcpyDeviceToHost, stream_));
    }
    INFERBOX_CUDA_CHECK(cudaStreamSynchronize(stream_));
    times_.Collect();
  }

 private:
  void Use() const { INFERBOX_CUDA_CHECK(cudaSetDevice(device_)); }

  // Matrices are kept in BF16 (what the GEMMs take); vectors (norms, biases) in float32.
  static int64_t StoredBytes(const Weight& host) {
    return host.rows * host.cols * (host.rows > 1 ? 2 : 4);
  }

  // Whether `bytes` more fit in the GPU's free memory.
  Status CheckRoom(int64_t bytes) const {
    size_t free_bytes = 0;
    size_t total_bytes = 0;
    INFERBOX_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    if (static_cast<size_t>(bytes) > free_bytes) {
      return FailedPreconditionError(fmt::format(
          "GPU {} has {:.2f} GiB free, too little for the next weights ({:.2f} GiB with the "
          "copy they are converted from)",
          device_, static_cast<double>(free_bytes) / (1 << 30),
          static_cast<double>(bytes) / (1 << 30)));
    }
    return Status::Ok();
  }

  // Uploads `host` and converts it into `target` (StoredBytes(host) of device memory); the
  // weight that views it.
  Weight Store(const Weight& host, void* target) {
    const int64_t count = host.rows * host.cols;
    const bool matrix = host.rows > 1;
    DeviceAllocation staging(host.num_bytes(), nullptr);
    INFERBOX_CUDA_CHECK(cudaMemcpy(staging.as<void>(), host.data,
                                   static_cast<size_t>(host.num_bytes()), cudaMemcpyHostToDevice));
    if (matrix) {
      LaunchConvertToBf16(staging.as<void>(), SourceTypeOf(host.dtype),
                          static_cast<uint16_t*>(target), count, nullptr);
    } else {
      LaunchConvertToF32(staging.as<void>(), SourceTypeOf(host.dtype), static_cast<float*>(target),
                         count, nullptr);
    }
    INFERBOX_CUDA_CHECK(cudaDeviceSynchronize());
    Weight weight;
    weight.dtype = matrix ? DType::kBF16 : DType::kF32;
    weight.data = target;
    weight.rows = host.rows;
    weight.cols = host.cols;
    return weight;
  }

  // PagedAttention's launch, its output to `out` (float32) or `out_bf16`.
  void LaunchAttention(const StepInputs& step, const KvCache& cache, int64_t layer,
                       std::span<const float> q, int64_t num_heads, float scale, float* out,
                       uint16_t* out_bf16) {
    const auto& inputs = static_cast<const CudaStepInputs&>(step);
    const auto& kv = static_cast<const CudaKvCache&>(cache);
    // Steps with prefill chunks apart from decode-only ones (other kernels run).
    OpScope scope(times_, stream_, [&inputs] {
      return std::string(inputs.longest_chunk() >= kTiledMinTokens
                             ? "PagedAttention (with prefill chunks)"
                             : "PagedAttention (decode)");
    });
    PagedAttentionParams params;
    params.q = q.data();
    params.out = out;
    params.out_bf16 = out_bf16;
    params.cache = kv.layer(layer);
    params.positions = inputs.positions;
    params.token_sequence = inputs.token_sequence;
    params.table_offsets = inputs.table_offsets;
    params.block_tables = inputs.block_tables;
    params.num_tokens = inputs.num_tokens();
    params.num_heads = num_heads;
    params.num_kv_heads = cache.shape().num_kv_heads;
    params.head_dim = cache.shape().head_dim;
    params.block_size = cache.shape().block_size;
    params.scale = scale;
    params.max_position = inputs.max_position();
    params.num_multiprocessors = num_multiprocessors_;
    params.decode_ldmatrix = decode_ldmatrix_;
    // Without prefill chunks every token goes to the per-token kernels (a null token list).
    if (inputs.longest_chunk() >= kTiledMinTokens &&
        TiledAttentionApplies(num_heads, params.num_kv_heads, params.head_dim)) {
      params.tile_rows = TiledAttentionRows(params.head_dim);
      const auto& lists = inputs.ListsFor(
          TiledAttentionTileTokens(num_heads / params.num_kv_heads, params.tile_rows), stream_);
      params.tiles = lists.tiles;
      params.num_tiles = lists.num_tiles;
      params.token_list = lists.token_list;
      params.num_listed_tokens = lists.num_listed;
    }
    params.workspace = Grown(attention_workspace_, attention_workspace_floats_,
                             PagedAttentionWorkspaceFloats(params), 4)
                           .as<float>();
    LaunchPagedAttention(params, stream_);
  }

  // The width every weight of `outputs` shares (a fatal error when they differ or were not
  // loaded here).
  static int64_t CheckedWidth(std::span<const LinearOutput> outputs) {
    const int64_t cols = outputs.front().weight->cols;
    const DType dtype = outputs.front().weight->dtype;
    for (const LinearOutput& output : outputs) {
      if ((dtype != DType::kBF16 && dtype != DType::kF8E4M3) || output.weight->dtype != dtype ||
          output.weight->cols != cols) {
        FatalCudaError("Linears",
                       "weights not loaded by this backend, of different widths or precisions",
                       __FILE__, __LINE__);
      }
    }
    return cols;
  }
  static std::string LinearsName(std::span<const LinearOutput> outputs) {
    std::string name = outputs.size() == 1 ? "Linear" : "Linears";
    for (const LinearOutput& output : outputs)
      name += fmt::format(" {}x{}", output.weight->rows, output.weight->cols);
    if (outputs.front().weight->dtype == DType::kF8E4M3) name += " FP8";
    return name;
  }

  // The GEMMs of Linears from their BF16 input [m, cols]: for a few rows of a transformer
  // layer's Linears (`layer`: the ops that fuse a producer into them) all in one launch of the
  // backend's own kernel (SmallBatchLinear); else one GEMM over a stacked group (StackedRows)
  // split into the outputs, or one per weight; biases added. Plain Linears (the LM head) stay
  // on cuBLASLt, which reads a vocabulary-sized weight at the floor already (run 5: 251 µs for
  // Llama-3.1-8B's 1,051 MB against 248), where the layers' smaller weights it reads at 47 to
  // 85% of it.
  void LinearsOfBf16(const uint16_t* input, int64_t m, int64_t cols,
                     std::span<const LinearOutput> outputs, bool layer) {
    if (layer && SmallBatchLinear(input, m, cols, outputs)) return;
    // FP8 weights (LoadFp8Weights, a group all or none): the input quantised once for all.
    const uint8_t* input_fp8 = nullptr;
    const float* input_scale = nullptr;
    if (outputs.front().weight->dtype == DType::kF8E4M3) {
      const Fp8Input quantized = QuantizedInput(input, m, cols);
      input_fp8 = quantized.codes;
      input_scale = quantized.scale;
    }
    const auto gemm = [&](const Weight& w, int64_t rows, float* out) {
      if (input_fp8 != nullptr) {
        gemm_->RunFp8(input_fp8, input_scale, static_cast<const uint8_t*>(w.data), w.scale, out, m,
                      rows, cols, stream_);
      } else {
        gemm_->Run(input, static_cast<const uint16_t*>(w.data), out, m, rows, cols, stream_);
      }
    };
    if (const int64_t rows = StackedRows(m, outputs); rows > 0) {
      float* stacked = StackedOutput(m * rows);
      gemm(*outputs.front().weight, rows, stacked);
      ColumnSlices slices;
      slices.count = static_cast<int>(outputs.size());
      int64_t begin = 0;
      for (size_t i = 0; i < outputs.size(); ++i) {
        slices.out[i] = outputs[i].out.data();
        slices.bias[i] =
            outputs[i].bias != nullptr ? static_cast<const float*>(outputs[i].bias->data) : nullptr;
        slices.begin[i] = begin;
        begin += outputs[i].weight->rows;
      }
      slices.begin[outputs.size()] = begin;
      LaunchScatterColumns(stacked, m, rows, slices, stream_);
      return;
    }
    for (const LinearOutput& output : outputs) {
      const Weight& w = *output.weight;
      gemm(w, w.rows, output.out.data());
      if (output.bias != nullptr) {
        LaunchAddBias(output.out.data(), static_cast<const float*>(output.bias->data), m, w.rows,
                      stream_);
      }
    }
  }

  // The FP8 codes of the BF16 GEMM input [m, cols] and their scale (LaunchQuantizeToFp8).
  // A recorded step's padding rows take no part in the scale.
  struct Fp8Input {
    const uint8_t* codes;
    const float* scale;  // Device memory.
  };
  Fp8Input QuantizedInput(const uint16_t* input, int64_t m, int64_t cols) {
    auto* codes = Grown(fp8_input_, fp8_input_count_, m * cols, 1).as<uint8_t>();
    LaunchQuantizeToFp8(input, m, cols, RealRows(m), fp8_work_.as<float>(), codes, stream_);
    return {codes, fp8_work_.as<float>() + kFp8ScaleSlot};
  }
  // The real rows of a recorded step's ops of m rows (device memory), or null (all are).
  const int32_t* RealRows(int64_t m) const {
    return padded_step_ != nullptr && padded_step_->num_tokens() == m ? padded_step_->real_rows
                                                                      : nullptr;
  }

  // Linears of m ≤ kSmallBatchMaxRows rows as one LaunchSmallBatchLinear, where it takes
  // them (their rows in whole 16-byte pieces): false (nothing done) otherwise. For FP8
  // weights the kernel quantises a small input itself; a larger one is quantised first.
  bool SmallBatchLinear(const uint16_t* input, int64_t m, int64_t cols,
                        std::span<const LinearOutput> outputs) {
    if (!small_batch_linears_ || outputs.size() > static_cast<size_t>(kMaxColumnSlices)) {
      return false;
    }
    SmallBatchLinearParams params;
    params.x = input;
    params.fp8 = outputs.front().weight->dtype == DType::kF8E4M3;
    params.quantize = params.fp8 && SmallBatchQuantizes(m, cols);
    params.dependent_launch = dependent_launches_;
    params.real_rows = RealRows(m);
    // Two blocks a multiprocessor fit (launch bounds): each makes the input's codes once.
    if (params.quantize) params.max_blocks = 2 * static_cast<int64_t>(num_multiprocessors_);
    params.m = m;
    params.cols = cols;
    params.count = static_cast<int>(outputs.size());
    for (size_t i = 0; i < outputs.size(); ++i) {
      const Weight& w = *outputs[i].weight;
      params.weight[i] = w.data;
      params.weight_scale[i] = w.scale;
      params.rows[i] = w.rows;
      params.out[i] = outputs[i].out.data();
      params.bias[i] =
          outputs[i].bias != nullptr ? static_cast<const float*>(outputs[i].bias->data) : nullptr;
    }
    // (The codes, for an input quantised first, are an allocation as the input is: aligned.)
    if (!SmallBatchLinearFits(params)) return false;
    if (params.fp8 && !params.quantize) {
      const Fp8Input quantized = QuantizedInput(input, m, cols);
      params.x = quantized.codes;
      params.x_scale = quantized.scale;
    }
    LaunchSmallBatchLinear(params, stream_);
    return true;
  }

  // Where `outputs` can be one GEMM: their weights one after another in one allocation
  // (LoadWeights) and the batch small enough (m ≤ kStackedLinearMaxRows) that the GEMM reads
  // weights rather than computes, so one launch reading them all beats one per weight; the
  // total rows then.
  int64_t StackedRows(int64_t m, std::span<const LinearOutput> outputs) const {
    if (outputs.size() < 2 || outputs.size() > kMaxStackedLinears || m > kStackedLinearMaxRows)
      return 0;
    const auto group = stacked_groups_.find(outputs.front().weight->data);
    if (group == stacked_groups_.end()) return 0;
    int64_t rows = 0;
    const auto element = static_cast<int64_t>(DTypeSize(outputs.front().weight->dtype));
    const auto* next = static_cast<const std::byte*>(outputs.front().weight->data);
    for (const LinearOutput& output : outputs) {
      if (output.weight->data != next) return 0;
      rows += output.weight->rows;
      next += output.weight->rows * output.weight->cols * element;
    }
    // All of one group (LoadWeights), not neighbours that happen to touch.
    const int64_t bytes = rows * outputs.front().weight->cols * element;
    return bytes == group->second ? rows : 0;
  }

  // `buffer` with room for `count` elements of `element_bytes`, grown (never shrunk) as
  // needed; reuse is safe because every op runs in the one stream's order. Growing moves it,
  // which drops the recorded steps (RunRecorded).
  const DeviceAllocation& Grown(DeviceAllocation& buffer, int64_t& capacity, int64_t count,
                                int64_t element_bytes) {
    if (count > capacity) {
      if (recording_) {
        // A step of a shape seen before needs more room than it did (its ops differ: the op
        // suite's cases share a backend). Nothing captured runs: RunRecorded drops the
        // capture and issues the step op by op, which grows the buffer.
        grew_while_recording_ = true;
        return buffer;
      }
      buffer = DeviceAllocation(count * element_bytes, stream_);
      capacity = count;
      buffers_moved_ = true;
    }
    return buffer;
  }
  float* StackedOutput(int64_t count) {
    return Grown(stacked_output_, stacked_output_count_, count, 4).as<float>();
  }
  // BF16 copy of a GEMM's activations.
  uint16_t* GemmInput(int64_t count) {
    return Grown(gemm_input_, gemm_input_count_, count, 2).as<uint16_t>();
  }

  // An instantiated CUDA graph of one step shape.
  struct Recording {
    cudaGraphExec_t exec = nullptr;
    int64_t last_used = 0;  // recorded_steps_ when it last ran.
    Recording() = default;
    Recording(Recording&& other) noexcept
        : exec(std::exchange(other.exec, nullptr)), last_used(other.last_used) {}
    Recording& operator=(Recording&&) = delete;
    ~Recording() {
      if (exec != nullptr) cudaGraphExecDestroy(exec);
    }
  };
  // Destroying a graph that may still run is undefined: the stream is drained first. The
  // shapes seen stay seen: buffers only grow, so recording one of them allocates nothing
  // (but where its ops differ from the first time's: Grown).
  void DropRecordings() {
    if (!recordings_.empty()) INFERBOX_CUDA_CHECK(cudaStreamSynchronize(stream_));
    recordings_.clear();
    buffers_moved_ = false;
  }

  int device_;
  bool record_steps_ = true;
  bool small_batch_linears_ = true;  // CudaBackendOptions::small_batch_linears.
  bool block_major_kv_ = false;      // CudaBackendOptions::block_major_kv.
  bool decode_ldmatrix_ = false;     // CudaBackendOptions::decode_ldmatrix.
  bool dependent_launches_ = false;  // CudaBackendOptions::dependent_launches.
  int num_multiprocessors_ = 1;
  cudaStream_t stream_ = nullptr;
  OpTimes times_;
  std::unique_ptr<LtGemm> gemm_;
  std::vector<DeviceAllocation> weights_;
  DeviceAllocation gemm_input_;
  int64_t gemm_input_count_ = 0;
  DeviceAllocation fp8_input_;  // The GEMM input quantised for FP8 weights.
  int64_t fp8_input_count_ = 0;
  // Its largest magnitude and scale (LaunchQuantizeToFp8): fixed, so recordings may hold it.
  DeviceAllocation fp8_work_;
  int compute_capability_ = 0;  // 10 · major + minor.
  // The first weight of each group LoadWeights stored in one allocation, and its bytes.
  std::map<const void*, int64_t> stacked_groups_;
  DeviceAllocation stacked_output_;  // [m, total rows] of a stacked Linears.
  int64_t stacked_output_count_ = 0;
  DeviceAllocation attention_workspace_;  // Split partial results of PagedAttention.
  int64_t attention_workspace_floats_ = 0;
  // Recorded decode steps by (batch size, largest position of the context bucket).
  RecordedInputs recorded_inputs_;
  std::map<std::pair<int64_t, int64_t>, Recording> recordings_;
  int64_t max_recordings_ = 64;  // CudaBackendOptions::max_recordings.
  int64_t recorded_steps_ = 0;   // Recorded steps run, as a clock for last_used.
  std::set<std::pair<int64_t, int64_t>> seen_shapes_;  // Run once, to be recorded next.
  int64_t recorded_version_ = -1;  // The caller's buffers_version of the recordings,
  int64_t recorded_cache_ = 0;     // and their cache's serial.
  bool buffers_moved_ = false;     // A buffer of ours moved since the recordings were made.
  bool recording_ = false;
  bool grew_while_recording_ = false;            // Grown refused to grow a buffer while recording.
  const CudaStepInputs* padded_step_ = nullptr;  // The recorded step being issued (RunRecorded).
  DeviceAllocation greedy_;                      // GreedyRows' tokens, log-probabilities and work.
  int64_t greedy_capacity_ = 0;                  // Bytes.
  DeviceAllocation sample_work_;                 // SampleRows' processed logits.
  int64_t sample_work_count_ = 0;
};

}  // namespace

Result<std::unique_ptr<Backend>> MakeCudaBackend(int device_index, CudaBackendOptions options) {
  if (const auto& lt = LoadCublasLt(); !lt.ok()) return lt.status();
  int count = 0;
  if (const cudaError_t error = cudaGetDeviceCount(&count); error != cudaSuccess) {
    cudaGetLastError();
    return FailedPreconditionError(
        fmt::format("no usable CUDA device: {}", cudaGetErrorString(error)));
  }
  if (device_index < 0 || device_index >= count) {
    return FailedPreconditionError(
        fmt::format("CUDA device {} does not exist ({} visible)", device_index, count));
  }
  const auto set_to = [](const char* name, std::string_view value) {
    const char* set = std::getenv(name);
    return set != nullptr && set == value;
  };
  if (set_to("INFERBOX_CUDA_GRAPHS", "0")) options.cuda_graphs = false;
  if (set_to("INFERBOX_CUDA_GEMV", "0")) options.small_batch_linears = false;
  if (set_to("INFERBOX_CUDA_PDL", "1")) options.dependent_launches = true;
  if (set_to("INFERBOX_CUDA_KV_BLOCK_MAJOR", "1")) options.block_major_kv = true;
  if (set_to("INFERBOX_CUDA_DECODE_LDMATRIX", "1")) options.decode_ldmatrix = true;
  return std::unique_ptr<Backend>(new CudaBackend(device_index, options));
}

}  // namespace inferbox::engine::cuda
