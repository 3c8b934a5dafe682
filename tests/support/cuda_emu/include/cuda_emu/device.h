// The kernel side of the CUDA emulator (tests/support/cuda_emu): what a .cu file of the CUDA
// backend needs to compile as C++ and run on the CPU. rewrite_launches.py turns each
// `kernel<<<grid, block, shared, stream>>>(args)` into `::cuda_emu::Launcher(...)(args)` and
// includes this header first.
//
// Semantics kept: every CUDA thread of a block is a fiber with its own stack and registers;
// __syncthreads waits for every live thread of the block; a warp shuffle waits for its
// warp's lanes and fails the run (a clear message, then abort, like a device fault) when a
// lane named by the mask has exited, does not exist or waits at a different barrier;
// __shared__ variables are one per block (blocks run one at a time per host thread).
// Not kept: timing, memory coherence between blocks beyond atomics, and launch bounds.
#pragma once

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

#include <cuda_runtime.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))

namespace cuda_emu {

// The built-in index variables of the running fiber (set by the executor before it resumes
// one).
extern thread_local uint3 current_thread_idx;
extern thread_local uint3 current_block_idx;
extern thread_local dim3 current_block_dim;
extern thread_local dim3 current_grid_dim;

// Runs `body` once per thread of every block of `grid` (blocks of `block` threads) and
// returns when all have finished; an invalid configuration sets the last error instead, as
// CUDA's launch does.
void RunKernel(const char* name, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
               const std::function<void()>& body);

// __syncthreads of the running fiber.
void SyncThreads();

// The running thread's lane in its warp (from its linear index in the block).
int LaneId();

// Warp exchange: publishes `mine` for this lane, waits for the lanes of `mask` and returns
// the value lane `source` published (its own when source is out of range).
uint64_t WarpExchange(uint64_t mine, unsigned mask, int source, const char* what);

// Warp all-gather: publishes `mine` for this lane, waits for every lane of the warp and
// copies what each published into all[0 .. 31].
void WarpAllGather(uint64_t mine, uint64_t* all, const char* what);

// PTX's mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, which inline assembly cannot
// give the CPU: d += A·B for the warp's 16×16 BF16 A and 16×8 BF16 B fragments, each lane
// holding a[4] and b[2] (two BF16 values per register, the lower half first) and d[4], in
// the lane layouts of the PTX ISA ("Matrix Fragments for mma.m16n8k16"): with g = lane / 4
// and t = lane % 4, a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1], a[2] = A[g][2t+8, 2t+9],
// a[3] = A[g+8][2t+8, 2t+9]; b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g]; d[0..1] =
// D[g][2t, 2t+1], d[2..3] = D[g+8][2t, 2t+1]. Every lane must call it (a warp barrier).
void MmaM16n8k16Bf16(float* d, const uint32_t* a, const uint32_t* b);
// The same with FP16 operands (mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32).
void MmaM16n8k16F16(float* d, const uint32_t* a, const uint32_t* b);
// mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 (sm_89 and later): the same shape
// with 32 k and FP8 E4M3 operands, four a register (the lowest byte first), in the layouts of
// the PTX ISA ("Matrix Fragments for mma.m16n8k32"): a[0] = A[g][4t .. 4t+3], a[1] =
// A[g+8][4t ..], a[2] = A[g][4t+16 ..], a[3] = A[g+8][4t+16 ..]; b[0] = B[4t .. 4t+3][g],
// b[1] = B[4t+16 ..][g]; d as above.
void MmaM16n8k32E4m3(float* d, const uint32_t* a, const uint32_t* b);
// PTX's ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: four 8×8 matrices of 16-bit
// elements, lane l giving the address of row l % 8 of matrix l / 8 (16 bytes, 16-byte
// aligned); with g = lane / 4 and t = lane % 4, r[i] = matrix i's [g][2t, 2t+1] (the lower
// half first), or with `transpose` its [2t][g] and [2t+1][g]: the layouts of mma.m16n8k16's
// fragments. Every lane must call it (a warp barrier).
void LoadMatricesX4(uint32_t* r, const void* row, bool transpose);

template <typename Kernel>
class Launcher {
 public:
  Launcher(Kernel* kernel, const char* name, dim3 grid, dim3 block, size_t shared_bytes = 0,
           cudaStream_t stream = nullptr)
      : kernel_(kernel),
        name_(name),
        grid_(grid),
        block_(block),
        shared_bytes_(shared_bytes),
        stream_(stream) {}
  template <typename... Args>
  void operator()(Args&&... args) const {
    // Each thread gets its own copies of the arguments, as kernel parameters are.
    auto call = [kernel = kernel_, ... copies = std::decay_t<Args>(args)]() { kernel(copies...); };
    RunKernel(name_, grid_, block_, shared_bytes_, stream_, call);
  }

