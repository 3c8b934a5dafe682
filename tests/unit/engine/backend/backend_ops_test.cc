// Every backend op against the CPU reference, in the style of llama.cpp's test-backend-ops:
// each case builds seeded random inputs of an awkward shape (odd sizes, GQA ratios, block
// boundaries, prefill chunks over a cached prefix), poisons every output with NaN, runs the
// op on the reference and on the backend under test, and compares under the op's stated
// tolerance. A NaN left in an output means the op did not write that element.
//
// Two binaries from this file: backend_ops_test (label unit) runs every case on the
// reference alone, on every machine, so the harness and the CPU backend's coverage of its
// outputs are checked everywhere; backend_ops_cuda_test (label gpu, built with CUDA) compares
// the CUDA backend with the reference and skips, saying why, where no device is present.
//
// Inputs that feed BF16 storage on CUDA (GEMM operands, the KV cache) are drawn as
// BF16-exact values, so what remains of a difference is summation order and float32 math,
// and the tolerances can be tight; where an op itself rounds to BF16 (the K/V it writes),
// the tolerance is BF16's half-ulp and says so.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "inferbox/engine/backend/backend.h"
#include "inferbox/engine/backend/fp8.h"
#ifdef INFERBOX_TEST_CUDA
#include "inferbox/engine/cuda/cuda_backend.h"
#include "inferbox/engine/cuda/device_query.h"
#endif
#ifdef INFERBOX_CUDA_EMULATED
#include <cuda_runtime.h>  // The emulator's: a call refused while a stream is captured.
#endif

namespace inferbox::engine {
namespace {

constexpr float kPoison = std::numeric_limits<float>::quiet_NaN();

uint16_t ToBf16Bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  bits += 0x7FFFu + ((bits >> 16) & 1u);  // Round to nearest even.
  return static_cast<uint16_t>(bits >> 16);
}

float FromBf16Bits(uint16_t bits) {
  const uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof(value));
  return value;
}

uint16_t ToF16Bits(float value) {  // Exact for the BF16-exact, moderate values used here.
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const int exponent = static_cast<int>((bits >> 23) & 0xFF) - 127 + 15;
  if ((bits & 0x7FFFFFFFu) == 0) return static_cast<uint16_t>(sign);
  EXPECT_GT(exponent, 0) << "value too small for an exact f16";
  EXPECT_LT(exponent, 31) << "value too large for f16";
  return static_cast<uint16_t>(sign | (static_cast<uint32_t>(exponent) << 10) |
                               ((bits >> 13) & 0x3FFu));
}

// Seeded values in [-scale, scale], BF16-exact.
std::vector<float> RandomBf16Exact(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-scale, scale);
  std::vector<float> values(n);
  for (auto& value : values) {
    value = FromBf16Bits(ToBf16Bits(uniform(rng)));
    if (std::fabs(value) < 1e-3f) value = 0.0f;  // Keep F16 copies exact (no subnormals).
  }
  return values;
}

// A weight stored in `dtype` on the host, loaded into a backend.
class HostWeight {
 public:
  HostWeight(std::vector<float> values, int64_t rows, int64_t cols, DType dtype)
      : dtype_(dtype), rows_(rows), cols_(cols) {
    if (dtype == DType::kF32) {
      bytes_.resize(values.size() * 4);
      std::memcpy(bytes_.data(), values.data(), bytes_.size());
    } else {
      bytes_.resize(values.size() * 2);
      for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t bits = dtype == DType::kBF16 ? ToBf16Bits(values[i]) : ToF16Bits(values[i]);
        std::memcpy(bytes_.data() + 2 * i, &bits, 2);
      }
    }
  }
  Weight Host() const {
    Weight host;
    host.dtype = dtype_;
    host.data = bytes_.data();
    host.rows = rows_;
    host.cols = cols_;
    return host;
  }
  Weight LoadInto(Backend& backend) const {
    auto loaded = backend.LoadWeight(Host());
    EXPECT_TRUE(loaded.ok()) << loaded.status().ToString();
    return loaded.ok() ? *loaded : Weight{};
  }
  // Quantised to FP8 (LoadFp8Weights, a group of one).
  Weight LoadFp8Into(Backend& backend) const {
    const Weight host = Host();
    auto loaded = backend.LoadFp8Weights({&host, 1});
    EXPECT_TRUE(loaded.ok()) << loaded.status().ToString();
    if (!loaded.ok()) return Weight{};
    EXPECT_EQ(loaded->front().dtype, DType::kF8E4M3);
    return loaded->front();
  }

 private:
  DType dtype_;
  int64_t rows_, cols_;
  std::vector<std::byte> bytes_;
};

// Backend memory initialised from host values (or NaN poison), read back by name.
class Tensors {
 public:
  explicit Tensors(Backend& backend) : backend_(backend) {}
  std::span<float> Input(const std::string& name, const std::vector<float>& values) {
    auto& buffer = buffers_[name] = backend_.Allocate(static_cast<int64_t>(values.size()));
    backend_.Upload(values, buffer->data());
    return buffer->data();
  }
  std::span<float> Output(const std::string& name, size_t size) {
    return Input(name, std::vector<float>(size, kPoison));
  }
  std::span<float> Span(const std::string& name) { return buffers_.at(name)->data(); }
  std::vector<float> Read(const std::string& name) {
    std::vector<float> scratch;
    const std::span<const float> host = backend_.ReadBack(buffers_.at(name)->data(), scratch);
    return {host.begin(), host.end()};
  }

 private:
  Backend& backend_;
  std::map<std::string, std::unique_ptr<Buffer>> buffers_;
};

using Outputs = std::map<std::string, std::vector<float>>;

// The key and value of `layer` at `slot`, appended to outputs "cache_keys" and "cache_values".
void AppendCacheSlot(Backend& backend, const KvCache& cache, int64_t layer, int64_t slot,
                     Outputs& outputs) {
  const auto row = static_cast<size_t>(cache.shape().num_kv_heads * cache.shape().head_dim);
  std::vector<float> key(row), value(row);
  backend.ReadKv(cache, layer, slot, key, value);
  outputs["cache_keys"].insert(outputs["cache_keys"].end(), key.begin(), key.end());
  outputs["cache_values"].insert(outputs["cache_values"].end(), value.begin(), value.end());
}

struct OpCase {
  std::string name;
  // Absolute tolerance as a fraction of the largest reference magnitude of each output
  // (`tolerances` overrides it per output); outputs named in `exact` (ids) must match
  // exactly.
  double tolerance = 0.0;
  std::map<std::string, double> tolerances;
  std::set<std::string> exact;
  // Loads FP8 weights: skipped on a GPU without FP8 tensor cores.
  bool needs_fp8 = false;
  std::function<Outputs(Backend&)> run;
};

// The tolerance of an FP8 GEMM's output against the CPU's over k products: the same codes,
// so only the summation differs; on a GPU, FP8 tensor cores also sum in a narrower format
// between promotions to float32 (about 14 bits), hence a looser bound there.
double Fp8GemmTolerance(int64_t k) {
#ifdef INFERBOX_CUDA_EMULATED
  return 1e-5 * std::sqrt(static_cast<double>(k));
#else
  return std::max(1e-3, 1e-5 * std::sqrt(static_cast<double>(k)));
#endif
}

std::ostream& operator<<(std::ostream& out, const OpCase& c) {
  return out << c.name;
}

// --- cases ---

// Seeded values in [-1, 1] that BF16 cannot hold exactly.
std::vector<float> RandomFloats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> values(n);
  for (auto& value : values) value = uniform(rng);
  return values;
}

// With exact operands only the summation order differs (float32 in the backends, float64
// or float32 BLAS in the reference). With `round_x`, x is not BF16-exact: CUDA rounds it to
// BF16 (half an ulp is at most 2⁻⁸ relative): about 1e-3 of the largest output at worst for these
// sizes, within the looser tolerance; a truncating conversion errs about twice as much, and
// systematically, so it should not pass. With `fp8`, the weight quantised to FP8
// (LoadFp8Weights): x and the weight are quantised alike by both backends (the same BF16
// values, the same scales, so the same codes), so only the summation order differs, even for
// an x that is not BF16-exact.
OpCase LinearCase(int64_t m, int64_t n, int64_t k, DType dtype, bool bias, bool round_x = false,
                  bool fp8 = false) {
  OpCase c;
  c.name = fmt::format("Linear_m{}_n{}_k{}_{}{}{}", m, n, k, fp8 ? "FP8" : DTypeName(dtype),
                       bias ? "_bias" : "", round_x ? "_inexact_x" : "");
  c.tolerance = fp8       ? Fp8GemmTolerance(k)
                : round_x ? 2.5e-3
                          : 1e-5 * std::sqrt(static_cast<double>(k));
  c.needs_fp8 = fp8;
  c.run = [=](Backend& backend) {
    const HostWeight w(RandomBf16Exact(static_cast<size_t>(n * k), 1), n, k, dtype);
    const HostWeight b(RandomBf16Exact(static_cast<size_t>(n), 2), 1, n, dtype);
    const Weight loaded = fp8 ? w.LoadFp8Into(backend) : w.LoadInto(backend);
    const Weight loaded_bias = b.LoadInto(backend);
    Tensors t(backend);
    const auto x = t.Input("x", round_x ? RandomFloats(static_cast<size_t>(m * k), 3)
                                        : RandomBf16Exact(static_cast<size_t>(m * k), 3));
    const auto out = t.Output("out", static_cast<size_t>(m * n));
    backend.Linear(x, m, loaded, bias ? &loaded_bias : nullptr, out);
    return Outputs{{"out", t.Read("out")}};
  };
  return c;
}

// Linears: one input through several weights (q, k, v with biases), each output as Linear's.
// Linear into a part of a larger buffer that starts 16 bytes past a 256-byte boundary, as
// the vocabulary-parallel LM head writes its slice of the all-gather (cuBLASLt's algorithms
// assume 256-byte aligned pointers unless told otherwise).
OpCase LinearIntoPartCase(int64_t m, int64_t n, int64_t k) {
  OpCase c;
  c.name = fmt::format("Linear_m{}_n{}_k{}_into_part", m, n, k);
  c.tolerance = 1e-5 * std::sqrt(static_cast<double>(k));
  c.run = [=](Backend& backend) {
    const HostWeight w(RandomBf16Exact(static_cast<size_t>(n * k), 60), n, k, DType::kBF16);
    const Weight loaded = w.LoadInto(backend);
    Tensors t(backend);
    const auto x = t.Input("x", RandomBf16Exact(static_cast<size_t>(m * k), 61));
    constexpr size_t kOffset = 4;  // Floats: 16 bytes.
    const auto whole = t.Output("whole", static_cast<size_t>(m * n) + kOffset);
    backend.Linear(x, m, loaded, nullptr, whole.subspan(kOffset));
    std::vector<float> all = t.Read("whole");
    return Outputs{{"out", std::vector<float>(all.begin() + kOffset, all.end())}};
  };
  return c;
}

