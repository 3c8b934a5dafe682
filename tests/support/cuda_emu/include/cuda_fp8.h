// FP8 of the CUDA emulator (tests/support/cuda_emu): the storage type and the conversion the
// kernels use, with CUDA's documented semantics (round to nearest even; __NV_SATFINITE:
// beyond the largest finite value, that value of the same sign; NaN stays NaN). Written as a
// search over the E4M3 codes' values rather than bit arithmetic, so that it checks the CPU
// reference's encoder (engine/backend/include/inferbox/engine/backend/fp8.h) independently.
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda_fp16.h"

typedef unsigned char __nv_fp8_storage_t;
typedef unsigned short __nv_fp8x2_storage_t;
typedef enum __nv_saturation_t { __NV_NOSAT, __NV_SATFINITE } __nv_saturation_t;
typedef enum __nv_fp8_interpretation_t { __NV_E4M3, __NV_E5M2 } __nv_fp8_interpretation_t;

namespace cuda_emu {
// The value of positive E4M3 code `code` (0 .. 0x7E: increasing).
inline float E4M3Value(unsigned code) {
  const unsigned exponent = code >> 3;
  const unsigned mantissa = code & 7;
  return exponent == 0
             ? std::ldexp(static_cast<float>(mantissa), -9)
             : std::ldexp(static_cast<float>(8 + mantissa), static_cast<int>(exponent) - 10);
}
// The value of any E4M3 code (0x7F and 0xFF are NaN).
inline float E4M3Decode(unsigned code) {
  if ((code & 0x7Fu) == 0x7Fu) return std::nanf("");
  const float magnitude = E4M3Value(code & 0x7Fu);
  return (code & 0x80u) != 0 ? -magnitude : magnitude;
}
}  // namespace cuda_emu

// Only E4M3 with saturation is emulated (what the backend uses); anything else is a NaN.
inline __nv_fp8_storage_t __nv_cvt_float_to_fp8(float x, __nv_saturation_t saturate,
                                                __nv_fp8_interpretation_t interpretation) {
  if (std::isnan(x) || saturate != __NV_SATFINITE || interpretation != __NV_E4M3) return 0x7F;
  const unsigned sign = std::signbit(x) ? 0x80 : 0;
  const float magnitude = std::fabs(x);
  // The largest code whose value is at most the magnitude, then the nearer of it and the next.
  unsigned low = 0;
  unsigned high = 0x7E;
  if (magnitude >= cuda_emu::E4M3Value(high)) return static_cast<__nv_fp8_storage_t>(sign | high);
  while (high - low > 1) {
    const unsigned middle = (low + high) / 2;
    (cuda_emu::E4M3Value(middle) <= magnitude ? low : high) = middle;
  }
  const float below = magnitude - cuda_emu::E4M3Value(low);
  const float above = cuda_emu::E4M3Value(high) - magnitude;
  const unsigned code = below < above ? low : above < below ? high : (low % 2 == 0 ? low : high);
  return static_cast<__nv_fp8_storage_t>(sign | code);
}

// Two codes (the first in the lower byte) as halves, x the first: exact, every E4M3 value being
// a half (NaN codes give a NaN), as cvt.rn.f16x2.e4m3x2 gives them. Only E4M3 is emulated
// (anything else is a pair of NaNs).
inline __half2_raw __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t x,
                                              __nv_fp8_interpretation_t interpretation) {
  const auto half_of = [interpretation](unsigned code) {
    const float value =
        interpretation == __NV_E4M3 ? cuda_emu::E4M3Decode(code & 0xFFu) : std::nanf("");
    return __half_as_ushort(__float2half_rn(value));
  };
  return {half_of(x), half_of(static_cast<unsigned>(x) >> 8)};
}
