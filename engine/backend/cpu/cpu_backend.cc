// The CPU backend: float32 compute, weights widened from their stored dtype, rows spread
// over cores with OpenMP. It is the reference for every other backend, so it favours
// plain, obviously-correct loops over cleverness; speed comes from the row parallelism.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <span>

#include <cblas.h>

#include "inferbox/engine/backend/backend.h"
#include "inferbox/engine/backend/fp8.h"

namespace inferbox::engine {

Weight Weight::FromView(const TensorView& view) {
  Weight weight;
  weight.dtype = view.dtype;
  weight.data = view.data.data();
  weight.rows = view.shape.size() == 2 ? view.shape[0] : 1;
  weight.cols = view.shape.empty() ? 1 : view.shape.back();
  return weight;
}

namespace {

// Multiply-adds below which an op runs on the calling thread alone.
constexpr double kMinParallelWork = 1 << 20;
// Rows of x from which Linear hands the product to BLAS (prefill chunks); fewer rows
// (decode) read each weight once in the plain loop, which is bound by memory anyway.
constexpr int64_t kMinBlasRows = 4;
// Weight rows widened to float32 per BLAS call: 256 × 4096 floats = 4 MiB.
constexpr int64_t kBlasTileElements = 1 << 20;

// The first index of a row's largest value, as std::max_element gives it (a NaN never wins;
// a row that starts with NaN gives 0), four lanes at a time (16 bytes: the x86-64 baseline's
// width). Each lane keeps its largest value and where it first saw it; the lanes are merged
// by value, then lowest index. std::max_element's one compare chain ran at ~3 ns a value,
// 30 ms for 64 rows of a 151,669-token vocabulary: more than the tiny model's forward pass.
int64_t ArgmaxRow(std::span<const float> row) {
  using Floats = float __attribute__((vector_size(16)));
  using Ints = int32_t __attribute__((vector_size(16)));
  constexpr size_t kLanes = 4;
  const size_t n = row.size();
  if (n == 0 || std::isnan(row[0])) return 0;
  float best = row[0];
  int64_t best_index = 0;
  size_t i = 0;
  if (n >= 8 * kLanes) {
    Floats lane_max = {best, best, best, best};
    Ints lane_index = {0, 0, 0, 0};
    Ints at = {0, 1, 2, 3};
    const Ints step = {kLanes, kLanes, kLanes, kLanes};
    for (; i + kLanes <= n; i += kLanes) {
      Floats values;
      std::memcpy(&values, row.data() + i, sizeof(values));
      const Ints greater = values > lane_max;
      lane_max = greater ? values : lane_max;
      lane_index = greater ? at : lane_index;
      at += step;
    }
    for (size_t lane = 0; lane < kLanes; ++lane) {
      if (lane_max[lane] > best || (lane_max[lane] == best && lane_index[lane] < best_index)) {
        best = lane_max[lane];
        best_index = lane_index[lane];
      }
    }
  }
  for (; i < n; ++i) {
    if (row[i] > best) {
      best = row[i];
      best_index = static_cast<int64_t>(i);
    }
  }
  return best_index;
}

inline float Bf16ToFloat(uint16_t bits) {
  const uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof(value));
  return value;
}

inline float F16ToFloat(uint16_t bits) {
  const uint32_t sign = (bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1F;
  const uint32_t mantissa = bits & 0x3FF;
  uint32_t result;
  if (exponent == 0) {
    if (mantissa == 0) {
      result = sign;
    } else {  // Subnormal: normalise.
      int shift = 0;
      uint32_t m = mantissa;
      while ((m & 0x400) == 0) {
        m <<= 1;
        ++shift;
      }
      result = sign | ((127 - 15 - shift + 1) << 23) | ((m & 0x3FF) << 13);
    }
  } else if (exponent == 0x1F) {
    result = sign | 0x7F800000u | (mantissa << 13);
  } else {
    result = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  float value;
  std::memcpy(&value, &result, sizeof(value));
  return value;
}

// Widens row `row` of `w` into `out` (w.cols floats).
void WidenRow(const Weight& w, int64_t row, float* out) {
  const int64_t offset = row * w.cols;
  switch (w.dtype) {
    case DType::kF32:
      std::memcpy(out, static_cast<const float*>(w.data) + offset,
                  static_cast<size_t>(w.cols) * sizeof(float));
      return;
    case DType::kBF16: {
      const auto* bits = static_cast<const uint16_t*>(w.data) + offset;
      for (int64_t i = 0; i < w.cols; ++i) out[i] = Bf16ToFloat(bits[i]);
      return;
    }
    case DType::kF16: {
      const auto* bits = static_cast<const uint16_t*>(w.data) + offset;
      for (int64_t i = 0; i < w.cols; ++i) out[i] = F16ToFloat(bits[i]);
      return;
    }
    case DType::kF8E4M3: {  // LoadFp8Weights.
      const auto* codes = static_cast<const uint8_t*>(w.data) + offset;
      for (int64_t i = 0; i < w.cols; ++i) out[i] = Fp8E4M3ToFloat(codes[i]) * *w.scale;
      return;
    }
    default: std::abort();  // The loader admits only float weights (WeightStore::GetFloat).
  }
}

// Keys and values of every layer, [layer][slot][kv_head][head_dim]: float32, or FP8 codes
// with a scale per [layer][slot][kv_head] (KvCacheDType::kFp8E4M3).
class CpuKvCache final : public KvCache {
 public:
  explicit CpuKvCache(const KvCacheShape& shape) : shape_(shape) {
    const auto heads =
        static_cast<size_t>(shape.num_layers * shape.num_slots() * shape.num_kv_heads);
    const size_t values = heads * static_cast<size_t>(shape.head_dim);
    if (shape.fp8()) {
      key_codes_.resize(values);
      value_codes_.resize(values);
      key_scales_.resize(heads);
      value_scales_.resize(heads);
    } else {
      keys_.resize(values);
      values_.resize(values);
    }
  }
  const KvCacheShape& shape() const override { return shape_; }
  static int64_t Bytes(const KvCacheShape& shape) {
    const int64_t heads = shape.num_layers * shape.num_slots() * shape.num_kv_heads;
    return 2 * heads *
           (shape.fp8() ? shape.head_dim + static_cast<int64_t>(sizeof(float))
                        : shape.head_dim * static_cast<int64_t>(sizeof(float)));
  }

  // Stores the keys and values ([num_kv_heads, head_dim] each) of (layer, slot).
  void Write(int64_t layer, int64_t slot, const float* key, const float* value) {
    const int64_t d = shape_.head_dim;
    const size_t head = Head(layer, slot, 0);
    if (!shape_.fp8()) {
      std::copy_n(key, shape_.num_kv_heads * d, keys_.data() + head * static_cast<size_t>(d));
      std::copy_n(value, shape_.num_kv_heads * d, values_.data() + head * static_cast<size_t>(d));
      return;
    }
    for (int64_t h = 0; h < shape_.num_kv_heads; ++h) {
      const size_t at = (head + static_cast<size_t>(h)) * static_cast<size_t>(d);
      key_scales_[head + static_cast<size_t>(h)] =
          QuantizeFp8Head(key + h * d, d, key_codes_.data() + at);
      value_scales_[head + static_cast<size_t>(h)] =
          QuantizeFp8Head(value + h * d, d, value_codes_.data() + at);
    }
  }
  // The key or value of `kv_head` at (layer, slot), head_dim floats: the store itself, or the
  // FP8 codes times their scale written into `scratch` (head_dim floats).
  const float* Key(int64_t layer, int64_t slot, int64_t kv_head, float* scratch) const {
    return Read(keys_, key_codes_, key_scales_, Head(layer, slot, kv_head), scratch);
  }
  const float* Value(int64_t layer, int64_t slot, int64_t kv_head, float* scratch) const {
    return Read(values_, value_codes_, value_scales_, Head(layer, slot, kv_head), scratch);
  }

 private:
  size_t Head(int64_t layer, int64_t slot, int64_t kv_head) const {
    return static_cast<size_t>((layer * shape_.num_slots() + slot) * shape_.num_kv_heads + kv_head);
  }
  const float* Read(const std::vector<float>& floats, const std::vector<uint8_t>& codes,
                    const std::vector<float>& scales, size_t head, float* scratch) const {
    const auto d = static_cast<size_t>(shape_.head_dim);
    if (!shape_.fp8()) return floats.data() + head * d;
    static const std::array<float, 256> kValues = [] {
      std::array<float, 256> values{};
      for (size_t code = 0; code < values.size(); ++code)
        values[code] = Fp8E4M3ToFloat(static_cast<uint8_t>(code));
      return values;
    }();
    const uint8_t* row = codes.data() + head * d;
    const float scale = scales[head];
    for (size_t c = 0; c < d; ++c) scratch[c] = kValues[row[c]] * scale;
    return scratch;
  }
  KvCacheShape shape_;
  std::vector<float> keys_;
  std::vector<float> values_;
  std::vector<uint8_t> key_codes_;
  std::vector<uint8_t> value_codes_;
  std::vector<float> key_scales_;
  std::vector<float> value_scales_;
};

class CpuBuffer final : public Buffer {
 public:
  explicit CpuBuffer(int64_t num_floats) : data_(static_cast<size_t>(num_floats)) {}
  std::span<float> data() override { return data_; }

 private:
  std::vector<float> data_;
};

// The step's layout copied (block tables flattened), with cos/sin of every token's angles.
class CpuStepInputs final : public StepInputs {
 public:
  explicit CpuStepInputs(const StepLayout& layout)
      : token_ids(layout.token_ids.begin(), layout.token_ids.end()),
        positions(layout.positions.begin(), layout.positions.end()),
        slots(layout.slots.begin(), layout.slots.end()),
        logit_rows(layout.logit_rows.begin(), layout.logit_rows.end()) {
    size_t table_size = 0;
    for (const AttentionSequence& sequence : layout.sequences)
      table_size += sequence.block_table.size();
    block_tables.reserve(table_size);
    for (const AttentionSequence& sequence : layout.sequences) {
      const size_t first = block_tables.size();
      block_tables.insert(block_tables.end(), sequence.block_table.begin(),
                          sequence.block_table.end());
      sequences.push_back(
          {sequence.start_position, sequence.num_query_tokens,
           std::span<const int32_t>(block_tables.data() + first, sequence.block_table.size())});
    }
    if (layout.rope != nullptr) {
      half = static_cast<int64_t>(layout.rope->inv_freq.size());
      cos.resize(positions.size() * static_cast<size_t>(half));
      sin.resize(cos.size());
      for (size_t t = 0; t < positions.size(); ++t) {
        for (int64_t j = 0; j < half; ++j) {
          // The angle is formed in float32 as the reference does (position × inv_freq).
          const float angle =
              static_cast<float>(positions[t]) * layout.rope->inv_freq[static_cast<size_t>(j)];
          cos[t * static_cast<size_t>(half) + static_cast<size_t>(j)] = std::cos(angle);
          sin[t * static_cast<size_t>(half) + static_cast<size_t>(j)] = std::sin(angle);
        }
      }
    }
  }
  int64_t num_tokens() const override { return static_cast<int64_t>(token_ids.size()); }
  int64_t num_logit_rows() const override { return static_cast<int64_t>(logit_rows.size()); }

  std::vector<int32_t> token_ids;
  std::vector<int64_t> positions;
  std::vector<int64_t> slots;
  std::vector<int64_t> logit_rows;
  std::vector<int32_t> block_tables;
  std::vector<AttentionSequence> sequences;
  int64_t half = 0;             // Rotated pairs per head.
  std::vector<float> cos, sin;  // [m, half]
};

class CpuBackend final : public Backend {
 public:
  std::string_view name() const override { return "cpu"; }
  std::optional<DeviceMemory> device_memory() const override { return std::nullopt; }
  double MeasureCopyBandwidth() override {
    std::vector<char> source(size_t{512} << 20, 1), target(source.size());
    constexpr int kCopies = 4;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < kCopies; ++i) std::memcpy(target.data(), source.data(), source.size());
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return 2.0 * kCopies * static_cast<double>(source.size()) / seconds;
  }

  int64_t KvCacheBytes(const KvCacheShape& shape) const override {
    return CpuKvCache::Bytes(shape);
  }
  std::unique_ptr<KvCache> AllocateKvCache(const KvCacheShape& shape) override {
    return std::make_unique<CpuKvCache>(shape);
  }
  std::unique_ptr<Buffer> Allocate(int64_t num_floats) override {
    return std::make_unique<CpuBuffer>(num_floats);
  }
  // The mapped file is the weight: nothing to copy.
  Result<Weight> LoadWeight(const Weight& host) override { return host; }
  Result<std::vector<Weight>> LoadFp8Weights(std::span<const Weight> hosts) override {
    if (!Fp8Quantizable(hosts)) return LoadWeights(hosts);
    std::vector<std::vector<float>> rounded;
    float amax = 0.0f;
    for (const Weight& host : hosts) {
      std::vector<float>& values = rounded.emplace_back(static_cast<size_t>(host.rows * host.cols));
      for (int64_t row = 0; row < host.rows; ++row) WidenRow(host, row, &values[row * host.cols]);
      amax = std::max(amax, RoundToBf16InPlace(values));
    }
    auto& group = fp8_weights_.emplace_back(std::make_unique<Fp8Group>());
    group->scale = Fp8Scale(amax);
    std::vector<Weight> loaded;
    for (size_t i = 0; i < hosts.size(); ++i) {
      std::vector<uint8_t>& codes = group->codes.emplace_back(rounded[i].size());
      for (size_t j = 0; j < codes.size(); ++j)
        codes[j] = FloatToFp8E4M3(rounded[i][j] / group->scale);
      loaded.push_back(
          Weight{DType::kF8E4M3, codes.data(), hosts[i].rows, hosts[i].cols, &group->scale});
    }
    return loaded;
  }
  std::span<const float> ReadBack(std::span<const float> data, std::vector<float>&) override {
    return data;
  }
  void Upload(std::span<const float> host, std::span<float> data) override {
    std::copy(host.begin(), host.end(), data.begin());
  }
  void ReadKv(const KvCache& cache, int64_t layer, int64_t slot, std::span<float> key,
              std::span<float> value) override {
    const auto& cpu = static_cast<const CpuKvCache&>(cache);
    const int64_t d = cache.shape().head_dim;
    for (int64_t h = 0; h < cache.shape().num_kv_heads; ++h) {
      float* key_head = key.data() + h * d;
      float* value_head = value.data() + h * d;
      std::copy_n(cpu.Key(layer, slot, h, key_head), d, key_head);
      std::copy_n(cpu.Value(layer, slot, h, value_head), d, value_head);
    }
  }
  std::unique_ptr<StepInputs> PrepareStep(const StepLayout& layout) override {
    return std::make_unique<CpuStepInputs>(layout);
  }

  void Linear(std::span<const float> x, int64_t m, const Weight& w, const Weight* bias,
              std::span<float> out) override {
    const int64_t n = w.rows;
    std::vector<float> quantized;
    if (w.dtype == DType::kF8E4M3) {  // The input as the FP8 GEMM sees it (LoadFp8Weights).
      quantized = Fp8RoundTrip(x.first(static_cast<size_t>(m * w.cols)));
      x = quantized;
    }
    if (m >= kMinBlasRows) {
      LinearBlas(x, m, w, out);
    } else {
      LinearRows(x, m, w, out);
    }
    if (bias != nullptr) {
      std::vector<float> bias_row(static_cast<size_t>(n));
      WidenRow(*bias, 0, bias_row.data());
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j)
          out[static_cast<size_t>(i * n + j)] += bias_row[static_cast<size_t>(j)];
      }
    }
  }