// Every BF16 value in [-448, 448] (E4M3's range; 448 itself makes the scale exactly 1) as a
// weight's or, with `as_input`, as x's values (twice over: more than CUDA quantises in one
// block, so the other path), the other operand 64 one-hot rows (their
// codes all 448, times a scale of 1/448): each output is one code's value times the same
// constant, so one code rounded differently from the CPU reference's (ties to even,
// subnormals, saturation) is at least 2⁻⁹ off where the tolerance is 448 · 1e-6.
OpCase Fp8CodesCase(bool as_input) {
  OpCase c;
  c.name = as_input ? "Fp8_every_BF16_input_rounds_as_the_reference"
                    : "Fp8_every_BF16_weight_rounds_as_the_reference";
  c.tolerance = 1e-6;
  c.needs_fp8 = true;
  c.run = [=](Backend& backend) {
    constexpr int64_t kWidth = 64;
    std::vector<float> values;
    for (uint32_t bits = 0; bits <= 0x43E0; ++bits) {  // 0 to 448.
      values.push_back(FromBf16Bits(static_cast<uint16_t>(bits)));
      if (bits != 0) values.push_back(-values.back());
    }
    if (as_input) {
      const std::vector<float> once = values;
      values.insert(values.end(), once.begin(), once.end());
    }
    const int64_t rows =
        (static_cast<int64_t>(values.size()) + 16 * kWidth - 1) / (16 * kWidth) * 16;
    values.resize(static_cast<size_t>(rows * kWidth), 0.0f);
    std::vector<float> one_hot(kWidth * kWidth, 0.0f);
    for (int64_t i = 0; i < kWidth; ++i) one_hot[static_cast<size_t>(i * kWidth + i)] = 1.0f;
    const HostWeight w(as_input ? one_hot : values, as_input ? kWidth : rows, kWidth, DType::kBF16);
    const Weight loaded = w.LoadFp8Into(backend);
    Tensors t(backend);
    const int64_t m = as_input ? rows : kWidth;
    const auto x = t.Input("x", as_input ? values : one_hot);
    const auto out = t.Output("out", static_cast<size_t>(m * loaded.rows));
    backend.Linear(x, m, loaded, nullptr, out);
    return Outputs{{"out", t.Read("out")}};
  };
  return c;
}

// Three weights (96, 32 and 40 rows of k) with biases, as q, k and v: with `together`, loaded
// as one group (LoadWeights, as the model loads q, k, v and gate, up): the CUDA backend keeps
// them in one allocation where their sizes allow and runs batches of up to 64 rows as one
// GEMM whose output it splits.
// With `fp8` (together then), 96, 32 and 32 rows (FP8 takes multiples of 16) quantised to FP8
// (LoadFp8Weights).
struct ThreeLinears {
  ThreeLinears(Backend& backend, int64_t k, bool together, bool fp8 = false) {
    if (fp8) rows = {96, 32, 32};
    for (size_t i = 0; i < rows.size(); ++i) {
      weights.emplace_back(RandomBf16Exact(static_cast<size_t>(rows[i] * k), 30 + i), rows[i], k,
                           DType::kBF16);
      biases.emplace_back(RandomBf16Exact(static_cast<size_t>(rows[i]), 40 + i), 1, rows[i],
                          DType::kBF16);
    }
    if (together || fp8) {
      std::vector<Weight> hosts;
      for (const HostWeight& weight : weights) hosts.push_back(weight.Host());
      auto group = fp8 ? backend.LoadFp8Weights(hosts) : backend.LoadWeights(hosts);
      EXPECT_TRUE(group.ok()) << group.status().ToString();
      if (group.ok()) loaded = *group;
      if (fp8) {
        for (const Weight& weight : loaded) EXPECT_EQ(weight.dtype, DType::kF8E4M3);
      }
    } else {
      for (const HostWeight& weight : weights) loaded.push_back(weight.LoadInto(backend));
    }
    for (const HostWeight& bias : biases) loaded_biases.push_back(bias.LoadInto(backend));
  }
  // Outputs "out0" to "out2" of m rows in `t`, the middle one without a bias.
  std::vector<Backend::LinearOutput> Targets(Tensors& t, int64_t m) const {
    std::vector<Backend::LinearOutput> outputs;
    for (size_t i = 0; i < rows.size(); ++i) {
      outputs.push_back({&loaded[i], i == 1 ? nullptr : &loaded_biases[i],
                         t.Output("out" + std::to_string(i), static_cast<size_t>(m * rows[i]))});
    }
    return outputs;
  }
  void Read(Tensors& t, Outputs& result) const {
    for (size_t i = 0; i < rows.size(); ++i) {
      const std::string name = "out" + std::to_string(i);
      result.emplace(name, t.Read(name));
    }
  }

  std::vector<int64_t> rows = {96, 32, 40};
  std::vector<HostWeight> weights, biases;
  std::vector<Weight> loaded, loaded_biases;
};

// With `fp8` (loaded together): as tight with an inexact x as with an exact one (Fp8LinearCase).
OpCase LinearsCase(int64_t m, int64_t k, bool round_x, bool together = false, bool fp8 = false) {
  OpCase c;
  c.name = fmt::format("Linears_m{}_k{}{}{}{}", m, k, round_x ? "_inexact_x" : "",
                       together ? "_loaded_together" : "", fp8 ? "_FP8" : "");
  c.tolerance = fp8       ? Fp8GemmTolerance(k)
                : round_x ? 2.5e-3
                          : 1e-5 * std::sqrt(static_cast<double>(k));
  c.needs_fp8 = fp8;
  c.run = [=](Backend& backend) {
    const ThreeLinears linears(backend, k, together, fp8);
    Tensors t(backend);
    const auto x = t.Input("x", round_x ? RandomFloats(static_cast<size_t>(m * k), 33)
                                        : RandomBf16Exact(static_cast<size_t>(m * k), 33));
    backend.Linears(x, m, linears.Targets(t, m));
    Outputs result;
    linears.Read(t, result);
    return result;
  };
  return c;
}

// A norm and the Linears of its output (the CUDA backend rounds the norm straight into the
// GEMMs' BF16 input): the residual as AddRmsNorm's, the outputs within the inexact-input
// tolerance (normalised values are not BF16-exact). `normed` is not compared: a backend may
// leave it unwritten.
OpCase AddRmsNormLinearsCase(int64_t m, int64_t k, bool with_delta, bool together,
                             bool fp8 = false) {
  OpCase c;
  c.name = fmt::format("AddRmsNormLinears_m{}_k{}{}{}{}", m, k, with_delta ? "_delta" : "",
                       together ? "_loaded_together" : "", fp8 ? "_FP8" : "");
  c.tolerance = 2.5e-3;
  c.tolerances = {{"residual", 1e-6}};
  c.needs_fp8 = fp8;
  c.run = [=](Backend& backend) {
    const ThreeLinears linears(backend, k, together, fp8);
    const HostWeight gamma(RandomBf16Exact(static_cast<size_t>(k), 34, 2.0f), 1, k, DType::kBF16);
    const Weight norm = gamma.LoadInto(backend);
    Tensors t(backend);
    const auto residual = t.Input("residual", RandomBf16Exact(static_cast<size_t>(m * k), 35, 3));
    const auto delta = t.Input("delta", RandomBf16Exact(static_cast<size_t>(m * k), 36));
    const auto normed = t.Output("normed", static_cast<size_t>(m * k));
    backend.AddRmsNormLinears(residual,
                              with_delta ? std::span<const float>(delta) : std::span<float>(), m,
                              norm, 1e-6f, normed, linears.Targets(t, m));
    Outputs result{{"residual", t.Read("residual")}};
    linears.Read(t, result);
    return result;
  };
  return c;
}

// The MLP's down projection of silu(gate) ⊙ up. The product is not BF16-exact, so CUDA's
// rounding of it (as of any GEMM input) is within the inexact-input tolerance.
OpCase SiluMulLinearCase(int64_t m, int64_t n, int64_t k, bool fp8 = false) {
  OpCase c;
  c.name = fmt::format("SiluMulLinear_m{}_n{}_k{}{}", m, n, k, fp8 ? "_FP8" : "");
  c.tolerance = 2.5e-3;
  c.needs_fp8 = fp8;
  c.run = [=](Backend& backend) {
    const HostWeight w(RandomBf16Exact(static_cast<size_t>(n * k), 50), n, k, DType::kBF16);
    const Weight loaded = fp8 ? w.LoadFp8Into(backend) : w.LoadInto(backend);
    Tensors t(backend);
    const auto gate = t.Input("gate", RandomFloats(static_cast<size_t>(m * k), 51));
    const auto up = t.Input("up", RandomFloats(static_cast<size_t>(m * k), 52));
    const auto out = t.Output("out", static_cast<size_t>(m * n));
    backend.SiluMulLinear(gate, up, m, loaded, out);
    return Outputs{{"out", t.Read("out")}};
  };
  return c;
}

OpCase EmbeddingCase(int64_t hidden, DType dtype) {
  OpCase c;
  c.name = fmt::format("Embedding_h{}_{}", hidden, DTypeName(dtype));
  c.tolerance = 0.0;  // A copy of exact values.
  c.run = [=](Backend& backend) {
    constexpr int64_t kVocab = 50;
    const HostWeight table(RandomBf16Exact(static_cast<size_t>(kVocab * hidden), 4), kVocab, hidden,
                           dtype);
    const Weight loaded = table.LoadInto(backend);
    const std::vector<int32_t> ids = {0, 49, 7, 7, 23};
    const std::vector<int64_t> zeros(ids.size(), 0);
    auto step = backend.PrepareStep({ids, zeros, zeros, {}, {}, nullptr});
    Tensors t(backend);
    const auto out = t.Output("out", ids.size() * static_cast<size_t>(hidden));
    backend.Embedding(*step, loaded, out);
    return Outputs{{"out", t.Read("out")}};
  };
  return c;
}

OpCase AddRmsNormCase(int64_t m, int64_t n, bool with_delta, DType gamma_dtype) {
  OpCase c;
  c.name = fmt::format("AddRmsNorm_m{}_n{}{}_{}", m, n, with_delta ? "_delta" : "",
                       DTypeName(gamma_dtype));
  c.tolerance = 1e-5;
  c.run = [=](Backend& backend) {
    const HostWeight gamma(RandomBf16Exact(static_cast<size_t>(n), 5, 2.0f), 1, n, gamma_dtype);
    const Weight loaded = gamma.LoadInto(backend);
    Tensors t(backend);
    const auto residual = t.Input("residual", RandomBf16Exact(static_cast<size_t>(m * n), 6, 3));
    const auto delta = t.Input("delta", RandomBf16Exact(static_cast<size_t>(m * n), 7));
    const auto out = t.Output("out", static_cast<size_t>(m * n));
    backend.AddRmsNorm(residual, with_delta ? std::span<const float>(delta) : std::span<float>(), m,
                       loaded, 1e-6f, out);
    return Outputs{{"out", t.Read("out")}, {"residual", t.Read("residual")}};
  };
  return c;
}

OpCase RmsNormGroupsCase(int64_t groups, int64_t n) {
  OpCase c;
  c.name = fmt::format("RmsNormGroups_g{}_n{}", groups, n);
  c.tolerance = 1e-5;
  c.run = [=](Backend& backend) {
    const HostWeight gamma(RandomBf16Exact(static_cast<size_t>(n), 8, 2.0f), 1, n, DType::kBF16);
    const Weight loaded = gamma.LoadInto(backend);
    Tensors t(backend);
    const auto x = t.Input("x", RandomBf16Exact(static_cast<size_t>(groups * n), 9, 4));
    backend.RmsNormGroups(x, loaded, 1e-6f);
    return Outputs{{"x", t.Read("x")}};
  };
  return c;
}

RopeTable RealRope(int64_t head_dim) {  // theta 1e6 as Qwen uses.
  RopeTable table;
  for (int64_t j = 0; j < head_dim / 2; ++j) {
    table.inv_freq.push_back(static_cast<float>(
        1.0 / std::pow(1e6, static_cast<double>(2 * j) / static_cast<double>(head_dim))));
  }
  return table;
}

// The tolerance of a cache read back beside the reference's when the values written differ
// in their last float bits (the rotation's sin/cos): a BF16 cache rounds each value to 8
// significant bits, |x − bf16(x)| ≤ 2⁻⁸|x|; an FP8 one may give a value on a rounding
// boundary the next code, at most one step of the largest binade (32 of 448: 1/14 of the
// head's largest magnitude).
double CacheTolerance(KvCacheDType kv) {
  return kv == KvCacheDType::kFp8E4M3 ? 1.0 / 14 : 1.0 / 256;
}

