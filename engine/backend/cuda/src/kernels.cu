// The CUDA backend's own kernels. Written for correctness first and checked op by op against
// the CPU reference (tests/backend/backend_ops_test.cc); speed is issue #11's. Reductions
// accumulate in float32; BF16 is only a storage type (weights, KV cache).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "kernels.h"

namespace inferbox::engine::cuda {
namespace {

constexpr int kWarpSize = 32;

// Programmatic dependent launch (compute capability 9.0 on; nothing on older GPUs and on the
// CPU emulation, which runs kernels one after another): a kernel that calls
// LetDependentsLaunch lets the next kernel in its stream, when that one is launched as its
// dependent (LaunchSmallBatchLinear's dependent_launch), start once every block of this one has
// started; the dependent calls WaitForPrimary before it touches anything the first writes or
// reads, and that returns once the first has ended and its writes are visible.
__device__ __forceinline__ void LetDependentsLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::);
#endif
}
__device__ __forceinline__ void WaitForPrimary() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
// Asks L2 for the 128-byte line at `address` (nothing on the CPU emulation).
__device__ __forceinline__ void PrefetchL2(const void* address) {
#if defined(__CUDA_ARCH__)
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(address));
#else
  static_cast<void>(address);
#endif
}

__device__ __forceinline__ float Bf16BitsToFloat(uint16_t bits) {
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

__device__ __forceinline__ uint16_t FloatToBf16Bits(float value) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(value));
}

__device__ __forceinline__ float LoadAsFloat(const void* src, SourceType type, int64_t i) {
  switch (type) {
    case SourceType::kF32: return static_cast<const float*>(src)[i];
    case SourceType::kF16: return __half2float(static_cast<const __half*>(src)[i]);
    case SourceType::kBF16: return Bf16BitsToFloat(static_cast<const uint16_t*>(src)[i]);
  }
  return 0.0f;
}

struct Plus {
  static constexpr float kIdentity = 0.0f;
  __device__ float operator()(float a, float b) const { return a + b; }
};
// fmaxf: NaN drops out, as in the CPU reference's std::max over magnitudes.
struct Max {
  static constexpr float kIdentity = 0.0f;  // Of magnitudes.
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename Combine>
__device__ __forceinline__ float WarpReduce(float value, Combine combine) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    value = combine(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

__device__ __forceinline__ float WarpSum(float value) {
  return WarpReduce(value, Plus());
}

// Over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
template <typename Combine>
__device__ float BlockReduce(float value, Combine combine) {
  __shared__ float partial[kWarpSize];
  __shared__ float total;
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  value = WarpReduce(value, combine);
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  if (warp == 0) {
    const int num_warps = blockDim.x / kWarpSize;
    float reduced = lane < num_warps ? partial[lane] : Combine::kIdentity;
    reduced = WarpReduce(reduced, combine);
    if (lane == 0) total = reduced;
  }
  __syncthreads();
  const float result = total;
  __syncthreads();  // `total` and `partial` may be reused by a later call.
  return result;
}

__device__ float BlockSum(float value) {
  return BlockReduce(value, Plus());
}

int GridFor(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<int>(blocks < 65535 * 16 ? blocks : 65535 * 16);
}

bool Aligned(const void* pointer, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % bytes == 0;
}

void CheckLaunch(const char* kernel) {
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess && !ToleratedLaunchFailures::Note(kernel, cudaGetErrorString(error))) {
    FatalCudaError(kernel, cudaGetErrorString(error), __FILE__, __LINE__);
  }
}

__global__ void ConvertToBf16Kernel(const void* src, SourceType type, uint16_t* dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = type == SourceType::kBF16 ? static_cast<const uint16_t*>(src)[i]
                                       : FloatToBf16Bits(LoadAsFloat(src, type, i));
  }
}

// Float32 to BF16, four values per thread (one 16-byte load, one 8-byte store): the
// activations before every GEMM. n is a multiple of 4, src and dst aligned to 16 and 8.
__global__ void Float4ToBf16Kernel(const float4* src, uint2* dst, int64_t n4) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float4 v = src[i];
    dst[i] = {static_cast<unsigned>(FloatToBf16Bits(v.x)) |
                  static_cast<unsigned>(FloatToBf16Bits(v.y)) << 16,
              static_cast<unsigned>(FloatToBf16Bits(v.z)) |
                  static_cast<unsigned>(FloatToBf16Bits(v.w)) << 16};
  }
}

// This thread's largest magnitude among the first n of x (but the padding rows after
// *real_rows rows of `cols`), over the grid.
__device__ float LargestMagnitude(const uint16_t* x, int64_t n, int64_t cols,
                                  const int32_t* real_rows) {
  if (real_rows != nullptr && static_cast<int64_t>(*real_rows) * cols < n) n = *real_rows * cols;
  float largest = 0.0f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    largest = fmaxf(largest, fabsf(Bf16BitsToFloat(x[i])));
  }
  return largest;
}

__device__ __forceinline__ float Fp8ScaleOf(float amax) {
  return amax > 0.0f ? amax / 448.0f : 1.0f;  // Fp8Scale.
}

// Whether a layer of the KV cache is FP8 codes and scales (else BF16).
__host__ __device__ __forceinline__ bool IsFp8(const KvCacheLayer& cache) {
  return cache.key_codes != nullptr;
}

// The value of FP8 E4M3 code `code`, as fp8.h's Fp8E4M3ToFloat (the NaN codes, which the
// quantiser writes only for a NaN, a NaN): the 7 bits below the sign placed as a float's
// exponent and top mantissa bits make the value times 2⁻¹²⁰, subnormal codes included (a
// float subnormal, which needs these kernels built without flush-to-zero: below), and the
// power of two is exact.
#ifdef __USE_FAST_MATH__
#error \
    "the kernels need IEEE float32 (no --use_fast_math): FP8 decoding goes through float subnormals and the quantisers' divisions must round as the CPU reference's"
#endif
__device__ __forceinline__ float Fp8E4M3BitsToFloat(uint32_t code) {
  const float value = __uint_as_float(((code & 0x80u) << 24) | ((code & 0x7Fu) << 20)) * 0x1p120f;
  return (code & 0x7Fu) == 0x7Fu ? __uint_as_float(0x7FC00000u) : value;
}
// A code as BF16 bits: exact (every E4M3 value is a BF16 value).
__device__ __forceinline__ uint16_t Fp8ToBf16Bits(uint32_t code) {
  return static_cast<uint16_t>(__float_as_uint(Fp8E4M3BitsToFloat(code)) >> 16);
}
// Two codes as BF16 in one register, the first in the lower half.
__device__ __forceinline__ uint32_t Fp8PairToBf16(uint32_t first, uint32_t second) {
  return (__float_as_uint(Fp8E4M3BitsToFloat(first)) >> 16) |
         (__float_as_uint(Fp8E4M3BitsToFloat(second)) & 0xFFFF0000u);
}

// The E4M3 code of a BF16 value at `scale` (fp8.h's rule).
__device__ __forceinline__ uint8_t Fp8Code(uint16_t bf16, float scale) {
  return __nv_cvt_float_to_fp8(Bf16BitsToFloat(bf16) / scale, __NV_SATFINITE, __NV_E4M3);
}

__device__ void QuantizeFp8(const uint16_t* x, int64_t n, float scale, uint8_t* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = Fp8Code(x[i], scale);
  }
}

// work[0] = max(work[0], |x[i]|) over the grid; work[0] starts at 0. Non-negative floats
// order as their bit patterns do, so the maximum is an unsigned atomic.
__global__ void AbsMaxBf16Kernel(const uint16_t* x, int64_t n, int64_t cols,
                                 const int32_t* real_rows, float* work) {
  LetDependentsLaunch();
  const float largest = WarpReduce(LargestMagnitude(x, n, cols, real_rows), Max());
  if (threadIdx.x % kWarpSize == 0) {
    atomicMax(reinterpret_cast<unsigned int*>(work), __float_as_uint(largest));
  }
}

__global__ void QuantizeFp8Kernel(const uint16_t* x, int64_t n, float* work, uint8_t* out) {
  LetDependentsLaunch();
  const float scale = Fp8ScaleOf(work[0]);
  if (blockIdx.x == 0 && threadIdx.x == 0) work[kFp8ScaleSlot] = scale;
  QuantizeFp8(x, n, scale, out);
}

// Both in one block, for the small inputs of decode steps: one launch instead of a memset
// and two kernels.
__global__ void __launch_bounds__(1024)
    QuantizeFp8OneBlockKernel(const uint16_t* x, int64_t n, int64_t cols, const int32_t* real_rows,
                              float* work, uint8_t* out) {
  LetDependentsLaunch();
  const float amax = BlockReduce(LargestMagnitude(x, n, cols, real_rows), Max());
  const float scale = Fp8ScaleOf(amax);
  if (threadIdx.x == 0) {
    work[0] = amax;
    work[kFp8ScaleSlot] = scale;
  }
  QuantizeFp8(x, n, scale, out);
}

__global__ void ConvertToF32Kernel(const void* src, SourceType type, float* dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = LoadAsFloat(src, type, i);
  }
}

__global__ void EmbeddingKernel(const int32_t* ids, const uint16_t* table, int64_t hidden,
                                float* out) {
  const int64_t row = blockIdx.x;
  const uint16_t* source = table + static_cast<int64_t>(ids[row]) * hidden;
  for (int64_t c = threadIdx.x; c < hidden; c += blockDim.x)
    out[row * hidden + c] = Bf16BitsToFloat(source[c]);
}

__device__ __forceinline__ void StoreAs(float* out, float value) {
  *out = value;
}
__device__ __forceinline__ void StoreAs(uint16_t* out, float value) {
  *out = FloatToBf16Bits(value);
}

// Out: float, or uint16_t for BF16 (rounded to nearest even, as LaunchConvertToBf16 rounds).
template <typename Out>
__global__ void AddRmsNormKernel(float* residual, const float* delta, int64_t n, const float* gamma,
                                 float eps, Out* out) {
  LetDependentsLaunch();
  const int64_t row = blockIdx.x;
  float* r = residual + row * n;
  float sum_squares = 0.0f;
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
    float value = r[c];
    if (delta != nullptr) {
      value += delta[row * n + c];
      r[c] = value;
    }
    sum_squares += value * value;
  }
  const float inv_rms = rsqrtf(BlockSum(sum_squares) / static_cast<float>(n) + eps);
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x)
    StoreAs(&out[row * n + c], r[c] * inv_rms * gamma[c]);
}

// One warp per group.
__global__ void RmsNormGroupsKernel(float* x, int64_t num_groups, int64_t n, const float* gamma,
                                    float eps) {
  const int64_t group =
      blockIdx.x * static_cast<int64_t>(blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (group >= num_groups) return;
  const int lane = threadIdx.x % kWarpSize;
  float* values = x + group * n;
  float sum_squares = 0.0f;
  for (int64_t c = lane; c < n; c += kWarpSize) sum_squares += values[c] * values[c];
  const float inv_rms = rsqrtf(WarpSum(sum_squares) / static_cast<float>(n) + eps);
  for (int64_t c = lane; c < n; c += kWarpSize) values[c] = values[c] * inv_rms * gamma[c];
}

__global__ void RopeTablesKernel(const int64_t* positions, int64_t m, const float* inv_freq,
                                 int64_t half, float* cos, float* sin) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < m * half;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float angle = static_cast<float>(positions[i / half]) * inv_freq[i % half];
    sincosf(angle, &sin[i], &cos[i]);
  }
}

// One KV head's n values of token t quantised into the FP8 cache by one warp (fp8.h's
// QuantizeFp8Head): codes at `head` · n, the scale at `head`.
__device__ void QuantizeKvHead(const float* x, int64_t n, int64_t head, uint8_t* codes,
                               float* scales) {
  const int lane = threadIdx.x % kWarpSize;
  float amax = 0.0f;
  float nan = 0.0f;  // 1 where a value is a NaN.
  for (int64_t c = lane; c < n; c += kWarpSize) {
    amax = fmaxf(amax, fabsf(x[c]));
    if (x[c] != x[c]) nan = 1.0f;  // NaN.
  }
  // A head holding a NaN gets a NaN scale, a head of zeros 0 and codes 0 (fp8.h's
  // QuantizeFp8Head).
  amax = WarpReduce(amax, Max());
  const bool has_nan = WarpReduce(nan, Max()) > 0.0f;
  const float scale = has_nan ? __uint_as_float(0x7FC00000u) : amax / 448.0f;
  for (int64_t c = lane; c < n; c += kWarpSize) {
    codes[head * n + c] = has_nan || amax > 0.0f
                              ? __nv_cvt_float_to_fp8(x[c] / scale, __NV_SATFINITE, __NV_E4M3)
                              : __nv_fp8_storage_t{0};
  }
  if (lane == 0) scales[head] = scale;
}

// One block per token; threads walk the (head, pair) grid of q, then of k (also writing k
// and v to a BF16 cache; an FP8 cache's heads are quantised a warp each once k is rotated).
__global__ void RopeWriteKvKernel(RopeWriteKvParams p) {
  const int64_t t = blockIdx.x;
  const int64_t head_dim = p.head_dim;
  const float* cos = p.cos + t * p.half;
  const float* sin = p.sin + t * p.half;
  const int64_t q_pairs = p.num_heads * p.half;
  for (int64_t i = threadIdx.x; i < q_pairs; i += blockDim.x) {
    const int64_t head = i / p.half;
    const int64_t j = i % p.half;
    float* x = p.q + (t * p.num_heads + head) * head_dim;
    const float x1 = x[j];
    const float x2 = x[j + p.half];
    x[j] = x1 * cos[j] - x2 * sin[j];
    x[j + p.half] = x2 * cos[j] + x1 * sin[j];
  }
  const int64_t kv_row = p.num_kv_heads * head_dim;
  const bool fp8 = IsFp8(p.cache);
  const bool write = p.slots[t] >= 0 && !fp8;  // A padding token's slot is negative.
  // KV head h's row of this token's slot: first + h · stride (CacheRow).
  const int64_t slot = p.slots[t] >= 0 ? p.slots[t] : 0;
  const int64_t first = CacheRow(p.cache, slot, 0, p.num_kv_heads, p.block_size);
  const int64_t stride = CacheRow(p.cache, slot, 1, p.num_kv_heads, p.block_size) - first;
  const auto element = [&](int64_t head, int64_t c) {
    return (first + head * stride) * head_dim + c;
  };
  const int d = static_cast<int>(head_dim);  // In 32-bit arithmetic for the loops below.
  if (p.half == 0 && write) {                // No rotation: keys are stored as they come.
    for (int c = threadIdx.x; c < kv_row; c += blockDim.x)
      p.cache.keys[element(c / d, c % d)] = FloatToBf16Bits(p.k[t * kv_row + c]);
  }
  const int64_t k_pairs = p.num_kv_heads * p.half;
  for (int64_t i = threadIdx.x; i < k_pairs; i += blockDim.x) {
    const int64_t head = i / p.half;
    const int64_t j = i % p.half;
    float* x = p.k + (t * p.num_kv_heads + head) * head_dim;
    const float x1 = x[j];
    const float x2 = x[j + p.half];
    const float r1 = x1 * cos[j] - x2 * sin[j];
    const float r2 = x2 * cos[j] + x1 * sin[j];
    x[j] = r1;
    x[j + p.half] = r2;
    if (write) {
      p.cache.keys[element(head, j)] = FloatToBf16Bits(r1);
      p.cache.keys[element(head, j + p.half)] = FloatToBf16Bits(r2);
    }
  }
  if (fp8 && p.slots[t] >= 0) {
    __syncthreads();  // Every rotated key written (the block's own writes, now visible).
    const int warps = static_cast<int>(blockDim.x) / kWarpSize;
    for (int64_t i = threadIdx.x / kWarpSize; i < 2 * p.num_kv_heads; i += warps) {
      const bool key = i < p.num_kv_heads;
      const int64_t head = i % p.num_kv_heads;
      const float* x = (key ? p.k : p.v) + (t * p.num_kv_heads + head) * head_dim;
      QuantizeKvHead(x, head_dim, first + head * stride,
                     key ? p.cache.key_codes : p.cache.value_codes,
                     key ? p.cache.key_scales : p.cache.value_scales);
    }
    return;
  }
  if (!write) return;
  for (int c = threadIdx.x; c < kv_row; c += blockDim.x)
    p.cache.values[element(c / d, c % d)] = FloatToBf16Bits(p.v[t * kv_row + c]);
}

// Element `index` of the attention's output [tokens, heads, head_dim]: float32, or BF16 where
// the caller asked for the o projection's GEMM input.
__device__ __forceinline__ void StoreOutput(const PagedAttentionParams& p, int64_t index,
                                            float value) {
  if (p.out_bf16 != nullptr) {
    p.out_bf16[index] = FloatToBf16Bits(value);
  } else {
    p.out[index] = value;
  }
}

// The cache row (CacheRow) of a sequence's key position for one KV head, from its block table.
__device__ __forceinline__ int64_t CacheRowAt(const PagedAttentionParams& p, const int32_t* table,
                                              int64_t key_position, int64_t kv_head) {
  return CacheRowInBlock(p.cache, table[key_position / p.block_size], key_position % p.block_size,
                         kv_head, p.num_kv_heads, p.block_size);
}

// The key or value of one cache row, element by element: BF16, or an FP8 code times its
// scale.
struct KvHead {
  const uint16_t* bf16;
  const uint8_t* codes;
  float scale;
  __device__ __forceinline__ float operator[](int64_t c) const {
    return codes != nullptr ? Fp8E4M3BitsToFloat(codes[c]) * scale : Bf16BitsToFloat(bf16[c]);
  }
};
__device__ __forceinline__ KvHead CachedHead(const uint16_t* bf16, const uint8_t* codes,
                                             const float* scales, int64_t head, int64_t d) {
  if (codes != nullptr) return {nullptr, codes + head * d, scales[head]};
  return {bf16 + head * d, nullptr, 1.0f};
}
__device__ __forceinline__ KvHead KeyHead(const PagedAttentionParams& p, int64_t row) {
  return CachedHead(p.cache.keys, p.cache.key_codes, p.cache.key_scales, row, p.head_dim);
}
__device__ __forceinline__ KvHead ValueHead(const PagedAttentionParams& p, int64_t row) {
  return CachedHead(p.cache.values, p.cache.value_codes, p.cache.value_scales, row, p.head_dim);
}

constexpr int kAttentionWarps = 4;
constexpr int kAttentionLaneElements = kMaxHeadDim / kWarpSize;