  // out = x · wᵀ for a few rows of x: each weight row is widened once and read once.
  static void LinearRows(std::span<const float> x, int64_t m, const Weight& w,
                         std::span<float> out) {
    const int64_t n = w.rows;
    const int64_t k = w.cols;
    // Threads only pay for themselves on enough work (and hurt badly on a busy machine).
    const bool parallel =
        static_cast<double>(n) * static_cast<double>(k) * static_cast<double>(m) >=
        kMinParallelWork;
#pragma omp parallel if (parallel)
    {
      std::vector<float> row(static_cast<size_t>(k));
#pragma omp for schedule(static)
      for (int64_t j = 0; j < n; ++j) {
        WidenRow(w, j, row.data());
        for (int64_t i = 0; i < m; ++i) {
          const float* xi = x.data() + i * k;
          double sum = 0.0;
          for (int64_t c = 0; c < k; ++c)
            sum += static_cast<double>(xi[c]) * row[static_cast<size_t>(c)];
          out[static_cast<size_t>(i * n + j)] = static_cast<float>(sum);
        }
      }
    }
  }

  void Embedding(const StepInputs& step, const Weight& table, std::span<float> out) override {
    const auto& ids = static_cast<const CpuStepInputs&>(step).token_ids;
    for (size_t i = 0; i < ids.size(); ++i)
      WidenRow(table, ids[i], out.data() + i * static_cast<size_t>(table.cols));
  }