// Rotation of q and k, and the rotated k and v stored in the cache (read back slot by slot).
// With `identity` the rotation is by angle 0 (k unchanged on every backend), so an FP8
// cache must hold the same codes and scales as the reference's: read back exactly.
OpCase RopeWriteKvCase(int64_t m, int64_t heads, int64_t kv_heads, int64_t head_dim,
                       KvCacheDType kv = KvCacheDType::kAuto, bool identity = false) {
  OpCase c;
  c.name = fmt::format("RopeWriteKv_m{}_h{}_kv{}_d{}{}{}", m, heads, kv_heads, head_dim,
                       identity ? "_identity" : "", kv == KvCacheDType::kFp8E4M3 ? "_kvfp8" : "");
  // q and k stay float32: only sin/cos rounding differs.
  c.tolerance = 2e-6;
  c.tolerances = {{"cache_keys", CacheTolerance(kv)}, {"cache_values", CacheTolerance(kv)}};
  if (identity && kv == KvCacheDType::kFp8E4M3) c.exact = {"cache_keys", "cache_values"};
  c.run = [=](Backend& backend) {
    KvCacheShape shape{2, 8, 16, kv_heads, head_dim};
    shape.dtype = kv;
    auto cache = backend.AllocateKvCache(shape);
    std::vector<int64_t> positions(static_cast<size_t>(m));
    std::vector<int64_t> slots(static_cast<size_t>(m));
    std::mt19937 rng(10);
    for (int64_t i = 0; i < m; ++i) {
      positions[static_cast<size_t>(i)] = (i * 7919) % 131072;  // Large angles too.
      slots[static_cast<size_t>(i)] = (i * 37 + 5) % shape.num_slots();
    }
    const std::vector<int32_t> ids(static_cast<size_t>(m), 0);
    RopeTable rope = RealRope(head_dim);
    if (identity) rope.inv_freq.assign(rope.inv_freq.size(), 0.0f);
    auto step = backend.PrepareStep({ids, positions, slots, {}, {}, &rope});
    Tensors t(backend);
    const auto q = t.Input("q", RandomBf16Exact(static_cast<size_t>(m * heads * head_dim), 11));
    std::vector<float> k_values = RandomBf16Exact(static_cast<size_t>(m * kv_heads * head_dim), 12);
    std::vector<float> v_values = RandomBf16Exact(static_cast<size_t>(m * kv_heads * head_dim), 13);
    if (identity) {
      // Every third value far below its head's largest: FP8's subnormal codes (a flush to
      // zero on the device would show).
      for (size_t i = 0; i < k_values.size(); i += 3) {
        k_values[i] *= 0x1p-15f;
        v_values[i] *= 0x1p-15f;
      }
    }
    const auto k = t.Input("k", k_values);
    const auto v = t.Input("v", v_values);
    backend.RopeWriteKv(*step, q, k, v, heads, *cache, 1);
    Outputs outputs{{"q", t.Read("q")}, {"k", t.Read("k")}};
    for (const int64_t slot : slots) AppendCacheSlot(backend, *cache, 1, slot, outputs);
    return outputs;
  };
  return c;
}

// Padding tokens (slot −1, as recorded decode steps pad their batch) are rotated like the
// others and written nowhere: every slot of both layers is read back.
OpCase RopeWriteKvPaddingCase(KvCacheDType kv = KvCacheDType::kAuto) {
  OpCase c;
  c.name = kv == KvCacheDType::kFp8E4M3 ? "RopeWriteKv_padding_kvfp8" : "RopeWriteKv_padding";
  c.tolerance = 2e-6;
  c.tolerances = {{"cache_keys", CacheTolerance(kv)}, {"cache_values", CacheTolerance(kv)}};
  c.run = [=](Backend& backend) {
    constexpr int64_t kHeads = 4, kKvHeads = 2, kHeadDim = 16;
    KvCacheShape shape{2, 2, 4, kKvHeads, kHeadDim};
    shape.dtype = kv;
    auto cache = backend.AllocateKvCache(shape);
    const std::vector<int64_t> positions = {3, 0, 9, 0};
    const std::vector<int64_t> slots = {5, -1, 0, -1};
    const std::vector<int32_t> ids(4, 0);
    const RopeTable rope = RealRope(kHeadDim);
    auto step = backend.PrepareStep({ids, positions, slots, {}, {}, &rope});
    Tensors t(backend);
    const auto q = t.Input("q", RandomBf16Exact(4 * kHeads * kHeadDim, 14));
    const auto k = t.Input("k", RandomBf16Exact(4 * kKvHeads * kHeadDim, 15));
    const auto v = t.Input("v", RandomBf16Exact(4 * kKvHeads * kHeadDim, 16));
    for (const int64_t layer : {0, 1}) backend.RopeWriteKv(*step, q, k, v, kHeads, *cache, layer);
    Outputs outputs{{"q", t.Read("q")}, {"k", t.Read("k")}};
    for (const int64_t layer : {0, 1}) {
      for (int64_t slot = 0; slot < shape.num_slots(); ++slot)
        AppendCacheSlot(backend, *cache, layer, slot, outputs);
    }
    return outputs;
  };
  return c;
}

// Backend::RunRecorded over nine steps of one shape (a recording backend runs the first op by
// op, records the second and replays the rest): each step's own inputs (positions, slots,
// and q, k, v uploaded into the same buffers) are used; new buffers (a new buffers_version,
// step 5) and another cache (step 7) are written, not the old ones the recording held.
OpCase RecordedStepsCase() {
  OpCase c;
  c.name = "RunRecorded_RopeWriteKv";
  c.tolerance = 2e-6;
  c.tolerances = {{"cache_keys", 1.0 / 256}, {"cache_values", 1.0 / 256}};
  c.run = [](Backend& backend) {
    constexpr int64_t kTokens = 4, kHeads = 4, kKvHeads = 2, kHeadDim = 16;
    const KvCacheShape shape{1, 4, 4, kKvHeads, kHeadDim};
    const bool recorded = backend.RecordedBatchSize(kTokens) == kTokens;
    std::vector<std::unique_ptr<KvCache>> caches;
    caches.push_back(backend.AllocateKvCache(shape));
    const RopeTable rope = RealRope(kHeadDim);
    const std::vector<int32_t> ids(kTokens, 0);
    Tensors t(backend);
    std::span<float> q, k, v;
    int64_t version = 0;
    Outputs outputs;
    for (int step_index = 0; step_index < 9; ++step_index) {
      const auto seed = static_cast<uint32_t>(100 + 3 * step_index);
      const std::vector<float> q_values = RandomBf16Exact(kTokens * kHeads * kHeadDim, seed);
      const std::vector<float> k_values = RandomBf16Exact(kTokens * kKvHeads * kHeadDim, seed + 1);
      const std::vector<float> v_values = RandomBf16Exact(kTokens * kKvHeads * kHeadDim, seed + 2);
      if (step_index == 0 || step_index == 5) {
        const std::string suffix = std::to_string(step_index);
        q = t.Input("q" + suffix, q_values);
        k = t.Input("k" + suffix, k_values);
        v = t.Input("v" + suffix, v_values);
        ++version;
      } else {
        backend.Upload(q_values, q);
        backend.Upload(k_values, k);
        backend.Upload(v_values, v);
      }
      if (step_index == 7) caches.push_back(backend.AllocateKvCache(shape));
      std::vector<int64_t> positions, slots;
      for (int64_t i = 0; i < kTokens; ++i) {
        positions.push_back((step_index * 13 + i * 5) % 60);  // One context bucket.
        slots.push_back((step_index + i * 4) % shape.num_slots());
      }
      auto step = backend.PrepareStep({ids, positions, slots, {}, {}, &rope, recorded});
      KvCache& cache = *caches.back();
      backend.RunRecorded(*step, cache, version,
                          [&] { backend.RopeWriteKv(*step, q, k, v, kHeads, cache, 0); });
      std::vector<float> scratch;
      const std::span<const float> rotated = backend.ReadBack(q, scratch);
      outputs["q"].insert(outputs["q"].end(), rotated.begin(), rotated.end());
      for (const int64_t slot : slots) AppendCacheSlot(backend, cache, 0, slot, outputs);
    }
    return outputs;
  };
  return c;
}

// Backend::RunRecorded over four steps of a norm and three GEMMs (weights loaded together):
// at 8 rows one small-batch kernel for all three, at 16 one stacked GEMM and the kernel that
// splits it, at 72 one GEMM per weight and their bias kernels, each step with new inputs in the
// same buffers (a recording backend replays the last two).
OpCase RecordedLinearsCase(int64_t m, bool fp8 = false) {
  OpCase c;
  c.name = fmt::format("RunRecorded_AddRmsNormLinears_m{}{}", m, fp8 ? "_FP8" : "");
  c.needs_fp8 = fp8;
  c.tolerance = 2.5e-3;
  c.tolerances = {{"residual", 1e-6}};
  c.run = [=](Backend& backend) {
    constexpr int64_t kWidth = 64;
    const ThreeLinears linears(backend, kWidth, true, fp8);
    const HostWeight gamma(RandomBf16Exact(kWidth, 70, 2.0f), 1, kWidth, DType::kBF16);
    const Weight norm = gamma.LoadInto(backend);
    auto cache = backend.AllocateKvCache({1, 1, 4, 1, 16});
    const bool recorded = backend.RecordedBatchSize(m) == m;
    const std::vector<int32_t> ids(static_cast<size_t>(m), 0);
    const std::vector<int64_t> positions(static_cast<size_t>(m), 0), slots(positions);
    Tensors t(backend);
    const auto residual = t.Input("residual", RandomBf16Exact(static_cast<size_t>(m * kWidth), 71));
    const auto delta = t.Input("delta", RandomBf16Exact(static_cast<size_t>(m * kWidth), 72));
    const auto normed = t.Output("normed", static_cast<size_t>(m * kWidth));
    const std::vector<Backend::LinearOutput> outputs = linears.Targets(t, m);
    Outputs result;
    for (uint32_t step_index = 0; step_index < 4; ++step_index) {
      backend.Upload(RandomBf16Exact(static_cast<size_t>(m * kWidth), 73 + step_index), delta);
      auto step = backend.PrepareStep({ids, positions, slots, {}, {}, nullptr, recorded});
      backend.RunRecorded(*step, *cache, 1, [&] {
        backend.AddRmsNormLinears(residual, delta, m, norm, 1e-6f, normed, outputs);
      });
      Outputs one{{"residual", t.Read("residual")}};
      linears.Read(t, one);
      for (auto& [name, values] : one)
        result[name].insert(result[name].end(), values.begin(), values.end());
    }
    return result;
  };
  return c;
}

struct AttentionSpec {
  int64_t start;
  int64_t num_query_tokens;
};

