// FP8 E4M3 as the CPU reference encodes it (fp8.h), against the format's definition: every
// code's value from the formula, every BF16 value's rounding against a search for the
// nearest code, and the CPU backend's FP8 Linear against the exact product.
#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "inferbox/engine/backend/backend.h"
#include "inferbox/engine/backend/fp8.h"

namespace inferbox::engine {
namespace {

TEST(Fp8E4M3, EveryCodeHasTheValueTheFormatDefines) {
  EXPECT_EQ(Fp8E4M3ToFloat(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(Fp8E4M3ToFloat(0x80)));
  EXPECT_EQ(Fp8E4M3ToFloat(0x01), std::ldexp(1.0f, -9));  // The least subnormal.
  EXPECT_EQ(Fp8E4M3ToFloat(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(Fp8E4M3ToFloat(0x08), std::ldexp(1.0f, -6));  // The least normal.
  EXPECT_EQ(Fp8E4M3ToFloat(0x38), 1.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x39), 1.125f);
  EXPECT_EQ(Fp8E4M3ToFloat(0xB8), -1.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x7E), 448.0f);  // The largest: no infinities.
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0x7F)));
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0xFF)));
  // Positive codes increase with their value, negative ones mirror them, and each code
  // encodes back to itself.
  for (unsigned code = 1; code <= 0x7E; ++code) {
    EXPECT_GT(Fp8E4M3ToFloat(static_cast<uint8_t>(code)),
              Fp8E4M3ToFloat(static_cast<uint8_t>(code - 1)));
    EXPECT_EQ(Fp8E4M3ToFloat(static_cast<uint8_t>(code | 0x80)),
              -Fp8E4M3ToFloat(static_cast<uint8_t>(code)));
    EXPECT_EQ(FloatToFp8E4M3(Fp8E4M3ToFloat(static_cast<uint8_t>(code))), code);
    EXPECT_EQ(FloatToFp8E4M3(Fp8E4M3ToFloat(static_cast<uint8_t>(code | 0x80))), code | 0x80);
  }
}

// The code nearest |value| (ties to the even code), saturated at 448, with value's sign.
uint8_t NearestCode(float value) {
  const float magnitude = std::fabs(value);
  unsigned best = 0;
  for (unsigned code = 1; code <= 0x7E; ++code) {
    const float error = std::fabs(Fp8E4M3ToFloat(static_cast<uint8_t>(code)) - magnitude);
    const float best_error = std::fabs(Fp8E4M3ToFloat(static_cast<uint8_t>(best)) - magnitude);
    if (error < best_error || (error == best_error && code % 2 == 0)) best = code;
  }
  return static_cast<uint8_t>((std::signbit(value) ? 0x80 : 0) | best);
}

TEST(Fp8E4M3, EveryBf16ValueRoundsToTheNearestCodeTiesToEven) {
  int checked = 0;
  for (uint32_t bits = 0; bits <= 0xFFFF; ++bits) {
    const float value = std::bit_cast<float>(bits << 16);
    if (std::isnan(value)) {
      EXPECT_EQ(FloatToFp8E4M3(value) & 0x7F, 0x7F) << "NaN stays NaN";
      continue;
    }
    ASSERT_EQ(FloatToFp8E4M3(value), NearestCode(value)) << "value " << value;
    ++checked;
  }
  EXPECT_EQ(checked, 65536 - 2 * 127);
  // Ties: 1.0625 lies halfway between 1 (0x38) and 1.125 (0x39), 1.1875 between 0x39 and
  // 1.25 (0x3A); the least subnormal's half rounds to zero, one and a half of it to two.
  EXPECT_EQ(FloatToFp8E4M3(1.0625f), 0x38);
  EXPECT_EQ(FloatToFp8E4M3(1.1875f), 0x3A);
  EXPECT_EQ(FloatToFp8E4M3(std::ldexp(1.0f, -10)), 0x00);
  EXPECT_EQ(FloatToFp8E4M3(3 * std::ldexp(1.0f, -10)), 0x02);
  // Saturation, not NaN: past 448 (464 and beyond would round to the NaN code), infinity.
  EXPECT_EQ(FloatToFp8E4M3(465.0f), 0x7E);
  EXPECT_EQ(FloatToFp8E4M3(-1e30f), 0xFE);
  EXPECT_EQ(FloatToFp8E4M3(INFINITY), 0x7E);
}

