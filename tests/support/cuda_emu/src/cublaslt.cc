// The CUDA emulator's cuBLASLt (tests/support/cuda_emu), built as libcublasLt.so.13 so that
// the CUDA backend opens it exactly as it opens NVIDIA's. It implements the documented
// semantics of the calls the backend makes, and refuses what cuBLASLt refuses, so that a
// wrong layout, transpose or leading dimension fails here as it would on a GPU:
// - matrices are column-major; a layout is (type, rows, cols, ld) with ld >= rows;
// - D = alpha·op(A)·op(B) + beta·C, op(X) = X or Xᵀ by TRANSA/TRANSB: op(A) is m×k,
//   op(B) k×n, C and D m×n, and the layouts must agree (else CUBLAS_STATUS_INVALID_VALUE);
// - C is not read when beta is 0 (uninitialised C must not leak into D);
// - compute in float32 (CUBLAS_COMPUTE_32F) with float32 scale; A and B F32, F16 or BF16,
//   C and D F32 or BF16;
// - FP8: A and B both E4M3, only as cuBLASLt takes them ("TN": A transposed, B not; op(A)'s
//   rows, k and the leading dimensions multiples of 16), each multiplied by the float32 its
//   scale pointer (A_SCALE_POINTER, B_SCALE_POINTER: device memory, read when the GEMM runs)
//   holds; A, B, D and the scale pointers 16-byte aligned; scale pointers on other types are
//   refused, as cuBLASLt refuses them.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <bit>
#include <cstring>
#include <new>
#include <vector>

struct cublasLtContext {
  int magic = 0x4c74;
};
struct cublasLtMatmulDescOpaque_t {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  cublasOperation_t transa = CUBLAS_OP_N;
  cublasOperation_t transb = CUBLAS_OP_N;
  const float* a_scale = nullptr;
  const float* b_scale = nullptr;
};
struct cublasLtMatrixLayoutOpaque_t {
  cudaDataType type;
  uint64_t rows;
  uint64_t cols;
  int64_t ld;
};
struct cublasLtMatmulPreferenceOpaque_t {
  uint64_t max_workspace = 0;
  // The pointers' least alignment the chosen algorithm may assume (A, B, C, D): 256 bytes
  // unless the preference says less, as in cuBLASLt.
  uint32_t min_alignment[4] = {256, 256, 256, 256};
};