// Causal paged attention for a batch mixing decodes (at block boundaries too) and prefill
// chunks over a cached prefix, through shuffled block tables. With `o_proj`, through
// PagedAttentionLinear into a 48-row o projection (CUDA writes the attention's output as the
// GEMM's BF16 input): its outputs within the inexact-input tolerance (5e-3 here: the
// attention's outputs are rounded) beside the attention's; on the emulation also those of
// PagedAttention and then Linear, bit for bit where both run the same GEMM. With an FP8 cache
// (`kv`) both backends hold the same codes and scales (the fill rotates by zero), so the same
// tolerances hold: the CUDA kernels multiply the codes exactly and apply the scales to the scores
// and the weights. `q_exponent` and `v_exponent` scale the queries and the values by powers of two
// (exactly): magnitudes far from 1, which FP16 operands (the FP8 cache's decode) must be kept from
// overflowing or flushing.
OpCase PagedAttentionCase(const std::string& label, std::vector<AttentionSpec> specs, int64_t heads,
                          int64_t kv_heads, int64_t head_dim, int64_t block_size,
                          bool o_proj = false, bool fp8 = false,
                          KvCacheDType kv = KvCacheDType::kAuto, int q_exponent = 0,
                          int v_exponent = 0, bool uneven_values = false) {
  OpCase c;
  c.name = fmt::format(
      "PagedAttention{}_{}_h{}_kv{}_d{}_b{}{}{}{}{}", o_proj ? "Linear" : "", label, heads,
      kv_heads, head_dim, block_size, fp8 ? "_FP8" : "",
      kv == KvCacheDType::kFp8E4M3 ? "_kvfp8" : "",
      q_exponent != 0 || v_exponent != 0
          ? fmt::format("_q2e{}{}_v2e{}{}", q_exponent < 0 ? "m" : "", std::abs(q_exponent),
                        v_exponent < 0 ? "m" : "", std::abs(v_exponent))
          : "",
      uneven_values ? "_uneven" : "");
  c.needs_fp8 = fp8;
  c.tolerance = o_proj ? 5e-3 : 2e-5;
  // Prefill chunks of 16 tokens or more may run on tensor cores (CUDA, head_dim a multiple of
  // 16), with the softmax weights rounded to BF16 (2⁻⁹ relative) before they multiply the
  // values: their rows are compared apart, within 4e-3 of the largest output.
  c.tolerances = {{"out_prefill", head_dim % 16 == 0 ? 4e-3 + (o_proj ? 5e-3 : 0.0) : c.tolerance}};
  c.exact = {"fused_minus_unfused"};
  c.run = [=](Backend& backend) {
    int64_t blocks_needed = 0;
    for (const auto& spec : specs)
      blocks_needed += (spec.start + spec.num_query_tokens + block_size - 1) / block_size;
    KvCacheShape shape{1, blocks_needed + 3, block_size, kv_heads, head_dim};
    shape.dtype = kv;
    auto cache = backend.AllocateKvCache(shape);
    std::vector<int32_t> all_blocks(static_cast<size_t>(shape.num_blocks));
    std::iota(all_blocks.begin(), all_blocks.end(), 0);
    std::shuffle(all_blocks.begin(), all_blocks.end(), std::mt19937(14));
    std::vector<std::vector<int32_t>> tables;
    size_t next_block = 0;
    for (const auto& spec : specs) {
      const int64_t blocks = (spec.start + spec.num_query_tokens + block_size - 1) / block_size;
      tables.emplace_back(all_blocks.begin() + static_cast<int64_t>(next_block),
                          all_blocks.begin() + static_cast<int64_t>(next_block) + blocks);
      next_block += static_cast<size_t>(blocks);
    }
    auto slot_of = [&](size_t s, int64_t p) {
      return static_cast<int64_t>(tables[s][static_cast<size_t>(p / block_size)]) * block_size +
             p % block_size;
    };
    // Fill every position of every sequence (prefix and query tokens) with exact K/V, through
    // RopeWriteKv with zero frequencies (an identity rotation).
    RopeTable identity;
    identity.inv_freq.assign(static_cast<size_t>(head_dim / 2), 0.0f);
    std::vector<int64_t> fill_positions, fill_slots;
    for (size_t s = 0; s < specs.size(); ++s) {
      for (int64_t p = 0; p < specs[s].start + specs[s].num_query_tokens; ++p) {
        fill_positions.push_back(p);
        fill_slots.push_back(slot_of(s, p));
      }
    }
    const auto fill_count = static_cast<int64_t>(fill_positions.size());
    const std::vector<int32_t> fill_ids(fill_positions.size(), 0);
    auto fill = backend.PrepareStep({fill_ids, fill_positions, fill_slots, {}, {}, &identity});
    Tensors t(backend);
    const auto kv_size = static_cast<size_t>(fill_count * kv_heads * head_dim);
    const auto fill_q = t.Input(
        "fill_q", std::vector<float>(
                      kv_size / static_cast<size_t>(kv_heads) * static_cast<size_t>(heads), 0.0f));
    const auto fill_k = t.Input("fill_k", RandomBf16Exact(kv_size, 15, 2.0f));
    std::vector<float> v_values = RandomBf16Exact(kv_size, 16);
    for (float& value : v_values) value = std::ldexp(value, v_exponent);
    if (uneven_values) {
      // Each token's values 2⁻¹²..2¹² (so a tile's value scales differ by up to 2²⁴), and KV
      // head 0 of every 7th token all zeros.
      const auto token_size = static_cast<size_t>(kv_heads * head_dim);
      for (size_t f = 0; f < v_values.size() / token_size; ++f) {
        for (size_t i = 0; i < token_size; ++i) {
          float& value = v_values[f * token_size + i];
          value = f % 7 == 3 && i < static_cast<size_t>(head_dim)
                      ? 0.0f
                      : std::ldexp(value, static_cast<int>((f * 5) % 25) - 12);
        }
      }
    }
    const auto fill_v = t.Input("fill_v", v_values);
    backend.RopeWriteKv(*fill, fill_q, fill_k, fill_v, heads, *cache, 0);

    // The attention step: the query tokens only.
    std::vector<AttentionSequence> sequences;
    std::vector<int64_t> positions, slots;
    for (size_t s = 0; s < specs.size(); ++s) {
      sequences.push_back({specs[s].start, specs[s].num_query_tokens, tables[s]});
      for (int64_t i = 0; i < specs[s].num_query_tokens; ++i) {
        positions.push_back(specs[s].start + i);
        slots.push_back(slot_of(s, specs[s].start + i));
      }
    }
    const auto m = static_cast<int64_t>(positions.size());
    const std::vector<int32_t> ids(positions.size(), 0);
    auto step = backend.PrepareStep({ids, positions, slots, sequences, {}, nullptr});
    // Queries are float32 after the rotation, not BF16: a backend that rounds them (tensor
    // cores) must keep decode as exact as float32 (the CUDA decode kernel splits them into two
    // BF16 parts).
    std::vector<float> q_values(static_cast<size_t>(m * heads * head_dim));
    std::mt19937 q_rng(17);
    std::uniform_real_distribution<float> q_uniform(-1.0f, 1.0f);
    for (float& value : q_values) value = std::ldexp(q_uniform(q_rng), q_exponent);
    const auto q = t.Input("q", q_values);
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    const auto attention = t.Output("attention", static_cast<size_t>(m * heads * head_dim));
    constexpr int64_t kOutRows = 48;
    std::vector<float> fused_minus_unfused;
    if (o_proj) {
      const HostWeight w(RandomBf16Exact(static_cast<size_t>(kOutRows * heads * head_dim), 18),
                         kOutRows, heads * head_dim, DType::kBF16);
      const Weight loaded = fp8 ? w.LoadFp8Into(backend) : w.LoadInto(backend);
      const auto out = t.Output("out", static_cast<size_t>(m * kOutRows));
      backend.PagedAttentionLinear(*step, *cache, 0, q, heads, scale, attention, loaded, out);
#ifdef INFERBOX_CUDA_EMULATED
      const auto unfused = t.Output("unfused", static_cast<size_t>(m * kOutRows));
      backend.PagedAttention(*step, *cache, 0, q, heads, scale, attention);
      backend.Linear(attention, m, loaded, nullptr, unfused);
      // Decode steps of a few sequences run a layer's Linears (PagedAttentionLinear) on the
      // small-batch kernel and a plain Linear on cuBLASLt: the same products of the same BF16
      // input, summed in another order, about 1e-7 of the largest output apart. Differences
      // within 1e-5 of it count as none; an input element rounded differently (2⁻⁹ of it)
      // moves an output by about 1e-4 of the largest here.
      const std::vector<float> a = t.Read("out"), b = t.Read("unfused");
      float largest = 0.0f;
      for (const float value : b) largest = std::max(largest, std::fabs(value));
      for (size_t i = 0; i < a.size(); ++i) {
        const float difference = a[i] - b[i];
        fused_minus_unfused.push_back(std::fabs(difference) <= 1e-5f * largest ? 0.0f : difference);
      }
#endif
    } else {
      backend.PagedAttention(*step, *cache, 0, q, heads, scale, attention);
    }
    const std::vector<float> all = t.Read(o_proj ? "out" : "attention");
    // Decode rows per sequence (each within the tolerance of its own largest output: a long
    // sequence's averages are small beside a short one's), prefill rows together.
    Outputs outputs;
    const auto row = static_cast<size_t>(o_proj ? kOutRows : heads * head_dim);
    size_t token = 0;
    for (size_t s = 0; s < specs.size(); ++s) {
      auto& part = outputs[specs[s].num_query_tokens >= 16 ? std::string("out_prefill")
                                                           : fmt::format("out_seq{}", s)];
      for (int64_t i = 0; i < specs[s].num_query_tokens; ++i, ++token)
        part.insert(part.end(), all.begin() + static_cast<ptrdiff_t>(token * row),
                    all.begin() + static_cast<ptrdiff_t>((token + 1) * row));
    }
    if (!fused_minus_unfused.empty())
      outputs.emplace("fused_minus_unfused", std::move(fused_minus_unfused));
    return outputs;
  };
  return c;
}

// `in_place`: out is gate, as the model calls it.
OpCase SiluMulCase(int64_t n, bool in_place) {
  OpCase c;
  c.name = fmt::format("SiluMul_n{}{}", n, in_place ? "_in_place" : "");
  c.tolerance = 1e-6;
  c.run = [=](Backend& backend) {
    Tensors t(backend);
    const auto gate = t.Input("gate", RandomBf16Exact(static_cast<size_t>(n), 18, 8));
    const auto up = t.Input("up", RandomBf16Exact(static_cast<size_t>(n), 19));
    if (in_place) {
      backend.SiluMul(gate, up, gate);
      return Outputs{{"gate", t.Read("gate")}};
    }
    const auto out = t.Output("out", static_cast<size_t>(n));
    backend.SiluMul(gate, up, out);
    return Outputs{{"out", t.Read("out")}};
  };
  return c;
}

OpCase GatherRowsCase(int64_t cols) {
  OpCase c;
  c.name = fmt::format("GatherRows_c{}", cols);
  c.tolerance = 0.0;
  c.run = [=](Backend& backend) {
    const std::vector<int32_t> ids(9, 0);
    const std::vector<int64_t> zeros(9, 0);
    const std::vector<int64_t> rows = {0, 3, 4, 8};
    auto step = backend.PrepareStep({ids, zeros, zeros, {}, rows, nullptr});
    Tensors t(backend);
    const auto x = t.Input("x", RandomBf16Exact(static_cast<size_t>(9 * cols), 20));
    const auto out = t.Output("out", rows.size() * static_cast<size_t>(cols));
    backend.GatherRows(*step, x, cols, out);
    return Outputs{{"out", t.Read("out")}};
  };
  return c;
}

