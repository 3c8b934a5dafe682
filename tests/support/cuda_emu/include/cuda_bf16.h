// BF16 of the CUDA emulator (tests/support/cuda_emu): the storage type and the conversions
// the kernels use, with CUDA's rounding (to nearest even; NaN becomes 0x7FFF).
#pragma once

#include <bit>
#include <cstdint>

struct __nv_bfloat16 {
  uint16_t x;
};

inline __nv_bfloat16 __float2bfloat16_rn(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return {0x7FFF};
  return {static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16)};
}
inline __nv_bfloat16 __float2bfloat16(float value) {
  return __float2bfloat16_rn(value);
}
inline float __bfloat162float(__nv_bfloat16 value) {
  return std::bit_cast<float>(static_cast<uint32_t>(value.x) << 16);
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 value) {
  return value.x;
}
