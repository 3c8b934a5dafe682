#include "lt_gemm.h"

#include <fmt/format.h>

#include "inferbox/common/shared_library.h"

namespace inferbox::engine::cuda {

const Result<CublasLtApi>& LoadCublasLt() {
  static const Result<CublasLtApi> api = []() -> Result<CublasLtApi> {
    auto library = SharedLibrary::Open(
        {"libcublasLt.so.13", "libcublasLt.so"},
        "cuBLASLt of CUDA 13 (libcublasLt.so.13) is not installed or not on the library path");
    if (!library.ok()) return library.status();
    CublasLtApi loaded;
#define INFERBOX_LT_RESOLVE(name) library->Resolve(loaded.name, "cublasLt" #name);
    INFERBOX_LT_RESOLVE(Create)
    INFERBOX_LT_RESOLVE(Destroy)
    INFERBOX_LT_RESOLVE(GetStatusString)
    INFERBOX_LT_RESOLVE(Matmul)
    INFERBOX_LT_RESOLVE(MatmulAlgoGetHeuristic)
    INFERBOX_LT_RESOLVE(MatmulDescCreate)
    INFERBOX_LT_RESOLVE(MatmulDescDestroy)
    INFERBOX_LT_RESOLVE(MatmulDescSetAttribute)
    INFERBOX_LT_RESOLVE(MatmulPreferenceCreate)
    INFERBOX_LT_RESOLVE(MatmulPreferenceDestroy)
    INFERBOX_LT_RESOLVE(MatmulPreferenceSetAttribute)
    INFERBOX_LT_RESOLVE(MatrixLayoutCreate)
    INFERBOX_LT_RESOLVE(MatrixLayoutDestroy)
#undef INFERBOX_LT_RESOLVE
    if (!library->missing().empty()) {
      return FailedPreconditionError("the cuBLASLt found lacks " + library->missing() +
                                     " (an older CUDA than 13?)");
    }
    return loaded;
  }();
  return api;
}

const CublasLtApi& Lt() {
  return *LoadCublasLt();
}

LtGemm::LtGemm() {
  INFERBOX_CUBLAS_CHECK(Lt().Create(&handle_));
  workspace_ = DeviceAllocation(kWorkspaceBytes, nullptr);
  scale_placeholder_ = DeviceAllocation(256, nullptr);
}
LtGemm::~LtGemm() {
  for (auto& [shape, plan] : plans_) {
    Lt().MatrixLayoutDestroy(plan.a);
    Lt().MatrixLayoutDestroy(plan.b);
    Lt().MatrixLayoutDestroy(plan.c);
    Lt().MatmulDescDestroy(plan.op);
  }
  Lt().Destroy(handle_);
}

const LtGemm::Plan& LtGemm::PlanFor(int64_t m, int64_t n, int64_t k, uint32_t out_alignment,
                                    bool fp8) {
  const auto key = std::make_tuple(m, n, k, out_alignment, fp8);
  if (auto found = plans_.find(key); found != plans_.end()) return found->second;
  Plan plan;
  INFERBOX_CUBLAS_CHECK(Lt().MatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t transpose = CUBLAS_OP_T;
  const cublasOperation_t keep = CUBLAS_OP_N;
  INFERBOX_CUBLAS_CHECK(Lt().MatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSA,
                                                    &transpose, sizeof(transpose)));
  INFERBOX_CUBLAS_CHECK(
      Lt().MatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSB, &keep, sizeof(keep)));
  const auto u = [](int64_t value) { return static_cast<uint64_t>(value); };
  const cudaDataType_t operands = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
  INFERBOX_CUBLAS_CHECK(Lt().MatrixLayoutCreate(&plan.a, operands, u(k), u(n), k));
  INFERBOX_CUBLAS_CHECK(Lt().MatrixLayoutCreate(&plan.b, operands, u(k), u(m), k));
  INFERBOX_CUBLAS_CHECK(Lt().MatrixLayoutCreate(&plan.c, CUDA_R_32F, u(n), u(m), n));
  if (fp8) {
    // The algorithm is chosen with scale pointers set, as NVIDIA's FP8 samples do; each
    // RunFp8 sets the real ones.
    const float* placeholder = scale_placeholder_.as<float>();
    for (const auto attribute :
         {CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER}) {
      INFERBOX_CUBLAS_CHECK(
          Lt().MatmulDescSetAttribute(plan.op, attribute, &placeholder, sizeof(placeholder)));
    }
  }
  cublasLtMatmulPreference_t preference = nullptr;
  INFERBOX_CUBLAS_CHECK(Lt().MatmulPreferenceCreate(&preference));
  const uint64_t workspace = kWorkspaceBytes;
  INFERBOX_CUBLAS_CHECK(Lt().MatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace)));
  for (const auto attribute :
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    INFERBOX_CUBLAS_CHECK(Lt().MatmulPreferenceSetAttribute(preference, attribute, &out_alignment,
                                                            sizeof(out_alignment)));
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  INFERBOX_CUBLAS_CHECK(Lt().MatmulAlgoGetHeuristic(handle_, plan.op, plan.a, plan.b, plan.c,
                                                    plan.c, preference, 1, &result, &found));
  Lt().MatmulPreferenceDestroy(preference);
  if (found == 0) {
    FatalCudaError(
        "cublasLtMatmulAlgoGetHeuristic",
        fmt::format("no algorithm for a {}x{}x{} {} GEMM", m, n, k, fp8 ? "FP8 E4M3" : "BF16")
            .c_str(),
        __FILE__, __LINE__);
  }
  plan.algo = result.algo;
  return plans_.emplace(key, plan).first->second;
}

}  // namespace inferbox::engine::cuda