// Greedy choice per row, with exact ties (the lowest id must win) and a large vocabulary.
// Rows of 100,000 columns or more are read in parts by several blocks on CUDA when there are
// few of them (parts of at most 4,096 columns, more of them than a warp has lanes for a row of
// 151,669): there the maximum is in the last part (column cols − 7), tied on odd rows with
// every 4,099th column from 5099 (past the first part; one in most later parts), of which
// 5099 must win.
OpCase GreedyRowsCase(int64_t rows, int64_t cols) {
  OpCase c;
  c.name = fmt::format("GreedyRows_r{}_c{}", rows, cols);
  c.tolerance = 1e-5;
  c.exact = {"tokens", "tokens_without_logprobs"};
  c.run = [=](Backend& backend) {
    std::vector<float> logits = RandomBf16Exact(static_cast<size_t>(rows * cols), 21, 8);
    for (int64_t r = 0; r < rows; ++r) {
      float* row = logits.data() + r * cols;
      // Above every random value; `second` ties with it on odd rows. In wide rows the lower
      // column (1000) is the one a later thread of a 1024-thread block reads first (column
      // 1029 is thread 5's second), so a tie broken by thread order would be caught.
      const bool parts = cols >= 100000 && rows < 4;
      const int64_t first = parts ? cols - 7 : cols > 1029 ? 1029 : (r * 7 + 3) % cols;
      const int64_t second = parts ? 5099 : cols > 1029 ? 1000 : (first + cols / 2 + 1) % cols;
      row[first] = 9.0f;
      if (r % 2 == 1) row[second] = 9.0f;
      for (int64_t column = second; parts && r % 2 == 1 && column < cols; column += 4099)
        row[column] = 9.0f;
    }
    Tensors t(backend);
    const auto device_logits = t.Input("logits", logits);
    std::vector<int32_t> tokens(static_cast<size_t>(rows), -1);
    std::vector<float> logprobs(static_cast<size_t>(rows), kPoison);
    backend.GreedyRows(device_logits, rows, cols, tokens, logprobs);
    std::vector<int32_t> ids_only(static_cast<size_t>(rows), -1);
    backend.GreedyRows(device_logits, rows, cols, ids_only, {});
    Outputs outputs{{"logprobs", logprobs}};
    for (size_t r = 0; r < tokens.size(); ++r) {
      outputs["tokens"].push_back(static_cast<float>(tokens[r]));
      outputs["tokens_without_logprobs"].push_back(static_cast<float>(ids_only[r]));
    }
    return outputs;
  };
  return c;
}

std::vector<OpCase> AllCases() {
  std::vector<OpCase> cases;
  for (const DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (const auto& [m, n, k] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 8, 16}, {3, 33, 65}, {17, 256, 128}, {64, 1000, 384}}) {
      cases.push_back(LinearCase(m, n, k, dtype, false));
    }
    cases.push_back(LinearCase(5, 96, 64, dtype, true));
    cases.push_back(EmbeddingCase(7, dtype));
    cases.push_back(EmbeddingCase(300, dtype));
  }
  cases.push_back(LinearCase(1, 4096, 4096, DType::kBF16, false));  // A decode-sized GEMV.
  cases.push_back(LinearCase(512, 768, 256, DType::kBF16, false));  // A prefill-sized GEMM.
  cases.push_back(LinearCase(7, 300, 512, DType::kBF16, false, true));
  cases.push_back(LinearCase(300, 64, 1024, DType::kF32, true, true));
  cases.push_back(LinearIntoPartCase(3, 40, 64));
  cases.push_back(LinearsCase(1, 64, false));
  cases.push_back(LinearsCase(33, 128, true));
  // Loaded together: one GEMM (m ≤ 64), one per weight from the one allocation (m = 70), and
  // k = 20, where the third weight's size (40 × 20 BF16) would leave the next unaligned, so
  // they are loaded one by one.
  cases.push_back(LinearsCase(1, 64, false, true));
  cases.push_back(LinearsCase(33, 128, true, true));
  cases.push_back(LinearsCase(70, 64, false, true));
  cases.push_back(LinearsCase(2, 20, false, true));
  // The stacked GEMM (m ≤ 64), one per weight (m = 70), weights loaded one by one.
  cases.push_back(AddRmsNormLinearsCase(1, 64, true, true));
  cases.push_back(AddRmsNormLinearsCase(33, 128, false, true));
  cases.push_back(AddRmsNormLinearsCase(70, 64, true, true));
  cases.push_back(AddRmsNormLinearsCase(5, 64, true, false));
  // The CUDA backend's small-batch kernel (a layer's Linears of m ≤ 8 rows): its most rows,
  // weights of rows not a multiple of its 16-row tiles (96, 32, 40), rows ending in a part of
  // its 128-byte chunks (1000 BF16 values: 15 chunks and 80 bytes), more chunks than its warps
  // take in a step (4096 and 14336 values); in FP8 (1008 codes: 7 chunks and 112 bytes).
  cases.push_back(AddRmsNormLinearsCase(8, 1000, true, true));
  cases.push_back(AddRmsNormLinearsCase(3, 4096, false, false));
  cases.push_back(AddRmsNormLinearsCase(8, 1008, true, true, true));
  cases.push_back(SiluMulLinearCase(6, 50, 14336));
  cases.push_back(SiluMulLinearCase(2, 48, 4096, true));
  // FP8 inputs too large for the kernel to quantise itself (quantised first), and 265 tiles
  // of 16 rows, more than the quantising kernel's blocks (two a multiprocessor): a block
  // takes a second tile.
  cases.push_back(SiluMulLinearCase(8, 48, 4608, true));
  cases.push_back(SiluMulLinearCase(3, 4240, 64, true));
  // FP8 weights: the stacked GEMM (m ≤ 64), one per weight, an x that is not BF16-exact, every
  // input producer (norm, SiLU·mul, attention), a recorded step; every code as the reference's.
  cases.push_back(LinearCase(1, 64, 128, DType::kBF16, false, false, true));
  cases.push_back(LinearCase(70, 96, 256, DType::kBF16, true, true, true));
  cases.push_back(LinearCase(300, 64, 256, DType::kBF16, false, true, true));  // Two kernels.
  cases.push_back(LinearsCase(1, 64, false, true, true));
  cases.push_back(LinearsCase(33, 128, true, true, true));
  cases.push_back(LinearsCase(70, 64, true, true, true));
  cases.push_back(AddRmsNormLinearsCase(1, 64, true, true, true));
  cases.push_back(AddRmsNormLinearsCase(70, 64, true, true, true));
  cases.push_back(SiluMulLinearCase(9, 48, 128, true));
  cases.push_back(
      PagedAttentionCase("mixed", {{0, 1}, {15, 1}, {100, 1}, {0, 17}}, 8, 2, 64, 16, true, true));
  cases.push_back(RecordedLinearsCase(8, true));
  cases.push_back(Fp8CodesCase(false));
  cases.push_back(Fp8CodesCase(true));
  cases.push_back(SiluMulLinearCase(1, 64, 256));
  cases.push_back(SiluMulLinearCase(9, 48, 131));  // An odd width: the scalar tail.
  for (const auto& [m, n] :
       std::vector<std::pair<int64_t, int64_t>>{{1, 16}, {5, 100}, {33, 4096}}) {
    for (const bool delta : {false, true}) {
      cases.push_back(AddRmsNormCase(m, n, delta, DType::kBF16));
    }
  }
  cases.push_back(AddRmsNormCase(3, 64, true, DType::kF32));
  for (const auto& [groups, n] :
       std::vector<std::pair<int64_t, int64_t>>{{1, 16}, {7, 64}, {40, 128}}) {
    cases.push_back(RmsNormGroupsCase(groups, n));
  }
  for (const auto& [m, heads, kv_heads, d] :
       std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {1, 4, 2, 16}, {7, 8, 1, 64}, {40, 6, 6, 128}, {3, 32, 8, 128}}) {
    cases.push_back(RopeWriteKvCase(m, heads, kv_heads, d));
  }
  cases.push_back(RopeWriteKvPaddingCase());
  cases.push_back(RecordedStepsCase());
  cases.push_back(RecordedLinearsCase(8));
  cases.push_back(RecordedLinearsCase(16));
  cases.push_back(RecordedLinearsCase(72));
  // Decodes at positions 0, 15, 16 (a block boundary at 16) and deep in the sequence; a
  // prefill chunk from 0; a chunk after a cached prefix that ends mid-block.
  const std::vector<AttentionSpec> mixed = {{0, 1}, {15, 1}, {16, 1}, {100, 1}, {0, 17}, {37, 9}};
  for (const auto& [heads, kv_heads, d] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {4, 4, 32}, {8, 2, 64}, {8, 1, 128}, {2, 1, 80}, {4, 2, 256}, {28, 4, 128}}) {
    cases.push_back(PagedAttentionCase("mixed", mixed, heads, kv_heads, d, 16));
  }
  cases.push_back(PagedAttentionCase("mixed", mixed, 4, 2, 64, 4));
  // Tensor-core shapes beyond the common ones: a group of 3 with head_dim 96 in blocks of 4, a
  // group of 5 with head_dim 48, head_dim 16.
  cases.push_back(PagedAttentionCase("mixed", mixed, 6, 2, 96, 4));
  cases.push_back(PagedAttentionCase("mixed", mixed, 10, 2, 48, 16));
  cases.push_back(PagedAttentionCase("mixed", mixed, 2, 2, 16, 16));
  cases.push_back(PagedAttentionCase("long_prefill", {{0, 300}, {1000, 1}}, 8, 2, 128, 16));
  // Decodes of a few long sequences: the CUDA backend splits their keys among blocks
  // (flash-decoding) and merges the parts; group sizes 4, 8 and 16 (beyond its grouped
  // kernel), an odd length (the tensor-core kernel takes 16 keys at a time), and one sequence
  // shorter than the split count.
  const std::vector<AttentionSpec> long_decodes = {{2047, 1}, {700, 1}, {4, 1}};
  cases.push_back(PagedAttentionCase("long_decodes", long_decodes, 32, 8, 128, 16));
  cases.push_back(PagedAttentionCase("long_decodes", long_decodes, 8, 1, 256, 16));
  cases.push_back(PagedAttentionCase("long_decodes", long_decodes, 16, 1, 64, 16));
  cases.push_back(PagedAttentionCase("long_decodes", {{1500, 1}}, 7, 1, 80, 4));
  // A head_dim that is not a multiple of 8 (no 16-byte loads of a key: one element per lane).
  cases.push_back(PagedAttentionCase("long_decodes", long_decodes, 4, 2, 100, 16));
  // Prefill chunks in tiles (CUDA): after a cached prefix spanning several key tiles, exactly
  // the tiling threshold (16 tokens), a group of 3 (tiles of 10 tokens), an odd head_dim.
  cases.push_back(PagedAttentionCase("tiled_prefill", {{130, 37}, {0, 16}, {5, 15}}, 6, 2, 72, 16));
  // Through the o projection: every kernel that writes the attention's output (tensor-core
  // and grouped decode with and without splits and their combine, tensor-core and tiled
  // prefill, a block per query head past 8 per KV head).
  cases.push_back(PagedAttentionCase("mixed", mixed, 8, 2, 64, 16, true));
  cases.push_back(PagedAttentionCase("long_decodes", long_decodes, 32, 8, 128, 16, true));
  cases.push_back(PagedAttentionCase("long_decodes", long_decodes, 4, 2, 100, 16, true));
  cases.push_back(PagedAttentionCase("long_decodes", long_decodes, 16, 1, 64, 16, true));
  cases.push_back(
      PagedAttentionCase("tiled_prefill", {{130, 37}, {0, 16}, {5, 15}}, 6, 2, 72, 16, true));
  // An FP8 KV cache: its writes (exact beside the reference's with an identity rotation,
  // padding written nowhere) and every attention kernel reading it (tensor-core decode and
  // prefill, blocks of 4, split decodes and their combine, the grouped kernel for a head_dim
  // that is not a multiple of 16, a block per query head past 8 per KV head, the scalar
  // tiled prefill, through the o projection).
  constexpr KvCacheDType kFp8Kv = KvCacheDType::kFp8E4M3;
  cases.push_back(RopeWriteKvCase(3, 32, 8, 128, kFp8Kv));
  cases.push_back(RopeWriteKvCase(7, 8, 1, 64, kFp8Kv, true));
  cases.push_back(RopeWriteKvCase(40, 6, 6, 128, kFp8Kv, true));
  cases.push_back(RopeWriteKvPaddingCase(kFp8Kv));
  for (const auto& [heads, kv_heads, d] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {4, 4, 32}, {8, 2, 64}, {8, 1, 128}, {2, 1, 80}, {28, 4, 128}}) {
    cases.push_back(
        PagedAttentionCase("mixed", mixed, heads, kv_heads, d, 16, false, false, kFp8Kv));
  }
  cases.push_back(PagedAttentionCase("mixed", mixed, 6, 2, 96, 4, false, false, kFp8Kv));
  cases.push_back(PagedAttentionCase("long_prefill", {{0, 300}, {1000, 1}}, 8, 2, 128, 16, false,
                                     false, kFp8Kv));
  cases.push_back(
      PagedAttentionCase("long_decodes", long_decodes, 32, 8, 128, 16, false, false, kFp8Kv));
  cases.push_back(
      PagedAttentionCase("long_decodes", long_decodes, 16, 1, 64, 16, false, false, kFp8Kv));
  cases.push_back(
      PagedAttentionCase("long_decodes", long_decodes, 4, 2, 100, 16, false, false, kFp8Kv));
  cases.push_back(PagedAttentionCase("tiled_prefill", {{130, 37}, {0, 16}, {5, 15}}, 6, 2, 72, 16,
                                     false, false, kFp8Kv));
  cases.push_back(PagedAttentionCase("mixed", mixed, 8, 2, 64, 16, true, false, kFp8Kv));
  cases.push_back(
      PagedAttentionCase("long_decodes", long_decodes, 32, 8, 128, 16, true, false, kFp8Kv));
  // Queries and values far from 1 (FP16 spans 6e-8 to 65504): tiny values with large
  // queries, huge values with tiny queries.
  cases.push_back(PagedAttentionCase("long_decodes", long_decodes, 32, 8, 128, 16, false, false,
                                     kFp8Kv, 18, -30));
  cases.push_back(PagedAttentionCase("long_decodes", long_decodes, 32, 8, 128, 16, false, false,
                                     kFp8Kv, -20, 40));
  // Values whose scales differ by up to 2²⁴ within a tile, and heads of zeros (scale 0).
  cases.push_back(PagedAttentionCase("long_decodes", long_decodes, 32, 8, 128, 16, false, false,
                                     kFp8Kv, 0, 0, true));
  cases.push_back(PagedAttentionCase("long_decodes", long_decodes, 32, 8, 128, 16, false, false,
                                     KvCacheDType::kAuto, 0, 0, true));
  for (const int64_t n : {1, 1000, 100003}) cases.push_back(SiluMulCase(n, false));
  cases.push_back(SiluMulCase(4099, true));
  for (const int64_t cols : {5, 2048}) cases.push_back(GatherRowsCase(cols));
  for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{
           {1, 5}, {3, 1000}, {7, 151669}, {2, 128256}, {2, 151669}}) {
    cases.push_back(GreedyRowsCase(rows, cols));
  }
  return cases;
}