TEST(Fp8E4M3, FloatsBetweenBf16ValuesRoundToTheNearestCode) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits(0, 0x43FFFFFFu);  // Up to ~512.
  for (int i = 0; i < 200000; ++i) {
    const float value = std::bit_cast<float>(bits(rng)) * (i % 2 == 0 ? 1.0f : -1.0f);
    ASSERT_EQ(FloatToFp8E4M3(value), NearestCode(value)) << "value " << value;
  }
}

TEST(Fp8E4M3, TheScaleMapsTheLargestMagnitudeTo448) {
  EXPECT_EQ(Fp8Scale(448.0f), 1.0f);
  EXPECT_EQ(Fp8Scale(0.0f), 1.0f);  // All zeros: any scale gives zero codes.
  EXPECT_EQ(FloatToFp8E4M3(3.5f / Fp8Scale(3.5f)), 0x7E);
  EXPECT_EQ(RoundToBf16(1.0f + std::ldexp(1.0f, -9)), 1.0f);  // A tie, to even.
  EXPECT_EQ(RoundToBf16(1.0f + 3 * std::ldexp(1.0f, -9)), 1.0f + std::ldexp(1.0f, -7));
}

// The CPU backend's FP8 Linear is the product of the quantised operands: within FP8's
// rounding (2⁻⁴ relative per operand, after BF16's 2⁻⁹) of the exact product, and not equal
// to it (the quantisation happened).
TEST(CpuFp8Linear, IsTheProductOfTheQuantisedOperands) {
  constexpr int64_t kRows = 48, kCols = 64, kM = 5;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> w(kRows * kCols), x(kM * kCols);
  for (float& value : w) value = normal(rng);
  for (float& value : x) value = 0.1f * normal(rng);
  auto backend = MakeCpuBackend();
  const Weight host{DType::kF32, w.data(), kRows, kCols};
  auto loaded = backend->LoadFp8Weights({&host, 1});
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_EQ(loaded->front().dtype, DType::kF8E4M3);
  auto x_buffer = backend->Allocate(kM * kCols);
  auto out_buffer = backend->Allocate(kM * kRows);
  backend->Upload(x, x_buffer->data());
  backend->Linear(x_buffer->data(), kM, loaded->front(), nullptr, out_buffer->data());
  const std::span<const float> out = out_buffer->data();
  double worst_error = 0.0;
  for (int64_t i = 0; i < kM; ++i) {
    for (int64_t j = 0; j < kRows; ++j) {
      double exact = 0.0, bound = 0.0;
      for (int64_t c = 0; c < kCols; ++c) {
        exact += static_cast<double>(x[i * kCols + c]) * w[j * kCols + c];
        bound += std::fabs(static_cast<double>(x[i * kCols + c]) * w[j * kCols + c]);
      }
      const double error = std::fabs(out[i * kRows + j] - exact);
      EXPECT_LE(error, bound * (2 * 0.0625 + 0.01)) << "row " << i << ", column " << j;
      worst_error = std::max(worst_error, error);
    }
  }
  EXPECT_GT(worst_error, 1e-4) << "the output is the unquantised product";
}

// Shapes FP8 GEMMs do not take are loaded as they would be without it, on every backend.
TEST(CpuFp8Linear, WeightsWhoseShapesFp8CannotTakeStayAsTheyAre) {
  std::vector<float> w(40 * 64, 0.5f);
  const Weight hosts[] = {{DType::kF32, w.data(), 40, 64}};  // 40 rows: not a multiple of 16.
  auto backend = MakeCpuBackend();
  auto loaded = backend->LoadFp8Weights(hosts);
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->front().dtype, DType::kF32);
  EXPECT_FALSE(Backend::Fp8Quantizable(hosts));
}

}  // namespace
}  // namespace inferbox::engine
