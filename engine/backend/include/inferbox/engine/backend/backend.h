// The op interface every backend implements (CPU, CUDA). Model code is written once against
// it and never branches on the backend. The CPU backend is the reference each other backend
// is compared with, op by op (tests/backend/backend_ops_test.cc).
//
// Memory. Activations are float32, row-major, and live where the backend computes: host
// memory for the CPU backend, device memory for CUDA. They are allocated by the backend
// (Allocate) and the spans it hands out may only be passed back to the same backend's ops;
// host code reads them through ReadBack. Weights are loaded once (LoadWeight): the CPU
// backend uses the memory-mapped file as it is, CUDA keeps a device copy in BF16 (vectors in
// float32) and widens inside the ops. Everything per step that ops share (token ids,
// positions, KV slots, the sequences' block tables, rotary angles) is prepared once per step
// (PrepareStep), not once per layer.
//
// Which thread: a backend is driven by one engine thread; nothing here is thread-safe.
// Errors: inputs are validated by the model before any op runs; an op that still fails
// (a device fault) ends the process with the reason, because the device state can no longer
// be trusted; the supervisor restarts the engine.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/engine/model/safetensors.h"

namespace inferbox::engine {

// A weight matrix [rows, cols] (a vector is rows = 1). `data` is in the backend's memory.
struct Weight {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  // kF8E4M3 (LoadFp8Weights): the float32 each code is multiplied by, in the backend's memory.
  const float* scale = nullptr;

  // A view of a tensor as stored in the model file (host memory).
  static Weight FromView(const TensorView& view);
  bool empty() const { return data == nullptr; }
  int64_t num_bytes() const { return rows * cols * static_cast<int64_t>(DTypeSize(dtype)); }
};

// How the KV cache keeps keys and values.
enum class KvCacheDType {
  kAuto,  // The backend's own precision: float32 on the CPU, BF16 on CUDA.
  // FP8 E4M3 with one float32 scale per (token, KV head) for its keys and one for its values
  // (fp8.h's rule over that head's head_dim values: scale = their largest magnitude / 448),
  // quantised as RopeWriteKv writes them: a key or value reads back as code · scale. Half
  // the bytes of BF16 (plus 4 per head_dim values), no calibration, no value out of range.
  kFp8E4M3,
};
// "auto" or "fp8", as the engine's --kv-cache-dtype and the daemon's kv_cache_dtype spell it.
inline std::string_view KvCacheDTypeName(KvCacheDType dtype) {
  return dtype == KvCacheDType::kFp8E4M3 ? "fp8" : "auto";
}

// Paged KV cache: `num_blocks` blocks of `block_size` token slots per layer. A sequence's
// block table lists its blocks in order; token position p lives in slot
// block_table[p / block_size] * block_size + p % block_size.
struct KvCacheShape {
  int64_t num_layers = 0;
  int64_t num_blocks = 0;
  int64_t block_size = 16;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  KvCacheDType dtype = KvCacheDType::kAuto;

  int64_t num_slots() const { return num_blocks * block_size; }
  bool fp8() const { return dtype == KvCacheDType::kFp8E4M3; }
};

class KvCache {
 public:
  virtual ~KvCache() = default;
  virtual const KvCacheShape& shape() const = 0;
};

// Activation memory of a backend, released with the object.
class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual std::span<float> data() = 0;
};

// The sequences of one forward step. Each contributes `num_query_tokens` consecutive
// tokens starting at `start_position` (a prefill chunk, or 1 for decode) and attends to
// every position before its last query token through its block table.
struct AttentionSequence {
  int64_t start_position = 0;
  int64_t num_query_tokens = 0;
  std::span<const int32_t> block_table;
};

// Rotary embedding frequencies (inverse frequencies per rotated pair), precomputed from
// the config (including Llama 3 scaling).
struct RopeTable {
  std::vector<float> inv_freq;  // head_dim / 2 entries.
};

