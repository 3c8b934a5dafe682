// cuBLASLt for the CUDA backend: the library loaded at run time, and its GEMMs with the
// algorithm chosen once per shape (LtGemm); with DeviceAllocation, the device memory they
// and the backend hold. Used by the backend (cuda_backend.cc) and by inferbox-linear-bench,
// which sets them beside the backend's own small-batch kernel.
#pragma once

#include <cstdint>
#include <map>
#include <tuple>
#include <utility>

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "inferbox/common/status.h"
#include "kernels.h"

// (A failure while a step is recorded is kept instead: ToleratedLaunchFailures.)
#define INFERBOX_CUBLAS_CHECK(call)                                                 \
  do {                                                                              \
    const cublasStatus_t inferbox_cublas_status = (call);                           \
    if (inferbox_cublas_status != CUBLAS_STATUS_SUCCESS &&                          \
        !::inferbox::engine::cuda::ToleratedLaunchFailures::Note(                   \
            #call, Lt().GetStatusString(inferbox_cublas_status))) {                 \
      ::inferbox::engine::cuda::FatalCudaError(                                     \
          #call, Lt().GetStatusString(inferbox_cublas_status), __FILE__, __LINE__); \
    }                                                                               \
  } while (false)

namespace inferbox::engine::cuda {

// cuBLASLt, loaded at run time (dlopen) rather than linked: the engine binary then starts on
// a box without NVIDIA's CUDA libraries and serves --device cpu there; --device cuda says
// what is missing. The CUDA runtime is linked statically for the same reason.
struct CublasLtApi {
#define INFERBOX_LT_FUNCTION(name) decltype(&::cublasLt##name) name = nullptr;
  INFERBOX_LT_FUNCTION(Create)
  INFERBOX_LT_FUNCTION(Destroy)
  INFERBOX_LT_FUNCTION(GetStatusString)
  INFERBOX_LT_FUNCTION(Matmul)
  INFERBOX_LT_FUNCTION(MatmulAlgoGetHeuristic)
  INFERBOX_LT_FUNCTION(MatmulDescCreate)
  INFERBOX_LT_FUNCTION(MatmulDescDestroy)
  INFERBOX_LT_FUNCTION(MatmulDescSetAttribute)
  INFERBOX_LT_FUNCTION(MatmulPreferenceCreate)
  INFERBOX_LT_FUNCTION(MatmulPreferenceDestroy)
  INFERBOX_LT_FUNCTION(MatmulPreferenceSetAttribute)
  INFERBOX_LT_FUNCTION(MatrixLayoutCreate)
  INFERBOX_LT_FUNCTION(MatrixLayoutDestroy)
#undef INFERBOX_LT_FUNCTION
};

// The loaded API, or why it could not be loaded. Loaded once; never unloaded.
const Result<CublasLtApi>& LoadCublasLt();
// Only called once LoadCublasLt has loaded it.
const CublasLtApi& Lt();

// Device memory released with the object (stream-ordered when a stream is given).
class DeviceAllocation {
 public:
  DeviceAllocation() = default;
  DeviceAllocation(int64_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes == 0) return;
    if (stream_ != nullptr) {
      INFERBOX_CUDA_CHECK(cudaMallocAsync(&data_, static_cast<size_t>(bytes), stream_));
    } else {
      INFERBOX_CUDA_CHECK(cudaMalloc(&data_, static_cast<size_t>(bytes)));
    }
  }
  DeviceAllocation(DeviceAllocation&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), stream_(other.stream_) {}
  DeviceAllocation& operator=(DeviceAllocation&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(stream_, other.stream_);
    return *this;
  }
  DeviceAllocation(const DeviceAllocation&) = delete;
  DeviceAllocation& operator=(const DeviceAllocation&) = delete;
  ~DeviceAllocation() {
    if (data_ == nullptr) return;
    if (stream_ != nullptr) {
      INFERBOX_CUDA_CHECK(cudaFreeAsync(data_, stream_));
    } else {
      INFERBOX_CUDA_CHECK(cudaFree(data_));
    }
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

// out[m, n] (float32) = x[m, k] (BF16) · w[n, k]ᵀ (BF16), float32 accumulation. cuBLASLt is
// column-major, so it computes outᵀ[n, m] = w · xᵀ with w transposed (the "TN" form FP8
// GEMMs require). The chosen algorithm is kept per shape. RunFp8: the same of FP8 E4M3 x and
// w, the product multiplied by both scales (device floats).
class LtGemm {
 public:
  LtGemm();
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  void Run(const uint16_t* x, const uint16_t* w, float* out, int64_t m, int64_t n, int64_t k,
           cudaStream_t stream) {
    Launch(PlanFor(m, n, k, OutAlignment(out), /*fp8=*/false), x, w, out, stream);
  }
  void RunFp8(const uint8_t* x, const float* x_scale, const uint8_t* w, const float* w_scale,
              float* out, int64_t m, int64_t n, int64_t k, cudaStream_t stream) {
    const Plan& plan = PlanFor(m, n, k, OutAlignment(out), /*fp8=*/true);
    // A is w, B is x (outᵀ = w · xᵀ).
    INFERBOX_CUBLAS_CHECK(Lt().MatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                                      &w_scale, sizeof(w_scale)));
    INFERBOX_CUBLAS_CHECK(Lt().MatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                                      &x_scale, sizeof(x_scale)));
    Launch(plan, x, w, out, stream);
  }

 private:
  // The output may be a part of a larger buffer (the vocabulary-parallel LM head's slice of
  // the all-gather): its alignment is part of the plan (the inputs are whole allocations).
  static uint32_t OutAlignment(const float* out) {
    uint32_t alignment = 256;
    while (reinterpret_cast<uintptr_t>(out) % alignment != 0) alignment /= 2;
    return alignment;
  }

  struct Plan;
  void Launch(const Plan& plan, const void* x, const void* w, float* out, cudaStream_t stream) {
    const float alpha = 1.0f;
    const float beta = 0.0f;
    INFERBOX_CUBLAS_CHECK(Lt().Matmul(handle_, plan.op, &alpha, w, plan.a, x, plan.b, &beta, out,
                                      plan.c, out, plan.c, &plan.algo, workspace_.as<void>(),
                                      kWorkspaceBytes, stream));
  }

  static constexpr int64_t kWorkspaceBytes = 32 << 20;
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };

  // The plan of a shape, made (its algorithm chosen by cuBLASLt's heuristic) the first time.
  const Plan& PlanFor(int64_t m, int64_t n, int64_t k, uint32_t out_alignment, bool fp8);

  cublasLtHandle_t handle_ = nullptr;
  DeviceAllocation workspace_;
  DeviceAllocation scale_placeholder_;  // Device floats for FP8 plans' scale pointers.
  std::map<std::tuple<int64_t, int64_t, int64_t, uint32_t, bool>, Plan> plans_;
};

}  // namespace inferbox::engine::cuda
