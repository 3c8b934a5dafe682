// Launchers of the CUDA backend's own kernels (everything but the GEMMs, which go through
// cuBLASLt). Plain C++ signatures so host code compiled by g++ can call them; BF16 data is
// passed as uint16_t bit patterns. Every launcher enqueues on `stream` and checks the
// launch; none synchronises. Shapes follow backend.h: activations float32 row-major; the
// KV cache of one layer is keys in rows of head_dim, one per (slot, KV head) (CacheRow says
// where), and values alike, BF16, or (KvCacheDType::kFp8E4M3) FP8 E4M3 codes in that shape
// with a float32 scale per row for the keys and one for the values (each row's 16-byte
// alignment as the BF16 cache's: the rows of the tensor-core kernels' shapes start at
// multiples of 16 bytes).
#pragma once

#include <cstdint>
#include <string>

#include <cuda_runtime.h>

#ifdef __CUDACC__
#define INFERBOX_HOST_DEVICE __host__ __device__
#else
#define INFERBOX_HOST_DEVICE
#endif

namespace inferbox::engine::cuda {

enum class SourceType { kF32, kF16, kBF16 };

// dst[i] = src[i] rounded to BF16 (round to nearest even) / widened to float32.
void LaunchConvertToBf16(const void* src, SourceType type, uint16_t* dst, int64_t n,
                         cudaStream_t stream);
void LaunchConvertToF32(const void* src, SourceType type, float* dst, int64_t n,
                        cudaStream_t stream);

// FP8 E4M3 of x [rows, cols] (BF16) with one scale, as the CPU reference computes it
// (engine/backend/include/inferbox/engine/backend/fp8.h): work[0] = the largest magnitude,
// work[kFp8ScaleSlot] = its scale, out[i] = E4M3(x[i] / scale) rounded to nearest even,
// saturated. `work` is kFp8WorkFloats floats of device memory, 16-byte aligned; the scale is
// what the FP8 GEMM multiplies by, 16 bytes in because cuBLASLt refuses (NOT_SUPPORTED, at
// the GEMM, not when choosing its algorithm) scale pointers on a smaller alignment. With
// `real_rows` (device memory), only that many first rows count towards the scale (the others
// are a recorded step's padding); all are quantised.
inline constexpr int kFp8ScaleSlot = 4;
inline constexpr int kFp8WorkFloats = 8;
void LaunchQuantizeToFp8(const uint16_t* x, int64_t rows, int64_t cols, const int32_t* real_rows,
                         float* work, uint8_t* out, cudaStream_t stream);

// out[i, :] = table[ids[i], :] widened; table [vocab, hidden] BF16.
void LaunchEmbedding(const int32_t* ids, int64_t m, const uint16_t* table, int64_t hidden,
                     float* out, cudaStream_t stream);

// residual[m, n] += delta (when delta is not null); out = RMSNorm(residual) ⊙ gamma.
void LaunchAddRmsNorm(float* residual, const float* delta, int64_t m, int64_t n, const float* gamma,
                      float eps, float* out, cudaStream_t stream);
// The same with `out` rounded to BF16 (the GEMM input of the Linears that follow a norm).
void LaunchAddRmsNormToBf16(float* residual, const float* delta, int64_t m, int64_t n,
                            const float* gamma, float eps, uint16_t* out, cudaStream_t stream);

// RMSNorm in place over each of num_groups consecutive groups of n values.
void LaunchRmsNormGroups(float* x, int64_t num_groups, int64_t n, const float* gamma, float eps,
                         cudaStream_t stream);

// cos/sin[t, j] of angle positions[t] × inv_freq[j] (formed in float32), [m, half].
void LaunchRopeTables(const int64_t* positions, int64_t m, const float* inv_freq, int64_t half,
                      float* cos, float* sin, cudaStream_t stream);

// Rotates q [m, num_heads, head_dim] and k [m, num_kv_heads, head_dim] in place
// ("rotate_half" over `half` = head_dim / 2 pairs; half 0: no rotation), then writes k and v
// of token t into slot slots[t] of the layer's key and value caches (nowhere when negative):
// BF16, or with key_codes set FP8 codes and scales (each KV head's keys and values quantised
// as fp8.h's QuantizeFp8Head does).
struct KvCacheLayer {
  // BF16.
  uint16_t* keys = nullptr;
  uint16_t* values = nullptr;
  // FP8 E4M3 (instead of keys and values when set).
  uint8_t* key_codes = nullptr;
  uint8_t* value_codes = nullptr;
  float* key_scales = nullptr;
  float* value_scales = nullptr;
  // The rows' order (CacheRow): slot by slot, a slot's KV heads side by side; or block by
  // block, a block's slots of one KV head side by side, so that a tile of a block's keys of
  // one KV head is one run of memory (block_size × head_dim elements) where slot by slot it
  // is block_size runs of head_dim elements, num_kv_heads rows apart.
  bool block_major = false;
};
// The row of slot `offset` of block `block` for one KV head, in a cache of blocks of
// `block_size` slots: (block · block_size + offset) · num_kv_heads + kv_head, or block-major
// (block · num_kv_heads + kv_head) · block_size + offset.
INFERBOX_HOST_DEVICE inline int64_t CacheRowInBlock(const KvCacheLayer& cache, int64_t block,
                                                    int64_t offset, int64_t kv_head,
                                                    int64_t num_kv_heads, int64_t block_size) {
  return cache.block_major ? (block * num_kv_heads + kv_head) * block_size + offset
                           : (block * block_size + offset) * num_kv_heads + kv_head;
}
// The row of (slot, kv_head).
INFERBOX_HOST_DEVICE inline int64_t CacheRow(const KvCacheLayer& cache, int64_t slot,
                                             int64_t kv_head, int64_t num_kv_heads,
                                             int64_t block_size) {
  return CacheRowInBlock(cache, slot / block_size, slot % block_size, kv_head, num_kv_heads,
                         block_size);
}
struct RopeWriteKvParams {
  float* q = nullptr;
  float* k = nullptr;
  const float* v = nullptr;
  const float* cos = nullptr;
  const float* sin = nullptr;
  const int64_t* slots = nullptr;
  KvCacheLayer cache;
  int64_t num_tokens = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t half = 0;
  int64_t block_size = 0;  // The cache's (CacheRow).
};
void LaunchRopeWriteKv(const RopeWriteKvParams& params, cudaStream_t stream);

// Causal attention over the paged cache: token t (of sequence token_sequence[t], at
// positions[t]) attends to positions 0..positions[t] of its sequence, whose block table is
// block_tables[table_offsets[s] ...]. head_dim at most kMaxHeadDim.
//
// Where each KV head serves at most kMaxAttentionGroup query heads, one block per (token, KV
// head, split) loads each key and value once for its group of query heads, and when there
// are too few (token, KV head) pairs to fill the device (decode of a few long sequences) the
// key positions are split among blocks whose partial results (running max, sum, weighted
// values) are merged by a second kernel (flash-decoding). Otherwise one block per (token,
// query head).
//
// Prefill chunks of at least kTiledMinTokens tokens go to a tiled kernel instead (where the
// group is at most kMaxAttentionGroup and head_dim at most kTiledMaxHeadDim): a block per
// tile of up to TiledAttentionRows (token, query head) rows of one KV head loads each key and
// value tile into shared memory once for all its rows. The caller lists the tiles and the
// tokens left for the per-token kernels (TiledAttentionApplies says when).
inline constexpr int64_t kMaxHeadDim = 256;
inline constexpr int64_t kMaxAttentionGroup = 8;
inline constexpr int64_t kTiledMaxHeadDim = 128;
inline constexpr int64_t kTiledMinTokens = 16;
// Rows of a prefill tile on the current device: on tensor cores (head_dim a multiple of 16)
// 128 where two blocks of that form fit a multiprocessor (Hopper, datacenter Blackwell), else
// 64; 32 on CUDA cores.
int64_t TiledAttentionRows(int64_t head_dim);
// Tokens of one sequence per tile of `rows` rows for a group of `group` query heads per KV
// head.
inline int64_t TiledAttentionTileTokens(int64_t group, int64_t rows) {
  return rows / group;
}
inline bool TiledAttentionApplies(int64_t num_heads, int64_t num_kv_heads, int64_t head_dim) {
  return num_heads / num_kv_heads <= kMaxAttentionGroup && head_dim <= kTiledMaxHeadDim;
}
// The kernel that takes the per-token tokens (decodes, short chunks): chosen by shape, or
// named, for inferbox-attention-bench to compare them (a kernel that cannot take the shape
// is a fatal error).
enum class DecodeAttentionKernel { kAuto, kTensorCore, kGrouped };
struct PagedAttentionParams {
  const float* q = nullptr;
  float* out = nullptr;
  // When set, the output goes here instead, rounded to BF16 (nearest even): the input of the
  // o projection's GEMM.
  uint16_t* out_bf16 = nullptr;
  KvCacheLayer cache;  // Read only.
  const int64_t* positions = nullptr;
  const int32_t* token_sequence = nullptr;
  const int64_t* table_offsets = nullptr;
  const int32_t* block_tables = nullptr;
  int64_t num_tokens = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t block_size = 0;
  float scale = 1.0f;
  // For choosing the split: the largest of positions[] and the device's multiprocessors.
  int64_t max_position = 0;
  int num_multiprocessors = 1;
  // Scratch of PagedAttentionWorkspaceFloats(params) floats for split partial results.
  float* workspace = nullptr;
  // Prefill tiles (num_tiles pairs of first token, token count), and the tokens left for the
  // per-token kernels (num_listed_tokens of them); token_list null: every token, no tiles.
  const int32_t* tiles = nullptr;
  int64_t num_tiles = 0;
  int64_t tile_rows = 0;  // What the tiles were made for: TiledAttentionRows(head_dim).
  const int32_t* token_list = nullptr;
  int64_t num_listed_tokens = 0;
  DecodeAttentionKernel decode_kernel = DecodeAttentionKernel::kAuto;
  // Splits of each (token, KV head)'s keys among the per-token kernel's work items: chosen
  // by shape and device (0), or forced (1 to 64), for inferbox-attention-bench.
  int splits = 0;
  // Tiles of 16 keys each warp of the tensor-core decode kernel holds (the one computed and
  // the rest in flight): 0 for the default (2), or 2 to 4, for inferbox-attention-bench.
  int decode_stages = 0;
  // The tensor-core decode kernel's key and value fragments by ldmatrix (an FP8 cache's value
  // codes through an FP16 tile) instead of 16- and 32-bit loads: CudaBackendOptions::
  // decode_ldmatrix, and inferbox-attention-bench's --decode-fragments.
  bool decode_ldmatrix = false;
};
// The splits LaunchPagedAttention makes of each (token, KV head)'s keys for the per-token
// tokens.
int PagedAttentionSplits(const PagedAttentionParams& params);
// Floats of workspace LaunchPagedAttention needs for `params` (0: none).
int64_t PagedAttentionWorkspaceFloats(const PagedAttentionParams& params);
// The tensor-core decode kernel as compiled for and resident on the current device, for
// benchmarks to print: its speed is the bytes its resident warps keep in flight, and a
// change that costs it registers or spills shows here before it shows as time.
struct DecodeKernelResources {
  int registers = 0;        // A thread's.
  int64_t spill_bytes = 0;  // A thread's local memory: spilled registers.
  int blocks_per_multiprocessor = 0;
  int warps_per_block = 0;
  int stages = 0;            // Tiles a warp holds.
  int64_t shared_bytes = 0;  // A block's tiles.
};
// `stages` and `ldmatrix` as PagedAttentionParams::decode_stages (0: the default) and
// decode_ldmatrix.
DecodeKernelResources TensorCoreDecodeKernelResources(bool fp8_cache, int stages = 0,
                                                      bool ldmatrix = false);
void LaunchPagedAttention(const PagedAttentionParams& params, cudaStream_t stream);

// out = silu(gate) ⊙ up over n values (out may alias gate).
void LaunchSiluMul(const float* gate, const float* up, float* out, int64_t n, cudaStream_t stream);
// The same rounded to BF16 (round to nearest even) into out.
void LaunchSiluMulToBf16(const float* gate, const float* up, uint16_t* out, int64_t n,
                         cudaStream_t stream);

// out[i, :] = x[rows[i], :].
void LaunchGatherRows(const float* x, const int64_t* rows, int64_t num_rows, int64_t cols,
                      float* out, cudaStream_t stream);

// Per row of logits [rows, cols]: the largest value's column (the lowest on ties) into
// tokens[row] and its log-softmax into logprobs[row] (device memory). `work`: device memory of
// GreedyRowsWorkBytes(rows, cols) bytes, 8-byte aligned (none for rows read whole by one
// block).
int64_t GreedyRowsWorkBytes(int64_t rows, int64_t cols);
void LaunchGreedyRows(const float* logits, int64_t rows, int64_t cols, int32_t* tokens,
                      float* logprobs, void* work, cudaStream_t stream);

// Sampling of one row, as the host Sampler does it (engine/sampling/src/sampler.cc): the
// penalty lists are slices of the launch's arrays.
inline constexpr int kMaxTopLogprobs = 20;
struct RowSamplingParams {
  float temperature;
  float top_p;
  float min_p;
  float repetition_penalty;
  float presence_penalty;
  float frequency_penalty;
  int32_t top_k;
  int32_t num_top_logprobs;
  double uniform;
  int64_t repetition_offset;  // Into repetition_tokens.
  int64_t repetition_count;
  int64_t output_offset;  // Into output_tokens and output_counts.
  int64_t output_count;
};
struct SampleRowsParams {
  const float* logits = nullptr;  // [rows, cols]
  float* work = nullptr;          // [rows, cols] scratch
  int64_t rows = 0;
  int64_t cols = 0;
  const RowSamplingParams* row_params = nullptr;
  const int32_t* repetition_tokens = nullptr;
  const int32_t* output_tokens = nullptr;
  const int32_t* output_counts = nullptr;
  int32_t* tokens = nullptr;      // [rows]
  float* logprobs = nullptr;      // [rows]
  int32_t* top_tokens = nullptr;  // [rows, kMaxTopLogprobs]
  float* top_logprobs = nullptr;  // [rows, kMaxTopLogprobs]
};
void LaunchSampleRows(const SampleRowsParams& params, cudaStream_t stream);

// Column slices of a [m, total] float32 matrix copied out: slice i, columns begin[i] ..
// begin[i + 1], into out[i] ([m, begin[i + 1] − begin[i]]) plus bias[i] when not null (one
// launch for all: a stacked GEMM's output split into q, k and v).
inline constexpr int kMaxColumnSlices = 4;
struct ColumnSlices {
  float* out[kMaxColumnSlices] = {};
  const float* bias[kMaxColumnSlices] = {};
  int64_t begin[kMaxColumnSlices + 1] = {};
  int count = 0;
};
void LaunchScatterColumns(const float* in, int64_t m, int64_t total, const ColumnSlices& slices,
                          cudaStream_t stream);

// Linears of at most kSmallBatchMaxRows input rows (decode steps of a few sequences) in one
// launch without cuBLAS: out[i] [m, rows[i]] = x [m, cols] · weight[i]ᵀ (+ bias[i]), float32
// accumulation on the tensor cores (mma.sync, the input rows as the 8 columns of B), every
// weight read once with 16-byte loads. With `fp8`, x and the weights are E4M3 codes and the
// products are multiplied by *x_scale and *weight_scale[i] (as cuBLASLt's FP8 GEMM does);
// else both are BF16. An output row's value does not depend on m (padding rows change no
// bits). With `quantize` (FP8 weights, an input SmallBatchQuantizes takes: at most
// kSmallBatchQuantizeMax values), x is BF16 and the kernel quantises it itself, as
// LaunchQuantizeToFp8 does (the same codes and scale; rows from *real_rows on, where given,
// are a recorded step's padding and do not count towards the scale). At most `max_blocks`
// blocks (0: one per 16 rows of the weights) take the rows' tiles in turn. With
// `dependent_launch` (on compute capability 9.0 on; elsewhere it changes nothing) the kernel is
// launched as a programmatic dependent of the kernel before it in the stream: it may start
// while that kernel runs, each block asking L2 for the start of its first tile's weight rows,
// and waits for that kernel's end (and its writes) before it reads x or writes anything.
// SmallBatchLinearFits says whether a call can run so: 1 ≤ m ≤ kSmallBatchMaxRows, rows of a
// whole number of 16-byte pieces, x and every weight 16-byte aligned.
inline constexpr int64_t kSmallBatchMaxRows = 8;
inline constexpr int64_t kSmallBatchQuantizeMax = 16 << 10;
bool SmallBatchQuantizes(int64_t m, int64_t cols);
struct SmallBatchLinearParams {
  const void* x = nullptr;
  const float* x_scale = nullptr;
  bool fp8 = false;
  bool quantize = false;
  const int32_t* real_rows = nullptr;
  int64_t max_blocks = 0;
  bool dependent_launch = false;
  int64_t m = 0;
  int64_t cols = 0;
  int count = 0;
  const void* weight[kMaxColumnSlices] = {};  // [rows[i], cols]
  const float* weight_scale[kMaxColumnSlices] = {};
  int64_t rows[kMaxColumnSlices] = {};
  float* out[kMaxColumnSlices] = {};
  const float* bias[kMaxColumnSlices] = {};
};
bool SmallBatchLinearFits(const SmallBatchLinearParams& params);
void LaunchSmallBatchLinear(const SmallBatchLinearParams& params, cudaStream_t stream);
// Whether the small-batch kernel as the current device runs it (its SASS, or PTX compiled for
// it) waits for the kernel before it (compiled for compute capability 9.0 or later): where not,
// `dependent_launch` must stay false (a launch as a dependent would read its input too early).
// True on the CPU emulation, which runs kernels one after another.
bool DependentLaunchesRun();

// out[i, j] += bias[j] for a [m, n] out.
void LaunchAddBias(float* out, const float* bias, int64_t m, int64_t n, cudaStream_t stream);

// While it lives, a failed launch (CheckLaunch) or cuBLAS call on this thread does not end
// the process but is kept (the first one): CUDA fails every launch into a stream capture it
// has invalidated (after a call it refuses during capture), and the caller then discards
// the capture instead (CudaBackend::RunRecorded). Launches outside a capture never fail so.
class ToleratedLaunchFailures {
 public:
  ToleratedLaunchFailures();
  ~ToleratedLaunchFailures();
  ToleratedLaunchFailures(const ToleratedLaunchFailures&) = delete;
  ToleratedLaunchFailures& operator=(const ToleratedLaunchFailures&) = delete;
  // The first failure kept ("what: reason"), empty when none.
  const std::string& first() const;
  // Keeps the failure and returns true while one is alive on this thread; else false.
  static bool Note(const char* what, const char* reason);
};
// Stops the process with the failing call, its location and CUDA's reason: the device
// state cannot be trusted after a fault, and the supervisor restarts the engine.
[[noreturn]] void FatalCudaError(const char* what, const char* reason, const char* file, int line);

}  // namespace inferbox::engine::cuda

#define INFERBOX_CUDA_CHECK(call)                                                              \
  do {                                                                                         \
    const cudaError_t inferbox_cuda_error = (call);                                            \
    if (inferbox_cuda_error != cudaSuccess) {                                                  \
      ::inferbox::engine::cuda::FatalCudaError(#call, cudaGetErrorString(inferbox_cuda_error), \
                                               __FILE__, __LINE__);                            \
    }                                                                                          \
  } while (false)