// What the ops of one step share, in host memory; every index already validated.
struct StepLayout {
  std::span<const int32_t> token_ids;  // [m]
  std::span<const int64_t> positions;  // [m]
  std::span<const int64_t> slots;      // [m] KV slot of each token (negative: written nowhere).
  std::span<const AttentionSequence> sequences;
  std::span<const int64_t> logit_rows;  // Tokens whose logits are wanted, ascending.
  const RopeTable* rope = nullptr;
  // A decode step padded to a Backend::RecordedBatchSize, for Backend::RunRecorded.
  bool recorded = false;
};

// A step's layout as the backend keeps it (uploaded to the device for CUDA), with the rotary
// cos/sin of every token computed once.
class StepInputs {
 public:
  virtual ~StepInputs() = default;
  virtual int64_t num_tokens() const = 0;
  virtual int64_t num_logit_rows() const = 0;
};

// One row's sampling, for backends that sample where the logits are (Backend::can_sample):
// the parameters and state of engine/sampling's Sampler, the reference, with its next draw.
struct RowSampling {
  float temperature = 1.0f;  // 0: greedy (after penalties).
  float top_p = 1.0f;
  int32_t top_k = 0;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int32_t num_top_logprobs = 0;
  double uniform = 0.0;                        // The draw in [0, 1); unused when greedy.
  std::span<const int32_t> repetition_tokens;  // Distinct prompt and output tokens.
  std::span<const int32_t> output_tokens;      // Distinct output tokens,
  std::span<const int32_t> output_counts;      // and how often each was generated.
};

struct SampledRow {
  int32_t token = 0;
  float logprob = 0.0f;  // Log-softmax of the raw logits at `token`.
  std::vector<std::pair<int32_t, float>> top_logprobs;
};

struct DeviceMemory {
  int64_t free_bytes = 0;
  int64_t total_bytes = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  // Device memory for sizing the KV cache; nullopt on the host (the operator sizes it).
  virtual std::optional<DeviceMemory> device_memory() const = 0;
  // Bytes per second the backend's memory moves in a large copy (each byte read and written
  // counts twice): the denominator of the decode floors benchmarks print. Takes a second or
  // so; not for the serving path.
  virtual double MeasureCopyBandwidth() = 0;

  // --- memory ---
  // Bytes a cache of `shape` takes (keys and values of every layer; a backend may align its
  // parts at up to a KiB a layer more).
  virtual int64_t KvCacheBytes(const KvCacheShape& shape) const = 0;
  virtual std::unique_ptr<KvCache> AllocateKvCache(const KvCacheShape& shape) = 0;
  virtual std::unique_ptr<Buffer> Allocate(int64_t num_floats) = 0;
  // Makes a weight read from the model file usable by the ops; the backend owns any copy.
  virtual Result<Weight> LoadWeight(const Weight& host) = 0;
  // The weights one Linears call takes together (q, k and v; gate and up), as LoadWeight
  // each; a backend may keep them in one piece (the CUDA backend does, so that a small batch
  // runs them as one GEMM).
  virtual Result<std::vector<Weight>> LoadWeights(std::span<const Weight> hosts) {
    std::vector<Weight> loaded;
    for (const Weight& host : hosts) {
      auto weight = LoadWeight(host);
      if (!weight.ok()) return weight.status();
      loaded.push_back(*weight);
    }
    return loaded;
  }
  // The weights of one Linears call (as LoadWeights) quantised to FP8 E4M3 with one scale for
  // the group (fp8.h): each value rounded to BF16, then to E4M3 of value / scale, scale =
  // the group's largest magnitude / 448. Linear and the ops built on it then quantise their
  // input the same way per call (one scale for the whole [m, cols] input) and multiply the
  // codes (on the GPU's FP8 tensor cores), so a step reads half the weight bytes of BF16.
  // A group that is not Fp8Quantizable is loaded as LoadWeights does, on every backend (the
  // GPU's FP8 GEMMs take no other shapes); FAILED_PRECONDITION where the backend has no FP8
  // path at all (a GPU without FP8 tensor cores).
  virtual Result<std::vector<Weight>> LoadFp8Weights(std::span<const Weight> hosts) = 0;
  // Whether LoadFp8Weights quantises `hosts`: matrices of one width, that width and each one's
  // rows multiples of 16 (every real model's linear layers).
  static bool Fp8Quantizable(std::span<const Weight> hosts) {
    for (const Weight& host : hosts) {
      if (host.rows < 16 || host.rows % 16 != 0 || host.cols % 16 != 0 ||
          host.cols != hosts.front().cols)
        return false;
    }
    return !hosts.empty();
  }
  // A host view of `data`: the data itself where it is host memory, else a copy in `scratch`.
  // Waits for the ops that write it.
  virtual std::span<const float> ReadBack(std::span<const float> data,
                                          std::vector<float>& scratch) = 0;
  // Copies host floats into backend memory (tests and tools).
  virtual void Upload(std::span<const float> host, std::span<float> data) = 0;
  // Copies the key and value of `layer` at `slot` ([num_kv_heads, head_dim] each) to the
  // host (tests).
  virtual void ReadKv(const KvCache& cache, int64_t layer, int64_t slot, std::span<float> key,
                      std::span<float> value) = 0;