// One block per (token, head). Each warp takes every kAttentionWarps-th key position and
// keeps an online softmax (running max, sum and weighted values, lanes splitting head_dim);
// the warps' partial results are merged at the end.
__global__ void __launch_bounds__(kAttentionWarps* kWarpSize)
    PagedAttentionKernel(PagedAttentionParams p) {
  LetDependentsLaunch();
  const int64_t t = blockIdx.x;
  const int64_t head = blockIdx.y;
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int64_t d = p.head_dim;
  const int64_t kv_head = head / (p.num_heads / p.num_kv_heads);
  const int64_t position = p.positions[t];
  const int32_t* table = p.block_tables + p.table_offsets[p.token_sequence[t]];

  float query[kAttentionLaneElements];
  float accumulator[kAttentionLaneElements];
  const float* q = p.q + (t * p.num_heads + head) * d;
#pragma unroll
  for (int j = 0; j < kAttentionLaneElements; ++j) {
    const int64_t c = lane + j * kWarpSize;
    query[j] = c < d ? q[c] : 0.0f;
    accumulator[j] = 0.0f;
  }
  float running_max = -INFINITY;
  float running_sum = 0.0f;
  for (int64_t key_position = warp; key_position <= position; key_position += kAttentionWarps) {
    const int64_t row = CacheRowAt(p, table, key_position, kv_head);
    const KvHead key = KeyHead(p, row);
    const KvHead value = ValueHead(p, row);
    float partial = 0.0f;
#pragma unroll
    for (int j = 0; j < kAttentionLaneElements; ++j) {
      const int64_t c = lane + j * kWarpSize;
      if (c < d) partial += query[j] * key[c];
    }
    const float score = WarpSum(partial) * p.scale;
    const float new_max = fmaxf(running_max, score);
    const float correction = expf(running_max - new_max);
    const float weight = expf(score - new_max);
    running_sum = running_sum * correction + weight;
#pragma unroll
    for (int j = 0; j < kAttentionLaneElements; ++j) {
      const int64_t c = lane + j * kWarpSize;
      const float v = c < d ? value[c] : 0.0f;
      accumulator[j] = accumulator[j] * correction + weight * v;
    }
    running_max = new_max;
  }

  __shared__ float warp_max[kAttentionWarps];
  __shared__ float warp_sum[kAttentionWarps];
  __shared__ float warp_accumulator[kAttentionWarps][kMaxHeadDim];
  if (lane == 0) {
    warp_max[warp] = running_max;
    warp_sum[warp] = running_sum;
  }
#pragma unroll
  for (int j = 0; j < kAttentionLaneElements; ++j) {
    const int64_t c = lane + j * kWarpSize;
    if (c < d) warp_accumulator[warp][c] = accumulator[j];
  }
  __syncthreads();
  float global_max = -INFINITY;
  for (int w = 0; w < kAttentionWarps; ++w) global_max = fmaxf(global_max, warp_max[w]);
  float total = 0.0f;
  float scales[kAttentionWarps];
  for (int w = 0; w < kAttentionWarps; ++w) {
    // A warp that saw no key has max -inf and sum 0: its scale is 0.
    scales[w] = warp_sum[w] > 0.0f ? expf(warp_max[w] - global_max) : 0.0f;
    total += warp_sum[w] * scales[w];
  }
  const int64_t out = (t * p.num_heads + head) * d;
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    float sum = 0.0f;
    for (int w = 0; w < kAttentionWarps; ++w) sum += warp_accumulator[w][c] * scales[w];
    StoreOutput(p, out + c, sum / total);
  }
}

// --- Grouped, split attention (flash-decoding) ---
//
// One block per (token, KV head, split) of kAttentionWarps warps. Split s of S covers key
// positions [s·chunk, (s + 1)·chunk) ∩ [0, position], chunk = ⌈(position + 1) / S⌉. Each
// warp takes every kAttentionWarps-th key of the split and keeps, for each of the G query
// heads sharing the KV head, an online softmax (lanes splitting head_dim); a key and its
// value are read once for all G heads. The warps are merged in shared memory; with one split
// the block writes the output, else its partial result: max, sum and the unnormalised
// weighted values, [token][head][split] of (head_dim + 2) floats, for the combine kernel.
constexpr int kMinKeysPerSplit = 64;
constexpr int kMaxSplits = 64;

// Tokens the per-token kernels take.
__host__ __device__ int64_t PerTokenCount(const PagedAttentionParams& p) {
  return p.token_list != nullptr ? p.num_listed_tokens : p.num_tokens;
}

// Whether TensorCoreDecodeAttentionKernel (a warp per token, KV head and split) can take the
// per-token tokens, and whether it does (rather than the grouped kernels, a block each).
bool TensorCoreDecodeApplies(const PagedAttentionParams& p) {
  return p.head_dim % 16 == 0 && p.head_dim <= kTiledMaxHeadDim &&
         p.num_heads / p.num_kv_heads <= 8;
}
bool TensorCoreDecode(const PagedAttentionParams& p) {
  return p.decode_kernel != DecodeAttentionKernel::kGrouped && TensorCoreDecodeApplies(p);
}

// Splits of each (token, KV head)'s keys for the grouped kernels: enough blocks for two per
// multiprocessor, at least kMinKeysPerSplit keys each, at most kMaxSplits.
int GroupedAttentionSplits(const PagedAttentionParams& p) {
  const int64_t pairs = PerTokenCount(p) * p.num_kv_heads;
  const int64_t wanted = 2 * static_cast<int64_t>(p.num_multiprocessors);
  if (pairs >= wanted) return 1;
  const int64_t by_device = (wanted + pairs - 1) / pairs;
  const int64_t by_length = (p.max_position + 1 + kMinKeysPerSplit - 1) / kMinKeysPerSplit;
  const int64_t splits = by_device < by_length ? by_device : by_length;
  return static_cast<int>(splits < 1 ? 1 : (splits > kMaxSplits ? kMaxSplits : splits));
}

// Keys per tile of the tensor-core decode kernel (below).
constexpr int kDecodeKeys = 16;

// Tiles of latency a warp of the tensor-core decode kernel pays beyond its own tiles (the
// pipeline filling, the partial result written, the combine): a split costs that much.
constexpr int64_t kDecodeOverheadTiles = 2;

// Splits for the tensor-core decode kernel, whose work items (token, KV head, split) all take
// about as long: with W warps resident on the device, S splits cost ⌈items / W⌉ rounds of
// (tiles per split + overhead); the cheapest S (the fewest of equals) of at least two tiles
// each, at most kMaxSplits. On an H200 it chose, among the counts tried, the fastest or
// within 1% of it for 256 sequences of 1k and 2k tokens, 64 of 1k and 4k, and 16 of 2k.
int TensorCoreDecodeSplits(const PagedAttentionParams& p, int64_t resident_warps) {
  constexpr int64_t kMinKeys = 2 * kDecodeKeys;
  const int64_t pairs = PerTokenCount(p) * p.num_kv_heads;
  const int64_t keys = p.max_position + 1;
  const int64_t by_length = (keys + kMinKeys - 1) / kMinKeys;
  const int64_t most = by_length < kMaxSplits ? by_length : kMaxSplits;
  int best = 1;
  int64_t best_cost = -1;
  for (int64_t splits = 1; splits <= most; ++splits) {
    const int64_t rounds = (pairs * splits + resident_warps - 1) / resident_warps;
    const int64_t tiles = ((keys + splits - 1) / splits + kDecodeKeys - 1) / kDecodeKeys;
    const int64_t cost = rounds * (tiles + kDecodeOverheadTiles);
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best = static_cast<int>(splits);
    }
  }
  return best;
}

bool GroupedAttention(const PagedAttentionParams& p) {
  return p.num_heads / p.num_kv_heads <= kMaxAttentionGroup;
}

// E: head_dim elements per lane (head_dim ≤ 32·E): 4 up to 128, else 8, so that common
// head sizes keep half the registers.
template <int G, int E>
__global__ void __launch_bounds__(kAttentionWarps* kWarpSize)
    GroupedAttentionKernel(PagedAttentionParams p, int splits) {
  LetDependentsLaunch();
  const int64_t listed = blockIdx.x;  // Index into token_list, and into the workspace.
  const int64_t t = p.token_list != nullptr ? p.token_list[listed] : listed;
  const int64_t kv_head = blockIdx.y;
  const int split = static_cast<int>(blockIdx.z);
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int64_t d = p.head_dim;
  const int64_t position = p.positions[t];
  const int32_t* table = p.block_tables + p.table_offsets[p.token_sequence[t]];
  const int64_t chunk = (position + splits) / splits;  // ⌈(position + 1) / splits⌉
  const int64_t begin = split * chunk;
  const int64_t end = begin + chunk < position + 1 ? begin + chunk : position + 1;

  float query[G][E];
  float accumulator[G][E];
  float running_max[G];
  float running_sum[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const float* q = p.q + (t * p.num_heads + kv_head * G + g) * d;
#pragma unroll
    for (int j = 0; j < E; ++j) {
      const int64_t c = lane + j * kWarpSize;
      query[g][j] = c < d ? q[c] : 0.0f;
      accumulator[g][j] = 0.0f;
    }
    running_max[g] = -INFINITY;
    running_sum[g] = 0.0f;
  }
  for (int64_t key_position = begin + warp; key_position < end; key_position += kAttentionWarps) {
    const int64_t row = CacheRowAt(p, table, key_position, kv_head);
    const KvHead key = KeyHead(p, row);
    const KvHead value = ValueHead(p, row);
    float k[E];
    float v[E];
#pragma unroll
    for (int j = 0; j < E; ++j) {
      const int64_t c = lane + j * kWarpSize;
      k[j] = c < d ? key[c] : 0.0f;
      v[j] = c < d ? value[c] : 0.0f;
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float partial = 0.0f;
#pragma unroll
      for (int j = 0; j < E; ++j) partial += query[g][j] * k[j];
      const float score = WarpSum(partial) * p.scale;
      const float new_max = fmaxf(running_max[g], score);
      const float correction = expf(running_max[g] - new_max);
      const float weight = expf(score - new_max);
      running_sum[g] = running_sum[g] * correction + weight;
#pragma unroll
      for (int j = 0; j < E; ++j)
        accumulator[g][j] = accumulator[g][j] * correction + weight * v[j];
      running_max[g] = new_max;
    }
  }

  __shared__ float warp_max[G][kAttentionWarps];
  __shared__ float warp_sum[G][kAttentionWarps];
  __shared__ float warp_accumulator[kAttentionWarps][G][kMaxHeadDim];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane == 0) {
      warp_max[g][warp] = running_max[g];
      warp_sum[g][warp] = running_sum[g];
    }
#pragma unroll
    for (int j = 0; j < E; ++j) {
      const int64_t c = lane + j * kWarpSize;
      if (c < d) warp_accumulator[warp][g][c] = accumulator[g][j];
    }
  }
  __syncthreads();
  for (int g = 0; g < G; ++g) {
    const int64_t head = kv_head * G + g;
    float block_max = -INFINITY;
    for (int w = 0; w < kAttentionWarps; ++w) block_max = fmaxf(block_max, warp_max[g][w]);
    float total = 0.0f;
    float scales[kAttentionWarps];
    for (int w = 0; w < kAttentionWarps; ++w) {
      // A warp that saw no key has max -inf and sum 0: its scale is 0.
      scales[w] = warp_sum[g][w] > 0.0f ? expf(warp_max[g][w] - block_max) : 0.0f;
      total += warp_sum[g][w] * scales[w];
    }
    if (splits == 1) {
      const int64_t out = (t * p.num_heads + head) * d;
      for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
        float sum = 0.0f;
        for (int w = 0; w < kAttentionWarps; ++w) sum += warp_accumulator[w][g][c] * scales[w];
        StoreOutput(p, out + c, sum / total);
      }
    } else {
      float* partial = p.workspace + ((listed * p.num_heads + head) * splits + split) * (d + 2);
      if (threadIdx.x == 0) {
        partial[0] = block_max;
        partial[1] = total;  // 0 for a split without keys.
      }
      for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
        float sum = 0.0f;
        for (int w = 0; w < kAttentionWarps; ++w) sum += warp_accumulator[w][g][c] * scales[w];
        partial[2 + c] = sum;
      }
    }
  }
}

// One block per (token, head): the splits' partial results merged (a split without keys, sum
// 0, left out; a NaN sum, from a NaN key, kept: the output is NaN as without splits).
__global__ void CombineAttentionSplitsKernel(PagedAttentionParams p, int splits) {
  LetDependentsLaunch();
  const int64_t listed = blockIdx.x;
  const int64_t t = p.token_list != nullptr ? p.token_list[listed] : listed;
  const int64_t head = blockIdx.y;
  const int64_t d = p.head_dim;
  const float* partials = p.workspace + (listed * p.num_heads + head) * splits * (d + 2);
  float global_max = -INFINITY;
  for (int s = 0; s < splits; ++s) {
    const float* partial = partials + s * (d + 2);
    if (partial[1] != 0.0f) global_max = fmaxf(global_max, partial[0]);
  }
  float total = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float* partial = partials + s * (d + 2);
    if (partial[1] != 0.0f) total += partial[1] * expf(partial[0] - global_max);
  }
  const int64_t out = (t * p.num_heads + head) * d;
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    float sum = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float* partial = partials + s * (d + 2);
      if (partial[1] != 0.0f) sum += partial[2 + c] * expf(partial[0] - global_max);
    }
    StoreOutput(p, out + c, sum / total);
  }
}

template <int E>
void LaunchGroupedAttention(int group, dim3 grid, const PagedAttentionParams& params, int splits,
                            cudaStream_t stream) {
  constexpr int kThreadsPerBlock = kAttentionWarps * kWarpSize;
  switch (group) {
    case 1:
      GroupedAttentionKernel<1, E><<<grid, kThreadsPerBlock, 0, stream>>>(params, splits);
      break;
    case 2:
      GroupedAttentionKernel<2, E><<<grid, kThreadsPerBlock, 0, stream>>>(params, splits);
      break;
    case 3:
      GroupedAttentionKernel<3, E><<<grid, kThreadsPerBlock, 0, stream>>>(params, splits);
      break;
    case 4:
      GroupedAttentionKernel<4, E><<<grid, kThreadsPerBlock, 0, stream>>>(params, splits);
      break;
    case 5:
      GroupedAttentionKernel<5, E><<<grid, kThreadsPerBlock, 0, stream>>>(params, splits);
      break;
    case 6:
      GroupedAttentionKernel<6, E><<<grid, kThreadsPerBlock, 0, stream>>>(params, splits);
      break;
    case 7:
      GroupedAttentionKernel<7, E><<<grid, kThreadsPerBlock, 0, stream>>>(params, splits);
      break;
    default:
      GroupedAttentionKernel<8, E><<<grid, kThreadsPerBlock, 0, stream>>>(params, splits);
      break;
  }
}

// --- Tiled prefill attention ---
//
// One block per (tile, KV head): a tile is up to kTileRows (token, query head) rows, the
// tile's tokens consecutive tokens of one sequence and the heads the KV head's group. The
// block walks the keys up to the tile's last position kTileKeys at a time, loading each key
// and value tile into shared memory once for all its rows (instead of once per token and
// head), computing the tile of scores, an online softmax per row, and the rows' weighted
// values. Used for prefill chunks of at least kTiledMinTokens tokens and head_dim up to
// kTiledMaxHeadDim. An FP8 cache's codes go into the BF16 tiles as they are (exactly), their
// scales multiplying the scores and the weights of the values.
constexpr int kTileRows = 32;
constexpr int kTileKeys = 32;
constexpr int kTiledThreads = 128;
constexpr int kTiledOutputs = kTileRows * kTiledMaxHeadDim / kTiledThreads;

