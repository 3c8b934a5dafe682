// Warp matrix multiply-accumulate (nvcuda::wmma) for the CUDA emulator
// (tests/support/cuda_emu), with the documented semantics of the 16×16×16 shapes: a fragment
// holds a tile of a matrix; load_matrix_sync reads element (i, j) at p[i·ldm + j] (row_major)
// or p[i + j·ldm] (col_major); mma_sync computes D = A·B + C with float accumulation. How a
// GPU spreads a fragment over the warp's lanes is unspecified, so here every lane holds the
// whole tile (code that touches fragment elements one by one must treat them all alike,
// which is what the API allows). Every call is warp-collective: it waits for all 32 lanes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_emu/device.h"

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
 public:
  static constexpr int kRows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int kCols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = kRows * kCols;
  T x[num_elements];  // Row-major.
};

namespace detail {
inline void Converge(const char* what) {
  ::cuda_emu::WarpExchange(0, 0xffffffffu, -1, what);
}
inline float Widen(float value) {
  return value;
}
inline float Widen(__nv_bfloat16 value) {
  return __bfloat162float(value);
}
inline float Widen(__half value) {
  return __half2float(value);
}
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, T value) {
  detail::Converge("wmma::fill_fragment");
  for (T& element : f.x) element = value;
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>, "accumulators are loaded with a layout");
  detail::Converge("wmma::load_matrix_sync");
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int i = 0; i < F::kRows; ++i) {
    for (int j = 0; j < F::kCols; ++j) {
      f.x[i * F::kCols + j] = std::is_same_v<Layout, row_major> ? p[i * ldm + j] : p[i + j * ldm];
    }
  }
}

template <int M, int N, int K, typename T>
void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm,
                      layout_t layout) {
  detail::Converge("wmma::load_matrix_sync");
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j)
      f.x[i * N + j] = layout == mem_row_major ? p[i * ldm + j] : p[i + j * ldm];
  }
}

template <int M, int N, int K, typename T>
void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm,
                       layout_t layout) {
  detail::Converge("wmma::store_matrix_sync");
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j)
      (layout == mem_row_major ? p[i * ldm + j] : p[i + j * ldm]) = f.x[i * N + j];
  }
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d,
              const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  detail::Converge("wmma::mma_sync");
  float result[M * N];
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      float sum = c.x[i * N + j];
      for (int k = 0; k < K; ++k)
        sum += detail::Widen(a.x[i * K + k]) * detail::Widen(b.x[k * N + j]);
      result[i * N + j] = sum;
    }
  }
  for (int i = 0; i < M * N; ++i) d.x[i] = result[i];
}

}  // namespace nvcuda::wmma
