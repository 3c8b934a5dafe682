// FP8 E4M3 ("e4m3fn": 4 exponent bits with bias 7, 3 mantissa bits, no infinities, S.1111.111
// is NaN), as the tensor cores of compute capability 8.9 and later read it, and the per-tensor
// scaling the FP8 linear layers use (Backend::LoadFp8Weights):
//   scale = amax / 448 (1 when amax is 0), code = E4M3(value / scale), value ≈ code · scale,
// rounding to the nearest code, ties to the even one, and saturating at ±448 as CUDA's
// __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3) does. The CPU backend (the reference)
// and the tests use these; the CUDA kernels use the intrinsic, which must give the same bits.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace inferbox::engine {

inline constexpr float kFp8E4M3Max = 448.0f;

// `value` rounded to the nearest BF16 (ties to even), as a float.
inline float RoundToBf16(float value) {
  if (std::isnan(value)) return value;
  uint32_t bits = std::bit_cast<uint32_t>(value);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return std::bit_cast<float>(bits & 0xFFFF0000u);
}

// The per-tensor scale of values whose largest magnitude is `amax`.
inline float Fp8Scale(float amax) {
  return amax > 0.0f ? amax / kFp8E4M3Max : 1.0f;
}

inline float Fp8E4M3ToFloat(uint8_t code) {
  const uint32_t exponent = (code >> 3) & 0xF;
  const uint32_t mantissa = code & 0x7;
  const float sign = (code & 0x80) != 0 ? -1.0f : 1.0f;
  if (exponent == 0xF && mantissa == 0x7) return std::nanf("");
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -9);  // Subnormal.
  return sign *
         std::ldexp(1.0f + static_cast<float>(mantissa) / 8.0f, static_cast<int>(exponent) - 7);
}

inline uint8_t FloatToFp8E4M3(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const auto sign = static_cast<uint8_t>((bits >> 24) & 0x80);
  const float magnitude = std::fabs(value);
  if (std::isnan(value)) return sign | 0x7F;
  if (magnitude >= kFp8E4M3Max) return sign | 0x7E;  // Saturated (finite).
  if (magnitude < 0.015625f) {
    // Below the least normal (2⁻⁶): multiples of 2⁻⁹; a count of 8 is that normal's code.
    // Scaling by a power of two is exact and rint rounds ties to even.
    return sign | static_cast<uint8_t>(std::rint(magnitude * 512.0f));
  }
  // Round the float32 mantissa to its top 3 bits, ties to even; a carry moves the exponent.
  const uint32_t abs_bits = bits & 0x7FFFFFFFu;
  const uint32_t rounded = (abs_bits + 0x7FFFFu + ((abs_bits >> 20) & 1u)) & ~0xFFFFFu;
  const uint32_t exponent = (rounded >> 23) - 127 + 7;
  const uint32_t mantissa = (rounded >> 20) & 0x7;
  return sign | static_cast<uint8_t>((exponent << 3) | mantissa);
}

// One KV head's `n` values as KvCacheDType::kFp8E4M3 keeps them: their codes into `codes`,
// and the scale returned: amax / 448, or 0 (codes 0) for a head of zeros, so that it weighs
// nothing where scales are compared. A head holding a NaN gets a NaN scale, so that it reads
// back as NaNs (and poisons the attention that reads it, as a NaN in a BF16 cache does).
inline float QuantizeFp8Head(const float* values, int64_t n, uint8_t* codes) {
  float amax = 0.0f;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    nan = nan || std::isnan(values[i]);
    amax = std::fmax(amax, std::fabs(values[i]));
  }
  if (!nan && amax == 0.0f) {
    std::fill(codes, codes + n, uint8_t{0});
    return 0.0f;
  }
  const float scale = nan ? std::nanf("") : amax / kFp8E4M3Max;
  for (int64_t i = 0; i < n; ++i) codes[i] = FloatToFp8E4M3(values[i] / scale);
  return scale;
}

}  // namespace inferbox::engine