  void AddRmsNorm(std::span<float> residual, std::span<const float> delta, int64_t m,
                  const Weight& weight, float eps, std::span<float> out) override {
    const int64_t n = weight.cols;
    std::vector<float> gamma(static_cast<size_t>(n));
    WidenRow(weight, 0, gamma.data());
    for (int64_t i = 0; i < m; ++i) {
      float* r = residual.data() + i * n;
      if (!delta.empty()) {
        for (int64_t c = 0; c < n; ++c) r[c] += delta[static_cast<size_t>(i * n + c)];
      }
      NormalizeRow(r, gamma.data(), n, eps, out.data() + i * n);
    }
  }

  void RmsNormGroups(std::span<float> x, const Weight& weight, float eps) override {
    const int64_t n = weight.cols;
    std::vector<float> gamma(static_cast<size_t>(n));
    WidenRow(weight, 0, gamma.data());
    for (size_t start = 0; start < x.size(); start += static_cast<size_t>(n)) {
      NormalizeRow(x.data() + start, gamma.data(), n, eps, x.data() + start);
    }
  }

  void RopeWriteKv(const StepInputs& step, std::span<float> q, std::span<float> k,
                   std::span<const float> v, int64_t num_heads, KvCache& cache,
                   int64_t layer) override {
    const auto& inputs = static_cast<const CpuStepInputs&>(step);
    const int64_t half = inputs.half;  // 0: no rotation.
    const int64_t head_dim = cache.shape().head_dim;
    INFERBOX_CHECK(half == 0 || 2 * half == head_dim);
    const int64_t num_kv_heads = cache.shape().num_kv_heads;
    for (size_t t = 0; t < inputs.positions.size(); ++t) {
      const float* cos = inputs.cos.data() + t * static_cast<size_t>(half);
      const float* sin = inputs.sin.data() + t * static_cast<size_t>(half);
      auto rotate = [&](float* head) {
        for (int64_t j = 0; j < half; ++j) {
          const float x1 = head[j];
          const float x2 = head[j + half];
          head[j] = x1 * cos[j] - x2 * sin[j];
          head[j + half] = x2 * cos[j] + x1 * sin[j];
        }
      };
      for (int64_t h = 0; h < num_heads; ++h)
        rotate(q.data() + (static_cast<int64_t>(t) * num_heads + h) * head_dim);
      for (int64_t h = 0; h < num_kv_heads; ++h)
        rotate(k.data() + (static_cast<int64_t>(t) * num_kv_heads + h) * head_dim);
    }
    auto& cpu = static_cast<CpuKvCache&>(cache);
    const auto row = static_cast<size_t>(num_kv_heads * head_dim);
    for (size_t t = 0; t < inputs.slots.size(); ++t) {
      if (inputs.slots[t] < 0) continue;  // Padding.
      cpu.Write(layer, inputs.slots[t], k.data() + t * row, v.data() + t * row);
    }
  }