// Fails with the worst element unless every output of `got` is within tolerance of `want`.
void ExpectClose(const Outputs& want, const Outputs& got, double default_tolerance,
                 const std::map<std::string, double>& tolerances = {},
                 const std::set<std::string>& exact = {}) {
  for (const auto& [name, expected] : want) {
    ASSERT_TRUE(got.contains(name)) << "no output " << name;
    if (exact.contains(name)) {
      EXPECT_EQ(got.at(name), expected) << name << " must match exactly";
      continue;
    }
    const double tolerance = tolerances.contains(name) ? tolerances.at(name) : default_tolerance;
    const std::vector<float>& actual = got.at(name);
    ASSERT_EQ(actual.size(), expected.size()) << name;
    double scale = 0.0;
    for (const float value : expected)
      scale = std::max(scale, std::fabs(static_cast<double>(value)));
    const double allowed = tolerance * std::max(scale, 1e-30);
    double worst = 0.0;
    size_t worst_index = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
      ASSERT_FALSE(std::isnan(actual[i])) << name << "[" << i << "] was never written (NaN poison)";
      const double error = std::fabs(static_cast<double>(actual[i]) - expected[i]);
      if (error > worst) {
        worst = error;
        worst_index = i;
      }
    }
    EXPECT_LE(worst, allowed) << name << ": worst element " << worst_index << " is "
                              << actual[worst_index] << ", the reference " << expected[worst_index]
                              << " (tolerance " << tolerance << " of the largest magnitude "
                              << scale << ")";
  }
}

class BackendOpsTest : public ::testing::TestWithParam<OpCase> {
 protected:
  static void SetUpTestSuite() { reference_ = MakeCpuBackend().release(); }
  static void TearDownTestSuite() {
    delete reference_;
    reference_ = nullptr;
  }
  static Backend* reference_;
};
Backend* BackendOpsTest::reference_ = nullptr;

#ifndef INFERBOX_TEST_CUDA
// The reference writes every element of every output, finite, and gives the same answer
// twice (ops must not depend on leftover state).
TEST_P(BackendOpsTest, ReferenceWritesEveryOutput) {
  const Outputs first = GetParam().run(*reference_);
  ASSERT_FALSE(first.empty());
  for (const auto& [name, values] : first) {
    ASSERT_FALSE(values.empty()) << name;
    for (size_t i = 0; i < values.size(); ++i)
      ASSERT_TRUE(std::isfinite(values[i])) << name << "[" << i << "] = " << values[i];
  }
  ExpectClose(first, GetParam().run(*reference_), 0.0);
}

// KvCacheDType::kFp8E4M3 on the reference: each KV head's keys and values kept as
// QuantizeFp8Head's codes and scale (read back as code · scale, exactly), a head of a slot
// taking head_dim + 4 bytes instead of 4 · head_dim, each head scaled on its own (a head of
// small values next to one of large ones keeps its precision).
TEST(CpuFp8KvCache, KeepsEachHeadAsItsCodesTimesItsOwnScale) {
  auto backend = MakeCpuBackend();
  constexpr int64_t kHeads = 2, kKvHeads = 2, kHeadDim = 16;
  KvCacheShape shape{1, 2, 4, kKvHeads, kHeadDim};
  const int64_t float_bytes = backend->KvCacheBytes(shape);
  shape.dtype = KvCacheDType::kFp8E4M3;
  EXPECT_EQ(backend->KvCacheBytes(shape), 2 * shape.num_slots() * kKvHeads * (kHeadDim + 4));
  EXPECT_EQ(float_bytes, 2 * shape.num_slots() * kKvHeads * kHeadDim * 4);
  auto cache = backend->AllocateKvCache(shape);
  // Token 0: head 0 about 1e-3, head 1 about 100 (keys), the values the other way round.
  std::vector<float> k = RandomBf16Exact(kKvHeads * kHeadDim, 3);
  std::vector<float> v = RandomBf16Exact(kKvHeads * kHeadDim, 4);
  for (int64_t i = 0; i < kHeadDim; ++i) {
    k[static_cast<size_t>(i)] *= 1e-3f;
    k[static_cast<size_t>(kHeadDim + i)] *= 100.0f;
    v[static_cast<size_t>(i)] *= 100.0f;
    v[static_cast<size_t>(kHeadDim + i)] *= 1e-3f;
  }
  std::vector<float> q(kHeads * kHeadDim, 0.0f);
  const std::vector<int64_t> positions = {0};
  const std::vector<int64_t> slots = {5};
  const std::vector<int32_t> ids = {0};
  RopeTable identity;
  identity.inv_freq.assign(kHeadDim / 2, 0.0f);
  auto step = backend->PrepareStep({ids, positions, slots, {}, {}, &identity});
  backend->RopeWriteKv(*step, q, k, v, kHeads, *cache, 0);
  std::vector<float> key(kKvHeads * kHeadDim), value(kKvHeads * kHeadDim);
  backend->ReadKv(*cache, 0, 5, key, value);
  for (int64_t h = 0; h < kKvHeads; ++h) {
    for (const auto& [written, read] : {std::pair{&k, &key}, std::pair{&v, &value}}) {
      const float* head = written->data() + h * kHeadDim;
      std::vector<uint8_t> codes(kHeadDim);
      const float scale = QuantizeFp8Head(head, kHeadDim, codes.data());
      float amax = 0.0f;
      for (int64_t i = 0; i < kHeadDim; ++i) amax = std::max(amax, std::fabs(head[i]));
      for (int64_t i = 0; i < kHeadDim; ++i) {
        const float got = (*read)[static_cast<size_t>(h * kHeadDim + i)];
        EXPECT_EQ(got, Fp8E4M3ToFloat(codes[static_cast<size_t>(i)]) * scale);
        // Within half a step of E4M3's largest binade (16 of 448) of the head's own largest.
        EXPECT_LE(std::fabs(got - head[i]), amax / 28) << "head " << h << " element " << i;
      }
    }
  }
  // Slots never written read as zeros.
  backend->ReadKv(*cache, 0, 4, key, value);
  EXPECT_EQ(key, std::vector<float>(key.size(), 0.0f));
  EXPECT_EQ(value, std::vector<float>(value.size(), 0.0f));
  // A NaN makes its head's scale a NaN: the whole head reads as NaNs (attention over it is
  // NaN, as over a BF16 cache holding the NaN), the other head as before.
  k[3] = std::nanf("");
  const std::vector<int64_t> nan_slot = {6};
  auto nan_step = backend->PrepareStep({ids, positions, nan_slot, {}, {}, &identity});
  backend->RopeWriteKv(*nan_step, q, k, v, kHeads, *cache, 0);
  backend->ReadKv(*cache, 0, 6, key, value);
  for (int64_t i = 0; i < kHeadDim; ++i) {
    EXPECT_TRUE(std::isnan(key[static_cast<size_t>(i)])) << i;
    EXPECT_FALSE(std::isnan(key[static_cast<size_t>(kHeadDim + i)])) << i;
  }
}

// Attention over an FP8 cache stays close to attention over the float32 one: the same
// decodes and prefill chunks (PagedAttentionCase's), every output within 6% of the largest
// (3.5-4.7% measured: a value is within half a step of its code, up to 16/448 of its head's
// largest, and the keys' errors move the softmax weights a little).
TEST(CpuFp8KvCache, AttentionStaysCloseToTheFloatCache) {
  auto backend = MakeCpuBackend();
  const std::vector<AttentionSpec> specs = {{0, 1}, {15, 1}, {100, 1}, {0, 17}, {37, 9}};
  for (const auto& [heads, kv_heads, d] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{8, 2, 64}, {32, 8, 128}}) {
    const Outputs plain = PagedAttentionCase("mixed", specs, heads, kv_heads, d, 16).run(*backend);
    const Outputs fp8 = PagedAttentionCase("mixed", specs, heads, kv_heads, d, 16, false, false,
                                           KvCacheDType::kFp8E4M3)
                            .run(*backend);
    ExpectClose(plain, fp8, 0.06);
    EXPECT_NE(plain, fp8) << "the FP8 cache kept the values unquantised";
  }
}

// Greedy ties go to the lowest id, as the host sampler and Hugging Face's argmax do.
TEST(CpuGreedyRows, TheLowestIdWinsATieAndTheLogprobIsTheLogSoftmax) {
  auto backend = MakeCpuBackend();
  const std::vector<float> logits = {1.0f,  3.0f,  0.5f, 3.0f, /* row 2 */ -1.0f,
                                     -2.0f, -1.0f, -5.0f};
  std::vector<int32_t> tokens(2);
  std::vector<float> logprobs(2);
  backend->GreedyRows(logits, 2, 4, tokens, logprobs);
  EXPECT_EQ(tokens, (std::vector<int32_t>{1, 0}));
  const double total = std::exp(1.0 - 3) + 1 + std::exp(0.5 - 3) + 1;
  EXPECT_NEAR(logprobs[0], -std::log(total), 1e-6);
}
#else
Backend* CudaUnderTest(std::string* why_not) {
  static Backend* backend = nullptr;
  static std::string reason;
  static bool tried = false;
  if (!tried) {
    tried = true;
    auto devices = cuda::QueryCudaDevices(&reason);
    if (!devices.ok()) {
      reason = devices.status().ToString();
    } else if (!devices->empty()) {
      auto made = cuda::MakeCudaBackend(0);
      if (made.ok()) {
        backend = std::move(made).value().release();
      } else {
        reason = made.status().ToString();
      }
    }
  }
  *why_not = reason;
  return backend;
}