  virtual std::unique_ptr<StepInputs> PrepareStep(const StepLayout& layout) = 0;

  // --- recorded steps ---
  // A decode step's ops recorded once and replayed (CUDA graphs: one launch instead of
  // hundreds, no host work between the ops). Recordings are per batch size, so the model pads
  // a decode step of `num_sequences` sequences (one new token each) to RecordedBatchSize of
  // them, the padding tokens at position 0 with slot −1 (written nowhere) and their logit rows
  // left unread, and lays it out with StepLayout::recorded. 0: this backend does not record
  // steps of that size (the CPU backend never does).
  virtual int64_t RecordedBatchSize(int64_t /*num_sequences*/) const { return 0; }
  // Runs the ops `issue` enqueues for `step` (laid out with StepLayout::recorded) over
  // `cache`. A recording backend calls `issue` the first time a shape comes, records what it
  // enqueues the next time, and from then on replays that instead of calling it: `issue` must
  // enqueue the same ops on the same buffers each time. Another cache, or a new
  // `buffers_version` (the caller's buffers moved), drops every recording: they hold the old
  // addresses.
  virtual void RunRecorded(const StepInputs& /*step*/, const KvCache& /*cache*/,
                           int64_t /*buffers_version*/, const std::function<void()>& issue) {
    issue();
  }