 private:
  Kernel* kernel_;
  const char* name_;
  dim3 grid_;
  dim3 block_;
  size_t shared_bytes_;
  cudaStream_t stream_;
};

template <typename T>
uint64_t ToBits(T value) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}
template <typename T>
T FromBits(uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

}  // namespace cuda_emu

#define threadIdx (::cuda_emu::current_thread_idx)
#define blockIdx (::cuda_emu::current_block_idx)
#define blockDim (::cuda_emu::current_block_dim)
#define gridDim (::cuda_emu::current_grid_dim)

inline void __syncthreads() {
  ::cuda_emu::SyncThreads();
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  const int lane = ::cuda_emu::LaneId();
  const int segment = lane & ~(width - 1);
  const int source = segment | ((lane ^ lane_mask) & (width - 1));
  return ::cuda_emu::FromBits<T>(
      ::cuda_emu::WarpExchange(::cuda_emu::ToBits(value), mask, source, "__shfl_xor_sync"));
}

template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  const int lane = ::cuda_emu::LaneId();
  const int in_segment = lane & (width - 1);
  const int source = in_segment >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane;
  return ::cuda_emu::FromBits<T>(
      ::cuda_emu::WarpExchange(::cuda_emu::ToBits(value), mask, source, "__shfl_up_sync"));
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  const int lane = ::cuda_emu::LaneId();
  const int in_segment = lane & (width - 1);
  const int source =
      in_segment + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  return ::cuda_emu::FromBits<T>(
      ::cuda_emu::WarpExchange(::cuda_emu::ToBits(value), mask, source, "__shfl_down_sync"));
}

template <typename T>
T __shfl_sync(unsigned mask, T value, int source_lane, int width = 32) {
  const int lane = ::cuda_emu::LaneId();
  const int source = (lane & ~(width - 1)) | (source_lane & (width - 1));
  return ::cuda_emu::FromBits<T>(
      ::cuda_emu::WarpExchange(::cuda_emu::ToBits(value), mask, source, "__shfl_sync"));
}

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::cuda_emu::WarpExchange(0, mask, -1, "__syncwarp");
}

inline float __uint_as_float(unsigned int bits) {
  return std::bit_cast<float>(bits);
}
inline unsigned int __float_as_uint(float value) {
  return std::bit_cast<unsigned int>(value);
}
inline long long __double_as_longlong(double value) {
  return std::bit_cast<long long>(value);
}
inline double __longlong_as_double(long long bits) {
  return std::bit_cast<double>(bits);
}
inline float rsqrtf(float x) {
  return 1.0f / std::sqrt(x);
}
inline float __expf(float x) {
  return std::exp(x);
}
inline float __logf(float x) {
  return std::log(x);
}
inline float __fdividef(float x, float y) {
  return x / y;
}

// Atomics: real ones, as blocks may run on several host threads.
template <typename T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}
template <typename T>
T atomicMin(T* address, T value) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (value < old && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}
template <typename T>
T atomicMax(T* address, T value) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (value > old && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}
template <typename T>
T atomicExch(T* address, T value) {
  return std::atomic_ref<T>(*address).exchange(value);
}
template <typename T>
T atomicCAS(T* address, T compare, T value) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value);
  return compare;
}