__global__ void __launch_bounds__(kTiledThreads)
    TiledPrefillAttentionKernel(PagedAttentionParams p, int group) {
  const int32_t first = p.tiles[2 * blockIdx.x];
  const int32_t count = p.tiles[2 * blockIdx.x + 1];
  const int64_t kv_head = blockIdx.y;
  const int64_t d = p.head_dim;
  const int rows = count * group;
  const int32_t* table = p.block_tables + p.table_offsets[p.token_sequence[first]];
  const int64_t last_position = p.positions[first + count - 1];
  const bool fp8 = IsFp8(p.cache);

  __shared__ float q_tile[kTileRows][kTiledMaxHeadDim];
  __shared__ uint16_t k_tile[kTileKeys][kTiledMaxHeadDim + 2];  // +2: no bank conflicts.
  __shared__ uint16_t v_tile[kTileKeys][kTiledMaxHeadDim];
  __shared__ float key_scale[kTileKeys];
  __shared__ float value_scale[kTileKeys];
  __shared__ float scores[kTileRows][kTileKeys + 1];
  __shared__ float row_max[kTileRows];
  __shared__ float row_sum[kTileRows];
  __shared__ float row_scale[kTileRows];
  __shared__ int64_t row_position[kTileRows];

  // Row r: token first + r / group, query head kv_head · group + r % group.
  for (int64_t i = threadIdx.x; i < rows * d; i += blockDim.x) {
    const int64_t r = i / d;
    const int64_t head = kv_head * group + r % group;
    q_tile[r][i % d] = p.q[((first + r / group) * p.num_heads + head) * d + i % d];
  }
  if (threadIdx.x < kTileRows) {
    row_max[threadIdx.x] = -INFINITY;
    row_sum[threadIdx.x] = 0.0f;
    row_position[threadIdx.x] =
        static_cast<int>(threadIdx.x) < rows ? p.positions[first + threadIdx.x / group] : -1;
  }
  float accumulator[kTiledOutputs];
#pragma unroll
  for (int i = 0; i < kTiledOutputs; ++i) accumulator[i] = 0.0f;

  for (int64_t key_start = 0; key_start <= last_position; key_start += kTileKeys) {
    const int64_t num_keys =
        last_position + 1 - key_start < kTileKeys ? last_position + 1 - key_start : kTileKeys;
    __syncthreads();  // The previous tile's keys, values and scores are used up.
    for (int64_t i = threadIdx.x; i < num_keys * d; i += blockDim.x) {
      const int64_t j = i / d;
      const int64_t c = i % d;
      const int64_t key_position = key_start + j;
      const int64_t head = CacheRowAt(p, table, key_position, kv_head);
      if (fp8) {
        k_tile[j][c] = Fp8ToBf16Bits(p.cache.key_codes[head * d + c]);
        v_tile[j][c] = Fp8ToBf16Bits(p.cache.value_codes[head * d + c]);
        if (c == 0) {
          key_scale[j] = p.cache.key_scales[head];
          value_scale[j] = p.cache.value_scales[head];
        }
      } else {
        k_tile[j][c] = p.cache.keys[head * d + c];
        v_tile[j][c] = p.cache.values[head * d + c];
        if (c == 0) key_scale[j] = value_scale[j] = 1.0f;
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < kTileRows * kTileKeys; i += blockDim.x) {
      const int r = i / kTileKeys;
      const int j = i % kTileKeys;
      float score = -INFINITY;
      if (r < rows && j < num_keys && key_start + j <= row_position[r]) {
        float dot = 0.0f;
        for (int64_t c = 0; c < d; ++c) dot += q_tile[r][c] * Bf16BitsToFloat(k_tile[j][c]);
        score = dot * key_scale[j] * p.scale;
      }
      scores[r][j] = score;
    }
    __syncthreads();
    if (threadIdx.x < kTileRows && static_cast<int>(threadIdx.x) < rows) {
      const int r = threadIdx.x;
      float tile_max = -INFINITY;
      for (int j = 0; j < num_keys; ++j) tile_max = fmaxf(tile_max, scores[r][j]);
      const float new_max = fmaxf(row_max[r], tile_max);
      // Key 0 is in every row's past, so new_max is finite from the first tile on.
      const float scale = expf(row_max[r] - new_max);
      float sum = 0.0f;
      for (int j = 0; j < num_keys; ++j) {
        const float weight = expf(scores[r][j] - new_max);  // 0 for masked keys.
        scores[r][j] = weight;
        sum += weight;
      }
      row_sum[r] = row_sum[r] * scale + sum;
      row_max[r] = new_max;
      row_scale[r] = scale;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kTiledOutputs; ++i) {
      const int64_t o = threadIdx.x + static_cast<int64_t>(i) * kTiledThreads;
      const int64_t r = o / d;
      if (r >= rows) continue;
      const int64_t c = o % d;
      float sum = accumulator[i] * row_scale[r];
      for (int j = 0; j < num_keys; ++j)
        sum += scores[r][j] * value_scale[j] * Bf16BitsToFloat(v_tile[j][c]);
      accumulator[i] = sum;
    }
  }
#pragma unroll
  for (int i = 0; i < kTiledOutputs; ++i) {
    const int64_t o = threadIdx.x + static_cast<int64_t>(i) * kTiledThreads;
    const int64_t r = o / d;
    if (r >= rows) continue;
    const int64_t head = kv_head * group + r % group;
    StoreOutput(p, ((first + r / group) * p.num_heads + head) * d + o % d,
                accumulator[i] / row_sum[r]);
  }
}

// --- Tensor-core prefill attention ---
//
// The tiled prefill above on tensor cores, FlashAttention-2 style, for head_dim a multiple
// of 16 up to 128: a block of 4 warps takes a tile of up to 128 (token, query head) rows, 32
// per warp as two 16-row A operands of mma.m16n8k16 (kHalves = 2; on GPUs whose
// multiprocessors cannot hold two such blocks, 64 rows, one half a warp), and walks the keys
// kFaKeys at a time in one pass. The rows' queries (as BF16) and each key and value tile sit in
// shared memory and come into registers with ldmatrix, in the fragment layouts PTX documents for
// mma.m16n8k16, so that a lane knows which rows (g = lane / 4 and g + 8 of each half) its
// values belong to; the output stays in float accumulators in registers. Per key tile a warp
// computes the scores S = Q·Kᵀ (mma), takes each row's max over the 4 lanes that share the
// row, rescales its output and running sum by exp(old max − new max), turns exp(S − max) into
// BF16 A fragments in registers (the layout of S's accumulators is that of A's operand) and
// adds P·V (mma). Key and value tiles are copied with cp.async, the next while the current
// one is computed, the block table read once per key.
//
// Why 32 rows a warp and ldmatrix: each key or value fragment a warp reads from shared memory
// serves both of its halves, two mma instead of one, and ldmatrix reads a value fragment's
// transpose in one instruction where 16-bit loads took four. Counted per 64 rows and key tile
// (4 warps), the 16-row form read 192 KB of shared memory for 512 mma (1,536 wavefronts of
// 128 bytes, 1,024 of them for the values' 16-bit loads) where the tensor cores need ~770
// cycles for the mma: by that count shared memory, not the tensor cores, bounded it (run 4's
// profile put 8k tokens' attention at ~120 TFLOP/s; run 6: 41.7% MFU at 8k). This form reads
// 640 wavefronts (queries included) and writes 128 per 64 rows for the same 512 mma; the
// 64-row form (one half a warp) reads 1,152.
constexpr int kFaKeys = 64;
constexpr int kFaThreads = 128;
constexpr int kFaLd = static_cast<int>(kTiledMaxHeadDim) + 8;       // BF16 row stride, padded.
constexpr int kFaChunks = static_cast<int>(kTiledMaxHeadDim) / 16;  // Of the head, in k.
// Rows of a tile whose warps take `halves` 16-row halves each.
__host__ __device__ constexpr int FaRows(int halves) {
  return 16 * halves * (kFaThreads / kWarpSize);
}
// ldmatrix takes 16-byte rows at 16-byte boundaries; kFaLd's 272 bytes also put the 8 rows of
// a matrix on 8 different 16-byte bank groups (no conflicts).
static_assert(kFaLd * 2 % 16 == 0 && kFaLd * 2 / 16 % 2 == 1);

bool TensorCoreAttention(int64_t head_dim) {
  return head_dim % 16 == 0;
}

// d += a·b: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (sm_80 and later).
__device__ __forceinline__ void MmaBf16(float (&d)[4], const uint32_t (&a)[4],
                                        const uint32_t (&b)[2]) {
#ifdef INFERBOX_CUDA_EMULATED
  ::cuda_emu::MmaM16n8k16Bf16(d, a, b);  // Inline PTX cannot run on the CPU emulation.
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// The same with FP16 operands: mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32.
__device__ __forceinline__ void MmaF16(float (&d)[4], const uint32_t (&a)[4],
                                       const uint32_t (&b)[2]) {
#ifdef INFERBOX_CUDA_EMULATED
  ::cuda_emu::MmaM16n8k16F16(d, a, b);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// 16 bytes from global to shared memory without passing through registers (cp.async, sm_80
// and later), in the thread's current group of copies; CopyAsyncCommit closes the group and
// CopyAsyncWait<n> waits until at most n of the thread's closed groups are still in flight.
// Another lane sees the copied bytes after CopyAsyncWait and a __syncwarp.
__device__ __forceinline__ void CopyAsync16(void* shared, const void* global) {
#ifdef INFERBOX_CUDA_EMULATED
  std::memcpy(shared, global, 16);  // At once: the emulation has no copies in flight.
#else
  const auto address = static_cast<uint32_t>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(address), "l"(global));
#endif
}
__device__ __forceinline__ void CopyAsyncCommit() {
#ifndef INFERBOX_CUDA_EMULATED
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// 4 bytes (cp.async.ca: the 16-byte form only bypasses L1), as CopyAsync16.
__device__ __forceinline__ void CopyAsync4(void* shared, const void* global) {
#ifdef INFERBOX_CUDA_EMULATED
  std::memcpy(shared, global, 4);
#else
  const auto address = static_cast<uint32_t>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(address), "l"(global));
#endif
}
template <int N>
__device__ __forceinline__ void CopyAsyncWait() {
#ifndef INFERBOX_CUDA_EMULATED
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Four 8×8 matrices of 16-bit elements from shared memory (ldmatrix.sync.aligned.m8n8.x4,
// .trans with kTranspose), lane l giving the address of row l % 8 of matrix l / 8 (16 bytes,
// 16-byte aligned). With g = lane / 4 and t = lane % 4, r[i] receives matrix i's [g][2t, 2t+1]
// (the lower half first), or transposed its [2t][g] and [2t+1][g]: an A or B fragment's
// register of mma.m16n8k16 each.
template <bool kTranspose>
__device__ __forceinline__ void LoadMatrices(uint32_t (&r)[4], const void* row) {
#ifdef INFERBOX_CUDA_EMULATED
  ::cuda_emu::LoadMatricesX4(r, row, kTranspose);
#else
  const auto address = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  if constexpr (kTranspose) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
  }
#endif
}

// The row of a BF16 tile in shared memory (rows kFaLd apart) that this lane gives ldmatrix
// for the four 8×8 matrices at rows first_row + (0 or 8) and columns first_column + (0 or 8):
// matrix i at rows + 8·(i % 2) and columns + 8·(i / 2) with `rows_first` (A's order: r = a[0..3]
// of rows first_row .. + 16, k first_column .. + 16; for values, transposed, b[0..1] of head
// elements first_column .. + 8 and then b[0..1] of the next 8), else at rows + 8·(i / 2) and
// columns + 8·(i % 2) (keys: b[0..1] of keys first_row .. + 8, then of the next 8).
template <bool kRowsFirst>
__device__ __forceinline__ const uint16_t* MatrixRow(const uint16_t* tile, int first_row,
                                                     int first_column, int lane) {
  const int matrix = lane / 8;
  const int row = first_row + lane % 8 + 8 * (kRowsFirst ? matrix % 2 : matrix / 2);
  const int column = first_column + 8 * (kRowsFirst ? matrix / 2 : matrix % 2);
  return tile + row * kFaLd + column;
}

// Two floats as BF16 (round to nearest even) in one register, the first in the lower half.
__device__ __forceinline__ uint32_t PackBf16(float low, float high) {
  return static_cast<uint32_t>(FloatToBf16Bits(low)) | static_cast<uint32_t>(FloatToBf16Bits(high))
                                                           << 16;
}

// B fragments of mma.m16n8k16 from BF16 tiles in shared memory (a key or value per row, row
// stride kFaLd) for the lane with g = lane / 4, t = lane % 4. Kᵀ: keys first_key .. + 8 are
// B's columns, head elements first .. + 16 its k.
__device__ __forceinline__ void KeyFragment(const uint16_t* tile, int first_key, int first, int g,
                                            int t, uint32_t (&b)[2]) {
  const uint16_t* key = tile + (first_key + g) * kFaLd + first + 2 * t;
  b[0] = *reinterpret_cast<const uint32_t*>(key);
  b[1] = *reinterpret_cast<const uint32_t*>(key + 8);
}

// V: keys first_key .. + 16 are B's k, head elements first .. + 8 its columns.
__device__ __forceinline__ void ValueFragment(const uint16_t* tile, int first_key, int first, int g,
                                              int t, uint32_t (&b)[2]) {
  const uint16_t* value = tile + (first_key + 2 * t) * kFaLd + first + g;
  b[0] = static_cast<uint32_t>(value[0]) | static_cast<uint32_t>(value[kFaLd]) << 16;
  b[1] = static_cast<uint32_t>(value[8 * kFaLd]) | static_cast<uint32_t>(value[9 * kFaLd]) << 16;
}

// The cache row of key position key_start + threadIdx.x for the first kFaKeys threads (−1
// past last_position, and for the other threads).
__device__ __forceinline__ int64_t KeyTileRow(const PagedAttentionParams& p, const int32_t* table,
                                              int64_t key_start, int64_t last_position,
                                              int64_t kv_head) {
  const int64_t key_position = key_start + threadIdx.x;
  return threadIdx.x < kFaKeys && key_position <= last_position
             ? CacheRowAt(p, table, key_position, kv_head)
             : -1;
}

// Starts the copies of 16 bytes (head elements c onwards: 8 BF16 values, or 16 FP8 codes) of
// the key and the value in cache row `row`, from `keys` and `values` (the layer's BF16 cache
// or its codes), into k_target and v_target, in the thread's current group; zeros there for
// row −1 (a key past the end: a zero value times a zero probability adds nothing, garbage
// could be a NaN).
template <typename T>
__device__ __forceinline__ void CopyKeyValueChunk(const PagedAttentionParams& p, const T* keys,
                                                  const T* values, int64_t row, int c, T* k_target,
                                                  T* v_target) {
  if (row >= 0) {
    const int64_t offset = row * p.head_dim + c;
    CopyAsync16(k_target, keys + offset);
    CopyAsync16(v_target, values + offset);
  } else {
    *reinterpret_cast<uint4*>(k_target) = uint4{0, 0, 0, 0};
    *reinterpret_cast<uint4*>(v_target) = uint4{0, 0, 0, 0};
  }
}

// Starts the copies of the key and value cache rows `rows` into k_tile and v_tile, as one
// group of each thread's copies. head_dim is a multiple of 16, so every row starts 16-byte
// aligned in the cache and in the tiles.
__device__ void IssueKeyTile(const PagedAttentionParams& p, const int64_t* rows, uint16_t* k_tile,
                             uint16_t* v_tile) {
  const int chunks = static_cast<int>(p.head_dim / 8);  // 16-byte chunks per row.
  for (int i = threadIdx.x; i < kFaKeys * chunks; i += blockDim.x) {
    const int j = i / chunks;
    const int c = (i % chunks) * 8;
    CopyKeyValueChunk(p, p.cache.keys, p.cache.values, rows[j], c, k_tile + j * kFaLd + c,
                      v_tile + j * kFaLd + c);
  }
  CopyAsyncCommit();
}

// --- FP8 cache tiles (KvCacheDType::kFp8E4M3) ---
// Codes come into shared memory 16 (a 16-byte copy) at a time, rows kFp8Ld bytes apart, with
// each key's two scales (CopyKeyValueChunk, CopyFp8Scales); the kernels turn codes into BF16
// (prefill, Fp8PairToBf16) or FP16 (decode, Fp8PairToF16) exactly and apply the scales to the
// scores (keys) and to the softmax weights (values), so that the tensor cores multiply the codes'
// own values.
constexpr int kFp8Ld = static_cast<int>(kTiledMaxHeadDim) + 16;  // Bytes, padded.

// The key's and the value's scale of cache row `row` (zeros for row −1).
__device__ __forceinline__ void CopyFp8Scales(const PagedAttentionParams& p, int64_t row,
                                              float* k_target, float* v_target) {
  if (row >= 0) {
    CopyAsync4(k_target, p.cache.key_scales + row);
    CopyAsync4(v_target, p.cache.value_scales + row);
  } else {
    *k_target = *v_target = 0.0f;
  }
}

// TensorCorePrefillAttentionKernel's shared memory: the rows' queries as BF16, kFaStages key
// and value tiles (the one computed, the next one copying) and their cache rows, 103 KB (an FP8
// cache: the stages' codes and scales and one BF16 tile of the current codes, 106 KB; two
// blocks fit a multiprocessor): more than a kernel may declare statically (48 KB), so dynamic
// shared memory on the GPU. The CPU emulation has no such limit and no dynamic shared memory:
// a static one there.
constexpr int kFaStages = 2;
template <bool kFp8, int kHalves>
struct PrefillSharedMemory {
  uint16_t queries[FaRows(kHalves) * kFaLd];
  uint16_t keys[kFaStages][kFaKeys * kFaLd];
  uint16_t values[kFaStages][kFaKeys * kFaLd];
  int64_t rows[kFaStages][kFaKeys];
};
template <int kHalves>
struct PrefillSharedMemory<true, kHalves> {
  uint16_t queries[FaRows(kHalves) * kFaLd];
  uint8_t key_codes[kFaStages][kFaKeys * kFp8Ld];
  uint8_t value_codes[kFaStages][kFaKeys * kFp8Ld];
  uint16_t keys[1][kFaKeys * kFaLd];
  uint16_t values[1][kFaKeys * kFaLd];
  float key_scales[kFaStages][kFaKeys];
  float value_scales[kFaStages][kFaKeys];
  int64_t rows[kFaStages][kFaKeys];
};
// The dynamic shared memory a launch asks for to hold `Shared` (the emulation's kernels
// declare theirs statically: none).
template <typename Shared>
constexpr size_t DynamicSharedBytes() {
#ifdef INFERBOX_CUDA_EMULATED
  return 0;
#else
  return sizeof(Shared);
#endif
}

// IssueKeyTile's FP8 form: stage `stage` of the shared memory.
template <int kHalves>
__device__ void IssueFp8KeyTile(const PagedAttentionParams& p, const int64_t* rows,
                                PrefillSharedMemory<true, kHalves>& smem, int stage) {
  const int chunks = static_cast<int>(p.head_dim / 16);  // 16-byte chunks per row.
  for (int i = threadIdx.x; i < kFaKeys * chunks; i += blockDim.x) {
    const int j = i / chunks;
    const int c = (i % chunks) * 16;
    CopyKeyValueChunk(p, p.cache.key_codes, p.cache.value_codes, rows[j], c,
                      smem.key_codes[stage] + j * kFp8Ld + c,
                      smem.value_codes[stage] + j * kFp8Ld + c);
  }
  for (int j = threadIdx.x; j < kFaKeys; j += blockDim.x) {
    CopyFp8Scales(p, rows[j], &smem.key_scales[stage][j], &smem.value_scales[stage][j]);
  }
  CopyAsyncCommit();
}

// Four codes (a 32-bit word, the first in the lowest byte) as BF16 into `target`.
__device__ __forceinline__ void Fp8QuadToBf16(uint32_t codes, uint16_t* target) {
  *reinterpret_cast<uint2*>(target) = uint2{Fp8PairToBf16(codes & 0xFFu, (codes >> 8) & 0xFFu),
                                            Fp8PairToBf16((codes >> 16) & 0xFFu, codes >> 24)};
}

template <bool kFp8, int kHalves>
__device__ __forceinline__ void IssuePrefillTile(const PagedAttentionParams& p,
                                                 PrefillSharedMemory<kFp8, kHalves>& smem,
                                                 int stage) {
  if constexpr (kFp8) {
    IssueFp8KeyTile(p, smem.rows[stage], smem, stage);
  } else {
    IssueKeyTile(p, smem.rows[stage], smem.keys[stage], smem.values[stage]);
  }
}

// Two blocks per multiprocessor (shared memory allows two of the 128-row form on Hopper): at
// most 255 registers a thread, of which the output's accumulators take 128 and a key tile's
// scores 64 (with two halves).
template <bool kFp8, int kHalves>
__global__ void __launch_bounds__(kFaThreads, 2)
    TensorCorePrefillAttentionKernel(PagedAttentionParams p, int group) {
  using Shared = PrefillSharedMemory<kFp8, kHalves>;
#ifdef INFERBOX_CUDA_EMULATED
  __shared__ __align__(16) Shared smem;
#else
  extern __shared__ __align__(16) uint8_t dynamic_shared[];
  Shared& smem = *reinterpret_cast<Shared*>(dynamic_shared);
#endif

  // The last tiles first, every KV head's (blocks start in order, x first): a sequence's later
  // tiles see more keys, and the short ones fill the end of the launch.
  const unsigned tile_index = gridDim.y - 1 - blockIdx.y;
  const int32_t first = p.tiles[2 * tile_index];
  const int32_t count = p.tiles[2 * tile_index + 1];
  const int64_t kv_head = blockIdx.x;
  const int d = static_cast<int>(p.head_dim);
  const int chunks = d / 16;
  const int rows = count * group;
  const int32_t* table = p.block_tables + p.table_offsets[p.token_sequence[first]];
  const int64_t last_position = p.positions[first + count - 1];
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int g = lane / 4;
  const int t = lane % 4;

  // The queries of row r (token first + r / group, query head kv_head · group + r % group) as
  // BF16 in shared memory, zeros for the padding rows past `rows`.
  for (int i = threadIdx.x; i < FaRows(kHalves) * d / 2; i += blockDim.x) {
    const int row = i / (d / 2);
    const int column = 2 * (i % (d / 2));
    uint32_t pair = 0u;
    if (row < rows) {
      const float* source =
          p.q + ((first + row / group) * p.num_heads + kv_head * group + row % group) * d + column;
      pair = PackBf16(source[0], source[1]);
    }
    *reinterpret_cast<uint32_t*>(smem.queries + row * kFaLd + column) = pair;
  }
  // This lane's rows: warp·16·kHalves + h·16 + g + 8·i for the halves h and i = 0, 1; a
  // padding row sees no key (position −1). Positions fit 32 bits (no cache holds 2³¹ tokens).
  const int warp_row = warp * 16 * kHalves;
  int32_t position[kHalves][2];
#pragma unroll
  for (int h = 0; h < kHalves; ++h) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = warp_row + h * 16 + g + 8 * i;
      position[h][i] = row < rows ? static_cast<int32_t>(p.positions[first + row / group]) : -1;
    }
  }
  // A warp whose rows are all padding copies its share of the tiles and computes nothing; nor
  // does one whose rows' positions are all before a key tile (rows go in token order).
  const bool computes = warp_row < rows;
  const int last_row = (warp_row + 16 * kHalves < rows ? warp_row + 16 * kHalves : rows) - 1;
  const int32_t warp_last_position =
      computes ? static_cast<int32_t>(p.positions[first + last_row / group]) : -1;
  // Scores in log2 units, so that exp2f does the exponentials.
  const float scale = p.scale * 1.4426950408889634f;
  float running_max[kHalves][2];
  float running_sum[kHalves][2];  // This lane's columns only; the 4 lanes summed at the end.
  float out[kHalves][kFaChunks * 2][4];
#pragma unroll
  for (int h = 0; h < kHalves; ++h) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      running_max[h][i] = -INFINITY;
      running_sum[h][i] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kFaChunks * 2; ++j) {
      out[h][j][0] = out[h][j][1] = out[h][j][2] = out[h][j][3] = 0.0f;
    }
  }

  // A pipeline of key tiles: tile n + 1 copies (cp.async) while tile n is computed. The
  // first kFaKeys threads write the cache rows of tile n + 2 while tile n + 1 copies, from a
  // register loaded an iteration earlier, so that no block-table read stalls the block.
  const int num_tiles = static_cast<int>(last_position / kFaKeys + 1);
  if (threadIdx.x < kFaKeys) {
    smem.rows[0][threadIdx.x] = KeyTileRow(p, table, 0, last_position, kv_head);
    smem.rows[1][threadIdx.x] = KeyTileRow(p, table, kFaKeys, last_position, kv_head);
  }
  int64_t ahead_row = KeyTileRow(p, table, 2 * kFaKeys, last_position, kv_head);
  __syncthreads();
  IssuePrefillTile<kFp8, kHalves>(p, smem, 0);

  for (int tile = 0; tile < num_tiles; ++tile) {
    const int stage = tile % kFaStages;
    const int other = 1 - stage;
    const int key_start = tile * kFaKeys;
    // Every thread is done with the other stage (the previous tile) and its rows, and the
    // next tile's rows are visible: the next tile into it.
    __syncthreads();
    if (tile + 1 < num_tiles) {
      IssuePrefillTile<kFp8, kHalves>(p, smem, other);
    } else {
      CopyAsyncCommit();  // An empty group: the wait below always leaves one behind.
    }
    // This tile's rows were read when it was issued: the rows of the tile after next.
    if (threadIdx.x < kFaKeys) smem.rows[stage][threadIdx.x] = ahead_row;
    ahead_row =
        KeyTileRow(p, table, static_cast<int64_t>(tile + 3) * kFaKeys, last_position, kv_head);
    CopyAsyncWait<1>();  // This thread's copies of this tile,
    __syncthreads();     // and every thread's (and the queries, the first time).
    if constexpr (kFp8) {
      // The codes into the one BF16 tile (every thread is past the previous tile's use of it).
      const int quads = d / 4;
      for (int i = threadIdx.x; i < kFaKeys * quads; i += blockDim.x) {
        const int j = i / quads;
        const int c = (i % quads) * 4;
        Fp8QuadToBf16(*reinterpret_cast<const uint32_t*>(smem.key_codes[stage] + j * kFp8Ld + c),
                      smem.keys[0] + j * kFaLd + c);
        Fp8QuadToBf16(*reinterpret_cast<const uint32_t*>(smem.value_codes[stage] + j * kFp8Ld + c),
                      smem.values[0] + j * kFaLd + c);
      }
      __syncthreads();
    }
    if (key_start > warp_last_position) continue;
    const uint16_t* k_tile = smem.keys[kFp8 ? 0 : stage];
    const uint16_t* v_tile = smem.values[kFp8 ? 0 : stage];

    // S = Q·Kᵀ, 8 keys per accumulator: s[h][n] holds keys n·8 + 2t, + 1 of rows g and g + 8
    // of half h. Each chunk of 16 head elements: both halves' queries, then keys 16 at a time.
    float s[kHalves][kFaKeys / 8][4];
#pragma unroll
    for (int h = 0; h < kHalves; ++h) {
#pragma unroll
      for (int n = 0; n < kFaKeys / 8; ++n)
        s[h][n][0] = s[h][n][1] = s[h][n][2] = s[h][n][3] = 0.0f;
    }
#pragma unroll
    for (int c = 0; c < kFaChunks; ++c) {
      if (c >= chunks) break;
      uint32_t a[kHalves][4];
#pragma unroll
      for (int h = 0; h < kHalves; ++h) {
        LoadMatrices<false>(a[h], MatrixRow<true>(smem.queries, warp_row + h * 16, c * 16, lane));
      }
#pragma unroll
      for (int n = 0; n < kFaKeys / 8; n += 2) {
        uint32_t b[4];  // Keys n·8 .. + 8, then the next 8.
        LoadMatrices<false>(b, MatrixRow<false>(k_tile, n * 8, c * 16, lane));
        const uint32_t b_first[2] = {b[0], b[1]};
        const uint32_t b_second[2] = {b[2], b[3]};
#pragma unroll
        for (int h = 0; h < kHalves; ++h) {
          MmaBf16(s[h][n], a[h], b_first);
          MmaBf16(s[h][n + 1], a[h], b_second);
        }
      }
    }
    // Causal mask (and keys past the tile's end) and the rows' new max over their 4 lanes.
    uint32_t probabilities[kHalves][kFaKeys / 16][4];
#pragma unroll
    for (int h = 0; h < kHalves; ++h) {
      float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < kFaKeys / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = n * 8 + 2 * t + e % 2;
          const int i = e / 2;
          float score = s[h][n][e] * scale;
          if constexpr (kFp8) score *= smem.key_scales[stage][key];
          s[h][n][e] = key_start + key <= position[h][i] ? score : -INFINITY;
          tile_max[i] = fmaxf(tile_max[i], s[h][n][e]);
        }
      }
      float base[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 1));
        tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 2));
        const float new_max = fmaxf(running_max[h][i], tile_max[i]);
        // A row that has seen no key yet keeps max −inf, sum and output 0 (base 0 avoids
        // −inf − −inf).
        base[i] = new_max == -INFINITY ? 0.0f : new_max;
        const float correction = exp2f(running_max[h][i] - base[i]);
        running_max[h][i] = new_max;
        running_sum[h][i] *= correction;