  void PagedAttention(const StepInputs& step, const KvCache& cache, int64_t layer,
                      std::span<const float> q, int64_t num_heads, float scale,
                      std::span<float> out) override {
    const auto& sequences = static_cast<const CpuStepInputs&>(step).sequences;
    const auto& cpu = static_cast<const CpuKvCache&>(cache);
    const KvCacheShape& shape = cache.shape();
    const int64_t d = shape.head_dim;
    const int64_t group = num_heads / shape.num_kv_heads;
    int64_t first_token = 0;
    for (const AttentionSequence& sequence : sequences) {
      const int64_t tokens = sequence.num_query_tokens;
      const double work = static_cast<double>(tokens) * static_cast<double>(num_heads) *
                          static_cast<double>(sequence.start_position + tokens) *
                          static_cast<double>(d);
#pragma omp parallel if (work >= kMinParallelWork)
      {
        std::vector<float> scores;
        std::vector<float> key_scratch(static_cast<size_t>(d));
        std::vector<float> value_scratch(static_cast<size_t>(d));
#pragma omp for collapse(2) schedule(static)
        for (int64_t t = 0; t < tokens; ++t) {
          for (int64_t h = 0; h < num_heads; ++h) {
            const int64_t position = sequence.start_position + t;
            const int64_t kv_head = h / group;
            const float* query = q.data() + ((first_token + t) * num_heads + h) * d;
            scores.assign(static_cast<size_t>(position + 1), 0.0f);
            float max_score = -std::numeric_limits<float>::infinity();
            for (int64_t p = 0; p <= position; ++p) {
              const int64_t slot = sequence.block_table[static_cast<size_t>(p / shape.block_size)] *
                                       shape.block_size +
                                   p % shape.block_size;
              const float* key = cpu.Key(layer, slot, kv_head, key_scratch.data());
              double dot = 0.0;
              for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(query[c]) * key[c];
              scores[static_cast<size_t>(p)] = static_cast<float>(dot) * scale;
              max_score = std::max(max_score, scores[static_cast<size_t>(p)]);
            }
            double total = 0.0;
            for (auto& score : scores) {
              score = std::exp(score - max_score);
              total += score;
            }
            float* result = out.data() + ((first_token + t) * num_heads + h) * d;
            std::vector<double> accumulator(static_cast<size_t>(d), 0.0);
            for (int64_t p = 0; p <= position; ++p) {
              const int64_t slot = sequence.block_table[static_cast<size_t>(p / shape.block_size)] *
                                       shape.block_size +
                                   p % shape.block_size;
              const float* value = cpu.Value(layer, slot, kv_head, value_scratch.data());
              const double weight = scores[static_cast<size_t>(p)] / total;
              for (int64_t c = 0; c < d; ++c)
                accumulator[static_cast<size_t>(c)] += weight * value[c];
            }
            for (int64_t c = 0; c < d; ++c)
              result[c] = static_cast<float>(accumulator[static_cast<size_t>(c)]);
          }
        }
      }
      first_token += tokens;
    }
  }