  // --- ops ---
  // out[m, w.rows] = x[m, w.cols] · wᵀ (+ bias, a [1, w.rows] weight, when given).
  virtual void Linear(std::span<const float> x, int64_t m, const Weight& w, const Weight* bias,
                      std::span<float> out) = 0;
  // Linear of one input through several weights, as Linear one after another (q, k and v;
  // gate and up): a backend may share the work on x (the CUDA backend rounds it to BF16 once).
  struct LinearOutput {
    const Weight* weight = nullptr;
    const Weight* bias = nullptr;  // Optional.
    std::span<float> out;
  };
  virtual void Linears(std::span<const float> x, int64_t m, std::span<const LinearOutput> outputs) {
    for (const LinearOutput& output : outputs)
      Linear(x, m, *output.weight, output.bias, output.out);
  }
  // AddRmsNorm into `normed`, then Linears of it (q/k/v and gate/up each follow a norm). A
  // backend may leave `normed` unwritten: the CUDA backend rounds the normalised rows straight
  // into the GEMMs' BF16 input (one kernel and one pass over memory fewer), so its contents
  // are unspecified afterwards.
  virtual void AddRmsNormLinears(std::span<float> residual, std::span<const float> delta, int64_t m,
                                 const Weight& norm, float eps, std::span<float> normed,
                                 std::span<const LinearOutput> outputs) {
    AddRmsNorm(residual, delta, m, norm, eps, normed);
    Linears(normed, m, outputs);
  }
  // out = (silu(gate) ⊙ up) · wᵀ for gate and up [m, w.cols]: the MLP's down projection.
  // gate's values are not kept (here the product is made in place; the CUDA backend rounds
  // it to BF16 straight into the GEMM's input instead).
  virtual void SiluMulLinear(std::span<float> gate, std::span<const float> up, int64_t m,
                             const Weight& w, std::span<float> out) {
    SiluMul(gate, up, gate);
    Linear(gate, m, w, nullptr, out);
  }
  // out[i, :] = table[token_ids[i], :].
  virtual void Embedding(const StepInputs& step, const Weight& table, std::span<float> out) = 0;
  // residual[m, n] += delta (skipped when delta is empty); out = RMSNorm(residual) ⊙ weight.
  virtual void AddRmsNorm(std::span<float> residual, std::span<const float> delta, int64_t m,
                          const Weight& weight, float eps, std::span<float> out) = 0;
  // RMSNorm in place over each consecutive group of weight.cols values (Qwen3's per-head
  // q/k norm).
  virtual void RmsNormGroups(std::span<float> x, const Weight& weight, float eps) = 0;
  // Rotary embedding ("rotate_half" layout) in place on q [m, num_heads, d] and
  // k [m, num_kv_heads, d], token i at the step's positions[i]; then writes the rotated k and
  // v [m, num_kv_heads, d] of `layer` into the cache at the step's slots.
  virtual void RopeWriteKv(const StepInputs& step, std::span<float> q, std::span<float> k,
                           std::span<const float> v, int64_t num_heads, KvCache& cache,
                           int64_t layer) = 0;
  // Causal attention of q [m, num_heads, d] over the cache, sequence by sequence; out has
  // q's shape. scale multiplies q·k.
  virtual void PagedAttention(const StepInputs& step, const KvCache& cache, int64_t layer,
                              std::span<const float> q, int64_t num_heads, float scale,
                              std::span<float> out) = 0;
  // PagedAttention into `attention_out`, then out = attention_out · wᵀ (the o projection). A
  // backend may leave `attention_out` unwritten: the CUDA backend's attention kernels write
  // the GEMM's BF16 input instead (one kernel and one pass over memory fewer).
  virtual void PagedAttentionLinear(const StepInputs& step, const KvCache& cache, int64_t layer,
                                    std::span<const float> q, int64_t num_heads, float scale,
                                    std::span<float> attention_out, const Weight& w,
                                    std::span<float> out) {
    PagedAttention(step, cache, layer, q, num_heads, scale, attention_out);
    Linear(attention_out, step.num_tokens(), w, nullptr, out);
  }
  // out = silu(gate) ⊙ up.
  virtual void SiluMul(std::span<const float> gate, std::span<const float> up,
                       std::span<float> out) = 0;
  // out[i, :] = x[logit_rows[i], :] for the step's logit rows; x is [m, cols].
  virtual void GatherRows(const StepInputs& step, std::span<const float> x, int64_t cols,
                          std::span<float> out) = 0;
  // Whether SampleRows works here. The CPU backend's logits are host memory already, where
  // the Sampler runs; a device backend samples in place so only ids cross to the host.
  virtual bool can_sample() const = 0;
  // Samples each row of logits [rows.size(), cols] as the Sampler does given the same draw.
  virtual void SampleRows(std::span<const float> logits, int64_t cols,
                          std::span<const RowSampling> rows, std::span<SampledRow> out) = 0;
  // Greedy choice per row of logits [rows, cols], written to the host: the largest logit's
  // column (the lowest on ties) and, unless `logprobs` is empty, its log-softmax. Only ids
  // cross to the host, not logits.
  virtual void GreedyRows(std::span<const float> logits, int64_t rows, int64_t cols,
                          std::span<int32_t> tokens, std::span<float> logprobs) = 0;
};

std::unique_ptr<Backend> MakeCpuBackend();

}  // namespace inferbox::engine
