// IEEE half precision of the CUDA emulator (tests/support/cuda_emu): storage, widening, and
// rounding to nearest even (subnormals, overflow to infinity, NaN kept).
#pragma once

#include <bit>
#include <cstdint>

struct __half {
  uint16_t x;
};
// Two halves' bits, as CUDA's (x the lower half of a 32-bit register).
struct __half2_raw {
  unsigned short x;
  unsigned short y;
};

inline float __half2float(__half value) {
  const uint32_t sign = static_cast<uint32_t>(value.x & 0x8000u) << 16;
  const uint32_t exponent = (value.x >> 10) & 0x1Fu;
  uint32_t mantissa = value.x & 0x3FFu;
  if (exponent == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  if (exponent != 0)
    return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
  if (mantissa == 0) return std::bit_cast<float>(sign);
  int shift = 0;  // Subnormal: normalise.
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    ++shift;
  }
  return std::bit_cast<float>(sign | ((113 - shift) << 23) | ((mantissa & 0x3FFu) << 13));
}

inline __half __float2half_rn(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return {static_cast<uint16_t>(sign | 0x7E00u)};   // NaN.
  if (magnitude >= 0x477FF000u) return {static_cast<uint16_t>(sign | 0x7C00u)};  // Rounds to ∞.
  if (magnitude < 0x38800000u) {
    // Below the least normal half (2⁻¹⁴): multiples of 2⁻²⁴, rounded to nearest even.
    const float scaled = std::bit_cast<float>(magnitude) * 16777216.0f;  // Exact: × 2²⁴.
    const float floor = static_cast<float>(static_cast<uint32_t>(scaled));
    auto units = static_cast<uint32_t>(floor);
    const float rest = scaled - floor;
    if (rest > 0.5f || (rest == 0.5f && (units & 1u) != 0)) ++units;
    return {static_cast<uint16_t>(sign | units)};  // 1024 units is the least normal's code.
  }
  // Drop 13 mantissa bits, ties to even; a carry moves the exponent (and may reach ∞).
  const uint32_t rounded = magnitude + 0xFFFu + ((magnitude >> 13) & 1u);
  return {static_cast<uint16_t>(sign | (((rounded >> 13) - (112u << 10)) & 0x7FFFu))};
}

inline uint16_t __half_as_ushort(__half value) {
  return value.x;
}
inline __half __ushort_as_half(uint16_t bits) {
  return {bits};
}