// The recorded batch sizes: 1, 2, 4, 8, then multiples of 8 up to 256; none past it or with
// CUDA graphs turned off.
TEST(CudaRecordedSteps, BatchSizesArePowersOfTwoToEightThenMultiplesOfEightTo256) {
  std::string why_not;
  Backend* cuda = CudaUnderTest(&why_not);
  if (cuda == nullptr) GTEST_SKIP() << "no CUDA device (" << why_not << ")";
  const std::vector<std::pair<int64_t, int64_t>> expected = {
      {1, 1},   {2, 2},   {3, 4},     {5, 8},     {8, 8},   {9, 16},
      {17, 24}, {65, 72}, {249, 256}, {256, 256}, {257, 0}, {0, 0}};
  for (const auto& [sequences, padded] : expected)
    EXPECT_EQ(cuda->RecordedBatchSize(sequences), padded) << sequences << " sequences";
  cuda::CudaBackendOptions off;
  off.cuda_graphs = false;
  auto made = cuda::MakeCudaBackend(0, off);
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  EXPECT_EQ((*made)->RecordedBatchSize(5), 0);
}

#ifdef INFERBOX_CUDA_EMULATED
// Three step shapes (4, 8 and 16 tokens) in turn for five rounds with room for two
// recordings: each new one evicts the least recently used, no more than two stay, and every
// step (op by op, recorded, or re-recorded after eviction) gives the CPU's results.
TEST(CudaRecordedSteps, PastTheMostRecordingsTheLeastRecentlyUsedGoes) {
  cuda::CudaBackendOptions options;
  options.max_recordings = 2;
  auto made = cuda::MakeCudaBackend(0, options);
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  const std::unique_ptr<Backend> cpu = MakeCpuBackend();
  constexpr int64_t kHeads = 2, kKvHeads = 1, kHeadDim = 16;
  const KvCacheShape shape{1, 8, 4, kKvHeads, kHeadDim};
  const RopeTable rope = RealRope(kHeadDim);
  // Per backend: its cache and, per shape, the q, k and v buffers every round uses (as
  // RunRecorded asks: the same buffers each time).
  struct Side {
    Backend* backend;
    std::unique_ptr<KvCache> cache;
    std::unique_ptr<Tensors> tensors;
  };
  std::vector<Side> sides;
  for (Backend* backend : {made->get(), cpu.get()}) {
    sides.push_back(
        {backend, backend->AllocateKvCache(shape), std::make_unique<Tensors>(*backend)});
  }
  const long long live_before = cuda_emu_live_graph_execs();
  const long long launches_before = cuda_emu_graph_launches();
  for (uint32_t round = 0; round < 5; ++round) {
    for (const int64_t tokens : {4, 8, 16}) {
      const std::string name = std::to_string(tokens);
      const auto q_values = RandomBf16Exact(static_cast<size_t>(tokens * kHeads * kHeadDim),
                                            round * 100 + static_cast<uint32_t>(tokens));
      const auto kv_values = RandomBf16Exact(static_cast<size_t>(tokens * kKvHeads * kHeadDim),
                                             round * 100 + 50 + static_cast<uint32_t>(tokens));
      std::vector<int64_t> positions, slots;
      for (int64_t i = 0; i < tokens; ++i) {
        positions.push_back((round * 7 + i) % 60);  // One context bucket.
        slots.push_back((round + i) % shape.num_slots());
      }
      const std::vector<int32_t> ids(static_cast<size_t>(tokens), 0);
      std::vector<std::vector<float>> rotated;
      for (Side& side : sides) {
        Backend& backend = *side.backend;
        Tensors& t = *side.tensors;
        if (round == 0) {
          t.Input("q" + name, q_values);
          t.Input("k" + name, kv_values);
          t.Input("v" + name, kv_values);
        }
        const std::span<float> q = t.Span("q" + name), k = t.Span("k" + name),
                               v = t.Span("v" + name);
        backend.Upload(q_values, q);
        backend.Upload(kv_values, k);
        backend.Upload(kv_values, v);
        const bool recorded = backend.RecordedBatchSize(tokens) == tokens;
        auto step = backend.PrepareStep({ids, positions, slots, {}, {}, &rope, recorded});
        KvCache& cache = *side.cache;
        backend.RunRecorded(*step, cache, 1,
                            [&] { backend.RopeWriteKv(*step, q, k, v, kHeads, cache, 0); });
        rotated.push_back(t.Read("q" + name));
      }
      ASSERT_EQ(rotated[0].size(), rotated[1].size());
      for (size_t i = 0; i < rotated[0].size(); ++i) {
        ASSERT_NEAR(rotated[0][i], rotated[1][i], 1e-5)
            << "round " << round << ", " << tokens << " tokens, element " << i;
      }
    }
  }
  // Rounds 1 to 4 record every step again (a shape's recording was evicted before it came
  // back) and launch it: 12 graphs, never more than two alive.
  EXPECT_EQ(cuda_emu_graph_launches() - launches_before, 12);
  EXPECT_LE(cuda_emu_live_graph_execs() - live_before, 2);
}

// A step whose ops cannot be recorded (here: a cudaMalloc, refused while capturing, which
// invalidates the capture, so that the launch after it fails too) runs op by op, and the
// backend stops recording, saying so; the engine goes on.
TEST(CudaRecordedSteps, AStepThatCannotBeRecordedRunsOpByOpAndRecordingStops) {
  auto made = cuda::MakeCudaBackend(0);
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  Backend& backend = **made;
  constexpr int64_t kTokens = 4, kHeads = 2, kKvHeads = 1, kHeadDim = 16;
  ASSERT_EQ(backend.RecordedBatchSize(kTokens), kTokens);
  auto cache = backend.AllocateKvCache({1, 2, 4, kKvHeads, kHeadDim});
  const RopeTable rope = RealRope(kHeadDim);
  const std::vector<int32_t> ids(kTokens, 0);
  const std::vector<int64_t> positions = {0, 1, 2, 3};
  Tensors t(backend);
  const auto q = t.Input("q", RandomBf16Exact(kTokens * kHeads * kHeadDim, 1));
  const auto k = t.Input("k", RandomBf16Exact(kTokens * kKvHeads * kHeadDim, 2));
  const auto v = t.Input("v", RandomBf16Exact(kTokens * kKvHeads * kHeadDim, 3));
  int issued = 0;
  const long long launches = cuda_emu_graph_launches();
  ::testing::internal::CaptureStderr();
  for (int64_t step_index = 0; step_index < 3; ++step_index) {
    const std::vector<int64_t> slots = {4 * step_index % 8, 1, 2, 3};
    // Laid out for recording while the backend records (as the model does).
    const bool recorded = backend.RecordedBatchSize(kTokens) == kTokens;
    auto step = backend.PrepareStep({ids, positions, slots, {}, {}, &rope, recorded});
    backend.RunRecorded(*step, *cache, 1, [&] {
      ++issued;
      void* memory = nullptr;
      if (cudaMalloc(&memory, 16) == cudaSuccess) cudaFree(memory);
      // While recording, CUDA fails this launch: the capture is invalid from the cudaMalloc.
      backend.RopeWriteKv(*step, q, k, v, kHeads, *cache, 0);
    });
  }
  const std::string said = ::testing::internal::GetCapturedStderr();
  // Op by op; recorded, failed, op by op; op by op.
  EXPECT_EQ(issued, 4);
  EXPECT_EQ(cuda_emu_graph_launches(), launches);
  EXPECT_EQ(backend.RecordedBatchSize(kTokens), 0);
  EXPECT_NE(said.find("decode steps run op by op from now on"), std::string::npos) << said;
  // The steps' writes landed: the value of token 0 in slot 4 (step 1) is v's first row.
  std::vector<float> key(kKvHeads * kHeadDim), value(kKvHeads * kHeadDim);
  backend.ReadKv(*cache, 0, 4, key, value);
  std::vector<float> scratch;
  const std::span<const float> v_host = backend.ReadBack(v, scratch);
  for (int64_t i = 0; i < kKvHeads * kHeadDim; ++i) EXPECT_EQ(value[i], v_host[i]) << i;
}

// A step of a shape seen before whose ops need more room than the first step of that shape
// did (a wider Linear: its BF16 input grows) is not recorded with a buffer too small: it
// runs op by op (growing the buffer) and recording goes on, the next such step recorded and
// launched; every step gives the CPU's product. (It ended the engine before: the op suite's
// recorded cases in a process of their own, on an H200 under compute-sanitizer.)
TEST(CudaRecordedSteps, AStepNeedingMoreRoomThanItsShapeDidRunsOpByOpAndTheNextIsRecorded) {
  auto made = cuda::MakeCudaBackend(0);
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  Backend& backend = **made;
  const std::unique_ptr<Backend> cpu = MakeCpuBackend();
  constexpr int64_t kTokens = 4, kRows = 16, kHeadDim = 16;
  ASSERT_EQ(backend.RecordedBatchSize(kTokens), kTokens);
  auto cache = backend.AllocateKvCache({1, 2, 4, 1, kHeadDim});
  const RopeTable rope = RealRope(kHeadDim);
  const std::vector<int32_t> ids(kTokens, 0);
  const std::vector<int64_t> positions = {0, 1, 2, 3}, slots = {0, 1, 2, 3};
  // Narrow (16 columns), then wide (64 columns: four times the BF16 input).
  const HostWeight narrow(RandomBf16Exact(kRows * 16, 1), kRows, 16, DType::kBF16);
  const HostWeight wide(RandomBf16Exact(kRows * 64, 2), kRows, 64, DType::kBF16);
  const Weight narrow_cuda = narrow.LoadInto(backend), wide_cuda = wide.LoadInto(backend);
  const Weight narrow_cpu = narrow.LoadInto(*cpu), wide_cpu = wide.LoadInto(*cpu);
  Tensors t(backend), expected(*cpu);
  for (Tensors* side : {&t, &expected}) {
    side->Input("x16", RandomBf16Exact(kTokens * 16, 3));
    side->Input("x64", RandomBf16Exact(kTokens * 64, 4));
    side->Output("out", kTokens * kRows);
  }
  cpu->Linear(expected.Span("x64"), kTokens, wide_cpu, nullptr, expected.Span("out"));
  const std::vector<float> wide_product = expected.Read("out");
  cpu->Linear(expected.Span("x16"), kTokens, narrow_cpu, nullptr, expected.Span("out"));
  const std::vector<float> narrow_product = expected.Read("out");

  const long long launches = cuda_emu_graph_launches();
  int issued = 0;
  ::testing::internal::CaptureStderr();
  // Narrow (op by op: the shape's first), wide (recorded? no: its input would grow), wide
  // (recorded and launched), wide (launched again).
  for (const bool is_wide : {false, true, true, true}) {
    auto step = backend.PrepareStep({ids, positions, slots, {}, {}, &rope, true});
    backend.Upload(std::vector<float>(kTokens * kRows, kPoison), t.Span("out"));
    backend.RunRecorded(*step, *cache, 1, [&] {
      ++issued;
      backend.Linear(t.Span(is_wide ? "x64" : "x16"), kTokens, is_wide ? wide_cuda : narrow_cuda,
                     nullptr, t.Span("out"));
    });
    const std::vector<float> out = t.Read("out");
    const std::vector<float>& want = is_wide ? wide_product : narrow_product;
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_NEAR(out[i], want[i], 1e-4 * (1.0 + std::abs(want[i])))
          << "step " << issued << ", element " << i;
    }
  }
  const std::string said = ::testing::internal::GetCapturedStderr();
  // Issued: narrow; wide into the capture, then op by op; wide recorded. The third wide ran
  // its recording.
  EXPECT_EQ(issued, 4);
  EXPECT_EQ(cuda_emu_graph_launches() - launches, 2);
  EXPECT_EQ(backend.RecordedBatchSize(kTokens), kTokens) << "recording stopped";
  EXPECT_EQ(said.find("op by op from now on"), std::string::npos) << said;
}