namespace {

float Load(const void* data, cudaDataType type, uint64_t index) {
  switch (type) {
    case CUDA_R_32F: return static_cast<const float*>(data)[index];
    case CUDA_R_16F: return __half2float(static_cast<const __half*>(data)[index]);
    case CUDA_R_16BF: return __bfloat162float(static_cast<const __nv_bfloat16*>(data)[index]);
    case CUDA_R_8F_E4M3: return cuda_emu::E4M3Decode(static_cast<const uint8_t*>(data)[index]);
  }
  return 0.0f;
}

void Store(void* data, cudaDataType type, uint64_t index, float value) {
  if (type == CUDA_R_32F) {
    static_cast<float*>(data)[index] = value;
  } else {
    static_cast<__nv_bfloat16*>(data)[index] = __float2bfloat16_rn(value);
  }
}

bool Operand(cudaDataType type) {
  return type == CUDA_R_32F || type == CUDA_R_16F || type == CUDA_R_16BF || type == CUDA_R_8F_E4M3;
}

// op(X) dimensions of a layout.
void OpShape(const cublasLtMatrixLayoutOpaque_t& layout, cublasOperation_t op, uint64_t* rows,
             uint64_t* cols) {
  *rows = op == CUBLAS_OP_N ? layout.rows : layout.cols;
  *cols = op == CUBLAS_OP_N ? layout.cols : layout.rows;
}

cublasStatus_t Check(cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                     cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d) {
  if (desc == nullptr || a == nullptr || b == nullptr || c == nullptr || d == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (desc->compute != CUBLAS_COMPUTE_32F || desc->scale != CUDA_R_32F) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (!Operand(a->type) || !Operand(b->type) || a->type != b->type ||
      (c->type != CUDA_R_32F && c->type != CUDA_R_16BF) || c->type != d->type) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  uint64_t m = 0, k = 0, k_b = 0, n = 0;
  OpShape(*a, desc->transa, &m, &k);
  OpShape(*b, desc->transb, &k_b, &n);
  if (k != k_b || c->rows != m || c->cols != n || d->rows != m || d->cols != n) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (a->type == CUDA_R_8F_E4M3) {
    if (desc->transa != CUBLAS_OP_T || desc->transb != CUBLAS_OP_N || m % 16 != 0 || k % 16 != 0 ||
        a->ld % 16 != 0 || b->ld % 16 != 0) {
      return CUBLAS_STATUS_NOT_SUPPORTED;
    }
  } else if (desc->a_scale != nullptr || desc->b_scale != nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  return CUBLAS_STATUS_SUCCESS;
}

// One GEMM as cublasLtMatmul was called: what it computes when its stream gets there.
struct Product {
  cublasLtMatmulDescOpaque_t desc;
  cublasLtMatrixLayoutOpaque_t a_layout, b_layout, c_layout, d_layout;
  const void* a;
  const void* b;
  const void* c;
  void* d;
  float scale_a = 0.0f;
  float scale_c = 0.0f;
};

void Compute(const Product& g) {
  uint64_t m = 0, k = 0, k_b = 0, n = 0;
  OpShape(g.a_layout, g.desc.transa, &m, &k);
  OpShape(g.b_layout, g.desc.transb, &k_b, &n);
  const auto lda = static_cast<uint64_t>(g.a_layout.ld);
  const auto ldb = static_cast<uint64_t>(g.b_layout.ld);
  const auto ldc = static_cast<uint64_t>(g.c_layout.ld);
  const auto ldd = static_cast<uint64_t>(g.d_layout.ld);
  // op(B) widened once (column j: k values); each row of op(A) widened where it is used.
  // The result goes to a scratch matrix: D may be C.
  std::vector<float> op_b(k * n);
  for (uint64_t j = 0; j < n; ++j) {
    for (uint64_t p = 0; p < k; ++p) {
      op_b[j * k + p] =
          Load(g.b, g.b_layout.type, g.desc.transb == CUBLAS_OP_N ? p + j * ldb : j + p * ldb);
    }
  }
  std::vector<float> result(m * n);
  // Threads only where the work pays for waking them (the test's host threads are few).
#pragma omp parallel if (m * n * k > (uint64_t{1} << 22))
  {
    std::vector<float> row(k);
#pragma omp for schedule(static)
    for (int64_t signed_i = 0; signed_i < static_cast<int64_t>(m); ++signed_i) {
      const auto i = static_cast<uint64_t>(signed_i);
      if (g.desc.transa == CUBLAS_OP_T && g.a_layout.type == CUDA_R_16BF) {  // The usual case.
        const auto* bits = static_cast<const uint16_t*>(g.a) + i * lda;
        for (uint64_t p = 0; p < k; ++p) {
          row[p] = std::bit_cast<float>(static_cast<uint32_t>(bits[p]) << 16);
        }
      } else {
        for (uint64_t p = 0; p < k; ++p) {
          row[p] =
              Load(g.a, g.a_layout.type, g.desc.transa == CUBLAS_OP_N ? i + p * lda : p + i * lda);
        }
      }
      for (uint64_t j = 0; j < n; ++j) {
        const float* column = op_b.data() + j * k;
        float sum = 0.0f;
        for (uint64_t p = 0; p < k; ++p) sum += row[p] * column[p];
        float value = g.scale_a * sum;
        if (g.desc.a_scale != nullptr) value *= *g.desc.a_scale;
        if (g.desc.b_scale != nullptr) value *= *g.desc.b_scale;
        if (g.scale_c != 0.0f) value += g.scale_c * Load(g.c, g.c_layout.type, i + j * ldc);
        result[i + j * m] = value;
      }
    }
  }
  for (uint64_t j = 0; j < n; ++j) {
    for (uint64_t i = 0; i < m; ++i) Store(g.d, g.d_layout.type, i + j * ldd, result[i + j * m]);
  }
}

}  // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasLtContext;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasLtGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                        cudaDataType_t scale_type) {
  if (desc == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *desc = new cublasLtMatmulDescOpaque_t{compute, scale_type};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete desc;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                              cublasLtMatmulDescAttributes_t attribute,
                                              const void* value, size_t size) {
  if (desc == nullptr || value == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  if (attribute == CUBLASLT_MATMUL_DESC_TRANSA || attribute == CUBLASLT_MATMUL_DESC_TRANSB) {
    // cuBLASLt declares these attributes int32_t (cublasOperation_t).
    if (size != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE;
    int32_t op = 0;
    std::memcpy(&op, value, sizeof(op));
    if (op != CUBLAS_OP_N && op != CUBLAS_OP_T) return CUBLAS_STATUS_NOT_SUPPORTED;
    (attribute == CUBLASLT_MATMUL_DESC_TRANSA ? desc->transa : desc->transb) =
        static_cast<cublasOperation_t>(op);
    return CUBLAS_STATUS_SUCCESS;
  }
  if (attribute == CUBLASLT_MATMUL_DESC_A_SCALE_POINTER ||
      attribute == CUBLASLT_MATMUL_DESC_B_SCALE_POINTER) {
    if (size != sizeof(const float*)) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(attribute == CUBLASLT_MATMUL_DESC_A_SCALE_POINTER ? &desc->a_scale : &desc->b_scale,
                value, sizeof(const float*));
    return CUBLAS_STATUS_SUCCESS;
  }
  return CUBLAS_STATUS_NOT_SUPPORTED;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type,
                                          uint64_t rows, uint64_t cols, int64_t ld) {
  if (layout == nullptr || ld < 0 || static_cast<uint64_t>(ld) < rows) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  *layout = new cublasLtMatrixLayoutOpaque_t{type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete layout;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* preference) {
  if (preference == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *preference = new cublasLtMatmulPreferenceOpaque_t;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t preference) {
  delete preference;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t preference,
                                                    cublasLtMatmulPreferenceAttributes_t attribute,
                                                    const void* value, size_t size) {
  if (preference == nullptr || value == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  if (attribute >= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES &&
      attribute <= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES) {
    if (size != sizeof(uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(&preference->min_alignment[attribute - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES],
                value, sizeof(uint32_t));
    return CUBLAS_STATUS_SUCCESS;
  }
  if (attribute != CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (size != sizeof(uint64_t)) return CUBLAS_STATUS_INVALID_VALUE;
  std::memcpy(&preference->max_workspace, value, sizeof(uint64_t));
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t preference, int requested,
                                              cublasLtMatmulHeuristicResult_t* results,
                                              int* returned) {
  if (handle == nullptr || preference == nullptr || requested < 1 || results == nullptr ||
      returned == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (const cublasStatus_t status = Check(desc, a, b, c, d); status != CUBLAS_STATUS_SUCCESS) {
    return status;
  }
  results[0] = {};
  results[0].algo.data[0] = 0x656d75;  // "emu": the one algorithm,
  for (int i = 0; i < 4; ++i) {        // for pointers aligned as the preference said.
    results[0].algo.data[1 + i] = preference->min_alignment[i];
  }
  results[0].state = CUBLAS_STATUS_SUCCESS;
  results[0].wavesCount = 1.0f;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha,
                              const void* a, cublasLtMatrixLayout_t a_layout, const void* b,
                              cublasLtMatrixLayout_t b_layout, const void* beta, const void* c,
                              cublasLtMatrixLayout_t c_layout, void* d,
                              cublasLtMatrixLayout_t d_layout, const cublasLtMatmulAlgo_t* algo,
                              void*, size_t, cudaStream_t stream) {
  if (handle == nullptr || alpha == nullptr || beta == nullptr || a == nullptr || b == nullptr ||
      d == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (const cublasStatus_t status = Check(desc, a_layout, b_layout, c_layout, d_layout);
      status != CUBLAS_STATUS_SUCCESS) {
    return status;
  }
  if (algo != nullptr && algo->data[0] != 0x656d75) return CUBLAS_STATUS_INVALID_VALUE;
  // An algorithm chosen for aligned pointers may fault or misread on others (cuBLASLt assumes
  // 256 bytes unless the preference says less): refused here, so that the tests see it.
  if (algo != nullptr) {
    const void* pointers[4] = {a, b, c, d};
    for (int i = 0; i < 4; ++i) {
      if (pointers[i] != nullptr &&
          reinterpret_cast<uintptr_t>(pointers[i]) % algo->data[1 + i] != 0) {
        return CUBLAS_STATUS_NOT_SUPPORTED;
      }
    }
  }
  // FP8 GEMMs take 16-byte aligned matrices and scale pointers only, whatever the algorithm
  // (cuBLASLt 13.1 on an H200 refuses a scale 4 bytes off at the GEMM, after its heuristic
  // offered algorithms for the same descriptor).
  if (a_layout->type == CUDA_R_8F_E4M3) {
    for (const void* pointer :
         {a, b, static_cast<const void*>(d), static_cast<const void*>(desc->a_scale),
          static_cast<const void*>(desc->b_scale)}) {
      if (reinterpret_cast<uintptr_t>(pointer) % 16 != 0) return CUBLAS_STATUS_NOT_SUPPORTED;
    }
  }
  // The scales are read now (host pointers), the matrices when the stream gets there.
  auto* product = new Product{*desc, *a_layout, *b_layout, *c_layout, *d_layout, a, b, c, d};
  std::memcpy(&product->scale_a, alpha, sizeof(float));
  std::memcpy(&product->scale_c, beta, sizeof(float));
  if (product->scale_c != 0.0f && c == nullptr) {
    delete product;
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const cudaError_t queued = cuda_emu_enqueue(
      stream, [](void* p) { Compute(*static_cast<const Product*>(p)); },
      [](void* p) { delete static_cast<Product*>(p); }, product);
  return queued == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

}  // extern "C"
