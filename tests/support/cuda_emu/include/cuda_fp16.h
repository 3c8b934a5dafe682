// IEEE half precision of the CUDA emulator (tests/support/cuda_emu): storage and widening.
#pragma once

#include <bit>
#include <cstdint>

struct __half {
  uint16_t x;
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