#pragma unroll
        for (int j = 0; j < kFaChunks * 2; ++j) {
          out[h][j][2 * i] *= correction;
          out[h][j][2 * i + 1] *= correction;
        }
      }
      // P = exp2(S − max) as A fragments over 16 keys each: s[h][2k] and s[h][2k + 1] are
      // exactly the halves of A's layout.
#pragma unroll
      for (int k = 0; k < kFaKeys / 16; ++k) {
        float e[2][4];
#pragma unroll
        for (int x = 0; x < 2; ++x) {
#pragma unroll
          for (int y = 0; y < 4; ++y) {
            e[x][y] = exp2f(s[h][2 * k + x][y] - base[y / 2]);
            running_sum[h][y / 2] += e[x][y];
            if constexpr (kFp8) {
              e[x][y] *= smem.value_scales[stage][(2 * k + x) * 8 + 2 * t + y % 2];
            }
          }
        }
        probabilities[h][k][0] = PackBf16(e[0][0], e[0][1]);
        probabilities[h][k][1] = PackBf16(e[0][2], e[0][3]);
        probabilities[h][k][2] = PackBf16(e[1][0], e[1][1]);
        probabilities[h][k][3] = PackBf16(e[1][2], e[1][3]);
      }
    }
    // O += P·V, 8 head elements per accumulator, 16 at a time from one transposed load.
#pragma unroll
    for (int j = 0; j < kFaChunks * 2; j += 2) {
      if (j >= 2 * chunks) break;
#pragma unroll
      for (int k = 0; k < kFaKeys / 16; ++k) {
        uint32_t b[4];  // Head elements j·8 .. + 8, then the next 8.
        LoadMatrices<true>(b, MatrixRow<true>(v_tile, k * 16, j * 8, lane));
        const uint32_t b_first[2] = {b[0], b[1]};
        const uint32_t b_second[2] = {b[2], b[3]};
#pragma unroll
        for (int h = 0; h < kHalves; ++h) {
          MmaBf16(out[h][j], probabilities[h][k], b_first);
          MmaBf16(out[h][j + 1], probabilities[h][k], b_second);
        }
      }
    }
  }
  if (!computes) return;
    // Each row's sum over its 4 lanes; the output divided by it (a padding row writes nothing).
#pragma unroll
  for (int h = 0; h < kHalves; ++h) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float sum = running_sum[h][i];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int row = warp_row + h * 16 + g + 8 * i;
      if (row >= rows) continue;
      const int64_t target =
          ((first + row / group) * p.num_heads + kv_head * group + row % group) * d + 2 * t;
      const float inverse = 1.0f / sum;
#pragma unroll
      for (int j = 0; j < kFaChunks * 2; ++j) {
        if (j >= 2 * chunks) break;
        StoreOutput(p, target + j * 8, out[h][j][2 * i] * inverse);
        StoreOutput(p, target + j * 8 + 1, out[h][j][2 * i + 1] * inverse);
      }
    }
  }
}

// --- Tensor-core decode attention ---
//
// The per-token attention (decodes, short chunks) on tensor cores, for head_dim a multiple of
// 16 up to 128 and up to 8 query heads per KV head: one warp per (token, KV head, split), its
// group's query heads the rows of mma.m16n8k16 fragments (rows past the group are zeros).
// Decode reads every key and value once and does little arithmetic with each, so its speed is
// how many bytes each warp keeps in flight: keys and values come kDecodeKeys at a time into
// the warp's own shared-memory tiles with cp.async (16 bytes per copy, no registers held),
// two tiles per warp, the next one in flight while the current one is computed, and the
// block-table entries of the tile after that read ahead into a register. Scores, online
// softmax and P·V as in the prefill kernel above. To keep decode as exact as the float32
// kernels, each BF16 operand that is not BF16 already (the float32 query, the probabilities)
// goes in as a high and a low BF16 part, two mma each: the products are then exact to about
// 2⁻¹⁶ instead of 2⁻⁸ (the keys and values are BF16 in the cache).

// value = high + low, both BF16 (the rest, below 2⁻¹⁶ relative, is dropped).
__device__ __forceinline__ void SplitBf16(float value, uint16_t& high, uint16_t& low) {
  high = FloatToBf16Bits(value);
  low = FloatToBf16Bits(value - Bf16BitsToFloat(high));
}

// Two values' high parts in one register and their low parts in another.
__device__ __forceinline__ void PackSplit(float first, float second, uint32_t& high,
                                          uint32_t& low) {
  uint16_t h0, l0, h1, l1;
  SplitBf16(first, h0, l0);
  SplitBf16(second, h1, l1);
  high = static_cast<uint32_t>(h0) | static_cast<uint32_t>(h1) << 16;
  low = static_cast<uint32_t>(l0) | static_cast<uint32_t>(l1) << 16;
}

// PackSplit in FP16 (11 significant bits a part: about 2⁻²² together for values near 1, the
// range the FP8 path scales its operands into).
__device__ __forceinline__ void PackSplitF16(float first, float second, uint32_t& high,
                                             uint32_t& low) {
  const __half h0 = __float2half_rn(first);
  const __half h1 = __float2half_rn(second);
  const __half l0 = __float2half_rn(first - __half2float(h0));
  const __half l1 = __float2half_rn(second - __half2float(h1));
  high = static_cast<uint32_t>(__half_as_ushort(h0)) | static_cast<uint32_t>(__half_as_ushort(h1))
                                                           << 16;
  low = static_cast<uint32_t>(__half_as_ushort(l0)) | static_cast<uint32_t>(__half_as_ushort(l1))
                                                          << 16;
}

// The cache row of key position key_start + lane of one KV head for lanes below kDecodeKeys
// (−1 at or past end and for the other lanes).
// Rows fit 31 bits (the cache's allocation checks it), so that a lane holds one in one register.
__device__ __forceinline__ int32_t DecodeKeyRow(const PagedAttentionParams& p, const int32_t* table,
                                                int64_t key_start, int64_t end, int lane,
                                                int64_t kv_head) {
  const int64_t key_position = key_start + lane;
  return lane < kDecodeKeys && key_position < end
             ? static_cast<int32_t>(CacheRowAt(p, table, key_position, kv_head))
             : -1;
}

// Warps per block, and tiles per warp (stages): the one computed and the rest in flight. With
// two stages six blocks (12 warps) fit a multiprocessor, held there by the kernel's launch
// bounds (at most 168 registers a thread): its speed is the bytes its warps keep in flight,
// and when the FP8 cache's branches took the BF16 form to 179 registers, 5 blocks fit and it
// read the cache 20% slower at 256 sequences (H200, 2026-11-27). (On an H200, one warp of 4
// stages per block read the cache at 38–47% of the copy bandwidth where this form reads it at
// 62–79%.) Three or four stages (inferbox-attention-bench's --decode-stages) measured slower
// over both caches in run 7 (H200, 2026-11-28): more shared memory means fewer blocks (BF16: 4
// with 3 stages, 3 with 4), and the FP8 cache, 6 blocks at any depth, did not gain either.
constexpr int kDecodeWarps = 2;
constexpr int kDecodeStages = 2;  // The default, as measured.
constexpr int kDecodeBlocksPerMultiprocessor = 6;

// The decode kernel's tiles, [warp][stage][keys, values]: BF16, or FP8 codes with each key's
// scales.
template <bool kFp8, int kStages>
struct DecodeTiles {
  uint16_t kv[kDecodeWarps][kStages][2][kDecodeKeys * kFaLd];
};
template <int kStages>
struct DecodeTiles<true, kStages> {
  uint8_t kv[kDecodeWarps][kStages][2][kDecodeKeys * kFp8Ld];
  float scales[kDecodeWarps][kStages][2][kDecodeKeys];
};
// The decode kernel's shared memory: its tiles and, for an FP8 cache read by ldmatrix, the
// current tile's value codes as FP16 (one tile a warp). In dynamic shared memory (three BF16
// stages pass the 48 KB of a static array). (The tiles' type does not depend on kLdmatrix, so
// that both forms share IssueDecodeTile; two instantiations with the same code would be one
// function to GCC's identical-code folding, and its bounds check would then see one form's
// tiles as the other's.)
template <bool kFp8, int kStages, bool kLdmatrix>
struct DecodeShared {
  DecodeTiles<kFp8, kStages> tiles;
};
template <int kStages>
struct DecodeShared<true, kStages, true> {
  DecodeTiles<true, kStages> tiles;
  uint16_t values[kDecodeWarps][kDecodeKeys * kFaLd];
};

// Starts the copies of one tile's keys and values (lane j < kDecodeKeys holding key j's cache
// row) into the warp's tiles of `stage`, as one group.
template <bool kFp8, int kStages>
__device__ __forceinline__ void IssueDecodeTile(const PagedAttentionParams& p, int32_t row,
                                                int lane, DecodeTiles<kFp8, kStages>& tiles,
                                                int warp, int stage) {
  // Chunks of 16 bytes per key row; every lane takes part in each shuffle.
  if constexpr (kFp8) {
    // head_dim / 16 chunks a row: kDecodeKeys rows may not fill whole rounds of the warp.
    const int row_chunks = static_cast<int>(p.head_dim / 16);
    const int chunks = kDecodeKeys * row_chunks;
    for (int round = 0; round < chunks; round += kWarpSize) {
      const int i = round + lane;
      const int j = (i < chunks ? i : chunks - 1) / row_chunks;
      const int32_t key_row = __shfl_sync(0xffffffffu, row, j);
      if (i >= chunks) continue;
      const int c = (i % row_chunks) * 16;
      CopyKeyValueChunk(p, p.cache.key_codes, p.cache.value_codes, key_row, c,
                        tiles.kv[warp][stage][0] + j * kFp8Ld + c,
                        tiles.kv[warp][stage][1] + j * kFp8Ld + c);
    }
  } else {
    // head_dim / 8 chunks a row, an even number: kDecodeKeys (16) rows are whole rounds. This
    // plain loop is the form run 4 measured; the rounds' form above costs the BF16 kernel
    // spills at 168 registers (ptxas: 32 bytes against 16).
    static_assert(kDecodeKeys * 2 % kWarpSize == 0);
    const int row_chunks = static_cast<int>(p.head_dim / 8);
    for (int i = lane; i < kDecodeKeys * row_chunks; i += kWarpSize) {
      const int j = i / row_chunks;
      const int32_t key_row = __shfl_sync(0xffffffffu, row, j);
      const int c = (i % row_chunks) * 8;
      CopyKeyValueChunk(p, p.cache.keys, p.cache.values, key_row, c,
                        tiles.kv[warp][stage][0] + j * kFaLd + c,
                        tiles.kv[warp][stage][1] + j * kFaLd + c);
    }
  }
  if constexpr (kFp8) {
    if (lane < kDecodeKeys) {
      CopyFp8Scales(p, row, &tiles.scales[warp][stage][0][lane],
                    &tiles.scales[warp][stage][1][lane]);
    }
  }
  CopyAsyncCommit();
}

// Two FP8 E4M3 codes (the first in the lowest byte of `pair`, the second in the next) as FP16
// in one register, the first in the lower half, exactly kFp8F16Unit times their values: every
// E4M3 value, subnormals included, is an FP16 value. From compute capability 8.9 on (and in
// the CPU emulation) CUDA's own conversion, one cvt.rn.f16x2.e4m3x2 a pair, unit 1 (a NaN
// code gives a NaN; the quantiser gives a head holding a NaN a NaN scale, which carries it
// either way). Before 8.9, where CUDA's conversion is a branchy routine a byte, the codes'
// exponent and mantissa bits placed as FP16's (bias 15 against 7): 2⁻⁸ of the values, unit
// 256, a PRMT, shifts and LOP3s a pair (a NaN code reads as 1.875 · 2⁻⁸).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
constexpr float kFp8F16Unit = 256.0f;
__device__ __forceinline__ uint32_t Fp8PairToF16(uint32_t pair) {
  const uint32_t spread = (pair & 0xFFu) | ((pair & 0xFF00u) << 8);
  return ((spread & 0x007F007Fu) << 7) | ((spread & 0x00800080u) << 8);
}
#else
constexpr float kFp8F16Unit = 1.0f;
__device__ __forceinline__ uint32_t Fp8PairToF16(uint32_t pair) {
  const __half2_raw halves =
      __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(pair & 0xFFFFu), __NV_E4M3);
  return static_cast<uint32_t>(halves.x) | static_cast<uint32_t>(halves.y) << 16;
}
#endif

// KeyFragment and ValueFragment from FP8 codes (rows kFp8Ld bytes apart), as FP16
// (Fp8PairToF16).
__device__ __forceinline__ void Fp8KeyFragment(const uint8_t* tile, int first_key, int first, int g,
                                               int t, uint32_t (&b)[2]) {
  const uint8_t* key = tile + (first_key + g) * kFp8Ld + first + 2 * t;
  b[0] = Fp8PairToF16(*reinterpret_cast<const uint16_t*>(key));
  b[1] = Fp8PairToF16(*reinterpret_cast<const uint16_t*>(key + 8));
}
__device__ __forceinline__ void Fp8ValueFragment(const uint8_t* tile, int first_key, int first,
                                                 int g, int t, uint32_t (&b)[2]) {
  const uint8_t* value = tile + (first_key + 2 * t) * kFp8Ld + first + g;
  b[0] = Fp8PairToF16(value[0] | static_cast<uint32_t>(value[kFp8Ld]) << 8);
  b[1] = Fp8PairToF16(value[8 * kFp8Ld] | static_cast<uint32_t>(value[9 * kFp8Ld]) << 8);
}