// FP8 GEMM inputs are quantised with one scale per call, from their largest magnitude; a
// recorded step's padding rows must take no part in it, or a request's outputs would depend on
// how its step was padded. Five real rows, padded to a recorded step of 8 whose padding rows
// hold a spike (after the norm about four times any real row's largest value): the real
// rows' outputs bit for bit those of the five rows run alone, for the step run op by op as
// its shape's first, recorded, and replayed; with the small-batch kernel (which quantises
// such inputs itself) and without it (a quantising kernel before the GEMM).
TEST(CudaRecordedSteps, PaddingRowsTakeNoPartInTheScalesOfFp8Inputs) {
  constexpr int64_t kReal = 5, kPadded = 8, kWidth = 64;
  for (const bool small_batch : {true, false}) {
    SCOPED_TRACE(small_batch ? "small-batch kernel" : "cuBLASLt");
    cuda::CudaBackendOptions options;
    options.small_batch_linears = small_batch;
    auto made = cuda::MakeCudaBackend(0, options);
    ASSERT_TRUE(made.ok()) << made.status().ToString();
    Backend& backend = **made;
    ASSERT_EQ(backend.RecordedBatchSize(kReal), kPadded);
    if (!backend.LoadFp8Weights({}).ok()) GTEST_SKIP() << "no FP8 tensor cores here";
    const ThreeLinears linears(backend, kWidth, true, /*fp8=*/true);
    const HostWeight gamma(RandomBf16Exact(kWidth, 80, 2.0f), 1, kWidth, DType::kBF16);
    const Weight norm = gamma.LoadInto(backend);
    auto cache = backend.AllocateKvCache({1, 2, 4, 1, 16});
    std::vector<float> rows = RandomBf16Exact(kPadded * kWidth, 81);
    for (int64_t r = kReal; r < kPadded; ++r) {
      std::fill_n(rows.begin() + r * kWidth, kWidth, 1e-3f);
      rows[static_cast<size_t>(r * kWidth + r)] = 100.0f;
    }
    Tensors alone(backend), padded(backend);
    const auto residual_alone =
        alone.Input("residual", std::vector<float>(rows.begin(), rows.begin() + kReal * kWidth));
    const auto normed_alone = alone.Output("normed", kReal * kWidth);
    backend.AddRmsNormLinears(residual_alone, {}, kReal, norm, 1e-6f, normed_alone,
                              linears.Targets(alone, kReal));
    Outputs want;
    linears.Read(alone, want);

    const auto residual = padded.Input("residual", rows);
    const auto normed = padded.Output("normed", kPadded * kWidth);
    const std::vector<Backend::LinearOutput> outputs = linears.Targets(padded, kPadded);
    const std::vector<int32_t> ids(kPadded, 0);
    const std::vector<int64_t> positions = {0, 1, 2, 3, 4, 5, 6, 7};
    const std::vector<int64_t> slots = {0, 1, 2, 3, 4, -1, -1, -1};
    const RopeTable rope = RealRope(16);
    for (int step_index = 0; step_index < 3; ++step_index) {
      auto step = backend.PrepareStep({ids, positions, slots, {}, {}, &rope, true});
      backend.RunRecorded(*step, *cache, 1, [&] {
        backend.AddRmsNormLinears(residual, {}, kPadded, norm, 1e-6f, normed, outputs);
      });
      Outputs got;
      linears.Read(padded, got);
      for (const auto& [name, values] : want) {
        const std::vector<float>& all = got.at(name);
        EXPECT_EQ(
            std::vector<float>(all.begin(), all.begin() + static_cast<ptrdiff_t>(values.size())),
            values)
            << name << ", step " << step_index;
      }
    }
  }
}

// A step of a shape seen before whose ops need a buffer the backend has not made yet (the
// stacked GEMM's output, for weights loaded together, after a first step of a single Linear):
// while recording, the buffer's null pointer makes cuBLASLt refuse the GEMM and fails the
// capture. That is not a step that cannot be recorded (recording went off for good for it,
// found in review): it runs op by op, and the next such step is recorded and launched, with
// the op-by-op step's outputs bit for bit.
TEST(CudaRecordedSteps, AStepNeedingABufferNotYetMadeRunsOpByOpAndRecordingGoesOn) {
  auto made = cuda::MakeCudaBackend(0);
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  Backend& backend = **made;
  constexpr int64_t kTokens = 4, kCols = 64;
  ASSERT_EQ(backend.RecordedBatchSize(kTokens), kTokens);
  auto cache = backend.AllocateKvCache({1, 2, 4, 1, 16});
  const RopeTable rope = RealRope(16);
  const std::vector<int32_t> ids(kTokens, 0);
  const std::vector<int64_t> positions = {0, 1, 2, 3}, slots = {0, 1, 2, 3};
  const ThreeLinears stacked(backend, kCols, /*together=*/true);
  const HostWeight single(RandomBf16Exact(16 * kCols, 5), 16, kCols, DType::kBF16);
  const Weight single_loaded = single.LoadInto(backend);
  Tensors t(backend);
  const auto x = t.Input("x", RandomBf16Exact(kTokens * kCols, 6));
  const auto single_out = t.Output("single", kTokens * 16);
  const std::vector<Backend::LinearOutput> outputs = stacked.Targets(t, kTokens);

  const long long launches = cuda_emu_graph_launches();
  int issued = 0;
  std::vector<Outputs> results;
  ::testing::internal::CaptureStderr();
  // The single Linear (op by op: the shape's first); the stacked ones: op by op after the
  // failed capture, recorded and launched, launched again.
  for (const bool is_stacked : {false, true, true, true}) {
    for (const Backend::LinearOutput& output : outputs) {
      backend.Upload(std::vector<float>(output.out.size(), kPoison), output.out);
    }
    auto step = backend.PrepareStep({ids, positions, slots, {}, {}, &rope, true});
    backend.RunRecorded(*step, *cache, 1, [&] {
      ++issued;
      if (is_stacked) {
        backend.Linears(x, kTokens, outputs);
      } else {
        backend.Linear(x, kTokens, single_loaded, nullptr, single_out);
      }
    });
    if (is_stacked) stacked.Read(t, results.emplace_back());
  }
  const std::string said = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(issued, 4);
  EXPECT_EQ(cuda_emu_graph_launches() - launches, 2);
  EXPECT_EQ(backend.RecordedBatchSize(kTokens), kTokens) << "recording stopped: " << said;
  EXPECT_EQ(said.find("op by op from now on"), std::string::npos) << said;
  ASSERT_EQ(results.size(), 3u);
  for (const auto& [name, values] : results[0]) {
    for (const float value : values) ASSERT_FALSE(std::isnan(value)) << name << " not written";
    for (size_t step = 1; step < results.size(); ++step) {
      EXPECT_EQ(results[step].at(name), values) << name << ", stacked step " << step;
    }
  }
}
#endif

#ifdef INFERBOX_CUDA_EMULATED
// FP8 weights on a GPU without FP8 tensor cores (an A100's 8.0): refused, saying why.
TEST(CudaFp8, AGpuWithoutFp8TensorCoresRefusesFp8Weights) {
  setenv("INFERBOX_CUDA_EMU_COMPUTE_CAPABILITY", "8.0", 1);
  auto made = cuda::MakeCudaBackend(0);
  unsetenv("INFERBOX_CUDA_EMU_COMPUTE_CAPABILITY");
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  const HostWeight w(RandomBf16Exact(64 * 64, 1), 64, 64, DType::kBF16);
  const Weight host = w.Host();
  auto loaded = (*made)->LoadFp8Weights({&host, 1});
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(loaded.status().message(), ::testing::HasSubstr("compute capability 8.9"));
  EXPECT_THAT(loaded.status().message(), ::testing::HasSubstr("is 8.0"));
}
#endif

// Rows a broken model could give, read whole by one block (1,000 columns) and in parts by
// several (128,256, one row): token and log-probability as the CPU's. A row of -inf or of
// NaN answers column 0 with a NaN log-probability; -inf but for one value answers that value
// with log-probability 0; a NaN past the first column is passed over for the largest value,
// and the log-probability is NaN. (A row whose first value is NaN is left out: the CPU
// answers column 0 there, CUDA the largest value.)
TEST(CudaGreedyRows, RowsOfMinusInfinityOrNaNAnswerAsTheCpuDoes) {
  std::string why_not;
  Backend* cuda = CudaUnderTest(&why_not);
  if (cuda == nullptr) GTEST_SKIP() << "no CUDA device (" << why_not << ")";
  const std::unique_ptr<Backend> cpu = MakeCpuBackend();
  constexpr float kInf = std::numeric_limits<float>::infinity();
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  for (const int64_t cols : {int64_t{1000}, int64_t{128256}}) {
    std::vector<std::pair<std::string, std::vector<float>>> rows;
    rows.emplace_back("all -inf", std::vector<float>(static_cast<size_t>(cols), -kInf));
    rows.emplace_back("all NaN", std::vector<float>(static_cast<size_t>(cols), kNaN));
    rows.emplace_back("-inf but the last", std::vector<float>(static_cast<size_t>(cols), -kInf));
    rows.back().second.back() = 2.5f;
    rows.emplace_back("a NaN past the first", RandomBf16Exact(static_cast<size_t>(cols), 9));
    rows.back().second[static_cast<size_t>(cols / 2 + 3)] = kNaN;
    for (const auto& [name, row] : rows) {
      std::vector<int32_t> cpu_token(1, -1), cuda_token(1, -1);
      std::vector<float> cpu_logprob(1, 1.0f), cuda_logprob(1, 1.0f);
      cpu->GreedyRows(row, 1, cols, cpu_token, cpu_logprob);
      Tensors t(*cuda);
      cuda->GreedyRows(t.Input("row", row), 1, cols, cuda_token, cuda_logprob);
      const std::string what = fmt::format("{} columns, {}", cols, name);
      EXPECT_EQ(cuda_token[0], cpu_token[0]) << what;
      EXPECT_EQ(std::isnan(cuda_logprob[0]), std::isnan(cpu_logprob[0])) << what;
      if (!std::isnan(cpu_logprob[0])) {
        EXPECT_NEAR(cuda_logprob[0], cpu_logprob[0], 1e-6) << what;
      }
    }
  }
}

// Whether `cuda` takes FP8 weights (compute capability 8.9 or later), else why not.
bool TakesFp8(Backend& cuda, std::string* why_not) {
  const std::vector<float> zeros(16 * 16, 0.0f);
  const Weight host{DType::kF32, zeros.data(), 16, 16};
  const auto loaded = cuda.LoadFp8Weights({&host, 1});
  if (!loaded.ok()) *why_not = loaded.status().ToString();
  return loaded.ok();
}

TEST_P(BackendOpsTest, CudaMatchesReference) {
  std::string why_not;
  Backend* cuda = CudaUnderTest(&why_not);
  if (cuda == nullptr) GTEST_SKIP() << "no CUDA device (" << why_not << "): op not compared";
  if (GetParam().needs_fp8 && !TakesFp8(*cuda, &why_not))
    GTEST_SKIP() << "no FP8 on this GPU (" << why_not << "): op not compared";
  ExpectClose(GetParam().run(*reference_), GetParam().run(*cuda), GetParam().tolerance,
              GetParam().tolerances, GetParam().exact);
}
#endif

INSTANTIATE_TEST_SUITE_P(Ops, BackendOpsTest, ::testing::ValuesIn(AllCases()),
                         [](const ::testing::TestParamInfo<OpCase>& param) {
                           return param.param.name;
                         });

}  // namespace
}  // namespace inferbox::engine