  void SiluMul(std::span<const float> gate, std::span<const float> up,
               std::span<float> out) override {
    for (size_t i = 0; i < out.size(); ++i) {
      const float g = gate[i];
      out[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
  }

  bool can_sample() const override {
    return false;
  }
  void SampleRows(std::span<const float>, int64_t, std::span<const RowSampling>,
                  std::span<SampledRow>) override {
    INFERBOX_CHECK(!"the CPU backend's rows are sampled on the host by the Sampler");
  }

  void GreedyRows(std::span<const float> logits, int64_t rows, int64_t cols,
                  std::span<int32_t> tokens, std::span<float> logprobs) override {
    for (int64_t r = 0; r < rows; ++r) {
      const std::span<const float> row =
          logits.subspan(static_cast<size_t>(r * cols), static_cast<size_t>(cols));
      const int64_t best = ArgmaxRow(row);
      tokens[static_cast<size_t>(r)] = static_cast<int32_t>(best);
      if (logprobs.empty()) continue;
      const float largest = row[static_cast<size_t>(best)];
      double total = 0.0;
      for (const float logit : row) total += std::exp(static_cast<double>(logit - largest));
      logprobs[static_cast<size_t>(r)] = static_cast<float>(-std::log(total));
    }
  }

  void GatherRows(const StepInputs& step, std::span<const float> x, int64_t cols,
                  std::span<float> out) override {
    const auto& rows = static_cast<const CpuStepInputs&>(step).logit_rows;
    for (size_t i = 0; i < rows.size(); ++i) {
      std::copy_n(x.begin() + rows[i] * cols, cols, out.begin() + static_cast<int64_t>(i) * cols);
    }
  }

 private:
  // x rounded to BF16, then to E4M3 with one scale for all of it, and back to floats.
  static std::vector<float> Fp8RoundTrip(std::span<const float> x) {
    std::vector<float> values(x.begin(), x.end());
    const float scale = Fp8Scale(RoundToBf16InPlace(values));
    for (float& value : values) value = Fp8E4M3ToFloat(FloatToFp8E4M3(value / scale)) * scale;
    return values;
  }

  // Rounds `values` to BF16 (as the GPU's FP8 path sees them); their largest magnitude.
  static float RoundToBf16InPlace(std::span<float> values) {
    float amax = 0.0f;
    for (float& value : values) {
      value = RoundToBf16(value);
      amax = std::max(amax, std::fabs(value));
    }
    return amax;
  }

  // FP8 weights (LoadFp8Weights) of one group and their scale.
  struct Fp8Group {
    std::vector<std::vector<uint8_t>> codes;
    float scale = 1.0f;
  };
  std::vector<std::unique_ptr<Fp8Group>> fp8_weights_;

  // out = x · wᵀ through OpenBLAS, widening w a tile of rows at a time (float32 weights are
  // used in place).
  static void LinearBlas(std::span<const float> x, int64_t m, const Weight& w,
                         std::span<float> out) {
    const int64_t n = w.rows;
    const int64_t k = w.cols;
    const int64_t tile_rows = std::max<int64_t>(1, kBlasTileElements / k);
    std::vector<float> tile;
    for (int64_t first = 0; first < n; first += tile_rows) {
      const int64_t rows = std::min(tile_rows, n - first);
      const float* weights = nullptr;
      if (w.dtype == DType::kF32) {
        weights = static_cast<const float*>(w.data) + first * k;
      } else {
        tile.resize(static_cast<size_t>(rows * k));
        for (int64_t r = 0; r < rows; ++r) WidenRow(w, first + r, tile.data() + r * k);
        weights = tile.data();
      }
      // out[:, first:first+rows] = x[m, k] · weights[rows, k]ᵀ
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
                  static_cast<int>(rows), static_cast<int>(k), 1.0f, x.data(), static_cast<int>(k),
                  weights, static_cast<int>(k), 0.0f, out.data() + first, static_cast<int>(n));
    }
  }

  static void NormalizeRow(const float* x, const float* gamma, int64_t n, float eps, float* out) {
    double sum_squares = 0.0;
    for (int64_t c = 0; c < n; ++c) sum_squares += static_cast<double>(x[c]) * x[c];
    const float inv_rms =
        static_cast<float>(1.0 / std::sqrt(sum_squares / static_cast<double>(n) + eps));
    for (int64_t c = 0; c < n; ++c) out[c] = x[c] * inv_rms * gamma[c];
  }
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend() {
  return std::make_unique<CpuBackend>();
}

}  // namespace inferbox::engine