// An FP8 value tile's codes (rows kFp8Ld bytes apart) as FP16 (Fp8PairToF16) into `target`
// (rows kFaLd apart), 8 codes a lane at a time (consecutive lanes' 8-byte reads and 16-byte
// writes: no bank conflicts), for ldmatrix; the warp's lanes see all of it after a __syncwarp.
__device__ __forceinline__ void Fp8ValueTileToF16(const uint8_t* codes, uint16_t* target, int d,
                                                  int lane) {
  const int row_pieces = d / 8;
  for (int i = lane; i < kDecodeKeys * row_pieces; i += kWarpSize) {
    const int j = i / row_pieces;
    const int c = (i % row_pieces) * 8;
    const uint2 v = *reinterpret_cast<const uint2*>(codes + j * kFp8Ld + c);
    *reinterpret_cast<uint4*>(target + j * kFaLd + c) = uint4{
        Fp8PairToF16(v.x), Fp8PairToF16(v.x >> 16), Fp8PairToF16(v.y), Fp8PairToF16(v.y >> 16)};
  }
}

// kLdmatrix: the key and value fragments come from shared memory by ldmatrix (LoadMatrices),
// four registers an instruction, the values' transpose included, where the loads' form
// (KeyFragment, ValueFragment) takes a 32-bit load a key register and two 16-bit loads a
// value register (an FP8 cache's: two byte loads and a conversion a value register; with
// kLdmatrix its value codes go into an FP16 tile first, once a tile). The keys of an FP8
// cache keep the loads' form (their pairs of codes are adjacent: a 16-bit load and a
// conversion a register either way).
template <bool kFp8, int kStages, bool kLdmatrix>
__global__ void __launch_bounds__(kDecodeWarps* kWarpSize, kDecodeBlocksPerMultiprocessor)
    TensorCoreDecodeAttentionKernel(PagedAttentionParams p, int group, int splits) {
  LetDependentsLaunch();
  using Shared = DecodeShared<kFp8, kStages, kLdmatrix>;
#ifdef INFERBOX_CUDA_EMULATED
  __shared__ __align__(16) Shared shared;
#else
  extern __shared__ __align__(16) uint8_t decode_shared[];
  Shared& shared = *reinterpret_cast<Shared*>(decode_shared);
#endif
  DecodeTiles<kFp8, kStages>& tiles = shared.tiles;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kDecodeWarps + warp;
  if (item >= PerTokenCount(p) * p.num_kv_heads * splits) return;  // The whole warp.
  const int split = static_cast<int>(item % splits);
  const int64_t kv_head = (item / splits) % p.num_kv_heads;
  const int64_t listed = item / (splits * p.num_kv_heads);
  const int64_t t = p.token_list != nullptr ? p.token_list[listed] : listed;
  const int d = static_cast<int>(p.head_dim);
  const int chunks = d / 16;
  const int g = lane / 4;
  const int quad = lane % 4;
  const int64_t position = p.positions[t];
  const int32_t* table = p.block_tables + p.table_offsets[p.token_sequence[t]];
  // ⌈(position + 1) / splits⌉ keys a split, rounded up to whole tiles (as many tiles as
  // before, TensorCoreDecodeSplits' count): every tile starts at a multiple of kDecodeKeys,
  // within one cache block of 16 or more slots (a later split may be empty).
  const int64_t chunk =
      ((position + splits) / splits + kDecodeKeys - 1) / kDecodeKeys * kDecodeKeys;
  const int64_t begin = split * chunk;
  const int64_t end = begin + chunk < position + 1 ? begin + chunk : position + 1;

  // The first kStages − 1 tiles in flight before anything else (an empty group for
  // each past the end, so that every iteration's wait counts alike), the next tile's rows
  // read ahead.
  {
    int32_t first_rows[kStages - 1];
#pragma unroll
    for (int stage = 0; stage < kStages - 1; ++stage) {
      first_rows[stage] = DecodeKeyRow(p, table, begin + stage * kDecodeKeys, end, lane, kv_head);
    }
#pragma unroll
    for (int stage = 0; stage < kStages - 1; ++stage) {
      if (begin + stage * kDecodeKeys < end) {
        IssueDecodeTile<kFp8, kStages>(p, first_rows[stage], lane, tiles, warp, stage);
      } else {
        CopyAsyncCommit();
      }
    }
  }
  int32_t next_row =
      DecodeKeyRow(p, table, begin + (kStages - 1) * kDecodeKeys, end, lane, kv_head);

  // Row g: query head kv_head · group + g (g < group) as its high BF16 (FP16) parts; row g + 8
  // the same head's low parts (a[1], a[3]), so that one mma gives both halves' products in a
  // lane (c[0..1] and c[2..3]) where rows g + 8 were zeros and a second mma took the low
  // parts into the same accumulators, waiting for the first.
  const float* q_row = g < group ? p.q + (t * p.num_heads + kv_head * group + g) * d : nullptr;
  // An FP8 cache's tiles go into FP16 mma (Fp8PairToF16), and so do the queries and the
  // weights, each scaled into [-1, 1] where FP16's narrow range cannot hurt: the queries by
  // their row's largest magnitude (q_max, 4 lanes share a row), a tile's weights times their
  // values' scales by the row's largest of those (below); the scores and the output take the
  // factors back in float32.
  float q_max = 0.0f;
  if constexpr (kFp8) {
    if (q_row != nullptr) {
      for (int c = 0; c < chunks; ++c) {
        for (int part = 0; part < 2; ++part) {
          const int column = c * 16 + 2 * quad + 8 * part;
          q_max = fmaxf(q_max, fmaxf(fabsf(q_row[column]), fabsf(q_row[column + 1])));
        }
      }
    }
    q_max = fmaxf(q_max, __shfl_xor_sync(0xffffffffu, q_max, 1));
    q_max = fmaxf(q_max, __shfl_xor_sync(0xffffffffu, q_max, 2));
  }
  const float q_unit = q_max > 1e-30f ? q_max : 1.0f;  // 1 / q_unit stays finite.
  const float q_inverse = 1.0f / q_unit;
  uint32_t q_parts[kFaChunks][4];  // [0], [2]: high parts; [1], [3]: low parts.
#pragma unroll
  for (int c = 0; c < kFaChunks; ++c) {
    if (c >= chunks) break;
#pragma unroll
    for (int r = 0; r < 4; r += 2) {
      q_parts[c][r] = q_parts[c][r + 1] = 0u;
      if (q_row != nullptr) {
        const int column = c * 16 + 2 * quad + (r == 2 ? 8 : 0);
        if constexpr (kFp8) {
          PackSplitF16(q_row[column] * q_inverse, q_row[column + 1] * q_inverse, q_parts[c][r],
                       q_parts[c][r + 1]);
        } else {
          PackSplit(q_row[column], q_row[column + 1], q_parts[c][r], q_parts[c][r + 1]);
        }
      }
    }
  }
  const float scale = p.scale * 1.4426950408889634f;  // Scores in log2 units.
  // kFp8: a score is (q / q_max) · (code value · kFp8F16Unit) times these and its key's scale.
  const float key_factor = scale * q_unit / kFp8F16Unit;
  float value_unit = 0.0f;  // kFp8: out holds the weighted values divided by this.
  float running_max = -INFINITY;
  float running_sum = 0.0f;  // This lane's columns; the 4 lanes of the row summed at the end.
  // Columns j·8 + 2·quad, + 1 of row g: [0..1] from the weights' high parts, [2..3] from their
  // low parts (the A operand's rows g + 8), summed at the end.
  float out[kFaChunks * 2][4];
#pragma unroll
  for (int j = 0; j < kFaChunks * 2; ++j) out[j][0] = out[j][1] = out[j][2] = out[j][3] = 0.0f;

  int stage = 0;
  for (int64_t key_start = begin; key_start < end;
       key_start += kDecodeKeys, stage = (stage + 1) % kStages) {
    const int num_keys =
        static_cast<int>(end - key_start < kDecodeKeys ? end - key_start : kDecodeKeys);
    // The tile kStages − 1 ahead into the stage the previous iteration computed
    // (every lane is done reading it), then the rows of the one after it.
    const int64_t ahead = key_start + (kStages - 1) * kDecodeKeys;
    __syncwarp();
    if (ahead < end) {
      const int ahead_stage = (stage + kStages - 1) % kStages;
      IssueDecodeTile<kFp8, kStages>(p, next_row, lane, tiles, warp, ahead_stage);
      next_row = DecodeKeyRow(p, table, ahead + kDecodeKeys, end, lane, kv_head);
    } else {
      CopyAsyncCommit();  // An empty group: the wait below leaves kStages − 1 behind.
    }
    CopyAsyncWait<kStages - 1>();  // This lane's copies of the current tile.
    __syncwarp();                  // Every lane's.
    const auto* k_tile = tiles.kv[warp][stage][0];
    const auto* v_tile = tiles.kv[warp][stage][1];

    // Scores of row g for keys n·8 + 2·quad, + 1: the high parts' products s[n][0..1] plus the
    // low parts' s[n][2..3].
    float s[2][4];
#pragma unroll
    for (int n = 0; n < 2; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    if constexpr (kLdmatrix && !kFp8) {
#pragma unroll
      for (int c = 0; c < kFaChunks; ++c) {
        if (c >= chunks) break;
        uint32_t b[4];  // Keys 0 .. 8, then 8 .. 16.
        LoadMatrices<false>(b, MatrixRow<false>(k_tile, 0, c * 16, lane));
        const uint32_t b_first[2] = {b[0], b[1]};
        const uint32_t b_second[2] = {b[2], b[3]};
        MmaBf16(s[0], q_parts[c], b_first);
        MmaBf16(s[1], q_parts[c], b_second);
      }
    } else {
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int c = 0; c < kFaChunks; ++c) {
          if (c >= chunks) break;
          uint32_t b[2];
          if constexpr (kFp8) {
            Fp8KeyFragment(k_tile, n * 8, c * 16, g, quad, b);
            MmaF16(s[n], q_parts[c], b);
          } else {
            KeyFragment(k_tile, n * 8, c * 16, g, quad, b);
            MmaBf16(s[n], q_parts[c], b);
          }
        }
      }
    }
    float tile_max = -INFINITY;
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int key = n * 8 + 2 * quad + e;
        const float product = s[n][e] + s[n][e + 2];
        float score;
        if constexpr (kFp8) {
          score = product * key_factor * tiles.scales[warp][stage][0][key];
        } else {
          score = product * scale;
        }
        s[n][e] = key < num_keys ? score : -INFINITY;
        tile_max = fmaxf(tile_max, s[n][e]);
      }
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float new_max = fmaxf(running_max, tile_max);
    const float base = new_max == -INFINITY ? 0.0f : new_max;
    const float correction = exp2f(running_max - base);
    running_max = new_max;
    running_sum *= correction;
    float e[2][2];
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        e[n][x] = exp2f(s[n][x] - base);
        running_sum += e[n][x];
      }
    }
    // kFp8: each weight times its value's scale (keys n·8 + 2·quad + x), divided by the
    // largest of the row's (its 4 lanes hold all 16 keys'), so that FP16 keeps every weight
    // that matters to ~2⁻²²; out moves to that unit along with the softmax's correction.
    float out_factor = correction;
    if constexpr (kFp8) {
      float tile_unit = 0.0f;
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int x = 0; x < 2; ++x) {
          e[n][x] *= tiles.scales[warp][stage][1][n * 8 + 2 * quad + x];
          tile_unit = fmaxf(tile_unit, e[n][x]);
        }
      }
      tile_unit = fmaxf(tile_unit, __shfl_xor_sync(0xffffffffu, tile_unit, 1));
      tile_unit = fmaxf(tile_unit, __shfl_xor_sync(0xffffffffu, tile_unit, 2));
      float weight_factor = 0.0f;  // Nothing of weight in this tile: it adds nothing.
      if (tile_unit > 0.0f) {
        const float inverse = 1.0f / tile_unit;
        out_factor = correction * value_unit * inverse;  // 0 before any value: out is 0.
        value_unit = tile_unit;
        weight_factor = inverse;
      }
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int x = 0; x < 2; ++x) e[n][x] *= weight_factor;
      }
    }
#pragma unroll
    for (int j = 0; j < kFaChunks * 2; ++j) {
#pragma unroll
      for (int x = 0; x < 4; ++x) out[j][x] *= out_factor;
    }
    // Row g's weights for keys 2·quad, + 1 and 8 + 2·quad, + 1: high parts in [0] and [2],
    // low parts in [1] and [3] (rows g + 8).
    uint32_t p_parts[4];
    if constexpr (kFp8) {
      PackSplitF16(e[0][0], e[0][1], p_parts[0], p_parts[1]);
      PackSplitF16(e[1][0], e[1][1], p_parts[2], p_parts[3]);
    } else {
      PackSplit(e[0][0], e[0][1], p_parts[0], p_parts[1]);
      PackSplit(e[1][0], e[1][1], p_parts[2], p_parts[3]);
    }
    if constexpr (kLdmatrix) {
      const uint16_t* values;
      if constexpr (kFp8) {
        // The previous tile's ldmatrix of this tile are done (the __syncwarp above).
        Fp8ValueTileToF16(v_tile, shared.values[warp], d, lane);
        __syncwarp();
        values = shared.values[warp];
      } else {
        values = v_tile;
      }
#pragma unroll
      for (int j = 0; j < kFaChunks * 2; j += 2) {
        if (j >= 2 * chunks) break;
        uint32_t b[4];  // Head elements j·8 .. + 8, then the next 8.
        LoadMatrices<true>(b, MatrixRow<true>(values, 0, j * 8, lane));
        const uint32_t b_first[2] = {b[0], b[1]};
        const uint32_t b_second[2] = {b[2], b[3]};
        if constexpr (kFp8) {
          MmaF16(out[j], p_parts, b_first);
          MmaF16(out[j + 1], p_parts, b_second);
        } else {
          MmaBf16(out[j], p_parts, b_first);
          MmaBf16(out[j + 1], p_parts, b_second);
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < kFaChunks * 2; ++j) {
        if (j >= 2 * chunks) break;
        uint32_t b[2];
        if constexpr (kFp8) {
          Fp8ValueFragment(v_tile, 0, j * 8, g, quad, b);
          MmaF16(out[j], p_parts, b);
        } else {
          ValueFragment(v_tile, 0, j * 8, g, quad, b);
          MmaBf16(out[j], p_parts, b);
        }
      }
    }
  }
  CopyAsyncWait<0>();  // Nothing of this warp's left in flight when it exits.
  running_sum += __shfl_xor_sync(0xffffffffu, running_sum, 1);
  running_sum += __shfl_xor_sync(0xffffffffu, running_sum, 2);
  if (g >= group) return;
  const int64_t head = kv_head * group + g;
#pragma unroll
  for (int j = 0; j < kFaChunks * 2; ++j) {  // The low parts' products into the high parts'.
    out[j][0] += out[j][2];
    out[j][1] += out[j][3];
  }
  if constexpr (kFp8) {  // The values' unit and Fp8PairToF16's back in.
    const float unit = value_unit / kFp8F16Unit;
#pragma unroll
    for (int j = 0; j < kFaChunks * 2; ++j) {
      out[j][0] *= unit;
      out[j][1] *= unit;
    }
  }
  if (splits == 1) {
    const int64_t target = (t * p.num_heads + head) * d + 2 * quad;
    const float inverse = 1.0f / running_sum;
#pragma unroll
    for (int j = 0; j < kFaChunks * 2; ++j) {
      if (j >= 2 * chunks) break;
      StoreOutput(p, target + j * 8, out[j][0] * inverse);
      StoreOutput(p, target + j * 8 + 1, out[j][1] * inverse);
    }
    return;
  }
  // The split's max (in natural-log units, as the combine kernel takes it), sum and
  // unnormalised weighted values; a split without keys has sum 0 and is skipped there.
  float* partial = p.workspace + ((listed * p.num_heads + head) * splits + split) * (d + 2);
  if (quad == 0) {
    partial[0] = running_max * 0.6931471805599453f;
    partial[1] = running_sum;
  }
#pragma unroll
  for (int j = 0; j < kFaChunks * 2; ++j) {
    if (j >= 2 * chunks) break;
    partial[2 + j * 8 + 2 * quad] = out[j][0];
    partial[2 + j * 8 + 2 * quad + 1] = out[j][1];
  }
}

__device__ __forceinline__ float SiluMulOne(float gate, float up) {
  return gate / (1.0f + expf(-gate)) * up;
}

__global__ void SiluMulKernel(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = SiluMulOne(gate[i], up[i]);
  }
}

__global__ void SiluMulToBf16Kernel(const float* gate, const float* up, uint16_t* out, int64_t n) {
  LetDependentsLaunch();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = FloatToBf16Bits(SiluMulOne(gate[i], up[i]));
  }
}

// Four values per thread: 16-byte loads, one 8-byte store (gate and up 16-byte aligned, out 8).
__global__ void SiluMul4ToBf16Kernel(const float4* gate, const float4* up, uint2* out, int64_t n4) {
  LetDependentsLaunch();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float4 g = gate[i];
    const float4 u = up[i];
    out[i] = {static_cast<unsigned>(FloatToBf16Bits(SiluMulOne(g.x, u.x))) |
                  static_cast<unsigned>(FloatToBf16Bits(SiluMulOne(g.y, u.y))) << 16,
              static_cast<unsigned>(FloatToBf16Bits(SiluMulOne(g.z, u.z))) |
                  static_cast<unsigned>(FloatToBf16Bits(SiluMulOne(g.w, u.w))) << 16};
  }
}

// The same four values per thread (16-byte loads and stores; every pointer 16-byte aligned).
__global__ void SiluMul4Kernel(const float4* gate, const float4* up, float4* out, int64_t n4) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float4 g = gate[i];
    const float4 u = up[i];
    out[i] = {SiluMulOne(g.x, u.x), SiluMulOne(g.y, u.y), SiluMulOne(g.z, u.z),
              SiluMulOne(g.w, u.w)};
  }
}

__global__ void GatherRowsKernel(const float* x, const int64_t* rows, int64_t cols, float* out) {
  const int64_t i = blockIdx.x;
  const float* source = x + rows[i] * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[i * cols + c] = source[c];
}

// Per row and part of its columns (blockIdx.x, blockIdx.y): the (value, column) maximum with
// the lowest column on ties, then the sum of exp(x − max) for the log-softmax. A row in one
// part writes its token and log-probability; in several, each part writes a GreedyPart and
// GreedyCombineKernel finishes the row. Few rows (one stream's decode) read their 128K logits
// with many multiprocessors instead of one (75 µs a step on an H200 with one block a row).
constexpr int kGreedyThreads = 1024;
// Whether (value, column) goes before (best, best_column): larger, or as large and to the left.
__device__ __forceinline__ bool Precedes(float value, int64_t column, float best,
                                         int64_t best_column) {
  return value > best || (value == best && column < best_column);
}
// The warp's largest (value, column), the lowest column on ties, in every lane.
__device__ __forceinline__ void WarpArgMax(float& best, int64_t& best_column) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, best, offset);
    const int64_t other_column = __shfl_xor_sync(0xffffffffu, best_column, offset);
    if (Precedes(other, other_column, best, best_column)) {
      best = other;
      best_column = other_column;
    }
  }
}
struct GreedyPart {
  float best;
  float sum;  // Of exp(x − best) over the part (NaN where best is -inf, as the CPU's would be).
  int64_t column;
};
__global__ void __launch_bounds__(kGreedyThreads)
    GreedyRowsKernel(const float* logits, int64_t cols, int64_t part_cols, int32_t* tokens,
                     float* logprobs, GreedyPart* parts) {
  const float* row = logits + blockIdx.x * cols;
  const int64_t begin = blockIdx.y * part_cols;
  const int64_t end = begin + part_cols < cols ? begin + part_cols : cols;
  float best = -INFINITY;
  int64_t best_column = begin;  // A row of NaN or -inf answers column 0, as the CPU does.
  for (int64_t c = begin + threadIdx.x; c < end; c += blockDim.x) {
    const float value = row[c];
    if (value > best) {  // Strictly: this thread's columns ascend, so the first is kept.
      best = value;
      best_column = c;
    }
  }
  // Warp, then block reduction of (value, column).
  WarpArgMax(best, best_column);
  __shared__ float warp_best[kGreedyThreads / kWarpSize];
  __shared__ int64_t warp_column[kGreedyThreads / kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  if (lane == 0) {
    warp_best[warp] = best;
    warp_column[warp] = best_column;
  }
  __syncthreads();
  __shared__ float row_best;
  __shared__ int64_t row_column;
  if (threadIdx.x == 0) {
    row_best = warp_best[0];
    row_column = warp_column[0];
    for (int w = 1; w < static_cast<int>(blockDim.x / kWarpSize); ++w) {
      if (Precedes(warp_best[w], warp_column[w], row_best, row_column)) {
        row_best = warp_best[w];
        row_column = warp_column[w];
      }
    }
  }
  __syncthreads();
  float total = 0.0f;
  for (int64_t c = begin + threadIdx.x; c < end; c += blockDim.x) total += expf(row[c] - row_best);
  total = BlockSum(total);
  if (threadIdx.x != 0) return;
  if (gridDim.y == 1) {
    tokens[blockIdx.x] = static_cast<int32_t>(row_column);
    logprobs[blockIdx.x] = -logf(total);
    return;
  }
  parts[blockIdx.x * gridDim.y + blockIdx.y] = GreedyPart{row_best, total, row_column};
}

// One warp per row: the parts' largest value (the lowest column on ties, the parts' columns
// ascending) and the log-softmax from their sums, each rescaled to that value; parts of
// nothing above -inf add nothing, and a row of nothing above -inf (or of NaN) has a NaN
// log-probability, as on the CPU and in one part.
__global__ void GreedyCombineKernel(const GreedyPart* parts, int num_parts, int32_t* tokens,
                                    float* logprobs) {
  const GreedyPart* row = parts + static_cast<int64_t>(blockIdx.x) * num_parts;
  const int lane = threadIdx.x;
  float best = -INFINITY;
  int64_t best_column = INT64_MAX;
  for (int i = lane; i < num_parts; i += kWarpSize) {
    if (Precedes(row[i].best, row[i].column, best, best_column)) {
      best = row[i].best;
      best_column = row[i].column;
    }
  }
  WarpArgMax(best, best_column);
  float total = 0.0f;
  for (int i = lane; i < num_parts; i += kWarpSize) {
    if (row[i].best != -INFINITY) total += row[i].sum * expf(row[i].best - best);
  }
  total = WarpReduce(total, Plus());
  if (best == -INFINITY) total = NAN;
  if (lane == 0) {
    tokens[blockIdx.x] = static_cast<int32_t>(best_column);
    logprobs[blockIdx.x] = -logf(total);
  }
}

// --- Sampling (one block of kSampleThreads per row) ---
//
// The same steps as the host Sampler, without sorting: penalties, temperature; the top-k
// and top-p boundaries found by bisection over the values' order (32 rounds of a block-wide
// count or sum), ties at a boundary taken by lower id; min-p as a threshold; the draw walks
// the kept candidates in ascending id order, as the host does. Sums in double, like the host.
constexpr int kSampleThreads = 1024;
constexpr int kSampleWarps = kSampleThreads / kWarpSize;

// Order-preserving maps to unsigned keys (larger value, larger key; -0 and +0 equal, as
// the host's comparisons have them).
__device__ __forceinline__ uint32_t OrderKey(float value) {
  if (value == 0.0f) value = 0.0f;
  const uint32_t bits = __float_as_uint(value);
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}
__device__ __forceinline__ uint64_t OrderKey(double value) {
  if (value == 0.0) value = 0.0;
  const auto bits = static_cast<uint64_t>(__double_as_longlong(value));
  return (bits >> 63) != 0 ? ~bits : bits | (uint64_t{1} << 63);
}

template <typename T>
__device__ T SampleBlockSum(T value, T* scratch) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < kSampleWarps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

__device__ float SampleBlockMax(float value, float* scratch) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  float best = -INFINITY;
  for (int w = 0; w < kSampleWarps; ++w) best = fmaxf(best, scratch[w]);
  __syncthreads();
  return best;
}

// The (value, id) maximum, lowest id on ties; ids in `excluded` (n of them) do not count.
__device__ int64_t SampleBlockArgmax(const float* values, int64_t cols, const int32_t* excluded,
                                     int n_excluded, float* value_scratch, int64_t* id_scratch) {
  float best = -INFINITY;
  int64_t best_id = cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    bool skip = false;
    for (int e = 0; e < n_excluded; ++e) skip = skip || excluded[e] == c;
    if (skip) continue;
    const float v = values[c];
    if (v > best || best_id == cols) {
      best = v;
      best_id = c;
    }
  }
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, best, offset);
    const int64_t other_id = __shfl_xor_sync(0xffffffffu, best_id, offset);
    if (other_id != cols &&
        (best_id == cols || other > best || (other == best && other_id < best_id))) {
      best = other;
      best_id = other_id;
    }
  }
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  if (lane == 0) {
    value_scratch[warp] = best;
    id_scratch[warp] = best_id;
  }
  __syncthreads();
  best = -INFINITY;
  best_id = cols;
  for (int w = 0; w < kSampleWarps; ++w) {
    const int64_t id = id_scratch[w];
    const float v = value_scratch[w];
    if (id != cols && (best_id == cols || v > best || (v == best && id < best_id))) {
      best = v;
      best_id = id;
    }
  }
  __syncthreads();
  return best_id == cols ? 0 : best_id;
}

// Exclusive prefix of `value` over the block in thread order, and the block total.
template <typename T>
__device__ T SampleBlockExclusiveScan(T value, T* scratch, T* total) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  T inclusive = value;
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    const T other = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  if (lane == kWarpSize - 1) scratch[warp] = inclusive;
  __syncthreads();
  T before = 0;
  T sum = 0;
  for (int w = 0; w < kSampleWarps; ++w) {
    if (w < warp) before += scratch[w];
    sum += scratch[w];
  }
  __syncthreads();
  *total = sum;
  return before + inclusive - value;
}

struct SampleShared {
  float floats[kSampleWarps];
  double doubles[kSampleWarps];
  int64_t ints[kSampleWarps];
  int64_t ids[kSampleWarps];
  int32_t chosen[kMaxTopLogprobs];
  int64_t answer;
};

// The largest key K with count(keys >= K) >= need (bisection over the 32-bit key space);
// `key_of(c)` gives element c's key, or 0 for elements not taking part.
template <typename KeyOf>
__device__ uint32_t LargestKeyWithCount(KeyOf key_of, int64_t cols, int64_t need,
                                        SampleShared& shared) {
  uint32_t low = 0;  // count(keys >= 0) = cols >= need holds.
  uint32_t high = 0xFFFFFFFFu;
  while (low < high) {
    const uint32_t mid = low + (high - low) / 2 + 1;
    int64_t count = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) count += key_of(c) >= mid ? 1 : 0;
    if (SampleBlockSum<int64_t>(count, shared.ints) >= need) {
      low = mid;
    } else {
      high = mid - 1;
    }
  }
  return low;
}

// The first id (ascending) among elements with key == boundary at which `taken(before, c)`
// holds, where `before` is the amount of the tied elements before c plus `base`; cols when
// none. Walks the ids in blocks of blockDim with a block scan.
template <typename T, typename Amount, typename Stop>
__device__ int64_t FirstTiedIdWhere(Amount amount, Stop stop, int64_t cols, T base, T* scratch,
                                    SampleShared& shared) {
  T carried = base;
  for (int64_t start = 0; start < cols; start += blockDim.x) {
    const int64_t c = start + threadIdx.x;
    const T mine = c < cols ? amount(c) : T(0);
    T total;
    const T before = carried + SampleBlockExclusiveScan<T>(mine, scratch, &total);
    if (threadIdx.x == 0) shared.answer = cols;
    __syncthreads();
    if (c < cols && mine != T(0) && stop(before, mine))
      atomicMin(reinterpret_cast<unsigned long long*>(&shared.answer),
                static_cast<unsigned long long>(c));
    __syncthreads();
    const int64_t found = shared.answer;
    __syncthreads();
    if (found != cols) return found;
    carried += total;
  }
  return cols;
}

__global__ void __launch_bounds__(kSampleThreads) SampleRowsKernel(SampleRowsParams p) {
  __shared__ SampleShared shared;
  const int64_t row = blockIdx.x;
  const RowSamplingParams r = p.row_params[row];
  const int64_t cols = p.cols;
  const float* raw = p.logits + row * cols;
  float* w = p.work + row * cols;

  // Penalties (distinct ids, so no two threads write one element), then temperature.
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) w[c] = raw[c];
  __syncthreads();
  if (r.repetition_penalty != 1.0f) {
    for (int64_t i = threadIdx.x; i < r.repetition_count; i += blockDim.x) {
      const int32_t t = p.repetition_tokens[r.repetition_offset + i];
      if (t < 0 || t >= cols) continue;
      const float v = w[t];
      w[t] = v > 0 ? v / r.repetition_penalty : v * r.repetition_penalty;
    }
    __syncthreads();
  }
  for (int64_t i = threadIdx.x; i < r.output_count; i += blockDim.x) {
    const int32_t t = p.output_tokens[r.output_offset + i];
    if (t < 0 || t >= cols) continue;
    w[t] -= r.presence_penalty +
            r.frequency_penalty * static_cast<float>(p.output_counts[r.output_offset + i]);
  }
  __syncthreads();

  // Log-softmax of the raw logits, for the reported log-probabilities.
  float raw_max = -INFINITY;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) raw_max = fmaxf(raw_max, raw[c]);
  raw_max = SampleBlockMax(raw_max, shared.floats);
  double raw_total = 0.0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
    raw_total += exp(static_cast<double>(raw[c] - raw_max));
  raw_total = SampleBlockSum<double>(raw_total, shared.doubles);
  const double log_total = log(raw_total) + raw_max;

  int64_t token = 0;
  if (r.temperature == 0.0f) {
    token = SampleBlockArgmax(w, cols, nullptr, 0, shared.floats, shared.ids);
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) w[c] /= r.temperature;
    __syncthreads();
    // top-k: keys above the k-th largest, and at it the lowest ids until k are kept.
    uint32_t k_key = 0;
    int64_t k_tie_end = cols;  // Ties with key k_key kept when id < k_tie_end.
    if (r.top_k > 0 && r.top_k < cols) {
      k_key = LargestKeyWithCount([&](int64_t c) { return OrderKey(w[c]); }, cols, r.top_k, shared);
      int64_t above = 0;
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        above += OrderKey(w[c]) > k_key ? 1 : 0;
      above = SampleBlockSum<int64_t>(above, shared.ints);
      const int64_t ties_needed = r.top_k - above;
      const int64_t last = FirstTiedIdWhere<int64_t>(
          [&](int64_t c) -> int64_t { return OrderKey(w[c]) == k_key ? 1 : 0; },
          [&](int64_t before, int64_t) { return before + 1 == ties_needed; }, cols, int64_t{0},
          shared.ints, shared);
      k_tie_end = last + 1;
    }
    auto in_top_k = [&](int64_t c) {
      const uint32_t key = OrderKey(w[c]);
      return key > k_key || (key == k_key && c < k_tie_end);
    };
    // Probabilities over the top-k candidates (the best one is the row's maximum).
    float top = -INFINITY;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) top = fmaxf(top, w[c]);
    top = SampleBlockMax(top, shared.floats);
    double sum = 0.0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
      if (in_top_k(c)) sum += exp(static_cast<double>(w[c] - top));
    sum = SampleBlockSum<double>(sum, shared.doubles);
    auto probability = [&](int64_t c) { return exp(static_cast<double>(w[c] - top)) / sum; };
    const double min_p_threshold = r.min_p * (1.0 / sum);
    auto candidate = [&](int64_t c) {
      return in_top_k(c) && (r.min_p <= 0.0f || probability(c) >= min_p_threshold);
    };
    // top-p: the most likely candidates whose mass reaches top_p, ties by lower id.
    uint64_t p_key = 0;
    int64_t p_tie_end = cols;
    if (r.top_p < 1.0f) {
      // The largest key whose candidates at or above it hold top_p of the mass (keys of the
      // double probabilities: the host orders by exact double values).
      uint64_t low = 0;
      uint64_t high = ~uint64_t{0};
      while (low < high) {
        const uint64_t mid = low + (high - low) / 2 + 1;
        double mass = 0.0;
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
          if (candidate(c) && OrderKey(probability(c)) >= mid) mass += probability(c);
        if (SampleBlockSum<double>(mass, shared.doubles) >= r.top_p) {
          low = mid;
        } else {
          high = mid - 1;
        }
      }
      p_key = low;
      double above = 0.0;
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        if (candidate(c) && OrderKey(probability(c)) > p_key) above += probability(c);
      above = SampleBlockSum<double>(above, shared.doubles);
      // Ties at the boundary, by id, until the mass reaches top_p (at least one is kept).
      const int64_t last = FirstTiedIdWhere<double>(
          [&](int64_t c) -> double {
            return candidate(c) && OrderKey(probability(c)) == p_key ? probability(c) : 0.0;
          },
          [&](double before, double mine) { return before + mine >= r.top_p; }, cols, above,
          shared.doubles, shared);
      p_tie_end = last + 1;
    }
    auto kept = [&](int64_t c) {
      if (!candidate(c)) return false;
      if (r.top_p >= 1.0f) return true;
      const uint64_t key = OrderKey(probability(c));
      return key > p_key || (key == p_key && c < p_tie_end);
    };
    double kept_mass = 0.0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
      if (kept(c)) kept_mass += probability(c);
    kept_mass = SampleBlockSum<double>(kept_mass, shared.doubles);
    const double draw = r.uniform * kept_mass;
    token = FirstTiedIdWhere<double>(
        [&](int64_t c) -> double { return kept(c) ? probability(c) : 0.0; },
        [&](double before, double mine) { return draw < before + mine; }, cols, 0.0, shared.doubles,
        shared);
    if (token == cols) {  // Rounding left the draw past the end: the last kept candidate.
      int64_t last = -1;
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        if (kept(c)) last = c;
      if (threadIdx.x == 0) shared.answer = -1;
      __syncthreads();
      atomicMax(reinterpret_cast<long long*>(&shared.answer), static_cast<long long>(last));
      __syncthreads();
      token = shared.answer;
    }
  }

  // The top log-probabilities of the raw logits, best first, ties by lower id.
  const int n_top = r.num_top_logprobs < kMaxTopLogprobs ? r.num_top_logprobs : kMaxTopLogprobs;
  for (int i = 0; i < n_top; ++i) {
    const int64_t best = SampleBlockArgmax(raw, cols, shared.chosen, i, shared.floats, shared.ids);
    if (threadIdx.x == 0) {
      shared.chosen[i] = static_cast<int32_t>(best);
      p.top_tokens[row * kMaxTopLogprobs + i] = static_cast<int32_t>(best);
      p.top_logprobs[row * kMaxTopLogprobs + i] =
          static_cast<float>(static_cast<double>(raw[best]) - log_total);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    p.tokens[row] = static_cast<int32_t>(token);
    p.logprobs[row] = static_cast<float>(static_cast<double>(raw[token]) - log_total);
  }
}

__global__ void ScatterColumnsKernel(const float* in, int64_t m, int64_t total,
                                     ColumnSlices slices) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       index < m * total; index += stride) {
    const int64_t row = index / total;
    const int64_t column = index % total;
    int i = 0;
    while (i + 1 < slices.count && column >= slices.begin[i + 1]) ++i;
    const int64_t width = slices.begin[i + 1] - slices.begin[i];
    const int64_t j = column - slices.begin[i];
    const float bias = slices.bias[i] != nullptr ? slices.bias[i][j] : 0.0f;
    slices.out[i][row * width + j] = in[index] + bias;
  }
}

__global__ void AddBiasKernel(float* out, const float* bias, int64_t m, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < m * n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] += bias[i % n];
  }
}

// d += a·b: mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 (sm_89 and later; FP8
// weights are refused below, LoadFp8Weights).
__device__ __forceinline__ void MmaE4m3(float (&d)[4], const uint32_t (&a)[4],
                                        const uint32_t (&b)[2]) {
#ifdef INFERBOX_CUDA_EMULATED
  ::cuda_emu::MmaM16n8k32E4m3(d, a, b);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
  __trap();
#else
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// 16 bytes of global memory read once (weights: no room taken in L1 from what is read again).
__device__ __forceinline__ uint4 LoadOnce16(const void* global) {
#ifdef INFERBOX_CUDA_EMULATED
  uint4 value;
  std::memcpy(&value, global, 16);
  return value;
#else
  uint4 value;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      : "=r"(value.x), "=r"(value.y), "=r"(value.z), "=r"(value.w)
      : "l"(global));
  return value;
#endif
}

// SmallBatchLinearKernel: a block computes 16 output rows of one weight (a tile: mma's 16 A
// rows) for every input row (B's 8 columns, zeros past m), its warps (kSmallBatchWarps, or
// one per chunk where rows have fewer) taking turns over the weight rows' 128-byte chunks and
// adding their results in shared memory at the end. Lane (g = lane / 4, t = lane % 4) loads the
// 16-byte pieces t and t + 4 of a chunk from weight rows g and g + 8 and from input row g. The
// mma's k order is its own, but a dot product's sum does not depend on the order of its terms as
// long as A and B agree, and they do: for every t, A's and B's registers come from the same chunk
// offsets. Each piece of 16 bytes makes two mma (8 BF16 or 16 FP8 values of k each, 2 registers of
// A's row).
constexpr int kSmallBatchWarps = 8;
constexpr int kSmallBatchChunk = 128;  // Bytes of a weight row a warp's step reads.
constexpr int kSmallBatchUnroll = 4;   // Chunks a warp loads before it multiplies.

// The 16-row tiles of a weight of `rows` rows.
__host__ __device__ __forceinline__ int64_t SmallBatchTiles(int64_t rows) {
  return (rows + 15) / 16;
}

template <bool kFp8>
__device__ __forceinline__ void MmaPiece(float (&d)[4], const uint4& row, const uint4& row8,
                                         const uint4& x) {
  const uint32_t first[4] = {row.x, row8.x, row.y, row8.y};
  const uint32_t second[4] = {row.z, row8.z, row.w, row8.w};
  const uint32_t b_first[2] = {x.x, x.y};
  const uint32_t b_second[2] = {x.z, x.w};
  if constexpr (kFp8) {
    MmaE4m3(d, first, b_first);
    MmaE4m3(d, second, b_second);
  } else {
    MmaBf16(d, first, b_first);
    MmaBf16(d, second, b_second);
  }
}

// The input's 16 bytes at `at` (global memory, or the block's own codes in shared memory):
// plain (coherent) loads, not the read-only path, for launched as a dependent the kernel runs
// while the kernel before it writes the input, and a compiler may schedule loads through the
// non-coherent path above griddepcontrol.wait (one did in llama.cpp, PR 23825).
__device__ __forceinline__ uint4 LoadInput16(const uint8_t* at) {
  return *reinterpret_cast<const uint4*>(at);
}

// kQuantize (FP8 weights, an input SmallBatchQuantizes takes): every block makes the BF16
// input's codes itself, as LaunchQuantizeToFp8 makes them (the largest magnitude of the real
// rows, the same scale, the same division and rounding), into shared memory: the same codes,
// without a kernel of their own before this one. Each thread loads its at most
// kSmallBatchQuantizeVectors 16-byte pieces of the input at once (one round trip), keeps them
// for the codes, and the block agrees on the largest magnitude.
constexpr int kSmallBatchQuantizeVectors = 8;

// The largest magnitude of 8 BF16 values (fmaxf: a NaN drops out, as in LargestMagnitude).
__device__ __forceinline__ float LargestOf8(const uint4& v) {
  float largest = 0.0f;
  for (const uint32_t pair : {v.x, v.y, v.z, v.w}) {
    largest = fmaxf(largest, fabsf(Bf16BitsToFloat(static_cast<uint16_t>(pair & 0xFFFFu))));
    largest = fmaxf(largest, fabsf(Bf16BitsToFloat(static_cast<uint16_t>(pair >> 16))));
  }
  return largest;
}

// The codes of 8 BF16 values, the first in the lowest byte.
__device__ __forceinline__ uint2 CodesOf8(const uint4& v, float scale) {
  uint32_t words[2] = {0, 0};
  const uint32_t pairs[4] = {v.x, v.y, v.z, v.w};
  for (int i = 0; i < 8; ++i) {
    const auto bf16 =
        static_cast<uint16_t>(i % 2 == 0 ? pairs[i / 2] & 0xFFFFu : pairs[i / 2] >> 16);
    words[i / 4] |= static_cast<uint32_t>(Fp8Code(bf16, scale)) << (8 * (i % 4));
  }
  return uint2{words[0], words[1]};
}

// The weight (slice) of the small-batch kernel's tile `tile` (counted over every slice), and
// the tile within it.
__device__ __forceinline__ int SmallBatchSlice(const SmallBatchLinearParams& p, int64_t& tile) {
  int slice = 0;
  while (slice + 1 < p.count && tile >= SmallBatchTiles(p.rows[slice])) {
    tile -= SmallBatchTiles(p.rows[slice]);
    ++slice;
  }
  return slice;
}

// L2 requests for the 128-byte lines of tile `tile`'s weight rows that the first step of
// `warps` warps reads (their first warps × kSmallBatchUnroll chunks of each row: up to 4 KB a
// row, 64 KB a tile), one a thread at a time (32-bit arithmetic: at most 16 × 32 lines).
__device__ __forceinline__ void PrefetchFirstSteps(const SmallBatchLinearParams& p, int64_t tile,
                                                   int64_t row_bytes, int warps) {
  const int slice = SmallBatchSlice(p, tile);
  const int64_t first_row = tile * 16;
  const int rows =
      static_cast<int>(p.rows[slice] - first_row < 16 ? p.rows[slice] - first_row : 16);
  const int step_bytes = warps * kSmallBatchUnroll * kSmallBatchChunk;
  const int lines = (static_cast<int>(row_bytes < step_bytes ? row_bytes : step_bytes) + 127) / 128;
  const auto* weight = static_cast<const uint8_t*>(p.weight[slice]) + first_row * row_bytes;
  for (int i = static_cast<int>(threadIdx.x); i < rows * lines; i += static_cast<int>(blockDim.x)) {
    const int row = i / lines;
    PrefetchL2(weight + row * row_bytes + (i - row * lines) * 128);
  }
}

// Blocks take tiles in turn (gridDim.x ≤ tiles), so that a quantising block makes the codes
// once for several tiles.
template <bool kFp8, bool kQuantize>
__global__ void __launch_bounds__(kSmallBatchWarps* kWarpSize, 2)
    SmallBatchLinearKernel(SmallBatchLinearParams p, int64_t tiles) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  const int g = lane / 4;
  const int t = lane % 4;
  const int64_t row_bytes = p.cols * (kFp8 ? 1 : 2);
  // Launched as a dependent, the block may run before the kernel that makes x has ended:
  // while it runs (a norm, the attention: short kernels that leave memory idle), L2 fetches
  // the chunks of this block's first tile that its warps' first step reads. Then nothing
  // before that kernel's end.
  if (p.dependent_launch) {
    PrefetchFirstSteps(p, blockIdx.x, row_bytes, warps);
    WaitForPrimary();
  }
  __shared__ __align__(16) uint8_t codes[kQuantize ? kSmallBatchQuantizeMax : 16];
  const auto* input = static_cast<const uint8_t*>(p.x);
  float x_scale = 1.0f;
  if constexpr (kQuantize) {
    const auto* pieces = static_cast<const uint4*>(p.x);
    const int64_t count = p.m * p.cols / 8;  // cols is a multiple of 16 (FP8 rows).
    const int64_t real = p.real_rows != nullptr && *p.real_rows < p.m ? *p.real_rows : p.m;
    const int64_t real_count = real * p.cols / 8;
    uint4 held[kSmallBatchQuantizeVectors];
    float largest = 0.0f;
#pragma unroll
    for (int v = 0; v < kSmallBatchQuantizeVectors; ++v) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(v) * blockDim.x;
      held[v] = i < count ? pieces[i] : uint4{0, 0, 0, 0};
    }
#pragma unroll
    for (int v = 0; v < kSmallBatchQuantizeVectors; ++v) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(v) * blockDim.x;
      if (i < real_count) largest = fmaxf(largest, LargestOf8(held[v]));
    }
    x_scale = Fp8ScaleOf(BlockReduce(largest, Max()));
#pragma unroll
    for (int v = 0; v < kSmallBatchQuantizeVectors; ++v) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(v) * blockDim.x;
      if (i < count) reinterpret_cast<uint2*>(codes)[i] = CodesOf8(held[v], x_scale);
    }
    __syncthreads();
    input = codes;
  } else if constexpr (kFp8) {
    x_scale = *p.x_scale;
  }
  __shared__ float partial[kSmallBatchWarps][16][8];
  for (int64_t next = blockIdx.x; next < tiles; next += gridDim.x) {
    // The weight (slice) and tile.
    int64_t tile = next;
    const int slice = SmallBatchSlice(p, tile);
    const int64_t rows = p.rows[slice];
    const auto* weight = static_cast<const uint8_t*>(p.weight[slice]);
    // Rows past the weight's or the input's read row 0 instead (every load then happens
    // unconditionally, which lets the compiler issue a step's loads together): they make only
    // results that are not stored (an mma's D[r][c] sums A's row r times B's column c).
    const int64_t row = tile * 16 + g;
    const uint8_t* w0 = weight + (row < rows ? row : 0) * row_bytes;
    const uint8_t* w8 = weight + (row + 8 < rows ? row + 8 : 0) * row_bytes;
    const uint8_t* x = input + (g < p.m ? g : 0) * row_bytes;
    const uint4 zero{0, 0, 0, 0};
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int64_t chunks = (row_bytes + kSmallBatchChunk - 1) / kSmallBatchChunk;
    for (int64_t first = warp; first < chunks; first += warps * kSmallBatchUnroll) {
      uint4 a[kSmallBatchUnroll][2], a8[kSmallBatchUnroll][2], b[kSmallBatchUnroll][2];
#pragma unroll
      for (int u = 0; u < kSmallBatchUnroll; ++u) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // Pieces past the row (whole ones: row_bytes % 16 == 0) read its first and count as
          // zeros, on both sides (zero times an infinity would be a NaN in a stored result).
          const int64_t offset = (first + u * warps) * kSmallBatchChunk + h * 64 + 16 * t;
          const bool in_row = offset < row_bytes;
          const int64_t at = in_row ? offset : 0;
          a[u][h] = LoadOnce16(w0 + at);
          a8[u][h] = LoadOnce16(w8 + at);
          b[u][h] = LoadInput16(x + at);
          if (!in_row) a[u][h] = a8[u][h] = b[u][h] = zero;
        }
      }
#pragma unroll
      for (int u = 0; u < kSmallBatchUnroll; ++u) {
#pragma unroll
        for (int h = 0; h < 2; ++h) MmaPiece<kFp8>(d, a[u][h], a8[u][h], b[u][h]);
      }
    }
    // d: rows g and g + 8 of the tile, input rows 2t and 2t + 1. The warps' sums in a fixed
    // order, so that a row's value does not depend on anything but its inputs.
    partial[warp][g][2 * t] = d[0];
    partial[warp][g][2 * t + 1] = d[1];
    partial[warp][g + 8][2 * t] = d[2];
    partial[warp][g + 8][2 * t + 1] = d[3];
    __syncthreads();
    for (int index = threadIdx.x; index < 16 * 8; index += blockDim.x) {
      const int r = index % 16;
      const int i = index / 16;
      const int64_t out_row = tile * 16 + r;
      if (i < p.m && out_row < rows) {
        float sum = 0.0f;
        for (int w = 0; w < warps; ++w) sum += partial[w][r][i];
        if constexpr (kFp8) sum = sum * (*p.weight_scale[slice] * x_scale);
        if (p.bias[slice] != nullptr) sum += p.bias[slice][out_row];
        p.out[slice][i * rows + out_row] = sum;
      }
    }
    __syncthreads();  // `partial` is the next tile's.
  }
}

// Threads per row for row-wise kernels: enough to cover the row, a multiple of 32, <= 1024.
int RowThreads(int64_t n) {
  int64_t threads = ((n + kWarpSize - 1) / kWarpSize) * kWarpSize;
  if (threads > 1024) threads = 1024;
  return static_cast<int>(threads);
}

constexpr int kThreads = 256;
// Elements up to which LaunchQuantizeToFp8 runs in one block (a decode step's GEMM inputs up
// to 16 rows of 4096, 4 of 14336): 128 KB read twice by one multiprocessor, ~2 µs.
constexpr int64_t kQuantizeOneBlockMax = 1 << 16;

}  // namespace

namespace {
thread_local bool failures_tolerated = false;
thread_local std::string first_tolerated_failure;
}  // namespace

ToleratedLaunchFailures::ToleratedLaunchFailures() {
  failures_tolerated = true;
  first_tolerated_failure.clear();
}
ToleratedLaunchFailures::~ToleratedLaunchFailures() {
  failures_tolerated = false;
}
const std::string& ToleratedLaunchFailures::first() const {
  return first_tolerated_failure;
}
bool ToleratedLaunchFailures::Note(const char* what, const char* reason) {
  if (!failures_tolerated) return false;
  if (first_tolerated_failure.empty()) first_tolerated_failure = std::string(what) + ": " + reason;
  return true;
}

void FatalCudaError(const char* what, const char* reason, const char* file, int line) {
  std::fprintf(stderr,
               "inferbox-engine: fatal CUDA error in %s (%s:%d): %s; the engine stops and its "
               "supervisor restarts it\n",
               what, file, line, reason);
  std::fflush(stderr);
  std::abort();
}

// Elementwise work over n values: the first 4·⌊n/4⌋ by `fours` (given their count / 4)
// where the pointers allow 16-byte accesses, the rest by `rest` (given the first index and
// the count).
template <typename Fours, typename Rest>
void InFours(int64_t n, bool aligned, Fours fours, Rest rest) {
  const int64_t done = aligned ? n / 4 * 4 : 0;
  if (done > 0) fours(done / 4);
  if (done < n) rest(done, n - done);
}

void LaunchConvertToBf16(const void* src, SourceType type, uint16_t* dst, int64_t n,
                         cudaStream_t stream) {
  InFours(
      n, type == SourceType::kF32 && Aligned(src, 16) && Aligned(dst, 8),
      [&](int64_t n4) {
        Float4ToBf16Kernel<<<GridFor(n4, kThreads), kThreads, 0, stream>>>(
            static_cast<const float4*>(src), reinterpret_cast<uint2*>(dst), n4);
        CheckLaunch("Float4ToBf16Kernel");
      },
      [&](int64_t first, int64_t count) {
        // Past the float32 values done above (first is 0 for other types).
        const void* rest = first == 0 ? src : static_cast<const float*>(src) + first;
        ConvertToBf16Kernel<<<GridFor(count, kThreads), kThreads, 0, stream>>>(rest, type,
                                                                               dst + first, count);
        CheckLaunch("ConvertToBf16Kernel");
      });
}

void LaunchQuantizeToFp8(const uint16_t* x, int64_t rows, int64_t cols, const int32_t* real_rows,
                         float* work, uint8_t* out, cudaStream_t stream) {
  const int64_t n = rows * cols;
  if (n > 0 && n <= kQuantizeOneBlockMax) {
    QuantizeFp8OneBlockKernel<<<1, 1024, 0, stream>>>(x, n, cols, real_rows, work, out);
    CheckLaunch("QuantizeFp8OneBlockKernel");
    return;
  }
  if (const cudaError_t error = cudaMemsetAsync(work, 0, sizeof(float), stream);
      error != cudaSuccess &&
      !ToleratedLaunchFailures::Note("QuantizeToFp8", cudaGetErrorString(error))) {
    FatalCudaError("cudaMemsetAsync", cudaGetErrorString(error), __FILE__, __LINE__);
  }
  if (n == 0) return;
  // Enough blocks to fill the GPU, few enough that the atomics stay cheap.
  const int blocks = GridFor(n, kThreads) < 1024 ? GridFor(n, kThreads) : 1024;
  AbsMaxBf16Kernel<<<blocks, kThreads, 0, stream>>>(x, n, cols, real_rows, work);
  CheckLaunch("AbsMaxBf16Kernel");
  QuantizeFp8Kernel<<<GridFor(n, kThreads), kThreads, 0, stream>>>(x, n, work, out);
  CheckLaunch("QuantizeFp8Kernel");
}

void LaunchConvertToF32(const void* src, SourceType type, float* dst, int64_t n,
                        cudaStream_t stream) {
  if (n == 0) return;
  ConvertToF32Kernel<<<GridFor(n, kThreads), kThreads, 0, stream>>>(src, type, dst, n);
  CheckLaunch("ConvertToF32Kernel");
}

void LaunchEmbedding(const int32_t* ids, int64_t m, const uint16_t* table, int64_t hidden,
                     float* out, cudaStream_t stream) {
  if (m == 0) return;
  EmbeddingKernel<<<static_cast<unsigned>(m), RowThreads(hidden), 0, stream>>>(ids, table, hidden,
                                                                               out);
  CheckLaunch("EmbeddingKernel");
}

void LaunchAddRmsNorm(float* residual, const float* delta, int64_t m, int64_t n, const float* gamma,
                      float eps, float* out, cudaStream_t stream) {
  if (m == 0) return;
  AddRmsNormKernel<float>
      <<<static_cast<unsigned>(m), RowThreads(n), 0, stream>>>(residual, delta, n, gamma, eps, out);
  CheckLaunch("AddRmsNormKernel");
}

void LaunchAddRmsNormToBf16(float* residual, const float* delta, int64_t m, int64_t n,
                            const float* gamma, float eps, uint16_t* out, cudaStream_t stream) {
  if (m == 0) return;
  AddRmsNormKernel<uint16_t>
      <<<static_cast<unsigned>(m), RowThreads(n), 0, stream>>>(residual, delta, n, gamma, eps, out);
  CheckLaunch("AddRmsNormKernel (BF16 out)");
}

void LaunchRmsNormGroups(float* x, int64_t num_groups, int64_t n, const float* gamma, float eps,
                         cudaStream_t stream) {
  if (num_groups == 0) return;
  constexpr int kGroupsPerBlock = kThreads / kWarpSize;
  const auto blocks = static_cast<unsigned>((num_groups + kGroupsPerBlock - 1) / kGroupsPerBlock);
  RmsNormGroupsKernel<<<blocks, kThreads, 0, stream>>>(x, num_groups, n, gamma, eps);
  CheckLaunch("RmsNormGroupsKernel");
}

void LaunchRopeTables(const int64_t* positions, int64_t m, const float* inv_freq, int64_t half,
                      float* cos, float* sin, cudaStream_t stream) {
  if (m * half == 0) return;
  RopeTablesKernel<<<GridFor(m * half, kThreads), kThreads, 0, stream>>>(positions, m, inv_freq,
                                                                         half, cos, sin);
  CheckLaunch("RopeTablesKernel");
}

void LaunchRopeWriteKv(const RopeWriteKvParams& params, cudaStream_t stream) {
  if (params.num_tokens == 0) return;
  RopeWriteKvKernel<<<static_cast<unsigned>(params.num_tokens), kThreads, 0, stream>>>(params);
  CheckLaunch("RopeWriteKvKernel");
}

// Per-device, once per process: function attributes are a device's, and an occupancy query
// costs more than a launch. `compute` runs under the lock, on the current device.
template <typename Compute>
int OncePerDevice(std::mutex& mutex, std::map<int, int>& values, Compute compute) {
  int device = 0;
  INFERBOX_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard lock(mutex);
  const auto found = values.find(device);
  if (found != values.end()) return found->second;
  return values[device] = compute();
}

// Warps of TensorCoreDecodeAttentionKernel<kFp8, kStages, kLdmatrix> resident on the current
// device at once (its dynamic shared memory allowed and the largest carveout asked for first).
// A kernel that cannot be resident at all is a fatal error here rather than at its launch.
template <bool kFp8, int kStages, bool kLdmatrix>
int64_t ResidentDecodeWarps(int multiprocessors) {
  static std::mutex mutex;
  static std::map<int, int> blocks_of;
  const int blocks = OncePerDevice(mutex, blocks_of, [] {
    auto* const kernel = TensorCoreDecodeAttentionKernel<kFp8, kStages, kLdmatrix>;
    const auto bytes = DynamicSharedBytes<DecodeShared<kFp8, kStages, kLdmatrix>>();
    INFERBOX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(bytes)));
    INFERBOX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                             cudaSharedmemCarveoutMaxShared));
    int count = 0;
    INFERBOX_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &count, kernel, kDecodeWarps * kWarpSize, bytes));
    if (count < 1) {
      FatalCudaError("ResidentDecodeWarps", "the decode attention kernel fits no multiprocessor",
                     __FILE__, __LINE__);
    }
    return count;
  });
  return static_cast<int64_t>(blocks) * kDecodeWarps * multiprocessors;
}

// fn.template operator()<kFp8, kStages, kLdmatrix>() for a cache (fp8), the stages asked for
// (0: kDecodeStages; other than 2 to 4: a fatal error) and the fragments' form.
template <typename Fn>
auto WithDecodeForm(bool fp8, int stages, bool ldmatrix, Fn&& fn) {
  const auto with = [&]<int kStages>() {
    if (fp8) {
      return ldmatrix ? fn.template operator()<true, kStages, true>()
                      : fn.template operator()<true, kStages, false>();
    }
    return ldmatrix ? fn.template operator()<false, kStages, true>()
                    : fn.template operator()<false, kStages, false>();
  };
  switch (stages == 0 ? kDecodeStages : stages) {
    case 2: return with.template operator()<2>();
    case 3: return with.template operator()<3>();
    case 4: return with.template operator()<4>();
    default:
      FatalCudaError("TensorCoreDecodeAttentionKernel", "decode stages not 2, 3 or 4", __FILE__,
                     __LINE__);
  }
}

int AttentionSplits(const PagedAttentionParams& p) {
  if (p.splits > 0) return p.splits < kMaxSplits ? p.splits : kMaxSplits;
  if (!TensorCoreDecode(p)) return GroupedAttentionSplits(p);
  return TensorCoreDecodeSplits(
      p,
      WithDecodeForm(IsFp8(p.cache), p.decode_stages, p.decode_ldmatrix,
                     [&]<bool kFp8, int kStages, bool kLdmatrix>() {
                       return ResidentDecodeWarps<kFp8, kStages, kLdmatrix>(p.num_multiprocessors);
                     }));
}

int PagedAttentionSplits(const PagedAttentionParams& params) {
  return PerTokenCount(params) == 0 || !GroupedAttention(params) ? 1 : AttentionSplits(params);
}

DecodeKernelResources TensorCoreDecodeKernelResources(bool fp8_cache, int stages, bool ldmatrix) {
  // [&]: a lambda without captures would have a conversion to a function pointer, which nvcc
  // cannot declare for a template of non-type parameters only.
  return WithDecodeForm(fp8_cache, stages, ldmatrix, [&]<bool kFp8, int kStages, bool kLdmatrix>() {
    cudaFuncAttributes attributes{};
    INFERBOX_CUDA_CHECK(cudaFuncGetAttributes(
        &attributes, TensorCoreDecodeAttentionKernel<kFp8, kStages, kLdmatrix>));
    DecodeKernelResources resources;
    resources.registers = attributes.numRegs;
    resources.spill_bytes = static_cast<int64_t>(attributes.localSizeBytes);
    resources.blocks_per_multiprocessor =
        static_cast<int>(ResidentDecodeWarps<kFp8, kStages, kLdmatrix>(1) / kDecodeWarps);
    resources.warps_per_block = kDecodeWarps;
    resources.stages = kStages;
    resources.shared_bytes = static_cast<int64_t>(sizeof(DecodeShared<kFp8, kStages, kLdmatrix>));
    return resources;
  });
}

int64_t PagedAttentionWorkspaceFloats(const PagedAttentionParams& params) {
  if (PerTokenCount(params) == 0 || !GroupedAttention(params)) return 0;
  const int splits = AttentionSplits(params);
  return splits == 1 ? 0
                     : PerTokenCount(params) * params.num_heads * splits * (params.head_dim + 2);
}

// TensorCorePrefillAttentionKernel<kFp8, kHalves> with its dynamic shared memory allowed (and
// the largest carveout asked for), once per device.
template <bool kFp8, int kHalves>
void LaunchTensorCorePrefill(dim3 grid, const PagedAttentionParams& params, int group,
                             cudaStream_t stream) {
  using Shared = PrefillSharedMemory<kFp8, kHalves>;
  static std::mutex mutex;
  static std::map<int, int> set_on;
  OncePerDevice(mutex, set_on, [] {
    INFERBOX_CUDA_CHECK(cudaFuncSetAttribute(TensorCorePrefillAttentionKernel<kFp8, kHalves>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(sizeof(Shared))));
    INFERBOX_CUDA_CHECK(cudaFuncSetAttribute(TensorCorePrefillAttentionKernel<kFp8, kHalves>,
                                             cudaFuncAttributePreferredSharedMemoryCarveout,
                                             cudaSharedmemCarveoutMaxShared));
    return 1;
  });
  TensorCorePrefillAttentionKernel<kFp8, kHalves>
      <<<grid, kFaThreads, DynamicSharedBytes<Shared>(), stream>>>(params, group);
  CheckLaunch("TensorCorePrefillAttentionKernel");
}

int64_t TiledAttentionRows(int64_t head_dim) {
  if (!TensorCoreAttention(head_dim)) return 32;
  // Two blocks of the 128-row form (106 KB of shared memory each over an FP8 cache) fit the
  // 228 KB of a Hopper or datacenter Blackwell multiprocessor; an A100's 164 KB holds one and
  // an L40S's 100 KB none: the 64-row form (90 KB) there.
  static std::mutex mutex;
  static std::map<int, int> rows_on;
  return OncePerDevice(mutex, rows_on, [] {
    int device = 0;
    INFERBOX_CUDA_CHECK(cudaGetDevice(&device));
    cudaDeviceProp properties{};
    INFERBOX_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
    static_assert(2 * (sizeof(PrefillSharedMemory<true, 2>) + 1024) <= 228 * 1024);
    static_assert(sizeof(PrefillSharedMemory<true, 1>) <= 99 * 1024);
    return properties.major == 9 || properties.major == 10 ? FaRows(2) : FaRows(1);
  });
}

// A grid's largest y.
constexpr int64_t kMaxGridY = 65535;

void LaunchPagedAttention(const PagedAttentionParams& params, cudaStream_t stream) {
  if (params.num_tokens == 0) return;
  if (params.head_dim > kMaxHeadDim || params.num_heads % params.num_kv_heads != 0) {
    FatalCudaError("LaunchPagedAttention", "head_dim above 256 or heads not a multiple of KV heads",
                   __FILE__, __LINE__);
  }
  if (!GroupedAttention(params)) {
    const dim3 grid(static_cast<unsigned>(params.num_tokens),
                    static_cast<unsigned>(params.num_heads));
    PagedAttentionKernel<<<grid, kAttentionWarps * kWarpSize, 0, stream>>>(params);
    CheckLaunch("PagedAttentionKernel");
    return;
  }
  const int group = static_cast<int>(params.num_heads / params.num_kv_heads);
  if (params.num_tiles > 0) {
    if (params.head_dim > kTiledMaxHeadDim || params.tiles == nullptr) {
      FatalCudaError("LaunchPagedAttention", "prefill tiles for a head_dim above 128", __FILE__,
                     __LINE__);
    }
    if (params.tile_rows != TiledAttentionRows(params.head_dim) || params.num_tiles > kMaxGridY) {
      FatalCudaError("LaunchPagedAttention",
                     "prefill tiles not of TiledAttentionRows' rows, or more than 65,535 of them",
                     __FILE__, __LINE__);
    }
    if (TensorCoreAttention(params.head_dim)) {
      // KV heads on x: blocks start x first, so that every KV head's last tiles start first.
      const dim3 grid(static_cast<unsigned>(params.num_kv_heads),
                      static_cast<unsigned>(params.num_tiles));
      const bool fp8 = IsFp8(params.cache);
      if (params.tile_rows == FaRows(2)) {
        fp8 ? LaunchTensorCorePrefill<true, 2>(grid, params, group, stream)
            : LaunchTensorCorePrefill<false, 2>(grid, params, group, stream);
      } else {
        fp8 ? LaunchTensorCorePrefill<true, 1>(grid, params, group, stream)
            : LaunchTensorCorePrefill<false, 1>(grid, params, group, stream);
      }
    } else {
      const dim3 tile_grid(static_cast<unsigned>(params.num_tiles),
                           static_cast<unsigned>(params.num_kv_heads));
      TiledPrefillAttentionKernel<<<tile_grid, kTiledThreads, 0, stream>>>(params, group);
      CheckLaunch("TiledPrefillAttentionKernel");
    }
  }
  if (PerTokenCount(params) == 0) return;
  if (params.decode_kernel == DecodeAttentionKernel::kTensorCore &&
      !TensorCoreDecodeApplies(params)) {
    FatalCudaError("LaunchPagedAttention",
                   "the tensor-core decode kernel takes head_dim a multiple of 16 up to 128 and "
                   "up to 8 query heads per KV head",
                   __FILE__, __LINE__);
  }
  const int splits = AttentionSplits(params);
  if (splits > 1 && params.workspace == nullptr) {
    FatalCudaError("LaunchPagedAttention", "split attention without its workspace", __FILE__,
                   __LINE__);
  }
  const dim3 grid(static_cast<unsigned>(PerTokenCount(params)),
                  static_cast<unsigned>(params.num_kv_heads), static_cast<unsigned>(splits));
  if (TensorCoreDecode(params)) {
    const int64_t items = PerTokenCount(params) * params.num_kv_heads * splits;
    const auto blocks = static_cast<unsigned>((items + kDecodeWarps - 1) / kDecodeWarps);
    WithDecodeForm(IsFp8(params.cache), params.decode_stages, params.decode_ldmatrix,
                   [&]<bool kFp8, int kStages, bool kLdmatrix>() {
                     // Its attributes set.
                     ResidentDecodeWarps<kFp8, kStages, kLdmatrix>(params.num_multiprocessors);
                     TensorCoreDecodeAttentionKernel<kFp8, kStages, kLdmatrix>
                         <<<blocks, kDecodeWarps * kWarpSize,
                            DynamicSharedBytes<DecodeShared<kFp8, kStages, kLdmatrix>>(), stream>>>(
                             params, group, splits);
                     return 0;
                   });
    CheckLaunch("TensorCoreDecodeAttentionKernel");
  } else if (params.head_dim <= 4 * kWarpSize) {
    LaunchGroupedAttention<4>(group, grid, params, splits, stream);
    CheckLaunch("GroupedAttentionKernel");
  } else {
    LaunchGroupedAttention<8>(group, grid, params, splits, stream);
    CheckLaunch("GroupedAttentionKernel");
  }
  if (splits == 1) return;
  const dim3 combine_grid(static_cast<unsigned>(PerTokenCount(params)),
                          static_cast<unsigned>(params.num_heads));
  CombineAttentionSplitsKernel<<<combine_grid, RowThreads(params.head_dim), 0, stream>>>(params,
                                                                                         splits);
  CheckLaunch("CombineAttentionSplitsKernel");
}

void LaunchSiluMul(const float* gate, const float* up, float* out, int64_t n, cudaStream_t stream) {
  InFours(
      n, Aligned(gate, 16) && Aligned(up, 16) && Aligned(out, 16),
      [&](int64_t n4) {
        SiluMul4Kernel<<<GridFor(n4, kThreads), kThreads, 0, stream>>>(
            reinterpret_cast<const float4*>(gate), reinterpret_cast<const float4*>(up),
            reinterpret_cast<float4*>(out), n4);
        CheckLaunch("SiluMul4Kernel");
      },
      [&](int64_t first, int64_t count) {
        SiluMulKernel<<<GridFor(count, kThreads), kThreads, 0, stream>>>(gate + first, up + first,
                                                                         out + first, count);
        CheckLaunch("SiluMulKernel");
      });
}

void LaunchSiluMulToBf16(const float* gate, const float* up, uint16_t* out, int64_t n,
                         cudaStream_t stream) {
  InFours(
      n, Aligned(gate, 16) && Aligned(up, 16) && Aligned(out, 8),
      [&](int64_t n4) {
        SiluMul4ToBf16Kernel<<<GridFor(n4, kThreads), kThreads, 0, stream>>>(
            reinterpret_cast<const float4*>(gate), reinterpret_cast<const float4*>(up),
            reinterpret_cast<uint2*>(out), n4);
        CheckLaunch("SiluMul4ToBf16Kernel");
      },
      [&](int64_t first, int64_t count) {
        SiluMulToBf16Kernel<<<GridFor(count, kThreads), kThreads, 0, stream>>>(
            gate + first, up + first, out + first, count);
        CheckLaunch("SiluMulToBf16Kernel");
      });
}

void LaunchGatherRows(const float* x, const int64_t* rows, int64_t num_rows, int64_t cols,
                      float* out, cudaStream_t stream) {
  if (num_rows == 0) return;
  GatherRowsKernel<<<static_cast<unsigned>(num_rows), RowThreads(cols), 0, stream>>>(x, rows, cols,
                                                                                     out);
  CheckLaunch("GatherRowsKernel");
}

namespace {
// Parts of at most kGreedyPartCols columns, up to kGreedyBlocks blocks in all (about one
// wave of 1024-thread blocks, two a multiprocessor, on an H100's 132): a row of Llama-3's
// 128,256 logits in 32 parts alone, 256 rows in one part each.
constexpr int64_t kGreedyPartCols = 4096;
constexpr int64_t kGreedyBlocks = 256;
int64_t GreedyParts(int64_t rows, int64_t cols) {
  const int64_t by_width = (cols + kGreedyPartCols - 1) / kGreedyPartCols;
  const int64_t by_blocks = rows > 0 ? kGreedyBlocks / rows : 1;
  return std::max<int64_t>(1, std::min(by_width, by_blocks));
}
}  // namespace

int64_t GreedyRowsWorkBytes(int64_t rows, int64_t cols) {
  const int64_t parts = GreedyParts(rows, cols);
  return parts > 1 ? rows * parts * static_cast<int64_t>(sizeof(GreedyPart)) : 0;
}

void LaunchGreedyRows(const float* logits, int64_t rows, int64_t cols, int32_t* tokens,
                      float* logprobs, void* work, cudaStream_t stream) {
  if (rows == 0) return;
  const int64_t parts = GreedyParts(rows, cols);
  const int64_t part_cols = (cols + parts - 1) / parts;
  auto* partials = static_cast<GreedyPart*>(work);
  // Rows on x (up to 2³¹ − 1), parts on y (at most kGreedyBlocks).
  GreedyRowsKernel<<<dim3(static_cast<unsigned>(rows), static_cast<unsigned>(parts)),
                     kGreedyThreads, 0, stream>>>(logits, cols, part_cols, tokens, logprobs,
                                                  partials);
  CheckLaunch("GreedyRowsKernel");
  if (parts == 1) return;
  GreedyCombineKernel<<<static_cast<unsigned>(rows), kWarpSize, 0, stream>>>(
      partials, static_cast<int>(parts), tokens, logprobs);
  CheckLaunch("GreedyCombineKernel");
}

void LaunchSampleRows(const SampleRowsParams& params, cudaStream_t stream) {
  if (params.rows == 0) return;
  SampleRowsKernel<<<static_cast<unsigned>(params.rows), kSampleThreads, 0, stream>>>(params);
  CheckLaunch("SampleRowsKernel");
}

void LaunchScatterColumns(const float* in, int64_t m, int64_t total, const ColumnSlices& slices,
                          cudaStream_t stream) {
  if (m * total == 0) return;
  if (slices.count < 1 || slices.count > kMaxColumnSlices || slices.begin[0] != 0 ||
      slices.begin[slices.count] != total) {
    FatalCudaError("LaunchScatterColumns", "slices that do not cover the columns", __FILE__,
                   __LINE__);
  }
  ScatterColumnsKernel<<<GridFor(m * total, kThreads), kThreads, 0, stream>>>(in, m, total, slices);
  CheckLaunch("ScatterColumnsKernel");
}

// Threads of a block: a warp per 128-byte chunk of a row, at most kSmallBatchWarps.
static int64_t SmallBatchThreads(int64_t cols, bool fp8) {
  const int64_t chunks = (cols * (fp8 ? 1 : 2) + kSmallBatchChunk - 1) / kSmallBatchChunk;
  return std::min<int64_t>(kSmallBatchWarps, chunks) * kWarpSize;
}

bool SmallBatchQuantizes(int64_t m, int64_t cols) {
  const int64_t values = m * cols;
  return cols % 16 == 0 && values <= kSmallBatchQuantizeMax &&
         values <= 8 * kSmallBatchQuantizeVectors * SmallBatchThreads(cols, true);
}

bool SmallBatchLinearFits(const SmallBatchLinearParams& p) {
  const int64_t row_bytes = p.cols * (p.fp8 ? 1 : 2);
  if (p.m < 1 || p.m > kSmallBatchMaxRows || p.count < 1 || p.count > kMaxColumnSlices ||
      row_bytes <= 0 || row_bytes % 16 != 0 || !Aligned(p.x, 16) ||
      (p.quantize && (!p.fp8 || !SmallBatchQuantizes(p.m, p.cols)))) {
    return false;
  }
  for (int i = 0; i < p.count; ++i) {
    if (!Aligned(p.weight[i], 16) || p.rows[i] < 1) return false;
  }
  return true;
}

bool DependentLaunchesRun() {
#ifdef INFERBOX_CUDA_EMULATED
  return true;
#else
  // The image the device runs: griddepcontrol.wait is compiled in from compute capability 9.0
  // (a build for 8.x alone runs on a Hopper through the PTX JIT without it).
  static std::mutex mutex;
  static std::map<int, int> runs_on;
  return OncePerDevice(mutex, runs_on, [] {
           cudaFuncAttributes attributes{};
           INFERBOX_CUDA_CHECK(
               cudaFuncGetAttributes(&attributes, SmallBatchLinearKernel<false, false>));
           return attributes.ptxVersion >= 90 && attributes.binaryVersion >= 90 ? 1 : 0;
         }) == 1;
#endif
}

void LaunchSmallBatchLinear(const SmallBatchLinearParams& p, cudaStream_t stream) {
  if (!SmallBatchLinearFits(p)) {
    FatalCudaError("LaunchSmallBatchLinear", "a call SmallBatchLinearFits refuses", __FILE__,
                   __LINE__);
  }
  int64_t tiles = 0;
  for (int i = 0; i < p.count; ++i) tiles += SmallBatchTiles(p.rows[i]);
  const auto threads = static_cast<unsigned>(SmallBatchThreads(p.cols, p.fp8));
  const auto blocks =
      static_cast<unsigned>(p.max_blocks > 0 ? std::min(tiles, p.max_blocks) : tiles);
  auto* kernel = p.quantize ? SmallBatchLinearKernel<true, true>
                 : p.fp8    ? SmallBatchLinearKernel<true, false>
                            : SmallBatchLinearKernel<false, false>;
#ifdef INFERBOX_CUDA_EMULATED
  ::cuda_emu::Launcher(kernel, "SmallBatchLinearKernel", blocks, threads, 0, stream)(p, tiles);
#else
  if (p.dependent_launch) {
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(blocks);
    config.blockDim = dim3(threads);
    config.stream = stream;
    config.attrs = &attribute;
    config.numAttrs = 1;
    if (const cudaError_t error = cudaLaunchKernelEx(&config, kernel, p, tiles);
        error != cudaSuccess) {
      cudaGetLastError();  // Reported here, as CheckLaunch reports a launch's error.
      if (!ToleratedLaunchFailures::Note("SmallBatchLinearKernel", cudaGetErrorString(error))) {
        FatalCudaError("SmallBatchLinearKernel", cudaGetErrorString(error), __FILE__, __LINE__);
      }
      return;
    }
  } else {
    kernel<<<blocks, threads, 0, stream>>>(p, tiles);
  }
#endif
  CheckLaunch("SmallBatchLinearKernel");
}

void LaunchAddBias(float* out, const float* bias, int64_t m, int64_t n, cudaStream_t stream) {
  if (m * n == 0) return;
  AddBiasKernel<<<GridFor(m * n, kThreads), kThreads, 0, stream>>>(out, bias, m, n);
  CheckLaunch("AddBiasKernel");
}

}  // namespace inferbox::engine::cuda
